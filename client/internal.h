/*
 * internal.h - libtally's internals, shared by its files.
 */
#ifndef TALLY_INTERNAL_H
#define TALLY_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <lmdb.h>

#include "ledger_format.h"
#include "paths.h"
#include "tally.h"

/*
 * queue.c: usages recorded but not yet known to be committed. Their packed
 * bytes live in one ring owned by the queue, in sequence order, so that a
 * record costs no allocation; data points into it and is valid until the
 * next queue_reserve() (which may move the ring) or until trimmed.
 */
struct qentry {
	uint64_t seq;
	/* Hash of the session id, to find a session's entries quickly. */
	uint64_t session_hash;
	uint32_t len;
	uint8_t *data;
};

struct queue {
	struct qentry *e;
	size_t cap;
	size_t head;
	size_t count;
	/* Entries from head on that were sent at least once. */
	size_t sent;
	/* The ring of packed usages, and where the next one goes. */
	uint8_t *bytes;
	size_t bytes_cap;
	size_t tail;
	/* The tail has wrapped to the start, before the head entry's bytes. */
	bool wrapped;
	/* Where the last reservation starts. */
	size_t reserved;
};

int queue_init(struct queue *q, size_t cap);
void queue_fini(struct queue *q);
struct qentry *queue_at(struct queue *q, size_t i);
/*
 * Room for a usage of up to max bytes at the tail of the ring, in *out, to
 * be written and then added by queue_push() or abandoned; nothing else may
 * change the queue in between. -ENOBUFS when the queue is full, -ENOMEM
 * when the ring cannot grow.
 */
int queue_reserve(struct queue *q, size_t max, uint8_t **out);
/* Adds the usage written in the last reservation: len is at most its max. */
void queue_push(struct queue *q, uint64_t seq, uint64_t session_hash,
		uint32_t len);
/* Drops the entries up to and including seq. */
void queue_trim(struct queue *q, uint64_t seq);
/* Marks the entries from seq on as not sent. */
void queue_rewind(struct queue *q, uint64_t seq);
uint64_t hash_session(const char *s, size_t len);

/* reader.c: one read-only view of a ledger per process and path. */
struct reader {
	MDB_env *env;
	MDB_dbi usage;
	MDB_dbi sessions;
	MDB_dbi producers;
	/* Shared by transactions, exclusive to adopt a grown map. */
	pthread_rwlock_t resize;
	unsigned long fork_gen;
	int refs;
	char path[PATHS_SUN_MAX + 16];
	struct reader *next;
};

int reader_get(const char *path, struct reader **out);
void reader_put(struct reader *r);
int reader_begin(struct reader *r, MDB_txn **txn);
void reader_end(struct reader *r, MDB_txn *txn);
int reader_producer_seq(struct reader *r, MDB_txn *txn, const uint8_t *id,
			uint64_t *seq);

struct tally {
	pthread_mutex_t lock;
	struct tally_paths paths;
	size_t queue_max;
	/* Largest message sent, and the buffer batches are built in. */
	size_t max_message;
	/* The batch size in use: halved after each loss, down to 4 KiB. */
	size_t batch_limit;
	uint8_t *batch_buf;
	/* A wait for room ended without room; cleared by progress. */
	bool stalled;
	/* Resending after a loss: one usage a message until progress. */
	bool one_by_one;
	int record_timeout_ms;
	int close_timeout_ms;
	/* fork_gen when the sockets, producer id and queue were made. */
	unsigned long fork_gen;
	uint8_t producer[LEDGER_PRODUCER_ID_LEN];
	uint64_t last_seq;
	/* Highest sequence known committed, and when it last moved. */
	uint64_t committed;
	uint64_t progress_ms;
	uint64_t maintain_ms;
	/* What the daemon last said it accepted, and since when. */
	uint64_t accepted;
	uint64_t accepted_ms;
	struct queue q;
	/*
	 * The sender thread, started the first time a flush leaves usages
	 * unsent: it sends them once the pipe takes them, and resends what
	 * was lost, so that a burst that ends on a full pipe does not wait
	 * for the next call. A fork() child has none until it needs one.
	 */
	pthread_t sender;
	/* Signalled when usages wait and the sender is idle, or to stop. */
	pthread_cond_t wake;
	bool sender_on;
	bool sender_idle;
	bool sender_stop;
	int push;
	int req;
	struct reader *reader;
	struct tally *next;
	struct tally *prev;
};

/* Bumped in every child after fork(); read without a lock. */
extern volatile unsigned long tally_fork_gen;

uint64_t tally_now_ms(void);
/* Locks t, first making it a new producer if this is a forked child. */
int tally_enter_locked(struct tally *t);
/* Reads the committed sequence from the ledger and trims the queue. */
int tally_refresh_committed(struct tally *t);
int tally_reader(struct tally *t, struct reader **r);

#endif
