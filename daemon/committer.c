#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "tallyd.h"

/*
 * A failed commit (a full disk, an I/O error) is retried with this backoff;
 * the aggregate stays in hand, so nothing it holds is lost, and receiving
 * goes on into the other aggregate until that one is full too.
 */
#define RETRY_FIRST_MS 50
#define RETRY_MAX_MS 1000
/* Once the daemon is stopping, a failing commit is given this long. */
#define STOP_RETRY_MS 1500

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

static bool stop_requested(struct committer *c)
{
	bool stop;

	pthread_mutex_lock(&c->lock);
	stop = c->stop;
	pthread_mutex_unlock(&c->lock);
	return stop;
}

static void note_commit(struct tallyd *d, struct agg *a, uint64_t ns,
			const struct ledger_commit_stats *st)
{
	STAT_ADD(d, commits, 1);
	STAT_ADD(d, usages_applied, a->usages);
	STAT_SET(d, commit_ns_last, ns);
	STAT_ADD(d, commit_ns_total, ns);
	if (ns > STAT_GET(d, commit_ns_max))
		STAT_SET(d, commit_ns_max, ns);
	STAT_ADD(d, overflows, st->overflows);
	STAT_ADD(d, purged_sessions, st->purged_sessions);
	STAT_ADD(d, expired_producers, st->expired_producers);
	STAT_ADD(d, map_grows, st->map_grows);
	STAT_ADD(d, dead_readers, st->dead_readers);
	if (d->cluster != NULL) {
		STAT_SET(d, outbox_entries, st->outbox_entries);
		STAT_SET(d, outbox_last_key, d->ledger.outbox_next - 1);
		STAT_ADD(d, outbox_records_added, st->outbox_added);
	}
}

/*
 * LMDB reports a short write on a full disk as EIO; the free space says
 * what an operator needs to know.
 */
static const char *space_left(struct tallyd *d)
{
	static _Thread_local char text[128];
	struct statvfs st;

	if (statvfs(d->paths.dir, &st) < 0)
		return "free space unknown";
	snprintf(text, sizeof(text),
		 "%llu bytes free on the ledger's filesystem%s",
		 (unsigned long long)st.f_bavail * st.f_frsize,
		 st.f_bavail == 0 ? " (full)" : "");
	return text;
}

static int commit_with_retry(struct tallyd *d, struct agg *a)
{
	struct committer *c = &d->committer;
	unsigned backoff = RETRY_FIRST_MS;
	uint64_t stop_deadline = 0;
	struct ledger_commit_stats st;
	uint64_t start;
	int rc;

	for (unsigned attempt = 1;; attempt++) {
		memset(&st, 0, sizeof(st));
		start = now_ns();
		rc = ledger_commit(&d->ledger, a, start, &st);
		if (rc == 0) {
			note_commit(d, a, now_ns() - start, &st);
			if (attempt > 1)
				log_notice("commit",
					   "commit succeeded after "
					   "%u attempts",
					   attempt);
			return 0;
		}
		STAT_ADD(d, commit_failures, 1);
		log_err("commit",
			"commit of %zu usages failed (attempt %u): %s; %s; kept and retried in %u ms",
			a->usages, attempt, strerror(-rc), space_left(d),
			backoff);
		if (stop_requested(c)) {
			if (stop_deadline == 0)
				stop_deadline = now_ms() + STOP_RETRY_MS;
			else if (now_ms() >= stop_deadline)
				return rc;
		}
		sleep_ms(backoff);
		backoff =
			backoff * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : backoff * 2;
	}
}

static void *committer_main(void *arg)
{
	struct tallyd *d = arg;
	struct committer *c = &d->committer;
	uint64_t one = 1;
	struct agg *a;
	int rc;

	for (;;) {
		pthread_mutex_lock(&c->lock);
		while (!c->stop && (c->busy == NULL || c->done))
			pthread_cond_wait(&c->cond, &c->lock);
		if (c->busy == NULL || c->done) {
			pthread_mutex_unlock(&c->lock);
			return NULL;
		}
		a = c->busy;
		pthread_mutex_unlock(&c->lock);

		rc = commit_with_retry(d, a);

		pthread_mutex_lock(&c->lock);
		c->done = true;
		c->result = rc;
		pthread_mutex_unlock(&c->lock);
		if (write(c->event_fd, &one, sizeof(one)) < 0)
			log_err("commit", "cannot wake the main loop: %s",
				strerror(errno));
	}
}

int committer_start(struct tallyd *d)
{
	struct committer *c = &d->committer;
	int rc;

	memset(c, 0, sizeof(*c));
	c->d = d;
	c->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->event_fd < 0)
		return -errno;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	rc = pthread_create(&c->thread, NULL, committer_main, d);
	if (rc != 0) {
		close(c->event_fd);
		c->event_fd = -1;
		return -rc;
	}
	return 0;
}

/* The thread finishes the aggregate in hand, if any, then exits. */
void committer_stop(struct tallyd *d)
{
	struct committer *c = &d->committer;

	if (c->event_fd < 0)
		return;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	close(c->event_fd);
	c->event_fd = -1;
}

bool committer_idle(struct tallyd *d)
{
	/* Only the main thread sets busy, so it may read it unlocked. */
	return d->committer.busy == NULL;
}

void committer_kick(struct tallyd *d)
{
	struct committer *c = &d->committer;
	bool prune;

	if (c->busy != NULL)
		return;
	prune = cluster_prepare(d, d->fill);
	if (!prune && d->fill->producers.count == 0 &&
	    d->fill->purges.count == 0 && d->fill->requests.count == 0 &&
	    d->fill->expired.count == 0)
		return;
	pthread_mutex_lock(&c->lock);
	c->busy = d->fill;
	c->done = false;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	d->fill = d->fill == &d->aggs[0] ? &d->aggs[1] : &d->aggs[0];
}

/* What a committed aggregate held is now in the ledger: tell producers. */
static void mark_committed(struct tallyd *d, struct agg *a)
{
	struct agg_producer *ap;
	struct agg_item *it;

	if (a->purge_seq > d->purge_committed)
		d->purge_committed = a->purge_seq;
	agg_foreach(a, expired, struct agg_item, it)
	{
		struct producer *p = producer_find(d, (const uint8_t *)it->key);

		/* Forgotten only if it has not sent since it was found idle. */
		if (p == NULL ||
		    (p->last_ms == 0 && p->accepted == p->committed &&
		     !agg_has(&a->producers, it->key, LEDGER_PRODUCER_ID_LEN)))
			producer_forget(d, (const uint8_t *)it->key);
	}

	agg_foreach(a, producers, struct agg_producer, ap)
	{
		struct producer *p =
			producer_get(d, (const uint8_t *)ap->item.key);

		if (p != NULL && ap->seq > p->committed)
			p->committed = ap->seq;
	}
}

bool committer_reap(struct tallyd *d)
{
	struct committer *c = &d->committer;
	uint64_t count;
	struct agg *a;
	bool done;
	int rc;

	if (read(c->event_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		log_err("commit", "eventfd read: %s", strerror(errno));
	pthread_mutex_lock(&c->lock);
	done = c->busy != NULL && c->done;
	a = c->busy;
	rc = c->result;
	pthread_mutex_unlock(&c->lock);
	if (!done)
		return false;
	if (rc == 0)
		mark_committed(d, a);
	cluster_committed(d, a, rc == 0);
	if (rc != 0)
		log_err("commit",
			"%zu usages were not committed: %s; their "
			"producers will resend them",
			a->usages, strerror(-rc));
	agg_reset(a);
	c->busy = NULL;
	return true;
}
