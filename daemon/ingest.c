#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nanomsg/nn.h>

#include "tallyd.h"
#include "usage_check.h"

/* Most usages one batch may carry; a client sends far fewer. */
#define BATCH_MAX_USAGES 65536

/*
 * protobuf-c allocates every field it decodes. A bump arena, rewound after
 * each message, keeps malloc off the path a usage takes; what does not fit
 * goes to malloc and is freed at the rewind.
 */
struct unpack_arena {
	char *buf;
	size_t cap;
	size_t used;
	void **spill;
	size_t nspill;
	size_t spill_cap;
};

static struct unpack_arena arena;

static void *arena_alloc(void *data, size_t size)
{
	struct unpack_arena *a = data;
	size_t n = (size + 15) & ~(size_t)15;
	void **spill, *p;

	if (a->cap - a->used >= n) {
		a->used += n;
		return a->buf + a->used - n;
	}
	if (a->nspill == a->spill_cap) {
		size_t cap = a->spill_cap ? a->spill_cap * 2 : 16;

		spill = realloc(a->spill, cap * sizeof(*spill));
		if (spill == NULL)
			return NULL;
		a->spill = spill;
		a->spill_cap = cap;
	}
	p = malloc(size);
	if (p != NULL)
		a->spill[a->nspill++] = p;
	return p;
}

static void arena_free(void *data, void *p)
{
}

/* Rewinds the arena and sizes it for the next message of len bytes. */
static void arena_rewind(struct unpack_arena *a, size_t len)
{
	size_t want = len * 8 + 4096;
	char *buf;

	for (size_t i = 0; i < a->nspill; i++)
		free(a->spill[i]);
	a->nspill = 0;
	a->used = 0;
	if (want <= a->cap)
		return;
	buf = realloc(a->buf, want);
	if (buf != NULL) {
		a->buf = buf;
		a->cap = want;
	}
}

static void arena_release(struct unpack_arena *a)
{
	arena_rewind(a, 0);
	free(a->buf);
	free(a->spill);
	memset(a, 0, sizeof(*a));
}

static ProtobufCAllocator unpack_allocator = {
	.alloc = arena_alloc,
	.free = arena_free,
	.allocator_data = &arena,
};

static void hex_id(char *out, const uint8_t *id)
{
	for (int i = 0; i < LEDGER_PRODUCER_ID_LEN; i++)
		snprintf(out + 2 * i, 3, "%02x", id[i]);
}

static uint64_t hash_id(const uint8_t *id)
{
	uint64_t h;

	/* Producer ids are random bytes: any eight of them hash well. */
	memcpy(&h, id, sizeof(h));
	return h;
}

static int producers_grow(struct producer_map *m)
{
	size_t cap = m->cap ? m->cap * 2 : 256;
	struct producer **slots = calloc(cap, sizeof(*slots));

	if (slots == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		struct producer *p = m->slots[i];
		size_t j;

		if (p == NULL)
			continue;
		for (j = hash_id(p->id) & (cap - 1); slots[j] != NULL;
		     j = (j + 1) & (cap - 1))
			;
		slots[j] = p;
	}
	free(m->slots);
	m->slots = slots;
	m->cap = cap;
	return 0;
}

void producers_fini(struct producer_map *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->slots[i]);
	free(m->slots);
	memset(m, 0, sizeof(*m));
}

/*
 * The producer's state, read from the ledger the first time it is seen.
 * Nothing of an unknown producer can be in flight to the ledger, so what
 * the ledger says is all that was applied.
 */
/* The slot of id, or of the empty slot where it would go. */
static size_t producer_slot(const struct producer_map *m, const uint8_t *id)
{
	size_t i = hash_id(id) & (m->cap - 1);

	while (m->slots[i] != NULL &&
	       memcmp(m->slots[i]->id, id, LEDGER_PRODUCER_ID_LEN) != 0)
		i = (i + 1) & (m->cap - 1);
	return i;
}

struct producer *producer_find(struct tallyd *d, const uint8_t *id)
{
	struct producer_map *m = &d->producers;

	return m->cap == 0 ? NULL : m->slots[producer_slot(m, id)];
}

void producer_forget(struct tallyd *d, const uint8_t *id)
{
	struct producer_map *m = &d->producers;
	struct producer *p = producer_find(d, id);
	size_t i, j;

	if (p == NULL)
		return;
	/* A waiting sync request points at it: it is not gone after all. */
	for (size_t w = 0; w < d->nwaiters; w++)
		if (d->waiters[w].p == p)
			return;
	i = producer_slot(m, id);
	m->slots[i] = NULL;
	free(p);
	m->count--;
	/* Linear probing: the rest of the cluster goes where it now fits. */
	for (j = (i + 1) & (m->cap - 1); m->slots[j] != NULL;
	     j = (j + 1) & (m->cap - 1)) {
		p = m->slots[j];
		m->slots[j] = NULL;
		m->slots[producer_slot(m, p->id)] = p;
	}
	STAT_SET(d, producers, m->count);
}

struct producer *producer_get(struct tallyd *d, const uint8_t *id)
{
	struct producer_map *m = &d->producers;
	struct producer *p = producer_find(d, id);
	struct ledger_producer rec;
	size_t i;

	if (p != NULL)
		return p;
	if (ledger_producer_get(&d->ledger, id, &rec) < 0)
		return NULL;
	if ((m->count + 1) * 2 > m->cap && producers_grow(m) < 0)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return NULL;
	memcpy(p->id, id, LEDGER_PRODUCER_ID_LEN);
	p->accepted = p->committed = rec.seq;
	memcpy(p->node, rec.node, sizeof(p->node));
	p->flags = rec.flags;
	p->nranges = rec.nranges;
	memcpy(p->ranges, rec.ranges, sizeof(p->ranges));
	i = producer_slot(m, id);
	m->slots[i] = p;
	m->count++;
	STAT_SET(d, producers, m->count);
	return p;
}

static bool batch_sane(const Tally__Batch *b)
{
	return b->producer.len == LEDGER_PRODUCER_ID_LEN && b->first_seq >= 1 &&
	       b->n_usages >= 1 && b->n_usages <= BATCH_MAX_USAGES &&
	       b->count == b->n_usages &&
	       b->first_seq <= UINT64_MAX - b->n_usages;
}

static void bad_usage(struct tallyd *d, const struct producer *p, uint64_t seq,
		      int err)
{
	char id[2 * LEDGER_PRODUCER_ID_LEN + 1];

	STAT_ADD(d, malformed_usages, 1);
	hex_id(id, p->id);
	log_limited(&d->bad_input, LOG_WARNING, "ingest",
		    "dropped usage %" PRIu64 " of producer %s: %s", seq, id,
		    strerror(-err));
}

/* Where a usage bound for the outbox is packed; main thread only. */
static uint8_t *pack_buf;
static size_t pack_cap;

/*
 * Packs usage u for the outbox and makes room for it in ap. A usage that
 * failed its check goes as an empty one, which fails it on every host
 * alike: its sequence number is used up everywhere, and its bytes, which
 * may be large and hostile, go nowhere.
 */
static int outbox_pack(struct agg_producer *ap, const Tally__Usage *u,
		       bool valid, size_t *len)
{
	Tally__Usage empty = TALLY__USAGE__INIT;
	size_t n;

	if (!valid)
		u = &empty;
	n = tally__usage__get_packed_size(u);
	if (n > pack_cap) {
		size_t cap = n < 4096 ? 4096 : n;
		uint8_t *buf = realloc(pack_buf, cap);

		if (buf == NULL)
			return -ENOMEM;
		pack_buf = buf;
		pack_cap = cap;
	}
	*len = tally__usage__pack(u, pack_buf);
	return agg_outbox_reserve(ap, *len);
}

/* What the ledger keeps of p beside its sequence goes with the aggregate. */
static void keep_state(struct tallyd *d, const struct producer *p)
{
	struct agg_producer *ap = agg_find_producer(d->fill, p->id);

	if (ap == NULL)
		return;
	memcpy(ap->node, p->node, sizeof(ap->node));
	ap->flags = p->flags;
	ap->nranges = p->nranges;
	memcpy(ap->ranges, p->ranges, sizeof(ap->ranges));
}

/*
 * The producer's record goes into the aggregate before any usage: usages
 * committed without their sequence would be counted again when their
 * producer resends them. Once there, updating it allocates nothing and
 * cannot fail.
 */
static int hold_producer(struct tallyd *d, const struct producer *p, size_t n)
{
	if (agg_set_producer(d->fill, p->id, p->accepted) == 0)
		return 0;
	log_limited(&d->bad_input, LOG_ERR, "ingest",
		    "out of memory; a batch of %zu usages will be resent", n);
	return -ENOMEM;
}

/*
 * Applies the usages of a local batch that follow what p has, in order.
 * A usage that fails its check still uses up its sequence number: a
 * hostile or broken usage must not make its producer resend it forever.
 * With --cluster they also go to the outbox. Returns 0, or -ENOMEM when
 * it stopped short (the rest is resent).
 */
static int apply_batch(struct tallyd *d, struct producer *p,
		       const Tally__Batch *b)
{
	uint64_t now = now_ns();
	struct agg_producer *ap = NULL;
	struct usage_view v;
	size_t plen = 0;
	int rc, result = 0;

	if (hold_producer(d, p, b->n_usages) < 0)
		return -ENOMEM;
	if (d->cluster != NULL) {
		ap = agg_find_producer(d->fill, p->id);
		p->flags |= LEDGER_PRODUCER_LOCAL;
		memcpy(p->node, d->node_id, sizeof(p->node));
	}
	for (size_t i = p->accepted + 1 - b->first_seq; i < b->n_usages; i++) {
		uint64_t seq = b->first_seq + i;

		usage_view_from_wire(&v, b->usages[i]);
		rc = usage_check(&v);
		if ((ap != NULL &&
		     outbox_pack(ap, b->usages[i], rc == 0, &plen) < 0) ||
		    (rc == 0 && (rc = agg_add(d->fill, &v, now)) == -ENOMEM)) {
			log_limited(&d->bad_input, LOG_ERR, "ingest",
				    "out of memory; usage %" PRIu64
				    " will be resent",
				    seq);
			result = -ENOMEM;
			break;
		}
		if (ap != NULL)
			agg_outbox_put(d->fill, ap, seq, pack_buf, plen);
		if (rc < 0) {
			bad_usage(d, p, seq, rc);
		} else {
			STAT_ADD(d, usages_accepted, 1);
			metrics_count(d, &v);
		}
		p->accepted = seq;
	}
	agg_set_producer(d->fill, p->id, p->accepted);
	if (d->cluster != NULL)
		keep_state(d, p);
	return result;
}

static enum ingest_result handle_batch(struct tallyd *d, const Tally__Batch *b)
{
	uint64_t last = b->first_seq + b->n_usages - 1;
	struct producer *p;

	p = producer_get(d, b->producer.data);
	if (p == NULL) {
		log_limited(&d->bad_input, LOG_ERR, "ingest",
			    "cannot read producer state; batch dropped, its "
			    "producer will resend it");
		return INGEST_RETRY;
	}
	p->last_ms = now_ms();
	STAT_ADD(d, usages_received, b->n_usages);
	if (last <= p->accepted) {
		STAT_ADD(d, duplicates, b->n_usages);
		return INGEST_APPLIED;
	}
	if (b->first_seq > p->accepted + 1) {
		/* Something before it was lost; the client resends from there. */
		STAT_ADD(d, gap_batches, 1);
		STAT_ADD(d, gap_usages, b->n_usages);
		p->gap = true;
		return INGEST_GAP;
	}
	STAT_ADD(d, duplicates, p->accepted + 1 - b->first_seq);
	p->gap = false;
	return apply_batch(d, p, b) < 0 ? INGEST_RETRY : INGEST_APPLIED;
}

/* Whether seq is in one of p's ranges past its sequence. */
static bool in_ranges(const struct producer *p, uint64_t seq)
{
	for (uint32_t i = 0; i < p->nranges; i++)
		if (seq >= p->ranges[i].first &&
		    seq - p->ranges[i].first < p->ranges[i].count)
			return true;
	return false;
}

/* The sequence moves on through the ranges that now follow it. */
static void absorb_ranges(struct producer *p)
{
	while (p->nranges > 0 && p->ranges[0].first == p->accepted + 1) {
		p->accepted += p->ranges[0].count;
		memmove(&p->ranges[0], &p->ranges[1],
			--p->nranges * sizeof(p->ranges[0]));
	}
}

/*
 * Marks seq applied: the sequence moves on, taking in the ranges that now
 * follow it, or seq joins a range (a new one if it touches none). False,
 * with nothing marked, when that would make too many ranges.
 */
static bool mark_applied(struct producer *p, uint64_t seq)
{
	uint32_t i;

	if (seq == p->accepted + 1) {
		p->accepted = seq;
		absorb_ranges(p);
		return true;
	}
	for (i = 0; i < p->nranges && p->ranges[i].first < seq; i++)
		;
	/* Joins the range before it, the one after it, or both. */
	if (i > 0 && p->ranges[i - 1].first + p->ranges[i - 1].count == seq) {
		p->ranges[i - 1].count++;
		if (i < p->nranges && p->ranges[i].first == seq + 1) {
			p->ranges[i - 1].count += p->ranges[i].count;
			memmove(&p->ranges[i], &p->ranges[i + 1],
				(--p->nranges - i) * sizeof(p->ranges[0]));
		}
		return true;
	}
	if (i < p->nranges && p->ranges[i].first == seq + 1) {
		p->ranges[i].first--;
		p->ranges[i].count++;
		return true;
	}
	if (p->nranges == LEDGER_RANGES_MAX)
		return false;
	memmove(&p->ranges[i + 1], &p->ranges[i],
		(p->nranges++ - i) * sizeof(p->ranges[0]));
	p->ranges[i] = (struct ledger_range){seq, 1};
	return true;
}

/*
 * A producer has as many holes as it may keep, and usage seq would open
 * another: the oldest hole is given up, its usages counted as lost (a
 * record that fills it later is a repeat). If seq itself lies in that
 * hole, only the part below seq is given up, and seq then follows the
 * sequence. Either way every range stays above the sequence. Waiting
 * instead would stop the producer on this host for good when the holes
 * never close (a stream deleted several times), and its redeliveries
 * would fill the consumer's window until the host received nothing.
 */
static void give_up_hole(struct tallyd *d, struct producer *p, uint64_t seq)
{
	uint64_t last =
		seq < p->ranges[0].first ? seq - 1 : p->ranges[0].first - 1;
	char id[2 * LEDGER_PRODUCER_ID_LEN + 1];

	hex_id(id, p->id);
	log_limited(&d->bad_input, LOG_ERR, "cluster",
		    "producer %s: usages %" PRIu64 " to %" PRIu64
		    " never came from the stream (%u holes open); "
		    "counted as lost on this host",
		    id, p->accepted + 1, last, (unsigned)p->nranges);
	STAT_ADD(d, remote_lost, last - p->accepted);
	p->accepted = last;
	absorb_ranges(p);
}

/*
 * A producer's records come from one host: the one that runs it (local
 * producers only from this host's own records) or the first host seen
 * with it. A record of it from another host is forged, or comes from a
 * copy of a ledger, and would use up sequence numbers that are not its.
 */
static bool origin_ok(struct tallyd *d, struct producer *p, const uint8_t *node)
{
	static const uint8_t unknown[LEDGER_PRODUCER_ID_LEN];

	if (p->flags & LEDGER_PRODUCER_LOCAL)
		return memcmp(node, d->node_id, LEDGER_PRODUCER_ID_LEN) == 0;
	if (memcmp(p->node, unknown, sizeof(unknown)) == 0)
		memcpy(p->node, node, sizeof(p->node));
	return memcmp(p->node, node, LEDGER_PRODUCER_ID_LEN) == 0;
}

/*
 * A record of another host: each usage is applied unless its sequence
 * number is already applied, in order or not. Records of one producer
 * come in order unless a publish was retried, or a record was lost (a
 * stream deleted, a record past its age); then those after the hole are
 * applied at once and their numbers kept as ranges, so that the late
 * record, if it ever comes, is applied too, and nothing twice.
 */
static enum ingest_result apply_remote(struct tallyd *d, struct producer *p,
				       const Tally__Batch *b)
{
	enum ingest_result result = INGEST_APPLIED;
	uint64_t now = now_ns(), dup = 0;
	struct usage_view v;
	int rc;

	if (hold_producer(d, p, b->n_usages) < 0)
		return INGEST_RETRY;
	for (size_t i = 0; i < b->n_usages; i++) {
		uint64_t seq = b->first_seq + i;

		if (seq <= p->accepted || in_ranges(p, seq)) {
			dup++;
			continue;
		}
		if (seq != p->accepted + 1 && p->nranges == LEDGER_RANGES_MAX &&
		    !in_ranges(p, seq - 1) && !in_ranges(p, seq + 1))
			give_up_hole(d, p, seq);
		usage_view_from_wire(&v, b->usages[i]);
		rc = usage_check(&v);
		if (rc == 0 && (rc = agg_add(d->fill, &v, now)) == -ENOMEM) {
			log_limited(&d->bad_input, LOG_ERR, "cluster",
				    "out of memory; the stream will bring "
				    "usage %" PRIu64 " again",
				    seq);
			result = INGEST_RETRY;
			break;
		}
		if (rc < 0)
			bad_usage(d, p, seq, rc);
		else
			STAT_ADD(d, remote_usages, 1);
		mark_applied(p, seq);
	}
	STAT_ADD(d, remote_duplicates, dup);
	agg_set_producer(d->fill, p->id, p->accepted);
	keep_state(d, p);
	return result;
}

enum ingest_result ingest_remote(struct tallyd *d, const void *buf, size_t len,
				 const uint8_t *node)
{
	struct producer *p;
	Tally__Batch *b;

	arena_rewind(&arena, len);
	b = tally__batch__unpack(&unpack_allocator, len, buf);
	if (b == NULL || !batch_sane(b))
		return INGEST_MALFORMED;
	p = producer_get(d, b->producer.data);
	if (p == NULL) {
		log_limited(&d->bad_input, LOG_ERR, "cluster",
			    "cannot read producer state; the stream will "
			    "bring the record again");
		return INGEST_RETRY;
	}
	if (!origin_ok(d, p, node))
		return INGEST_REFUSED;
	p->last_ms = now_ms();
	return apply_remote(d, p, b);
}

void ingest_handle(struct tallyd *d, const void *buf, size_t len)
{
	Tally__Batch *b;

	STAT_ADD(d, messages, 1);
	if (len > d->cfg.max_message) {
		STAT_ADD(d, oversized_messages, 1);
		log_limited(&d->bad_input, LOG_WARNING, "ingest",
			    "dropped a %zu-byte message: over the %zu-byte "
			    "limit (--max-message)",
			    len, d->cfg.max_message);
		return;
	}
	arena_rewind(&arena, len);
	b = tally__batch__unpack(&unpack_allocator, len, buf);
	if (b == NULL || !batch_sane(b)) {
		STAT_ADD(d, malformed_messages, 1);
		log_limited(&d->bad_input, LOG_WARNING, "ingest",
			    "dropped a malformed %zu-byte message", len);
		return;
	}
	handle_batch(d, b);
}

/*
 * Receives until the socket is empty or max_messages were taken, so that
 * the loop gets back to control requests and to the committer in time.
 * Returns how many messages were taken.
 */
int ingest_drain(struct tallyd *d, unsigned max_messages)
{
	unsigned n;

	for (n = 0; n < max_messages; n++) {
		void *buf = NULL;
		int len = nn_recv(d->ingest, &buf, NN_MSG, NN_DONTWAIT);

		if (len < 0) {
			if (nn_errno() != EAGAIN && nn_errno() != EINTR)
				log_err("ingest", "receive failed: %s",
					nn_strerror(nn_errno()));
			break;
		}
		ingest_handle(d, buf, (size_t)len);
		nn_freemsg(buf);
		if (d->fill->usages >= d->cfg.max_pending)
			break;
	}
	return (int)n;
}

void ingest_fini(void)
{
	arena_release(&arena);
	free(pack_buf);
	pack_buf = NULL;
	pack_cap = 0;
}
