/*
 * provider.c - read the token usage out of an LLM provider's response.
 *
 * Every provider reports usage under its own names, and each has its own
 * idea of what a count includes: Anthropic and Bedrock keep cache reads and
 * writes out of their input count, OpenAI and Gemini keep cache reads in
 * it, Gemini keeps thinking out of its output count. Each format is
 * described here as a table of the fields it reports and the part each one
 * plays in struct tally_usage, so that the rule itself (input is every
 * prompt-side token billed, output every generated token billed) is applied
 * in one place, by read_field() and finish().
 *
 * A stream reports its usage in some of its events. For most providers each
 * such report is complete, and the last one stands; Anthropic's events each
 * report some fields, and a field's last value stands. Either way a stream is
 * never read by adding chunks up. provider_fold() applies that rule to one
 * event; stream.c frames the events.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "provider.h"
#include "tally.h"

/*
 * The part a field plays. The detail it sets, if any, is named by its
 * TALLY_USAGE_HAS_* flag, which these bits stay clear of.
 */
enum {
	/* It is a part of input_tokens (or of output_tokens). */
	TO_INPUT = 1u << 8,
	TO_OUTPUT = 1u << 9,
	/*
	 * Its presence means that the provider reported that total. A field
	 * that is only a share of a total (Anthropic's cache buckets) does
	 * not: a body without the main counter is flagged as missing it.
	 */
	REPORTS = 1u << 10,
};

#define INPUT (TO_INPUT | REPORTS)
#define OUTPUT (TO_OUTPUT | REPORTS)
#define CACHE_READ TALLY_USAGE_HAS_CACHE_READ
#define CACHE_WRITE TALLY_USAGE_HAS_CACHE_WRITE
#define REASONING TALLY_USAGE_HAS_REASONING

struct field {
	/* The object that holds key, or NULL for the usage object itself. */
	const char *parent;
	const char *key;
	unsigned role;
};

/* One usage format: its fields, ended by one with a NULL key. */
struct shape {
	const struct field *fields;
	/* An embedding: nothing is generated, so output is 0, not missing. */
	bool no_output;
};

/* What one body reported, before it is checked and handed out. */
struct reading {
	struct tally_usage u;
	/* Some field that counts towards a total was present. */
	bool any;
	bool has_input;
	bool has_output;
	bool no_output;
};

/*
 * Chat Completions: cached tokens are inside prompt_tokens and reasoning
 * tokens inside completion_tokens, so neither is added.
 */
static const struct field openai_chat_fields[] = {
	{NULL, "prompt_tokens", INPUT},
	{NULL, "completion_tokens", OUTPUT},
	{"prompt_tokens_details", "cached_tokens", CACHE_READ},
	{"completion_tokens_details", "reasoning_tokens", REASONING},
	{NULL, NULL, 0},
};

static const struct shape openai_chat = {openai_chat_fields, false};

/* The Responses API: the same inclusions under other names. */
static const struct field openai_responses_fields[] = {
	{NULL, "input_tokens", INPUT},
	{NULL, "output_tokens", OUTPUT},
	{"input_tokens_details", "cached_tokens", CACHE_READ},
	{"output_tokens_details", "reasoning_tokens", REASONING},
	{NULL, NULL, 0},
};

static const struct shape openai_responses = {openai_responses_fields, false};

static const struct field openai_embeddings_fields[] = {
	{NULL, "prompt_tokens", INPUT},
	{NULL, NULL, 0},
};

static const struct shape openai_embeddings = {openai_embeddings_fields, true};

/*
 * Anthropic Messages: input_tokens counts only the prompt after the last
 * cache breakpoint; both cache buckets are billed on top of it. Thinking is
 * inside output_tokens, and broken out only where the body says so.
 */
static const struct field anthropic_fields[] = {
	{NULL, "input_tokens", INPUT},
	{NULL, "cache_read_input_tokens", TO_INPUT | CACHE_READ},
	{NULL, "cache_creation_input_tokens", TO_INPUT | CACHE_WRITE},
	{NULL, "output_tokens", OUTPUT},
	{"output_tokens_details", "thinking_tokens", REASONING},
	{NULL, NULL, 0},
};

static const struct shape anthropic = {anthropic_fields, false};

/*
 * Gemini usageMetadata: promptTokenCount includes the cached content;
 * tool-use prompt tokens and thoughts are counted beside the prompt and the
 * candidates. The JSON leaves out counters that are zero, so each part of a
 * total reports it: a response whose thinking used the whole budget has
 * thoughts and no candidatesTokenCount, and its output is known.
 */
static const struct field gemini_fields[] = {
	{NULL, "promptTokenCount", INPUT},
	{NULL, "toolUsePromptTokenCount", INPUT},
	{NULL, "cachedContentTokenCount", CACHE_READ},
	{NULL, "candidatesTokenCount", OUTPUT},
	{NULL, "thoughtsTokenCount", OUTPUT | REASONING},
	{NULL, NULL, 0},
};

static const struct shape gemini = {gemini_fields, false};

/* Bedrock Converse: like Anthropic, cache buckets beside inputTokens. */
static const struct field bedrock_fields[] = {
	{NULL, "inputTokens", INPUT},
	{NULL, "cacheReadInputTokens", TO_INPUT | CACHE_READ},
	{NULL, "cacheWriteInputTokens", TO_INPUT | CACHE_WRITE},
	{NULL, "outputTokens", OUTPUT},
	{NULL, NULL, 0},
};

static const struct shape bedrock = {bedrock_fields, false};

/*
 * Cohere: read from billed_units (or tokens), see parse_cohere(). Its
 * cached_tokens is taken as a share of the input, as OpenAI's is.
 */
static const struct field cohere_chat_fields[] = {
	{NULL, "input_tokens", INPUT},
	{NULL, "output_tokens", OUTPUT},
	{NULL, NULL, 0},
};

static const struct shape cohere_chat = {cohere_chat_fields, false};

static const struct field cohere_embed_fields[] = {
	{NULL, "input_tokens", INPUT},
	{NULL, NULL, 0},
};

static const struct shape cohere_embed = {cohere_embed_fields, true};

static const struct field cohere_cache_fields[] = {
	{NULL, "cached_tokens", CACHE_READ},
	{NULL, NULL, 0},
};

static const struct shape cohere_cache = {cohere_cache_fields, false};

/*
 * Ollama /api/chat and /api/generate, on the final (done) object. Ollama
 * can leave prompt_eval_count out; the input is then missing, not 0.
 */
static const struct field ollama_generate_fields[] = {
	{NULL, "prompt_eval_count", INPUT},
	{NULL, "eval_count", OUTPUT},
	{NULL, NULL, 0},
};

static const struct shape ollama_generate = {ollama_generate_fields, false};

static const struct field ollama_embed_fields[] = {
	{NULL, "prompt_eval_count", INPUT},
	{NULL, NULL, 0},
};

static const struct shape ollama_embed = {ollama_embed_fields, true};

/* Aleph Alpha /complete, and its completion_summary stream event. */
static const struct field aleph_completion_fields[] = {
	{NULL, "num_tokens_prompt_total", INPUT},
	{NULL, "num_tokens_generated", OUTPUT},
	{NULL, NULL, 0},
};

static const struct shape aleph_completion = {aleph_completion_fields, false};

/* Aleph Alpha's embedding endpoints (and evaluate) generate nothing. */
static const struct field aleph_prompt_only_fields[] = {
	{NULL, "num_tokens_prompt_total", INPUT},
	{NULL, NULL, 0},
};

static const struct shape aleph_prompt_only = {aleph_prompt_only_fields, true};

/*
 * The member key of obj, or NULL when obj is not an object or the member is
 * absent or null. Providers send null for a counter or a block that does
 * not apply to the call (OpenAI stream chunks carry "usage": null), which
 * is the same as not reporting it.
 */
static const json_t *member(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);

	return json_is_null(v) ? NULL : v;
}

/* The object at key in obj, or NULL; anything but an object is malformed. */
static int get_object(const json_t *obj, const char *key, const json_t **out)
{
	const json_t *v = member(obj, key);

	*out = json_is_object(v) ? v : NULL;
	return v && !*out ? -EBADMSG : 0;
}

/*
 * The count at key in obj; *set tells whether there was one. Numbers are
 * decoded as doubles (see tally_parse_response()), which hold every count
 * up to TALLY_TOKENS_MAX exactly, so the checks below are exact too.
 */
static int get_count(const json_t *obj, const char *key, bool *set, uint64_t *n)
{
	const json_t *v = member(obj, key);
	double d;

	*set = false;
	if (!v)
		return 0;
	if (!json_is_number(v))
		return -EBADMSG;
	d = json_number_value(v);
	if (!(d >= 0 && d <= (double)TALLY_TOKENS_MAX))
		return -ERANGE;
	*n = (uint64_t)d;
	if ((double)*n != d)
		return -ERANGE;
	*set = true;
	return 0;
}

static void set_detail(struct tally_usage *u, unsigned flag, uint64_t n)
{
	switch (flag) {
	case CACHE_READ:
		u->cache_read_tokens = n;
		break;
	case CACHE_WRITE:
		u->cache_write_tokens = n;
		break;
	case REASONING:
		u->reasoning_tokens = n;
		break;
	default:
		return;
	}
	u->flags |= flag;
}

/*
 * Adds one field to r. No sum can overflow: each part is at most
 * TALLY_TOKENS_MAX and no total has more than three parts.
 */
static int read_field(const json_t *usage, const struct field *f,
		      struct reading *r)
{
	const json_t *obj = usage;
	uint64_t n;
	bool set;
	int rc;

	if (f->parent && (rc = get_object(usage, f->parent, &obj)))
		return rc;
	rc = get_count(obj, f->key, &set, &n);
	if (rc || !set)
		return rc;
	if (f->role & TO_INPUT) {
		r->u.input_tokens += n;
		r->has_input |= (f->role & REPORTS) != 0;
	}
	if (f->role & TO_OUTPUT) {
		r->u.output_tokens += n;
		r->has_output |= (f->role & REPORTS) != 0;
	}
	r->any |= (f->role & (TO_INPUT | TO_OUTPUT)) != 0;
	set_detail(&r->u, f->role & (CACHE_READ | CACHE_WRITE | REASONING), n);
	return 0;
}

/* Reads every field of s from usage, which may be NULL (nothing there). */
static int read_shape(const json_t *usage, const struct shape *s,
		      struct reading *r)
{
	const struct field *f;
	int rc;

	r->no_output |= s->no_output;
	for (f = s->fields; f->key; f++) {
		rc = read_field(usage, f, r);
		if (rc)
			return rc;
	}
	return 0;
}

/* Reads s from the object at key in body. */
static int read_member(const json_t *body, const char *key,
		       const struct shape *s, struct reading *r)
{
	const json_t *usage;
	int rc;

	rc = get_object(body, key, &usage);
	if (rc)
		return rc;
	return read_shape(usage, s, r);
}

static bool is_generation(const char *object)
{
	return object && (!strncmp(object, "chat.completion", 15) ||
			  !strcmp(object, "text_completion"));
}

/*
 * Chat Completions, the Responses API and Embeddings all say "usage" but
 * name its fields differently. Only the Responses API says input_tokens; a
 * body that generated text shows it by its counters, its choices or its
 * object type; what is left is an embedding, whose output is 0 by nature.
 */
static const struct shape *openai_shape(const json_t *body, const json_t *usage)
{
	const char *object = json_string_value(member(body, "object"));

	if (member(usage, "input_tokens") || member(usage, "output_tokens") ||
	    (object && !strcmp(object, "response")))
		return &openai_responses;
	if (member(usage, "completion_tokens") || member(body, "choices") ||
	    is_generation(object))
		return &openai_chat;
	return &openai_embeddings;
}

static int parse_openai(const json_t *body, struct reading *r)
{
	const json_t *inner = member(body, "response");
	const json_t *usage;
	int rc;

	/*
	 * Responses API stream events (response.completed and the like) wrap
	 * the response object, whose usage is the one that counts.
	 */
	if (!member(body, "usage") && json_is_object(inner))
		body = inner;
	rc = get_object(body, "usage", &usage);
	if (rc)
		return rc;
	return read_shape(usage, openai_shape(body, usage), r);
}

/*
 * A message_start stream event carries its usage inside the message; a
 * message_delta event and a whole response carry it at the top.
 */
static const json_t *anthropic_body(const json_t *body)
{
	const json_t *message = member(body, "message");

	if (!member(body, "usage") && json_is_object(message))
		return message;
	return body;
}

static int parse_anthropic(const json_t *body, struct reading *r)
{
	return read_member(anthropic_body(body), "usage", &anthropic, r);
}

/*
 * Sets in dst each member of usage that one of fields reads: a counter that
 * an event repeats replaces the value an earlier event gave, and one that it
 * leaves out (or sends as null) keeps it. Only those members are kept, so
 * that dst stays small whatever the events hold.
 */
static int merge_fields(json_t *dst, const json_t *usage,
			const struct field *fields)
{
	const struct field *f;

	for (f = fields; f->key; f++) {
		const char *key = f->parent ? f->parent : f->key;
		const json_t *v = member(usage, key);

		if (v && json_object_set_new(dst, key, json_deep_copy(v)))
			return -ENOMEM;
	}
	return 0;
}

/*
 * Anthropic's stream: message_start reports the input, both cache buckets
 * and a first output count; every message_delta reports running totals
 * (cumulative, not increments) of the fields it names. The usage of the
 * call is the last value of each field, never a sum.
 */
static int merge_anthropic(struct provider_acc *acc, const json_t *event)
{
	const json_t *usage = member(anthropic_body(event), "usage");

	if (!acc->merged) {
		acc->merged = json_pack("{s:{}}", "usage");
		if (!acc->merged)
			return -ENOMEM;
	}
	return merge_fields(json_object_get(acc->merged, "usage"), usage,
			    anthropic_fields);
}

/* The last element of the array body that has key, or NULL. */
static const json_t *last_with(const json_t *body, const char *key)
{
	size_t i;

	for (i = json_array_size(body); i > 0; i--) {
		const json_t *e = json_array_get(body, i - 1);

		if (member(e, key))
			return e;
	}
	return NULL;
}

static int parse_gemini(const json_t *body, struct reading *r)
{
	/*
	 * Vertex AI's REST streaming answers with an array of responses;
	 * the last one that has usage carries the totals of the call.
	 */
	if (json_is_array(body))
		body = last_with(body, "usageMetadata");
	return read_member(body, "usageMetadata", &gemini, r);
}

static int parse_bedrock(const json_t *body, struct reading *r)
{
	const json_t *metadata = member(body, "metadata");

	/*
	 * ConverseStream reports usage once, in its metadata event; SDKs hand
	 * that event over wrapped in an object named after its type.
	 */
	if (!member(body, "usage") && json_is_object(metadata))
		body = metadata;
	return read_member(body, "usage", &bedrock, r);
}

/*
 * Streams report in their last event: v2 in message-end's delta, v1 in
 * stream-end's response.
 */
static const json_t *cohere_body(const json_t *body)
{
	const json_t *delta = member(body, "delta");
	const json_t *response = member(body, "response");

	if (member(body, "usage") || member(body, "meta"))
		return body;
	if (json_is_object(delta))
		return delta;
	if (json_is_object(response))
		return response;
	return body;
}

/*
 * Cohere v2 chat reports under "usage", v1 chat and both versions of embed
 * under "meta". Billed units win over tokens: Cohere counts the tokens it
 * adds itself as processed but does not bill them. Tokens serve only when
 * no billed units were given.
 */
static int parse_cohere(const json_t *body, struct reading *r)
{
	const bool embed = member(body, "embeddings") != NULL;
	const json_t *usage, *units;
	int rc;

	body = cohere_body(body);
	rc = get_object(body, member(body, "usage") ? "usage" : "meta", &usage);
	if (!rc)
		rc = get_object(usage, "billed_units", &units);
	if (!rc && !units)
		rc = get_object(usage, "tokens", &units);
	if (!rc)
		rc = read_shape(units, embed ? &cohere_embed : &cohere_chat, r);
	if (!rc)
		rc = read_shape(usage, &cohere_cache, r);
	return rc;
}

static int parse_ollama(const json_t *body, struct reading *r)
{
	/* Ollama's OpenAI-compatible endpoints answer in OpenAI's shape. */
	if (member(body, "usage"))
		return parse_openai(body, r);
	if (member(body, "embeddings"))
		return read_shape(body, &ollama_embed, r);
	return read_shape(body, &ollama_generate, r);
}

static int parse_aleph_alpha(const json_t *body, struct reading *r)
{
	/* The chat endpoint is OpenAI-compatible. */
	if (member(body, "usage"))
		return parse_openai(body, r);
	if (member(body, "completions") || member(body, "num_tokens_generated"))
		return read_shape(body, &aleph_completion, r);
	return read_shape(body, &aleph_prompt_only, r);
}

/*
 * In a stream, every usage report of OpenAI (the final chunk of Chat
 * Completions, the terminal event of the Responses API), Azure, Mistral,
 * Gemini (running totals in every chunk), Bedrock (the metadata event),
 * Cohere (message-end), Ollama (the done object) and Aleph Alpha is
 * complete, so the last one stands and merge is NULL. Anthropic's are not.
 */
struct provider {
	const char *type;
	int (*parse)(const json_t *body, struct reading *r);
	/* Folds a stream event that reported usage into acc. */
	int (*merge)(struct provider_acc *acc, const json_t *event);
};

static const struct provider providers[] = {
	{"openAI", parse_openai, NULL},
	{"azureOpenAI", parse_openai, NULL},
	{"openAICompatible", parse_openai, NULL},
	{"mistral", parse_openai, NULL},
	{"anthropic", parse_anthropic, merge_anthropic},
	{"googleGemini", parse_gemini, NULL},
	{"googleVertexAI", parse_gemini, NULL},
	{"googleGenAI", parse_gemini, NULL},
	{"awsBedrock", parse_bedrock, NULL},
	{"alephAlpha", parse_aleph_alpha, NULL},
	{"cohere", parse_cohere, NULL},
	{"ollama", parse_ollama, NULL},
};

const struct provider *provider_find(const char *type)
{
	size_t i;

	for (i = 0; i < sizeof(providers) / sizeof(providers[0]); i++)
		if (!strcmp(providers[i].type, type))
			return &providers[i];
	return NULL;
}

/*
 * A detail larger than the total it breaks down is dropped, not trusted:
 * the totals are what the provider billed, and tally_record() refuses a
 * usage whose details do not fit in them.
 */
static void drop_unfit_details(struct tally_usage *u)
{
	if (u->cache_read_tokens + u->cache_write_tokens > u->input_tokens) {
		u->cache_read_tokens = 0;
		u->cache_write_tokens = 0;
		u->flags &= ~(unsigned)(CACHE_READ | CACHE_WRITE);
	}
	if (u->reasoning_tokens > u->output_tokens) {
		u->reasoning_tokens = 0;
		u->flags &= ~(unsigned)REASONING;
	}
}

/* Copies the counts and flags of from to u, and none of its strings. */
static void copy_counts(struct tally_usage *u, const struct tally_usage *from)
{
	u->input_tokens = from->input_tokens;
	u->output_tokens = from->output_tokens;
	u->cache_read_tokens = from->cache_read_tokens;
	u->cache_write_tokens = from->cache_write_tokens;
	u->reasoning_tokens = from->reasoning_tokens;
	u->flags = from->flags;
}

/* Checks what r holds and, if it is a usage, copies it to u. */
static int finish(struct reading *r, struct tally_usage *u)
{
	struct tally_usage *m = &r->u;

	if (!r->any)
		return -ENODATA;
	if (m->input_tokens > TALLY_TOKENS_MAX ||
	    m->output_tokens > TALLY_TOKENS_MAX)
		return -ERANGE;
	if (!r->has_input)
		m->flags |= TALLY_USAGE_INPUT_MISSING;
	if (!r->has_output && !r->no_output)
		m->flags |= TALLY_USAGE_OUTPUT_MISSING;
	drop_unfit_details(m);
	copy_counts(u, m);
	return 0;
}

/* Reads body in p's format into the counts and flags of u. */
static int read_body(const struct provider *p, const json_t *body,
		     struct tally_usage *u)
{
	struct reading r = {0};
	int rc;

	rc = p->parse(body, &r);
	if (rc)
		return rc;
	return finish(&r, u);
}

json_t *provider_load(const char *text, size_t len)
{
	/*
	 * Every number is decoded as a double, so that an integer too large
	 * for json_int_t is a count out of range (-ERANGE) rather than a
	 * body that failed to parse.
	 */
	return json_loadb(text, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL,
			  NULL);
}

/*
 * An event is read whole first, so that one with a malformed or out of
 * range count fails here, when it comes, whatever the provider.
 */
int provider_fold(const struct provider *p, struct provider_acc *acc,
		  const json_t *event)
{
	struct tally_usage u;
	int rc;

	rc = read_body(p, event, &u);
	if (rc == -ENODATA)
		return 0;
	if (rc)
		return rc;
	if (p->merge)
		return p->merge(acc, event);
	acc->last = u;
	acc->seen = true;
	return 0;
}

int provider_result(const struct provider *p, const struct provider_acc *acc,
		    struct tally_usage *u)
{
	if (acc->merged)
		return read_body(p, acc->merged, u);
	if (!acc->seen)
		return -ENODATA;
	copy_counts(u, &acc->last);
	return 0;
}

void provider_acc_fini(struct provider_acc *acc)
{
	json_decref(acc->merged);
	acc->merged = NULL;
	acc->seen = false;
}

/*
 * The body's form decides how it is read: an SSE transcript by its first
 * line; then one JSON value, as a whole response; and what is not one JSON
 * value may still be a stream of JSON lines.
 */
int tally_parse_response(const char *provider_type, const char *body,
			 size_t len, struct tally_usage *u)
{
	const struct provider *p;
	json_t *root;
	int rc;

	if (!provider_type || !body || !u)
		return -EINVAL;
	p = provider_find(provider_type);
	if (!p)
		return -EPROTONOSUPPORT;
	if (stream_is_sse(body, len))
		return stream_parse_sse(p, body, len, u);

	root = provider_load(body, len);
	if (!root)
		return stream_parse_lines(p, body, len, u);
	rc = read_body(p, root, u);
	json_decref(root);
	return rc;
}
