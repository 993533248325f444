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
 * When the daemon first falls behind a handle, so that usages wait unsent,
 * the handle starts one thread of its own that sends them as soon as the
 * daemon takes them, with no further call; it blocks every signal and
 * tally_close() joins it. Usages recorded while the daemon keeps up are
 * sent by the call that records them, and several that wait go in one
 * message.
 *
 * fork(): a handle survives fork() in both processes. In the child it
 * becomes a new producer with an empty queue on its next call: what the
 * parent had queued belongs to the parent, which alone resends it. The
 * library closes its sockets in the parent before a fork and reopens them
 * on the next call, because nanomsg's threads do not survive fork(). A
 * child has no sending thread until it needs one; the parent's goes on.
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
	/*
	 * How long tally_close() waits for the daemon's commit, in
	 * milliseconds: 0 means the default, 5000; a negative value means not
	 * at all (for a caller whose own tally_sync() already failed).
	 */
	int close_timeout_ms;
	/*
	 * Largest message sent to the daemon, in bytes; default 65536, at
	 * least 1024. Keep it at or below tallyd's --max-message.
	 */
	size_t max_message;
};

/* Flags of tally_session_json_ex(). */
enum tally_json_flags {
	/*
	 * Add a "details" object to each entry, under OpenTelemetry GenAI's
	 * names where it has them: gen_ai.usage.cache_read.input_tokens,
	 * gen_ai.usage.cache_creation.input_tokens and
	 * gen_ai.usage.reasoning.output_tokens (parts of inputTokens and
	 * outputTokens, not additions), then calls, estimatedInputTokens,
	 * estimatedOutputTokens and usageMissingCalls.
	 */
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
 *  -EINVAL        out is NULL, or opts->max_message is below 1024.
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
 *            running. The usage was not recorded. Once a wait ended so,
 *            later calls fail at once until the ledger shows progress.
 *  -EMSGSIZE the usage alone would make a message larger than the
 *            handle's max_message.
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
 * flags of *u and leaves its strings alone; on failure *u is not changed.
 *
 * body may also be a whole streamed response. Its form is told from the
 * body itself:
 *  - Server-Sent Events, when the first line that is not blank starts with
 *    "data:", "event:", "id:", "retry:" or ":" (a comment). Each event's
 *    data lines, joined by LF, are its JSON payload; "data: [DONE]" and
 *    the other fields are skipped. Lines end in LF, CRLF or CR. A last
 *    event without its closing blank line still counts.
 *  - JSON lines, when body is not one JSON value but each of its lines
 *    that is not blank is one: the events as SDKs hand them over, and
 *    Ollama's stream.
 *  - Otherwise one JSON value: the whole response, as before.
 * A stream's usage is never a sum of its chunks. It is:
 *  - openAI, azureOpenAI, openAICompatible, mistral: the last chunk whose
 *    "usage" is not null (Chat Completions sends it in a final chunk with
 *    empty choices when stream_options.include_usage is set; Azure's
 *    content-filter chunks carry none); for the Responses API, the
 *    "response.usage" of its terminal response.completed,
 *    response.incomplete or response.failed event.
 *  - anthropic: message_start's usage, with each field that a later
 *    message_delta reports replaced by that value (message_delta counts
 *    are running totals): the last value of every field.
 *  - googleGemini, googleVertexAI, googleGenAI: the usageMetadata of the
 *    last chunk that has one (each chunk repeats the running totals).
 *  - awsBedrock: ConverseStream's metadata event, {"metadata":{"usage":..}}
 *    or its bare payload {"usage":..}.
 *  - cohere: v2's message-end event (delta.usage, billed units first), or
 *    v1's stream-end event (response.meta).
 *  - ollama: the final object, "done": true, with its counters.
 *  - alephAlpha: the last event with counts (completion_summary).
 *
 * Errors:
 *  -EINVAL       an argument is NULL.
 *  -EPROTONOSUPPORT  provider_type is not one of the above.
 *  -EBADMSG      body is not JSON, or a usage field has the wrong type; in
 *                a stream, an event's payload is not one JSON value.
 *  -ENODATA      body holds no usage report; a stream has no event that
 *                reports usage (its usage is unknown, not 0).
 *  -ERANGE       a count is negative or larger than TALLY_TOKENS_MAX.
 *  -ENOMEM       out of memory (streams only).
 */
int tally_parse_response(const char *provider_type, const char *body,
			 size_t len, struct tally_usage *u);

/*
 * tally_record_response() - record a call from its provider response.
 *
 * Takes the ids and names from ids (its counts are ignored) and the counts
 * from body, parsed as tally_parse_response() does for ids->provider_type:
 * body may be a whole response or a whole stream transcript (SSE or JSON
 * lines). For a stream seen one event at a time, see tally_stream_begin().
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
 * tally_purge() - delete sessions from the ledger, through the daemon.
 *
 * Deletes the n sessions named in session_ids (with every usage of them
 * received before the request), and, when idle_for_ms is not 0, sessions
 * idle for longer than that (at most 10,000 a call: call again while
 * *purged says 10,000). Waits up to timeout_ms for the daemon's commit.
 * The request carries a random id and is resent with it after a lost
 * answer, so it is never applied twice. *purged, if not NULL, receives
 * how many sessions were found to delete.
 *
 * Errors:
 *  -EINVAL     an argument is NULL, a session id is empty, too long or
 *              not UTF-8, or there is nothing to purge (n 0, no idle_for).
 *  -ETIMEDOUT  no answer in time; the purge may still be applied later.
 *  -EBADMSG    the answer did not decode.
 *  -EMSGSIZE   the request is over 60 KiB (or the handle's max_message):
 *              name fewer sessions a call.
 */
int tally_purge(struct tally *t, const char *const *session_ids, size_t n,
		uint64_t idle_for_ms, int timeout_ms, uint64_t *purged);

/* One (session, LLM) of the ledger, as tally_foreach_entry() gives it. */
struct tally_entry {
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
	uint64_t calls;
	/* Of input and output, how many were estimated from text. */
	uint64_t estimated_input_tokens;
	uint64_t estimated_output_tokens;
	/* Calls whose provider reported no usage for a count. */
	uint64_t usage_missing_calls;
	/* First and last activity, milliseconds since the epoch. */
	uint64_t first_activity_ms;
	uint64_t last_activity_ms;
};

/*
 * tally_foreach_entry() - calls fn for every (session, LLM) in the ledger,
 * in key order, from one read transaction (a consistent snapshot). The
 * strings of e are NUL-terminated copies valid only during the call. fn
 * returns 0 to go on; anything else stops the walk and is returned.
 * Errors: those of tally_session_json(), and fn's own.
 */
int tally_foreach_entry(struct tally *t,
			int (*fn)(const struct tally_entry *e, void *ctx),
			void *ctx);

/*
 * tally_check() - verifies the ledger: every record decodes, and each
 * session's totals equal the sum of its entries.
 *
 * Returns the number of problems found (0: none) and, when report is not
 * NULL, a text naming each, one a line, that the caller frees with free().
 * Errors (negative): those of tally_session_json().
 */
int tally_check(struct tally *t, char **report);

/*
 * tally_metrics_text() - the daemon's metrics in Prometheus' text format.
 * The caller frees *text with free(). Errors as tally_stats_json().
 */
int tally_metrics_text(struct tally *t, int timeout_ms, char **text);

/* --- Streamed responses (see tally_record_response) --- */

/*
 * A streamed response reports its usage in some of its events, never as a
 * sum of chunks: for each provider the stream's usage is what
 * tally_parse_response() documents for a transcript. A worker that holds the
 * whole transcript gives it to tally_parse_response() or
 * tally_record_response(); one that sees the events one at a time feeds
 * them to a struct tally_stream:
 *
 *	struct tally_stream *s;
 *	struct tally_usage u = {.session_id = ..., ...};
 *
 *	tally_stream_begin(&s, "anthropic");
 *	for each event:
 *		tally_stream_feed(s, data, data_len);
 *	if (tally_stream_end(s, &u) == 0)
 *		tally_record(t, &u);
 *
 * Feeding every event of a transcript gives the same usage, or the same
 * error, as tally_parse_response() on the whole transcript.
 *
 * A stream belongs to its caller: it has no lock, and is used by one thread
 * at a time. It holds no socket or file and survives fork() in both
 * processes, which then hold separate copies. Streams are independent of
 * each other and of every struct tally.
 */
struct tally_stream;

/*
 * tally_stream_begin() - start reading the usage of one streamed response.
 *
 * provider_type selects the format, as for tally_parse_response(). On
 * success *s holds the stream, to be ended with tally_stream_end() or
 * abandoned with tally_stream_free(); on failure *s is NULL.
 *
 * Errors:
 *  -EINVAL           s or provider_type is NULL.
 *  -EPROTONOSUPPORT  provider_type is not one tally_parse_response() names.
 *  -ENOMEM           out of memory.
 */
int tally_stream_begin(struct tally_stream **s, const char *provider_type);

/*
 * tally_stream_feed() - read one event of the stream.
 *
 * event is the payload of one event, len its length in bytes: the JSON text
 * of one SSE event's data (what follows "data: ", its lines joined by LF if
 * it had several), or one line of a JSON lines stream, or one event an SDK
 * handed over, serialised as JSON. It is not an SSE line: "event:", "data:"
 * and comment lines are framing, for the caller to strip. OpenAI's "[DONE]"
 * sentinel and a payload of nothing but white space are accepted and
 * ignored. event need not be NUL-terminated; nothing past len is read, and
 * nothing of it is kept after the call.
 *
 * Feed every event, in order, those without usage included: the stream
 * keeps only the usage they report, so their count costs nothing.
 *
 * Errors (the stream keeps the first one: every later tally_stream_feed()
 * and tally_stream_end() return it, because the usage of a stream with an
 * unreadable event is not known):
 *  -EINVAL   s or event is NULL. Not kept.
 *  -EBADMSG  event is not one JSON value, or a usage field in it has the
 *            wrong type.
 *  -ERANGE   a count in event is negative, fractional, or larger than
 *            TALLY_TOKENS_MAX, or its parts add up past it.
 *  -ENOMEM   out of memory.
 */
int tally_stream_feed(struct tally_stream *s, const char *event, size_t len);

/*
 * tally_stream_end() - the usage of the stream, and free it.
 *
 * Sets the counts and flags of *u, as tally_parse_response() does, and
 * leaves its strings alone; on failure *u is not changed. s is freed in
 * every case but a NULL s, and must not be used again.
 *
 * Errors:
 *  -EINVAL   s or u is NULL.
 *  -ENODATA  no event reported usage: a stream without its usage event
 *            (OpenAI without stream_options.include_usage, a stream cut
 *            short). Its usage is unknown, not 0.
 *  -ERANGE   the last values of the counts add up past TALLY_TOKENS_MAX.
 *  The error a tally_stream_feed() call met, if one did.
 */
int tally_stream_end(struct tally_stream *s, struct tally_usage *u);

/* tally_stream_free() - abandon a stream. NULL is accepted. */
void tally_stream_free(struct tally_stream *s);

/* --- Estimation from text --- */

/*
 * When a provider reports no usage, a call's tokens can be estimated from
 * its text. Such counts are recorded with TALLY_USAGE_ESTIMATED, and the
 * ledger keeps how many tokens of each entry were estimated.
 *
 * OpenAI models are counted exactly: the byte-pair encoding of OpenAI's
 * tokenizer, tiktoken, with its published patterns and ranks:
 *   o200k_base   gpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, gpt-oss-*, chatgpt-*,
 *                codex-*, o1, o3, o4 and their "-..." versions, and every
 *                other gpt-* model not listed below
 *   cl100k_base  gpt-4, gpt-4-*, gpt-3.5*, gpt-35*, text-embedding-3-*,
 *                text-embedding-ada-002, babbage-002, davinci-002
 * A model type is matched without regard to ASCII case, after dropping a
 * fine-tune's "ft:", everything up to the last '/', and Bedrock's
 * "openai.". Special tokens are not recognised: "<|endoftext|>" in a text
 * counts as the characters it is made of. The tests hold the counts to
 * gpt-tokenizer 4.0.0 on its own test vectors and to tiktoken 1.0.22 on a
 * mixed corpus. gpt-tokenizer differs from tiktoken on text holding U+FEFF
 * (byte-order mark) or U+0085 (next line), where tally counts as tiktoken
 * does. Letters and digits are classed by PCRE2's Unicode tables (Unicode
 * 14 with Debian's PCRE2 10.42), tiktoken's are newer: a text that joins
 * characters assigned since then to letters may count a token more.
 *
 * The rank files o200k_base.tiktoken and cl100k_base.tiktoken (one
 * "base64 rank" line per token) are read from $TALLY_DATA_DIR when it is
 * set and not empty, else from the installation's share/tally directory
 * (/usr/local/share/tally for the default prefix);
 * tally_estimate_data_dir() says which. tools/setup installs them there.
 * Each file is loaded by the first call that needs it, once per process,
 * and shared read-only by every thread and handle (about 10 MB for
 * o200k_base, 6 MB for cl100k_base, kept until the process exits). A
 * load that failed is tried again by the next call.
 *
 * Other models are estimated from a ratio of bytes of UTF-8 per token,
 * rounded up:
 *   family     model types that contain                    bytes/token
 *   anthropic  "claude"                                            3.5
 *   gemini     "gemini", "gemma"                                   4.0
 *   mistral    "mistral", "mixtral", "ministral", "codestral",     3.5
 *              "pixtral", "magistral", "devstral"
 *   cohere     "cohere", or that start command, embed-, rerank-,   4.0
 *              aya-, c4ai- (after any "vendor/")
 *   llama      "llama"                                             4.0
 *   unknown    anything else, NULL and ""                          4.0
 * Google documents about 4 characters per token for Gemini, OpenAI about
 * 4 for English text; 3.5 for Claude is the figure commonly quoted (not
 * published by Anthropic); Mistral's 32k-token vocabularies split English
 * finer than OpenAI's; the others take the common 4. Those figures are
 * for English, where a character is a byte. Bytes are counted, not
 * characters, because a byte-level tokenizer spends tokens on bytes: a
 * CJK character is 3 bytes and about one token, an emoji 4 bytes and one
 * to three. Counting characters instead missed by -18% (3.5) and -28%
 * (4.0) over the corpus below, with -65% to -71% on CJK and emoji.
 *
 * How wrong a ratio is could only be measured against a real count, and
 * the only tokenizers that run offline here are OpenAI's: the errors were
 * therefore measured against o200k_base counts, standing in for each
 * family's own tokenizer, on the corpus in tests/fixtures/corpus (14
 * files, 14,592 bytes: C, Python and JSON, English and French prose,
 * Chinese, Japanese, Korean, emoji, a chat answer in Markdown, control
 * characters, long runs of white space). `tally-bench --estimate-error
 * tests/fixtures/corpus` prints the table. (estimate - o200k count) /
 * o200k count was, for 3.5 bytes per token: -4.4% over the whole corpus,
 * a mean of 28.3% by file, from -49.6% (control characters) to +173.3%
 * (white space runs, which o200k packs into few tokens); for 4.0: -16.4%,
 * 28.4% by file, from -56.0% to +138.9%. By kind, for 3.5 (and 4.0):
 * code -27% to 0% (-36% to -13%), prose +10% to +17% (-4% to +2%), CJK
 * +3% to +24% (-10% to +8%), emoji -32% (-40%).
 */

/* How tally_estimate_tokens() counts the tokens of one model type. */
struct tally_estimator {
	/* "o200k_base", "cl100k_base", or a family of the table above. */
	const char *name;
	/* True for an OpenAI encoding: the count is exact. */
	bool exact;
	/* A family's bytes of UTF-8 per token; 0 when exact. */
	double bytes_per_token;
};

/*
 * tally_estimator_for() - how the tokens of model_type are counted.
 *
 * Reads no file. e->name is a static string.
 * Errors: -EINVAL when e is NULL or model_type is longer than
 * TALLY_NAME_MAX.
 */
int tally_estimator_for(const char *model_type, struct tally_estimator *e);

/*
 * tally_estimate_tokens() - the number of tokens of text for model_type.
 *
 * text is len bytes of UTF-8, NUL bytes allowed, no terminator needed; it
 * may be NULL when len is 0. It is counted as it is: no chat-format
 * overhead, no special tokens. Needs no handle and may be called from any
 * thread, and in a child after fork().
 *
 * Errors:
 *  -EINVAL        tokens is NULL, text is NULL and len is not 0, or
 *                 model_type is longer than TALLY_NAME_MAX.
 *  -EILSEQ        text is not valid UTF-8. Nothing is replaced.
 *  -ENOENT        the model's rank file is not installed: it is not in
 *                 the data directory (run tools/setup, or set
 *                 TALLY_DATA_DIR to a directory that holds it).
 *  -EACCES        the rank file may not be read; other errors of open()
 *                 and read() are returned as they are.
 *  -EBADMSG       the rank file is not one: damaged or truncated.
 *  -ENAMETOOLONG  the data directory's path is too long.
 *  -E2BIG         the pattern that cuts the text into pieces met one of
 *                 PCRE2's resource limits on this text.
 *  -ENOTSUP       the PCRE2 library cannot compile the pattern: it was
 *                 built without Unicode support.
 *  -ENOMEM        out of memory.
 */
int tally_estimate_tokens(const char *model_type, const char *text, size_t len,
			  uint64_t *tokens);

/*
 * tally_estimate_usage() - the usage of one call, from its text.
 *
 * Counts prompt (prompt_len bytes) as the input and completion as the
 * output, as tally_estimate_tokens() does for model_type, and sets the
 * counts and flags of *u, leaving its strings alone. A text given, even
 * empty, is counted and sets TALLY_USAGE_ESTIMATED. A NULL text was not
 * seen: its count is 0 and TALLY_USAGE_INPUT_MISSING or
 * TALLY_USAGE_OUTPUT_MISSING is set, and the ledger counts the call in
 * usageMissingCalls (in the details of tally_session_json_ex()). With
 * both NULL the call has no count at all: a "usage missing" call, which
 * tells a gap from a call that used 0 tokens. The detail counts of *u
 * are set to 0.
 *
 * Errors: -EINVAL when u is NULL or a text is NULL with a length not 0;
 * those of tally_estimate_tokens(). On error *u is not changed.
 */
int tally_estimate_usage(const char *model_type, const char *prompt,
			 size_t prompt_len, const char *completion,
			 size_t completion_len, struct tally_usage *u);

/*
 * tally_record_text() - record one call from its prompt and completion.
 *
 * Takes the ids and names from ids (its counts and flags are ignored),
 * the counts and flags from tally_estimate_usage() for ids->model_type,
 * and records the usage as tally_record() does.
 * Errors: those of tally_estimate_usage() and tally_record().
 */
int tally_record_text(struct tally *t, const struct tally_usage *ids,
		      const char *prompt, size_t prompt_len,
		      const char *completion, size_t completion_len);

/*
 * tally_estimate_data_dir() - the directory rank files are read from.
 *
 * Writes it NUL-terminated to buf of size len.
 * Errors: -EINVAL for a NULL buf, -ENAMETOOLONG when it does not fit.
 */
int tally_estimate_data_dir(char *buf, size_t len);

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
