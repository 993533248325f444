#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "ledger.h"
#include "log.h"
#include "tally.h"

#define MAX_READERS 4096
/* The map doubles up to this step, then grows by it. */
#define GROW_STEP ((size_t)1 << 30)

int ledger_errno(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_MAP_FULL:
		return -ENOSPC;
	case MDB_READERS_FULL:
		return -EAGAIN;
	case MDB_VERSION_MISMATCH:
	case MDB_INVALID:
		return TALLY_EVERSION;
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
	case MDB_BAD_VALSIZE:
		return TALLY_ECORRUPT;
	default:
		return rc > 0 ? -rc : -EIO;
	}
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
	    (rc = mdb_dbi_open(txn, LEDGER_DB_META, MDB_CREATE, &l->meta)))
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
	if (rc != 0)
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

int ledger_producer_seq(struct ledger *l, const uint8_t *id, uint64_t *seq)
{
	MDB_val key = {LEDGER_PRODUCER_ID_LEN, (void *)id}, val;
	struct ledger_producer p = {0, 0};
	MDB_txn *txn;
	int rc;

	rc = read_begin(l, &txn);
	if (rc < 0)
		return rc;
	rc = mdb_get(txn, l->producers, &key, &val);
	if (rc == 0)
		rc = ledger_producer_decode(&val, &p);
	else
		rc = rc == MDB_NOTFOUND ? 0 : ledger_errno(rc);
	read_end(l, txn);
	*seq = p.seq;
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
	struct ledger_producer p = {ap->seq, now_ns};
	char buf[LEDGER_PRODUCER_SIZE];

	ledger_producer_encode(&p, buf);
	val.mv_size = sizeof(buf);
	val.mv_data = buf;
	return mdb_put(txn, l->producers, &key, &val, 0);
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
	return mdb_txn_commit(txn);
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
