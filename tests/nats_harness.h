/*
 * nats_harness.h - Debian's nats-server, started and stopped by the tests.
 *
 * Every server listens on 127.0.0.1 only, on ports the caller chose (see
 * nats_free_port), with JetStream storing under a directory the caller
 * made with mkdtemp. No monitoring port, no other listener. The binary is
 * $NATS_SERVER (set by meson), else /usr/bin/nats-server.
 */
#ifndef TALLY_NATS_HARNESS_H
#define TALLY_NATS_HARNESS_H

#include <sys/types.h>

/*
 * A TCP port on 127.0.0.1 that nobody listened on a moment ago, or -1.
 * The last 64 ports handed out by this process are not handed out again,
 * so a cluster's ports differ even before their servers bind them.
 */
int nats_free_port(void);

/*
 * Starts a JetStream server named name on 127.0.0.1:port, storing under
 * dir (its log: dir/nats.log). With cluster_port > 0 it also listens for
 * routes on 127.0.0.1:cluster_port in cluster "tally", and routes, when
 * not NULL, is its comma-separated list of nats-route://127.0.0.1:P URLs.
 * Waits at most 5 s for the client port to accept. Returns the server's
 * pid, or -1 (nothing left running) when it did not start.
 */
pid_t nats_start(const char *dir, int port, int cluster_port,
		 const char *routes, const char *name);

/*
 * Sends SIGTERM to pid and waits at most 5 s for it to exit (then
 * SIGKILL). Returns 0 when it exited by itself (nats-server's status after
 * a SIGTERM is 1), -1 when it had to be killed. pid <= 0 is ignored and
 * returns 0, so teardown can call it unconditionally.
 */
int nats_stop(pid_t pid);

/* 0 once 127.0.0.1:port accepts a connection, -ETIMEDOUT after timeout_ms. */
int nats_wait_port(int port, int timeout_ms);

/*
 * Sends payload (may be "") to subject on the server at 127.0.0.1:port as
 * a plain NATS request and copies the first reply's payload, NUL-ended,
 * into reply. For JetStream API requests the tests make themselves, such
 * as "$JS.API.CONSUMER.DELETE.<stream>.<durable>". Returns 0, -ETIMEDOUT
 * when no reply came within timeout_ms, or another negative errno.
 */
int nats_request(int port, const char *subject, const char *payload,
		 char *reply, size_t size, int timeout_ms);

#endif
