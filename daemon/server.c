#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <nanomsg/nn.h>

#include "tallyd.h"

/* Messages taken per pass before the loop looks at everything else. */
#define DRAIN_BATCH 4096
/* Dead readers pin pages; look for them this often. */
#define READER_CHECK_MS 1000
/* How often the metrics file is written. */
#define METRICS_MS 5000
/* How often idle sessions and gone producers are looked for. */
#define RETENTION_MS 10000
/* How long a stopping daemon waits for its last commit. */
#define STOP_COMMIT_MS 1800
/*
 * Of that, how long it keeps taking what clients still send: under load
 * the socket never empties, and whatever it leaves is resent by its
 * clients to the next daemon, so the commit gets the rest of the time.
 */
#define STOP_DRAIN_MS 250

enum { FD_SIGNAL, FD_INGEST, FD_CONTROL, FD_COMMIT, FD_CLUSTER, NFDS };

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int socket_fd(int s)
{
	int fd = -1;
	size_t len = sizeof(fd);

	if (nn_getsockopt(s, NN_SOL_SOCKET, NN_RCVFD, &fd, &len) < 0)
		return -nn_errno();
	return fd;
}

/*
 * SIGHUP: tallyd has no configuration file and logs to stderr, which the
 * service manager owns; what it can redo is say how it is set up and
 * write the metrics file anew (after logrotate-like moves of it).
 */
static void reload(struct tallyd *d)
{
	log_notice(
		"main",
		"SIGHUP: serving %s, session ttl %llu ms, producer ttl %llu ms, metrics file %s",
		d->paths.dir, (unsigned long long)d->cfg.session_ttl_ms,
		(unsigned long long)d->cfg.producer_ttl_ms,
		d->cfg.metrics_file ? d->cfg.metrics_file : "(none)");
	metrics_write(d);
}

static void handle_signal(struct tallyd *d)
{
	struct signalfd_siginfo si;

	while (read(d->signal_fd, &si, sizeof(si)) == sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGTERM:
		case SIGINT:
			log_notice("main", "signal %d: committing and stopping",
				   (int)si.ssi_signo);
			runtime_notify("STOPPING=1");
			d->stopping = true;
			break;
		case SIGHUP:
			reload(d);
			break;
		}
	}
}

/*
 * LMDB tells which snapshot each reader holds, not since when; the daemon
 * notes when a snapshot became the oldest one held, on its timer.
 */
static void track_readers(struct tallyd *d, uint64_t now)
{
	struct ledger_info li;

	if (ledger_info(&d->ledger, &li) < 0)
		return;
	if (li.oldest_reader_txnid != d->oldest_reader_txnid) {
		d->oldest_reader_txnid = li.oldest_reader_txnid;
		d->oldest_reader_since_ms = now;
	}
}

uint64_t oldest_reader_age_ms(struct tallyd *d)
{
	if (d->oldest_reader_txnid == 0)
		return 0;
	return now_ms() - d->oldest_reader_since_ms;
}

static void periodic(struct tallyd *d, uint64_t *next_check)
{
	uint64_t now = now_ms();
	int dead;

	control_answer_waiters(d, false);
	if (now < *next_check)
		return;
	*next_check = now + READER_CHECK_MS;
	if (d->cfg.metrics_file != NULL && now >= d->next_metrics_ms) {
		d->next_metrics_ms = now + METRICS_MS;
		metrics_write(d);
	}
	if (now >= d->next_retention_ms) {
		d->next_retention_ms = now + RETENTION_MS;
		retention_tick(d);
	}
	dead = ledger_reader_check(&d->ledger);
	track_readers(d, now);
	if (dead > 0) {
		STAT_ADD(d, dead_readers, (uint64_t)dead);
		log_info("ledger", "cleared %d reader slots of dead processes",
			 dead);
	}
}

static int poll_timeout(struct tallyd *d, uint64_t next_check)
{
	uint64_t now = now_ms();
	int t = next_check > now ? (int)(next_check - now) : 0;
	int w = control_next_deadline(d, now);

	return w >= 0 && w < t ? w : t;
}

static void loop_once(struct tallyd *d, struct pollfd *fds,
		      uint64_t *next_check)
{
	bool full = d->fill->usages >= d->cfg.max_pending;

	/* A full aggregate pauses receiving: the sockets' buffers and then
	 * the clients' queues hold the rest until the commit is done. */
	fds[FD_INGEST].events = full ? 0 : POLLIN;
	fds[FD_CLUSTER].events = full ? 0 : POLLIN;
	if (poll(fds, NFDS, poll_timeout(d, *next_check)) < 0 &&
	    errno != EINTR) {
		log_err("main", "poll: %s", strerror(errno));
		return;
	}
	if (fds[FD_SIGNAL].revents & POLLIN)
		handle_signal(d);
	if (fds[FD_COMMIT].revents & POLLIN && committer_reap(d))
		control_answer_waiters(d, false);
	if (fds[FD_INGEST].revents & POLLIN)
		ingest_drain(d, DRAIN_BATCH);
	if (fds[FD_CONTROL].revents & POLLIN)
		control_drain(d, DRAIN_BATCH);
	if (fds[FD_CLUSTER].revents & POLLIN)
		cluster_drain(d, DRAIN_BATCH);
	committer_kick(d);
	periodic(d, next_check);
}

/* Waits for the aggregate in the committer's hands, within a deadline. */
static bool wait_commit(struct tallyd *d, uint64_t deadline)
{
	struct pollfd pfd = {d->committer.event_fd, POLLIN, 0};

	while (!committer_idle(d)) {
		uint64_t now = now_ms();

		if (now >= deadline)
			return false;
		poll(&pfd, 1, (int)(deadline - now));
		committer_reap(d);
	}
	return true;
}

/*
 * Stopping: take what the socket already holds, commit it and what is in
 * hand, and answer the waiting sync requests with what was committed.
 */
static int shutdown_commit(struct tallyd *d)
{
	uint64_t deadline = now_ms() + STOP_COMMIT_MS;
	uint64_t drain_deadline = now_ms() + STOP_DRAIN_MS;
	int rc = 0;

	while (now_ms() < drain_deadline && ingest_drain(d, DRAIN_BATCH) > 0)
		if (d->fill->usages >= d->cfg.max_pending &&
		    wait_commit(d, deadline))
			committer_kick(d);
	if (!wait_commit(d, deadline))
		rc = -ETIMEDOUT;
	committer_kick(d);
	if (!wait_commit(d, deadline))
		rc = -ETIMEDOUT;
	if (rc < 0)
		log_err("main", "last commit did not finish in time; clients "
				"will resend what it held");
	control_answer_waiters(d, true);
	return rc;
}

int server_run(struct tallyd *d)
{
	struct pollfd fds[NFDS];
	uint64_t next_check = now_ms() + READER_CHECK_MS;
	int in = socket_fd(d->ingest), ctl = socket_fd(d->control);

	if (in < 0 || ctl < 0)
		return in < 0 ? in : ctl;
	memset(fds, 0, sizeof(fds));
	fds[FD_SIGNAL] = (struct pollfd){d->signal_fd, POLLIN, 0};
	fds[FD_INGEST] = (struct pollfd){in, POLLIN, 0};
	fds[FD_CONTROL] = (struct pollfd){ctl, POLLIN, 0};
	fds[FD_COMMIT] = (struct pollfd){d->committer.event_fd, POLLIN, 0};
	/* A negative fd is left out by poll(): no cluster, nothing to wait on. */
	fds[FD_CLUSTER] = (struct pollfd){cluster_event_fd(d), POLLIN, 0};
	while (!d->stopping)
		loop_once(d, fds, &next_check);
	return shutdown_commit(d);
}
