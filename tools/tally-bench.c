/*
 * tally-bench - load tallyd from many worker processes, time the client
 * calls, and check that every usage was counted exactly once.
 *
 * The parent starts tallyd on a temporary directory (unless --dir names a
 * running one), forks the workers, waits for them within a deadline, and
 * then reads every session the run touched and compares it with totals it
 * computed itself from the same deterministic scheme the workers used.
 * Sessions carry a random run prefix, so the totals are exact even on a
 * ledger that already holds other data.
 *
 * Workers hand their latency samples back through a shared anonymous
 * mapping made before the fork: no pipe to drain while they run.
 *
 * Two other modes time and check the estimation from text: --estimate
 * runs tally's encoder and gpt-tokenizer (in Node.js) on the same file,
 * and --estimate-error measures the per-family ratios on a corpus.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench_cluster.h"
#include "bench_compare.h"
#include "bench_soak.h"
#include "bench_steady.h"
#include "bench_util.h"
#include "tally.h"

enum {
	RC_OK = 0,
	RC_FAIL = 1,
	RC_USAGE = 2,
	RC_GO_ON = -1,
};

/* Rounds of the latency phases each worker runs after its load. */
#define SYNC_ROUNDS 200
#define SNAP_ROUNDS 1000
/* Each worker keeps at most this many tally_record samples (strided). */
#define RECORD_SAMPLES_MAX (1u << 20)
/* A worker still running after this long is killed. */
#define WORKER_DEADLINE_S 300
#define READY_DEADLINE_MS 5000
#define DAEMON_STOP_MS 10000
/* Mismatches printed in full; the rest are only counted. */
#define MISMATCH_PRINT_MAX 20
/* Session and LLM pairs checked; the expected totals take 16 bytes each. */
#define PAIRS_MAX 50000000
#define NSEC 1000000000LL
/* Each encoder is timed for this long, in passes over the whole text. */
#define EST_BUDGET_NS NSEC
#define EST_PASSES_MAX 10000
#define EST_FILE_MAX (256u << 20)
/* Node.js, loading gpt-tokenizer and timing it twice, gets this long. */
#define NODE_DEADLINE_MS 120000

/* The three timed calls; each has its own array of samples. */
enum kind {
	KIND_RECORD,
	KIND_SYNC,
	KIND_SNAP,
	KINDS,
};

/* What one worker reports, in the shared mapping. */
struct slot {
	/* CLOCK_MONOTONIC when its first tally_sync() returned 0. */
	int64_t sync_done_ns;
	/* Samples taken of each kind. */
	uint32_t n[KINDS];
	char error[240];
};

struct bench {
	const char *dir;
	const char *tallyd;
	uint64_t workers, records, sessions, llms, seed;
	char run[16];
	char tmp_dir[PATH_MAX];
	char tallyd_buf[PATH_MAX];
	pid_t daemon;
	/* The shared mapping: slots, then the sample arrays. */
	void *map;
	size_t map_len;
	struct slot *slots;
	/* Worker w's samples of kind k: samples[k] + w * cap[k], in ns. */
	uint64_t *samples[KINDS];
	uint64_t cap[KINDS];
	/* Every rec_stride-th tally_record call is timed. */
	uint64_t rec_stride;
	pid_t *pids;
	int64_t start_ns;
	/* expect[(s * llms + l) * 2 + 0 or 1]: input, output. */
	uint64_t *expect;
	unsigned long mismatches;
	/* --estimate FILE, --estimate-error DIR and their options. */
	const char *estimate_file;
	const char *error_dir;
	const char *model;
	const char *gpt_dir;
	char gpt_buf[PATH_MAX];
};

struct pick {
	uint64_t session, llm, input, output;
};

static volatile sig_atomic_t interrupted;

static const char usage_text[] =
	"Usage: tally-bench [--dir DIR] [--tallyd PATH] --workers N\n"
	"                   --records M --sessions K --llms L [--seed S]\n"
	"       tally-bench --estimate FILE [--model M] [--gpt-tokenizer DIR]\n"
	"       tally-bench --estimate-error DIR\n"
	"       tally-bench --compare ...   (see tally-bench --compare --help)\n"
	"       tally-bench --soak ROUNDS ...   (tally-bench --soak --help)\n"
	"       tally-bench --steady SECONDS ...   (tally-bench --steady --help)\n"
	"\n"
	"Fork N worker processes that each record M usages over K sessions\n"
	"and L LLMs, then time tally_sync and snapshots, and check that every\n"
	"session's totals are exact.\n"
	"\n"
	"  --dir DIR      use the tallyd already running on DIR; without it a\n"
	"                 temporary directory and a private tallyd are used\n"
	"  --tallyd PATH  the tallyd to start; default $TALLYD, else tallyd\n"
	"                 next to tally-bench, else ../daemon/tallyd from it\n"
	"  --workers N    worker processes (1 to 1024)\n"
	"  --records M    usages each worker records (1 to 100000000)\n"
	"  --sessions K   sessions the usages spread over (1 to 1000000)\n"
	"  --llms L       LLMs per session (1 to 1000)\n"
	"  --seed S       chooses the sequence of usages; default 1\n"
	"  -h, --help     print this help and exit\n"
	"\n"
	"A worker still running after 300 s is killed and reported.\n"
	"\n"
	"  --estimate FILE  count the tokens of FILE with tally_estimate_tokens\n"
	"                   and with gpt-tokenizer in Node.js, and print both\n"
	"                   speeds in tokens per second, and their ratio\n"
	"  --model M        the model type whose encoding is timed; default\n"
	"                   gpt-4o (o200k_base); gpt-4 times cl100k_base\n"
	"  --gpt-tokenizer DIR  the gpt-tokenizer package; default\n"
	"                   $TALLY_GPT_TOKENIZER, else .deps/node_modules/\n"
	"                   gpt-tokenizer above tally-bench or the current\n"
	"                   directory. Node.js is $NODE, else node\n"
	"  --estimate-error DIR  estimate every *.txt file of DIR with each\n"
	"                   family's ratio, and print its error against the\n"
	"                   exact o200k_base count\n"
	"\n"
	"Exit status: 0 all totals exact and no worker failed, or the\n"
	"estimates ran; 1 a failure or a mismatch; 2 usage error.\n";

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NSEC + ts.tv_nsec;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

static void on_signal(int sig)
{
	interrupted = sig;
}

/* ---- options ---- */

static int parse_count(const char *opt, const char *s, uint64_t min,
		       uint64_t max, uint64_t *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = (*s >= '0' && *s <= '9') ? strtoull(s, &end, 10) : 0;
	if (*s < '0' || *s > '9' || *end != '\0' || errno == ERANGE ||
	    v < min || v > max) {
		fprintf(stderr,
			"tally-bench: %s expects a whole number from %" PRIu64
			" to %" PRIu64 ", not '%s'\n",
			opt, min, max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int take_option(struct bench *b, int c, const char *arg)
{
	switch (c) {
	case 'd':
		b->dir = arg;
		return 0;
	case 't':
		b->tallyd = arg;
		return 0;
	case 'w':
		return parse_count("--workers", arg, 1, 1024, &b->workers);
	case 'r':
		return parse_count("--records", arg, 1, 100000000, &b->records);
	case 's':
		return parse_count("--sessions", arg, 1, 1000000, &b->sessions);
	case 'l':
		return parse_count("--llms", arg, 1, 1000, &b->llms);
	case 'S':
		return parse_count("--seed", arg, 0, UINT64_MAX, &b->seed);
	case 'E':
		b->estimate_file = arg;
		return 0;
	case 'X':
		b->error_dir = arg;
		return 0;
	case 'm':
		b->model = arg;
		return 0;
	case 'g':
		b->gpt_dir = arg;
		return 0;
	default:
		return -EINVAL;
	}
}

/* The estimation modes take none of the load's options. */
static int check_estimate_options(const struct bench *b)
{
	const char *why = NULL;

	if (b->estimate_file && b->error_dir)
		why = "--estimate and --estimate-error are separate runs";
	else if (!b->estimate_file && !b->error_dir)
		why = "--model and --gpt-tokenizer go with --estimate";
	else if (b->error_dir && (b->model || b->gpt_dir))
		why = "--estimate-error takes no --model nor --gpt-tokenizer";
	else if (b->dir || b->tallyd || b->workers || b->records ||
		 b->sessions || b->llms || b->seed != 1)
		why = "the load's options do not go with --estimate or "
		      "--estimate-error";
	if (!why)
		return 0;
	fprintf(stderr, "tally-bench: %s\n", why);
	return -EINVAL;
}

static int parse_options(struct bench *b, int argc, char **argv)
{
	static const struct option opts[] = {
		{"dir", required_argument, NULL, 'd'},
		{"tallyd", required_argument, NULL, 't'},
		{"workers", required_argument, NULL, 'w'},
		{"records", required_argument, NULL, 'r'},
		{"sessions", required_argument, NULL, 's'},
		{"llms", required_argument, NULL, 'l'},
		{"seed", required_argument, NULL, 'S'},
		{"estimate", required_argument, NULL, 'E'},
		{"estimate-error", required_argument, NULL, 'X'},
		{"model", required_argument, NULL, 'm'},
		{"gpt-tokenizer", required_argument, NULL, 'g'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;

	b->seed = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_text, stdout);
			return RC_OK;
		}
		if (c == '?' || take_option(b, c, optarg) < 0)
			goto usage;
	}
	if (optind < argc) {
		fprintf(stderr, "tally-bench: unexpected argument '%s'\n",
			argv[optind]);
		goto usage;
	}
	if (b->estimate_file || b->error_dir || b->model || b->gpt_dir) {
		if (check_estimate_options(b) < 0)
			goto usage;
		return RC_GO_ON;
	}
	if (!b->workers || !b->records || !b->sessions || !b->llms) {
		fprintf(stderr, "tally-bench: --workers, --records, "
				"--sessions and --llms are required\n");
		goto usage;
	}
	if ((b->sessions + b->workers) * b->llms > PAIRS_MAX) {
		fprintf(stderr,
			"tally-bench: (--sessions + --workers) x "
			"--llms is at most %d pairs\n",
			PAIRS_MAX);
		goto usage;
	}
	return RC_GO_ON;
usage:
	fprintf(stderr, "%.*s\nRun 'tally-bench --help' for the details.\n",
		(int)(strstr(usage_text, "\n\n") - usage_text), usage_text);
	return RC_USAGE;
}

/* ---- names and the usage scheme ---- */

static void make_run_id(struct bench *b)
{
	uint8_t r[6];
	uint64_t fallback;
	size_t i;

	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
		/* Unique enough for a prefix: no two runs share both. */
		fallback = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 40);
		memcpy(r, &fallback, sizeof(r));
	}
	for (i = 0; i < sizeof(r); i++)
		snprintf(b->run + 2 * i, 3, "%02x", r[i]);
}

/* Sessions 0..K-1 take the load; K+w is worker w's own session. */
static void session_name(const struct bench *b, uint64_t s, char *buf,
			 size_t len)
{
	if (s < b->sessions)
		snprintf(buf, len, "bench-%s-s%" PRIu64, b->run, s);
	else
		snprintf(buf, len, "bench-%s-w%" PRIu64, b->run,
			 s - b->sessions);
}

/* splitmix64: a cheap, well-mixed hash of the usage's index. */
static uint64_t mix64(uint64_t x)
{
	x += UINT64_C(0x9e3779b97f4a7c15);
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

/* Usage i of worker w of the load; the parent recomputes it. */
static struct pick pick_load(const struct bench *b, uint64_t w, uint64_t i)
{
	uint64_t h =
		mix64(b->seed * UINT64_C(0x100000001b3) + w * b->records + i);

	return (struct pick){
		.session = h % b->sessions,
		.llm = (h >> 20) % b->llms,
		.input = 1 + (h >> 40) % 7,
		.output = 2 + (h >> 52) % 5,
	};
}

/* Round r of worker w's sync phase, on its own session. */
static struct pick pick_sync(const struct bench *b, uint64_t w, uint64_t r)
{
	return (struct pick){
		.session = b->sessions + w,
		.llm = r % b->llms,
		.input = 1,
		.output = 1,
	};
}

struct names {
	char session[96];
	char llm[32];
	char display[64];
};

static void fill_usage(const struct bench *b, const struct pick *p,
		       struct names *n, struct tally_usage *u)
{
	session_name(b, p->session, n->session, sizeof(n->session));
	snprintf(n->llm, sizeof(n->llm), "llm-%" PRIu64, p->llm);
	snprintf(n->display, sizeof(n->display),
		 "openAI - gpt-4o - llm-%" PRIu64, p->llm);
	*u = (struct tally_usage){
		.session_id = n->session,
		.llm_reference_id = n->llm,
		.llm_display_name = n->display,
		.provider_type = "openAI",
		.model_type = "gpt-4o",
		.input_tokens = p->input,
		.output_tokens = p->output,
	};
}

/* ---- the shared mapping and the expected totals ---- */

static int map_shared(struct bench *b)
{
	uint64_t n = b->workers;
	size_t slots_len, total = 0;
	enum kind k;

	b->rec_stride =
		(b->records + RECORD_SAMPLES_MAX - 1) / RECORD_SAMPLES_MAX;
	b->cap[KIND_RECORD] = (b->records + b->rec_stride - 1) / b->rec_stride;
	b->cap[KIND_SYNC] = SYNC_ROUNDS;
	b->cap[KIND_SNAP] = SNAP_ROUNDS;
	for (k = 0; k < KINDS; k++)
		total += n * b->cap[k];
	slots_len = (n * sizeof(struct slot) + 63) & ~(size_t)63;
	b->map_len = slots_len + total * sizeof(uint64_t);
	b->map = mmap(NULL, b->map_len, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (b->map == MAP_FAILED) {
		b->map = NULL;
		fprintf(stderr,
			"tally-bench: cannot map %zu bytes for the "
			"samples: %s\n",
			b->map_len, strerror(errno));
		return -ENOMEM;
	}
	b->slots = b->map;
	b->samples[0] = (uint64_t *)((char *)b->map + slots_len);
	for (k = 1; k < KINDS; k++)
		b->samples[k] = b->samples[k - 1] + n * b->cap[k - 1];
	return 0;
}

/* Stores one sample of kind k for worker w. */
static void sample(const struct bench *b, uint64_t w, enum kind k, int64_t t0)
{
	struct slot *s = &b->slots[w];

	b->samples[k][w * b->cap[k] + s->n[k]++] = (uint64_t)(now_ns() - t0);
}

static void add_expected(struct bench *b, const struct pick *p)
{
	uint64_t *e = b->expect + (p->session * b->llms + p->llm) * 2;

	e[0] += p->input;
	e[1] += p->output;
}

static int compute_expected(struct bench *b)
{
	uint64_t cells = (b->sessions + b->workers) * b->llms * 2;
	uint64_t w, i;
	struct pick p;

	b->expect = calloc(cells, sizeof(*b->expect));
	b->pids = calloc(b->workers, sizeof(*b->pids));
	if (!b->expect || !b->pids) {
		fprintf(stderr,
			"tally-bench: out of memory for %" PRIu64
			" expected totals\n",
			cells);
		return -ENOMEM;
	}
	for (w = 0; w < b->workers; w++) {
		for (i = 0; i < b->records; i++) {
			p = pick_load(b, w, i);
			add_expected(b, &p);
		}
		for (i = 0; i < SYNC_ROUNDS; i++) {
			p = pick_sync(b, w, i);
			add_expected(b, &p);
		}
	}
	return 0;
}

/* ---- the daemon ---- */

static int find_tallyd(struct bench *b)
{
	if (bench_find_tallyd(b->tallyd, b->tallyd_buf,
			      sizeof(b->tallyd_buf)) == 0) {
		b->tallyd = b->tallyd_buf;
		return 0;
	}
	fprintf(stderr, "tally-bench: cannot find tallyd next to tally-bench "
			"nor in ../daemon; pass --tallyd PATH or set TALLYD, "
			"or --dir of a running tallyd\n");
	return -ENOENT;
}

static int make_tmp_dir(struct bench *b)
{
	const char *base = getenv("TMPDIR");
	int err;

	if (!base || !*base)
		base = "/tmp";
	snprintf(b->tmp_dir, sizeof(b->tmp_dir), "%s/tally-bench.XXXXXX", base);
	if (!mkdtemp(b->tmp_dir)) {
		err = -errno;
		fprintf(stderr,
			"tally-bench: cannot make a directory in %s: %s\n",
			base, strerror(-err));
		b->tmp_dir[0] = '\0';
		return err;
	}
	b->dir = b->tmp_dir;
	return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type,
			struct FTW *ftw)
{
	(void)st, (void)type, (void)ftw;
	if (remove(path) < 0)
		fprintf(stderr, "tally-bench: cannot remove %s: %s\n", path,
			strerror(errno));
	return 0;
}

/* Removes the directory this run made, depth first, following no link. */
static void remove_tmp_dir(struct bench *b)
{
	if (!b->tmp_dir[0])
		return;
	nftw(b->tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	b->tmp_dir[0] = '\0';
}

static int daemon_start(struct bench *b)
{
	char *args[] = {(char *)b->tallyd, "--dir", (char *)b->dir, "-q", NULL};

	fflush(NULL);
	b->daemon = fork();
	if (b->daemon < 0) {
		fprintf(stderr, "tally-bench: fork: %s\n", strerror(errno));
		b->daemon = 0;
		return -EAGAIN;
	}
	if (b->daemon == 0) {
		execv(b->tallyd, args);
		fprintf(stderr, "tally-bench: cannot run %s: %s\n", b->tallyd,
			strerror(errno));
		_exit(127);
	}
	printf("tallyd: %s --dir %s -q (pid %ld)\n", b->tallyd, b->dir,
	       (long)b->daemon);
	return 0;
}

static void describe_status(const char *what, pid_t pid, int status)
{
	if (WIFSIGNALED(status))
		fprintf(stderr,
			"tally-bench: %s (pid %ld) was killed by signal %d\n",
			what, (long)pid, WTERMSIG(status));
	else
		fprintf(stderr,
			"tally-bench: %s (pid %ld) exited with status %d\n",
			what, (long)pid, WEXITSTATUS(status));
}

/* True once the daemon this run started has exited; reaps it. */
static bool daemon_gone(struct bench *b)
{
	int status;

	if (!b->daemon || waitpid(b->daemon, &status, WNOHANG) != b->daemon)
		return false;
	describe_status("tallyd", b->daemon, status);
	b->daemon = 0;
	return true;
}

static void daemon_stop(struct bench *b)
{
	int64_t deadline = now_ns() + DAEMON_STOP_MS * 1000000LL;
	int status = 0;
	pid_t r;

	if (!b->daemon)
		return;
	kill(b->daemon, SIGTERM);
	while ((r = waitpid(b->daemon, &status, WNOHANG)) == 0) {
		if (now_ns() > deadline) {
			fprintf(stderr,
				"tally-bench: tallyd (pid %ld) did not "
				"stop within %d ms of SIGTERM; killing it\n",
				(long)b->daemon, DAEMON_STOP_MS);
			kill(b->daemon, SIGKILL);
			r = waitpid(b->daemon, &status, 0);
			break;
		}
		sleep_ms(10);
	}
	if (r > 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
		describe_status("tallyd", b->daemon, status);
	b->daemon = 0;
}

/* Polls the daemon's counters until it answers, for at most 5 s. */
static int poll_ready(struct bench *b, struct tally *t)
{
	int64_t deadline = now_ns() + READY_DEADLINE_MS * 1000000LL;
	char *json = NULL;
	int err;

	do {
		err = tally_stats_json(t, 100, &json);
		free(json);
		json = NULL;
		if (err == 0)
			return 0;
		if (daemon_gone(b)) {
			fprintf(stderr, "tally-bench: tallyd exited before it "
					"answered\n");
			return -ECHILD;
		}
		if (interrupted)
			return -EINTR;
		sleep_ms(10);
	} while (now_ns() < deadline);
	fprintf(stderr,
		"tally-bench: tallyd did not answer on %s within %d ms: %s\n",
		b->dir, READY_DEADLINE_MS, tally_strerror(err));
	return err;
}

static int wait_ready(struct bench *b)
{
	struct tally *t = NULL;
	int err;

	err = tally_open(&t, b->dir);
	if (err < 0) {
		fprintf(stderr, "tally-bench: cannot open %s: %s\n", b->dir,
			tally_strerror(err));
		return err;
	}
	err = poll_ready(b, t);
	/* Closed before the fork: the workers open their own handles. */
	tally_close(t);
	return err;
}

/* ---- workers ---- */

__attribute__((format(printf, 2, 3))) static int
worker_fail(struct slot *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->error, sizeof(s->error), fmt, ap);
	va_end(ap);
	return -1;
}

static int worker_load(const struct bench *b, struct tally *t, uint64_t w)
{
	struct slot *s = &b->slots[w];
	struct tally_usage u;
	struct names n;
	struct pick p;
	int64_t t0;
	uint64_t i;
	int err;

	for (i = 0; i < b->records; i++) {
		p = pick_load(b, w, i);
		fill_usage(b, &p, &n, &u);
		t0 = now_ns();
		err = tally_record(t, &u);
		if (i % b->rec_stride == 0)
			sample(b, w, KIND_RECORD, t0);
		if (err < 0)
			return worker_fail(
				s, "tally_record of usage %" PRIu64 ": %s", i,
				tally_strerror(err));
	}
	err = tally_sync(t, 60000);
	if (err < 0)
		return worker_fail(s, "tally_sync after the load: %s",
				   tally_strerror(err));
	s->sync_done_ns = now_ns();
	return 0;
}

static int worker_syncs(const struct bench *b, struct tally *t, uint64_t w)
{
	struct slot *s = &b->slots[w];
	struct tally_usage u;
	struct names n;
	struct pick p;
	int64_t t0;
	uint64_t r;
	int err;

	for (r = 0; r < SYNC_ROUNDS; r++) {
		p = pick_sync(b, w, r);
		fill_usage(b, &p, &n, &u);
		err = tally_record(t, &u);
		if (err < 0)
			return worker_fail(s,
					   "tally_record in sync round "
					   "%" PRIu64 ": %s",
					   r, tally_strerror(err));
		t0 = now_ns();
		err = tally_sync(t, 60000);
		sample(b, w, KIND_SYNC, t0);
		if (err < 0)
			return worker_fail(
				s, "tally_sync in round %" PRIu64 ": %s", r,
				tally_strerror(err));
	}
	return 0;
}

/* Snapshots the worker's own session, which now has every LLM (to 200). */
static int worker_snapshots(const struct bench *b, struct tally *t, uint64_t w)
{
	struct slot *s = &b->slots[w];
	char name[96];
	char *json;
	int64_t t0;
	int r, err;

	session_name(b, b->sessions + w, name, sizeof(name));
	for (r = 0; r < SNAP_ROUNDS; r++) {
		json = NULL;
		t0 = now_ns();
		err = tally_session_json(t, name, &json);
		sample(b, w, KIND_SNAP, t0);
		free(json);
		if (err < 0)
			return worker_fail(s, "tally_session_json of %s: %s",
					   name, tally_strerror(err));
	}
	return 0;
}

/* The body of worker process w; returns its exit status. */
static int worker_main(const struct bench *b, uint64_t w)
{
	struct tally_options opts = {
		.dir = b->dir,
		/* Back-pressure: wait for room rather than fail the run. */
		.record_timeout_ms = 60000,
	};
	struct tally *t = NULL;
	int err;

	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	err = tally_open_ex(&t, &opts);
	if (err < 0) {
		worker_fail(&b->slots[w], "tally_open: %s",
			    tally_strerror(err));
		return 1;
	}
	err = worker_load(b, t, w);
	if (err == 0)
		err = worker_syncs(b, t, w);
	if (err == 0)
		err = worker_snapshots(b, t, w);
	tally_close(t);
	return err == 0 ? 0 : 1;
}

static int spawn_workers(struct bench *b)
{
	uint64_t w;

	fflush(NULL);
	b->start_ns = now_ns();
	for (w = 0; w < b->workers; w++) {
		b->pids[w] = fork();
		if (b->pids[w] == 0)
			_exit(worker_main(b, w));
		if (b->pids[w] < 0) {
			fprintf(stderr,
				"tally-bench: fork of worker %" PRIu64 ": %s\n",
				w, strerror(errno));
			b->pids[w] = 0;
			return -EAGAIN;
		}
	}
	return 0;
}

/* Reports how worker w ended; returns 0 only for a clean success. */
static int worker_ended(const struct bench *b, uint64_t w, int status)
{
	char what[32];

	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	snprintf(what, sizeof(what), "worker %" PRIu64, w);
	describe_status(what, b->pids[w], status);
	if (b->slots[w].error[0])
		fprintf(stderr, "tally-bench: worker %" PRIu64 ": %s\n", w,
			b->slots[w].error);
	return -1;
}

/* Kills the workers still running, by pid, and reaps them. */
static int kill_workers(struct bench *b, const char *why)
{
	int failed = 0, status;
	uint64_t w;

	for (w = 0; w < b->workers; w++) {
		if (!b->pids[w])
			continue;
		fprintf(stderr,
			"tally-bench: killing worker %" PRIu64
			" (pid %ld): %s\n",
			w, (long)b->pids[w], why);
		kill(b->pids[w], SIGKILL);
		waitpid(b->pids[w], &status, 0);
		worker_ended(b, w, status);
		b->pids[w] = 0;
		failed++;
	}
	return failed;
}

/* Reaps the workers within the deadline; returns how many failed. */
static int wait_workers(struct bench *b)
{
	int64_t deadline = b->start_ns + WORKER_DEADLINE_S * NSEC;
	uint64_t w, left = b->workers;
	int failed = 0, status;

	for (w = 0; w < b->workers; w++)
		left -= !b->pids[w];
	while (left) {
		for (w = 0; w < b->workers; w++) {
			if (!b->pids[w] ||
			    waitpid(b->pids[w], &status, WNOHANG) != b->pids[w])
				continue;
			failed += worker_ended(b, w, status) < 0;
			b->pids[w] = 0;
			left--;
		}
		if (!left)
			break;
		if (interrupted)
			return failed + kill_workers(b, "interrupted");
		if (daemon_gone(b))
			return failed + kill_workers(b, "tallyd exited");
		if (now_ns() > deadline)
			return failed + kill_workers(b, "past the deadline");
		sleep_ms(5);
	}
	return failed;
}

/* ---- statistics ---- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Gathers every worker's samples of kind k into one sorted array. */
static uint64_t *gather(const struct bench *b, enum kind k, size_t *count)
{
	uint64_t *all, w;
	size_t n = 0;

	all = malloc((b->workers * b->cap[k] + 1) * sizeof(*all));
	if (!all)
		return NULL;
	for (w = 0; w < b->workers; w++) {
		memcpy(all + n, b->samples[k] + w * b->cap[k],
		       b->slots[w].n[k] * sizeof(*all));
		n += b->slots[w].n[k];
	}
	qsort(all, n, sizeof(*all), cmp_u64);
	*count = n;
	return all;
}

/* Nearest-rank percentile of sorted samples. */
static double percentile(const uint64_t *v, size_t n, unsigned p)
{
	size_t rank = (n * p + 99) / 100;

	if (!n)
		return 0;
	return (double)v[rank ? rank - 1 : 0];
}

static void print_latency(const struct bench *b, const char *label, enum kind k,
			  bool in_ms)
{
	double div = in_ms ? 1e6 : 1e3;
	const char *unit = in_ms ? "ms" : "us";
	uint64_t *v;
	size_t n;

	v = gather(b, k, &n);
	if (!v || !n) {
		printf("%-13s no samples\n", label);
		free(v);
		return;
	}
	printf("%-13s p50 %.1f %s  p99 %.1f %s\n", label,
	       percentile(v, n, 50) / div, unit, percentile(v, n, 99) / div,
	       unit);
	free(v);
}

static void report(const struct bench *b)
{
	int64_t end = 0;
	double secs;
	uint64_t w;

	for (w = 0; w < b->workers; w++)
		if (b->slots[w].sync_done_ns > end)
			end = b->slots[w].sync_done_ns;
	secs = (double)(end - b->start_ns) / NSEC;
	if (end && secs > 0)
		printf("committed usages/s: %.0f",
		       b->workers * b->records / secs);
	else
		printf("committed usages/s: -");
	printf(" (%" PRIu64 " workers x %" PRIu64 " records, %" PRIu64
	       " sessions, %" PRIu64 " LLMs)\n",
	       b->workers, b->records, b->sessions, b->llms);
	print_latency(b, "tally_record", KIND_RECORD, false);
	print_latency(b, "tally_sync", KIND_SYNC, true);
	print_latency(b, "snapshot", KIND_SNAP, false);
}

/* ---- verification ---- */

static void mismatch(struct bench *b, const char *session, const char *what,
		     uint64_t l, uint64_t want_in, uint64_t want_out,
		     json_int_t in, json_int_t out)
{
	if (b->mismatches++ >= MISMATCH_PRINT_MAX)
		return;
	fprintf(stderr,
		"tally-bench: %s llm-%" PRIu64 ": expected %" PRIu64 "/%" PRIu64
		" tokens, found %" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT
		" (%s)\n",
		session, l, want_in, want_out, in, out, what);
}

/* Compares one session's snapshot with its expected totals. */
static void check_session(struct bench *b, const char *name, uint64_t s,
			  const json_t *root)
{
	const uint64_t *e = b->expect + s * b->llms * 2;
	size_t found = 0;
	const json_t *entry, *usage;
	json_int_t in, out;
	char llm[32];
	uint64_t l;

	for (l = 0; l < b->llms; l++, e += 2) {
		snprintf(llm, sizeof(llm), "llm-%" PRIu64, l);
		entry = json_object_get(root, llm);
		usage = json_object_get(entry, "usage");
		in = json_integer_value(json_object_get(usage, "inputTokens"));
		out = json_integer_value(
			json_object_get(usage, "outputTokens"));
		found += entry != NULL;
		if (!entry && (e[0] || e[1]))
			mismatch(b, name, "missing", l, e[0], e[1], 0, 0);
		else if (entry &&
			 (!(e[0] || e[1]) || in < 0 || out < 0 ||
			  (uint64_t)in != e[0] || (uint64_t)out != e[1]))
			mismatch(b, name, "differs", l, e[0], e[1], in, out);
	}
	if (json_object_size(root) != found &&
	    b->mismatches++ < MISMATCH_PRINT_MAX)
		fprintf(stderr,
			"tally-bench: %s has %zu LLMs the run did not record\n",
			name, json_object_size(root) - found);
}

static int verify_session(struct bench *b, struct tally *t, uint64_t s)
{
	json_error_t jerr;
	char name[96];
	char *text = NULL;
	json_t *root;
	int err;

	session_name(b, s, name, sizeof(name));
	err = tally_session_json(t, name, &text);
	if (err < 0) {
		fprintf(stderr, "tally-bench: snapshot of %s: %s\n", name,
			tally_strerror(err));
		b->mismatches++;
		return err;
	}
	root = json_loads(text, 0, &jerr);
	free(text);
	if (!json_is_object(root)) {
		fprintf(stderr,
			"tally-bench: snapshot of %s is not a JSON "
			"object: %s\n",
			name, jerr.text);
		json_decref(root);
		b->mismatches++;
		return -EBADMSG;
	}
	check_session(b, name, s, root);
	json_decref(root);
	return 0;
}

/* Reads every session of the run and prints whether all were exact. */
static int verify(struct bench *b)
{
	uint64_t s, n = b->sessions + b->workers;
	struct tally *t = NULL;
	int err;

	err = tally_open(&t, b->dir);
	if (err < 0) {
		fprintf(stderr, "tally-bench: cannot open %s to verify: %s\n",
			b->dir, tally_strerror(err));
		return err;
	}
	for (s = 0; s < n; s++)
		verify_session(b, t, s);
	tally_close(t);
	if (b->mismatches) {
		printf("totals: %lu mismatches (%" PRIu64 " sessions x %" PRIu64
		       " LLMs checked)\n",
		       b->mismatches, n, b->llms);
		return -EPROTO;
	}
	printf("totals: exact (%" PRIu64 " sessions x %" PRIu64
	       " LLMs checked)\n",
	       n, b->llms);
	return 0;
}

/* ---- estimation from text ---- */

/* Reads all of path, up to EST_FILE_MAX bytes; the caller frees *out. */
static int read_text(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	size_t cap = 1 << 16, n = 0, got;
	char *buf = NULL, *p;
	int err = 0;

	if (!f)
		return -errno;
	do {
		if (cap - n < 4096) {
			cap *= 2;
			if (cap > EST_FILE_MAX) {
				err = -EFBIG;
				break;
			}
		}
		p = realloc(buf, cap);
		if (!p) {
			err = -ENOMEM;
			break;
		}
		buf = p;
		got = fread(buf + n, 1, cap - n, f);
		n += got;
	} while (got > 0);
	if (!err && ferror(f))
		err = -EIO;
	fclose(f);
	if (err) {
		free(buf);
		return err;
	}
	*out = buf;
	*len = n;
	return 0;
}

/* Unicode characters of UTF-8 text that tally has already accepted. */
static uint64_t count_chars(const char *s, size_t len)
{
	uint64_t n = 0;
	size_t i;

	for (i = 0; i < len; i++)
		n += ((unsigned char)s[i] & 0xc0) != 0x80;
	return n;
}

struct est_timing {
	uint64_t tokens;
	double load_ms;
	double first_ms;
	uint64_t passes;
	double secs;
};

static double ms_since(int64_t t0)
{
	return (double)(now_ns() - t0) / 1e6;
}

/* Times tally_estimate_tokens: the rank file's load, a first pass, then
 * passes for EST_BUDGET_NS. */
static int time_tally(const char *model, const char *text, size_t len,
		      struct est_timing *t)
{
	uint64_t n;
	int64_t t0;
	int err;

	t0 = now_ns();
	err = tally_estimate_tokens(model, "", 0, &n);
	t->load_ms = ms_since(t0);
	t0 = now_ns();
	if (err == 0)
		err = tally_estimate_tokens(model, text, len, &t->tokens);
	t->first_ms = ms_since(t0);
	t0 = now_ns();
	for (t->passes = 0; err == 0 && t->passes < EST_PASSES_MAX &&
			    now_ns() - t0 < EST_BUDGET_NS;
	     t->passes++)
		err = tally_estimate_tokens(model, text, len, &n);
	t->secs = (double)(now_ns() - t0) / NSEC;
	return err;
}

/* dirname() in place: it may return a pointer into dir itself. */
static void to_parent(char *dir)
{
	const char *d = dirname(dir);

	memmove(dir, d, strlen(d) + 1);
}

static bool is_package(const char *dir)
{
	char path[PATH_MAX + 16];

	snprintf(path, sizeof(path), "%s/package.json", dir);
	return access(path, R_OK) == 0;
}

/* Looks for .deps/node_modules/gpt-tokenizer in dir and 4 parents. */
static bool find_deps_above(char *dir, char *out, size_t len)
{
	int i;

	for (i = 0; i < 5; i++) {
		snprintf(out, len, "%s/.deps/node_modules/gpt-tokenizer", dir);
		if (is_package(out))
			return true;
		if (strcmp(dir, "/") == 0)
			break;
		to_parent(dir);
	}
	return false;
}

static int find_gpt_tokenizer(struct bench *b)
{
	char dir[PATH_MAX];
	ssize_t n;

	if (!b->gpt_dir)
		b->gpt_dir = getenv("TALLY_GPT_TOKENIZER");
	if (b->gpt_dir && *b->gpt_dir)
		return is_package(b->gpt_dir) ? 0 : -ENOENT;
	b->gpt_dir = b->gpt_buf;
	n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
	if (n > 0) {
		dir[n] = '\0';
		to_parent(dir);
		if (find_deps_above(dir, b->gpt_buf, sizeof(b->gpt_buf)))
			return 0;
	}
	if (getcwd(dir, sizeof(dir)) &&
	    find_deps_above(dir, b->gpt_buf, sizeof(b->gpt_buf)))
		return 0;
	b->gpt_dir = NULL;
	return -ENOENT;
}

/*
 * Run by Node.js with FILE ENCODING PACKAGE BUDGET_S. Prints the count,
 * the first pass in ms, then passes and seconds with gpt-tokenizer's
 * default merge cache, and again with the cache off (as tally runs).
 */
static const char node_script[] =
	"'use strict';\n"
	"const [file, enc, dir, budget] = process.argv.slice(1);\n"
	"const lib = require(dir + '/cjs/encoding/' + enc + '.js');\n"
	"const text = require('fs').readFileSync(file, 'utf8');\n"
	"const opts = { disallowedSpecial: new Set() };\n"
	"const now = () => Number(process.hrtime.bigint()) / 1e9;\n"
	"function timed() {\n"
	"  let passes = 0, t = 0;\n"
	"  const t0 = now();\n"
	"  do {\n"
	"    lib.countTokens(text, opts);\n"
	"    passes++;\n"
	"    t = now() - t0;\n"
	"  } while (t < budget && passes < 10000);\n"
	"  return passes + ' ' + t;\n"
	"}\n"
	"const t0 = now();\n"
	"const n = lib.countTokens(text, opts);\n"
	"const first = (now() - t0) * 1e3;\n"
	"const cached = timed();\n"
	"lib.setMergeCacheSize(0);\n"
	"console.log(n + ' ' + first + ' ' + cached + ' ' + timed());\n";

/* Reads the child's output until it closes it, within the deadline. */
static int read_child(int fd, char *out, size_t len)
{
	int64_t deadline = now_ns() + NODE_DEADLINE_MS * 1000000LL;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	size_t n = 0;
	ssize_t r;

	for (;;) {
		if (now_ns() > deadline)
			return -ETIMEDOUT;
		if (poll(&p, 1, 100) <= 0)
			continue;
		r = read(fd, out + n, len - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || (n += (size_t)r) == len - 1)
			break;
	}
	out[n] = '\0';
	return 0;
}

static pid_t spawn_node(const char *node, char **args, int *fd)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		dup2(p[1], STDOUT_FILENO);
		execvp(node, args);
		fprintf(stderr, "tally-bench: cannot run %s: %s\n", node,
			strerror(errno));
		_exit(127);
	}
	close(p[1]);
	if (pid < 0)
		close(p[0]);
	else
		*fd = p[0];
	return pid;
}

/* Runs node_script; out receives its one line of figures. */
static int run_node(const struct bench *b, const char *enc, char *out,
		    size_t len)
{
	const char *node = getenv("NODE");
	char *script = (char *)node_script, *file = (char *)b->estimate_file;
	char *e = (char *)enc, *dir = (char *)b->gpt_dir;
	char *args[] = {"node", "-e", script, "--", file, e, dir, "1", NULL};
	int fd, status, err;
	pid_t pid;

	if (!node || !*node)
		node = "node";
	pid = spawn_node(node, args, &fd);
	if (pid < 0)
		return -errno;
	err = read_child(fd, out, len);
	close(fd);
	if (err < 0)
		kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	if (err == 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
		err = -ECHILD;
	return err;
}

struct node_timing {
	uint64_t tokens;
	double first_ms;
	double cached_passes, cached_secs;
	double cold_passes, cold_secs;
};

static int time_gpt_tokenizer(struct bench *b, const char *enc,
			      struct node_timing *t)
{
	char out[512];
	int err;

	if (find_gpt_tokenizer(b) < 0) {
		fprintf(stderr, "tally-bench: gpt-tokenizer not found: run "
				"tools/setup, or pass --gpt-tokenizer DIR\n");
		return -ENOENT;
	}
	err = run_node(b, enc, out, sizeof(out));
	if (err == 0 &&
	    sscanf(out, "%" SCNu64 " %lf %lf %lf %lf %lf", &t->tokens,
		   &t->first_ms, &t->cached_passes, &t->cached_secs,
		   &t->cold_passes, &t->cold_secs) != 6)
		err = -EBADMSG;
	if (err < 0)
		fprintf(stderr,
			"tally-bench: gpt-tokenizer in Node.js failed: "
			"%s\n",
			err == -ECHILD ? "it exited with an error"
				       : strerror(-err));
	return err;
}

static void print_estimate(const struct bench *b, const struct est_timing *t,
			   const struct node_timing *g)
{
	double ours = (double)t->tokens * (double)t->passes / t->secs;
	double cached = (double)g->tokens * g->cached_passes / g->cached_secs;
	double cold = (double)g->tokens * g->cold_passes / g->cold_secs;

	printf("gpt-tokenizer: %s, run by %s\n", b->gpt_dir,
	       getenv("NODE") ? getenv("NODE") : "node");
	printf("gpt-tokenizer: %" PRIu64 " tokens; first pass %.1f ms; "
	       "%.0f tokens/s with its merge cache, %.0f without\n",
	       g->tokens, g->first_ms, cached, cold);
	printf("ratio tally / gpt-tokenizer: %.2fx (merge cache on), "
	       "%.2fx (off)\n",
	       ours / cached, ours / cold);
	if (g->tokens == t->tokens)
		printf("counts: identical\n");
	else
		printf("counts: differ by %+" PRId64 " (tally follows tiktoken "
		       "where gpt-tokenizer does not: U+FEFF, U+0085)\n",
		       (int64_t)(t->tokens - g->tokens));
}

static int run_estimate(struct bench *b)
{
	struct tally_estimator e;
	struct est_timing t = {0};
	struct node_timing g = {0};
	char *text = NULL;
	size_t len;
	int err;

	if (!b->model)
		b->model = "gpt-4o";
	err = read_text(b->estimate_file, &text, &len);
	if (err < 0) {
		fprintf(stderr, "tally-bench: cannot read %s: %s\n",
			b->estimate_file, strerror(-err));
		return RC_FAIL;
	}
	err = tally_estimator_for(b->model, &e);
	if (err == 0)
		err = time_tally(b->model, text, len, &t);
	if (err < 0) {
		fprintf(stderr, "tally-bench: tally_estimate_tokens: %s\n",
			err == -ENOENT ? "the rank file is not installed "
					 "(run tools/setup, or set "
					 "TALLY_DATA_DIR)"
				       : tally_strerror(err));
		free(text);
		return RC_FAIL;
	}
	printf("text: %s, %zu bytes, %" PRIu64 " characters; model %s: %s\n",
	       b->estimate_file, len, count_chars(text, len), b->model, e.name);
	printf("tally: %" PRIu64 " tokens; rank file load %.1f ms, first "
	       "pass %.1f ms; %.0f tokens/s (%" PRIu64 " passes in %.3f s)\n",
	       t.tokens, t.load_ms, t.first_ms,
	       (double)t.tokens * (double)t.passes / t.secs, t.passes, t.secs);
	free(text);
	if (!e.exact) {
		printf("gpt-tokenizer: not run: %s is counted by a ratio\n",
		       b->model);
		return RC_OK;
	}
	if (time_gpt_tokenizer(b, e.name, &g) < 0)
		return RC_FAIL;
	print_estimate(b, &t, &g);
	return RC_OK;
}

/* One representative model type per family of tally.h's table. */
static const char *const family_models[] = {
	"claude-sonnet-4-5", "gemini-2.5-pro", "mistral-large-latest",
	"command-r-plus",    "llama3.1:8b",    "unknown-model",
};
#define FAMILIES (sizeof(family_models) / sizeof(*family_models))

struct family_error {
	struct tally_estimator e;
	uint64_t estimated;
	double abs_sum;
	double worst;
	const char *worst_file;
};

static int txt_file(const struct dirent *d)
{
	size_t n = strlen(d->d_name);

	return n > 4 && strcmp(d->d_name + n - 4, ".txt") == 0;
}

static double error_pct(uint64_t estimate, uint64_t exact)
{
	return exact ? 100.0 * ((double)estimate - (double)exact) /
			       (double)exact
		     : 0;
}

static void print_error_header(const struct family_error *f)
{
	size_t i;

	printf("%-18s %6s %6s", "file", "bytes", "o200k");
	for (i = 0; i < FAMILIES; i++)
		printf(" %9s", f[i].e.name);
	printf("\n%-32s", "(bytes per token)");
	for (i = 0; i < FAMILIES; i++)
		printf(" %9.1f", f[i].e.bytes_per_token);
	putchar('\n');
}

static void add_error(struct family_error *f, const char *name,
		      uint64_t estimate, uint64_t exact)
{
	double err = error_pct(estimate, exact);
	double abs = err < 0 ? -err : err;

	f->estimated += estimate;
	f->abs_sum += abs;
	if (!f->worst_file || abs > (f->worst < 0 ? -f->worst : f->worst)) {
		f->worst = err;
		f->worst_file = name;
	}
	printf(" %+8.1f%%", err);
}

/* Estimates one file with every family and prints its row. */
static int error_row(const char *dir, const char *name, struct family_error *f,
		     uint64_t *bytes, uint64_t *ref)
{
	char path[PATH_MAX];
	uint64_t exact, estimate;
	char *text;
	size_t len, i;
	int rc;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	rc = read_text(path, &text, &len);
	if (rc == 0)
		rc = tally_estimate_tokens("gpt-4o", text, len, &exact);
	if (rc < 0) {
		fprintf(stderr, "tally-bench: %s: %s\n", path,
			tally_strerror(rc));
		return rc;
	}
	*bytes += len;
	*ref += exact;
	printf("%-18.18s %6zu %6" PRIu64, name, len, exact);
	for (i = 0; i < FAMILIES && rc == 0; i++) {
		rc = tally_estimate_tokens(family_models[i], text, len,
					   &estimate);
		if (rc == 0)
			add_error(&f[i], name, estimate, exact);
	}
	putchar('\n');
	free(text);
	return rc;
}

static void print_error_summary(const struct family_error *f, int files,
				uint64_t bytes, uint64_t ref)
{
	size_t i;

	printf("%-18s %6" PRIu64 " %6" PRIu64, "whole corpus", bytes, ref);
	for (i = 0; i < FAMILIES; i++)
		printf(" %+8.1f%%", error_pct(f[i].estimated, ref));
	printf("\n%-32s", "mean |error| of the files");
	for (i = 0; i < FAMILIES; i++)
		printf(" %8.1f%%", f[i].abs_sum / files);
	printf("\n\n");
	for (i = 0; i < FAMILIES; i++)
		printf("%s (%s, %.1f bytes/token): whole corpus %+.1f%%, mean "
		       "|error| %.1f%%, worst %+.1f%% (%s)\n",
		       f[i].e.name, family_models[i], f[i].e.bytes_per_token,
		       error_pct(f[i].estimated, ref), f[i].abs_sum / files,
		       f[i].worst, f[i].worst_file);
}

static int run_estimate_error(struct bench *b)
{
	struct family_error f[FAMILIES] = {0};
	struct dirent **names;
	uint64_t bytes = 0, ref = 0;
	int n, i, rc = 0;
	size_t k;

	n = scandir(b->error_dir, &names, txt_file, alphasort);
	if (n <= 0) {
		fprintf(stderr, "tally-bench: no *.txt file in %s%s%s\n",
			b->error_dir, n < 0 ? ": " : "",
			n < 0 ? strerror(errno) : "");
		return RC_FAIL;
	}
	for (k = 0; k < FAMILIES; k++)
		tally_estimator_for(family_models[k], &f[k].e);
	printf("corpus: %s, %d files. The reference is the exact o200k_base "
	       "count, standing in\nfor each family's own tokenizer, which "
	       "cannot run offline.\nerror = (estimate - o200k count) / o200k "
	       "count\n\n",
	       b->error_dir, n);
	print_error_header(f);
	for (i = 0; i < n && rc == 0; i++)
		rc = error_row(b->error_dir, names[i]->d_name, f, &bytes, &ref);
	if (rc == 0)
		print_error_summary(f, n, bytes, ref);
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc == 0 ? RC_OK : RC_FAIL;
}

/* ---- main ---- */

static int prepare(struct bench *b)
{
	struct sigaction sa = {.sa_handler = on_signal};

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	make_run_id(b);
	if (map_shared(b) < 0 || compute_expected(b) < 0)
		return -ENOMEM;
	if (b->dir)
		return 0;
	if (find_tallyd(b) < 0 || make_tmp_dir(b) < 0)
		return -ENOENT;
	return daemon_start(b);
}

static int run(struct bench *b)
{
	int failed;

	if (wait_ready(b) < 0)
		return RC_FAIL;
	printf("run: bench-%s, seed %" PRIu64 ", dir %s\n", b->run, b->seed,
	       b->dir);
	if (spawn_workers(b) < 0) {
		kill_workers(b, "a fork failed");
		return RC_FAIL;
	}
	failed = wait_workers(b);
	report(b);
	if (failed) {
		/* Their totals cannot match; a list of mismatches is noise. */
		printf("totals: not checked (%d of %" PRIu64
		       " workers failed)\n",
		       failed, b->workers);
		return RC_FAIL;
	}
	return verify(b) < 0 ? RC_FAIL : RC_OK;
}

int main(int argc, char **argv)
{
	struct bench b = {0};
	int rc;

	/* --soak is a mode of its own, with its own options. */
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--soak") == 0 ||
		    strncmp(argv[i], "--soak=", 7) == 0)
			return bench_soak(argc, argv);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--compare") == 0)
			return bench_compare(argc, argv);
		if (strcmp(argv[i], "--cluster") == 0)
			return bench_cluster(argc, argv);
		if (strcmp(argv[i], "--steady") == 0 ||
		    strncmp(argv[i], "--steady=", 9) == 0)
			return bench_steady(argc, argv);
	}
	rc = parse_options(&b, argc, argv);
	if (rc != RC_GO_ON)
		return rc;
	bench_print_command(argc, argv);
	if (b.estimate_file)
		rc = run_estimate(&b);
	else if (b.error_dir)
		rc = run_estimate_error(&b);
	else
		rc = prepare(&b) < 0 ? RC_FAIL : run(&b);
	daemon_stop(&b);
	remove_tmp_dir(&b);
	if (b.map)
		munmap(b.map, b.map_len);
	free(b.expect);
	free(b.pids);
	if (fflush(stdout) != 0)
		rc = RC_FAIL;
	return rc;
}
