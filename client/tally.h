/*
 * tally.h - record and read the LLM token usage of conversation sessions.
 *
 * libtally is the client side of tally. A worker process opens a handle,
 * records one usage per LLM call, and reads a session's running totals as
 * JSON. Records travel to the daemon, tallyd, which is the only writer of
 * the ledger (an LMDB file); snapshots are read straight from the ledger's
 * shared memory map, without a round trip to the daemon.
 *
 * Errors: every function that can fail returns 0 or a negative errno.
 * The errors a call can return are listed with it; tally_strerror() turns
 * any of them into a sentence. The library never prints.
 *
 * Delivery promise: every usage for which tally_record() returned 0 is
 * counted exactly once, provided that the process then called tally_sync()
 * and it returned 0. Until then a usage sits in the handle's queue of
 * unconfirmed usages and is resent as needed; the daemon drops repeats, so
 * a resend never counts twice.
 *
 * Threads: a handle may be used from several threads; calls on one handle
 * are serialised by a lock inside it. Handles are independent of each other.
 *
 * fork(): a handle survives fork() in both processes. In the child it
 * becomes a new producer with an empty queue on its next call: what the
 * parent had queued belongs to the parent, which alone resends it. The
 * library closes its sockets in the parent before a fork and reopens them
 * on the next call, because nanomsg's threads do not survive fork().
 */
#ifndef TALLY_H
#define TALLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TALLY_VERSION_MAJOR 0
#define TALLY_VERSION_MINOR 1
#define TALLY_VERSION_PATCH 0
#define TALLY_VERSION_STRING "0.1.0"

/* Longest session id and LLM reference id, in bytes, without the NUL. */
#define TALLY_ID_MAX 255
/* Longest display name, provider type and model type, in bytes. */
#define TALLY_NAME_MAX 256
/* Most tokens one usage may carry in any one count. */
#define TALLY_TOKENS_MAX UINT64_C(1000000000)

/*
 * Project error codes, for the failures no errno names. They form one band
 * below -4096 so that they never meet a system errno.
 */
#define TALLY_EBASE (-4200)
/* The ledger file is not of this version of tally. */
#define TALLY_EVERSION (TALLY_EBASE - 1)
/* The ledger is damaged: a record did not decode. */
#define TALLY_ECORRUPT (TALLY_EBASE - 2)

/* Flags of struct tally_usage. */
enum tally_usage_flags {
	/* The counts were estimated from text, not reported by the provider. */
	TALLY_USAGE_ESTIMATED = 1u << 0,
	/* cache_read_tokens, cache_write_tokens, reasoning_tokens are set. */
	TALLY_USAGE_HAS_CACHE_READ = 1u << 1,
	TALLY_USAGE_HAS_CACHE_WRITE = 1u << 2,
	TALLY_USAGE_HAS_REASONING = 1u << 3,
	/* The provider reported no input (or output) count for this call. */
	TALLY_USAGE_INPUT_MISSING = 1u << 4,
	TALLY_USAGE_OUTPUT_MISSING = 1u << 5,
};

/*
 * The usage of one LLM call.
 *
 * session_id and llm_reference_id are required: 1 to TALLY_ID_MAX bytes of
 * UTF-8 each. The names are optional (NULL or "" leaves the names already
 * stored for that LLM untouched), at most TALLY_NAME_MAX bytes of UTF-8.
 * Invalid UTF-8 anywhere is refused with -EILSEQ; nothing is replaced.
 *
 * input_tokens is every prompt-side token billed, cache reads and writes
 * included; output_tokens is every generated token billed, reasoning
 * included. The detail counts break those down and count only where their
 * TALLY_USAGE_HAS_* flag is set. Each count is at most TALLY_TOKENS_MAX.
 */
struct tally_usage {
	const char *session_id;
	const char *llm_reference_id;
	const char *llm_display_name;
	const char *provider_type;
	const char *model_type;
	uint64_t input_tokens;
	uint64_t output_tokens;
	uint64_t cache_read_tokens;
	uint64_t cache_write_tokens;
	uint64_t reasoning_tokens;
	/* TALLY_USAGE_* flags. */
	uint32_t flags;
};

/* Options of tally_open_ex(); zero or NULL fields take the default. */
struct tally_options {
	/* Ledger directory; see tally_open(). */
	const char *dir;
	/* Most unconfirmed usages a handle keeps; default 65536. */
	size_t queue_max;
	/*
	 * How long tally_record() may wait for room when the queue is full,
	 * in milliseconds; default 0 (fail at once with -ENOBUFS).
	 */
	int record_timeout_ms;
	/* How long tally_close() waits for the daemon's commit; default 5000. */
	int close_timeout_ms;
};

/* Flags of tally_session_json_ex(). */
enum tally_json_flags {
	/* Add a "details" object to each entry (cache, reasoning, calls). */
	TALLY_JSON_DETAILS = 1u << 0,
};

struct tally;

/*
 * tally_open() - open a handle on the ledger directory dir.
 *
 * dir NULL means $TALLY_DIR when that is set, else /var/lib/tally for root,
 * else ${XDG_STATE_HOME:-$HOME/.local/state}/tally. Opening does not need
 * the daemon to be running: usages recorded meanwhile wait in the queue.
 *
 * On success *out holds the handle, to be freed with tally_close().
 *
 * Errors:
 *  -EINVAL        out is NULL.
 *  -ENAMETOOLONG  the directory's socket paths would not fit a Unix socket
 *                 address (107 bytes).
 *  -ENOENT        dir is NULL and no default could be found (no $HOME).
 *  -ENOMEM        out of memory.
 *  -EMFILE and the other errors of nn_socket(): the sockets failed.
 */
int tally_open(struct tally **out, const char *dir);

/* tally_open() with options; opts may be NULL. Errors as tally_open(). */
int tally_open_ex(struct tally **out, const struct tally_options *opts);

/*
 * tally_close() - flush and free a handle.
 *
 * Waits up to the close timeout for the daemon to commit every usage the
 * handle recorded, then frees it. Usages still unconfirmed then are not
 * delivered; call tally_sync() first to learn whether that happened. NULL
 * is accepted and does nothing.
 */
void tally_close(struct tally *t);

/*
 * tally_record() - record the usage of one LLM call.
 *
 * Validates u, gives it the next sequence number of this handle, queues it
 * and sends it to the daemon without waiting for an answer. The strings of
 * u are copied; the caller keeps ownership.
 *
 * Errors:
 *  -EINVAL   t or u is NULL, an id is empty or longer than TALLY_ID_MAX,
 *            a name is longer than TALLY_NAME_MAX, or a detail count is
 *            larger than the count it is part of.
 *  -EILSEQ   a string is not valid UTF-8.
 *  -ERANGE   a count is larger than TALLY_TOKENS_MAX.
 *  -ENOBUFS  the queue of unconfirmed usages is full and stayed full for
 *            the record timeout: the daemon is not keeping up or not
 *            running. The usage was not recorded.
 *  -ENOMEM   out of memory. The usage was not recorded.
 */
int tally_record(struct tally *t, const struct tally_usage *u);

/*
 * tally_parse_response() - read the usage out of a provider's response.
 *
 * provider_type selects the format: "openAI", "azureOpenAI",
 * "openAICompatible", "mistral", "anthropic", "googleGemini",
 * "googleVertexAI", "googleGenAI", "awsBedrock", "alephAlpha", "cohere",
 * "ollama". body is the JSON response, len its length. Sets the counts and
 * flags of *u and leaves its strings alone.
 *
 * Errors:
 *  -EINVAL       an argument is NULL.
 *  -EPROTONOSUPPORT  provider_type is not one of the above.
 *  -EBADMSG      body is not JSON, or a usage field has the wrong type.
 *  -ENODATA      body holds no usage report.
 *  -ERANGE       a count is negative or larger than TALLY_TOKENS_MAX.
 */
int tally_parse_response(const char *provider_type, const char *body,
			 size_t len, struct tally_usage *u);

/*
 * tally_record_response() - record a call from its provider response.
 *
 * Takes the ids and names from ids (its counts are ignored) and the counts
 * from body, parsed as tally_parse_response() does for ids->provider_type.
 * Errors: those of tally_parse_response() and tally_record().
 */
int tally_record_response(struct tally *t, const struct tally_usage *ids,
			  const char *body, size_t len);

/*
 * tally_sync() - wait until the daemon has committed this handle's usages.
 *
 * Returns 0 once every usage recorded through t is durably in the ledger.
 * Resends what the daemon lost (a restart, a dropped message) while it
 * waits. timeout_ms < 0 waits without end.
 *
 * Errors:
 *  -EINVAL     t is NULL.
 *  -ETIMEDOUT  not everything was committed within timeout_ms; the usages
 *              stay queued and a later call may still succeed.
 */
int tally_sync(struct tally *t, int timeout_ms);

/*
 * tally_pending() - how many usages of t are not yet known to be committed.
 * Returns the count, or -EINVAL for a NULL handle.
 */
long tally_pending(struct tally *t);

/*
 * tally_session_json() - the session's usage per LLM, as JSON.
 *
 * The object maps each LLM reference id to its llmDisplayName,
 * providerType, modelType and usage {inputTokens, outputTokens}. A session
 * with no usage, or an unknown one, is "{}". The snapshot is read from the
 * ledger in one read transaction, and this handle's own usages that the
 * ledger does not hold yet are added to it, so a caller always sees what it
 * recorded (read-your-writes) without waiting for the daemon. On success
 * *json is a NUL-terminated string the caller frees with free().
 *
 * Errors:
 *  -EINVAL   an argument is NULL, or session_id is empty or too long.
 *  -EILSEQ   session_id is not valid UTF-8.
 *  -ENOENT   there is no ledger in the directory: tallyd has never run
 *            there.
 *  -EACCES   the ledger may not be read by this user.
 *  TALLY_EVERSION  the ledger was written by an incompatible version.
 *  TALLY_ECORRUPT  a record of the session did not decode.
 *  -ENOMEM   out of memory.
 */
int tally_session_json(struct tally *t, const char *session_id, char **json);

/* tally_session_json() with TALLY_JSON_* flags. Errors as that call. */
int tally_session_json_ex(struct tally *t, const char *session_id,
			  unsigned flags, char **json);

/*
 * tally_sessions_json() - every session in the ledger, as a JSON array.
 *
 * Each element has sessionId, firstActivity and lastActivity (milliseconds
 * since the epoch), inputTokens, outputTokens and calls. Read from the
 * ledger only: this handle's unconfirmed usages are not included. The
 * caller frees *json with free(). Errors as tally_session_json().
 */
int tally_sessions_json(struct tally *t, char **json);

/*
 * tally_stats_json() - the daemon's counters, as one JSON object.
 *
 * Asks the daemon and waits up to timeout_ms for its answer. The caller
 * frees *json with free().
 *
 * Errors:
 *  -EINVAL     an argument is NULL.
 *  -ETIMEDOUT  the daemon did not answer in time (is tallyd running?).
 *  -EBADMSG    the answer did not decode.
 *  -ENOMEM     out of memory.
 */
int tally_stats_json(struct tally *t, int timeout_ms, char **json);

/*
 * tally_strerror() - a sentence for an error this library returned.
 * Never NULL; the string is static.
 */
const char *tally_strerror(int err);

/*
 * tally_default_dir() - the directory tally_open(NULL) would use.
 *
 * Writes it NUL-terminated to buf of size len.
 * Errors: -EINVAL for a NULL buf, -ENOENT when no default can be found,
 * -ENAMETOOLONG when it does not fit len or a Unix socket address.
 */
int tally_default_dir(char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* TALLY_H */
