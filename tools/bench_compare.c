/*
 * bench_compare.c - tally-bench --compare: tally beside a Redis hash per
 * session and the raw nanomsg ceiling, on the same calls, in one run.
 *
 * For every number of producers N and of sessions K it runs, one after
 * the other and each on a fresh server:
 *  - tally: N forked producers call tally_record() once per LLM call, as
 *    flow workers do, then tally_sync(), against a tallyd with durable
 *    commits (its default);
 *  - the nanomsg ceiling: N producers push the packed batch of one usage
 *    over ipc:// to a puller in this process that only counts;
 *  - Redis: N clients send two HINCRBY a call (input, output), one command
 *    at a time and then pipelined, first without persistence, then with
 *    appendfsync always.
 * Call i of producer p is a hash of (p, i), so every system gets the same
 * calls, and the parent can recompute the totals of a few sessions and
 * check them in the ledger and in Redis after each run.
 *
 * Then it times single calls at light load (tally_record, tally_sync,
 * tally_session_json beside HINCRBY and HGETALL round trips), and prints
 * the tables with their ratios.
 *
 * Everything it starts is stopped by its pid, every wait is bounded, and
 * every file lives under one mkdtemp directory that is removed at the end.
 * Redis listens on 127.0.0.1 only; this file speaks its protocol (RESP)
 * itself, so that the baseline needs no client library.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <nanomsg/nn.h>
#include <nanomsg/pipeline.h>

#include "bench_compare.h"
#include "bench_util.h"
#include "tally.h"
#include "tally.pb-c.h"

enum {
	RC_OK = 0,
	RC_FAIL = 1,
	RC_USAGE = 2,
	RC_GO_ON = -1,
};

#define NSEC 1000000000LL
#define MSEC 1000000LL
#define PRODUCERS_MAX 64
#define LIST_MAX 8
#define LLMS_MAX 100
/* Sessions whose totals are checked after each run, spread over K. */
#define SAMPLED 16
/* How long producers may take to connect, and servers to answer. */
#define READY_MS 10000
/*
 * After a run's time is up: for the last tally_sync(), for the puller to
 * drain, and for the producers to exit; then they are killed.
 */
#define GRACE_MS 30000
#define STOP_MS 10000
#define RESP_IN (64u << 10)
#define RESP_OUT (256u << 10)
#define RESP_TIMEOUT_S 10
#define PIPELINE_MAX 1024
#define MSG_MAX 1024
/* Rounds of the latency phase; the sync ones cost an fsync each. */
#define LAT_SYNC_ROUNDS 1000
#define LAT_FAST_ROUNDS 10000
/* LLMs of the session whose snapshot is timed. */
#define SNAP_LLMS 5
/* tally_record calls a tally producer times during its load, at most. */
#define REC_SAMPLES 4096

/* The systems of an ingest run, in the order they run and print. */
enum sys {
	SYS_TALLY,
	SYS_REDIS_1,
	SYS_REDIS_P,
	SYS_AOF_1,
	SYS_AOF_P,
	SYS_NN,
	SYSTEMS,
};

static const char *const sys_names[SYSTEMS] = {
	"tally (durable)",
	"Redis unpipelined",
	"Redis pipelined",
	"Redis AOF always, unpipelined",
	"Redis AOF always, pipelined",
	"nanomsg ceiling",
};

/* The single-call latencies. */
enum lat {
	LAT_RECORD,
	LAT_SYNC,
	LAT_SNAP,
	LAT_HINCRBY,
	LAT_HINCRBY_AOF,
	LAT_HGETALL,
	LATS,
};

static const char *const lat_names[LATS] = {
	"tally_record",
	"tally_sync after one record (durable)",
	"tally_session_json, 5 LLMs",
	"Redis HINCRBY round trip, no persistence",
	"Redis HINCRBY round trip, AOF always",
	"Redis HGETALL, 10 fields (5 LLMs)",
};

struct result {
	bool ran, ok, capped;
	uint64_t calls;
	double secs, rate;
	/* tally only: tally_record during the load, microseconds. */
	double rec_p50_us, rec_p99_us;
};

struct memory {
	long rss_start_kib, rss_after_kib, redis_rss_kib;
	uint64_t ledger_bytes, pairs;
};

struct latency {
	size_t n;
	double p50_us, p99_us;
};

/* One producer's report, in the mapping shared with the parent. */
struct pslot {
	/* Calls completed, and when its last one (or its sync) ended. */
	uint64_t done;
	int64_t end_ns;
	/* Set after done: the nanomsg puller waits for every one. */
	atomic_int finished;
	/* tally_record samples taken, in rec[] of struct shared. */
	uint32_t nrec;
	char error[200];
};

/* Made once before any fork, cleared before each run. */
struct shared {
	/* 0: wait; > 0: the start, CLOCK_MONOTONIC; < 0: give up. */
	atomic_llong go_ns;
	atomic_uint ready;
	/* The nanomsg puller is bound; it has counted what it will. */
	atomic_int bound;
	atomic_int release;
	struct pslot slot[PRODUCERS_MAX];
	/* Producer p's tally_record samples, in nanoseconds. */
	uint64_t rec[PRODUCERS_MAX][REC_SAMPLES];
};

struct cmp {
	unsigned producers[LIST_MAX], nproducers;
	unsigned sessions[LIST_MAX], nsessions;
	unsigned llms, seconds, pipeline;
	uint64_t calls;
	const char *tallyd, *redis;
	char tallyd_buf[PATH_MAX], redis_buf[PATH_MAX];
	char top[PATH_MAX], dir[PATH_MAX], url[PATH_MAX + 16];
	char run[16];
	char redis_version[32];
	size_t msg_bytes;
	struct shared *sh;
	/* The run under way: producers, sessions, calls per round trip. */
	unsigned n, k, batch, runs, runs_total;
	pid_t kids[PRODUCERS_MAX];
	pid_t tallyd_pid, redis_pid;
	uint16_t redis_port;
	unsigned failures;
	struct result res[LIST_MAX][LIST_MAX][SYSTEMS];
	struct memory mem[LIST_MAX][LIST_MAX];
	struct latency lat[LATS];
};

/* What one call records: the same for every system. */
struct call {
	uint32_t session, llm, input, output;
};

struct names {
	char session[64];
	char llm[16];
	char display[48];
};

static volatile sig_atomic_t interrupted;
/* In a producer: whether it has counted itself in sh->ready. */
static bool counted_ready;

static const char compare_usage[] =
	"Usage: tally-bench --compare [--producers LIST] [--sessions LIST]\n"
	"                   [--llms L] [--calls N] [--seconds S]\n"
	"                   [--pipeline P] [--tallyd PATH]\n"
	"                   [--redis-server PATH]\n"
	"\n"
	"For every N of --producers and K of --sessions, runs on the\n"
	"same calls: tally (N processes calling tally_record, then\n"
	"tally_sync, on a durable tallyd), Redis (N clients, two HINCRBY\n"
	"a call, unpipelined and pipelined, without persistence and with\n"
	"appendfsync always) and the nanomsg ceiling (N processes pushing\n"
	"one packed usage a message to a puller that only counts). Then\n"
	"times single calls, and prints the tables with ratios, tallyd's\n"
	"memory and the ledger's size.\n"
	"\n"
	"  --producers LIST  producer processes, e.g. 1,2,4,8,16\n"
	"                    (1 to 64; default 1,8)\n"
	"  --sessions LIST   sessions the calls spread over, e.g.\n"
	"                    100,1000,10000,100000 (default 1000,10000)\n"
	"  --llms L          LLMs per session, 1 to 100 (default 3)\n"
	"  --calls N         calls a run, split over its producers\n"
	"                    (default 1000000)\n"
	"  --seconds S       a run stops issuing calls after S s, and\n"
	"                    so does each latency loop (default 5)\n"
	"  --pipeline P      commands a Redis pipeline carries: even,\n"
	"                    2 to 1024 (default 64, 32 calls)\n"
	"  --tallyd PATH     default $TALLYD, else tallyd next to\n"
	"                    tally-bench, else ../daemon/tallyd from it\n"
	"  --redis-server PATH  default redis-server from $PATH\n"
	"  -h, --help        print this help and exit\n"
	"\n"
	"Each call picks its session and LLM uniformly at random, from a\n"
	"hash of the producer and the call's index: the same calls for\n"
	"every system. Exit status: 0 every run finished and every total\n"
	"checked was exact; 1 a failure or a mismatch; 2 usage error.\n";

/* ---- small things ---- */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NSEC + ts.tv_nsec;
}

static void nap_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};

	nanosleep(&ts, NULL);
}

static void on_signal(int sig)
{
	interrupted = sig;
}

/* splitmix64: a cheap, well-mixed hash. */
static uint64_t mix64(uint64_t x)
{
	x += UINT64_C(0x9e3779b97f4a7c15);
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

/* v rounded, with thousands separators: 1,234,567. */
static const char *grouped(double v, char *buf, size_t len)
{
	char digits[32];
	size_t n, i, o = 0;

	snprintf(digits, sizeof(digits), "%.0f", v);
	n = strlen(digits);
	for (i = 0; i < n && o + 2 < len; i++) {
		if (i > 0 && (n - i) % 3 == 0)
			buf[o++] = ',';
		buf[o++] = digits[i];
	}
	buf[o] = '\0';
	return buf;
}

/* VmRSS of a process, in KiB, or -1. */
static long rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* ---- options ---- */

static int parse_count(const char *opt, const char *s, uint64_t min,
		       uint64_t max, uint64_t *out)
{
	unsigned long long v = 0;
	char *end = NULL;

	errno = 0;
	if (*s >= '0' && *s <= '9')
		v = strtoull(s, &end, 10);
	if (end == NULL || *end != '\0' || errno != 0 || v < min || v > max) {
		fprintf(stderr,
			"tally-bench: %s expects a whole number from %" PRIu64
			" to %" PRIu64 ", not '%s'\n",
			opt, min, max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* A list like 1,2,4,8 of at most LIST_MAX numbers from min to max. */
static int parse_list(const char *opt, const char *s, unsigned max, unsigned *v,
		      unsigned *n)
{
	const char *whole = s;
	unsigned long x = 0;
	char *end = NULL;

	for (*n = 0; *n < LIST_MAX; s = end + 1) {
		errno = 0;
		end = NULL;
		if (*s >= '0' && *s <= '9')
			x = strtoul(s, &end, 10);
		if (end == NULL || (*end != ',' && *end != '\0') ||
		    errno != 0 || x < 1 || x > max)
			break;
		v[(*n)++] = (unsigned)x;
		if (*end == '\0')
			return 0;
	}
	fprintf(stderr,
		"tally-bench: %s expects up to %d numbers from 1 to %u, "
		"separated by commas, not '%s'\n",
		opt, LIST_MAX, max, whole);
	return -EINVAL;
}

static int take_option(struct cmp *c, int ch, const char *arg)
{
	uint64_t v;
	int err;

	switch (ch) {
	case 'C':
		return 0;
	case 'p':
		return parse_list("--producers", arg, PRODUCERS_MAX,
				  c->producers, &c->nproducers);
	case 'k':
		return parse_list("--sessions", arg, 1000000, c->sessions,
				  &c->nsessions);
	case 'l':
		err = parse_count("--llms", arg, 1, LLMS_MAX, &v);
		c->llms = (unsigned)v;
		return err;
	case 'n':
		return parse_count("--calls", arg, 1, 100000000, &c->calls);
	case 's':
		err = parse_count("--seconds", arg, 1, 600, &v);
		c->seconds = (unsigned)v;
		return err;
	case 'P':
		err = parse_count("--pipeline", arg, 2, PIPELINE_MAX, &v);
		c->pipeline = (unsigned)v;
		if (err == 0 && v % 2 != 0) {
			fprintf(stderr, "tally-bench: --pipeline is a number "
					"of commands, two a call: even\n");
			err = -EINVAL;
		}
		return err;
	case 't':
		c->tallyd = arg;
		return 0;
	case 'r':
		c->redis = arg;
		return 0;
	default:
		return -EINVAL;
	}
}

static int parse_options(struct cmp *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"compare", no_argument, NULL, 'C'},
		{"producers", required_argument, NULL, 'p'},
		{"sessions", required_argument, NULL, 'k'},
		{"llms", required_argument, NULL, 'l'},
		{"calls", required_argument, NULL, 'n'},
		{"seconds", required_argument, NULL, 's'},
		{"pipeline", required_argument, NULL, 'P'},
		{"tallyd", required_argument, NULL, 't'},
		{"redis-server", required_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int ch;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (ch == 'h') {
			fputs(compare_usage, stdout);
			return RC_OK;
		}
		if (ch == '?' || take_option(c, ch, optarg) < 0)
			goto usage;
	}
	if (optind < argc) {
		fprintf(stderr, "tally-bench: unexpected argument '%s'\n",
			argv[optind]);
		goto usage;
	}
	return RC_GO_ON;
usage:
	fputs("Run 'tally-bench --compare --help' for its options.\n", stderr);
	return RC_USAGE;
}

/* ---- the calls ---- */

/* Call i of producer p in a run over c->k sessions. */
static struct call pick(const struct cmp *c, unsigned p, uint64_t i)
{
	uint64_t h = mix64(((uint64_t)p << 40) ^ i);
	uint64_t g = mix64(h);

	return (struct call){
		.session = (uint32_t)(h % c->k),
		.llm = (uint32_t)(g % c->llms),
		.input = 1 + (uint32_t)((g >> 32) % 7),
		.output = 2 + (uint32_t)((g >> 48) % 5),
	};
}

/* The calls of producer p: c->calls split evenly over the producers. */
static uint64_t quota(const struct cmp *c, unsigned p)
{
	return c->calls / c->n + (p < c->calls % c->n);
}

static void session_id(const struct cmp *c, uint32_t s, char *buf, size_t len)
{
	snprintf(buf, len, "cmp-%s-s%" PRIu32, c->run, s);
}

/* Names as tally-bench gives them: a usage packs to about 100 bytes. */
static void fill_usage(const struct cmp *c, const struct call *call,
		       struct names *n, struct tally_usage *u)
{
	session_id(c, call->session, n->session, sizeof(n->session));
	snprintf(n->llm, sizeof(n->llm), "llm-%" PRIu32, call->llm);
	snprintf(n->display, sizeof(n->display),
		 "openAI - gpt-4o - llm-%" PRIu32, call->llm);
	*u = (struct tally_usage){
		.session_id = n->session,
		.llm_reference_id = n->llm,
		.llm_display_name = n->display,
		.provider_type = "openAI",
		.model_type = "gpt-4o",
		.input_tokens = call->input,
		.output_tokens = call->output,
	};
}

/* Sessions checked after a run: j * stride for j below sampled(). */
static unsigned sampled(const struct cmp *c)
{
	return c->k < SAMPLED ? c->k : SAMPLED;
}

static uint32_t sample_stride(const struct cmp *c)
{
	return c->k / sampled(c);
}

/*
 * The expected totals of the sampled sessions, from the calls each
 * producer reported done: e[(j * llms + l) * 2 + 0] input, + 1 output.
 */
static uint64_t *expected_totals(const struct cmp *c)
{
	uint32_t stride = sample_stride(c);
	struct call call;
	uint64_t *e, i;
	size_t at;

	e = calloc((size_t)SAMPLED * c->llms * 2, sizeof(*e));
	if (e == NULL)
		return NULL;
	for (unsigned p = 0; p < c->n; p++) {
		for (i = 0; i < c->sh->slot[p].done; i++) {
			call = pick(c, p, i);
			if (call.session % stride != 0 ||
			    call.session / stride >= SAMPLED)
				continue;
			at = (size_t)(call.session / stride) * c->llms +
			     call.llm;
			e[2 * at] += call.input;
			e[2 * at + 1] += call.output;
		}
	}
	return e;
}

/* ---- files and processes ---- */

static int remove_entry(const char *path, const struct stat *st, int type,
			struct FTW *ftw)
{
	(void)st, (void)type, (void)ftw;
	if (remove(path) < 0)
		fprintf(stderr, "tally-bench: cannot remove %s: %s\n", path,
			strerror(errno));
	return 0;
}

/* Removes a directory this run made, depth first, following no link. */
static void remove_tree(const char *dir)
{
	if (dir[0] != '\0')
		nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A new directory for one run, under the top one; c->dir names it. */
static int make_run_dir(struct cmp *c, const char *what)
{
	int n, err;

	n = snprintf(c->dir, sizeof(c->dir), "%s/%s-%u", c->top, what,
		     ++c->runs);
	err = n < 0 || (size_t)n >= sizeof(c->dir) ? -ENAMETOOLONG : 0;
	if (err == 0 && mkdir(c->dir, 0700) < 0)
		err = -errno;
	if (err == 0)
		return 0;
	fprintf(stderr, "tally-bench: cannot make a directory in %s: %s\n",
		c->top, strerror(-err));
	c->dir[0] = '\0';
	return err;
}

/* Copies the end of a server's log to stderr, to say why it failed. */
static void show_log(const char *path)
{
	char buf[1024];
	ssize_t n;
	off_t size;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	size = lseek(fd, 0, SEEK_END);
	if (size > (off_t)sizeof(buf))
		lseek(fd, size - (off_t)sizeof(buf), SEEK_SET);
	else
		lseek(fd, 0, SEEK_SET);
	n = read(fd, buf, sizeof(buf));
	if (n > 0)
		fprintf(stderr, "tally-bench: the end of %s:\n%.*s\n", path,
			(int)n, buf);
	close(fd);
}

/* Forks and runs argv, its output going to logpath; pid or -errno. */
static pid_t spawn(char *const argv[], const char *logpath)
{
	pid_t pid;
	int fd;

	fflush(NULL);
	pid = fork();
	if (pid != 0)
		return pid < 0 ? -errno : pid;
	/* An ignored SIGPIPE would be inherited through exec. */
	signal(SIGPIPE, SIG_DFL);
	fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0 ||
	    dup2(fd, STDERR_FILENO) < 0)
		_exit(126);
	execv(argv[0], argv);
	_exit(127);
}

/* True once a server this run started has exited; reaps it. */
static bool exited(pid_t *pid)
{
	int status;

	if (*pid <= 0 || waitpid(*pid, &status, WNOHANG) != *pid)
		return false;
	*pid = 0;
	return true;
}

/* SIGTERM to a server this run started, then SIGKILL past STOP_MS. */
static int stop_server(pid_t *pid, const char *what)
{
	int64_t limit = now_ns() + STOP_MS * MSEC;
	int status = 0;
	pid_t r;

	if (*pid <= 0)
		return 0;
	kill(*pid, SIGTERM);
	while ((r = waitpid(*pid, &status, WNOHANG)) == 0) {
		if (now_ns() > limit) {
			fprintf(stderr,
				"tally-bench: %s (pid %ld) did not stop "
				"within %d ms of SIGTERM; killing it\n",
				what, (long)*pid, STOP_MS);
			kill(*pid, SIGKILL);
			r = waitpid(*pid, &status, 0);
			break;
		}
		nap_us(2000);
	}
	*pid = 0;
	if (r > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	fprintf(stderr, "tally-bench: %s ended badly (status 0x%x)\n", what,
		status);
	return -ECHILD;
}

static bool executable(const char *path)
{
	return access(path, X_OK) == 0;
}

static int find_tallyd(struct cmp *c)
{
	if (bench_find_tallyd(c->tallyd, c->tallyd_buf, sizeof(c->tallyd_buf)) <
	    0)
		return -ENOENT;
	c->tallyd = c->tallyd_buf;
	return 0;
}

/* redis-server from $PATH, as a shell would find it. */
static int find_redis(struct cmp *c)
{
	const char *path = getenv("PATH"), *p, *colon;
	size_t len;

	if (c->redis != NULL)
		return executable(c->redis) ? 0 : -ENOENT;
	for (p = path ? path : "/usr/bin:/bin"; *p; p = colon + 1) {
		colon = strchrnul(p, ':');
		len = (size_t)(colon - p);
		snprintf(c->redis_buf, sizeof(c->redis_buf),
			 "%.*s/redis-server", (int)len, len ? p : ".");
		if (executable(c->redis_buf)) {
			c->redis = c->redis_buf;
			return 0;
		}
		if (*colon == '\0')
			break;
	}
	return -ENOENT;
}

/* ---- Redis' protocol (RESP), over one loopback TCP connection ---- */

struct resp {
	int fd;
	/* Replies read but not yet taken: in[head..tail). */
	size_t head, tail, out_len;
	/* The text of the last status or error reply. */
	char line[128];
	char in[RESP_IN];
	char out[RESP_OUT];
};

static void resp_close(struct resp *r)
{
	if (r == NULL)
		return;
	if (r->fd >= 0)
		close(r->fd);
	free(r);
}

static int resp_open(struct resp **out, uint16_t port)
{
	struct sockaddr_in a = {
		.sin_family = AF_INET,
		.sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	struct timeval tv = {.tv_sec = RESP_TIMEOUT_S};
	struct resp *r;
	int one = 1, err;

	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (r->fd < 0)
		goto fail;
	/* One command a round trip: Nagle would hold it for an ACK. */
	if (setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
	    setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(r->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) ||
	    connect(r->fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		goto fail;
	*out = r;
	return 0;
fail:
	err = -errno;
	resp_close(r);
	return err;
}

/* Appends one command, an array of bulk strings, to the output. */
static int resp_append(struct resp *r, int argc, const char *const *argv)
{
	size_t room = sizeof(r->out) - r->out_len;
	int n;

	n = snprintf(r->out + r->out_len, room, "*%d\r\n", argc);
	for (int i = 0; i < argc && n >= 0 && (size_t)n < room; i++) {
		r->out_len += (size_t)n;
		room -= (size_t)n;
		n = snprintf(r->out + r->out_len, room, "$%zu\r\n%s\r\n",
			     strlen(argv[i]), argv[i]);
	}
	if (n < 0 || (size_t)n >= room)
		return -ENOBUFS;
	r->out_len += (size_t)n;
	return 0;
}

static int resp_flush(struct resp *r)
{
	size_t off = 0;
	ssize_t n;

	while (off < r->out_len) {
		n = send(r->fd, r->out + off, r->out_len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		off += (size_t)n;
	}
	r->out_len = 0;
	return 0;
}

/* Reads more replies, after moving what is unread to the front. */
static int resp_fill(struct resp *r)
{
	ssize_t n;

	if (r->head > 0) {
		memmove(r->in, r->in + r->head, r->tail - r->head);
		r->tail -= r->head;
		r->head = 0;
	}
	if (r->tail == sizeof(r->in))
		return -EPROTO;
	do
		n = recv(r->fd, r->in + r->tail, sizeof(r->in) - r->tail, 0);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		return -ECONNRESET;
	if (n < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	r->tail += (size_t)n;
	return 0;
}

/* The next line, without its CRLF; valid until the next read. */
static int resp_line(struct resp *r, const char **line, size_t *len)
{
	char *end;
	int err;

	for (;;) {
		end = memmem(r->in + r->head, r->tail - r->head, "\r\n", 2);
		if (end != NULL) {
			*line = r->in + r->head;
			*len = (size_t)(end - *line);
			r->head += *len + 2;
			return 0;
		}
		err = resp_fill(r);
		if (err < 0)
			return err;
	}
}

/*
 * The first line of a reply: its type, and its number (the integer, the
 * bulk string's length, the array's count). A status or an error is kept
 * in r->line; an error is returned as -EPROTO.
 */
static int resp_head(struct resp *r, char *type, long long *num)
{
	char buf[32], *end;
	const char *line;
	size_t len;
	int err;

	err = resp_line(r, &line, &len);
	if (err < 0)
		return err;
	if (len == 0)
		return -EPROTO;
	*type = line[0];
	*num = 0;
	if (*type == '+' || *type == '-') {
		snprintf(r->line, sizeof(r->line), "%.*s", (int)(len - 1),
			 line + 1);
		return *type == '-' ? -EPROTO : 0;
	}
	if (len - 1 >= sizeof(buf) || len < 2)
		return -EPROTO;
	memcpy(buf, line + 1, len - 1);
	buf[len - 1] = '\0';
	errno = 0;
	*num = strtoll(buf, &end, 10);
	return errno != 0 || *end != '\0' ? -EPROTO : 0;
}

static int resp_int(struct resp *r, long long *v)
{
	char type;
	int err;

	err = resp_head(r, &type, v);
	return err == 0 && type != ':' ? -EPROTO : err;
}

static int resp_array(struct resp *r, long long *count)
{
	char type;
	int err;

	err = resp_head(r, &type, count);
	return err == 0 && type != '*' ? -EPROTO : err;
}

/*
 * A bulk string: keeps up to cap - 1 bytes of it in buf, NUL-terminated,
 * and consumes the rest. A null bulk string reads as "".
 */
static int resp_bulk(struct resp *r, char *buf, size_t cap)
{
	size_t pos = 0, total, n, keep;
	long long len;
	char type;
	int err;

	err = resp_head(r, &type, &len);
	if (err == 0 && type != '$')
		err = -EPROTO;
	buf[0] = '\0';
	if (err < 0 || len < 0)
		return err;
	total = (size_t)len + 2;
	while (pos < total) {
		if (r->head == r->tail && (err = resp_fill(r)) < 0)
			return err;
		n = total - pos < r->tail - r->head ? total - pos
						    : r->tail - r->head;
		if (pos < (size_t)len && pos + 1 < cap) {
			keep = n;
			if (keep > (size_t)len - pos)
				keep = (size_t)len - pos;
			if (keep > cap - 1 - pos)
				keep = cap - 1 - pos;
			memcpy(buf + pos, r->in + r->head, keep);
		}
		r->head += n;
		pos += n;
	}
	buf[(size_t)len < cap - 1 ? (size_t)len : cap - 1] = '\0';
	return 0;
}

/* One command, flushed, and its status reply. */
static int resp_status(struct resp *r, int argc, const char *const *argv)
{
	long long num;
	char type;
	int err;

	err = resp_append(r, argc, argv);
	if (err == 0)
		err = resp_flush(r);
	if (err == 0)
		err = resp_head(r, &type, &num);
	return err == 0 && type != '+' ? -EPROTO : err;
}

static void redis_key(const struct cmp *c, uint32_t s, char *buf, size_t len)
{
	char id[64];

	session_id(c, s, id, sizeof(id));
	snprintf(buf, len, "session:%s", id);
}

/* Appends the two HINCRBY of one call. */
static int append_call(const struct cmp *c, struct resp *r,
		       const struct call *call)
{
	char key[96], field[32], num[16];
	const char *argv[4] = {"HINCRBY", key, field, num};
	int err;

	redis_key(c, call->session, key, sizeof(key));
	snprintf(field, sizeof(field), "llm-%" PRIu32 ":in", call->llm);
	snprintf(num, sizeof(num), "%" PRIu32, call->input);
	err = resp_append(r, 4, argv);
	if (err < 0)
		return err;
	snprintf(field, sizeof(field), "llm-%" PRIu32 ":out", call->llm);
	snprintf(num, sizeof(num), "%" PRIu32, call->output);
	return resp_append(r, 4, argv);
}

/* Calls i to i + m - 1 of producer p: one write, then their replies. */
static int redis_calls(const struct cmp *c, struct resp *r, unsigned p,
		       uint64_t i, uint64_t m)
{
	struct call call;
	long long v;
	int err = 0;

	for (uint64_t j = 0; j < m && err == 0; j++) {
		call = pick(c, p, i + j);
		err = append_call(c, r, &call);
	}
	if (err == 0)
		err = resp_flush(r);
	for (uint64_t j = 0; j < 2 * m && err == 0; j++)
		err = resp_int(r, &v);
	return err;
}

/* ---- the servers ---- */

static int tallyd_ready(struct cmp *c)
{
	int64_t limit = now_ns() + READY_MS * MSEC;
	struct tally *t = NULL;
	char *json = NULL;
	int err;

	err = tally_open(&t, c->dir);
	if (err < 0)
		return err;
	do {
		err = tally_stats_json(t, 100, &json);
		free(json);
		json = NULL;
		if (err == 0 || exited(&c->tallyd_pid) || interrupted)
			break;
		nap_us(10000);
	} while (now_ns() < limit);
	/* Closed before any fork: the producers open their own. */
	tally_close(t);
	return err;
}

static int tallyd_start(struct cmp *c)
{
	char *argv[] = {(char *)c->tallyd, "--dir", c->dir, "-q", NULL};
	char logpath[PATH_MAX + 16];
	pid_t pid;
	int err;

	snprintf(logpath, sizeof(logpath), "%s/tallyd.log", c->dir);
	pid = spawn(argv, logpath);
	if (pid < 0) {
		fprintf(stderr, "tally-bench: fork: %s\n", strerror(-pid));
		return pid;
	}
	c->tallyd_pid = pid;
	err = tallyd_ready(c);
	if (err == 0)
		return 0;
	fprintf(stderr, "tally-bench: tallyd did not answer on %s: %s\n",
		c->dir, tally_strerror(err));
	stop_server(&c->tallyd_pid, "tallyd");
	show_log(logpath);
	return err < 0 ? err : -ETIMEDOUT;
}

/* A loopback port free at the moment: bound to port 0, then released. */
static int free_port(uint16_t *port)
{
	struct sockaddr_in a = {
		.sin_family = AF_INET,
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	socklen_t len = sizeof(a);
	int fd, err = 0;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&a, len) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0)
		err = -errno;
	close(fd);
	*port = ntohs(a.sin_port);
	return err;
}

/* PING until PONG: Redis answers -LOADING while it reads its AOF. */
static int redis_ready(struct cmp *c)
{
	int64_t limit = now_ns() + READY_MS * MSEC;
	const char *argv[] = {"PING"};
	struct resp *r = NULL;
	int err;

	do {
		err = resp_open(&r, c->redis_port);
		if (err == 0) {
			err = resp_status(r, 1, argv);
			if (err == 0 && strcmp(r->line, "PONG") != 0)
				err = -EPROTO;
			resp_close(r);
			r = NULL;
			if (err == 0)
				return 0;
		}
		if (exited(&c->redis_pid) || interrupted)
			return -ECHILD;
		nap_us(10000);
	} while (now_ns() < limit);
	return err;
}

/* The server's version, from INFO server, for the report. */
static void redis_info(struct cmp *c)
{
	const char *argv[] = {"INFO", "server"};
	struct resp *r = NULL;
	char text[4096], *v;

	if (resp_open(&r, c->redis_port) < 0)
		return;
	if (resp_append(r, 2, argv) == 0 && resp_flush(r) == 0 &&
	    resp_bulk(r, text, sizeof(text)) == 0 &&
	    (v = strstr(text, "redis_version:")) != NULL)
		sscanf(v + 14, "%31[0-9.]", c->redis_version);
	resp_close(r);
}

/*
 * Starts redis-server on 127.0.0.1 and a free port, in the run's
 * directory. Another process may take the port between the probe and
 * Redis' bind: then Redis exits, and another port is tried.
 */
static int redis_start(struct cmp *c, bool aof)
{
	char port[8], logpath[PATH_MAX + 16];
	/* One option and its value a line. */
	/* clang-format off */
	char *argv[] = {
		(char *)c->redis,
		"--port", port,
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", aof ? "yes" : "no",
		"--appendfsync", aof ? "always" : "everysec",
		"--dir", c->dir,
		"--daemonize", "no",
		"--logfile", "",
		NULL,
	};
	/* clang-format on */
	int err = -EADDRINUSE;
	pid_t pid;

	snprintf(logpath, sizeof(logpath), "%s/redis.log", c->dir);
	for (int tries = 0; tries < 3 && !interrupted; tries++) {
		err = free_port(&c->redis_port);
		if (err < 0)
			break;
		snprintf(port, sizeof(port), "%u", c->redis_port);
		pid = spawn(argv, logpath);
		if (pid < 0)
			return pid;
		c->redis_pid = pid;
		err = redis_ready(c);
		if (err == 0) {
			if (c->redis_version[0] == '\0')
				redis_info(c);
			return 0;
		}
		stop_server(&c->redis_pid, "redis-server");
	}
	fprintf(stderr,
		"tally-bench: redis-server did not answer on "
		"127.0.0.1: %s\n",
		strerror(-err));
	show_log(logpath);
	return err;
}

/* ---- producers ---- */

typedef int (*producer_fn)(struct cmp *c, unsigned p, struct pslot *s);

__attribute__((format(printf, 3, 4))) static int
child_fail(struct cmp *c, struct pslot *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->error, sizeof(s->error), fmt, ap);
	va_end(ap);
	/* The parent waits for every producer to be ready, failed or not. */
	if (!counted_ready) {
		counted_ready = true;
		atomic_fetch_add(&c->sh->ready, 1);
	}
	atomic_store(&s->finished, 1);
	return 1;
}

/* Says the producer is ready, and waits for the common start. */
static int child_go(struct cmp *c, int64_t *deadline)
{
	int64_t limit = now_ns() + 2 * READY_MS * MSEC;
	long long go;

	counted_ready = true;
	atomic_fetch_add(&c->sh->ready, 1);
	while ((go = atomic_load(&c->sh->go_ns)) == 0) {
		if (now_ns() > limit)
			return -ETIMEDOUT;
		nap_us(100);
	}
	if (go < 0)
		return -ECANCELED;
	*deadline = go + (int64_t)c->seconds * NSEC;
	return 0;
}

/* A tally producer: one tally_record() a call, then one tally_sync(). */
static int tally_child(struct cmp *c, unsigned p, struct pslot *s)
{
	/* Back-pressure: a full queue waits for room, as in tally-bench. */
	struct tally_options o = {.dir = c->dir, .record_timeout_ms = GRACE_MS};
	uint64_t i, n = quota(c, p);
	struct tally *t = NULL;
	uint64_t stride = n / REC_SAMPLES + 1;
	struct tally_usage u;
	struct names names;
	struct call call;
	int64_t deadline, t0;
	bool timed;
	int err;

	err = tally_open_ex(&t, &o);
	if (err < 0)
		return child_fail(c, s, "tally_open: %s", tally_strerror(err));
	if (child_go(c, &deadline) < 0) {
		tally_close(t);
		return child_fail(c, s, "no start");
	}
	for (i = 0; i < n && now_ns() < deadline; i++) {
		call = pick(c, p, i);
		fill_usage(c, &call, &names, &u);
		timed = i % stride == 0 && s->nrec < REC_SAMPLES;
		t0 = timed ? now_ns() : 0;
		err = tally_record(t, &u);
		if (timed)
			c->sh->rec[p][s->nrec++] = (uint64_t)(now_ns() - t0);
		if (err < 0)
			break;
	}
	s->done = i;
	if (err == 0)
		err = tally_sync(t, GRACE_MS);
	s->end_ns = now_ns();
	tally_close(t);
	if (err < 0)
		return child_fail(c, s, "after %" PRIu64 " calls: %s", s->done,
				  tally_strerror(err));
	atomic_store(&s->finished, 1);
	return 0;
}

/* A Redis client: c->batch calls (two HINCRBY each) a round trip. */
static int redis_child(struct cmp *c, unsigned p, struct pslot *s)
{
	uint64_t i = 0, m, n = quota(c, p);
	struct resp *r = NULL;
	int64_t deadline;
	int err;

	err = resp_open(&r, c->redis_port);
	if (err < 0)
		return child_fail(c, s, "connect: %s", strerror(-err));
	err = child_go(c, &deadline);
	while (err == 0 && i < n && now_ns() < deadline) {
		m = n - i < c->batch ? n - i : c->batch;
		err = redis_calls(c, r, p, i, m);
		if (err == 0)
			i += m;
	}
	s->done = i;
	s->end_ns = now_ns();
	if (err < 0) {
		child_fail(c, s, "after %" PRIu64 " calls: %s%s%s", i,
			   strerror(-err), r->line[0] ? ": " : "", r->line);
		resp_close(r);
		return 1;
	}
	resp_close(r);
	atomic_store(&s->finished, 1);
	return 0;
}

/*
 * The batch of one usage that a tally_record() of call 0 of producer p
 * sends, packed as libtally packs it: the bytes of the ceiling.
 */
static size_t pack_batch(const struct cmp *c, unsigned p, uint8_t *buf)
{
	Tally__Batch b = TALLY__BATCH__INIT;
	Tally__Usage u = TALLY__USAGE__INIT;
	Tally__Usage *usages[1] = {&u};
	struct call call = pick(c, p, 0);
	uint8_t producer[16];
	struct names n;
	struct tally_usage tu;
	struct timespec ts;

	fill_usage(c, &call, &n, &tu);
	memset(producer, (int)(0x5a ^ p), sizeof(producer));
	clock_gettime(CLOCK_REALTIME, &ts);
	u.session_id = (ProtobufCBinaryData){strlen(tu.session_id),
					     (uint8_t *)tu.session_id};
	u.llm_reference_id = (ProtobufCBinaryData){
		strlen(tu.llm_reference_id), (uint8_t *)tu.llm_reference_id};
	u.has_llm_display_name = u.has_provider_type = u.has_model_type = 1;
	u.llm_display_name = (ProtobufCBinaryData){
		strlen(tu.llm_display_name), (uint8_t *)tu.llm_display_name};
	u.provider_type = (ProtobufCBinaryData){strlen(tu.provider_type),
						(uint8_t *)tu.provider_type};
	u.model_type = (ProtobufCBinaryData){strlen(tu.model_type),
					     (uint8_t *)tu.model_type};
	u.input_tokens = tu.input_tokens;
	u.output_tokens = tu.output_tokens;
	u.has_time_ns = 1;
	u.time_ns = (uint64_t)ts.tv_sec * NSEC + (uint64_t)ts.tv_nsec;
	b.producer = (ProtobufCBinaryData){sizeof(producer), producer};
	b.first_seq = 1;
	b.n_usages = 1;
	b.usages = usages;
	b.count = 1;
	if (tally__batch__get_packed_size(&b) > MSG_MAX)
		return 0;
	return tally__batch__pack(&b, buf);
}

/* Waits, within limit, for the parent's flag. */
static bool wait_flag(struct cmp *c, atomic_int *flag, int64_t limit)
{
	while (!atomic_load(flag)) {
		if (atomic_load(&c->sh->go_ns) < 0 || now_ns() > limit)
			return false;
		nap_us(200);
	}
	return true;
}

/* A nanomsg producer: the same message, as fast as PUSH takes it. */
static int nn_child(struct cmp *c, unsigned p, struct pslot *s)
{
	int64_t deadline = now_ns() + READY_MS * MSEC;
	uint64_t i, n = quota(c, p);
	int sock, ms = 10000, err = 0;
	uint8_t msg[MSG_MAX];
	size_t len = pack_batch(c, p, msg);

	if (!wait_flag(c, &c->sh->bound, deadline))
		return child_fail(c, s, "the puller was not bound");
	sock = nn_socket(AF_SP, NN_PUSH);
	if (sock < 0 ||
	    nn_setsockopt(sock, NN_SOL_SOCKET, NN_SNDTIMEO, &ms, sizeof(ms)) ||
	    nn_connect(sock, c->url) < 0)
		return child_fail(c, s, "nanomsg: %s", nn_strerror(nn_errno()));
	if (child_go(c, &deadline) < 0) {
		nn_close(sock);
		return child_fail(c, s, "no start");
	}
	for (i = 0; i < n; i++) {
		if (i % 64 == 0 && now_ns() >= deadline)
			break;
		if (nn_send(sock, msg, len, 0) < 0) {
			err = nn_errno();
			break;
		}
	}
	s->done = i;
	s->end_ns = now_ns();
	atomic_store(&s->finished, 1);
	/* nanomsg has no linger on ipc://: a close could drop the last. */
	wait_flag(c, &c->sh->release, deadline + GRACE_MS * MSEC);
	nn_close(sock);
	if (err != 0)
		return child_fail(c, s, "nn_send: %s", nn_strerror(err));
	return 0;
}

/*
 * Forks the run's producers. The parent holds no nanomsg socket and no
 * tally handle here: nanomsg's threads do not survive fork().
 */
static int fork_producers(struct cmp *c, producer_fn fn)
{
	pid_t pid;

	memset(c->sh, 0, sizeof(*c->sh));
	memset(c->kids, 0, sizeof(c->kids));
	fflush(NULL);
	for (unsigned p = 0; p < c->n; p++) {
		pid = fork();
		if (pid == 0) {
			signal(SIGINT, SIG_DFL);
			signal(SIGTERM, SIG_DFL);
			_exit(fn(c, p, &c->sh->slot[p]));
		}
		if (pid < 0) {
			fprintf(stderr,
				"tally-bench: fork of producer %u: %s\n", p,
				strerror(errno));
			atomic_store(&c->sh->go_ns, -1);
			return -EAGAIN;
		}
		c->kids[p] = pid;
	}
	return 0;
}

/* Starts every producer at once, when all have connected. */
static int start_producers(struct cmp *c)
{
	int64_t limit = now_ns() + READY_MS * MSEC;

	while (atomic_load(&c->sh->ready) < c->n) {
		if (interrupted || now_ns() > limit) {
			fprintf(stderr,
				"tally-bench: %u of %u producers ready "
				"after %d ms\n",
				atomic_load(&c->sh->ready), c->n, READY_MS);
			atomic_store(&c->sh->go_ns, -1);
			return -ETIMEDOUT;
		}
		nap_us(200);
	}
	atomic_store(&c->sh->go_ns, now_ns());
	return 0;
}

/* Past this instant nobody is waited for any more. */
static int64_t run_limit(const struct cmp *c)
{
	long long go = atomic_load(&c->sh->go_ns);

	if (go <= 0)
		return now_ns() + READY_MS * MSEC;
	return go + (int64_t)c->seconds * NSEC + GRACE_MS * MSEC;
}

/* Reports how producer p ended; 1 if it failed. */
static unsigned producer_ended(const struct cmp *c, unsigned p, int status)
{
	const char *error = c->sh->slot[p].error;

	if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !error[0])
		return 0;
	fprintf(stderr, "tally-bench: producer %u (pid %ld) %s %d%s%s\n", p,
		(long)c->kids[p],
		WIFSIGNALED(status) ? "killed by signal" : "exited with",
		WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
		error[0] ? ": " : "", error);
	return 1;
}

/* Reaps the producers, by pid; kills those still there past the limit. */
static unsigned reap_producers(struct cmp *c)
{
	int64_t limit = run_limit(c);
	unsigned left = 0, failed = 0, p;
	bool late = false;
	int status;

	for (p = 0; p < c->n; p++)
		left += c->kids[p] > 0;
	while (left > 0) {
		late = late || interrupted || now_ns() > limit;
		for (p = 0; p < c->n; p++) {
			if (c->kids[p] <= 0)
				continue;
			if (late)
				kill(c->kids[p], SIGKILL);
			if (waitpid(c->kids[p], &status, late ? 0 : WNOHANG) !=
			    c->kids[p])
				continue;
			failed += producer_ended(c, p, status);
			c->kids[p] = 0;
			left--;
		}
		if (left > 0)
			nap_us(1000);
	}
	return failed;
}

/* Forks, starts and reaps a run's producers; how many failed. */
static unsigned drive(struct cmp *c, producer_fn fn)
{
	unsigned failed = 0;

	if (fork_producers(c, fn) < 0 || start_producers(c) < 0)
		failed = 1;
	return failed + reap_producers(c);
}

/* Calls done, and calls/s from the start to the last one's end. */
static void collect(const struct cmp *c, struct result *r, unsigned failed)
{
	long long go = atomic_load(&c->sh->go_ns);
	int64_t end = 0;

	r->ran = true;
	r->calls = 0;
	for (unsigned p = 0; p < c->n; p++) {
		r->calls += c->sh->slot[p].done;
		if (c->sh->slot[p].end_ns > end)
			end = c->sh->slot[p].end_ns;
	}
	r->ok = failed == 0 && go > 0 && end > go;
	r->secs = r->ok ? (double)(end - go) / NSEC : 0;
	r->rate = r->ok ? (double)r->calls / r->secs : 0;
	r->capped = r->calls < c->calls;
}

/* ---- checking the totals ---- */

typedef int (*totals_fn)(const struct cmp *c, void *h, const char *session,
			 uint64_t *got, size_t *unknown);

/* Reads one session's snapshot into got[l * 2 + 0/1]. */
static int tally_totals(const struct cmp *c, void *h, const char *session,
			uint64_t *got, size_t *unknown)
{
	json_t *root, *entry, *usage;
	const char *key;
	char *text = NULL;
	unsigned l;
	char tail;
	int err;

	err = tally_session_json(h, session, &text);
	if (err < 0)
		return err;
	root = json_loads(text, 0, NULL);
	free(text);
	if (!json_is_object(root)) {
		json_decref(root);
		return -EBADMSG;
	}
	json_object_foreach(root, key, entry)
	{
		if (sscanf(key, "llm-%u%c", &l, &tail) != 1 || l >= c->llms) {
			++*unknown;
			continue;
		}
		usage = json_object_get(entry, "usage");
		got[l * 2] = (uint64_t)json_integer_value(
			json_object_get(usage, "inputTokens"));
		got[l * 2 + 1] = (uint64_t)json_integer_value(
			json_object_get(usage, "outputTokens"));
	}
	json_decref(root);
	return 0;
}

/* Stores one HGETALL field, "llm-L:in" or "llm-L:out", into got. */
static void take_field(const struct cmp *c, const char *field,
		       const char *value, uint64_t *got, size_t *unknown)
{
	char dir[4] = "";
	unsigned l;
	int end = 0;

	if (sscanf(field, "llm-%u:%3[a-z]%n", &l, dir, &end) != 2 ||
	    field[end] != '\0' || l >= c->llms ||
	    (strcmp(dir, "in") != 0 && strcmp(dir, "out") != 0)) {
		++*unknown;
		return;
	}
	got[l * 2 + (dir[0] == 'o')] = strtoull(value, NULL, 10);
}

/* Reads one session's hash with HGETALL into got[l * 2 + 0/1]. */
static int redis_totals(const struct cmp *c, void *h, const char *session,
			uint64_t *got, size_t *unknown)
{
	char key[96], field[64], value[32];
	const char *argv[2] = {"HGETALL", key};
	struct resp *r = h;
	long long count, i;
	int err;

	snprintf(key, sizeof(key), "session:%s", session);
	err = resp_append(r, 2, argv);
	if (err == 0)
		err = resp_flush(r);
	if (err == 0)
		err = resp_array(r, &count);
	for (i = 0; err == 0 && i + 1 < count; i += 2) {
		err = resp_bulk(r, field, sizeof(field));
		if (err == 0)
			err = resp_bulk(r, value, sizeof(value));
		if (err == 0)
			take_field(c, field, value, got, unknown);
	}
	return err;
}

static bool same_totals(const struct cmp *c, const char *who,
			const char *session, const uint64_t *e,
			const uint64_t *got, size_t unknown)
{
	for (unsigned l = 0; l < c->llms; l++) {
		if (got[l * 2] == e[l * 2] && got[l * 2 + 1] == e[l * 2 + 1])
			continue;
		fprintf(stderr,
			"tally-bench: %s: %s llm-%u: expected %" PRIu64
			"/%" PRIu64 " tokens, found %" PRIu64 "/%" PRIu64 "\n",
			who, session, l, e[l * 2], e[l * 2 + 1], got[l * 2],
			got[l * 2 + 1]);
		return false;
	}
	if (unknown > 0)
		fprintf(stderr,
			"tally-bench: %s: %s has %zu entries the run "
			"did not write\n",
			who, session, unknown);
	return unknown == 0;
}

/* Compares the sampled sessions with the calls the producers made. */
static int verify_sampled(const struct cmp *c, const char *who, totals_fn fn,
			  void *h, char *check, size_t len)
{
	uint64_t *e = expected_totals(c), got[LLMS_MAX * 2];
	unsigned j, bad = 0, n = sampled(c);
	char session[64];
	size_t unknown;
	int err = e == NULL ? -ENOMEM : 0;

	for (j = 0; err == 0 && j < n; j++) {
		session_id(c, j * sample_stride(c), session, sizeof(session));
		memset(got, 0, sizeof(got));
		unknown = 0;
		err = fn(c, h, session, got, &unknown);
		if (err == 0 &&
		    !same_totals(c, who, session, e + (size_t)j * c->llms * 2,
				 got, unknown))
			bad++;
	}
	free(e);
	if (err < 0)
		snprintf(check, len, "totals not read: %s", strerror(-err));
	else if (bad > 0)
		snprintf(check, len, "%u of %u sessions WRONG", bad, n);
	else
		snprintf(check, len, "totals of %u sessions exact", n);
	return err < 0 ? err : bad > 0 ? -EDOM : 0;
}

/* ---- samples ---- */

struct samples {
	uint64_t *v;
	size_t n, cap;
};

static void sample(struct samples *s, int64_t t0)
{
	if (s->n < s->cap)
		s->v[s->n++] = (uint64_t)(now_ns() - t0);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentiles; frees the samples. */
static void summarize(struct samples *s, struct latency *l)
{
	size_t r50 = (s->n * 50 + 99) / 100, r99 = (s->n * 99 + 99) / 100;

	l->n = s->n;
	if (s->n > 0) {
		qsort(s->v, s->n, sizeof(*s->v), cmp_u64);
		l->p50_us = (double)s->v[r50 ? r50 - 1 : 0] / 1e3;
		l->p99_us = (double)s->v[r99 ? r99 - 1 : 0] / 1e3;
	}
	free(s->v);
	s->v = NULL;
}

static int samples_init(struct samples *s, size_t cap)
{
	s->n = 0;
	s->cap = cap;
	s->v = malloc(cap * sizeof(*s->v));
	return s->v ? 0 : -ENOMEM;
}

/* ---- the runs ---- */

/* The tally_record samples the producers took during the load. */
static void record_latency(const struct cmp *c, struct result *r)
{
	struct samples all;
	struct latency l = {0};

	if (samples_init(&all, (size_t)c->n * REC_SAMPLES) < 0)
		return;
	for (unsigned p = 0; p < c->n; p++) {
		memcpy(all.v + all.n, c->sh->rec[p],
		       c->sh->slot[p].nrec * sizeof(*all.v));
		all.n += c->sh->slot[p].nrec;
	}
	summarize(&all, &l);
	r->rec_p50_us = l.p50_us;
	r->rec_p99_us = l.p99_us;
}

static void report_run(struct cmp *c, enum sys s, const struct result *r,
		       const char *check)
{
	char rate[32];

	printf("[%2u/%u] N=%-2u K=%-7u %-30s ", c->runs_total ? c->runs : 0,
	       c->runs_total, c->n, c->k, sys_names[s]);
	if (r->ok)
		printf("%8" PRIu64 " calls in %5.2f s%s: %s calls/s; %s\n",
		       r->calls, r->secs, r->capped ? " (time up)" : "",
		       grouped(r->rate, rate, sizeof(rate)), check);
	else
		printf("FAILED; %s\n", check);
	fflush(stdout);
	if (!r->ok)
		c->failures++;
}

static int count_entry(const struct tally_entry *e, void *ctx)
{
	(void)e;
	++*(uint64_t *)ctx;
	return 0;
}

/* tallyd's ledger_bytes counter, or 0. */
static uint64_t ledger_bytes(struct tally *t)
{
	char *json = NULL;
	uint64_t n = 0;
	json_t *root;

	if (tally_stats_json(t, 2000, &json) < 0)
		return 0;
	root = json_loads(json, 0, NULL);
	free(json);
	if (json_is_integer(json_object_get(root, "ledger_bytes")))
		n = (uint64_t)json_integer_value(
			json_object_get(root, "ledger_bytes"));
	json_decref(root);
	return n;
}

/* After a tally run: the ledger's size and pairs, the sampled totals. */
static int inspect_ledger(struct cmp *c, struct memory *m, bool verify,
			  char *check, size_t len)
{
	struct tally *t = NULL;
	int err;

	err = tally_open(&t, c->dir);
	if (err == 0) {
		m->ledger_bytes = ledger_bytes(t);
		err = tally_foreach_entry(t, count_entry, &m->pairs);
	}
	if (err == 0 && verify)
		err = verify_sampled(c, "tally", tally_totals, t, check, len);
	else if (err < 0)
		snprintf(check, len, "ledger not read: %s",
			 tally_strerror(err));
	tally_close(t);
	return err;
}

static void run_tally(struct cmp *c, struct result *r, struct memory *m)
{
	char check[96] = "tallyd did not start", tail[64];

	r->ran = true;
	if (make_run_dir(c, "tally") == 0 && tallyd_start(c) == 0) {
		m->rss_start_kib = rss_kib(c->tallyd_pid);
		collect(c, r, drive(c, tally_child));
		record_latency(c, r);
		m->rss_after_kib = rss_kib(c->tallyd_pid);
		snprintf(check, sizeof(check), "producers failed");
		if (inspect_ledger(c, m, r->ok, check, sizeof(check)) < 0)
			r->ok = false;
		if (stop_server(&c->tallyd_pid, "tallyd") < 0)
			r->ok = false;
		snprintf(tail, sizeof(tail), "; tally_record p50 %.1f us",
			 r->rec_p50_us);
		strncat(check, tail, sizeof(check) - strlen(check) - 1);
	}
	report_run(c, SYS_TALLY, r, check);
	remove_tree(c->dir);
}

static void run_redis(struct cmp *c, enum sys s, struct result *r,
		      struct memory *m)
{
	bool aof = s == SYS_AOF_1 || s == SYS_AOF_P;
	char check[96] = "redis-server did not start";
	struct resp *h = NULL;

	r->ran = true;
	c->batch = s == SYS_REDIS_P || s == SYS_AOF_P ? c->pipeline / 2 : 1;
	if (make_run_dir(c, "redis") == 0 && redis_start(c, aof) == 0) {
		collect(c, r, drive(c, redis_child));
		if (s == SYS_REDIS_P)
			m->redis_rss_kib = rss_kib(c->redis_pid);
		snprintf(check, sizeof(check), "producers failed");
		/* A killed producer's count is not exact: nothing to check. */
		if (r->ok && (resp_open(&h, c->redis_port) < 0 ||
			      verify_sampled(c, "Redis", redis_totals, h, check,
					     sizeof(check)) < 0))
			r->ok = false;
		resp_close(h);
		if (stop_server(&c->redis_pid, "redis-server") < 0)
			r->ok = false;
	}
	report_run(c, s, r, check);
	remove_tree(c->dir);
}

/* True once every producer has sent its last and got all arrived. */
static bool all_sent(const struct cmp *c, uint64_t got)
{
	uint64_t sent = 0;

	for (unsigned p = 0; p < c->n; p++) {
		if (!atomic_load(&c->sh->slot[p].finished))
			return false;
		sent += c->sh->slot[p].done;
	}
	return got >= sent;
}

/* Only counts: the ceiling is the transport, nothing else. */
static void pull(const struct cmp *c, int sock, uint64_t *got, int64_t *last)
{
	int64_t limit = run_limit(c);
	char buf[MSG_MAX];
	int err;

	while (!interrupted) {
		if (nn_recv(sock, buf, sizeof(buf), 0) >= 0) {
			++*got;
			*last = now_ns();
			if (*got % 65536 == 0 && *last > limit)
				break;
			continue;
		}
		err = nn_errno();
		if (err != ETIMEDOUT && err != EAGAIN && err != EINTR)
			break;
		if (all_sent(c, *got) || now_ns() > limit)
			break;
	}
}

/* Binds the puller where the producers will connect. */
static int bind_puller(struct cmp *c, int *sock)
{
	int ms = 100, rc = -1;

	*sock = nn_socket(AF_SP, NN_PULL);
	if (*sock >= 0)
		rc = nn_setsockopt(*sock, NN_SOL_SOCKET, NN_RCVTIMEO, &ms,
				   sizeof(ms));
	if (rc == 0)
		rc = nn_bind(*sock, c->url);
	if (rc >= 0) {
		atomic_store(&c->sh->bound, 1);
		return 0;
	}
	fprintf(stderr, "tally-bench: nanomsg puller on %s: %s\n", c->url,
		nn_strerror(nn_errno()));
	atomic_store(&c->sh->go_ns, -1);
	return -EIO;
}

static int ceiling_url(struct cmp *c)
{
	int n;

	n = snprintf(c->url, sizeof(c->url), "ipc://%s/ceiling.ipc", c->dir);
	return n > 0 && (size_t)n < sizeof(c->url) ? 0 : -ENAMETOOLONG;
}

static void run_ceiling(struct cmp *c, struct result *r)
{
	char check[96] = "no puller";
	uint64_t got = 0, sent;
	int64_t last = 0;
	unsigned failed = 1;
	int sock = -1;

	r->ran = true;
	if (make_run_dir(c, "nn") == 0 && ceiling_url(c) == 0) {
		failed = fork_producers(c, nn_child) < 0;
		if (!failed)
			failed = bind_puller(c, &sock) < 0 ||
				 start_producers(c) < 0;
		if (!failed)
			pull(c, sock, &got, &last);
		atomic_store(&c->sh->release, 1);
		failed += reap_producers(c);
	}
	if (sock >= 0)
		nn_close(sock);
	collect(c, r, failed);
	sent = r->calls;
	r->calls = got;
	r->ok = r->ok && got == sent && last > atomic_load(&c->sh->go_ns);
	if (r->ok) {
		r->secs = (double)(last - atomic_load(&c->sh->go_ns)) / NSEC;
		r->rate = (double)got / r->secs;
	}
	snprintf(check, sizeof(check), "%" PRIu64 " of %" PRIu64 " received",
		 got, sent);
	report_run(c, SYS_NN, r, check);
	remove_tree(c->dir);
}

static void run_config(struct cmp *c, unsigned ki, unsigned ni)
{
	struct result *res = c->res[ki][ni];
	struct memory *m = &c->mem[ki][ni];

	c->k = c->sessions[ki];
	c->n = c->producers[ni];
	for (int s = 0; s < SYSTEMS && !interrupted; s++) {
		if (s == SYS_TALLY)
			run_tally(c, &res[s], m);
		else if (s == SYS_NN)
			run_ceiling(c, &res[s]);
		else
			run_redis(c, (enum sys)s, &res[s], m);
	}
}

/* ---- latency, one client at light load ---- */

/* The session whose snapshot is timed: SNAP_LLMS LLMs, committed. */
static int fill_snapshot_session(struct cmp *c, struct tally *t)
{
	struct tally_usage u;
	struct names names;
	struct call call;
	int err = 0;

	for (uint32_t l = 0; l < SNAP_LLMS && err == 0; l++) {
		call = (struct call){c->k, l, 100 + l, 20 + l};
		fill_usage(c, &call, &names, &u);
		err = tally_record(t, &u);
	}
	return err == 0 ? tally_sync(t, GRACE_MS) : err;
}

/* tally_record then tally_sync, one usage a round, on its own session. */
static int time_record_sync(struct cmp *c, struct tally *t, struct samples *rec,
			    struct samples *syn)
{
	int64_t deadline = now_ns() + (int64_t)c->seconds * NSEC, t0;
	struct call call = {c->k + 1, 0, 1, 1};
	struct tally_usage u;
	struct names names;
	int err = 0;

	fill_usage(c, &call, &names, &u);
	for (int i = 0; i < LAT_SYNC_ROUNDS && err == 0; i++) {
		if (now_ns() > deadline || interrupted)
			break;
		t0 = now_ns();
		err = tally_record(t, &u);
		sample(rec, t0);
		if (err < 0)
			break;
		t0 = now_ns();
		err = tally_sync(t, GRACE_MS);
		sample(syn, t0);
	}
	return err;
}

static int time_snapshots(struct cmp *c, struct tally *t, struct samples *snap)
{
	int64_t deadline = now_ns() + (int64_t)c->seconds * NSEC, t0;
	char session[64], *json = NULL;
	int err;

	session_id(c, c->k, session, sizeof(session));
	err = tally_session_json(t, session, &json);
	/* Honest only if the snapshot has the 5 LLMs it should. */
	if (err == 0 && strstr(json, "\"llm-4\"") == NULL)
		err = -EBADMSG;
	free(json);
	for (int i = 0; i < LAT_FAST_ROUNDS && err == 0; i++) {
		if (now_ns() > deadline || interrupted)
			break;
		t0 = now_ns();
		err = tally_session_json(t, session, &json);
		sample(snap, t0);
		free(json);
	}
	return err;
}

static int lat_tally(struct cmp *c)
{
	struct samples rec = {0}, syn = {0}, snap = {0};
	struct tally *t = NULL;
	int err;

	err = samples_init(&rec, LAT_SYNC_ROUNDS);
	if (err == 0)
		err = samples_init(&syn, LAT_SYNC_ROUNDS);
	if (err == 0)
		err = samples_init(&snap, LAT_FAST_ROUNDS);
	if (err == 0)
		err = tally_open(&t, c->dir);
	if (err == 0)
		err = fill_snapshot_session(c, t);
	if (err == 0)
		err = time_record_sync(c, t, &rec, &syn);
	if (err == 0)
		err = time_snapshots(c, t, &snap);
	tally_close(t);
	if (err < 0)
		fprintf(stderr, "tally-bench: latency of tally: %s\n",
			tally_strerror(err));
	summarize(&rec, &c->lat[LAT_RECORD]);
	summarize(&syn, &c->lat[LAT_SYNC]);
	summarize(&snap, &c->lat[LAT_SNAP]);
	return err;
}

/* HINCRBY round trips, one command each. */
static int time_hincrby(struct cmp *c, struct resp *r, int rounds,
			struct samples *s)
{
	int64_t deadline = now_ns() + (int64_t)c->seconds * NSEC, t0;
	char key[96];
	const char *argv[4] = {"HINCRBY", key, "llm-0:in", "1"};
	long long v;
	int err = 0;

	redis_key(c, c->k + 1, key, sizeof(key));
	for (int i = 0; i < rounds && err == 0; i++) {
		if (now_ns() > deadline || interrupted)
			break;
		t0 = now_ns();
		err = resp_append(r, 4, argv);
		if (err == 0)
			err = resp_flush(r);
		if (err == 0)
			err = resp_int(r, &v);
		sample(s, t0);
	}
	return err;
}

/* HGETALL of a hash of 5 LLMs x in/out, reading all 20 bulk strings. */
static int time_hgetall(struct cmp *c, struct resp *r, struct samples *s)
{
	int64_t deadline = now_ns() + (int64_t)c->seconds * NSEC, t0;
	uint64_t got[LLMS_MAX * 2] = {0};
	char session[64];
	size_t unknown = 0;
	struct call call;
	long long v;
	int err = 0;

	for (uint32_t l = 0; l < SNAP_LLMS && err == 0; l++) {
		call = (struct call){c->k, l, 100 + l, 20 + l};
		err = append_call(c, r, &call);
	}
	if (err == 0)
		err = resp_flush(r);
	for (int i = 0; i < 2 * SNAP_LLMS && err == 0; i++)
		err = resp_int(r, &v);
	session_id(c, c->k, session, sizeof(session));
	for (int i = 0; i < LAT_FAST_ROUNDS && err == 0; i++) {
		if (now_ns() > deadline || interrupted)
			break;
		t0 = now_ns();
		err = redis_totals(c, r, session, got, &unknown);
		sample(s, t0);
	}
	/* Honest only if the hash it read has the 10 fields it should. */
	if (err == 0 &&
	    (unknown > 0 || got[2 * SNAP_LLMS - 1] != 20 + SNAP_LLMS - 1))
		err = -EBADMSG;
	return err;
}

static int lat_redis(struct cmp *c, bool aof)
{
	struct samples inc = {0}, get = {0};
	int rounds = aof ? LAT_SYNC_ROUNDS : LAT_FAST_ROUNDS;
	struct resp *r = NULL;
	int err;

	err = samples_init(&inc, (size_t)rounds);
	if (err == 0 && !aof)
		err = samples_init(&get, LAT_FAST_ROUNDS);
	if (err == 0)
		err = resp_open(&r, c->redis_port);
	if (err == 0)
		err = time_hincrby(c, r, rounds, &inc);
	if (err == 0 && !aof)
		err = time_hgetall(c, r, &get);
	if (err < 0)
		fprintf(stderr, "tally-bench: latency of Redis: %s %s\n",
			strerror(-err), r ? r->line : "");
	resp_close(r);
	summarize(&inc, &c->lat[aof ? LAT_HINCRBY_AOF : LAT_HINCRBY]);
	if (!aof)
		summarize(&get, &c->lat[LAT_HGETALL]);
	return err;
}

static void run_latency(struct cmp *c)
{
	int err = -EIO;

	/* Past every ingest run's sessions, so names never collide. */
	c->k = c->sessions[c->nsessions - 1];
	c->llms = c->llms < SNAP_LLMS ? SNAP_LLMS : c->llms;
	if (make_run_dir(c, "lat-tally") == 0 && tallyd_start(c) == 0) {
		err = lat_tally(c);
		if (stop_server(&c->tallyd_pid, "tallyd") < 0)
			err = -ECHILD;
	}
	remove_tree(c->dir);
	for (int aof = 0; aof < 2 && !interrupted; aof++) {
		if (make_run_dir(c, "lat-redis") == 0 &&
		    redis_start(c, aof) == 0) {
			if (lat_redis(c, aof) < 0)
				err = -EIO;
			if (stop_server(&c->redis_pid, "redis-server") < 0)
				err = -ECHILD;
		} else {
			err = -EIO;
		}
		remove_tree(c->dir);
	}
	if (err < 0)
		c->failures++;
}

/* ---- the tables ---- */

static void print_setup(const struct cmp *c)
{
	char calls[32];

	printf("machine: %ld CPUs online; tallyd %s; redis-server %s\n",
	       sysconf(_SC_NPROCESSORS_ONLN), c->tallyd, c->redis);
	printf("workload: a call is one LLM call's usage (input 1-7, output "
	       "2-6 tokens); call i\n"
	       "  of producer p picks its session and LLM uniformly at random "
	       "(splitmix64 of\n"
	       "  p and i) over K sessions x %u LLMs: the same calls for every "
	       "system. A run\n"
	       "  makes at most %s calls, split over its N producers, and "
	       "stops issuing\n"
	       "  them after %u s. Every run has a fresh server in a fresh "
	       "directory.\n",
	       c->llms, grouped((double)c->calls, calls, sizeof(calls)),
	       c->seconds);
	printf("tally:   tallyd --dir DIR -q (fsync per commit); each producer "
	       "tally_open,\n"
	       "         tally_record per call, tally_sync; rate = calls / "
	       "time to the last sync\n");
	printf("Redis:   redis-server --port PORT --bind 127.0.0.1 --save '' "
	       "--appendonly no\n"
	       "         --dir DIR --daemonize no (AOF: --appendonly yes "
	       "--appendfsync always);\n"
	       "         per call HINCRBY session:S llm-L:in N and HINCRBY "
	       "session:S llm-L:out M;\n"
	       "         pipelined: %u commands (%u calls) a round trip\n",
	       c->pipeline, c->pipeline / 2);
	printf("nanomsg: N PUSH producers -> ipc:// -> one PULL in tally-bench "
	       "that only counts;\n"
	       "         each message is the packed batch of one usage, %zu "
	       "bytes\n\n",
	       c->msg_bytes);
	fflush(stdout);
}

static void print_rate(const struct result *r)
{
	char buf[32], cell[40];

	if (!r->ran)
		snprintf(cell, sizeof(cell), "-");
	else if (!r->ok)
		snprintf(cell, sizeof(cell), "failed");
	else
		snprintf(cell, sizeof(cell), "%s%s",
			 grouped(r->rate, buf, sizeof(buf)),
			 r->capped ? "*" : "");
	printf(" %11s", cell);
}

static void print_ratio(const struct result *a, const struct result *b)
{
	if (a->ok && b->ok && b->rate > 0)
		printf(" %9.2fx", a->rate / b->rate);
	else
		printf(" %10s", "-");
}

static void print_ingest(const struct cmp *c)
{
	static const int order[] = {SYS_TALLY, SYS_REDIS_1, SYS_REDIS_P,
				    SYS_AOF_1, SYS_AOF_P,   SYS_NN};
	const struct result *r;

	printf("\nIngest, calls per second (tally: committed usages/s, "
	       "durable; Redis: 2 HINCRBY\na call; nanomsg: messages/s). "
	       "* = stopped by --seconds before all calls.\n");
	printf("%3s %7s %11s %11s %11s %11s %11s %11s\n", "N", "K", "tally",
	       "Redis", "Redis", "Redis AOF", "Redis AOF", "nanomsg");
	printf("%3s %7s %11s %11s %11s %11s %11s %11s\n", "", "sessions",
	       "durable", "unpipelined", "pipelined", "unpipelined",
	       "pipelined", "ceiling");
	for (unsigned ki = 0; ki < c->nsessions; ki++) {
		for (unsigned ni = 0; ni < c->nproducers; ni++) {
			r = c->res[ki][ni];
			printf("%3u %7u", c->producers[ni], c->sessions[ki]);
			for (size_t s = 0; s < sizeof(order) / sizeof(*order);
			     s++)
				print_rate(&r[order[s]]);
			putchar('\n');
		}
	}
}

static void print_ratios(const struct cmp *c)
{
	const struct result *r;

	printf("\nRatios of calls/s, tally / other (same N, same K):\n");
	printf("%3s %7s %10s %10s %10s %10s %10s\n", "N", "K", "Redis", "Redis",
	       "Redis AOF", "Redis AOF", "nanomsg");
	printf("%3s %7s %10s %10s %10s %10s %10s\n", "", "sessions",
	       "pipelined", "unpipel.", "pipelined", "unpipel.", "ceiling");
	for (unsigned ki = 0; ki < c->nsessions; ki++) {
		for (unsigned ni = 0; ni < c->nproducers; ni++) {
			r = c->res[ki][ni];
			printf("%3u %7u", c->producers[ni], c->sessions[ki]);
			print_ratio(&r[SYS_TALLY], &r[SYS_REDIS_P]);
			print_ratio(&r[SYS_TALLY], &r[SYS_REDIS_1]);
			print_ratio(&r[SYS_TALLY], &r[SYS_AOF_P]);
			print_ratio(&r[SYS_TALLY], &r[SYS_AOF_1]);
			print_ratio(&r[SYS_TALLY], &r[SYS_NN]);
			putchar('\n');
		}
	}
}

static void print_memory(const struct cmp *c)
{
	const struct memory *m;

	printf("\nMemory: tallyd VmRSS at its start and after its ingest run; "
	       "the ledger's\nused bytes (tallyd's ledger_bytes) per (session, "
	       "LLM) pair; Redis VmRSS after\nits pipelined run without "
	       "persistence, for scale.\n");
	printf("%3s %7s %8s %11s %11s %12s %10s %11s\n", "N", "K", "pairs",
	       "tallyd RSS", "tallyd RSS", "ledger", "ledger", "Redis RSS");
	printf("%3s %7s %8s %11s %11s %12s %10s %11s\n", "", "sessions", "",
	       "start, KiB", "after, KiB", "bytes", "bytes/pair", "after, KiB");
	for (unsigned ki = 0; ki < c->nsessions; ki++) {
		for (unsigned ni = 0; ni < c->nproducers; ni++) {
			m = &c->mem[ki][ni];
			printf("%3u %7u %8" PRIu64 " %11ld %11ld %12" PRIu64
			       " %10.0f %11ld\n",
			       c->producers[ni], c->sessions[ki], m->pairs,
			       m->rss_start_kib, m->rss_after_kib,
			       m->ledger_bytes,
			       m->pairs ? (double)m->ledger_bytes / m->pairs
					: 0.0,
			       m->redis_rss_kib);
		}
	}
}

static void print_record_load(const struct cmp *c)
{
	const struct result *r;

	printf("\ntally_record during the tally ingest runs (up to %d timed "
	       "calls a producer),\nmicroseconds:\n",
	       REC_SAMPLES);
	printf("%3s %7s %9s %9s\n", "N", "K", "p50", "p99");
	for (unsigned ki = 0; ki < c->nsessions; ki++) {
		for (unsigned ni = 0; ni < c->nproducers; ni++) {
			r = &c->res[ki][ni][SYS_TALLY];
			printf("%3u %7u %9.1f %9.1f\n", c->producers[ni],
			       c->sessions[ki], r->rec_p50_us, r->rec_p99_us);
		}
	}
}

static void print_lat_ratio(const struct cmp *c, const char *what, enum lat a,
			    enum lat b)
{
	if (c->lat[a].n > 0 && c->lat[b].n > 0 && c->lat[b].p50_us > 0)
		printf("%s, medians: %.2fx\n", what,
		       c->lat[a].p50_us / c->lat[b].p50_us);
}

static void print_latency(const struct cmp *c)
{
	const struct latency *l = c->lat;

	printf("\nLatency, one client at light load, microseconds:\n");
	printf("%-42s %7s %9s %9s\n", "", "samples", "p50", "p99");
	for (int i = 0; i < LATS; i++) {
		if (l[i].n > 0)
			printf("%-42s %7zu %9.1f %9.1f\n", lat_names[i], l[i].n,
			       l[i].p50_us, l[i].p99_us);
		else
			printf("%-42s %7s %9s %9s\n", lat_names[i], "0", "-",
			       "-");
	}
	print_lat_ratio(c, "HGETALL / tally_session_json", LAT_HGETALL,
			LAT_SNAP);
	print_lat_ratio(c, "HINCRBY (no persistence) / tally_record",
			LAT_HINCRBY, LAT_RECORD);
	print_lat_ratio(c, "HINCRBY (AOF always) / tally_sync", LAT_HINCRBY_AOF,
			LAT_SYNC);
}

/* ---- main ---- */

static int setup(struct cmp *c)
{
	struct sigaction sa = {.sa_handler = on_signal};
	const char *base = getenv("TMPDIR");
	uint8_t r[6], msg[MSG_MAX];

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (find_tallyd(c) < 0) {
		fprintf(stderr, "tally-bench: cannot find tallyd; pass "
				"--tallyd PATH or set TALLYD\n");
		return -ENOENT;
	}
	if (find_redis(c) < 0) {
		fprintf(stderr, "tally-bench: cannot find redis-server; "
				"install Debian's redis-server (tools/setup "
				"does) or pass --redis-server PATH\n");
		return -ENOENT;
	}
	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
		memset(r, getpid() & 0xff, sizeof(r));
	for (size_t i = 0; i < sizeof(r); i++)
		snprintf(c->run + 2 * i, 3, "%02x", r[i]);
	c->k = 1;
	c->msg_bytes = pack_batch(c, 0, msg);
	if (base == NULL || *base == '\0')
		base = "/tmp";
	snprintf(c->top, sizeof(c->top), "%s/tally-compare.XXXXXX", base);
	if (mkdtemp(c->top) == NULL) {
		fprintf(stderr,
			"tally-bench: cannot make a directory in %s: "
			"%s\n",
			base, strerror(errno));
		c->top[0] = '\0';
		return -errno;
	}
	c->sh = mmap(NULL, sizeof(*c->sh), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (c->sh == MAP_FAILED) {
		c->sh = NULL;
		return -ENOMEM;
	}
	return 0;
}

static void teardown(struct cmp *c)
{
	if (c->sh != NULL) {
		atomic_store(&c->sh->go_ns, -1);
		reap_producers(c);
	}
	stop_server(&c->tallyd_pid, "tallyd");
	stop_server(&c->redis_pid, "redis-server");
	remove_tree(c->top);
	if (c->sh != NULL)
		munmap(c->sh, sizeof(*c->sh));
}

static int run_all(struct cmp *c)
{
	int64_t start = now_ns();

	c->runs_total = c->nsessions * c->nproducers * SYSTEMS;
	print_setup(c);
	for (unsigned ki = 0; ki < c->nsessions && !interrupted; ki++)
		for (unsigned ni = 0; ni < c->nproducers && !interrupted; ni++)
			run_config(c, ki, ni);
	c->runs_total = 0;
	if (!interrupted)
		run_latency(c);
	if (c->redis_version[0])
		printf("\nredis-server version %s\n", c->redis_version);
	print_ingest(c);
	print_ratios(c);
	print_memory(c);
	print_record_load(c);
	print_latency(c);
	printf("\nwall time %.0f s; %u failed runs%s\n",
	       (double)(now_ns() - start) / NSEC, c->failures,
	       interrupted ? "; INTERRUPTED" : "");
	return c->failures || interrupted ? RC_FAIL : RC_OK;
}

int bench_compare(int argc, char **argv)
{
	struct cmp *c = calloc(1, sizeof(*c));
	int rc;

	if (c == NULL)
		return RC_FAIL;
	*c = (struct cmp){
		.producers = {1, 8},
		.nproducers = 2,
		.sessions = {1000, 10000},
		.nsessions = 2,
		.llms = 3,
		.calls = 1000000,
		.seconds = 5,
		.pipeline = 64,
	};
	rc = parse_options(c, argc, argv);
	if (rc == RC_GO_ON) {
		fputs("command: ", stdout);
		bench_print_command(argc, argv);
		rc = setup(c) < 0 ? RC_FAIL : run_all(c);
		teardown(c);
	}
	free(c);
	if (fflush(stdout) != 0)
		rc = RC_FAIL;
	return rc;
}
