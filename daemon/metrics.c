/*
 * metrics.c - the daemon's counters in Prometheus' text format.
 *
 * Written atomically (a temporary file renamed over the target) as the
 * node_exporter textfile collector expects, and served on request for
 * 'tallyctl metrics'. Tokens are counted per provider type and token type
 * as the daemon accepts them, under OpenTelemetry's GenAI names.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tallyd.h"

/* Distinct provider types kept; more are summed under "other". */
#define MAX_PROVIDERS 32

static const char *const token_types[] = {"input", "output", "cache_read",
					  "cache_write", "reasoning"};

void metrics_count(struct tallyd *d, const struct usage_view *v)
{
	struct provider_tokens *pt = NULL;
	const char *name = v->str[USAGE_PROVIDER];
	size_t len = v->len[USAGE_PROVIDER];

	for (size_t i = 0; i < d->nproviders; i++) {
		if (d->providers[i].name_len == len &&
		    memcmp(d->providers[i].name, name, len) == 0) {
			pt = &d->providers[i];
			break;
		}
	}
	if (pt == NULL && d->nproviders < MAX_PROVIDERS) {
		pt = &d->providers[d->nproviders++];
		snprintf(pt->name, sizeof(pt->name), "%.*s", (int)len, name);
		pt->name_len = len;
	} else if (pt == NULL) {
		pt = &d->providers[MAX_PROVIDERS - 1];
		snprintf(pt->name, sizeof(pt->name), "other");
		pt->name_len = 5;
	}
	pt->tokens[0] += v->input;
	pt->tokens[1] += v->output;
	pt->tokens[2] += v->cache_read;
	pt->tokens[3] += v->cache_write;
	pt->tokens[4] += v->reasoning;
}

/* A label value: backslash, quote and newline escaped, as the format says. */
static void put_label(FILE *f, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

/* Counts print as integers, seconds with nanosecond digits at most. */
static void put_metric(FILE *f, const char *name, const char *type,
		       const char *help, double value)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	if (value == (double)(uint64_t)value && value < 9007199254740992.0)
		fprintf(f, "%s %llu\n", name, (unsigned long long)value);
	else
		fprintf(f, "%s %.9f\n", name, value);
}

static void put_tokens(struct tallyd *d, FILE *f)
{
	fputs("# HELP gen_ai_client_token_usage_total Tokens accepted, by "
	      "provider type and token type.\n"
	      "# TYPE gen_ai_client_token_usage_total counter\n",
	      f);
	for (size_t i = 0; i < d->nproviders; i++) {
		for (size_t t = 0; t < 5; t++) {
			fputs("gen_ai_client_token_usage_total{"
			      "gen_ai_provider_name=\"",
			      f);
			put_label(f, d->providers[i].name);
			fprintf(f, "\",gen_ai_token_type=\"%s\"} %llu\n",
				token_types[t],
				(unsigned long long)d->providers[i].tokens[t]);
		}
	}
}

/* With --cluster: the link, the outbox and the stream's consumer. */
static void put_cluster(struct tallyd *d, FILE *f)
{
#define C(n, h)                                           \
	put_metric(f, "tally_" #n "_total", "counter", h, \
		   (double)STAT_GET(d, n))
	C(published_records, "Outbox records JetStream stored.");
	C(publish_failures, "Publish rounds not wholly stored.");
	C(consumed_records, "Stream records taken by this host.");
	C(remote_usages, "Usages of other hosts applied.");
	C(remote_duplicates, "Stream usages already applied.");
	C(remote_malformed, "Stream messages dropped: not a batch.");
	C(remote_refused, "Stream records refused: producer of another host.");
	C(remote_lost, "Usages of other hosts given up: never in the stream.");
#undef C
	put_metric(f, "tally_cluster_ready", "gauge",
		   "1 when connected to JetStream and set up.",
		   STAT_GET(d, cluster_state) == 2 ? 1.0 : 0.0);
	put_metric(f, "tally_outbox_unpublished", "gauge",
		   "Outbox records JetStream has not stored yet.",
		   (double)cluster_unpublished(d));
	put_metric(f, "tally_outbox_age_seconds", "gauge",
		   "Age of the oldest record not yet stored.",
		   (double)cluster_outbox_age_ms(d) / 1e3);
	put_metric(f, "tally_consumer_pending", "gauge",
		   "Stream records waiting for this host.",
		   (double)STAT_GET(d, consumer_pending));
}

static void put_all(struct tallyd *d, FILE *f)
{
	struct ledger_info li = {0};

	ledger_info(&d->ledger, &li);
#define C(n, h)                                           \
	put_metric(f, "tally_" #n "_total", "counter", h, \
		   (double)STAT_GET(d, n))
	C(usages_received, "Usages received in well-formed batches.");
	C(usages_applied, "Usages committed to the ledger.");
	C(duplicates, "Usages dropped as repeats of applied ones.");
	C(gap_batches, "Batches not applied: something before them was lost.");
	C(malformed_messages, "Messages dropped: they did not decode.");
	C(malformed_usages, "Usages dropped: they failed their checks.");
	C(oversized_messages, "Messages dropped: over --max-message.");
	C(commits, "Ledger commits.");
	C(commit_failures, "Ledger commits that failed and were retried.");
	C(purged_sessions, "Sessions deleted by purge or expiry.");
	C(expired_producers, "Producer records expired.");
#undef C
	put_metric(f, "tally_commit_seconds_total", "counter",
		   "Time spent committing.",
		   (double)STAT_GET(d, commit_ns_total) / 1e9);
	put_metric(f, "tally_commit_seconds_max", "gauge",
		   "Longest commit since start.",
		   (double)STAT_GET(d, commit_ns_max) / 1e9);
	put_metric(f, "tally_ledger_bytes", "gauge", "Bytes the ledger uses.",
		   (double)li.used_bytes);
	put_metric(f, "tally_map_bytes", "gauge", "Size of the ledger's map.",
		   (double)li.map_size);
	put_metric(f, "tally_readers", "gauge", "Reader slots in use.",
		   (double)li.readers);
	put_metric(f, "tally_oldest_reader_age_seconds", "gauge",
		   "How long the oldest reader has held its snapshot.",
		   (double)oldest_reader_age_ms(d) / 1e3);
	put_metric(f, "tally_producers", "gauge", "Producers known.",
		   (double)STAT_GET(d, producers));
	put_metric(f, "tally_uptime_seconds", "gauge", "Seconds since start.",
		   (double)(now_ms() - d->start_ms) / 1e3);
	if (d->cluster != NULL)
		put_cluster(d, f);
	put_tokens(d, f);
}

char *metrics_text(struct tallyd *d)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (f == NULL)
		return NULL;
	put_all(d, f);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

int metrics_write(struct tallyd *d)
{
	char tmp[4096];
	char *text;
	int fd, rc = 0;
	size_t len;

	if (d->cfg.metrics_file == NULL)
		return 0;
	text = metrics_text(d);
	if (text == NULL)
		return -ENOMEM;
	snprintf(tmp, sizeof(tmp), "%s.tmp", d->cfg.metrics_file);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	len = strlen(text);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len ||
	    rename(tmp, d->cfg.metrics_file) < 0)
		rc = -errno;
	if (fd >= 0)
		close(fd);
	free(text);
	if (rc < 0)
		log_limited(&d->bad_input, LOG_WARNING, "metrics",
			    "cannot write %s: %s", d->cfg.metrics_file,
			    strerror(-rc));
	return rc;
}
