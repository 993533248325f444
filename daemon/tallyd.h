/*
 * tallyd.h - the daemon's state, shared by its modules.
 *
 * Two threads: the main thread receives and checks usages, adds them to
 * the filling aggregate and answers control requests; the committer thread
 * writes the other aggregate to the ledger. They meet only in struct
 * committer and in the atomic counters of struct tallyd_stats.
 */
#ifndef TALLYD_H
#define TALLYD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agg.h"
#include "ledger.h"
#include "log.h"
#include "paths.h"

struct tallyd_config {
	const char *dir;
	const char *group;
	size_t map_size;
	size_t max_message;
	/* Usages one aggregate may hold before receiving pauses. */
	size_t max_pending;
	bool nosync;
	/* Idle sessions and producers expire after these; 0 never. */
	uint64_t session_ttl_ms;
	uint64_t producer_ttl_ms;
	const char *metrics_file;
	/* --cluster: NATS URLs; NULL for a daemon of one host. */
	const char *cluster_urls;
	const char *cluster_stream;
	int cluster_replicas;
	uint64_t cluster_max_age_ms;
	/* A --cluster-* option, and --producer-ttl, were given. */
	bool cluster_options;
	bool producer_ttl_given;
};

/* Counters for 'tallyctl stats'; names in stats_names[] of control.c. */
struct tallyd_stats {
	_Atomic uint64_t messages;
	_Atomic uint64_t usages_received;
	_Atomic uint64_t usages_accepted;
	_Atomic uint64_t usages_applied;
	_Atomic uint64_t duplicates;
	_Atomic uint64_t gap_batches;
	_Atomic uint64_t gap_usages;
	_Atomic uint64_t malformed_messages;
	_Atomic uint64_t malformed_usages;
	_Atomic uint64_t oversized_messages;
	_Atomic uint64_t overflows;
	_Atomic uint64_t commits;
	_Atomic uint64_t commit_failures;
	_Atomic uint64_t commit_ns_last;
	_Atomic uint64_t commit_ns_max;
	_Atomic uint64_t commit_ns_total;
	_Atomic uint64_t map_grows;
	_Atomic uint64_t dead_readers;
	_Atomic uint64_t sync_requests;
	_Atomic uint64_t control_requests;
	_Atomic uint64_t control_malformed;
	_Atomic uint64_t producers;
	_Atomic uint64_t purge_requests;
	_Atomic uint64_t purged_sessions;
	_Atomic uint64_t expired_producers;
	/* With --cluster; see cluster.c. */
	_Atomic uint64_t cluster_state;
	_Atomic uint64_t outbox_entries;
	_Atomic uint64_t outbox_last_key;
	_Atomic uint64_t outbox_records_added;
	_Atomic uint64_t published_records;
	_Atomic uint64_t publish_failures;
	_Atomic uint64_t consumed_records;
	_Atomic uint64_t own_records;
	_Atomic uint64_t remote_usages;
	_Atomic uint64_t remote_duplicates;
	_Atomic uint64_t remote_malformed;
	_Atomic uint64_t remote_refused;
	_Atomic uint64_t remote_lost;
	_Atomic uint64_t consumer_pending;
	_Atomic uint64_t consume_lag_ms;
};

#define STAT_ADD(d, field, n) \
	atomic_fetch_add_explicit(&(d)->stats.field, (n), memory_order_relaxed)
#define STAT_SET(d, field, n) \
	atomic_store_explicit(&(d)->stats.field, (n), memory_order_relaxed)
#define STAT_GET(d, field) \
	atomic_load_explicit(&(d)->stats.field, memory_order_relaxed)

struct committer {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* Handed to the thread; NULL while it is idle. */
	struct agg *busy;
	bool done;
	bool stop;
	int result;
	/* Written by the thread when busy is done, read by the main loop. */
	int event_fd;
	struct tallyd *d;
};

struct producer {
	uint8_t id[LEDGER_PRODUCER_ID_LEN];
	/* Highest sequence received and checked, and committed. */
	uint64_t accepted;
	uint64_t committed;
	uint64_t last_ms;
	/* A batch past accepted + 1 came: something before it was lost. */
	bool gap;
	/* With --cluster: as in struct ledger_producer. */
	uint8_t node[LEDGER_PRODUCER_ID_LEN];
	uint32_t flags;
	uint32_t nranges;
	struct ledger_range ranges[LEDGER_RANGES_MAX];
};

struct producer_map {
	struct producer **slots;
	size_t cap;
	size_t count;
};

/* A sync request (p set) or a purge request waiting for its commit. */
struct waiter {
	void *header;
	struct producer *p;
	uint64_t seq;
	uint64_t deadline_ms;
	uint64_t purged;
};

struct provider_tokens {
	char name[TALLY_NAME_MAX + 1];
	size_t name_len;
	uint64_t tokens[5];
};

struct cluster;

struct tallyd {
	struct tallyd_config cfg;
	/* NULL unless --cluster; then this host's id. */
	struct cluster *cluster;
	uint8_t node_id[LEDGER_PRODUCER_ID_LEN];
	struct tally_paths paths;
	struct tallyd_stats stats;
	struct ledger ledger;
	struct committer committer;
	struct producer_map producers;
	struct agg aggs[2];
	struct agg *fill;
	int lock_fd;
	int signal_fd;
	int ingest;
	int control;
	struct waiter *waiters;
	size_t nwaiters;
	size_t waiters_cap;
	uint64_t start_ms;
	/* Purge requests issued, and the newest one committed. */
	uint64_t purge_seq;
	uint64_t purge_committed;
	/* Where the retention scans resume. */
	char session_cursor[LEDGER_KEY_MAX];
	size_t session_cursor_len;
	char producer_cursor[LEDGER_KEY_MAX];
	size_t producer_cursor_len;
	uint64_t next_retention_ms;
	uint64_t next_metrics_ms;
	struct provider_tokens providers[32];
	size_t nproviders;
	/* The oldest reader's snapshot, and since when it has been oldest. */
	uint64_t oldest_reader_txnid;
	uint64_t oldest_reader_since_ms;
	struct log_limit bad_input;
	volatile bool stopping;
};

uint64_t now_ns(void);
uint64_t now_ms(void);

/* runtime.c: the directory, the lock file, the sockets' files. */
int runtime_std_fds(void);
/* Gives the ledger's files their modes (0640, lock 0660) and --group. */
int runtime_share_ledger(struct tallyd *d);
/* "READY=1" and the like to systemd's $NOTIFY_SOCKET, if there is one. */
void runtime_notify(const char *state);
void runtime_cloexec_all(void);
int runtime_check_fs(const char *dir);
/* The name of a network filesystem's statfs() magic; NULL for others. */
const char *runtime_remote_fs(unsigned long magic);
int runtime_prepare_dir(const char *dir);
int runtime_lock(struct tallyd *d);
void runtime_unlock(struct tallyd *d);
int runtime_bind(struct tallyd *d);
void runtime_unbind(struct tallyd *d);

/* ingest.c: usage batches from the PULL socket, and from other hosts. */
int ingest_drain(struct tallyd *d, unsigned max_messages);
void ingest_handle(struct tallyd *d, const void *buf, size_t len);

enum ingest_result {
	/* In the filling aggregate, or already applied before. */
	INGEST_APPLIED,
	/* Follows a batch of its producer not yet applied. */
	INGEST_GAP,
	/* Not applied, or not wholly, for want of memory or of the ledger. */
	INGEST_RETRY,
	INGEST_MALFORMED,
	/* A producer whose records come from another host. */
	INGEST_REFUSED,
};

/*
 * A batch another host committed, from the cluster's stream: applied
 * through the same sequence checks as local ones, and not sent on.
 */
enum ingest_result ingest_remote(struct tallyd *d, const void *buf, size_t len,
				 const uint8_t *node);
void ingest_fini(void);
struct producer *producer_get(struct tallyd *d, const uint8_t *id);
/* The producer if it is in memory; never reads the ledger. */
struct producer *producer_find(struct tallyd *d, const uint8_t *id);
/* Forgets a producer whose ledger record expired. */
void producer_forget(struct tallyd *d, const uint8_t *id);
void producers_fini(struct producer_map *m);

/* retention.c: expiry of idle sessions and of producers. */
void retention_tick(struct tallyd *d);
/* Queues up to max sessions idle since before cutoff_ns; how many. */
size_t retention_queue_idle(struct tallyd *d, uint64_t cutoff_ns, char *cursor,
			    size_t *cursor_len, size_t max);

/* metrics.c: Prometheus text. */
void metrics_count(struct tallyd *d, const struct usage_view *v);
char *metrics_text(struct tallyd *d);
int metrics_write(struct tallyd *d);

/* control.c: requests on the raw REP socket. */
int control_drain(struct tallyd *d, unsigned max_requests);
void control_answer_waiters(struct tallyd *d, bool all);
int control_next_deadline(struct tallyd *d, uint64_t now);

/* committer.c: the second thread and the hand-over between the two. */
int committer_start(struct tallyd *d);
void committer_stop(struct tallyd *d);
/* Hands the filling aggregate over when the thread is idle. */
void committer_kick(struct tallyd *d);
/* Takes back a committed aggregate; true when one came back. */
bool committer_reap(struct tallyd *d);
bool committer_idle(struct tallyd *d);

/*
 * cluster.c: with --cluster, the outbox's publisher and the stream's
 * consumer, on threads of their own, and what the main loop does for them.
 */
int cluster_start(struct tallyd *d);
void cluster_stop(struct tallyd *d);
/* The eventfd that says received records wait; -1 without a cluster. */
int cluster_event_fd(struct tallyd *d);
/* Applies up to max received records to the filling aggregate. */
int cluster_drain(struct tallyd *d, unsigned max);
/* Before a hand-over: what the aggregate should delete from the outbox;
 * true when that alone is worth a commit. */
bool cluster_prepare(struct tallyd *d, struct agg *a);
/* After a commit of a (ok) or its failure: acks, or lets go of, what it
 * held of the stream, and wakes the publisher. */
void cluster_committed(struct tallyd *d, struct agg *a, bool ok);
/* Milliseconds since the oldest record not yet in JetStream was committed. */
uint64_t cluster_outbox_age_ms(struct tallyd *d);
/* Outbox records not yet stored by JetStream. */
uint64_t cluster_unpublished(struct tallyd *d);

/* server.c: the main loop. */
uint64_t oldest_reader_age_ms(struct tallyd *d);
int server_run(struct tallyd *d);

#endif
