/*
 * test_jsonw.c - the snapshot's JSON writer, byte for byte.
 *
 * Every expected output is spelled out in full: the point of the writer is
 * the exact bytes it produces, and that whatever bytes it is given, jansson
 * in its strict mode reads back what was meant.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "jsonw.h"

/* U+FFFD REPLACEMENT CHARACTER in UTF-8. */
#define FFFD "\xef\xbf\xbd"

/* s[0..n) written as one JSON string; the caller frees it. */
static char *encode(const char *s, size_t n)
{
	struct jsonw w;
	char *out;

	jsonw_init(&w);
	jsonw_str(&w, s, n);
	out = jsonw_take(&w);
	assert_non_null(out);
	return out;
}

static char *encode_u64(uint64_t v)
{
	struct jsonw w;
	char *out;

	jsonw_init(&w);
	jsonw_u64(&w, v);
	out = jsonw_take(&w);
	assert_non_null(out);
	return out;
}

/*
 * Parses a writer's string strictly, as the one element of an array, and
 * asserts it decodes to exactly want[0..want_len).
 */
static void assert_decodes_to(const char *json, const char *want,
			      size_t want_len, size_t flags)
{
	size_t len = strlen(json);
	char *doc = malloc(len + 3);
	json_error_t err;
	json_t *root, *s;

	assert_non_null(doc);
	doc[0] = '[';
	memcpy(doc + 1, json, len);
	memcpy(doc + 1 + len, "]", 2);
	root = json_loads(doc, JSON_REJECT_DUPLICATES | flags, &err);
	if (root == NULL)
		fail_msg("not strict JSON (%s): %s", err.text, doc);
	free(doc);
	s = json_array_get(root, 0);
	assert_true(json_is_string(s));
	assert_int_equal(json_string_length(s), want_len);
	assert_memory_equal(json_string_value(s), want, want_len);
	json_decref(root);
}

/* Writes in[0..n), expects exactly want, and that it reads back as out. */
static void check(const char *in, size_t n, const char *want, const char *back,
		  size_t back_len)
{
	char *json = encode(in, n);

	assert_string_equal(json, want);
	assert_decodes_to(json, back, back_len, 0);
	free(json);
}

/* A string that must come back unchanged. */
#define CHECK_SAME(in, want) check(in, sizeof(in) - 1, want, in, sizeof(in) - 1)
/* A string whose invalid bytes come back as U+FFFD. */
#define CHECK_FIXED(in, want, back) \
	check(in, sizeof(in) - 1, want, back, sizeof(back) - 1)

static void test_jsonw_plain_ascii_is_quoted_only(void **state)
{
	(void)state;
	CHECK_SAME("", "\"\"");
	CHECK_SAME("gpt-4o", "\"gpt-4o\"");
	CHECK_SAME("a b/c'd~", "\"a b/c'd~\"");
}

static void test_jsonw_escapes_quote_backslash_and_whitespace(void **state)
{
	(void)state;
	CHECK_SAME("\"", "\"\\\"\"");
	CHECK_SAME("\\", "\"\\\\\"");
	CHECK_SAME("\n", "\"\\n\"");
	CHECK_SAME("\r", "\"\\r\"");
	CHECK_SAME("\t", "\"\\t\"");
	CHECK_SAME("say \"hi\"\\\r\n\tend",
		   "\"say \\\"hi\\\"\\\\\\r\\n\\tend\"");
}

static void test_jsonw_escapes_control_bytes_as_u00xx(void **state)
{
	static const char hex[] = "0123456789abcdef";

	(void)state;
	for (unsigned c = 0x01; c < 0x20; c++) {
		char in[3] = {'x', (char)c, 'y'};
		char want[16];
		char *json;

		if (c == '\n' || c == '\r' || c == '\t')
			continue;
		snprintf(want, sizeof(want), "\"x\\u00%c%cy\"", hex[c >> 4],
			 hex[c & 15]);
		json = encode(in, sizeof(in));
		assert_string_equal(json, want);
		assert_decodes_to(json, in, sizeof(in), 0);
		free(json);
	}
}

static void test_jsonw_keeps_del(void **state)
{
	(void)state;
	CHECK_SAME("\x7f", "\"\x7f\"");
	CHECK_SAME("a\x7f"
		   "b",
		   "\"a\x7f"
		   "b\"");
}

static void test_jsonw_escapes_embedded_nul(void **state)
{
	static const char in[] = {'a', '\0', 'b', '\0'};
	char *json;

	(void)state;
	json = encode(in, sizeof(in));
	assert_string_equal(json, "\"a\\u0000b\\u0000\"");
	assert_decodes_to(json, in, sizeof(in), JSON_ALLOW_NUL);
	free(json);
}

static void test_jsonw_keeps_valid_utf8(void **state)
{
	(void)state;
	/* é, a CJK ideograph, a 4-byte emoji. */
	CHECK_SAME("caf\xc3\xa9", "\"caf\xc3\xa9\"");
	CHECK_SAME("\xe4\xb8\xad\xe6\x96\x87", "\"\xe4\xb8\xad\xe6\x96\x87\"");
	CHECK_SAME("\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\"");
	/* The edges: U+0080, U+07FF, U+0800, U+D7FF, U+E000, U+FFFF. */
	CHECK_SAME("\xc2\x80\xdf\xbf", "\"\xc2\x80\xdf\xbf\"");
	CHECK_SAME("\xe0\xa0\x80\xed\x9f\xbf", "\"\xe0\xa0\x80\xed\x9f\xbf\"");
	CHECK_SAME("\xee\x80\x80\xef\xbf\xbf", "\"\xee\x80\x80\xef\xbf\xbf\"");
	/* U+10000 and U+10FFFF. */
	CHECK_SAME("\xf0\x90\x80\x80\xf4\x8f\xbf\xbf",
		   "\"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"");
	/* Multibyte next to bytes that are escaped. */
	CHECK_SAME("\xc3\xa9\"\xc3\xa9\n", "\"\xc3\xa9\\\"\xc3\xa9\\n\"");
}

/*
 * The header's rule: each byte that is not part of a well-formed sequence
 * becomes one U+FFFD, and what follows is read afresh.
 */
static void test_jsonw_replaces_invalid_utf8(void **state)
{
	(void)state;
	/* A 4-byte lead cut short. */
	CHECK_FIXED("\xf0\x80", "\"" FFFD FFFD "\"", FFFD FFFD);
	CHECK_FIXED("\xf0\x9f\x98", "\"" FFFD FFFD FFFD "\"", FFFD FFFD FFFD);
	/* A lone 2-byte lead, at the end and before ASCII. */
	CHECK_FIXED("\xc3", "\"" FFFD "\"", FFFD);
	CHECK_FIXED("a\xc3(b", "\"a" FFFD "(b\"", "a" FFFD "(b");
	/* Overlong forms. */
	CHECK_FIXED("\xc0\xaf", "\"" FFFD FFFD "\"", FFFD FFFD);
	CHECK_FIXED("\xe0\x80\xaf", "\"" FFFD FFFD FFFD "\"", FFFD FFFD FFFD);
	CHECK_FIXED("\xf0\x80\x80\xaf", "\"" FFFD FFFD FFFD FFFD "\"",
		    FFFD FFFD FFFD FFFD);
	/* An encoded UTF-16 surrogate, U+D800. */
	CHECK_FIXED("\xed\xa0\x80", "\"" FFFD FFFD FFFD "\"", FFFD FFFD FFFD);
	/* Past U+10FFFF, and bytes that never occur. */
	CHECK_FIXED("\xf5\x80\x80\x80", "\"" FFFD FFFD FFFD FFFD "\"",
		    FFFD FFFD FFFD FFFD);
	CHECK_FIXED("\xf4\x90\x80\x80", "\"" FFFD FFFD FFFD FFFD "\"",
		    FFFD FFFD FFFD FFFD);
	CHECK_FIXED("\xfe\xff", "\"" FFFD FFFD "\"", FFFD FFFD);
	/* A lone continuation byte, then a good sequence. */
	CHECK_FIXED("\x80\xc3\xa9", "\"" FFFD "\xc3\xa9\"", FFFD "\xc3\xa9");
	/* A bad lead does not swallow the valid sequence after it. */
	CHECK_FIXED("\xc3\xc3\xa9", "\"" FFFD "\xc3\xa9\"", FFFD "\xc3\xa9");
	/* An escaped byte inside a broken sequence is still escaped. */
	CHECK_FIXED("\xe4\"", "\"" FFFD "\\\"\"", FFFD "\"");
}

static void test_jsonw_writes_u64(void **state)
{
	static const struct {
		uint64_t v;
		const char *want;
	} cases[] = {
		{0, "0"},
		{1, "1"},
		{10, "10"},
		{5000000000u, "5000000000"},
		{UINT64_MAX, "18446744073709551615"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *json = encode_u64(cases[i].v);
		json_t *root;
		char doc[32];

		assert_string_equal(json, cases[i].want);
		/* jansson's integers are signed: UINT64_MAX cannot load. */
		if (cases[i].v <= INT64_MAX) {
			snprintf(doc, sizeof(doc), "[%s]", json);
			root = json_loads(doc, JSON_REJECT_DUPLICATES, NULL);
			assert_non_null(root);
			assert_int_equal(
				json_integer_value(json_array_get(root, 0)),
				cases[i].v);
			json_decref(root);
		}
		free(json);
	}
}

/* A long string of escaped bytes: the buffer grows past its first size. */
static void test_jsonw_grows_for_long_strings(void **state)
{
	enum { N = 10000 };
	char *in = malloc(N), *want = malloc(2 * N + 3), *json;

	(void)state;
	assert_non_null(in);
	assert_non_null(want);
	memset(in, '"', N);
	want[0] = '"';
	for (size_t i = 0; i < N; i++)
		memcpy(want + 1 + 2 * i, "\\\"", 2);
	memcpy(want + 1 + 2 * N, "\"", 2);
	json = encode(in, N);
	assert_int_equal(strlen(json), 2 * N + 2);
	assert_string_equal(json, want);
	assert_decodes_to(json, in, N, 0);
	free(json);
	free(want);
	free(in);
}

/* Raw pieces and strings compose into one document, as the snapshot does. */
static void test_jsonw_composes_a_document(void **state)
{
	struct jsonw w;
	char *json;

	(void)state;
	jsonw_init(&w);
	jsonw_raw(&w, "{", 1);
	jsonw_str(&w, "k\"1", 3);
	jsonw_raw(&w, ":", 1);
	jsonw_u64(&w, 42);
	jsonw_raw(&w, "}", 1);
	json = jsonw_take(&w);
	assert_non_null(json);
	assert_string_equal(json, "{\"k\\\"1\":42}");
	/* Taking hands the buffer over and leaves the writer empty. */
	assert_null(w.buf);
	assert_int_equal(w.len, 0);
	free(json);

	jsonw_init(&w);
	json = jsonw_take(&w);
	assert_non_null(json);
	assert_string_equal(json, "");
	free(json);
}

/* Whatever the bytes, the output is strict JSON (and so valid UTF-8). */
static void test_jsonw_any_bytes_parse_strictly(void **state)
{
	unsigned char in[64];
	uint32_t x = 2463534242u;

	(void)state;
	for (int round = 0; round < 2000; round++) {
		size_t n = (size_t)(round % (int)sizeof(in));
		char *json, *doc;
		json_t *root;

		for (size_t i = 0; i < n; i++) {
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			in[i] = (unsigned char)x;
		}
		json = encode((const char *)in, n);
		doc = malloc(strlen(json) + 3);
		assert_non_null(doc);
		sprintf(doc, "[%s]", json);
		root = json_loads(doc, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL,
				  NULL);
		if (root == NULL)
			fail_msg("round %d: not strict JSON: %s", round, doc);
		json_decref(root);
		free(doc);
		free(json);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_jsonw_plain_ascii_is_quoted_only),
		cmocka_unit_test(
			test_jsonw_escapes_quote_backslash_and_whitespace),
		cmocka_unit_test(test_jsonw_escapes_control_bytes_as_u00xx),
		cmocka_unit_test(test_jsonw_keeps_del),
		cmocka_unit_test(test_jsonw_escapes_embedded_nul),
		cmocka_unit_test(test_jsonw_keeps_valid_utf8),
		cmocka_unit_test(test_jsonw_replaces_invalid_utf8),
		cmocka_unit_test(test_jsonw_writes_u64),
		cmocka_unit_test(test_jsonw_grows_for_long_strings),
		cmocka_unit_test(test_jsonw_composes_a_document),
		cmocka_unit_test(test_jsonw_any_bytes_parse_strictly),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
