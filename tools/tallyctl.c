/*
 * tallyctl - the operators' tool: show one session, read the daemon's
 * counters, record a usage by hand; the commands that work on the whole
 * ledger (sessions, top, export, purge, check, cost, metrics) are in
 * ctl_ops.c.
 *
 * It links only libtally, and reads the JSON that library returns with
 * jansson. Every command parses its own options; main() only parses the
 * global ones and dispatches through the command table.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "ctl_ops.h"
#include "tally.h"

/* Exit statuses; the help text promises them. */
enum {
	RC_OK = 0,
	RC_FAIL = 1,
	RC_USAGE = 2,
	/* Not an exit status: the global options let main() go on. */
	RC_GO_ON = -1,
};

/* A provider response larger than this is surely not one. */
#define RESPONSE_MAX (64u << 20)

#define DUMP_FLAGS (JSON_INDENT(2) | JSON_PRESERVE_ORDER)

struct command {
	const char *name;
	int (*run)(struct ctl *ctl, int argc, char **argv);
	const char *help;
};

static const struct command *find_command(const char *name);

static const char usage_text[] =
	"Usage: tallyctl [--dir DIR] COMMAND [ARGS]\n"
	"       tallyctl -h|--help | -V|--version\n"
	"\n"
	"Inspect the tally ledger and the tallyd daemon.\n"
	"\n"
	"Commands:\n"
	"  show SESSION [--details]  print a session's usage per LLM as JSON\n"
	"  sessions [--sort ...]     list the sessions, most recent first\n"
	"  top [--interval S]        watch the busiest sessions and LLMs\n"
	"  stats [--json]            print tallyd's counters\n"
	"  metrics                   print tallyd's metrics (Prometheus)\n"
	"  export [--format F]       print every (session, LLM) row\n"
	"  cost SESSION              price a session's usage\n"
	"  purge SESSION...          delete sessions (or --idle-for D)\n"
	"  check                     verify the ledger's totals and records\n"
	"  record ...                record one usage and wait for its commit\n"
	"  help [COMMAND]            print the help of COMMAND\n"
	"\n"
	"Options:\n"
	"  -d, --dir DIR   the ledger directory; default $TALLY_DIR, else\n"
	"                  /var/lib/tally for root, else\n"
	"                  ${XDG_STATE_HOME:-~/.local/state}/tally\n"
	"  -h, --help      print this help and exit\n"
	"  -V, --version   print the version and exit\n"
	"\n"
	"Run 'tallyctl COMMAND --help' for the options of a command.\n"
	"\n"
	"Exit status: 0 success; 1 runtime failure (no ledger, tallyd not\n"
	"answering, a library error); 2 usage error (unknown command or\n"
	"option, a bad value).\n";

static const char show_help[] =
	"Usage: tallyctl [--dir DIR] show SESSION [--details]\n"
	"\n"
	"Print the session's usage per LLM, as the JSON object flow code\n"
	"reads, indented by 2. An unknown session prints {}.\n"
	"\n"
	"  --details   add each LLM's detail counts (cache, reasoning, calls)\n"
	"  -h, --help  print this help and exit\n"
	"\n"
	"Exit status: 0 printed; 1 no ledger or a library error;\n"
	"2 usage error.\n";

static const char stats_help[] =
	"Usage: tallyctl [--dir DIR] stats [--json]\n"
	"\n"
	"Ask tallyd for its counters (waits up to 2 s) and print them as a\n"
	"name/value list. Nested counters are named with dots.\n"
	"\n"
	"  --json      print the JSON object instead of the list\n"
	"  -h, --help  print this help and exit\n"
	"\n"
	"Exit status: 0 printed; 1 tallyd did not answer or a library error;\n"
	"2 usage error.\n";

static const char record_help[] =
	"Usage: tallyctl [--dir DIR] record --session S --llm ID\n"
	"           [--name N] [--provider P] [--model M]\n"
	"           (--input N --output N | --response FILE |\n"
	"            --prompt-file F --completion-file F | --missing)\n"
	"           [--estimated] [--timeout MS]\n"
	"\n"
	"Record the usage of one LLM call, then wait until tallyd has\n"
	"committed it.\n"
	"\n"
	"  --session S       the session id (required)\n"
	"  --llm ID          the LLM reference id (required)\n"
	"  --name N          the LLM's display name\n"
	"  --provider P      the provider type, e.g. openAI, anthropic;\n"
	"                    required with --response, where it selects the\n"
	"                    response format\n"
	"  --model M         the model type, e.g. gpt-4o\n"
	"  --input N         input tokens billed (0 to 1000000000)\n"
	"  --output N        output tokens billed (0 to 1000000000)\n"
	"  --response FILE   take the counts from the provider's JSON\n"
	"                    response in FILE; '-' reads standard input\n"
	"  --prompt-file F   estimate the input tokens from the prompt's text\n"
	"                    in F, for the model of --model (required): exact\n"
	"                    for OpenAI models, a ratio for the others\n"
	"  --completion-file F  estimate the output tokens from the text of\n"
	"                    the completion in F. Of the two files either may\n"
	"                    be left out: that side is recorded as missing.\n"
	"                    One of them may be '-'. The estimate is printed\n"
	"  --missing         the provider reported no usage and the text is\n"
	"                    not at hand: record a call whose usage is\n"
	"                    missing, which is counted apart, not as 0 tokens\n"
	"  --estimated       the counts were estimated, not reported by the\n"
	"                    provider (not with --response nor --missing;\n"
	"                    implied by the text files)\n"
	"  --timeout MS      how long to wait for the commit; default 5000\n"
	"  -h, --help        print this help and exit\n"
	"\n"
	"Exit status: 0 committed; 1 refused by the library, or not confirmed\n"
	"within the timeout (is tallyd running?); 2 usage error.\n";

static const char help_help[] =
	"Usage: tallyctl help [COMMAND]\n"
	"\n"
	"Print the help of COMMAND, or the general help.\n";

/* Prints a help text; to stderr it follows a usage error. */
static int print_help(const char *text, FILE *f, int rc)
{
	fputs(text, f);
	return rc;
}

static int dump_json(const json_t *root)
{
	if (json_dumpf(root, stdout, DUMP_FLAGS) < 0)
		return -EIO;
	putchar('\n');
	return 0;
}

/* ---- show ---- */

static int show_session(struct ctl *ctl, const char *session, unsigned flags)
{
	struct tally *t = NULL;
	char *text = NULL;
	json_t *root = NULL;
	int rc = RC_FAIL;
	int err;

	if (ctl_open_handle(ctl, "show", &t) < 0)
		return RC_FAIL;
	err = tally_session_json_ex(t, session, flags, &text);
	if (err < 0) {
		ctl_read_failed(ctl, "show", err);
		if (err == -EINVAL || err == -EILSEQ)
			rc = RC_USAGE;
		goto out;
	}
	root = ctl_load_json("show", text);
	if (root && dump_json(root) == 0)
		rc = RC_OK;
out:
	json_decref(root);
	free(text);
	tally_close(t);
	return rc;
}

static int cmd_show(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"details", no_argument, NULL, 'D'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	unsigned flags = 0;
	int c;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'D')
			flags |= TALLY_JSON_DETAILS;
		else if (c == 'h')
			return print_help(show_help, stdout, RC_OK);
		else
			return ctl_usage_error(show_help, "show");
	}
	if (argc - optind != 1) {
		ctl_fail("show: expects one SESSION, got %d arguments",
			 argc - optind);
		return ctl_usage_error(show_help, "show");
	}
	if (!*argv[optind] || strlen(argv[optind]) > TALLY_ID_MAX) {
		ctl_fail("show: a session id has 1 to %d bytes", TALLY_ID_MAX);
		return RC_USAGE;
	}
	return show_session(ctl, argv[optind], flags);
}

/* Parses the lone --json option of stats. */
static int parse_json_flag(struct ctl *ctl, int argc, char **argv,
			   const char *help, bool *as_json)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cmd = argv[0];
	int c;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'j')
			*as_json = true;
		else if (c == 'h')
			return print_help(help, stdout, RC_OK);
		else
			return ctl_usage_error(help, cmd);
	}
	if (optind < argc) {
		ctl_fail("%s: takes no arguments, got '%s'", cmd, argv[optind]);
		return ctl_usage_error(help, cmd);
	}
	return RC_GO_ON;
}

/* ---- stats ---- */

typedef void stat_fn(const char *name, const json_t *value, void *arg);

/* Calls fn on every leaf of obj, naming nested ones "outer.inner". */
static void walk_stats(const json_t *obj, const char *prefix, stat_fn *fn,
		       void *arg)
{
	const char *key;
	const json_t *v;
	char name[256];
	void *it;

	for (it = json_object_iter((json_t *)obj); it;
	     it = json_object_iter_next((json_t *)obj, it)) {
		key = json_object_iter_key(it);
		v = json_object_iter_value(it);
		if (*prefix)
			snprintf(name, sizeof(name), "%s.%s", prefix, key);
		else
			snprintf(name, sizeof(name), "%s", key);
		if (json_is_object(v))
			walk_stats(v, name, fn, arg);
		else
			fn(name, v, arg);
	}
}

static void widest_name(const char *name, const json_t *value, void *arg)
{
	int *width = arg;

	(void)value;
	if (ctl_text_width(name) > *width)
		*width = ctl_text_width(name);
}

static void print_stat(const char *name, const json_t *value, void *arg)
{
	const int *width = arg;
	char *text;

	printf("%-*s  ", *width, name);
	if (json_is_string(value)) {
		puts(json_string_value(value));
		return;
	}
	text = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT);
	puts(text ? text : "?");
	free(text);
}

static int print_stats(const json_t *root, bool as_json)
{
	int width = 0;

	if (as_json)
		return dump_json(root) < 0 ? RC_FAIL : RC_OK;
	if (!json_is_object(root)) {
		ctl_fail("stats: libtally returned JSON that is not an object");
		return RC_FAIL;
	}
	walk_stats(root, "", widest_name, &width);
	walk_stats(root, "", print_stat, &width);
	return RC_OK;
}

static int read_stats(struct ctl *ctl, bool as_json)
{
	struct tally *t = NULL;
	char *text = NULL;
	json_t *root = NULL;
	int rc = RC_FAIL;
	int err;

	if (ctl_open_handle(ctl, "stats", &t) < 0)
		return RC_FAIL;
	err = tally_stats_json(t, 2000, &text);
	if (err == -ETIMEDOUT) {
		ctl_fail("tallyd did not answer on %s (is it running?)",
			 ctl->dir);
		goto out;
	}
	if (err < 0) {
		ctl_fail("stats: %s", tally_strerror(err));
		goto out;
	}
	root = ctl_load_json("stats", text);
	if (root)
		rc = print_stats(root, as_json);
out:
	json_decref(root);
	free(text);
	tally_close(t);
	return rc;
}

static int cmd_stats(struct ctl *ctl, int argc, char **argv)
{
	bool as_json = false;
	int rc;

	rc = parse_json_flag(ctl, argc, argv, stats_help, &as_json);
	if (rc != RC_GO_ON)
		return rc;
	return read_stats(ctl, as_json);
}

/* ---- record ---- */

struct record_args {
	struct tally_usage u;
	const char *response;
	const char *prompt_file;
	const char *completion_file;
	bool has_input, has_output;
	bool missing;
	int timeout_ms;
};

/*
 * Parses a whole non-negative decimal number no larger than max. strtoull
 * alone would accept leading blanks, a sign (and negate "-1" into a huge
 * value) and trailing junk; all of those are refused here.
 */
static int parse_number(const char *opt, const char *s, uint64_t max,
			uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (*s < '0' || *s > '9') {
		ctl_fail("record: %s expects a whole number from 0 to %" PRIu64
			 ", not '%s'",
			 opt, max, s);
		return -EINVAL;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end != '\0') {
		ctl_fail("record: %s expects a whole number, not '%s'", opt, s);
		return -EINVAL;
	}
	if (errno == ERANGE || v > max) {
		ctl_fail("record: %s %s is too large: at most %" PRIu64, opt, s,
			 max);
		return -ERANGE;
	}
	*out = v;
	return 0;
}

static int record_option(struct record_args *a, int c, const char *arg)
{
	uint64_t v;
	int err = 0;

	switch (c) {
	case 's':
		a->u.session_id = arg;
		break;
	case 'l':
		a->u.llm_reference_id = arg;
		break;
	case 'n':
		a->u.llm_display_name = arg;
		break;
	case 'p':
		a->u.provider_type = arg;
		break;
	case 'm':
		a->u.model_type = arg;
		break;
	case 'r':
		a->response = arg;
		break;
	case 'e':
		a->u.flags |= TALLY_USAGE_ESTIMATED;
		break;
	case 'P':
		a->prompt_file = arg;
		break;
	case 'C':
		a->completion_file = arg;
		break;
	case 'M':
		a->missing = true;
		break;
	case 'i':
		err = parse_number("--input", arg, TALLY_TOKENS_MAX,
				   &a->u.input_tokens);
		a->has_input = true;
		break;
	case 'o':
		err = parse_number("--output", arg, TALLY_TOKENS_MAX,
				   &a->u.output_tokens);
		a->has_output = true;
		break;
	case 't':
		err = parse_number("--timeout", arg, INT_MAX, &v);
		a->timeout_ms = (int)v;
		break;
	default:
		err = -EINVAL;
	}
	return err;
}

/* Refuses a string longer than max bytes (or empty, if required). */
static int check_length(const char *opt, const char *v, size_t max,
			bool required)
{
	size_t len = v ? strlen(v) : 0;

	if ((required && len == 0) || len > max) {
		ctl_fail("record: %s takes %d to %zu bytes, not %zu", opt,
			 required ? 1 : 0, max, len);
		return -EINVAL;
	}
	return 0;
}

static int check_strings(const struct tally_usage *u)
{
	if (check_length("--session", u->session_id, TALLY_ID_MAX, true) ||
	    check_length("--llm", u->llm_reference_id, TALLY_ID_MAX, true) ||
	    check_length("--name", u->llm_display_name, TALLY_NAME_MAX,
			 false) ||
	    check_length("--provider", u->provider_type, TALLY_NAME_MAX,
			 false) ||
	    check_length("--model", u->model_type, TALLY_NAME_MAX, false))
		return -EINVAL;
	return 0;
}

/* How many of the four ways of giving the counts were used. */
static int count_sources(const struct record_args *a)
{
	return (a->has_input || a->has_output) + !!a->response +
	       (a->prompt_file || a->completion_file) + a->missing;
}

static int check_text_args(const struct record_args *a)
{
	if (!a->u.model_type) {
		ctl_fail("record: --prompt-file and --completion-file need "
			 "--model, which selects how tokens are counted");
		return -EINVAL;
	}
	if (a->prompt_file && a->completion_file &&
	    strcmp(a->prompt_file, "-") == 0 &&
	    strcmp(a->completion_file, "-") == 0) {
		ctl_fail("record: only one of the text files may be '-'");
		return -EINVAL;
	}
	return 0;
}

/* The combinations getopt_long cannot check. */
static int check_record_args(const struct record_args *a)
{
	if (!a->u.session_id || !a->u.llm_reference_id) {
		ctl_fail("record: --session and --llm are required");
		return -EINVAL;
	}
	if (check_strings(&a->u) < 0)
		return -EINVAL;
	if (count_sources(a) != 1) {
		ctl_fail("record: give one of --input N --output N, --response "
			 "FILE, --prompt-file F and --completion-file F, or "
			 "--missing");
		return -EINVAL;
	}
	if (a->has_input != a->has_output) {
		ctl_fail("record: give --input N and --output N, or --response "
			 "FILE");
		return -EINVAL;
	}
	if (a->response && !a->u.provider_type) {
		ctl_fail(
			"record: --response needs --provider, which selects the "
			"response format");
		return -EINVAL;
	}
	if ((a->response || a->missing) &&
	    (a->u.flags & TALLY_USAGE_ESTIMATED)) {
		ctl_fail("record: --estimated does not go with %s",
			 a->response ? "--response: a response holds the "
				       "provider's own counts"
				     : "--missing: there are no counts");
		return -EINVAL;
	}
	if (a->prompt_file || a->completion_file)
		return check_text_args(a);
	return 0;
}

static int parse_record(struct ctl *ctl, int argc, char **argv,
			struct record_args *a)
{
	static const struct option opts[] = {
		{"session", required_argument, NULL, 's'},
		{"llm", required_argument, NULL, 'l'},
		{"name", required_argument, NULL, 'n'},
		{"provider", required_argument, NULL, 'p'},
		{"model", required_argument, NULL, 'm'},
		{"input", required_argument, NULL, 'i'},
		{"output", required_argument, NULL, 'o'},
		{"response", required_argument, NULL, 'r'},
		{"prompt-file", required_argument, NULL, 'P'},
		{"completion-file", required_argument, NULL, 'C'},
		{"missing", no_argument, NULL, 'M'},
		{"estimated", no_argument, NULL, 'e'},
		{"timeout", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;

	ctl_begin_options(ctl, argv);
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h')
			return print_help(record_help, stdout, RC_OK);
		if (c == '?')
			return ctl_usage_error(record_help, "record");
		if (record_option(a, c, optarg) < 0)
			return RC_USAGE;
	}
	if (optind < argc) {
		ctl_fail("record: takes no arguments, got '%s'", argv[optind]);
		return ctl_usage_error(record_help, "record");
	}
	if (check_record_args(a) < 0)
		return RC_USAGE;
	return RC_GO_ON;
}

/* Makes room for one more byte and the NUL, within RESPONSE_MAX. */
static int grow(char **buf, size_t *cap, size_t n)
{
	size_t want;
	char *p;

	if (*cap - n >= 4096)
		return 0;
	want = *cap ? *cap * 2 : 65536;
	if (want > RESPONSE_MAX + 1)
		want = RESPONSE_MAX + 1;
	if (want - n < 2)
		return -EFBIG;
	p = realloc(*buf, want);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = want;
	return 0;
}

/* Reads all of f into a NUL-terminated buffer. */
static int read_stream(FILE *f, char **out, size_t *len)
{
	size_t cap = 0, n = 0, got;
	char *buf = NULL;
	int err;

	errno = 0;
	do {
		err = grow(&buf, &cap, n);
		if (err < 0)
			goto fail;
		got = fread(buf + n, 1, cap - n - 1, f);
		n += got;
	} while (got > 0);
	if (ferror(f)) {
		/* fread() leaves the errno of read(), e.g. EISDIR. */
		err = errno ? -errno : -EIO;
		goto fail;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
fail:
	free(buf);
	return err;
}

static int read_response(const char *path, char **body, size_t *len)
{
	FILE *f = stdin;
	int err;

	if (strcmp(path, "-") != 0) {
		f = fopen(path, "rb");
		if (!f) {
			err = -errno;
			ctl_fail("record: cannot open %s: %s", path,
				 strerror(-err));
			return err;
		}
	}
	err = read_stream(f, body, len);
	if (err < 0)
		ctl_fail("record: cannot read %s: %s",
			 f == stdin ? "standard input" : path,
			 err == -EFBIG ? "larger than 64 MiB" : strerror(-err));
	if (f != stdin)
		fclose(f);
	return err;
}

/* Reads an optional text file; NULL path leaves *text NULL. */
static int read_text(const char *path, char **text, size_t *len)
{
	*text = NULL;
	*len = 0;
	return path ? read_response(path, text, len) : 0;
}

/* Says what to do when the encoding's rank file is not installed. */
static void rank_file_missing(const char *model)
{
	struct tally_estimator e;
	char dir[4096];

	if (tally_estimator_for(model, &e) < 0 ||
	    tally_estimate_data_dir(dir, sizeof(dir)) < 0)
		return;
	fprintf(stderr,
		"tallyctl: the rank file %s.tiktoken, which counts the "
		"tokens of %s, is not installed in %s: run tools/setup, or "
		"set TALLY_DATA_DIR to a directory that holds it\n",
		e.name, model, dir);
}

/* Estimates and records the call; prints why when that fails. */
static int estimate_and_record(struct tally *t, const struct record_args *a,
			       const char *prompt, size_t plen,
			       const char *completion, size_t clen)
{
	struct tally_usage u = a->u;
	int err;

	err = tally_estimate_usage(u.model_type, prompt, plen, completion, clen,
				   &u);
	if (err == -EILSEQ) {
		ctl_fail(
			"record: the text of --prompt-file or --completion-file "
			"is not valid UTF-8; nothing was recorded");
		return err;
	}
	if (err == 0)
		err = tally_record(t, &u);
	if (err == -ENOENT) {
		ctl_fail("record: rank file not installed");
		rank_file_missing(u.model_type);
	} else if (err < 0) {
		ctl_fail("record: %s", tally_strerror(err));
	} else {
		printf("estimated: input %" PRIu64 "%s, output %" PRIu64 "%s\n",
		       u.input_tokens, prompt ? "" : " (missing)",
		       u.output_tokens, completion ? "" : " (missing)");
	}
	return err;
}

/* Records the call from its texts; a file not given is a missing side. */
static int record_text(struct tally *t, const struct record_args *a)
{
	char *prompt = NULL, *completion = NULL;
	size_t plen, clen;
	int err;

	err = read_text(a->prompt_file, &prompt, &plen);
	if (err == 0)
		err = read_text(a->completion_file, &completion, &clen);
	if (err == 0)
		err = estimate_and_record(t, a, prompt, plen, completion, clen);
	free(prompt);
	free(completion);
	return err;
}

/* Records the usage; prints why when that fails. */
static int record_one(struct tally *t, const struct record_args *a)
{
	char *body = NULL;
	size_t len = 0;
	int err;

	if (a->response) {
		err = read_response(a->response, &body, &len);
		if (err < 0)
			return err;
		err = tally_record_response(t, &a->u, body, len);
		free(body);
	} else if (a->prompt_file || a->completion_file) {
		return record_text(t, a);
	} else if (a->missing) {
		/* No text at all: tally_record_text marks both sides. */
		err = tally_record_text(t, &a->u, NULL, 0, NULL, 0);
	} else {
		err = tally_record(t, &a->u);
	}
	if (err < 0)
		ctl_fail("record: %s", tally_strerror(err));
	if (err == -EPROTONOSUPPORT)
		fprintf(stderr, "tallyctl: --provider must be one of openAI, "
				"azureOpenAI, openAICompatible, mistral, "
				"anthropic, googleGemini, googleVertexAI, "
				"googleGenAI, awsBedrock, alephAlpha, cohere, "
				"ollama\n");
	return err;
}

static int record_usage(struct ctl *ctl, const struct record_args *a)
{
	struct tally *t = NULL;
	int rc = RC_FAIL;
	int err;

	if (ctl_open_handle(ctl, "record", &t) < 0)
		return RC_FAIL;
	if (record_one(t, a) < 0)
		goto out;
	err = tally_sync(t, a->timeout_ms);
	if (err == -ETIMEDOUT)
		ctl_fail(
			"record: tallyd did not confirm the usage within %d ms; "
			"it may have reached tallyd or not, so it may or may "
			"not be counted. Check that tallyd runs on %s "
			"(tallyctl stats), then look with tallyctl show.",
			a->timeout_ms, ctl->dir);
	else if (err < 0)
		ctl_fail("record: %s", tally_strerror(err));
	else
		rc = RC_OK;
out:
	tally_close(t);
	return rc;
}

static int cmd_record(struct ctl *ctl, int argc, char **argv)
{
	struct record_args a = {.timeout_ms = 5000};
	int rc;

	rc = parse_record(ctl, argc, argv, &a);
	if (rc != RC_GO_ON)
		return rc;
	return record_usage(ctl, &a);
}

/* ---- help ---- */

static int cmd_help(struct ctl *ctl, int argc, char **argv)
{
	const struct command *cmd;

	(void)ctl;
	if (argc < 2)
		return print_help(usage_text, stdout, RC_OK);
	if (argc > 2) {
		ctl_fail("help: takes one COMMAND, got %d", argc - 1);
		return ctl_usage_error(help_help, "help");
	}
	cmd = find_command(argv[1]);
	if (!cmd) {
		ctl_fail("help: unknown command '%s'", argv[1]);
		return ctl_usage_error(usage_text, NULL);
	}
	return print_help(cmd->help, stdout, RC_OK);
}

static const struct command commands[] = {
	{"show", cmd_show, show_help},
	{"sessions", ctl_sessions, ctl_sessions_help},
	{"top", ctl_top, ctl_top_help},
	{"stats", cmd_stats, stats_help},
	{"metrics", ctl_metrics, ctl_metrics_help},
	{"export", ctl_export, ctl_export_help},
	{"cost", ctl_cost, ctl_cost_help},
	{"purge", ctl_purge, ctl_purge_help},
	{"check", ctl_check, ctl_check_help},
	{"record", cmd_record, record_help},
	{"help", cmd_help, help_help},
};

static const struct command *find_command(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

/*
 * Parses the options before the command. The '+' stops getopt_long at the
 * first non-option, so that the command's options stay for the command.
 */
static int parse_global(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{"dir", required_argument, NULL, 'd'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	int c;

	snprintf(ctl->prog, sizeof(ctl->prog), "tallyctl");
	argv[0] = ctl->prog;
	while ((c = getopt_long(argc, argv, "+d:hV", opts, NULL)) != -1) {
		if (c == 'd')
			ctl->dir = optarg;
		else if (c == 'h')
			return print_help(usage_text, stdout, RC_OK);
		else if (c == 'V')
			return print_help("tallyctl " TALLY_VERSION_STRING "\n",
					  stdout, RC_OK);
		else
			return ctl_usage_error(usage_text, NULL);
	}
	if (optind >= argc) {
		ctl_fail("no command given");
		return ctl_usage_error(usage_text, NULL);
	}
	if (ctl->dir && !*ctl->dir) {
		ctl_fail("--dir needs a directory, not an empty string");
		return RC_USAGE;
	}
	return RC_GO_ON;
}

int main(int argc, char **argv)
{
	struct ctl ctl = {0};
	const struct command *cmd;
	int rc;

	rc = parse_global(&ctl, argc, argv);
	if (rc == RC_GO_ON) {
		cmd = find_command(argv[optind]);
		if (cmd) {
			rc = cmd->run(&ctl, argc - optind, argv + optind);
		} else {
			ctl_fail("unknown command '%s'", argv[optind]);
			rc = ctl_usage_error(usage_text, NULL);
		}
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		ctl_fail("cannot write the output: %s", strerror(errno));
		rc = RC_FAIL;
	}
	return rc;
}
