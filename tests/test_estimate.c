/*
 * test_estimate.c - token counts estimated from text.
 *
 * The references: gpt-tokenizer's own test vectors ($TALLY_DATA_DIR/
 * TestPlans.txt, token ids), and the corpus in $TALLY_FIXTURES/corpus
 * with the counts of gpt-tokenizer and tiktoken in its COUNTS.tsv. Where
 * the two references differ, tally counts as tiktoken does.
 *
 * The cases run in the order of main(): the first ones need the rank
 * files not to be loaded yet in this process (loading is once per
 * process), so they come before any case that loads them.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "bpe.h"
#include "harness.h"
#include "tally.h"

#define IDS_MAX 4096

/* Token ids gathered by a bpe_sink. */
struct ids {
	uint32_t id[IDS_MAX];
	size_t n;
};

static int put_id(void *arg, uint32_t rank)
{
	struct ids *ids = arg;

	if (ids->n == IDS_MAX)
		return -ENOSPC;
	ids->id[ids->n++] = rank;
	return 0;
}

static void encode(enum bpe_id id, const char *text, size_t len,
		   struct ids *out)
{
	struct bpe_sink sink = {.emit = put_id, .arg = out};
	const struct bpe *b;

	out->n = 0;
	assert_int_equal(bpe_get(id, &b), 0);
	assert_int_equal(bpe_run(b, text, len, &sink), 0);
	assert_int_equal(sink.count, out->n);
}

static void assert_ids(enum bpe_id id, const char *text, size_t len,
		       const uint32_t *want, size_t n)
{
	static struct ids got;
	size_t i;

	encode(id, text, len, &got);
	assert_int_equal(got.n, n);
	for (i = 0; i < n; i++)
		assert_int_equal(got.id[i], want[i]);
}

static uint64_t count(const char *model, const char *text, size_t len)
{
	uint64_t n = UINT64_MAX;

	assert_int_equal(tally_estimate_tokens(model, text, len, &n), 0);
	return n;
}

/* The model whose encoding is name, as tally_estimate_tokens takes it. */
static const char *model_of(const char *encoding)
{
	return strcmp(encoding, "o200k_base") == 0 ? "gpt-4o" : "gpt-4";
}

static char *data_file(const char *name, size_t *len)
{
	char path[4200], dir[4096];
	char *text;

	assert_int_equal(tally_estimate_data_dir(dir, sizeof(dir)), 0);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	text = harness_read_file(path, len);
	if (!text)
		fail_msg("cannot read %s: run tools/setup, which installs "
			 "gpt-tokenizer into .deps/",
			 path);
	return text;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

/* ---- before any rank file is loaded ---- */

static char saved_dir[4096];

/* Points TALLY_DATA_DIR at a fresh directory for the failing loads. */
static char *use_empty_dir(char *dir, size_t len)
{
	assert_int_equal(tally_estimate_data_dir(saved_dir, sizeof(saved_dir)),
			 0);
	snprintf(dir, len, "%s/tally-est.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(dir));
	assert_int_equal(setenv("TALLY_DATA_DIR", dir, 1), 0);
	return dir;
}

static void restore_dir(const char *dir)
{
	char path[4200];

	snprintf(path, sizeof(path), "%s/o200k_base.tiktoken", dir);
	unlink(path);
	rmdir(dir);
	assert_int_equal(setenv("TALLY_DATA_DIR", saved_dir, 1), 0);
}

static void test_estimate_missing_rank_file(void **state)
{
	char dir[512], got[4096];
	uint64_t n = 7;

	(void)state;
	use_empty_dir(dir, sizeof(dir));
	assert_int_equal(tally_estimate_data_dir(got, sizeof(got)), 0);
	assert_string_equal(got, dir);
	assert_int_equal(tally_estimate_tokens("gpt-4o", "hi", 2, &n), -ENOENT);
	assert_int_equal(tally_estimate_tokens("gpt-4", "hi", 2, &n), -ENOENT);
	assert_int_equal(n, 7);
	/* The ratio families need no file. */
	assert_int_equal(count("claude-sonnet-4-5", "hello", 5), 2);
	restore_dir(dir);
}

static void test_estimate_bad_rank_file(void **state)
{
	static const char *const bad[] = {
		/* Not base64, no rank, a rank out of range, a repeat. */
		"!!!! 0\n",
		"QQ==\n",
		"QQ== 99999999\n",
		"QQ== 0\nQQ== 1\n",
		/* Well formed, but not every byte is a token. */
		"QQ== 0\nQg== 1\n",
	};
	char dir[512], path[600];
	uint64_t n;
	size_t i;

	(void)state;
	use_empty_dir(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/o200k_base.tiktoken", dir);
	for (i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		write_file(path, bad[i]);
		assert_int_equal(tally_estimate_tokens("gpt-4o", "hi", 2, &n),
				 -EBADMSG);
	}
	restore_dir(dir);
}

struct race {
	const char *text;
	size_t len;
	uint64_t o200k, cl100k;
	int err;
};

static void *race_thread(void *arg)
{
	struct race *r = arg;
	int i;

	for (i = 0; i < 20 && r->err == 0; i++) {
		r->err = tally_estimate_tokens("gpt-4o", r->text, r->len,
					       &r->o200k);
		if (r->err == 0)
			r->err = tally_estimate_tokens("gpt-4", r->text, r->len,
						       &r->cl100k);
	}
	return NULL;
}

/* Says what to do when the rank files are not where the tests look. */
static void require_rank_files(void)
{
	char dir[4096], path[4200];
	size_t i;

	assert_int_equal(tally_estimate_data_dir(dir, sizeof(dir)), 0);
	for (i = 0; i < BPE_COUNT; i++) {
		snprintf(path, sizeof(path), "%s/%s.tiktoken", dir,
			 bpe_name((enum bpe_id)i));
		if (access(path, R_OK) != 0)
			fail_msg("no %s: run tools/setup, which installs "
				 "gpt-tokenizer into .deps/ (meson points "
				 "TALLY_DATA_DIR there)",
				 path);
	}
}

/* The first loads happen here, from four threads at once. */
static void test_estimate_threads_share_the_first_load(void **state)
{
	struct race r[4];
	pthread_t th[4];
	char *text;
	size_t len;
	int i;

	(void)state;
	require_rank_files();
	text = harness_fixture("corpus/prose-en.txt", &len);
	assert_non_null(text);
	for (i = 0; i < 4; i++) {
		r[i] = (struct race){.text = text, .len = len};
		assert_int_equal(
			pthread_create(&th[i], NULL, race_thread, &r[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(r[i].err, 0);
		assert_int_equal(r[i].o200k, 439);
		assert_int_equal(r[i].cl100k, 444);
	}
	free(text);
}

/* ---- exact counts ---- */

/* Parses "[1, 2, 3]" into ids. */
static void parse_ids(const char *s, struct ids *out)
{
	char *end;

	out->n = 0;
	assert_int_equal(*s, '[');
	for (s++; *s && *s != ']'; s = end) {
		while (*s == ' ' || *s == ',')
			s++;
		if (*s == ']')
			break;
		assert_true(out->n < IDS_MAX);
		out->id[out->n++] = (uint32_t)strtoul(s, &end, 10);
		assert_ptr_not_equal(end, s);
	}
}

static bool next_line(char **p, char **line)
{
	char *nl;

	if (!**p)
		return false;
	*line = *p;
	nl = strchr(*p, '\n');
	if (nl) {
		*nl = '\0';
		*p = nl + 1;
	} else {
		*p += strlen(*p);
	}
	return true;
}

/* One "EncodingName / Sample / Encoded" record of TestPlans.txt. */
static void check_plan(const char *encoding, const char *sample,
		       const char *encoded, int *seen)
{
	static struct ids want;
	enum bpe_id id;

	if (strcmp(encoding, "o200k_base") == 0)
		id = BPE_O200K;
	else if (strcmp(encoding, "cl100k_base") == 0)
		id = BPE_CL100K;
	else
		return;
	parse_ids(encoded, &want);
	assert_ids(id, sample, strlen(sample), want.id, want.n);
	assert_int_equal(count(model_of(encoding), sample, strlen(sample)),
			 want.n);
	seen[id]++;
}

static void test_estimate_gpt_tokenizer_vectors(void **state)
{
	char *text, *p, *line, *encoding = NULL, *sample = NULL;
	int seen[BPE_COUNT] = {0};
	size_t len;

	(void)state;
	text = data_file("TestPlans.txt", &len);
	p = text;
	while (next_line(&p, &line)) {
		if (strncmp(line, "EncodingName: ", 14) == 0)
			encoding = line + 14;
		else if (strncmp(line, "Sample: ", 8) == 0)
			sample = line + 8;
		else if (strncmp(line, "Encoded: ", 9) == 0 && encoding &&
			 sample)
			check_plan(encoding, sample, line + 9, seen);
	}
	/* gpt-tokenizer 4.0.0 ships 57 and 64 vectors for the two. */
	assert_int_equal(seen[BPE_O200K], 57);
	assert_int_equal(seen[BPE_CL100K], 64);
	free(text);
}

/* The one corpus file on which gpt-tokenizer and tiktoken disagree. */
static bool known_difference(const char *file)
{
	return strcmp(file, "unicode-space.txt") == 0;
}

static void check_corpus_row(char *row, int *rows)
{
	char *file = strtok(row, "\t"), *encoding = strtok(NULL, "\t");
	char *gpt = strtok(NULL, "\t"), *tk = strtok(NULL, "\t");
	char rel[300];
	uint64_t want;
	char *text;
	size_t len;

	assert_non_null(tk);
	snprintf(rel, sizeof(rel), "corpus/%s", file);
	text = harness_fixture(rel, &len);
	assert_non_null(text);
	want = strtoull(tk, NULL, 10);
	if (count(model_of(encoding), text, len) != want)
		fail_msg("%s, %s: tally counts %" PRIu64 ", tiktoken %" PRIu64,
			 file, encoding, count(model_of(encoding), text, len),
			 want);
	if (strtoull(gpt, NULL, 10) != want && !known_difference(file))
		fail_msg("%s: gpt-tokenizer and tiktoken disagree", file);
	(*rows)++;
	free(text);
}

static void test_estimate_corpus_counts(void **state)
{
	char *text, *p, *line;
	int rows = 0;
	size_t len;

	(void)state;
	text = harness_fixture("corpus/COUNTS.tsv", &len);
	assert_non_null(text);
	p = text;
	while (next_line(&p, &line))
		if (*line && *line != '#')
			check_corpus_row(line, &rows);
	/* 14 files, 2 encodings. */
	assert_int_equal(rows, 28);
	free(text);
}

/* Where gpt-tokenizer strays from tiktoken, tally follows tiktoken. */
static void test_estimate_follows_tiktoken(void **state)
{
	static const uint32_t bom_o200k[] = {5574, 7216};
	static const uint32_t bom_cl100k[] = {3305, 3867};
	static const uint32_t nel_o200k[] = {1137, 126, 227, 10564, 3651, 8};
	static const uint32_t nel_cl100k[] = {1074, 126, 227, 8368, 2818, 8};
	static const char bom[] = "\xef\xbb\xbf"
				  "byte";
	static const char nel[] = "line\xc2\x85(NEL)";

	(void)state;
	/* gpt-tokenizer: 5416 123 7216, the mark in two byte tokens. */
	assert_ids(BPE_O200K, bom, strlen(bom), bom_o200k, 2);
	/* gpt-tokenizer: 171 3299 3867. */
	assert_ids(BPE_CL100K, bom, strlen(bom), bom_cl100k, 2);
	/* gpt-tokenizer: ... 7 167635 8, with U+0085 not white space. */
	assert_ids(BPE_O200K, nel, strlen(nel), nel_o200k, 6);
	/* gpt-tokenizer: ... 7 82951 8. */
	assert_ids(BPE_CL100K, nel, strlen(nel), nel_cl100k, 6);
}

static void test_estimate_special_tokens_are_text(void **state)
{
	static const uint32_t o200k[] = {27, 91, 419, 1440, 919, 91, 29};
	static const uint32_t cl100k[] = {27, 91, 8862, 728, 428, 91, 29};
	static const char eot[] = "<|endoftext|>";

	(void)state;
	assert_ids(BPE_O200K, eot, strlen(eot), o200k, 7);
	assert_ids(BPE_CL100K, eot, strlen(eot), cl100k, 7);
	assert_int_equal(count("gpt-4o", "hello <|endoftext|> world", 25), 9);
}

static void test_estimate_nul_is_a_character(void **state)
{
	static const uint32_t want[] = {64, 188, 65};

	(void)state;
	assert_ids(BPE_O200K, "a\0b", 3, want, 3);
	assert_ids(BPE_CL100K, "a\0b", 3, want, 3);
}

/* Counts of long runs, from tiktoken; they take the heap merge. */
static void test_estimate_long_runs(void **state)
{
	static const struct {
		const char *unit;
		size_t repeat;
		uint64_t o200k, cl100k;
	} runs[] = {
		{" ", 100000, 782, 782},
		{"a", 100000, 12500, 12500},
		{"A", 100000, 12500, 12500},
		{"!", 100000, 6250, 12500},
		{"\n", 100000, 6250, 3125},
		{"ab", 50000, 25000, 50000},
		{"\xe6\xbc\xa2", 50000, 50000, 100000},
	};
	size_t i, j, n;
	char *text;

	(void)state;
	for (i = 0; i < sizeof(runs) / sizeof(*runs); i++) {
		n = strlen(runs[i].unit);
		text = malloc(n * runs[i].repeat);
		assert_non_null(text);
		for (j = 0; j < runs[i].repeat; j++)
			memcpy(text + j * n, runs[i].unit, n);
		assert_int_equal(count("gpt-4o", text, n * runs[i].repeat),
				 runs[i].o200k);
		assert_int_equal(count("gpt-4", text, n * runs[i].repeat),
				 runs[i].cl100k);
		free(text);
	}
}

/* splitmix64, for pieces that are the same on every run. */
static uint64_t next_random(uint64_t *x)
{
	uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static void merge_both(const struct bpe *b, const uint8_t *p, size_t n)
{
	static struct ids scan, heap;
	struct bpe_sink s1 = {.emit = put_id, .arg = &scan};
	struct bpe_sink s2 = {.emit = put_id, .arg = &heap};

	scan.n = heap.n = 0;
	assert_int_equal(bpe_merge(b, p, n, BPE_PATH_SCAN, &s1), 0);
	assert_int_equal(bpe_merge(b, p, n, BPE_PATH_HEAP, &s2), 0);
	assert_int_equal(scan.n, heap.n);
	assert_memory_equal(scan.id, heap.id, scan.n * sizeof(*scan.id));
}

/* Both merge paths give the same tokens for any piece of 2 to 64 bytes. */
static void test_estimate_merge_paths_agree(void **state)
{
	const struct bpe *b[BPE_COUNT];
	uint64_t seed = 42, r;
	char *text;
	size_t len, i, n;
	int e;

	(void)state;
	text = harness_fixture("corpus/mixed.txt", &len);
	assert_non_null(text);
	assert_int_equal(bpe_get(BPE_O200K, &b[BPE_O200K]), 0);
	assert_int_equal(bpe_get(BPE_CL100K, &b[BPE_CL100K]), 0);
	assert_int_equal(bpe_merge(b[0], (const uint8_t *)text, 65,
				   BPE_PATH_SCAN, &(struct bpe_sink){0}),
			 -EINVAL);
	for (i = 0; i < 5000; i++) {
		r = next_random(&seed);
		n = 2 + r % 63;
		for (e = 0; e < BPE_COUNT; e++)
			merge_both(b[e],
				   (const uint8_t *)text + (r >> 8) % (len - n),
				   n);
	}
	free(text);
}

/* ---- model types and ratios ---- */

static void assert_estimator(const char *model, const char *name, bool exact,
			     double ratio)
{
	struct tally_estimator e;

	assert_int_equal(tally_estimator_for(model, &e), 0);
	if (strcmp(e.name, name) != 0)
		fail_msg("%s: %s, not %s", model ? model : "NULL", e.name,
			 name);
	assert_int_equal(e.exact, exact);
	assert_true(e.bytes_per_token == ratio);
}

static void test_estimate_openai_models(void **state)
{
	static const char *const o200k[] = {
		"gpt-4o",
		"GPT-4o",
		"gpt-4o-mini-2024-07-18",
		"gpt-4.1-nano",
		"gpt-4.5-preview",
		"gpt-5",
		"gpt-5-mini",
		"o1",
		"o1-preview",
		"o3-mini",
		"o4-mini-2025-04-16",
		"o10",
		"chatgpt-4o-latest",
		"gpt-oss-120b",
		"codex-mini-latest",
		"ft:gpt-4o-mini-2024-07-18:acme::9abc",
		"openai/gpt-4o",
		"azure/gpt-4.1",
		"openai.gpt-oss-20b-1:0",
		"gpt-image-1",
	};
	static const char *const cl100k[] = {
		"gpt-4",
		"gpt-4-turbo",
		"gpt-4-0613",
		"gpt-4-32k",
		"gpt-3.5-turbo",
		"gpt-3.5-turbo-instruct",
		"gpt-35-turbo",
		"text-embedding-3-large",
		"text-embedding-3-small",
		"text-embedding-ada-002",
		"davinci-002",
		"babbage-002",
		"ft:gpt-3.5-turbo-0125:acme::x1",
		"openai/gpt-4-turbo",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(o200k) / sizeof(*o200k); i++)
		assert_estimator(o200k[i], "o200k_base", true, 0);
	for (i = 0; i < sizeof(cl100k) / sizeof(*cl100k); i++)
		assert_estimator(cl100k[i], "cl100k_base", true, 0);
}

static void test_estimate_family_models(void **state)
{
	static const struct {
		const char *model, *family;
		double ratio;
	} t[] = {
		{"claude-3-5-sonnet-20241022", "anthropic", 3.5},
		{"anthropic.claude-3-haiku-20240307-v1:0", "anthropic", 3.5},
		{"us.anthropic.claude-sonnet-4-20250514-v1:0", "anthropic",
		 3.5},
		{"Claude-Opus-4", "anthropic", 3.5},
		{"gemini-2.5-pro", "gemini", 4.0},
		{"models/gemini-1.5-flash", "gemini", 4.0},
		{"gemma3:27b", "gemini", 4.0},
		{"mistral-large-latest", "mistral", 3.5},
		{"open-mixtral-8x22b", "mistral", 3.5},
		{"codestral-latest", "mistral", 3.5},
		{"ministral-8b-latest", "mistral", 3.5},
		{"pixtral-12b", "mistral", 3.5},
		{"mistral.mistral-7b-instruct-v0:2", "mistral", 3.5},
		{"command-r-plus", "cohere", 4.0},
		{"command-a-03-2025", "cohere", 4.0},
		{"embed-english-v3.0", "cohere", 4.0},
		{"rerank-v3.5", "cohere", 4.0},
		{"cohere.command-r-v1:0", "cohere", 4.0},
		{"c4ai-aya-expanse-32b", "cohere", 4.0},
		{"llama3.1:8b", "llama", 4.0},
		{"meta-llama/Llama-3.1-8B-Instruct", "llama", 4.0},
		{"meta.llama3-70b-instruct-v1:0", "llama", 4.0},
		{"codellama:7b", "llama", 4.0},
		{"qwen2.5:7b", "unknown", 4.0},
		{"deepseek-chat", "unknown", 4.0},
		{"text-davinci-003", "unknown", 4.0},
		{"gpt4", "unknown", 4.0},
		{"o1x", "unknown", 4.0},
		{"omni-moderation-latest", "unknown", 4.0},
		{"", "unknown", 4.0},
		{NULL, "unknown", 4.0},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(t) / sizeof(*t); i++)
		assert_estimator(t[i].model, t[i].family, false, t[i].ratio);
}

static void test_estimate_ratio_counts(void **state)
{
	char text[64];

	(void)state;
	memset(text, 'x', sizeof(text));
	assert_int_equal(count("claude-3-haiku", "", 0), 0);
	assert_int_equal(count("claude-3-haiku", NULL, 0), 0);
	assert_int_equal(count("claude-3-haiku", "a", 1), 1);
	assert_int_equal(count("gemini-2.0-flash", "a", 1), 1);
	/* Rounded up: 7 / 3.5 is 2, 8 / 3.5 is 3; 8 / 4 is 2, 9 / 4 is 3. */
	assert_int_equal(count("claude-3-haiku", text, 7), 2);
	assert_int_equal(count("claude-3-haiku", text, 8), 3);
	assert_int_equal(count("gemini-2.0-flash", text, 8), 2);
	assert_int_equal(count("gemini-2.0-flash", text, 9), 3);
	assert_int_equal(count("mistral-small", text, 35), 10);
	assert_int_equal(count("mistral-small", text, 36), 11);
	/* Bytes, not characters: two CJK characters are 6 bytes. */
	assert_int_equal(count("some-model", "\xe6\xbc\xa2\xe5\xad\x97", 6), 2);
	assert_int_equal(count(NULL, text, 64), 16);
}

/* ---- errors ---- */

static void test_estimate_bad_arguments(void **state)
{
	char model[TALLY_NAME_MAX + 2], buf[8];
	struct tally_estimator e;
	uint64_t n = 5;

	(void)state;
	memset(model, 'm', sizeof(model) - 1);
	model[sizeof(model) - 1] = '\0';
	assert_int_equal(tally_estimate_tokens("gpt-4o", "a", 1, NULL),
			 -EINVAL);
	assert_int_equal(tally_estimate_tokens("gpt-4o", NULL, 1, &n), -EINVAL);
	assert_int_equal(tally_estimate_tokens(model, "a", 1, &n), -EINVAL);
	assert_int_equal(tally_estimator_for(model, &e), -EINVAL);
	assert_int_equal(tally_estimator_for("gpt-4o", NULL), -EINVAL);
	assert_int_equal(n, 5);
	model[TALLY_NAME_MAX] = '\0';
	assert_int_equal(tally_estimator_for(model, &e), 0);
	assert_int_equal(tally_estimate_data_dir(NULL, 8), -EINVAL);
	assert_int_equal(tally_estimate_data_dir(buf, sizeof(buf)),
			 -ENAMETOOLONG);
}

static void test_estimate_invalid_utf8(void **state)
{
	static const char *const bad[] = {
		"\xff",
		"\x80",
		"\xc0\x80",
		"\xc1\xbf",
		"\xe0\x80\x80",
		"\xed\xa0\x80",
		"\xf4\x90\x80\x80",
		"\xf8\x88\x80\x80",
		"\xe6\xbc",
		"ok\xe6",
	};
	static const char *const models[] = {"gpt-4o", "gpt-4", "claude-3",
					     "unknown"};
	uint64_t n = 9;
	size_t i, m;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		for (m = 0; m < sizeof(models) / sizeof(*models); m++)
			assert_int_equal(
				tally_estimate_tokens(models[m], bad[i],
						      strlen(bad[i]), &n),
				-EILSEQ);
	assert_int_equal(n, 9);
	/* The largest code point and the last before the surrogates. */
	assert_int_equal(count("gpt-4o", "\xf4\x8f\xbf\xbf\xed\x9f\xbf", 7) > 0,
			 1);
}

/* ---- usages from text ---- */

static void test_estimate_usage_flags(void **state)
{
	struct tally_usage u = {.session_id = "s", .llm_reference_id = "l"};

	(void)state;
	assert_int_equal(tally_estimate_usage("gpt-4o", "Hello, world!", 13,
					      "a\0b", 3, &u),
			 0);
	assert_int_equal(u.input_tokens, 4);
	assert_int_equal(u.output_tokens, 3);
	assert_int_equal(u.flags, TALLY_USAGE_ESTIMATED);
	assert_string_equal(u.session_id, "s");

	assert_int_equal(
		tally_estimate_usage("gpt-4", "Hello, world!", 13, NULL, 0, &u),
		0);
	assert_int_equal(u.input_tokens, 4);
	assert_int_equal(u.output_tokens, 0);
	assert_int_equal(u.flags,
			 TALLY_USAGE_ESTIMATED | TALLY_USAGE_OUTPUT_MISSING);

	assert_int_equal(tally_estimate_usage("claude-3", NULL, 0, "", 0, &u),
			 0);
	assert_int_equal(u.flags,
			 TALLY_USAGE_ESTIMATED | TALLY_USAGE_INPUT_MISSING);

	/* Nothing seen at all: a usage missing call, not an estimate. */
	u.cache_read_tokens = 3;
	assert_int_equal(tally_estimate_usage("gpt-4o", NULL, 0, NULL, 0, &u),
			 0);
	assert_int_equal(u.input_tokens, 0);
	assert_int_equal(u.output_tokens, 0);
	assert_int_equal(u.cache_read_tokens, 0);
	assert_int_equal(u.flags, TALLY_USAGE_INPUT_MISSING |
					  TALLY_USAGE_OUTPUT_MISSING);
}

static void test_estimate_usage_errors(void **state)
{
	struct tally_usage u = {.input_tokens = 11, .flags = 1};

	(void)state;
	assert_int_equal(tally_estimate_usage("gpt-4o", "a", 1, "b", 1, NULL),
			 -EINVAL);
	assert_int_equal(tally_estimate_usage("gpt-4o", NULL, 1, "b", 1, &u),
			 -EINVAL);
	assert_int_equal(tally_estimate_usage("gpt-4o", "a", 1, NULL, 1, &u),
			 -EINVAL);
	assert_int_equal(tally_estimate_usage("gpt-4o", "a", 1, "\xff", 1, &u),
			 -EILSEQ);
	/* On error the usage is left as it was. */
	assert_int_equal(u.input_tokens, 11);
	assert_int_equal(u.flags, 1);
}

static void test_estimate_record_text_queues(void **state)
{
	struct tally_options opts = {.close_timeout_ms = 1};
	struct tally_usage ids = harness_usage("sess", "llm", 999, 999);
	struct harness *h = *state;
	struct tally *t = NULL;

	opts.dir = h->dir;
	ids.model_type = "gpt-4o";
	/* No daemon is needed to queue a usage. */
	assert_int_equal(tally_open_ex(&t, &opts), 0);
	assert_int_equal(tally_record_text(NULL, &ids, "a", 1, "b", 1),
			 -EINVAL);
	assert_int_equal(tally_record_text(t, NULL, "a", 1, "b", 1), -EINVAL);
	assert_int_equal(tally_record_text(t, &ids, "\xff", 1, "b", 1),
			 -EILSEQ);
	assert_int_equal(tally_pending(t), 0);
	assert_int_equal(
		tally_record_text(t, &ids, "Hello, world!", 13, NULL, 0), 0);
	assert_int_equal(tally_record_text(t, &ids, NULL, 0, NULL, 0), 0);
	assert_int_equal(tally_pending(t), 2);
	tally_close(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		/* These three first: see the comment at the top. */
		cmocka_unit_test(test_estimate_missing_rank_file),
		cmocka_unit_test(test_estimate_bad_rank_file),
		cmocka_unit_test(test_estimate_threads_share_the_first_load),
		cmocka_unit_test(test_estimate_gpt_tokenizer_vectors),
		cmocka_unit_test(test_estimate_corpus_counts),
		cmocka_unit_test(test_estimate_follows_tiktoken),
		cmocka_unit_test(test_estimate_special_tokens_are_text),
		cmocka_unit_test(test_estimate_nul_is_a_character),
		cmocka_unit_test(test_estimate_long_runs),
		cmocka_unit_test(test_estimate_merge_paths_agree),
		cmocka_unit_test(test_estimate_openai_models),
		cmocka_unit_test(test_estimate_family_models),
		cmocka_unit_test(test_estimate_ratio_counts),
		cmocka_unit_test(test_estimate_bad_arguments),
		cmocka_unit_test(test_estimate_invalid_utf8),
		cmocka_unit_test(test_estimate_usage_flags),
		cmocka_unit_test(test_estimate_usage_errors),
		harness_test(test_estimate_record_text_queues),
	};

	return cmocka_run_group_tests_name("estimate", tests, NULL, NULL);
}
