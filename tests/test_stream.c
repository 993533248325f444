/*
 * test_stream.c - the usage of streamed responses, in every form.
 *
 * Every stream transcript under $TALLY_FIXTURES/providers has a row in
 * EXPECTED.md, and must give it in each form a worker may hold: the
 * transcript parsed whole as stored, its events rewritten as SSE and as
 * JSON lines (with LF, CRLF and CR line ends) and parsed whole, and its
 * events fed one at a time through tally_stream_*. The inline streams
 * cover the other events each provider documents, the framing, and every
 * error, in all those forms too.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "tally.h"

#define CR TALLY_USAGE_HAS_CACHE_READ
#define CW TALLY_USAGE_HAS_CACHE_WRITE
#define RS TALLY_USAGE_HAS_REASONING
#define IN_MISSING TALLY_USAGE_INPUT_MISSING

/* EXPECTED.md writes "not reported" as an en dash. */
#define NOT_SET "\xe2\x80\x93"

#define EVENTS_MAX 64

/* What a stream must give: every count, and the flags exactly. */
struct want {
	uint64_t input;
	uint64_t output;
	uint64_t cache_read;
	uint64_t cache_write;
	uint64_t reasoning;
	uint32_t flags;
};

/* The events of a stream: each one's payload, in order. */
struct events {
	char *e[EVENTS_MAX];
	size_t n;
};

/* The line ends every form is written with. */
static const char *const eols[] = {"\n", "\r\n", "\r"};

static void events_add(struct events *ev, const char *text, size_t len)
{
	char *e;

	assert_true(ev->n < EVENTS_MAX);
	e = test_malloc(len + 1);
	memcpy(e, text, len);
	e[len] = '\0';
	ev->e[ev->n++] = e;
}

static void events_fini(struct events *ev)
{
	size_t i;

	for (i = 0; i < ev->n; i++)
		test_free(ev->e[i]);
	ev->n = 0;
}

/*
 * The payloads of an SSE transcript (its data lines, an event ending at a
 * blank line) or of JSON lines. The fixtures end their lines in LF and
 * give each event's data in one line, which keeps this reader short.
 */
static void split_events(const char *text, bool sse, struct events *ev)
{
	const char *line = text, *end;
	size_t n;

	ev->n = 0;
	for (; *line; line = *end ? end + 1 : end) {
		end = strchr(line, '\n');
		if (!end)
			end = line + strlen(line);
		n = (size_t)(end - line);
		if (!sse && n)
			events_add(ev, line, n);
		else if (sse && !strncmp(line, "data: ", 6))
			events_add(ev, line + 6, n - 6);
	}
}

/* Appends text to the growing buffer *buf of length *len. */
static void append(char **buf, size_t *len, const char *text)
{
	size_t n = strlen(text);

	*buf = test_realloc(*buf, *len + n + 1);
	memcpy(*buf + *len, text, n + 1);
	*len += n;
}

/* The events as an SSE transcript, one data line and a blank line each. */
static char *to_sse(const struct events *ev, const char *eol, size_t *len)
{
	char *buf = NULL;
	size_t i;

	*len = 0;
	append(&buf, len, "");
	for (i = 0; i < ev->n; i++) {
		append(&buf, len, "data: ");
		append(&buf, len, ev->e[i]);
		append(&buf, len, eol);
		append(&buf, len, eol);
	}
	return buf;
}

/* The events as JSON lines; OpenAI's [DONE] is SSE only, and left out. */
static char *to_lines(const struct events *ev, const char *eol, size_t *len)
{
	char *buf = NULL;
	size_t i;

	*len = 0;
	append(&buf, len, "");
	for (i = 0; i < ev->n; i++) {
		if (!strcmp(ev->e[i], "[DONE]"))
			continue;
		append(&buf, len, ev->e[i]);
		append(&buf, len, eol);
	}
	return buf;
}

static void assert_usage(const struct tally_usage *u, const struct want *w)
{
	assert_int_equal(u->input_tokens, w->input);
	assert_int_equal(u->output_tokens, w->output);
	assert_int_equal(u->cache_read_tokens, w->cache_read);
	assert_int_equal(u->cache_write_tokens, w->cache_write);
	assert_int_equal(u->reasoning_tokens, w->reasoning);
	assert_int_equal(u->flags, w->flags);
}

/* Parses body whole; err 0 checks the usage, else that *u is unchanged. */
static void check_body(const char *type, const char *body, size_t len, int err,
		       const struct want *w)
{
	struct tally_usage u, before;

	memset(&before, 0x5a, sizeof(before));
	u = before;
	assert_int_equal(tally_parse_response(type, body, len, &u), err);
	if (err)
		assert_memory_equal(&u, &before, sizeof(u));
	else
		assert_usage(&u, w);
}

/*
 * Feeds the events one at a time. Each is copied before a stretch of
 * bytes that would change it, to prove that nothing past len is read.
 */
static void check_feed(const char *type, const struct events *ev, int err,
		       const struct want *w)
{
	struct tally_stream *s;
	struct tally_usage u, before;
	int rc = 0;
	size_t i;

	assert_int_equal(tally_stream_begin(&s, type), 0);
	for (i = 0; i < ev->n; i++) {
		size_t len = strlen(ev->e[i]);
		char *copy = test_malloc(len + 8);
		int frc;

		memcpy(copy, ev->e[i], len);
		memcpy(copy + len, "}]\"x{[:", 8);
		frc = tally_stream_feed(s, copy, len);
		test_free(copy);
		/* After the first error, every call gives that error. */
		if (rc)
			assert_int_equal(frc, rc);
		rc = frc;
	}
	memset(&before, 0x5a, sizeof(before));
	u = before;
	assert_int_equal(tally_stream_end(s, &u), err);
	if (err)
		assert_memory_equal(&u, &before, sizeof(u));
	else
		assert_usage(&u, w);
}

/* The events in every form: SSE and JSON lines with each line end, fed. */
static void check_forms(const char *type, const struct events *ev, int err,
			const struct want *w)
{
	size_t i, len;
	char *body;

	for (i = 0; i < sizeof(eols) / sizeof(eols[0]); i++) {
		body = to_sse(ev, eols[i], &len);
		check_body(type, body, len, err, w);
		test_free(body);
		body = to_lines(ev, eols[i], &len);
		check_body(type, body, len, err, w);
		test_free(body);
	}
	check_feed(type, ev, err, w);
}

/* Reads a fixture into a buffer from the test allocator. */
static char *load(const char *name, size_t *len)
{
	char rel[256];
	char *raw, *buf;

	assert_true(snprintf(rel, sizeof(rel), "providers/%s", name) <
		    (int)sizeof(rel));
	raw = harness_fixture(rel, len);
	assert_non_null(raw);
	buf = test_malloc(*len + 1);
	memcpy(buf, raw, *len + 1);
	free(raw);
	return buf;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);

	return n >= k && !strcmp(s + n - k, suffix);
}

static void check_fixture(const char *name, const char *type,
			  const struct want *w)
{
	struct events ev;
	size_t len;
	char *body = load(name, &len);

	check_body(type, body, len, 0, w);
	split_events(body, ends_with(name, ".sse"), &ev);
	assert_true(ev.n > 1);
	check_forms(type, &ev, 0, w);
	events_fini(&ev);
	test_free(body);
}

/* The usage a fixture gives, parsed whole. */
static struct tally_usage parse_fixture(const char *name, const char *type)
{
	struct tally_usage u;
	size_t len;
	char *body = load(name, &len);

	memset(&u, 0, sizeof(u));
	assert_int_equal(tally_parse_response(type, body, len, &u), 0);
	test_free(body);
	return u;
}

/* An inline stream, given as its events' payloads, NULL-terminated. */
static void check_stream(const char *type, const char *const *events, int err,
			 const struct want *w)
{
	struct events ev = {.n = 0};

	for (; *events; events++)
		events_add(&ev, *events, strlen(*events));
	check_forms(type, &ev, err, w);
	events_fini(&ev);
}

/* The payloads of an inline stream's events, in order. */
#define STREAM(...) ((const char *const[]){__VA_ARGS__, NULL})
#define CHECK_STREAM(type, events, ...) \
	check_stream(type, events, 0, &(struct want){__VA_ARGS__})
#define CHECK_STREAM_ERROR(type, events, err) \
	check_stream(type, events, err, NULL)

/* One test per fixture, named by what it holds. */

static void test_stream_anthropic_fixture(void **state)
{
	(void)state;
	check_fixture("anthropic-messages-stream.sse", "anthropic",
		      &(struct want){.input = 5158,
				     .output = 512,
				     .cache_read = 3900,
				     .cache_write = 1200,
				     .flags = CR | CW});
}

static void test_stream_openai_chat_fixture(void **state)
{
	(void)state;
	check_fixture("openai-chat-stream.sse", "openAI",
		      &(struct want){.input = 1250,
				     .output = 310,
				     .cache_read = 1024,
				     .reasoning = 192,
				     .flags = CR | RS});
}

static void test_stream_openai_responses_fixture(void **state)
{
	(void)state;
	check_fixture("openai-responses-stream.sse", "openAI",
		      &(struct want){.input = 2006,
				     .output = 740,
				     .cache_read = 1920,
				     .reasoning = 512,
				     .flags = CR | RS});
}

static void test_stream_azure_fixture(void **state)
{
	(void)state;
	check_fixture("azure-openai-chat-stream.sse", "azureOpenAI",
		      &(struct want){.input = 420,
				     .output = 96,
				     .cache_read = 256,
				     .reasoning = 64,
				     .flags = CR | RS});
}

static void test_stream_gemini_fixture(void **state)
{
	(void)state;
	check_fixture("gemini-stream.sse", "googleGemini",
		      &(struct want){.input = 5320,
				     .output = 830,
				     .cache_read = 4096,
				     .reasoning = 650,
				     .flags = CR | RS});
}

static void test_stream_bedrock_fixture(void **state)
{
	(void)state;
	check_fixture("bedrock-converse-stream.jsonl", "awsBedrock",
		      &(struct want){.input = 3435,
				     .output = 410,
				     .cache_read = 2800,
				     .cache_write = 600,
				     .flags = CR | CW});
}

static void test_stream_cohere_fixture(void **state)
{
	(void)state;
	check_fixture("cohere-chat-v2-stream.sse", "cohere",
		      &(struct want){.input = 210, .output = 64, .flags = CR});
}

static void test_stream_mistral_fixture(void **state)
{
	(void)state;
	check_fixture("mistral-chat-stream.sse", "mistral",
		      &(struct want){.input = 17, .output = 9, .flags = 0});
}

static void test_stream_ollama_fixture(void **state)
{
	(void)state;
	check_fixture("ollama-chat-stream.jsonl", "ollama",
		      &(struct want){.input = 812, .output = 143, .flags = 0});
}

static char *trim(char *s)
{
	char *end;

	while (*s == ' ')
		s++;
	end = s + strlen(s);
	while (end > s && end[-1] == ' ')
		*--end = '\0';
	return s;
}

/* A detail cell: NOT_SET, or a count that sets flag in *flags. */
static uint64_t detail_cell(const char *cell, uint32_t flag, uint32_t *flags)
{
	if (!strcmp(cell, NOT_SET))
		return 0;
	*flags |= flag;
	return strtoull(cell, NULL, 10);
}

/* Checks one table row; returns 1 when it was a stream fixture's row. */
static int check_table_row(char *line)
{
	char *cell[8], *save = NULL, *tok;
	struct want w = {0};
	size_t n = 0;

	if (strncmp(line, "| ", 2))
		return 0;
	for (tok = strtok_r(line, "|", &save); tok && n < 8;
	     tok = strtok_r(NULL, "|", &save))
		cell[n++] = trim(tok);
	if (n < 7 ||
	    !(ends_with(cell[0], ".sse") || ends_with(cell[0], ".jsonl")))
		return 0;
	w.input = strtoull(cell[2], NULL, 10);
	w.output = strtoull(cell[3], NULL, 10);
	w.cache_read = detail_cell(cell[4], CR, &w.flags);
	w.cache_write = detail_cell(cell[5], CW, &w.flags);
	w.reasoning = detail_cell(cell[6], RS, &w.flags);
	check_fixture(cell[0], cell[1], &w);
	return 1;
}

/* Both tables of EXPECTED.md, so that a stream row added there is tested. */
static void test_stream_expected_table(void **state)
{
	char *save = NULL, *line, *table;
	size_t len;
	int rows = 0;

	(void)state;
	table = load("EXPECTED.md", &len);
	for (line = strtok_r(table, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save))
		rows += check_table_row(line);
	test_free(table);
	assert_true(rows >= 9);
}

/* A stream reports the same call as its whole response. */
static void test_stream_matches_whole_response(void **state)
{
	static const char *const pairs[][3] = {
		{"openai-chat-stream.sse", "openai-chat.json", "openAI"},
		{"gemini-stream.sse", "gemini-generate-content.json",
		 "googleGemini"},
		{"bedrock-converse-stream.jsonl", "bedrock-converse.json",
		 "awsBedrock"},
		{"cohere-chat-v2-stream.sse", "cohere-chat-v2.json", "cohere"},
		{"ollama-chat-stream.jsonl", "ollama-chat.json", "ollama"},
	};
	struct tally_usage a, b;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		a = parse_fixture(pairs[i][0], pairs[i][2]);
		b = parse_fixture(pairs[i][1], pairs[i][2]);
		assert_memory_equal(&a, &b, sizeof(a));
	}

	/* The whole Anthropic response also breaks out its thinking. */
	a = parse_fixture("anthropic-messages-stream.sse", "anthropic");
	b = parse_fixture("anthropic-messages.json", "anthropic");
	assert_int_equal(a.input_tokens, b.input_tokens);
	assert_int_equal(a.output_tokens, b.output_tokens);
	assert_int_equal(a.cache_read_tokens, b.cache_read_tokens);
	assert_int_equal(a.cache_write_tokens, b.cache_write_tokens);
}

/* Each classic mistake, named by the number it would give. */
static void test_stream_traps(void **state)
{
	struct tally_usage u;

	(void)state;
	/* Anthropic's message_delta counts are cumulative. */
	u = parse_fixture("anthropic-messages-stream.sse", "anthropic");
	assert_int_not_equal(u.output_tokens, 1 + 240 + 512);
	assert_int_not_equal(u.output_tokens, 240 + 512);
	assert_int_equal(u.output_tokens, 512);
	/* message_start and the last message_delta both give the cache. */
	assert_int_not_equal(u.input_tokens, 58 + 2 * (1200 + 3900));
	assert_int_not_equal(u.input_tokens, 2 * (58 + 1200 + 3900));
	assert_int_not_equal(u.input_tokens, 58);
	assert_int_equal(u.input_tokens, 58 + 1200 + 3900);
	assert_int_equal(u.cache_read_tokens, 3900);
	assert_int_equal(u.cache_write_tokens, 1200);

	/* OpenAI's cached tokens are inside prompt_tokens already. */
	u = parse_fixture("openai-chat-stream.sse", "openAI");
	assert_int_not_equal(u.input_tokens, 1250 + 1024);
	assert_int_equal(u.input_tokens, 1250);

	/* Gemini: thoughts are output; the last chunk, not the first or all. */
	u = parse_fixture("gemini-stream.sse", "googleGemini");
	assert_int_not_equal(u.output_tokens, 180);
	assert_int_not_equal(u.output_tokens, 12 + 650);
	assert_int_not_equal(u.output_tokens, 12 + 95 + 180 + 3 * 650);
	assert_int_not_equal(u.input_tokens, 3 * (5200 + 120));
	assert_int_not_equal(u.input_tokens, 5200 + 4096 + 120);
	assert_int_equal(u.output_tokens, 180 + 650);
	assert_int_equal(u.input_tokens, 5200 + 120);
	assert_int_equal(u.reasoning_tokens, 650);

	/* Cohere bills fewer tokens than it processes. */
	u = parse_fixture("cohere-chat-v2-stream.sse", "cohere");
	assert_int_not_equal(u.input_tokens, 1830);
	assert_int_equal(u.input_tokens, 210);

	/* Bedrock keeps both cache buckets out of inputTokens. */
	u = parse_fixture("bedrock-converse-stream.jsonl", "awsBedrock");
	assert_int_not_equal(u.input_tokens, 35);
	assert_int_equal(u.input_tokens, 35 + 2800 + 600);
}

/* OpenAI family. */

static void test_stream_openai_without_include_usage(void **state)
{
	(void)state;
	CHECK_STREAM_ERROR(
		"openAI",
		STREAM("{\"object\":\"chat.completion.chunk\",\"choices\":"
		       "[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}",
		       "{\"object\":\"chat.completion.chunk\",\"choices\":"
		       "[{\"index\":0,\"delta\":{},\"finish_reason\":"
		       "\"stop\"}]}",
		       "[DONE]"),
		-ENODATA);
}

/* Servers that repeat running totals in every chunk: the last stands. */
static void test_stream_openai_compatible_running_totals(void **state)
{
	(void)state;
	CHECK_STREAM("openAICompatible",
		     STREAM("{\"choices\":[{\"delta\":{\"content\":\"a\"}}],"
			    "\"usage\":{\"prompt_tokens\":50,"
			    "\"completion_tokens\":1,\"total_tokens\":51}}",
			    "{\"choices\":[{\"delta\":{\"content\":\"b\"}}],"
			    "\"usage\":{\"prompt_tokens\":50,"
			    "\"completion_tokens\":2,\"total_tokens\":52}}",
			    "{\"choices\":[{\"delta\":{},\"finish_reason\":"
			    "\"stop\"}],\"usage\":{\"prompt_tokens\":50,"
			    "\"completion_tokens\":3,\"total_tokens\":53}}"),
		     .input = 50, .output = 3, .flags = 0);
}

static void test_stream_responses_incomplete(void **state)
{
	(void)state;
	CHECK_STREAM(
		"openAI",
		STREAM("{\"type\":\"response.created\",\"response\":"
		       "{\"object\":\"response\",\"status\":"
		       "\"in_progress\",\"usage\":null}}",
		       "{\"type\":\"response.output_text.delta\","
		       "\"delta\":\"x\"}",
		       "{\"type\":\"response.incomplete\",\"response\":"
		       "{\"object\":\"response\",\"status\":"
		       "\"incomplete\",\"incomplete_details\":{\"reason\":"
		       "\"max_output_tokens\"},\"usage\":{\"input_tokens\":"
		       "900,\"input_tokens_details\":{\"cached_tokens\":0},"
		       "\"output_tokens\":4096,\"output_tokens_details\":"
		       "{\"reasoning_tokens\":4000},\"total_tokens\":"
		       "4996}}}"),
		.input = 900, .output = 4096, .reasoning = 4000,
		.flags = CR | RS);
}

static void test_stream_responses_failed(void **state)
{
	(void)state;
	CHECK_STREAM("openAI",
		     STREAM("{\"type\":\"response.in_progress\",\"response\":"
			    "{\"object\":\"response\",\"usage\":null}}",
			    "{\"type\":\"response.failed\",\"response\":"
			    "{\"object\":\"response\",\"status\":\"failed\","
			    "\"error\":{\"code\":\"server_error\"},\"usage\":"
			    "{\"input_tokens\":300,\"output_tokens\":12,"
			    "\"total_tokens\":312}}}"),
		     .input = 300, .output = 12, .flags = 0);
}

static void test_stream_responses_error_has_no_data(void **state)
{
	(void)state;
	CHECK_STREAM_ERROR(
		"openAI",
		STREAM("{\"type\":\"response.created\",\"response\":"
		       "{\"object\":\"response\",\"usage\":null}}",
		       "{\"type\":\"error\",\"code\":\"server_error\","
		       "\"message\":\"stopped\"}"),
		-ENODATA);
}

/* Azure's content filter may report after the last content chunk. */
static void test_stream_azure_filter_chunks(void **state)
{
	(void)state;
	CHECK_STREAM("azureOpenAI",
		     STREAM("{\"choices\":[{\"delta\":{\"content\":\"ok\"},"
			    "\"index\":0}],\"usage\":null}",
			    "{\"choices\":[],\"usage\":{\"prompt_tokens\":30,"
			    "\"completion_tokens\":7,\"total_tokens\":37}}",
			    "{\"choices\":[{\"index\":0,\"finish_reason\":null,"
			    "\"content_filter_offsets\":{\"start_offset\":0,"
			    "\"end_offset\":2},\"content_filter_results\":"
			    "{\"hate\":{\"filtered\":false}}}],\"id\":\"\"}",
			    "{\"choices\":[],\"prompt_filter_results\":[]}",
			    "[DONE]"),
		     .input = 30, .output = 7, .flags = 0);
}

/* Anthropic. */

/* Older streams: message_delta names only output_tokens. */
static void test_stream_anthropic_delta_with_output_only(void **state)
{
	(void)state;
	CHECK_STREAM(
		"anthropic",
		STREAM("{\"type\":\"message_start\",\"message\":{\"id\":"
		       "\"msg_1\",\"usage\":{\"input_tokens\":20,"
		       "\"output_tokens\":1}}}",
		       "{\"type\":\"ping\"}",
		       "{\"type\":\"message_delta\",\"delta\":"
		       "{\"stop_reason\":\"end_turn\"},\"usage\":"
		       "{\"output_tokens\":15}}",
		       "{\"type\":\"message_stop\","
		       "\"amazon-bedrock-invocationMetrics\":"
		       "{\"inputTokenCount\":20,\"outputTokenCount\":15}}"),
		.input = 20, .output = 15, .flags = 0);
}

/* A null in a delta is not a report: the earlier value stays. */
static void test_stream_anthropic_null_keeps_value(void **state)
{
	(void)state;
	CHECK_STREAM(
		"anthropic",
		STREAM("{\"type\":\"message_start\",\"message\":{\"usage\":"
		       "{\"input_tokens\":20,\"cache_read_input_tokens\":"
		       "100,\"output_tokens\":1}}}",
		       "{\"type\":\"message_delta\",\"usage\":"
		       "{\"input_tokens\":null,"
		       "\"cache_read_input_tokens\":null,"
		       "\"output_tokens\":30}}"),
		.input = 120, .output = 30, .cache_read = 100, .flags = CR);
}

/* Server tools raise the input count during the stream: the last wins. */
static void test_stream_anthropic_delta_replaces_input(void **state)
{
	(void)state;
	CHECK_STREAM(
		"anthropic",
		STREAM("{\"type\":\"message_start\",\"message\":{\"usage\":"
		       "{\"input_tokens\":20,\"cache_creation_input_tokens\":"
		       "0,\"output_tokens\":1}}}",
		       "{\"type\":\"message_delta\",\"usage\":"
		       "{\"input_tokens\":480,\"output_tokens\":40}}",
		       "{\"type\":\"message_delta\",\"usage\":"
		       "{\"input_tokens\":480,\"output_tokens\":90}}"),
		.input = 480, .output = 90, .flags = CW);
}

static void test_stream_anthropic_thinking_details(void **state)
{
	(void)state;
	CHECK_STREAM(
		"anthropic",
		STREAM("{\"type\":\"message_start\",\"message\":{\"usage\":"
		       "{\"input_tokens\":9,\"output_tokens\":1}}}",
		       "{\"type\":\"message_delta\",\"usage\":"
		       "{\"output_tokens\":700,\"output_tokens_details\":"
		       "{\"thinking_tokens\":450}}}"),
		.input = 9, .output = 700, .reasoning = 450, .flags = RS);
}

static void test_stream_anthropic_without_usage(void **state)
{
	(void)state;
	CHECK_STREAM_ERROR("anthropic",
			   STREAM("{\"type\":\"ping\"}",
				  "{\"type\":\"content_block_delta\","
				  "\"index\":0}",
				  "{\"type\":\"message_stop\"}"),
			   -ENODATA);
}

/* Fields that each fit, from different events, can add up past the max. */
static void test_stream_anthropic_sum_too_large(void **state)
{
	(void)state;
	CHECK_STREAM_ERROR(
		"anthropic",
		STREAM("{\"type\":\"message_start\",\"message\":{\"usage\":"
		       "{\"input_tokens\":600000000,\"output_tokens\":1}}}",
		       "{\"type\":\"message_delta\",\"usage\":"
		       "{\"cache_read_input_tokens\":500000000,"
		       "\"output_tokens\":2}}"),
		-ERANGE);
}

/* Google. */

/* A closing chunk without usageMetadata leaves the last totals. */
static void test_stream_gemini_last_chunk_without_usage(void **state)
{
	(void)state;
	CHECK_STREAM(
		"googleVertexAI",
		STREAM("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":"
		       "\"a\"}]}}],\"usageMetadata\":{\"promptTokenCount\":"
		       "10,\"candidatesTokenCount\":2,\"totalTokenCount\":"
		       "12}}",
		       "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":"
		       "\"b\"}]}}],\"usageMetadata\":{\"promptTokenCount\":"
		       "10,\"candidatesTokenCount\":5,\"totalTokenCount\":"
		       "15}}",
		       "{\"candidates\":[{\"finishReason\":\"STOP\"}]}"),
		.input = 10, .output = 5, .flags = 0);
}

static void test_stream_gemini_without_usage(void **state)
{
	(void)state;
	CHECK_STREAM_ERROR("googleGenAI",
			   STREAM("{\"candidates\":[{\"content\":{\"parts\":"
				  "[{\"text\":\"a\"}]}}]}",
				  "{\"candidates\":[{\"finishReason\":"
				  "\"STOP\"}]}"),
			   -ENODATA);
}

/* Bedrock. */

/* Some gateways pass the event type as the SSE event name. */
static void test_stream_bedrock_bare_metadata(void **state)
{
	const char *body = "event: messageStart\n"
			   "data: {\"role\":\"assistant\"}\n\n"
			   "event: metadata\n"
			   "data: {\"usage\":{\"inputTokens\":125,"
			   "\"outputTokens\":60,\"totalTokens\":185},"
			   "\"metrics\":{\"latencyMs\":420}}\n\n";

	(void)state;
	check_body("awsBedrock", body, strlen(body), 0,
		   &(struct want){.input = 125, .output = 60, .flags = 0});
}

static void test_stream_bedrock_without_metadata(void **state)
{
	(void)state;
	CHECK_STREAM_ERROR(
		"awsBedrock",
		STREAM("{\"messageStart\":{\"role\":\"assistant\"}}",
		       "{\"messageStop\":{\"stopReason\":\"end_turn\"}}"),
		-ENODATA);
}

/* Cohere. */

static void test_stream_cohere_v1_stream_end(void **state)
{
	(void)state;
	CHECK_STREAM(
		"cohere",
		STREAM("{\"is_finished\":false,\"event_type\":"
		       "\"stream-start\",\"generation_id\":\"g1\"}",
		       "{\"is_finished\":false,\"event_type\":"
		       "\"text-generation\",\"text\":\"Hi\"}",
		       "{\"is_finished\":true,\"event_type\":\"stream-end\","
		       "\"finish_reason\":\"COMPLETE\",\"response\":"
		       "{\"text\":\"Hi\",\"meta\":{\"api_version\":"
		       "{\"version\":\"1\"},\"billed_units\":"
		       "{\"input_tokens\":57,\"output_tokens\":12},"
		       "\"tokens\":{\"input_tokens\":120,"
		       "\"output_tokens\":12}}}}"),
		.input = 57, .output = 12, .flags = 0);
}

static void test_stream_cohere_without_message_end(void **state)
{
	(void)state;
	CHECK_STREAM_ERROR("cohere",
			   STREAM("{\"type\":\"message-start\",\"id\":\"c1\"}",
				  "{\"type\":\"content-delta\",\"index\":0,"
				  "\"delta\":{\"message\":{\"content\":"
				  "{\"text\":\"x\"}}}}"),
			   -ENODATA);
}

/* Ollama. */

static void test_stream_ollama_generate(void **state)
{
	(void)state;
	CHECK_STREAM("ollama",
		     STREAM("{\"model\":\"llama3.2\",\"response\":\"The\","
			    "\"done\":false}",
			    "{\"model\":\"llama3.2\",\"response\":\"\","
			    "\"done\":true,\"context\":[1,2,3],"
			    "\"prompt_eval_count\":26,\"eval_count\":290}"),
		     .input = 26, .output = 290, .flags = 0);
}

/* A cached prompt leaves prompt_eval_count out: missing, not 0. */
static void test_stream_ollama_missing_prompt_eval_count(void **state)
{
	(void)state;
	CHECK_STREAM("ollama",
		     STREAM("{\"message\":{\"content\":\"a\"},\"done\":false}",
			    "{\"message\":{\"content\":\"\"},\"done\":true,"
			    "\"eval_count\":143}"),
		     .input = 0, .output = 143, .flags = IN_MISSING);
}

static void test_stream_ollama_cut_short(void **state)
{
	(void)state;
	CHECK_STREAM_ERROR("ollama",
			   STREAM("{\"message\":{\"content\":\"a\"},"
				  "\"done\":false}",
				  "{\"message\":{\"content\":\"b\"},"
				  "\"done\":false}"),
			   -ENODATA);
}

/* Aleph Alpha. */

static void test_stream_aleph_alpha_completion_summary(void **state)
{
	(void)state;
	CHECK_STREAM("alephAlpha",
		     STREAM("{\"type\":\"stream_chunk\",\"index\":0,"
			    "\"completion\":\" an apple\"}",
			    "{\"type\":\"stream_summary\",\"index\":0,"
			    "\"finish_reason\":\"maximum_tokens\"}",
			    "{\"type\":\"completion_summary\","
			    "\"num_tokens_prompt_total\":5,"
			    "\"num_tokens_generated\":7}"),
		     .input = 5, .output = 7, .flags = 0);
}

/* SSE framing. */

#define CHECK_ERROR(type, body, err) \
	check_body(type, body, strlen(body), err, NULL)

static void check_sse(const char *body, uint64_t input, uint64_t output)
{
	check_body("openAI", body, strlen(body), 0,
		   &(struct want){.input = input, .output = output});
}

#define USAGE_3_4 "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}"

static void test_stream_sse_comments_and_other_fields(void **state)
{
	(void)state;
	check_sse(": keep-alive\n\n"
		  "retry: 3000\n"
		  "id: 7\n"
		  "event: chunk\n"
		  "data: " USAGE_3_4 "\n\n"
		  "event: ping\n\n"
		  ":\n\n",
		  3, 4);
	check_sse(":first a comment\ndata: " USAGE_3_4 "\n\n", 3, 4);
	check_sse("event: x\ndata: " USAGE_3_4 "\n\n", 3, 4);
	check_sse("id: 1\ndata: " USAGE_3_4 "\n\n", 3, 4);
}

/* An event's data lines are joined by LF into one payload. */
static void test_stream_sse_multiline_data(void **state)
{
	(void)state;
	check_sse("data: {\"usage\":\n"
		  "data: {\"prompt_tokens\":3,\n"
		  "data:\"completion_tokens\":4}}\n\n",
		  3, 4);
}

static void test_stream_sse_without_space_or_last_blank_line(void **state)
{
	(void)state;
	check_sse("data:" USAGE_3_4 "\n\n", 3, 4);
	check_sse("data: " USAGE_3_4 "\n", 3, 4);
	check_sse("data: " USAGE_3_4, 3, 4);
	check_sse("data: {\"usage\":null}\n\ndata: " USAGE_3_4, 3, 4);
}

static void test_stream_sse_bom_and_leading_blank_lines(void **state)
{
	(void)state;
	check_sse("\xef\xbb\xbf"
		  "data: " USAGE_3_4 "\n\n",
		  3, 4);
	check_sse("\n\r\n \t\ndata: " USAGE_3_4 "\n\n", 3, 4);
}

static void test_stream_sse_errors(void **state)
{
	(void)state;
	/* A payload that is not JSON, even after the usage. */
	CHECK_ERROR("openAI", "data: hello\n\n", -EBADMSG);
	CHECK_ERROR("openAI", "data: " USAGE_3_4 "\n\ndata: {\"a\":\n\n",
		    -EBADMSG);
	/* Two payloads in one event are not one JSON value. */
	CHECK_ERROR("openAI", "data: {}\ndata: {}\n\n", -EBADMSG);
	CHECK_ERROR("openAI",
		    "data: {\"usage\":{\"prompt_tokens\":-3}}\n\n"
		    "data: " USAGE_3_4 "\n\n",
		    -ERANGE);
	CHECK_ERROR("openAI", "data: [DONE]\n\n", -ENODATA);
	CHECK_ERROR("openAI", ": nothing\n\n", -ENODATA);
	CHECK_ERROR("openAI", "event: ping\n\n", -ENODATA);
	/* A field name must start its line; this is no SSE, nor JSON. */
	CHECK_ERROR("openAI", "  data: " USAGE_3_4 "\n\n", -EBADMSG);
	/* The provider is checked first, whatever the form. */
	CHECK_ERROR("openai", "data: " USAGE_3_4 "\n\n", -EPROTONOSUPPORT);
}

/* JSON lines framing. */

static void test_stream_json_lines_framing(void **state)
{
	const char *body = "\n{\"usage\":null}\r\n\r\n  " USAGE_3_4 "  \n\n";

	(void)state;
	check_body("openAI", body, strlen(body), 0,
		   &(struct want){.input = 3, .output = 4});
}

static void test_stream_json_lines_errors(void **state)
{
	const char *two = "{\"usage\":null} " USAGE_3_4 "\n{}\n";
	const char *bad = "{\"usage\":null}\n" USAGE_3_4 "\nnope\n";

	(void)state;
	CHECK_ERROR("openAI", two, -EBADMSG);
	CHECK_ERROR("openAI", bad, -EBADMSG);
	CHECK_ERROR("openAI", "{}\n{}\n", -ENODATA);
	CHECK_ERROR("openAI", " \n\t\r\n", -EBADMSG);
}

/* A single JSON body spread over lines is still one body. */
static void test_stream_pretty_single_body(void **state)
{
	const char *body = "{\n  \"usage\": {\n    \"prompt_tokens\": 3,\n"
			   "    \"completion_tokens\": 4\n  }\n}\n";

	(void)state;
	check_body("openAI", body, strlen(body), 0,
		   &(struct want){.input = 3, .output = 4});
}

/* The incremental API. */

static void test_stream_begin_errors(void **state)
{
	struct tally_stream *s = (struct tally_stream *)&s;

	(void)state;
	assert_int_equal(tally_stream_begin(NULL, "openAI"), -EINVAL);
	assert_int_equal(tally_stream_begin(&s, NULL), -EINVAL);
	assert_null(s);
	s = (struct tally_stream *)&s;
	assert_int_equal(tally_stream_begin(&s, "OpenAI"), -EPROTONOSUPPORT);
	assert_null(s);
	assert_int_equal(tally_stream_begin(&s, ""), -EPROTONOSUPPORT);
	assert_null(s);
}

static void test_stream_null_arguments(void **state)
{
	struct tally_stream *s;
	struct tally_usage u;

	(void)state;
	assert_int_equal(tally_stream_feed(NULL, "{}", 2), -EINVAL);
	assert_int_equal(tally_stream_end(NULL, &u), -EINVAL);
	tally_stream_free(NULL);

	assert_int_equal(tally_stream_begin(&s, "openAI"), 0);
	assert_int_equal(tally_stream_feed(s, NULL, 0), -EINVAL);
	/* A NULL event is the caller's slip, not the stream's: not kept. */
	assert_int_equal(tally_stream_feed(s, USAGE_3_4, strlen(USAGE_3_4)), 0);
	/* end frees the stream even when u is NULL; ASan sees a leak. */
	assert_int_equal(tally_stream_end(s, NULL), -EINVAL);
}

/* [DONE] and empty payloads are accepted and ignored. */
static void test_stream_feed_ignores_done_and_blank(void **state)
{
	struct tally_stream *s;
	struct tally_usage u;

	(void)state;
	assert_int_equal(tally_stream_begin(&s, "openAI"), 0);
	assert_int_equal(tally_stream_feed(s, "", 0), 0);
	assert_int_equal(tally_stream_feed(s, " \r\n", 3), 0);
	assert_int_equal(tally_stream_feed(s, USAGE_3_4, strlen(USAGE_3_4)), 0);
	assert_int_equal(tally_stream_feed(s, "[DONE]", 6), 0);
	assert_int_equal(tally_stream_feed(s, " [DONE]\n", 8), 0);
	memset(&u, 0, sizeof(u));
	assert_int_equal(tally_stream_end(s, &u), 0);
	assert_int_equal(u.input_tokens, 3);
	assert_int_equal(u.output_tokens, 4);
}

/* After an event that could not be read, the stream's usage is unknown. */
static void test_stream_feed_error_is_kept(void **state)
{
	struct tally_stream *s;
	struct tally_usage u;

	(void)state;
	assert_int_equal(tally_stream_begin(&s, "openAI"), 0);
	assert_int_equal(tally_stream_feed(s, USAGE_3_4, strlen(USAGE_3_4)), 0);
	assert_int_equal(tally_stream_feed(s, "{\"usage\":", 9), -EBADMSG);
	assert_int_equal(tally_stream_feed(s, USAGE_3_4, strlen(USAGE_3_4)),
			 -EBADMSG);
	assert_int_equal(tally_stream_end(s, &u), -EBADMSG);

	assert_int_equal(tally_stream_begin(&s, "googleGemini"), 0);
	assert_int_equal(tally_stream_feed(
				 s,
				 "{\"usageMetadata\":{\"promptTokenCount\""
				 ":1e10}}",
				 strlen("{\"usageMetadata\":{\"promptTokenCount"
					"\":1e10}}")),
			 -ERANGE);
	assert_int_equal(tally_stream_end(s, &u), -ERANGE);

	assert_int_equal(tally_stream_begin(&s, "anthropic"), 0);
	assert_int_equal(tally_stream_feed(s,
					   "{\"usage\":{\"output_tokens\""
					   ":\"5\"}}",
					   strlen("{\"usage\":{\"output_tokens"
						  "\":\"5\"}}")),
			 -EBADMSG);
	tally_stream_free(s);
}

static void test_stream_end_without_events(void **state)
{
	struct tally_stream *s;
	struct tally_usage u, before;

	(void)state;
	memset(&before, 0x5a, sizeof(before));
	u = before;
	assert_int_equal(tally_stream_begin(&s, "anthropic"), 0);
	assert_int_equal(tally_stream_end(s, &u), -ENODATA);
	assert_memory_equal(&u, &before, sizeof(u));
}

/* The strings are the caller's; the flags are replaced as a whole. */
static void test_stream_end_leaves_strings(void **state)
{
	struct tally_stream *s;
	struct tally_usage u = {
		.session_id = "s",
		.llm_reference_id = "l",
		.provider_type = "anthropic",
		.reasoning_tokens = 99,
		.flags = TALLY_USAGE_ESTIMATED | RS,
	};
	const char *e = "{\"type\":\"message_delta\",\"usage\":"
			"{\"input_tokens\":4,\"output_tokens\":5}}";

	(void)state;
	assert_int_equal(tally_stream_begin(&s, u.provider_type), 0);
	assert_int_equal(tally_stream_feed(s, e, strlen(e)), 0);
	assert_int_equal(tally_stream_end(s, &u), 0);
	assert_string_equal(u.session_id, "s");
	assert_string_equal(u.llm_reference_id, "l");
	assert_int_equal(u.input_tokens, 4);
	assert_int_equal(u.output_tokens, 5);
	assert_int_equal(u.reasoning_tokens, 0);
	assert_int_equal(u.flags, 0);
}

/* Abandoning a stream half-way frees what it merged (ASan checks). */
static void test_stream_free_half_way(void **state)
{
	struct tally_stream *s;
	const char *e = "{\"type\":\"message_start\",\"message\":{\"usage\":"
			"{\"input_tokens\":4,\"output_tokens\":1}}}";

	(void)state;
	assert_int_equal(tally_stream_begin(&s, "anthropic"), 0);
	assert_int_equal(tally_stream_feed(s, e, strlen(e)), 0);
	tally_stream_free(s);
}

/* tally_record_response() takes a transcript; no daemon is needed. */
static void test_stream_record_response(void **state)
{
	struct tally_options opts = {.close_timeout_ms = 1};
	struct tally_usage ids = harness_usage("sess-1", "llm-1", 0, 0);
	struct harness h;
	struct tally *t;
	size_t len;
	char *body;

	(void)state;
	harness_init(&h);
	opts.dir = h.dir;
	assert_int_equal(tally_open_ex(&t, &opts), 0);
	ids.provider_type = "anthropic";
	body = load("anthropic-messages-stream.sse", &len);
	assert_int_equal(tally_record_response(t, &ids, body, len), 0);
	test_free(body);
	assert_int_equal(tally_pending(t), 1);

	ids.provider_type = "openAI";
	assert_int_equal(tally_record_response(t, &ids, "data: [DONE]\n\n", 14),
			 -ENODATA);
	assert_int_equal(tally_pending(t), 1);
	tally_close(t);
	harness_fini(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stream_anthropic_fixture),
		cmocka_unit_test(test_stream_openai_chat_fixture),
		cmocka_unit_test(test_stream_openai_responses_fixture),
		cmocka_unit_test(test_stream_azure_fixture),
		cmocka_unit_test(test_stream_gemini_fixture),
		cmocka_unit_test(test_stream_bedrock_fixture),
		cmocka_unit_test(test_stream_cohere_fixture),
		cmocka_unit_test(test_stream_mistral_fixture),
		cmocka_unit_test(test_stream_ollama_fixture),
		cmocka_unit_test(test_stream_expected_table),
		cmocka_unit_test(test_stream_matches_whole_response),
		cmocka_unit_test(test_stream_traps),
		cmocka_unit_test(test_stream_openai_without_include_usage),
		cmocka_unit_test(test_stream_openai_compatible_running_totals),
		cmocka_unit_test(test_stream_responses_incomplete),
		cmocka_unit_test(test_stream_responses_failed),
		cmocka_unit_test(test_stream_responses_error_has_no_data),
		cmocka_unit_test(test_stream_azure_filter_chunks),
		cmocka_unit_test(test_stream_anthropic_delta_with_output_only),
		cmocka_unit_test(test_stream_anthropic_null_keeps_value),
		cmocka_unit_test(test_stream_anthropic_delta_replaces_input),
		cmocka_unit_test(test_stream_anthropic_thinking_details),
		cmocka_unit_test(test_stream_anthropic_without_usage),
		cmocka_unit_test(test_stream_anthropic_sum_too_large),
		cmocka_unit_test(test_stream_gemini_last_chunk_without_usage),
		cmocka_unit_test(test_stream_gemini_without_usage),
		cmocka_unit_test(test_stream_bedrock_bare_metadata),
		cmocka_unit_test(test_stream_bedrock_without_metadata),
		cmocka_unit_test(test_stream_cohere_v1_stream_end),
		cmocka_unit_test(test_stream_cohere_without_message_end),
		cmocka_unit_test(test_stream_ollama_generate),
		cmocka_unit_test(test_stream_ollama_missing_prompt_eval_count),
		cmocka_unit_test(test_stream_ollama_cut_short),
		cmocka_unit_test(test_stream_aleph_alpha_completion_summary),
		cmocka_unit_test(test_stream_sse_comments_and_other_fields),
		cmocka_unit_test(test_stream_sse_multiline_data),
		cmocka_unit_test(
			test_stream_sse_without_space_or_last_blank_line),
		cmocka_unit_test(test_stream_sse_bom_and_leading_blank_lines),
		cmocka_unit_test(test_stream_sse_errors),
		cmocka_unit_test(test_stream_json_lines_framing),
		cmocka_unit_test(test_stream_json_lines_errors),
		cmocka_unit_test(test_stream_pretty_single_body),
		cmocka_unit_test(test_stream_begin_errors),
		cmocka_unit_test(test_stream_null_arguments),
		cmocka_unit_test(test_stream_feed_ignores_done_and_blank),
		cmocka_unit_test(test_stream_feed_error_is_kept),
		cmocka_unit_test(test_stream_end_without_events),
		cmocka_unit_test(test_stream_end_leaves_strings),
		cmocka_unit_test(test_stream_free_half_way),
		cmocka_unit_test(test_stream_record_response),
	};

	return cmocka_run_group_tests_name("stream", tests, NULL, NULL);
}
