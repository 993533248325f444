/*
 * test_tallyctl.c - the operators' tool, run as a real process.
 *
 * Each case runs $TALLYCTL against its own directory and daemon, captures
 * its standard output, standard error and exit status, and checks them
 * against what its help text promises: 0 success, 1 runtime failure,
 * 2 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "harness.h"

/* Longest any one tallyctl run may take before it counts as hung. */
#define RUN_MS 20000
#define MAX_ARGS 32

struct run {
	/* Exit status, or -1 when killed for taking too long. */
	int status;
	char *out;
	char *err;
	/* How long it ran, in milliseconds. */
	long ms;
};

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

/* A directory where no tallyd runs, nor ever ran. */
static int setup_bare(void **state)
{
	struct harness *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return -1;
	*state = h;
	harness_init(h);
	return 0;
}

/*
 * The output of the run not yet freed: a failed assert leaves its case
 * early, and the teardown frees it so that the leak checker stays quiet.
 */
static char *held_out, *held_err;

static int teardown(void **state)
{
	struct harness *h = *state;

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

/* Child side: output to files in dir, no input, then tallyctl. */
static void exec_ctl(const char *dir, const char *const *argv)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/ctl.out", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || dup2(fd, 1) < 0)
		_exit(126);
	snprintf(path, sizeof(path), "%s/ctl.err", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || dup2(fd, 2) < 0)
		_exit(126);
	fd = open("/dev/null", O_RDONLY);
	if (fd < 0 || dup2(fd, 0) < 0)
		_exit(126);
	execv(argv[0], (char *const *)argv);
	_exit(127);
}

/* Waits at most RUN_MS for pid; -1 (and killed) when it hangs. */
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

/*
 * Runs tallyctl with args (NULL-terminated), preceded by --dir h->dir when
 * with_dir is set, and captures what it did in *r.
 */
static void run_ctl(const struct harness *h, bool with_dir, struct run *r,
		    const char *const *args)
{
	const char *ctl = getenv("TALLYCTL");
	const char *argv[MAX_ARGS];
	char path[256];
	long start;
	pid_t pid;
	int n = 0;

	assert_non_null(ctl);
	argv[n++] = ctl;
	if (with_dir) {
		argv[n++] = "--dir";
		argv[n++] = h->dir;
	}
	for (int i = 0; args[i] != NULL; i++) {
		assert_true(n < MAX_ARGS - 1);
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	start = now_ms();
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		exec_ctl(h->dir, argv);
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

#define CTL(h, r, ...) \
	run_ctl(h, true, r, (const char *const[]){__VA_ARGS__, NULL})
#define CTL_NODIR(h, r, ...) \
	run_ctl(h, false, r, (const char *const[]){__VA_ARGS__, NULL})

/* Asserts the exit status, printing what tallyctl said when it differs. */
static void assert_status(const struct run *r, int want)
{
	if (r->status != want)
		fail_msg("exit %d, not %d\nstdout: %s\nstderr: %s", r->status,
			 want, r->out, r->err);
}

static void assert_contains(const char *text, const char *part)
{
	if (strstr(text, part) == NULL)
		fail_msg("'%s' not in:\n%s", part, text);
}

static json_t *parse_strict(const char *text)
{
	json_error_t err;
	json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &err);

	if (root == NULL)
		fail_msg("not strict JSON (%s): %s", err.text, text);
	return root;
}

static json_int_t int_at(json_t *obj, const char *a, const char *b)
{
	json_t *v = json_object_get(obj, a);

	if (b != NULL)
		v = json_object_get(v, b);
	if (!json_is_integer(v))
		fail_msg("%s%s%s is not an integer", a, b ? "." : "",
			 b ? b : "");
	return json_integer_value(v);
}

/* Records one usage with tallyctl; asserts it was committed. */
static void ctl_record(const struct harness *h, const char *session,
		       const char *llm, const char *input, const char *output)
{
	struct run r;

	CTL(h, &r, "record", "--session", session, "--llm", llm, "--name",
	    "openAI - gpt-4o - 1735891179896", "--provider", "openAI",
	    "--model", "gpt-4o", "--input", input, "--output", output);
	assert_status(&r, 0);
	run_free(&r);
}

/* ---- usage ---- */

static void test_tallyctl_help_lists_every_command(void **state)
{
	static const char *const commands[] = {
		"show", "sessions", "stats", "record", "help",
	};
	struct harness *h = *state;
	struct run r;

	CTL_NODIR(h, &r, "--help");
	assert_status(&r, 0);
	assert_string_equal(r.err, "");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		char line[32];

		/* Each command starts a line of the command list. */
		snprintf(line, sizeof(line), "\n  %s ", commands[i]);
		assert_contains(r.out, line);
	}
	run_free(&r);

	CTL_NODIR(h, &r, "-h");
	assert_status(&r, 0);
	assert_contains(r.out, "Usage: tallyctl");
	run_free(&r);

	/* Each command has its own help, through help and through -h. */
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		char usage[64];

		snprintf(usage, sizeof(usage), " %s ", commands[i]);
		CTL_NODIR(h, &r, "help", commands[i]);
		assert_status(&r, 0);
		assert_contains(r.out, usage);
		run_free(&r);
	}
	CTL_NODIR(h, &r, "record", "--help");
	assert_status(&r, 0);
	assert_contains(r.out, "--session");
	assert_contains(r.out, "--response");
	run_free(&r);
}

static void test_tallyctl_usage_errors_exit_2(void **state)
{
	struct harness *h = *state;
	struct run r;

	CTL(h, &r, "frobnicate");
	assert_status(&r, 2);
	assert_string_equal(r.out, "");
	assert_contains(r.err, "frobnicate");
	run_free(&r);

	/* No command at all, an unknown global or command option. */
	CTL(h, &r, "--bogus", "stats");
	assert_status(&r, 2);
	run_free(&r);
	run_ctl(h, true, &r, (const char *const[]){NULL});
	assert_status(&r, 2);
	run_free(&r);
	CTL(h, &r, "show", "s", "--bogus");
	assert_status(&r, 2);
	run_free(&r);
	CTL(h, &r, "show");
	assert_status(&r, 2);
	run_free(&r);
	CTL(h, &r, "help", "frobnicate");
	assert_status(&r, 2);
	run_free(&r);
}

static void test_tallyctl_record_requires_its_options(void **state)
{
	struct harness *h = *state;
	struct run r;

	CTL(h, &r, "record", "--llm", "l", "--input", "1", "--output", "1");
	assert_status(&r, 2);
	assert_contains(r.err, "--session");
	run_free(&r);
	CTL(h, &r, "record", "--session", "s", "--input", "1", "--output", "1");
	assert_status(&r, 2);
	run_free(&r);
	CTL(h, &r, "record", "--session", "s", "--llm", "l", "--input", "1");
	assert_status(&r, 2);
	run_free(&r);
	/* --response takes its counts from the file, with --provider. */
	CTL(h, &r, "record", "--session", "s", "--llm", "l", "--response",
	    "x.json");
	assert_status(&r, 2);
	run_free(&r);
	CTL(h, &r, "record", "--session", "s", "--llm", "l", "--provider",
	    "anthropic", "--response", "x.json", "--input", "1");
	assert_status(&r, 2);
	run_free(&r);
	CTL(h, &r, "record", "--session", "s", "--llm", "l", "--input", "1",
	    "--output", "1", "extra");
	assert_status(&r, 2);
	run_free(&r);

	assert_int_equal(harness_stat(h->dir, "usages_received"), 0);
}

/* ---- record and show ---- */

static void test_tallyctl_record_then_show(void **state)
{
	struct harness *h = *state;
	struct run r;
	json_t *root;

	ctl_record(h, "s-show", "llm-1", "12", "3");
	CTL(h, &r, "show", "s-show");
	assert_status(&r, 0);
	root = parse_strict(r.out);
	assert_int_equal(json_object_size(root), 1);
	assert_int_equal(
		int_at(json_object_get(root, "llm-1"), "usage", "inputTokens"),
		12);
	assert_int_equal(
		int_at(json_object_get(root, "llm-1"), "usage", "outputTokens"),
		3);
	json_decref(root);
	/* The snapshot's own shape and order, indented by 2. */
	assert_string_equal(r.out,
			    "{\n"
			    "  \"llm-1\": {\n"
			    "    \"llmDisplayName\": \"openAI - gpt-4o - "
			    "1735891179896\",\n"
			    "    \"providerType\": \"openAI\",\n"
			    "    \"modelType\": \"gpt-4o\",\n"
			    "    \"usage\": {\n"
			    "      \"inputTokens\": 12,\n"
			    "      \"outputTokens\": 3\n"
			    "    }\n"
			    "  }\n"
			    "}\n");
	run_free(&r);

	CTL(h, &r, "show", "nobody");
	assert_status(&r, 0);
	assert_string_equal(r.out, "{}\n");
	run_free(&r);

	/* A bad session id is the caller's mistake. */
	CTL(h, &r, "show", "");
	assert_status(&r, 2);
	run_free(&r);
	CTL(h, &r, "show", "bad\xc3(");
	assert_status(&r, 2);
	run_free(&r);
}

static void test_tallyctl_record_from_provider_response(void **state)
{
	struct harness *h = *state;
	const char *fixtures = getenv("TALLY_FIXTURES");
	char path[512];
	struct run r;
	json_t *root, *e;

	assert_non_null(fixtures);
	snprintf(path, sizeof(path), "%s/providers/anthropic-messages.json",
		 fixtures);
	CTL(h, &r, "record", "--session", "s-resp", "--llm", "claude", "--name",
	    "anthropic - claude-sonnet-4-5", "--provider", "anthropic",
	    "--model", "claude-sonnet-4-5", "--response", path);
	assert_status(&r, 0);
	run_free(&r);

	CTL(h, &r, "show", "s-resp", "--details");
	assert_status(&r, 0);
	root = parse_strict(r.out);
	e = json_object_get(root, "claude");
	assert_non_null(e);
	assert_string_equal(
		json_string_value(json_object_get(e, "providerType")),
		"anthropic");
	/* The fixture's numbers, as EXPECTED.md gives them. */
	assert_int_equal(int_at(e, "usage", "inputTokens"), 5158);
	assert_int_equal(int_at(e, "usage", "outputTokens"), 512);
	assert_int_equal(
		int_at(e, "details", "gen_ai.usage.cache_read.input_tokens"),
		3900);
	assert_int_equal(int_at(e, "details",
				"gen_ai.usage.cache_creation.input_tokens"),
			 1200);
	assert_int_equal(
		int_at(e, "details", "gen_ai.usage.reasoning.output_tokens"),
		300);
	assert_int_equal(int_at(e, "details", "calls"), 1);
	json_decref(root);
	run_free(&r);

	/* A response that is not one records nothing. */
	snprintf(path, sizeof(path), "%s/ctl-junk.json", h->dir);
	{
		FILE *f = fopen(path, "w");

		assert_non_null(f);
		fputs("{\"not\": \"a response\"", f);
		fclose(f);
	}
	CTL(h, &r, "record", "--session", "s-resp", "--llm", "claude",
	    "--provider", "anthropic", "--response", path);
	assert_status(&r, 1);
	run_free(&r);
	assert_int_equal(harness_stat(h->dir, "usages_received"), 1);
}

static void test_tallyctl_record_refuses_junk_numbers(void **state)
{
	static const char *const junk[] = {
		"12x", "-5",	     "",
		" 5",  "+5",	     "0x10",
		"1e3", "1000000001", "99999999999999999999999",
	};
	struct harness *h = *state;
	struct run r;

	for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
		CTL(h, &r, "record", "--session", "s-junk", "--llm", "l",
		    "--input", junk[i], "--output", "3");
		if (r.status != 2)
			fail_msg("--input '%s': exit %d", junk[i], r.status);
		assert_contains(r.err, "--input");
		run_free(&r);
		CTL(h, &r, "record", "--session", "s-junk", "--llm", "l",
		    "--input", "3", "--output", junk[i]);
		if (r.status != 2)
			fail_msg("--output '%s': exit %d", junk[i], r.status);
		run_free(&r);
	}
	CTL(h, &r, "record", "--session", "s-junk", "--llm", "l", "--input",
	    "1", "--output", "1", "--timeout", "soon");
	assert_status(&r, 2);
	run_free(&r);

	CTL(h, &r, "show", "s-junk");
	assert_status(&r, 0);
	assert_string_equal(r.out, "{}\n");
	run_free(&r);
	assert_int_equal(harness_stat(h->dir, "usages_received"), 0);

	/* The limit itself is a number like any other. */
	ctl_record(h, "s-junk", "l", "1000000000", "0");
	assert_int_equal(harness_stat(h->dir, "usages_applied"), 1);
}

/* ---- sessions and stats ---- */

static json_t *find_session(json_t *arr, const char *id)
{
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *s = json_array_get(arr, i);

		if (strcmp(json_string_value(json_object_get(s, "sessionId")),
			   id) == 0)
			return s;
	}
	fail_msg("session %s not listed", id);
	return NULL;
}

/* The table line of session id: its counts and where it is. */
static int table_row(const char *table, const char *id, long long *in,
		     long long *out, long long *calls)
{
	char name[64];
	int row = 0;

	for (const char *line = table; line != NULL && *line != '\0'; row++) {
		if (sscanf(line, "%63s %lld %lld %lld", name, in, out, calls) ==
			    4 &&
		    strcmp(name, id) == 0)
			return row;
		line = strchr(line, '\n');
		if (line != NULL)
			line++;
	}
	fail_msg("no row for %s in:\n%s", id, table);
	return -1;
}

static void test_tallyctl_sessions_lists_totals(void **state)
{
	struct harness *h = *state;
	long long in, out, calls;
	json_t *root, *s1, *s2;
	struct run r;
	int row1, row2;

	ctl_record(h, "s-one", "llm-a", "12", "3");
	ctl_record(h, "s-one", "llm-b", "8", "2");
	ctl_record(h, "s-two", "llm-a", "1000000000", "1");

	CTL(h, &r, "sessions", "--json");
	assert_status(&r, 0);
	root = parse_strict(r.out);
	assert_true(json_is_array(root));
	assert_int_equal(json_array_size(root), 2);
	s1 = find_session(root, "s-one");
	assert_int_equal(int_at(s1, "inputTokens", NULL), 20);
	assert_int_equal(int_at(s1, "outputTokens", NULL), 5);
	assert_int_equal(int_at(s1, "calls", NULL), 2);
	assert_true(int_at(s1, "firstActivity", NULL) > 0);
	assert_true(int_at(s1, "firstActivity", NULL) <=
		    int_at(s1, "lastActivity", NULL));
	s2 = find_session(root, "s-two");
	assert_int_equal(int_at(s2, "inputTokens", NULL), 1000000000);
	assert_int_equal(int_at(s2, "outputTokens", NULL), 1);
	assert_int_equal(int_at(s2, "calls", NULL), 1);
	run_free(&r);

	CTL(h, &r, "sessions");
	assert_status(&r, 0);
	assert_int_equal(strncmp(r.out, "SESSION ", 8), 0);
	row1 = table_row(r.out, "s-one", &in, &out, &calls);
	assert_int_equal(in, 20);
	assert_int_equal(out, 5);
	assert_int_equal(calls, 2);
	row2 = table_row(r.out, "s-two", &in, &out, &calls);
	assert_int_equal(in, 1000000000);
	assert_int_equal(out, 1);
	assert_int_equal(calls, 1);
	/* Most recent first, where the clock tells them apart. */
	if (int_at(s2, "lastActivity", NULL) > int_at(s1, "lastActivity", NULL))
		assert_true(row2 < row1);
	json_decref(root);
	run_free(&r);
}

static void test_tallyctl_stats_counts_applied(void **state)
{
	struct harness *h = *state;
	unsigned long long applied = 0, v;
	char name[64];
	json_t *root;
	struct run r;

	ctl_record(h, "s-stats", "l", "1", "1");
	ctl_record(h, "s-stats", "l", "2", "2");
	ctl_record(h, "s-other", "l", "3", "3");

	CTL(h, &r, "stats", "--json");
	assert_status(&r, 0);
	root = parse_strict(r.out);
	assert_int_equal(int_at(root, "usages_applied", NULL), 3);
	assert_int_equal(int_at(root, "usages_received", NULL), 3);
	json_decref(root);
	run_free(&r);

	CTL(h, &r, "stats");
	assert_status(&r, 0);
	for (const char *line = r.out; line != NULL && *line != '\0';) {
		if (sscanf(line, "%63s %llu", name, &v) == 2 &&
		    strcmp(name, "usages_applied") == 0)
			applied = v;
		line = strchr(line, '\n');
		if (line != NULL)
			line++;
	}
	assert_int_equal(applied, 3);
	run_free(&r);
}

/* ---- no daemon ---- */

static void test_tallyctl_stats_without_daemon_fails(void **state)
{
	struct harness *h = *state;
	struct run r;

	CTL(h, &r, "stats");
	assert_status(&r, 1);
	assert_string_equal(r.out, "");
	assert_contains(r.err, h->dir);
	/* It gives up after its 2 s wait, not much later. */
	if (r.ms > 4000)
		fail_msg("took %ld ms", r.ms);
	run_free(&r);

	CTL(h, &r, "stats", "--json");
	assert_status(&r, 1);
	assert_contains(r.err, h->dir);
	run_free(&r);

	/* No ledger either: the readers say where they looked. */
	CTL(h, &r, "show", "s");
	assert_status(&r, 1);
	assert_contains(r.err, h->dir);
	run_free(&r);
	CTL(h, &r, "sessions");
	assert_status(&r, 1);
	assert_contains(r.err, h->dir);
	run_free(&r);
}

/*
 * --timeout is how long record waits for the commit: with no daemon it
 * fails after about that long, not after that plus the library's close
 * timeout.
 */
static void test_tallyctl_record_without_daemon_honours_timeout(void **state)
{
	struct harness *h = *state;
	struct run r;

	CTL(h, &r, "record", "--session", "s", "--llm", "l", "--input", "1",
	    "--output", "1", "--timeout", "500");
	assert_status(&r, 1);
	assert_contains(r.err, h->dir);
	if (r.ms > 2500)
		fail_msg("--timeout 500 took %ld ms", r.ms);
	run_free(&r);
}

#define CASE(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define BARE(fn) cmocka_unit_test_setup_teardown(fn, setup_bare, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		BARE(test_tallyctl_help_lists_every_command),
		CASE(test_tallyctl_usage_errors_exit_2),
		CASE(test_tallyctl_record_requires_its_options),
		CASE(test_tallyctl_record_then_show),
		CASE(test_tallyctl_record_from_provider_response),
		CASE(test_tallyctl_record_refuses_junk_numbers),
		CASE(test_tallyctl_sessions_lists_totals),
		CASE(test_tallyctl_stats_counts_applied),
		BARE(test_tallyctl_stats_without_daemon_fails),
		BARE(test_tallyctl_record_without_daemon_honours_timeout),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
