#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "agg.h"

#define CHUNK_SIZE (256 * 1024)

struct agg_chunk {
	struct agg_chunk *next;
	size_t used;
	size_t size;
	_Alignas(16) char data[];
};

static uint64_t hash_bytes(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 0x100000001b3u;
	return h;
}

/*
 * Bump allocation from the first chunk; a full chunk is moved behind the
 * others. agg_reset() rewinds all of them, so a steady load stops calling
 * malloc after its first few commits.
 */
static void *arena_alloc(struct agg *a, size_t n)
{
	struct agg_chunk *c = a->chunks;
	size_t size;

	n = (n + 15) & ~(size_t)15;
	if (c != NULL && c->size - c->used >= n) {
		c->used += n;
		return c->data + c->used - n;
	}
	for (struct agg_chunk **p = &a->chunks; *p != NULL; p = &(*p)->next) {
		if ((*p)->size - (*p)->used >= n) {
			c = *p;
			*p = c->next;
			c->next = a->chunks;
			a->chunks = c;
			c->used += n;
			return c->data + c->used - n;
		}
	}
	size = n > CHUNK_SIZE ? n : CHUNK_SIZE;
	c = malloc(sizeof(*c) + size);
	if (c == NULL)
		return NULL;
	c->size = size;
	c->used = n;
	c->next = a->chunks;
	a->chunks = c;
	return c->data;
}

static struct agg_item *table_find(struct agg_table *t, uint64_t hash,
				   const char *key, size_t len)
{
	size_t mask = t->cap - 1;

	if (t->cap == 0)
		return NULL;
	for (size_t i = hash & mask;; i = (i + 1) & mask) {
		struct agg_item *it = t->slots[i];

		if (it == NULL)
			return NULL;
		if (it->hash == hash && it->key_len == len &&
		    memcmp(it->key, key, len) == 0)
			return it;
	}
}

static void table_place(struct agg_table *t, struct agg_item *it)
{
	size_t mask = t->cap - 1;
	size_t i = it->hash & mask;

	while (t->slots[i] != NULL)
		i = (i + 1) & mask;
	t->slots[i] = it;
}

/* Keeps the table at most half full, and room in the list for one more. */
static int table_reserve(struct agg_table *t)
{
	size_t cap;
	struct agg_item **slots, **list;

	if (t->count + 1 > t->list_cap) {
		cap = t->list_cap ? t->list_cap * 2 : 64;
		list = realloc(t->list, cap * sizeof(*list));
		if (list == NULL)
			return -ENOMEM;
		t->list = list;
		t->list_cap = cap;
	}
	if ((t->count + 1) * 2 <= t->cap)
		return 0;
	cap = t->cap ? t->cap * 2 : 128;
	slots = calloc(cap, sizeof(*slots));
	if (slots == NULL)
		return -ENOMEM;
	free(t->slots);
	t->slots = slots;
	t->cap = cap;
	for (size_t i = 0; i < t->count; i++)
		table_place(t, t->list[i]);
	return 0;
}

static void table_insert(struct agg_table *t, struct agg_item *it)
{
	table_place(t, it);
	t->list[t->count++] = it;
}

static void table_clear(struct agg_table *t)
{
	if (t->count == 0)
		return;
	/* Few items in a big table: clearing their slots beats a memset. */
	if (t->count * 8 < t->cap) {
		for (size_t i = 0; i < t->count; i++) {
			size_t mask = t->cap - 1;
			size_t j = t->list[i]->hash & mask;

			while (t->slots[j] != t->list[i])
				j = (j + 1) & mask;
			t->slots[j] = NULL;
		}
	} else {
		memset(t->slots, 0, t->cap * sizeof(*t->slots));
	}
	t->count = 0;
}

static void table_fini(struct agg_table *t)
{
	free(t->slots);
	free(t->list);
	memset(t, 0, sizeof(*t));
}

void agg_init(struct agg *a)
{
	memset(a, 0, sizeof(*a));
}

/* Outbox parts are the only memory of an item not in the arena. */
static void free_outbox(struct agg *a)
{
	struct agg_producer *ap;

	agg_foreach(a, producers, struct agg_producer, ap)
	{
		free(ap->out);
	}
	a->outbox_usages = 0;
}

void agg_fini(struct agg *a)
{
	struct agg_chunk *c, *next;

	if (a == NULL)
		return;
	free_outbox(a);
	table_fini(&a->entries);
	table_fini(&a->sessions);
	table_fini(&a->producers);
	table_fini(&a->purges);
	table_fini(&a->requests);
	table_fini(&a->expired);
	for (c = a->chunks; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	a->chunks = NULL;
}

void agg_reset(struct agg *a)
{
	free_outbox(a);
	table_clear(&a->entries);
	table_clear(&a->sessions);
	table_clear(&a->producers);
	table_clear(&a->purges);
	table_clear(&a->requests);
	table_clear(&a->expired);
	for (struct agg_chunk *c = a->chunks; c != NULL; c = c->next)
		c->used = 0;
	a->usages = 0;
	a->purge_seq = 0;
	a->outbox_acked = 0;
}

static struct agg_item *find_or_add(struct agg *a, struct agg_table *t,
				    const char *key, size_t len, size_t size)
{
	uint64_t hash = hash_bytes(key, len);
	struct agg_item *it = table_find(t, hash, key, len);
	char *copy;

	if (it != NULL)
		return it;
	if (table_reserve(t) < 0)
		return NULL;
	it = arena_alloc(a, size);
	copy = arena_alloc(a, len);
	if (it == NULL || copy == NULL)
		return NULL;
	memset(it, 0, size);
	memcpy(copy, key, len);
	it->hash = hash;
	it->key = copy;
	it->key_len = (uint32_t)len;
	table_insert(t, it);
	return it;
}

/* Keeps the newest name given; an empty one never blanks a stored one. */
static int take_names(struct agg *a, struct agg_entry *ae,
		      const struct usage_view *v)
{
	for (int i = 0; i < LEDGER_NNAMES; i++) {
		const char *s = v->str[USAGE_DISPLAY + i];
		size_t n = v->len[USAGE_DISPLAY + i];
		char *copy;

		if (n == 0 || (ae->e.name_len[i] == n &&
			       memcmp(ae->e.name[i], s, n) == 0))
			continue;
		copy = arena_alloc(a, n);
		if (copy == NULL)
			return -ENOMEM;
		memcpy(copy, s, n);
		ae->e.name[i] = copy;
		ae->e.name_len[i] = (uint16_t)n;
	}
	return 0;
}

static void touch(uint64_t *first, uint64_t *last, uint64_t t)
{
	if (*first == 0 || t < *first)
		*first = t;
	if (t > *last)
		*last = t;
}

int agg_add(struct agg *a, const struct usage_view *v, uint64_t now_ns)
{
	char key[LEDGER_KEY_MAX];
	size_t n = ledger_key(key, v->str[USAGE_SESSION], v->len[USAGE_SESSION],
			      v->str[USAGE_LLM], v->len[USAGE_LLM]);
	struct agg_entry *ae;
	struct agg_session *as;

	ae = (struct agg_entry *)find_or_add(a, &a->entries, key, n,
					     sizeof(*ae));
	as = (struct agg_session *)find_or_add(
		a, &a->sessions, key, v->len[USAGE_SESSION], sizeof(*as));
	if (ae == NULL || as == NULL || take_names(a, ae, v) < 0)
		return -ENOMEM;
	ae->session_len = (uint32_t)v->len[USAGE_SESSION];
	usage_count(&ae->e.c, v);
	touch(&ae->e.first_ns, &ae->e.last_ns, now_ns);
	as->s.input += v->input;
	as->s.output += v->output;
	as->s.calls++;
	touch(&as->s.first_ns, &as->s.last_ns, now_ns);
	a->usages++;
	return 0;
}

int agg_set_producer(struct agg *a, const uint8_t *id, uint64_t seq)
{
	struct agg_producer *ap;

	ap = (struct agg_producer *)find_or_add(
		a, &a->producers, (const char *)id, LEDGER_PRODUCER_ID_LEN,
		sizeof(*ap));
	if (ap == NULL)
		return -ENOMEM;
	ap->seq = seq;
	return 0;
}

struct agg_producer *agg_find_producer(struct agg *a, const uint8_t *id)
{
	return (struct agg_producer *)table_find(
		&a->producers,
		hash_bytes((const char *)id, LEDGER_PRODUCER_ID_LEN),
		(const char *)id, LEDGER_PRODUCER_ID_LEN);
}

/* A usage's field tag and length prefix take at most this much. */
#define OUT_PREFIX_MAX 11

int agg_outbox_reserve(struct agg_producer *ap, size_t len)
{
	size_t need = ap->out_len + len + OUT_PREFIX_MAX, cap;
	char *out;

	if (need <= ap->out_cap)
		return 0;
	cap = ap->out_cap ? ap->out_cap : 4096;
	while (cap < need)
		cap *= 2;
	out = realloc(ap->out, cap);
	if (out == NULL)
		return -ENOMEM;
	ap->out = out;
	ap->out_cap = cap;
	return 0;
}

void agg_outbox_put(struct agg *a, struct agg_producer *ap, uint64_t seq,
		    const void *usage, size_t len)
{
	uint8_t *p = (uint8_t *)ap->out + ap->out_len;
	size_t n = 0, v = len;

	if (ap->out_count == 0)
		ap->out_first = seq;
	/* Field 3 of a Batch, length-delimited: the bytes need no re-framing
	 * when the outbox record is built. */
	p[n++] = (3 << 3) | 2;
	for (; v >= 0x80; v >>= 7)
		p[n++] = (uint8_t)(v | 0x80);
	p[n++] = (uint8_t)v;
	memcpy(p + n, usage, len);
	ap->out_len += n + len;
	ap->out_count++;
	a->outbox_usages++;
}

/* Drops what a holds of one session: an operator's purge comes after it. */
static void drop_session(struct agg *a, const char *session, size_t len)
{
	struct agg_entry *ae;
	struct agg_session *as;

	agg_foreach(a, entries, struct agg_entry, ae)
	{
		if (ae->session_len == len &&
		    memcmp(ae->item.key, session, len) == 0)
			memset(&ae->e.c, 0, sizeof(ae->e.c));
	}
	as = (struct agg_session *)table_find(
		&a->sessions, hash_bytes(session, len), session, len);
	if (as != NULL)
		memset(&as->s, 0, sizeof(as->s));
}

int agg_purge(struct agg *a, const char *session, size_t len,
	      uint64_t idle_before_ns)
{
	bool queued = agg_has(&a->purges, session, len);
	struct agg_purge *ap;

	if (idle_before_ns == 0)
		drop_session(a, session, len);
	ap = (struct agg_purge *)find_or_add(a, &a->purges, session, len,
					     sizeof(*ap));
	if (ap == NULL)
		return -ENOMEM;
	/* An operator's purge wins over an expiry of the same session. */
	if (!queued || idle_before_ns == 0)
		ap->idle_before_ns = idle_before_ns;
	return 0;
}

int agg_remember(struct agg *a, struct agg_table *t, const uint8_t *id)
{
	return find_or_add(a, t, (const char *)id, LEDGER_PRODUCER_ID_LEN,
			   sizeof(struct agg_item)) != NULL
		       ? 0
		       : -ENOMEM;
}

bool agg_has(struct agg_table *t, const char *key, size_t len)
{
	return table_find(t, hash_bytes(key, len), key, len) != NULL;
}
