/*
 * test_remote - how tallyd applies records of other hosts: the daemon's
 * own ingest and commit code on a real LMDB ledger in a temporary
 * directory, fed hand-made batches in the orders a stream can bring them:
 * late, repeated, after a hole that never closes, forged.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tallyd.h"

struct fixture {
	struct tallyd d;
	char dir[64];
	char path[96];
};

static const uint8_t this_host[LEDGER_PRODUCER_ID_LEN] = {0xaa};
static const uint8_t host_b[LEDGER_PRODUCER_ID_LEN] = {0xbb};
static const uint8_t host_c[LEDGER_PRODUCER_ID_LEN] = {0xcc};
static const uint8_t producer[LEDGER_PRODUCER_ID_LEN] = {1, 2, 3};
static const uint8_t local_producer[LEDGER_PRODUCER_ID_LEN] = {4, 5, 6};

/* ingest.c only asks whether the daemon is clustered. */
static char not_a_cluster;

static void open_ledger(struct fixture *f)
{
	assert_int_equal(
		ledger_open(&f->d.ledger, f->path, (size_t)1 << 24, true), 0);
	agg_init(&f->d.aggs[0]);
	f->d.fill = &f->d.aggs[0];
}

static void close_ledger(struct fixture *f)
{
	agg_fini(&f->d.aggs[0]);
	producers_fini(&f->d.producers);
	ledger_close(&f->d.ledger);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/tally-remote.XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/ledger.mdb", f->dir);
	f->d.cfg.max_message = 1 << 20;
	f->d.cfg.max_pending = 1 << 16;
	f->d.cluster = (struct cluster *)&not_a_cluster;
	memcpy(f->d.node_id, this_host, sizeof(this_host));
	log_set_level(LOG_CRIT);
	open_ledger(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char path[128];

	close_ledger(f);
	ingest_fini();
	snprintf(path, sizeof(path), "%s/ledger.mdb-lock", f->dir);
	unlink(path);
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* A packed batch of n usages of 1 input token each, from first on. */
static size_t batch(uint8_t *buf, size_t cap, const uint8_t *id, uint64_t first,
		    size_t n)
{
	Tally__Usage u[64], *pu[64];
	Tally__Batch b = TALLY__BATCH__INIT;

	assert_true(n <= 64);
	for (size_t i = 0; i < n; i++) {
		tally__usage__init(&u[i]);
		u[i].session_id.data = (uint8_t *)"s1";
		u[i].session_id.len = 2;
		u[i].llm_reference_id.data = (uint8_t *)"llm";
		u[i].llm_reference_id.len = 3;
		u[i].input_tokens = 1;
		pu[i] = &u[i];
	}
	b.producer.data = (uint8_t *)id;
	b.producer.len = LEDGER_PRODUCER_ID_LEN;
	b.first_seq = first;
	b.usages = pu;
	b.n_usages = n;
	b.count = (uint32_t)n;
	assert_true(tally__batch__get_packed_size(&b) <= cap);
	return tally__batch__pack(&b, buf);
}

static enum ingest_result remote(struct fixture *f, const uint8_t *node,
				 const uint8_t *id, uint64_t first, size_t n)
{
	uint8_t buf[8192];
	size_t len = batch(buf, sizeof(buf), id, first, n);

	return ingest_remote(&f->d, buf, len, node);
}

static void commit(struct fixture *f)
{
	struct ledger_commit_stats st = {0};

	assert_int_equal(ledger_commit(&f->d.ledger, f->d.fill, now_ns(), &st),
			 0);
	agg_reset(f->d.fill);
}

/* Input tokens of session s1, LLM llm, in the ledger. */
static uint64_t committed_input(struct fixture *f)
{
	MDB_val key, val;
	struct ledger_entry e;
	char k[LEDGER_KEY_MAX];
	MDB_txn *txn;
	uint64_t input = 0;

	key.mv_size = ledger_key(k, "s1", 2, "llm", 3);
	key.mv_data = k;
	assert_int_equal(mdb_txn_begin(f->d.ledger.env, NULL, MDB_RDONLY, &txn),
			 0);
	if (mdb_get(txn, f->d.ledger.usage, &key, &val) == 0) {
		assert_int_equal(ledger_entry_decode(&val, &e), 0);
		input = e.c.input;
	}
	mdb_txn_abort(txn);
	return input;
}

static void restart(struct fixture *f)
{
	close_ledger(f);
	memset(&f->d.producers, 0, sizeof(f->d.producers));
	open_ledger(f);
}

static void test_late_record_is_applied_once(void **state)
{
	struct fixture *f = *state;
	struct producer *p;

	/* 11..20 before 1..10: a publish retried. */
	assert_int_equal(remote(f, host_b, producer, 11, 10), INGEST_APPLIED);
	p = producer_find(&f->d, producer);
	assert_non_null(p);
	assert_int_equal(p->accepted, 0);
	assert_int_equal(p->nranges, 1);
	assert_int_equal(p->ranges[0].first, 11);
	assert_int_equal(p->ranges[0].count, 10);
	assert_int_equal(remote(f, host_b, producer, 1, 10), INGEST_APPLIED);
	assert_int_equal(p->accepted, 20);
	assert_int_equal(p->nranges, 0);
	/* Both again, and the next one. */
	assert_int_equal(remote(f, host_b, producer, 11, 10), INGEST_APPLIED);
	assert_int_equal(remote(f, host_b, producer, 1, 10), INGEST_APPLIED);
	assert_int_equal(remote(f, host_b, producer, 21, 5), INGEST_APPLIED);
	commit(f);
	assert_int_equal(committed_input(f), 25);
	assert_int_equal(STAT_GET(&f->d, remote_usages), 25);
	assert_int_equal(STAT_GET(&f->d, remote_duplicates), 20);
}

static void test_hole_survives_a_restart(void **state)
{
	struct fixture *f = *state;
	struct producer *p;

	/* 11..20 never comes (a stream deleted, a record expired). */
	assert_int_equal(remote(f, host_b, producer, 1, 10), INGEST_APPLIED);
	assert_int_equal(remote(f, host_b, producer, 21, 10), INGEST_APPLIED);
	assert_int_equal(remote(f, host_b, producer, 31, 10), INGEST_APPLIED);
	commit(f);
	assert_int_equal(committed_input(f), 30);

	restart(f);
	p = producer_get(&f->d, producer);
	assert_non_null(p);
	assert_int_equal(p->accepted, 10);
	assert_int_equal(p->nranges, 1);
	assert_int_equal(p->ranges[0].first, 21);
	assert_int_equal(p->ranges[0].count, 20);
	assert_memory_equal(p->node, host_b, LEDGER_PRODUCER_ID_LEN);

	/* Redelivered after the restart: repeats. Then the late one. */
	assert_int_equal(remote(f, host_b, producer, 21, 10), INGEST_APPLIED);
	assert_int_equal(remote(f, host_b, producer, 11, 10), INGEST_APPLIED);
	assert_int_equal(p->accepted, 40);
	assert_int_equal(p->nranges, 0);
	commit(f);
	assert_int_equal(committed_input(f), 40);
}

static void test_oldest_hole_is_given_up(void **state)
{
	struct fixture *f = *state;
	struct producer *p;
	uint64_t seq, last = 2 * LEDGER_RANGES_MAX + 2;

	/* Records 2, 4, 6, ... each after a hole of one. */
	for (seq = 2; seq <= 2 * LEDGER_RANGES_MAX; seq += 2)
		assert_int_equal(remote(f, host_b, producer, seq, 1),
				 INGEST_APPLIED);
	p = producer_find(&f->d, producer);
	assert_int_equal(p->nranges, LEDGER_RANGES_MAX);
	assert_int_equal(p->accepted, 0);
	/* One hole more: the oldest (usage 1) is given up, not waited for. */
	assert_int_equal(remote(f, host_b, producer, last, 1), INGEST_APPLIED);
	assert_int_equal(p->accepted, 2);
	assert_int_equal(p->nranges, LEDGER_RANGES_MAX);
	assert_int_equal(STAT_GET(&f->d, remote_lost), 1);
	/* Filling the other holes joins everything up; usage 1, late, is
	 * a repeat now. */
	for (seq = 3; seq < last; seq += 2)
		assert_int_equal(remote(f, host_b, producer, seq, 1),
				 INGEST_APPLIED);
	assert_int_equal(remote(f, host_b, producer, 1, 1), INGEST_APPLIED);
	assert_int_equal(p->accepted, last);
	assert_int_equal(p->nranges, 0);
	commit(f);
	assert_int_equal(committed_input(f), last - 1);
}

/* Every range lies above the sequence, apart from it. */
static void assert_ranges_above(const struct producer *p)
{
	for (uint32_t i = 0; i < p->nranges; i++)
		assert_true(p->ranges[i].first > p->accepted + 1);
}

/* A late record inside the oldest hole, with 8 holes open. */
static void test_late_record_inside_the_oldest_hole(void **state)
{
	struct fixture *f = *state;
	struct producer *p;
	uint64_t seq;

	for (seq = 5; seq <= 19; seq += 2)
		assert_int_equal(remote(f, host_b, producer, seq, 1),
				 INGEST_APPLIED);
	p = producer_find(&f->d, producer);
	/* 3 gives up 1 and 2 only, and is applied. */
	assert_int_equal(remote(f, host_b, producer, 3, 1), INGEST_APPLIED);
	assert_int_equal(p->accepted, 3);
	assert_int_equal(STAT_GET(&f->d, remote_lost), 2);
	assert_ranges_above(p);
	/* 23 gives up 4, the rest of the oldest hole. */
	assert_int_equal(remote(f, host_b, producer, 23, 1), INGEST_APPLIED);
	assert_int_equal(p->accepted, 5);
	assert_int_equal(STAT_GET(&f->d, remote_lost), 3);
	assert_ranges_above(p);
	/* Everything again: 1, 2 and 4 are lost for good, the others that
	 * never came close their holes. */
	for (seq = 1; seq <= 23; seq++)
		assert_int_equal(remote(f, host_b, producer, seq, 1),
				 INGEST_APPLIED);
	assert_ranges_above(p);
	commit(f);
	assert_int_equal(committed_input(f), 23 - 3);
	assert_int_equal(p->accepted, 23);
	assert_int_equal(p->nranges, 0);
	assert_int_equal(STAT_GET(&f->d, remote_lost), 3);
}

/* Ten-usage records, two late ones in reverse order. */
static void test_late_records_in_reverse(void **state)
{
	struct fixture *f = *state;
	struct producer *p;
	uint64_t first;

	assert_int_equal(remote(f, host_b, producer, 1, 10), INGEST_APPLIED);
	for (first = 31; first <= 171; first += 20)
		assert_int_equal(remote(f, host_b, producer, first, 10),
				 INGEST_APPLIED);
	p = producer_find(&f->d, producer);
	assert_int_equal(p->nranges, LEDGER_RANGES_MAX);
	assert_int_equal(remote(f, host_b, producer, 21, 10), INGEST_APPLIED);
	assert_int_equal(p->accepted, 40);
	assert_int_equal(STAT_GET(&f->d, remote_lost), 10);
	assert_ranges_above(p);
	assert_int_equal(remote(f, host_b, producer, 11, 10), INGEST_APPLIED);
	/* The holes that stay open close when their records come. */
	for (first = 41; first <= 161; first += 20)
		assert_int_equal(remote(f, host_b, producer, first, 10),
				 INGEST_APPLIED);
	assert_int_equal(p->accepted, 180);
	assert_int_equal(p->nranges, 0);
	commit(f);
	assert_int_equal(committed_input(f), 170);
}

static void test_forged_records_are_refused(void **state)
{
	struct fixture *f = *state;
	uint8_t buf[8192];
	size_t len = batch(buf, sizeof(buf), local_producer, 1, 3);

	/* A producer of this host, then a record of it from host c. */
	ingest_handle(&f->d, buf, len);
	assert_int_equal(remote(f, host_c, local_producer, 4, 60),
			 INGEST_REFUSED);
	/* Its own record coming back is a repeat. */
	assert_int_equal(remote(f, this_host, local_producer, 1, 3),
			 INGEST_APPLIED);
	/* A producer of host b, then a record of it from host c. */
	assert_int_equal(remote(f, host_b, producer, 1, 5), INGEST_APPLIED);
	assert_int_equal(remote(f, host_c, producer, 6, 60), INGEST_REFUSED);
	assert_int_equal(remote(f, host_b, producer, 6, 5), INGEST_APPLIED);
	commit(f);
	assert_int_equal(committed_input(f), 13);

	/* Still so after a restart: who runs a producer is in the ledger. */
	restart(f);
	assert_int_equal(remote(f, host_c, local_producer, 4, 1),
			 INGEST_REFUSED);
	assert_int_equal(remote(f, host_c, producer, 11, 1), INGEST_REFUSED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			test_late_record_is_applied_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hole_survives_a_restart,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_oldest_hole_is_given_up,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_late_record_inside_the_oldest_hole, setup,
			teardown),
		cmocka_unit_test_setup_teardown(test_late_records_in_reverse,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_forged_records_are_refused,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
