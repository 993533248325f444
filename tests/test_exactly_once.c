/*
 * Exactly-once accounting against a real daemon: repeats and gaps on the
 * wire, restarts, kills, forks and many processes at once.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>

#include "harness.h"
#include "tally.pb-c.h"

/* A raw PUSH socket, to put exact bytes on the wire. */
static int raw_push(const char *dir)
{
	char url[256];
	int s = nn_socket(AF_SP, NN_PUSH);

	assert_true(s >= 0);
	snprintf(url, sizeof(url), "ipc://%s/ingest.ipc", dir);
	assert_true(nn_connect(s, url) >= 0);
	return s;
}

/* Sends one batch of n usages (input 10, output 1 each) for session s1. */
static void send_batch(int s, const uint8_t *producer, uint64_t first_seq,
		       size_t n, uint64_t input)
{
	Tally__Batch b = TALLY__BATCH__INIT;
	Tally__Usage u = TALLY__USAGE__INIT;
	Tally__Usage *us[16];
	uint8_t buf[4096];
	size_t len;

	assert_true(n <= 16);
	u.session_id.data = (uint8_t *)"s1";
	u.session_id.len = 2;
	u.llm_reference_id.data = (uint8_t *)"llm";
	u.llm_reference_id.len = 3;
	u.input_tokens = input;
	u.output_tokens = 1;
	for (size_t i = 0; i < n; i++)
		us[i] = &u;
	b.producer.data = (uint8_t *)producer;
	b.producer.len = 16;
	b.first_seq = first_seq;
	b.n_usages = n;
	b.usages = us;
	b.count = (uint32_t)n;
	len = tally__batch__pack(&b, buf);
	assert_int_equal(nn_send(s, buf, len, 0), (int)len);
}

/* Waits, at most 5 s, until the daemon's counter reaches want. */
static void wait_stat(const char *dir, const char *name, uint64_t want)
{
	for (int i = 0; i < 500; i++) {
		if (harness_stat(dir, name) >= want)
			return;
		harness_sleep_ms(10);
	}
	fail_msg("stat %s never reached %llu", name, (unsigned long long)want);
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

static const uint8_t producer_a[16] = "producer-aaaaaaa";

static void test_exactly_once_repeated_batch_counts_once(void **state)
{
	struct harness *h = *state;
	int s;

	harness_start(h, NULL);
	s = raw_push(h->dir);
	send_batch(s, producer_a, 1, 3, 10);
	send_batch(s, producer_a, 1, 3, 10);
	/* Overlaps the first: only seq 4 is new. */
	send_batch(s, producer_a, 2, 3, 10);
	wait_stat(h->dir, "usages_received", 9);
	wait_stat(h->dir, "usages_applied", 4);
	expect_counts(h->dir, "s1", "llm", 40, 4);
	assert_int_equal(harness_stat(h->dir, "duplicates"), 5);
	nn_close(s);
	harness_stop_daemon(h);
}

static void test_exactly_once_gap_is_not_applied(void **state)
{
	struct harness *h = *state;
	int s;

	harness_start(h, NULL);
	s = raw_push(h->dir);
	send_batch(s, producer_a, 1, 1, 10);
	send_batch(s, producer_a, 3, 1, 10);
	wait_stat(h->dir, "gap_batches", 1);
	wait_stat(h->dir, "usages_applied", 1);
	expect_counts(h->dir, "s1", "llm", 10, 1);
	/* The producer resends from the gap: both count, once. */
	send_batch(s, producer_a, 2, 2, 10);
	wait_stat(h->dir, "usages_applied", 3);
	expect_counts(h->dir, "s1", "llm", 30, 3);
	assert_int_equal(harness_stat(h->dir, "gap_usages"), 1);
	nn_close(s);
	harness_stop_daemon(h);
}

static void test_exactly_once_bad_usage_dropped_and_counted(void **state)
{
	struct harness *h = *state;
	int s;

	harness_start(h, NULL);
	s = raw_push(h->dir);
	assert_int_equal(nn_send(s, "garbage", 7, 0), 7);
	assert_int_equal(nn_send(s, "", 0, 0), 0);
	send_batch(s, producer_a, 1, 1, TALLY_TOKENS_MAX + 1);
	send_batch(s, producer_a, 2, 1, (uint64_t)-35);
	/* A refused usage still uses up its sequence: no gap after it. */
	send_batch(s, producer_a, 3, 1, 10);
	wait_stat(h->dir, "usages_applied", 1);
	expect_counts(h->dir, "s1", "llm", 10, 1);
	assert_int_equal(harness_stat(h->dir, "malformed_messages"), 2);
	assert_int_equal(harness_stat(h->dir, "malformed_usages"), 2);
	assert_int_equal(harness_stat(h->dir, "gap_batches"), 0);
	nn_close(s);
	harness_stop_daemon(h);
}

/* SIGTERM right after the daemon took the messages: all are committed. */
static void test_exactly_once_sigterm_keeps_received(void **state)
{
	struct harness *h = *state;
	const int n = 2000;
	int s;

	harness_start(h, NULL);
	s = raw_push(h->dir);
	for (int i = 0; i < n; i++)
		send_batch(s, producer_a, (uint64_t)i + 1, 1, 10);
	wait_stat(h->dir, "usages_received", n);
	harness_stop_daemon(h);
	nn_close(s);
	harness_start(h, NULL);
	expect_counts(h->dir, "s1", "llm", 10 * n, n);
	harness_stop_daemon(h);
}

struct workers {
	const char *dir;
	int records;
};

static int record_many(int w, void *arg)
{
	struct workers *ws = arg;
	struct tally *t;
	char session[32];
	int rc;

	if (tally_open(&t, ws->dir) < 0)
		return 1;
	for (int i = 0; i < ws->records; i++) {
		struct tally_usage u;

		snprintf(session, sizeof(session), "s%d", i % 4);
		u = harness_usage(session, (i / 4) % 2 ? "llm-b" : "llm-a", 1,
				  2);
		if ((rc = tally_record(t, &u)) < 0) {
			fprintf(stderr, "worker %d: record %d: %s\n", w, i,
				tally_strerror(rc));
			return 1;
		}
	}
	rc = tally_sync(t, 60000);
	tally_close(t);
	return rc == 0 ? 0 : 1;
}

static void test_exactly_once_eight_processes(void **state)
{
	struct workers ws = {NULL, 10000};
	struct harness *h = *state;

	harness_start(h, NULL);
	ws.dir = h->dir;
	assert_int_equal(harness_fork(8, record_many, &ws, 120000), 0);
	/* 80,000 usages over 4 sessions and 2 LLMs: 10,000 each. */
	for (int s = 0; s < 4; s++) {
		char session[8];

		snprintf(session, sizeof(session), "s%d", s);
		expect_counts(h->dir, session, "llm-a", 10000, 20000);
		expect_counts(h->dir, session, "llm-b", 10000, 20000);
	}
	assert_int_equal(harness_stat(h->dir, "usages_applied"), 80000);
	harness_stop_daemon(h);
}

static int record_one_and_close(int w, void *arg)
{
	struct workers *ws = arg;
	struct tally_usage u = harness_usage("one-shot", "llm", 7, 11);
	struct tally *t;
	int rc;

	if (tally_open(&t, ws->dir) < 0)
		return 1;
	rc = tally_record(t, &u);
	tally_close(t);
	return rc == 0 ? 0 : 1;
}

/* nanomsg has no linger: close must wait for the commit, not the send. */
static void test_exactly_once_close_delivers(void **state)
{
	struct workers ws = {NULL, 0};
	struct harness *h = *state;

	harness_start(h, NULL);
	ws.dir = h->dir;
	assert_int_equal(harness_fork(100, record_one_and_close, &ws, 60000),
			 0);
	expect_counts(h->dir, "one-shot", "llm", 700, 1100);
	harness_stop_daemon(h);
}

static void record_n(struct tally *t, int n)
{
	for (int i = 0; i < n; i++) {
		struct tally_usage u = harness_usage("restart", "llm", 3, 5);

		assert_int_equal(tally_record(t, &u), 0);
	}
}

/*
 * A daemon killed while usages are in flight loses what it had not
 * committed; the client resends exactly that, and repeats never count.
 */
static void test_exactly_once_daemon_killed_midway(void **state)
{
	struct harness *h = *state;
	struct tally *t;

	harness_start(h, NULL);
	assert_int_equal(tally_open(&t, h->dir), 0);
	record_n(t, 500);
	assert_int_equal(tally_sync(t, 10000), 0);
	record_n(t, 500);
	harness_kill_daemon(h);
	record_n(t, 250);
	harness_start(h, NULL);
	record_n(t, 250);
	assert_int_equal(tally_sync(t, 20000), 0);
	assert_int_equal(tally_pending(t), 0);
	tally_close(t);
	expect_counts(h->dir, "restart", "llm", 1500 * 3, 1500 * 5);
	harness_stop_daemon(h);
}

static int child_records(int i, void *arg)
{
	struct tally *t = arg;
	struct tally_usage u = harness_usage("forked", "llm", 1, 1);
	char *json;

	if (tally_session_json(t, "forked", &json) < 0)
		return 1;
	free(json);
	if (tally_record(t, &u) < 0 || tally_sync(t, 10000) < 0)
		return 2;
	return 0;
}

/* A handle used across fork(): each child is its own producer. */
static void test_exactly_once_handle_survives_fork(void **state)
{
	struct harness *h = *state;
	struct tally *t;
	uint64_t in, out;
	char *json;

	harness_start(h, NULL);
	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_session_json(t, "forked", &json), 0);
	assert_string_equal(json, "{}");
	free(json);
	assert_int_equal(harness_fork(4, child_records, t, 30000), 0);
	harness_counts(t, "forked", "llm", &in, &out);
	assert_int_equal(in, 4);
	assert_int_equal(out, 4);
	/* The parent still records and syncs after its children. */
	{
		struct tally_usage u = harness_usage("forked", "llm", 1, 1);

		assert_int_equal(tally_record(t, &u), 0);
		assert_int_equal(tally_sync(t, 10000), 0);
	}
	harness_counts(t, "forked", "llm", &in, &out);
	assert_int_equal(in, 5);
	tally_close(t);
	harness_stop_daemon(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		harness_test(test_exactly_once_repeated_batch_counts_once),
		harness_test(test_exactly_once_gap_is_not_applied),
		harness_test(test_exactly_once_bad_usage_dropped_and_counted),
		harness_test(test_exactly_once_sigterm_keeps_received),
		harness_test(test_exactly_once_eight_processes),
		harness_test(test_exactly_once_close_delivers),
		harness_test(test_exactly_once_daemon_killed_midway),
		harness_test(test_exactly_once_handle_survives_fork),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
