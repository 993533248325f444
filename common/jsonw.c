#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jsonw.h"
#include "usage_check.h"

void jsonw_init(struct jsonw *w)
{
	memset(w, 0, sizeof(*w));
}

void jsonw_fini(struct jsonw *w)
{
	free(w->buf);
	memset(w, 0, sizeof(*w));
}

static int grow(struct jsonw *w, size_t n)
{
	size_t cap = w->cap ? w->cap : 256;
	char *buf;

	if (w->err)
		return -1;
	if (w->len + n + 1 <= w->cap)
		return 0;
	while (cap < w->len + n + 1)
		cap *= 2;
	buf = realloc(w->buf, cap);
	if (buf == NULL) {
		w->err = -ENOMEM;
		return -1;
	}
	w->buf = buf;
	w->cap = cap;
	return 0;
}

void jsonw_raw(struct jsonw *w, const char *s, size_t n)
{
	/* An absent name is (NULL, 0): nothing to copy, and no NULL to pass. */
	if (n == 0 || grow(w, n) < 0)
		return;
	memcpy(w->buf + w->len, s, n);
	w->len += n;
}

static void escape(struct jsonw *w, unsigned char c)
{
	static const char hex[] = "0123456789abcdef";
	char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

	switch (c) {
	case '"':
		jsonw_raw(w, "\\\"", 2);
		break;
	case '\\':
		jsonw_raw(w, "\\\\", 2);
		break;
	case '\n':
		jsonw_raw(w, "\\n", 2);
		break;
	case '\r':
		jsonw_raw(w, "\\r", 2);
		break;
	case '\t':
		jsonw_raw(w, "\\t", 2);
		break;
	default:
		jsonw_raw(w, u, sizeof(u));
	}
}

/* Length of the well-formed UTF-8 sequence at s, 0 if there is none. */
static size_t seq_len(const char *s, size_t left)
{
	unsigned char c = (unsigned char)s[0];
	size_t n = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;

	if (c < 0xc2 || c > 0xf4 || n > left)
		return 0;
	return utf8_valid(s, n) ? n : 0;
}

void jsonw_str(struct jsonw *w, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, run = 0, k;

	jsonw_raw(w, "\"", 1);
	while (i < n) {
		if (p[i] >= 0x20 && p[i] < 0x80 && p[i] != '"' &&
		    p[i] != '\\') {
			i++;
			continue;
		}
		jsonw_raw(w, s + run, i - run);
		if (p[i] < 0x80) {
			escape(w, p[i]);
			k = 1;
		} else if ((k = seq_len(s + i, n - i)) > 0) {
			jsonw_raw(w, s + i, k);
		} else {
			jsonw_raw(w, "\xef\xbf\xbd", 3);
			k = 1;
		}
		i += k;
		run = i;
	}
	jsonw_raw(w, s + run, i - run);
	jsonw_raw(w, "\"", 1);
}

void jsonw_u64(struct jsonw *w, uint64_t v)
{
	char tmp[20];
	size_t n = 0;

	do {
		tmp[sizeof(tmp) - 1 - n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	jsonw_raw(w, tmp + sizeof(tmp) - n, n);
}

char *jsonw_take(struct jsonw *w)
{
	char *out;

	if (grow(w, 0) < 0) {
		jsonw_fini(w);
		return NULL;
	}
	w->buf[w->len] = '\0';
	out = w->buf;
	memset(w, 0, sizeof(*w));
	return out;
}
