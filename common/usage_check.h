/*
 * usage_check.h - the one set of rules for what a usage may hold.
 *
 * The client applies them before a usage is queued, the daemon again after
 * a message is decoded, so that neither trusts the other's input.
 */
#ifndef TALLY_USAGE_CHECK_H
#define TALLY_USAGE_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally.h"
#include "tally.pb-c.h"

enum usage_field {
	USAGE_SESSION,
	USAGE_LLM,
	USAGE_DISPLAY,
	USAGE_PROVIDER,
	USAGE_MODEL,
	USAGE_NSTR,
};

#define USAGE_FLAGS_ALL                                            \
	(TALLY_USAGE_ESTIMATED | TALLY_USAGE_HAS_CACHE_READ |      \
	 TALLY_USAGE_HAS_CACHE_WRITE | TALLY_USAGE_HAS_REASONING | \
	 TALLY_USAGE_INPUT_MISSING | TALLY_USAGE_OUTPUT_MISSING)

/* A usage as byte strings with lengths, whichever side it came from. */
struct usage_view {
	const char *str[USAGE_NSTR];
	size_t len[USAGE_NSTR];
	uint64_t input;
	uint64_t output;
	uint64_t cache_read;
	uint64_t cache_write;
	uint64_t reasoning;
	uint32_t flags;
	uint64_t time_ns;
};

/* True when s[0..len) is well-formed UTF-8 with no NUL byte. */
bool utf8_valid(const char *s, size_t len);

/* Views of an API struct (strings may be NULL) and of a decoded message. */
void usage_view_from_api(struct usage_view *v, const struct tally_usage *u);
void usage_view_from_wire(struct usage_view *v, const Tally__Usage *u);

/*
 * usage_count() - adds one checked usage to a ledger entry's counters:
 * the one place, shared by the daemon and a client's read-your-writes
 * overlay, that says what a usage adds to what.
 */
struct ledger_counters;
void usage_count(struct ledger_counters *c, const struct usage_view *v);

/*
 * usage_check() - 0 when v may be counted.
 * Errors: -EINVAL (empty or long id, long name, unknown flag, a detail
 * larger than its total), -EILSEQ (not UTF-8, or a NUL), -ERANGE (a count
 * over TALLY_TOKENS_MAX).
 */
int usage_check(const struct usage_view *v);

#endif
