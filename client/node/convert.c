/*
 * convert.c - JavaScript values in, JavaScript values and errors out.
 *
 * Every argument is checked here before libtally sees it, so that a wrong
 * one is reported by its field name. The limits are tally.h's; libtally
 * applies them again, and stays the one that decides.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addon.h"

/* Largest integer a Number holds exactly, with its neighbours distinct. */
#define SAFE_INTEGER_MAX UINT64_C(9007199254740991)

void call_detail(struct call *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
	va_end(ap);
	c->own = true;
}

void call_hint(struct call *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
	va_end(ap);
}

const char *errno_code(int err)
{
	const char *name = NULL;

	if (err == TALLY_EVERSION)
		return "TALLY_EVERSION";
	if (err == TALLY_ECORRUPT)
		return "TALLY_ECORRUPT";
	if (err < 0 && err > -4096)
		name = strerrorname_np(-err);
	return name != NULL ? name : "EUNKNOWN";
}

static napi_status set_props(napi_env env, napi_value error, int err,
			     const char *code)
{
	napi_value v;
	napi_status s;

	if ((s = napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &v)) ||
	    (s = napi_set_named_property(env, error, "code", v)) ||
	    (s = napi_create_int32(env, err, &v)))
		return s;
	return napi_set_named_property(env, error, "errno", v);
}

napi_value call_throw(struct call *c, int err)
{
	const char *code = errno_code(err);
	const char *why = c->why != NULL ? c->why : tally_strerror(err);
	size_t at = strlen(c->name) + 2;
	char text[512];
	napi_value msg, error;

	if (c->why == NULL && c->own && err == -EINVAL)
		why = "invalid argument";
	snprintf(text, sizeof(text), "%s: %s%s%s", c->name, why,
		 c->detail[0] ? ": " : "", c->detail);
	/* System sentences start with a capital; tally's do not. */
	if (at < sizeof(text))
		text[at] = (char)tolower((unsigned char)text[at]);
	if (napi_create_string_utf8(c->env, text, NAPI_AUTO_LENGTH, &msg) ||
	    napi_create_error(c->env, NULL, msg, &error) ||
	    set_props(c->env, error, err, code))
		return call_napi_failed(c);
	napi_throw(c->env, error);
	return NULL;
}

napi_value call_napi_failed(struct call *c)
{
	const napi_extended_error_info *info = NULL;
	bool pending = false;
	char text[256];

	napi_is_exception_pending(c->env, &pending);
	if (pending)
		return NULL;
	napi_get_last_error_info(c->env, &info);
	snprintf(text, sizeof(text), "%s: Node-API call failed: %s", c->name,
		 info != NULL && info->error_message != NULL
			 ? info->error_message
			 : "unknown reason");
	napi_throw_error(c->env, "ERR_TALLY_NAPI", text);
	return NULL;
}

static bool is_nullish(napi_env env, napi_value v)
{
	napi_valuetype t;

	return napi_typeof(env, v, &t) == napi_ok &&
	       (t == napi_undefined || t == napi_null);
}

size_t utf8_put(char *o, uint32_t c)
{
	if (c < 0x80) {
		o[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		o[0] = (char)(0xc0 | c >> 6);
		o[1] = (char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		o[0] = (char)(0xe0 | c >> 12);
		o[1] = (char)(0x80 | (c >> 6 & 0x3f));
		o[2] = (char)(0x80 | (c & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | c >> 18);
	o[1] = (char)(0x80 | (c >> 12 & 0x3f));
	o[2] = (char)(0x80 | (c >> 6 & 0x3f));
	o[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

/*
 * Strict UTF-16 to UTF-8. Node-API's own UTF-8 conversion replaces a lone
 * surrogate with U+FFFD, which would record a different id than the one
 * given; and a NUL would cut the C string short. Both are refused.
 */
static int utf16_to_utf8(const char16_t *s, size_t n, char *out, size_t *len,
			 size_t *bad)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		uint32_t c = s[i];

		if (c >= 0xd800 && c <= 0xdbff && i + 1 < n &&
		    s[i + 1] >= 0xdc00 && s[i + 1] <= 0xdfff) {
			c = 0x10000 + ((c - 0xd800) << 10) +
			    (s[i + 1] - 0xdc00);
			i++;
		} else if (c == 0 || (c >= 0xd800 && c <= 0xdfff)) {
			*bad = i;
			return -EILSEQ;
		}
		o += utf8_put(out + o, c);
	}
	out[o] = '\0';
	*len = o;
	return 0;
}

static int string_length_fault(struct call *c, const char *field, size_t n,
			       size_t max)
{
	if (n == 0)
		call_detail(c, "%s is empty", field);
	else
		call_detail(c, "%s is longer than %zu bytes of UTF-8", field,
			    max);
	return -EINVAL;
}

int arg_string(struct call *c, napi_value v, const char *field, size_t max,
	       bool required, char *buf, const char **out)
{
	/* One unit more than max tells a string that is too long. */
	char16_t units[TALLY_NAME_MAX + 2];
	size_t n, len, bad;

	*out = NULL;
	if (!required && is_nullish(c->env, v))
		return 0;
	if (napi_get_value_string_utf16(c->env, v, units, max + 2, &n)) {
		call_detail(c, "%s %s", field,
			    is_nullish(c->env, v) ? "is required"
						  : "must be a string");
		return -EINVAL;
	}
	if ((required && n == 0) || n > max)
		return string_length_fault(c, field, n, max);
	if (utf16_to_utf8(units, n, buf, &len, &bad) < 0) {
		call_detail(c, "%s has %s at index %zu", field,
			    units[bad] == 0 ? "a NUL character"
					    : "a lone UTF-16 surrogate",
			    bad);
		return -EILSEQ;
	}
	if (len > max)
		return string_length_fault(c, field, len, max);
	*out = buf;
	return 0;
}

static int count_from_double(struct call *c, const char *field, double d,
			     uint64_t *out)
{
	if (!isfinite(d) || floor(d) != d) {
		call_detail(c, "%s must be a whole number, not %g", field, d);
		return -EINVAL;
	}
	if (d < 0 || d >= 18446744073709551616.0) {
		call_detail(c, "%s is %.0f", field, d);
		return -ERANGE;
	}
	*out = (uint64_t)d;
	return 0;
}

static int count_from_bigint(struct call *c, const char *field, napi_value v,
			     uint64_t *out)
{
	bool lossless;

	if (napi_get_value_bigint_uint64(c->env, v, out, &lossless))
		return -EINVAL;
	if (!lossless) {
		call_detail(c, "%s is negative or does not fit 64 bits", field);
		return -ERANGE;
	}
	return 0;
}

int arg_count(struct call *c, napi_value v, const char *field, bool required,
	      uint64_t *out, bool *present)
{
	napi_valuetype t;
	double d;

	*out = 0;
	if (present != NULL)
		*present = false;
	if (napi_typeof(c->env, v, &t))
		return -EINVAL;
	if (!required && (t == napi_undefined || t == napi_null))
		return 0;
	if (present != NULL)
		*present = true;
	if (t == napi_bigint)
		return count_from_bigint(c, field, v, out);
	if (t == napi_number && napi_get_value_double(c->env, v, &d) == 0)
		return count_from_double(c, field, d, out);
	call_detail(c, "%s %s", field,
		    t == napi_undefined || t == napi_null
			    ? "is required"
			    : "must be a number or a BigInt");
	return -EINVAL;
}

int arg_ms(struct call *c, napi_value v, const char *field, int def, int *out)
{
	napi_valuetype t;
	double d;

	*out = def;
	if (napi_typeof(c->env, v, &t) || t == napi_undefined)
		return 0;
	if (t != napi_number || napi_get_value_double(c->env, v, &d) ||
	    !isfinite(d) || floor(d) != d) {
		call_detail(c, "%s must be a whole number of milliseconds",
			    field);
		return -EINVAL;
	}
	if (d < -2147483648.0 || d > 2147483647.0) {
		call_detail(c, "%s is %.0f, beyond an int", field, d);
		return -ERANGE;
	}
	*out = (int)d;
	return 0;
}

static int bytes_from_string(struct call *c, napi_value v, struct bytes *b)
{
	size_t n;

	if (napi_get_value_string_utf8(c->env, v, NULL, 0, &n))
		return -EINVAL;
	b->owned = malloc(n + 1);
	if (b->owned == NULL)
		return -ENOMEM;
	napi_get_value_string_utf8(c->env, v, b->owned, n + 1, &b->len);
	b->data = b->owned;
	return 0;
}

int arg_bytes(struct call *c, napi_value v, const char *field, bool required,
	      struct bytes *b)
{
	napi_typedarray_type type;
	napi_valuetype t = napi_undefined;
	bool is_typed = false;
	void *data;

	memset(b, 0, sizeof(*b));
	napi_typeof(c->env, v, &t);
	if (!required && (t == napi_undefined || t == napi_null))
		return 0;
	if (t == napi_string)
		return bytes_from_string(c, v, b);
	napi_is_typedarray(c->env, v, &is_typed);
	if (is_typed &&
	    napi_get_typedarray_info(c->env, v, &type, &b->len, &data, NULL,
				     NULL) == napi_ok &&
	    type == napi_uint8_array) {
		/* An empty array may have no buffer behind it. */
		b->data = data != NULL ? data : "";
		return 0;
	}
	call_detail(c, "%s must be a string or a Uint8Array", field);
	return -EINVAL;
}

void bytes_fini(struct bytes *b)
{
	free(b->owned);
	memset(b, 0, sizeof(*b));
}

napi_status js_u64(napi_env env, uint64_t v, napi_value *out)
{
	if (v <= SAFE_INTEGER_MAX)
		return napi_create_double(env, (double)v, out);
	return napi_create_bigint_uint64(env, v, out);
}
