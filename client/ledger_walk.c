/*
 * ledger_walk.c - whole-ledger reads for operators: every entry, and a
 * consistency check, each from one read transaction.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* NUL-terminated copies of an entry's strings, for the callback. */
struct entry_text {
	char session[TALLY_ID_MAX + 1];
	char llm[TALLY_ID_MAX + 1];
	char name[LEDGER_NNAMES][TALLY_NAME_MAX + 1];
};

static void copy(char *dst, size_t cap, const char *src, size_t len)
{
	if (len >= cap)
		len = cap - 1;
	memcpy(dst, src, len);
	dst[len] = '\0';
}

static int to_entry(const MDB_val *key, const MDB_val *val,
		    struct entry_text *txt, struct tally_entry *e)
{
	struct ledger_entry le;
	const char *llm;
	size_t llm_len;
	int rc;

	if ((rc = ledger_key_split(key, &llm, &llm_len)) < 0 ||
	    (rc = ledger_entry_decode(val, &le)) < 0)
		return rc;
	copy(txt->session, sizeof(txt->session), key->mv_data,
	     key->mv_size - llm_len - 1);
	copy(txt->llm, sizeof(txt->llm), llm, llm_len);
	for (int i = 0; i < LEDGER_NNAMES; i++)
		copy(txt->name[i], sizeof(txt->name[i]), le.name[i],
		     le.name_len[i]);
	*e = (struct tally_entry){
		.session_id = txt->session,
		.llm_reference_id = txt->llm,
		.llm_display_name = txt->name[LEDGER_DISPLAY],
		.provider_type = txt->name[LEDGER_PROVIDER],
		.model_type = txt->name[LEDGER_MODEL],
		.input_tokens = le.c.input,
		.output_tokens = le.c.output,
		.cache_read_tokens = le.c.cache_read,
		.cache_write_tokens = le.c.cache_write,
		.reasoning_tokens = le.c.reasoning,
		.calls = le.c.calls,
		.estimated_input_tokens = le.c.est_input,
		.estimated_output_tokens = le.c.est_output,
		.usage_missing_calls = le.c.missing,
		.first_activity_ms = le.first_ns / 1000000u,
		.last_activity_ms = le.last_ns / 1000000u,
	};
	return 0;
}

typedef int (*walk_fn)(const MDB_val *key, const MDB_val *val, void *ctx);

static int walk(struct reader *r, MDB_txn *txn, MDB_dbi dbi, walk_fn fn,
		void *ctx)
{
	MDB_val key, val;
	MDB_cursor *cur;
	int rc;

	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc != 0)
		return ledger_errno(rc);
	while ((rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) == 0)
		if ((rc = fn(&key, &val, ctx)) != 0)
			break;
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc > 0 ? ledger_errno(rc) : rc;
}

struct foreach_ctx {
	int (*fn)(const struct tally_entry *e, void *ctx);
	void *ctx;
	struct entry_text txt;
};

static int foreach_one(const MDB_val *key, const MDB_val *val, void *ctx)
{
	struct foreach_ctx *f = ctx;
	struct tally_entry e;
	int rc = to_entry(key, val, &f->txt, &e);

	return rc < 0 ? rc : f->fn(&e, f->ctx);
}

/* Runs fn inside one read transaction of t's ledger. */
static int with_txn(struct tally *t,
		    int (*fn)(struct reader *r, MDB_txn *txn, void *ctx),
		    void *ctx)
{
	struct reader *r;
	MDB_txn *txn;
	int rc;

	if ((rc = tally_enter_locked(t)) < 0)
		return rc;
	if ((rc = tally_reader(t, &r)) == 0 &&
	    (rc = reader_begin(r, &txn)) == 0) {
		rc = fn(r, txn, ctx);
		reader_end(r, txn);
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

static int foreach_txn(struct reader *r, MDB_txn *txn, void *ctx)
{
	return walk(r, txn, r->usage, foreach_one, ctx);
}

int tally_foreach_entry(struct tally *t,
			int (*fn)(const struct tally_entry *e, void *ctx),
			void *ctx)
{
	struct foreach_ctx *f;
	int rc;

	if (t == NULL || fn == NULL)
		return -EINVAL;
	/* The copies of one entry's strings are too big for a stack. */
	f = malloc(sizeof(*f));
	if (f == NULL)
		return -ENOMEM;
	f->fn = fn;
	f->ctx = ctx;
	rc = with_txn(t, foreach_txn, f);
	free(f);
	return rc;
}

/* The check: sums per session from the entries, then the sessions. */
struct check {
	FILE *out;
	int problems;
	/* The session being summed, and its sums. */
	char session[TALLY_ID_MAX + 1];
	size_t session_len;
	struct ledger_session sum;
	MDB_cursor *sessions;
	MDB_cursor *usage;
};

__attribute__((format(printf, 2, 3))) static void problem(struct check *c,
							  const char *fmt, ...)
{
	va_list ap;

	c->problems++;
	if (c->out == NULL)
		return;
	va_start(ap, fmt);
	vfprintf(c->out, fmt, ap);
	va_end(ap);
	fputc('\n', c->out);
}

/* Compares the summed session with its record in the sessions table. */
static void check_session(struct check *c)
{
	MDB_val key = {c->session_len, c->session}, val;
	struct ledger_session s;

	if (c->session_len == 0)
		return;
	if (mdb_cursor_get(c->sessions, &key, &val, MDB_SET_KEY) != 0) {
		problem(c,
			"session %.*s: no session record (%" PRIu64
			" calls, %" PRIu64 " in entries)",
			(int)c->session_len, c->session, c->sum.calls,
			c->sum.input);
		return;
	}
	if (ledger_session_decode(&val, &s) < 0) {
		problem(c,
			"session %.*s: record does not decode (%" PRIu64
			" bytes)",
			(int)c->session_len, c->session, (uint64_t)val.mv_size);
		return;
	}
	if (s.input != c->sum.input)
		problem(c,
			"session %.*s: input total %" PRIu64
			" but entries sum to %" PRIu64,
			(int)c->session_len, c->session, s.input, c->sum.input);
	if (s.output != c->sum.output)
		problem(c,
			"session %.*s: output total %" PRIu64
			" but entries sum to %" PRIu64,
			(int)c->session_len, c->session, s.output,
			c->sum.output);
	if (s.calls != c->sum.calls)
		problem(c,
			"session %.*s: %" PRIu64 " calls but entries sum "
			"to %" PRIu64,
			(int)c->session_len, c->session, s.calls, c->sum.calls);
}

static int check_entry(const MDB_val *key, const MDB_val *val, void *ctx)
{
	struct check *c = ctx;
	struct ledger_entry le;
	const char *llm;
	size_t llm_len, sid_len;

	if (ledger_key_split(key, &llm, &llm_len) < 0 ||
	    ledger_entry_decode(val, &le) < 0) {
		problem(c,
			"entry %.*s: does not decode (%" PRIu64
			" key bytes, %" PRIu64 " value bytes)",
			(int)(key->mv_size > 64 ? 64 : key->mv_size),
			(const char *)key->mv_data, (uint64_t)key->mv_size,
			(uint64_t)val->mv_size);
		return 0;
	}
	sid_len = key->mv_size - llm_len - 1;
	if (sid_len != c->session_len ||
	    memcmp(key->mv_data, c->session, sid_len) != 0) {
		check_session(c);
		memset(&c->sum, 0, sizeof(c->sum));
		memcpy(c->session, key->mv_data, sid_len);
		c->session_len = sid_len;
	}
	c->sum.input += le.c.input;
	c->sum.output += le.c.output;
	c->sum.calls += le.c.calls;
	return 0;
}

/* A session record with no entry behind it: totals from nowhere. */
static int check_orphan(const MDB_val *key, const MDB_val *val, void *ctx)
{
	struct check *c = ctx;
	char prefix[TALLY_ID_MAX + 2];
	MDB_val k, v;

	if (key->mv_size == 0 || key->mv_size > TALLY_ID_MAX) {
		problem(c, "a session record has a key of %zu bytes",
			key->mv_size);
		return 0;
	}
	memcpy(prefix, key->mv_data, key->mv_size);
	prefix[key->mv_size] = '\0';
	k.mv_size = key->mv_size + 1;
	k.mv_data = prefix;
	if (mdb_cursor_get(c->usage, &k, &v, MDB_SET_RANGE) != 0 ||
	    k.mv_size <= key->mv_size ||
	    memcmp(k.mv_data, prefix, key->mv_size + 1) != 0)
		problem(c, "session %.*s: a session record but no entries",
			(int)key->mv_size, (const char *)key->mv_data);
	return 0;
}

static int check_txn(struct reader *r, MDB_txn *txn, void *ctx)
{
	struct check *c = ctx;
	int rc;

	rc = mdb_cursor_open(txn, r->sessions, &c->sessions);
	if (rc != 0)
		return ledger_errno(rc);
	rc = mdb_cursor_open(txn, r->usage, &c->usage);
	if (rc != 0) {
		mdb_cursor_close(c->sessions);
		return ledger_errno(rc);
	}
	rc = walk(r, txn, r->usage, check_entry, c);
	if (rc == 0)
		check_session(c);
	if (rc == 0)
		rc = walk(r, txn, r->sessions, check_orphan, c);
	mdb_cursor_close(c->usage);
	mdb_cursor_close(c->sessions);
	return rc;
}

int tally_check(struct tally *t, char **report)
{
	struct check *c;
	size_t len = 0;
	char *text = NULL;
	int rc;

	if (t == NULL)
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	if (report != NULL && (c->out = open_memstream(&text, &len)) == NULL) {
		free(c);
		return -ENOMEM;
	}
	rc = with_txn(t, check_txn, c);
	if (c->out != NULL)
		fclose(c->out);
	if (rc == 0)
		rc = c->problems;
	if (report != NULL && rc >= 0)
		*report = text;
	else
		free(text);
	free(c);
	return rc;
}
