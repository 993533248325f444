/*
 * bpe.h - byte-pair encoding with OpenAI's published ranks, for
 * tally_estimate_tokens(). Internal to libtally.
 *
 * An encoding is loaded from its rank file on first use and then shared,
 * read-only, by every thread of the process until it exits.
 */
#ifndef TALLY_BPE_H
#define TALLY_BPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum bpe_id {
	BPE_O200K,
	BPE_CL100K,
	BPE_COUNT,
};

/* A loaded encoding: its ranks and its pre-tokenizer. */
struct bpe;

/* Where the tokens of a text go. */
struct bpe_sink {
	/* Tokens seen so far. */
	uint64_t count;
	/* Called with each token's rank, unless NULL; < 0 stops the run. */
	int (*emit)(void *arg, uint32_t rank);
	void *arg;
};

/* "o200k_base", "cl100k_base". */
const char *bpe_name(enum bpe_id id);

/*
 * bpe_data_dir() - the directory rank files are read from:
 * $TALLY_DATA_DIR when set and not empty, else TALLY_DATADIR.
 * Errors: -EINVAL, -ENAMETOOLONG when it does not fit len.
 */
int bpe_data_dir(char *buf, size_t len);

/*
 * bpe_get() - the encoding id, loaded from <data dir>/<name>.tiktoken on
 * the first call that succeeds. A failed load is retried by the next call,
 * so that installing the files later needs no restart.
 * Errors: -ENOENT (no rank file), -EACCES and other errors of open() and
 * read(), -EBADMSG (the file is not a rank file), -ENOTSUP (PCRE2 cannot
 * compile the pattern: built without Unicode support), -ENOMEM.
 */
int bpe_get(enum bpe_id id, const struct bpe **out);

/*
 * bpe_run() - cuts text into pieces with the encoding's pattern and
 * encodes each into sink. text must be valid UTF-8: the caller checks it,
 * once, so that the matcher need not check it again at every piece.
 * Errors: -ENOMEM, -E2BIG (the pattern matcher hit a resource limit),
 * -ENOTRECOVERABLE (a pattern matched nothing: a bug), or what
 * sink->emit returned.
 */
int bpe_run(const struct bpe *b, const char *text, size_t len,
	    struct bpe_sink *sink);

/* How bpe_merge() merges; the tests hold both to the same result. */
enum bpe_path {
	/* The piece's own arrays, rescanned after each merge. */
	BPE_PATH_SCAN,
	/* A heap of pair ranks: for long pieces, where a rescan is slow. */
	BPE_PATH_HEAP,
};

/*
 * bpe_merge() - byte-pair encodes one piece of n bytes (1 to 64 for
 * BPE_PATH_SCAN) into sink, without looking the whole piece up first.
 * Errors: -EINVAL (n out of range), -ENOMEM, or what sink->emit returned.
 */
int bpe_merge(const struct bpe *b, const uint8_t *p, size_t n,
	      enum bpe_path path, struct bpe_sink *sink);

#endif
