/*
 * tallyd's life: start, refusing a second daemon, stale sockets after a
 * kill, a clean stop, restarts, and its command line.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static bool exists(const char *dir, const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

/* Waits at most 5 s for pid to exit on its own; returns its status. */
static int wait_exit(pid_t pid)
{
	int status;

	for (int i = 0; i < 500; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		harness_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

static void record_and_check(const char *dir, const char *session,
			     uint64_t want_input)
{
	struct tally_usage u = harness_usage(session, "llm", 2, 1);
	struct tally *t;
	uint64_t in, out;

	assert_int_equal(tally_open(&t, dir), 0);
	assert_int_equal(tally_record(t, &u), 0);
	assert_int_equal(tally_sync(t, 5000), 0);
	harness_counts(t, session, "llm", &in, &out);
	assert_int_equal(in, want_input);
	tally_close(t);
}

static void test_daemon_second_is_refused(void **state)
{
	struct harness *h = *state;
	char log[256], expect[64], *text;
	pid_t first, second;

	first = harness_start(h, NULL);
	snprintf(log, sizeof(log), "%s/second.log", h->dir);
	second = harness_spawn(h->dir, NULL, log);
	assert_int_equal(wait_exit(second), 1);
	text = harness_read_file(log, NULL);
	assert_non_null(text);
	snprintf(expect, sizeof(expect), "already running, pid %ld",
		 (long)first);
	if (strstr(text, expect) == NULL)
		fail_msg("second daemon said: %s", text);
	free(text);
	/* The first one still serves, its sockets untouched. */
	assert_true(exists(h->dir, "ingest.ipc"));
	record_and_check(h->dir, "after-second", 2);
	harness_stop_daemon(h);
}

static void test_daemon_restarts_over_stale_sockets(void **state)
{
	struct harness *h = *state;

	harness_start(h, NULL);
	record_and_check(h->dir, "s", 2);
	harness_kill_daemon(h);
	/* A killed daemon leaves its sockets; the next one takes over. */
	assert_true(exists(h->dir, "ingest.ipc"));
	assert_true(exists(h->dir, "control.ipc"));
	harness_start(h, NULL);
	record_and_check(h->dir, "s", 4);
	harness_stop_daemon(h);
}

static void test_daemon_sigterm_stops_cleanly(void **state)
{
	struct harness *h = *state;
	struct stat st;
	char path[256];

	harness_start(h, NULL);
	snprintf(path, sizeof(path), "%s/ingest.ipc", h->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0660);
	harness_stop_daemon(h);
	assert_false(exists(h->dir, "ingest.ipc"));
	assert_false(exists(h->dir, "control.ipc"));
	assert_true(exists(h->dir, "ledger.mdb"));
}

static void test_daemon_restart_keeps_committed(void **state)
{
	struct harness *h = *state;

	harness_start(h, NULL);
	record_and_check(h->dir, "kept", 2);
	harness_stop_daemon(h);
	harness_start(h, NULL);
	record_and_check(h->dir, "kept", 4);
	harness_kill_daemon(h);
	harness_start(h, NULL);
	record_and_check(h->dir, "kept", 6);
	harness_stop_daemon(h);
}

static void test_daemon_long_directory_refused(void **state)
{
	struct harness *h = *state;
	char dir[256], log[256], *text;
	struct tally *t;
	pid_t pid;

	snprintf(dir, sizeof(dir), "%s/%0120d", h->dir, 0);
	snprintf(log, sizeof(log), "%s/long.log", h->dir);
	pid = harness_spawn(dir, NULL, log);
	assert_int_equal(wait_exit(pid), 1);
	text = harness_read_file(log, NULL);
	assert_non_null(text);
	if (strstr(text, "107 bytes") == NULL)
		fail_msg("tallyd said: %s", text);
	free(text);
	assert_int_equal(tally_open(&t, dir), -ENAMETOOLONG);
}

static int run_tallyd(const char *arg, const char *out)
{
	const char *tallyd = getenv("TALLYD");
	pid_t pid = fork();

	if (pid == 0) {
		if (freopen(out, "w", stdout) == NULL ||
		    freopen(out, "a", stderr) == NULL)
			_exit(126);
		execl(tallyd, tallyd, arg, (char *)NULL);
		_exit(127);
	}
	return wait_exit(pid);
}

static void test_daemon_command_line(void **state)
{
	struct harness *h = *state;
	char out[256], *text;

	snprintf(out, sizeof(out), "%s/out", h->dir);
	assert_int_equal(run_tallyd("--help", out), 0);
	text = harness_read_file(out, NULL);
	assert_non_null(strstr(text, "--no-sync"));
	assert_non_null(strstr(text, "--map-size"));
	free(text);
	assert_int_equal(run_tallyd("-V", out), 0);
	text = harness_read_file(out, NULL);
	assert_string_equal(text, "tallyd " TALLY_VERSION_STRING "\n");
	free(text);
	assert_int_equal(run_tallyd("--bogus", out), 2);
	assert_int_equal(run_tallyd("--map-size=12x", out), 2);
}

/* The map starts small and grows; every usage stays. */
static void test_daemon_map_grows(void **state)
{
	struct harness *h = *state;
	struct tally *t;
	char session[32];

	harness_start(h, "--map-size", "64K", NULL);
	assert_int_equal(tally_open(&t, h->dir), 0);
	for (int i = 0; i < 3000; i++) {
		struct tally_usage u;

		snprintf(session, sizeof(session), "grow-%d", i);
		u = harness_usage(session, "llm", 3, 5);
		assert_int_equal(tally_record(t, &u), 0);
	}
	assert_int_equal(tally_sync(t, 20000), 0);
	for (int i = 0; i < 3000; i += 499) {
		uint64_t in, out;

		snprintf(session, sizeof(session), "grow-%d", i);
		harness_counts(t, session, "llm", &in, &out);
		assert_int_equal(in, 3);
		assert_int_equal(out, 5);
	}
	tally_close(t);
	assert_true(harness_stat(h->dir, "map_grows") > 0);
	harness_stop_daemon(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		harness_test(test_daemon_second_is_refused),
		harness_test(test_daemon_restarts_over_stale_sockets),
		harness_test(test_daemon_sigterm_stops_cleanly),
		harness_test(test_daemon_restart_keeps_committed),
		harness_test(test_daemon_long_directory_refused),
		harness_test(test_daemon_command_line),
		harness_test(test_daemon_map_grows),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
