#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "tally.h"
#include "tallyd.h"

/*
 * The control socket is a raw REP socket: a request's routing header is
 * kept with it, so that a sync request can be answered later, once its
 * usages are committed, while other requests are served meanwhile.
 */

/* Longest a client may ask the daemon to hold a sync request. */
#define SYNC_WAIT_MAX_MS 10000

static void send_reply(struct tallyd *d, void *header, const Tally__Reply *r)
{
	uint8_t buf[4096];
	size_t len = tally__reply__get_packed_size(r);
	uint8_t *out = len <= sizeof(buf) ? buf : malloc(len);
	struct nn_iovec iov;
	struct nn_msghdr hdr;

	if (out == NULL) {
		nn_freemsg(header);
		return;
	}
	tally__reply__pack(r, out);
	iov.iov_base = out;
	iov.iov_len = len;
	memset(&hdr, 0, sizeof(hdr));
	hdr.msg_iov = &iov;
	hdr.msg_iovlen = 1;
	hdr.msg_control = &header;
	hdr.msg_controllen = NN_MSG;
	/* On success nanomsg owns the header; a peer gone away is no error. */
	if (nn_sendmsg(d->control, &hdr, NN_DONTWAIT) < 0) {
		log_debug("control", "reply not sent: %s",
			  nn_strerror(nn_errno()));
		nn_freemsg(header);
	}
	if (out != buf)
		free(out);
}

static void reply_status(struct tallyd *d, void *header, int status)
{
	Tally__Reply r = TALLY__REPLY__INIT;

	r.status = status;
	send_reply(d, header, &r);
}

static void reply_sync(struct tallyd *d, void *header, const struct producer *p)
{
	Tally__Reply r = TALLY__REPLY__INIT;

	r.has_committed_seq = r.has_accepted_seq = 1;
	r.committed_seq = p->committed;
	r.accepted_seq = p->accepted;
	r.has_gap = 1;
	r.gap = p->gap;
	send_reply(d, header, &r);
}

static int add_waiter(struct tallyd *d, void *header, struct producer *p,
		      uint64_t seq, uint64_t deadline)
{
	if (d->nwaiters == d->waiters_cap) {
		size_t cap = d->waiters_cap ? d->waiters_cap * 2 : 64;
		struct waiter *w = realloc(d->waiters, cap * sizeof(*w));

		if (w == NULL)
			return -ENOMEM;
		d->waiters = w;
		d->waiters_cap = cap;
	}
	d->waiters[d->nwaiters++] =
		(struct waiter){header, p, seq, deadline, 0};
	return 0;
}

/* Longest a purge request waits for its commit before it is answered. */
#define PURGE_WAIT_MS 30000
/* Most idle sessions one purge request deletes; the tool asks again. */
#define PURGE_IDLE_MAX 10000

static void reply_purged(struct tallyd *d, void *header, int status,
			 uint64_t purged)
{
	Tally__Reply r = TALLY__REPLY__INIT;

	r.status = status;
	r.has_purged = 1;
	r.purged = purged;
	send_reply(d, header, &r);
}

static bool session_known(struct tallyd *d, const ProtobufCBinaryData *id)
{
	struct agg *busy = d->committer.busy;

	return ledger_has(&d->ledger, d->ledger.sessions, id->data, id->len) ==
		       1 ||
	       agg_has(&d->fill->sessions, (const char *)id->data, id->len) ||
	       (busy != NULL &&
		agg_has(&busy->sessions, (const char *)id->data, id->len));
}

/* 1 when the request was seen before: queued, or already committed. */
static int seen_request(struct tallyd *d, const ProtobufCBinaryData *id)
{
	char key[6 + LEDGER_PRODUCER_ID_LEN] = "purge:";
	struct agg *busy = d->committer.busy;

	if (agg_has(&d->fill->requests, (const char *)id->data, id->len) ||
	    (busy != NULL &&
	     agg_has(&busy->requests, (const char *)id->data, id->len)))
		return 1;
	memcpy(key + 6, id->data, LEDGER_PRODUCER_ID_LEN);
	return ledger_has(&d->ledger, d->ledger.meta, key, sizeof(key));
}

static int queue_named(struct tallyd *d, const Tally__PurgeRequest *pr,
		       uint64_t *purged)
{
	for (size_t i = 0; i < pr->n_session_ids; i++) {
		ProtobufCBinaryData *id = &pr->session_ids[i];

		if (id->len == 0 || id->len > TALLY_ID_MAX ||
		    !utf8_valid((const char *)id->data, id->len))
			return -EINVAL;
	}
	for (size_t i = 0; i < pr->n_session_ids; i++) {
		ProtobufCBinaryData *id = &pr->session_ids[i];

		*purged += session_known(d, id);
		if (agg_purge(d->fill, (const char *)id->data, id->len, 0) < 0)
			return -ENOMEM;
	}
	return 0;
}

/*
 * Sessions idle since before cutoff, up to PURGE_IDLE_MAX: the scan goes
 * on to the end of the table if need be, so that an answer below the
 * maximum means none is left.
 */
static uint64_t queue_idle(struct tallyd *d, uint64_t cutoff)
{
	char cursor[LEDGER_KEY_MAX];
	size_t cursor_len = 0;
	uint64_t queued = 0;

	do {
		queued += retention_queue_idle(d, cutoff, cursor, &cursor_len,
					       PURGE_IDLE_MAX - queued);
	} while (cursor_len != 0 && queued < PURGE_IDLE_MAX);
	return queued;
}

/*
 * Deletes through the committer, the only writer: the sessions named are
 * dropped with what was received of them before the request; sessions
 * idle for idle_for_ms go only if still idle at the commit. Answered once
 * that commit is done.
 */
static void handle_purge(struct tallyd *d, void *header,
			 const Tally__PurgeRequest *pr)
{
	uint64_t purged = 0;
	int rc;

	STAT_ADD(d, purge_requests, 1);
	if (pr->has_request_id &&
	    pr->request_id.len != LEDGER_PRODUCER_ID_LEN) {
		reply_purged(d, header, -EINVAL, 0);
		return;
	}
	if (pr->has_request_id && (rc = seen_request(d, &pr->request_id))) {
		reply_purged(d, header, rc < 0 ? rc : 0, 0);
		return;
	}
	if ((rc = queue_named(d, pr, &purged)) < 0) {
		reply_purged(d, header, rc, 0);
		return;
	}
	if (pr->has_idle_for_ms && pr->idle_for_ms > 0)
		purged += queue_idle(d, now_ns() - pr->idle_for_ms * 1000000u);
	if (pr->has_request_id &&
	    agg_remember(d->fill, &d->fill->requests, pr->request_id.data) < 0)
		log_err("control", "out of memory remembering a purge request");
	d->fill->purge_seq = ++d->purge_seq;
	if (add_waiter(d, header, NULL, d->purge_seq,
		       now_ms() + PURGE_WAIT_MS) < 0)
		reply_purged(d, header, -ENOMEM, 0);
	else
		d->waiters[d->nwaiters - 1].purged = purged;
}

static void handle_sync(struct tallyd *d, void *header,
			const Tally__SyncRequest *s)
{
	uint32_t wait =
		s->wait_ms < SYNC_WAIT_MAX_MS ? s->wait_ms : SYNC_WAIT_MAX_MS;
	struct producer *p;

	STAT_ADD(d, sync_requests, 1);
	if (s->producer.len != LEDGER_PRODUCER_ID_LEN) {
		reply_status(d, header, -EINVAL);
		return;
	}
	p = producer_get(d, s->producer.data);
	if (p == NULL) {
		reply_status(d, header, -EIO);
		return;
	}
	if (p->committed >= s->seq || wait == 0 ||
	    add_waiter(d, header, p, s->seq, now_ms() + wait) < 0)
		reply_sync(d, header, p);
}

static const struct {
	const char *name;
	size_t offset;
} stat_fields[] = {
#define F(x)                                         \
	{                                            \
#x, offsetof(struct tallyd_stats, x) \
	}
	F(messages),	      F(usages_received),
	F(usages_accepted),   F(usages_applied),
	F(duplicates),	      F(gap_batches),
	F(gap_usages),	      F(malformed_messages),
	F(malformed_usages),  F(oversized_messages),
	F(overflows),	      F(commits),
	F(commit_failures),   F(commit_ns_last),
	F(commit_ns_max),     F(commit_ns_total),
	F(map_grows),	      F(dead_readers),
	F(sync_requests),     F(control_requests),
	F(control_malformed), F(producers),
	F(purge_requests),    F(purged_sessions),
	F(expired_producers), F(cluster_state),
	F(outbox_entries),    F(outbox_records_added),
	F(published_records), F(publish_failures),
	F(consumed_records),  F(own_records),
	F(remote_usages),     F(remote_duplicates),
	F(remote_malformed),  F(remote_refused),
	F(remote_lost),	      F(consumer_pending),
	F(consume_lag_ms),
#undef F
};

#define NSTATS (sizeof(stat_fields) / sizeof(stat_fields[0]))
#define NINFO 14

static void fill_info(struct tallyd *d, Tally__Stat *st)
{
	struct ledger_info li;
	const char *names[NINFO] = {
		"map_size",	     "ledger_bytes",
		"readers",	     "max_readers",
		"oldest_reader_lag", "last_txnid",
		"pending",	     "sync_waiters",
		"uptime_ms",	     "oldest_reader_age_ms",
		"session_ttl_ms",    "producer_ttl_ms",
		"outbox_age_ms",     "outbox_unpublished",
	};
	uint64_t values[NINFO] = {0};

	if (ledger_info(&d->ledger, &li) == 0) {
		values[0] = li.map_size;
		values[1] = li.used_bytes;
		values[2] = li.readers;
		values[3] = li.max_readers;
		values[4] = li.oldest_reader_lag;
		values[5] = li.last_txnid;
	}
	values[6] = d->fill->usages;
	values[7] = d->nwaiters;
	values[8] = now_ms() - d->start_ms;
	values[9] = oldest_reader_age_ms(d);
	values[10] = d->cfg.session_ttl_ms;
	values[11] = d->cfg.producer_ttl_ms;
	values[12] = cluster_outbox_age_ms(d);
	values[13] = cluster_unpublished(d);
	for (int i = 0; i < NINFO; i++) {
		st[i].name = (char *)names[i];
		st[i].value = values[i];
	}
}

static void handle_stats(struct tallyd *d, void *header)
{
	Tally__Reply r = TALLY__REPLY__INIT;
	Tally__Stat st[NSTATS + NINFO];
	Tally__Stat *ptrs[NSTATS + NINFO];

	for (size_t i = 0; i < NSTATS + NINFO; i++) {
		tally__stat__init(&st[i]);
		ptrs[i] = &st[i];
	}
	for (size_t i = 0; i < NSTATS; i++) {
		st[i].name = (char *)stat_fields[i].name;
		st[i].value = atomic_load_explicit(
			(_Atomic uint64_t *)((char *)&d->stats +
					     stat_fields[i].offset),
			memory_order_relaxed);
	}
	fill_info(d, st + NSTATS);
	r.n_stats = NSTATS + NINFO;
	r.stats = ptrs;
	send_reply(d, header, &r);
}

static void handle_ping(struct tallyd *d, void *header)
{
	Tally__Reply r = TALLY__REPLY__INIT;

	r.has_pid = 1;
	r.pid = (uint32_t)getpid();
	r.version = (char *)TALLY_VERSION_STRING;
	send_reply(d, header, &r);
}

static void handle_metrics(struct tallyd *d, void *header)
{
	Tally__Reply r = TALLY__REPLY__INIT;

	r.text = metrics_text(d);
	r.status = r.text != NULL ? 0 : -ENOMEM;
	send_reply(d, header, &r);
	free(r.text);
}

static void handle_request(struct tallyd *d, void *header, const void *buf,
			   size_t len)
{
	Tally__Request *req = tally__request__unpack(NULL, len, buf);

	STAT_ADD(d, control_requests, 1);
	if (req == NULL) {
		STAT_ADD(d, control_malformed, 1);
		log_limited(&d->bad_input, LOG_WARNING, "control",
			    "malformed %zu-byte request", len);
		reply_status(d, header, -EBADMSG);
		return;
	}
	switch (req->op_case) {
	case TALLY__REQUEST__OP_SYNC:
		handle_sync(d, header, req->sync);
		break;
	case TALLY__REQUEST__OP_STATS:
		handle_stats(d, header);
		break;
	case TALLY__REQUEST__OP_PING:
		handle_ping(d, header);
		break;
	case TALLY__REQUEST__OP_PURGE:
		handle_purge(d, header, req->purge);
		break;
	case TALLY__REQUEST__OP_METRICS:
		handle_metrics(d, header);
		break;
	default:
		reply_status(d, header, -EOPNOTSUPP);
	}
	tally__request__free_unpacked(req, NULL);
}

static int recv_request(struct tallyd *d)
{
	void *buf = NULL, *header = NULL;
	struct nn_iovec iov = {&buf, NN_MSG};
	struct nn_msghdr hdr;
	int len;

	memset(&hdr, 0, sizeof(hdr));
	hdr.msg_iov = &iov;
	hdr.msg_iovlen = 1;
	hdr.msg_control = &header;
	hdr.msg_controllen = NN_MSG;
	len = nn_recvmsg(d->control, &hdr, NN_DONTWAIT);
	if (len < 0)
		return -nn_errno();
	if (header == NULL) {
		nn_freemsg(buf);
		return 0;
	}
	handle_request(d, header, buf, (size_t)len);
	nn_freemsg(buf);
	return 0;
}

int control_drain(struct tallyd *d, unsigned max_requests)
{
	unsigned n;
	int rc;

	for (n = 0; n < max_requests; n++) {
		rc = recv_request(d);
		if (rc == -EAGAIN || rc == -EINTR)
			break;
		if (rc < 0) {
			log_err("control", "receive failed: %s",
				nn_strerror(-rc));
			break;
		}
	}
	return (int)n;
}

/*
 * Answers every waiter whose usages are committed or whose time is up;
 * with all, every waiter (the daemon is stopping).
 */
void control_answer_waiters(struct tallyd *d, bool all)
{
	uint64_t now = now_ms();
	size_t kept = 0;

	for (size_t i = 0; i < d->nwaiters; i++) {
		struct waiter *w = &d->waiters[i];

		if (w->p == NULL && d->purge_committed >= w->seq)
			reply_purged(d, w->header, 0, w->purged);
		else if (w->p == NULL && (all || now >= w->deadline_ms))
			reply_purged(d, w->header, -ETIMEDOUT, 0);
		else if (w->p != NULL && (all || w->p->committed >= w->seq ||
					  now >= w->deadline_ms))
			reply_sync(d, w->header, w->p);
		else
			d->waiters[kept++] = *w;
	}
	d->nwaiters = kept;
}

/* Milliseconds until the first waiter's deadline; -1 with no waiter. */
int control_next_deadline(struct tallyd *d, uint64_t now)
{
	uint64_t first = UINT64_MAX;

	for (size_t i = 0; i < d->nwaiters; i++)
		if (d->waiters[i].deadline_ms < first)
			first = d->waiters[i].deadline_ms;
	if (first == UINT64_MAX)
		return -1;
	return first <= now ? 0 : (int)(first - now);
}
