/*
 * fuzz_ingest - libFuzzer target for what tallyd does with a message on
 * its data socket: decode, check, apply against each producer's sequence,
 * aggregate, and commit to a real LMDB ledger in a temporary directory.
 *
 * Invariant checked after every input: the ledger's committed usages are
 * never more than the well-formed usages accepted, and the daemon's own
 * counters add up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tallyd.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tallyd d;
static char dir[] = "/tmp/tally-fuzz.XXXXXX";
static unsigned inputs;

static void cleanup(void)
{
	char path[64];

	ledger_close(&d.ledger);
	agg_fini(&d.aggs[0]);
	producers_fini(&d.producers);
	ingest_fini();
	snprintf(path, sizeof(path), "%s/ledger.mdb", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/ledger.mdb-lock", dir);
	unlink(path);
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char path[64];

	if (mkdtemp(dir) == NULL)
		abort();
	snprintf(path, sizeof(path), "%s/ledger.mdb", dir);
	/* --no-sync: the fuzzer is after decoding bugs, not durability. */
	if (ledger_open(&d.ledger, path, (size_t)64 << 20, true) < 0)
		abort();
	d.cfg.max_message = 1 << 20;
	d.cfg.max_pending = 1 << 16;
	agg_init(&d.aggs[0]);
	d.fill = &d.aggs[0];
	log_set_level(LOG_CRIT);
	atexit(cleanup);
	return 0;
}

/* What the committer thread does, inline: commit, then mark committed. */
static void commit(void)
{
	struct ledger_commit_stats st = {0};
	struct agg_producer *ap;

	if (ledger_commit(&d.ledger, d.fill, now_ns(), &st) < 0)
		abort();
	agg_foreach(d.fill, producers, struct agg_producer, ap)
	{
		struct producer *p =
			producer_get(&d, (const uint8_t *)ap->item.key);

		if (p == NULL)
			abort();
		p->committed = ap->seq;
	}
	STAT_ADD(&d, usages_applied, d.fill->usages);
	agg_reset(d.fill);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	ingest_handle(&d, data, size);
	if (++inputs % 64 == 0 || d.fill->usages > 1000)
		commit();
	if (STAT_GET(&d, usages_accepted) > STAT_GET(&d, usages_received))
		abort();
	if (STAT_GET(&d, usages_applied) > STAT_GET(&d, usages_accepted))
		abort();
	return 0;
}
