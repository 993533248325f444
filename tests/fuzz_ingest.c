/*
 * fuzz_ingest - libFuzzer target for what tallyd does with a message on
 * its data socket: decode, check, apply against each producer's sequence,
 * aggregate, and commit to a real LMDB ledger in a temporary directory.
 *
 * Invariant checked after every input: the ledger's committed usages are
 * never more than the well-formed usages accepted, and the daemon's own
 * counters add up.
 *
 * The daemon runs as if clustered, so that every accepted usage is also
 * packed into the outbox; after each commit every outbox record must
 * decode as a batch, and the records must number exactly the usages
 * accepted. Inputs whose first byte is odd go through the path of records
 * from other hosts instead.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tallyd.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tallyd d;
/*
 * The ingest path only asks whether the daemon is clustered; nothing here
 * calls into cluster.c, so no real cluster is behind the pointer.
 */
static char not_a_cluster;
static uint64_t outbox_usages;
static uint64_t outbox_last;
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
	d.cluster = (struct cluster *)&not_a_cluster;
	log_set_level(LOG_CRIT);
	atexit(cleanup);
	return 0;
}

/* Each outbox record decodes as a sane batch; counts its usages. */
static int check_record(uint64_t key, const void *value, size_t len, void *ctx)
{
	Tally__Batch *b = tally__batch__unpack(NULL, len - 16,
					       (const uint8_t *)value + 16);

	if (b == NULL || b->producer.len != LEDGER_PRODUCER_ID_LEN ||
	    b->count != b->n_usages || b->n_usages == 0)
		abort();
	outbox_usages += b->n_usages;
	outbox_last = key;
	tally__batch__free_unpacked(b, NULL);
	return 0;
}

/* What the committer thread does, inline: commit, then mark committed. */
static void commit(void)
{
	struct ledger_commit_stats st = {0};
	struct agg_producer *ap;

	/* What the last commit wrote was read: it goes now. */
	d.fill->outbox_acked = outbox_last;
	if (ledger_commit(&d.ledger, d.fill, now_ns(), &st) < 0)
		abort();
	if (ledger_outbox_read(&d.ledger, outbox_last, 1 << 20, check_record,
			       NULL) < 0)
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
	/* The record of another host: an id that is not this one's. */
	static const uint8_t other[LEDGER_PRODUCER_ID_LEN] = {1};

	if (size > 0 && data[0] & 1)
		ingest_remote(&d, data, size, other);
	else
		ingest_handle(&d, data, size);
	if (++inputs % 64 == 0 || d.fill->usages > 1000)
		commit();
	if (STAT_GET(&d, usages_accepted) > STAT_GET(&d, usages_received))
		abort();
	if (STAT_GET(&d, usages_applied) >
	    STAT_GET(&d, usages_accepted) + STAT_GET(&d, remote_usages))
		abort();
	/* Every local usage given a sequence number went to the outbox,
	 * malformed ones included (as empty usages); none from elsewhere. */
	if (outbox_usages >
	    STAT_GET(&d, usages_accepted) + STAT_GET(&d, malformed_usages))
		abort();
	return 0;
}
