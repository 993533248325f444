/*
 * Exactly-once accounting under the failures of issue 3: kills, stops and
 * restarts of the daemon, a small map, a frozen and a killed reader, a
 * full filesystem, many processes and threads, hostile bytes on the data
 * socket, and a daemon started with its standard descriptors closed.
 *
 * CI runs this file twice on 2 cores (plainly and under ASan+UBSan), so
 * the heavy scenarios are scaled down; each says its full scale. Scenarios
 * 1 (SIGKILL soak) and 5 at full scale (50 SIGTERMs) run in tally-bench's
 * soak mode, not here. Found elsewhere: 6's second daemon and 20's long
 * directory in test_daemon.c, 13 (fork of a handle) in test_exactly_once.c;
 * 11 (NFS) cannot be mounted here, so the lead unit-tests its classifier.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <lmdb.h>
#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>

#include "harness.h"
#include "tally.pb-c.h"

/* Longest a child of this file may live, whatever happens to its parent. */
#define CHILD_MAX_S 120
#define MAX_CHILDREN 256
#define KIB 1024

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A fixed-seed generator, so that a failing run can be replayed. */
static uint64_t next_random(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* ---- Children, killed by the teardown when a case fails half-way ---- */

static pid_t children[MAX_CHILDREN];
static int nchildren;
/* A tmpfs this file mounted; the teardown unmounts it. */
static char mounted[256];

static void untrack(pid_t pid)
{
	for (int i = 0; i < nchildren; i++) {
		if (children[i] == pid) {
			children[i] = children[--nchildren];
			return;
		}
	}
}

/*
 * Forks a child that runs fn(i, arg) and exits with its result. The child
 * must not use cmocka's asserts: a failure there would go on running the
 * parent's tests in the child.
 */
static pid_t spawn(int (*fn)(int i, void *arg), int i, void *arg)
{
	pid_t pid;

	assert_true(nchildren < MAX_CHILDREN);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(CHILD_MAX_S);
		/*
		 * Children that loop at full speed would starve the parent,
		 * which must keep starting, stopping and killing them on time.
		 */
		if (nice(5) < 0)
			_exit(125);
		_exit(fn(i, arg));
	}
	children[nchildren++] = pid;
	return pid;
}

/* Exit status of pid, 128 + signal, or -1 when it had to be killed. */
static int wait_child(pid_t pid, int timeout_ms)
{
	int rc = harness_stop(pid, 0, timeout_ms);

	untrack(pid);
	return rc;
}

static void kill_children(void)
{
	int status;

	while (nchildren > 0) {
		pid_t pid = children[--nchildren];

		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
	}
}

/* Reaps whichever of pids[0..n) ended; returns how many of them failed. */
static int reap_ended(pid_t *pids, int n, int *alive)
{
	int failed = 0, status;

	for (int i = 0; i < n; i++) {
		if (pids[i] == 0 ||
		    waitpid(pids[i], &status, WNOHANG) != pids[i])
			continue;
		untrack(pids[i]);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
		pids[i] = 0;
		(*alive)--;
	}
	return failed;
}

/*
 * Runs n children of fn, at most max_alive at a time, within timeout_ms;
 * returns how many failed or did not finish in time.
 */
static int run_bounded(int n, int max_alive, int (*fn)(int i, void *arg),
		       void *arg, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	pid_t *pids = calloc((size_t)n, sizeof(*pids));
	int started = 0, alive = 0, failed = 0;

	assert_non_null(pids);
	while ((started < n || alive > 0) && mono_ms() < deadline) {
		if (started < n && alive < max_alive) {
			pids[started] = spawn(fn, started, arg);
			started++;
			alive++;
			continue;
		}
		failed += reap_ended(pids, started, &alive);
		harness_sleep_ms(1);
	}
	for (int i = 0; i < started; i++) {
		if (pids[i] != 0) {
			kill(pids[i], SIGKILL);
			wait_child(pids[i], 5000);
			failed++;
		}
	}
	free(pids);
	return failed + (n - started);
}

static int teardown(void **state)
{
	struct harness *h = *state;
	char cmd[300];

	kill_children();
	if (mounted[0] != '\0') {
		/* The daemon holds the ledger there: stop it first. */
		if (h->daemon > 0)
			harness_stop(h->daemon, SIGKILL, 5000);
		h->daemon = -1;
		snprintf(cmd, sizeof(cmd), "umount '%s' 2>/dev/null", mounted);
		if (system(cmd) != 0) {
			snprintf(cmd, sizeof(cmd), "umount -l '%s'", mounted);
			if (system(cmd) != 0)
				fprintf(stderr, "cannot unmount %s\n", mounted);
		}
		mounted[0] = '\0';
	}
	return harness_teardown(state);
}

/* harness_test() with a teardown that also stops children and unmounts. */
#define robust_test(f) \
	cmocka_unit_test_setup_teardown(f, harness_setup, teardown)

/* ---- Small helpers ---- */

static void *shared_alloc(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	assert_true(p != MAP_FAILED);
	return p;
}

static void expect_counts(const char *dir, const char *session, const char *llm,
			  uint64_t in, uint64_t out)
{
	struct tally *t;
	uint64_t i, o;

	assert_int_equal(tally_open(&t, dir), 0);
	harness_counts(t, session, llm, &i, &o);
	tally_close(t);
	assert_int_equal(i, in);
	assert_int_equal(o, out);
}

/* Records n usages of (session, llm) and waits for their commit. */
static void record_sync(const char *dir, const char *session, const char *llm,
			int n, uint64_t in, uint64_t out)
{
	struct tally_usage u = harness_usage(session, llm, in, out);
	struct tally *t;

	assert_int_equal(tally_open(&t, dir), 0);
	for (int i = 0; i < n; i++)
		assert_int_equal(tally_record(t, &u), 0);
	assert_int_equal(tally_sync(t, 10000), 0);
	tally_close(t);
}

/* Sums of every session of tally_sessions_json(). */
struct totals {
	uint64_t input;
	uint64_t output;
	uint64_t calls;
	size_t sessions;
};

static struct totals ledger_totals(const char *dir)
{
	struct totals s = {0, 0, 0, 0};
	struct tally *t;
	json_t *root, *e;
	size_t i;
	char *json;

	assert_int_equal(tally_open(&t, dir), 0);
	assert_int_equal(tally_sessions_json(t, &json), 0);
	tally_close(t);
	root = json_loads(json, JSON_REJECT_DUPLICATES, NULL);
	free(json);
	assert_true(json_is_array(root));
	json_array_foreach(root, i, e)
	{
		s.input += (uint64_t)json_integer_value(
			json_object_get(e, "inputTokens"));
		s.output += (uint64_t)json_integer_value(
			json_object_get(e, "outputTokens"));
		s.calls += (uint64_t)json_integer_value(
			json_object_get(e, "calls"));
	}
	s.sessions = json_array_size(root);
	json_decref(root);
	return s;
}

/* Polls a counter, at most timeout_ms, until it reaches want. */
static uint64_t wait_stat(const char *dir, const char *name, uint64_t want,
			  int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms, v;

	while ((v = harness_stat(dir, name)) < want && mono_ms() < deadline)
		harness_sleep_ms(20);
	return v;
}

/* Resident set of pid (0: this process), in KiB. */
static long rss_kib(pid_t pid)
{
	char path[64];
	long size = 0, resident = 0;
	FILE *f;

	if (pid == 0)
		snprintf(path, sizeof(path), "/proc/self/statm");
	else
		snprintf(path, sizeof(path), "/proc/%ld/statm", (long)pid);
	f = fopen(path, "r");
	assert_non_null(f);
	assert_int_equal(fscanf(f, "%ld %ld", &size, &resident), 2);
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / KIB);
}

/*
 * Reads a /proc file into buf, NUL-terminated: they report a size of 0,
 * so they are read until the end. Returns the length, or -1.
 */
static ssize_t read_proc(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t len = 0;
	ssize_t n;

	if (fd < 0)
		return -1;
	while (len < size - 1 && (n = read(fd, buf + len, size - 1 - len)) > 0)
		len += (size_t)n;
	close(fd);
	buf[len] = '\0';
	return (ssize_t)len;
}

/* Waits, at most 5 s, until pid is stopped by a signal. */
static void wait_stopped(pid_t pid)
{
	char path[64], text[1024], *p;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	for (int i = 0; i < 500; i++) {
		assert_true(read_proc(path, text, sizeof(text)) > 0);
		/* The state follows the command name's closing parenthesis. */
		p = strrchr(text, ')');
		if (p != NULL && p[1] == ' ' && (p[2] == 'T' || p[2] == 't'))
			return;
		harness_sleep_ms(10);
	}
	fail_msg("process %ld never stopped", (long)pid);
}

/* Runs $TALLYCTL with args, output to out; its exit status. */
static int run_tallyctl(const char *out, const char *const *args)
{
	const char *ctl = getenv("TALLYCTL");
	const char *argv[24];
	int n = 0;
	pid_t pid;

	assert_non_null(ctl);
	argv[n++] = ctl;
	while (*args != NULL && n < 23)
		argv[n++] = *args++;
	argv[n] = NULL;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(126);
		execv(ctl, (char *const *)argv);
		_exit(127);
	}
	return harness_stop(pid, 0, 20000);
}

/* ---- Raw messages on the data socket ---- */

static int raw_push(const char *dir)
{
	int s = nn_socket(AF_SP, NN_PUSH);
	int timeout = 10000;
	char url[256];

	assert_true(s >= 0);
	/* A send that cannot go out within 10 s fails the case. */
	nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDTIMEO, &timeout, sizeof(timeout));
	snprintf(url, sizeof(url), "ipc://%s/ingest.ipc", dir);
	assert_true(nn_connect(s, url) >= 0);
	return s;
}

static void raw_send(int s, const void *buf, size_t len)
{
	assert_int_equal(nn_send(s, buf, len, 0), (int)len);
}

static void set_bytes(ProtobufCBinaryData *b, const char *s)
{
	b->data = (uint8_t *)s;
	b->len = strlen(s);
}

/* A usage of the wire format; its strings must outlive the packing. */
static Tally__Usage wire_usage(const char *session, uint64_t in, uint64_t out)
{
	Tally__Usage u = TALLY__USAGE__INIT;

	set_bytes(&u.session_id, session);
	set_bytes(&u.llm_reference_id, "llm");
	u.input_tokens = in;
	u.output_tokens = out;
	return u;
}

/*
 * Packs a batch of n usages, each *u, into buf (cap bytes) with its count
 * last, as the client writes it; returns the length.
 */
static size_t pack_batch(uint8_t *buf, size_t cap, const uint8_t *producer,
			 uint64_t first_seq, Tally__Usage *u, size_t n)
{
	Tally__Batch b = TALLY__BATCH__INIT;
	Tally__Usage **us = calloc(n, sizeof(*us));
	size_t len;

	assert_non_null(us);
	for (size_t i = 0; i < n; i++)
		us[i] = &u[i];
	b.producer.data = (uint8_t *)producer;
	b.producer.len = 16;
	b.first_seq = first_seq;
	b.n_usages = n;
	b.usages = us;
	b.count = (uint32_t)n;
	assert_true(tally__batch__get_packed_size(&b) <= cap);
	len = tally__batch__pack(&b, buf);
	free(us);
	return len;
}

static void send_batch(int s, const uint8_t *producer, uint64_t first_seq,
		       const char *session, size_t n, uint64_t in, uint64_t out)
{
	Tally__Usage u[16];
	uint8_t buf[2048];
	size_t len;

	assert_true(n <= 16);
	for (size_t i = 0; i < n; i++)
		u[i] = wire_usage(session, in, out);
	len = pack_batch(buf, sizeof(buf), producer, first_seq, u, n);
	raw_send(s, buf, len);
}

/*
 * Whether the daemon could take buf as a batch: it decodes, and its
 * header holds. A message the test counts as malformed must not.
 */
static bool decodes_as_batch(const void *buf, size_t len)
{
	Tally__Batch *b = tally__batch__unpack(NULL, len, buf);
	bool ok;

	if (b == NULL)
		return false;
	ok = b->producer.len == 16 && b->first_seq >= 1 && b->n_usages >= 1 &&
	     b->count == b->n_usages;
	tally__batch__free_unpacked(b, NULL);
	return ok;
}

/* Sends a message that must be dropped as malformed; counts it. */
static void send_bad(int s, const void *buf, size_t len, uint64_t *bad)
{
	assert_false(decodes_as_batch(buf, len));
	raw_send(s, buf, len);
	(*bad)++;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

/* ---- Scenario 2: one-shot processes ---- */

static int one_shot(int i, void *arg)
{
	struct tally_usage u = harness_usage("one-shot", "llm", 7, 11);
	struct tally *t;
	int rc;

	if (tally_open(&t, arg) < 0)
		return 1;
	rc = tally_record(t, &u);
	tally_close(t);
	return rc == 0 ? 0 : 2;
}

/* 200 processes record one usage each and close at once (50 alive). */
static void test_robustness_one_shot_processes_all_count(void **state)
{
	struct harness *h = *state;

	harness_start(h, NULL);
	assert_int_equal(run_bounded(200, 50, one_shot, h->dir, 90000), 0);
	expect_counts(h->dir, "one-shot", "llm", 1400, 2200);
	harness_stop_daemon(h);
}

/* ---- Scenario 3: retries ---- */

/* Two real attempts of one LLM call are two usages, both billed. */
static void test_robustness_two_attempts_are_two_usages(void **state)
{
	struct tally_usage first = harness_usage("retry", "llm", 80, 0);
	struct tally_usage second = harness_usage("retry", "llm", 80, 30);
	struct harness *h = *state;
	json_t *root, *e;
	struct tally *t;
	char *json;

	harness_start(h, NULL);
	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_record(t, &first), 0);
	assert_int_equal(tally_record(t, &second), 0);
	assert_int_equal(tally_sync(t, 10000), 0);
	assert_int_equal(
		tally_session_json_ex(t, "retry", TALLY_JSON_DETAILS, &json),
		0);
	tally_close(t);
	root = json_loads(json, JSON_REJECT_DUPLICATES, NULL);
	if (root == NULL)
		fail_msg("not JSON: %s", json);
	free(json);
	e = json_object_get(root, "llm");
	assert_int_equal(json_integer_value(json_object_get(
				 json_object_get(e, "usage"), "inputTokens")),
			 160);
	assert_int_equal(json_integer_value(json_object_get(
				 json_object_get(e, "usage"), "outputTokens")),
			 30);
	assert_int_equal(json_integer_value(json_object_get(
				 json_object_get(e, "details"), "calls")),
			 2);
	json_decref(root);
	harness_stop_daemon(h);
}

static const uint8_t producer_r[16] = "producer-restart";

/*
 * A batch committed just before a SIGKILL, whose commit its sender never
 * saw, comes again to the next daemon: that one knows it from the ledger.
 */
static void test_robustness_committed_batch_resent_after_restart(void **state)
{
	struct harness *h = *state;
	int s;

	harness_start(h, NULL);
	s = raw_push(h->dir);
	send_batch(s, producer_r, 1, "resent", 1, 10, 1);
	assert_int_equal(wait_stat(h->dir, "usages_applied", 1, 5000), 1);
	harness_kill_daemon(h);
	harness_start(h, NULL);
	/* Its sender resends from seq 1 and goes on with seq 2. */
	send_batch(s, producer_r, 1, "resent", 2, 10, 1);
	assert_int_equal(wait_stat(h->dir, "usages_applied", 1, 5000), 1);
	expect_counts(h->dir, "resent", "llm", 20, 2);
	assert_int_equal(harness_stat(h->dir, "duplicates"), 1);
	nn_close(s);
	harness_stop_daemon(h);
}

/* ---- Scenario 4: a stopped daemon and a bounded queue ---- */

struct stopped_round {
	int accepted;
	int refused;
	int other;
	uint64_t slowest_ms;
	uint64_t total_ms;
};

#define STOPPED_RECORDS 1000
#define STOPPED_QUEUE 100

/* SIGSTOP, 1,000 records into a queue of 100, SIGCONT, sync. */
static struct stopped_round stopped_round(struct harness *h, struct tally *t)
{
	struct tally_usage u = harness_usage("stopped", "llm", 1, 1);
	struct stopped_round r = {0, 0, 0, 0, 0};
	uint64_t start, t0, dt;
	int rc;

	assert_int_equal(kill(h->daemon, SIGSTOP), 0);
	wait_stopped(h->daemon);
	start = mono_ms();
	/* Bounded in time too: the old behaviour took 180 s here. */
	for (int i = 0; i < STOPPED_RECORDS && mono_ms() - start < 10000; i++) {
		t0 = mono_ms();
		rc = tally_record(t, &u);
		dt = mono_ms() - t0;
		if (dt > r.slowest_ms)
			r.slowest_ms = dt;
		if (rc == 0)
			r.accepted++;
		else if (rc == -ENOBUFS)
			r.refused++;
		else
			r.other++;
	}
	r.total_ms = mono_ms() - start;
	assert_int_equal(kill(h->daemon, SIGCONT), 0);
	assert_int_equal(tally_sync(t, 10000), 0);
	return r;
}

static void check_stopped_round(const struct stopped_round *r)
{
	assert_int_equal(r->accepted, STOPPED_QUEUE);
	assert_int_equal(r->refused, STOPPED_RECORDS - STOPPED_QUEUE);
	assert_int_equal(r->other, 0);
	/* 200 ms of record timeout, with slack for a loaded machine. */
	if (r->slowest_ms >= 1000)
		fail_msg("a tally_record took %" PRIu64 " ms", r->slowest_ms);
	/* One wait for room, then refusals at once: not 900 waits. */
	if (r->total_ms >= 3000)
		fail_msg("1,000 records took %" PRIu64 " ms", r->total_ms);
}

static void test_robustness_stopped_daemon_bounded_queue(void **state)
{
	struct tally_options o = {
		.queue_max = STOPPED_QUEUE,
		.record_timeout_ms = 200,
	};
	struct stopped_round r1, r2;
	struct harness *h = *state;
	struct tally *t;
	long rss1, rss2;

	harness_start(h, NULL);
	o.dir = h->dir;
	assert_int_equal(tally_open_ex(&t, &o), 0);
	r1 = stopped_round(h, t);
	check_stopped_round(&r1);
	expect_counts(h->dir, "stopped", "llm", 100, 100);
	/* The same again must not cost memory. */
	rss1 = rss_kib(0);
	r2 = stopped_round(h, t);
	rss2 = rss_kib(0);
	check_stopped_round(&r2);
	expect_counts(h->dir, "stopped", "llm", 200, 200);
	if (rss2 - rss1 >= 1024)
		fail_msg("RSS grew from %ld to %ld KiB in the second round",
			 rss1, rss2);
	tally_close(t);
	harness_stop_daemon(h);
}

/*
 * Enough usages to fill the pipe many times over: about 100 bytes each,
 * against the client's 64 KiB send buffer (doubled by the kernel) and
 * what the socket pair holds while the daemon reads nothing.
 */
#define BURST_RECORDS 8000
/* How long the burst may take to show in another handle's snapshot. */
#define BURST_WAIT_MS 10000

/*
 * A burst that ends while the pipe is full reaches the ledger with no
 * further call on its handle: the handle's sender thread sends what the
 * pipe refused once the daemon drains it.
 */
static void test_robustness_burst_on_full_pipe_sent_while_idle(void **state)
{
	struct tally_usage u = harness_usage("burst", "llm", 2, 3);
	struct harness *h = *state;
	struct tally *t, *reader;
	uint64_t in = 0, out = 0, start;

	harness_start(h, NULL);
	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_open(&reader, h->dir), 0);
	assert_int_equal(kill(h->daemon, SIGSTOP), 0);
	wait_stopped(h->daemon);
	for (int i = 0; i < BURST_RECORDS; i++)
		assert_int_equal(tally_record(t, &u), 0);
	assert_int_equal(kill(h->daemon, SIGCONT), 0);
	/* From here on t is left alone until it is closed. */
	start = mono_ms();
	while (in < 2 * BURST_RECORDS && mono_ms() - start < BURST_WAIT_MS) {
		harness_sleep_ms(20);
		harness_counts(reader, "burst", "llm", &in, &out);
	}
	assert_int_equal(in, 2 * BURST_RECORDS);
	assert_int_equal(out, 3 * BURST_RECORDS);
	/* Closing syncs what is left: nothing, and nothing twice. */
	tally_close(t);
	harness_counts(reader, "burst", "llm", &in, &out);
	assert_int_equal(in, 2 * BURST_RECORDS);
	assert_int_equal(out, 3 * BURST_RECORDS);
	tally_close(reader);
	harness_stop_daemon(h);
}

/* ---- Scenario 5: SIGTERM under load ---- */

/* The last bytes of the daemon's log, kept until the next call. */
static const char *log_tail(const char *dir, size_t max)
{
	static char *text;
	char path[256];
	size_t len = 0;

	free(text);
	snprintf(path, sizeof(path), "%s/tallyd.log", dir);
	text = harness_read_file(path, &len);
	if (text == NULL)
		return "(no log)";
	return len > max ? text + len - max : text;
}

#define LOAD_WORKERS 4
/* Full scale, 50 SIGTERMs, runs in tally-bench's soak mode. */
#define LOAD_TERMS 5

struct load {
	const char *dir;
	atomic_int stop;
	uint64_t accepted[LOAD_WORKERS];
	int errors[LOAD_WORKERS];
	int sync_rc[LOAD_WORKERS];
};

static int load_worker(int w, void *arg)
{
	struct load *l = arg;
	uint64_t deadline = mono_ms() + 60000;
	struct tally_usage u;
	struct tally *t;
	char session[32];
	int rc;

	snprintf(session, sizeof(session), "term-%d", w);
	u = harness_usage(session, "llm", 1, 1);
	if (tally_open(&t, l->dir) < 0)
		return 1;
	for (long i = 0; i < 50000000 && !atomic_load(&l->stop); i++) {
		rc = tally_record(t, &u);
		if (rc == 0)
			l->accepted[w]++;
		else if (rc != -ENOBUFS)
			l->errors[w]++;
		/* A full queue (daemon down) refuses at once; let it run. */
		if (rc == -ENOBUFS && mono_ms() < deadline)
			harness_sleep_ms(1);
		if (i % 1024 == 0 && mono_ms() >= deadline)
			break;
	}
	l->sync_rc[w] = tally_sync(t, 30000);
	tally_close(t);
	return 0;
}

static void test_robustness_sigterm_under_load_keeps_acknowledged(void **state)
{
	struct harness *h = *state;
	struct load *l = shared_alloc(sizeof(*l));
	pid_t workers[LOAD_WORKERS];
	char failures[512] = "";
	uint64_t t0, dt;
	int status;

	harness_start(h, NULL);
	l->dir = h->dir;
	for (int w = 0; w < LOAD_WORKERS; w++)
		workers[w] = spawn(load_worker, w, l);
	for (int k = 0; k < LOAD_TERMS; k++) {
		harness_sleep_ms(400);
		t0 = mono_ms();
		status = harness_stop(h->daemon, SIGTERM, 2000);
		dt = mono_ms() - t0;
		h->daemon = -1;
		print_message("SIGTERM %d: status %d after %" PRIu64 " ms\n",
			      k + 1, status, dt);
		if (status != 0 && strlen(failures) < 400)
			snprintf(failures + strlen(failures),
				 sizeof(failures) - strlen(failures),
				 " [SIGTERM %d: status %d after %" PRIu64
				 " ms]",
				 k + 1, status, dt);
		harness_sleep_ms(100);
		harness_start(h, NULL);
	}
	atomic_store(&l->stop, 1);
	for (int w = 0; w < LOAD_WORKERS; w++)
		assert_int_equal(wait_child(workers[w], 60000), 0);
	if (failures[0] != '\0') {
		print_message("tallyd's log ends:\n%s\n",
			      log_tail(h->dir, 3000));
		fail_msg("tallyd did not exit 0 within 2 s:%s", failures);
	}
	for (int w = 0; w < LOAD_WORKERS; w++) {
		char session[32];

		snprintf(session, sizeof(session), "term-%d", w);
		assert_int_equal(l->errors[w], 0);
		assert_int_equal(l->sync_rc[w], 0);
		assert_true(l->accepted[w] > 0);
		expect_counts(h->dir, session, "llm", l->accepted[w],
			      l->accepted[w]);
		print_message("worker %d: %" PRIu64 " usages acknowledged\n", w,
			      l->accepted[w]);
	}
	munmap(l, sizeof(*l));
	harness_stop_daemon(h);
}

/* ---- Scenario 6: restart after SIGKILL ---- */

static void test_robustness_killed_daemon_restarts_fast(void **state)
{
	struct harness *h = *state;
	uint64_t t0, dt;

	harness_start(h, NULL);
	for (int k = 1; k <= 3; k++) {
		record_sync(h->dir, "killed", "llm", 1, 2, 1);
		harness_kill_daemon(h);
		/* Its sockets are left behind; the next one binds over them. */
		t0 = mono_ms();
		harness_start(h, NULL);
		dt = mono_ms() - t0;
		if (dt >= 1000)
			fail_msg("restart %d answered after %" PRIu64 " ms", k,
				 dt);
	}
	record_sync(h->dir, "killed", "llm", 1, 2, 1);
	expect_counts(h->dir, "killed", "llm", 8, 4);
	harness_stop_daemon(h);
}

/* ---- Scenario 7: a 1 MiB map ---- */

#define MAP_SESSIONS 2000
#define MAP_LLMS 10
#define MAP_PAIRS (MAP_SESSIONS * MAP_LLMS)
#define MAP_REPEATS 3

struct map_load {
	const char *dir;
	atomic_int stop;
	uint64_t snapshots;
	int snapshot_error;
};

/* Writer w records its half of the pairs, each MAP_REPEATS times. */
static int map_writer(int w, void *arg)
{
	struct map_load *m = arg;
	char session[32], llm[32];
	struct tally *t;
	int rc = 0;

	if (tally_open(&t, m->dir) < 0)
		return 1;
	for (int r = 0; r < MAP_REPEATS && rc == 0; r++) {
		for (int p = w; p < MAP_PAIRS && rc == 0; p += 2) {
			struct tally_usage u;

			snprintf(session, sizeof(session), "map-%d",
				 p / MAP_LLMS);
			snprintf(llm, sizeof(llm), "llm-%d", p % MAP_LLMS);
			u = harness_usage(session, llm, 3, 5);
			rc = tally_record(t, &u);
		}
	}
	if (rc == 0)
		rc = tally_sync(t, 90000);
	tally_close(t);
	return rc == 0 ? 0 : 2;
}

static int map_reader(int i, void *arg)
{
	struct map_load *m = arg;
	uint64_t seed = 7, deadline = mono_ms() + 100000;
	char session[32], *json;
	struct tally *t;
	int rc;

	if (tally_open(&t, m->dir) < 0)
		return 1;
	while (!atomic_load(&m->stop) && mono_ms() < deadline) {
		snprintf(session, sizeof(session), "map-%d",
			 (int)(next_random(&seed) % MAP_SESSIONS));
		rc = tally_session_json(t, session, &json);
		if (rc < 0) {
			m->snapshot_error = rc;
			break;
		}
		free(json);
		m->snapshots++;
	}
	tally_close(t);
	return m->snapshot_error == 0 ? 0 : 2;
}

/* Every session's every LLM holds MAP_REPEATS usages of 3 and 5. */
static void check_map_sessions(const char *dir)
{
	struct tally *t;
	char session[32], llm[32];
	uint64_t in, out;

	assert_int_equal(tally_open(&t, dir), 0);
	for (int s = 0; s < MAP_SESSIONS; s++) {
		snprintf(session, sizeof(session), "map-%d", s);
		for (int l = 0; l < MAP_LLMS; l++) {
			snprintf(llm, sizeof(llm), "llm-%d", l);
			harness_counts(t, session, llm, &in, &out);
			if (in != 3 * MAP_REPEATS || out != 5 * MAP_REPEATS)
				fail_msg("%s %s: %" PRIu64 "/%" PRIu64, session,
					 llm, in, out);
		}
	}
	tally_close(t);
}

static void test_robustness_small_map_keeps_every_usage(void **state)
{
	struct harness *h = *state;
	struct map_load *m = shared_alloc(sizeof(*m));
	pid_t writers[2], reader;
	struct totals s;

	harness_start(h, "--map-size", "1M", NULL);
	m->dir = h->dir;
	reader = spawn(map_reader, 0, m);
	writers[0] = spawn(map_writer, 0, m);
	writers[1] = spawn(map_writer, 1, m);
	assert_int_equal(wait_child(writers[0], 100000), 0);
	assert_int_equal(wait_child(writers[1], 100000), 0);
	atomic_store(&m->stop, 1);
	assert_int_equal(wait_child(reader, 10000), 0);
	assert_int_equal(m->snapshot_error, 0);
	assert_true(m->snapshots > 0);
	s = ledger_totals(h->dir);
	assert_int_equal(s.input, 180000);
	assert_int_equal(s.output, 300000);
	assert_int_equal(s.calls, 60000);
	assert_int_equal(s.sessions, MAP_SESSIONS);
	check_map_sessions(h->dir);
	assert_true(harness_stat(h->dir, "map_grows") > 0);
	harness_stop_daemon(h);
	/* The ledger outgrew 1 MiB; the same small setting still writes. */
	harness_start(h, "--map-size", "1M", NULL);
	record_sync(h->dir, "map-after", "llm", 1, 3, 5);
	expect_counts(h->dir, "map-after", "llm", 3, 5);
	munmap(m, sizeof(*m));
	harness_stop_daemon(h);
}

/* ---- Scenario 8: a frozen, then killed, reader ---- */

#define REWRITE_KEYS 20
#define REWRITE_ROUNDS 150

/* The child: a read transaction on the ledger, then frozen for good. */
static int frozen_reader(int i, void *arg)
{
	char path[256];
	MDB_env *env;
	MDB_txn *txn;

	snprintf(path, sizeof(path), "%s/ledger.mdb", (const char *)arg);
	if (mdb_env_create(&env) != 0 ||
	    mdb_env_open(env, path, MDB_RDONLY | MDB_NOSUBDIR, 0) != 0 ||
	    mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0)
		return 1;
	raise(SIGSTOP);
	return 0;
}

/* Rewrites the same keys, one commit per round; ledger_bytes growth. */
static uint64_t rewrite_rounds(const char *dir)
{
	uint64_t before = harness_stat(dir, "ledger_bytes");
	struct tally *t;
	char llm[16];

	assert_int_equal(tally_open(&t, dir), 0);
	for (int r = 0; r < REWRITE_ROUNDS; r++) {
		for (int k = 0; k < REWRITE_KEYS; k++) {
			struct tally_usage u;

			snprintf(llm, sizeof(llm), "llm-%d", k);
			u = harness_usage("rewrite", llm, 1, 1);
			assert_int_equal(tally_record(t, &u), 0);
		}
		assert_int_equal(tally_sync(t, 10000), 0);
	}
	tally_close(t);
	return harness_stat(dir, "ledger_bytes") - before;
}

/* Polls, at most timeout_ms, until the reader stats say it is gone. */
static bool readers_cleared(const char *dir, uint64_t readers, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;

	do {
		if (harness_stat(dir, "dead_readers") > 0 &&
		    harness_stat(dir, "readers") == readers)
			return true;
		harness_sleep_ms(50);
	} while (mono_ms() < deadline);
	return false;
}

static void test_robustness_dead_reader_cleared_pages_reused(void **state)
{
	struct harness *h = *state;
	uint64_t readers, age, frozen, after;
	pid_t child;

	harness_start(h, NULL);
	/* No handle of this process is open across the fork. */
	record_sync(h->dir, "rewrite", "llm-0", 1, 1, 1);
	readers = harness_stat(h->dir, "readers");
	child = spawn(frozen_reader, 0, h->dir);
	wait_stopped(child);
	assert_int_equal(harness_stat(h->dir, "readers"), readers + 1);
	frozen = rewrite_rounds(h->dir);
	/* The age is noted on the daemon's 1 s timer. */
	age = wait_stat(h->dir, "oldest_reader_age_ms", 1, 2500);
	if (age == 0)
		fail_msg("oldest_reader_age_ms stayed 0 with a frozen reader");
	kill(child, SIGKILL);
	assert_int_equal(wait_child(child, 5000), 128 + SIGKILL);
	if (!readers_cleared(h->dir, readers, 2500))
		fail_msg("dead reader not cleared in 2.5 s: dead_readers "
			 "%" PRIu64 ", readers %" PRIu64 " (want %" PRIu64 ")",
			 harness_stat(h->dir, "dead_readers"),
			 harness_stat(h->dir, "readers"), readers);
	after = rewrite_rounds(h->dir);
	print_message("ledger grew %" PRIu64 " bytes with a frozen reader, "
		      "%" PRIu64 " after it was cleared\n",
		      frozen, after);
	/* Pinned pages make the file grow; once freed they are reused. */
	if (frozen < 64 * KIB || after > 64 * KIB || after * 4 > frozen)
		fail_msg("ledger grew %" PRIu64 " bytes with the frozen reader,"
			 " %" PRIu64 " after it died",
			 frozen, after);
	expect_counts(h->dir, "rewrite", "llm-0", 2 * REWRITE_ROUNDS + 1,
		      2 * REWRITE_ROUNDS + 1);
	harness_stop_daemon(h);
}

/* ---- Scenario 9: snapshotters killed with SIGKILL ---- */

#define KILLED_PROCS 200
#define KILLED_ALIVE 100
#define KILLED_LLMS 50

/*
 * Snapshots in a loop for SNAP_BUSY_MS, when the parent kills it, then
 * idles until killed: a parent slowed down by a loaded machine finds it
 * waiting, not taking the CPU (or, under ASan, piling up quarantine).
 */
#define SNAP_BUSY_MS 150

static int snapshot_until_killed(int i, void *arg)
{
	uint64_t start = mono_ms();
	struct tally *t;
	char *json;

	if (tally_open(&t, arg) < 0)
		return 1;
	while (mono_ms() - start < SNAP_BUSY_MS) {
		if (tally_session_json(t, "killed", &json) < 0)
			return 2;
		free(json);
	}
	while (mono_ms() - start < 30000)
		harness_sleep_ms(5);
	tally_close(t);
	/* Never killed: the parent counts that as a failure. */
	return 3;
}

/* Kills the children whose time came; returns how many ended otherwise. */
static int kill_due(pid_t *pids, const uint64_t *kill_at, int n, int *alive,
		    int *done)
{
	int failed = 0, status;

	for (int i = 0; i < n; i++) {
		if (pids[i] == 0 || mono_ms() < kill_at[i])
			continue;
		kill(pids[i], SIGKILL);
		status = wait_child(pids[i], 5000);
		if (status != 128 + SIGKILL) {
			print_message("snapshotter %d ended: %d\n", i, status);
			failed++;
		}
		pids[i] = 0;
		(*alive)--;
		(*done)++;
	}
	return failed;
}

/* Kills each child at a random point; returns how many ended otherwise. */
static int kill_snapshotters(const char *dir)
{
	pid_t pids[KILLED_PROCS];
	uint64_t kill_at[KILLED_PROCS], seed = 42;
	uint64_t deadline = mono_ms() + 60000;
	int started = 0, done = 0, alive = 0, failed = 0;

	while (done < KILLED_PROCS && mono_ms() < deadline) {
		failed += kill_due(pids, kill_at, started, &alive, &done);
		if (started < KILLED_PROCS && alive < KILLED_ALIVE) {
			pids[started] = spawn(snapshot_until_killed, started,
					      (void *)dir);
			kill_at[started] =
				mono_ms() + 5 +
				next_random(&seed) % (SNAP_BUSY_MS - 10);
			started++;
			alive++;
		} else {
			harness_sleep_ms(1);
		}
	}
	return failed + (KILLED_PROCS - done);
}

static void test_robustness_killed_snapshotters_leave_it_usable(void **state)
{
	struct harness *h = *state;
	struct tally *t;
	uint64_t readers, deadline, in, out;
	char llm[16];

	harness_start(h, NULL);
	assert_int_equal(tally_open(&t, h->dir), 0);
	for (int i = 0; i < KILLED_LLMS; i++) {
		struct tally_usage u;

		snprintf(llm, sizeof(llm), "llm-%d", i);
		u = harness_usage("killed", llm, 4, 2);
		assert_int_equal(tally_record(t, &u), 0);
	}
	assert_int_equal(tally_sync(t, 10000), 0);
	tally_close(t);
	readers = harness_stat(h->dir, "readers");
	assert_int_equal(kill_snapshotters(h->dir), 0);
	/* A fresh snapshot, and a fresh record. */
	assert_int_equal(tally_open(&t, h->dir), 0);
	harness_counts(t, "killed", "llm-49", &in, &out);
	assert_int_equal(in, 4);
	assert_int_equal(out, 2);
	tally_close(t);
	record_sync(h->dir, "killed", "llm-0", 1, 4, 2);
	expect_counts(h->dir, "killed", "llm-0", 8, 4);
	/* The slots the killed ones held are cleared on the daemon's timer. */
	deadline = mono_ms() + 3000;
	while (harness_stat(h->dir, "readers") != readers &&
	       mono_ms() < deadline)
		harness_sleep_ms(50);
	assert_int_equal(harness_stat(h->dir, "readers"), readers);
	harness_stop_daemon(h);
}

/* ---- Scenario 10: a full filesystem ---- */

#define FULL_CHUNK 500
#define FULL_CHUNKS_MAX 40

/* Writes size bytes that take room on the filesystem. */
static void write_ballast(const char *path, size_t size)
{
	char block[4096];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	memset(block, 'b', sizeof(block));
	for (size_t n = 0; n < size; n += sizeof(block))
		assert_int_equal(write(fd, block, sizeof(block)),
				 (ssize_t)sizeof(block));
	close(fd);
}

/*
 * Records chunks of new sessions until a commit fails for want of room;
 * returns how many usages tally_record() accepted.
 */
static uint64_t fill_ledger(struct tally *t, const char *dir)
{
	uint64_t accepted = 0;
	char session[32];

	for (int c = 0; c < FULL_CHUNKS_MAX; c++) {
		for (int j = 0; j < FULL_CHUNK; j++) {
			struct tally_usage u;

			snprintf(session, sizeof(session), "full-%d-%d", c, j);
			u = harness_usage(session, "llm", 3, 5);
			if (tally_record(t, &u) == 0)
				accepted++;
		}
		if (tally_sync(t, 1000) == -ETIMEDOUT &&
		    harness_stat(dir, "commit_failures") > 0)
			return accepted;
	}
	fail_msg("the ledger never filled the 2 MiB tmpfs");
	return 0;
}

/* Mounts a 2 MiB tmpfs on dir; false when that is not allowed here. */
static bool mount_small_tmpfs(const char *dir)
{
	char cmd[300];

	assert_int_equal(mkdir(dir, 0700), 0);
	snprintf(cmd, sizeof(cmd),
		 "mount -t tmpfs -o size=2M tmpfs '%s' 2>/dev/null", dir);
	if (system(cmd) != 0)
		return false;
	snprintf(mounted, sizeof(mounted), "%s", dir);
	return true;
}

/* The daemon's log has a line about the failed commit; prints it. */
static void expect_commit_failure_logged(const char *log)
{
	char *text = harness_read_file(log, NULL), *line, *end;

	assert_non_null(text);
	for (line = text; line != NULL; line = end != NULL ? end + 1 : NULL) {
		end = strchr(line, '\n');
		if (end != NULL)
			*end = '\0';
		if (strstr(line, "commit") != NULL &&
		    strstr(line, "fail") != NULL) {
			print_message("%s\n", line);
			free(text);
			return;
		}
	}
	free(text);
	fail_msg("no log line says that a commit failed");
}

/* 'tallyctl record' of one usage (2, 4) to session "ctl", within 1 s. */
static void tallyctl_record(const char *dir, const char *out)
{
	const char *args[] = {"--dir", dir,	   "record", "--session",
			      "ctl",   "--llm",	   "llm",    "--input",
			      "2",     "--output", "4",	     "--timeout",
			      "1000",  NULL};
	char *text;

	if (run_tallyctl(out, args) != 0) {
		text = harness_read_file(out, NULL);
		fail_msg("tallyctl record failed: %s", text);
	}
}

static void test_robustness_full_filesystem_recovers(void **state)
{
	const char *extra[] = {"--map-size", "1M", NULL};
	struct harness *h = *state;
	char fs[200], ballast[256], log[256], out[256];
	uint64_t accepted, t0;
	struct tally *t;
	struct totals s;

	snprintf(fs, sizeof(fs), "%s/fs", h->dir);
	if (!mount_small_tmpfs(fs)) {
		print_message("cannot mount a tmpfs (not root?): "
			      "full-filesystem case skipped\n");
		skip();
	}
	snprintf(ballast, sizeof(ballast), "%s/ballast", fs);
	write_ballast(ballast, 1280 * KIB);
	snprintf(log, sizeof(log), "%s/tallyd.log", h->dir);
	h->daemon = harness_spawn(fs, extra, log);
	assert_true(h->daemon > 0);
	assert_int_equal(harness_wait_ready(fs, 5000), 0);
	assert_int_equal(tally_open(&t, fs), 0);
	accepted = fill_ledger(t, fs);
	expect_commit_failure_logged(log);

	/* Room again: what waited, 100 more and a tallyctl write, in 1 s. */
	assert_int_equal(unlink(ballast), 0);
	t0 = mono_ms();
	for (int i = 0; i < 100; i++) {
		struct tally_usage u = harness_usage("after-full", "llm", 3, 5);

		assert_int_equal(tally_record(t, &u), 0);
	}
	accepted += 100;
	if (tally_sync(t, 1000) != 0)
		fail_msg("not committed 1 s after room came back "
			 "(commit_failures %" PRIu64 ")",
			 harness_stat(fs, "commit_failures"));
	snprintf(out, sizeof(out), "%s/tallyctl.out", h->dir);
	tallyctl_record(fs, out);
	print_message("recovered in %" PRIu64 " ms\n", mono_ms() - t0);
	tally_close(t);
	s = ledger_totals(fs);
	assert_int_equal(s.input, 3 * accepted + 2);
	assert_int_equal(s.output, 5 * accepted + 4);
	assert_int_equal(s.calls, accepted + 1);
	harness_stop_daemon(h);
}

/* ---- Scenario 14: short-lived threads, each with a handle ---- */

#define THREADS 300
#define THREADS_ALIVE 64
#define THREAD_SNAPSHOTS 10

struct threads {
	const char *dir;
	const char *want;
	atomic_int ok;
};

static void *snapshot_thread(void *arg)
{
	struct threads *ts = arg;
	struct tally *t;
	char *json;

	if (tally_open(&t, ts->dir) < 0)
		return NULL;
	for (int i = 0; i < THREAD_SNAPSHOTS; i++) {
		if (tally_session_json(t, "threads", &json) < 0)
			continue;
		if (strcmp(json, ts->want) == 0)
			atomic_fetch_add(&ts->ok, 1);
		free(json);
	}
	tally_close(t);
	return NULL;
}

static void test_robustness_short_lived_threads_snapshot(void **state)
{
	struct harness *h = *state;
	pthread_t threads[THREADS];
	struct threads ts;
	struct tally *t;
	char *want;
	uint64_t readers;

	harness_start(h, NULL);
	record_sync(h->dir, "threads", "llm-a", 3, 5, 7);
	record_sync(h->dir, "threads", "llm-b", 2, 11, 0);
	readers = harness_stat(h->dir, "readers");
	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_session_json(t, "threads", &want), 0);
	assert_non_null(strstr(want, "\"inputTokens\":15,\"outputTokens\":21"));
	assert_non_null(strstr(want, "\"inputTokens\":22,\"outputTokens\":0"));
	ts.dir = h->dir;
	ts.want = want;
	atomic_init(&ts.ok, 0);
	/* A window of 64: thread i starts once thread i - 64 is joined. */
	for (int i = 0; i < THREADS; i++) {
		if (i >= THREADS_ALIVE)
			pthread_join(threads[i - THREADS_ALIVE], NULL);
		assert_int_equal(
			pthread_create(&threads[i], NULL, snapshot_thread, &ts),
			0);
	}
	for (int i = THREADS - THREADS_ALIVE; i < THREADS; i++)
		pthread_join(threads[i], NULL);
	assert_int_equal(atomic_load(&ts.ok), THREADS * THREAD_SNAPSHOTS);
	free(want);
	tally_close(t);
	/* No transaction outlived its call. */
	assert_int_equal(harness_stat(h->dir, "readers"), readers);
	harness_stop_daemon(h);
}

/* ---- Scenario 15: many processes, one key ---- */

#define HOT_WRITERS 64
/*
 * Full scale is 10,000 usages a process; under ASan 64 x 2,000 keeps the
 * file in its time budget on 2 cores.
 */
#if defined(__SANITIZE_ADDRESS__)
#define HOT_RECORDS 2000
#else
#define HOT_RECORDS 10000
#endif

struct hot {
	const char *dir;
	atomic_int stop;
	uint64_t snapshots[2];
	int bad[2];
};

static int hot_writer(int w, void *arg)
{
	struct hot *hs = arg;
	struct tally_usage u = harness_usage("hot", "llm", 1, 2);
	struct tally *t;
	int rc = 0;

	if (tally_open(&t, hs->dir) < 0)
		return 1;
	for (int i = 0; i < HOT_RECORDS && rc == 0; i++)
		rc = tally_record(t, &u);
	if (rc == 0)
		rc = tally_sync(t, 120000);
	tally_close(t);
	return rc == 0 ? 0 : 2;
}

/* Every snapshot is one commit's state: output is twice input, growing. */
static int hot_reader(int r, void *arg)
{
	struct hot *hs = arg;
	uint64_t deadline = mono_ms() + 150000, last = 0;
	struct tally *t;
	json_t *root, *u;
	char *json;

	if (tally_open(&t, hs->dir) < 0)
		return 1;
	while (!atomic_load(&hs->stop) && mono_ms() < deadline) {
		uint64_t in, out;

		if (tally_session_json(t, "hot", &json) < 0)
			return 2;
		root = json_loads(json, JSON_REJECT_DUPLICATES, NULL);
		free(json);
		if (root == NULL)
			return 3;
		u = json_object_get(json_object_get(root, "llm"), "usage");
		in = (uint64_t)json_integer_value(
			json_object_get(u, "inputTokens"));
		out = (uint64_t)json_integer_value(
			json_object_get(u, "outputTokens"));
		json_decref(root);
		if (out != 2 * in || in < last)
			hs->bad[r]++;
		last = in;
		hs->snapshots[r]++;
	}
	tally_close(t);
	return 0;
}

static void test_robustness_many_processes_one_key(void **state)
{
	struct harness *h = *state;
	struct hot *hs = shared_alloc(sizeof(*hs));
	pid_t readers[2];

	harness_start(h, NULL);
	hs->dir = h->dir;
	readers[0] = spawn(hot_reader, 0, hs);
	readers[1] = spawn(hot_reader, 1, hs);
	assert_int_equal(
		run_bounded(HOT_WRITERS, HOT_WRITERS, hot_writer, hs, 150000),
		0);
	atomic_store(&hs->stop, 1);
	assert_int_equal(wait_child(readers[0], 10000), 0);
	assert_int_equal(wait_child(readers[1], 10000), 0);
	assert_int_equal(hs->bad[0] + hs->bad[1], 0);
	assert_true(hs->snapshots[0] > 0 && hs->snapshots[1] > 0);
	expect_counts(h->dir, "hot", "llm", HOT_WRITERS * HOT_RECORDS,
		      2 * HOT_WRITERS * HOT_RECORDS);
	munmap(hs, sizeof(*hs));
	harness_stop_daemon(h);
}

/* ---- Scenario 16: hostile bytes on the data socket ---- */

static const uint8_t producer_h[16] = "producer-hostile";
static const uint8_t producer_c[16] = "producer-cut-cut";

/* A good usage from a real handle, between the bad messages. */
static void record_good(struct tally *t, uint64_t *good)
{
	struct tally_usage u = harness_usage("good", "llm", 1, 1);

	assert_int_equal(tally_record(t, &u), 0);
	(*good)++;
}

static void send_request(int s, Tally__Request *req, uint64_t *bad)
{
	uint8_t buf[256];

	assert_true(tally__request__get_packed_size(req) <= sizeof(buf));
	send_bad(s, buf, tally__request__pack(req, buf), bad);
}

/* Empty messages, and control requests sent to the data socket. */
static void send_empty_and_control(int s, uint64_t *bad)
{
	Tally__Request req = TALLY__REQUEST__INIT;
	Tally__SyncRequest sync = TALLY__SYNC_REQUEST__INIT;

	for (int i = 0; i < 16; i++)
		send_bad(s, "", 0, bad);
	req.op_case = TALLY__REQUEST__OP_PING;
	req.ping = 1;
	send_request(s, &req, bad);
	req.op_case = TALLY__REQUEST__OP_STATS;
	req.stats = 1;
	send_request(s, &req, bad);
	sync.producer.data = (uint8_t *)producer_h;
	sync.producer.len = 16;
	sync.seq = 1;
	sync.wait_ms = 10;
	req.op_case = TALLY__REQUEST__OP_SYNC;
	req.sync = &sync;
	send_request(s, &req, bad);
}

/* Batches whose producer id is missing, empty, or a byte short. */
static void send_bad_producers(int s, uint64_t *bad)
{
	Tally__Usage u = wire_usage("bad", 1, 1);
	Tally__Usage *us[1] = {&u};
	Tally__Batch b = TALLY__BATCH__INIT;
	uint8_t buf[512], usage[256];
	size_t n = 0, ulen;

	/* No field 1 at all: the others written by hand. */
	ulen = tally__usage__pack(&u, usage);
	buf[n++] = 2 << 3;
	n += put_varint(buf + n, 1);
	buf[n++] = (3 << 3) | 2;
	n += put_varint(buf + n, ulen);
	memcpy(buf + n, usage, ulen);
	n += ulen;
	buf[n++] = 4 << 3;
	n += put_varint(buf + n, 1);
	send_bad(s, buf, n, bad);
	b.producer.data = (uint8_t *)producer_h;
	b.first_seq = 1;
	b.n_usages = 1;
	b.usages = us;
	b.count = 1;
	b.producer.len = 0;
	send_bad(s, buf, tally__batch__pack(&b, buf), bad);
	b.producer.len = 15;
	send_bad(s, buf, tally__batch__pack(&b, buf), bad);
}

/* A length prefix of 2^35 on the producer, and on a usage's session. */
static void send_huge_lengths(int s, uint64_t *bad)
{
	uint8_t buf[128], inner[32];
	size_t n = 0, m = 0;

	buf[n++] = (1 << 3) | 2;
	n += put_varint(buf + n, UINT64_C(1) << 35);
	memcpy(buf + n, producer_h, 16);
	n += 16;
	send_bad(s, buf, n, bad);

	inner[m++] = (1 << 3) | 2;
	m += put_varint(inner + m, UINT64_C(1) << 35);
	memcpy(inner + m, "bad", 3);
	m += 3;
	n = 0;
	buf[n++] = (1 << 3) | 2;
	buf[n++] = 16;
	memcpy(buf + n, producer_h, 16);
	n += 16;
	buf[n++] = 2 << 3;
	buf[n++] = 1;
	buf[n++] = (3 << 3) | 2;
	n += put_varint(buf + n, m);
	memcpy(buf + n, inner, m);
	n += m;
	buf[n++] = 4 << 3;
	buf[n++] = 1;
	send_bad(s, buf, n, bad);
}

#define RANDOM_MESSAGES 10000

/* Random buffers of 1 to 4096 bytes, from a fixed seed. */
static void send_random(int s, struct tally *t, uint64_t *bad, uint64_t *good)
{
	static uint8_t buf[4096];
	uint64_t seed = 0x7a11e5eedULL;
	size_t len;

	for (int i = 0; i < RANDOM_MESSAGES; i++) {
		/* One that happened to be a batch would not be bad: redraw. */
		for (int tries = 0; tries < 100; tries++) {
			len = 1 + next_random(&seed) % sizeof(buf);
			for (size_t j = 0; j < len; j++)
				buf[j] = (uint8_t)next_random(&seed);
			if (!decodes_as_batch(buf, len))
				break;
		}
		send_bad(s, buf, len, bad);
		if (i % 500 == 0)
			record_good(t, good);
	}
}

/* A valid batch of 3 usages, cut at every byte, then sent whole. */
static void send_prefixes(int s, struct tally *t, uint64_t *bad, uint64_t *good)
{
	Tally__Usage u[3];
	uint8_t buf[1024];
	size_t len;

	for (int i = 0; i < 3; i++) {
		u[i] = wire_usage("cut", 5, 7);
		set_bytes(&u[i].llm_display_name, "openAI - gpt-4o");
		u[i].has_llm_display_name = 1;
	}
	len = pack_batch(buf, sizeof(buf), producer_c, 1, u, 3);
	for (size_t k = 1; k < len; k++) {
		send_bad(s, buf, k, bad);
		if (k % 25 == 0)
			record_good(t, good);
	}
	raw_send(s, buf, len);
}

/*
 * Under ASan freed memory waits in a quarantine (256 MiB by default), so
 * the daemon's RSS would measure that rather than what it keeps: the
 * daemon of a memory case runs without one.
 */
static void start_without_quarantine(struct harness *h)
{
	const char *old = getenv("ASAN_OPTIONS");
	char *saved = old != NULL ? strdup(old) : NULL;
	char opts[512];

	snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=0",
		 saved != NULL ? saved : "",
		 saved != NULL && saved[0] != '\0' ? ":" : "");
	setenv("ASAN_OPTIONS", opts, 1);
	harness_start(h, NULL);
	if (saved != NULL)
		setenv("ASAN_OPTIONS", saved, 1);
	else
		unsetenv("ASAN_OPTIONS");
	free(saved);
}

static void test_robustness_hostile_input_dropped_and_counted(void **state)
{
	struct harness *h = *state;
	uint64_t bad = 0, good = 0;
	struct tally *t;
	long rss0, rss1;
	int s, status;

	start_without_quarantine(h);
	assert_int_equal(tally_open(&t, h->dir), 0);
	s = raw_push(h->dir);
	record_good(t, &good);
	assert_int_equal(tally_sync(t, 10000), 0);
	rss0 = rss_kib(h->daemon);
	send_empty_and_control(s, &bad);
	record_good(t, &good);
	send_bad_producers(s, &bad);
	record_good(t, &good);
	send_huge_lengths(s, &bad);
	send_random(s, t, &bad, &good);
	send_prefixes(s, t, &bad, &good);
	assert_int_equal(tally_sync(t, 20000), 0);
	wait_stat(h->dir, "malformed_messages", bad, 20000);
	wait_stat(h->dir, "usages_applied", good + 3, 10000);
	/* Nothing more comes in late. */
	harness_sleep_ms(200);
	assert_int_equal(harness_stat(h->dir, "malformed_messages"), bad);
	assert_int_equal(harness_stat(h->dir, "oversized_messages"), 0);
	expect_counts(h->dir, "good", "llm", good, good);
	expect_counts(h->dir, "cut", "llm", 15, 21);
	expect_counts(h->dir, "bad", "llm", 0, 0);
	assert_int_equal(waitpid(h->daemon, &status, WNOHANG), 0);
	rss1 = rss_kib(h->daemon);
	if (rss1 - rss0 >= 8 * KIB)
		fail_msg("tallyd's RSS grew from %ld to %ld KiB", rss0, rss1);
	print_message("%" PRIu64 " bad messages, %" PRIu64 " good usages; "
		      "tallyd RSS %ld -> %ld KiB\n",
		      bad, good, rss0, rss1);
	nn_close(s);
	tally_close(t);
	harness_stop_daemon(h);
}

/* ---- Scenario 17: the message limit ---- */

static const uint8_t producer_o[16] = "producer-big-msg";
/* Usages of about 70 bytes: a batch of 8 to 9 KiB. */
#define BIG_USAGES 120

/* A whole, valid batch of about 8 KiB. */
static size_t pack_big_batch(uint8_t *buf, size_t cap)
{
	Tally__Usage u[BIG_USAGES];
	size_t len;

	for (int i = 0; i < BIG_USAGES; i++) {
		u[i] = wire_usage("big", 1, 1);
		set_bytes(
			&u[i].llm_display_name,
			"a display name of sixty bytes, to make the batch big");
		u[i].has_llm_display_name = 1;
	}
	len = pack_batch(buf, cap, producer_o, 1, u, BIG_USAGES);
	assert_true(len >= 8 * KIB && len < 12 * KIB);
	return len;
}

static void test_robustness_oversized_message_dropped(void **state)
{
	static uint8_t big[16 * KIB];
	struct harness *h = *state;
	int s;

	harness_start(h, "--max-message", "4K", NULL);
	s = raw_push(h->dir);
	raw_send(s, big, pack_big_batch(big, sizeof(big)));
	/* The same sender goes on, from the same sequence number. */
	for (int k = 0; k < 10; k++)
		send_batch(s, producer_o, 1 + 3 * (uint64_t)k, "after-big", 3,
			   2, 3);
	assert_int_equal(wait_stat(h->dir, "usages_applied", 30, 10000), 30);
	expect_counts(h->dir, "after-big", "llm", 60, 90);
	expect_counts(h->dir, "big", "llm", 0, 0);
	assert_int_equal(harness_stat(h->dir, "oversized_messages"), 1);
	assert_int_equal(harness_stat(h->dir, "malformed_messages"), 0);
	nn_close(s);
	harness_stop_daemon(h);
}

/* A long name of n bytes; the caller frees it. */
static char *long_name(size_t n, char c)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static void test_robustness_client_refuses_oversized_usage(void **state)
{
	struct tally_options o = {.max_message = 4096};
	struct harness *h = *state;
	struct tally_usage u;
	struct tally *t;
	char *id, *name;

	harness_start(h, "--max-message", "4K", NULL);
	o.dir = h->dir;
	/* A handle held to the daemon's limit: every batch passes. */
	assert_int_equal(tally_open_ex(&t, &o), 0);
	u = harness_usage("at-limit", "llm", 1, 1);
	for (int i = 0; i < 300; i++)
		assert_int_equal(tally_record(t, &u), 0);
	assert_int_equal(tally_sync(t, 10000), 0);
	tally_close(t);
	expect_counts(h->dir, "at-limit", "llm", 300, 300);

	/* A usage that alone passes the handle's limit is refused. */
	o.max_message = 1024;
	assert_int_equal(tally_open_ex(&t, &o), 0);
	id = long_name(TALLY_ID_MAX, 'i');
	name = long_name(TALLY_NAME_MAX, 'n');
	u = harness_usage(id, id, 1, 1);
	u.llm_display_name = u.provider_type = u.model_type = name;
	assert_int_equal(tally_record(t, &u), -EMSGSIZE);
	assert_int_equal(tally_pending(t), 0);
	u = harness_usage("small", "llm", 1, 1);
	assert_int_equal(tally_record(t, &u), 0);
	assert_int_equal(tally_sync(t, 10000), 0);
	tally_close(t);
	expect_counts(h->dir, "small", "llm", 1, 1);
	expect_counts(h->dir, id, id, 0, 0);
	free(id);
	free(name);
	assert_int_equal(harness_stat(h->dir, "oversized_messages"), 0);
	harness_stop_daemon(h);
}

/* ---- Scenario 19: counts out of range ---- */

static const uint8_t producer_w[16] = {
	0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
	0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
};

static bool has_number(const char *s, const char *num)
{
	size_t n = strlen(num);

	for (const char *p = strstr(s, num); p != NULL; p = strstr(p + 1, num))
		if ((p == s || p[-1] < '0' || p[-1] > '9') &&
		    (p[n] < '0' || p[n] > '9'))
			return true;
	return false;
}

/* Whether one line of text names both the producer and the sequence. */
static bool log_names(const char *text, const char *hex, uint64_t seq)
{
	char num[24], line[1024];

	snprintf(num, sizeof(num), "%" PRIu64, seq);
	while (*text != '\0') {
		const char *end = strchr(text, '\n');
		size_t n = end != NULL ? (size_t)(end - text) : strlen(text);

		snprintf(line, sizeof(line), "%.*s", (int)n, text);
		if (strstr(line, hex) != NULL && has_number(line, num))
			return true;
		text += n + (end != NULL);
	}
	return false;
}

static void test_robustness_out_of_range_counts_refused(void **state)
{
	const char *hex = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
	struct harness *h = *state;
	Tally__Usage u[3];
	uint8_t buf[512];
	char log[256], *text;
	int s;

	harness_start(h, NULL);
	s = raw_push(h->dir);
	send_batch(s, producer_w, 1, "wrap", 16, 1, 1);
	send_batch(s, producer_w, 17, "wrap", 16, 1, 1);
	/* Seq 33: -35 wrapped to uint64; seq 34: 2^40; seq 35: good. */
	u[0] = wire_usage("wrap", (uint64_t)-35, 1);
	u[1] = wire_usage("wrap", 1, UINT64_C(1) << 40);
	u[2] = wire_usage("wrap", 1, 1);
	raw_send(s, buf, pack_batch(buf, sizeof(buf), producer_w, 33, u, 3));
	assert_int_equal(wait_stat(h->dir, "usages_applied", 33, 10000), 33);
	assert_int_equal(harness_stat(h->dir, "malformed_usages"), 2);
	assert_int_equal(harness_stat(h->dir, "gap_batches"), 0);
	expect_counts(h->dir, "wrap", "llm", 33, 33);
	snprintf(log, sizeof(log), "%s/tallyd.log", h->dir);
	text = harness_read_file(log, NULL);
	assert_non_null(text);
	if (!log_names(text, hex, 33) || !log_names(text, hex, 34))
		fail_msg("no log line names producer %s and seq 33 and 34:\n%s",
			 hex, text);
	free(text);
	nn_close(s);
	harness_stop_daemon(h);
}

/* ---- Scenario 20 and the Also list: the daemon's files and fds ---- */

static void check_mode(const char *path, mode_t mode, gid_t gid)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	if ((st.st_mode & 0777) != mode || st.st_gid != gid)
		fail_msg("%s: mode %o, group %u; want %o, group %u", path,
			 (unsigned)(st.st_mode & 0777), (unsigned)st.st_gid,
			 (unsigned)mode, (unsigned)gid);
}

static void test_robustness_group_owns_sockets_and_dir(void **state)
{
	struct harness *h = *state;
	struct group *g = getgrgid(getgid());
	char name[64], path[256];

	assert_non_null(g);
	snprintf(name, sizeof(name), "%s", g->gr_name);
	harness_start(h, "--group", name, NULL);
	snprintf(path, sizeof(path), "%s/ingest.ipc", h->dir);
	check_mode(path, 0660, getgid());
	snprintf(path, sizeof(path), "%s/control.ipc", h->dir);
	check_mode(path, 0660, getgid());
	/* mkdtemp made it 0700: the daemon sets 0750 after binding. */
	check_mode(h->dir, 0750, getgid());
	record_sync(h->dir, "group", "llm", 1, 1, 1);
	expect_counts(h->dir, "group", "llm", 1, 1);
	harness_stop_daemon(h);
}

/* Starts tallyd with descriptors 0, 1 and 2 closed. */
static pid_t spawn_closed_stdio(const char *dir)
{
	const char *tallyd = getenv("TALLYD");
	pid_t pid;

	assert_non_null(tallyd);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		close(0);
		close(1);
		close(2);
		/* -v: more lines for whatever became its stderr. */
		execl(tallyd, tallyd, "--dir", dir, "-v", (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void check_dev_null(pid_t pid, int fd)
{
	char path[64], target[256];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%ld/fd/%d", (long)pid, fd);
	n = readlink(path, target, sizeof(target) - 1);
	assert_true(n > 0);
	target[n] = '\0';
	if (strcmp(target, "/dev/null") != 0)
		fail_msg("tallyd's fd %d is %s, not /dev/null", fd, target);
}

static void test_robustness_starts_with_stdio_closed(void **state)
{
	struct harness *h = *state;
	int s;

	h->daemon = spawn_closed_stdio(h->dir);
	assert_int_equal(harness_wait_ready(h->dir, 5000), 0);
	for (int fd = 0; fd <= 2; fd++)
		check_dev_null(h->daemon, fd);
	record_sync(h->dir, "stdio", "llm", 10, 1, 2);
	/* A malformed message makes it write a line to its stderr. */
	s = raw_push(h->dir);
	raw_send(s, "junk", 4);
	assert_int_equal(wait_stat(h->dir, "malformed_messages", 1, 5000), 1);
	nn_close(s);
	record_sync(h->dir, "stdio", "llm", 10, 1, 2);
	harness_stop_daemon(h);
	/* The ledger took none of what it wrote: it opens and adds up. */
	harness_start(h, NULL);
	expect_counts(h->dir, "stdio", "llm", 20, 40);
	record_sync(h->dir, "stdio", "llm", 1, 1, 2);
	expect_counts(h->dir, "stdio", "llm", 21, 42);
	harness_stop_daemon(h);
}

/* The flags of fd in pid, from /proc; -1 when it is gone. */
static long fd_flags(pid_t pid, const char *fd)
{
	char path[320], text[1024], *p;

	snprintf(path, sizeof(path), "/proc/%ld/fdinfo/%s", (long)pid, fd);
	if (read_proc(path, text, sizeof(text)) <= 0)
		return -1;
	p = strstr(text, "flags:");
	return p != NULL ? strtol(p + 6, NULL, 8) : -1;
}

/* Lists the fds of pid, past 2, that are not close-on-exec. */
static void list_inheritable(pid_t pid, char *out, size_t len)
{
	char dir[64], link[400], target[128];
	struct dirent *e;
	DIR *d;

	out[0] = '\0';
	snprintf(dir, sizeof(dir), "/proc/%ld/fd", (long)pid);
	d = opendir(dir);
	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		long flags;
		ssize_t n;

		if (e->d_name[0] == '.' || atoi(e->d_name) <= 2)
			continue;
		flags = fd_flags(pid, e->d_name);
		if (flags < 0 || (flags & O_CLOEXEC))
			continue;
		snprintf(link, sizeof(link), "%s/%s", dir, e->d_name);
		n = readlink(link, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = '\0';
		snprintf(out + strlen(out), len - strlen(out), " %s (%s)",
			 e->d_name, target);
	}
	closedir(d);
}

static void test_robustness_daemon_fds_close_on_exec(void **state)
{
	struct harness *h = *state;
	char open_fds[1024];
	struct tally *t;
	struct tally_usage u = harness_usage("cloexec", "llm", 1, 1);
	int s;

	harness_start(h, NULL);
	/* Connections on both sockets, so that accepted ones exist. */
	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_record(t, &u), 0);
	assert_int_equal(tally_sync(t, 10000), 0);
	s = raw_push(h->dir);
	send_batch(s, producer_h, 1, "cloexec", 1, 1, 1);
	assert_int_equal(wait_stat(h->dir, "usages_applied", 2, 5000), 2);
	list_inheritable(h->daemon, open_fds, sizeof(open_fds));
	if (open_fds[0] != '\0')
		fail_msg("tallyd fds without close-on-exec:%s", open_fds);
	nn_close(s);
	tally_close(t);
	harness_stop_daemon(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		robust_test(test_robustness_one_shot_processes_all_count),
		harness_test(test_robustness_two_attempts_are_two_usages),
		harness_test(
			test_robustness_committed_batch_resent_after_restart),
		harness_test(test_robustness_stopped_daemon_bounded_queue),
		harness_test(
			test_robustness_burst_on_full_pipe_sent_while_idle),
		robust_test(
			test_robustness_sigterm_under_load_keeps_acknowledged),
		harness_test(test_robustness_killed_daemon_restarts_fast),
		robust_test(test_robustness_small_map_keeps_every_usage),
		robust_test(test_robustness_dead_reader_cleared_pages_reused),
		robust_test(
			test_robustness_killed_snapshotters_leave_it_usable),
		robust_test(test_robustness_full_filesystem_recovers),
		harness_test(test_robustness_short_lived_threads_snapshot),
		robust_test(test_robustness_many_processes_one_key),
		harness_test(test_robustness_hostile_input_dropped_and_counted),
		harness_test(test_robustness_oversized_message_dropped),
		harness_test(test_robustness_client_refuses_oversized_usage),
		harness_test(test_robustness_out_of_range_counts_refused),
		harness_test(test_robustness_group_owns_sockets_and_dir),
		harness_test(test_robustness_starts_with_stdio_closed),
		harness_test(test_robustness_daemon_fds_close_on_exec),
	};

	/* TALLY_TEST_FILTER=test_robustness_x* runs only the cases named. */
	if (getenv("TALLY_TEST_FILTER") != NULL)
		cmocka_set_test_filter(getenv("TALLY_TEST_FILTER"));
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
