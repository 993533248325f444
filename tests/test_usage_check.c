/*
 * test_usage_check.c - the rules a usage must pass on both sides of the
 * wire: UTF-8, id and name lengths, count limits, details within totals,
 * known flags.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "usage_check.h"

struct utf8_case {
	const char *s;
	size_t len;
};

#define U8(lit)                      \
	{                            \
		lit, sizeof(lit) - 1 \
	}

static const struct utf8_case utf8_good[] = {
	U8(""),
	U8("plain ascii \"\\\n\t\x01\x1f\x7f"),
	/* é, a CJK ideograph, a 4-byte emoji. */
	U8("caf\xc3\xa9"),
	U8("\xe4\xb8\xad\xe6\x96\x87"),
	U8("\xf0\x9f\x98\x80"),
	/* U+0080, U+07FF, U+0800, U+D7FF, U+E000, U+FFFF. */
	U8("\xc2\x80"),
	U8("\xdf\xbf"),
	U8("\xe0\xa0\x80"),
	U8("\xed\x9f\xbf"),
	U8("\xee\x80\x80"),
	U8("\xef\xbf\xbf"),
	/* U+10000, U+10FFFF. */
	U8("\xf0\x90\x80\x80"),
	U8("\xf4\x8f\xbf\xbf"),
};

static const struct utf8_case utf8_bad[] = {
	/* A 4-byte lead cut short, a lone 2-byte lead. */
	U8("\xf0\x80"),
	U8("\xf0\x9f\x98"),
	U8("\xc3"),
	U8("a\xc3(b"),
	/* Overlong forms. */
	U8("\xc0\xaf"),
	U8("\xc1\xbf"),
	U8("\xe0\x80\xaf"),
	U8("\xe0\x9f\xbf"),
	U8("\xf0\x80\x80\xaf"),
	U8("\xf0\x8f\xbf\xbf"),
	/* Encoded UTF-16 surrogates, U+D800 and U+DFFF. */
	U8("\xed\xa0\x80"),
	U8("\xed\xbf\xbf"),
	/* Past U+10FFFF, and bytes that never occur. */
	U8("\xf4\x90\x80\x80"),
	U8("\xf5\x80\x80\x80"),
	U8("\xf8\x88\x80\x80\x80"),
	U8("\xfe"),
	U8("\xff"),
	/* Continuation bytes with no lead. */
	U8("\x80"),
	U8("\xbf"),
	U8("ok\xc3\xa9\x80"),
	/* A 3-byte sequence whose last byte is not a continuation. */
	U8("\xe4\xb8("),
	/* A NUL inside the length. */
	U8("a\0b"),
	U8("\0"),
};

static void test_usage_check_utf8_valid_accepts_wellformed(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(utf8_good) / sizeof(utf8_good[0]); i++)
		if (!utf8_valid(utf8_good[i].s, utf8_good[i].len))
			fail_msg("case %zu refused", i);
}

static void test_usage_check_utf8_valid_refuses_malformed(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(utf8_bad) / sizeof(utf8_bad[0]); i++)
		if (utf8_valid(utf8_bad[i].s, utf8_bad[i].len))
			fail_msg("case %zu accepted", i);
}

/* The length bounds the check: a sequence cut by it is malformed. */
static void test_usage_check_utf8_valid_stops_at_len(void **state)
{
	(void)state;
	assert_false(utf8_valid("\xc3\xa9", 1));
	assert_false(utf8_valid("\xf0\x9f\x98\x80", 3));
	assert_true(utf8_valid("ab\xc3\xa9", 2));
	assert_true(utf8_valid("a\0b", 1));
}

/* A usage that passes, to be spoiled one field at a time. */
static struct tally_usage good_usage(void)
{
	struct tally_usage u = {
		.session_id = "s-1",
		.llm_reference_id = "ce190e1f-eff7-4f6b-9074-9f705375a3d3",
		.llm_display_name = "openAI - gpt-4o - 1735891179896",
		.provider_type = "openAI",
		.model_type = "gpt-4o",
		.input_tokens = 441,
		.output_tokens = 106,
	};

	return u;
}

static int check_api(const struct tally_usage *u)
{
	struct usage_view v;

	usage_view_from_api(&v, u);
	return usage_check(&v);
}

/* A string of n copies of 'x', NUL-terminated; the caller frees it. */
static char *repeat(size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, 'x', n);
	s[n] = '\0';
	return s;
}

static void test_usage_check_accepts_a_good_usage(void **state)
{
	struct tally_usage u = good_usage();

	(void)state;
	assert_int_equal(check_api(&u), 0);
	u.llm_display_name = u.provider_type = u.model_type = NULL;
	assert_int_equal(check_api(&u), 0);
	u.llm_display_name = u.provider_type = u.model_type = "";
	assert_int_equal(check_api(&u), 0);
	u.input_tokens = u.output_tokens = 0;
	assert_int_equal(check_api(&u), 0);
}

static void test_usage_check_refuses_empty_ids(void **state)
{
	struct tally_usage u = good_usage();

	(void)state;
	u.session_id = "";
	assert_int_equal(check_api(&u), -EINVAL);
	u.session_id = NULL;
	assert_int_equal(check_api(&u), -EINVAL);
	u = good_usage();
	u.llm_reference_id = "";
	assert_int_equal(check_api(&u), -EINVAL);
	u.llm_reference_id = NULL;
	assert_int_equal(check_api(&u), -EINVAL);
}

static void test_usage_check_id_length_limit(void **state)
{
	char *id255 = repeat(TALLY_ID_MAX), *id256 = repeat(TALLY_ID_MAX + 1);
	struct tally_usage u = good_usage();

	(void)state;
	assert_int_equal(strlen(id255), 255);
	u.session_id = id255;
	u.llm_reference_id = id255;
	assert_int_equal(check_api(&u), 0);
	u.session_id = id256;
	assert_int_equal(check_api(&u), -EINVAL);
	u.session_id = id255;
	u.llm_reference_id = id256;
	assert_int_equal(check_api(&u), -EINVAL);
	free(id256);
	free(id255);
}

static void test_usage_check_name_length_limit(void **state)
{
	char *n256 = repeat(TALLY_NAME_MAX), *n257 = repeat(TALLY_NAME_MAX + 1);
	const char **name[] = {NULL, NULL, NULL};
	struct tally_usage u;

	(void)state;
	assert_int_equal(strlen(n256), 256);
	for (int i = 0; i < 3; i++) {
		u = good_usage();
		name[0] = &u.llm_display_name;
		name[1] = &u.provider_type;
		name[2] = &u.model_type;
		*name[i] = n256;
		assert_int_equal(check_api(&u), 0);
		*name[i] = n257;
		assert_int_equal(check_api(&u), -EINVAL);
	}
	free(n257);
	free(n256);
}

/* Sets count i (input, output, cache read, cache write, reasoning). */
static void set_count(struct tally_usage *u, int i, uint64_t v)
{
	/* Room for the detail, so that only the range can refuse it. */
	u->input_tokens = TALLY_TOKENS_MAX;
	u->output_tokens = TALLY_TOKENS_MAX;
	u->flags = TALLY_USAGE_HAS_CACHE_READ | TALLY_USAGE_HAS_CACHE_WRITE |
		   TALLY_USAGE_HAS_REASONING;
	switch (i) {
	case 0:
		u->input_tokens = v;
		break;
	case 1:
		u->output_tokens = v;
		break;
	case 2:
		u->cache_read_tokens = v;
		break;
	case 3:
		u->cache_write_tokens = v;
		break;
	default:
		u->reasoning_tokens = v;
	}
}

static void test_usage_check_count_limits(void **state)
{
	static const uint64_t too_big[] = {
		TALLY_TOKENS_MAX + 1,
		(uint64_t)-35,
		UINT64_C(1) << 40,
		UINT64_MAX,
	};
	struct tally_usage u;

	(void)state;
	for (int i = 0; i < 5; i++) {
		u = good_usage();
		set_count(&u, i, TALLY_TOKENS_MAX);
		assert_int_equal(check_api(&u), 0);
		for (size_t k = 0; k < sizeof(too_big) / sizeof(too_big[0]);
		     k++) {
			u = good_usage();
			set_count(&u, i, too_big[k]);
			assert_int_equal(check_api(&u), -ERANGE);
		}
	}
}

static void test_usage_check_details_stay_within_totals(void **state)
{
	struct tally_usage u = good_usage();

	(void)state;
	u.flags = TALLY_USAGE_HAS_CACHE_READ | TALLY_USAGE_HAS_CACHE_WRITE |
		  TALLY_USAGE_HAS_REASONING;
	u.input_tokens = 100;
	u.cache_read_tokens = 60;
	u.cache_write_tokens = 40;
	u.output_tokens = 10;
	u.reasoning_tokens = 10;
	assert_int_equal(check_api(&u), 0);
	u.cache_write_tokens = 41;
	assert_int_equal(check_api(&u), -EINVAL);
	u.cache_write_tokens = 40;
	u.reasoning_tokens = 11;
	assert_int_equal(check_api(&u), -EINVAL);
	/* The sum is checked, not each part alone. */
	u.reasoning_tokens = 0;
	u.input_tokens = TALLY_TOKENS_MAX;
	u.cache_read_tokens = TALLY_TOKENS_MAX;
	u.cache_write_tokens = 1;
	assert_int_equal(check_api(&u), -EINVAL);
}

static void test_usage_check_refuses_unknown_flags(void **state)
{
	struct tally_usage u = good_usage();

	(void)state;
	u.flags = USAGE_FLAGS_ALL;
	u.input_tokens = u.output_tokens = 0;
	assert_int_equal(check_api(&u), 0);
	u.flags = TALLY_USAGE_OUTPUT_MISSING << 1;
	assert_int_equal(check_api(&u), -EINVAL);
	u.flags = UINT32_C(1) << 31;
	assert_int_equal(check_api(&u), -EINVAL);
	u.flags = TALLY_USAGE_ESTIMATED | (UINT32_C(1) << 12);
	assert_int_equal(check_api(&u), -EINVAL);
}

static void test_usage_check_refuses_invalid_utf8(void **state)
{
	struct tally_usage u;
	const char **field[5];

	(void)state;
	for (int i = 0; i < 5; i++) {
		u = good_usage();
		field[0] = &u.session_id;
		field[1] = &u.llm_reference_id;
		field[2] = &u.llm_display_name;
		field[3] = &u.provider_type;
		field[4] = &u.model_type;
		*field[i] = "bad \xc3( name";
		assert_int_equal(check_api(&u), -EILSEQ);
		*field[i] = "\xed\xa0\x80";
		assert_int_equal(check_api(&u), -EILSEQ);
		*field[i] = "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80";
		assert_int_equal(check_api(&u), 0);
	}
}

/* A detail whose HAS_ flag is clear was not reported: it is not counted. */
static void test_usage_check_view_ignores_unflagged_details(void **state)
{
	struct tally_usage u = good_usage();
	struct usage_view v;

	(void)state;
	u.input_tokens = 10;
	u.output_tokens = 5;
	u.cache_read_tokens = 999;
	u.cache_write_tokens = UINT64_MAX;
	u.reasoning_tokens = (uint64_t)-35;
	usage_view_from_api(&v, &u);
	assert_int_equal(v.cache_read, 0);
	assert_int_equal(v.cache_write, 0);
	assert_int_equal(v.reasoning, 0);
	assert_int_equal(usage_check(&v), 0);

	u.flags = TALLY_USAGE_HAS_CACHE_READ;
	u.cache_read_tokens = 7;
	usage_view_from_api(&v, &u);
	assert_int_equal(v.cache_read, 7);
	assert_int_equal(v.cache_write, 0);
	assert_int_equal(v.reasoning, 0);
	assert_int_equal(v.flags, TALLY_USAGE_HAS_CACHE_READ);
	assert_int_equal(usage_check(&v), 0);

	u.flags = TALLY_USAGE_HAS_REASONING;
	usage_view_from_api(&v, &u);
	assert_int_equal(usage_check(&v), -ERANGE);
}

static void test_usage_check_view_from_api_copies_fields(void **state)
{
	struct tally_usage u = good_usage();
	struct usage_view v;

	(void)state;
	u.llm_display_name = NULL;
	u.flags = TALLY_USAGE_ESTIMATED;
	usage_view_from_api(&v, &u);
	assert_string_equal(v.str[USAGE_SESSION], "s-1");
	assert_int_equal(v.len[USAGE_SESSION], 3);
	assert_int_equal(v.len[USAGE_LLM], 36);
	assert_string_equal(v.str[USAGE_DISPLAY], "");
	assert_int_equal(v.len[USAGE_DISPLAY], 0);
	assert_string_equal(v.str[USAGE_PROVIDER], "openAI");
	assert_int_equal(v.len[USAGE_MODEL], 6);
	assert_int_equal(v.input, 441);
	assert_int_equal(v.output, 106);
	assert_int_equal(v.flags, TALLY_USAGE_ESTIMATED);
}

/* The daemon's side: byte strings with lengths, which may hold a NUL. */
static void test_usage_check_wire_view(void **state)
{
	Tally__Usage w = TALLY__USAGE__INIT;
	struct usage_view v;

	(void)state;
	w.session_id.data = (uint8_t *)"s-1";
	w.session_id.len = 3;
	w.llm_reference_id.data = (uint8_t *)"llm";
	w.llm_reference_id.len = 3;
	/* A name whose has_ flag is clear is absent, whatever its bytes. */
	w.llm_display_name.data = (uint8_t *)"\xff";
	w.llm_display_name.len = 1;
	w.input_tokens = 3;
	w.cache_read_tokens = 99;
	usage_view_from_wire(&v, &w);
	assert_int_equal(v.len[USAGE_DISPLAY], 0);
	assert_int_equal(v.cache_read, 0);
	assert_int_equal(usage_check(&v), 0);

	w.has_llm_display_name = 1;
	usage_view_from_wire(&v, &w);
	assert_int_equal(usage_check(&v), -EILSEQ);

	w.has_llm_display_name = 0;
	w.session_id.data = (uint8_t *)"s\0x";
	usage_view_from_wire(&v, &w);
	assert_int_equal(usage_check(&v), -EILSEQ);

	w.session_id.len = 0;
	usage_view_from_wire(&v, &w);
	assert_int_equal(usage_check(&v), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(
			test_usage_check_utf8_valid_accepts_wellformed),
		cmocka_unit_test(test_usage_check_utf8_valid_refuses_malformed),
		cmocka_unit_test(test_usage_check_utf8_valid_stops_at_len),
		cmocka_unit_test(test_usage_check_accepts_a_good_usage),
		cmocka_unit_test(test_usage_check_refuses_empty_ids),
		cmocka_unit_test(test_usage_check_id_length_limit),
		cmocka_unit_test(test_usage_check_name_length_limit),
		cmocka_unit_test(test_usage_check_count_limits),
		cmocka_unit_test(test_usage_check_details_stay_within_totals),
		cmocka_unit_test(test_usage_check_refuses_unknown_flags),
		cmocka_unit_test(test_usage_check_refuses_invalid_utf8),
		cmocka_unit_test(
			test_usage_check_view_ignores_unflagged_details),
		cmocka_unit_test(test_usage_check_view_from_api_copies_fields),
		cmocka_unit_test(test_usage_check_wire_view),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
