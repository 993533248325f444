/*
 * test_provider.c - tally_parse_response() against provider responses.
 *
 * The fixtures under $TALLY_FIXTURES/providers, with the table of their
 * expected values in EXPECTED.md, are the reference; the inline bodies
 * cover the other shapes each provider documents and every error.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tally.h"

#define CR TALLY_USAGE_HAS_CACHE_READ
#define CW TALLY_USAGE_HAS_CACHE_WRITE
#define RS TALLY_USAGE_HAS_REASONING
#define IN_MISSING TALLY_USAGE_INPUT_MISSING
#define OUT_MISSING TALLY_USAGE_OUTPUT_MISSING

/* EXPECTED.md writes "not reported" as an en dash. */
#define NOT_SET "\xe2\x80\x93"

static const char *const provider_types[] = {
	"openAI",     "azureOpenAI",  "openAICompatible", "mistral",
	"anthropic",  "googleGemini", "googleVertexAI",	  "googleGenAI",
	"awsBedrock", "alephAlpha",   "cohere",		  "ollama",
};

/* What a parse must give: every count, and the flags exactly. */
struct want {
	uint64_t input;
	uint64_t output;
	uint64_t cache_read;
	uint64_t cache_write;
	uint64_t reasoning;
	uint32_t flags;
};

static void check_usage(const char *type, const char *body, size_t len,
			const struct want *w)
{
	struct tally_usage u;

	memset(&u, 0, sizeof(u));
	assert_int_equal(tally_parse_response(type, body, len, &u), 0);
	assert_int_equal(u.input_tokens, w->input);
	assert_int_equal(u.output_tokens, w->output);
	assert_int_equal(u.cache_read_tokens, w->cache_read);
	assert_int_equal(u.cache_write_tokens, w->cache_write);
	assert_int_equal(u.reasoning_tokens, w->reasoning);
	assert_int_equal(u.flags, w->flags);
}

#define CHECK(type, body, ...) \
	check_usage(type, body, strlen(body), &(struct want){__VA_ARGS__})

static void check_error(const char *type, const char *body, int err)
{
	struct tally_usage u;

	memset(&u, 0, sizeof(u));
	assert_int_equal(tally_parse_response(type, body, strlen(body), &u),
			 err);
}

/* Reads providers/name under $TALLY_FIXTURES, NUL-terminated. */
static char *load_fixture(const char *name, size_t *len)
{
	const char *dir = getenv("TALLY_FIXTURES");
	char path[4096];
	char *buf;
	long size;
	FILE *f;

	assert_non_null(dir);
	assert_true(snprintf(path, sizeof(path), "%s/providers/%s", dir, name) <
		    (int)sizeof(path));
	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	size = ftell(f);
	assert_true(size >= 0);
	rewind(f);
	buf = test_malloc((size_t)size + 1);
	assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
	buf[size] = '\0';
	fclose(f);
	*len = (size_t)size;
	return buf;
}

static void check_fixture(const char *name, const char *type,
			  const struct want *w)
{
	size_t len;
	char *body = load_fixture(name, &len);

	check_usage(type, body, len, w);
	test_free(body);
}

static void parse_fixture(const char *name, const char *type,
			  struct tally_usage *u)
{
	size_t len;
	char *body = load_fixture(name, &len);

	memset(u, 0, sizeof(*u));
	assert_int_equal(tally_parse_response(type, body, len, u), 0);
	test_free(body);
}

/* One row per fixture of the table in EXPECTED.md. */

static void test_provider_openai_chat_fixture(void **state)
{
	(void)state;
	check_fixture("openai-chat.json", "openAI",
		      &(struct want){.input = 1250,
				     .output = 310,
				     .cache_read = 1024,
				     .reasoning = 192,
				     .flags = CR | RS});
}

static void test_provider_openai_embeddings_fixture(void **state)
{
	(void)state;
	check_fixture("openai-embeddings.json", "openAI",
		      &(struct want){.input = 37, .output = 0, .flags = 0});
}

static void test_provider_anthropic_messages_fixture(void **state)
{
	(void)state;
	check_fixture("anthropic-messages.json", "anthropic",
		      &(struct want){.input = 5158,
				     .output = 512,
				     .cache_read = 3900,
				     .cache_write = 1200,
				     .reasoning = 300,
				     .flags = CR | CW | RS});
}

static void test_provider_gemini_fixture(void **state)
{
	(void)state;
	check_fixture("gemini-generate-content.json", "googleGemini",
		      &(struct want){.input = 5320,
				     .output = 830,
				     .cache_read = 4096,
				     .reasoning = 650,
				     .flags = CR | RS});
}

static void test_provider_bedrock_fixture(void **state)
{
	(void)state;
	check_fixture("bedrock-converse.json", "awsBedrock",
		      &(struct want){.input = 3435,
				     .output = 410,
				     .cache_read = 2800,
				     .cache_write = 600,
				     .flags = CR | CW});
}

static void test_provider_cohere_v2_fixture(void **state)
{
	(void)state;
	check_fixture("cohere-chat-v2.json", "cohere",
		      &(struct want){.input = 210,
				     .output = 64,
				     .cache_read = 0,
				     .flags = CR});
}

static void test_provider_ollama_chat_fixture(void **state)
{
	(void)state;
	check_fixture("ollama-chat.json", "ollama",
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

/* Checks one table row; returns 1 when it was a .json fixture's row. */
static int check_table_row(char *line)
{
	char *cell[8], *save = NULL, *tok;
	struct want w = {0};
	size_t n = 0, flen;

	if (strncmp(line, "| ", 2))
		return 0;
	for (tok = strtok_r(line, "|", &save); tok && n < 8;
	     tok = strtok_r(NULL, "|", &save))
		cell[n++] = trim(tok);
	flen = n ? strlen(cell[0]) : 0;
	if (n < 7 || flen < 5 || strcmp(cell[0] + flen - 5, ".json"))
		return 0;
	w.input = strtoull(cell[2], NULL, 10);
	w.output = strtoull(cell[3], NULL, 10);
	w.cache_read = detail_cell(cell[4], CR, &w.flags);
	w.cache_write = detail_cell(cell[5], CW, &w.flags);
	w.reasoning = detail_cell(cell[6], RS, &w.flags);
	check_fixture(cell[0], cell[1], &w);
	return 1;
}

/* The table itself, so that a row added to it is tested too. */
static void test_provider_expected_table(void **state)
{
	char *save = NULL, *line, *table;
	size_t len;
	int rows = 0;

	(void)state;
	table = load_fixture("EXPECTED.md", &len);
	for (line = strtok_r(table, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save))
		rows += check_table_row(line);
	test_free(table);
	assert_true(rows >= 7);
}

/* Each fixture's trap, named: the number a naive mapping would give. */
static void test_provider_traps(void **state)
{
	struct tally_usage u;

	(void)state;
	parse_fixture("anthropic-messages.json", "anthropic", &u);
	assert_int_not_equal(u.input_tokens, 58);
	assert_int_equal(u.input_tokens, 58 + 1200 + 3900);

	parse_fixture("cohere-chat-v2.json", "cohere", &u);
	assert_int_not_equal(u.input_tokens, 1830);
	assert_int_equal(u.input_tokens, 210);

	parse_fixture("gemini-generate-content.json", "googleGemini", &u);
	assert_int_not_equal(u.output_tokens, 180);
	assert_int_equal(u.output_tokens, 180 + 650);
	assert_int_not_equal(u.input_tokens, 5200 + 4096 + 120);
	assert_int_equal(u.input_tokens, 5200 + 120);

	parse_fixture("bedrock-converse.json", "awsBedrock", &u);
	assert_int_not_equal(u.input_tokens, 35);
	assert_int_equal(u.input_tokens, 35 + 2800 + 600);

	parse_fixture("openai-chat.json", "openAI", &u);
	assert_int_not_equal(u.input_tokens, 1250 + 1024);
	assert_int_not_equal(u.output_tokens, 310 + 192);
	assert_int_equal(u.input_tokens, 1250);
	assert_int_equal(u.output_tokens, 310);

	parse_fixture("openai-embeddings.json", "openAI", &u);
	assert_false(u.flags & OUT_MISSING);

	parse_fixture("ollama-chat.json", "ollama", &u);
	assert_false(u.flags & IN_MISSING);
}

/* OpenAI family. */

static void test_provider_responses_api(void **state)
{
	(void)state;
	CHECK("openAI",
	      "{\"id\":\"resp_1\",\"object\":\"response\",\"status\":"
	      "\"completed\",\"usage\":{\"input_tokens\":2006,"
	      "\"input_tokens_details\":{\"cached_tokens\":1920},"
	      "\"output_tokens\":740,\"output_tokens_details\":"
	      "{\"reasoning_tokens\":512},\"total_tokens\":2746}}",
	      .input = 2006, .output = 740, .cache_read = 1920,
	      .reasoning = 512, .flags = CR | RS);
}

/* A reported 0 is reported: its HAS_ flag is set. */
static void test_provider_responses_api_wrapped(void **state)
{
	(void)state;
	CHECK("openAI",
	      "{\"type\":\"response.completed\",\"sequence_number\":42,"
	      "\"response\":{\"id\":\"resp_2\",\"object\":\"response\","
	      "\"usage\":{\"input_tokens\":300,\"input_tokens_details\":"
	      "{\"cached_tokens\":0},\"output_tokens\":25,"
	      "\"output_tokens_details\":{\"reasoning_tokens\":0},"
	      "\"total_tokens\":325}}}",
	      .input = 300, .output = 25, .flags = CR | RS);
}

static void test_provider_responses_api_created_has_no_data(void **state)
{
	(void)state;
	check_error("openAI",
		    "{\"type\":\"response.created\",\"response\":{\"object\":"
		    "\"response\",\"status\":\"in_progress\",\"usage\":null}}",
		    -ENODATA);
}

static void test_provider_azure_chat(void **state)
{
	(void)state;
	CHECK("azureOpenAI",
	      "{\"object\":\"chat.completion\",\"model\":\"gpt-4o\","
	      "\"prompt_filter_results\":[],\"choices\":[{\"index\":0,"
	      "\"message\":{\"role\":\"assistant\",\"content\":\"ok\"}}],"
	      "\"usage\":{\"prompt_tokens\":420,\"completion_tokens\":96,"
	      "\"total_tokens\":516,\"prompt_tokens_details\":"
	      "{\"cached_tokens\":256},\"completion_tokens_details\":"
	      "{\"reasoning_tokens\":64}}}",
	      .input = 420, .output = 96, .cache_read = 256, .reasoning = 64,
	      .flags = CR | RS);
}

static void test_provider_mistral_chat(void **state)
{
	(void)state;
	CHECK("mistral",
	      "{\"id\":\"cmpl-1\",\"object\":\"chat.completion\",\"model\":"
	      "\"mistral-large-latest\",\"choices\":[{\"index\":0,"
	      "\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},"
	      "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":17,"
	      "\"completion_tokens\":9,\"total_tokens\":26}}",
	      .input = 17, .output = 9, .flags = 0);
}

static void test_provider_mistral_embeddings(void **state)
{
	(void)state;
	CHECK("mistral",
	      "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\","
	      "\"embedding\":[0.1],\"index\":0}],\"model\":\"mistral-embed\","
	      "\"usage\":{\"prompt_tokens\":6,\"total_tokens\":6}}",
	      .input = 6, .output = 0, .flags = 0);
}

static void test_provider_chat_without_completion_is_missing(void **state)
{
	(void)state;
	CHECK("openAICompatible",
	      "{\"object\":\"chat.completion\",\"usage\":"
	      "{\"prompt_tokens\":40}}",
	      .input = 40, .output = 0, .flags = OUT_MISSING);
	CHECK("openAI", "{\"usage\":{\"completion_tokens\":40}}", .input = 0,
	      .output = 40, .flags = IN_MISSING);
}

static void test_provider_stream_chunk_without_usage(void **state)
{
	(void)state;
	check_error("openAI",
		    "{\"object\":\"chat.completion.chunk\",\"choices\":"
		    "[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}",
		    -ENODATA);
}

/* Anthropic. */

static void test_provider_anthropic_without_cache(void **state)
{
	(void)state;
	CHECK("anthropic",
	      "{\"type\":\"message\",\"usage\":{\"input_tokens\":12,"
	      "\"output_tokens\":30}}",
	      .input = 12, .output = 30, .flags = 0);
	CHECK("anthropic",
	      "{\"usage\":{\"input_tokens\":12,"
	      "\"cache_creation_input_tokens\":null,"
	      "\"cache_read_input_tokens\":null,\"output_tokens\":30}}",
	      .input = 12, .output = 30, .flags = 0);
}

/* A cache bucket alone does not report the input. */
static void test_provider_anthropic_without_input_tokens(void **state)
{
	(void)state;
	CHECK("anthropic",
	      "{\"usage\":{\"cache_read_input_tokens\":100,"
	      "\"output_tokens\":5}}",
	      .input = 100, .output = 5, .cache_read = 100,
	      .flags = CR | IN_MISSING);
}

/* Google. */

static void test_provider_gemini_array(void **state)
{
	(void)state;
	CHECK("googleVertexAI",
	      "[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],"
	      "\"usageMetadata\":{\"promptTokenCount\":12,"
	      "\"totalTokenCount\":12}},"
	      "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}]}}],"
	      "\"usageMetadata\":{\"promptTokenCount\":12,"
	      "\"candidatesTokenCount\":40,\"thoughtsTokenCount\":8,"
	      "\"totalTokenCount\":60}},"
	      "{\"candidates\":[{\"finishReason\":\"STOP\"}]}]",
	      .input = 12, .output = 48, .reasoning = 8, .flags = RS);
	check_error("googleVertexAI", "[{\"candidates\":[]}]", -ENODATA);
	check_error("googleVertexAI", "[]", -ENODATA);
}

/* All the budget went to thinking: the output is known all the same. */
static void test_provider_gemini_thoughts_without_candidates(void **state)
{
	(void)state;
	CHECK("googleGenAI",
	      "{\"usageMetadata\":{\"promptTokenCount\":10,"
	      "\"thoughtsTokenCount\":1023,\"totalTokenCount\":1033}}",
	      .input = 10, .output = 1023, .reasoning = 1023, .flags = RS);
}

/* Bedrock. */

static void test_provider_bedrock_without_cache(void **state)
{
	(void)state;
	CHECK("awsBedrock",
	      "{\"output\":{\"message\":{\"role\":\"assistant\"}},"
	      "\"stopReason\":\"end_turn\",\"usage\":{\"inputTokens\":125,"
	      "\"outputTokens\":60,\"totalTokens\":185},"
	      "\"metrics\":{\"latencyMs\":420}}",
	      .input = 125, .output = 60, .flags = 0);
}

/* Cohere. */

static void test_provider_cohere_v1_chat(void **state)
{
	(void)state;
	CHECK("cohere",
	      "{\"text\":\"hi\",\"generation_id\":\"g1\",\"finish_reason\":"
	      "\"COMPLETE\",\"meta\":{\"api_version\":{\"version\":\"1\"},"
	      "\"billed_units\":{\"input_tokens\":57,\"output_tokens\":12},"
	      "\"tokens\":{\"input_tokens\":120,\"output_tokens\":12}}}",
	      .input = 57, .output = 12, .flags = 0);
}

static void test_provider_cohere_embed(void **state)
{
	(void)state;
	CHECK("cohere",
	      "{\"id\":\"e1\",\"embeddings\":[[0.1,0.2]],\"texts\":[\"hello\"],"
	      "\"meta\":{\"api_version\":{\"version\":\"1\"},"
	      "\"billed_units\":{\"input_tokens\":3}},"
	      "\"response_type\":\"embeddings_floats\"}",
	      .input = 3, .output = 0, .flags = 0);
	CHECK("cohere",
	      "{\"id\":\"e2\",\"embeddings\":{\"float\":[[0.1]]},"
	      "\"texts\":[\"hi\"],\"meta\":{\"api_version\":{\"version\":"
	      "\"2\"},\"billed_units\":{\"input_tokens\":2}},"
	      "\"response_type\":\"embeddings_by_type\"}",
	      .input = 2, .output = 0, .flags = 0);
}

static void test_provider_cohere_tokens_without_billed_units(void **state)
{
	(void)state;
	CHECK("cohere",
	      "{\"usage\":{\"tokens\":{\"input_tokens\":30,"
	      "\"output_tokens\":4}}}",
	      .input = 30, .output = 4, .flags = 0);
}

/* Ollama. */

static void test_provider_ollama_generate(void **state)
{
	(void)state;
	CHECK("ollama",
	      "{\"model\":\"llama3.2\",\"created_at\":"
	      "\"2023-08-04T19:22:45.499127Z\",\"response\":\"\",\"done\":true,"
	      "\"done_reason\":\"stop\",\"context\":[1,2,3],"
	      "\"total_duration\":5043500667,\"load_duration\":5025959,"
	      "\"prompt_eval_count\":26,\"prompt_eval_duration\":325953000,"
	      "\"eval_count\":290,\"eval_duration\":4709213000}",
	      .input = 26, .output = 290, .flags = 0);
}

static void test_provider_ollama_embed(void **state)
{
	(void)state;
	CHECK("ollama",
	      "{\"model\":\"all-minilm\",\"embeddings\":[[0.01,-0.02]],"
	      "\"total_duration\":14143917,\"load_duration\":1019500,"
	      "\"prompt_eval_count\":8}",
	      .input = 8, .output = 0, .flags = 0);
}

static void test_provider_ollama_missing_prompt_eval_count(void **state)
{
	(void)state;
	CHECK("ollama",
	      "{\"model\":\"llama3.2\",\"done\":true,"
	      "\"eval_count\":143}",
	      .input = 0, .output = 143, .flags = IN_MISSING);
}

static void test_provider_ollama_without_counts(void **state)
{
	(void)state;
	check_error("ollama",
		    "{\"model\":\"llama3.2\",\"message\":{\"role\":"
		    "\"assistant\",\"content\":\"He\"},\"done\":false}",
		    -ENODATA);
}

/* Aleph Alpha. */

static void test_provider_aleph_alpha_completion(void **state)
{
	(void)state;
	CHECK("alephAlpha",
	      "{\"model_version\":\"2022-04\",\"completions\":[{\"completion\":"
	      "\" keeps the doctor away\",\"finish_reason\":"
	      "\"maximum_tokens\"}],\"num_tokens_prompt_total\":5,"
	      "\"num_tokens_generated\":7}",
	      .input = 5, .output = 7, .flags = 0);
	CHECK("alephAlpha",
	      "{\"model_version\":\"2022-04\",\"completions\":[],"
	      "\"num_tokens_prompt_total\":5}",
	      .input = 5, .output = 0, .flags = OUT_MISSING);
}

static void test_provider_aleph_alpha_embed(void **state)
{
	(void)state;
	CHECK("alephAlpha",
	      "{\"model_version\":\"2022-04\",\"embedding\":[0.1,0.2],"
	      "\"num_tokens_prompt_total\":4}",
	      .input = 4, .output = 0, .flags = 0);
}

static void test_provider_aleph_alpha_chat(void **state)
{
	(void)state;
	CHECK("alephAlpha",
	      "{\"choices\":[{\"finish_reason\":\"stop\",\"message\":"
	      "{\"role\":\"assistant\",\"content\":\"hi\"}}],\"usage\":"
	      "{\"prompt_tokens\":20,\"completion_tokens\":30,"
	      "\"total_tokens\":50}}",
	      .input = 20, .output = 30, .flags = 0);
}

/* Rules that hold for every provider. */

static void test_provider_detail_larger_than_total_is_dropped(void **state)
{
	(void)state;
	CHECK("openAI",
	      "{\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,"
	      "\"prompt_tokens_details\":{\"cached_tokens\":11},"
	      "\"completion_tokens_details\":{\"reasoning_tokens\":6}}}",
	      .input = 10, .output = 5, .flags = 0);
}

static void test_provider_integral_real_is_a_count(void **state)
{
	(void)state;
	CHECK("openAI",
	      "{\"usage\":{\"prompt_tokens\":12.0,\"completion_tokens\":1e2}}",
	      .input = 12, .output = 100, .flags = 0);
}

static void test_provider_count_at_max(void **state)
{
	(void)state;
	CHECK("openAI",
	      "{\"usage\":{\"prompt_tokens\":1000000000,"
	      "\"completion_tokens\":0}}",
	      .input = TALLY_TOKENS_MAX, .output = 0, .flags = 0);
}

/* The strings are the caller's; the flags are replaced as a whole. */
static void test_provider_leaves_strings_replaces_flags(void **state)
{
	const char *body = "{\"usage\":{\"prompt_tokens\":3,"
			   "\"completion_tokens\":4}}";
	struct tally_usage u = {
		.session_id = "s",
		.llm_reference_id = "l",
		.llm_display_name = "d",
		.provider_type = "p",
		.model_type = "m",
		.reasoning_tokens = 99,
		.flags = TALLY_USAGE_ESTIMATED | RS,
	};

	(void)state;
	assert_int_equal(tally_parse_response("openAI", body, strlen(body), &u),
			 0);
	assert_string_equal(u.session_id, "s");
	assert_string_equal(u.llm_reference_id, "l");
	assert_string_equal(u.llm_display_name, "d");
	assert_string_equal(u.provider_type, "p");
	assert_string_equal(u.model_type, "m");
	assert_int_equal(u.input_tokens, 3);
	assert_int_equal(u.output_tokens, 4);
	assert_int_equal(u.reasoning_tokens, 0);
	assert_int_equal(u.flags, 0);
}

/* The body need not be NUL-terminated, and nothing past len is read. */
static void test_provider_reads_only_len_bytes(void **state)
{
	const char *text = "{\"usage\":{\"prompt_tokens\":7,"
			   "\"completion_tokens\":2}}trailing";
	size_t len = strlen(text) - strlen("trailing");
	char *body = test_malloc(len);
	struct tally_usage u;

	(void)state;
	memcpy(body, text, len);
	memset(&u, 0, sizeof(u));
	assert_int_equal(tally_parse_response("openAI", body, len, &u), 0);
	assert_int_equal(u.input_tokens, 7);
	assert_int_equal(u.output_tokens, 2);
	test_free(body);
	assert_int_equal(tally_parse_response("openAI", text, strlen(text), &u),
			 -EBADMSG);
}

/* Errors. */

static void test_provider_not_json(void **state)
{
	struct tally_usage u;

	(void)state;
	check_error("openAI", "not json", -EBADMSG);
	check_error("openAI", "{\"usage\":{\"prompt_tokens\":12", -EBADMSG);
	check_error("anthropic", "", -EBADMSG);
	assert_int_equal(tally_parse_response("openAI", "{}", 0, &u), -EBADMSG);
}

static void test_provider_wrong_type(void **state)
{
	(void)state;
	check_error("openAI", "{\"usage\":{\"prompt_tokens\":\"12\"}}",
		    -EBADMSG);
	check_error("openAI", "{\"usage\":\"lots\"}", -EBADMSG);
	check_error("openAI",
		    "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,"
		    "\"prompt_tokens_details\":[]}}",
		    -EBADMSG);
	check_error("anthropic", "{\"usage\":{\"output_tokens\":true}}",
		    -EBADMSG);
	check_error("googleGemini",
		    "{\"usageMetadata\":{\"promptTokenCount\":{}}}", -EBADMSG);
	check_error("cohere", "{\"usage\":{\"billed_units\":[1]}}", -EBADMSG);
}

static void test_provider_negative_count(void **state)
{
	(void)state;
	check_error("openAI",
		    "{\"usage\":{\"prompt_tokens\":-1,"
		    "\"completion_tokens\":5}}",
		    -ERANGE);
	check_error("ollama", "{\"prompt_eval_count\":3,\"eval_count\":-7}",
		    -ERANGE);
}

static void test_provider_count_too_large(void **state)
{
	(void)state;
	check_error("openAI",
		    "{\"usage\":{\"prompt_tokens\":2e9,"
		    "\"completion_tokens\":5}}",
		    -ERANGE);
	check_error("openAI",
		    "{\"usage\":{\"prompt_tokens\":1000000001,"
		    "\"completion_tokens\":5}}",
		    -ERANGE);
	check_error("awsBedrock",
		    "{\"usage\":{\"inputTokens\":99999999999999999999999,"
		    "\"outputTokens\":1}}",
		    -ERANGE);
}

/* Parts that each fit can still add up past the limit. */
static void test_provider_sum_too_large(void **state)
{
	(void)state;
	check_error("anthropic",
		    "{\"usage\":{\"input_tokens\":600000000,"
		    "\"cache_read_input_tokens\":600000000,"
		    "\"output_tokens\":1}}",
		    -ERANGE);
}

static void test_provider_fractional_count(void **state)
{
	(void)state;
	check_error("cohere",
		    "{\"usage\":{\"billed_units\":{\"input_tokens\":12.5,"
		    "\"output_tokens\":1}}}",
		    -ERANGE);
}

static void test_provider_no_usage(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(provider_types) / sizeof(provider_types[0]);
	     i++) {
		check_error(provider_types[i], "{}", -ENODATA);
		check_error(provider_types[i], "[]", -ENODATA);
		check_error(provider_types[i], "42", -ENODATA);
	}
	check_error("openAI", "{\"usage\":{}}", -ENODATA);
	check_error("openAI", "{\"usage\":{\"total_tokens\":9}}", -ENODATA);
}

static void test_provider_unknown_provider(void **state)
{
	(void)state;
	check_error("openai", "{}", -EPROTONOSUPPORT);
	check_error("OpenAI", "{}", -EPROTONOSUPPORT);
	check_error("", "{}", -EPROTONOSUPPORT);
	check_error("anthropic ", "{}", -EPROTONOSUPPORT);
}

static void test_provider_null_arguments(void **state)
{
	struct tally_usage u;

	(void)state;
	assert_int_equal(tally_parse_response(NULL, "{}", 2, &u), -EINVAL);
	assert_int_equal(tally_parse_response("openAI", NULL, 0, &u), -EINVAL);
	assert_int_equal(tally_parse_response("openAI", "{}", 2, NULL),
			 -EINVAL);
}

/* A failed parse changes nothing in *u. */
static void test_provider_error_leaves_usage_alone(void **state)
{
	static const char *const bodies[] = {
		"nope",
		"{}",
		"{\"usage\":{\"prompt_tokens\":-1}}",
		"{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":\"x\"}}",
	};
	struct tally_usage u, before;
	size_t i;

	(void)state;
	memset(&before, 0x5a, sizeof(before));
	for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
		memcpy(&u, &before, sizeof(u));
		assert_int_not_equal(tally_parse_response("openAI", bodies[i],
							  strlen(bodies[i]),
							  &u),
				     0);
		assert_memory_equal(&u, &before, sizeof(u));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_provider_openai_chat_fixture),
		cmocka_unit_test(test_provider_openai_embeddings_fixture),
		cmocka_unit_test(test_provider_anthropic_messages_fixture),
		cmocka_unit_test(test_provider_gemini_fixture),
		cmocka_unit_test(test_provider_bedrock_fixture),
		cmocka_unit_test(test_provider_cohere_v2_fixture),
		cmocka_unit_test(test_provider_ollama_chat_fixture),
		cmocka_unit_test(test_provider_expected_table),
		cmocka_unit_test(test_provider_traps),
		cmocka_unit_test(test_provider_responses_api),
		cmocka_unit_test(test_provider_responses_api_wrapped),
		cmocka_unit_test(
			test_provider_responses_api_created_has_no_data),
		cmocka_unit_test(test_provider_azure_chat),
		cmocka_unit_test(test_provider_mistral_chat),
		cmocka_unit_test(test_provider_mistral_embeddings),
		cmocka_unit_test(
			test_provider_chat_without_completion_is_missing),
		cmocka_unit_test(test_provider_stream_chunk_without_usage),
		cmocka_unit_test(test_provider_anthropic_without_cache),
		cmocka_unit_test(test_provider_anthropic_without_input_tokens),
		cmocka_unit_test(test_provider_gemini_array),
		cmocka_unit_test(
			test_provider_gemini_thoughts_without_candidates),
		cmocka_unit_test(test_provider_bedrock_without_cache),
		cmocka_unit_test(test_provider_cohere_v1_chat),
		cmocka_unit_test(test_provider_cohere_embed),
		cmocka_unit_test(
			test_provider_cohere_tokens_without_billed_units),
		cmocka_unit_test(test_provider_ollama_generate),
		cmocka_unit_test(test_provider_ollama_embed),
		cmocka_unit_test(
			test_provider_ollama_missing_prompt_eval_count),
		cmocka_unit_test(test_provider_ollama_without_counts),
		cmocka_unit_test(test_provider_aleph_alpha_completion),
		cmocka_unit_test(test_provider_aleph_alpha_embed),
		cmocka_unit_test(test_provider_aleph_alpha_chat),
		cmocka_unit_test(
			test_provider_detail_larger_than_total_is_dropped),
		cmocka_unit_test(test_provider_integral_real_is_a_count),
		cmocka_unit_test(test_provider_count_at_max),
		cmocka_unit_test(test_provider_leaves_strings_replaces_flags),
		cmocka_unit_test(test_provider_reads_only_len_bytes),
		cmocka_unit_test(test_provider_not_json),
		cmocka_unit_test(test_provider_wrong_type),
		cmocka_unit_test(test_provider_negative_count),
		cmocka_unit_test(test_provider_count_too_large),
		cmocka_unit_test(test_provider_sum_too_large),
		cmocka_unit_test(test_provider_fractional_count),
		cmocka_unit_test(test_provider_no_usage),
		cmocka_unit_test(test_provider_unknown_provider),
		cmocka_unit_test(test_provider_null_arguments),
		cmocka_unit_test(test_provider_error_leaves_usage_alone),
	};

	return cmocka_run_group_tests_name("provider", tests, NULL, NULL);
}
