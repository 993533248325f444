/*
 * tally-cluster.so against real nats-servers: connecting late, a refused
 * stream, deduplicated publishes, ordered fetches, acks that hold across
 * a reopen, redelivery of released and nak'ed messages, a server that
 * stops and comes back on the same store or on an empty one, and three
 * replicas that outlive the server the link was using, a consumer deleted
 * on the server, a short max age, and publishing while the server stops
 * and starts again and again.
 *
 * The module is $TALLY_CLUSTER_MODULE, loaded with dlopen() as tallyd
 * loads it; the servers are $NATS_SERVER on free loopback ports, each
 * storing under the test's mkdtemp directory.
 */
#include <dlfcn.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "cluster_link.h"
#include "harness.h"
#include "nats_harness.h"

#define NODE "0123456789abcdef0123456789abcdef"
#define STREAM "tally_test"
#define WAIT_MS 5000
#define READY_MS 10000
/* The consumer's AckWait is 10 s: a released message comes after it. */
#define REDELIVER_MS 15000
#define MAX_HELD 256

struct fixture {
	char dir[128];
	int port;
	char url[128];
	pid_t server;
	/* The three servers of the replicated case, and their client ports. */
	pid_t peers[3];
	int peer_port[3];
	const struct cluster_link_ops *ops;
	struct cluster_link *link;
	struct cluster_in held[MAX_HELD];
	size_t n_held;
	pthread_mutex_t log_lock;
	char log[32768];
	size_t log_len;
	/* Lines that start with the tag tallyd puts before them itself. */
	int tagged_lines;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Keeps what the module logs, for the asserts, and shows it. */
static void keep_log(void *ctx, int level, const char *msg)
{
	struct fixture *f = ctx;
	int n;

	fprintf(stderr, "[link %d] %s\n", level, msg);
	pthread_mutex_lock(&f->log_lock);
	if (strncmp(msg, "cluster:", 8) == 0)
		f->tagged_lines++;
	n = snprintf(f->log + f->log_len, sizeof(f->log) - f->log_len, "%s\n",
		     msg);
	if (n > 0 && (size_t)n < sizeof(f->log) - f->log_len)
		f->log_len += (size_t)n;
	pthread_mutex_unlock(&f->log_lock);
}

static bool logged(struct fixture *f, const char *text)
{
	bool found;

	pthread_mutex_lock(&f->log_lock);
	found = strstr(f->log, text) != NULL;
	pthread_mutex_unlock(&f->log_lock);
	return found;
}

static int times_logged(struct fixture *f, const char *text)
{
	int n = 0;

	pthread_mutex_lock(&f->log_lock);
	for (const char *p = strstr(f->log, text); p != NULL;
	     p = strstr(p + 1, text))
		n++;
	pthread_mutex_unlock(&f->log_lock);
	return n;
}

/* Connection events are logged from libnats' thread, a moment later. */
static bool wait_logged(struct fixture *f, const char *text, int ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)ms;

	while (!logged(f, text)) {
		if (mono_ms() > deadline)
			return false;
		harness_sleep_ms(10);
	}
	return true;
}

static const struct cluster_link_ops *load_module(void)
{
	const char *path = getenv("TALLY_CLUSTER_MODULE");
	cluster_link_entry entry;
	void *so;

	if (path == NULL)
		return NULL;
	/* Never closed: libnats keeps thread keys until the process exits. */
	so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (so == NULL) {
		fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
		return NULL;
	}
	entry = (cluster_link_entry)dlsym(so, CLUSTER_LINK_SYMBOL);
	return entry != NULL ? entry() : NULL;
}

static int setup(void **state)
{
	const char *tmp = getenv("TMPDIR");
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	*state = f;
	pthread_mutex_init(&f->log_lock, NULL);
	snprintf(f->dir, sizeof(f->dir), "%s/tally-nats.XXXXXX",
		 tmp != NULL && tmp[0] == '/' ? tmp : "/tmp");
	f->ops = load_module();
	f->port = nats_free_port();
	snprintf(f->url, sizeof(f->url), "nats://127.0.0.1:%d", f->port);
	if (mkdtemp(f->dir) == NULL || f->ops == NULL || f->port < 0)
		return -1;
	f->server = -1;
	return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
			struct FTW *ftw)
{
	return remove(path);
}

/* Runs after a failed assert too: nothing the test started survives it. */
static int teardown(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < f->n_held; i++)
		f->ops->release(f->link, &f->held[i]);
	if (f->link != NULL)
		f->ops->close(f->link);
	nats_stop(f->server);
	for (int i = 0; i < 3; i++)
		nats_stop(f->peers[i]);
	if (f->dir[0] != '\0')
		nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	pthread_mutex_destroy(&f->log_lock);
	free(f);
	return 0;
}

static void start_server(struct fixture *f)
{
	f->server = nats_start(f->dir, f->port, 0, NULL, "tally-test");
	assert_true(f->server > 0);
}

static void stop_server(struct fixture *f)
{
	assert_int_equal(nats_stop(f->server), 0);
	f->server = -1;
}

static void open_link(struct fixture *f)
{
	struct cluster_link_config cfg = {
		.urls = f->url,
		.stream = STREAM,
		.node = NODE,
		.replicas = 1,
		.max_age_ms = 0,
		.log = keep_log,
		.log_ctx = f,
	};

	assert_int_equal(f->ops->open(&cfg, &f->link), 0);
	assert_non_null(f->link);
}

static void close_link(struct fixture *f)
{
	f->ops->close(f->link);
	f->link = NULL;
}

/* Polls ready() until it is want; asserts it got there within ms. */
static void wait_ready(struct fixture *f, int want, int ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)ms;

	while (f->ops->ready(f->link) != want) {
		if (mono_ms() > deadline)
			fail_msg("ready() not %d after %d ms", want, ms);
		harness_sleep_ms(20);
	}
}

static void up(struct fixture *f)
{
	start_server(f);
	open_link(f);
	wait_ready(f, 1, READY_MS);
}

/* Publishes messages first..first+n-1: id "u-<i>", data "usage <i>". */
static int publish_range(struct fixture *f, int first, int n)
{
	struct cluster_out out[128];
	char ids[128][16], data[128][32];

	assert_true(n <= 128);
	for (int i = 0; i < n; i++) {
		snprintf(ids[i], sizeof(ids[i]), "u-%d", first + i);
		snprintf(data[i], sizeof(data[i]), "usage %d", first + i);
		out[i].id = ids[i];
		out[i].data = data[i];
		out[i].len = strlen(data[i]);
	}
	return f->ops->publish(f->link, out, (size_t)n, WAIT_MS);
}

/* Publishes first..first+n-1 again and again until all are stored. */
static void publish_until_stored(struct fixture *f, int first, int n, int ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)ms;
	int done = 0, rc;

	while (done < n) {
		if (mono_ms() > deadline)
			fail_msg("%d of %d stored after %d ms", done, n, ms);
		rc = publish_range(f, first + done, n - done);
		if (rc > 0)
			done += rc;
		else
			harness_sleep_ms(100);
	}
}

/*
 * Fetches until want messages are held or ms ran out, then asks once more
 * with a short wait to prove that nothing else comes. Returns how many
 * were fetched in all (held in f->held).
 */
static size_t fetch_all(struct fixture *f, size_t want, int ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)ms;
	int rc;

	while (f->n_held < want && mono_ms() < deadline) {
		rc = f->ops->fetch(f->link, &f->held[f->n_held],
				   MAX_HELD - f->n_held, 500);
		assert_true(rc >= 0);
		f->n_held += (size_t)rc;
	}
	if (f->n_held < MAX_HELD) {
		rc = f->ops->fetch(f->link, &f->held[f->n_held],
				   MAX_HELD - f->n_held, 300);
		assert_true(rc >= 0);
		f->n_held += (size_t)rc;
	}
	return f->n_held;
}

/* held[k] is usage first+k, published by NODE, stored as seq0+k. */
static void check_held(struct fixture *f, int first, uint64_t seq0)
{
	for (size_t k = 0; k < f->n_held; k++) {
		struct cluster_in *m = &f->held[k];
		char want[32];

		snprintf(want, sizeof(want), "usage %d", first + (int)k);
		assert_int_equal(m->len, strlen(want));
		assert_memory_equal(m->data, want, m->len);
		assert_string_equal(m->node, NODE);
		assert_int_equal(m->stream_seq, seq0 + k);
		assert_true(m->stored_ns > 0);
		assert_non_null(m->handle);
	}
}

static void ack_all(struct fixture *f)
{
	for (size_t i = 0; i < f->n_held; i++) {
		assert_int_equal(f->ops->ack(f->link, &f->held[i]), 0);
		f->ops->release(f->link, &f->held[i]);
	}
	f->n_held = 0;
}

static void test_cluster_link_waits_for_a_late_server(void **state)
{
	struct fixture *f = *state;
	struct cluster_in in[4];
	uint64_t t0 = mono_ms();

	open_link(f);
	/* open() returned at once, with nobody listening. */
	assert_true(mono_ms() - t0 < 1000);
	assert_int_equal(f->ops->ready(f->link), 0);
	assert_int_equal(publish_range(f, 0, 1), -ENOTCONN);
	assert_int_equal(f->ops->fetch(f->link, in, 4, 100), -ENOTCONN);
	start_server(f);
	wait_ready(f, 1, READY_MS);
	assert_true(logged(f, "created stream " STREAM));
	assert_true(logged(f, "created consumer tally-" NODE));
	assert_int_equal(publish_range(f, 0, 1), 1);
}

static void test_cluster_link_dedups_and_delivers_in_order(void **state)
{
	struct fixture *f = *state;

	up(f);
	assert_int_equal(publish_range(f, 0, 100), 100);
	/* 50 repeats and 10 new: all 60 known stored, 10 of them new. */
	assert_int_equal(publish_range(f, 50, 60), 60);
	assert_int_equal(fetch_all(f, 110, WAIT_MS), 110);
	check_held(f, 0, 1);
	assert_int_equal(f->held[109].pending, 0);
	assert_int_equal(f->held[0].pending, 109);
	ack_all(f);

	/* Acked is done with, for the same node across a reopen. */
	close_link(f);
	open_link(f);
	wait_ready(f, 1, READY_MS);
	assert_int_equal(fetch_all(f, 0, 0), 0);
	assert_int_equal(publish_range(f, 110, 1), 1);
	assert_int_equal(fetch_all(f, 1, WAIT_MS), 1);
	check_held(f, 110, 111);
	ack_all(f);
}

static void test_cluster_link_redelivers_a_released_message(void **state)
{
	struct fixture *f = *state;
	uint64_t t0;

	up(f);
	assert_int_equal(publish_range(f, 0, 2), 2);
	assert_int_equal(fetch_all(f, 2, WAIT_MS), 2);
	/* The first is done with; the second is dropped un-acked. */
	assert_int_equal(f->ops->ack(f->link, &f->held[0]), 0);
	f->ops->release(f->link, &f->held[0]);
	f->ops->release(f->link, &f->held[1]);
	assert_null(f->held[1].handle);
	f->n_held = 0;
	t0 = mono_ms();
	assert_int_equal(fetch_all(f, 1, REDELIVER_MS), 1);
	assert_true(mono_ms() - t0 >= 5000);
	check_held(f, 1, 2);
	ack_all(f);
}

static void test_cluster_link_redelivers_after_nak(void **state)
{
	struct fixture *f = *state;
	uint64_t t0;

	up(f);
	assert_int_equal(publish_range(f, 0, 1), 1);
	assert_int_equal(fetch_all(f, 1, WAIT_MS), 1);
	t0 = mono_ms();
	assert_int_equal(f->ops->nak(f->link, &f->held[0], 300), 0);
	f->ops->release(f->link, &f->held[0]);
	f->n_held = 0;
	assert_int_equal(fetch_all(f, 1, 3000), 1);
	/* Not before the delay, and well before the ack wait. */
	assert_true(mono_ms() - t0 >= 250);
	assert_true(mono_ms() - t0 < 5000);
	check_held(f, 0, 1);
	ack_all(f);
}

static void test_cluster_link_survives_a_server_restart(void **state)
{
	struct fixture *f = *state;
	char expect[192];
	uint64_t t0;
	int rc;

	up(f);
	assert_int_equal(publish_range(f, 0, 10), 10);

	stop_server(f);
	t0 = mono_ms();
	rc = publish_range(f, 10, 10);
	assert_true(rc < 0);
	assert_true(rc == -ENOTCONN || rc == -ETIMEDOUT);
	assert_true(mono_ms() - t0 <= WAIT_MS + 500);
	wait_ready(f, 0, 3000);
	snprintf(expect, sizeof(expect), "disconnected from %s", f->url);
	assert_true(wait_logged(f, expect, 2000));

	start_server(f);
	wait_ready(f, 1, READY_MS);
	snprintf(expect, sizeof(expect), "reconnected to %s", f->url);
	assert_true(wait_logged(f, expect, 2000));
	assert_int_equal(publish_range(f, 10, 10), 10);
	/* What was stored before the stop is still there, once. */
	assert_int_equal(fetch_all(f, 20, WAIT_MS), 20);
	check_held(f, 0, 1);
	ack_all(f);
}

struct late_publish {
	struct fixture *f;
	int delay_ms;
	int rc;
};

static void *publish_later(void *arg)
{
	struct late_publish *p = arg;

	harness_sleep_ms(p->delay_ms);
	p->rc = publish_range(p->f, 0, 3);
	return NULL;
}

/*
 * A fetch waiting on a quiet stream returns as soon as messages come,
 * not when its timeout ends; publish runs on another thread meanwhile.
 */
static void test_cluster_link_fetch_returns_with_the_first(void **state)
{
	struct fixture *f = *state;
	struct late_publish p = {.f = f, .delay_ms = 500};
	pthread_t th;
	uint64_t t0, took;
	int rc;

	up(f);
	t0 = mono_ms();
	assert_int_equal(pthread_create(&th, NULL, publish_later, &p), 0);
	rc = f->ops->fetch(f->link, f->held, MAX_HELD, 8000);
	took = mono_ms() - t0;
	pthread_join(th, NULL);
	fprintf(stderr, "fetch returned %d after %llu ms\n", rc,
		(unsigned long long)took);
	assert_int_equal(p.rc, 3);
	assert_true(rc >= 1);
	f->n_held = (size_t)rc;
	assert_true(took >= 400);
	assert_true(took < 3000);
	assert_int_equal(fetch_all(f, 3, WAIT_MS), 3);
	check_held(f, 0, 1);
	ack_all(f);
}

static void test_cluster_link_recreates_a_lost_stream(void **state)
{
	struct fixture *f = *state;
	char fresh[160];

	up(f);
	assert_int_equal(publish_range(f, 0, 3), 3);

	/* The server comes back with an empty store: no stream, no consumer. */
	stop_server(f);
	snprintf(fresh, sizeof(fresh), "%s/fresh", f->dir);
	assert_int_equal(mkdir(fresh, 0700), 0);
	f->server = nats_start(fresh, f->port, 0, NULL, "tally-test");
	assert_true(f->server > 0);
	wait_ready(f, 1, READY_MS);
	assert_int_equal(publish_range(f, 3, 2), 2);
	assert_int_equal(fetch_all(f, 2, WAIT_MS), 2);
	check_held(f, 3, 1);
	ack_all(f);
}

/* Three replicas on one server: refused, said once, and -EIO each time. */
static void test_cluster_link_reports_a_refused_stream(void **state)
{
	struct fixture *f = *state;
	struct cluster_link_config cfg = {
		.urls = f->url,
		.stream = STREAM,
		.node = NODE,
		.replicas = 3,
		.log = keep_log,
		.log_ctx = f,
	};
	const char *line = "creating the stream on stream " STREAM
			   " failed: replicas > 1 not supported";

	start_server(f);
	assert_int_equal(f->ops->open(&cfg, &f->link), 0);
	assert_true(wait_logged(f, "connected to", 3000));
	assert_int_equal(publish_range(f, 0, 1), -EIO);
	assert_int_equal(publish_range(f, 0, 1), -EIO);
	assert_int_equal(f->ops->fetch(f->link, f->held, 4, 100), -EIO);
	assert_int_equal(f->ops->ready(f->link), 0);
	assert_int_equal(times_logged(f, line), 1);
}

/* Starts three routed servers under f->dir/n<i>; f->url names all three. */
static void start_three(struct fixture *f)
{
	int port[3], route[3];
	char routes[128], dir[160];
	size_t len = 0;

	for (int i = 0; i < 3; i++) {
		port[i] = nats_free_port();
		route[i] = nats_free_port();
		assert_true(port[i] > 0 && route[i] > 0);
	}
	snprintf(routes, sizeof(routes),
		 "nats-route://127.0.0.1:%d,nats-route://127.0.0.1:%d,"
		 "nats-route://127.0.0.1:%d",
		 route[0], route[1], route[2]);
	for (int i = 0; i < 3; i++) {
		char name[16];

		snprintf(dir, sizeof(dir), "%s/n%d", f->dir, i);
		snprintf(name, sizeof(name), "n%d", i);
		assert_int_equal(mkdir(dir, 0700), 0);
		f->peers[i] = nats_start(dir, port[i], route[i], routes, name);
		f->peer_port[i] = port[i];
		assert_true(f->peers[i] > 0);
		len += (size_t)snprintf(f->url + len, sizeof(f->url) - len,
					"%snats://127.0.0.1:%d",
					i > 0 ? "," : "", port[i]);
	}
}

/*
 * Three replicas on three routed servers: the helpers make a cluster,
 * and publishing and fetching go on when one server stops.
 */
static void test_cluster_link_three_replicas_outlive_a_server(void **state)
{
	struct fixture *f = *state;
	struct cluster_link_config cfg = {
		.stream = STREAM,
		.node = NODE,
		.replicas = 3,
		.log = keep_log,
		.log_ctx = f,
	};
	char expect[96];
	int used = -1;

	start_three(f);
	cfg.urls = f->url;
	assert_int_equal(f->ops->open(&cfg, &f->link), 0);
	/* A JetStream cluster elects its meta leader first: allow for it. */
	wait_ready(f, 1, 30000);
	assert_int_equal(publish_range(f, 0, 20), 20);

	/* The server the link uses goes: it moves to another. */
	for (int i = 0; i < 3; i++) {
		snprintf(expect, sizeof(expect),
			 "connected to nats://127.0.0.1:%d", f->peer_port[i]);
		if (logged(f, expect))
			used = i;
	}
	assert_true(used >= 0);
	assert_int_equal(nats_stop(f->peers[used]), 0);
	f->peers[used] = -1;
	publish_until_stored(f, 20, 20, 30000);
	assert_true(wait_logged(f, "reconnected to", 2000));
	snprintf(expect, sizeof(expect), "reconnected to nats://127.0.0.1:%d",
		 f->peer_port[used]);
	assert_false(logged(f, expect));
	assert_int_equal(fetch_all(f, 40, 15000), 40);
	check_held(f, 0, 1);
	ack_all(f);
}

/* Asks the server itself, as an operator would, to delete the consumer. */
static void delete_consumer(struct fixture *f)
{
	char reply[512];

	assert_int_equal(nats_request(f->port,
				      "$JS.API.CONSUMER.DELETE." STREAM
				      ".tally-" NODE,
				      "", reply, sizeof(reply), 3000),
			 0);
	fprintf(stderr, "delete: %s\n", reply);
	assert_non_null(strstr(reply, "\"success\":true"));
}

struct late_delete {
	struct fixture *f;
	int delay_ms;
};

static void *delete_later(void *arg)
{
	struct late_delete *d = arg;

	harness_sleep_ms(d->delay_ms);
	delete_consumer(d->f);
	return NULL;
}

/*
 * A consumer deleted on the server, once while no fetch waits and once
 * under a waiting fetch, is made again: what is published next is fetched
 * within a bounded time (the new consumer reads the stream from its start,
 * so what was acked before comes again; tallyd drops those repeats).
 */
static void test_cluster_link_recreates_a_deleted_consumer(void **state)
{
	struct fixture *f = *state;
	struct late_delete d = {.f = f, .delay_ms = 300};
	struct cluster_in in[4];
	pthread_t th;
	uint64_t t0;
	int rc;

	up(f);
	assert_int_equal(publish_range(f, 0, 2), 2);
	assert_int_equal(fetch_all(f, 2, WAIT_MS), 2);
	ack_all(f);

	delete_consumer(f);
	assert_int_equal(publish_range(f, 2, 3), 3);
	t0 = mono_ms();
	assert_int_equal(fetch_all(f, 5, 8000), 5);
	fprintf(stderr, "fetched again after %llu ms\n",
		(unsigned long long)(mono_ms() - t0));
	assert_true(mono_ms() - t0 < 6000);
	check_held(f, 0, 1);
	ack_all(f);
	assert_true(logged(f, "consumer tally-" NODE " on stream " STREAM
			      " is gone"));
	assert_int_equal(f->ops->ready(f->link), 1);

	/* Deleted under a waiting fetch: it ends, empty or with an error. */
	assert_int_equal(pthread_create(&th, NULL, delete_later, &d), 0);
	rc = f->ops->fetch(f->link, in, 4, 2000);
	pthread_join(th, NULL);
	assert_true(rc <= 0);
	assert_int_equal(publish_range(f, 5, 1), 1);
	t0 = mono_ms();
	assert_int_equal(fetch_all(f, 6, 8000), 6);
	assert_true(mono_ms() - t0 < 6000);
	check_held(f, 0, 1);
	ack_all(f);
	assert_int_equal(f->ops->ready(f->link), 1);
	assert_int_equal(f->tagged_lines, 0);
}

/* ready() tells when the consumer is gone and nobody fetches. */
static void test_cluster_link_ready_sees_a_deleted_consumer(void **state)
{
	struct fixture *f = *state;
	uint64_t t0;

	up(f);
	delete_consumer(f);
	t0 = mono_ms();
	/* The first look-up finds it gone and makes it again. */
	while (!logged(f, "is gone from the server")) {
		assert_true(mono_ms() - t0 < 5000);
		f->ops->ready(f->link);
		harness_sleep_ms(50);
	}
	wait_ready(f, 1, READY_MS);
	assert_int_equal(times_logged(f, "created consumer tally-" NODE), 2);
	assert_int_equal(publish_range(f, 0, 1), 1);
	assert_int_equal(fetch_all(f, 1, WAIT_MS), 1);
	check_held(f, 0, 1);
	ack_all(f);
}

/* A max age under the 2 minute duplicate window: the window shrinks. */
static void test_cluster_link_takes_a_short_max_age(void **state)
{
	struct fixture *f = *state;
	struct cluster_link_config cfg = {
		.urls = f->url,
		.stream = STREAM,
		.node = NODE,
		.replicas = 1,
		.max_age_ms = 30000,
		.log = keep_log,
		.log_ctx = f,
	};

	start_server(f);
	assert_int_equal(f->ops->open(&cfg, &f->link), 0);
	wait_ready(f, 1, READY_MS);
	assert_true(logged(f, "created stream " STREAM));
	assert_int_equal(publish_range(f, 0, 2), 2);
	/* Deduplicated within the shorter window still. */
	assert_int_equal(publish_range(f, 0, 2), 2);
	assert_int_equal(fetch_all(f, 2, WAIT_MS), 2);
	check_held(f, 0, 1);
	ack_all(f);
}

#define STRESS_BATCH 256

struct stress {
	struct fixture *f;
	atomic_bool stop;
	int stored, rounds, fetched;
};

/* Publishes batches of new ids with a short wait, like tallyd's outbox. */
static void *stress_publish(void *arg)
{
	static struct cluster_out out[STRESS_BATCH];
	static char ids[STRESS_BATCH][24], data[STRESS_BATCH][200];
	struct stress *st = arg;
	int next = 0, rc;

	while (!atomic_load(&st->stop) && st->rounds < 100000) {
		for (int i = 0; i < STRESS_BATCH; i++) {
			snprintf(ids[i], sizeof(ids[i]), "s-%d", next + i);
			memset(data[i], 'a' + i % 26, sizeof(data[i]));
			out[i].id = ids[i];
			out[i].data = data[i];
			out[i].len = sizeof(data[i]);
		}
		rc = st->f->ops->publish(st->f->link, out, STRESS_BATCH, 300);
		st->rounds++;
		if (rc > 0) {
			next += rc;
			st->stored += rc;
		} else {
			harness_sleep_ms(20);
		}
	}
	return NULL;
}

/* Fetches, acks and releases, as tallyd's consumer and main threads do. */
static void *stress_fetch(void *arg)
{
	struct stress *st = arg;
	struct cluster_in in[64];
	int n;

	while (!atomic_load(&st->stop)) {
		n = st->f->ops->fetch(st->f->link, in, 64, 200);
		if (n < 0)
			harness_sleep_ms(50);
		for (int i = 0; i < n; i++) {
			st->f->ops->ack(st->f->link, &in[i]);
			st->f->ops->release(st->f->link, &in[i]);
		}
		st->fetched += n > 0 ? n : 0;
	}
	return NULL;
}

/*
 * Publishing and fetching go on while the server stops and starts again
 * three times: under the sanitizers this catches a message freed twice or
 * used after its free across ack timeouts, taken-back publishes and late
 * acks. Afterwards the link publishes again.
 */
static void test_cluster_link_publishes_through_restarts(void **state)
{
	struct fixture *f = *state;
	struct stress st = {.f = f};
	pthread_t pub, con;

	up(f);
	atomic_init(&st.stop, false);
	assert_int_equal(pthread_create(&pub, NULL, stress_publish, &st), 0);
	assert_int_equal(pthread_create(&con, NULL, stress_fetch, &st), 0);
	for (int i = 0; i < 3; i++) {
		harness_sleep_ms(700);
		stop_server(f);
		harness_sleep_ms(1000);
		start_server(f);
	}
	harness_sleep_ms(1500);
	atomic_store(&st.stop, true);
	pthread_join(pub, NULL);
	pthread_join(con, NULL);
	fprintf(stderr, "stress: %d rounds, %d stored, %d fetched\n", st.rounds,
		st.stored, st.fetched);
	assert_true(st.stored > 0);
	wait_ready(f, 1, READY_MS);
	publish_until_stored(f, 0, 10, 10000);
}

static void test_cluster_link_refuses_bad_config(void **state)
{
	struct fixture *f = *state;
	struct cluster_link_config cfg = {
		.urls = f->url,
		.stream = STREAM,
		.node = NODE,
		.replicas = 1,
	};
	struct cluster_link *l = (struct cluster_link *)f;

	cfg.stream = "bad.name";
	assert_int_equal(f->ops->open(&cfg, &l), -EINVAL);
	assert_null(l);
	cfg.stream = STREAM;
	cfg.node = "0123456789ABCDEF0123456789ABCDEF";
	assert_int_equal(f->ops->open(&cfg, &l), -EINVAL);
	cfg.node = NODE;
	cfg.replicas = 0;
	assert_int_equal(f->ops->open(&cfg, &l), -EINVAL);
	cfg.replicas = 1;
	cfg.urls = " , ";
	assert_int_equal(f->ops->open(&cfg, &l), -EINVAL);
}

/* URLs libnats would retry forever without a word are refused at once. */
static void test_cluster_link_refuses_bad_urls(void **state)
{
	static const char *const bad[] = {
		"nats://127.0.0.1:99999",
		"nats://127.0.0.1:0",
		"nats://127.0.0.1:42x2",
		"nats://127.0.0.1:",
		"nats://:4222",
		"http://127.0.0.1:4222",
		"127.0.0.1:4222",
		"nats://127.0.0.1:4222,ws://127.0.0.1:4223",
		"nats://127.0.0.1:4222/path",
	};
	struct fixture *f = *state;
	struct cluster_link_config cfg = {
		.stream = STREAM,
		.node = NODE,
		.replicas = 1,
		.log = keep_log,
		.log_ctx = f,
	};
	char good[160];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cfg.urls = bad[i];
		/* Into f->link: teardown closes a link opened by mistake. */
		assert_int_equal(f->ops->open(&cfg, &f->link), -EINVAL);
		assert_null(f->link);
	}
	assert_true(logged(f, "refusing the NATS URLs \"http://127.0.0.1"));
	/* Nobody listens on f->port: open() succeeds and keeps trying. */
	snprintf(good, sizeof(good), "NATS://u:p@127.0.0.1:%d, tls://[::1]:%d",
		 f->port, f->port);
	cfg.urls = good;
	assert_int_equal(f->ops->open(&cfg, &f->link), 0);
	assert_int_equal(f->tagged_lines, 0);
}

#define link_test(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		link_test(test_cluster_link_refuses_bad_config),
		link_test(test_cluster_link_refuses_bad_urls),
		link_test(test_cluster_link_waits_for_a_late_server),
		link_test(test_cluster_link_reports_a_refused_stream),
		link_test(test_cluster_link_dedups_and_delivers_in_order),
		link_test(test_cluster_link_redelivers_a_released_message),
		link_test(test_cluster_link_redelivers_after_nak),
		link_test(test_cluster_link_survives_a_server_restart),
		link_test(test_cluster_link_fetch_returns_with_the_first),
		link_test(test_cluster_link_recreates_a_lost_stream),
		link_test(test_cluster_link_three_replicas_outlive_a_server),
		link_test(test_cluster_link_recreates_a_deleted_consumer),
		link_test(test_cluster_link_ready_sees_a_deleted_consumer),
		link_test(test_cluster_link_takes_a_short_max_age),
		link_test(test_cluster_link_publishes_through_restarts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
