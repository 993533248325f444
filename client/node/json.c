/*
 * json.c - libtally's JSON as JavaScript values, counts kept exact.
 *
 * JSON.parse() turns every number into a double, so a count above 2^53
 * would come back rounded, and jansson refuses integers above 2^63 - 1;
 * the ledger's counters are unsigned 64-bit. This reader builds the
 * values itself in one pass over the text, with no tree in between:
 * integers become Numbers while they are safe and BigInts past that.
 * Building them through Node-API is slower than JSON.parse(), so addon.c
 * uses it only for a text that JSON.parse() could round.
 *
 * It reads any JSON, but it is only ever given libtally's own output, so
 * it reports a malformed text without saying where.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "addon.h"

/* libtally nests three deep; anything deeper is not its output. */
#define DEPTH_MAX 16
/* Properties given to Node-API per call. */
#define PROPS_CHUNK 16

struct reader {
	napi_env env;
	const char *p;
	const char *end;
	int depth;
	/* Unescaped strings are built here. */
	char *buf;
	size_t cap;
};

static int read_value(struct reader *r, napi_value *out);

static void skip_space(struct reader *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' ||
				 *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

/* Consumes c after any white space; false if something else is there. */
static bool eat(struct reader *r, char c)
{
	skip_space(r);
	if (r->p < r->end && *r->p == c) {
		r->p++;
		return true;
	}
	return false;
}

static int reserve(struct reader *r, size_t n)
{
	char *buf;

	if (n <= r->cap)
		return 0;
	buf = realloc(r->buf, n);
	if (buf == NULL)
		return -ENOMEM;
	r->buf = buf;
	r->cap = n;
	return 0;
}

static int hex4(const char *p, uint32_t *v)
{
	*v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		uint32_t d;

		if (c >= '0' && c <= '9')
			d = (uint32_t)(c - '0');
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
			d = (uint32_t)((c | 0x20) - 'a' + 10);
		else
			return -EBADMSG;
		*v = *v << 4 | d;
	}
	return 0;
}

/* A \u escape at r->p (past the 'u'), surrogate pairs joined. */
static int read_u_escape(struct reader *r, uint32_t *cp)
{
	uint32_t lo;

	if (r->end - r->p < 4 || hex4(r->p, cp) < 0)
		return -EBADMSG;
	r->p += 4;
	if (*cp < 0xd800 || *cp > 0xdbff)
		return 0;
	if (r->end - r->p >= 6 && r->p[0] == '\\' && r->p[1] == 'u' &&
	    hex4(r->p + 2, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
		*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
		r->p += 6;
	}
	return 0;
}

static size_t put_code_point(char *o, uint32_t c)
{
	/* A lone surrogate has no UTF-8 form. */
	return utf8_put(o, c >= 0xd800 && c <= 0xdfff ? 0xfffd : c);
}

static int read_escape(struct reader *r, char *o, size_t *n)
{
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	const char *hit;
	uint32_t cp;
	int rc;

	if (r->p >= r->end)
		return -EBADMSG;
	if (*r->p == 'u') {
		r->p++;
		if ((rc = read_u_escape(r, &cp)) < 0)
			return rc;
		*n = put_code_point(o, cp);
		return 0;
	}
	hit = memchr(from, *r->p, sizeof(from) - 1);
	if (hit == NULL)
		return -EBADMSG;
	*o = to[hit - from];
	*n = 1;
	r->p++;
	return 0;
}

/* The rest of a string with escapes, from its first backslash on. */
static int read_escaped(struct reader *r, const char *start, napi_value *out)
{
	size_t len = (size_t)(r->p - start), n;
	int rc;

	/* No escape makes its text longer than itself. */
	if ((rc = reserve(r, (size_t)(r->end - start) + 1)) < 0)
		return rc;
	memcpy(r->buf, start, len);
	while (r->p < r->end && *r->p != '"') {
		if (*r->p != '\\') {
			r->buf[len++] = *r->p++;
			continue;
		}
		r->p++;
		if ((rc = read_escape(r, r->buf + len, &n)) < 0)
			return rc;
		len += n;
	}
	if (r->p >= r->end)
		return -EBADMSG;
	r->p++;
	return napi_create_string_utf8(r->env, r->buf, len, out) ? ADDON_ENAPI
								 : 0;
}

static int read_string(struct reader *r, napi_value *out)
{
	const char *start;

	if (!eat(r, '"'))
		return -EBADMSG;
	start = r->p;
	while (r->p < r->end && *r->p != '"' && *r->p != '\\')
		r->p++;
	if (r->p >= r->end)
		return -EBADMSG;
	if (*r->p == '\\')
		return read_escaped(r, start, out);
	r->p++;
	return napi_create_string_utf8(r->env, start,
				       (size_t)(r->p - start - 1), out)
		       ? ADDON_ENAPI
		       : 0;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Digits only, no sign, fraction or exponent: exact in 64 bits or not. */
static bool read_u64(const char *p, const char *end, uint64_t *v)
{
	*v = 0;
	for (; p < end; p++) {
		uint64_t d = (uint64_t)(*p - '0');

		if (*v > (UINT64_MAX - d) / 10)
			return false;
		*v = *v * 10 + d;
	}
	return true;
}

static int make_number(struct reader *r, const char *start, bool integer,
		       napi_value *out)
{
	char tmp[64];
	uint64_t v;
	size_t n = (size_t)(r->p - start);

	if (integer && start[0] != '-' && read_u64(start, r->p, &v))
		return js_u64(r->env, v, out) ? ADDON_ENAPI : 0;
	/* libtally writes no other numbers; a double is close enough. */
	if (n >= sizeof(tmp))
		return -EBADMSG;
	memcpy(tmp, start, n);
	tmp[n] = '\0';
	return napi_create_double(r->env, strtod(tmp, NULL), out) ? ADDON_ENAPI
								  : 0;
}

static int read_number(struct reader *r, napi_value *out)
{
	const char *start = r->p;
	bool integer = true;

	if (r->p < r->end && *r->p == '-')
		r->p++;
	if (r->p >= r->end || !is_digit(*r->p))
		return -EBADMSG;
	while (r->p < r->end && is_digit(*r->p))
		r->p++;
	if (r->p < r->end && *r->p == '.') {
		integer = false;
		r->p++;
		while (r->p < r->end && is_digit(*r->p))
			r->p++;
	}
	if (r->p < r->end && (*r->p | 0x20) == 'e') {
		integer = false;
		r->p++;
		if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
			r->p++;
		while (r->p < r->end && is_digit(*r->p))
			r->p++;
	}
	return make_number(r, start, integer, out);
}

static int define_props(struct reader *r, napi_value obj,
			napi_property_descriptor *d, size_t n)
{
	return n > 0 && napi_define_properties(r->env, obj, n, d) ? ADDON_ENAPI
								  : 0;
}

/*
 * Members become own data properties, as JSON.parse() makes them: set
 * through napi_set_property, a key "__proto__" (an LLM reference id may be
 * anything) would replace the object's prototype instead.
 */
static int read_members(struct reader *r, napi_value obj)
{
	napi_property_descriptor d[PROPS_CHUNK];
	size_t n = 0;
	int rc;

	memset(d, 0, sizeof(d));
	do {
		if (n == PROPS_CHUNK) {
			if ((rc = define_props(r, obj, d, n)) < 0)
				return rc;
			n = 0;
		}
		d[n].attributes = napi_default_jsproperty;
		if ((rc = read_string(r, &d[n].name)) < 0)
			return rc;
		if (!eat(r, ':'))
			return -EBADMSG;
		if ((rc = read_value(r, &d[n].value)) < 0)
			return rc;
		n++;
	} while (eat(r, ','));
	if (!eat(r, '}'))
		return -EBADMSG;
	return define_props(r, obj, d, n);
}

static int read_object(struct reader *r, napi_value *out)
{
	if (napi_create_object(r->env, out))
		return ADDON_ENAPI;
	if (eat(r, '}'))
		return 0;
	return read_members(r, *out);
}

static int read_array(struct reader *r, napi_value *out)
{
	napi_value v;
	uint32_t i = 0;
	int rc;

	if (napi_create_array(r->env, out))
		return ADDON_ENAPI;
	if (eat(r, ']'))
		return 0;
	do {
		if ((rc = read_value(r, &v)) < 0)
			return rc;
		if (napi_set_element(r->env, *out, i++, v))
			return ADDON_ENAPI;
	} while (eat(r, ','));
	return eat(r, ']') ? 0 : -EBADMSG;
}

static int read_word(struct reader *r, napi_value *out)
{
	static const char *const words[] = {"true", "false", "null"};

	for (int i = 0; i < 3; i++) {
		size_t n = strlen(words[i]);

		if ((size_t)(r->end - r->p) < n || memcmp(r->p, words[i], n))
			continue;
		r->p += n;
		if (i == 2)
			return napi_get_null(r->env, out) ? ADDON_ENAPI : 0;
		return napi_get_boolean(r->env, i == 0, out) ? ADDON_ENAPI : 0;
	}
	return -EBADMSG;
}

static int read_nested(struct reader *r, napi_value *out, bool object)
{
	int rc;

	if (++r->depth > DEPTH_MAX)
		return -EBADMSG;
	r->p++;
	rc = object ? read_object(r, out) : read_array(r, out);
	r->depth--;
	return rc;
}

static int read_value(struct reader *r, napi_value *out)
{
	skip_space(r);
	if (r->p >= r->end)
		return -EBADMSG;
	switch (*r->p) {
	case '{':
		return read_nested(r, out, true);
	case '[':
		return read_nested(r, out, false);
	case '"':
		return read_string(r, out);
	case '-':
		return read_number(r, out);
	default:
		if (is_digit(*r->p))
			return read_number(r, out);
		return read_word(r, out);
	}
}

int json_to_js(napi_env env, const char *s, size_t len, napi_value *out)
{
	struct reader r = {.env = env, .p = s, .end = s + len};
	int rc;

	rc = read_value(&r, out);
	skip_space(&r);
	if (rc == 0 && r.p != r.end)
		rc = -EBADMSG;
	free(r.buf);
	return rc;
}
