/*
 * tally.c - handles, recording, delivery and confirmation.
 *
 * A usage is packed once, when it is recorded, and kept packed in the
 * handle's queue until the ledger shows it committed; a send, or a resend,
 * only concatenates queued usages behind a batch header.
 *
 * A record sends at once when the pipe has room. What a full pipe refuses
 * is sent by the handle's sender thread, started the first time it is
 * needed, as soon as the pipe takes it: not at the handle's next call,
 * which for an idle worker may never come.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>
#include <nanomsg/reqrep.h>

#include "internal.h"
#include "jsonw.h"
#include "tally.pb-c.h"
#include "usage_check.h"

#define DEFAULT_QUEUE_MAX 65536
#define DEFAULT_MAX_MESSAGE (64 * 1024)
#define MIN_MAX_MESSAGE 1024
/* The smallest batches shrink to: tallyd's smallest --max-message. */
#define MIN_BATCH_LIMIT 4096
/* Field tags and lengths around one packed usage, and the batch header. */
#define BATCH_USAGE_OVERHEAD 6
#define BATCH_HEADER_MAX 64
#define DEFAULT_CLOSE_TIMEOUT_MS 5000
/* How often a busy handle looks at what the ledger has committed. */
#define MAINTAIN_MS 50
/*
 * Sent usages that the ledger has not moved past for this long were lost
 * (a daemon restart) and are sent again; the daemon drops any repeat. A
 * daemon that says it saw a gap is answered at once (see lost()); this
 * timer only covers a lost tail, and is long because a daemon under heavy
 * load may take a while to drain, and resending to it only adds load.
 */
#define RESEND_AFTER_MS 2000
/* Longest the daemon holds one sync request before it answers. */
#define SYNC_WAIT_MS 100
/*
 * The PUSH socket's send buffer. nanomsg refuses a send (EAGAIN) only
 * once the kernel's buffer of the connection is full, and only then does
 * flush() put several usages in one message. 1 MiB (which the kernel
 * doubles) let a busy producer run far ahead of the daemon one usage a
 * message; at 64 KiB usages coalesce as soon as the daemon is behind, and
 * a whole batch (DEFAULT_MAX_MESSAGE) still fits in the buffer.
 */
#define PUSH_SNDBUF (64 * 1024)
/*
 * Longest the sender thread waits on nanomsg's send fd before it looks
 * again: the fd it polls may have been closed (a fork, a close) meanwhile.
 */
#define SENDER_WAIT_MS 100
/* Its pause after the fd said ready and the pipe still took nothing. */
#define SENDER_RETRY_MS 10
/*
 * How often it looks at the ledger while what it sent is unconfirmed: a
 * fork() or a daemon restart can lose sent usages, and an idle handle
 * has no call that would resend them (after RESEND_AFTER_MS).
 */
#define SENDER_CONFIRM_MS (RESEND_AFTER_MS / 4)

/*
 * The batch being built, kept between calls in front of batch_buf: while
 * the pipe is full every record appends its usage to it, instead of
 * rebuilding a batch of up to batch_limit bytes only to be refused again.
 * It holds n usages from sequence first on, in len bytes without the
 * count that ends a message; n 0 means there is none.
 */
struct outbox {
	size_t len;
	size_t n;
	uint64_t first;
	/* The last send found the pipe full. */
	bool blocked;
	uint8_t buf[];
};

volatile unsigned long tally_fork_gen;

static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tally *handles;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

uint64_t tally_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct outbox *outbox_of(struct tally *t)
{
	return (struct outbox *)(t->batch_buf - offsetof(struct outbox, buf));
}

static uint8_t *outbox_new(size_t size)
{
	struct outbox *ob = malloc(sizeof(*ob) + size);

	if (ob == NULL)
		return NULL;
	ob->len = ob->n = 0;
	ob->first = 0;
	ob->blocked = false;
	return ob->buf;
}

static void outbox_free(uint8_t *buf)
{
	if (buf != NULL)
		free(buf - offsetof(struct outbox, buf));
}

/* Forgets the batch being built: its usages are sent anew, rebuilt. */
static void outbox_drop(struct tally *t)
{
	outbox_of(t)->n = 0;
}

static void close_sockets(struct tally *t)
{
	if (t->push >= 0)
		nn_close(t->push);
	if (t->req >= 0)
		nn_close(t->req);
	t->push = t->req = -1;
}

/*
 * nanomsg's worker threads do not survive fork(): a child whose parent
 * had a socket open can block for good in nn_send. Closing every socket
 * before the fork lets nanomsg shut its threads down; both processes
 * reopen on their next call. Sent but unconfirmed usages stay queued.
 */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&handles_lock);
	for (struct tally *t = handles; t != NULL; t = t->next) {
		pthread_mutex_lock(&t->lock);
		close_sockets(t);
	}
}

static void atfork_parent(void)
{
	for (struct tally *t = handles; t != NULL; t = t->next)
		pthread_mutex_unlock(&t->lock);
	pthread_mutex_unlock(&handles_lock);
}

static void wake_init(pthread_cond_t *c)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

/*
 * The child has no sender thread, whatever the parent had, and the
 * condition variable may still count the parent's sender as a waiter:
 * made anew, it would otherwise block its destruction for good.
 */
static void atfork_child(void)
{
	tally_fork_gen++;
	for (struct tally *t = handles; t != NULL; t = t->next) {
		t->sender_on = t->sender_idle = t->sender_stop = false;
		wake_init(&t->wake);
	}
	atfork_parent();
}

static void register_atfork(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static int new_producer(struct tally *t)
{
	size_t got = 0;

	while (got < sizeof(t->producer)) {
		ssize_t n = getrandom(t->producer + got,
				      sizeof(t->producer) - got, 0);

		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0)
			got += (size_t)n;
	}
	t->last_seq = 0;
	t->committed = 0;
	t->accepted = 0;
	t->progress_ms = t->accepted_ms = tally_now_ms();
	return 0;
}

static int open_socket(int protocol, const char *url)
{
	int s = nn_socket(AF_SP, protocol);
	int ivl = 100, buf = PUSH_SNDBUF;

	if (s < 0)
		return -nn_errno();
	/* Reconnect quickly to a restarted daemon. */
	nn_setsockopt(s, NN_SOL_SOCKET, NN_RECONNECT_IVL, &ivl, sizeof(ivl));
	nn_setsockopt(s, NN_SOL_SOCKET, NN_RECONNECT_IVL_MAX, &ivl,
		      sizeof(ivl));
	if (protocol == NN_PUSH)
		nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDBUF, &buf, sizeof(buf));
	if (nn_connect(s, url) < 0) {
		int err = nn_errno();

		nn_close(s);
		return -err;
	}
	return s;
}

static int ensure_sockets(struct tally *t)
{
	if (t->push < 0) {
		t->push = open_socket(NN_PUSH, t->paths.ingest_url);
		if (t->push < 0) {
			int err = t->push;

			t->push = -1;
			return err;
		}
	}
	if (t->req < 0) {
		t->req = open_socket(NN_REQ, t->paths.control_url);
		if (t->req < 0) {
			int err = t->req;

			t->req = -1;
			return err;
		}
	}
	return 0;
}

/*
 * After fork() the child is a new producer: the queue it inherited is the
 * parent's, which alone resends it, so the child forgets it, and the
 * reader and sockets it inherited are the parent's too.
 */
static int check_fork(struct tally *t)
{
	if (t->fork_gen == tally_fork_gen)
		return 0;
	queue_fini(&t->q);
	outbox_drop(t);
	t->reader = NULL;
	t->push = t->req = -1;
	t->fork_gen = tally_fork_gen;
	if (queue_init(&t->q, t->queue_max) < 0)
		return -ENOMEM;
	return new_producer(t);
}

int tally_enter_locked(struct tally *t)
{
	int rc;

	pthread_mutex_lock(&t->lock);
	rc = check_fork(t);
	if (rc < 0)
		pthread_mutex_unlock(&t->lock);
	return rc;
}

int tally_open_ex(struct tally **out, const struct tally_options *opts)
{
	struct tally_options o = {0};
	struct tally *t;
	int rc;

	if (out == NULL)
		return -EINVAL;
	*out = NULL;
	if (opts != NULL)
		o = *opts;
	pthread_once(&atfork_once, register_atfork);
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	t->push = t->req = -1;
	t->fork_gen = tally_fork_gen;
	t->queue_max = o.queue_max ? o.queue_max : DEFAULT_QUEUE_MAX;
	t->record_timeout_ms = o.record_timeout_ms;
	t->close_timeout_ms = o.close_timeout_ms ? o.close_timeout_ms
						 : DEFAULT_CLOSE_TIMEOUT_MS;
	t->max_message = o.max_message ? o.max_message : DEFAULT_MAX_MESSAGE;
	t->batch_limit = t->max_message;
	if (t->max_message < MIN_MAX_MESSAGE) {
		free(t);
		return -EINVAL;
	}
	/* The first usage of a batch may take it to its limit, then more. */
	t->batch_buf = outbox_new(t->max_message + BATCH_HEADER_MAX);
	if (t->batch_buf == NULL) {
		rc = -ENOMEM;
		goto fail;
	}
	if ((rc = paths_init(&t->paths, o.dir)) < 0 ||
	    (rc = queue_init(&t->q, t->queue_max)) < 0 ||
	    (rc = new_producer(t)) < 0 || (rc = ensure_sockets(t)) < 0)
		goto fail;
	pthread_mutex_init(&t->lock, NULL);
	wake_init(&t->wake);
	pthread_mutex_lock(&handles_lock);
	t->next = handles;
	if (handles != NULL)
		handles->prev = t;
	handles = t;
	pthread_mutex_unlock(&handles_lock);
	*out = t;
	return 0;
fail:
	close_sockets(t);
	queue_fini(&t->q);
	outbox_free(t->batch_buf);
	free(t);
	return rc;
}

int tally_open(struct tally **out, const char *dir)
{
	struct tally_options o = {.dir = dir};

	return tally_open_ex(out, &o);
}

int tally_reader(struct tally *t, struct reader **r)
{
	int rc = 0;

	if (t->reader == NULL)
		rc = reader_get(t->paths.ledger, &t->reader);
	*r = t->reader;
	return rc;
}

/*
 * What was lost goes again one usage a message until the ledger moves: a
 * batch may have been lost for being over a daemon's --max-message, and a
 * single usage always fits the smallest limit tallyd accepts.
 */
static void resend_from(struct tally *t, uint64_t seq)
{
	queue_rewind(&t->q, seq);
	outbox_drop(t);
	t->one_by_one = true;
	/* And batches shrink, in case the limit is what lost them. */
	if (t->batch_limit / 2 >= MIN_BATCH_LIMIT)
		t->batch_limit /= 2;
}

static void note_committed(struct tally *t, uint64_t seq)
{
	if (seq > t->committed) {
		t->committed = seq;
		t->progress_ms = tally_now_ms();
		t->stalled = false;
		t->one_by_one = false;
	}
	queue_trim(&t->q, t->committed);
}

int tally_refresh_committed(struct tally *t)
{
	struct reader *r;
	MDB_txn *txn;
	uint64_t seq;
	int rc;

	if ((rc = tally_reader(t, &r)) < 0 || (rc = reader_begin(r, &txn)) < 0)
		return rc;
	rc = reader_producer_seq(r, txn, t->producer, &seq);
	reader_end(r, txn);
	if (rc == 0)
		note_committed(t, seq);
	return rc;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

/*
 * A batch is written by hand in protobuf's wire format: the producer
 * (field 1) and first sequence (2), the already packed usages (3), and
 * their count (4) last, so that a message cut short is never applied.
 */
static size_t put_header(struct tally *t, uint64_t first_seq, uint8_t *buf)
{
	size_t n = 0;

	buf[n++] = (1 << 3) | 2;
	buf[n++] = sizeof(t->producer);
	memcpy(buf + n, t->producer, sizeof(t->producer));
	n += sizeof(t->producer);
	buf[n++] = 2 << 3;
	return n + put_varint(buf + n, first_seq);
}

static size_t put_usage(uint8_t *buf, const struct qentry *e)
{
	size_t n = 0;

	buf[n++] = (3 << 3) | 2;
	n += put_varint(buf + n, e->len);
	memcpy(buf + n, e->data, e->len);
	return n + e->len;
}

/*
 * Whether the batch being built still starts at the first unsent usage:
 * a rewind, a fork or a control request drops it, and a trim of usages
 * committed after a rewind can move the first unsent one past it.
 */
static bool outbox_current(struct tally *t, const struct outbox *ob)
{
	return ob->n > 0 && t->q.sent + ob->n <= t->q.count &&
	       queue_at(&t->q, t->q.sent)->seq == ob->first;
}

/* Appends unsent usages to the batch being built while they fit. */
static void outbox_fill(struct tally *t, struct outbox *ob)
{
	struct qentry *e;

	if (!outbox_current(t, ob)) {
		e = queue_at(&t->q, t->q.sent);
		ob->first = e->seq;
		ob->n = 0;
		ob->len = put_header(t, e->seq, ob->buf);
	}
	for (size_t i = t->q.sent + ob->n; i < t->q.count; i++) {
		e = queue_at(&t->q, i);
		if (ob->n > 0 &&
		    (t->one_by_one ||
		     ob->len + e->len + BATCH_USAGE_OVERHEAD > t->batch_limit))
			break;
		ob->len += put_usage(ob->buf + ob->len, e);
		ob->n++;
	}
}

/*
 * Whether the PUSH socket can take a message now. nn_send() copies the
 * whole message before it finds the pipe full, so while the daemon is
 * behind, a refused send of a growing batch would cost every record a
 * copy of up to batch_limit bytes; a poll of nanomsg's send fd does not.
 */
static bool push_ready(struct tally *t)
{
	struct pollfd p = {.events = POLLIN};
	size_t sz = sizeof(p.fd);

	if (nn_getsockopt(t->push, NN_SOL_SOCKET, NN_SNDFD, &p.fd, &sz) < 0)
		return true;
	return poll(&p, 1, 0) > 0;
}

/*
 * Sends what is unsent, without blocking; a full pipe leaves it queued,
 * and the batch built for it waits in the outbox for the next flush.
 */
static int flush(struct tally *t)
{
	struct outbox *ob = outbox_of(t);
	size_t len;

	if (ensure_sockets(t) < 0)
		return -EAGAIN;
	while (t->q.sent < t->q.count) {
		outbox_fill(t, ob);
		if (ob->blocked && !push_ready(t))
			return -EAGAIN;
		/* The count goes last; the next append writes over it. */
		len = ob->len;
		ob->buf[len++] = 4 << 3;
		len += put_varint(ob->buf + len, ob->n);
		if (nn_send(t->push, ob->buf, len, NN_DONTWAIT) < 0) {
			ob->blocked = nn_errno() == EAGAIN;
			return -nn_errno();
		}
		ob->blocked = false;
		t->q.sent += ob->n;
		ob->n = 0;
	}
	return 0;
}

/*
 * Keeps a handle that only records healthy: now and then it learns what
 * the ledger committed, and resends what a restarted daemon lost.
 */
static void maintain(struct tally *t, bool force)
{
	uint64_t now = tally_now_ms();

	if (!force && now - t->maintain_ms < MAINTAIN_MS)
		return;
	t->maintain_ms = now;
	if (t->q.count == 0 || tally_refresh_committed(t) < 0)
		return;
	if (t->q.count > 0 && t->q.sent > 0 &&
	    now - t->progress_ms >= RESEND_AFTER_MS) {
		resend_from(t, t->committed + 1);
		t->progress_ms = now;
	}
}

/*
 * Waits, with the lock released so that recorders go on, until nanomsg
 * says the pipe may take a message, or SENDER_WAIT_MS. Returns whether
 * the fd said ready; an fd nanomsg does not give makes poll() a sleep.
 */
static bool sender_wait_pipe(struct tally *t)
{
	struct pollfd p = {.fd = -1, .events = POLLIN};
	size_t sz = sizeof(p.fd);
	int n;

	if (nn_getsockopt(t->push, NN_SOL_SOCKET, NN_SNDFD, &p.fd, &sz) < 0)
		p.fd = -1;
	pthread_mutex_unlock(&t->lock);
	n = poll(&p, 1, SENDER_WAIT_MS);
	pthread_mutex_lock(&t->lock);
	return n > 0;
}

/* Waits for a stop, or ms, with the lock released. */
static void sender_sleep(struct tally *t, int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_nsec += (long)ms * 1000000;
	ts.tv_sec += ts.tv_nsec / 1000000000;
	ts.tv_nsec %= 1000000000;
	pthread_cond_timedwait(&t->wake, &t->lock, &ts);
}

/*
 * With nothing unsent, waits for a flush that leaves some behind, or a
 * close. While what was sent is unconfirmed it wakes now and then to learn
 * what the ledger has, and to resend what was lost as a call would.
 */
static void sender_idle(struct tally *t)
{
	t->sender_idle = true;
	if (t->q.count == 0)
		pthread_cond_wait(&t->wake, &t->lock);
	else
		sender_sleep(t, SENDER_CONFIRM_MS);
	t->sender_idle = false;
	if (!t->sender_stop)
		maintain(t, false);
}

/*
 * The sender thread: while usages are unsent it waits for the pipe and
 * flushes, under the handle's lock like any call; with nothing unsent it
 * sleeps until a flush leaves some behind or the handle closes. Without a
 * socket (closed for a fork) it flushes at once, which reopens it. A flush
 * that sent nothing (the fd was stale, a recorder took the room first, or
 * the socket cannot be made) is followed by a pause before the next poll,
 * so that the thread cannot spin whatever the fd says.
 */
static void *sender_main(void *arg)
{
	struct tally *t = arg;
	bool stuck = false;
	size_t sent;

	pthread_mutex_lock(&t->lock);
	while (!t->sender_stop) {
		if (t->q.sent == t->q.count) {
			sender_idle(t);
			stuck = false;
			continue;
		}
		if (stuck) {
			stuck = false;
			sender_sleep(t, t->push < 0 ? SENDER_WAIT_MS
						    : SENDER_RETRY_MS);
			continue;
		}
		if (t->push >= 0 && !sender_wait_pipe(t))
			continue;
		sent = t->q.sent;
		flush(t);
		stuck = t->q.sent == sent;
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

/*
 * Hands what a call left unsent to the sender thread, starting it the
 * first time. Called with the lock held. The thread takes no signal: the
 * application's handlers keep running in its own threads.
 */
static void sender_kick(struct tally *t)
{
	sigset_t all, old;

	if (t->q.sent == t->q.count || t->sender_stop)
		return;
	if (t->sender_on) {
		if (t->sender_idle)
			pthread_cond_signal(&t->wake);
		return;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	/* Without a thread, the next call sends them, as it always did. */
	t->sender_on = pthread_create(&t->sender, NULL, sender_main, t) == 0;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Stops the sender thread for good; the caller then sends the rest. */
static void sender_join(struct tally *t)
{
	bool on;

	pthread_mutex_lock(&t->lock);
	t->sender_stop = true;
	on = t->sender_on;
	pthread_cond_signal(&t->wake);
	pthread_mutex_unlock(&t->lock);
	if (on)
		pthread_join(t->sender, NULL);
	t->sender_on = false;
}

/* Room for the fixed fields of a usage: 7 varints and their tags. */
#define USAGE_FIXED_MAX (7 * 11)

static size_t put_bytes(uint8_t *p, unsigned field, const char *s, size_t n)
{
	size_t k = 0;

	p[k++] = (uint8_t)(field << 3 | 2);
	k += put_varint(p + k, n);
	memcpy(p + k, s, n);
	return k + n;
}

static size_t put_uint(uint8_t *p, unsigned field, uint64_t v)
{
	p[0] = (uint8_t)(field << 3);
	return 1 + put_varint(p + 1, v);
}

/*
 * Packs a usage in one pass, in protobuf's wire format for message Usage
 * of proto/tally.proto (field numbers 1 to 12; absent optional fields are
 * left out). protobuf-c's generic packer takes two passes over its
 * reflection tables and was a quarter of tally_record()'s instructions;
 * the daemon still decodes with protobuf-c, and the fuzz target and the
 * exactly-once tests hold the two to each other.
 */
static size_t pack_usage(const struct usage_view *v, uint8_t *p)
{
	struct timespec ts;
	size_t n = 0;

	for (int i = 0; i < USAGE_NSTR; i++)
		if (i <= USAGE_LLM || v->len[i] > 0)
			n += put_bytes(p + n, (unsigned)i + 1, v->str[i],
				       v->len[i]);
	n += put_uint(p + n, 6, v->input);
	n += put_uint(p + n, 7, v->output);
	if (v->flags & TALLY_USAGE_HAS_CACHE_READ)
		n += put_uint(p + n, 8, v->cache_read);
	if (v->flags & TALLY_USAGE_HAS_CACHE_WRITE)
		n += put_uint(p + n, 9, v->cache_write);
	if (v->flags & TALLY_USAGE_HAS_REASONING)
		n += put_uint(p + n, 10, v->reasoning);
	if (v->flags != 0)
		n += put_uint(p + n, 11, v->flags);
	clock_gettime(CLOCK_REALTIME, &ts);
	n += put_uint(p + n, 12,
		      (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
	return n;
}

/* The most bytes pack_usage() writes for v. */
static size_t packed_max(const struct usage_view *v)
{
	size_t max = USAGE_FIXED_MAX;

	for (int i = 0; i < USAGE_NSTR; i++)
		max += 11 + v->len[i];
	return max;
}

static int sync_locked(struct tally *t, int timeout_ms);

/*
 * Room for one more usage: trim by the ledger, then wait if allowed. A
 * wait that ended without room marks the handle stalled, and a stalled
 * handle fails at once until the ledger moves again: a caller recording in
 * a loop against a stopped daemon loses one timeout, not one per call.
 */
static int make_room(struct tally *t)
{
	if (t->q.count < t->q.cap)
		return 0;
	maintain(t, true);
	if (t->q.count < t->q.cap)
		return 0;
	if (t->stalled)
		return -ENOBUFS;
	if (t->record_timeout_ms > 0)
		sync_locked(t, t->record_timeout_ms);
	if (t->q.count < t->q.cap)
		return 0;
	t->stalled = true;
	return -ENOBUFS;
}

/*
 * Packs the usage straight into the queue's storage. What the pipe does
 * not take now, the sender thread sends once it can; when the pipe has
 * room, which is the usual case, no thread is woken.
 */
static int record_view(struct tally *t, const struct usage_view *v)
{
	uint8_t *data;
	size_t len;
	int rc;

	if ((rc = make_room(t)) < 0 ||
	    (rc = queue_reserve(&t->q, packed_max(v), &data)) < 0)
		return rc;
	len = pack_usage(v, data);
	if (len + BATCH_USAGE_OVERHEAD + BATCH_HEADER_MAX > t->max_message)
		return -EMSGSIZE;
	queue_push(&t->q, t->last_seq + 1,
		   hash_session(v->str[USAGE_SESSION], v->len[USAGE_SESSION]),
		   (uint32_t)len);
	if (t->q.count == 1)
		t->progress_ms = tally_now_ms();
	t->last_seq++;
	flush(t);
	maintain(t, false);
	sender_kick(t);
	return 0;
}

int tally_record(struct tally *t, const struct tally_usage *u)
{
	struct usage_view v;
	int rc;

	if (t == NULL || u == NULL)
		return -EINVAL;
	usage_view_from_api(&v, u);
	rc = usage_check(&v);
	if (rc < 0)
		return rc;
	if ((rc = tally_enter_locked(t)) < 0)
		return rc;
	rc = record_view(t, &v);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

int tally_record_response(struct tally *t, const struct tally_usage *ids,
			  const char *body, size_t len)
{
	struct tally_usage u;
	int rc;

	if (t == NULL || ids == NULL || body == NULL)
		return -EINVAL;
	u = *ids;
	u.input_tokens = u.output_tokens = 0;
	u.cache_read_tokens = u.cache_write_tokens = u.reasoning_tokens = 0;
	u.flags = 0;
	rc = tally_parse_response(ids->provider_type, body, len, &u);
	if (rc < 0)
		return rc;
	return tally_record(t, &u);
}

/* Largest control request: a purge naming many sessions. */
#define CONTROL_MAX (60 * 1024)

/* One request on the control socket; *reply is freed by the caller. */
static int control_call(struct tally *t, const Tally__Request *req,
			int timeout_ms, Tally__Reply **reply)
{
	size_t len = tally__request__get_packed_size(req);
	void *msg = NULL;
	int n;

	*reply = NULL;
	if (len > CONTROL_MAX || len > t->max_message + BATCH_HEADER_MAX)
		return -EMSGSIZE;
	if (ensure_sockets(t) < 0)
		return -EAGAIN;
	/* The request takes the buffer the next batch was being built in. */
	outbox_drop(t);
	tally__request__pack(req, t->batch_buf);
	nn_setsockopt(t->req, NN_SOL_SOCKET, NN_SNDTIMEO, &timeout_ms,
		      sizeof(timeout_ms));
	nn_setsockopt(t->req, NN_SOL_SOCKET, NN_RCVTIMEO, &timeout_ms,
		      sizeof(timeout_ms));
	if (nn_send(t->req, t->batch_buf, len, 0) < 0)
		return -nn_errno();
	n = nn_recv(t->req, &msg, NN_MSG, 0);
	if (n < 0)
		return -nn_errno();
	*reply = tally__reply__unpack(NULL, (size_t)n, msg);
	nn_freemsg(msg);
	return *reply == NULL ? -EBADMSG : 0;
}

static int remaining_ms(uint64_t deadline)
{
	uint64_t now = tally_now_ms();

	if (deadline == UINT64_MAX)
		return SYNC_WAIT_MS * 10;
	return now >= deadline ? 0 : (int)(deadline - now);
}

/*
 * Whether usages the daemon lacks were lost rather than still on their
 * way: it saw a later batch than it could apply, or what it accepted has
 * not moved for a while. A slow daemon is not a lossy one; resending to it
 * only adds load.
 */
static bool lost(struct tally *t, const Tally__Reply *r)
{
	uint64_t now = tally_now_ms();

	if (r->accepted_seq >= t->last_seq)
		return false;
	if (r->has_gap && r->gap)
		return true;
	if (r->accepted_seq != t->accepted) {
		t->accepted = r->accepted_seq;
		t->accepted_ms = now;
		return false;
	}
	if (now - t->accepted_ms < RESEND_AFTER_MS)
		return false;
	t->accepted_ms = now;
	return true;
}

/* One round of sync: ask, learn, resend what the daemon does not have. */
static int sync_round(struct tally *t, int wait_ms)
{
	Tally__Request req = TALLY__REQUEST__INIT;
	Tally__SyncRequest s = TALLY__SYNC_REQUEST__INIT;
	Tally__Reply *reply;
	int rc;

	s.producer.len = sizeof(t->producer);
	s.producer.data = t->producer;
	s.seq = t->last_seq;
	/* The daemon answers within our time, so that we can act on it. */
	s.wait_ms = (uint32_t)(wait_ms - wait_ms / 4);
	if (s.wait_ms > SYNC_WAIT_MS)
		s.wait_ms = SYNC_WAIT_MS;
	req.op_case = TALLY__REQUEST__OP_SYNC;
	req.sync = &s;
	rc = control_call(t, &req, wait_ms > 0 ? wait_ms : 1, &reply);
	if (rc < 0)
		return rc;
	if (reply->status == 0) {
		note_committed(t, reply->committed_seq);
		if (lost(t, reply))
			resend_from(t, reply->accepted_seq + 1);
	}
	rc = reply->status;
	tally__reply__free_unpacked(reply, NULL);
	return rc;
}

static void pause_ms(int ms)
{
	struct timespec ts = {0, (long)ms * 1000000};

	nanosleep(&ts, NULL);
}

/*
 * Sends everything unsent, waiting for the pipe while the daemon drains
 * it. A sync must not leave usages behind a full pipe: the daemon would
 * hold the request for usages that are not on their way. Gives up when
 * the pipe stays full for a whole wait, or said it had room and took
 * nothing: the sync round then learns why.
 */
static void flush_until(struct tally *t, uint64_t deadline)
{
	struct pollfd p = {.events = POLLIN};
	size_t sz = sizeof(p.fd), sent;
	bool waited = false;
	int left;

	for (;;) {
		sent = t->q.sent;
		if (flush(t) != -EAGAIN || t->push < 0 ||
		    (waited && t->q.sent == sent))
			return;
		left = remaining_ms(deadline);
		if (left <= 0 ||
		    nn_getsockopt(t->push, NN_SOL_SOCKET, NN_SNDFD, &p.fd,
				  &sz) < 0 ||
		    poll(&p, 1, left < SYNC_WAIT_MS ? left : SYNC_WAIT_MS) <= 0)
			return;
		waited = true;
	}
}

static int sync_locked(struct tally *t, int timeout_ms)
{
	uint64_t deadline = timeout_ms < 0
				    ? UINT64_MAX
				    : tally_now_ms() + (uint64_t)timeout_ms;
	int left, rc;

	if (t->q.count == 0)
		return 0;
	if (tally_refresh_committed(t) == 0 && t->q.count == 0)
		return 0;
	/* Bounded by the deadline: every round waits or sleeps. */
	while ((left = remaining_ms(deadline)) > 0 || timeout_ms == 0) {
		if (timeout_ms == 0)
			flush(t);
		else
			flush_until(t, deadline);
		rc = sync_round(t, remaining_ms(deadline));
		if (t->q.count == 0)
			return 0;
		if (rc < 0)
			pause_ms(left < 10 ? left : 10);
		if (timeout_ms == 0)
			break;
	}
	return t->q.count == 0 ? 0 : -ETIMEDOUT;
}

int tally_sync(struct tally *t, int timeout_ms)
{
	int rc;

	if (t == NULL)
		return -EINVAL;
	if ((rc = tally_enter_locked(t)) < 0)
		return rc;
	rc = sync_locked(t, timeout_ms);
	/* A sync that timed out may leave usages behind a full pipe. */
	sender_kick(t);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

long tally_pending(struct tally *t)
{
	long n;

	if (t == NULL)
		return -EINVAL;
	if (tally_enter_locked(t) < 0)
		return 0;
	n = (long)t->q.count;
	pthread_mutex_unlock(&t->lock);
	return n;
}

void tally_close(struct tally *t)
{
	if (t == NULL)
		return;
	pthread_mutex_lock(&handles_lock);
	if (t->prev != NULL)
		t->prev->next = t->next;
	else
		handles = t->next;
	if (t->next != NULL)
		t->next->prev = t->prev;
	pthread_mutex_unlock(&handles_lock);
	/* Before the last sync, which sends the rest itself. */
	sender_join(t);
	if (t->close_timeout_ms >= 0 && tally_enter_locked(t) == 0) {
		sync_locked(t, t->close_timeout_ms);
		pthread_mutex_unlock(&t->lock);
	}
	close_sockets(t);
	reader_put(t->reader);
	queue_fini(&t->q);
	pthread_cond_destroy(&t->wake);
	pthread_mutex_destroy(&t->lock);
	outbox_free(t->batch_buf);
	free(t);
}

static int stats_to_json(const Tally__Reply *r, char **json);

int tally_stats_json(struct tally *t, int timeout_ms, char **json)
{
	Tally__Request req = TALLY__REQUEST__INIT;
	Tally__Reply *reply;
	int rc;

	if (t == NULL || json == NULL || timeout_ms < 0)
		return -EINVAL;
	*json = NULL;
	req.op_case = TALLY__REQUEST__OP_STATS;
	req.stats = 1;
	if ((rc = tally_enter_locked(t)) < 0)
		return rc;
	rc = control_call(t, &req, timeout_ms, &reply);
	pthread_mutex_unlock(&t->lock);
	if (rc == -EAGAIN)
		rc = -ETIMEDOUT;
	if (rc < 0)
		return rc;
	rc = reply->status < 0 ? reply->status : stats_to_json(reply, json);
	tally__reply__free_unpacked(reply, NULL);
	return rc;
}

static int stats_to_json(const Tally__Reply *r, char **json)
{
	struct jsonw w;

	jsonw_init(&w);
	jsonw_raw(&w, "{", 1);
	for (size_t i = 0; i < r->n_stats; i++) {
		if (i > 0)
			jsonw_raw(&w, ",", 1);
		jsonw_str(&w, r->stats[i]->name, strlen(r->stats[i]->name));
		jsonw_raw(&w, ":", 1);
		jsonw_u64(&w, r->stats[i]->value);
	}
	jsonw_raw(&w, "}", 1);
	*json = jsonw_take(&w);
	return *json == NULL ? -ENOMEM : 0;
}

int tally_default_dir(char *buf, size_t len)
{
	struct tally_paths p;
	size_t n;
	int rc;

	if (buf == NULL)
		return -EINVAL;
	rc = paths_init(&p, NULL);
	if (rc < 0)
		return rc;
	n = strlen(p.dir);
	if (n >= len)
		return -ENAMETOOLONG;
	memcpy(buf, p.dir, n + 1);
	return 0;
}

static int purge_request(Tally__PurgeRequest *pr, const char *const *ids,
			 size_t n, ProtobufCBinaryData *bins)
{
	for (size_t i = 0; i < n; i++) {
		size_t len = ids[i] != NULL ? strlen(ids[i]) : 0;

		if (len == 0 || len > TALLY_ID_MAX)
			return -EINVAL;
		if (!utf8_valid(ids[i], len))
			return -EINVAL;
		bins[i].data = (uint8_t *)ids[i];
		bins[i].len = len;
	}
	pr->n_session_ids = n;
	pr->session_ids = bins;
	return 0;
}

/* Asks until answered or out of time; the request id makes a resend safe. */
static int purge_call(struct tally *t, const Tally__Request *req,
		      int timeout_ms, uint64_t *purged)
{
	uint64_t deadline = tally_now_ms() + (uint64_t)timeout_ms;
	Tally__Reply *reply = NULL;
	int rc = -ETIMEDOUT, left;

	/* Only a lost answer is worth asking again, with the same id. */
	while ((left = remaining_ms(deadline)) > 0) {
		rc = control_call(t, req, left, &reply);
		if (rc == 0 ||
		    (rc != -ETIMEDOUT && rc != -EAGAIN && rc != -EINTR))
			break;
		pause_ms(left < 10 ? left : 10);
	}
	if (rc < 0)
		return rc == -EAGAIN ? -ETIMEDOUT : rc;
	rc = reply->status;
	if (rc == 0 && purged != NULL)
		*purged = reply->purged;
	tally__reply__free_unpacked(reply, NULL);
	return rc;
}

int tally_purge(struct tally *t, const char *const *session_ids, size_t n,
		uint64_t idle_for_ms, int timeout_ms, uint64_t *purged)
{
	Tally__Request req = TALLY__REQUEST__INIT;
	Tally__PurgeRequest pr = TALLY__PURGE_REQUEST__INIT;
	uint8_t id[16];
	ProtobufCBinaryData *bins;
	int rc;

	if (t == NULL || (n > 0 && session_ids == NULL) || timeout_ms < 0 ||
	    (n == 0 && idle_for_ms == 0))
		return -EINVAL;
	bins = calloc(n + 1, sizeof(*bins));
	if (bins == NULL)
		return -ENOMEM;
	rc = purge_request(&pr, session_ids, n, bins);
	if (rc == 0 && getrandom(id, sizeof(id), 0) != sizeof(id))
		rc = -EIO;
	if (rc == 0) {
		pr.has_request_id = pr.has_idle_for_ms = 1;
		pr.request_id.data = id;
		pr.request_id.len = sizeof(id);
		pr.idle_for_ms = idle_for_ms;
		req.op_case = TALLY__REQUEST__OP_PURGE;
		req.purge = &pr;
		if ((rc = tally_enter_locked(t)) == 0) {
			rc = purge_call(t, &req, timeout_ms, purged);
			pthread_mutex_unlock(&t->lock);
		}
	}
	free(bins);
	return rc;
}

int tally_metrics_text(struct tally *t, int timeout_ms, char **text)
{
	Tally__Request req = TALLY__REQUEST__INIT;
	Tally__Reply *reply;
	int rc;

	if (t == NULL || text == NULL || timeout_ms < 0)
		return -EINVAL;
	*text = NULL;
	req.op_case = TALLY__REQUEST__OP_METRICS;
	req.metrics = 1;
	if ((rc = tally_enter_locked(t)) < 0)
		return rc;
	rc = control_call(t, &req, timeout_ms, &reply);
	pthread_mutex_unlock(&t->lock);
	if (rc < 0)
		return rc == -EAGAIN ? -ETIMEDOUT : rc;
	rc = reply->status;
	if (rc == 0 && (*text = strdup(reply->text ? reply->text : "")) == NULL)
		rc = -ENOMEM;
	tally__reply__free_unpacked(reply, NULL);
	return rc;
}
