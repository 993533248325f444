/*
 * Three hosts, one set of sessions: three tallyd --cluster on their own
 * ledgers, over a real three-node NATS JetStream cluster on loopback.
 * Workers on every host record to the same sessions and LLMs; every
 * host's snapshots must reach exactly the cluster-wide totals, also when
 * NATS nodes stop, a tallyd is killed, or NATS is away for a while.
 *
 * tallyd loads $TALLYD_CLUSTER_MODULE; the servers are $NATS_SERVER.
 * A failed test prints the end of every log; TALLY_TEST_LOGS prints them
 * always, TALLY_TEST_KEEP keeps the test's directory, and
 * TALLY_TEST_FILTER selects tests by name.
 * Every process a test starts is in its fixture and is stopped by pid in
 * the teardown, also when the test failed half-way.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "nats_harness.h"

#define NODES 3
#define HOSTS 3
#define WORKERS_PER_HOST 2
#define WORKERS (HOSTS * WORKERS_PER_HOST)
#define SESSIONS 20
#define LLMS 2
#define USAGES 2000

#define READY_MS 10000
/* JetStream elects its leaders before tallyd can create the stream. */
#define CLUSTER_READY_MS 30000
#define CONVERGE_MS 60000
#define WORKERS_MS 60000
#define SYNC_MS 45000
#define STOP_MS 5000
/* NATS is away this long in the fault test. */
#define OUTAGE_MS 3000
/* How much of the end of each log a failed test shows. */
#define LOG_TAIL 4096

struct fixture {
	struct harness h;
	char node_dir[NODES][160];
	char host_dir[HOSTS][160];
	char host_log[HOSTS][160];
	char routes[NODES][128];
	char urls[HOSTS][256];
	char stream[32];
	int port[NODES];
	int route_port[NODES];
	pid_t nats[NODES];
	pid_t tallyd[HOSTS];
	pid_t worker[WORKERS];
	/* Set at the end of a test: without it, the teardown shows logs. */
	bool passed;
	uint64_t want_in[SESSIONS][LLMS];
	uint64_t want_out[SESSIONS][LLMS];
};

static const char *const llm_ids[LLMS] = {
	"1c945b38-5dbb-4fcf-9fdd-112bd8177f9c",
	"ce190e1f-eff7-4f6b-9074-9f705375a3d3",
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void session_name(char *buf, size_t len, int s)
{
	snprintf(buf, len, "cluster-session-%02d", s);
}

/*
 * The k-th usage of worker w: spread over every session and LLM, with
 * counts that differ by worker, so a usage lost or counted twice shows
 * in the totals.
 */
static void usage_of(int w, int k, int *s, int *l, uint64_t *in, uint64_t *out)
{
	*s = k % SESSIONS;
	*l = (k / SESSIONS) % LLMS;
	*in = 1 + (uint64_t)w * 7 + (uint64_t)(k % 13);
	*out = (uint64_t)(k % 5);
}

static void add_expected(struct fixture *f, int w)
{
	uint64_t in, out;
	int s, l;

	for (int k = 0; k < USAGES; k++) {
		usage_of(w, k, &s, &l, &in, &out);
		f->want_in[s][l] += in;
		f->want_out[s][l] += out;
	}
}

/* Runs in a forked worker: plain exit codes, never a cmocka assert. */
static int record_all(struct tally *t, int w, int pace_ms)
{
	char session[64];
	uint64_t in, out;
	int s, l, rc;

	for (int k = 0; k < USAGES; k++) {
		struct tally_usage u;

		usage_of(w, k, &s, &l, &in, &out);
		session_name(session, sizeof(session), s);
		u = harness_usage(session, llm_ids[l], in, out);
		rc = tally_record(t, &u);
		if (rc < 0) {
			fprintf(stderr, "worker %d: usage %d: %s\n", w, k,
				tally_strerror(rc));
			return 1;
		}
		/* Spread the records over the time the faults take. */
		if (pace_ms > 0 && k % 10 == 9)
			harness_sleep_ms(pace_ms);
	}
	return 0;
}

static int worker_main(const char *dir, int w, int pace_ms)
{
	struct tally *t;
	int rc;

	if (tally_open(&t, dir) < 0)
		return 2;
	rc = record_all(t, w, pace_ms);
	if (rc == 0 && (rc = tally_sync(t, SYNC_MS)) < 0)
		fprintf(stderr, "worker %d: sync: %s\n", w, tally_strerror(rc));
	tally_close(t);
	return rc == 0 ? 0 : 3;
}

/* Starts the workers of host h; their usages join the expected totals. */
static void start_workers(struct fixture *f, int h, int pace_ms)
{
	for (int i = 0; i < WORKERS_PER_HOST; i++) {
		int w = h * WORKERS_PER_HOST + i;
		pid_t pid;

		add_expected(f, w);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0)
			_exit(worker_main(f->host_dir[h], w, pace_ms));
		f->worker[w] = pid;
	}
}

/* Fails when a tallyd died on its own: a crash is a daemon bug. */
static void assert_hosts_alive(struct fixture *f)
{
	int status;

	for (int h = 0; h < HOSTS; h++) {
		if (f->tallyd[h] <= 0 ||
		    waitpid(f->tallyd[h], &status, WNOHANG) != f->tallyd[h])
			continue;
		f->tallyd[h] = -1;
		fail_msg("tallyd of host %d exited on its own (status %#x); "
			 "see %s",
			 h, status, f->host_log[h]);
	}
}

/* Waits, bounded, for every started worker; fails on any that failed. */
static void wait_workers(struct fixture *f)
{
	uint64_t deadline = mono_ms() + WORKERS_MS;
	int failed = 0, status;

	for (int w = 0; w < WORKERS; w++) {
		while (f->worker[w] > 0 && mono_ms() < deadline) {
			if (waitpid(f->worker[w], &status, WNOHANG) ==
			    f->worker[w]) {
				failed += !WIFEXITED(status) ||
					  WEXITSTATUS(status) != 0;
				f->worker[w] = -1;
				break;
			}
			harness_sleep_ms(10);
		}
		if (f->worker[w] > 0) {
			harness_stop(f->worker[w], SIGKILL, STOP_MS);
			f->worker[w] = -1;
			failed++;
		}
	}
	/* A worker's sync fails when its tallyd crashed: say which. */
	assert_hosts_alive(f);
	assert_int_equal(failed, 0);
}

static void start_node(struct fixture *f, int i)
{
	char name[16];

	snprintf(name, sizeof(name), "n%d", i + 1);
	f->nats[i] = nats_start(f->node_dir[i], f->port[i], f->route_port[i],
				f->routes[i], name);
	if (f->nats[i] <= 0)
		fail_msg("nats-server %s did not start; see %s/nats.log", name,
			 f->node_dir[i]);
}

static void start_nats(struct fixture *f)
{
	for (int i = 0; i < NODES; i++)
		start_node(f, i);
}

static void stop_node(struct fixture *f, int i)
{
	/* A stopped (SIGSTOP) server could not act on SIGTERM. */
	if (f->nats[i] > 0)
		kill(f->nats[i], SIGCONT);
	nats_stop(f->nats[i]);
	f->nats[i] = -1;
}

static void start_host(struct fixture *f, int h)
{
	/* One option and its value a line. */
	/* clang-format off */
	const char *extra[] = {
		"--cluster", f->urls[h],
		"--cluster-stream", f->stream,
		"--cluster-replicas", "3",
		NULL,
	};
	/* clang-format on */

	f->tallyd[h] = harness_spawn(f->host_dir[h], extra, f->host_log[h]);
	assert_true(f->tallyd[h] > 0);
	if (harness_wait_ready(f->host_dir[h], READY_MS) < 0)
		fail_msg("tallyd of host %d is not ready; see %s", h,
			 f->host_log[h]);
}

/* SIGTERM, and tallyd must exit cleanly: it drains and commits first. */
static void stop_host(struct fixture *f, int h)
{
	int rc = harness_stop(f->tallyd[h], SIGTERM, STOP_MS);

	f->tallyd[h] = -1;
	assert_int_equal(rc, 0);
}

static void kill_host(struct fixture *f, int h)
{
	int rc = harness_stop(f->tallyd[h], SIGKILL, STOP_MS);

	f->tallyd[h] = -1;
	assert_int_equal(rc, 128 + SIGKILL);
}

static void wait_stat(struct fixture *f, int h, const char *name, uint64_t want,
		      int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	uint64_t v;

	for (;;) {
		v = harness_stat(f->host_dir[h], name);
		if (v == want)
			return;
		if (mono_ms() >= deadline)
			break;
		harness_sleep_ms(50);
	}
	fail_msg("host %d: %s is %" PRIu64 ", not %" PRIu64 " after %d ms; "
		 "see %s",
		 h, name, v, want, timeout_ms, f->host_log[h]);
}

/* Waits, at most READY_MS, for host h to hold records to publish. */
static void wait_outbox_filled(struct fixture *f, int h)
{
	uint64_t deadline = mono_ms() + READY_MS;

	while (harness_stat(f->host_dir[h], "outbox_entries") == 0) {
		if (mono_ms() >= deadline)
			fail_msg("host %d: nothing in the outbox after %d ms; "
				 "see %s",
				 h, READY_MS, f->host_log[h]);
		harness_sleep_ms(50);
	}
}

static void print_stats(struct fixture *f, int h)
{
	/* clang-format off */
	static const char *const names[] = {
		"cluster_state", "outbox_entries", "published_records",
		"publish_failures", "consumed_records", "own_records",
		"remote_usages", "remote_duplicates", "remote_lost",
		"consumer_pending", "consume_lag_ms",
	};
	/* clang-format on */

	if (f->tallyd[h] <= 0)
		return;
	print_message("host %d:", h);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		print_message(" %s=%" PRIu64, names[i],
			      harness_stat(f->host_dir[h], names[i]));
	print_message("\n");
}

/*
 * Compares host h's snapshots with the totals: 1 when all are equal, 0
 * while some are short. A count above its total fails at once: it can
 * only come from a usage counted twice.
 */
static int host_converged(struct fixture *f, int h, char *why, size_t len)
{
	char session[64];
	uint64_t in, out;
	struct tally *t;
	int equal = 1;

	assert_int_equal(tally_open(&t, f->host_dir[h]), 0);
	for (int s = 0; s < SESSIONS; s++) {
		session_name(session, sizeof(session), s);
		for (int l = 0; l < LLMS; l++) {
			harness_counts(t, session, llm_ids[l], &in, &out);
			if (in > f->want_in[s][l] || out > f->want_out[s][l])
				fail_msg("host %d counts %s/%s twice: input "
					 "%" PRIu64 " > %" PRIu64 " or output "
					 "%" PRIu64 " > %" PRIu64,
					 h, session, llm_ids[l], in,
					 f->want_in[s][l], out,
					 f->want_out[s][l]);
			if (equal && (in != f->want_in[s][l] ||
				      out != f->want_out[s][l])) {
				snprintf(why, len,
					 "host %d %s/%s: input %" PRIu64
					 " of %" PRIu64 ", output %" PRIu64
					 " of %" PRIu64,
					 h, session, llm_ids[l], in,
					 f->want_in[s][l], out,
					 f->want_out[s][l]);
				equal = 0;
			}
		}
	}
	tally_close(t);
	return equal;
}

/*
 * Waits, at most CONVERGE_MS, until every host in mask shows exactly the
 * totals and has published its whole outbox. Returns the time it took.
 */
static uint64_t wait_converged(struct fixture *f, unsigned mask)
{
	uint64_t start = mono_ms(), deadline = start + CONVERGE_MS;
	char why[256] = "";
	int done;

	do {
		assert_hosts_alive(f);
		done = 1;
		for (int h = 0; h < HOSTS && done; h++)
			done = !(mask & 1u << h) ||
			       (host_converged(f, h, why, sizeof(why)) &&
				harness_stat(f->host_dir[h],
					     "outbox_entries") == 0);
		if (done)
			return mono_ms() - start;
		harness_sleep_ms(100);
	} while (mono_ms() < deadline);
	for (int h = 0; h < HOSTS; h++)
		print_stats(f, h);
	fail_msg("no convergence in %d ms: %s", CONVERGE_MS,
		 why[0] != '\0' ? why : "an outbox is not empty");
	return 0;
}

static void wait_cluster_ready(struct fixture *f)
{
	for (int h = 0; h < HOSTS; h++)
		wait_stat(f, h, "cluster_state", 2, CLUSTER_READY_MS);
}

/* Every node routes to the two others; each host lists its node first. */
static void make_addresses(struct fixture *f)
{
	for (int i = 0; i < NODES; i++) {
		f->port[i] = nats_free_port();
		f->route_port[i] = nats_free_port();
		assert_true(f->port[i] > 0 && f->route_port[i] > 0);
	}
	for (int i = 0; i < NODES; i++) {
		int a = (i + 1) % NODES, b = (i + 2) % NODES;

		snprintf(f->routes[i], sizeof(f->routes[i]),
			 "nats-route://127.0.0.1:%d,nats-route://127.0.0.1:%d",
			 f->route_port[a], f->route_port[b]);
		snprintf(f->urls[i], sizeof(f->urls[i]),
			 "nats://127.0.0.1:%d,nats://127.0.0.1:%d,"
			 "nats://127.0.0.1:%d",
			 f->port[i], f->port[a], f->port[b]);
	}
}

static int make_dirs(struct fixture *f)
{
	for (int i = 0; i < NODES; i++) {
		snprintf(f->node_dir[i], sizeof(f->node_dir[i]), "%s/n%d",
			 f->h.dir, i + 1);
		if (mkdir(f->node_dir[i], 0700) < 0)
			return -errno;
	}
	for (int h = 0; h < HOSTS; h++) {
		snprintf(f->host_dir[h], sizeof(f->host_dir[h]), "%s/h%d",
			 f->h.dir, h);
		snprintf(f->host_log[h], sizeof(f->host_log[h]),
			 "%s/tallyd-%d.log", f->h.dir, h);
		if (mkdir(f->host_dir[h], 0700) < 0)
			return -errno;
	}
	return 0;
}

static int setup(void **state)
{
	static unsigned tests;
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	*state = f;
	harness_init(&f->h);
	for (int i = 0; i < NODES; i++)
		f->nats[i] = -1;
	for (int h = 0; h < HOSTS; h++)
		f->tallyd[h] = -1;
	for (int w = 0; w < WORKERS; w++)
		f->worker[w] = -1;
	/* A stream of its own per test, as if the servers were shared. */
	snprintf(f->stream, sizeof(f->stream), "tally_ct_%d_%u", (int)getpid(),
		 ++tests);
	make_addresses(f);
	return make_dirs(f) < 0 ? -1 : 0;
}

/*
 * Prints the end of a log, from a line start, so that a failure in CI can
 * be read; straight to stderr, as cmocka's messages are cut at 1 KB.
 */
static void show_log(const char *path)
{
	size_t len, from = 0;
	char *text = harness_read_file(path, &len);

	if (text == NULL)
		return;
	if (len > LOG_TAIL) {
		char *nl = strchr(text + len - LOG_TAIL, '\n');

		from = nl != NULL ? (size_t)(nl + 1 - text) : len - LOG_TAIL;
	}
	fprintf(stderr, "--- %s\n", path);
	fwrite(text + from, 1, len - from, stderr);
	fprintf(stderr, "---\n");
	free(text);
}

/* Workers first, then the daemons, then NATS, so no one waits on another. */
static int teardown(void **state)
{
	struct fixture *f = *state;
	char path[192];

	for (int w = 0; w < WORKERS; w++)
		if (f->worker[w] > 0)
			harness_stop(f->worker[w], SIGKILL, STOP_MS);
	/* A test that failed while NATS was frozen must not freeze these. */
	for (int i = 0; i < NODES; i++)
		if (f->nats[i] > 0)
			kill(f->nats[i], SIGCONT);
	for (int h = 0; h < HOSTS; h++)
		if (f->tallyd[h] > 0)
			harness_stop(f->tallyd[h], SIGTERM, STOP_MS);
	for (int i = 0; i < NODES; i++)
		stop_node(f, i);
	if (!f->passed || getenv("TALLY_TEST_LOGS") != NULL) {
		for (int h = 0; h < HOSTS; h++)
			show_log(f->host_log[h]);
		for (int i = 0; i < NODES; i++) {
			snprintf(path, sizeof(path), "%s/nats.log",
				 f->node_dir[i]);
			show_log(path);
		}
	}
	/* To read the ledgers and logs of a failure with tallyctl. */
	if (getenv("TALLY_TEST_KEEP") != NULL)
		print_message("kept %s\n", f->h.dir);
	else
		harness_fini(&f->h);
	free(f);
	return 0;
}

static void test_cluster_hosts_converge_to_exact_totals(void **state)
{
	struct fixture *f = *state;
	uint64_t ms;

	start_nats(f);
	for (int h = 0; h < HOSTS; h++)
		start_host(f, h);
	wait_cluster_ready(f);
	for (int h = 0; h < HOSTS; h++)
		start_workers(f, h, 0);
	wait_workers(f);
	ms = wait_converged(f, 07);
	print_message("converged %d usages on %d hosts in %" PRIu64 " ms\n",
		      WORKERS * USAGES, HOSTS, ms);
	for (int h = 0; h < HOSTS; h++)
		stop_host(f, h);
	f->passed = true;
}

/* Freezes every node: connections stay open, but nothing answers. */
static void pause_nats(struct fixture *f, int sig)
{
	for (int i = 0; i < NODES; i++)
		assert_int_equal(kill(f->nats[i], sig), 0);
}

/*
 * While the workers record: one NATS node stops and comes back on its
 * store, one tallyd is killed and restarted on its ledger, and then no
 * node answers for OUTAGE_MS, so that publishes and fetches time out.
 */
static void test_cluster_faults_still_converge_exactly(void **state)
{
	struct fixture *f = *state;
	uint64_t ms;

	start_nats(f);
	for (int h = 0; h < HOSTS; h++)
		start_host(f, h);
	wait_cluster_ready(f);
	for (int h = 0; h < HOSTS; h++)
		start_workers(f, h, 40);
	harness_sleep_ms(1000);
	stop_node(f, 1);
	harness_sleep_ms(1000);
	kill_host(f, 2);
	start_host(f, 2);
	harness_sleep_ms(1000);
	start_node(f, 1);
	harness_sleep_ms(1500);
	pause_nats(f, SIGSTOP);
	harness_sleep_ms(OUTAGE_MS);
	pause_nats(f, SIGCONT);
	wait_workers(f);
	ms = wait_converged(f, 07);
	print_message("converged after the faults in %" PRIu64 " ms\n", ms);
	for (int h = 0; h < HOSTS; h++)
		print_stats(f, h);
	for (int h = 0; h < HOSTS; h++)
		stop_host(f, h);
	f->passed = true;
}

/*
 * Every node stops (SIGTERM) while the workers record and comes back on
 * its store OUTAGE_MS later: JetStream recovers the stream and the
 * consumers from disk, and elects their leaders again.
 */
static void test_cluster_nats_restart_converges_exactly(void **state)
{
	struct fixture *f = *state;
	uint64_t ms;

	start_nats(f);
	for (int h = 0; h < HOSTS; h++)
		start_host(f, h);
	wait_cluster_ready(f);
	for (int h = 0; h < HOSTS; h++)
		start_workers(f, h, 20);
	harness_sleep_ms(1500);
	for (int i = 0; i < NODES; i++)
		stop_node(f, i);
	harness_sleep_ms(OUTAGE_MS);
	start_nats(f);
	wait_workers(f);
	ms = wait_converged(f, 07);
	print_message("converged after a restart of NATS in %" PRIu64 " ms\n",
		      ms);
	for (int h = 0; h < HOSTS; h++)
		print_stats(f, h);
	for (int h = 0; h < HOSTS; h++)
		stop_host(f, h);
	f->passed = true;
}

/*
 * A host that starts while no NATS server answers serves and counts
 * locally, keeps its usages in the outbox, and publishes them once NATS
 * is up: the other host then counts them too.
 */
static void test_cluster_outbox_waits_for_nats(void **state)
{
	struct fixture *f = *state;
	char why[256];
	uint64_t ms;

	start_host(f, 0);
	start_host(f, 1);
	start_workers(f, 0, 0);
	wait_workers(f);
	wait_outbox_filled(f, 0);
	assert_int_equal(harness_stat(f->host_dir[0], "published_records"), 0);
	assert_true(harness_stat(f->host_dir[0], "cluster_state") != 2);
	/* The local ledger has it all already; host 1 has nothing. */
	harness_sleep_ms(500);
	assert_int_equal(host_converged(f, 0, why, sizeof(why)), 1);
	assert_int_equal(host_converged(f, 1, why, sizeof(why)), 0);
	start_nats(f);
	ms = wait_converged(f, 03);
	print_message("outbox published and applied in %" PRIu64 " ms\n", ms);
	assert_int_equal(harness_stat(f->host_dir[0], "cluster_state"), 2);
	stop_host(f, 0);
	stop_host(f, 1);
	f->passed = true;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			test_cluster_hosts_converge_to_exact_totals, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_cluster_faults_still_converge_exactly, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_cluster_nats_restart_converges_exactly, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_cluster_outbox_waits_for_nats, setup, teardown),
	};

	/* TALLY_TEST_FILTER=*faults* runs one test (cmocka's pattern). */
	if (getenv("TALLY_TEST_FILTER") != NULL)
		cmocka_set_test_filter(getenv("TALLY_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
