/*
 * queue.c - the usages a handle recorded and the ledger has not yet shown
 * committed, in sequence order.
 *
 * Entries are added at the tail and trimmed from the head, always in
 * order, so their packed bytes live in one ring: a record appends to it
 * instead of allocating, and a trim only moves the head. An entry's bytes
 * are contiguous; one that does not fit before the end of the ring starts
 * again at its beginning, and one that fits nowhere grows the ring.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The ring's first size; it doubles as needed. */
#define BYTES_MIN 4096
/* A ring larger than this is given back once it drains. */
#define BYTES_KEEP (1024 * 1024)

int queue_init(struct queue *q, size_t cap)
{
	memset(q, 0, sizeof(*q));
	q->e = calloc(cap, sizeof(*q->e));
	if (q->e == NULL)
		return -ENOMEM;
	q->cap = cap;
	return 0;
}

void queue_fini(struct queue *q)
{
	free(q->bytes);
	free(q->e);
	memset(q, 0, sizeof(*q));
}

struct qentry *queue_at(struct queue *q, size_t i)
{
	return &q->e[(q->head + i) % q->cap];
}

static size_t head_offset(const struct queue *q)
{
	return (size_t)(q->e[q->head].data - q->bytes);
}

/* Where max bytes fit in the ring as it is; SIZE_MAX when nowhere. */
static size_t ring_room(const struct queue *q, size_t max)
{
	size_t h;

	if (q->count == 0)
		return max <= q->bytes_cap ? 0 : SIZE_MAX;
	h = head_offset(q);
	if (q->wrapped)
		return q->tail + max <= h ? q->tail : SIZE_MAX;
	if (q->tail + max <= q->bytes_cap)
		return q->tail;
	return max <= h ? 0 : SIZE_MAX;
}

/*
 * Moves the entries, in order, to the start of a larger ring. Growth
 * doubles, so each byte is copied a bounded number of times on average.
 */
static int ring_grow(struct queue *q, size_t max)
{
	size_t used = 0, size = q->bytes_cap ? q->bytes_cap * 2 : BYTES_MIN;
	uint8_t *bytes;

	for (size_t i = 0; i < q->count; i++)
		used += queue_at(q, i)->len;
	while (size < used + max)
		size *= 2;
	bytes = malloc(size);
	if (bytes == NULL)
		return -ENOMEM;
	q->tail = 0;
	for (size_t i = 0; i < q->count; i++) {
		struct qentry *e = queue_at(q, i);

		memcpy(bytes + q->tail, e->data, e->len);
		e->data = bytes + q->tail;
		q->tail += e->len;
	}
	free(q->bytes);
	q->bytes = bytes;
	q->bytes_cap = size;
	q->wrapped = false;
	return 0;
}

int queue_reserve(struct queue *q, size_t max, uint8_t **out)
{
	size_t at;
	int rc;

	if (q->count == q->cap)
		return -ENOBUFS;
	at = ring_room(q, max);
	if (at == SIZE_MAX) {
		if ((rc = ring_grow(q, max)) < 0)
			return rc;
		at = q->tail;
	}
	q->reserved = at;
	*out = q->bytes + at;
	return 0;
}

void queue_push(struct queue *q, uint64_t seq, uint64_t session_hash,
		uint32_t len)
{
	struct qentry *e = &q->e[(q->head + q->count) % q->cap];

	/* Placed before the head's bytes: the tail went round. */
	q->wrapped = q->count > 0 && q->reserved < head_offset(q);
	e->seq = seq;
	e->session_hash = session_hash;
	e->data = q->bytes + q->reserved;
	e->len = len;
	q->tail = q->reserved + len;
	q->count++;
}

/* An empty ring starts again at its beginning, or is given back. */
static void ring_drained(struct queue *q)
{
	q->tail = 0;
	q->wrapped = false;
	if (q->bytes_cap > BYTES_KEEP) {
		free(q->bytes);
		q->bytes = NULL;
		q->bytes_cap = 0;
	}
}

void queue_trim(struct queue *q, uint64_t seq)
{
	while (q->count > 0 && q->e[q->head].seq <= seq) {
		q->e[q->head].data = NULL;
		q->head = (q->head + 1) % q->cap;
		q->count--;
		if (q->sent > 0)
			q->sent--;
	}
	if (q->count == 0)
		ring_drained(q);
	else if (q->wrapped && head_offset(q) < q->tail)
		/* The head reached the wrapped part: one run again. */
		q->wrapped = false;
}

void queue_rewind(struct queue *q, uint64_t seq)
{
	/* Sequences in the queue are consecutive from the head's. */
	if (q->count == 0 || seq <= q->e[q->head].seq)
		q->sent = 0;
	else if (seq - q->e[q->head].seq < q->sent)
		q->sent = (size_t)(seq - q->e[q->head].seq);
}

uint64_t hash_session(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325u;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 0x100000001b3u;
	return h;
}
