/*
 * estimate.c - token counts from text, for the calls whose provider
 * reported no usage.
 *
 * OpenAI's models are counted exactly, with their encoding (bpe.c). Other
 * families' tokenizers are not published in a form that can run offline,
 * so their counts come from a ratio of UTF-8 bytes per token; tally.h
 * says where each ratio comes from and how far off it was measured to be.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "bpe.h"
#include "tally.h"

enum family {
	FAMILY_ANTHROPIC,
	FAMILY_GEMINI,
	FAMILY_LLAMA,
	FAMILY_MISTRAL,
	FAMILY_COHERE,
	FAMILY_UNKNOWN,
	FAMILY_COUNT,
	/* Not a family: the model has an exact encoding. */
	FAMILY_NONE = -1,
};

/* Bytes per ten tokens, so that the arithmetic stays in integers. */
static const struct {
	const char *name;
	unsigned bytes10;
} families[FAMILY_COUNT] = {
	[FAMILY_ANTHROPIC] = {"anthropic", 35},
	[FAMILY_GEMINI] = {"gemini", 40},
	[FAMILY_LLAMA] = {"llama", 40},
	[FAMILY_MISTRAL] = {"mistral", 35},
	[FAMILY_COHERE] = {"cohere", 40},
	[FAMILY_UNKNOWN] = {"unknown", 40},
};

/* Substrings that name a family, wherever they stand in the model type. */
static const struct {
	const char *needle;
	enum family family;
} family_names[] = {
	{"claude", FAMILY_ANTHROPIC},  {"gemini", FAMILY_GEMINI},
	{"gemma", FAMILY_GEMINI},      {"mistral", FAMILY_MISTRAL},
	{"mixtral", FAMILY_MISTRAL},   {"ministral", FAMILY_MISTRAL},
	{"codestral", FAMILY_MISTRAL}, {"pixtral", FAMILY_MISTRAL},
	{"magistral", FAMILY_MISTRAL}, {"devstral", FAMILY_MISTRAL},
	{"cohere", FAMILY_COHERE},     {"llama", FAMILY_LLAMA},
};

/* Prefixes of Cohere's own model names (after any "vendor/" part). */
static const char *const cohere_prefixes[] = {
	"command", "embed-", "rerank-", "aya-", "c4ai-",
};

/* OpenAI models that still use cl100k_base; other "gpt-" ones are o200k. */
static const char *const cl100k_prefixes[] = {
	"gpt-4-",
	"gpt-3.5",
	"gpt-35",
	"text-embedding-3-",
	"text-embedding-ada-002",
	"babbage-002",
	"davinci-002",
};

struct method {
	/* FAMILY_NONE for an exact encoding, which is then bpe. */
	enum family family;
	enum bpe_id bpe;
};

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The o-series: "o1", "o3-mini", "o4-mini-2025-04-16", ... */
static bool is_o_series(const char *s)
{
	size_t i = 1;

	if (s[0] != 'o' || s[1] < '1' || s[1] > '9')
		return false;
	while (s[i] >= '0' && s[i] <= '9')
		i++;
	return s[i] == '\0' || s[i] == '-' || s[i] == ':';
}

/*
 * The part of a model type that names the model: after a fine-tune's
 * "ft:", after the last "vendor/" (OpenRouter, LiteLLM, Hugging Face),
 * after Bedrock's "openai.".
 */
static const char *model_base(const char *m)
{
	const char *slash = strrchr(m, '/');

	if (starts_with(m, "ft:"))
		m += 3;
	if (slash && slash + 1 > m)
		m = slash + 1;
	if (starts_with(m, "openai."))
		m += strlen("openai.");
	return m;
}

static bool is_cl100k(const char *base)
{
	size_t i;

	if (strcmp(base, "gpt-4") == 0)
		return true;
	for (i = 0; i < sizeof(cl100k_prefixes) / sizeof(*cl100k_prefixes); i++)
		if (starts_with(base, cl100k_prefixes[i]))
			return true;
	return false;
}

/* Newer OpenAI models default to o200k_base, as gpt-tokenizer does. */
static bool is_o200k(const char *base)
{
	return starts_with(base, "gpt-") || starts_with(base, "chatgpt-") ||
	       starts_with(base, "codex-") || is_o_series(base);
}

static enum family family_of(const char *lower, const char *base)
{
	size_t i;

	for (i = 0; i < sizeof(family_names) / sizeof(*family_names); i++)
		if (strstr(lower, family_names[i].needle))
			return family_names[i].family;
	for (i = 0; i < sizeof(cohere_prefixes) / sizeof(*cohere_prefixes); i++)
		if (starts_with(base, cohere_prefixes[i]))
			return FAMILY_COHERE;
	return FAMILY_UNKNOWN;
}

/* Model types are matched without regard to ASCII case. */
static int resolve(const char *model_type, struct method *m)
{
	char lower[TALLY_NAME_MAX + 1];
	size_t i, len = model_type ? strlen(model_type) : 0;
	const char *base;

	if (len > TALLY_NAME_MAX)
		return -EINVAL;
	for (i = 0; i < len; i++) {
		lower[i] = model_type[i];
		if (lower[i] >= 'A' && lower[i] <= 'Z')
			lower[i] = (char)(lower[i] - 'A' + 'a');
	}
	lower[len] = '\0';
	base = model_base(lower);
	*m = (struct method){FAMILY_NONE, BPE_O200K};
	if (is_cl100k(base))
		m->bpe = BPE_CL100K;
	else if (is_o200k(base))
		m->bpe = BPE_O200K;
	else
		m->family = family_of(lower, base);
	return 0;
}

/*
 * The length of the UTF-8 sequence at s (at most n bytes), or 0 when it is
 * not well formed: overlong forms, surrogates and code points above
 * U+10FFFF are refused. NUL is a character like any other here.
 */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
	size_t len, i;

	if (s[0] < 0x80)
		return 1;
	if (s[0] < 0xc2 || s[0] > 0xf4)
		return 0;
	len = s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : 4;
	if (n < len)
		return 0;
	for (i = 1; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) ||
	    (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))
		return 0;
	return len;
}

/*
 * Refuses text that is not UTF-8: the encoder then need not check it at
 * every piece, and the ratios never count garbage.
 */
static int check_utf8(const char *text, size_t len)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0, n;

	while (i < len) {
		n = utf8_seq_len(s + i, len - i);
		if (n == 0)
			return -EILSEQ;
		i += n;
	}
	return 0;
}

static int estimate(const struct method *m, const char *text, size_t len,
		    uint64_t *tokens)
{
	struct bpe_sink sink = {0};
	const struct bpe *b;
	unsigned per10;
	int err;

	err = check_utf8(text, len);
	if (err < 0)
		return err;
	if (m->family != FAMILY_NONE) {
		/* Rounded up: a text of one byte is one token. */
		per10 = families[m->family].bytes10;
		*tokens = ((uint64_t)len * 10 + per10 - 1) / per10;
		return 0;
	}
	err = bpe_get(m->bpe, &b);
	if (err == 0)
		err = bpe_run(b, text, len, &sink);
	if (err == 0)
		*tokens = sink.count;
	return err;
}

int tally_estimate_tokens(const char *model_type, const char *text, size_t len,
			  uint64_t *tokens)
{
	struct method m;
	int err;

	if (!tokens || (!text && len))
		return -EINVAL;
	err = resolve(model_type, &m);
	if (err < 0)
		return err;
	return estimate(&m, text, len, tokens);
}

int tally_estimator_for(const char *model_type, struct tally_estimator *e)
{
	struct method m;
	int err;

	if (!e)
		return -EINVAL;
	err = resolve(model_type, &m);
	if (err < 0)
		return err;
	if (m.family == FAMILY_NONE) {
		*e = (struct tally_estimator){bpe_name(m.bpe), true, 0};
		return 0;
	}
	*e = (struct tally_estimator){families[m.family].name, false,
				      families[m.family].bytes10 / 10.0};
	return 0;
}

int tally_estimate_data_dir(char *buf, size_t len)
{
	return bpe_data_dir(buf, len);
}

/* Estimates one side of a call; NULL text means it was not given. */
static int estimate_side(const struct method *m, const char *text, size_t len,
			 uint64_t *tokens, uint32_t *flags, uint32_t missing)
{
	if (!text) {
		*tokens = 0;
		*flags |= missing;
		return 0;
	}
	*flags |= TALLY_USAGE_ESTIMATED;
	return estimate(m, text, len, tokens);
}

int tally_estimate_usage(const char *model_type, const char *prompt,
			 size_t prompt_len, const char *completion,
			 size_t completion_len, struct tally_usage *u)
{
	uint64_t input = 0, output = 0;
	uint32_t flags = 0;
	struct method m;
	int err;

	if (!u || (!prompt && prompt_len) || (!completion && completion_len))
		return -EINVAL;
	err = resolve(model_type, &m);
	if (err == 0)
		err = estimate_side(&m, prompt, prompt_len, &input, &flags,
				    TALLY_USAGE_INPUT_MISSING);
	if (err == 0)
		err = estimate_side(&m, completion, completion_len, &output,
				    &flags, TALLY_USAGE_OUTPUT_MISSING);
	if (err < 0)
		return err;
	u->input_tokens = input;
	u->output_tokens = output;
	u->cache_read_tokens = 0;
	u->cache_write_tokens = 0;
	u->reasoning_tokens = 0;
	u->flags = flags;
	return 0;
}

int tally_record_text(struct tally *t, const struct tally_usage *ids,
		      const char *prompt, size_t prompt_len,
		      const char *completion, size_t completion_len)
{
	struct tally_usage u;
	int err;

	if (!t || !ids)
		return -EINVAL;
	u = *ids;
	err = tally_estimate_usage(ids->model_type, prompt, prompt_len,
				   completion, completion_len, &u);
	if (err < 0)
		return err;
	return tally_record(t, &u);
}
