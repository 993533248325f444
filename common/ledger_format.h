/*
 * ledger_format.h - how records are laid out in the ledger.
 *
 * The ledger is one LMDB environment with four named databases:
 *
 *   usage      session id, NUL, LLM reference id -> struct ledger_entry
 *   sessions   session id                        -> struct ledger_session
 *   producers  16-byte producer id               -> struct ledger_producer
 *   meta       name                              -> value ("schema": u32)
 *   outbox     u64 big-endian record number      -> u64 commit time (ns),
 *                                                   8 random bytes (in
 *                                                   the message id), then
 *                                                   a packed Batch
 *
 * The outbox is used with --cluster only: the local usages a commit
 * counted, kept until JetStream has stored them.
 *
 * Values are fixed little-endian layouts read with memcpy, since LMDB
 * gives no alignment. Only the daemon writes; clients read the same
 * layouts from the shared map. Changing a layout bumps LEDGER_SCHEMA.
 */
#ifndef TALLY_LEDGER_FORMAT_H
#define TALLY_LEDGER_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#define LEDGER_SCHEMA 1
#define LEDGER_PRODUCER_ID_LEN 16
/* Session id, NUL, LLM reference id: at most LMDB's 511-byte key. */
#define LEDGER_KEY_MAX (2 * 255 + 1)

#define LEDGER_DB_USAGE "usage"
#define LEDGER_DB_SESSIONS "sessions"
#define LEDGER_DB_PRODUCERS "producers"
#define LEDGER_DB_META "meta"
#define LEDGER_DB_OUTBOX "outbox"

enum ledger_name {
	LEDGER_DISPLAY,
	LEDGER_PROVIDER,
	LEDGER_MODEL,
	LEDGER_NNAMES,
};

struct ledger_counters {
	uint64_t input;
	uint64_t output;
	uint64_t cache_read;
	uint64_t cache_write;
	uint64_t reasoning;
	uint64_t calls;
	/* Of input and output, how many were estimated from text. */
	uint64_t est_input;
	uint64_t est_output;
	/* Calls whose provider reported no usage for a count. */
	uint64_t missing;
};

#define LEDGER_NCOUNTERS (sizeof(struct ledger_counters) / sizeof(uint64_t))

/* One (session, LLM): its counters and names. Names point into a value. */
struct ledger_entry {
	struct ledger_counters c;
	uint64_t first_ns;
	uint64_t last_ns;
	const char *name[LEDGER_NNAMES];
	uint16_t name_len[LEDGER_NNAMES];
};

struct ledger_session {
	uint64_t first_ns;
	uint64_t last_ns;
	uint64_t input;
	uint64_t output;
	uint64_t calls;
};

/* Sequence numbers first .. first + count - 1. */
struct ledger_range {
	uint64_t first;
	uint64_t count;
};

/* Holes a producer of another host may have at once; more wait. */
#define LEDGER_RANGES_MAX 8
/* The producer sends to this host's ingest socket. */
#define LEDGER_PRODUCER_LOCAL 1u

/*
 * A producer: everything up to seq is applied. With --cluster, also the
 * host whose stream records carry its usages, and the records of another
 * host's producer applied out of order past a hole (sorted, disjoint,
 * none adjacent to seq): what a lost or late record leaves.
 */
struct ledger_producer {
	uint64_t seq;
	uint64_t last_ns;
	uint8_t node[LEDGER_PRODUCER_ID_LEN];
	uint32_t flags;
	uint32_t nranges;
	struct ledger_range ranges[LEDGER_RANGES_MAX];
};

/* Builds the usage key into buf (LEDGER_KEY_MAX bytes); returns its size. */
size_t ledger_key(char *buf, const char *session, size_t session_len,
		  const char *llm, size_t llm_len);

/* Splits a usage key; -EBADMSG when it has no separator. */
int ledger_key_split(const MDB_val *key, const char **llm, size_t *llm_len);

size_t ledger_entry_size(const struct ledger_entry *e);
void ledger_entry_encode(const struct ledger_entry *e, void *dst);
/* Errors: TALLY_ECORRUPT for a value that is not a ledger entry. */
int ledger_entry_decode(const MDB_val *v, struct ledger_entry *e);

#define LEDGER_SESSION_SIZE 48
void ledger_session_encode(const struct ledger_session *s, void *dst);
int ledger_session_decode(const MDB_val *v, struct ledger_session *s);

/*
 * 16 bytes (seq, last_ns) for a daemon of one host; with a host, flags and
 * ranges, 40 bytes and 16 a range.
 */
#define LEDGER_PRODUCER_SIZE 16
#define LEDGER_PRODUCER_EXT_SIZE 40
#define LEDGER_PRODUCER_MAX_SIZE \
	(LEDGER_PRODUCER_EXT_SIZE + 16 * LEDGER_RANGES_MAX)
size_t ledger_producer_size(const struct ledger_producer *p);
void ledger_producer_encode(const struct ledger_producer *p, void *dst);
int ledger_producer_decode(const MDB_val *v, struct ledger_producer *p);

/*
 * ledger_errno() - an LMDB return code as 0 or a negative errno: the one
 * place, for the daemon and the library alike, where MDB_* codes end.
 * MDB_NOTFOUND is -ENOENT, a full map -ENOSPC, a full reader table
 * -EAGAIN, a foreign file TALLY_EVERSION, a damaged one TALLY_ECORRUPT.
 */
int ledger_errno(int mdb_rc);

/*
 * ledger_check_size() - TALLY_ECORRUPT when the file is shorter than its
 * last page: a truncated ledger that would otherwise kill every process
 * reading it with SIGBUS. 0 when it is whole, -EIO if it cannot be told.
 * A file truncated after this check still can: keep backups whole.
 */
int ledger_check_size(MDB_env *env);

/* Adds b to a; -EOVERFLOW, leaving a unchanged, if any sum would wrap. */
int ledger_counters_add(struct ledger_counters *a,
			const struct ledger_counters *b);

#endif
