#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

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
	while (q->count > 0) {
		free(q->e[q->head].data);
		q->head = (q->head + 1) % q->cap;
		q->count--;
	}
	free(q->e);
	memset(q, 0, sizeof(*q));
}

struct qentry *queue_at(struct queue *q, size_t i)
{
	return &q->e[(q->head + i) % q->cap];
}

int queue_push(struct queue *q, uint64_t seq, uint64_t session_hash,
	       uint8_t *data, uint32_t len)
{
	struct qentry *e;

	if (q->count == q->cap)
		return -ENOBUFS;
	e = &q->e[(q->head + q->count) % q->cap];
	e->seq = seq;
	e->session_hash = session_hash;
	e->data = data;
	e->len = len;
	q->count++;
	return 0;
}

void queue_trim(struct queue *q, uint64_t seq)
{
	while (q->count > 0 && q->e[q->head].seq <= seq) {
		free(q->e[q->head].data);
		q->e[q->head].data = NULL;
		q->head = (q->head + 1) % q->cap;
		q->count--;
		if (q->sent > 0)
			q->sent--;
	}
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
