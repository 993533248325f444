'use strict';
// tally for Node.js: the token usage of conversation sessions, per LLM,
// recorded and read through libtally. See index.d.ts for the manual.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

// Where tally.node is: $TALLY_ADDON when set (and then only there), else
// beside this file (where `meson install` puts both), else the build
// folder of a checkout built with `meson setup build`.
function addonPaths() {
	if (process.env.TALLY_ADDON)
		return [path.resolve(process.env.TALLY_ADDON)];
	return [
		path.join(__dirname, 'tally.node'),
		path.join(__dirname, '..', '..', 'build', 'client', 'node',
			  'tally.node'),
	];
}

function loadAddon() {
	const tried = addonPaths();

	for (const p of tried) {
		if (fs.existsSync(p))
			return require(p);
	}
	const err = new Error('tally: the native addon tally.node is not ' +
		'at ' + tried.join(' nor ') + ': build it with meson ' +
		'(Node.js headers installed), or set TALLY_ADDON to its path');
	err.code = 'MODULE_NOT_FOUND';
	throw err;
}

const addon = loadAddon();

// The same shape as the errors thrown by the addon itself.
function invalid(call, detail) {
	const err = new Error(`${call}: invalid argument: ${detail}`);
	err.code = 'EINVAL';
	err.errno = -os.constants.errno.EINVAL;
	return err;
}

function isObject(v) {
	return v !== null && typeof v === 'object';
}

function openArgs(arg) {
	if (arg === undefined || arg === null || typeof arg === 'string')
		return [arg];
	if (!isObject(arg))
		throw invalid('tally.open', 'the argument must be a ' +
			      'directory or an options object');
	return [arg.dir, arg.queueMax, arg.recordTimeoutMs,
		arg.closeTimeoutMs];
}

// A provider response as the addon takes it: text or bytes. An object is
// serialised; pass the body as received when it may hold numbers above
// 2^53, which JSON.stringify cannot write back exactly.
function responseBody(body) {
	if (typeof body === 'string' || body instanceof Uint8Array)
		return body;
	if (body instanceof ArrayBuffer)
		return new Uint8Array(body);
	if (ArrayBuffer.isView(body))
		return new Uint8Array(body.buffer, body.byteOffset,
				      body.byteLength);
	if (isObject(body))
		return JSON.stringify(body);
	return body;
}

// The addon hands over JSON text when JSON.parse() reads it exactly, which
// is faster than building the objects in C; else the objects themselves.
function decode(r) {
	return typeof r === 'string' ? JSON.parse(r) : r;
}

class Tally {
	#h;

	// Use open(); both take the same argument.
	constructor(dirOrOptions) {
		this.#h = new addon.Handle(...openArgs(dirOrOptions));
	}

	getLLMTokenUsageForSession(sessionId, options) {
		const details = isObject(options) ? options.details : options;

		return decode(this.#h.snapshot(sessionId, details));
	}

	record(usage) {
		if (!isObject(usage))
			throw invalid('tally.record',
				      'usage must be an object');
		this.#h.record(usage.sessionId, usage.llmReferenceId,
			       usage.llmDisplayName, usage.providerType,
			       usage.modelType, usage.inputTokens,
			       usage.outputTokens, usage.cacheReadTokens,
			       usage.cacheWriteTokens, usage.reasoningTokens,
			       usage.estimated);
	}

	recordResponse(ids, body) {
		if (!isObject(ids))
			throw invalid('tally.recordResponse',
				      'ids must be an object');
		this.#h.recordResponse(ids.sessionId, ids.llmReferenceId,
				       ids.llmDisplayName, ids.providerType,
				       ids.modelType, responseBody(body));
	}

	recordText(ids, prompt, completion) {
		if (!isObject(ids))
			throw invalid('tally.recordText',
				      'ids must be an object');
		this.#h.recordText(ids.sessionId, ids.llmReferenceId,
				   ids.llmDisplayName, ids.providerType,
				   ids.modelType, prompt, completion);
	}

	sync(timeoutMs) {
		this.#h.sync(timeoutMs);
	}

	pending() {
		return this.#h.pending();
	}

	stats(timeoutMs) {
		return decode(this.#h.stats(timeoutMs));
	}

	estimateTokens(modelType, text) {
		return addon.estimateTokens(modelType, text);
	}

	close() {
		this.#h.close();
	}
}

function open(dirOrOptions) {
	return new Tally(dirOrOptions);
}

// nanomsg does not linger: usages sent just before the process ends may
// never reach the daemon. Closing waits (bounded) for the daemon's commit.
process.on('exit', () => addon.closeAll());

module.exports = {
	open,
	Tally,
	estimateTokens: addon.estimateTokens,
	version: addon.version,
	ID_MAX: 255,
	NAME_MAX: 256,
	TOKENS_MAX: 1000000000,
};
