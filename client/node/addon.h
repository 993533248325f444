/*
 * addon.h - the parts of the Node.js addon shared by its files.
 *
 * The addon is a thin layer: arguments are checked and converted in
 * convert.c, libtally does the work, and json.c turns libtally's JSON into
 * JavaScript objects without rounding a count.
 */
#ifndef TALLY_NODE_ADDON_H
#define TALLY_NODE_ADDON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <node_api.h>

#include "tally.h"

/*
 * A Node-API call failed, and its exception, if it left one, is pending.
 * Below libtally's band of codes; it never leaves the addon.
 */
#define ADDON_ENAPI (-4300)

/*
 * One call from JavaScript: the environment, the name the error message
 * starts with, and a sentence about what to fix, filled in by whichever
 * check refused the call.
 */
struct call {
	napi_env env;
	const char *name;
	char detail[200];
	/* The addon refused the call itself; libtally never saw it. */
	bool own;
	/* Replaces tally_strerror()'s sentence where it does not fit. */
	const char *why;
};

/* The addon refuses the call, for the reason given. */
void call_detail(struct call *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Says what to fix about an error libtally returned. */
void call_hint(struct call *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Throws an Error for err, a negative errno or TALLY_E* code: its code is
 * the errno name ("EINVAL"), errno is err, and its message is the call's
 * name, tally_strerror(err) and the detail. libtally's sentence for EINVAL
 * is about usages, so an EINVAL of the addon's own says "invalid argument"
 * instead. Returns NULL, what a callback returns after throwing.
 */
napi_value call_throw(struct call *c, int err);

/*
 * Returns NULL after a Node-API call failed: the exception it left is
 * thrown, or a new Error that says which call failed if it left none.
 */
napi_value call_napi_failed(struct call *c);

/* The errno name of err ("EINVAL", "TALLY_ECORRUPT"), never NULL. */
const char *errno_code(int err);

/*
 * A JavaScript string as NUL-terminated UTF-8 of at most max bytes, in
 * buf of at least max * 3 + 1 bytes. undefined and null give *out NULL
 * when the field is optional. Lone UTF-16 surrogates and NUL characters
 * are refused, never replaced.
 * Errors: -EINVAL (missing, not a string, empty id, too long), -EILSEQ.
 */
int arg_string(struct call *c, napi_value v, const char *field, size_t max,
	       bool required, char *buf, const char **out);

/* How many bytes arg_string() needs for a limit of max bytes. */
#define ARG_STRING_BUF(max) ((max)*3 + 1)

/*
 * A token count: a non-negative integer Number or BigInt. undefined and
 * null set *present false when the count is optional.
 * Errors: -EINVAL (missing, not a number, not an integer), -ERANGE
 * (negative, or too large for 64 bits).
 */
int arg_count(struct call *c, napi_value v, const char *field, bool required,
	      uint64_t *out, bool *present);

/*
 * A whole number of milliseconds that fits an int; undefined takes def.
 * Errors: -EINVAL (not an integer), -ERANGE (out of the int range).
 */
int arg_ms(struct call *c, napi_value v, const char *field, int def, int *out);

/* Bytes of a string (copied to UTF-8) or of a Uint8Array (borrowed). */
struct bytes {
	const char *data;
	size_t len;
	char *owned;
};

/*
 * A string or Uint8Array (a Buffer is one) as bytes; bytes_fini() frees
 * what it copied. undefined and null give data NULL when the field is
 * optional. Errors: -EINVAL (missing, another type), -ENOMEM.
 */
int arg_bytes(struct call *c, napi_value v, const char *field, bool required,
	      struct bytes *b);
void bytes_fini(struct bytes *b);

/* Writes code point c as UTF-8 at o; returns its length, 1 to 4. */
size_t utf8_put(char *o, uint32_t c);

/* v as a Number when it is a safe integer (up to 2^53 - 1), else BigInt. */
napi_status js_u64(napi_env env, uint64_t v, napi_value *out);

/*
 * json_to_js() - a JavaScript value for the JSON text s of length len.
 *
 * Integers that fit a safe integer become Numbers, larger ones BigInts,
 * so that no count is rounded as JSON.parse() would round it. Object keys
 * become own properties even when named "__proto__".
 * Errors: -EBADMSG (not JSON, or nested too deep), -ENOMEM, ADDON_ENAPI.
 */
int json_to_js(napi_env env, const char *s, size_t len, napi_value *out);

#endif
