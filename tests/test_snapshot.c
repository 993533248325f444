/*
 * test_snapshot.c - tally_session_json() against a real tallyd.
 *
 * Every case runs on a fresh directory with its own daemon (set up and torn
 * down around it, so that a failed assert still stops the daemon). The
 * snapshot's text is compared byte for byte where its shape is the point,
 * and always parsed with jansson in its strict mode.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "harness.h"
#include "tally.h"

#define SYNC_MS 5000

/* The two LLMs of DESIGN.md's example. */
#define EMB_ID "1c945b38-5dbb-4fcf-9fdd-112bd8177f9c"
#define CHAT_ID "ce190e1f-eff7-4f6b-9074-9f705375a3d3"
#define EMB_NAMES                                                    \
	"\"llmDisplayName\":\"openAI - text-embedding-3-large - "    \
	"1735891122507\",\"providerType\":\"openAI\",\"modelType\":" \
	"\"text-embedding-3-large\""
#define CHAT_NAMES                                                \
	"\"llmDisplayName\":\"openAI - gpt-4o - 1735891179896\"," \
	"\"providerType\":\"openAI\",\"modelType\":\"gpt-4o\""
#define USAGE(in, out) \
	"\"usage\":{\"inputTokens\":" #in ",\"outputTokens\":" #out "}"

/* One entry of a snapshot; usage may carry details after it. */
#define ENTRY(id, names, usage) "\"" id "\":{" names "," usage "}"
#define EMB(in) ENTRY(EMB_ID, EMB_NAMES, USAGE(in, 0))
#define CHAT(in, out) ENTRY(CHAT_ID, CHAT_NAMES, USAGE(in, out))
/* An LLM with id "llm" and the chat LLM's names. */
#define LLM(usage) ENTRY("llm", CHAT_NAMES, usage)
#define NO_NAMES \
	"\"llmDisplayName\":\"\",\"providerType\":\"\",\"modelType\":\"\""

/* DESIGN.md's example, compact, keys in byte order. */
#define DESIGN_JSON "{" EMB(6) "," CHAT(441, 106) "}"

static int setup(void **state)
{
	struct harness *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return -1;
	*state = h;
	harness_init(h);
	harness_start(h, (const char *)NULL);
	return 0;
}

/* A directory where no tallyd has ever run. */
static int setup_bare(void **state)
{
	struct harness *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return -1;
	*state = h;
	harness_init(h);
	return 0;
}

static int teardown(void **state)
{
	struct harness *h = *state;

	/* A case that failed while the daemon was stopped leaves it so. */
	if (h->daemon > 0)
		kill(h->daemon, SIGCONT);
	harness_fini(h);
	free(h);
	return 0;
}

static struct tally *open_handle(const struct harness *h)
{
	struct tally *t;

	assert_int_equal(tally_open(&t, h->dir), 0);
	return t;
}

static char *snap_ex(struct tally *t, const char *sid, unsigned flags)
{
	char *json = NULL;

	assert_int_equal(tally_session_json_ex(t, sid, flags, &json), 0);
	assert_non_null(json);
	return json;
}

static char *snap(struct tally *t, const char *sid)
{
	return snap_ex(t, sid, 0);
}

static json_t *parse_strict(const char *json)
{
	json_error_t err;
	json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &err);

	if (root == NULL)
		fail_msg("not strict JSON (%s): %s", err.text, json);
	assert_true(json_is_object(root));
	return root;
}

static void assert_snapshot_ex(struct tally *t, const char *sid, unsigned flags,
			       const char *want)
{
	char *json = snap_ex(t, sid, flags);
	json_t *root = parse_strict(json);

	json_decref(root);
	assert_string_equal(json, want);
	free(json);
}

static void assert_snapshot(struct tally *t, const char *sid, const char *want)
{
	assert_snapshot_ex(t, sid, 0, want);
}

static void record(struct tally *t, const struct tally_usage *u)
{
	assert_int_equal(tally_record(t, u), 0);
}

static struct tally_usage embedding(const char *sid, uint64_t input)
{
	struct tally_usage u = {
		.session_id = sid,
		.llm_reference_id = EMB_ID,
		.llm_display_name =
			"openAI - text-embedding-3-large - 1735891122507",
		.provider_type = "openAI",
		.model_type = "text-embedding-3-large",
		.input_tokens = input,
	};

	return u;
}

/* n copies of c, NUL-terminated; the caller frees it. */
static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* Waits, at most 5 s, for the daemon (our child) to stop or continue. */
static void wait_child_state(pid_t pid, int stopped)
{
	int status;

	for (int i = 0; i < 1000; i++) {
		pid_t r = waitpid(pid, &status,
				  WNOHANG | (stopped ? WUNTRACED : WCONTINUED));

		if (r == pid &&
		    (stopped ? WIFSTOPPED(status) : WIFCONTINUED(status)))
			return;
		assert_int_equal(r, 0);
		harness_sleep_ms(5);
	}
	fail_msg("tallyd %d did not %s", (int)pid,
		 stopped ? "stop" : "continue");
}

static void pause_daemon(struct harness *h)
{
	assert_int_equal(kill(h->daemon, SIGSTOP), 0);
	wait_child_state(h->daemon, 1);
}

static void resume_daemon(struct harness *h)
{
	assert_int_equal(kill(h->daemon, SIGCONT), 0);
	wait_child_state(h->daemon, 0);
}

/* ---- shape ---- */

static void test_snapshot_exact_shape(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h), *t2 = open_handle(h);
	struct tally_usage chat = harness_usage("s-shape", CHAT_ID, 441, 106);
	struct tally_usage emb = embedding("s-shape", 6);

	/* Recorded in the other order: the ledger's key order wins. */
	record(t, &chat);
	record(t, &emb);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_int_equal(tally_pending(t), 0);
	assert_snapshot(t, "s-shape", DESIGN_JSON);
	assert_snapshot(t2, "s-shape", DESIGN_JSON);
	tally_close(t2);
	tally_close(t);
}

static void test_snapshot_unknown_session_is_empty(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	struct tally_usage u = harness_usage("abc", "llm", 1, 2);

	assert_snapshot(t, "abc", "{}");
	record(t, &u);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t, "nobody", "{}");
	/* Keys are "session NUL llm": a prefix or extension is not a match. */
	assert_snapshot(t, "ab", "{}");
	assert_snapshot(t, "abcd", "{}");
	assert_snapshot(t, "abc", "{" LLM(USAGE(1, 2)) "}");
	tally_close(t);
}

static void test_snapshot_refuses_bad_session_ids(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	char *id255 = repeat('s', TALLY_ID_MAX);
	char *id256 = repeat('s', TALLY_ID_MAX + 1);
	char *json = NULL;

	assert_int_equal(tally_session_json(t, NULL, &json), -EINVAL);
	assert_int_equal(tally_session_json(t, "", &json), -EINVAL);
	assert_int_equal(tally_session_json(t, id256, &json), -EINVAL);
	assert_int_equal(tally_session_json(t, "s\xc3(", &json), -EILSEQ);
	assert_int_equal(tally_session_json(t, "\xed\xa0\x80", &json), -EILSEQ);
	assert_int_equal(tally_session_json(t, "s", NULL), -EINVAL);
	assert_int_equal(tally_session_json(NULL, "s", &json), -EINVAL);
	assert_int_equal(
		tally_session_json_ex(t, id256, TALLY_JSON_DETAILS, &json),
		-EINVAL);
	assert_snapshot(t, id255, "{}");
	free(id256);
	free(id255);
	tally_close(t);
}

static void test_snapshot_without_ledger_is_enoent(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	char *json = NULL;

	assert_int_equal(tally_session_json(t, "s", &json), -ENOENT);
	tally_close(t);
}

/* ---- escaping ---- */

static void check_entry(json_t *root, const char *llm, const char *display,
			const char *provider, const char *model)
{
	json_t *e = json_object_get(root, llm);

	if (e == NULL)
		fail_msg("no entry for LLM id '%s'", llm);
	assert_string_equal(
		json_string_value(json_object_get(e, "llmDisplayName")),
		display);
	assert_string_equal(
		json_string_value(json_object_get(e, "providerType")),
		provider);
	assert_string_equal(json_string_value(json_object_get(e, "modelType")),
			    model);
}

static void check_escaped(struct tally *t, const char *display)
{
	char *json = snap(t, "s-esc");
	json_t *root = parse_strict(json);

	/* Every control byte was escaped, so none is left raw. */
	for (const char *p = json; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20)
			fail_msg("raw byte 0x%02x in %s", *p, json);
	assert_non_null(strstr(json, "\"llm\\\"quoted\":{"));
	assert_int_equal(json_object_size(root), 3);
	check_entry(root, "llm\"quoted", display, "prov\x7f\xc3\xa9",
		    "\xe4\xb8\xad\xf0\x9f\x98\x80");
	check_entry(root, "llm\\back", "plain", "p", "m");
	check_entry(root, "llm\nnl\t\x01", "", "", "");
	json_decref(root);
	free(json);
}

static void test_snapshot_escapes_names_and_ids(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h), *t2 = open_handle(h);
	char display[128] = "say \"hi\" \\ back\\slash\nnew\r\ttab ";
	size_t n = strlen(display);
	struct tally_usage u = {
		.session_id = "s-esc",
		.llm_reference_id = "llm\"quoted",
		.llm_display_name = display,
		.provider_type = "prov\x7f\xc3\xa9",
		.model_type = "\xe4\xb8\xad\xf0\x9f\x98\x80",
		.input_tokens = 1,
	};
	struct tally_usage u2 = {
		.session_id = "s-esc",
		.llm_reference_id = "llm\\back",
		.llm_display_name = "plain",
		.provider_type = "p",
		.model_type = "m",
		.input_tokens = 2,
	};
	struct tally_usage u3 = {
		.session_id = "s-esc",
		.llm_reference_id = "llm\nnl\t\x01",
		.input_tokens = 3,
	};

	for (int c = 0x01; c < 0x20; c++)
		display[n++] = (char)c;
	display[n] = '\0';
	record(t, &u);
	record(t, &u2);
	record(t, &u3);
	/* The handle's own view, whether or not the daemon has them yet. */
	check_escaped(t, display);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	check_escaped(t, display);
	check_escaped(t2, display);
	tally_close(t2);
	tally_close(t);
}

/* ---- input checked before the wire ---- */

static void test_snapshot_record_refuses_invalid_utf8(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	static const char *const bad[] = {
		"\xc3(",	"\xf0\x80",	    "\xc0\xaf",
		"\xed\xa0\x80", "\xf5\x80\x80\x80",
	};
	struct tally_usage u;
	const char **field[5];

	for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
		for (int i = 0; i < 5; i++) {
			u = harness_usage("s-utf8", "llm", 7, 7);
			field[0] = &u.llm_display_name;
			field[1] = &u.provider_type;
			field[2] = &u.model_type;
			field[3] = &u.session_id;
			field[4] = &u.llm_reference_id;
			*field[i] = bad[b];
			assert_int_equal(tally_record(t, &u), -EILSEQ);
		}
	}
	assert_int_equal(tally_pending(t), 0);
	assert_int_equal(harness_stat(h->dir, "usages_received"), 0);
	assert_snapshot(t, "s-utf8", "{}");

	/* One good usage after them: it alone reaches the daemon. */
	u = harness_usage("s-utf8", "llm", 1, 2);
	record(t, &u);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_int_equal(harness_stat(h->dir, "usages_received"), 1);
	assert_int_equal(harness_stat(h->dir, "usages_applied"), 1);
	assert_snapshot(t, "s-utf8", "{" LLM(USAGE(1, 2)) "}");
	tally_close(t);
}

#define ALL_DETAILS                                                 \
	(TALLY_USAGE_HAS_CACHE_READ | TALLY_USAGE_HAS_CACHE_WRITE | \
	 TALLY_USAGE_HAS_REASONING)

/*
 * Spoils a good usage in the i-th way and returns the error tally_record()
 * must give it; 1 when there are no more ways.
 */
static int spoil(int i, struct tally_usage *u, const char *id256,
		 const char *n257)
{
	*u = harness_usage("s-bad", "llm", 5, 5);
	switch (i) {
	case 0:
		u->session_id = "";
		return -EINVAL;
	case 1:
		u->session_id = NULL;
		return -EINVAL;
	case 2:
		u->llm_reference_id = "";
		return -EINVAL;
	case 3:
		u->llm_reference_id = NULL;
		return -EINVAL;
	case 4:
		u->session_id = id256;
		return -EINVAL;
	case 5:
		u->llm_reference_id = id256;
		return -EINVAL;
	case 6:
		u->llm_display_name = n257;
		return -EINVAL;
	case 7:
		u->provider_type = n257;
		return -EINVAL;
	case 8:
		u->model_type = n257;
		return -EINVAL;
	case 9:
		u->input_tokens = TALLY_TOKENS_MAX + 1;
		return -ERANGE;
	case 10:
		u->output_tokens = TALLY_TOKENS_MAX + 1;
		return -ERANGE;
	case 11:
		u->input_tokens = (uint64_t)-35;
		return -ERANGE;
	case 12:
		u->output_tokens = UINT64_C(1) << 40;
		return -ERANGE;
	case 13:
		u->flags = ALL_DETAILS;
		u->cache_read_tokens = u->cache_write_tokens = 3;
		return -EINVAL;
	case 14:
		u->flags = ALL_DETAILS;
		u->reasoning_tokens = 6;
		return -EINVAL;
	case 15:
		u->flags = TALLY_USAGE_OUTPUT_MISSING << 1;
		return -EINVAL;
	default:
		return 1;
	}
}

static void test_snapshot_record_refuses_bad_input(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	char *id255 = repeat('i', TALLY_ID_MAX);
	char *id256 = repeat('i', TALLY_ID_MAX + 1);
	char *n256 = repeat('n', TALLY_NAME_MAX);
	char *n257 = repeat('n', TALLY_NAME_MAX + 1);
	struct tally_usage ok = harness_usage("s-bad", "llm", 5, 5), u;
	int err, got;

	for (int i = 0; (err = spoil(i, &u, id256, n257)) <= 0; i++)
		if ((got = tally_record(t, &u)) != err)
			fail_msg("case %d: %d, not %d", i, got, err);
	assert_int_equal(tally_record(NULL, &ok), -EINVAL);
	assert_int_equal(tally_record(t, NULL), -EINVAL);
	assert_int_equal(tally_pending(t), 0);
	assert_int_equal(harness_stat(h->dir, "usages_received"), 0);

	/* Every limit met exactly is accepted, and stored whole. */
	ok.session_id = id255;
	ok.llm_reference_id = id255;
	ok.llm_display_name = ok.provider_type = ok.model_type = n256;
	ok.input_tokens = ok.output_tokens = TALLY_TOKENS_MAX;
	record(t, &ok);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_int_equal(harness_stat(h->dir, "usages_received"), 1);
	{
		char *json = snap(t, id255);
		json_t *root = parse_strict(json);
		json_t *usage =
			json_object_get(json_object_get(root, id255), "usage");

		check_entry(root, id255, n256, n256, n256);
		assert_int_equal(json_integer_value(
					 json_object_get(usage, "inputTokens")),
				 TALLY_TOKENS_MAX);
		json_decref(root);
		free(json);
	}
	free(n257);
	free(n256);
	free(id256);
	free(id255);
	tally_close(t);
}

/* ---- names ---- */

static void test_snapshot_empty_names_keep_stored(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h), *t2 = open_handle(h);
	struct tally_usage named = harness_usage("s-names", "llm", 10, 1);
	struct tally_usage nul = named, empty = named;
	const char *want = "{" LLM(USAGE(60, 6)) "}";

	nul.llm_display_name = nul.provider_type = nul.model_type = NULL;
	nul.input_tokens = 20, nul.output_tokens = 2;
	empty.llm_display_name = empty.provider_type = empty.model_type = "";
	empty.input_tokens = 30, empty.output_tokens = 3;

	/* The names already in the ledger. */
	record(t, &named);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	record(t, &nul);
	record(t, &empty);
	assert_snapshot(t, "s-names", want);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t, "s-names", want);
	assert_snapshot(t2, "s-names", want);

	/* The names in the same batch as the empty ones. */
	named.session_id = nul.session_id = empty.session_id = "s-names-2";
	record(t, &named);
	record(t, &nul);
	record(t, &empty);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t2, "s-names-2", want);

	/* No names ever given: empty strings, until some are. */
	nul.session_id = empty.session_id = "s-names-3";
	record(t, &nul);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t2, "s-names-3",
			"{" ENTRY("llm", NO_NAMES, USAGE(20, 2)) "}");
	named.session_id = "s-names-3";
	record(t, &named);
	record(t, &empty);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t2, "s-names-3", want);
	tally_close(t2);
	tally_close(t);
}

/* ---- read-your-writes ---- */

static void test_snapshot_reads_own_writes_while_daemon_stopped(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h), *t2 = open_handle(h);
	struct tally_usage chat = harness_usage("s-ryw", CHAT_ID, 341, 96);
	struct tally_usage more = harness_usage("s-ryw", CHAT_ID, 100, 10);
	struct tally_usage emb = embedding("s-ryw", 6);
	const char *before = "{" CHAT(341, 96) "}";
	char *mine, *after;
	json_t *a, *b;

	record(t, &chat);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t2, "s-ryw", before);

	pause_daemon(h);
	record(t, &more);
	record(t, &emb);
	assert_int_equal(tally_pending(t), 2);
	/* The writer sees both at once; nobody else can yet. */
	mine = snap(t, "s-ryw");
	a = parse_strict(mine);
	assert_snapshot(t2, "s-ryw", before);
	resume_daemon(h);

	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_int_equal(tally_pending(t), 0);
	assert_snapshot(t2, "s-ryw", DESIGN_JSON);
	assert_snapshot(t, "s-ryw", DESIGN_JSON);
	/* What the writer saw early is what the ledger holds now. */
	after = snap(t2, "s-ryw");
	b = parse_strict(after);
	if (!json_equal(a, b))
		fail_msg("own view %s, committed %s", mine, after);
	json_decref(b);
	json_decref(a);
	free(after);
	free(mine);
	tally_close(t2);
	tally_close(t);
}

/*
 * The same snapshot is the same text: an own usage of an LLM the ledger
 * does not hold yet takes its place in key order, as it will once
 * committed.
 */
static void test_snapshot_own_writes_keep_key_order(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	struct tally_usage chat = harness_usage("s-order", CHAT_ID, 441, 106);
	struct tally_usage emb = embedding("s-order", 6);

	record(t, &chat);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	pause_daemon(h);
	record(t, &emb);
	assert_snapshot(t, "s-order", DESIGN_JSON);
	resume_daemon(h);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t, "s-order", DESIGN_JSON);
	tally_close(t);
}

/* An LLM first used with no names, seen before the daemon has it. */
static void test_snapshot_own_usage_without_names(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	struct tally_usage u = {
		.session_id = "s-nonames",
		.llm_reference_id = "llm",
		.input_tokens = 4,
		.output_tokens = 2,
	};
	const char *want = "{" ENTRY("llm", NO_NAMES, USAGE(4, 2)) "}";

	pause_daemon(h);
	record(t, &u);
	assert_snapshot(t, "s-nonames", want);
	resume_daemon(h);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t, "s-nonames", want);
	tally_close(t);
}

static void test_snapshot_close_waits_for_commit(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h), *t2;
	struct tally_usage chat = harness_usage("s-close", CHAT_ID, 441, 106);
	struct tally_usage emb = embedding("s-close", 6);

	record(t, &chat);
	record(t, &emb);
	tally_close(t);
	t2 = open_handle(h);
	assert_snapshot(t2, "s-close", DESIGN_JSON);
	tally_close(t2);
}

/* ---- details ---- */

#define DETAILS(cr, cw, rs, calls, ei, eo, miss)                              \
	"\"details\":{\"gen_ai.usage.cache_read.input_tokens\":" #cr          \
	",\"gen_ai.usage.cache_creation.input_tokens\":" #cw                  \
	",\"gen_ai.usage.reasoning.output_tokens\":" #rs ",\"calls\":" #calls \
	",\"estimatedInputTokens\":" #ei ",\"estimatedOutputTokens\":" #eo    \
	",\"usageMissingCalls\":" #miss "}"

static void test_snapshot_details_counts(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h), *t2 = open_handle(h);
	struct tally_usage full = harness_usage("s-det", "llm", 200, 50);
	struct tally_usage bare = harness_usage("s-det", "llm", 100, 10);
	const char *want =
		"{" LLM(USAGE(300, 60) "," DETAILS(100, 20, 7, 2, 0, 0, 0)) "}";

	full.flags = TALLY_USAGE_HAS_CACHE_READ | TALLY_USAGE_HAS_CACHE_WRITE |
		     TALLY_USAGE_HAS_REASONING;
	full.cache_read_tokens = 100;
	full.cache_write_tokens = 20;
	full.reasoning_tokens = 7;
	/* Details without their flags were not reported: not counted. */
	bare.cache_read_tokens = 555;
	bare.cache_write_tokens = 555;
	bare.reasoning_tokens = 555;
	record(t, &full);
	record(t, &bare);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);

	assert_snapshot(t2, "s-det", "{" LLM(USAGE(300, 60)) "}");
	assert_snapshot_ex(t2, "s-det", TALLY_JSON_DETAILS, want);
	tally_close(t2);
	tally_close(t);
}

/*
 * Read-your-writes holds for the details too: what the writer sees of its
 * unconfirmed usages is what the daemon will count.
 */
static void test_snapshot_details_of_own_unconfirmed_usages(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	struct tally_usage est = harness_usage("s-det2", "llm", 40, 4);
	struct tally_usage miss = harness_usage("s-det2", "llm", 0, 5);
	struct tally_usage cache = harness_usage("s-det2", "llm", 10, 3);
	const char *want =
		"{" LLM(USAGE(50, 12) "," DETAILS(6, 4, 2, 3, 40, 4, 1)) "}";
	char *mine;

	est.flags = TALLY_USAGE_ESTIMATED;
	miss.flags = TALLY_USAGE_INPUT_MISSING;
	cache.flags = TALLY_USAGE_HAS_CACHE_READ | TALLY_USAGE_HAS_CACHE_WRITE |
		      TALLY_USAGE_HAS_REASONING;
	cache.cache_read_tokens = 6;
	cache.cache_write_tokens = 4;
	cache.reasoning_tokens = 2;

	pause_daemon(h);
	record(t, &est);
	record(t, &miss);
	record(t, &cache);
	mine = snap_ex(t, "s-det2", TALLY_JSON_DETAILS);
	resume_daemon(h);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	/* What the daemon counted. */
	assert_snapshot_ex(t, "s-det2", TALLY_JSON_DETAILS, want);
	/* What the writer saw before the daemon had them. */
	assert_string_equal(mine, want);
	free(mine);
	tally_close(t);
}

/* ---- durability and range ---- */

static void test_snapshot_survives_daemon_restart(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h), *t2;
	struct tally_usage chat = harness_usage("s-restart", CHAT_ID, 441, 106);
	struct tally_usage emb = embedding("s-restart", 6);

	record(t, &chat);
	record(t, &emb);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t, "s-restart", DESIGN_JSON);
	tally_close(t);

	harness_stop_daemon(h);
	/* Snapshots read the ledger itself: no daemon is needed. */
	t2 = open_handle(h);
	assert_snapshot(t2, "s-restart", DESIGN_JSON);
	tally_close(t2);

	harness_start(h, (const char *)NULL);
	t = open_handle(h);
	assert_snapshot(t, "s-restart", DESIGN_JSON);
	chat.input_tokens = 1;
	chat.output_tokens = 2;
	record(t, &chat);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	assert_snapshot(t, "s-restart", "{" EMB(6) "," CHAT(442, 108) "}");
	tally_close(t);
}

static void test_snapshot_large_totals_stay_exact(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	struct tally_usage u = harness_usage("s-big", "llm", TALLY_TOKENS_MAX,
					     TALLY_TOKENS_MAX);
	char *json;
	json_t *root, *usage;

	for (int i = 0; i < 5; i++)
		record(t, &u);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	json = snap(t, "s-big");
	assert_string_equal(json, "{" LLM(USAGE(5000000000, 5000000000)) "}");
	root = parse_strict(json);
	usage = json_object_get(json_object_get(root, "llm"), "usage");
	assert_true(json_is_integer(json_object_get(usage, "inputTokens")));
	assert_int_equal(
		json_integer_value(json_object_get(usage, "inputTokens")),
		5000000000LL);
	json_decref(root);
	free(json);
	assert_int_equal(tally_sessions_json(t, &json), 0);
	assert_non_null(strstr(json, "\"inputTokens\":5000000000,"
				     "\"outputTokens\":5000000000,"
				     "\"calls\":5}"));
	free(json);
	tally_close(t);
}

/* ---- threads ---- */

#define NTHREADS 8
#define NSNAPS 100

struct thread_arg {
	const char *dir;
	int i;
	int failures;
	/* The first failure, for the report. */
	char why[160];
};

/* Input tokens of llm in a parsed snapshot, or -1 when it is absent. */
static long long input_of(json_t *root, const char *llm, long long *output)
{
	json_t *u = json_object_get(json_object_get(root, llm), "usage");

	if (u == NULL)
		return -1;
	if (output != NULL)
		*output =
			json_integer_value(json_object_get(u, "outputTokens"));
	return json_integer_value(json_object_get(u, "inputTokens"));
}

/* What one snapshot must show, seen from thread self; NULL when right. */
static const char *judge(json_t *root, int self)
{
	long long out = -1;
	char llm[32];

	if (input_of(root, CHAT_ID, &out) != 441 || out != 106)
		return "chat counts wrong";
	if (input_of(root, EMB_ID, &out) != 6 || out != 0)
		return "embedding counts wrong";
	for (int j = 0; j < NTHREADS; j++) {
		long long in;

		snprintf(llm, sizeof(llm), "thread-%d", j);
		in = input_of(root, llm, NULL);
		if (j == self && in != j + 1)
			return "own usage missing";
		if (in != -1 && in != j + 1)
			return "another thread's counts wrong";
	}
	return NULL;
}

static void note(struct thread_arg *a, const char *why, int rc)
{
	if (a->failures++ == 0)
		snprintf(a->why, sizeof(a->why), "thread %d: %s (%d)", a->i,
			 why, rc);
}

static void *snapshot_thread(void *p)
{
	struct thread_arg *a = p;
	struct tally *t;
	char llm[32];
	struct tally_usage u;
	int rc;

	if ((rc = tally_open(&t, a->dir)) < 0) {
		note(a, "open", rc);
		return NULL;
	}
	snprintf(llm, sizeof(llm), "thread-%d", a->i);
	u = harness_usage("s-threads", llm, (uint64_t)a->i + 1, 0);
	if ((rc = tally_record(t, &u)) < 0)
		note(a, "record", rc);
	for (int k = 0; k < NSNAPS; k++) {
		char *json = NULL;
		json_t *root;
		const char *why;

		if ((rc = tally_session_json(t, "s-threads", &json)) < 0) {
			note(a, "snapshot", rc);
			continue;
		}
		root = json_loads(json, JSON_REJECT_DUPLICATES, NULL);
		free(json);
		if (root == NULL) {
			note(a, "not JSON", 0);
			continue;
		}
		if ((why = judge(root, a->i)) != NULL)
			note(a, why, k);
		json_decref(root);
	}
	tally_close(t);
	return NULL;
}

/* Joins th within the deadline; fails the case if it hangs. */
static void join_bounded(pthread_t th, const struct timespec *deadline)
{
	int rc = pthread_timedjoin_np(th, NULL, deadline);

	if (rc != 0)
		fail_msg("thread did not finish in time (%d)", rc);
}

static void deadline_in(struct timespec *ts, int seconds)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += seconds;
}

static void test_snapshot_from_many_threads(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	struct tally_usage chat = harness_usage("s-threads", CHAT_ID, 441, 106);
	struct tally_usage emb = embedding("s-threads", 6);
	struct thread_arg args[NTHREADS];
	pthread_t th[NTHREADS];
	struct timespec deadline;

	record(t, &chat);
	record(t, &emb);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	for (int i = 0; i < NTHREADS; i++) {
		args[i] = (struct thread_arg){.dir = h->dir, .i = i};
		assert_int_equal(
			pthread_create(&th[i], NULL, snapshot_thread, &args[i]),
			0);
	}
	deadline_in(&deadline, 60);
	for (int i = 0; i < NTHREADS; i++)
		join_bounded(th[i], &deadline);
	for (int i = 0; i < NTHREADS; i++)
		if (args[i].failures != 0)
			fail_msg("%d failures; first: %s", args[i].failures,
				 args[i].why);

	/* Each thread's handle committed its usage when it closed. */
	{
		char *json = snap(t, "s-threads");
		json_t *root = parse_strict(json);
		char llm[32];

		assert_int_equal(json_object_size(root), 2 + NTHREADS);
		for (int i = 0; i < NTHREADS; i++) {
			snprintf(llm, sizeof(llm), "thread-%d", i);
			assert_int_equal(input_of(root, llm, NULL), i + 1);
		}
		json_decref(root);
		free(json);
	}
	tally_close(t);
}

#define NSHARED 4
#define NRECORDS 50

struct shared_arg {
	struct tally *t;
	int i;
	int failures;
	char why[160];
};

/* Records on a shared handle and must see each of its usages at once. */
static void *shared_thread(void *p)
{
	struct shared_arg *a = p;
	char llm[32];
	struct tally_usage u;
	int rc;

	snprintf(llm, sizeof(llm), "shared-%d", a->i);
	u = harness_usage("s-shared", llm, 1, 0);
	for (int k = 0; k < NRECORDS; k++) {
		char *json = NULL;
		json_t *root;

		if ((rc = tally_record(a->t, &u)) < 0 ||
		    (rc = tally_session_json(a->t, "s-shared", &json)) < 0) {
			if (a->failures++ == 0)
				snprintf(a->why, sizeof(a->why), "call: %d",
					 rc);
			continue;
		}
		root = json_loads(json, JSON_REJECT_DUPLICATES, NULL);
		free(json);
		if (root == NULL || input_of(root, llm, NULL) != k + 1) {
			if (a->failures++ == 0)
				snprintf(a->why, sizeof(a->why),
					 "after %d records saw %lld", k + 1,
					 root ? input_of(root, llm, NULL) : -2);
		}
		json_decref(root);
	}
	return NULL;
}

static void test_snapshot_shared_handle_from_threads(void **state)
{
	struct harness *h = *state;
	struct tally *t = open_handle(h);
	struct shared_arg args[NSHARED];
	pthread_t th[NSHARED];
	struct timespec deadline;

	for (int i = 0; i < NSHARED; i++) {
		args[i] = (struct shared_arg){.t = t, .i = i};
		assert_int_equal(
			pthread_create(&th[i], NULL, shared_thread, &args[i]),
			0);
	}
	deadline_in(&deadline, 60);
	for (int i = 0; i < NSHARED; i++)
		join_bounded(th[i], &deadline);
	for (int i = 0; i < NSHARED; i++)
		if (args[i].failures != 0)
			fail_msg("thread %d: %d failures; first: %s", i,
				 args[i].failures, args[i].why);
	assert_int_equal(tally_sync(t, SYNC_MS), 0);
	{
		char *json = snap(t, "s-shared");
		json_t *root = parse_strict(json);
		char llm[32];

		assert_int_equal(json_object_size(root), NSHARED);
		for (int i = 0; i < NSHARED; i++) {
			snprintf(llm, sizeof(llm), "shared-%d", i);
			assert_int_equal(input_of(root, llm, NULL), NRECORDS);
		}
		json_decref(root);
		free(json);
	}
	tally_close(t);
}

#define CASE(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define BARE(fn) cmocka_unit_test_setup_teardown(fn, setup_bare, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		CASE(test_snapshot_exact_shape),
		CASE(test_snapshot_unknown_session_is_empty),
		CASE(test_snapshot_refuses_bad_session_ids),
		BARE(test_snapshot_without_ledger_is_enoent),
		CASE(test_snapshot_escapes_names_and_ids),
		CASE(test_snapshot_record_refuses_invalid_utf8),
		CASE(test_snapshot_record_refuses_bad_input),
		CASE(test_snapshot_empty_names_keep_stored),
		CASE(test_snapshot_reads_own_writes_while_daemon_stopped),
		CASE(test_snapshot_own_writes_keep_key_order),
		CASE(test_snapshot_own_usage_without_names),
		CASE(test_snapshot_close_waits_for_commit),
		CASE(test_snapshot_details_counts),
		CASE(test_snapshot_details_of_own_unconfirmed_usages),
		CASE(test_snapshot_survives_daemon_restart),
		CASE(test_snapshot_large_totals_stay_exact),
		CASE(test_snapshot_from_many_threads),
		CASE(test_snapshot_shared_handle_from_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
