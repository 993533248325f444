/*
 * jsonw.h - a small JSON writer for the snapshot's hot path.
 *
 * Appends to one growing buffer; the first allocation failure sticks, so a
 * caller checks once, at jsonw_take().
 */
#ifndef TALLY_JSONW_H
#define TALLY_JSONW_H

#include <stddef.h>
#include <stdint.h>

struct jsonw {
	char *buf;
	size_t len;
	size_t cap;
	int err;
};

void jsonw_init(struct jsonw *w);
void jsonw_fini(struct jsonw *w);
void jsonw_raw(struct jsonw *w, const char *s, size_t n);
/*
 * Writes s[0..n) as a quoted JSON string. Quotes, backslashes and control
 * bytes are escaped; a byte that is not part of well-formed UTF-8 becomes
 * U+FFFD, so the output is valid UTF-8 whatever the input.
 */
void jsonw_str(struct jsonw *w, const char *s, size_t n);
void jsonw_u64(struct jsonw *w, uint64_t v);
/* The NUL-terminated text, owned by the caller; NULL after ENOMEM. */
char *jsonw_take(struct jsonw *w);

#endif
