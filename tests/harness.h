/*
 * harness.h - real daemons and real processes for the tests.
 *
 * Every test runs on a fresh mkdtemp directory with its own tallyd, found
 * through $TALLYD (set by meson). Processes are stopped by their pid, and
 * every wait is bounded.
 */
#ifndef TALLY_HARNESS_H
#define TALLY_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>

#include "tally.h"

struct harness {
	char dir[128];
	pid_t daemon;
};

/* A fresh directory under $TMPDIR (or /tmp); fails the test if it can't. */
void harness_init(struct harness *h);
/* Stops the daemon if it runs and removes the directory. */
void harness_fini(struct harness *h);

/*
 * cmocka setup and teardown: *state becomes a struct harness, and the
 * teardown stops its daemon and removes its directory even when the test
 * failed half-way.
 */
int harness_setup(void **state);
int harness_teardown(void **state);
#define harness_test(f) \
	cmocka_unit_test_setup_teardown(f, harness_setup, harness_teardown)

/*
 * Starts tallyd on h->dir with the extra arguments (NULL-terminated) and
 * waits, at most 5 s, until it answers. Returns its pid.
 */
pid_t harness_start(struct harness *h, ...);
/* Starts tallyd and returns at once; for tests of failing starts. */
pid_t harness_spawn(const char *dir, const char *const *extra,
		    const char *stderr_path);
/* Waits for the daemon to answer on dir; 0 or -ETIMEDOUT. */
int harness_wait_ready(const char *dir, int timeout_ms);
/*
 * Sends sig to pid and waits up to timeout_ms for it to exit. Returns its
 * exit status, 128 + signal when killed, or -1 when it did not exit (it is
 * then killed with SIGKILL and reaped).
 */
int harness_stop(pid_t pid, int sig, int timeout_ms);
/* SIGTERM to h's daemon, asserting a clean exit (status 0). */
void harness_stop_daemon(struct harness *h);
/* SIGKILL to h's daemon. */
void harness_kill_daemon(struct harness *h);

/* Reads the named counter of 'tallyctl stats'; asserts it is there. */
uint64_t harness_stat(const char *dir, const char *name);

/*
 * The session's counts for one LLM, read through a new handle; 0 and 0
 * when the LLM is absent. The snapshot must parse as strict JSON.
 */
void harness_counts(struct tally *t, const char *session, const char *llm,
		    uint64_t *input, uint64_t *output);

/*
 * Forks n children that each run fn(i, arg) and exit with its result;
 * waits at most timeout_ms for all (killing the late ones) and returns
 * how many failed.
 */
int harness_fork(int n, int (*fn)(int i, void *arg), void *arg, int timeout_ms);

/* A usage with the given ids and counts, and fixed names. */
struct tally_usage harness_usage(const char *session, const char *llm,
				 uint64_t input, uint64_t output);

/* Reads a whole file into a NUL-terminated buffer the caller frees. */
char *harness_read_file(const char *path, size_t *len);
/* $TALLY_FIXTURES/rel, read whole. */
char *harness_fixture(const char *rel, size_t *len);

void harness_sleep_ms(int ms);

#endif
