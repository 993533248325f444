/*
 * snapshot.c - a session's usage as JSON, read from the ledger's map.
 *
 * One read transaction gives the session's entries and this handle's
 * committed sequence together, so the handle's queued usages past that
 * sequence are exactly the ones the entries do not hold yet: adding them
 * gives read-your-writes with no round trip to the daemon.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "jsonw.h"
#include "tally.pb-c.h"
#include "usage_check.h"

struct row {
	const char *llm;
	size_t llm_len;
	struct ledger_entry e;
};

struct rows {
	struct row *r;
	size_t n;
	size_t cap;
	/* Queued usages unpacked for the overlay, freed after encoding. */
	Tally__Usage **unpacked;
	size_t nunpacked;
};

static struct row *rows_add(struct rows *rs)
{
	if (rs->n == rs->cap) {
		size_t cap = rs->cap ? rs->cap * 2 : 8;
		struct row *r = realloc(rs->r, cap * sizeof(*r));

		if (r == NULL)
			return NULL;
		rs->r = r;
		rs->cap = cap;
	}
	memset(&rs->r[rs->n], 0, sizeof(rs->r[0]));
	return &rs->r[rs->n++];
}

static void rows_fini(struct rows *rs)
{
	for (size_t i = 0; i < rs->nunpacked; i++)
		tally__usage__free_unpacked(rs->unpacked[i], NULL);
	free(rs->unpacked);
	free(rs->r);
}

static int read_rows(struct reader *r, MDB_txn *txn, const char *sid,
		     size_t sid_len, struct rows *rs)
{
	char prefix[TALLY_ID_MAX + 1];
	MDB_val key = {sid_len + 1, prefix}, val;
	MDB_cursor *cur;
	struct row *row;
	int rc;

	memcpy(prefix, sid, sid_len);
	prefix[sid_len] = '\0';
	rc = mdb_cursor_open(txn, r->usage, &cur);
	if (rc != 0)
		return ledger_errno(rc);
	rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
	while (rc == 0 && key.mv_size > sid_len &&
	       memcmp(key.mv_data, prefix, sid_len + 1) == 0) {
		row = rows_add(rs);
		if (row == NULL) {
			rc = -ENOMEM;
			break;
		}
		if ((rc = ledger_key_split(&key, &row->llm, &row->llm_len)) ||
		    (rc = ledger_entry_decode(&val, &row->e)))
			break;
		rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND || rc == 0)
		return 0;
	return rc > 0 ? ledger_errno(rc) : rc;
}

static struct row *find_row(struct rows *rs, const char *llm, size_t len)
{
	for (size_t i = 0; i < rs->n; i++)
		if (rs->r[i].llm_len == len &&
		    memcmp(rs->r[i].llm, llm, len) == 0)
			return &rs->r[i];
	return NULL;
}

static int keep_unpacked(struct rows *rs, Tally__Usage *u)
{
	Tally__Usage **p =
		realloc(rs->unpacked, (rs->nunpacked + 1) * sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	rs->unpacked = p;
	rs->unpacked[rs->nunpacked++] = u;
	return 0;
}

/* Adds one queued usage of the session, as the daemon would. */
static int overlay_one(struct rows *rs, const struct usage_view *v)
{
	struct row *row = find_row(rs, v->str[USAGE_LLM], v->len[USAGE_LLM]);

	if (row == NULL && (row = rows_add(rs)) == NULL)
		return -ENOMEM;
	if (row->llm == NULL) {
		row->llm = v->str[USAGE_LLM];
		row->llm_len = v->len[USAGE_LLM];
	}
	usage_count(&row->e.c, v);
	for (int i = 0; i < LEDGER_NNAMES; i++) {
		if (v->len[USAGE_DISPLAY + i] == 0)
			continue;
		row->e.name[i] = v->str[USAGE_DISPLAY + i];
		row->e.name_len[i] = (uint16_t)v->len[USAGE_DISPLAY + i];
	}
	return 0;
}

static int overlay(struct tally *t, uint64_t committed, const char *sid,
		   size_t sid_len, struct rows *rs)
{
	uint64_t h = hash_session(sid, sid_len);
	struct usage_view v;
	int rc;

	for (size_t i = 0; i < t->q.count; i++) {
		struct qentry *e = queue_at(&t->q, i);
		Tally__Usage *u;

		if (e->seq <= committed || e->session_hash != h)
			continue;
		u = tally__usage__unpack(NULL, e->len, e->data);
		if (u == NULL)
			return -ENOMEM;
		if ((rc = keep_unpacked(rs, u)) < 0) {
			tally__usage__free_unpacked(u, NULL);
			return rc;
		}
		usage_view_from_wire(&v, u);
		if (v.len[USAGE_SESSION] == sid_len &&
		    memcmp(v.str[USAGE_SESSION], sid, sid_len) == 0 &&
		    (rc = overlay_one(rs, &v)) < 0)
			return rc;
	}
	return 0;
}

/*
 * The breakdown: OpenTelemetry GenAI's names where it has one (cache
 * reads and writes, reasoning), tally's own otherwise.
 */
static void encode_details(struct jsonw *w, const struct ledger_counters *c)
{
	static const char *const names[] = {
		"\"gen_ai.usage.cache_read.input_tokens\":",
		"\"gen_ai.usage.cache_creation.input_tokens\":",
		"\"gen_ai.usage.reasoning.output_tokens\":",
		"\"calls\":",
		"\"estimatedInputTokens\":",
		"\"estimatedOutputTokens\":",
		"\"usageMissingCalls\":",
	};
	const uint64_t values[] = {c->cache_read, c->cache_write, c->reasoning,
				   c->calls,	  c->est_input,	  c->est_output,
				   c->missing};

	jsonw_raw(w, ",\"details\":{", 12);
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		if (i > 0)
			jsonw_raw(w, ",", 1);
		jsonw_raw(w, names[i], strlen(names[i]));
		jsonw_u64(w, values[i]);
	}
	jsonw_raw(w, "}", 1);
}

static void encode_row(struct jsonw *w, const struct row *r, unsigned flags)
{
	jsonw_str(w, r->llm, r->llm_len);
	jsonw_raw(w, ":{\"llmDisplayName\":", 19);
	jsonw_str(w, r->e.name[LEDGER_DISPLAY], r->e.name_len[LEDGER_DISPLAY]);
	jsonw_raw(w, ",\"providerType\":", 16);
	jsonw_str(w, r->e.name[LEDGER_PROVIDER],
		  r->e.name_len[LEDGER_PROVIDER]);
	jsonw_raw(w, ",\"modelType\":", 13);
	jsonw_str(w, r->e.name[LEDGER_MODEL], r->e.name_len[LEDGER_MODEL]);
	jsonw_raw(w, ",\"usage\":{\"inputTokens\":", 24);
	jsonw_u64(w, r->e.c.input);
	jsonw_raw(w, ",\"outputTokens\":", 16);
	jsonw_u64(w, r->e.c.output);
	jsonw_raw(w, "}", 1);
	if (flags & TALLY_JSON_DETAILS)
		encode_details(w, &r->e.c);
	jsonw_raw(w, "}", 1);
}

static int row_cmp(const void *a, const void *b)
{
	const struct row *x = a, *y = b;
	size_t n = x->llm_len < y->llm_len ? x->llm_len : y->llm_len;
	int c = memcmp(x->llm, y->llm, n);

	if (c != 0)
		return c;
	return x->llm_len < y->llm_len ? -1 : x->llm_len > y->llm_len;
}

static char *encode(const struct rows *rs, unsigned flags)
{
	struct jsonw w;

	jsonw_init(&w);
	jsonw_raw(&w, "{", 1);
	for (size_t i = 0; i < rs->n; i++) {
		if (i > 0)
			jsonw_raw(&w, ",", 1);
		encode_row(&w, &rs->r[i], flags);
	}
	jsonw_raw(&w, "}", 1);
	return jsonw_take(&w);
}

static int check_session_id(const char *sid, size_t *len)
{
	if (sid == NULL)
		return -EINVAL;
	*len = strlen(sid);
	if (*len == 0 || *len > TALLY_ID_MAX)
		return -EINVAL;
	return utf8_valid(sid, *len) ? 0 : -EILSEQ;
}

static int snapshot(struct tally *t, const char *sid, size_t sid_len,
		    unsigned flags, char **json)
{
	struct rows rs = {0};
	struct reader *r;
	uint64_t committed = 0;
	MDB_txn *txn;
	int rc;

	if ((rc = tally_reader(t, &r)) < 0 || (rc = reader_begin(r, &txn)) < 0)
		return rc;
	rc = read_rows(r, txn, sid, sid_len, &rs);
	if (rc == 0)
		rc = reader_producer_seq(r, txn, t->producer, &committed);
	if (rc == 0)
		rc = overlay(t, committed, sid, sid_len, &rs);
	/* LLMs only this handle has used yet go where the ledger puts them. */
	if (rc == 0 && rs.n > 1)
		qsort(rs.r, rs.n, sizeof(rs.r[0]), row_cmp);
	if (rc == 0) {
		*json = encode(&rs, flags);
		rc = *json == NULL ? -ENOMEM : 0;
	}
	reader_end(r, txn);
	rows_fini(&rs);
	return rc;
}

int tally_session_json_ex(struct tally *t, const char *session_id,
			  unsigned flags, char **json)
{
	size_t len;
	int rc;

	if (t == NULL || json == NULL)
		return -EINVAL;
	*json = NULL;
	if ((rc = check_session_id(session_id, &len)) < 0)
		return rc;
	if ((rc = tally_enter_locked(t)) < 0)
		return rc;
	rc = snapshot(t, session_id, len, flags, json);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

int tally_session_json(struct tally *t, const char *session_id, char **json)
{
	return tally_session_json_ex(t, session_id, 0, json);
}

static void encode_session(struct jsonw *w, const MDB_val *key,
			   const struct ledger_session *s)
{
	jsonw_raw(w, "{\"sessionId\":", 13);
	jsonw_str(w, key->mv_data, key->mv_size);
	jsonw_raw(w, ",\"firstActivity\":", 17);
	jsonw_u64(w, s->first_ns / 1000000u);
	jsonw_raw(w, ",\"lastActivity\":", 16);
	jsonw_u64(w, s->last_ns / 1000000u);
	jsonw_raw(w, ",\"inputTokens\":", 15);
	jsonw_u64(w, s->input);
	jsonw_raw(w, ",\"outputTokens\":", 16);
	jsonw_u64(w, s->output);
	jsonw_raw(w, ",\"calls\":", 9);
	jsonw_u64(w, s->calls);
	jsonw_raw(w, "}", 1);
}

static int list_sessions(struct reader *r, MDB_txn *txn, struct jsonw *w)
{
	struct ledger_session s;
	MDB_cursor *cur;
	MDB_val key, val;
	bool first = true;
	int rc;

	rc = mdb_cursor_open(txn, r->sessions, &cur);
	if (rc != 0)
		return ledger_errno(rc);
	jsonw_raw(w, "[", 1);
	while ((rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) == 0) {
		if ((rc = ledger_session_decode(&val, &s)) < 0)
			break;
		if (!first)
			jsonw_raw(w, ",", 1);
		first = false;
		encode_session(w, &key, &s);
	}
	jsonw_raw(w, "]", 1);
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND)
		return 0;
	return rc > 0 ? ledger_errno(rc) : rc;
}

int tally_sessions_json(struct tally *t, char **json)
{
	struct reader *r;
	struct jsonw w;
	MDB_txn *txn;
	int rc;

	if (t == NULL || json == NULL)
		return -EINVAL;
	*json = NULL;
	if ((rc = tally_enter_locked(t)) < 0)
		return rc;
	if ((rc = tally_reader(t, &r)) == 0 &&
	    (rc = reader_begin(r, &txn)) == 0) {
		jsonw_init(&w);
		rc = list_sessions(r, txn, &w);
		reader_end(r, txn);
		*json = rc == 0 ? jsonw_take(&w) : NULL;
		if (rc < 0)
			jsonw_fini(&w);
		else if (*json == NULL)
			rc = -ENOMEM;
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}
