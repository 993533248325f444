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
	size_t i;
	uint64_t seq;

	if (p != NULL)
		return p;
	if (ledger_producer_seq(&d->ledger, id, &seq) < 0)
		return NULL;
	if ((m->count + 1) * 2 > m->cap && producers_grow(m) < 0)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return NULL;
	memcpy(p->id, id, LEDGER_PRODUCER_ID_LEN);
	p->accepted = p->committed = seq;
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

/*
 * Applies the usages of b that follow what p has, in order. A usage that
 * fails its check still uses up its sequence number: a hostile or broken
 * usage must not make its producer resend it forever.
 */
static void apply_batch(struct tallyd *d, struct producer *p,
			const Tally__Batch *b)
{
	uint64_t now = now_ns();
	struct usage_view v;
	int rc;

	/*
	 * The producer's record goes into the aggregate before any usage:
	 * usages committed without their sequence would be counted again
	 * when their producer resends them. Once there, updating it below
	 * allocates nothing and cannot fail.
	 */
	if (agg_set_producer(d->fill, p->id, p->accepted) < 0) {
		log_limited(&d->bad_input, LOG_ERR, "ingest",
			    "out of memory; a batch of %zu usages will be "
			    "resent",
			    b->n_usages);
		return;
	}
	for (size_t i = p->accepted + 1 - b->first_seq; i < b->n_usages; i++) {
		uint64_t seq = b->first_seq + i;

		usage_view_from_wire(&v, b->usages[i]);
		rc = usage_check(&v);
		if (rc == 0 && (rc = agg_add(d->fill, &v, now)) == -ENOMEM) {
			log_limited(&d->bad_input, LOG_ERR, "ingest",
				    "out of memory; usage %" PRIu64
				    " will be resent",
				    seq);
			break;
		}
		if (rc < 0) {
			bad_usage(d, p, seq, rc);
		} else {
			STAT_ADD(d, usages_accepted, 1);
			metrics_count(d, &v);
		}
		p->accepted = seq;
	}
	agg_set_producer(d->fill, p->id, p->accepted);
}

static void handle_batch(struct tallyd *d, const Tally__Batch *b)
{
	uint64_t last = b->first_seq + b->n_usages - 1;
	struct producer *p;

	p = producer_get(d, b->producer.data);
	if (p == NULL) {
		log_limited(&d->bad_input, LOG_ERR, "ingest",
			    "cannot read producer state; batch dropped, its "
			    "producer will resend it");
		return;
	}
	p->last_ms = now_ms();
	STAT_ADD(d, usages_received, b->n_usages);
	if (last <= p->accepted) {
		STAT_ADD(d, duplicates, b->n_usages);
		return;
	}
	if (b->first_seq > p->accepted + 1) {
		/* Something before it was lost; the client resends from there. */
		STAT_ADD(d, gap_batches, 1);
		STAT_ADD(d, gap_usages, b->n_usages);
		p->gap = true;
		return;
	}
	STAT_ADD(d, duplicates, p->accepted + 1 - b->first_seq);
	p->gap = false;
	apply_batch(d, p, b);
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
}
