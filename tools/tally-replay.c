/*
 * tally-replay - replay a trace of LLM calls through libtally, as a flow
 * worker does: record each call from its provider response, then read the
 * session's snapshot.
 *
 * The trace is tab-separated, one call a line: session id, LLM reference
 * id, display name, provider type, model type, response file. Lines whose
 * number modulo --of equals --worker are this worker's.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

#define MAX_BODY (4 << 20)

struct call {
	char *field[6];
};

struct replay {
	struct tally *t;
	unsigned long worker;
	unsigned long of;
	unsigned long calls;
	unsigned long snapshots;
};

static const char usage_text[] =
	"Usage: tally-replay [--dir DIR] [--worker I --of N] TRACE\n"
	"Replay a tab-separated trace of LLM calls (session, LLM id, display\n"
	"name, provider type, model type, response file) through libtally.\n"
	"With --worker I --of N, take every N-th line from line I.\n"
	"Exit status: 0 when every call was recorded and confirmed, 1 when\n"
	"one failed, 2 on a usage error.\n";

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t n;

	if (f == NULL)
		return NULL;
	buf = malloc(MAX_BODY);
	n = buf != NULL ? fread(buf, 1, MAX_BODY, f) : 0;
	fclose(f);
	*len = n;
	return buf;
}

static int split(char *line, struct call *c)
{
	char *save = NULL;
	int n = 0;

	line[strcspn(line, "\r\n")] = '\0';
	for (char *tok = strtok_r(line, "\t", &save); tok != NULL && n < 6;
	     tok = strtok_r(NULL, "\t", &save))
		c->field[n++] = tok;
	return n == 6 ? 0 : -EINVAL;
}

static int replay_call(struct replay *r, const struct call *c)
{
	struct tally_usage ids = {
		.session_id = c->field[0],
		.llm_reference_id = c->field[1],
		.llm_display_name = c->field[2],
		.provider_type = c->field[3],
		.model_type = c->field[4],
	};
	char *body, *json;
	size_t len;
	int rc;

	body = read_file(c->field[5], &len);
	if (body == NULL) {
		fprintf(stderr, "tally-replay: cannot read %s: %s\n",
			c->field[5], strerror(errno));
		return -errno;
	}
	rc = tally_record_response(r->t, &ids, body, len);
	free(body);
	if (rc < 0) {
		fprintf(stderr, "tally-replay: %s: %s\n", c->field[5],
			tally_strerror(rc));
		return rc;
	}
	r->calls++;
	/* Flow code reads the session right after its call. */
	rc = tally_session_json(r->t, c->field[0], &json);
	if (rc == 0) {
		r->snapshots++;
		free(json);
	}
	return rc;
}

static int replay(struct replay *r, FILE *trace)
{
	char line[4096];
	struct call c;
	unsigned long n = 0;
	int rc, failed = 0;

	while (fgets(line, sizeof(line), trace) != NULL) {
		if (n++ % r->of != r->worker || line[0] == '#')
			continue;
		if (split(line, &c) < 0) {
			fprintf(stderr,
				"tally-replay: line %lu: want 6 "
				"tab-separated fields\n",
				n);
			failed = 1;
			continue;
		}
		if (replay_call(r, &c) < 0)
			failed = 1;
	}
	rc = tally_sync(r->t, 30000);
	if (rc < 0) {
		fprintf(stderr, "tally-replay: sync: %s\n", tally_strerror(rc));
		failed = 1;
	}
	return failed;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"dir", required_argument, NULL, 'd'},
		{"worker", required_argument, NULL, 'w'},
		{"of", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct replay r = {.of = 1};
	const char *dir = NULL;
	FILE *trace;
	int c, rc;

	while ((c = getopt_long(argc, argv, "d:h", options, NULL)) != -1) {
		switch (c) {
		case 'd':
			dir = optarg;
			break;
		case 'w':
			r.worker = strtoul(optarg, NULL, 10);
			break;
		case 'n':
			r.of = strtoul(optarg, NULL, 10);
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind + 1 != argc || r.of == 0 || r.worker >= r.of) {
		fputs(usage_text, stderr);
		return 2;
	}
	trace = fopen(argv[optind], "r");
	if (trace == NULL) {
		fprintf(stderr, "tally-replay: cannot open %s: %s\n",
			argv[optind], strerror(errno));
		return 1;
	}
	rc = tally_open(&r.t, dir);
	if (rc < 0) {
		fprintf(stderr, "tally-replay: %s\n", tally_strerror(rc));
		fclose(trace);
		return 1;
	}
	rc = replay(&r, trace);
	printf("worker %lu: %lu calls recorded, %lu snapshots read\n", r.worker,
	       r.calls, r.snapshots);
	tally_close(r.t);
	fclose(trace);
	return rc;
}
