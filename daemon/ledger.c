#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "ledger.h"
#include "log.h"
#include "tally.h"

#define MAX_READERS 4096
/* The map doubles up to this step, then grows by it. */
#define GROW_STEP ((size_t)1 << 30)

static uint64_t get_be64(const void *p)
{
	const uint8_t *b = p;
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | b[i];
	return v;
}

static void put_be64(void *p, uint64_t v)
{
	uint8_t *b = p;

	for (int i = 7; i >= 0; i--, v >>= 8)
		b[i] = (uint8_t)v;
}

/* Outbox keys go on from the last one kept, never back. */
static int find_outbox_next(struct ledger *l, MDB_txn *txn)
{
	MDB_cursor *cur;
	MDB_val key, val;
	int rc;

	l->outbox_next = 1;
	rc = mdb_cursor_open(txn, l->outbox, &cur);
	if (rc != 0)
		return rc;
	rc = mdb_cursor_get(cur, &key, &val, MDB_LAST);
	if (rc == 0 && key.mv_size == 8)
		l->outbox_next = get_be64(key.mv_data) + 1;
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static int open_dbs(struct ledger *l)
{
	MDB_txn *txn;
	MDB_val key = {6, "schema"}, val;
	uint32_t schema = LEDGER_SCHEMA;
	int rc;

	rc = mdb_txn_begin(l->env, NULL, 0, &txn);
	if (rc != 0)
		return ledger_errno(rc);
	if ((rc = mdb_dbi_open(txn, LEDGER_DB_USAGE, MDB_CREATE, &l->usage)) ||
	    (rc = mdb_dbi_open(txn, LEDGER_DB_SESSIONS, MDB_CREATE,
			       &l->sessions)) ||
	    (rc = mdb_dbi_open(txn, LEDGER_DB_PRODUCERS, MDB_CREATE,
			       &l->producers)) ||
	    (rc = mdb_dbi_open(txn, LEDGER_DB_META, MDB_CREATE, &l->meta)) ||
	    (rc = mdb_dbi_open(txn, LEDGER_DB_OUTBOX, MDB_CREATE, &l->outbox)))
		goto fail;
	rc = mdb_get(txn, l->meta, &key, &val);
	if (rc == MDB_NOTFOUND) {
		val.mv_size = sizeof(schema);
		val.mv_data = &schema;
		rc = mdb_put(txn, l->meta, &key, &val, 0);
	} else if (rc == 0 && (val.mv_size != sizeof(schema) ||
			       memcmp(val.mv_data, &schema, 4) != 0)) {
		mdb_txn_abort(txn);
		return TALLY_EVERSION;
	}
	if (rc != 0 || (rc = find_outbox_next(l, txn)) != 0)
		goto fail;
	return ledger_errno(mdb_txn_commit(txn));
fail:
	mdb_txn_abort(txn);
	return ledger_errno(rc);
}

int ledger_open(struct ledger *l, const char *path, size_t map_size,
		bool nosync)
{
	unsigned flags = MDB_NOSUBDIR | MDB_NOTLS | (nosync ? MDB_NOSYNC : 0);
	MDB_envinfo info;
	MDB_stat st;
	int rc;

	memset(l, 0, sizeof(*l));
	pthread_rwlock_init(&l->resize, NULL);
	rc = mdb_env_create(&l->env);
	if (rc != 0)
		goto fail;
	if ((rc = mdb_env_set_maxdbs(l->env, 8)) ||
	    (rc = mdb_env_set_maxreaders(l->env, MAX_READERS)) ||
	    (rc = mdb_env_set_mapsize(l->env, map_size)))
		goto fail_env;
	rc = mdb_env_open(l->env, path, flags, 0660);
	if (rc != 0)
		goto fail_env;
	if ((rc = ledger_check_size(l->env)) < 0) {
		log_err("ledger",
			"%s is shorter than its last page: truncated "
			"or damaged; restore it from a copy",
			path);
		mdb_env_close(l->env);
		l->env = NULL;
		pthread_rwlock_destroy(&l->resize);
		return rc;
	}
	/* A ledger bigger than map_size keeps its own size. */
	mdb_env_info(l->env, &info);
	mdb_env_stat(l->env, &st);
	l->map_size = info.me_mapsize;
	l->page_size = st.ms_psize;
	rc = open_dbs(l);
	if (rc < 0) {
		mdb_env_close(l->env);
		l->env = NULL;
		pthread_rwlock_destroy(&l->resize);
		return rc;
	}
	return 0;
fail_env:
	mdb_env_close(l->env);
	l->env = NULL;
fail:
	pthread_rwlock_destroy(&l->resize);
	return ledger_errno(rc);
}

void ledger_close(struct ledger *l)
{
	if (l == NULL || l->env == NULL)
		return;
	free(l->outbuf);
	l->outbuf = NULL;
	mdb_env_close(l->env);
	l->env = NULL;
	pthread_rwlock_destroy(&l->resize);
}

/* A read transaction under the resize lock; the caller releases both. */
static int read_begin(struct ledger *l, MDB_txn **txn)
{
	int rc;

	pthread_rwlock_rdlock(&l->resize);
	rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, txn);
	if (rc != 0)
		pthread_rwlock_unlock(&l->resize);
	return ledger_errno(rc);
}

static void read_end(struct ledger *l, MDB_txn *txn)
{
	mdb_txn_abort(txn);
	pthread_rwlock_unlock(&l->resize);
}

int ledger_producer_get(struct ledger *l, const uint8_t *id,
			struct ledger_producer *p)
{
	MDB_val key = {LEDGER_PRODUCER_ID_LEN, (void *)id}, val;
	MDB_txn *txn;
	int rc;

	memset(p, 0, sizeof(*p));
	rc = read_begin(l, &txn);
	if (rc < 0)
		return rc;
	rc = mdb_get(txn, l->producers, &key, &val);
	if (rc == 0)
		rc = ledger_producer_decode(&val, p);
	else
		rc = rc == MDB_NOTFOUND ? 0 : ledger_errno(rc);
	read_end(l, txn);
	return rc;
}

static void merge_names(struct ledger_entry *dst,
			const struct ledger_entry *src)
{
	for (int i = 0; i < LEDGER_NNAMES; i++) {
		if (src->name_len[i] == 0)
			continue;
		dst->name[i] = src->name[i];
		dst->name_len[i] = src->name_len[i];
	}
}

static int put_entry(struct ledger *l, MDB_txn *txn, struct agg_entry *ae,
		     struct ledger_commit_stats *st)
{
	MDB_val key = {ae->item.key_len, (void *)ae->item.key}, val;
	char buf[128 + LEDGER_NNAMES * TALLY_NAME_MAX];
	struct ledger_entry e;
	int rc;

	rc = mdb_get(txn, l->usage, &key, &val);
	if (rc == MDB_NOTFOUND) {
		e = ae->e;
	} else if (rc != 0) {
		return rc;
	} else if (ledger_entry_decode(&val, &e) < 0) {
		log_err("ledger",
			"usage record of session %.*s does not decode; "
			"run 'tallyctl check'",
			(int)ae->session_len, ae->item.key);
		return MDB_CORRUPTED;
	} else if (ledger_counters_add(&e.c, &ae->e.c) < 0) {
		log_err("ledger",
			"refused %" PRIu64 " calls of session %.*s: "
			"a total would overflow",
			ae->e.c.calls, (int)ae->session_len, ae->item.key);
		st->overflows += ae->e.c.calls;
		return 0;
	} else {
		merge_names(&e, &ae->e);
		e.last_ns = ae->e.last_ns;
	}
	val.mv_size = ledger_entry_size(&e);
	val.mv_data = buf;
	ledger_entry_encode(&e, buf);
	return mdb_put(txn, l->usage, &key, &val, 0);
}

static int put_session(struct ledger *l, MDB_txn *txn, struct agg_session *as)
{
	MDB_val key = {as->item.key_len, (void *)as->item.key}, val;
	struct ledger_session s;
	char buf[LEDGER_SESSION_SIZE];
	int rc;

	rc = mdb_get(txn, l->sessions, &key, &val);
	if (rc == MDB_NOTFOUND) {
		s = as->s;
	} else if (rc != 0) {
		return rc;
	} else if (ledger_session_decode(&val, &s) < 0) {
		return MDB_CORRUPTED;
	} else {
		/* Totals here are for listing; the entries are the truth. */
		if (__builtin_add_overflow(s.input, as->s.input, &s.input) ||
		    __builtin_add_overflow(s.output, as->s.output, &s.output) ||
		    __builtin_add_overflow(s.calls, as->s.calls, &s.calls))
			s.input = s.output = s.calls = UINT64_MAX;
		s.last_ns = as->s.last_ns;
	}
	val.mv_size = sizeof(buf);
	val.mv_data = buf;
	ledger_session_encode(&s, buf);
	return mdb_put(txn, l->sessions, &key, &val, 0);
}

static int put_producer(struct ledger *l, MDB_txn *txn, struct agg_producer *ap,
			uint64_t now_ns)
{
	MDB_val key = {LEDGER_PRODUCER_ID_LEN, (void *)ap->item.key}, val;
	struct ledger_producer p = {.seq = ap->seq, .last_ns = now_ns};
	char buf[LEDGER_PRODUCER_MAX_SIZE];

	memcpy(p.node, ap->node, sizeof(p.node));
	p.flags = ap->flags;
	p.nranges = ap->nranges;
	memcpy(p.ranges, ap->ranges, sizeof(p.ranges));
	ledger_producer_encode(&p, buf);
	val.mv_size = ledger_producer_size(&p);
	val.mv_data = buf;
	return mdb_put(txn, l->producers, &key, &val, 0);
}

/* Deletes a session's entries (keys "session\0...") and its record. */
static int delete_session(struct ledger *l, MDB_txn *txn, const char *sid,
			  size_t len, struct ledger_commit_stats *st)
{
	char prefix[LEDGER_KEY_MAX];
	MDB_val key = {len + 1, prefix}, val;
	MDB_cursor *cur;
	int rc;

	memcpy(prefix, sid, len);
	prefix[len] = '\0';
	rc = mdb_cursor_open(txn, l->usage, &cur);
	if (rc != 0)
		return rc;
	/* Each round seeks afresh: a cursor's position after a delete is
	 * a corner of LMDB better not leaned on. */
	for (;;) {
		key.mv_size = len + 1;
		key.mv_data = prefix;
		rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
		if (rc != 0 || key.mv_size <= len ||
		    memcmp(key.mv_data, prefix, len + 1) != 0)
			break;
		if ((rc = mdb_cursor_del(cur, 0)) != 0)
			break;
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return rc;
	key.mv_size = len;
	key.mv_data = prefix;
	rc = mdb_del(txn, l->sessions, &key, NULL);
	if (rc == 0)
		st->purged_sessions++;
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/* An expiry deletes a session only if it is still idle. */
static int expire_session(struct ledger *l, MDB_txn *txn,
			  const struct agg_purge *ap,
			  struct ledger_commit_stats *st)
{
	MDB_val key = {ap->item.key_len, (void *)ap->item.key}, val;
	struct ledger_session s;
	int rc;

	rc = mdb_get(txn, l->sessions, &key, &val);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc != 0)
		return rc;
	if (ledger_session_decode(&val, &s) < 0 ||
	    s.last_ns >= ap->idle_before_ns)
		return 0;
	return delete_session(l, txn, ap->item.key, ap->item.key_len, st);
}

static int apply_purges(struct ledger *l, MDB_txn *txn, struct agg *a,
			bool expiries, struct ledger_commit_stats *st)
{
	struct agg_purge *ap;
	int rc = 0;

	agg_foreach(a, purges, struct agg_purge, ap)
	{
		if ((ap->idle_before_ns != 0) != expiries)
			continue;
		rc = expiries ? expire_session(l, txn, ap, st)
			      : delete_session(l, txn, ap->item.key,
					       ap->item.key_len, st);
		if (rc != 0)
			break;
	}
	return rc;
}

/* Purge request ids, so that a repeated request is not applied twice. */
static int put_requests(struct ledger *l, MDB_txn *txn, struct agg *a,
			uint64_t now_ns)
{
	struct agg_item *it;
	char name[8 + LEDGER_PRODUCER_ID_LEN] = "purge:";
	MDB_val key = {sizeof(name) - 2, name}, val = {8, &now_ns};
	int rc = 0;

	agg_foreach(a, requests, struct agg_item, it)
	{
		memcpy(name + 6, it->key, LEDGER_PRODUCER_ID_LEN);
		if ((rc = mdb_put(txn, l->meta, &key, &val, 0)) != 0)
			break;
	}
	return rc;
}

static int expire_producers(struct ledger *l, MDB_txn *txn, struct agg *a,
			    struct ledger_commit_stats *st)
{
	struct agg_item *it;
	int rc = 0;

	agg_foreach(a, expired, struct agg_item, it)
	{
		MDB_val key = {LEDGER_PRODUCER_ID_LEN, (void *)it->key};

		/* It sent again since it was found idle: it stays. */
		if (agg_has(&a->producers, it->key, LEDGER_PRODUCER_ID_LEN))
			continue;
		rc = mdb_del(txn, l->producers, &key, NULL);
		if (rc == 0)
			st->expired_producers++;
		else if (rc != MDB_NOTFOUND)
			break;
		rc = 0;
	}
	return rc;
}

/*
 * The most usages, and about the most bytes, of one outbox record: well
 * under 64 KiB with its largest usage, so that a NATS server with a small
 * max_payload still takes every record (one it refuses would hold up the
 * outbox behind it for good).
 */
#define OUTBOX_MAX_USAGES 1024
#define OUTBOX_MAX_BYTES (48 * 1024)
/* Commit time, nonce, the producer field, first_seq and count fields. */
#define OUTBOX_HEAD_MAX (16 + 2 + LEDGER_PRODUCER_ID_LEN + 11)
#define OUTBOX_TAIL_MAX 11

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;

	for (; v >= 0x80; v >>= 7)
		p[n++] = (uint8_t)(v | 0x80);
	p[n++] = (uint8_t)v;
	return n;
}

/* Reads a varint of a part this daemon wrote itself. */
static size_t get_varint(const uint8_t *p, uint64_t *v)
{
	size_t n = 0;

	*v = 0;
	do
		*v |= (uint64_t)(p[n] & 0x7f) << (7 * n);
	while (p[n++] & 0x80);
	return n;
}

/*
 * One outbox record: the commit time, then a Batch of the producer's
 * usages from first on. The Batch is what a client would send, so the
 * other hosts apply it through the same checks.
 */
static int put_outbox_record(struct ledger *l, MDB_txn *txn,
			     const struct agg_producer *ap, uint64_t first,
			     const char *usages, size_t len, uint32_t count,
			     uint64_t now_ns, uint64_t *next)
{
	size_t need = OUTBOX_HEAD_MAX + len + OUTBOX_TAIL_MAX, n = 16;
	uint8_t k[8], *p;
	MDB_val key = {8, k}, val;
	int rc;

	if (need > l->outbuf_cap) {
		p = realloc(l->outbuf, need);
		if (p == NULL)
			return ENOMEM;
		l->outbuf = p;
		l->outbuf_cap = need;
	}
	p = l->outbuf;
	memcpy(p, &now_ns, 8);
	/* The record's message id ends with these random bytes: ids of
	 * records not yet published cannot be guessed, so no one can make
	 * JetStream drop one as a repeat by publishing its id first. */
	if (getrandom(p + 8, 8, 0) != 8)
		return EIO;
	p[n++] = (1 << 3) | 2;
	p[n++] = LEDGER_PRODUCER_ID_LEN;
	memcpy(p + n, ap->item.key, LEDGER_PRODUCER_ID_LEN);
	n += LEDGER_PRODUCER_ID_LEN;
	p[n++] = 2 << 3;
	n += put_varint(p + n, first);
	memcpy(p + n, usages, len);
	n += len;
	p[n++] = 4 << 3;
	n += put_varint(p + n, count);
	put_be64(k, *next);
	val.mv_size = n;
	val.mv_data = p;
	rc = mdb_put(txn, l->outbox, &key, &val, MDB_APPEND);
	(*next)++;
	return rc;
}

/* A producer's outbox part, cut into records of bounded size. */
static int put_outbox_part(struct ledger *l, MDB_txn *txn,
			   const struct agg_producer *ap, uint64_t now_ns,
			   uint64_t *next)
{
	const uint8_t *p = (const uint8_t *)ap->out;
	size_t start = 0, at = 0;
	uint64_t first = ap->out_first, len;
	uint32_t count = 0;
	int rc;

	while (at < ap->out_len) {
		at += 1;
		at += get_varint(p + at, &len);
		at += len;
		count++;
		if (count < OUTBOX_MAX_USAGES &&
		    at - start < OUTBOX_MAX_BYTES && at < ap->out_len)
			continue;
		rc = put_outbox_record(l, txn, ap, first, ap->out + start,
				       at - start, count, now_ns, next);
		if (rc != 0)
			return rc;
		first += count;
		start = at;
		count = 0;
	}
	return 0;
}

/* Records JetStream has stored are deleted, oldest first, boundedly. */
static int delete_acked(struct ledger *l, MDB_txn *txn, uint64_t acked)
{
	MDB_cursor *cur;
	MDB_val key, val;
	int rc;

	if (acked == 0)
		return 0;
	rc = mdb_cursor_open(txn, l->outbox, &cur);
	if (rc != 0)
		return rc;
	for (int i = 0; i < 65536; i++) {
		rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST);
		if (rc != 0 || key.mv_size != 8 ||
		    get_be64(key.mv_data) > acked)
			break;
		if ((rc = mdb_cursor_del(cur, 0)) != 0)
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

static int write_outbox(struct ledger *l, MDB_txn *txn, struct agg *a,
			uint64_t now_ns, struct ledger_commit_stats *st)
{
	struct agg_producer *ap;
	uint64_t next = l->outbox_next;
	MDB_stat ms;
	int rc;

	agg_foreach(a, producers, struct agg_producer, ap)
	{
		if (ap->out_count != 0 &&
		    (rc = put_outbox_part(l, txn, ap, now_ns, &next)) != 0)
			return rc;
	}
	if ((rc = delete_acked(l, txn, a->outbox_acked)) != 0 ||
	    (rc = mdb_stat(txn, l->outbox, &ms)) != 0)
		return rc;
	st->outbox_added = next - l->outbox_next;
	st->outbox_entries = ms.ms_entries;
	return 0;
}

static int write_agg(struct ledger *l, struct agg *a, uint64_t now_ns,
		     struct ledger_commit_stats *st)
{
	struct agg_entry *ae;
	struct agg_session *as;
	struct agg_producer *ap;
	MDB_txn *txn;
	int rc;

	rc = mdb_txn_begin(l->env, NULL, 0, &txn);
	if (rc != 0)
		return rc;
	if ((rc = apply_purges(l, txn, a, false, st)))
		goto fail;
	agg_foreach(a, entries, struct agg_entry, ae)
	{
		if (ae->e.c.calls != 0 && (rc = put_entry(l, txn, ae, st)))
			goto fail;
	}
	agg_foreach(a, sessions, struct agg_session, as)
	{
		if (as->s.calls != 0 && (rc = put_session(l, txn, as)))
			goto fail;
	}
	agg_foreach(a, producers, struct agg_producer, ap)
	{
		if ((rc = put_producer(l, txn, ap, now_ns)))
			goto fail;
	}
	if ((rc = apply_purges(l, txn, a, true, st)) ||
	    (rc = put_requests(l, txn, a, now_ns)) ||
	    (rc = expire_producers(l, txn, a, st)) ||
	    (rc = write_outbox(l, txn, a, now_ns, st)))
		goto fail;
	rc = mdb_txn_commit(txn);
	if (rc == 0)
		l->outbox_next += st->outbox_added;
	return rc;
fail:
	mdb_txn_abort(txn);
	return rc;
}

static int grow(struct ledger *l, struct ledger_commit_stats *st)
{
	size_t size = l->map_size < GROW_STEP ? l->map_size * 2
					      : l->map_size + GROW_STEP;
	int dead = 0, rc;

	/* Dead readers pin old pages; free them before taking more room. */
	mdb_reader_check(l->env, &dead);
	st->dead_readers += (uint64_t)dead;
	pthread_rwlock_wrlock(&l->resize);
	rc = mdb_env_set_mapsize(l->env, size);
	pthread_rwlock_unlock(&l->resize);
	if (rc != 0) {
		log_err("ledger", "cannot grow the map to %zu bytes: %s", size,
			mdb_strerror(rc));
		return ledger_errno(rc);
	}
	log_notice("ledger", "map grown from %zu to %zu bytes", l->map_size,
		   size);
	l->map_size = size;
	st->map_grows++;
	return 0;
}

int ledger_commit(struct ledger *l, struct agg *a, uint64_t now_ns,
		  struct ledger_commit_stats *st)
{
	int rc;

	/* Bounded: each round doubles the map, and memory ends first. */
	for (int round = 0; round < 32; round++) {
		rc = write_agg(l, a, now_ns, st);
		if (rc != MDB_MAP_FULL)
			return ledger_errno(rc);
		rc = grow(l, st);
		if (rc < 0)
			return rc;
	}
	return -ENOSPC;
}

int ledger_has(struct ledger *l, MDB_dbi dbi, const void *key, size_t len)
{
	MDB_val k = {len, (void *)key}, v;
	MDB_txn *txn;
	int rc;

	rc = read_begin(l, &txn);
	if (rc < 0)
		return rc;
	rc = mdb_get(txn, dbi, &k, &v);
	read_end(l, txn);
	return rc == 0 ? 1 : rc == MDB_NOTFOUND ? 0 : ledger_errno(rc);
}

int ledger_scan(struct ledger *l, MDB_dbi dbi, char *cursor, size_t *cursor_len,
		size_t max, ledger_scan_fn fn, void *ctx)
{
	MDB_val key = {*cursor_len, cursor}, val;
	MDB_cursor *cur;
	MDB_txn *txn;
	size_t n = 0;
	int rc;

	if ((rc = read_begin(l, &txn)) < 0)
		return rc;
	if ((rc = mdb_cursor_open(txn, dbi, &cur)) != 0) {
		read_end(l, txn);
		return ledger_errno(rc);
	}
	rc = *cursor_len == 0 ? mdb_cursor_get(cur, &key, &val, MDB_FIRST)
			      : mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
	/* SET_RANGE lands on the last key seen if it is still there. */
	if (rc == 0 && *cursor_len != 0 && key.mv_size == *cursor_len &&
	    memcmp(key.mv_data, cursor, *cursor_len) == 0)
		rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
	*cursor_len = 0;
	for (; rc == 0 && n < max; n++) {
		memcpy(cursor, key.mv_data, key.mv_size);
		*cursor_len = key.mv_size;
		if (fn(&key, &val, ctx) != 0)
			break;
		rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
	}
	if (rc == MDB_NOTFOUND)
		*cursor_len = 0;
	mdb_cursor_close(cur);
	read_end(l, txn);
	return rc == 0 || rc == MDB_NOTFOUND ? 0 : ledger_errno(rc);
}

int ledger_reader_check(struct ledger *l)
{
	int dead = 0;
	int rc = mdb_reader_check(l->env, &dead);

	return rc != 0 ? ledger_errno(rc) : dead;
}

struct reader_scan {
	uint64_t count;
	uint64_t oldest;
};

/* mdb_reader_list() hands each reader slot over as a line of text. */
static int scan_reader(const char *msg, void *ctx)
{
	struct reader_scan *rs = ctx;
	unsigned long pid, txn;
	char thread[64];

	if (sscanf(msg, " %lu %63s %lu", &pid, thread, &txn) != 3)
		return 0;
	rs->count++;
	if (rs->oldest == 0 || txn < rs->oldest)
		rs->oldest = txn;
	return 0;
}

int ledger_info(struct ledger *l, struct ledger_info *info)
{
	struct reader_scan rs = {0, 0};
	MDB_envinfo ei;
	int rc;

	rc = mdb_env_info(l->env, &ei);
	if (rc != 0)
		return ledger_errno(rc);
	mdb_reader_list(l->env, scan_reader, &rs);
	info->map_size = ei.me_mapsize;
	info->used_bytes = (uint64_t)(ei.me_last_pgno + 1) * l->page_size;
	info->readers = rs.count;
	info->max_readers = ei.me_maxreaders;
	info->last_txnid = ei.me_last_txnid;
	info->oldest_reader_txnid = rs.oldest;
	info->oldest_reader_lag = rs.count && ei.me_last_txnid > rs.oldest
					  ? ei.me_last_txnid - rs.oldest
					  : 0;
	return 0;
}

int ledger_outbox_read(struct ledger *l, uint64_t after, size_t max,
		       ledger_outbox_fn fn, void *ctx)
{
	uint8_t k[8];
	MDB_val key = {8, k}, val;
	MDB_cursor *cur;
	MDB_txn *txn;
	size_t n = 0;
	int rc;

	put_be64(k, after + 1);
	if ((rc = read_begin(l, &txn)) < 0)
		return rc;
	if ((rc = mdb_cursor_open(txn, l->outbox, &cur)) != 0) {
		read_end(l, txn);
		return ledger_errno(rc);
	}
	rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
	for (; rc == 0 && n < max; n++) {
		if (key.mv_size != 8 || val.mv_size < 16) {
			rc = MDB_CORRUPTED;
			break;
		}
		if (fn(get_be64(key.mv_data), val.mv_data, val.mv_size, ctx))
			break;
		rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	read_end(l, txn);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return ledger_errno(rc);
	return (int)n;
}

int64_t ledger_outbox_count(struct ledger *l)
{
	MDB_txn *txn;
	MDB_stat ms;
	int rc;

	if ((rc = read_begin(l, &txn)) < 0)
		return rc;
	rc = mdb_stat(txn, l->outbox, &ms);
	read_end(l, txn);
	return rc != 0 ? ledger_errno(rc) : (int64_t)ms.ms_entries;
}

int ledger_node_id(struct ledger *l, uint8_t id[LEDGER_PRODUCER_ID_LEN])
{
	MDB_val key = {4, "node"}, val;
	MDB_txn *txn;
	int rc;

	rc = mdb_txn_begin(l->env, NULL, 0, &txn);
	if (rc != 0)
		return ledger_errno(rc);
	rc = mdb_get(txn, l->meta, &key, &val);
	if (rc == 0 && val.mv_size == LEDGER_PRODUCER_ID_LEN) {
		memcpy(id, val.mv_data, LEDGER_PRODUCER_ID_LEN);
		mdb_txn_abort(txn);
		return 0;
	}
	if (rc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return rc == 0 ? TALLY_ECORRUPT : ledger_errno(rc);
	}
	if (getrandom(id, LEDGER_PRODUCER_ID_LEN, 0) !=
	    LEDGER_PRODUCER_ID_LEN) {
		mdb_txn_abort(txn);
		return -EIO;
	}
	val.mv_size = LEDGER_PRODUCER_ID_LEN;
	val.mv_data = id;
	rc = mdb_put(txn, l->meta, &key, &val, 0);
	if (rc != 0) {
		mdb_txn_abort(txn);
		return ledger_errno(rc);
	}
	return ledger_errno(mdb_txn_commit(txn));
}
