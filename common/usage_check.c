#include <errno.h>
#include <string.h>

#include "ledger_format.h"
#include "usage_check.h"

/* Bytes 0x80..0xBF continue a sequence. */
static bool cont(unsigned char c)
{
	return (c & 0xc0) == 0x80;
}

/*
 * Length of the UTF-8 sequence at s, or 0 when it is malformed: overlong
 * forms, UTF-16 surrogates and code points past U+10FFFF are refused as
 * RFC 3629 says.
 */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
	unsigned char c = s[0];

	if (c >= 0x01 && c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return left >= 2 && cont(s[1]) ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		if (left < 3 || !cont(s[1]) || !cont(s[2]))
			return 0;
		if (c == 0xe0 && s[1] < 0xa0)
			return 0;
		if (c == 0xed && s[1] > 0x9f)
			return 0;
		return 3;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		if (left < 4 || !cont(s[1]) || !cont(s[2]) || !cont(s[3]))
			return 0;
		if (c == 0xf0 && s[1] < 0x90)
			return 0;
		if (c == 0xf4 && s[1] > 0x8f)
			return 0;
		return 4;
	}
	return 0;
}

bool utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, n;

	while (i < len) {
		/* Ids and names are mostly ASCII: take a run of it at once. */
		while (i < len && p[i] - 1u < 0x7fu)
			i++;
		if (i == len)
			break;
		n = utf8_seq(p + i, len - i);
		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

void usage_view_from_api(struct usage_view *v, const struct tally_usage *u)
{
	const char *s[USAGE_NSTR] = {
		u->session_id,	  u->llm_reference_id, u->llm_display_name,
		u->provider_type, u->model_type,
	};

	memset(v, 0, sizeof(*v));
	for (int i = 0; i < USAGE_NSTR; i++) {
		v->str[i] = s[i] != NULL ? s[i] : "";
		v->len[i] = strlen(v->str[i]);
	}
	v->input = u->input_tokens;
	v->output = u->output_tokens;
	/* A detail without its flag was not reported: it is not a zero. */
	if (u->flags & TALLY_USAGE_HAS_CACHE_READ)
		v->cache_read = u->cache_read_tokens;
	if (u->flags & TALLY_USAGE_HAS_CACHE_WRITE)
		v->cache_write = u->cache_write_tokens;
	if (u->flags & TALLY_USAGE_HAS_REASONING)
		v->reasoning = u->reasoning_tokens;
	v->flags = u->flags;
}

static void bytes_view(struct usage_view *v, int i, int has,
		       ProtobufCBinaryData b)
{
	v->str[i] = has && b.data != NULL ? (const char *)b.data : "";
	v->len[i] = has && b.data != NULL ? b.len : 0;
}

void usage_view_from_wire(struct usage_view *v, const Tally__Usage *u)
{
	memset(v, 0, sizeof(*v));
	bytes_view(v, USAGE_SESSION, 1, u->session_id);
	bytes_view(v, USAGE_LLM, 1, u->llm_reference_id);
	bytes_view(v, USAGE_DISPLAY, u->has_llm_display_name,
		   u->llm_display_name);
	bytes_view(v, USAGE_PROVIDER, u->has_provider_type, u->provider_type);
	bytes_view(v, USAGE_MODEL, u->has_model_type, u->model_type);
	v->input = u->input_tokens;
	v->output = u->output_tokens;
	v->cache_read = u->has_cache_read_tokens ? u->cache_read_tokens : 0;
	v->cache_write = u->has_cache_write_tokens ? u->cache_write_tokens : 0;
	v->reasoning = u->has_reasoning_tokens ? u->reasoning_tokens : 0;
	v->flags = u->has_flags ? u->flags : 0;
	v->time_ns = u->has_time_ns ? u->time_ns : 0;
}

static int check_counts(const struct usage_view *v)
{
	const uint64_t c[] = {v->input, v->output, v->cache_read,
			      v->cache_write, v->reasoning};

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		if (c[i] > TALLY_TOKENS_MAX)
			return -ERANGE;
	/* The details are parts of the totals, never additions to them. */
	if (v->cache_read + v->cache_write > v->input)
		return -EINVAL;
	if (v->reasoning > v->output)
		return -EINVAL;
	return 0;
}

int usage_check(const struct usage_view *v)
{
	for (int i = 0; i < USAGE_NSTR; i++) {
		size_t max = i <= USAGE_LLM ? TALLY_ID_MAX : TALLY_NAME_MAX;

		if (v->len[i] > max)
			return -EINVAL;
		if (i <= USAGE_LLM && v->len[i] == 0)
			return -EINVAL;
		if (!utf8_valid(v->str[i], v->len[i]))
			return -EILSEQ;
	}
	if (v->flags & ~(uint32_t)USAGE_FLAGS_ALL)
		return -EINVAL;
	return check_counts(v);
}

void usage_count(struct ledger_counters *c, const struct usage_view *v)
{
	c->input += v->input;
	c->output += v->output;
	c->cache_read += v->cache_read;
	c->cache_write += v->cache_write;
	c->reasoning += v->reasoning;
	c->calls++;
	if (v->flags & TALLY_USAGE_ESTIMATED) {
		c->est_input += v->input;
		c->est_output += v->output;
	}
	if (v->flags & (TALLY_USAGE_INPUT_MISSING | TALLY_USAGE_OUTPUT_MISSING))
		c->missing++;
}
