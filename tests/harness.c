#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"

#define MAX_ARGS 32

void harness_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void harness_init(struct harness *h)
{
	const char *tmp = getenv("TMPDIR");

	memset(h, 0, sizeof(*h));
	snprintf(h->dir, sizeof(h->dir), "%s/tally-test.XXXXXX",
		 tmp != NULL && tmp[0] == '/' ? tmp : "/tmp");
	assert_non_null(mkdtemp(h->dir));
	h->daemon = -1;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
			struct FTW *ftw)
{
	return remove(path);
}

void harness_fini(struct harness *h)
{
	if (h->daemon > 0)
		harness_stop(h->daemon, SIGTERM, 5000);
	h->daemon = -1;
	nftw(h->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int harness_setup(void **state)
{
	struct harness *h = malloc(sizeof(*h));

	if (h == NULL)
		return -1;
	harness_init(h);
	*state = h;
	return 0;
}

int harness_teardown(void **state)
{
	struct harness *h = *state;

	harness_fini(h);
	free(h);
	return 0;
}

pid_t harness_spawn(const char *dir, const char *const *extra,
		    const char *stderr_path)
{
	const char *tallyd = getenv("TALLYD");
	const char *argv[MAX_ARGS];
	int n = 0;
	pid_t pid;

	if (tallyd == NULL)
		tallyd = "tallyd";
	argv[n++] = tallyd;
	argv[n++] = "--dir";
	argv[n++] = dir;
	for (int i = 0; extra != NULL && extra[i] != NULL && n < MAX_ARGS - 1;
	     i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	pid = fork();
	if (pid == 0) {
		int fd;

		/* A test that dies (a sanitizer abort) takes its daemon along. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		fd = open(stderr_path != NULL ? stderr_path : "/dev/null",
			  O_WRONLY | O_CREAT | O_APPEND, 0644);

		/* Never the test's own stdout: meson waits for it to close. */
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(tallyd, (char *const *)argv);
		_exit(127);
	}
	return pid;
}

int harness_wait_ready(const char *dir, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	struct tally *t;
	char *json;
	int rc = -ETIMEDOUT;

	if (tally_open(&t, dir) < 0)
		return -EIO;
	while (mono_ms() < deadline) {
		if (tally_stats_json(t, 200, &json) == 0) {
			free(json);
			rc = 0;
			break;
		}
		harness_sleep_ms(10);
	}
	tally_close(t);
	return rc;
}

pid_t harness_start(struct harness *h, ...)
{
	const char *extra[MAX_ARGS];
	char log[256];
	va_list ap;
	int n = 0;

	va_start(ap, h);
	while (n < MAX_ARGS - 1 && (extra[n] = va_arg(ap, const char *)))
		n++;
	va_end(ap);
	extra[n] = NULL;
	snprintf(log, sizeof(log), "%s/tallyd.log", h->dir);
	h->daemon = harness_spawn(h->dir, extra, log);
	assert_true(h->daemon > 0);
	assert_int_equal(harness_wait_ready(h->dir, 5000), 0);
	return h->daemon;
}

int harness_stop(pid_t pid, int sig, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	int status;

	if (kill(pid, sig) < 0)
		return -1;
	while (mono_ms() < deadline) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status)
						 : 128 + WTERMSIG(status);
		harness_sleep_ms(5);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

void harness_stop_daemon(struct harness *h)
{
	assert_true(h->daemon > 0);
	assert_int_equal(harness_stop(h->daemon, SIGTERM, 5000), 0);
	h->daemon = -1;
}

void harness_kill_daemon(struct harness *h)
{
	assert_true(h->daemon > 0);
	assert_int_equal(harness_stop(h->daemon, SIGKILL, 5000), 128 + SIGKILL);
	h->daemon = -1;
}

uint64_t harness_stat(const char *dir, const char *name)
{
	struct tally *t;
	json_t *root, *v;
	char *json;
	uint64_t value;

	assert_int_equal(tally_open(&t, dir), 0);
	assert_int_equal(tally_stats_json(t, 2000, &json), 0);
	tally_close(t);
	root = json_loads(json, JSON_REJECT_DUPLICATES, NULL);
	free(json);
	assert_non_null(root);
	v = json_object_get(root, name);
	assert_non_null(v);
	value = (uint64_t)json_integer_value(v);
	json_decref(root);
	return value;
}

void harness_counts(struct tally *t, const char *session, const char *llm,
		    uint64_t *input, uint64_t *output)
{
	json_t *root, *entry;
	json_error_t err;
	char *json;

	assert_int_equal(tally_session_json(t, session, &json), 0);
	root = json_loads(json, JSON_REJECT_DUPLICATES, &err);
	if (root == NULL)
		fail_msg("snapshot is not JSON (%s): %s", err.text, json);
	free(json);
	entry = json_object_get(root, llm);
	*input = *output = 0;
	if (entry != NULL) {
		json_t *u = json_object_get(entry, "usage");

		*input = (uint64_t)json_integer_value(
			json_object_get(u, "inputTokens"));
		*output = (uint64_t)json_integer_value(
			json_object_get(u, "outputTokens"));
	}
	json_decref(root);
}

int harness_fork(int n, int (*fn)(int i, void *arg), void *arg, int timeout_ms)
{
	pid_t *pids = calloc((size_t)n, sizeof(*pids));
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	int failed = 0, left = n, status;

	assert_non_null(pids);
	for (int i = 0; i < n; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] == 0)
			_exit(fn(i, arg));
	}
	while (left > 0 && mono_ms() < deadline) {
		for (int i = 0; i < n; i++) {
			if (pids[i] <= 0 ||
			    waitpid(pids[i], &status, WNOHANG) != pids[i])
				continue;
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
				failed++;
			pids[i] = 0;
			left--;
		}
		harness_sleep_ms(2);
	}
	for (int i = 0; i < n; i++) {
		if (pids[i] > 0) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], &status, 0);
			failed++;
		}
	}
	free(pids);
	return failed;
}

struct tally_usage harness_usage(const char *session, const char *llm,
				 uint64_t input, uint64_t output)
{
	struct tally_usage u = {
		.session_id = session,
		.llm_reference_id = llm,
		.llm_display_name = "openAI - gpt-4o - 1735891179896",
		.provider_type = "openAI",
		.model_type = "gpt-4o",
		.input_tokens = input,
		.output_tokens = output,
	};

	return u;
}

char *harness_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	if (buf != NULL) {
		buf[n] = '\0';
		if (len != NULL)
			*len = (size_t)n;
	}
	return buf;
}

char *harness_fixture(const char *rel, size_t *len)
{
	const char *dir = getenv("TALLY_FIXTURES");
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", dir != NULL ? dir : "fixtures",
		 rel);
	return harness_read_file(path, len);
}
