/*
 * bpe.c - exact token counts for OpenAI's o200k_base and cl100k_base.
 *
 * A text is cut into pieces by the encoding's pre-tokenizer pattern; a
 * piece that is itself a token counts one, any other is byte-pair
 * encoded: starting from single bytes, the adjacent pair of parts whose
 * concatenation has the lowest rank is merged (the leftmost on a tie)
 * until no adjacent pair is a token.
 *
 * The patterns are tiktoken's, OpenAI's own tokenizer, as it publishes
 * them, run by PCRE2 with two changes that make PCRE2 read them as
 * tiktoken's regex engine does:
 *  - \s is spelled out as Unicode's White_Space property. PCRE2's own \s
 *    (with UCP) also takes U+180E.
 *  - PCRE2_DOLLAR_ENDONLY: without it PCRE2's $ also matches before a
 *    final newline, and "\s++$" would take a trailing " \n" whole.
 * Letters and digits come from PCRE2's Unicode tables (\p{L}, \p{N}...),
 * which may be older than tiktoken's: a character assigned in a later
 * Unicode version can be classed differently.
 *
 * gpt-tokenizer, the JavaScript port the tests also compare with, differs
 * from tiktoken in two ways, and tally follows tiktoken in both: its \s
 * is JavaScript's (U+FEFF in, U+0085 out), and it looks byte strings up
 * through a TextDecoder that drops a leading U+FEFF, so that no merge
 * ever yields the byte-order mark's own token.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "bpe.h"

#ifndef TALLY_DATADIR
#define TALLY_DATADIR "/usr/local/share/tally"
#endif

#define NO_RANK UINT32_MAX
/* A part that has been merged into its left neighbour. */
#define DEAD_RANK (UINT32_MAX - 1)
/* Ranks stay below 2^24 so that a heap key holds a rank and a position. */
#define RANK_LIMIT (1u << 24)
#define POS_BITS 40
/* Longest piece merged by rescanning its arrays; longer ones use a heap. */
#define SCAN_MAX 64
/* The published rank files are 1.7 and 3.6 MB; far larger is not one. */
#define RANK_FILE_MAX (64u << 20)

/* Unicode's White_Space, as the body of a character class: tiktoken's \s. */
#define WS                                                             \
	"\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}" \
	"\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define NOT_LN "[^\\r\\n\\p{L}\\p{N}]"
#define UPPER "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define LOWER "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
#define SUFFIX "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"

/* One branch of each pattern per line, in tiktoken's order. */
/* clang-format off */
static const char cl100k_pattern[] =
	"'(?i:[sdmt]|ll|ve|re)"
	"|" NOT_LN "?+\\p{L}++"
	"|\\p{N}{1,3}+"
	"| ?[^" WS "\\p{L}\\p{N}]++[\\r\\n]*+"
	"|[" WS "]++$"
	"|[" WS "]*[\\r\\n]"
	"|[" WS "]+(?![^" WS "])"
	"|[" WS "]";

static const char o200k_pattern[] =
	NOT_LN "?" UPPER "*" LOWER "+" SUFFIX
	"|" NOT_LN "?" UPPER "+" LOWER "*" SUFFIX
	"|\\p{N}{1,3}"
	"| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n/]*"
	"|[" WS "]*[\\r\\n]+"
	"|[" WS "]+(?![^" WS "])"
	"|[" WS "]+";
/* clang-format on */

static const struct {
	const char *name;
	const char *pattern;
} encodings[BPE_COUNT] = {
	[BPE_O200K] = {"o200k_base", o200k_pattern},
	[BPE_CL100K] = {"cl100k_base", cl100k_pattern},
};

/*
 * One entry of the open-addressing table from a token's bytes to its
 * rank. A token of up to 8 bytes is compared through key alone, which
 * holds all of its bytes; a longer one's key holds its first 8 and the
 * rest is compared in the arena. len 0 marks an empty slot.
 */
struct slot {
	uint64_t key;
	uint32_t off;
	uint32_t rank : 24;
	uint32_t len : 8;
};

struct bpe {
	struct slot *slots;
	size_t mask;
	/* The bytes of every token, back to back. */
	uint8_t *arena;
	size_t arena_len;
	size_t max_len;
	pcre2_code *re;
	bool jit;
};

/* Loaded encodings; written once, under load_lock, then only read. */
static struct bpe *_Atomic loaded[BPE_COUNT];
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

const char *bpe_name(enum bpe_id id)
{
	return id < BPE_COUNT ? encodings[id].name : NULL;
}

int bpe_data_dir(char *buf, size_t len)
{
	const char *dir = getenv("TALLY_DATA_DIR");
	int n;

	if (!buf)
		return -EINVAL;
	if (!dir || !*dir)
		dir = TALLY_DATADIR;
	n = snprintf(buf, len, "%s", dir);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* ---- the table of ranks ---- */

static uint64_t load64(const uint8_t *s)
{
	uint64_t v;

	memcpy(&v, s, sizeof(v));
	return v;
}

static uint64_t load32(const uint8_t *s)
{
	uint32_t v;

	memcpy(&v, s, sizeof(v));
	return v;
}

/*
 * For len <= 8, a word that, with len, determines the bytes: two loads
 * that overlap cover 4 to 8 bytes, three single bytes cover 1 to 3. For
 * longer strings, their first 8 bytes.
 */
static uint64_t key_of(const uint8_t *s, size_t len)
{
	if (len >= 8)
		return load64(s);
	if (len >= 4)
		return load32(s) | load32(s + len - 4) << 32;
	return s[0] | (uint64_t)s[len / 2] << 8 | (uint64_t)s[len - 1] << 16;
}

/* A multiply-xorshift hash of the key and, past 8 bytes, of the rest. */
static uint64_t hash_of(uint64_t key, const uint8_t *s, size_t len)
{
	const uint64_t k = UINT64_C(0x9e3779b97f4a7c15);
	uint64_t h = (key ^ (len * UINT64_C(0xff51afd7ed558ccd))) * k;
	size_t i;

	if (len > 8) {
		for (i = 8; i + 8 < len; i += 8)
			h = ((h ^ (h >> 29)) ^ load64(s + i)) * k;
		h = ((h ^ (h >> 29)) ^ load64(s + len - 8)) * k;
	}
	return h ^ (h >> 32);
}

static bool slot_is(const struct bpe *b, const struct slot *sl, uint64_t key,
		    const uint8_t *s, size_t len)
{
	return sl->key == key && sl->len == len &&
	       (len <= 8 || memcmp(b->arena + sl->off, s, len) == 0);
}

static uint32_t rank_of(const struct bpe *b, const uint8_t *s, size_t len)
{
	const struct slot *sl;
	uint64_t key;
	size_t i;

	if (len > b->max_len)
		return NO_RANK;
	key = key_of(s, len);
	/* The table is at most half full, so an empty slot ends the probe. */
	for (i = hash_of(key, s, len) & b->mask;; i = (i + 1) & b->mask) {
		sl = &b->slots[i];
		if (!sl->len)
			return NO_RANK;
		if (slot_is(b, sl, key, s, len))
			return sl->rank;
	}
}

/* Adds the token of len bytes at arena offset off; a repeat is an error. */
static int insert(struct bpe *b, uint32_t off, size_t len, uint32_t rank)
{
	const uint8_t *s = b->arena + off;
	uint64_t key = key_of(s, len);
	size_t i;

	if (rank_of(b, s, len) != NO_RANK)
		return -EBADMSG;
	for (i = hash_of(key, s, len) & b->mask; b->slots[i].len;
	     i = (i + 1) & b->mask)
		;
	b->slots[i] = (struct slot){key, off, rank, (uint32_t)len};
	return 0;
}

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decodes padded base64; returns the byte count, or -1 if malformed. */
static long b64_decode(const char *s, size_t n, uint8_t *out)
{
	uint32_t acc = 0;
	size_t i, bits = 0;
	long len = 0;
	int v;

	if (n == 0 || n % 4)
		return -1;
	if (s[n - 1] == '=')
		n -= s[n - 2] == '=' ? 2 : 1;
	for (i = 0; i < n; i++) {
		v = b64_value((unsigned char)s[i]);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[len++] = (uint8_t)(acc >> bits);
		}
	}
	return len;
}

static int parse_rank(const char *s, const char *end, uint32_t *rank)
{
	uint32_t v = 0;

	if (end > s && end[-1] == '\r')
		end--;
	if (s == end)
		return -EBADMSG;
	for (; s < end; s++) {
		if (*s < '0' || *s > '9')
			return -EBADMSG;
		v = v * 10 + (uint32_t)(*s - '0');
		if (v >= RANK_LIMIT)
			return -EBADMSG;
	}
	*rank = v;
	return 0;
}

/* One "base64 rank" line, stored at b->arena_len. */
static int parse_line(struct bpe *b, const char *s, const char *end)
{
	const char *sp = memchr(s, ' ', (size_t)(end - s));
	uint32_t off = (uint32_t)b->arena_len, rank;
	long len;
	int err;

	if (!sp)
		return -EBADMSG;
	len = b64_decode(s, (size_t)(sp - s), b->arena + off);
	if (len < 1 || len > UINT8_MAX)
		return -EBADMSG;
	err = parse_rank(sp + 1, end, &rank);
	if (err < 0)
		return err;
	b->arena_len += (size_t)len;
	if ((size_t)len > b->max_len)
		b->max_len = (size_t)len;
	return insert(b, off, (size_t)len, rank);
}

static size_t count_lines(const char *text, size_t n)
{
	size_t lines = 0;
	const char *p = text, *end = text + n;

	while (p < end && (p = memchr(p, '\n', (size_t)(end - p)))) {
		lines++;
		p++;
	}
	return lines + (n && text[n - 1] != '\n');
}

/* Sizes the table and arena for a file of n bytes. */
static int alloc_table(struct bpe *b, const char *text, size_t n)
{
	size_t want = 2 * count_lines(text, n) + 2, size = 1024;

	while (size < want)
		size *= 2;
	b->slots = calloc(size, sizeof(*b->slots));
	/* A token's bytes never outgrow its base64 line. */
	b->arena = malloc(n);
	if (!b->slots || !b->arena)
		return -ENOMEM;
	b->mask = size - 1;
	return 0;
}

/* Every single byte must be a token, or a merge could leave a non-token. */
static int check_bytes(const struct bpe *b)
{
	uint8_t c;
	int i;

	for (i = 0; i < 256; i++) {
		c = (uint8_t)i;
		if (rank_of(b, &c, 1) == NO_RANK)
			return -EBADMSG;
	}
	return 0;
}

static int parse_ranks(struct bpe *b, const char *text, size_t n)
{
	const char *p = text, *end = text + n, *nl;
	int err;

	err = alloc_table(b, text, n);
	if (err < 0)
		return err;
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			nl = end;
		if (nl > p) {
			err = parse_line(b, p, nl);
			if (err < 0)
				return err;
		}
		p = nl + 1;
	}
	return check_bytes(b);
}

/* ---- loading ---- */

static int read_all(int fd, char *buf, size_t n)
{
	size_t got = 0;
	ssize_t r;

	while (got < n) {
		r = read(fd, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EBADMSG;
		got += (size_t)r;
	}
	return 0;
}

static int read_file(const char *path, char **out, size_t *len)
{
	struct stat st;
	char *buf = NULL;
	int fd, err;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		err = -errno;
		goto out;
	}
	err = -EBADMSG;
	if (!S_ISREG(st.st_mode) || st.st_size <= 0 ||
	    (uint64_t)st.st_size > RANK_FILE_MAX)
		goto out;
	err = -ENOMEM;
	buf = malloc((size_t)st.st_size);
	if (!buf)
		goto out;
	err = read_all(fd, buf, (size_t)st.st_size);
	if (err == 0) {
		*out = buf;
		*len = (size_t)st.st_size;
		buf = NULL;
	}
out:
	free(buf);
	close(fd);
	return err;
}

static int compile_pattern(struct bpe *b, const char *pattern)
{
	int code;
	PCRE2_SIZE at;

	b->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
			      PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY,
			      &code, &at, NULL);
	/* Not bad input: a PCRE2 built without Unicode support. */
	if (!b->re)
		return code == PCRE2_ERROR_NOMEMORY ? -ENOMEM : -ENOTSUP;
	/* Without JIT (an unsupported CPU) the interpreter gives the same. */
	b->jit = pcre2_jit_compile(b->re, PCRE2_JIT_COMPLETE) == 0;
	return 0;
}

static void bpe_free(struct bpe *b)
{
	if (!b)
		return;
	pcre2_code_free(b->re);
	free(b->slots);
	free(b->arena);
	free(b);
}

static int bpe_load(enum bpe_id id, struct bpe **out)
{
	char dir[4096], path[4200];
	struct bpe *b;
	char *text = NULL;
	size_t n = 0;
	int err;

	err = bpe_data_dir(dir, sizeof(dir));
	if (err < 0)
		return err;
	if (snprintf(path, sizeof(path), "%s/%s.tiktoken", dir,
		     encodings[id].name) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	err = read_file(path, &text, &n);
	if (err == 0)
		err = parse_ranks(b, text, n);
	free(text);
	if (err == 0)
		err = compile_pattern(b, encodings[id].pattern);
	if (err < 0) {
		bpe_free(b);
		return err;
	}
	*out = b;
	return 0;
}

/*
 * A fork() while another thread holds load_lock would leave the child's
 * copy locked for good; holding it across the fork prevents that.
 */
static void lock_loads(void)
{
	pthread_mutex_lock(&load_lock);
}

static void unlock_loads(void)
{
	pthread_mutex_unlock(&load_lock);
}

static void register_atfork(void)
{
	pthread_atfork(lock_loads, unlock_loads, unlock_loads);
}

int bpe_get(enum bpe_id id, const struct bpe **out)
{
	struct bpe *b;
	int err = 0;

	if (id >= BPE_COUNT || !out)
		return -EINVAL;
	b = atomic_load_explicit(&loaded[id], memory_order_acquire);
	if (b) {
		*out = b;
		return 0;
	}
	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&load_lock);
	b = atomic_load_explicit(&loaded[id], memory_order_relaxed);
	if (!b) {
		/* Never freed: any thread may be using it until exit. */
		err = bpe_load(id, &b);
		if (err == 0)
			atomic_store_explicit(&loaded[id], b,
					      memory_order_release);
	}
	pthread_mutex_unlock(&load_lock);
	if (err == 0)
		*out = b;
	return err;
}

/* ---- merging ---- */

static int emit(struct bpe_sink *sink, uint32_t rank)
{
	sink->count++;
	return sink->emit ? sink->emit(sink->arg, rank) : 0;
}

/* Emits the parts that start at start[0..parts) and end at start[parts]. */
static int emit_parts(const struct bpe *b, const uint8_t *p,
		      const uint32_t *start, size_t parts,
		      struct bpe_sink *sink)
{
	size_t i;
	int err;

	if (!sink->emit) {
		sink->count += parts;
		return 0;
	}
	for (i = 0; i < parts; i++) {
		err = emit(sink,
			   rank_of(b, p + start[i], start[i + 1] - start[i]));
		if (err < 0)
			return err;
	}
	return 0;
}

/*
 * The textbook merge for short pieces: rank[i] is the rank of parts i and
 * i + 1 joined; each round finds the lowest, merges, and re-ranks the two
 * pairs the merge touched.
 */
static int merge_scan(const struct bpe *b, const uint8_t *p, size_t n,
		      struct bpe_sink *sink)
{
	uint32_t start[SCAN_MAX + 1], rank[SCAN_MAX];
	size_t parts = n, i, best;

	for (i = 0; i <= n; i++)
		start[i] = (uint32_t)i;
	for (i = 0; i + 1 < n; i++)
		rank[i] = rank_of(b, p + i, 2);
	for (;;) {
		best = 0;
		for (i = 1; i + 1 < parts; i++)
			if (rank[i] < rank[best])
				best = i;
		if (parts < 2 || rank[best] == NO_RANK)
			break;
		memmove(start + best + 1, start + best + 2,
			(parts - best - 1) * sizeof(*start));
		memmove(rank + best + 1, rank + best + 2,
			(parts - best - 2) * sizeof(*rank));
		parts--;
		if (best + 1 < parts)
			rank[best] = rank_of(b, p + start[best],
					     start[best + 2] - start[best]);
		if (best > 0)
			rank[best - 1] =
				rank_of(b, p + start[best - 1],
					start[best + 1] - start[best - 1]);
	}
	return emit_parts(b, p, start, parts, sink);
}

/*
 * For long pieces (a run of spaces, a minified blob) the rescan above is
 * quadratic. Here the parts form a linked list over their first byte, and
 * a min-heap holds (rank, position) keys: the lowest key is the lowest
 * rank and, among equal ranks, the leftmost pair, which is the pair the
 * rescan would pick. Keys are not removed when a merge changes a pair;
 * one whose rank no longer matches its part's current pair is skipped.
 */
struct heap_merge {
	const struct bpe *b;
	const uint8_t *p;
	size_t n;
	uint32_t *next;
	uint32_t *prev;
	/* Rank of the pair starting at each part; DEAD_RANK once merged. */
	uint32_t *pair;
	uint64_t *heap;
	size_t len;
};

static void heap_push(struct heap_merge *m, uint64_t key)
{
	size_t i = m->len++, up;

	while (i > 0) {
		up = (i - 1) / 2;
		if (m->heap[up] <= key)
			break;
		m->heap[i] = m->heap[up];
		i = up;
	}
	m->heap[i] = key;
}

static uint64_t heap_pop(struct heap_merge *m)
{
	uint64_t top = m->heap[0], last = m->heap[--m->len];
	size_t i = 0, c;

	for (;;) {
		c = 2 * i + 1;
		if (c >= m->len)
			break;
		if (c + 1 < m->len && m->heap[c + 1] < m->heap[c])
			c++;
		if (last <= m->heap[c])
			break;
		m->heap[i] = m->heap[c];
		i = c;
	}
	m->heap[i] = last;
	return top;
}

/* Ranks the pair that starts at part i and queues it if it is a token. */
static void rank_pair(struct heap_merge *m, uint32_t i)
{
	uint32_t j = m->next[i];

	m->pair[i] = NO_RANK;
	if (j >= m->n)
		return;
	m->pair[i] = rank_of(m->b, m->p + i, m->next[j] - i);
	if (m->pair[i] != NO_RANK)
		heap_push(m, (uint64_t)m->pair[i] << POS_BITS | i);
}

static void heap_rounds(struct heap_merge *m, size_t *parts)
{
	uint64_t key, mask = (UINT64_C(1) << POS_BITS) - 1;
	uint32_t i, j;

	while (m->len) {
		key = heap_pop(m);
		i = (uint32_t)(key & mask);
		if (m->pair[i] != (uint32_t)(key >> POS_BITS))
			continue;
		j = m->next[i];
		m->next[i] = m->next[j];
		if (m->next[j] < m->n)
			m->prev[m->next[j]] = i;
		m->pair[j] = DEAD_RANK;
		(*parts)--;
		rank_pair(m, i);
		if (m->prev[i] != NO_RANK)
			rank_pair(m, m->prev[i]);
	}
}

static int heap_emit(const struct heap_merge *m, struct bpe_sink *sink)
{
	uint32_t i;
	int err;

	for (i = 0; i < m->n; i = m->next[i]) {
		err = emit(sink, rank_of(m->b, m->p + i, m->next[i] - i));
		if (err < 0)
			return err;
	}
	return 0;
}

static int merge_heap(const struct bpe *b, const uint8_t *p, size_t n,
		      struct bpe_sink *sink)
{
	struct heap_merge m = {.b = b, .p = p, .n = n};
	size_t parts = n;
	uint32_t i;
	int err = -ENOMEM;

	/* Positions are 32-bit; such a piece would need 80 GB here anyway. */
	if (n >= UINT32_MAX)
		return -ENOMEM;
	m.next = malloc(n * sizeof(*m.next));
	m.prev = malloc(n * sizeof(*m.prev));
	m.pair = malloc(n * sizeof(*m.pair));
	/* n - 1 keys at first, and each merge pops one and pushes two. */
	m.heap = malloc(2 * n * sizeof(*m.heap));
	if (!m.next || !m.prev || !m.pair || !m.heap)
		goto out;
	for (i = 0; i < n; i++) {
		m.next[i] = i + 1;
		m.prev[i] = i ? i - 1 : NO_RANK;
	}
	for (i = 0; i < n; i++)
		rank_pair(&m, i);
	heap_rounds(&m, &parts);
	err = 0;
	if (sink->emit)
		err = heap_emit(&m, sink);
	else
		sink->count += parts;
out:
	free(m.next);
	free(m.prev);
	free(m.pair);
	free(m.heap);
	return err;
}

int bpe_merge(const struct bpe *b, const uint8_t *p, size_t n,
	      enum bpe_path path, struct bpe_sink *sink)
{
	if (n == 0 || (path == BPE_PATH_SCAN && n > SCAN_MAX))
		return -EINVAL;
	if (n == 1)
		return emit(sink, rank_of(b, p, 1));
	if (path == BPE_PATH_SCAN)
		return merge_scan(b, p, n, sink);
	return merge_heap(b, p, n, sink);
}

static int encode_piece(const struct bpe *b, const uint8_t *p, size_t n,
			struct bpe_sink *sink)
{
	uint32_t rank = rank_of(b, p, n);

	if (rank != NO_RANK)
		return emit(sink, rank);
	return bpe_merge(b, p, n, n <= SCAN_MAX ? BPE_PATH_SCAN : BPE_PATH_HEAP,
			 sink);
}

/* ---- cutting the text into pieces ---- */

static int match_errno(int rc)
{
	if (rc == PCRE2_ERROR_NOMEMORY)
		return -ENOMEM;
	/* Match, depth, heap or JIT stack limit: the text is too hard. */
	return -E2BIG;
}

/*
 * PCRE2 stops a match after 10 million backtracking steps by default.
 * Both patterns are linear, but a piece of n bytes (a run of spaces) may
 * take about 2n steps before it matches, so the limit grows with what is
 * left of the text; it stays, against a pattern bug, a bound.
 */
static void set_limit(pcre2_match_context *mc, size_t left)
{
	uint64_t limit = UINT64_C(10000000) + 8 * (uint64_t)left;

	pcre2_set_match_limit(mc, limit > UINT32_MAX ? UINT32_MAX
						     : (uint32_t)limit);
}

static int next_piece(const struct bpe *b, const char *text, size_t len,
		      size_t off, pcre2_match_data *md, pcre2_match_context *mc)
{
	set_limit(mc, len - off);
	/* The caller checked the UTF-8 once, for the whole text. */
	if (b->jit)
		return pcre2_jit_match(b->re, (PCRE2_SPTR)text, len, off, 0, md,
				       mc);
	return pcre2_match(b->re, (PCRE2_SPTR)text, len, off,
			   PCRE2_NO_UTF_CHECK, md, mc);
}

static int split(const struct bpe *b, const char *text, size_t len,
		 pcre2_match_data *md, pcre2_match_context *mc,
		 struct bpe_sink *sink)
{
	PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
	size_t off = 0;
	int rc, err = 0;

	while (off < len && err == 0) {
		rc = next_piece(b, text, len, off, md, mc);
		if (rc == PCRE2_ERROR_NOMATCH)
			break;
		if (rc < 0)
			return match_errno(rc);
		/* Every branch of both patterns takes at least a character. */
		if (ov[1] <= ov[0])
			return -ENOTRECOVERABLE;
		err = encode_piece(b, (const uint8_t *)text + ov[0],
				   ov[1] - ov[0], sink);
		off = ov[1];
	}
	return err;
}

int bpe_run(const struct bpe *b, const char *text, size_t len,
	    struct bpe_sink *sink)
{
	pcre2_match_context *mc;
	pcre2_match_data *md;
	int err = -ENOMEM;

	if (len == 0)
		return 0;
	mc = pcre2_match_context_create(NULL);
	md = pcre2_match_data_create_from_pattern(b->re, NULL);
	if (mc && md)
		err = split(b, text, len, md, mc, sink);
	pcre2_match_data_free(md);
	pcre2_match_context_free(mc);
	return err;
}
