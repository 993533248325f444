/*
 * bench_steady.c - tally-bench --steady: tallyd's memory under a long,
 * even load.
 *
 * Starts a durable tallyd in a new temporary directory and N producer
 * processes that record, between them, R usages a second, paced, over K
 * sessions x L LLMs, for the given time. Every interval it reads tallyd's
 * memory from /proc: VmRSS split into RssAnon (its heap and stacks) and
 * RssFile (the pages of the ledger's map it touched), and the peak. The
 * set of sessions is fixed, so once every (session, LLM) pair exists the
 * ledger stops growing and a daemon that does not leak stays flat. At the
 * end every producer syncs, and the usages the daemon applied must equal
 * the usages tally_record() accepted.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench_steady.h"
#include "bench_util.h"
#include "tally.h"

#define MAX_PRODUCERS 64
/* How long a producer may take to sync and exit once the load ends. */
#define DRAIN_MS 60000

struct steady {
	unsigned seconds;
	unsigned interval;
	unsigned producers;
	unsigned rate;
	unsigned sessions;
	unsigned llms;
	char tallyd[PATH_MAX];
	char dir[PATH_MAX];
	pid_t daemon;
	pid_t pids[MAX_PRODUCERS];
	/* Shared with the producers: what each accepted, and its sync. */
	_Atomic uint64_t *accepted;
};

struct mem {
	unsigned at;
	long rss, anon, file, hwm;
};

enum { MARK_SECOND, MARK_HALF, MARK_LAST, MARKS };

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_until(int64_t due)
{
	int64_t d = due - now_ns();
	struct timespec ts;

	if (d <= 0)
		return;
	ts.tv_sec = (time_t)(d / 1000000000);
	ts.tv_nsec = (long)(d % 1000000000);
	nanosleep(&ts, NULL);
}

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15u;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
	return x ^ (x >> 31);
}

/* Reads the sizes of /proc/<pid>/status this mode reports, in KiB. */
static int read_mem(pid_t pid, struct mem *m)
{
	char path[64], line[256];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -errno;
	memset(m, 0, sizeof(*m));
	while (fgets(line, sizeof(line), f) != NULL) {
		sscanf(line, "VmRSS: %ld", &m->rss);
		sscanf(line, "RssAnon: %ld", &m->anon);
		sscanf(line, "RssFile: %ld", &m->file);
		sscanf(line, "VmHWM: %ld", &m->hwm);
	}
	fclose(f);
	return 0;
}

/* One counter of tallyd's stats, or -1 when it does not answer. */
static long long stat_value(struct tally *t, const char *name)
{
	long long v = -1;
	char *json;
	json_t *root;

	if (tally_stats_json(t, 2000, &json) < 0)
		return -1;
	root = json_loads(json, 0, NULL);
	free(json);
	if (json_is_integer(json_object_get(root, name)))
		v = json_integer_value(json_object_get(root, name));
	json_decref(root);
	return v;
}

static int wait_ready(const char *dir)
{
	struct tally *t;
	int rc = -ETIMEDOUT;

	if (tally_open(&t, dir) < 0)
		return -EIO;
	for (int i = 0; i < 500 && rc < 0; i++) {
		if (stat_value(t, "uptime_ms") >= 0)
			rc = 0;
		else
			usleep(10000);
	}
	tally_close(t);
	return rc;
}

static int daemon_start(struct steady *s)
{
	pid_t pid = bench_spawn_tallyd(s->tallyd, s->dir);

	/* Never a negative pid in s->daemon: kill() would take it as a
	 * process group. */
	if (pid < 0)
		return (int)pid;
	s->daemon = pid;
	return wait_ready(s->dir);
}

/* Stops what this mode started, by its pid; SIGKILL after 10 s. */
static void stop_pid(pid_t pid, int sig)
{
	int64_t limit = now_ns() + 10 * (int64_t)1000000000;

	if (pid <= 0)
		return;
	kill(pid, sig);
	while (waitpid(pid, NULL, WNOHANG) == 0) {
		if (now_ns() > limit) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			return;
		}
		usleep(2000);
	}
}

/* A producer: paced records until the end of the load, then a sync. */
static int producer(struct steady *s, unsigned p, int64_t start, int64_t end)
{
	struct tally_options o = {.dir = s->dir, .record_timeout_ms = 1000};
	int64_t step = 1000000000 / (s->rate / s->producers);
	char session[48], llm[24];
	struct tally *t;
	int rc;

	if (tally_open_ex(&t, &o) < 0)
		return 1;
	for (uint64_t i = 0; !interrupted; i++) {
		uint64_t h = mix64((uint64_t)p << 40 ^ i);
		struct tally_usage u = {
			.session_id = session,
			.llm_reference_id = llm,
			.llm_display_name = "openAI - gpt-4o - 1735891179896",
			.provider_type = "openAI",
			.model_type = "gpt-4o",
			.input_tokens = 1 + h % 7,
			.output_tokens = 2 + (h >> 8) % 5,
		};
		int64_t due = start + (int64_t)i * step;

		if (due >= end)
			break;
		sleep_until(due);
		snprintf(session, sizeof(session), "steady-s%" PRIu64,
			 (h >> 16) % s->sessions);
		snprintf(llm, sizeof(llm), "llm-%" PRIu64, (h >> 48) % s->llms);
		if (tally_record(t, &u) == 0)
			atomic_fetch_add(&s->accepted[p], 1);
	}
	rc = tally_sync(t, DRAIN_MS);
	tally_close(t);
	return rc == 0 ? 0 : 2;
}

static void print_sample(unsigned at, const struct mem *m, long long ledger,
			 long long applied)
{
	printf("%7u %10ld %10ld %10ld %10ld %12lld %12lld\n", at, m->rss,
	       m->anon, m->file, m->hwm, ledger, applied);
	fflush(stdout);
}

/*
 * Samples tallyd every interval until the load ends. Keeps the second
 * sample (the first under load), the first one past half time and the
 * last: a warm-up can outlast the first interval, the second half not.
 */
static int sample_loop(struct steady *s, int64_t start, struct mem *marks)
{
	struct tally *t;
	struct mem m;
	unsigned n = 0;
	bool half = false;

	if (tally_open(&t, s->dir) < 0)
		return -EIO;
	printf("%7s %10s %10s %10s %10s %12s %12s\n", "s", "VmRSS", "RssAnon",
	       "RssFile", "VmHWM", "ledger", "usages");
	printf("%7s %10s %10s %10s %10s %12s %12s\n", "", "KiB", "KiB", "KiB",
	       "KiB", "bytes", "applied");
	for (unsigned at = 0; at <= s->seconds && !interrupted;
	     at += s->interval) {
		sleep_until(start + (int64_t)at * 1000000000);
		if (read_mem(s->daemon, &m) < 0)
			break;
		m.at = at;
		print_sample(at, &m, stat_value(t, "ledger_bytes"),
			     stat_value(t, "usages_applied"));
		if (n++ == 1)
			marks[MARK_SECOND] = m;
		if (at >= s->seconds / 2 && !half) {
			marks[MARK_HALF] = m;
			half = true;
		}
		marks[MARK_LAST] = m;
	}
	tally_close(t);
	return n >= 3 ? 0 : -EAGAIN;
}

static int reap_producers(struct steady *s)
{
	int64_t limit = now_ns() + (int64_t)DRAIN_MS * 1000000 * 2;
	int failed = 0, status;

	for (unsigned p = 0; p < s->producers; p++) {
		while (waitpid(s->pids[p], &status, WNOHANG) == 0 &&
		       now_ns() < limit)
			usleep(10000);
		if (now_ns() >= limit) {
			stop_pid(s->pids[p], SIGKILL);
			failed++;
		} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			failed++;
		}
	}
	return failed;
}

static void print_change(const char *what, const struct mem *a,
			 const struct mem *b)
{
	printf("%s, %u s to %u s, KiB:\n", what, a->at, b->at);
	printf("  VmRSS   %ld -> %ld (%+ld, %+.1f%%)\n", a->rss, b->rss,
	       b->rss - a->rss,
	       a->rss ? 100.0 * (double)(b->rss - a->rss) / (double)a->rss
		      : 0.0);
	printf("  RssAnon %ld -> %ld (%+ld)\n", a->anon, b->anon,
	       b->anon - a->anon);
	printf("  RssFile %ld -> %ld (%+ld)\n", a->file, b->file,
	       b->file - a->file);
}

static void print_summary(const struct mem *marks)
{
	printf("\n");
	print_change("from the first sample under load to the last",
		     &marks[MARK_SECOND], &marks[MARK_LAST]);
	print_change("over the second half", &marks[MARK_HALF],
		     &marks[MARK_LAST]);
	printf("  VmHWM (peak VmRSS) %ld\n", marks[MARK_LAST].hwm);
}

/* Checks the daemon applied exactly what the producers had accepted. */
static int check_applied(const struct steady *s)
{
	uint64_t want = 0;
	long long got;
	struct tally *t;

	for (unsigned p = 0; p < s->producers; p++)
		want += atomic_load(&s->accepted[p]);
	if (tally_open(&t, s->dir) < 0)
		return -EIO;
	got = stat_value(t, "usages_applied");
	tally_close(t);
	printf("usages: accepted %" PRIu64 ", applied %lld: %s\n", want, got,
	       got >= 0 && (uint64_t)got == want ? "exact" : "MISMATCH");
	return got >= 0 && (uint64_t)got == want ? 0 : -EBADMSG;
}

static int run_load(struct steady *s)
{
	int64_t start = now_ns() + 200000000, end;
	struct mem marks[MARKS] = {{0}};
	int rc, failed;

	end = start + (int64_t)s->seconds * 1000000000;
	for (unsigned p = 0; p < s->producers; p++) {
		s->pids[p] = fork();
		if (s->pids[p] < 0)
			return -errno;
		if (s->pids[p] == 0)
			_exit(producer(s, p, start, end));
	}
	rc = sample_loop(s, start, marks);
	failed = reap_producers(s);
	if (rc == 0)
		print_summary(marks);
	if (failed > 0)
		printf("producers failed: %d of %u\n", failed, s->producers);
	if (check_applied(s) < 0 || failed > 0)
		return -EBADMSG;
	return rc;
}

static const char steady_usage[] =
	"Usage: tally-bench --steady SECONDS [--interval S] [--producers N]\n"
	"                   [--rate R] [--sessions K] [--llms L]\n"
	"                   [--tallyd PATH]\n"
	"Starts a durable tallyd in a new temporary directory and N producer\n"
	"processes (4) that record R usages a second between them (20000),\n"
	"paced, over K sessions (10000) x L LLMs (3), for SECONDS. Every S\n"
	"seconds (30) prints tallyd's VmRSS, RssAnon (heap), RssFile (the\n"
	"ledger's map), VmHWM, ledger bytes and usages applied; then the\n"
	"change from the first sample under load, and over the second half,\n"
	"to the last, and whether the daemon applied exactly the usages\n"
	"tally_record accepted. Exit status: 0 exact; 1 a failure or a\n"
	"mismatch; 2 usage error.\n";

/* One option; -EINVAL for --help or one this mode does not know. */
static int take_option(struct steady *s, int c, const char *arg)
{
	unsigned v = arg ? (unsigned)strtoul(arg, NULL, 10) : 0;

	switch (c) {
	case 'S':
		s->seconds = v;
		break;
	case 'i':
		s->interval = v;
		break;
	case 'p':
		s->producers = v;
		break;
	case 'r':
		s->rate = v;
		break;
	case 'k':
		s->sessions = v;
		break;
	case 'l':
		s->llms = v;
		break;
	case 't':
		snprintf(s->tallyd, sizeof(s->tallyd), "%s", arg);
		break;
	default:
		return -EINVAL;
	}
	return 0;
}

static int parse_steady(struct steady *s, int argc, char **argv)
{
	static const struct option opts[] = {
		{"steady", required_argument, NULL, 'S'},
		{"interval", required_argument, NULL, 'i'},
		{"producers", required_argument, NULL, 'p'},
		{"rate", required_argument, NULL, 'r'},
		{"sessions", required_argument, NULL, 'k'},
		{"llms", required_argument, NULL, 'l'},
		{"tallyd", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (take_option(s, c, optarg) < 0) {
			fputs(steady_usage, c == 'h' ? stdout : stderr);
			return c == 'h' ? 0 : 2;
		}
	}
	if (s->seconds == 0 || s->interval == 0 || s->producers == 0 ||
	    s->producers > MAX_PRODUCERS || s->rate < s->producers ||
	    s->rate > 10000000 || s->sessions == 0 || s->llms == 0 ||
	    s->llms > 1000 || optind != argc) {
		fputs(steady_usage, stderr);
		return 2;
	}
	return -1;
}

static int prepare(struct steady *s)
{
	struct sigaction sa = {.sa_handler = on_signal};

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (bench_find_tallyd(s->tallyd[0] ? s->tallyd : NULL, s->tallyd,
			      sizeof(s->tallyd)) < 0) {
		fputs("tally-bench: cannot find tallyd; pass --tallyd\n",
		      stderr);
		return -ENOENT;
	}
	s->accepted =
		mmap(NULL, MAX_PRODUCERS * sizeof(*s->accepted),
		     PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s->accepted == MAP_FAILED)
		return -ENOMEM;
	snprintf(s->dir, sizeof(s->dir), "%s/tally-steady.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(s->dir) == NULL)
		return -errno;
	return daemon_start(s);
}

static void remove_dir(const char *dir)
{
	const char *names[] = {"ledger.mdb", "ledger.mdb-lock", "tallyd.lock",
			       "tallyd.log", "ingest.ipc",	"control.ipc",
			       "tallyd.pid"};
	char path[PATH_MAX + 32];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

int bench_steady(int argc, char **argv)
{
	struct steady s = {.interval = 30,
			   .producers = 4,
			   .rate = 20000,
			   .sessions = 10000,
			   .llms = 3,
			   .daemon = -1};
	int rc;

	rc = parse_steady(&s, argc, argv);
	if (rc >= 0)
		return rc;
	bench_print_command(argc, argv);
	printf("load: %u producers, %u usages/s between them, %u sessions x "
	       "%u LLMs, %u s; tallyd %s, durable\n",
	       s.producers, s.rate, s.sessions, s.llms, s.seconds, s.tallyd);
	rc = prepare(&s);
	if (rc == 0)
		rc = run_load(&s);
	else
		fprintf(stderr, "tally-bench: steady: %s\n",
			tally_strerror(rc));
	stop_pid(s.daemon, SIGTERM);
	if (s.dir[0] != '\0')
		remove_dir(s.dir);
	if (s.accepted != NULL && s.accepted != MAP_FAILED)
		munmap(s.accepted, MAX_PRODUCERS * sizeof(*s.accepted));
	return rc == 0 ? 0 : 1;
}
