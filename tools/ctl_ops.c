/*
 * ctl_ops.c - tallyctl's operator commands: sessions, top, export, purge,
 * check, cost and metrics.
 *
 * Like the rest of tallyctl they link only libtally, and read with jansson
 * the JSON that library returns and the operator's price table. Reads go
 * straight to the ledger (tally_sessions_json, tally_foreach_entry,
 * tally_check); only purge, metrics and top's ingest rate ask the daemon.
 */
#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl_ops.h"
#include "tally.h"

/* Exit statuses, as tallyctl.c has them. */
enum {
	RC_OK = 0,
	RC_FAIL = 1,
	RC_USAGE = 2,
	/* Not an exit status: the options let the command go on. */
	RC_GO_ON = -1,
};

#define DUMP_FLAGS (JSON_INDENT(2) | JSON_PRESERVE_ORDER)
/* How long a question to tallyd may wait for its answer. */
#define ANSWER_MS 2000

const char ctl_sessions_help[] =
	"Usage: tallyctl [--dir DIR] sessions [--sort last|tokens]\n"
	"           [--since DURATION] [--limit N] [--provider P]\n"
	"           [--model M] [--json]\n"
	"\n"
	"List the sessions in the ledger: SESSION, INPUT and OUTPUT tokens,\n"
	"CALLS, LAST ACTIVITY (UTC), most recent activity first. Usages not\n"
	"yet committed by tallyd are not listed.\n"
	"\n"
	"  --sort last        most recent activity first (the default)\n"
	"  --sort tokens      most tokens (input + output) first\n"
	"  --since DURATION   only sessions active within DURATION: a number\n"
	"                     with ms, s, m, h or d (90s, 2h, 7d)\n"
	"  --limit N          at most N sessions\n"
	"  --provider P       only sessions that used an LLM of provider\n"
	"                     type P\n"
	"  --model M          only sessions that used an LLM of model type M.\n"
	"                     P and M are shell patterns ('gpt-4o*'); with\n"
	"                     both, one LLM must match both\n"
	"  --json             print a JSON array in the same order:\n"
	"                     sessionId, firstActivity, lastActivity (ms\n"
	"                     since the epoch), inputTokens, outputTokens,\n"
	"                     calls\n"
	"  -h, --help         print this help and exit\n"
	"\n"
	"Exit status: 0 printed; 1 no ledger or a library error;\n"
	"2 usage error.\n";

const char ctl_top_help[] =
	"Usage: tallyctl [--dir DIR] top [--interval S] [--limit N]\n"
	"           [--iterations N]\n"
	"\n"
	"Show the sessions and the LLMs that used the most tokens (input +\n"
	"output) in the last interval, and tallyd's ingest rate (usages\n"
	"committed per second), refreshed every interval. Press q or Ctrl-C\n"
	"to quit. When standard output is not a terminal, print one plain\n"
	"view of one interval and exit.\n"
	"\n"
	"  --interval S     seconds between refreshes, 0.1 to 3600; default 1\n"
	"  --limit N        rows of each table, 1 to 1000; default 10\n"
	"  --iterations N   stop after N refreshes; default: run until q on a\n"
	"                   terminal, 1 otherwise\n"
	"  -h, --help       print this help and exit\n"
	"\n"
	"Each refresh reads the whole ledger once, in one read transaction.\n"
	"\n"
	"Exit status: 0 quit; 1 no ledger or a library error; 2 usage error.\n";

const char ctl_export_help[] =
	"Usage: tallyctl [--dir DIR] export [--format ndjson|csv]\n"
	"           [--since DURATION]\n"
	"\n"
	"Print every (session, LLM) of the ledger with all its counters, one\n"
	"row each, from one consistent snapshot. The fields are named after\n"
	"the OpenTelemetry GenAI conventions where those have a name:\n"
	"  gen_ai.conversation.id                    the session id\n"
	"  tally.llm.reference_id                    the LLM reference id\n"
	"  tally.llm.display_name                    its display name\n"
	"  gen_ai.provider.name                      its provider type\n"
	"  gen_ai.request.model                      its model type\n"
	"  gen_ai.usage.input_tokens                 input, caches included\n"
	"  gen_ai.usage.output_tokens                output, reasoning incl.\n"
	"  gen_ai.usage.cache_read.input_tokens      input read from a cache\n"
	"  gen_ai.usage.cache_creation.input_tokens  input written to a cache\n"
	"  gen_ai.usage.reasoning.output_tokens      output spent reasoning\n"
	"  tally.calls                               calls recorded\n"
	"  tally.usage.estimated_input_tokens        input from text\n"
	"  tally.usage.estimated_output_tokens       output from text\n"
	"  tally.usage.missing_calls                 calls without usage\n"
	"  tally.first_activity, tally.last_activity ISO 8601, UTC, with ms\n"
	"\n"
	"  --format ndjson   one JSON object per line (the default)\n"
	"  --format csv      RFC 4180: a header line then one line per row,\n"
	"                    CRLF line ends; a field holding a comma, a\n"
	"                    quote, CR or LF is quoted, its quotes doubled\n"
	"  --since DURATION  only rows active within DURATION: a number with\n"
	"                    ms, s, m, h or d (90s, 2h, 7d)\n"
	"  -h, --help        print this help and exit\n"
	"\n"
	"When standard error is a terminal it shows the rows written so far.\n"
	"\n"
	"Exit status: 0 exported; 1 no ledger, a write error or a library\n"
	"error; 2 usage error.\n";

const char ctl_purge_help[] =
	"Usage: tallyctl [--dir DIR] purge [--timeout MS] SESSION...\n"
	"       tallyctl [--dir DIR] purge [--timeout MS] --idle-for DURATION\n"
	"\n"
	"Delete sessions from the ledger, through tallyd (the only writer):\n"
	"the sessions named, with every usage of them tallyd received before\n"
	"the request, or every session idle for longer than DURATION. A usage\n"
	"of a purged session that arrives later starts it afresh. Prints how\n"
	"many sessions were purged.\n"
	"\n"
	"Each request carries a random id, and is applied once even when it\n"
	"is resent after a lost answer. Running the command again is a new\n"
	"request.\n"
	"\n"
	"  --idle-for DURATION  purge the sessions idle longer than DURATION:\n"
	"                       a number with ms, s, m, h or d (90s, 2h, 30d)\n"
	"  --timeout MS         how long to wait for each answer of tallyd;\n"
	"                       default 30000\n"
	"  -h, --help           print this help and exit\n"
	"\n"
	"Exit status: 0 done (also when nothing matched); 1 tallyd did not\n"
	"answer or refused; 2 usage error.\n";

const char ctl_check_help[] =
	"Usage: tallyctl [--dir DIR] check\n"
	"\n"
	"Verify the ledger from one read snapshot: every record decodes, and\n"
	"each session's totals equal the sum of its LLM entries. Prints\n"
	"\"ledger consistent: N entries, M sessions\", or one line for each\n"
	"problem, naming its session.\n"
	"\n"
	"  -h, --help  print this help and exit\n"
	"\n"
	"Exit status: 0 consistent; 1 problems found, no ledger or a library\n"
	"error; 2 usage error.\n";

const char ctl_cost_help[] =
	"Usage: tallyctl [--dir DIR] cost SESSION [--prices FILE]\n"
	"\n"
	"Print what the session's usage cost, per LLM and in total, from a\n"
	"price table: input tokens neither read from nor written to a cache\n"
	"at the input price, cache reads at cached_input, cache writes at\n"
	"cache_write, output tokens (reasoning included) at output. Amounts\n"
	"are exact: computed in whole units of 10^-15 and printed with the\n"
	"decimals of the table's most precise price plus 6. An LLM without a\n"
	"price shows as \"unpriced\", and the total says it leaves it out.\n"
	"\n"
	"  --prices FILE  the price table; default $TALLY_PRICES\n"
	"  -h, --help     print this help and exit\n"
	"\n"
	"The price table is JSON:\n"
	"  {\n"
	"    \"currency\": \"USD\",\n"
	"    \"prices\": [\n"
	"      {\"provider\": \"openAI\", \"model\": \"gpt-4o-mini*\",\n"
	"       \"input\": \"0.15\", \"cached_input\": \"0.075\",\n"
	"       \"output\": \"0.60\"},\n"
	"      {\"provider\": \"anthropic\", \"model\": \"claude-*\",\n"
	"       \"input\": \"3.00\", \"cached_input\": \"0.30\",\n"
	"       \"cache_write\": \"3.75\", \"output\": \"15.00\"}\n"
	"    ]\n"
	"  }\n"
	"Prices are per million tokens, decimal strings (not JSON numbers)\n"
	"with at most 7 digits before the point and 9 after. provider and\n"
	"model are shell patterns (fnmatch(3)) matched against the LLM's\n"
	"provider type and model type; the first entry that matches wins, so\n"
	"list narrow patterns first. cache_write is optional and defaults to\n"
	"input. currency is optional (default USD) and only printed. A\n"
	"\"comment\" string is allowed in the table and in each entry.\n"
	"\n"
	"Exit status: 0 printed; 1 no ledger, a price table that cannot be\n"
	"read or is not valid, or a library error; 2 usage error (such as no\n"
	"price table given).\n";

const char ctl_metrics_help[] =
	"Usage: tallyctl [--dir DIR] metrics\n"
	"\n"
	"Ask tallyd for its metrics (waits up to 2 s) and print them once in\n"
	"Prometheus' text format: the text tallyd --metrics-file writes.\n"
	"\n"
	"  -h, --help  print this help and exit\n"
	"\n"
	"Exit status: 0 printed; 1 tallyd did not answer or a library error;\n"
	"2 usage error.\n";

/* ---- what every command needs ---- */

__attribute__((format(printf, 1, 2))) void ctl_fail(const char *fmt, ...)
{
	va_list ap;

	fputs("tallyctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int print_help(const char *text)
{
	fputs(text, stdout);
	return RC_OK;
}

/* The synopsis of a help text (up to its blank line), and where the rest is. */
int ctl_usage_error(const char *help, const char *cmd)
{
	const char *end = strstr(help, "\n\n");

	fprintf(stderr, "%.*s\n", end ? (int)(end - help) : (int)strlen(help),
		help);
	if (cmd != NULL)
		fprintf(stderr, "Run 'tallyctl help %s' for the details.\n",
			cmd);
	else
		fputs("Run 'tallyctl --help' for the details.\n", stderr);
	return RC_USAGE;
}

/* getopt_long afresh on a command's argv, naming "tallyctl COMMAND". */
void ctl_begin_options(struct ctl *ctl, char **argv)
{
	snprintf(ctl->prog, sizeof(ctl->prog), "tallyctl %s", argv[0]);
	argv[0] = ctl->prog;
	optind = 0;
}

int ctl_open_handle(struct ctl *ctl, const char *cmd, struct tally **t)
{
	/* Nothing here records: closing has nothing to wait for. */
	struct tally_options opts = {.close_timeout_ms = -1};
	int err;

	if (!ctl->dir) {
		err = tally_default_dir(ctl->dir_buf, sizeof(ctl->dir_buf));
		if (err < 0) {
			ctl_fail(
				"no ledger directory: %s; pass --dir DIR or set "
				"TALLY_DIR",
				tally_strerror(err));
			return err;
		}
		ctl->dir = ctl->dir_buf;
	}
	opts.dir = ctl->dir;
	err = tally_open_ex(t, &opts);
	if (err < 0)
		ctl_fail("%s: cannot open %s: %s", cmd, ctl->dir,
			 tally_strerror(err));
	return err;
}

/* A failed read of the ledger, with what to do about it. */
void ctl_read_failed(const struct ctl *ctl, const char *cmd, int err)
{
	ctl_fail("%s: %s", cmd, tally_strerror(err));
	if (err == -ENOENT)
		fprintf(stderr,
			"tallyctl: there is no ledger in %s yet: start "
			"tallyd there (tallyd --dir %s) or pass the right "
			"--dir\n",
			ctl->dir, ctl->dir);
	else if (err == TALLY_EVERSION)
		fprintf(stderr, "tallyctl: use the tallyctl of the tally "
				"version whose tallyd wrote the ledger\n");
	else if (err == TALLY_ECORRUPT)
		fprintf(stderr,
			"tallyctl: the ledger in %s is damaged: "
			"'tallyctl check' names what is wrong\n",
			ctl->dir);
}

/* A question to tallyd that failed, with what to do about it. */
static void ask_failed(const struct ctl *ctl, const char *cmd, int err,
		       int timeout_ms)
{
	if (err == -ETIMEDOUT)
		ctl_fail("%s: tallyd did not answer on %s within %d ms: is it "
			 "running there? (start it with tallyd --dir %s)",
			 cmd, ctl->dir, timeout_ms, ctl->dir);
	else
		ctl_fail("%s: %s", cmd, tally_strerror(err));
}

json_t *ctl_load_json(const char *cmd, const char *text)
{
	json_error_t jerr;
	json_t *root;

	root = json_loads(text, JSON_DECODE_ANY, &jerr);
	if (!root)
		ctl_fail("%s: libtally returned JSON that does not parse "
			 "(line %d: %s)",
			 cmd, jerr.line, jerr.text);
	return root;
}

/* Commands that take no argument but --help. */
static int parse_bare(struct ctl *ctl, int argc, char **argv, const char *help)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cmd = argv[0];
	int c;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h')
			return print_help(help);
		return ctl_usage_error(help, cmd);
	}
	if (optind < argc) {
		ctl_fail("%s: takes no arguments, got '%s'", cmd, argv[optind]);
		return ctl_usage_error(help, cmd);
	}
	return RC_GO_ON;
}

/*
 * A whole decimal number from min to max. strtoull alone would take
 * blanks, a sign (negating "-1" into a huge value) and trailing junk.
 */
static int parse_count(const char *cmd, const char *opt, const char *s,
		       uint64_t min, uint64_t max, uint64_t *out)
{
	char *end = (char *)s;
	unsigned long long v;

	errno = 0;
	v = *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
	if (*s < '0' || *s > '9' || errno || *end || v < min || v > max) {
		ctl_fail("%s: %s expects a whole number from %" PRIu64
			 " to %" PRIu64 ", not '%s'",
			 cmd, opt, min, max, s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* "500ms", "90s", "15m", "2h", "7d"; a bare number is seconds, as tallyd's. */
static int parse_duration(const char *cmd, const char *opt, const char *s,
			  uint64_t *ms)
{
	static const struct {
		const char *unit;
		uint64_t ms;
	} units[] = {{"ms", 1},	     {"s", 1000},     {"m", 60000},
		     {"h", 3600000}, {"d", 86400000}, {"", 1000}};
	char *end = (char *)s;
	unsigned long long v;

	errno = 0;
	v = *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
	for (size_t i = 0; *s >= '0' && *s <= '9' && errno == 0 &&
			   i < sizeof(units) / sizeof(units[0]);
	     i++) {
		/* Ten years is past any retention anyone means. */
		if (strcmp(end, units[i].unit) == 0 &&
		    v <= 3650 * 86400000ull / units[i].ms) {
			*ms = v * units[i].ms;
			return 0;
		}
	}
	ctl_fail("%s: %s expects a duration, a number with ms, s, m, h or d "
		 "(500ms, 90s, 2h, 7d), not '%s'",
		 cmd, opt, s);
	return -EINVAL;
}

static uint64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* The time of ms since the epoch, ISO 8601 in UTC with milliseconds. */
static void format_time(uint64_t ms, char *buf, size_t len)
{
	time_t sec = (time_t)(ms / 1000);
	struct tm tm;

	if (!gmtime_r(&sec, &tm)) {
		snprintf(buf, len, "-");
		return;
	}
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* Columns count characters, not bytes: ids are UTF-8. */
int ctl_text_width(const char *s)
{
	int w = 0;

	for (; *s; s++)
		w += ((unsigned char)*s & 0xc0) != 0x80;
	return w;
}

/* A control character in an id would break a table's lines. */
static void put_cell(FILE *f, const char *s, int width)
{
	int w = ctl_text_width(s);

	for (; *s; s++)
		fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, f);
	fprintf(f, "%*s", width > w ? width - w : 0, "");
}

static const char *plural(uint64_t n, const char *one, const char *many)
{
	return n == 1 ? one : many;
}

/* ---- sessions ---- */

struct sessions_args {
	bool as_json;
	bool by_tokens;
	bool has_since;
	uint64_t since_ms;
	uint64_t limit;
	const char *provider;
	const char *model;
};

struct session_row {
	json_t *obj;
	const char *id;
	uint64_t input, output, calls, last;
};

/* Session ids that used a matching LLM, sorted for bsearch. */
struct id_set {
	char **ids;
	size_t n, cap;
	const char *provider, *model;
};

static int id_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool pattern_match(const char *pattern, const char *s)
{
	return !pattern || fnmatch(pattern, s, 0) == 0;
}

static int collect_match(const struct tally_entry *e, void *ctx)
{
	struct id_set *set = ctx;
	char **ids;

	if (!pattern_match(set->provider, e->provider_type) ||
	    !pattern_match(set->model, e->model_type))
		return 0;
	/* Entries come in key order: a session's entries are together. */
	if (set->n > 0 && strcmp(set->ids[set->n - 1], e->session_id) == 0)
		return 0;
	if (set->n == set->cap) {
		ids = realloc(set->ids,
			      (set->cap ? set->cap * 2 : 64) * sizeof(*ids));
		if (!ids)
			return -ENOMEM;
		set->ids = ids;
		set->cap = set->cap ? set->cap * 2 : 64;
	}
	set->ids[set->n] = strdup(e->session_id);
	if (!set->ids[set->n])
		return -ENOMEM;
	set->n++;
	return 0;
}

static void id_set_fini(struct id_set *set)
{
	for (size_t i = 0; i < set->n; i++)
		free(set->ids[i]);
	free(set->ids);
}

static bool id_set_has(const struct id_set *set, const char *id)
{
	return set->n > 0 &&
	       bsearch(&id, set->ids, set->n, sizeof(char *), id_cmp) != NULL;
}

static uint64_t u64_field(const json_t *obj, const char *name)
{
	json_int_t v = json_integer_value(json_object_get(obj, name));

	return v > 0 ? (uint64_t)v : 0;
}

static int by_last(const void *a, const void *b)
{
	const struct session_row *x = a, *y = b;

	if (x->last != y->last)
		return x->last < y->last ? 1 : -1;
	return strcmp(x->id, y->id);
}

static int by_tokens(const void *a, const void *b)
{
	const struct session_row *x = a, *y = b;
	uint64_t tx = x->input + x->output, ty = y->input + y->output;

	if (tx != ty)
		return tx < ty ? 1 : -1;
	return by_last(a, b);
}

/* Keeps the rows that pass the filters; returns how many. */
static size_t filter_rows(const json_t *arr, const struct sessions_args *a,
			  const struct id_set *set, struct session_row *rows)
{
	uint64_t cutoff = 0, now = wall_ms();
	size_t i, n = 0;
	json_t *s;

	if (a->has_since)
		cutoff = a->since_ms < now ? now - a->since_ms : 0;
	json_array_foreach(arr, i, s)
	{
		struct session_row r = {.obj = s};

		r.id = json_string_value(json_object_get(s, "sessionId"));
		if (!r.id)
			continue;
		r.input = u64_field(s, "inputTokens");
		r.output = u64_field(s, "outputTokens");
		r.calls = u64_field(s, "calls");
		r.last = u64_field(s, "lastActivity");
		if (r.last < cutoff)
			continue;
		if ((a->provider || a->model) && !id_set_has(set, r.id))
			continue;
		rows[n++] = r;
	}
	return n;
}

static int num_width(uint64_t v)
{
	char buf[24];

	return snprintf(buf, sizeof(buf), "%" PRIu64, v);
}

static void print_session_table(const struct session_row *rows, size_t n)
{
	int wid = 7, win = 5, wout = 6, wcalls = 5;
	char when[48];
	size_t i;

	for (i = 0; i < n; i++) {
		if (ctl_text_width(rows[i].id) > wid)
			wid = ctl_text_width(rows[i].id);
		if (num_width(rows[i].input) > win)
			win = num_width(rows[i].input);
		if (num_width(rows[i].output) > wout)
			wout = num_width(rows[i].output);
		if (num_width(rows[i].calls) > wcalls)
			wcalls = num_width(rows[i].calls);
	}
	printf("%-*s  %*s  %*s  %*s  %s\n", wid, "SESSION", win, "INPUT", wout,
	       "OUTPUT", wcalls, "CALLS", "LAST ACTIVITY");
	for (i = 0; i < n; i++) {
		put_cell(stdout, rows[i].id, wid);
		format_time(rows[i].last, when, sizeof(when));
		printf("  %*" PRIu64 "  %*" PRIu64 "  %*" PRIu64 "  %s\n", win,
		       rows[i].input, wout, rows[i].output, wcalls,
		       rows[i].calls, when);
	}
}

static int print_session_json(const struct session_row *rows, size_t n)
{
	json_t *arr = json_array();
	int rc = RC_FAIL;

	if (!arr)
		return RC_FAIL;
	for (size_t i = 0; i < n; i++)
		if (json_array_append(arr, rows[i].obj) < 0)
			goto out;
	if (json_dumpf(arr, stdout, DUMP_FLAGS) == 0) {
		putchar('\n');
		rc = RC_OK;
	}
out:
	json_decref(arr);
	return rc;
}

static int show_sessions(const json_t *arr, const struct sessions_args *a,
			 const struct id_set *set)
{
	size_t n = json_array_size(arr);
	struct session_row *rows = calloc(n ? n : 1, sizeof(*rows));
	int rc = RC_OK;

	if (!rows) {
		ctl_fail("sessions: %s", strerror(ENOMEM));
		return RC_FAIL;
	}
	n = filter_rows(arr, a, set, rows);
	qsort(rows, n, sizeof(*rows), a->by_tokens ? by_tokens : by_last);
	if (a->limit && n > a->limit)
		n = a->limit;
	if (a->as_json)
		rc = print_session_json(rows, n);
	else
		print_session_table(rows, n);
	free(rows);
	return rc;
}

static int list_sessions(struct ctl *ctl, const struct sessions_args *a)
{
	struct id_set set = {.provider = a->provider, .model = a->model};
	struct tally *t = NULL;
	json_t *arr = NULL;
	char *text = NULL;
	int rc = RC_FAIL;
	int err;

	if (ctl_open_handle(ctl, "sessions", &t) < 0)
		return RC_FAIL;
	err = tally_sessions_json(t, &text);
	if (err == 0 && (a->provider || a->model))
		err = tally_foreach_entry(t, collect_match, &set);
	if (err < 0) {
		ctl_read_failed(ctl, "sessions", err);
		goto out;
	}
	if (set.n > 0)
		qsort(set.ids, set.n, sizeof(char *), id_cmp);
	arr = ctl_load_json("sessions", text);
	if (arr && !json_is_array(arr))
		ctl_fail(
			"sessions: libtally returned JSON that is not an array");
	else if (arr)
		rc = show_sessions(arr, a, &set);
out:
	json_decref(arr);
	free(text);
	id_set_fini(&set);
	tally_close(t);
	return rc;
}

static int sessions_option(struct sessions_args *a, int c, const char *arg)
{
	switch (c) {
	case 'j':
		a->as_json = true;
		return 0;
	case 'o':
		if (strcmp(arg, "last") != 0 && strcmp(arg, "tokens") != 0) {
			ctl_fail("sessions: --sort is 'last' or 'tokens', not "
				 "'%s'",
				 arg);
			return -EINVAL;
		}
		a->by_tokens = strcmp(arg, "tokens") == 0;
		return 0;
	case 's':
		a->has_since = true;
		return parse_duration("sessions", "--since", arg, &a->since_ms);
	case 'l':
		return parse_count("sessions", "--limit", arg, 1, UINT32_MAX,
				   &a->limit);
	case 'p':
		a->provider = arg;
		return 0;
	case 'm':
		a->model = arg;
		return 0;
	}
	return -EINVAL;
}

int ctl_sessions(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"sort", required_argument, NULL, 'o'},
		{"since", required_argument, NULL, 's'},
		{"limit", required_argument, NULL, 'l'},
		{"provider", required_argument, NULL, 'p'},
		{"model", required_argument, NULL, 'm'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct sessions_args a = {0};
	int c;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h')
			return print_help(ctl_sessions_help);
		if (c == '?')
			return ctl_usage_error(ctl_sessions_help, "sessions");
		if (sessions_option(&a, c, optarg) < 0)
			return RC_USAGE;
	}
	if (optind < argc) {
		ctl_fail("sessions: takes no arguments, got '%s'",
			 argv[optind]);
		return ctl_usage_error(ctl_sessions_help, "sessions");
	}
	return list_sessions(ctl, &a);
}

/* ---- top ---- */

/*
 * One reading of the ledger. The strings of its entries live in one
 * buffer, addressed by offset while it may still move.
 */
struct top_entry {
	size_t session, llm, name, provider, model;
	uint64_t tokens, calls;
};

struct snapshot {
	struct top_entry *e;
	size_t n, cap;
	char *text;
	size_t len, size;
	size_t sessions;
	/* tallyd's usages_applied, when it answered. */
	bool have_applied;
	uint64_t applied;
	uint64_t at_ms;
};

/* A session or an LLM, with what it used in the interval. */
struct busy {
	const char *id;
	const char *name, *provider, *model;
	uint64_t tokens, calls;
};

struct interval {
	struct busy *sessions, *llms;
	size_t nsessions, nllms;
	uint64_t tokens, calls;
	uint64_t ms;
	bool have_rate;
	uint64_t rate;
	size_t ledger_sessions, ledger_entries;
	uint64_t at_wall_ms;
};

struct top_args {
	uint64_t interval_ms;
	uint64_t limit;
	uint64_t iterations;
};

static int snap_text(struct snapshot *s, const char *str, size_t *off)
{
	size_t n = strlen(str) + 1;
	char *p;

	if (s->size - s->len < n) {
		size_t want = s->size ? s->size * 2 : 65536;

		while (want - s->len < n)
			want *= 2;
		p = realloc(s->text, want);
		if (!p)
			return -ENOMEM;
		s->text = p;
		s->size = want;
	}
	memcpy(s->text + s->len, str, n);
	*off = s->len;
	s->len += n;
	return 0;
}

static int snap_entry(const struct tally_entry *e, void *ctx)
{
	struct snapshot *s = ctx;
	struct top_entry *te, *grown;

	if (s->n == s->cap) {
		grown = realloc(s->e,
				(s->cap ? s->cap * 2 : 256) * sizeof(*te));
		if (!grown)
			return -ENOMEM;
		s->e = grown;
		s->cap = s->cap ? s->cap * 2 : 256;
	}
	te = &s->e[s->n];
	te->tokens = e->input_tokens + e->output_tokens;
	te->calls = e->calls;
	if (snap_text(s, e->session_id, &te->session) < 0 ||
	    snap_text(s, e->llm_reference_id, &te->llm) < 0 ||
	    snap_text(s,
		      *e->llm_display_name ? e->llm_display_name
					   : e->llm_reference_id,
		      &te->name) < 0 ||
	    snap_text(s, e->provider_type, &te->provider) < 0 ||
	    snap_text(s, e->model_type, &te->model) < 0)
		return -ENOMEM;
	if (s->n == 0 || strcmp(s->text + s->e[s->n - 1].session,
				s->text + te->session) != 0)
		s->sessions++;
	s->n++;
	return 0;
}

static void snap_clear(struct snapshot *s)
{
	s->n = s->len = s->sessions = 0;
	s->have_applied = false;
}

static void snap_fini(struct snapshot *s)
{
	free(s->e);
	free(s->text);
	memset(s, 0, sizeof(*s));
}

/* tallyd's usages_applied; a daemon that does not answer has no rate. */
static void snap_applied(struct tally *t, struct snapshot *s)
{
	json_t *root;
	char *text;

	if (tally_stats_json(t, 500, &text) < 0)
		return;
	root = json_loads(text, 0, NULL);
	free(text);
	if (json_is_integer(json_object_get(root, "usages_applied"))) {
		s->applied = u64_field(root, "usages_applied");
		s->have_applied = true;
	}
	json_decref(root);
}

static int snap_take(struct tally *t, struct snapshot *s)
{
	snap_clear(s);
	s->at_ms = mono_ms();
	snap_applied(t, s);
	return tally_foreach_entry(t, snap_entry, s);
}

static const char *snap_str(const struct snapshot *s, size_t off)
{
	return s->text + off;
}

/* Orders entries as the ledger does: by session, then by LLM. */
static int entry_cmp(const struct snapshot *a, const struct top_entry *x,
		     const struct snapshot *b, const struct top_entry *y)
{
	int c = strcmp(snap_str(a, x->session), snap_str(b, y->session));

	return c ? c : strcmp(snap_str(a, x->llm), snap_str(b, y->llm));
}

static void interval_fini(struct interval *iv)
{
	free(iv->sessions);
	free(iv->llms);
	memset(iv, 0, sizeof(*iv));
}

static int busy_cmp(const void *a, const void *b)
{
	const struct busy *x = a, *y = b;

	if (x->tokens != y->tokens)
		return x->tokens < y->tokens ? 1 : -1;
	return strcmp(x->id, y->id);
}

static int busy_id_cmp(const void *a, const void *b)
{
	return strcmp(((const struct busy *)a)->id,
		      ((const struct busy *)b)->id);
}

/* Adds one entry's use to its session's row (rows come session by session). */
static void add_session(struct interval *iv, const struct snapshot *cur,
			const struct top_entry *e, uint64_t tokens,
			uint64_t calls)
{
	struct busy *last =
		iv->nsessions ? &iv->sessions[iv->nsessions - 1] : NULL;
	const char *id = snap_str(cur, e->session);

	if (!last || strcmp(last->id, id) != 0) {
		last = &iv->sessions[iv->nsessions++];
		*last = (struct busy){.id = id};
	}
	last->tokens += tokens;
	last->calls += calls;
}

/* Sums the rows of each LLM, sorted by id, into one. */
static void merge_llms(struct interval *iv)
{
	size_t i, n = 0;

	qsort(iv->llms, iv->nllms, sizeof(*iv->llms), busy_id_cmp);
	for (i = 0; i < iv->nllms; i++) {
		if (n > 0 && strcmp(iv->llms[n - 1].id, iv->llms[i].id) == 0) {
			iv->llms[n - 1].tokens += iv->llms[i].tokens;
			iv->llms[n - 1].calls += iv->llms[i].calls;
		} else {
			iv->llms[n++] = iv->llms[i];
		}
	}
	iv->nllms = n;
}

/*
 * What each entry used between the two snapshots. Both list entries in
 * the ledger's key order (session id, NUL, LLM id, compared bytewise),
 * which is the order of entry_cmp, so one walk pairs them. An entry that
 * is new, or smaller than before (purged and used again), counts whole.
 */
static void diff_entries(struct interval *iv, const struct snapshot *prev,
			 const struct snapshot *cur)
{
	size_t i, j = 0;

	for (i = 0; i < cur->n; i++) {
		const struct top_entry *e = &cur->e[i];
		uint64_t tokens = e->tokens, calls = e->calls;

		while (j < prev->n && entry_cmp(prev, &prev->e[j], cur, e) < 0)
			j++;
		if (j < prev->n && entry_cmp(prev, &prev->e[j], cur, e) == 0 &&
		    prev->e[j].tokens <= e->tokens &&
		    prev->e[j].calls <= e->calls) {
			tokens -= prev->e[j].tokens;
			calls -= prev->e[j].calls;
		}
		if (tokens == 0 && calls == 0)
			continue;
		add_session(iv, cur, e, tokens, calls);
		iv->llms[iv->nllms++] = (struct busy){
			.id = snap_str(cur, e->llm),
			.name = snap_str(cur, e->name),
			.provider = snap_str(cur, e->provider),
			.model = snap_str(cur, e->model),
			.tokens = tokens,
			.calls = calls,
		};
		iv->tokens += tokens;
		iv->calls += calls;
	}
}

static int interval_compute(struct interval *iv, const struct snapshot *prev,
			    const struct snapshot *cur)
{
	size_t n = cur->n ? cur->n : 1;

	interval_fini(iv);
	iv->sessions = calloc(n, sizeof(*iv->sessions));
	iv->llms = calloc(n, sizeof(*iv->llms));
	if (!iv->sessions || !iv->llms)
		return -ENOMEM;
	diff_entries(iv, prev, cur);
	merge_llms(iv);
	qsort(iv->sessions, iv->nsessions, sizeof(*iv->sessions), busy_cmp);
	qsort(iv->llms, iv->nllms, sizeof(*iv->llms), busy_cmp);
	iv->ms = cur->at_ms > prev->at_ms ? cur->at_ms - prev->at_ms : 1;
	iv->have_rate = prev->have_applied && cur->have_applied &&
			cur->applied >= prev->applied;
	if (iv->have_rate)
		iv->rate = (cur->applied - prev->applied) * 1000 / iv->ms;
	iv->ledger_sessions = cur->sessions;
	iv->ledger_entries = cur->n;
	iv->at_wall_ms = wall_ms();
	return 0;
}

static int widest(const struct busy *rows, size_t n, int min, bool name)
{
	int w = min;

	for (size_t i = 0; i < n; i++) {
		int rw = ctl_text_width(name ? rows[i].name : rows[i].id);

		if (rw > w)
			w = rw;
	}
	return w > 60 ? 60 : w;
}

static void put_busy_sessions(FILE *f, const struct interval *iv, size_t n)
{
	int w = widest(iv->sessions, n, 7, false);

	fprintf(f, "%-*s  %12s  %6s\n", w, "SESSION", "TOKENS", "CALLS");
	for (size_t i = 0; i < n; i++) {
		put_cell(f, iv->sessions[i].id, w);
		fprintf(f, "  %12" PRIu64 "  %6" PRIu64 "\n",
			iv->sessions[i].tokens, iv->sessions[i].calls);
	}
	if (n == 0)
		fputs("(no session used tokens in this interval)\n", f);
}

static void put_busy_llms(FILE *f, const struct interval *iv, size_t n)
{
	int w = widest(iv->llms, n, 3, true);

	fprintf(f, "%-*s  %12s  %6s  %s\n", w, "LLM", "TOKENS", "CALLS",
		"PROVIDER / MODEL");
	for (size_t i = 0; i < n; i++) {
		put_cell(f, iv->llms[i].name, w);
		fprintf(f, "  %12" PRIu64 "  %6" PRIu64 "  ",
			iv->llms[i].tokens, iv->llms[i].calls);
		put_cell(f, iv->llms[i].provider, 0);
		fputs(" / ", f);
		put_cell(f, iv->llms[i].model, 0);
		fputc('\n', f);
	}
	if (n == 0)
		fputs("(no LLM used tokens in this interval)\n", f);
}

/* The view of one interval, as plain lines. */
static void put_view(FILE *f, const struct ctl *ctl, const struct top_args *a,
		     const struct interval *iv, bool live)
{
	uint64_t limit = a->limit;
	char when[48];

	format_time(iv->at_wall_ms, when, sizeof(when));
	fprintf(f, "tally top  %s  %s  every %" PRIu64 ".%" PRIu64 " s%s\n",
		ctl->dir, when, a->interval_ms / 1000,
		a->interval_ms % 1000 / 100, live ? "  (q quits)" : "");
	if (iv->have_rate)
		fprintf(f, "ingest: %" PRIu64 " usages/s", iv->rate);
	else
		fputs("ingest: - (tallyd not answering)", f);
	fprintf(f,
		"   interval: %" PRIu64 " tokens in %" PRIu64
		" calls   ledger: %zu sessions, %zu entries\n\n",
		iv->tokens, iv->calls, iv->ledger_sessions, iv->ledger_entries);
	put_busy_sessions(f, iv, iv->nsessions < limit ? iv->nsessions : limit);
	fputc('\n', f);
	put_busy_llms(f, iv, iv->nllms < limit ? iv->nllms : limit);
}

/* Everything top holds; the terminal's state included. */
struct top {
	struct ctl *ctl;
	const struct top_args *args;
	struct tally *t;
	struct snapshot snaps[2];
	struct snapshot *prev, *cur;
	struct interval iv;
	bool have_view;
	/* The terminal, when standard output is one. */
	int in_fd;
	struct termios saved;
	bool raw, alt;
	sigset_t old_mask;
	struct sigaction old_act[4];
};

static const int top_signals[4] = {SIGINT, SIGTERM, SIGHUP, SIGWINCH};
static volatile sig_atomic_t top_stop_signal;
static volatile sig_atomic_t top_resized;

static void on_signal(int sig)
{
	if (sig == SIGWINCH)
		top_resized = 1;
	else
		top_stop_signal = sig;
}

/* Takes a new snapshot, and the interval since the previous one. */
static int top_refresh(struct top *tp)
{
	struct snapshot *s;
	int err;

	err = snap_take(tp->t, tp->cur);
	if (err == 0)
		err = interval_compute(&tp->iv, tp->prev, tp->cur);
	if (err < 0)
		return err;
	s = tp->prev;
	tp->prev = tp->cur;
	tp->cur = s;
	tp->have_view = true;
	return 0;
}

/* One plain view of each interval, for a pipe or a file. */
static int top_plain(struct top *tp)
{
	uint64_t n = tp->args->iterations ? tp->args->iterations : 1;
	int err;

	for (uint64_t i = 0; i < n; i++) {
		sleep_ms(tp->args->interval_ms);
		err = top_refresh(tp);
		if (err < 0)
			return err;
		if (i > 0)
			putchar('\n');
		put_view(stdout, tp->ctl, tp->args, &tp->iv, false);
		if (fflush(stdout) != 0)
			return -errno;
	}
	return 0;
}

static void term_size(int *cols, int *rows)
{
	struct winsize ws;

	*cols = 80;
	*rows = 24;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 &&
	    ws.ws_row > 0) {
		*cols = ws.ws_col;
		*rows = ws.ws_row;
	}
}

/* Writes all of buf, whatever the terminal takes at a time. */
static void write_all(const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDOUT_FILENO, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

static void put_str(const char *s)
{
	write_all(s, strlen(s));
}

/* Copies one line, cut to cols characters, and clears to its end. */
static void clip_line(FILE *f, const char *line, size_t len, int cols)
{
	int w = 0;
	size_t i;

	for (i = 0; i < len; i++) {
		bool starts = ((unsigned char)line[i] & 0xc0) != 0x80;

		if (starts && ++w > cols)
			break;
		fputc(line[i], f);
	}
	fputs("\033[K\r\n", f);
}

/*
 * Draws the view from the top left corner, each line cut to the width
 * and the lines past the height left out, then clears what is below.
 */
static void top_draw(struct top *tp)
{
	char *view = NULL, *frame = NULL;
	size_t vlen = 0, flen = 0;
	FILE *vf, *ff;
	int cols, rows, row = 0;
	const char *p, *nl;

	term_size(&cols, &rows);
	vf = open_memstream(&view, &vlen);
	if (!vf)
		return;
	if (tp->have_view)
		put_view(vf, tp->ctl, tp->args, &tp->iv, true);
	else
		fprintf(vf,
			"tally top  %s  (q quits)\nreading the first "
			"interval...\n",
			tp->ctl->dir);
	fclose(vf);
	ff = open_memstream(&frame, &flen);
	if (ff) {
		fputs("\033[H", ff);
		for (p = view; *p && row < rows - 1; p = nl + 1, row++) {
			nl = strchr(p, '\n');
			if (!nl)
				nl = p + strlen(p) - 1;
			clip_line(ff, p, (size_t)(nl - p + (*nl != '\n')),
				  cols);
		}
		fputs("\033[J", ff);
		fclose(ff);
		write_all(frame, flen);
	}
	free(frame);
	free(view);
}

/*
 * Raw input (keys one at a time, no echo, Ctrl-C as a key) and the
 * alternate screen. Our signals stay blocked but in ppoll(), so that a
 * signal arriving between a check and the wait cannot be missed.
 */
static int term_enter(struct top *tp)
{
	struct sigaction sa = {.sa_handler = on_signal};
	struct termios raw;
	sigset_t block;

	sigemptyset(&block);
	for (int i = 0; i < 4; i++)
		sigaddset(&block, top_signals[i]);
	if (sigprocmask(SIG_BLOCK, &block, &tp->old_mask) < 0)
		return -errno;
	sigemptyset(&sa.sa_mask);
	for (int i = 0; i < 4; i++)
		sigaction(top_signals[i], &sa, &tp->old_act[i]);
	tp->in_fd = isatty(STDIN_FILENO) ? STDIN_FILENO : -1;
	if (tp->in_fd >= 0 && tcgetattr(tp->in_fd, &tp->saved) == 0) {
		raw = tp->saved;
		raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO | ISIG | IEXTEN);
		raw.c_iflag &= ~(tcflag_t)(IXON | ICRNL);
		raw.c_cc[VMIN] = 1;
		raw.c_cc[VTIME] = 0;
		tp->raw = tcsetattr(tp->in_fd, TCSAFLUSH, &raw) == 0;
	}
	/* The alternate screen, the cursor hidden. */
	put_str("\033[?1049h\033[?25l");
	tp->alt = true;
	return 0;
}

/* Undoes term_enter; every way out of the live view passes here. */
static void term_leave(struct top *tp)
{
	if (tp->alt)
		put_str("\033[?25h\033[?1049l");
	tp->alt = false;
	if (tp->raw)
		tcsetattr(tp->in_fd, TCSAFLUSH, &tp->saved);
	tp->raw = false;
	for (int i = 0; i < 4; i++)
		sigaction(top_signals[i], &tp->old_act[i], NULL);
	sigprocmask(SIG_SETMASK, &tp->old_mask, NULL);
}

/* 1 when the keys read ask to quit: q, Q, or Ctrl-C. */
static int read_keys(int fd)
{
	char buf[64];
	ssize_t n = read(fd, buf, sizeof(buf));

	/* A terminal that went away cannot ask for anything more. */
	if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
		return 1;
	for (ssize_t i = 0; i < n; i++)
		if (buf[i] == 'q' || buf[i] == 'Q' || buf[i] == 3)
			return 1;
	return 0;
}

/*
 * Waits until the deadline, a key or a signal. Returns 1 to quit, 0 at
 * the deadline, and -1 for a redraw.
 */
static int top_wait(struct top *tp, uint64_t deadline)
{
	struct pollfd pfd = {.fd = tp->in_fd, .events = POLLIN};
	uint64_t now = mono_ms();
	struct timespec ts;
	int n;

	if (top_stop_signal)
		return 1;
	if (now >= deadline)
		return 0;
	ts.tv_sec = (time_t)((deadline - now) / 1000);
	ts.tv_nsec = (long)((deadline - now) % 1000) * 1000000;
	n = ppoll(&pfd, tp->in_fd >= 0 ? 1 : 0, &ts, &tp->old_mask);
	if (top_stop_signal)
		return 1;
	if (top_resized) {
		top_resized = 0;
		return -1;
	}
	if (n > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)))
		return read_keys(tp->in_fd) ? 1 : -1;
	return mono_ms() >= deadline ? 0 : -1;
}

static int top_live(struct top *tp)
{
	uint64_t deadline, done = 0;
	int err = 0, w;

	if ((err = term_enter(tp)) < 0)
		return err;
	top_draw(tp);
	deadline = mono_ms() + tp->args->interval_ms;
	while (!tp->args->iterations || done < tp->args->iterations) {
		w = top_wait(tp, deadline);
		if (w > 0)
			break;
		if (w == 0) {
			if ((err = top_refresh(tp)) < 0)
				break;
			done++;
			deadline = mono_ms() + tp->args->interval_ms;
		}
		top_draw(tp);
	}
	term_leave(tp);
	return err;
}

static int top_run(struct ctl *ctl, const struct top_args *a)
{
	struct top tp = {.ctl = ctl, .args = a, .in_fd = -1};
	int err, sig;

	tp.prev = &tp.snaps[0];
	tp.cur = &tp.snaps[1];
	if (ctl_open_handle(ctl, "top", &tp.t) < 0)
		return RC_FAIL;
	/* A ledger that cannot be read fails before the screen changes. */
	err = snap_take(tp.t, tp.prev);
	if (err == 0)
		err = isatty(STDOUT_FILENO) ? top_live(&tp) : top_plain(&tp);
	if (err < 0)
		ctl_read_failed(ctl, "top", err);
	interval_fini(&tp.iv);
	snap_fini(&tp.snaps[0]);
	snap_fini(&tp.snaps[1]);
	tally_close(tp.t);
	sig = top_stop_signal;
	if (sig) {
		/* Dies of the signal it was sent, as a shell expects. */
		fflush(stdout);
		signal(sig, SIG_DFL);
		raise(sig);
	}
	return err < 0 ? RC_FAIL : RC_OK;
}

/* "1", "0.5", "2.25": seconds, kept as milliseconds. */
static int parse_interval(const char *s, uint64_t *ms)
{
	uint64_t whole = 0, frac = 0, scale = 100;
	const char *p = s;

	while (*p >= '0' && *p <= '9' && whole < 1000000)
		whole = whole * 10 + (uint64_t)(*p++ - '0');
	if (p != s && *p == '.' && p[1] != '\0')
		for (p++; *p >= '0' && *p <= '9' && scale > 0; p++) {
			frac += (uint64_t)(*p - '0') * scale;
			scale /= 10;
		}
	*ms = whole * 1000 + frac;
	if (p == s || *p != '\0' || *ms < 100 || *ms > 3600000) {
		ctl_fail(
			"top: --interval expects seconds from 0.1 to 3600, with "
			"at most 3 decimals, not '%s'",
			s);
		return -EINVAL;
	}
	return 0;
}

int ctl_top(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"interval", required_argument, NULL, 'i'},
		{"limit", required_argument, NULL, 'l'},
		{"iterations", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct top_args a = {.interval_ms = 1000, .limit = 10};
	int c, err = 0;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h')
			return print_help(ctl_top_help);
		else if (c == 'i')
			err = parse_interval(optarg, &a.interval_ms);
		else if (c == 'l')
			err = parse_count("top", "--limit", optarg, 1, 1000,
					  &a.limit);
		else if (c == 'n')
			err = parse_count("top", "--iterations", optarg, 1,
					  UINT32_MAX, &a.iterations);
		else
			return ctl_usage_error(ctl_top_help, "top");
		if (err < 0)
			return RC_USAGE;
	}
	if (optind < argc) {
		ctl_fail("top: takes no arguments, got '%s'", argv[optind]);
		return ctl_usage_error(ctl_top_help, "top");
	}
	return top_run(ctl, &a);
}

/* ---- export ---- */

enum column_kind { COL_STRING, COL_COUNT, COL_TIME };

struct column {
	const char *name;
	enum column_kind kind;
	size_t offset;
};

#define STRING(n, f)                                           \
	{                                                      \
		n, COL_STRING, offsetof(struct tally_entry, f) \
	}
#define COUNT(n, f)                                           \
	{                                                     \
		n, COL_COUNT, offsetof(struct tally_entry, f) \
	}
#define TIME(n, f)                                           \
	{                                                    \
		n, COL_TIME, offsetof(struct tally_entry, f) \
	}

/*
 * OpenTelemetry's GenAI attribute names where there is one (the cache and
 * reasoning breakdowns are, like tally's, parts of the input and output
 * counts), tally's own otherwise.
 */
static const struct column columns[] = {
	STRING("gen_ai.conversation.id", session_id),
	STRING("tally.llm.reference_id", llm_reference_id),
	STRING("tally.llm.display_name", llm_display_name),
	STRING("gen_ai.provider.name", provider_type),
	STRING("gen_ai.request.model", model_type),
	COUNT("gen_ai.usage.input_tokens", input_tokens),
	COUNT("gen_ai.usage.output_tokens", output_tokens),
	COUNT("gen_ai.usage.cache_read.input_tokens", cache_read_tokens),
	COUNT("gen_ai.usage.cache_creation.input_tokens", cache_write_tokens),
	COUNT("gen_ai.usage.reasoning.output_tokens", reasoning_tokens),
	COUNT("tally.calls", calls),
	COUNT("tally.usage.estimated_input_tokens", estimated_input_tokens),
	COUNT("tally.usage.estimated_output_tokens", estimated_output_tokens),
	COUNT("tally.usage.missing_calls", usage_missing_calls),
	TIME("tally.first_activity", first_activity_ms),
	TIME("tally.last_activity", last_activity_ms),
};

#define NCOLUMNS (sizeof(columns) / sizeof(columns[0]))

#undef STRING
#undef COUNT
#undef TIME

struct export
{
	bool csv;
	bool header_done;
	uint64_t cutoff_ms;
	bool progress;
	uint64_t rows;
	uint64_t shown_ms;
};

static void put_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void put_csv_field(FILE *f, const char *s)
{
	if (!strpbrk(s, ",\"\r\n")) {
		fputs(s, f);
		return;
	}
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"')
			fputc('"', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

/* One field of e, as text (strings) or a number. */
static void put_field(FILE *f, const struct export *x,
		      const struct tally_entry *e, const struct column *col)
{
	const char *base = (const char *)e + col->offset;
	uint64_t v;
	char when[48];

	if (col->kind == COL_STRING) {
		const char *s = *(const char *const *)base;

		(x->csv ? put_csv_field : put_json_string)(f, s);
		return;
	}
	memcpy(&v, base, sizeof(v));
	if (col->kind == COL_COUNT) {
		fprintf(f, "%" PRIu64, v);
		return;
	}
	format_time(v, when, sizeof(when));
	(x->csv ? put_csv_field : put_json_string)(f, when);
}

static void put_row(FILE *f, const struct export *x,
		    const struct tally_entry *e)
{
	for (size_t i = 0; i < NCOLUMNS; i++) {
		if (x->csv) {
			if (i > 0)
				fputc(',', f);
		} else {
			fputs(i == 0 ? "{" : ",", f);
			put_json_string(f, columns[i].name);
			fputc(':', f);
		}
		put_field(f, x, e, &columns[i]);
	}
	fputs(x->csv ? "\r\n" : "}\n", f);
}

/* CSV's header line, once, and only when there is a ledger to export. */
static void put_header(struct export *x)
{
	if (!x->csv || x->header_done)
		return;
	for (size_t i = 0; i < NCOLUMNS; i++)
		printf("%s%s", i ? "," : "", columns[i].name);
	fputs("\r\n", stdout);
	x->header_done = true;
}

static void show_progress(struct export *x, bool last)
{
	uint64_t now = mono_ms();

	if (!x->progress || (!last && now - x->shown_ms < 200))
		return;
	x->shown_ms = now;
	fprintf(stderr, "\rexport: %" PRIu64 " %s%s", x->rows,
		plural(x->rows, "row", "rows"), last ? "\n" : "");
}

static int export_one(const struct tally_entry *e, void *ctx)
{
	struct export *x = ctx;

	if (e->last_activity_ms < x->cutoff_ms)
		return 0;
	put_header(x);
	put_row(stdout, x, e);
	x->rows++;
	show_progress(x, false);
	/* A closed pipe or a full disk: no use reading on. */
	return ferror(stdout) ? -EIO : 0;
}

static int export_rows(struct ctl *ctl, struct export *x)
{
	struct tally *t = NULL;
	int err;

	if (ctl_open_handle(ctl, "export", &t) < 0)
		return RC_FAIL;
	x->progress = isatty(STDERR_FILENO);
	err = tally_foreach_entry(t, export_one, x);
	if (err == 0)
		put_header(x);
	show_progress(x, true);
	tally_close(t);
	if (err == -EIO && ferror(stdout)) {
		ctl_fail("export: cannot write the output: %s",
			 strerror(errno));
		return RC_FAIL;
	}
	if (err < 0) {
		ctl_read_failed(ctl, "export", err);
		return RC_FAIL;
	}
	return RC_OK;
}

int ctl_export(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"format", required_argument, NULL, 'f'},
		{"since", required_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct export x = {0};
	uint64_t since, now = wall_ms();
	int c;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h')
			return print_help(ctl_export_help);
		if (c == 'f' && (strcmp(optarg, "ndjson") == 0 ||
				 strcmp(optarg, "csv") == 0)) {
			x.csv = strcmp(optarg, "csv") == 0;
		} else if (c == 'f') {
			ctl_fail("export: --format is ndjson or csv, not '%s'",
				 optarg);
			return RC_USAGE;
		} else if (c == 's') {
			if (parse_duration("export", "--since", optarg,
					   &since) < 0)
				return RC_USAGE;
			x.cutoff_ms = since < now ? now - since : 0;
		} else {
			return ctl_usage_error(ctl_export_help, "export");
		}
	}
	if (optind < argc) {
		ctl_fail("export: takes no arguments, got '%s'", argv[optind]);
		return ctl_usage_error(ctl_export_help, "export");
	}
	return export_rows(ctl, &x);
}

/* ---- purge ---- */

/*
 * Session ids per request, and their bytes: libtally refuses a control
 * request over 60 KiB, and an id costs its length and a few bytes more.
 */
#define PURGE_CHUNK 1000
#define PURGE_CHUNK_BYTES 49152
/* tallyd deletes at most this many idle sessions a request. */
#define PURGE_IDLE_MAX 10000
/* Rounds of idle purges: 10^9 sessions, and an end to a loop. */
#define PURGE_ROUNDS_MAX 100000

struct purge_args {
	uint64_t idle_ms;
	uint64_t timeout_ms;
	char **ids;
	size_t nids;
};

/* How many ids from i on make one request. */
static size_t chunk_at(const struct purge_args *a, size_t i)
{
	size_t n = 0, bytes = 0;

	while (i + n < a->nids && n < PURGE_CHUNK) {
		bytes += strlen(a->ids[i + n]) + 8;
		if (n > 0 && bytes > PURGE_CHUNK_BYTES)
			break;
		n++;
	}
	return n;
}

static int purge_named(struct tally *t, const struct purge_args *a,
		       uint64_t *total)
{
	uint64_t purged;
	size_t n;
	int err;

	for (size_t i = 0; i < a->nids; i += n) {
		n = chunk_at(a, i);
		purged = 0;
		err = tally_purge(t, (const char *const *)a->ids + i, n, 0,
				  (int)a->timeout_ms, &purged);
		if (err < 0)
			return err;
		*total += purged;
	}
	return 0;
}

/* Asks again while tallyd says it stopped at its most per request. */
static int purge_idle(struct tally *t, const struct purge_args *a,
		      uint64_t *total)
{
	uint64_t purged = PURGE_IDLE_MAX;
	int err;

	for (int round = 0;
	     purged == PURGE_IDLE_MAX && round < PURGE_ROUNDS_MAX; round++) {
		purged = 0;
		err = tally_purge(t, NULL, 0, a->idle_ms, (int)a->timeout_ms,
				  &purged);
		if (err < 0)
			return err;
		*total += purged;
	}
	return 0;
}

static int purge_sessions(struct ctl *ctl, const struct purge_args *a)
{
	struct tally *t = NULL;
	uint64_t total = 0;
	int err = 0;

	if (ctl_open_handle(ctl, "purge", &t) < 0)
		return RC_FAIL;
	if (a->nids > 0)
		err = purge_named(t, a, &total);
	if (err == 0 && a->idle_ms > 0)
		err = purge_idle(t, a, &total);
	tally_close(t);
	if (err == -ETIMEDOUT) {
		ask_failed(ctl, "purge", err, (int)a->timeout_ms);
		fprintf(stderr,
			"tallyctl: the purge may still be applied: look with "
			"'tallyctl sessions' before purging again%s\n",
			total ? "" : " (nothing was confirmed purged)");
	} else if (err == -EINVAL && total == 0) {
		/* The ids' lengths were checked: one is not UTF-8. */
		ctl_fail("purge: refused: a session id is not valid UTF-8");
		return RC_USAGE;
	} else if (err < 0) {
		ctl_fail("purge: tallyd refused: %s", tally_strerror(err));
	}
	if (err < 0 && total == 0)
		return RC_FAIL;
	printf("purged %" PRIu64 " %s\n", total,
	       plural(total, "session", "sessions"));
	return err < 0 ? RC_FAIL : RC_OK;
}

static int check_ids(char **ids, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!*ids[i] || strlen(ids[i]) > TALLY_ID_MAX) {
			ctl_fail("purge: a session id has 1 to %d bytes, not "
				 "'%.40s'",
				 TALLY_ID_MAX, ids[i]);
			return -EINVAL;
		}
	}
	return 0;
}

int ctl_purge(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"idle-for", required_argument, NULL, 'i'},
		{"timeout", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct purge_args a = {.timeout_ms = 30000};
	int c, err = 0;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h')
			return print_help(ctl_purge_help);
		else if (c == 'i')
			err = parse_duration("purge", "--idle-for", optarg,
					     &a.idle_ms);
		else if (c == 't')
			err = parse_count("purge", "--timeout", optarg, 1,
					  INT_MAX, &a.timeout_ms);
		else
			return ctl_usage_error(ctl_purge_help, "purge");
		if (err < 0)
			return RC_USAGE;
	}
	a.ids = argv + optind;
	a.nids = (size_t)(argc - optind);
	if (a.nids == 0 && a.idle_ms == 0) {
		ctl_fail(
			"purge: name the sessions to purge, or give --idle-for "
			"with a duration above 0");
		return ctl_usage_error(ctl_purge_help, "purge");
	}
	if (check_ids(a.ids, a.nids) < 0)
		return RC_USAGE;
	return purge_sessions(ctl, &a);
}

/* ---- check ---- */

struct census {
	uint64_t entries, sessions;
	char last[TALLY_ID_MAX + 1];
};

static int count_entry(const struct tally_entry *e, void *ctx)
{
	struct census *c = ctx;

	c->entries++;
	if (c->entries == 1 || strcmp(c->last, e->session_id) != 0) {
		c->sessions++;
		snprintf(c->last, sizeof(c->last), "%s", e->session_id);
	}
	return 0;
}

static int report_problems(const struct ctl *ctl, int problems,
			   const char *report)
{
	fputs(report ? report : "", stdout);
	ctl_fail("check: %d %s in the ledger in %s. Keep a copy of ledger.mdb "
		 "(mdb_copy), then purge the sessions named (tallyctl purge "
		 "SESSION...) or restore a backup.",
		 problems, plural((uint64_t)problems, "problem", "problems"),
		 ctl->dir);
	return RC_FAIL;
}

static int check_ledger(struct ctl *ctl)
{
	struct census census = {0};
	struct tally *t = NULL;
	char *report = NULL;
	int rc = RC_FAIL;
	int err;

	if (ctl_open_handle(ctl, "check", &t) < 0)
		return RC_FAIL;
	err = tally_check(t, &report);
	if (err > 0) {
		rc = report_problems(ctl, err, report);
		goto out;
	}
	if (err == 0)
		err = tally_foreach_entry(t, count_entry, &census);
	if (err < 0) {
		ctl_read_failed(ctl, "check", err);
		goto out;
	}
	printf("ledger consistent: %" PRIu64 " %s, %" PRIu64 " %s\n",
	       census.entries, plural(census.entries, "entry", "entries"),
	       census.sessions, plural(census.sessions, "session", "sessions"));
	rc = RC_OK;
out:
	free(report);
	tally_close(t);
	return rc;
}

int ctl_check(struct ctl *ctl, int argc, char **argv)
{
	int rc = parse_bare(ctl, argc, argv, ctl_check_help);

	return rc == RC_GO_ON ? check_ledger(ctl) : rc;
}

/* ---- metrics ---- */

static int print_metrics(struct ctl *ctl)
{
	struct tally *t = NULL;
	char *text = NULL;
	int err;

	if (ctl_open_handle(ctl, "metrics", &t) < 0)
		return RC_FAIL;
	err = tally_metrics_text(t, ANSWER_MS, &text);
	tally_close(t);
	if (err < 0) {
		ask_failed(ctl, "metrics", err, ANSWER_MS);
		return RC_FAIL;
	}
	fputs(text, stdout);
	free(text);
	return RC_OK;
}

int ctl_metrics(struct ctl *ctl, int argc, char **argv)
{
	int rc = parse_bare(ctl, argc, argv, ctl_metrics_help);

	return rc == RC_GO_ON ? print_metrics(ctl) : rc;
}

/* ---- cost ---- */

/*
 * Amounts are whole units of 10^-15 of the currency. A price per million
 * tokens has at most 9 decimals, so it is a whole number of 10^-9, and a
 * token costs that many 10^-15: tokens * price is exact. Counts below
 * 2^64 times prices below 10^16 stay far below 2^128.
 */
__extension__ typedef unsigned __int128 amount_t;

#define PRICE_DECIMALS 9
#define AMOUNT_DECIMALS 15
#define PRICE_WHOLE_DIGITS 7

enum price_kind { P_INPUT, P_CACHED, P_WRITE, P_OUTPUT, P_KINDS };

struct price {
	const char *provider;
	const char *model;
	uint64_t per_million[P_KINDS];
};

struct price_table {
	json_t *root;
	const char *path;
	const char *currency;
	struct price *prices;
	size_t n;
	/* The most decimals a price of the table has. */
	int decimals;
};

static const char *const price_names[P_KINDS] = {"input", "cached_input",
						 "cache_write", "output"};

/* "2.50" into 2500000000 (units of 10^-9); -EINVAL for anything else. */
static int parse_price(const char *s, uint64_t *out, int *decimals)
{
	uint64_t v = 0;
	int whole = 0, frac = 0;
	const char *p = s;

	for (; *p >= '0' && *p <= '9'; p++, whole++)
		v = v * 10 + (uint64_t)(*p - '0');
	if (whole == 0 || whole > PRICE_WHOLE_DIGITS)
		return -EINVAL;
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++, frac++)
			v = v * 10 + (uint64_t)(*p - '0');
		if (frac == 0 || frac > PRICE_DECIMALS)
			return -EINVAL;
	}
	if (*p != '\0')
		return -EINVAL;
	for (int i = frac; i < PRICE_DECIMALS; i++)
		v *= 10;
	*out = v;
	if (frac > *decimals)
		*decimals = frac;
	return 0;
}

__attribute__((format(printf, 3, 4))) static int
bad_table(const struct price_table *pt, size_t i, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tallyctl: cost: %s: prices[%zu]: ", pt->path, i);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return -EINVAL;
}

static bool known_key(const char *key, const char *const *keys, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(key, keys[i]) == 0)
			return true;
	return false;
}

static int read_price_kind(struct price_table *pt, size_t i, json_t *obj,
			   int kind, struct price *p)
{
	json_t *v = json_object_get(obj, price_names[kind]);

	if (!v && kind == P_WRITE) {
		p->per_million[P_WRITE] = p->per_million[P_INPUT];
		return 0;
	}
	if (!v)
		return bad_table(pt, i, "\"%s\" is missing", price_names[kind]);
	if (!json_is_string(v))
		return bad_table(pt, i,
				 "\"%s\" must be a decimal string like "
				 "\"2.50\", not a JSON %s",
				 price_names[kind],
				 json_is_number(v) ? "number" : "value");
	if (parse_price(json_string_value(v), &p->per_million[kind],
			&pt->decimals) < 0)
		return bad_table(pt, i,
				 "\"%s\" is \"%s\": a price is digits with "
				 "an optional point, at most %d before it "
				 "and %d after (\"2.50\")",
				 price_names[kind], json_string_value(v),
				 PRICE_WHOLE_DIGITS, PRICE_DECIMALS);
	return 0;
}

static int read_price(struct price_table *pt, size_t i, json_t *obj)
{
	static const char *const keys[] = {
		"provider", "model",	   "input",  "cached_input",
		"output",   "cache_write", "comment"};
	struct price *p = &pt->prices[i];
	const char *key;
	json_t *v;
	int err;

	if (!json_is_object(obj))
		return bad_table(pt, i, "an entry is a JSON object");
	json_object_foreach(obj, key, v)
	{
		if (!known_key(key, keys, sizeof(keys) / sizeof(keys[0])))
			return bad_table(pt, i, "unknown key \"%s\"", key);
	}
	p->provider = json_string_value(json_object_get(obj, "provider"));
	p->model = json_string_value(json_object_get(obj, "model"));
	if (!p->provider || !p->model)
		return bad_table(pt, i,
				 "\"provider\" and \"model\" are required "
				 "strings (shell patterns: \"*\" matches "
				 "anything)");
	/* The input price first: cache_write defaults to it. */
	for (int k = 0; k < P_KINDS; k++)
		if ((err = read_price_kind(pt, i, obj, k, p)) < 0)
			return err;
	return 0;
}

static int read_table_top(struct price_table *pt)
{
	static const char *const keys[] = {"currency", "prices", "comment"};
	json_t *cur, *v;
	const char *key;

	if (!json_is_object(pt->root) ||
	    !json_is_array(json_object_get(pt->root, "prices"))) {
		ctl_fail("cost: %s: the price table is an object with a "
			 "\"prices\" array (see tallyctl cost --help)",
			 pt->path);
		return -EINVAL;
	}
	json_object_foreach(pt->root, key, v)
	{
		if (!known_key(key, keys, sizeof(keys) / sizeof(keys[0]))) {
			ctl_fail("cost: %s: unknown key \"%s\"", pt->path, key);
			return -EINVAL;
		}
	}
	cur = json_object_get(pt->root, "currency");
	pt->currency = cur ? json_string_value(cur) : "USD";
	if (!pt->currency) {
		ctl_fail("cost: %s: \"currency\" is a string", pt->path);
		return -EINVAL;
	}
	return 0;
}

static int load_prices(struct price_table *pt, const char *path)
{
	json_error_t jerr;
	json_t *arr;
	int err;

	pt->path = path;
	pt->root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!pt->root) {
		ctl_fail("cost: cannot read the price table %s: %s (line %d)",
			 path, jerr.text, jerr.line);
		return -EINVAL;
	}
	if ((err = read_table_top(pt)) < 0)
		return err;
	arr = json_object_get(pt->root, "prices");
	pt->n = json_array_size(arr);
	pt->prices = calloc(pt->n ? pt->n : 1, sizeof(*pt->prices));
	if (!pt->prices)
		return -ENOMEM;
	for (size_t i = 0; i < pt->n; i++)
		if ((err = read_price(pt, i, json_array_get(arr, i))) < 0)
			return err;
	return 0;
}

static void prices_fini(struct price_table *pt)
{
	free(pt->prices);
	json_decref(pt->root);
}

static const struct price *find_price(const struct price_table *pt,
				      const char *provider, const char *model)
{
	for (size_t i = 0; i < pt->n; i++)
		if (fnmatch(pt->prices[i].provider, provider, 0) == 0 &&
		    fnmatch(pt->prices[i].model, model, 0) == 0)
			return &pt->prices[i];
	return NULL;
}

/* One LLM of the session, its counts and its cost. */
struct cost_row {
	const char *name, *provider, *model;
	uint64_t input, cache_read, cache_write, output;
	bool priced;
	amount_t amount;
};

static uint64_t detail(const json_t *e, const char *name)
{
	return u64_field(json_object_get(e, "details"), name);
}

static void price_row(struct cost_row *r, const struct price *p)
{
	/* Input counts every prompt token; the cached parts have theirs. */
	uint64_t cached = r->cache_read + r->cache_write;
	uint64_t plain = r->input > cached ? r->input - cached : 0;

	r->priced = p != NULL;
	if (!p)
		return;
	r->amount = (amount_t)plain * p->per_million[P_INPUT] +
		    (amount_t)r->cache_read * p->per_million[P_CACHED] +
		    (amount_t)r->cache_write * p->per_million[P_WRITE] +
		    (amount_t)r->output * p->per_million[P_OUTPUT];
}

static void cost_row_from(struct cost_row *r, const char *llm, const json_t *e,
			  const struct price_table *pt)
{
	const json_t *usage = json_object_get(e, "usage");
	const char *name =
		json_string_value(json_object_get(e, "llmDisplayName"));

	r->name = name && *name ? name : llm;
	r->provider = json_string_value(json_object_get(e, "providerType"));
	r->model = json_string_value(json_object_get(e, "modelType"));
	if (!r->provider)
		r->provider = "";
	if (!r->model)
		r->model = "";
	r->input = u64_field(usage, "inputTokens");
	r->output = u64_field(usage, "outputTokens");
	r->cache_read = detail(e, "gen_ai.usage.cache_read.input_tokens");
	r->cache_write = detail(e, "gen_ai.usage.cache_creation.input_tokens");
	price_row(r, find_price(pt, r->provider, r->model));
}

/* An amount of 10^-15 units with `decimals` decimals; exact, no rounding. */
static void format_amount(amount_t a, int decimals, char *buf, size_t len)
{
	char digits[64];
	int n = 0, i = 0;

	for (int k = decimals; k < AMOUNT_DECIMALS; k++)
		a /= 10;
	do {
		digits[n++] = (char)('0' + (int)(a % 10));
		a /= 10;
	} while (a > 0 || n <= decimals);
	while (n > 0 && (size_t)i + 2 < len) {
		buf[i++] = digits[--n];
		if (n == decimals && decimals > 0)
			buf[i++] = '.';
	}
	buf[i] = '\0';
}

/* The count columns: input, cache read, cache write, output. */
static const char *const count_heads[4] = {"INPUT", "CACHE READ", "CACHE WRITE",
					   "OUTPUT"};

struct cost_widths {
	int name, provider, model, num[4], cost;
};

static void measure_costs(const struct cost_row *rows, size_t n, int decimals,
			  struct cost_widths *w)
{
	char buf[64];

	*w = (struct cost_widths){3, 8, 5, {5, 10, 11, 6}, 8};
	for (size_t i = 0; i < n; i++) {
		const uint64_t nums[] = {rows[i].input, rows[i].cache_read,
					 rows[i].cache_write, rows[i].output};

		if (ctl_text_width(rows[i].name) > w->name)
			w->name = ctl_text_width(rows[i].name);
		if (ctl_text_width(rows[i].provider) > w->provider)
			w->provider = ctl_text_width(rows[i].provider);
		if (ctl_text_width(rows[i].model) > w->model)
			w->model = ctl_text_width(rows[i].model);
		for (size_t k = 0; k < 4; k++)
			if (num_width(nums[k]) > w->num[k])
				w->num[k] = num_width(nums[k]);
		format_amount(rows[i].amount, decimals, buf, sizeof(buf));
		if ((int)strlen(buf) > w->cost)
			w->cost = (int)strlen(buf);
	}
}

static void print_cost_row(const struct cost_row *r,
			   const struct cost_widths *w, int decimals)
{
	char amount[64];

	put_cell(stdout, r->name, w->name);
	fputs("  ", stdout);
	put_cell(stdout, r->provider, w->provider);
	fputs("  ", stdout);
	put_cell(stdout, r->model, w->model);
	printf("  %*" PRIu64 "  %*" PRIu64 "  %*" PRIu64 "  %*" PRIu64,
	       w->num[0], r->input, w->num[1], r->cache_read, w->num[2],
	       r->cache_write, w->num[3], r->output);
	if (r->priced)
		format_amount(r->amount, decimals, amount, sizeof(amount));
	printf("  %*s\n", w->cost, r->priced ? amount : "unpriced");
}

static void print_costs(const char *session, const struct price_table *pt,
			const struct cost_row *rows, size_t n)
{
	int decimals = pt->decimals + 6;
	struct cost_widths w;
	amount_t total = 0;
	size_t unpriced = 0;
	char amount[64];

	measure_costs(rows, n, decimals, &w);
	printf("session ");
	put_cell(stdout, session, 0);
	printf(": %s per the prices in %s\n\n", pt->currency, pt->path);
	printf("%-*s  %-*s  %-*s", w.name, "LLM", w.provider, "PROVIDER",
	       w.model, "MODEL");
	for (int k = 0; k < 4; k++)
		printf("  %*s", w.num[k], count_heads[k]);
	printf("  %*s\n", w.cost, "COST");
	for (size_t i = 0; i < n; i++) {
		print_cost_row(&rows[i], &w, decimals);
		total += rows[i].amount;
		unpriced += !rows[i].priced;
	}
	format_amount(total, decimals, amount, sizeof(amount));
	printf("\ntotal %s %s", amount, pt->currency);
	if (unpriced)
		printf(" (excludes %zu unpriced %s)", unpriced,
		       plural(unpriced, "LLM", "LLMs"));
	putchar('\n');
}

static int cost_rows(const char *session, const json_t *snap,
		     const struct price_table *pt)
{
	size_t n = json_object_size(snap), i = 0;
	struct cost_row *rows;
	const char *llm;
	json_t *e;

	if (n == 0) {
		printf("session ");
		put_cell(stdout, session, 0);
		printf(" has no usage in the ledger: nothing to cost\n");
		return RC_OK;
	}
	rows = calloc(n, sizeof(*rows));
	if (!rows) {
		ctl_fail("cost: %s", strerror(ENOMEM));
		return RC_FAIL;
	}
	json_object_foreach((json_t *)snap, llm, e)
		cost_row_from(&rows[i++], llm, e, pt);
	print_costs(session, pt, rows, n);
	free(rows);
	return RC_OK;
}

static int cost_session(struct ctl *ctl, const char *session,
			const char *prices)
{
	struct price_table pt = {0};
	struct tally *t = NULL;
	json_t *snap = NULL;
	char *text = NULL;
	int rc = RC_FAIL;
	int err;

	if (load_prices(&pt, prices) < 0)
		goto out;
	if (ctl_open_handle(ctl, "cost", &t) < 0)
		goto out;
	err = tally_session_json_ex(t, session, TALLY_JSON_DETAILS, &text);
	if (err < 0) {
		ctl_read_failed(ctl, "cost", err);
		rc = err == -EINVAL || err == -EILSEQ ? RC_USAGE : RC_FAIL;
		goto out;
	}
	snap = ctl_load_json("cost", text);
	if (snap)
		rc = cost_rows(session, snap, &pt);
out:
	json_decref(snap);
	free(text);
	tally_close(t);
	prices_fini(&pt);
	return rc;
}

int ctl_cost(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"prices", required_argument, NULL, 'p'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *prices = getenv("TALLY_PRICES");
	int c;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h')
			return print_help(ctl_cost_help);
		if (c != 'p')
			return ctl_usage_error(ctl_cost_help, "cost");
		prices = optarg;
	}
	if (argc - optind != 1) {
		ctl_fail("cost: expects one SESSION, got %d arguments",
			 argc - optind);
		return ctl_usage_error(ctl_cost_help, "cost");
	}
	if (!prices || !*prices) {
		ctl_fail(
			"cost: no price table: pass --prices FILE or set "
			"TALLY_PRICES (the format is in tallyctl cost --help)");
		return RC_USAGE;
	}
	if (!*argv[optind] || strlen(argv[optind]) > TALLY_ID_MAX) {
		ctl_fail("cost: a session id has 1 to %d bytes", TALLY_ID_MAX);
		return RC_USAGE;
	}
	return cost_session(ctl, argv[optind], prices);
}
