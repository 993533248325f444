/*
 * stream.c - the usage of a streamed response.
 *
 * A stream reaches a worker in one of three forms: its events one at a time
 * (tally_stream_*), a Server-Sent Events transcript, or its events as JSON
 * lines. This file only frames the events; provider.c decides what each
 * one's usage means. All three forms hand every event's JSON to the same
 * feed(), so a stream gives one result whatever form it came in.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "provider.h"
#include "tally.h"

struct tally_stream {
	const struct provider *p;
	struct provider_acc acc;
	/*
	 * The first error an event met. It stays: after an event that could
	 * not be read, the stream's usage is not known, and a count from the
	 * events around it would pass for the call's.
	 */
	int err;
};

/* A cursor over lines that end in CR, LF or CRLF, as SSE allows. */
struct lines {
	const char *text;
	size_t len;
	size_t pos;
};

/* An SSE event being read: its data lines, each followed by LF. */
struct sse {
	char *data;
	size_t n;
};

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_blank(const char *text, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (!is_space(text[i]))
			return false;
	return true;
}

/* OpenAI's end-of-stream sentinel, the one data payload that is not JSON. */
static bool is_done(const char *text, size_t len)
{
	while (len && is_space(*text)) {
		text++;
		len--;
	}
	while (len && is_space(text[len - 1]))
		len--;
	return len == 6 && !memcmp(text, "[DONE]", 6);
}

static int feed(struct tally_stream *s, const char *event, size_t len)
{
	json_t *root;

	if (s->err)
		return s->err;
	if (is_blank(event, len) || is_done(event, len))
		return 0;
	root = provider_load(event, len);
	if (!root) {
		s->err = -EBADMSG;
		return s->err;
	}
	s->err = provider_fold(s->p, &s->acc, root);
	json_decref(root);
	return s->err;
}

static int finish(const struct tally_stream *s, struct tally_usage *u)
{
	if (s->err)
		return s->err;
	return provider_result(s->p, &s->acc, u);
}

int tally_stream_begin(struct tally_stream **out, const char *provider_type)
{
	const struct provider *p;
	struct tally_stream *s;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!provider_type)
		return -EINVAL;
	p = provider_find(provider_type);
	if (!p)
		return -EPROTONOSUPPORT;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->p = p;
	*out = s;
	return 0;
}

int tally_stream_feed(struct tally_stream *s, const char *event, size_t len)
{
	if (!s || !event)
		return -EINVAL;
	return feed(s, event, len);
}

int tally_stream_end(struct tally_stream *s, struct tally_usage *u)
{
	int rc;

	if (!s)
		return -EINVAL;
	rc = u ? finish(s, u) : -EINVAL;
	tally_stream_free(s);
	return rc;
}

void tally_stream_free(struct tally_stream *s)
{
	if (!s)
		return;
	provider_acc_fini(&s->acc);
	free(s);
}

/* The next line of l, without its end; false past the last one. */
static bool next_line(struct lines *l, const char **line, size_t *n)
{
	size_t i = l->pos;

	if (i >= l->len)
		return false;
	while (i < l->len && l->text[i] != '\n' && l->text[i] != '\r')
		i++;
	*line = l->text + l->pos;
	*n = i - l->pos;
	if (i < l->len && l->text[i] == '\r' && i + 1 < l->len &&
	    l->text[i + 1] == '\n')
		i++;
	l->pos = i < l->len ? i + 1 : i;
	return true;
}

/* A UTF-8 byte order mark, which may come before the first SSE line. */
static size_t bom_len(const char *text, size_t len)
{
	return len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3) ? 3 : 0;
}

static bool has_prefix(const char *text, size_t len, const char *prefix)
{
	size_t n = strlen(prefix);

	return len >= n && !memcmp(text, prefix, n);
}

/*
 * Only the first line that is not blank is looked at, and only where it
 * starts: no JSON text can begin with a field name and a colon, or with the
 * colon of an SSE comment.
 */
bool stream_is_sse(const char *body, size_t len)
{
	static const char *const fields[] = {
		"data:", "event:", "id:", "retry:", ":"};
	size_t i = bom_len(body, len), start = i, k;

	for (; i < len && is_space(body[i]); i++)
		if (body[i] == '\n' || body[i] == '\r')
			start = i + 1;
	if (i != start)
		return false;
	for (k = 0; k < sizeof(fields) / sizeof(fields[0]); k++)
		if (has_prefix(body + i, len - i, fields[k]))
			return true;
	return false;
}

/*
 * Keeps the value of a data field. The other fields are left alone: every
 * payload read here names its own event type, and ids and retry times say
 * nothing about usage.
 */
static void sse_field(struct sse *e, const char *line, size_t n)
{
	const char *colon = memchr(line, ':', n);
	size_t name = colon ? (size_t)(colon - line) : n;
	const char *value = colon ? colon + 1 : line + n;
	size_t vlen = (size_t)(line + n - value);

	if (name != 4 || memcmp(line, "data", 4))
		return;
	if (vlen && *value == ' ') {
		value++;
		vlen--;
	}
	memcpy(e->data + e->n, value, vlen);
	e->n += vlen;
	e->data[e->n++] = '\n';
}

/* Feeds the event read so far, its data lines joined by LF. */
static int sse_dispatch(struct tally_stream *s, struct sse *e)
{
	size_t n = e->n;

	e->n = 0;
	return n ? feed(s, e->data, n - 1) : 0;
}

/*
 * The data of an event never takes more room than the lines it came from,
 * so one buffer of the body's length holds any of them.
 */
int stream_parse_sse(const struct provider *p, const char *body, size_t len,
		     struct tally_usage *u)
{
	struct tally_stream s = {.p = p};
	struct lines l = {body, len, bom_len(body, len)};
	struct sse e = {NULL, 0};
	const char *line;
	size_t n;
	int rc;

	e.data = malloc(len + 1);
	if (!e.data)
		return -ENOMEM;
	while (!s.err && next_line(&l, &line, &n)) {
		if (n == 0)
			sse_dispatch(&s, &e);
		else
			sse_field(&e, line, n);
	}

	/*
	 * An event cut off before its blank line still counts. The SSE spec
	 * drops it, but a saved transcript often lacks the final blank line,
	 * and the last event is the one that carries the usage.
	 */
	sse_dispatch(&s, &e);
	rc = finish(&s, u);
	free(e.data);
	provider_acc_fini(&s.acc);
	return rc;
}

int stream_parse_lines(const struct provider *p, const char *body, size_t len,
		       struct tally_usage *u)
{
	struct tally_stream s = {.p = p};
	struct lines l = {body, len, 0};
	const char *line;
	size_t n, events = 0;
	int rc;

	while (!s.err && next_line(&l, &line, &n)) {
		if (is_blank(line, n))
			continue;
		events++;
		feed(&s, line, n);
	}
	rc = events ? finish(&s, u) : -EBADMSG;
	provider_acc_fini(&s.acc);
	return rc;
}
