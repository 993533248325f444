/*
 * cluster.c - session totals across hosts, through NATS JetStream.
 *
 * A commit that counts local usages also writes them to the outbox, in the
 * same transaction. The publisher thread sends outbox records, in order,
 * to the stream, each with a message id made of its producer and first
 * sequence number; what JetStream has stored, the next commit deletes.
 * The consumer thread fetches every host's records from the stream; the
 * main loop applies those of other hosts through the sequence checks that
 * local batches go through, and acks them once the commit that holds them
 * is done. So a record is acked only when it is in the ledger, and a
 * record that comes twice, from a resend or a redelivery, is counted once.
 *
 * All of NATS is behind the link module (cluster_link.h), loaded here with
 * dlopen(): without --cluster this file does nothing and libnats is never
 * loaded.
 */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "cluster_link.h"
#include "tallyd.h"

#ifndef TALLY_MODULE_DIR
#define TALLY_MODULE_DIR "/usr/local/lib/tally"
#endif
#define MODULE_NAME "tally-cluster.so"

/* Producer, first sequence number and nonce, in hex and decimal. */
#define RECORD_ID_MAX 80
/* Records sent before waiting for JetStream's acks, and the wait. */
#define PUBLISH_WINDOW 256
#define PUBLISH_TIMEOUT_MS 1000
/* Records fetched at a time, the longest wait, and the queue's bound. */
#define FETCH_BATCH 256
#define FETCH_WAIT_MS 500
#define QUEUE_MAX 4096
#define QUEUE_MAX_BYTES ((size_t)32 << 20)
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 2000
/* A record after a hole of its producer comes again after this. */
#define GAP_DELAY_MS 250
/* A commit only to delete published records, at most this often. */
#define DELETE_EVERY_MS 1000

/* Stored messages of one aggregate, acked once it is committed. */
struct held {
	struct cluster_in *m;
	size_t n;
	size_t cap;
};

/* What the publisher copied out of the outbox for one round. */
struct pub_round {
	struct cluster_out out[PUBLISH_WINDOW];
	uint64_t key[PUBLISH_WINDOW];
	uint64_t committed_ns[PUBLISH_WINDOW];
	size_t off[PUBLISH_WINDOW];
	char id[PUBLISH_WINDOW][RECORD_ID_MAX];
	size_t n;
	char *buf;
	size_t len;
	size_t cap;
};

struct cluster {
	struct tallyd *d;
	const struct cluster_link_ops *ops;
	struct cluster_link *link;
	void *module;
	char node[CLUSTER_NODE_LEN + 1];

	pthread_t publisher;
	pthread_t consumer;
	bool threads;
	pthread_mutex_t lock;
	/* The publisher waits on wake for new records; the consumer on room. */
	pthread_cond_t wake;
	pthread_cond_t room;
	bool stop;
	uint64_t commits_with_records;

	/* Received records waiting for the main loop: a ring. */
	struct cluster_in queue[QUEUE_MAX];
	size_t qhead;
	size_t qcount;
	size_t qbytes;
	int event_fd;

	/* Outbox keys up to acked are stored in JetStream. */
	_Atomic uint64_t acked;
	/* Commit time of the oldest record not yet stored; 0 for none. */
	_Atomic uint64_t oldest_ns;
	/* Main thread: what commits have deleted, and when one last did. */
	uint64_t deleted;
	uint64_t delete_ms;
	struct held held[2];
	struct pub_round round;
	struct log_limit pub_log;
	/* The main thread's, for what the stream brings. */
	struct log_limit rx_log;
};

static void link_log(void *ctx, int level, const char *msg)
{
	log_msg(level, "cluster", "%s", msg);
}

static void hex(char *out, const uint8_t *id, size_t n)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[id[i] >> 4];
		out[2 * i + 1] = digits[id[i] & 15];
	}
	out[2 * n] = '\0';
}

/* Waits on cond until woken, stopped or ms passed; the lock is held. */
static void timed_wait(struct cluster *c, pthread_cond_t *cond, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(cond, &c->lock, &ts);
}

static bool stopped(struct cluster *c)
{
	bool stop;

	pthread_mutex_lock(&c->lock);
	stop = c->stop;
	pthread_mutex_unlock(&c->lock);
	return stop;
}

/*
 * Waits the whole of ms unless stopped: a commit's wake-up must not cut a
 * backoff short, or a publisher facing a dead server retries per commit.
 */
static bool back_off(struct cluster *c, unsigned ms)
{
	uint64_t deadline = now_ms() + ms, now;
	bool stop;

	pthread_mutex_lock(&c->lock);
	while (!c->stop && (now = now_ms()) < deadline)
		timed_wait(c, &c->wake, (unsigned)(deadline - now));
	stop = c->stop;
	pthread_mutex_unlock(&c->lock);
	return stop;
}

static unsigned next_backoff(unsigned ms)
{
	return ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms * 2;
}

/*
 * The message id: the producer and the first sequence number of the
 * record, read back from the Batch the committer wrote (producer field,
 * then first_seq), and the record's random nonce. A record published again
 * has the same id, so JetStream drops it within its duplicate window; past
 * that, the sequence checks of the hosts that consume it do. The nonce
 * keeps the id of a record not yet published from being guessed.
 */
static int record_id(char *id, const uint8_t *nonce, const uint8_t *b,
		     size_t len)
{
	char random[17];
	uint64_t seq = 0;
	size_t at = 2 + LEDGER_PRODUCER_ID_LEN + 1;
	char producer[2 * LEDGER_PRODUCER_ID_LEN + 1];

	if (len < at + 1 || b[0] != ((1 << 3) | 2) ||
	    b[1] != LEDGER_PRODUCER_ID_LEN || b[at - 1] != (2 << 3))
		return -EBADMSG;
	for (int shift = 0; at < len && shift < 64; shift += 7) {
		seq |= (uint64_t)(b[at] & 0x7f) << shift;
		if (!(b[at++] & 0x80))
			break;
	}
	hex(producer, b + 2, LEDGER_PRODUCER_ID_LEN);
	hex(random, nonce, 8);
	snprintf(id, RECORD_ID_MAX, "%s-%" PRIu64 "-%s", producer, seq, random);
	return 0;
}

static int collect(uint64_t key, const void *value, size_t len, void *ctx)
{
	struct pub_round *r = ctx;
	size_t n = len - 16;

	if (r->len + n > r->cap) {
		size_t cap = r->cap ? r->cap : 65536;
		char *buf;

		while (cap < r->len + n)
			cap *= 2;
		buf = realloc(r->buf, cap);
		if (buf == NULL)
			return 1;
		r->buf = buf;
		r->cap = cap;
	}
	if (record_id(r->id[r->n], (const uint8_t *)value + 8,
		      (const uint8_t *)value + 16, n) < 0) {
		log_err("cluster",
			"outbox record %" PRIu64 " is not a batch; "
			"run 'tallyctl check'",
			key);
		return 1;
	}
	memcpy(&r->committed_ns[r->n], value, 8);
	memcpy(r->buf + r->len, (const char *)value + 16, n);
	r->key[r->n] = key;
	r->off[r->n] = r->len;
	r->out[r->n].len = n;
	r->len += n;
	r->n++;
	return 0;
}

/* Reads the next records after what is stored; how many, or -errno. */
static int read_round(struct cluster *c)
{
	struct pub_round *r = &c->round;
	int rc;

	r->n = 0;
	r->len = 0;
	rc = ledger_outbox_read(&c->d->ledger, atomic_load(&c->acked),
				PUBLISH_WINDOW, collect, r);
	if (rc < 0)
		return rc;
	/* The buffer may have moved while it grew. */
	for (size_t i = 0; i < r->n; i++) {
		r->out[i].id = r->id[i];
		r->out[i].data = r->buf + r->off[i];
	}
	return (int)r->n;
}

static void wait_for_records(struct cluster *c, uint64_t *seen)
{
	pthread_mutex_lock(&c->lock);
	if (!c->stop && c->commits_with_records == *seen)
		timed_wait(c, &c->wake, 1000);
	*seen = c->commits_with_records;
	pthread_mutex_unlock(&c->lock);
}

static void *publisher_main(void *arg)
{
	struct cluster *c = arg;
	struct tallyd *d = c->d;
	unsigned backoff = BACKOFF_FIRST_MS;
	uint64_t seen = 0;
	int n, rc;

	while (!stopped(c)) {
		STAT_SET(d, cluster_state, c->ops->ready(c->link) ? 2 : 1);
		n = read_round(c);
		if (n < 0) {
			log_err("cluster", "cannot read the outbox: %s",
				strerror(-n));
			back_off(c, BACKOFF_MAX_MS);
			continue;
		}
		if (n == 0) {
			atomic_store(&c->oldest_ns, 0);
			wait_for_records(c, &seen);
			continue;
		}
		atomic_store(&c->oldest_ns, c->round.committed_ns[0]);
		rc = c->ops->publish(c->link, c->round.out, (size_t)n,
				     PUBLISH_TIMEOUT_MS);
		if (rc > 0) {
			atomic_store(&c->acked, c->round.key[rc - 1]);
			STAT_ADD(d, published_records, (uint64_t)rc);
		}
		if (rc == n) {
			backoff = BACKOFF_FIRST_MS;
			continue;
		}
		STAT_ADD(d, publish_failures, 1);
		log_limited(&c->pub_log, LOG_WARNING, "cluster",
			    "%d of %d outbox records not stored by JetStream "
			    "(%s); they stay in the outbox and are sent again "
			    "in %u ms",
			    rc > 0 ? n - rc : n, n,
			    rc < 0 ? strerror(-rc) : "no ack in time", backoff);
		back_off(c, backoff);
		backoff = next_backoff(backoff);
	}
	return NULL;
}

static void *consumer_main(void *arg)
{
	struct cluster *c = arg;
	struct cluster_in in[FETCH_BATCH];
	unsigned backoff = BACKOFF_FIRST_MS;
	uint64_t one = 1;
	size_t room;
	int n;

	for (;;) {
		pthread_mutex_lock(&c->lock);
		/* Bounded in records and in bytes: a host catching up
		 * fetches no faster than it commits. */
		while (!c->stop &&
		       (c->qcount == QUEUE_MAX || c->qbytes >= QUEUE_MAX_BYTES))
			timed_wait(c, &c->room, 1000);
		room = QUEUE_MAX - c->qcount;
		pthread_mutex_unlock(&c->lock);
		if (stopped(c))
			break;
		n = c->ops->fetch(c->link, in,
				  room < FETCH_BATCH ? room : FETCH_BATCH,
				  FETCH_WAIT_MS);
		if (n < 0) {
			/* The link logs what the server said. */
			back_off(c, backoff);
			backoff = next_backoff(backoff);
			continue;
		}
		backoff = BACKOFF_FIRST_MS;
		if (n == 0)
			continue;
		pthread_mutex_lock(&c->lock);
		for (int i = 0; i < n; i++) {
			c->queue[(c->qhead + c->qcount++) % QUEUE_MAX] = in[i];
			c->qbytes += in[i].len;
		}
		pthread_mutex_unlock(&c->lock);
		if (write(c->event_fd, &one, sizeof(one)) < 0)
			log_err("cluster", "cannot wake the main loop: %s",
				strerror(errno));
	}
	return NULL;
}

static struct held *held_of(struct tallyd *d, struct agg *a)
{
	return &d->cluster->held[a == &d->aggs[0] ? 0 : 1];
}

static int hold(struct held *h, const struct cluster_in *m)
{
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 256;
		struct cluster_in *p = realloc(h->m, cap * sizeof(*p));

		if (p == NULL)
			return -ENOMEM;
		h->m = p;
		h->cap = cap;
	}
	h->m[h->n++] = *m;
	return 0;
}

/* A host id from a subject: 32 lowercase hex digits. */
static bool parse_node(const char *s, uint8_t *id)
{
	for (int i = 0; i < CLUSTER_NODE_LEN; i++) {
		int v = s[i] >= '0' && s[i] <= '9'   ? s[i] - '0'
			: s[i] >= 'a' && s[i] <= 'f' ? s[i] - 'a' + 10
						     : -1;

		if (v < 0)
			return false;
		if (i % 2 == 0)
			id[i / 2] = (uint8_t)(v << 4);
		else
			id[i / 2] |= (uint8_t)v;
	}
	return s[CLUSTER_NODE_LEN] == '\0';
}

static void handle_record(struct tallyd *d, struct cluster_in *m)
{
	struct cluster *c = d->cluster;
	uint64_t now = now_ns(), before = STAT_GET(d, remote_usages);
	bool own = strcmp(m->node, c->node) == 0;
	uint8_t node[LEDGER_PRODUCER_ID_LEN];
	enum ingest_result r;

	STAT_ADD(d, consumed_records, 1);
	STAT_SET(d, consumer_pending, m->pending);
	STAT_SET(d, consume_lag_ms,
		 m->stored_ns > 0 && now > (uint64_t)m->stored_ns
			 ? (now - (uint64_t)m->stored_ns) / 1000000
			 : 0);
	/*
	 * This host's own records are in its ledger since their commit, and
	 * the sequence check finds them so. They go through it all the
	 * same: if one is news, another host has this host's id.
	 */
	r = parse_node(m->node, node) ? ingest_remote(d, m->data, m->len, node)
				      : INGEST_MALFORMED;
	if (own) {
		STAT_ADD(d, own_records, 1);
		if (STAT_GET(d, remote_usages) != before)
			log_limited(&c->rx_log, LOG_WARNING, "cluster",
				    "stream message %" PRIu64
				    " has this host's id %s but usages this "
				    "ledger lacked, now applied: the ledger "
				    "was restored from an older copy, or "
				    "another host runs a copy of it (give "
				    "that one a fresh ledger directory)",
				    m->stream_seq, c->node);
	}
	switch (r) {
	case INGEST_APPLIED:
		if (hold(held_of(d, d->fill), m) == 0)
			return;
		/* Not held, so never acked: it comes again and is a repeat. */
		break;
	case INGEST_GAP: /* not for records of other hosts */
	case INGEST_RETRY:
		c->ops->nak(c->link, m, GAP_DELAY_MS);
		break;
	case INGEST_MALFORMED:
		STAT_ADD(d, remote_malformed, 1);
		log_limited(&c->rx_log, LOG_WARNING, "cluster",
			    "dropped stream message %" PRIu64 " from host "
			    "'%.32s': not a usage batch of a host id",
			    m->stream_seq, m->node);
		c->ops->ack(c->link, m);
		break;
	case INGEST_REFUSED:
		STAT_ADD(d, remote_refused, 1);
		log_limited(&c->rx_log, LOG_ERR, "cluster",
			    "refused stream message %" PRIu64 " from host %s: "
			    "its producer's usages come from another host; "
			    "a forged message, or a copied ledger (limit "
			    "who may publish to the stream)",
			    m->stream_seq, m->node);
		c->ops->ack(c->link, m);
		break;
	}
	c->ops->release(c->link, m);
}

int cluster_drain(struct tallyd *d, unsigned max)
{
	struct cluster *c = d->cluster;
	struct cluster_in m;
	uint64_t count;
	unsigned n;

	if (c == NULL)
		return 0;
	if (read(c->event_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		log_err("cluster", "eventfd read: %s", strerror(errno));
	for (n = 0; n < max && d->fill->usages < d->cfg.max_pending; n++) {
		pthread_mutex_lock(&c->lock);
		if (c->qcount == 0) {
			pthread_mutex_unlock(&c->lock);
			break;
		}
		m = c->queue[c->qhead];
		c->qhead = (c->qhead + 1) % QUEUE_MAX;
		c->qcount--;
		c->qbytes -= m.len;
		pthread_cond_signal(&c->room);
		pthread_mutex_unlock(&c->lock);
		handle_record(d, &m);
	}
	/* Stopped for a full aggregate: come back once it is handed over. */
	pthread_mutex_lock(&c->lock);
	count = c->qcount;
	pthread_mutex_unlock(&c->lock);
	/* Nothing waits here nor in the stream: this host is not behind. */
	if (count == 0 && STAT_GET(d, consumer_pending) == 0)
		STAT_SET(d, consume_lag_ms, 0);
	if (count > 0 && write(c->event_fd, &(uint64_t){1}, 8) < 0)
		log_err("cluster", "eventfd write: %s", strerror(errno));
	return (int)n;
}

int cluster_event_fd(struct tallyd *d)
{
	return d->cluster != NULL ? d->cluster->event_fd : -1;
}

bool cluster_prepare(struct tallyd *d, struct agg *a)
{
	struct cluster *c = d->cluster;
	uint64_t acked;

	if (c == NULL)
		return false;
	acked = atomic_load(&c->acked);
	a->outbox_acked = acked;
	return acked > c->deleted && now_ms() - c->delete_ms >= DELETE_EVERY_MS;
}

void cluster_committed(struct tallyd *d, struct agg *a, bool ok)
{
	struct cluster *c = d->cluster;
	struct held *h;

	if (c == NULL)
		return;
	h = held_of(d, a);
	for (size_t i = 0; i < h->n; i++) {
		if (ok)
			c->ops->ack(c->link, &h->m[i]);
		c->ops->release(c->link, &h->m[i]);
	}
	h->n = 0;
	if (!ok)
		return;
	if (a->outbox_acked > c->deleted) {
		c->deleted = a->outbox_acked;
		c->delete_ms = now_ms();
	}
	if (a->outbox_usages > 0) {
		pthread_mutex_lock(&c->lock);
		c->commits_with_records++;
		pthread_cond_signal(&c->wake);
		pthread_mutex_unlock(&c->lock);
	}
}

uint64_t cluster_unpublished(struct tallyd *d)
{
	uint64_t last = STAT_GET(d, outbox_last_key), acked;

	if (d->cluster == NULL)
		return 0;
	acked = atomic_load(&d->cluster->acked);
	return last > acked ? last - acked : 0;
}

uint64_t cluster_outbox_age_ms(struct tallyd *d)
{
	uint64_t oldest, now = now_ns();

	if (d->cluster == NULL)
		return 0;
	oldest = atomic_load(&d->cluster->oldest_ns);
	return oldest != 0 && now > oldest ? (now - oldest) / 1000000 : 0;
}

static int load_module(struct cluster *c)
{
	const char *path = getenv("TALLYD_CLUSTER_MODULE");
	cluster_link_entry entry;

	if (path == NULL || path[0] == '\0')
		path = TALLY_MODULE_DIR "/" MODULE_NAME;
	/*
	 * Never unloaded: libnats' own threads may outlive the link's close
	 * by a little, and must not find their code unmapped.
	 */
	c->module = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
	if (c->module == NULL) {
		log_err("cluster",
			"cannot load %s: %s; --cluster needs tally built "
			"with libnats (libnats-dev) and that module installed",
			path, dlerror());
		return -ENOENT;
	}
	entry = (cluster_link_entry)dlsym(c->module, CLUSTER_LINK_SYMBOL);
	c->ops = entry != NULL ? entry() : NULL;
	if (c->ops == NULL || c->ops->abi != CLUSTER_LINK_ABI) {
		log_err("cluster",
			"%s is not a tally cluster module of this "
			"version",
			path);
		return -ENOEXEC;
	}
	return 0;
}

static void free_cluster(struct cluster *c)
{
	if (c->event_fd >= 0)
		close(c->event_fd);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->wake);
	pthread_cond_destroy(&c->room);
	free(c->held[0].m);
	free(c->held[1].m);
	free(c->round.buf);
	free(c);
}

static int open_link(struct tallyd *d, struct cluster *c)
{
	uint8_t node[CLUSTER_NODE_LEN / 2];
	struct cluster_link_config cfg = {
		.urls = d->cfg.cluster_urls,
		.stream = d->cfg.cluster_stream,
		.node = c->node,
		.replicas = d->cfg.cluster_replicas,
		.max_age_ms = d->cfg.cluster_max_age_ms,
		.log = link_log,
		.log_ctx = c,
	};
	int64_t entries;
	int rc;

	rc = ledger_node_id(&d->ledger, node);
	if (rc < 0) {
		log_err("cluster", "cannot read or make this host's id: %s",
			strerror(-rc));
		return rc;
	}
	hex(c->node, node, sizeof(node));
	memcpy(d->node_id, node, sizeof(d->node_id));
	entries = ledger_outbox_count(&d->ledger);
	STAT_SET(d, outbox_entries, entries > 0 ? (uint64_t)entries : 0);
	/* Keys run without holes from the first record kept to the last. */
	STAT_SET(d, outbox_last_key, d->ledger.outbox_next - 1);
	if (entries > 0)
		atomic_store(&c->acked,
			     d->ledger.outbox_next - 1 - (uint64_t)entries);
	else
		atomic_store(&c->acked, d->ledger.outbox_next - 1);
	c->deleted = atomic_load(&c->acked);
	rc = c->ops->open(&cfg, &c->link);
	if (rc < 0)
		log_err("cluster", "cannot set up NATS for %s: %s",
			d->cfg.cluster_urls, strerror(-rc));
	return rc;
}

int cluster_start(struct tallyd *d)
{
	struct cluster *c;
	int rc;

	if (d->cfg.cluster_urls == NULL)
		return 0;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->d = d;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->wake, NULL);
	pthread_cond_init(&c->room, NULL);
	c->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->event_fd < 0) {
		rc = -errno;
		free_cluster(c);
		return rc;
	}
	if ((rc = load_module(c)) < 0 || (rc = open_link(d, c)) < 0) {
		free_cluster(c);
		return rc;
	}
	d->cluster = c;
	rc = pthread_create(&c->publisher, NULL, publisher_main, c);
	if (rc == 0 &&
	    (rc = pthread_create(&c->consumer, NULL, consumer_main, c)) != 0) {
		pthread_mutex_lock(&c->lock);
		c->stop = true;
		pthread_cond_broadcast(&c->wake);
		pthread_mutex_unlock(&c->lock);
		pthread_join(c->publisher, NULL);
	}
	if (rc != 0) {
		c->ops->close(c->link);
		free_cluster(c);
		d->cluster = NULL;
		return -rc;
	}
	c->threads = true;
	log_notice("cluster",
		   "host %s publishing to stream %s through %s (%" PRIu64
		   " outbox records to send)",
		   c->node, d->cfg.cluster_stream, d->cfg.cluster_urls,
		   STAT_GET(d, outbox_entries));
	return 0;
}

/*
 * What was received but not applied, or applied but not committed, is not
 * acked: JetStream delivers it again to the next run.
 */
void cluster_stop(struct tallyd *d)
{
	struct cluster *c = d->cluster;

	if (c == NULL)
		return;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	pthread_cond_broadcast(&c->wake);
	pthread_cond_broadcast(&c->room);
	pthread_mutex_unlock(&c->lock);
	if (c->threads) {
		pthread_join(c->publisher, NULL);
		pthread_join(c->consumer, NULL);
	}
	for (; c->qcount > 0; c->qcount--) {
		c->ops->release(c->link, &c->queue[c->qhead]);
		c->qhead = (c->qhead + 1) % QUEUE_MAX;
	}
	cluster_committed(d, &d->aggs[0], false);
	cluster_committed(d, &d->aggs[1], false);
	c->ops->close(c->link);
	d->cluster = NULL;
	free_cluster(c);
}
