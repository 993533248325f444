/*
 * agg.h - the usages received since the last commit, summed per key.
 *
 * The receiving thread adds decoded usages to one aggregate while the
 * committing thread writes the other, so a commit writes each (session,
 * LLM), each session and each producer once however many usages it
 * carries. Memory comes from an arena that is kept across commits: in a
 * steady state the hot path does not allocate.
 */
#ifndef TALLYD_AGG_H
#define TALLYD_AGG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger_format.h"
#include "usage_check.h"

struct agg_item {
	uint64_t hash;
	const char *key;
	uint32_t key_len;
};

struct agg_table {
	struct agg_item **slots;
	size_t cap;
	/* Items in insertion order, for iteration. */
	struct agg_item **list;
	size_t count;
	size_t list_cap;
};

/* The delta for one (session, LLM); names are the newest non-empty ones. */
struct agg_entry {
	struct agg_item item;
	uint32_t session_len;
	struct ledger_entry e;
};

struct agg_session {
	struct agg_item item;
	struct ledger_session s;
};

struct agg_producer {
	struct agg_item item;
	uint64_t seq;
	/*
	 * With --cluster, the producer's usages of this aggregate as packed
	 * Usage fields of a Batch, sequence numbers from out_first on: they
	 * go to the outbox in the commit that counts them.
	 */
	/* With --cluster, what the ledger keeps beside seq. */
	uint8_t node[LEDGER_PRODUCER_ID_LEN];
	uint32_t flags;
	uint32_t nranges;
	struct ledger_range ranges[LEDGER_RANGES_MAX];
	uint64_t out_first;
	uint32_t out_count;
	char *out;
	size_t out_len;
	size_t out_cap;
};

/*
 * A session to delete. An operator's purge (idle_before_ns 0) deletes what
 * was received before it, so it runs before the entries of its aggregate;
 * an expiry deletes only a session still idle once the entries are in, so
 * a usage that arrived meanwhile keeps its session alive.
 */
struct agg_purge {
	struct agg_item item;
	uint64_t idle_before_ns;
};

struct agg_chunk;

struct agg {
	struct agg_table entries;
	struct agg_table sessions;
	struct agg_table producers;
	struct agg_table purges;
	/* Purge request ids to remember, and producer records to expire. */
	struct agg_table requests;
	struct agg_table expired;
	struct agg_chunk *chunks;
	size_t usages;
	/* The newest purge request this aggregate carries. */
	uint64_t purge_seq;
	/* Outbox records up to this key are in JetStream: delete them. */
	uint64_t outbox_acked;
	/* Usages bound for the outbox. */
	size_t outbox_usages;
};

void agg_init(struct agg *a);
void agg_fini(struct agg *a);
/* Empties a, keeping its memory for the next round. */
void agg_reset(struct agg *a);

/*
 * Adds one checked usage, stamped with the daemon's clock (a client's clock
 * must not decide when a session expires). On -ENOMEM the usage is not
 * counted; an entry with no calls may remain, which a commit skips.
 */
int agg_add(struct agg *a, const struct usage_view *v, uint64_t now_ns);

/* Records that producer id has everything up to seq in this aggregate. */
int agg_set_producer(struct agg *a, const uint8_t *id, uint64_t seq);
/* The producer's record in a, or NULL. */
struct agg_producer *agg_find_producer(struct agg *a, const uint8_t *id);

/*
 * Makes room for one packed usage of len bytes in ap's outbox part, so
 * that agg_outbox_put() cannot fail. -ENOMEM.
 */
int agg_outbox_reserve(struct agg_producer *ap, size_t len);
/* Appends usage seq, which must follow the ones before it. */
void agg_outbox_put(struct agg *a, struct agg_producer *ap, uint64_t seq,
		    const void *usage, size_t len);

/*
 * Queues the deletion of a session. With idle_before_ns 0 (an operator's
 * purge) the usages of the session already in a are dropped too.
 */
int agg_purge(struct agg *a, const char *session, size_t len,
	      uint64_t idle_before_ns);
/* Queues a purge request id to be remembered, or a producer to expire. */
int agg_remember(struct agg *a, struct agg_table *t, const uint8_t *id);
/* Whether a session (or a request id) is queued in a table of a. */
bool agg_has(struct agg_table *t, const char *key, size_t len);

#define agg_foreach(a, table, type, var)                                      \
	for (size_t agg_i_ = 0; agg_i_ < (a)->table.count &&                  \
				((var) = (type *)(a)->table.list[agg_i_], 1); \
	     agg_i_++)

#endif
