/*
 * addon.c - libtally for Node.js, through Node-API.
 *
 * The native class Handle owns one struct tally. Its methods take plain
 * positional arguments: index.js reads the fields of the caller's objects,
 * which the JavaScript engine does much faster than Node-API can, and
 * gives the public API its shape.
 *
 * Every call is synchronous and runs on the JavaScript thread: a snapshot
 * is a few microseconds of reading a memory map, a record a queue push
 * and a non-blocking send. Only sync() and close() wait, as long as the
 * caller allows.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "addon.h"

/*
 * Estimation joined libtally after the rest of it. Weak references let
 * the addon load against a libtally with or without it; where it is
 * missing, the calls that need it throw ENOSYS.
 */
extern int tally_estimate_tokens(const char *model_type, const char *text,
				 size_t len, uint64_t *tokens)
	__attribute__((weak));
extern int tally_record_text(struct tally *t, const struct tally_usage *ids,
			     const char *prompt, size_t prompt_len,
			     const char *completion, size_t completion_len)
	__attribute__((weak));
extern int tally_estimate_data_dir(char *buf, size_t len) __attribute__((weak));

/* Longest ledger directory accepted from JavaScript, NUL included. */
#define DIR_BUF 4096

/* The open handles of one JavaScript environment (main or a worker). */
struct addon {
	struct handle *handles;
	/* The environment's own reference, and one per handle. */
	int refs;
};

struct handle {
	/* NULL once closed. */
	struct tally *t;
	struct addon *addon;
	struct handle *prev;
	struct handle *next;
};

/* Tells a Handle of this addon from any other wrapped object. */
static const napi_type_tag handle_tag = {0x74616c6c792d6e6fULL,
					 0x64652d68616e646cULL};

static void addon_unref(struct addon *a)
{
	if (--a->refs == 0)
		free(a);
}

static void handle_close(struct handle *h)
{
	if (h->t == NULL)
		return;
	tally_close(h->t);
	h->t = NULL;
	if (h->prev != NULL)
		h->prev->next = h->next;
	else
		h->addon->handles = h->next;
	if (h->next != NULL)
		h->next->prev = h->prev;
	h->prev = h->next = NULL;
}

/* Closes what is still open: the process or the worker is ending. */
static void addon_close_all(struct addon *a)
{
	while (a->handles != NULL)
		handle_close(a->handles);
}

/*
 * A handle dropped without close() is closed here, which waits for the
 * daemon's commit like close() does; the environment's teardown may come
 * first, and whichever is last frees the shared state.
 */
static void handle_finalize(napi_env env, void *data, void *hint)
{
	struct handle *h = data;
	struct addon *a = h->addon;

	handle_close(h);
	free(h);
	addon_unref(a);
}

static void addon_finalize(napi_env env, void *data, void *hint)
{
	addon_close_all(data);
	addon_unref(data);
}

/* The callback's arguments, missing ones undefined, and its this. */
static int get_args(struct call *c, napi_callback_info info, size_t n,
		    napi_value *argv, napi_value *self)
{
	size_t argc = n;

	if (napi_get_cb_info(c->env, info, &argc, argv, self, NULL))
		return ADDON_ENAPI;
	return 0;
}

static int get_handle(struct call *c, napi_value self, struct handle **h)
{
	bool ours = false;
	void *p;

	if (napi_check_object_type_tag(c->env, self, &handle_tag, &ours) ||
	    !ours || napi_unwrap(c->env, self, &p)) {
		call_detail(c, "called on something that is not a tally "
			       "handle");
		return -EINVAL;
	}
	*h = p;
	if ((*h)->t == NULL) {
		call_detail(c, "the handle is closed; open another with "
			       "tally.open()");
		return -EBADF;
	}
	return 0;
}

/* Throws for rc: a Node-API failure, or an error of the call. */
static napi_value fail(struct call *c, int rc)
{
	return rc == ADDON_ENAPI ? call_napi_failed(c) : call_throw(c, rc);
}

static napi_value undefined(napi_env env)
{
	napi_value v = NULL;

	napi_get_undefined(env, &v);
	return v;
}

/* --- Opening --- */

static int open_dir(struct call *c, napi_value v, char *buf, const char **dir)
{
	napi_valuetype t;
	size_t n;

	*dir = NULL;
	if (napi_typeof(c->env, v, &t) || t == napi_undefined || t == napi_null)
		return 0;
	if (napi_get_value_string_utf8(c->env, v, buf, DIR_BUF, &n)) {
		call_detail(c, "dir must be a string");
		return -EINVAL;
	}
	if (n == DIR_BUF - 1) {
		call_detail(c, "dir is longer than %d bytes", DIR_BUF - 2);
		return -ENAMETOOLONG;
	}
	if (strlen(buf) != n) {
		call_detail(c, "dir has a NUL character");
		return -EINVAL;
	}
	*dir = buf;
	return 0;
}

static int open_queue_max(struct call *c, napi_value v, size_t *out)
{
	uint64_t n;
	int rc;

	rc = arg_count(c, v, "queueMax", false, &n, NULL);
	if (rc < 0)
		return rc;
	if (n > INT32_MAX) {
		call_detail(c, "queueMax is %llu, above 2^31 - 1",
			    (unsigned long long)n);
		return -ERANGE;
	}
	*out = (size_t)n;
	return 0;
}

/* A wait of open(): 0 or absent takes libtally's default. */
static int open_ms(struct call *c, napi_value v, const char *field, int *out)
{
	int rc = arg_ms(c, v, field, 0, out);

	if (rc == 0 && *out < 0) {
		/* libtally would wait without end, at exit too. */
		call_detail(c, "%s is negative", field);
		rc = -EINVAL;
	}
	return rc;
}

/* new Handle(dir, queueMax, recordTimeoutMs, closeTimeoutMs) */
static int open_options(struct call *c, napi_value *argv, char *dir,
			struct tally_options *o)
{
	int rc;

	memset(o, 0, sizeof(*o));
	if ((rc = open_dir(c, argv[0], dir, &o->dir)) < 0 ||
	    (rc = open_queue_max(c, argv[1], &o->queue_max)) < 0 ||
	    (rc = open_ms(c, argv[2], "recordTimeoutMs",
			  &o->record_timeout_ms)) < 0)
		return rc;
	return open_ms(c, argv[3], "closeTimeoutMs", &o->close_timeout_ms);
}

static int wrap_handle(struct call *c, napi_value self, struct tally *t)
{
	struct addon *a = NULL;
	struct handle *h;

	if (napi_get_instance_data(c->env, (void **)&a) || a == NULL)
		return ADDON_ENAPI;
	h = calloc(1, sizeof(*h));
	if (h == NULL)
		return -ENOMEM;
	/* Once wrapped, h belongs to the finalizer: wrapping comes last. */
	if (napi_type_tag_object(c->env, self, &handle_tag) ||
	    napi_wrap(c->env, self, h, handle_finalize, NULL, NULL)) {
		free(h);
		return ADDON_ENAPI;
	}
	h->t = t;
	h->addon = a;
	h->next = a->handles;
	if (a->handles != NULL)
		a->handles->prev = h;
	a->handles = h;
	a->refs++;
	return 0;
}

static napi_value handle_new(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.open"};
	char dir[DIR_BUF];
	struct tally_options o;
	struct tally *t;
	napi_value argv[4], self, target;
	int rc;

	if ((rc = get_args(&c, info, 4, argv, &self)) < 0)
		return fail(&c, rc);
	if (napi_get_new_target(env, info, &target) || target == NULL) {
		call_detail(&c, "Handle is a class: use tally.open()");
		return call_throw(&c, -EINVAL);
	}
	if ((rc = open_options(&c, argv, dir, &o)) < 0 ||
	    (rc = tally_open_ex(&t, &o)) < 0)
		return fail(&c, rc);
	if ((rc = wrap_handle(&c, self, t)) < 0) {
		tally_close(t);
		return fail(&c, rc);
	}
	return self;
}

static napi_value handle_close_js(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.close"};
	struct handle *h;
	napi_value self;
	int rc;

	if ((rc = get_args(&c, info, 0, NULL, &self)) < 0)
		return fail(&c, rc);
	rc = get_handle(&c, self, &h);
	if (rc == -EBADF)
		return undefined(env);
	if (rc < 0)
		return fail(&c, rc);
	handle_close(h);
	return undefined(env);
}

/* --- Recording --- */

/* The strings of a usage, converted from JavaScript. */
struct usage_strings {
	char sid[ARG_STRING_BUF(TALLY_ID_MAX)];
	char llm[ARG_STRING_BUF(TALLY_ID_MAX)];
	char display[ARG_STRING_BUF(TALLY_NAME_MAX)];
	char provider[ARG_STRING_BUF(TALLY_NAME_MAX)];
	char model[ARG_STRING_BUF(TALLY_NAME_MAX)];
};

/* argv: sessionId, llmReferenceId, llmDisplayName, providerType, model. */
static int usage_ids(struct call *c, napi_value *argv, bool need_provider,
		     struct usage_strings *s, struct tally_usage *u)
{
	const struct {
		const char *field;
		size_t max;
		bool required;
		char *buf;
		const char **out;
	} f[] = {
		{"sessionId", TALLY_ID_MAX, true, s->sid, &u->session_id},
		{"llmReferenceId", TALLY_ID_MAX, true, s->llm,
		 &u->llm_reference_id},
		{"llmDisplayName", TALLY_NAME_MAX, false, s->display,
		 &u->llm_display_name},
		{"providerType", TALLY_NAME_MAX, need_provider, s->provider,
		 &u->provider_type},
		{"modelType", TALLY_NAME_MAX, false, s->model, &u->model_type},
	};
	int rc;

	memset(u, 0, sizeof(*u));
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		rc = arg_string(c, argv[i], f[i].field, f[i].max, f[i].required,
				f[i].buf, f[i].out);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int arg_flag(struct call *c, napi_value v, const char *field,
		    uint32_t flag, uint32_t *flags)
{
	napi_valuetype t;
	bool on;

	if (napi_typeof(c->env, v, &t) || t == napi_undefined || t == napi_null)
		return 0;
	if (napi_get_value_bool(c->env, v, &on)) {
		call_detail(c, "%s must be a boolean", field);
		return -EINVAL;
	}
	if (on)
		*flags |= flag;
	return 0;
}

/* argv: inputTokens, outputTokens, the three details, estimated. */
static int usage_counts(struct call *c, napi_value *argv, struct tally_usage *u)
{
	static const char *const detail[] = {
		"cacheReadTokens", "cacheWriteTokens", "reasoningTokens"};
	static const uint32_t has[] = {TALLY_USAGE_HAS_CACHE_READ,
				       TALLY_USAGE_HAS_CACHE_WRITE,
				       TALLY_USAGE_HAS_REASONING};
	uint64_t *value[] = {&u->cache_read_tokens, &u->cache_write_tokens,
			     &u->reasoning_tokens};
	bool present;
	int rc;

	if ((rc = arg_count(c, argv[0], "inputTokens", true, &u->input_tokens,
			    NULL)) < 0 ||
	    (rc = arg_count(c, argv[1], "outputTokens", true, &u->output_tokens,
			    NULL)) < 0)
		return rc;
	for (int i = 0; i < 3; i++) {
		rc = arg_count(c, argv[2 + i], detail[i], false, value[i],
			       &present);
		if (rc < 0)
			return rc;
		if (present)
			u->flags |= has[i];
	}
	return arg_flag(c, argv[5], "estimated", TALLY_USAGE_ESTIMATED,
			&u->flags);
}

/* Says which count libtally refused; it only returns the errno. */
static void explain_counts(struct call *c, const struct tally_usage *u, int rc)
{
	static const char *const names[] = {
		"inputTokens", "outputTokens", "cacheReadTokens",
		"cacheWriteTokens", "reasoningTokens"};
	const uint64_t v[] = {u->input_tokens, u->output_tokens,
			      u->cache_read_tokens, u->cache_write_tokens,
			      u->reasoning_tokens};

	for (int i = 0; rc == -ERANGE && i < 5; i++) {
		if (v[i] > TALLY_TOKENS_MAX) {
			call_hint(c, "%s is %llu", names[i],
				  (unsigned long long)v[i]);
			return;
		}
	}
	if (rc == -EINVAL && v[2] + v[3] > v[0])
		call_hint(c,
			  "cacheReadTokens + cacheWriteTokens (%llu) "
			  "exceed inputTokens (%llu), which include them",
			  (unsigned long long)(v[2] + v[3]),
			  (unsigned long long)v[0]);
	else if (rc == -EINVAL && v[4] > v[1])
		call_hint(c,
			  "reasoningTokens (%llu) exceed outputTokens "
			  "(%llu), which include them",
			  (unsigned long long)v[4], (unsigned long long)v[1]);
}

static void explain_full(struct call *c, struct tally *t, int rc)
{
	if (rc == -ENOBUFS)
		call_hint(c,
			  "%ld usages wait for the daemon; call sync(), "
			  "or open with recordTimeoutMs to wait for room",
			  tally_pending(t));
}

/* record(sessionId, llmReferenceId, names x3, counts x5, estimated) */
static napi_value handle_record(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.record"};
	struct usage_strings s;
	struct tally_usage u;
	struct handle *h;
	napi_value argv[11], self;
	int rc;

	if ((rc = get_args(&c, info, 11, argv, &self)) < 0 ||
	    (rc = get_handle(&c, self, &h)) < 0 ||
	    (rc = usage_ids(&c, argv, false, &s, &u)) < 0 ||
	    (rc = usage_counts(&c, argv + 5, &u)) < 0)
		return fail(&c, rc);
	rc = tally_record(h->t, &u);
	if (rc < 0) {
		explain_counts(&c, &u, rc);
		explain_full(&c, h->t, rc);
		return fail(&c, rc);
	}
	return undefined(env);
}

/* recordResponse(sessionId, llmReferenceId, names x3, body) */
static napi_value handle_record_response(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.recordResponse"};
	struct usage_strings s;
	struct tally_usage u;
	struct bytes body;
	struct handle *h;
	napi_value argv[6], self;
	int rc;

	if ((rc = get_args(&c, info, 6, argv, &self)) < 0 ||
	    (rc = get_handle(&c, self, &h)) < 0 ||
	    (rc = usage_ids(&c, argv, true, &s, &u)) < 0 ||
	    (rc = arg_bytes(&c, argv[5], "body", true, &body)) < 0)
		return fail(&c, rc);
	rc = tally_record_response(h->t, &u, body.data, body.len);
	bytes_fini(&body);
	if (rc == -EPROTONOSUPPORT)
		call_hint(&c, "providerType \"%s\" has no response parser",
			  u.provider_type);
	else if (rc == -EBADMSG)
		call_hint(&c, "body is not JSON, or a usage field in it is "
			      "not a number");
	else if (rc == -ENODATA)
		call_hint(&c,
			  "this %s body has no usage report; record() "
			  "the counts instead, estimated if need be",
			  u.provider_type);
	explain_full(&c, h->t, rc);
	return rc < 0 ? fail(&c, rc) : undefined(env);
}

/* Explains an error of estimation: its ENOENT is not about a ledger. */
static void explain_estimate(struct call *c, int rc)
{
	char dir[1024] = "unknown";

	if (rc == -ENOSYS) {
		call_detail(c, "this libtally cannot estimate; update it");
	} else if (rc == -ENOENT) {
		if (tally_estimate_data_dir != NULL)
			tally_estimate_data_dir(dir, sizeof(dir));
		c->why = "no rank file for this model type";
		call_hint(c,
			  "run tools/setup, or set TALLY_DATA_DIR to a "
			  "directory that holds it (now %s)",
			  dir);
	} else if (rc == -EILSEQ) {
		call_hint(c, "text is not valid UTF-8");
	}
}

static int estimate(const char *model, const struct bytes *text,
		    uint64_t *tokens)
{
	if (tally_estimate_tokens == NULL)
		return -ENOSYS;
	return tally_estimate_tokens(model, text->data, text->len, tokens);
}

static int record_text(struct tally *t, const struct tally_usage *ids,
		       const struct bytes *prompt,
		       const struct bytes *completion)
{
	if (tally_record_text == NULL)
		return -ENOSYS;
	return tally_record_text(t, ids, prompt->data, prompt->len,
				 completion->data, completion->len);
}

/* recordText(sessionId, llmReferenceId, names x3, prompt, completion) */
static napi_value handle_record_text(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.recordText"};
	struct bytes prompt = {0}, completion = {0};
	struct usage_strings s;
	struct tally_usage u;
	struct handle *h;
	napi_value argv[7], self;
	int rc;

	if ((rc = get_args(&c, info, 7, argv, &self)) < 0 ||
	    (rc = get_handle(&c, self, &h)) < 0 ||
	    (rc = usage_ids(&c, argv, false, &s, &u)) < 0 ||
	    (rc = arg_bytes(&c, argv[5], "prompt", false, &prompt)) < 0 ||
	    (rc = arg_bytes(&c, argv[6], "completion", false, &completion)) < 0)
		goto out;
	rc = record_text(h->t, &u, &prompt, &completion);
	explain_estimate(&c, rc);
	explain_full(&c, h->t, rc);
out:
	bytes_fini(&prompt);
	bytes_fini(&completion);
	return rc < 0 ? fail(&c, rc) : undefined(env);
}

/* --- Reading --- */

/*
 * Whether JSON.parse() reads json exactly. It rounds integers above 2^53,
 * and every integer from 2^53 up has 16 digits or more; a run of 16
 * digits inside a string (an id, a display name) also answers no, which
 * costs only speed. Notes whether json is all ASCII on the way.
 */
static bool parse_is_exact(const char *json, size_t len, bool *ascii)
{
	unsigned char any = 0;
	size_t run = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char b = (unsigned char)json[i];

		any |= b;
		run = b >= '0' && b <= '9' ? run + 1 : 0;
		if (run == 16)
			return false;
	}
	*ascii = any < 0x80;
	return true;
}

/*
 * Gives JavaScript libtally's JSON: as text for JSON.parse() when that
 * reads it exactly, three times faster than building the objects through
 * Node-API; else as the values json.c builds, BigInts and all. Frees
 * json.
 */
static napi_value json_result(struct call *c, char *json)
{
	size_t len = strlen(json);
	napi_status s = napi_ok;
	napi_value out;
	bool ascii;
	int rc = 0;

	if (!parse_is_exact(json, len, &ascii))
		rc = json_to_js(c->env, json, len, &out);
	else if (ascii)
		s = napi_create_string_latin1(c->env, json, len, &out);
	else
		s = napi_create_string_utf8(c->env, json, len, &out);
	if (rc == 0 && s != napi_ok)
		rc = ADDON_ENAPI;
	free(json);
	return rc < 0 ? fail(c, rc) : out;
}

/* snapshot(sessionId, details) -> object or null */
static napi_value handle_snapshot(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env,
			 .name = "tally.getLLMTokenUsageForSession"};
	char sid[ARG_STRING_BUF(TALLY_ID_MAX)];
	const char *session_id;
	unsigned flags = 0;
	struct handle *h;
	napi_value argv[2], self, out;
	char *json;
	int rc;

	if ((rc = get_args(&c, info, 2, argv, &self)) < 0 ||
	    (rc = get_handle(&c, self, &h)) < 0 ||
	    (rc = arg_string(&c, argv[0], "sessionId", TALLY_ID_MAX, true, sid,
			     &session_id)) < 0 ||
	    (rc = arg_flag(&c, argv[1], "details", TALLY_JSON_DETAILS,
			   &flags)) < 0 ||
	    (rc = tally_session_json_ex(h->t, session_id, flags, &json)) < 0)
		return fail(&c, rc);
	/* The platform's own API answers null for a session with no usage. */
	if (strcmp(json, "{}") == 0) {
		free(json);
		return napi_get_null(env, &out) ? fail(&c, ADDON_ENAPI) : out;
	}
	return json_result(&c, json);
}

static napi_value handle_stats(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.stats"};
	struct handle *h;
	napi_value argv[1], self;
	char *json;
	int ms, rc;

	if ((rc = get_args(&c, info, 1, argv, &self)) < 0 ||
	    (rc = get_handle(&c, self, &h)) < 0 ||
	    (rc = arg_ms(&c, argv[0], "timeoutMs", 1000, &ms)) < 0)
		return fail(&c, rc);
	if (ms < 0) {
		call_detail(&c, "timeoutMs is negative");
		return fail(&c, -EINVAL);
	}
	if ((rc = tally_stats_json(h->t, ms, &json)) < 0)
		return fail(&c, rc);
	return json_result(&c, json);
}

/* --- Delivery --- */

static napi_value handle_sync(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.sync"};
	struct handle *h;
	napi_value argv[1], self;
	int ms, rc;

	if ((rc = get_args(&c, info, 1, argv, &self)) < 0 ||
	    (rc = get_handle(&c, self, &h)) < 0 ||
	    (rc = arg_ms(&c, argv[0], "timeoutMs", 5000, &ms)) < 0)
		return fail(&c, rc);
	rc = tally_sync(h->t, ms);
	if (rc == -ETIMEDOUT)
		call_hint(&c,
			  "%ld usages still wait after %d ms; they stay "
			  "queued, and a later sync() may succeed",
			  tally_pending(h->t), ms);
	return rc < 0 ? fail(&c, rc) : undefined(env);
}

static napi_value handle_pending(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.pending"};
	struct handle *h;
	napi_value self, out;
	int rc;

	if ((rc = get_args(&c, info, 0, NULL, &self)) < 0 ||
	    (rc = get_handle(&c, self, &h)) < 0)
		return fail(&c, rc);
	if (napi_create_int64(env, tally_pending(h->t), &out))
		return fail(&c, ADDON_ENAPI);
	return out;
}

/* --- Functions of the module --- */

/* estimateTokens(modelType, text) -> count */
static napi_value estimate_tokens(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.estimateTokens"};
	char model_buf[ARG_STRING_BUF(TALLY_NAME_MAX)];
	const char *model;
	struct bytes text;
	uint64_t tokens = 0;
	napi_value argv[2], out;
	int rc;

	if ((rc = get_args(&c, info, 2, argv, NULL)) < 0 ||
	    (rc = arg_string(&c, argv[0], "modelType", TALLY_NAME_MAX, false,
			     model_buf, &model)) < 0 ||
	    (rc = arg_bytes(&c, argv[1], "text", true, &text)) < 0)
		return fail(&c, rc);
	rc = estimate(model, &text, &tokens);
	bytes_fini(&text);
	if (rc < 0) {
		explain_estimate(&c, rc);
		return fail(&c, rc);
	}
	return js_u64(env, tokens, &out) ? fail(&c, ADDON_ENAPI) : out;
}

static napi_value close_all(napi_env env, napi_callback_info info)
{
	struct addon *a = NULL;

	if (napi_get_instance_data(env, (void **)&a) == napi_ok && a != NULL)
		addon_close_all(a);
	return undefined(env);
}

/* For the tests: libtally's JSON reader on any text. */
static napi_value parse_json(napi_env env, napi_callback_info info)
{
	struct call c = {.env = env, .name = "tally.parseJson"};
	struct bytes text;
	napi_value argv[1], out;
	int rc;

	if ((rc = get_args(&c, info, 1, argv, NULL)) < 0 ||
	    (rc = arg_bytes(&c, argv[0], "text", true, &text)) < 0)
		return fail(&c, rc);
	rc = json_to_js(env, text.data, text.len, &out);
	bytes_fini(&text);
	return rc < 0 ? fail(&c, rc) : out;
}

/* --- Registration --- */

static napi_status define_handle(napi_env env, napi_value exports)
{
	static const napi_property_descriptor methods[] = {
		{"record", 0, handle_record, 0, 0, 0, napi_default, 0},
		{"recordResponse", 0, handle_record_response, 0, 0, 0,
		 napi_default, 0},
		{"recordText", 0, handle_record_text, 0, 0, 0, napi_default, 0},
		{"snapshot", 0, handle_snapshot, 0, 0, 0, napi_default, 0},
		{"stats", 0, handle_stats, 0, 0, 0, napi_default, 0},
		{"sync", 0, handle_sync, 0, 0, 0, napi_default, 0},
		{"pending", 0, handle_pending, 0, 0, 0, napi_default, 0},
		{"close", 0, handle_close_js, 0, 0, 0, napi_default, 0},
	};
	napi_value cls;
	napi_status s;

	s = napi_define_class(env, "Handle", NAPI_AUTO_LENGTH, handle_new, NULL,
			      sizeof(methods) / sizeof(methods[0]), methods,
			      &cls);
	if (s != napi_ok)
		return s;
	return napi_set_named_property(env, exports, "Handle", cls);
}

static napi_status define_functions(napi_env env, napi_value exports)
{
	static const napi_property_descriptor functions[] = {
		{"estimateTokens", 0, estimate_tokens, 0, 0, 0, napi_default,
		 0},
		{"closeAll", 0, close_all, 0, 0, 0, napi_default, 0},
		{"parseJson", 0, parse_json, 0, 0, 0, napi_default, 0},
	};
	napi_value version;
	napi_status s;

	s = napi_define_properties(env, exports,
				   sizeof(functions) / sizeof(functions[0]),
				   functions);
	if (s == napi_ok)
		s = napi_create_string_utf8(env, TALLY_VERSION_STRING,
					    NAPI_AUTO_LENGTH, &version);
	if (s == napi_ok)
		s = napi_set_named_property(env, exports, "version", version);
	return s;
}

static napi_value init(napi_env env, napi_value exports)
{
	struct call c = {.env = env, .name = "tally"};
	struct addon *a = calloc(1, sizeof(*a));

	if (a == NULL)
		return call_throw(&c, -ENOMEM);
	a->refs = 1;
	if (napi_set_instance_data(env, a, addon_finalize, NULL)) {
		free(a);
		return call_napi_failed(&c);
	}
	if (define_handle(env, exports) || define_functions(env, exports))
		return call_napi_failed(&c);
	return exports;
}

/* NAPI_MODULE_INIT() defines this one without declaring it first. */
NAPI_MODULE_EXPORT int32_t NODE_API_MODULE_GET_API_VERSION(void);

/*
 * Context-aware, so that worker threads may load it too: each environment
 * gets its own struct addon through its instance data.
 */
NAPI_MODULE_INIT()
{
	return init(env, exports);
}
