/*
 * provider.h - the provider parser, shared by provider.c and stream.c.
 *
 * provider.c knows what each provider's usage fields mean and how its
 * stream events report them; stream.c knows how a stream is framed (SSE,
 * JSON lines, one event at a time) and hands each event's JSON to
 * provider_fold().
 */
#ifndef TALLY_PROVIDER_H
#define TALLY_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "tally.h"

struct provider;

/* What the events of one stream have reported so far. */
struct provider_acc {
	/* The last complete report; counts and flags only. */
	struct tally_usage last;
	/*
	 * For a provider whose events each report only some fields
	 * (Anthropic), the latest value of every field, as a body that its
	 * parser reads; NULL until such an event came.
	 */
	json_t *merged;
	/* Some event reported usage. */
	bool seen;
};

/* The provider of that type, or NULL when there is none. */
const struct provider *provider_find(const char *type);

/* Decodes text as one JSON value, the way every body is decoded here. */
json_t *provider_load(const char *text, size_t len);

/*
 * Folds one stream event into acc: 0, or a negative errno with acc
 * unchanged, but for -ENOMEM, after which acc may hold part of the event
 * (the stream keeps the error, so it is never read).
 */
int provider_fold(const struct provider *p, struct provider_acc *acc,
		  const json_t *event);

/* The usage acc holds, into the counts and flags of u; -ENODATA if none. */
int provider_result(const struct provider *p, const struct provider_acc *acc,
		    struct tally_usage *u);

/* Frees what acc holds; acc may then be folded into again. */
void provider_acc_fini(struct provider_acc *acc);

/*
 * stream.c: the parse of a body that is a whole stream transcript, for
 * tally_parse_response().
 */

/* Whether body is a Server-Sent Events transcript, by its first line. */
bool stream_is_sse(const char *body, size_t len);

/* Parses an SSE transcript; errors as tally_parse_response(). */
int stream_parse_sse(const struct provider *p, const char *body, size_t len,
		     struct tally_usage *u);

/*
 * Parses a body of JSON values, one per line. -EBADMSG when a line is not
 * one JSON value or when there is none.
 */
int stream_parse_lines(const struct provider *p, const char *body, size_t len,
		       struct tally_usage *u);

#endif /* TALLY_PROVIDER_H */
