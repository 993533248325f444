/*
 * test_operators.c - tallyctl's operator commands against a real tallyd.
 *
 * Each case has its own directory and daemon, records through libtally,
 * runs the real $TALLYCTL binary and checks what it printed exactly:
 * JSON, NDJSON and CSV are parsed and matched field by field to what was
 * recorded. top is driven in a pseudo-terminal by a private tmux server.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <lmdb.h>

#include "harness.h"
#include "ledger_format.h"

/* Longest any one tallyctl or tmux run may take before it counts as hung. */
#define RUN_MS 20000
#define MAX_ARGS 32

struct run {
	/* Exit status, 128 + signal, or -1 when killed for taking too long. */
	int status;
	char *out;
	char *err;
	long ms;
};

/* What a failed assert left behind, for the teardown to free and stop. */
static char *held_out, *held_err;
static char tmux_socket[64];
static char tmux_dir[128];

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A daemon that never expires anything by itself, unless a case says so. */
static int setup(void **state)
{
	struct harness *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return -1;
	*state = h;
	harness_init(h);
	harness_start(h, "--session-ttl", "0", (const char *)NULL);
	return 0;
}

static int setup_bare(void **state)
{
	struct harness *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return -1;
	*state = h;
	harness_init(h);
	return 0;
}

static void tmux_kill_server(void);

static int teardown(void **state)
{
	struct harness *h = *state;

	tmux_kill_server();
	free(held_out);
	free(held_err);
	held_out = held_err = NULL;
	harness_fini(h);
	free(h);
	return 0;
}

static void run_free(struct run *r)
{
	free(r->out);
	free(r->err);
	held_out = held_err = NULL;
	memset(r, 0, sizeof(*r));
}

/* Child side: output to files in dir, no input, then exec. */
static void exec_child(const char *dir, const char *tag,
		       const char *const *argv)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s.out", dir, tag);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || dup2(fd, 1) < 0)
		_exit(126);
	snprintf(path, sizeof(path), "%s/%s.err", dir, tag);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || dup2(fd, 2) < 0)
		_exit(126);
	fd = open("/dev/null", O_RDONLY);
	if (fd < 0 || dup2(fd, 0) < 0)
		_exit(126);
	execvp(argv[0], (char *const *)argv);
	_exit(127);
}

static int wait_bounded(pid_t pid)
{
	long deadline = now_ms() + RUN_MS;
	int status;

	while (now_ms() < deadline) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status)
						 : 128 + WTERMSIG(status);
		assert_int_equal(r, 0);
		harness_sleep_ms(2);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

static pid_t run_start(const struct harness *h, const char *const *args)
{
	const char *ctl = getenv("TALLYCTL");
	const char **argv;
	size_t n = 0, count = 0;
	pid_t pid;

	assert_non_null(ctl);
	while (args[count] != NULL)
		count++;
	argv = calloc(count + 4, sizeof(*argv));
	assert_non_null(argv);
	argv[n++] = ctl;
	argv[n++] = "--dir";
	argv[n++] = h->dir;
	for (size_t i = 0; i < count; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		exec_child(h->dir, "ctl", argv);
	free(argv);
	return pid;
}

static void run_finish(const struct harness *h, pid_t pid, long start,
		       struct run *r)
{
	char path[256];

	r->status = wait_bounded(pid);
	r->ms = now_ms() - start;
	snprintf(path, sizeof(path), "%s/ctl.out", h->dir);
	r->out = harness_read_file(path, NULL);
	snprintf(path, sizeof(path), "%s/ctl.err", h->dir);
	r->err = harness_read_file(path, NULL);
	held_out = r->out;
	held_err = r->err;
	assert_non_null(r->out);
	assert_non_null(r->err);
}

/* Runs tallyctl --dir h->dir with args (NULL-terminated). */
static void run_ctl(const struct harness *h, struct run *r,
		    const char *const *args)
{
	long start = now_ms();

	run_finish(h, run_start(h, args), start, r);
}

#define CTL(h, r, ...) run_ctl(h, r, (const char *const[]){__VA_ARGS__, NULL})

static void assert_status(const struct run *r, int want)
{
	if (r->status != want)
		fail_msg("exit %d, not %d\nstdout: %s\nstderr: %s", r->status,
			 want, r->out, r->err);
}

static void assert_contains(const char *text, const char *part)
{
	if (text == NULL || strstr(text, part) == NULL)
		fail_msg("'%s' not in:\n%s", part, text ? text : "(nothing)");
}

/* Asserts that text starts with prefix; shows all of text when not. */
static void assert_prefix(const char *text, const char *prefix, const char *all)
{
	if (text == NULL || strncmp(text, prefix, strlen(prefix)) != 0)
		fail_msg("'%s' does not start:\n%s\nin:\n%s", prefix,
			 text ? text : "(nothing)", all);
}

static json_t *parse_strict(const char *text)
{
	json_error_t err;
	json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &err);

	if (root == NULL)
		fail_msg("not strict JSON (%s): %s", err.text, text);
	return root;
}

static void iso_ms(uint64_t ms, char *buf, size_t len)
{
	time_t sec = (time_t)(ms / 1000);
	struct tm tm;

	assert_non_null(gmtime_r(&sec, &tm));
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* ---- recording ---- */

struct rec {
	const char *session, *llm, *name, *provider, *model;
	uint64_t in, out, cache_read, cache_write, reasoning;
	uint32_t flags;
};

static struct tally_usage usage_of(const struct rec *r)
{
	struct tally_usage u = {
		.session_id = r->session,
		.llm_reference_id = r->llm,
		.llm_display_name = r->name,
		.provider_type = r->provider,
		.model_type = r->model,
		.input_tokens = r->in,
		.output_tokens = r->out,
		.cache_read_tokens = r->cache_read,
		.cache_write_tokens = r->cache_write,
		.reasoning_tokens = r->reasoning,
		.flags = r->flags,
	};

	return u;
}

/* Records r and waits for its commit. */
static void record(const struct harness *h, const struct rec *r)
{
	struct tally_usage u = usage_of(r);
	struct tally *t;

	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_record(t, &u), 0);
	assert_int_equal(tally_sync(t, 5000), 0);
	tally_close(t);
}

/* Records and commits each, a few ms apart so that activity times differ. */
static void record_all(const struct harness *h, const struct rec *recs,
		       size_t n)
{
	for (size_t i = 0; i < n; i++) {
		record(h, &recs[i]);
		harness_sleep_ms(5);
	}
}

/* ---- help and usage ---- */

static void test_operators_help_lists_every_command(void **state)
{
	static const char *const commands[] = {
		"sessions", "top",   "metrics", "export",
		"cost",	    "purge", "check",
	};
	struct harness *h = *state;
	struct run r;

	CTL(h, &r, "--help");
	assert_status(&r, 0);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		char line[32];

		snprintf(line, sizeof(line), "\n  %s ", commands[i]);
		assert_contains(r.out, line);
	}
	run_free(&r);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		char usage[64];

		snprintf(usage, sizeof(usage), "Usage: tallyctl [--dir DIR] %s",
			 commands[i]);
		CTL(h, &r, commands[i], "--help");
		assert_status(&r, 0);
		assert_int_equal(strncmp(r.out, usage, strlen(usage)), 0);
		assert_string_equal(r.err, "");
		run_free(&r);
		CTL(h, &r, "help", commands[i]);
		assert_status(&r, 0);
		assert_int_equal(strncmp(r.out, usage, strlen(usage)), 0);
		run_free(&r);
	}
}

static void test_operators_usage_errors_exit_2(void **state)
{
	static const char *const bad[][6] = {
		{"sessions", "--sort", "size"},
		{"sessions", "--limit", "0"},
		{"sessions", "--since", "5x"},
		{"sessions", "extra"},
		{"top", "--interval", "0"},
		{"top", "--interval", "1.2345"},
		{"top", "--limit", "0"},
		{"export", "--format", "xml"},
		{"export", "--since", "-1s"},
		{"purge"},
		{"purge", "--idle-for", "0"},
		{"purge", ""},
		{"purge", "s", "--timeout", "soon"},
		{"check", "extra"},
		{"metrics", "--bogus"},
		{"cost"},
		{"cost", "a", "b", "--prices", "p.json"},
	};
	struct harness *h = *state;
	struct run r;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		run_ctl(h, &r, bad[i]);
		if (r.status != 2)
			fail_msg("%s %s: exit %d, not 2\n%s", bad[i][0],
				 bad[i][1] ? bad[i][1] : "", r.status, r.err);
		assert_string_equal(r.out, "");
		assert_contains(r.err, "tallyctl");
		run_free(&r);
	}
	/* Nothing was purged by any of them. */
	assert_int_equal(harness_stat(h->dir, "purge_requests"), 0);
}

/* ---- sessions ---- */

/* Four sessions over three providers; the first two a second earlier. */
static const struct rec sessions_recs[] = {
	{"s-a", "gpt", "openAI - gpt-4o", "openAI", "gpt-4o", 100, 10, 0, 0, 0,
	 0},
	{"s-b", "claude", "anthropic - sonnet", "anthropic",
	 "claude-sonnet-4-5", 5000, 500, 0, 0, 0, 0},
	{"s-c", "mini", "openAI - mini", "openAI", "gpt-4o-mini", 10, 1, 0, 0,
	 0, 0},
	{"s-c", "large", "mistral - large", "mistral", "mistral-large-latest",
	 1000, 100, 0, 0, 0, 0},
	{"s-d", "small", "mistral - small", "mistral", "mistral-small", 20, 2,
	 0, 0, 0, 0},
};

struct session_want {
	const char *id;
	uint64_t in, out, calls;
};

static const struct session_want session_totals[] = {
	{"s-a", 100, 10, 1},
	{"s-b", 5000, 500, 1},
	{"s-c", 1010, 101, 2},
	{"s-d", 20, 2, 1},
};

static const struct session_want *want_session(const char *id)
{
	for (size_t i = 0; i < 4; i++)
		if (strcmp(session_totals[i].id, id) == 0)
			return &session_totals[i];
	fail_msg("unexpected session %s", id);
	return NULL;
}

/* Runs sessions --json with args; checks the ids, in order, and totals. */
static void assert_sessions(const struct harness *h, const char *const *args,
			    const char *want)
{
	const char *argv[MAX_ARGS] = {"sessions", "--json"};
	char got[256] = "";
	json_t *root, *s;
	struct run r;
	size_t i, n = 2;

	for (i = 0; args[i] != NULL; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	run_ctl(h, &r, argv);
	assert_status(&r, 0);
	root = parse_strict(r.out);
	assert_true(json_is_array(root));
	json_array_foreach(root, i, s)
	{
		const char *id =
			json_string_value(json_object_get(s, "sessionId"));
		const struct session_want *w = want_session(id);

		assert_int_equal(json_object_size(s), 6);
		assert_int_equal(
			json_integer_value(json_object_get(s, "inputTokens")),
			w->in);
		assert_int_equal(
			json_integer_value(json_object_get(s, "outputTokens")),
			w->out);
		assert_int_equal(
			json_integer_value(json_object_get(s, "calls")),
			w->calls);
		assert_true(
			json_integer_value(
				json_object_get(s, "firstActivity")) <=
			json_integer_value(json_object_get(s, "lastActivity")));
		snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s",
			 i ? " " : "", id);
	}
	json_decref(root);
	run_free(&r);
	if (strcmp(got, want) != 0)
		fail_msg("sessions %s%s%s: got [%s], want [%s]",
			 args[0] ? args[0] : "", args[0] && args[1] ? " " : "",
			 args[0] && args[1] ? args[1] : "", got, want);
}

#define SESSIONS(h, want, ...) \
	assert_sessions(h, (const char *const[]){__VA_ARGS__, NULL}, want)

static void test_operators_sessions_sort_filter_limit(void **state)
{
	struct harness *h = *state;

	record_all(h, sessions_recs, 2);
	harness_sleep_ms(1200);
	record_all(h, sessions_recs + 2, 3);

	assert_sessions(h, (const char *const[]){NULL}, "s-d s-c s-b s-a");
	SESSIONS(h, "s-d s-c s-b s-a", "--sort", "last");
	SESSIONS(h, "s-b s-c s-a s-d", "--sort", "tokens");
	SESSIONS(h, "s-d s-c", "--limit", "2");
	SESSIONS(h, "s-b", "--sort", "tokens", "--limit", "1");
	SESSIONS(h, "s-c s-a", "--provider", "openAI");
	SESSIONS(h, "s-c s-a", "--model", "gpt-4o*");
	SESSIONS(h, "s-a", "--model", "gpt-4o");
	SESSIONS(h, "s-d s-c", "--provider", "mistral");
	SESSIONS(h, "s-c", "--provider", "mistral", "--model", "*large*");
	/* Provider and model must match the same LLM. */
	SESSIONS(h, "", "--provider", "mistral", "--model", "gpt*");
	SESSIONS(h, "", "--provider", "nobody");
	SESSIONS(h, "s-d s-c", "--since", "1s");
	SESSIONS(h, "s-c", "--since", "1s", "--sort", "tokens", "--limit", "1");
	SESSIONS(h, "s-d s-c s-b s-a", "--since", "1h");
}

static json_t *find_session(json_t *arr, const char *id)
{
	json_t *s;
	size_t i;

	json_array_foreach(arr, i, s)
	{
		if (strcmp(json_string_value(json_object_get(s, "sessionId")),
			   id) == 0)
			return s;
	}
	fail_msg("session %s not listed", id);
	return NULL;
}

static void test_operators_sessions_table(void **state)
{
	static const char *const order[] = {"s-b", "s-c", "s-a", "s-d"};
	struct harness *h = *state;
	char want[1024], when[48];
	json_t *root, *s;
	struct run r;
	size_t i;

	record_all(h, sessions_recs, 5);
	CTL(h, &r, "sessions", "--json");
	assert_status(&r, 0);
	root = parse_strict(r.out);
	run_free(&r);

	/* Widths: the headers are wider than every id and count here. */
	snprintf(want, sizeof(want), "%-7s  %5s  %6s  %5s  %s\n", "SESSION",
		 "INPUT", "OUTPUT", "CALLS", "LAST ACTIVITY");
	for (i = 0; i < 4; i++) {
		const struct session_want *w = want_session(order[i]);

		s = find_session(root, order[i]);
		iso_ms((uint64_t)json_integer_value(
			       json_object_get(s, "lastActivity")),
		       when, sizeof(when));
		snprintf(want + strlen(want), sizeof(want) - strlen(want),
			 "%-7s  %5" PRIu64 "  %6" PRIu64 "  %5" PRIu64 "  %s\n",
			 order[i], w->in, w->out, w->calls, when);
	}
	json_decref(root);
	CTL(h, &r, "sessions", "--sort", "tokens");
	assert_status(&r, 0);
	assert_string_equal(r.out, want);
	run_free(&r);
}

/* ---- export ---- */

/* The field names, in their order. */
static const char *const export_fields[] = {
	"gen_ai.conversation.id",
	"tally.llm.reference_id",
	"tally.llm.display_name",
	"gen_ai.provider.name",
	"gen_ai.request.model",
	"gen_ai.usage.input_tokens",
	"gen_ai.usage.output_tokens",
	"gen_ai.usage.cache_read.input_tokens",
	"gen_ai.usage.cache_creation.input_tokens",
	"gen_ai.usage.reasoning.output_tokens",
	"tally.calls",
	"tally.usage.estimated_input_tokens",
	"tally.usage.estimated_output_tokens",
	"tally.usage.missing_calls",
	"tally.first_activity",
	"tally.last_activity",
};

#define NFIELDS 16
#define NROWS 4

/* Every field of every row, as text, in export order. */
struct export_want {
	char field[NROWS][NFIELDS][128];
	size_t rows;
};

/* A name with each of the characters CSV must quote, and some UTF-8. */
#define ODD_NAME "openAI, \"four oh\"\r\nmini \xc3\xa9t\xc3\xa9"

static void record_export_data(const struct harness *h)
{
	static const struct rec recs[] = {
		{"s-x", "llm-1", ODD_NAME, "openAI", "gpt-4o", 1000, 300, 200,
		 100, 50,
		 TALLY_USAGE_HAS_CACHE_READ | TALLY_USAGE_HAS_CACHE_WRITE |
			 TALLY_USAGE_HAS_REASONING},
		{"s-x", "llm-1", ODD_NAME, "openAI", "gpt-4o", 40, 4, 0, 0, 0,
		 TALLY_USAGE_ESTIMATED},
		{"s-x", "llm-2", "plain", "anthropic", "claude-haiku-4-5", 7, 0,
		 0, 0, 0, 0},
		{"s-y,comma", "llm-1", "", "", "", 1, 1, 0, 0, 0, 0},
	};
	struct tally_usage ids = usage_of(&recs[0]);
	struct tally *t;

	record_all(h, recs, 4);
	/* A call whose provider reported nothing: counted apart. */
	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_record_text(t, &ids, NULL, 0, NULL, 0), 0);
	assert_int_equal(tally_sync(t, 5000), 0);
	tally_close(t);
}

static int want_row(const struct tally_entry *e, void *ctx)
{
	struct export_want *w = ctx;
	const uint64_t counts[] = {
		e->input_tokens,	   e->output_tokens,
		e->cache_read_tokens,	   e->cache_write_tokens,
		e->reasoning_tokens,	   e->calls,
		e->estimated_input_tokens, e->estimated_output_tokens,
		e->usage_missing_calls,
	};
	const char *strs[] = {e->session_id, e->llm_reference_id,
			      e->llm_display_name, e->provider_type,
			      e->model_type};
	char(*f)[128];

	assert_true(w->rows < NROWS);
	f = w->field[w->rows++];
	for (int i = 0; i < 5; i++)
		snprintf(f[i], 128, "%s", strs[i]);
	for (int i = 0; i < 9; i++)
		snprintf(f[5 + i], 128, "%" PRIu64, counts[i]);
	iso_ms(e->first_activity_ms, f[14], 128);
	iso_ms(e->last_activity_ms, f[15], 128);
	return 0;
}

/*
 * What the export must say: the counts known from what was recorded,
 * the activity times read from the ledger through the library.
 */
static void export_expected(const struct harness *h, struct export_want *w)
{
	static const char *const counts[3][11] = {
		{"s-x", "llm-1", ODD_NAME, "openAI", "gpt-4o", "1040", "304",
		 "200", "100", "50", "3"},
		{"s-x", "llm-2", "plain", "anthropic", "claude-haiku-4-5", "7",
		 "0", "0", "0", "0", "1"},
		{"s-y,comma", "llm-1", "", "", "", "1", "1", "0", "0", "0",
		 "1"},
	};
	static const char *const est[3][3] = {
		{"40", "4", "1"}, {"0", "0", "0"}, {"0", "0", "0"}};
	struct tally *t;

	memset(w, 0, sizeof(*w));
	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_foreach_entry(t, want_row, w), 0);
	tally_close(t);
	assert_int_equal(w->rows, 3);
	for (int r = 0; r < 3; r++) {
		for (int i = 0; i < 11; i++)
			assert_string_equal(w->field[r][i], counts[r][i]);
		for (int i = 0; i < 3; i++)
			assert_string_equal(w->field[r][11 + i], est[r][i]);
	}
}

/* One NDJSON line against the wanted fields: names, order and values. */
static void check_ndjson_row(const char *line, size_t len, char (*want)[128])
{
	json_error_t err;
	json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &err);
	const char *key;
	json_t *v;
	int i = 0;
	char num[32];

	if (obj == NULL)
		fail_msg("line is not JSON (%s): %.*s", err.text, (int)len,
			 line);
	assert_int_equal(json_object_size(obj), NFIELDS);
	json_object_foreach(obj, key, v)
	{
		assert_string_equal(key, export_fields[i]);
		if (i >= 5 && i < 14) {
			assert_true(json_is_integer(v));
			snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
				 json_integer_value(v));
			assert_string_equal(num, want[i]);
		} else {
			assert_true(json_is_string(v));
			assert_string_equal(json_string_value(v), want[i]);
		}
		i++;
	}
	json_decref(obj);
}

static void check_ndjson(const char *out, const struct export_want *w)
{
	const char *line = out, *nl;
	size_t row = 0;

	for (; *line != '\0'; line = nl + 1, row++) {
		nl = strchr(line, '\n');
		assert_non_null(nl);
		assert_true(row < w->rows);
		check_ndjson_row(line, (size_t)(nl - line),
				 (char(*)[128])w->field[row]);
	}
	assert_int_equal(row, w->rows);
}

/*
 * An RFC 4180 reader: records end in CRLF, a quoted field may hold
 * anything, a quote in it doubled. Fills fields[row][col].
 */
static size_t parse_csv(const char *s, char (*fields)[NFIELDS][128],
			size_t max_rows)
{
	size_t row = 0, col = 0, n = 0;
	bool quoted = false, was_quoted = false;

	for (; *s != '\0'; s++) {
		assert_true(row < max_rows && col < NFIELDS && n < 127);
		/* After a closing quote comes a comma or the record's end. */
		if (was_quoted && !quoted && *s != ',' && *s != '\r')
			fail_msg("text after a quoted field: %.20s", s);
		if (quoted && *s == '"' && s[1] == '"') {
			fields[row][col][n++] = *s++;
		} else if (*s == '"' && (quoted || n == 0)) {
			/* A quote opens a field only at its start. */
			assert_true(quoted || !was_quoted);
			was_quoted = true;
			quoted = !quoted;
		} else if (!quoted && *s == ',') {
			fields[row][col++][n] = '\0';
			n = 0;
			was_quoted = false;
		} else if (!quoted && *s == '\r') {
			/* A record ends in CRLF, never a lone CR or LF. */
			assert_int_equal(s[1], '\n');
			assert_int_equal(col, NFIELDS - 1);
			fields[row][col][n] = '\0';
			row++;
			s++;
			col = n = 0;
			was_quoted = false;
		} else {
			assert_true(quoted || (*s != '\n' && *s != '"'));
			fields[row][col][n++] = *s;
		}
	}
	assert_false(quoted);
	assert_int_equal(col, 0);
	assert_int_equal(n, 0);
	return row;
}

static void check_csv(const char *out, const struct export_want *w)
{
	static char fields[NROWS + 1][NFIELDS][128];
	size_t rows;

	memset(fields, 0, sizeof(fields));
	rows = parse_csv(out, fields, NROWS + 1);
	assert_int_equal(rows, w->rows + 1);
	for (int i = 0; i < NFIELDS; i++)
		assert_string_equal(fields[0][i], export_fields[i]);
	for (size_t r = 0; r < w->rows; r++)
		for (int i = 0; i < NFIELDS; i++)
			assert_string_equal(fields[r + 1][i], w->field[r][i]);
}

static void test_operators_export_ndjson_and_csv(void **state)
{
	struct harness *h = *state;
	struct export_want *w = calloc(1, sizeof(*w));
	struct run r;

	assert_non_null(w);
	record_export_data(h);
	export_expected(h, w);

	CTL(h, &r, "export");
	assert_status(&r, 0);
	/* Progress goes to a terminal only; here stderr is a file. */
	assert_string_equal(r.err, "");
	check_ndjson(r.out, w);
	run_free(&r);

	CTL(h, &r, "export", "--format", "ndjson");
	assert_status(&r, 0);
	check_ndjson(r.out, w);
	run_free(&r);

	CTL(h, &r, "export", "--format", "csv");
	assert_status(&r, 0);
	assert_string_equal(r.err, "");
	/* The odd name is quoted, its quotes doubled, its CRLF kept. */
	assert_contains(r.out, ",\"openAI, \"\"four oh\"\"\r\nmini ");
	assert_contains(r.out, "\r\n\"s-y,comma\",llm-1,,,,1,1,");
	check_csv(r.out, w);
	run_free(&r);
	free(w);
}

static void test_operators_export_since(void **state)
{
	static const struct rec old = {"s-old", "l", "n", "openAI", "gpt-4o", 5,
				       5,	0,   0,	  0,	    0};
	static const struct rec recent = {
		"s-new", "l", "n", "openAI", "gpt-4o", 6, 6, 0, 0, 0, 0};
	struct harness *h = *state;
	json_t *obj;
	struct run r;

	record(h, &old);
	harness_sleep_ms(1200);
	record(h, &recent);

	CTL(h, &r, "export", "--since", "1s");
	assert_status(&r, 0);
	obj = parse_strict(r.out);
	assert_string_equal(json_string_value(json_object_get(
				    obj, "gen_ai.conversation.id")),
			    "s-new");
	assert_int_equal(json_integer_value(json_object_get(
				 obj, "gen_ai.usage.input_tokens")),
			 6);
	json_decref(obj);
	run_free(&r);

	CTL(h, &r, "export", "--since", "1h");
	assert_status(&r, 0);
	assert_non_null(strchr(r.out, '\n'));
	assert_non_null(strchr(strchr(r.out, '\n') + 1, '\n'));
	run_free(&r);

	/* Nothing recent enough: the CSV header alone. */
	harness_sleep_ms(50);
	CTL(h, &r, "export", "--format", "csv", "--since", "10ms");
	assert_status(&r, 0);
	assert_int_equal(strncmp(r.out, "gen_ai.conversation.id,", 23), 0);
	assert_string_equal(strchr(r.out, '\n'), "\n");
	run_free(&r);
}

static void test_operators_export_without_ledger_fails(void **state)
{
	struct harness *h = *state;
	struct run r;

	CTL(h, &r, "export", "--format", "csv");
	assert_status(&r, 1);
	/* No header for a ledger that is not there. */
	assert_string_equal(r.out, "");
	assert_contains(r.err, h->dir);
	run_free(&r);
	CTL(h, &r, "check");
	assert_status(&r, 1);
	assert_contains(r.err, h->dir);
	run_free(&r);
	CTL(h, &r, "metrics");
	assert_status(&r, 1);
	assert_contains(r.err, h->dir);
	run_free(&r);
	CTL(h, &r, "purge", "--timeout", "300", "s");
	assert_status(&r, 1);
	assert_contains(r.err, "did not answer");
	if (r.ms > 3000)
		fail_msg("--timeout 300 took %ld ms", r.ms);
	run_free(&r);
}

/* ---- purge ---- */

static void assert_listed(const struct harness *h, const char *want)
{
	assert_sessions(h, (const char *const[]){NULL}, want);
}

static void test_operators_purge_named(void **state)
{
	struct harness *h = *state;
	struct run r;

	record_all(h, sessions_recs, 5);
	CTL(h, &r, "purge", "s-a", "s-b", "unknown");
	assert_status(&r, 0);
	assert_string_equal(r.out, "purged 2 sessions\n");
	run_free(&r);
	CTL(h, &r, "show", "s-a");
	assert_status(&r, 0);
	assert_string_equal(r.out, "{}\n");
	run_free(&r);
	/* The others are left, with their totals. */
	assert_listed(h, "s-d s-c");

	CTL(h, &r, "purge", "unknown");
	assert_status(&r, 0);
	assert_string_equal(r.out, "purged 0 sessions\n");
	run_free(&r);
	assert_int_equal(harness_stat(h->dir, "purged_sessions"), 2);
	assert_int_equal(harness_stat(h->dir, "purge_requests"), 2);
}

/*
 * The same command again after new usage of the session arrived is a new
 * request, with a new id: it deletes the new usage too.
 */
static void test_operators_purge_repeated_after_new_usage(void **state)
{
	static const struct rec first = {"s-a",	   "gpt",    "openAI - gpt-4o",
					 "openAI", "gpt-4o", 100,
					 10,	   0,	     0,
					 0,	   0};
	static const struct rec again = {
		"s-a", "gpt", "openAI - gpt-4o", "openAI", "gpt-4o", 7, 3, 0, 0,
		0,     0};
	struct harness *h = *state;
	struct run r;

	record(h, &first);
	CTL(h, &r, "purge", "s-a");
	assert_status(&r, 0);
	assert_string_equal(r.out, "purged 1 session\n");
	run_free(&r);

	record(h, &again);
	CTL(h, &r, "show", "s-a");
	assert_status(&r, 0);
	/* Started afresh: the purged 100 and 10 are not there. */
	assert_contains(r.out, "\"inputTokens\": 7,");
	run_free(&r);

	CTL(h, &r, "purge", "s-a");
	assert_status(&r, 0);
	assert_string_equal(r.out, "purged 1 session\n");
	run_free(&r);
	assert_listed(h, "");
	assert_int_equal(harness_stat(h->dir, "purged_sessions"), 2);
}

/* Thousands of long ids go in several requests, each well within limits. */
static void test_operators_purge_many_named(void **state)
{
	enum { N = 2500, LEN = 200 };
	struct harness *h = *state;
	const char **args = calloc(N + 2, sizeof(*args));
	char *ids = malloc((size_t)N * (LEN + 1));
	struct run r;

	assert_non_null(args);
	assert_non_null(ids);
	record_all(h, sessions_recs, 5);
	args[0] = "purge";
	for (int i = 0; i < N; i++) {
		char *id = ids + (size_t)i * (LEN + 1);

		memset(id, 'x', LEN);
		id[LEN] = '\0';
		memcpy(id, "unknown-", 8);
		id[8] = (char)('0' + i % 10);
		id[9] = (char)('0' + i / 10 % 10);
		id[10] = (char)('0' + i / 100 % 10);
		id[11] = (char)('0' + i / 1000 % 10);
		args[1 + i] = id;
	}
	args[1] = "s-a";
	args[N] = "s-d";
	run_ctl(h, &r, args);
	free(ids);
	free(args);
	assert_status(&r, 0);
	assert_string_equal(r.out, "purged 2 sessions\n");
	run_free(&r);
	assert_listed(h, "s-c s-b");
	assert_true(harness_stat(h->dir, "purge_requests") > 1);
	assert_int_equal(harness_stat(h->dir, "purged_sessions"), 2);
}

static void test_operators_purge_idle_for(void **state)
{
	struct harness *h = *state;
	struct run r;

	record_all(h, sessions_recs, 2);
	harness_sleep_ms(600);
	record_all(h, sessions_recs + 2, 3);

	CTL(h, &r, "purge", "--idle-for", "400ms");
	assert_status(&r, 0);
	assert_string_equal(r.out, "purged 2 sessions\n");
	run_free(&r);
	assert_listed(h, "s-d s-c");

	harness_sleep_ms(50);
	CTL(h, &r, "purge", "--idle-for", "1ms");
	assert_status(&r, 0);
	assert_string_equal(r.out, "purged 2 sessions\n");
	run_free(&r);
	assert_listed(h, "");

	CTL(h, &r, "purge", "--idle-for", "1ms");
	assert_status(&r, 0);
	assert_string_equal(r.out, "purged 0 sessions\n");
	run_free(&r);
}

/* ---- check ---- */

/* Runs fn on the stopped daemon's ledger in one write transaction. */
static void damage(const struct harness *h,
		   void (*fn)(MDB_txn *txn, MDB_dbi usage, MDB_dbi sessions))
{
	char path[256];
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi usage, sessions;

	snprintf(path, sizeof(path), "%s/ledger.mdb", h->dir);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_set_mapsize(env, (size_t)64 << 20), 0);
	assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, LEDGER_DB_USAGE, 0, &usage), 0);
	assert_int_equal(mdb_dbi_open(txn, LEDGER_DB_SESSIONS, 0, &sessions),
			 0);
	fn(txn, usage, sessions);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/* s-a's session record says 999 input tokens; its entries say 100. */
static void change_total(MDB_txn *txn, MDB_dbi usage, MDB_dbi sessions)
{
	MDB_val key = {3, "s-a"}, val;
	struct ledger_session s;
	unsigned char buf[LEDGER_SESSION_SIZE];

	assert_int_equal(mdb_get(txn, sessions, &key, &val), 0);
	assert_int_equal(ledger_session_decode(&val, &s), 0);
	assert_int_equal(s.input, 100);
	s.input = 999;
	ledger_session_encode(&s, buf);
	val.mv_data = buf;
	val.mv_size = sizeof(buf);
	assert_int_equal(mdb_put(txn, sessions, &key, &val, 0), 0);
}

/* s-b's one entry becomes seven bytes of garbage. */
static void garble_entry(MDB_txn *txn, MDB_dbi usage, MDB_dbi sessions)
{
	MDB_val key = {10, "s-b\0claude"}, val = {7, "\xff\x01garbg"};

	assert_int_equal(mdb_put(txn, usage, &key, &val, 0), 0);
}

static void test_operators_check_clean_and_damaged(void **state)
{
	static const struct rec recs[] = {
		{"s-a", "gpt", "openAI - gpt-4o", "openAI", "gpt-4o", 100, 10,
		 0, 0, 0, 0},
		{"s-b", "claude", "anthropic - sonnet", "anthropic",
		 "claude-sonnet-4-5", 5000, 500, 0, 0, 0, 0},
		{"s-c", "mini", "openAI - mini", "openAI", "gpt-4o-mini", 10, 1,
		 0, 0, 0, 0},
		{"s-c", "large", "mistral - large", "mistral",
		 "mistral-large-latest", 1000, 100, 0, 0, 0, 0},
	};
	struct harness *h = *state;
	struct run r;

	record_all(h, recs, 4);
	CTL(h, &r, "check");
	assert_status(&r, 0);
	assert_string_equal(r.out,
			    "ledger consistent: 4 entries, 3 sessions\n");
	assert_string_equal(r.err, "");
	run_free(&r);

	harness_stop_daemon(h);
	damage(h, change_total);
	CTL(h, &r, "check");
	assert_status(&r, 1);
	assert_string_equal(r.out,
			    "session s-a: input total 999 but entries sum to "
			    "100\n");
	assert_contains(r.err, "1 problem in the ledger");
	run_free(&r);

	damage(h, garble_entry);
	CTL(h, &r, "check");
	assert_status(&r, 1);
	assert_string_equal(r.out,
			    "entry s-b: does not decode (10 key bytes, 7 value "
			    "bytes)\n"
			    "session s-a: input total 999 but entries sum to "
			    "100\n");
	assert_contains(r.err, "2 problems in the ledger");
	run_free(&r);
}

/* ---- cost ---- */

static const struct rec cost_recs[] = {
	{"s-cost", "gpt", "openAI - gpt-4o - 1735891179896", "openAI", "gpt-4o",
	 441, 106, 0, 0, 0, 0},
	{"s-cost", "emb", "openAI - text-embedding-3-large - 1735891122507",
	 "openAI", "text-embedding-3-large", 6, 0, 0, 0, 0, 0},
	{"s-cost", "claude", "anthropic - claude-sonnet-4-5", "anthropic",
	 "claude-sonnet-4-5", 5158, 512, 3900, 1200, 300,
	 TALLY_USAGE_HAS_CACHE_READ | TALLY_USAGE_HAS_CACHE_WRITE |
		 TALLY_USAGE_HAS_REASONING},
	{"s-cost", "mistral", "mistral - mistral-large", "mistral",
	 "mistral-large-latest", 1000, 50, 0, 0, 0, 0},
	{"s-cost", "gem", "googleGemini - flash", "googleGemini",
	 "gemini-2.5-flash", 1000, 50, 200, 100, 0,
	 TALLY_USAGE_HAS_CACHE_READ | TALLY_USAGE_HAS_CACHE_WRITE},
	{"s-cost", "mini", "openAI - mini", "openAI", "gpt-4o-mini-2024-07-18",
	 1000, 1000, 0, 0, 0, 0},
};

/*
 * Per million tokens, from tests/fixtures/prices.json:
 *   claude   58 * 3.00 + 3900 * 0.30 + 1200 * 3.75 + 512 * 15.00 = 13524
 *   emb      6 * 0.13                                             = 0.78
 *   gem      700 * 0.30 + 200 * 0.075 + 100 * 0.30 (input's) + 50 * 2.50
 *                                                                 = 380
 *   gpt      441 * 2.50 + 106 * 10.00                             = 2162.5
 *   mini     1000 * 0.15 + 1000 * 0.60 (gpt-4o-mini*, listed first) = 750
 *   mistral  no price
 * The table's finest price has 3 decimals: amounts have 3 + 6.
 */
struct cost_line {
	const char *name, *provider, *model;
	unsigned input, cache_read, cache_write, output;
	const char *cost;
};

/* In the order of the snapshot: by LLM reference id. */
static const struct cost_line cost_lines[] = {
	{"anthropic - claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5",
	 5158, 3900, 1200, 512, "0.013524000"},
	{"openAI - text-embedding-3-large - 1735891122507", "openAI",
	 "text-embedding-3-large", 6, 0, 0, 0, "0.000000780"},
	{"googleGemini - flash", "googleGemini", "gemini-2.5-flash", 1000, 200,
	 100, 50, "0.000380000"},
	{"openAI - gpt-4o - 1735891179896", "openAI", "gpt-4o", 441, 0, 0, 106,
	 "0.002162500"},
	{"openAI - mini", "openAI", "gpt-4o-mini-2024-07-18", 1000, 0, 0, 1000,
	 "0.000750000"},
	{"mistral - mistral-large", "mistral", "mistral-large-latest", 1000, 0,
	 0, 50, "unpriced"},
};

/*
 * The table: the names as wide as the widest (47, 12 and 22), the counts
 * as wide as their headers, the costs as wide as the widest amount.
 */
static void cost_expected(char *buf, size_t len, const char *prices)
{
	size_t n =
		(size_t)snprintf(buf, len,
				 "session s-cost: USD per the prices in "
				 "%s\n\n%-47s  %-12s  %-22s  %5s  %10s  "
				 "%11s  %6s  %11s\n",
				 prices, "LLM", "PROVIDER", "MODEL", "INPUT",
				 "CACHE READ", "CACHE WRITE", "OUTPUT", "COST");

	for (size_t i = 0; i < 6; i++) {
		const struct cost_line *c = &cost_lines[i];

		n += (size_t)snprintf(buf + n, len - n,
				      "%-47s  %-12s  %-22s  %5u  %10u  %11u  "
				      "%6u  %11s\n",
				      c->name, c->provider, c->model, c->input,
				      c->cache_read, c->cache_write, c->output,
				      c->cost);
	}
	snprintf(buf + n, len - n,
		 "\ntotal 0.016817280 USD (excludes 1 unpriced LLM)\n");
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

static void test_operators_cost_with_fixture_prices(void **state)
{
	struct harness *h = *state;
	const char *fixtures = getenv("TALLY_FIXTURES");
	char prices[512], want[4096], bad[256];
	struct run r;

	assert_non_null(fixtures);
	snprintf(prices, sizeof(prices), "%s/prices.json", fixtures);
	cost_expected(want, sizeof(want), prices);
	record_all(h, cost_recs, 6);

	CTL(h, &r, "cost", "s-cost", "--prices", prices);
	assert_status(&r, 0);
	assert_string_equal(r.out, want);
	assert_string_equal(r.err, "");
	run_free(&r);

	/* $TALLY_PRICES is the default. */
	setenv("TALLY_PRICES", prices, 1);
	CTL(h, &r, "cost", "s-cost");
	unsetenv("TALLY_PRICES");
	assert_status(&r, 0);
	assert_string_equal(r.out, want);
	run_free(&r);

	CTL(h, &r, "cost", "s-cost");
	assert_status(&r, 2);
	assert_contains(r.err, "--prices FILE or set TALLY_PRICES");
	run_free(&r);

	CTL(h, &r, "cost", "nobody", "--prices", prices);
	assert_status(&r, 0);
	assert_string_equal(r.out, "session nobody has no usage in the "
				   "ledger: nothing to cost\n");
	run_free(&r);

	/* A price as a JSON number is refused: it would be a float. */
	snprintf(bad, sizeof(bad), "%s/bad-prices.json", h->dir);
	write_file(bad, "{\"prices\": [{\"provider\": \"openAI\", \"model\": "
			"\"*\", \"input\": 2.5, \"cached_input\": \"1\", "
			"\"output\": \"10\"}]}");
	CTL(h, &r, "cost", "s-cost", "--prices", bad);
	assert_status(&r, 1);
	assert_string_equal(r.out, "");
	assert_contains(r.err, "prices[0]: \"input\" must be a decimal string");
	run_free(&r);

	write_file(bad, "{\"prices\": [{\"provider\": \"openAI\", \"model\": "
			"\"*\", \"input\": \"2.5\", \"cached\": \"1\", "
			"\"output\": \"10\"}]}");
	CTL(h, &r, "cost", "s-cost", "--prices", bad);
	assert_status(&r, 1);
	assert_contains(r.err, "unknown key \"cached\"");
	run_free(&r);

	CTL(h, &r, "cost", "s-cost", "--prices", "/nonexistent/prices.json");
	assert_status(&r, 1);
	assert_contains(r.err, "/nonexistent/prices.json");
	run_free(&r);
}

/* ---- metrics ---- */

/* Appends " name " to names, unless it is there already. */
static void add_name(char *names, size_t cap, const char *name, size_t len)
{
	char word[130];

	snprintf(word, sizeof(word), " %.*s ", (int)len, name);
	if (strstr(names, word) == NULL)
		snprintf(names + strlen(names), cap - strlen(names), "%s",
			 word);
}

/* A label set: {name="value",...} with \\ \" \n escapes. */
static const char *skip_labels(const char *p)
{
	assert_int_equal(*p++, '{');
	while (*p != '}') {
		while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		       (*p >= '0' && *p <= '9') || *p == '_')
			p++;
		assert_int_equal(*p++, '=');
		assert_int_equal(*p++, '"');
		for (; *p != '"'; p++) {
			assert_true(*p != '\0' && *p != '\n');
			if (*p == '\\') {
				p++;
				assert_true(*p == '\\' || *p == '"' ||
					    *p == 'n');
			}
		}
		p++;
		if (*p == ',')
			p++;
		else
			assert_int_equal(*p, '}');
	}
	return p + 1;
}

/*
 * Checks text is Prometheus' text format: comment lines are HELP or TYPE
 * of a metric before its first sample, every other line is "name value"
 * or "name{labels} value". Collects the sample names into names.
 */
static void check_prometheus(const char *text, char *names, size_t cap)
{
	char typed[8192] = " ";
	const char *line, *nl, *p;

	names[0] = '\0';
	assert_true(strlen(text) > 0);
	for (line = text; *line != '\0'; line = nl + 1) {
		char name[128], word[132], *end;

		nl = strchr(line, '\n');
		assert_non_null(nl);
		if (strncmp(line, "# HELP ", 7) == 0)
			continue;
		if (sscanf(line, "# TYPE %127s", name) == 1) {
			snprintf(word, sizeof(word), " %s ", name);
			assert_null(strstr(typed, word));
			snprintf(typed + strlen(typed),
				 sizeof(typed) - strlen(typed), "%s ", name);
			continue;
		}
		assert_true(*line != '#');
		p = line;
		while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		       (*p >= '0' && *p <= '9') || *p == '_' || *p == ':')
			p++;
		assert_true(p > line);
		snprintf(word, sizeof(word), " %.*s ", (int)(p - line), line);
		if (strstr(typed, word) == NULL)
			fail_msg("sample before its TYPE: %.*s",
				 (int)(nl - line), line);
		add_name(names, cap, line, (size_t)(p - line));
		if (*p == '{')
			p = skip_labels(p);
		assert_int_equal(*p++, ' ');
		strtod(p, &end);
		assert_true(end > p);
		assert_true(end == nl);
	}
}

static void test_operators_metrics_text_and_file(void **state)
{
	static const struct rec u = {"s-m",    "gpt",	 "openAI - gpt-4o",
				     "openAI", "gpt-4o", 441,
				     106,      0,	 0,
				     0,	       0};
	struct harness *h = *state;
	char path[256], names[4096], file_names[4096];
	char *text = NULL;
	struct run r;

	snprintf(path, sizeof(path), "%s/metrics.prom", h->dir);
	harness_start(h, "--metrics-file", path, (const char *)NULL);
	record(h, &u);

	CTL(h, &r, "metrics");
	assert_status(&r, 0);
	check_prometheus(r.out, names, sizeof(names));
	assert_contains(names, " tally_usages_applied_total ");
	assert_contains(names, " gen_ai_client_token_usage_total ");
	assert_contains(r.out, "\ntally_usages_applied_total 1\n");
	assert_contains(r.out, "\ngen_ai_client_token_usage_total{"
			       "gen_ai_provider_name=\"openAI\","
			       "gen_ai_token_type=\"input\"} 441\n");
	assert_contains(r.out, "\ngen_ai_client_token_usage_total{"
			       "gen_ai_provider_name=\"openAI\","
			       "gen_ai_token_type=\"output\"} 106\n");
	run_free(&r);

	/* The daemon writes the file every 5 s; the same metrics. */
	for (int i = 0; i < 70; i++) {
		text = harness_read_file(path, NULL);
		if (text != NULL &&
		    strstr(text, "gen_ai_provider_name=\"openAI\""))
			break;
		free(text);
		text = NULL;
		harness_sleep_ms(100);
	}
	if (text == NULL)
		fail_msg("%s not written within 7 s", path);
	held_out = text;
	check_prometheus(text, file_names, sizeof(file_names));
	assert_string_equal(file_names, names);
	held_out = NULL;
	free(text);
}

/* ---- stats ---- */

/* The list shows every counter of the JSON, with the same value. */
static void test_operators_stats_shows_every_counter(void **state)
{
	static const struct rec u = {"s-st",   "gpt",	 "openAI - gpt-4o",
				     "openAI", "gpt-4o", 1,
				     1,	       0,	 0,
				     0,	       0};
	struct harness *h = *state;
	json_t *root, *v;
	const char *key;
	char *list;
	struct run r;

	record(h, &u);
	CTL(h, &r, "stats");
	assert_status(&r, 0);
	list = r.out;
	r.out = NULL;
	held_out = list;
	run_free(&r);
	held_out = list;
	CTL(h, &r, "stats", "--json");
	assert_status(&r, 0);
	root = parse_strict(r.out);
	assert_true(json_object_size(root) >= 30);
	json_object_foreach(root, key, v)
	{
		char line[128];
		const char *at;

		assert_true(json_is_integer(v));
		snprintf(line, sizeof(line), "%s ", key);
		at = strstr(list, line);
		while (at != NULL && at != list && at[-1] != '\n')
			at = strstr(at + 1, line);
		if (at == NULL)
			fail_msg("%s is not listed:\n%s", key, list);
		at += strspn(at + strlen(key), " ") + strlen(key);
		snprintf(line, sizeof(line), "%" JSON_INTEGER_FORMAT "\n",
			 json_integer_value(v));
		/* Not those that move by themselves or by our questions. */
		if (strstr(key, "uptime") == NULL &&
		    strstr(key, "_age") == NULL &&
		    strcmp(key, "control_requests") != 0 &&
		    strncmp(at, line, strlen(line)) != 0)
			fail_msg("%s: the list says %.20s, the JSON %s", key,
				 at, line);
	}
	json_decref(root);
	run_free(&r);
	free(list);
}

/* ---- retention ---- */

static bool listed(const struct harness *h, const char *id)
{
	char *json = NULL;
	struct tally *t;
	bool found;

	assert_int_equal(tally_open(&t, h->dir), 0);
	assert_int_equal(tally_sessions_json(t, &json), 0);
	tally_close(t);
	found = strstr(json, id) != NULL;
	free(json);
	return found;
}

/* Retention runs every 10 s: an idle session goes within about 12 s. */
static void test_operators_session_ttl_expires_idle(void **state)
{
	static const struct rec u = {"s-ttl",  "gpt",	 "openAI - gpt-4o",
				     "openAI", "gpt-4o", 1,
				     1,	       0,	 0,
				     0,	       0};
	struct harness *h = *state;
	long start;

	harness_start(h, "--session-ttl", "1s", (const char *)NULL);
	record(h, &u);
	start = now_ms();
	assert_true(listed(h, "\"s-ttl\""));
	while (listed(h, "\"s-ttl\"") && now_ms() - start < 15000)
		harness_sleep_ms(250);
	if (listed(h, "\"s-ttl\""))
		fail_msg("s-ttl still listed after %ld ms", now_ms() - start);
	assert_int_equal(harness_stat(h->dir, "purged_sessions"), 1);
}

/* ---- top ---- */

/* Records a busy and a calm session for ms, about every 20 ms. */
static void load(struct tally *t, long ms)
{
	static const struct rec busy = {
		"s-busy", "gpt",    "openAI - gpt-4o - busy",
		"openAI", "gpt-4o", 1000,
		200,	  0,	    0,
		0,	  0};
	static const struct rec calm = {"s-calm",
					"emb",
					"openAI - embedding - calm",
					"openAI",
					"text-embedding-3-large",
					10,
					0,
					0,
					0,
					0,
					0};
	struct tally_usage b = usage_of(&busy), c = usage_of(&calm);
	long end = now_ms() + ms;

	while (now_ms() < end) {
		assert_int_equal(tally_record(t, &b), 0);
		assert_int_equal(tally_record(t, &c), 0);
		harness_sleep_ms(20);
	}
}

/* The first line after the header that starts with `header`. */
static const char *row_after(const char *text, const char *header)
{
	const char *p = strstr(text, header);

	if (p == NULL)
		return NULL;
	p = strchr(p + 1, '\n');
	return p != NULL ? p + 1 : NULL;
}

static void test_operators_top_plain_when_not_a_terminal(void **state)
{
	struct harness *h = *state;
	const char *row;
	char first[256];
	struct tally *t;
	struct run r;
	unsigned long long rate = 0;
	long start = now_ms();
	pid_t pid;

	assert_int_equal(tally_open(&t, h->dir), 0);
	pid = run_start(
		h, (const char *const[]){"top", "--interval", "0.5", NULL});
	load(t, 1500);
	run_finish(h, pid, start, &r);
	assert_int_equal(tally_sync(t, 5000), 0);
	tally_close(t);

	assert_status(&r, 0);
	assert_string_equal(r.err, "");
	assert_null(strchr(r.out, '\033'));
	snprintf(first, sizeof(first), "tally top  %s  ", h->dir);
	assert_int_equal(strncmp(r.out, first, strlen(first)), 0);
	assert_contains(r.out, "  every 0.5 s\ningest: ");
	assert_int_equal(
		sscanf(strchr(r.out, '\n') + 1, "ingest: %llu usages/s", &rate),
		1);
	assert_true(rate > 0);
	row = row_after(r.out, "\nSESSION ");
	assert_non_null(row);
	assert_prefix(row, "s-busy ", r.out);
	assert_prefix(strchr(row, '\n') + 1, "s-calm ", r.out);
	row = row_after(r.out, "\nLLM ");
	assert_non_null(row);
	assert_prefix(row, "openAI - gpt-4o - busy ", r.out);
	assert_contains(row, "  openAI / gpt-4o\n");
	/* One interval: a refresh of 0.5 s, not a live view. */
	if (r.ms > 5000)
		fail_msg("took %ld ms", r.ms);
	run_free(&r);

	/* Nothing happening: it says so. */
	CTL(h, &r, "top", "--interval", "0.2");
	assert_status(&r, 0);
	assert_contains(r.out, "\ningest: 0 usages/s   interval: 0 tokens in "
			       "0 calls   ledger: 2 sessions, 2 entries\n");
	assert_contains(r.out, "(no session used tokens in this interval)\n");
	run_free(&r);
}

/* Runs tmux on the case's private server; returns its exit status. */
static int tmux(const struct harness *h, const char *const *args)
{
	const char *argv[MAX_ARGS] = {"tmux", "-L", tmux_socket};
	int n = 3;
	pid_t pid;

	for (int i = 0; args[i] != NULL && n < MAX_ARGS - 1; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* The server's socket lives in the case's own directory. */
		setenv("TMUX_TMPDIR", tmux_dir, 1);
		unsetenv("TMUX");
		exec_child(h->dir, "tmux", argv);
	}
	return wait_bounded(pid);
}

#define TMUX(h, ...) tmux(h, (const char *const[]){__VA_ARGS__, NULL})

/* Stops the private tmux server, if a case started one. */
static void tmux_kill_server(void)
{
	const char *argv[] = {"tmux", "-L", tmux_socket, "kill-server", NULL};
	pid_t pid;
	int status;

	if (tmux_socket[0] == '\0')
		return;
	pid = fork();
	if (pid == 0) {
		int fd = open("/dev/null", O_RDWR);

		dup2(fd, 1);
		dup2(fd, 2);
		setenv("TMUX_TMPDIR", tmux_dir, 1);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, &status, 0);
	tmux_socket[0] = '\0';
}

static char *capture(const struct harness *h)
{
	char path[256];
	char *screen;

	assert_int_equal(TMUX(h, "capture-pane", "-p", "-t", "ops"), 0);
	snprintf(path, sizeof(path), "%s/tmux.out", h->dir);
	screen = harness_read_file(path, NULL);
	assert_non_null(screen);
	return screen;
}

static bool file_exists(const struct harness *h, const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", h->dir, name);
	return access(path, F_OK) == 0;
}

/* Waits, with load, until the screen shows s-busy as the busiest. */
static char *wait_for_busy(const struct harness *h, struct tally *t)
{
	char *screen = NULL;
	const char *row;

	for (int i = 0; i < 40; i++) {
		load(t, 200);
		free(screen);
		screen = capture(h);
		held_err = screen;
		row = row_after(screen, "SESSION ");
		if (row != NULL && strncmp(row, "s-busy ", 7) == 0)
			return screen;
	}
	fail_msg("top never showed s-busy first:\n%s", screen);
	return screen;
}

static void start_top_in_tmux(const struct harness *h)
{
	const char *ctl = getenv("TALLYCTL");
	char cmd[1024];

	assert_non_null(ctl);
	/*
	 * The shell notes the terminal's settings before and after, and
	 * keeps the pane open afterwards so that its screen can be read.
	 */
	snprintf(cmd, sizeof(cmd),
		 "stty -g > '%s/stty.before'; echo before-top; "
		 "sh -c 'echo $$ > \"$0\"; exec \"$1\" --dir \"$2\" top "
		 "--iterations 120' '%s/top.pid' '%s' '%s'; st=$?; "
		 "echo top-exit=$st; stty -g > '%s/stty.after'; "
		 "echo $st > '%s/top.exit'; sleep 30",
		 h->dir, h->dir, ctl, h->dir, h->dir, h->dir);
	snprintf(tmux_socket, sizeof(tmux_socket), "tally-ops-%ld",
		 (long)getpid());
	snprintf(tmux_dir, sizeof(tmux_dir), "%s", h->dir);
	assert_int_equal(TMUX(h, "new-session", "-d", "-s", "ops", "-x", "120",
			      "-y", "30", cmd),
			 0);
}

static void test_operators_top_in_a_terminal(void **state)
{
	struct harness *h = *state;
	char *screen, *before, *after, path[256];
	struct tally *t;
	const char *row;

	if (TMUX(h, "-V") != 0)
		skip();
	assert_int_equal(tally_open(&t, h->dir), 0);
	start_top_in_tmux(h);
	screen = wait_for_busy(h, t);
	assert_contains(screen, "tally top  ");
	assert_contains(screen, "(q quits)");
	assert_contains(screen, "\ningest: ");
	row = row_after(screen, "\nLLM ");
	assert_non_null(row);
	assert_prefix(row, "openAI - gpt-4o - busy ", screen);
	/* The alternate screen hides what the shell printed before. */
	assert_null(strstr(screen, "before-top"));
	free(screen);
	held_err = NULL;
	assert_int_equal(tally_sync(t, 5000), 0);
	tally_close(t);

	assert_int_equal(TMUX(h, "send-keys", "-t", "ops", "q"), 0);
	for (int i = 0; i < 100 && !file_exists(h, "top.exit"); i++)
		harness_sleep_ms(50);
	assert_true(file_exists(h, "top.exit"));
	screen = capture(h);
	held_err = screen;
	/* Back on the shell's screen, top's view gone, exit status 0. */
	assert_contains(screen, "before-top\ntop-exit=0\n");
	assert_null(strstr(screen, "tally top"));
	held_err = NULL;
	free(screen);
	snprintf(path, sizeof(path), "%s/stty.before", h->dir);
	before = harness_read_file(path, NULL);
	snprintf(path, sizeof(path), "%s/stty.after", h->dir);
	after = harness_read_file(path, NULL);
	assert_non_null(before);
	assert_non_null(after);
	/* The terminal's modes are back as they were. */
	assert_string_equal(before, after);
	free(before);
	free(after);
	tmux_kill_server();
}

/* SIGTERM in the live view: the terminal is restored all the same. */
static void test_operators_top_restores_terminal_on_sigterm(void **state)
{
	struct harness *h = *state;
	char *screen, *before, *after, *pid_text, path[256];
	long pid;

	if (TMUX(h, "-V") != 0)
		skip();
	start_top_in_tmux(h);
	for (int i = 0; i < 100; i++) {
		screen = capture(h);
		if (strstr(screen, "(q quits)") != NULL) {
			free(screen);
			break;
		}
		free(screen);
		harness_sleep_ms(50);
	}
	/* The shell that wrote its pid there became tallyctl (exec). */
	snprintf(path, sizeof(path), "%s/top.pid", h->dir);
	pid_text = harness_read_file(path, NULL);
	assert_non_null(pid_text);
	pid = strtol(pid_text, NULL, 10);
	free(pid_text);
	assert_true(pid > 0);
	assert_int_equal(kill((pid_t)pid, SIGTERM), 0);
	for (int i = 0; i < 100 && !file_exists(h, "top.exit"); i++)
		harness_sleep_ms(50);
	assert_true(file_exists(h, "top.exit"));
	screen = capture(h);
	held_err = screen;
	/* It died of the signal, as a shell expects: 128 + 15. */
	assert_contains(screen, "before-top\n");
	assert_contains(screen, "\ntop-exit=143\n");
	assert_null(strstr(screen, "tally top"));
	held_err = NULL;
	free(screen);
	snprintf(path, sizeof(path), "%s/stty.before", h->dir);
	before = harness_read_file(path, NULL);
	snprintf(path, sizeof(path), "%s/stty.after", h->dir);
	after = harness_read_file(path, NULL);
	assert_non_null(before);
	assert_non_null(after);
	assert_string_equal(before, after);
	free(before);
	free(after);
	tmux_kill_server();
}

#define CASE(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define BARE(fn) cmocka_unit_test_setup_teardown(fn, setup_bare, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		BARE(test_operators_help_lists_every_command),
		CASE(test_operators_usage_errors_exit_2),
		CASE(test_operators_sessions_sort_filter_limit),
		CASE(test_operators_sessions_table),
		CASE(test_operators_export_ndjson_and_csv),
		CASE(test_operators_export_since),
		BARE(test_operators_export_without_ledger_fails),
		CASE(test_operators_purge_named),
		CASE(test_operators_purge_repeated_after_new_usage),
		CASE(test_operators_purge_many_named),
		CASE(test_operators_purge_idle_for),
		CASE(test_operators_check_clean_and_damaged),
		CASE(test_operators_cost_with_fixture_prices),
		BARE(test_operators_metrics_text_and_file),
		CASE(test_operators_stats_shows_every_counter),
		BARE(test_operators_session_ttl_expires_idle),
		CASE(test_operators_top_plain_when_not_a_terminal),
		CASE(test_operators_top_in_a_terminal),
		CASE(test_operators_top_restores_terminal_on_sigterm),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
