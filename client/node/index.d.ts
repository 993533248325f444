// tally for Node.js: record the LLM token usage of conversation sessions
// and read a session's running totals per LLM, through libtally.
//
// Every call is synchronous. Failures throw a TallyError whose `code` is
// the errno name (EINVAL, ERANGE, EILSEQ, ENOBUFS, ETIMEDOUT, ENOENT,
// EBADMSG, ENODATA, EPROTONOSUPPORT, ...) and whose message says what to
// fix.

/**
 * A token count. Counts are exact: up to Number.MAX_SAFE_INTEGER
 * (2^53 - 1) they are Numbers, above it BigInts, never rounded. Inputs
 * accept either; they must be whole and not negative.
 */
export type TokenCount = number | bigint;

/** The provider types whose responses recordResponse() can read. */
export type ProviderType =
	| 'openAI'
	| 'azureOpenAI'
	| 'openAICompatible'
	| 'mistral'
	| 'anthropic'
	| 'googleGemini'
	| 'googleVertexAI'
	| 'googleGenAI'
	| 'awsBedrock'
	| 'alephAlpha'
	| 'cohere'
	| 'ollama';

/** A session's running total for one LLM. */
export interface LLMUsage {
	inputTokens: TokenCount;
	outputTokens: TokenCount;
}

/** The breakdown given with `{ details: true }`. */
export interface LLMUsageDetails {
	'gen_ai.usage.cache_read.input_tokens': TokenCount;
	'gen_ai.usage.cache_creation.input_tokens': TokenCount;
	'gen_ai.usage.reasoning.output_tokens': TokenCount;
	calls: TokenCount;
	/** The part of inputTokens estimated from text. */
	estimatedInputTokens: TokenCount;
	estimatedOutputTokens: TokenCount;
	/** Calls whose provider reported no input or no output count. */
	usageMissingCalls: TokenCount;
}

export interface LLMTokenUsage {
	llmDisplayName: string;
	providerType: string;
	modelType: string;
	usage: LLMUsage;
	details?: LLMUsageDetails;
}

/** A session's usage, keyed by LLM reference id. */
export type SessionTokenUsage = Record<string, LLMTokenUsage>;

export type SessionTokenUsageWithDetails = Record<
	string,
	LLMTokenUsage & { details: LLMUsageDetails }
>;

/**
 * Who used an LLM. Ids: 1 to 255 bytes of UTF-8. Names: at most 256
 * bytes; left out (or '') they keep the names stored for that LLM.
 * A NUL character or a lone UTF-16 surrogate is refused (EILSEQ).
 */
export interface UsageIds {
	sessionId: string;
	llmReferenceId: string;
	llmDisplayName?: string | null;
	providerType?: string | null;
	modelType?: string | null;
}

/**
 * The usage of one LLM call. inputTokens counts every prompt-side token
 * billed, cache reads and writes included; outputTokens every generated
 * token, reasoning included. The details are parts of those totals and
 * count only when given. Each count is at most TOKENS_MAX.
 */
export interface Usage extends UsageIds {
	inputTokens: TokenCount;
	outputTokens: TokenCount;
	cacheReadTokens?: TokenCount | null;
	cacheWriteTokens?: TokenCount | null;
	reasoningTokens?: TokenCount | null;
	/** The counts were estimated from text, not reported. */
	estimated?: boolean | null;
}

/**
 * A provider's response body: the text or bytes as received, a whole
 * stream transcript (Server-Sent Events or JSON lines) as text or bytes,
 * or the parsed object (serialised again with JSON.stringify).
 */
export type ResponseBody =
	| string
	| Uint8Array
	| ArrayBuffer
	| ArrayBufferView
	| object;

/** recordResponse() needs the provider type to read the body. */
export interface ResponseIds extends UsageIds {
	providerType: ProviderType;
}

export interface OpenOptions {
	/**
	 * The ledger directory. Default: $TALLY_DIR, else /var/lib/tally for
	 * root, else ${XDG_STATE_HOME:-~/.local/state}/tally.
	 */
	dir?: string | null;
	/** Most unconfirmed usages kept; 0 or absent: 65536. */
	queueMax?: TokenCount;
	/**
	 * How long record() may wait for room in a full queue, in ms; 0 or
	 * absent: not at all (ENOBUFS at once).
	 */
	recordTimeoutMs?: number;
	/**
	 * How long close() (and the process's exit) waits for the daemon's
	 * commit, in ms; 0 or absent: 5000. Never negative.
	 */
	closeTimeoutMs?: number;
}

export interface SnapshotOptions {
	/** Add a `details` object to each LLM's entry. */
	details?: boolean;
}

/** What tally throws. */
export interface TallyError extends Error {
	/** The errno name: 'EINVAL', 'ETIMEDOUT', 'TALLY_ECORRUPT', ... */
	code: string;
	/** The negative errno (or TALLY_E* code) libtally returned. */
	errno: number;
}

export declare class Tally {
	/** Same as open(). */
	constructor(dirOrOptions?: string | OpenOptions | null);

	/**
	 * The session's usage per LLM, or null when it has none (or is
	 * unknown). Includes this handle's own records not yet committed
	 * (read-your-writes). Throws EINVAL or EILSEQ for a bad id, ENOENT
	 * when tallyd never ran on the directory.
	 */
	getLLMTokenUsageForSession(
		sessionId: string,
		options: SnapshotOptions & { details: true },
	): SessionTokenUsageWithDetails | null;
	getLLMTokenUsageForSession(
		sessionId: string,
		options?: SnapshotOptions,
	): SessionTokenUsage | null;

	/**
	 * Records one LLM call; returns once it is queued and sent, without
	 * waiting for the daemon. Throws EINVAL (missing or wrong field),
	 * EILSEQ, ERANGE (negative or above TOKENS_MAX), ENOBUFS (the queue
	 * of unconfirmed usages is full: tallyd is not running or not
	 * keeping up; the usage was not recorded).
	 */
	record(usage: Usage): void;

	/**
	 * Records one LLM call from the provider's response body: the text
	 * or bytes as received (best: exact), a whole stream transcript, or
	 * the parsed object (it is serialised again). A stream's usage is its
	 * terminal report, never a sum of chunks. Throws as record(), and
	 * EPROTONOSUPPORT (unknown providerType), EBADMSG (not JSON, or a
	 * usage field of the wrong type), ENODATA (no usage report in the
	 * body).
	 */
	recordResponse(ids: ResponseIds, body: ResponseBody): void;

	/**
	 * Records one LLM call whose provider reported no usage, estimating
	 * its counts from the text sent (prompt) and received (completion)
	 * for ids.modelType, as estimateTokens() does; the ledger keeps that
	 * they were estimated. A text left out (null) was not seen: its
	 * count is 0 and the call is flagged as missing it. Throws as
	 * record() and estimateTokens().
	 */
	recordText(
		ids: UsageIds,
		prompt: string | Uint8Array | null | undefined,
		completion?: string | Uint8Array | null,
	): void;

	/**
	 * Waits, blocking, until the daemon has committed every usage this
	 * handle recorded; timeoutMs defaults to 5000, negative waits without
	 * end. Throws ETIMEDOUT (the usages stay queued).
	 */
	sync(timeoutMs?: number): void;

	/** How many usages are not yet known to be committed. */
	pending(): number;

	/** The daemon's counters. Throws ETIMEDOUT when it does not answer. */
	stats(timeoutMs?: number): Record<string, TokenCount>;

	/** Same as the module's estimateTokens(). */
	estimateTokens(
		modelType: string | null | undefined,
		text: string | Uint8Array,
	): TokenCount;

	/**
	 * Waits (up to closeTimeoutMs) for the daemon to commit this handle's
	 * usages, then frees it. Calling it again does nothing; other calls
	 * then throw EBADF. Open handles are closed when the process exits.
	 */
	close(): void;
}

/** Opens a handle on a ledger directory; tallyd need not run yet. */
export declare function open(dirOrOptions?: string | OpenOptions | null): Tally;

/**
 * The tokens text makes for modelType, as tally estimates them when a
 * provider reports no usage: exact for OpenAI's encodings (o200k_base,
 * cl100k_base, read from rank files), a characters-per-token ratio for
 * other families. Needs no handle and no daemon. Throws ENOENT when the
 * model's rank file is not installed (run tools/setup, or set
 * TALLY_DATA_DIR), EILSEQ for bytes that are not UTF-8, ENOSYS when this
 * libtally cannot estimate.
 */
export declare function estimateTokens(
	modelType: string | null | undefined,
	text: string | Uint8Array,
): TokenCount;

/** libtally's version. */
export declare const version: string;
/** Longest session id and LLM reference id, in bytes of UTF-8. */
export declare const ID_MAX: 255;
/** Longest display name, provider type and model type, in bytes. */
export declare const NAME_MAX: 256;
/** Most tokens one usage may carry in any one count. */
export declare const TOKENS_MAX: 1000000000;
