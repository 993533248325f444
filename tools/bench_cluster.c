/*
 * bench_cluster.c - tally-bench --cluster: what several hosts cost.
 *
 * In one run, on loopback only: the same workload is recorded into a tallyd
 * of one host and into a tallyd clustered through NATS JetStream, and the
 * two ingest rates are compared as a ratio. Then the clustered host's
 * usages are waited for on a second clustered tallyd (the catch-up), and
 * single usages are timed from tally_record on one host to their showing
 * in the other host's snapshot (the convergence lag, p50 and p99). Every
 * server is started here, on ports and directories of its own, and stopped
 * by its pid.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_cluster.h"
#include "bench_util.h"
#include "tally.h"

#define NODES_MAX 3
#define WAIT_READY_MS 10000
#define WAIT_WORKERS_MS 300000
#define CATCH_UP_MS 120000
#define LAG_WAIT_MS 10000

struct cl {
	unsigned workers;
	unsigned records;
	unsigned sessions;
	unsigned llms;
	unsigned samples;
	unsigned nodes;
	const char *tallyd_arg;
	const char *nats_arg;
	char tallyd[4096];
	char nats[4096];
	char run[256];
	char urls[256];
	pid_t nats_pid[NODES_MAX];
	pid_t host[2];
	pid_t single;
	char tag[32];
};

static const char usage_text[] =
	"Usage: tally-bench --cluster [--workers N] [--records M] [--sessions K]\n"
	"                   [--llms L] [--samples S] [--nodes 1|3]\n"
	"                   [--tallyd PATH] [--nats-server PATH]\n"
	"\n"
	"Measure what clustering through NATS JetStream costs, in one run on\n"
	"loopback: N workers record M usages each into a single-host tallyd,\n"
	"then into a clustered one (the ingest ratio); a second clustered\n"
	"tallyd must then hold the same totals (the catch-up time, checked\n"
	"exactly); and S single usages are timed from tally_record on one host\n"
	"to their showing in the other's snapshot (the convergence lag).\n"
	"\n"
	"  --workers N       worker processes (4)\n"
	"  --records M       usages each worker records (20000)\n"
	"  --sessions K      sessions (1000)\n"
	"  --llms L          LLMs per session (3)\n"
	"  --samples S       convergence lag samples (200)\n"
	"  --nodes 1|3       NATS servers, and stream replicas (1)\n"
	"  --tallyd PATH     as for the other modes\n"
	"  --nats-server PATH  default: nats-server on $PATH\n"
	"\n"
	"The link module is $TALLYD_CLUSTER_MODULE, else tally-cluster.so\n"
	"beside the tallyd used.\n";

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void nap_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};

	nanosleep(&ts, NULL);
}

/* A loopback port free just now: bound to 0, read back, closed. */
static int free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (fd < 0)
		return -1;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static pid_t spawn(char *const argv[], const char *log)
{
	pid_t pid = fork();

	if (pid == 0) {
		FILE *f = freopen(log, "w", stderr);

		if (f != NULL)
			dup2(fileno(f), 1);
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

/* SIGTERM, then SIGKILL after 5 s; always reaped. */
static void stop(pid_t *pid)
{
	int status;

	if (*pid <= 0)
		return;
	kill(*pid, SIGTERM);
	for (int i = 0; i < 500; i++) {
		if (waitpid(*pid, &status, WNOHANG) == *pid) {
			*pid = 0;
			return;
		}
		nap_us(10000);
	}
	kill(*pid, SIGKILL);
	waitpid(*pid, &status, 0);
	*pid = 0;
}

static int write_nats_conf(struct cl *c, unsigned i, const int *ports,
			   const int *routes)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/n%u.conf", c->run, i);
	f = fopen(path, "w");
	if (f == NULL)
		return -errno;
	fprintf(f,
		"server_name: n%u\nlisten: 127.0.0.1:%d\n"
		"jetstream { store_dir: \"%s/js%u\" }\n",
		i, ports[i], c->run, i);
	if (c->nodes > 1) {
		fprintf(f,
			"cluster { name: bench\n listen: 127.0.0.1:%d\n"
			" routes: [",
			routes[i]);
		for (unsigned j = 0; j < c->nodes; j++)
			if (j != i)
				fprintf(f, "\n  \"nats-route://127.0.0.1:%d\"",
					routes[j]);
		fprintf(f, "\n ]\n}\n");
	}
	return fclose(f) == 0 ? 0 : -EIO;
}

static int start_nats(struct cl *c)
{
	int ports[NODES_MAX], routes[NODES_MAX];
	char conf[512], log[512];
	size_t n = 0;

	for (unsigned i = 0; i < c->nodes; i++) {
		ports[i] = free_port();
		routes[i] = free_port();
		if (ports[i] < 0 || routes[i] < 0)
			return -EIO;
	}
	for (unsigned i = 0; i < c->nodes; i++) {
		if (write_nats_conf(c, i, ports, routes) < 0)
			return -EIO;
		n += (size_t)snprintf(c->urls + n, sizeof(c->urls) - n,
				      "%snats://127.0.0.1:%d", i ? "," : "",
				      ports[i]);
	}
	for (unsigned i = 0; i < c->nodes; i++) {
		char *argv[] = {c->nats, "-c", conf, NULL};

		snprintf(conf, sizeof(conf), "%s/n%u.conf", c->run, i);
		snprintf(log, sizeof(log), "%s/n%u.log", c->run, i);
		c->nats_pid[i] = spawn(argv, log);
		if (c->nats_pid[i] < 0)
			return -errno;
	}
	return 0;
}

static pid_t start_tallyd(struct cl *c, const char *name, bool cluster)
{
	char dir[512], log[512], replicas[8];
	char *plain[] = {c->tallyd, "--dir", dir, NULL};
	char *clustered[] = {c->tallyd, "--dir",
			     dir,	"--cluster",
			     c->urls,	"--cluster-replicas",
			     replicas,	"--cluster-stream",
			     c->tag,	NULL};

	snprintf(dir, sizeof(dir), "%s/%s", c->run, name);
	snprintf(log, sizeof(log), "%s/%s.log", c->run, name);
	snprintf(replicas, sizeof(replicas), "%u", c->nodes);
	return spawn(cluster ? clustered : plain, log);
}

static int open_host(struct cl *c, const char *name, struct tally **t)
{
	char dir[512];

	snprintf(dir, sizeof(dir), "%s/%s", c->run, name);
	for (int i = 0; i < WAIT_READY_MS / 20; i++) {
		if (tally_open(t, dir) == 0 && tally_sync(*t, 1000) == 0)
			return 0;
		if (*t != NULL) {
			tally_close(*t);
			*t = NULL;
		}
		nap_us(20000);
	}
	fprintf(stderr,
		"tally-bench: tallyd on %s did not answer; see %s.log\n", dir,
		dir);
	return -ETIMEDOUT;
}

/* A stats counter of the daemon behind t; 0 if it cannot be read. */
static uint64_t stat_of(struct tally *t, const char *name)
{
	char *text = NULL;
	json_t *j, *v;
	uint64_t value = 0;

	if (tally_stats_json(t, 2000, &text) < 0)
		return 0;
	j = json_loads(text, 0, NULL);
	v = json_object_get(j, name);
	if (json_is_integer(v))
		value = (uint64_t)json_integer_value(v);
	json_decref(j);
	free(text);
	return value;
}

static void session_name(const struct cl *c, unsigned s, char *buf, size_t n)
{
	snprintf(buf, n, "%s-s%u", c->tag, s);
}

static int worker(const struct cl *c, const char *dir, unsigned w)
{
	char session[64], llm[16];
	struct tally_usage u = {0};
	struct tally *t;
	int rc;

	if (tally_open(&t, dir) < 0)
		return 1;
	u.session_id = session;
	u.llm_reference_id = llm;
	u.provider_type = "openAI";
	u.model_type = "gpt-4o";
	for (unsigned i = 0; i < c->records; i++) {
		unsigned k = w * c->records + i;

		session_name(c, k % c->sessions, session, sizeof(session));
		snprintf(llm, sizeof(llm), "llm-%u", k / c->sessions % c->llms);
		u.input_tokens = 100 + k % 7;
		u.output_tokens = 20 + k % 5;
		if ((rc = tally_record(t, &u)) < 0) {
			fprintf(stderr, "worker %u: %s\n", w,
				tally_strerror(rc));
			tally_close(t);
			return 1;
		}
	}
	rc = tally_sync(t, 60000);
	tally_close(t);
	return rc == 0 ? 0 : 1;
}

/* Runs the workers on host name; committed usages per second, or < 0. */
static double run_workers(const struct cl *c, const char *name)
{
	char dir[512];
	pid_t pids[1024];
	int64_t start = now_ns(), deadline;
	unsigned failed = 0, left;
	int status;

	snprintf(dir, sizeof(dir), "%s/%s", c->run, name);
	for (unsigned w = 0; w < c->workers; w++) {
		pids[w] = fork();
		if (pids[w] == 0)
			_exit(worker(c, dir, w));
	}
	deadline = start + (int64_t)WAIT_WORKERS_MS * 1000000;
	for (left = c->workers; left > 0 && now_ns() < deadline;) {
		for (unsigned w = 0; w < c->workers; w++) {
			if (pids[w] <= 0 ||
			    waitpid(pids[w], &status, WNOHANG) != pids[w])
				continue;
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
				failed++;
			pids[w] = 0;
			left--;
		}
		nap_us(1000);
	}
	for (unsigned w = 0; w < c->workers; w++)
		if (pids[w] > 0) {
			kill(pids[w], SIGKILL);
			waitpid(pids[w], &status, 0);
			failed++;
		}
	if (failed > 0) {
		fprintf(stderr, "tally-bench: %u workers failed on %s\n",
			failed, name);
		return -1;
	}
	return (double)c->workers * c->records * 1e9 /
	       (double)(now_ns() - start);
}

/* The first session whose snapshots differ on a and b; -1 for none. */
static long first_difference(const struct cl *c, struct tally *a,
			     struct tally *b, bool show)
{
	char session[64];

	for (unsigned s = 0; s < c->sessions; s++) {
		char *ja = NULL, *jb = NULL;
		bool same;

		session_name(c, s, session, sizeof(session));
		same = tally_session_json(a, session, &ja) == 0 &&
		       tally_session_json(b, session, &jb) == 0 &&
		       strcmp(ja, jb) == 0;
		if (!same && show)
			fprintf(stderr, "tally-bench: %s differs:\n%s\n%s\n",
				session, ja ? ja : "-", jb ? jb : "-");
		free(ja);
		free(jb);
		if (!same)
			return (long)s;
	}
	return -1;
}

/*
 * Waits until host b's snapshots equal a's for every session (b's
 * commits follow its receiving, so equal snapshots are the end); ms or -1.
 */
static double catch_up(const struct cl *c, struct tally *a, struct tally *b)
{
	int64_t start = now_ns();
	long from = 0;

	for (;;) {
		from = first_difference(c, a, b, false);
		if (from < 0)
			return (double)(now_ns() - start) / 1e6;
		if (now_ns() - start > (int64_t)CATCH_UP_MS * 1000000)
			break;
		nap_us(5000);
	}
	fprintf(stderr,
		"tally-bench: the second host has %" PRIu64 " of %" PRIu64
		" usages after %d s\n",
		stat_of(b, "remote_usages"), (uint64_t)c->workers * c->records,
		CATCH_UP_MS / 1000);
	first_difference(c, a, b, true);
	return -1;
}

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return a < b ? -1 : a > b;
}

/* From tally_record on a to the usage in b's snapshot, one at a time. */
static int lag(const struct cl *c, struct tally *a, struct tally *b,
	       double *p50, double *p99)
{
	double *ms = calloc(c->samples, sizeof(*ms));
	struct tally_usage u = {0};
	char session[64], *json;
	int rc = 0;

	if (ms == NULL)
		return -ENOMEM;
	u.llm_reference_id = "lag";
	u.session_id = session;
	u.input_tokens = 1;
	for (unsigned i = 0; i < c->samples && rc == 0; i++) {
		int64_t start = now_ns(), deadline;

		snprintf(session, sizeof(session), "%s-lag%u", c->tag, i);
		deadline = start + (int64_t)LAG_WAIT_MS * 1000000;
		if ((rc = tally_record(a, &u)) < 0)
			break;
		for (rc = -ETIMEDOUT; now_ns() < deadline; nap_us(100)) {
			json = NULL;
			if (tally_session_json(b, session, &json) == 0 &&
			    strstr(json, "\"inputTokens\":1") != NULL) {
				free(json);
				rc = 0;
				break;
			}
			free(json);
		}
		ms[i] = (double)(now_ns() - start) / 1e6;
		nap_us(10000);
	}
	if (rc == 0) {
		qsort(ms, c->samples, sizeof(*ms), cmp_double);
		*p50 = ms[c->samples / 2];
		*p99 = ms[(c->samples * 99) / 100 < c->samples
				  ? (c->samples * 99) / 100
				  : c->samples - 1];
	}
	free(ms);
	return rc;
}

static int parse(struct cl *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"cluster", no_argument, NULL, 'c'},
		{"workers", required_argument, NULL, 'w'},
		{"records", required_argument, NULL, 'r'},
		{"sessions", required_argument, NULL, 's'},
		{"llms", required_argument, NULL, 'l'},
		{"samples", required_argument, NULL, 'S'},
		{"nodes", required_argument, NULL, 'n'},
		{"tallyd", required_argument, NULL, 't'},
		{"nats-server", required_argument, NULL, 'N'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	unsigned *field;
	unsigned long v;
	char *end;
	int ch;

	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			continue;
		case 't':
			c->tallyd_arg = optarg;
			continue;
		case 'N':
			c->nats_arg = optarg;
			continue;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case 'w':
			field = &c->workers;
			break;
		case 'r':
			field = &c->records;
			break;
		case 's':
			field = &c->sessions;
			break;
		case 'l':
			field = &c->llms;
			break;
		case 'S':
			field = &c->samples;
			break;
		case 'n':
			field = &c->nodes;
			break;
		default:
			fputs("Try 'tally-bench --cluster --help'.\n", stderr);
			return 2;
		}
		errno = 0;
		v = strtoul(optarg, &end, 10);
		if (errno != 0 || *end != '\0' || optarg[0] == '-' || v == 0 ||
		    v > 100000000) {
			fprintf(stderr, "tally-bench: bad number '%s'\n",
				optarg);
			return 2;
		}
		*field = (unsigned)v;
	}
	if (c->workers > 1024 || (c->nodes != 1 && c->nodes != 3)) {
		fputs("tally-bench: --workers is 1 to 1024, --nodes 1 or 3\n",
		      stderr);
		return 2;
	}
	return -1;
}

static int find_tools(struct cl *c)
{
	char module[4200], *slash;

	if (bench_find_tallyd(c->tallyd_arg, c->tallyd, sizeof(c->tallyd)) <
	    0) {
		fputs("tally-bench: no tallyd found; give --tallyd\n", stderr);
		return -ENOENT;
	}
	if (c->nats_arg != NULL)
		snprintf(c->nats, sizeof(c->nats), "%s", c->nats_arg);
	else if (access("/usr/sbin/nats-server", X_OK) == 0)
		snprintf(c->nats, sizeof(c->nats), "/usr/sbin/nats-server");
	else
		snprintf(c->nats, sizeof(c->nats), "/usr/bin/nats-server");
	if (access(c->nats, X_OK) < 0) {
		fprintf(stderr,
			"tally-bench: no nats-server at %s (apt-get install "
			"nats-server, or give --nats-server)\n",
			c->nats);
		return -ENOENT;
	}
	if (getenv("TALLYD_CLUSTER_MODULE") == NULL) {
		snprintf(module, sizeof(module), "%s", c->tallyd);
		slash = strrchr(module, '/');
		if (slash != NULL) {
			snprintf(slash + 1,
				 sizeof(module) - (size_t)(slash + 1 - module),
				 "tally-cluster.so");
			if (access(module, R_OK) == 0)
				setenv("TALLYD_CLUSTER_MODULE", module, 1);
		}
	}
	return 0;
}

static void cleanup(struct cl *c)
{
	char cmd[600];

	stop(&c->single);
	stop(&c->host[0]);
	stop(&c->host[1]);
	for (unsigned i = 0; i < c->nodes; i++)
		stop(&c->nats_pid[i]);
	/* A path of our own mkdtemp, quoted: nothing else is removed. */
	snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", c->run);
	if (c->run[0] != '\0' && system(cmd) != 0)
		fprintf(stderr, "tally-bench: could not remove %s\n", c->run);
}

static int measure(struct cl *c)
{
	struct tally *a = NULL, *b = NULL, *s = NULL;
	double single, clustered, catch_ms, p50 = 0, p99 = 0;
	int rc = 1;

	c->single = start_tallyd(c, "single", false);
	if (open_host(c, "single", &s) < 0 ||
	    (single = run_workers(c, "single")) < 0)
		goto out;
	tally_close(s);
	s = NULL;
	stop(&c->single);

	if (start_nats(c) < 0)
		goto out;
	c->host[0] = start_tallyd(c, "a", true);
	c->host[1] = start_tallyd(c, "b", true);
	if (open_host(c, "a", &a) < 0 || open_host(c, "b", &b) < 0)
		goto out;
	/* Both hosts connected, the stream and consumers made. */
	for (int i = 0; stat_of(a, "cluster_state") != 2 ||
			stat_of(b, "cluster_state") != 2;
	     i++) {
		if (i == WAIT_READY_MS / 20) {
			fputs("tally-bench: the clustered tallyds did not "
			      "reach JetStream in time\n",
			      stderr);
			goto out;
		}
		nap_us(20000);
	}
	if ((clustered = run_workers(c, "a")) < 0 ||
	    (catch_ms = catch_up(c, a, b)) < 0 || lag(c, a, b, &p50, &p99) < 0)
		goto out;

	printf("usages: %u workers x %u records, %u sessions x %u LLMs; "
	       "%u NATS node%s, %u replica%s\n",
	       c->workers, c->records, c->sessions, c->llms, c->nodes,
	       c->nodes > 1 ? "s" : "", c->nodes, c->nodes > 1 ? "s" : "");
	printf("%-44s %12.0f usages/s\n", "ingest, one host", single);
	printf("%-44s %12.0f usages/s\n", "ingest, clustered", clustered);
	printf("%-44s %12.2f\n", "clustered / one host", clustered / single);
	printf("%-44s %12.1f ms (totals equal on both hosts)\n",
	       "second host caught up after the workers", catch_ms);
	printf("%-44s p50 %.2f ms  p99 %.2f ms  (%u samples)\n",
	       "convergence lag, record to remote snapshot", p50, p99,
	       c->samples);
	rc = 0;
out:
	if (s != NULL)
		tally_close(s);
	if (a != NULL)
		tally_close(a);
	if (b != NULL)
		tally_close(b);
	if (rc != 0)
		fprintf(stderr, "tally-bench: logs are in %s (kept)\n", c->run);
	else
		cleanup(c);
	if (rc != 0) {
		c->run[0] = '\0';
		cleanup(c);
	}
	return rc;
}

int bench_cluster(int argc, char **argv)
{
	struct cl c = {
		.workers = 4,
		.records = 20000,
		.sessions = 1000,
		.llms = 3,
		.samples = 200,
		.nodes = 1,
	};
	const char *tmp = getenv("TMPDIR");
	int rc;

	if ((rc = parse(&c, argc, argv)) >= 0)
		return rc;
	if (find_tools(&c) < 0)
		return 1;
	snprintf(c.run, sizeof(c.run), "%s/tally-bench-cluster.XXXXXX",
		 tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
	if (mkdtemp(c.run) == NULL) {
		fprintf(stderr, "tally-bench: mkdtemp %s: %s\n", c.run,
			strerror(errno));
		return 1;
	}
	snprintf(c.tag, sizeof(c.tag), "B%08x",
		 (unsigned)(now_ns() ^ (int64_t)getpid() << 16));
	bench_print_command(argc, argv);
	return measure(&c);
}
