/*
 * ledger.h - the daemon's side of the ledger: the only writer.
 *
 * Only this module sees MDB_* codes; it returns 0 or a negative errno.
 */
#ifndef TALLYD_LEDGER_H
#define TALLYD_LEDGER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "agg.h"

struct ledger {
	MDB_env *env;
	MDB_dbi usage;
	MDB_dbi sessions;
	MDB_dbi producers;
	MDB_dbi meta;
	MDB_dbi outbox;
	/* The key the next outbox record gets; only the committer moves it. */
	uint64_t outbox_next;
	/* Where the committer builds an outbox record. */
	uint8_t *outbuf;
	size_t outbuf_cap;
	/*
	 * Read transactions of this process hold it shared; growing the map
	 * holds it exclusive, since LMDB may only resize with no transaction
	 * open in the process.
	 */
	pthread_rwlock_t resize;
	size_t map_size;
	size_t page_size;
};

struct ledger_info {
	uint64_t map_size;
	uint64_t used_bytes;
	uint64_t readers;
	uint64_t max_readers;
	uint64_t last_txnid;
	/* Transactions the oldest reader is behind; 0 with no reader. */
	uint64_t oldest_reader_lag;
	/* The snapshot the oldest reader holds; 0 with no reader. */
	uint64_t oldest_reader_txnid;
};

/* What a commit did, for the daemon's counters. */
struct ledger_commit_stats {
	uint64_t purged_sessions;
	uint64_t expired_producers;
	uint64_t overflows;
	uint64_t map_grows;
	uint64_t dead_readers;
	/* Outbox records after the commit, and how many it added. */
	uint64_t outbox_entries;
	uint64_t outbox_added;
};

/*
 * ledger_open() - open or create the ledger at path.
 * map_size is the starting map size in bytes (rounded to pages); nosync
 * trades the last commits on power loss for speed.
 * Errors: TALLY_EVERSION for a ledger of another schema, -EACCES, -ENOMEM,
 * and other negative errnos of opening the file.
 */
int ledger_open(struct ledger *l, const char *path, size_t map_size,
		bool nosync);
void ledger_close(struct ledger *l);

/* A producer's record; all zero when it is unknown. */
int ledger_producer_get(struct ledger *l, const uint8_t *id,
			struct ledger_producer *p);

/*
 * ledger_commit() - write an aggregate in one durable transaction.
 * Grows the map when it fills. Errors: -ENOSPC, -EIO and the other errnos
 * of a failed write or sync; the ledger is then as it was before the call.
 */
int ledger_commit(struct ledger *l, struct agg *a, uint64_t now_ns,
		  struct ledger_commit_stats *st);

/*
 * ledger_scan() - calls fn for up to max records of a database (sessions
 * or producers) from the first key after *cursor (all from the start when
 * cursor_len is 0), and leaves in cursor the last key seen, or length 0
 * once the end was reached. For a bounded amount of work per call.
 * fn returns nonzero to stop early.
 */
typedef int (*ledger_scan_fn)(const MDB_val *key, const MDB_val *val,
			      void *ctx);
int ledger_scan(struct ledger *l, MDB_dbi dbi, char *cursor, size_t *cursor_len,
		size_t max, ledger_scan_fn fn, void *ctx);

/* Whether a key is in a database: 1, 0, or a negative errno. */
int ledger_has(struct ledger *l, MDB_dbi dbi, const void *key, size_t len);

/*
 * ledger_outbox_read() - calls fn for up to max outbox records with a key
 * above after, in order; value is the record as stored (commit time,
 * nonce, then the batch). Returns how many, or a negative errno. The values are valid
 * only during the call.
 */
typedef int (*ledger_outbox_fn)(uint64_t key, const void *value, size_t len,
				void *ctx);
int ledger_outbox_read(struct ledger *l, uint64_t after, size_t max,
		       ledger_outbox_fn fn, void *ctx);
/* Records in the outbox now; a negative errno if it cannot be told. */
int64_t ledger_outbox_count(struct ledger *l);

/*
 * ledger_node_id() - this ledger's id among the hosts of a cluster: random
 * bytes made the first time it is asked for, then kept in the meta table.
 */
int ledger_node_id(struct ledger *l, uint8_t id[LEDGER_PRODUCER_ID_LEN]);

/* Clears reader slots of dead processes; returns how many, or -errno. */
int ledger_reader_check(struct ledger *l);

int ledger_info(struct ledger *l, struct ledger_info *info);

#endif
