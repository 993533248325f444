/*
 * bench_soak.c - tally-bench --soak: exactly-once through daemon deaths.
 *
 * Each round starts a tallyd on a new directory, forks workers that record
 * usages (input 1, output 1) spread over the whole round, and meanwhile
 * kills the daemon (SIGKILL) or stops it (SIGTERM) several times and
 * starts it again. Once every worker's tally_sync() has succeeded, the
 * ledger must hold exactly what the workers' tally_record() calls accepted:
 * anything less was lost, anything more was counted twice.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench_soak.h"
#include "bench_util.h"
#include "tally.h"

struct soak {
	unsigned rounds;
	unsigned kills;
	unsigned workers;
	unsigned records;
	int signal;
	char tallyd[PATH_MAX];
	char dir[PATH_MAX];
	pid_t daemon;
	/* Per worker: usages accepted, and whether its sync succeeded. */
	uint64_t *accepted;
	/* Over all rounds. */
	uint64_t lost;
	uint64_t duplicated;
	unsigned slow_stops;
	unsigned failed_rounds;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int find_tallyd(struct soak *s)
{
	char given[PATH_MAX];

	snprintf(given, sizeof(given), "%s", s->tallyd);
	return bench_find_tallyd(given[0] ? given : NULL, s->tallyd,
				 sizeof(s->tallyd));
}

static int wait_ready(const char *dir, unsigned timeout_ms)
{
	uint64_t deadline = mono_ms() + timeout_ms;
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
		sleep_ms(10);
	}
	tally_close(t);
	return rc;
}

static int daemon_start(struct soak *s)
{
	pid_t pid = bench_spawn_tallyd(s->tallyd, s->dir);

	/* Never a negative pid in s->daemon: kill() would take it as a
	 * process group. */
	if (pid < 0)
		return (int)pid;
	s->daemon = pid;
	return wait_ready(s->dir, 5000);
}

/* Signals the daemon and reaps it; returns how long it took to exit. */
static uint64_t daemon_stop(struct soak *s, int sig, int *status)
{
	uint64_t start = mono_ms();

	kill(s->daemon, sig);
	while (waitpid(s->daemon, status, WNOHANG) == 0) {
		if (mono_ms() - start > 10000) {
			kill(s->daemon, SIGKILL);
			waitpid(s->daemon, status, 0);
			break;
		}
		sleep_ms(2);
	}
	s->daemon = -1;
	return mono_ms() - start;
}

/* A worker: its usages spread over the round, then a sync. */
static int worker(struct soak *s, unsigned w, unsigned round, unsigned span_ms)
{
	struct tally_options o = {.dir = s->dir, .record_timeout_ms = 1000};
	uint64_t start = mono_ms(), accepted = 0;
	char session[64];
	struct tally *t;
	int rc;

	snprintf(session, sizeof(session), "soak-%u", round);
	if (tally_open_ex(&t, &o) < 0)
		return 1;
	for (unsigned i = 0; i < s->records; i++) {
		struct tally_usage u = {
			.session_id = session,
			.llm_reference_id = w % 2 ? "llm-b" : "llm-a",
			.input_tokens = 1,
			.output_tokens = 1,
		};
		uint64_t due = start + (uint64_t)i * span_ms / s->records;

		while (mono_ms() < due)
			sleep_ms(1);
		if (tally_record(t, &u) == 0)
			accepted++;
	}
	rc = tally_sync(t, 60000);
	tally_close(t);
	s->accepted[w] = accepted;
	return rc == 0 ? 0 : 2;
}

/*
 * The round's session total. Every usage is 1 in and 1 out, so the two
 * sums must agree; when they do not, the ledger is wrong either way.
 */
static uint64_t ledger_total(const char *dir, unsigned round)
{
	uint64_t in = 0, out = 0;
	char session[64], *json;
	struct tally *t;
	json_t *root, *v;
	const char *k;

	snprintf(session, sizeof(session), "soak-%u", round);
	if (tally_open(&t, dir) < 0)
		return 0;
	if (tally_session_json(t, session, &json) < 0) {
		tally_close(t);
		return 0;
	}
	tally_close(t);
	root = json_loads(json, 0, NULL);
	free(json);
	json_object_foreach(root, k, v)
	{
		json_t *u = json_object_get(v, "usage");

		in += (uint64_t)json_integer_value(
			json_object_get(u, "inputTokens"));
		out += (uint64_t)json_integer_value(
			json_object_get(u, "outputTokens"));
	}
	json_decref(root);
	return in == out ? in : UINT64_MAX;
}

/* The daemon's deaths during one round; false if a restart failed. */
static bool disrupt(struct soak *s)
{
	int status;

	for (unsigned k = 0; k < s->kills; k++) {
		sleep_ms(1000);
		if (daemon_stop(s, s->signal, &status) > 2000 ||
		    (s->signal == SIGTERM &&
		     !(WIFEXITED(status) && WEXITSTATUS(status) == 0)))
			s->slow_stops++;
		if (s->signal == SIGKILL)
			sleep_ms(1000);
		if (daemon_start(s) < 0)
			return false;
	}
	return true;
}

static int reap_workers(struct soak *s, pid_t *pids)
{
	int failed = 0, status;

	for (unsigned w = 0; w < s->workers; w++) {
		if (waitpid(pids[w], &status, 0) != pids[w] ||
		    !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	return failed;
}

static void account(struct soak *s, unsigned round, int failed)
{
	uint64_t want = 0, got = ledger_total(s->dir, round);

	for (unsigned w = 0; w < s->workers; w++)
		want += s->accepted[w];
	if (got < want)
		s->lost += want - got;
	if (got > want)
		s->duplicated += got - want;
	if (failed > 0 || got != want)
		s->failed_rounds++;
	printf("round %u: accepted %llu, in ledger %llu, workers failed %d\n",
	       round, (unsigned long long)want, (unsigned long long)got,
	       failed);
	fflush(stdout);
}

static int round_run(struct soak *s, unsigned round, pid_t *pids)
{
	unsigned span = s->kills * (s->signal == SIGKILL ? 2000 : 1000) + 500;
	int status, failed;

	snprintf(s->dir, sizeof(s->dir), "%s/tally-soak.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(s->dir) == NULL || daemon_start(s) < 0)
		return -1;
	memset(s->accepted, 0, s->workers * sizeof(*s->accepted));
	for (unsigned w = 0; w < s->workers; w++) {
		pids[w] = fork();
		if (pids[w] == 0)
			_exit(worker(s, w, round, span));
	}
	if (!disrupt(s))
		fprintf(stderr, "tally-bench: round %u: restart failed\n",
			round);
	failed = reap_workers(s, pids);
	account(s, round, failed);
	daemon_stop(s, SIGTERM, &status);
	return 0;
}

static void remove_dir(const char *dir)
{
	const char *names[] = {"ledger.mdb", "ledger.mdb-lock", "tallyd.lock",
			       "tallyd.log", "ingest.ipc",	"control.ipc"};
	char path[PATH_MAX + 32];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static const char soak_usage[] =
	"Usage: tally-bench --soak ROUNDS [--signal KILL|TERM] [--kills N]\n"
	"                   [--workers N] [--records M] [--tallyd PATH]\n"
	"Each round: a new tallyd, N workers (8) recording M usages (5000)\n"
	"spread over the round, the daemon killed (or stopped) --kills times\n"
	"(5), then every total checked against what tally_record accepted.\n";

static int parse_soak(struct soak *s, int argc, char **argv)
{
	static const struct option opts[] = {
		{"soak", required_argument, NULL, 'S'},
		{"signal", required_argument, NULL, 's'},
		{"kills", required_argument, NULL, 'k'},
		{"workers", required_argument, NULL, 'w'},
		{"records", required_argument, NULL, 'r'},
		{"tallyd", required_argument, NULL, 't'},
		{NULL, 0, NULL, 0},
	};
	int c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'S':
			s->rounds = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 's':
			s->signal = strcmp(optarg, "TERM") == 0	  ? SIGTERM
				    : strcmp(optarg, "KILL") == 0 ? SIGKILL
								  : 0;
			break;
		case 'k':
			s->kills = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'w':
			s->workers = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'r':
			s->records = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 't':
			snprintf(s->tallyd, sizeof(s->tallyd), "%s", optarg);
			break;
		default:
			fputs(soak_usage, stderr);
			return 2;
		}
	}
	if (s->rounds == 0 || s->signal == 0 || s->workers == 0 ||
	    s->workers > 256 || s->records == 0 || s->kills > 100) {
		fputs(soak_usage, stderr);
		return 2;
	}
	return -1;
}

int bench_soak(int argc, char **argv)
{
	struct soak s = {.kills = 5,
			 .workers = 8,
			 .records = 5000,
			 .signal = SIGKILL,
			 .daemon = -1};
	pid_t *pids;
	int rc;

	rc = parse_soak(&s, argc, argv);
	if (rc >= 0)
		return rc;
	if (find_tallyd(&s) < 0) {
		fputs("tally-bench: cannot find tallyd; pass --tallyd\n",
		      stderr);
		return 1;
	}
	s.accepted =
		mmap(NULL, s.workers * sizeof(*s.accepted),
		     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pids = calloc(s.workers, sizeof(*pids));
	if (s.accepted == MAP_FAILED || pids == NULL)
		return 1;
	for (unsigned r = 0; r < s.rounds; r++) {
		if (round_run(&s, r, pids) < 0) {
			fprintf(stderr, "tally-bench: round %u: no daemon\n",
				r);
			s.failed_rounds++;
		}
		remove_dir(s.dir);
	}
	printf("soak: %u rounds, %u x SIG%s each, %u workers x %u usages: "
	       "lost %llu, duplicated %llu, failed rounds %u, stops over 2 s "
	       "or unclean %u\n",
	       s.rounds, s.kills, s.signal == SIGKILL ? "KILL" : "TERM",
	       s.workers, s.records, (unsigned long long)s.lost,
	       (unsigned long long)s.duplicated, s.failed_rounds, s.slow_stops);
	munmap(s.accepted, s.workers * sizeof(*s.accepted));
	free(pids);
	return s.lost || s.duplicated || s.failed_rounds || s.slow_stops;
}
