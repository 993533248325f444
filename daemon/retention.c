/*
 * retention.c - sessions idle too long, and producers gone for good.
 *
 * The main thread scans a bounded number of records per tick, resuming
 * where it stopped, and queues what is to go into the filling aggregate:
 * the deletions then ride along with an ordinary commit, in the committer
 * thread, and never stall receiving.
 */
#include <string.h>

#include "tallyd.h"

/* Records looked at per tick and database, and deletions queued. */
#define SCAN_PER_TICK 20000
#define QUEUE_PER_TICK 1000

struct idle_scan {
	struct tallyd *d;
	uint64_t cutoff_ns;
	size_t queued;
	size_t max;
};

static int queue_idle_session(const MDB_val *key, const MDB_val *val, void *ctx)
{
	struct idle_scan *s = ctx;
	struct ledger_session ls;

	if (ledger_session_decode(val, &ls) < 0 || ls.last_ns >= s->cutoff_ns ||
	    agg_has(&s->d->fill->purges, key->mv_data, key->mv_size))
		return 0;
	if (agg_purge(s->d->fill, key->mv_data, key->mv_size, s->cutoff_ns) < 0)
		return 1;
	return ++s->queued >= s->max;
}

size_t retention_queue_idle(struct tallyd *d, uint64_t cutoff_ns, char *cursor,
			    size_t *cursor_len, size_t max)
{
	struct idle_scan s = {d, cutoff_ns, 0, max};

	ledger_scan(&d->ledger, d->ledger.sessions, cursor, cursor_len,
		    SCAN_PER_TICK, queue_idle_session, &s);
	return s.queued;
}

static int queue_gone_producer(const MDB_val *key, const MDB_val *val,
			       void *ctx)
{
	struct idle_scan *s = ctx;
	struct ledger_producer lp;
	struct producer *p;

	if (key->mv_size != LEDGER_PRODUCER_ID_LEN ||
	    ledger_producer_decode(val, &lp) < 0 || lp.last_ns >= s->cutoff_ns)
		return 0;
	/* One with usages in flight is not gone, whatever its age. */
	p = producer_find(s->d, key->mv_data);
	if (p != NULL && p->accepted != p->committed)
		return 0;
	if (agg_remember(s->d->fill, &s->d->fill->expired, key->mv_data) < 0)
		return 1;
	return ++s->queued >= s->max;
}

void retention_tick(struct tallyd *d)
{
	uint64_t now = now_ns();
	struct idle_scan s = {d, 0, 0, QUEUE_PER_TICK};

	if (d->cfg.session_ttl_ms > 0)
		retention_queue_idle(d, now - d->cfg.session_ttl_ms * 1000000u,
				     d->session_cursor, &d->session_cursor_len,
				     QUEUE_PER_TICK);
	if (d->cfg.producer_ttl_ms == 0)
		return;
	s.cutoff_ns = now - d->cfg.producer_ttl_ms * 1000000u;
	ledger_scan(&d->ledger, d->ledger.producers, d->producer_cursor,
		    &d->producer_cursor_len, SCAN_PER_TICK, queue_gone_producer,
		    &s);
}
