/*
 * tallyd - the only writer of a tally ledger.
 *
 * Runs in the foreground and logs to stderr. Receives usage batches on a
 * PULL socket and control requests on a REP socket, both ipc:// in the
 * ledger directory, and commits what it receives to the LMDB ledger there.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nanomsg/nn.h>

#include "tally.h"
#include "tallyd.h"

#define DEFAULT_MAP_SIZE ((size_t)64 << 20)
#define DEFAULT_MAX_MESSAGE ((size_t)1 << 20)
#define DEFAULT_MAX_PENDING 262144

static const char usage_text[] =
	"Usage: tallyd [OPTION]...\n"
	"Keep the LLM token usage of conversation sessions in an LMDB ledger.\n"
	"Runs in the foreground and logs to stderr.\n"
	"\n"
	"  -d, --dir DIR          ledger directory (default: $TALLY_DIR, else\n"
	"                         /var/lib/tally for root, else\n"
	"                         ${XDG_STATE_HOME:-~/.local/state}/tally)\n"
	"  -g, --group NAME       group that may record and read (sockets 0660)\n"
	"      --map-size BYTES   starting map size; K, M, G suffixes (64M);\n"
	"                         the map grows by itself when it fills\n"
	"      --max-message BYTES  largest batch accepted (1M; at least 4K)\n"
	"      --session-ttl DURATION  delete sessions idle longer (7d); 0: never\n"
	"      --producer-ttl DURATION forget clients idle longer (30d); 0: never\n"
	"      --metrics-file PATH     write Prometheus text there every 5 s\n"
	"                         (DURATION: a number with ms, s, m, h or d)\n"
	"      --no-sync          do not fsync each commit: faster, but a power\n"
	"                         loss may lose the last commits (not a crash)\n"
	"\n"
	"Several hosts (NATS JetStream; see tallyd(8)):\n"
	"      --cluster URL[,URL]...  publish this host's usages to a JetStream\n"
	"                         stream and apply every other host's, so that\n"
	"                         each ledger holds the cluster-wide totals\n"
	"      --cluster-stream NAME   the stream (TALLY); subjects NAME.usage.>\n"
	"      --cluster-replicas N    replicas of a stream tallyd creates (3)\n"
	"      --cluster-max-age DURATION  how long the stream keeps records (7d;\n"
	"                         0: for ever); a host down longer misses what\n"
	"                         expired. With --cluster, producers are\n"
	"                         never expired (--producer-ttl is refused)\n"
	"\n"
	"  -v, --verbose          log more (repeatable)\n"
	"  -q, --quiet            log less (repeatable)\n"
	"  -h, --help             show this help and exit\n"
	"  -V, --version          show the version and exit\n"
	"\n"
	"SIGTERM or SIGINT: commit what was received, remove the sockets, exit 0.\n"
	"Exit status: 0 on a clean stop, 1 on a failure to start or run,\n"
	"2 on a usage error.\n";

enum {
	OPT_MAP_SIZE = 256,
	OPT_MAX_MESSAGE,
	OPT_NO_SYNC,
	OPT_SESSION_TTL,
	OPT_PRODUCER_TTL,
	OPT_METRICS_FILE,
	OPT_CLUSTER,
	OPT_CLUSTER_STREAM,
	OPT_CLUSTER_REPLICAS,
	OPT_CLUSTER_MAX_AGE,
};

static const struct option options[] = {
	{"dir", required_argument, NULL, 'd'},
	{"group", required_argument, NULL, 'g'},
	{"map-size", required_argument, NULL, OPT_MAP_SIZE},
	{"max-message", required_argument, NULL, OPT_MAX_MESSAGE},
	{"no-sync", no_argument, NULL, OPT_NO_SYNC},
	{"session-ttl", required_argument, NULL, OPT_SESSION_TTL},
	{"producer-ttl", required_argument, NULL, OPT_PRODUCER_TTL},
	{"metrics-file", required_argument, NULL, OPT_METRICS_FILE},
	{"cluster", required_argument, NULL, OPT_CLUSTER},
	{"cluster-stream", required_argument, NULL, OPT_CLUSTER_STREAM},
	{"cluster-replicas", required_argument, NULL, OPT_CLUSTER_REPLICAS},
	{"cluster-max-age", required_argument, NULL, OPT_CLUSTER_MAX_AGE},
	{"verbose", no_argument, NULL, 'v'},
	{"quiet", no_argument, NULL, 'q'},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, 'V'},
	{NULL, 0, NULL, 0},
};

/* Parses "64M" and the like; 0 for anything malformed or out of range. */
static size_t parse_size(const char *s)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	errno = 0;
	if (s[0] < '0' || s[0] > '9')
		return 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		return 0;
	switch (*end) {
	case 'K':
	case 'k':
		shift = 10;
		end++;
		break;
	case 'M':
	case 'm':
		shift = 20;
		end++;
		break;
	case 'G':
	case 'g':
		shift = 30;
		end++;
		break;
	}
	if (*end != '\0' || v > (SIZE_MAX >> shift))
		return 0;
	return (size_t)(v << shift);
}

/* Parses "7d", "90s", "500ms"; UINT64_MAX for anything malformed. */
static uint64_t parse_duration(const char *s)
{
	static const struct {
		const char *unit;
		uint64_t ms;
	} units[] = {{"ms", 1},
		     {"s", 1000},
		     {"m", 60000},
		     {"h", 3600000},
		     {"d", 86400000}};
	unsigned long long v;
	char *end;

	if (s[0] < '0' || s[0] > '9')
		return UINT64_MAX;
	/* A bare number is refused: 7 meant as days must not be seconds. */
	if (strcmp(s, "0") == 0)
		return 0;
	errno = 0;
	v = strtoull(s, &end, 10);
	for (size_t i = 0; errno == 0 && i < sizeof(units) / sizeof(units[0]);
	     i++)
		if (strcmp(end, units[i].unit) == 0 &&
		    v <= UINT64_MAX / 1000000 / units[i].ms)
			return v * units[i].ms;
	return UINT64_MAX;
}

/* A DURATION option's value; -1 (go on) or 2 (a usage error). */
static int duration_arg(uint64_t *ms, const char *arg)
{
	*ms = parse_duration(arg);
	if (*ms != UINT64_MAX)
		return -1;
	fprintf(stderr,
		"tallyd: a duration is a number with ms, s, m, h or d "
		"(7d, 90s), not '%s'\n",
		arg);
	return 2;
}

/* JetStream stream names: kept to what is safe in a subject too. */
static bool stream_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 32)
		return false;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			 "0123456789_-") == n;
}

static int parse_cluster(struct tallyd_config *cfg, int c, const char *arg)
{
	char *end;
	long n;

	switch (c) {
	case OPT_CLUSTER:
		if (arg[0] != '\0' && strchr(arg, ' ') == NULL) {
			cfg->cluster_urls = arg;
			return -1;
		}
		fprintf(stderr,
			"tallyd: --cluster wants NATS URLs separated "
			"by commas (nats://127.0.0.1:4222), not '%s'\n",
			arg);
		return 2;
	case OPT_CLUSTER_STREAM:
		cfg->cluster_options = true;
		if (stream_name_ok(arg)) {
			cfg->cluster_stream = arg;
			return -1;
		}
		fprintf(stderr,
			"tallyd: --cluster-stream wants 1 to 32 "
			"letters, digits, '_' or '-', not '%s'\n",
			arg);
		return 2;
	case OPT_CLUSTER_REPLICAS:
		cfg->cluster_options = true;
		errno = 0;
		n = strtol(arg, &end, 10);
		if (errno == 0 && *end == '\0' && n >= 1 && n <= 5) {
			cfg->cluster_replicas = (int)n;
			return -1;
		}
		fprintf(stderr,
			"tallyd: --cluster-replicas wants 1 to 5, not '%s'\n",
			arg);
		return 2;
	case OPT_CLUSTER_MAX_AGE:
		cfg->cluster_options = true;
		return duration_arg(&cfg->cluster_max_age_ms, arg);
	}
	return 2;
}

/* The options that take a value; 2 (a usage error) or -1 (go on). */
static int parse_value(struct tallyd_config *cfg, int c, const char *arg)
{
	uint64_t *ttl = c == OPT_SESSION_TTL ? &cfg->session_ttl_ms
					     : &cfg->producer_ttl_ms;

	switch (c) {
	case OPT_SESSION_TTL:
	case OPT_PRODUCER_TTL:
		cfg->producer_ttl_given |= c == OPT_PRODUCER_TTL;
		return duration_arg(ttl, arg);
	case OPT_METRICS_FILE:
		cfg->metrics_file = arg;
		return -1;
	}
	return parse_cluster(cfg, c, arg);
}

/*
 * A producer's record is what makes a replayed stream record a repeat: it
 * must outlive the records. --cluster-* options without --cluster would
 * silently do nothing.
 */
static int check_cluster(struct tallyd_config *cfg)
{
	if (cfg->cluster_urls == NULL && cfg->cluster_options) {
		fputs("tallyd: --cluster-stream, --cluster-replicas and "
		      "--cluster-max-age need --cluster\n",
		      stderr);
		return 2;
	}
	if (cfg->cluster_urls != NULL && cfg->producer_ttl_given) {
		fputs("tallyd: --producer-ttl cannot be used with --cluster: "
		      "a producer's record must outlive every copy of its "
		      "usages in the stream, whose age another host may have "
		      "set, or a replay of the stream would count them again\n",
		      stderr);
		return 2;
	}
	/* Kept for good: see above. */
	if (cfg->cluster_urls != NULL)
		cfg->producer_ttl_ms = 0;
	return -1;
}

static int parse_args(struct tallyd_config *cfg, int argc, char **argv)
{
	int level = LOG_NOTICE, c, rc;

	while ((c = getopt_long(argc, argv, "d:g:vqhV", options, NULL)) != -1) {
		switch (c) {
		case 'd':
			cfg->dir = optarg;
			break;
		case 'g':
			cfg->group = optarg;
			break;
		case 'v':
			level++;
			break;
		case 'q':
			level--;
			break;
		case OPT_NO_SYNC:
			cfg->nosync = true;
			break;
		case OPT_SESSION_TTL:
		case OPT_PRODUCER_TTL:
		case OPT_METRICS_FILE:
		case OPT_CLUSTER:
		case OPT_CLUSTER_STREAM:
		case OPT_CLUSTER_REPLICAS:
		case OPT_CLUSTER_MAX_AGE:
			if ((rc = parse_value(cfg, c, optarg)) >= 0)
				return rc;
			break;
		case OPT_MAP_SIZE:
			cfg->map_size = parse_size(optarg);
			if (cfg->map_size < 65536) {
				fprintf(stderr,
					"tallyd: --map-size wants a "
					"size of at least 64K, not '%s'\n",
					optarg);
				return 2;
			}
			break;
		case OPT_MAX_MESSAGE:
			cfg->max_message = parse_size(optarg);
			/* 4K: room for the largest single usage. */
			if (cfg->max_message < 4096 ||
			    cfg->max_message > ((size_t)1 << 28)) {
				fprintf(stderr,
					"tallyd: --max-message wants "
					"4K to 256M, not '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case 'V':
			puts("tallyd " TALLY_VERSION_STRING);
			return 0;
		default:
			fputs("Try 'tallyd --help'.\n", stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr,
			"tallyd: unexpected argument '%s'\nTry "
			"'tallyd --help'.\n",
			argv[optind]);
		return 2;
	}
	if ((rc = check_cluster(cfg)) >= 0)
		return rc;
	log_set_level(level);
	return -1;
}

/* Signals arrive through a signalfd in the loop; block them everywhere. */
static int setup_signals(struct tallyd *d)
{
	sigset_t set;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		return -EINVAL;
	d->signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	return d->signal_fd < 0 ? -errno : 0;
}

static int open_paths(struct tallyd *d)
{
	int rc = paths_init(&d->paths, d->cfg.dir);

	if (rc == -ENAMETOOLONG)
		log_err("main",
			"ledger directory too long: a socket path "
			"there would pass the %d bytes of a Unix socket "
			"address; choose a shorter --dir",
			PATHS_SUN_MAX);
	else if (rc < 0)
		log_err("main",
			"no ledger directory: set --dir or "
			"TALLY_DIR (%s)",
			strerror(-rc));
	if (rc < 0)
		return rc;
	rc = runtime_prepare_dir(d->paths.dir);
	if (rc < 0)
		log_err("main", "cannot create %s: %s", d->paths.dir,
			strerror(-rc));
	if (rc == 0)
		rc = runtime_check_fs(d->paths.dir);
	return rc;
}

static int open_ledger(struct tallyd *d)
{
	mode_t old = umask(0007);
	int rc = ledger_open(&d->ledger, d->paths.ledger, d->cfg.map_size,
			     d->cfg.nosync);

	umask(old);
	if (rc == 0)
		rc = runtime_share_ledger(d);
	if (rc == TALLY_EVERSION)
		log_err("main",
			"%s was written by another version of tally "
			"(schema %d expected); move it away or use that "
			"version",
			d->paths.ledger, LEDGER_SCHEMA);
	else if (rc == TALLY_ECORRUPT)
		log_err("main",
			"%s is damaged; move it away and restore a copy",
			d->paths.ledger);
	else if (rc < 0)
		log_err("main", "cannot open ledger %s: %s", d->paths.ledger,
			strerror(-rc));
	return rc;
}

static void teardown(struct tallyd *d)
{
	runtime_unbind(d);
	cluster_stop(d);
	committer_stop(d);
	for (size_t i = 0; i < d->nwaiters; i++)
		nn_freemsg(d->waiters[i].header);
	free(d->waiters);
	agg_fini(&d->aggs[0]);
	agg_fini(&d->aggs[1]);
	producers_fini(&d->producers);
	ingest_fini();
	ledger_close(&d->ledger);
	runtime_unlock(d);
	if (d->signal_fd >= 0)
		close(d->signal_fd);
}

static int start(struct tallyd *d)
{
	int rc;

	if ((rc = open_paths(d)) < 0 || (rc = setup_signals(d)) < 0 ||
	    (rc = runtime_lock(d)) < 0 || (rc = open_ledger(d)) < 0)
		return rc;
	rc = committer_start(d);
	if (rc < 0) {
		log_err("main", "cannot start the commit thread: %s",
			strerror(-rc));
		return rc;
	}
	rc = cluster_start(d);
	if (rc < 0)
		return rc;
	rc = runtime_bind(d);
	if (rc < 0)
		return rc;
	runtime_cloexec_all();
	runtime_notify("READY=1\nSTATUS=serving");
	log_notice("main", "ready: tally %s serving %s (pid %ld, %s)",
		   TALLY_VERSION_STRING, d->paths.dir, (long)getpid(),
		   d->cfg.nosync ? "no fsync: --no-sync" : "durable commits");
	return 0;
}

int main(int argc, char **argv)
{
	static struct tallyd d;
	int rc;

	d.cfg.map_size = DEFAULT_MAP_SIZE;
	d.cfg.max_message = DEFAULT_MAX_MESSAGE;
	d.cfg.max_pending = DEFAULT_MAX_PENDING;
	d.cfg.session_ttl_ms = 7 * 86400000ull;
	d.cfg.producer_ttl_ms = 30 * 86400000ull;
	d.cfg.cluster_stream = "TALLY";
	d.cfg.cluster_replicas = 3;
	d.cfg.cluster_max_age_ms = 7 * 86400000ull;
	d.lock_fd = d.signal_fd = d.ingest = d.control = -1;
	d.committer.event_fd = -1;
	if (runtime_std_fds() < 0)
		return 1;
	rc = parse_args(&d.cfg, argc, argv);
	if (rc >= 0)
		return rc;
	agg_init(&d.aggs[0]);
	agg_init(&d.aggs[1]);
	d.fill = &d.aggs[0];
	d.start_ms = now_ms();
	rc = start(&d);
	if (rc == 0)
		rc = server_run(&d);
	teardown(&d);
	if (rc == 0)
		log_notice("main", "stopped cleanly");
	return rc == 0 ? 0 : 1;
}
