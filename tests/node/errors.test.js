'use strict';
// Bad input throws an Error whose code is the errno name libtally (or the
// addon's own check) gives, and whose message names what to fix.

const assert = require('node:assert/strict');
const path = require('node:path');
const { after, before, describe, test } = require('node:test');
const { tally, Daemon, tempDir, usage, throwsCode } = require('./helpers.js');

const LLM = 'llm';

// [what, usage fields over a valid usage, code]
const RECORD_CASES = [
	['no sessionId', { sessionId: undefined }, 'EINVAL'],
	['empty sessionId', { sessionId: '' }, 'EINVAL'],
	['numeric sessionId', { sessionId: 42 }, 'EINVAL'],
	['256-byte sessionId', { sessionId: 's'.repeat(256) }, 'EINVAL'],
	['256 bytes in 128 characters', { sessionId: '\u00e9'.repeat(128) },
	 'EINVAL'],
	['empty llmReferenceId', { llmReferenceId: '' }, 'EINVAL'],
	['257-byte display name', { llmDisplayName: 'n'.repeat(257) },
	 'EINVAL'],
	['lone surrogate', { sessionId: 'a\ud800b' }, 'EILSEQ'],
	['lone low surrogate', { modelType: '\udc00' }, 'EILSEQ'],
	['NUL character', { llmReferenceId: 'a\u0000b' }, 'EILSEQ'],
	['no inputTokens', { inputTokens: undefined }, 'EINVAL'],
	['null outputTokens', { outputTokens: null }, 'EINVAL'],
	['negative count', { inputTokens: -1 }, 'ERANGE'],
	['negative BigInt', { outputTokens: -1n }, 'ERANGE'],
	['fraction', { inputTokens: 1.5 }, 'EINVAL'],
	['NaN', { inputTokens: NaN }, 'EINVAL'],
	['Infinity', { outputTokens: Infinity }, 'EINVAL'],
	['string count', { inputTokens: '5' }, 'EINVAL'],
	['above TOKENS_MAX', { inputTokens: 1000000001 }, 'ERANGE'],
	['BigInt above TOKENS_MAX', { outputTokens: 1000000001n }, 'ERANGE'],
	['2^64', { inputTokens: 2 ** 64 }, 'ERANGE'],
	['BigInt 2^64', { inputTokens: 2n ** 64n }, 'ERANGE'],
	['cache above input', { inputTokens: 10, cacheReadTokens: 6,
				cacheWriteTokens: 5 }, 'EINVAL'],
	['reasoning above output', { outputTokens: 1, reasoningTokens: 2 },
	 'EINVAL'],
	['negative detail', { cacheReadTokens: -3 }, 'ERANGE'],
	['estimated not boolean', { estimated: 'yes' }, 'EINVAL'],
];

describe('errors', () => {
	const daemon = new Daemon();
	let h;

	before(async () => {
		await daemon.start();
		h = tally.open(daemon.dir);
	});

	after(async () => {
		h.close();
		await daemon.remove();
	});

	for (const [what, fields, code] of RECORD_CASES) {
		test(`record: ${what} throws ${code}`, () => {
			const u = { ...usage('errors', LLM, 10, 10),
				    ...fields };

			throwsCode(() => h.record(u), code, what);
		});
	}

	test('nothing refused was recorded', () => {
		assert.equal(h.getLLMTokenUsageForSession('errors'), null);
		h.record(usage('errors', LLM, 10, 10));
		h.record({ ...usage('errors', LLM, 0, 0),
			   sessionId: '\u00e9'.repeat(127) });
		assert.equal(h.getLLMTokenUsageForSession('errors')[LLM]
				     .usage.inputTokens, 10);
	});

	test('the message says which field to fix', () => {
		assert.throws(() => h.record({ ...usage('e', LLM, 1, 1),
					       inputTokens: 1.5 }),
			      /^Error: tally\.record: invalid argument.*: inputTokens must be a whole number/);
		assert.throws(() => h.record({ ...usage('e', LLM, 1, 1),
					       outputTokens: 2000000000 }),
			      /outputTokens is 2000000000/);
		assert.throws(() => h.record({ ...usage('e', LLM, 1, 1),
					       sessionId: 'x\ud800' }),
			      /sessionId has a lone UTF-16 surrogate at index 1/);
		assert.throws(() => h.record({ ...usage('e', LLM, 5, 1),
					       cacheReadTokens: 9 }),
			      /cacheReadTokens \+ cacheWriteTokens \(9\) exceed inputTokens \(5\)/);
	});

	test('record: a usage that is not an object throws EINVAL', () => {
		throwsCode(() => h.record(null), 'EINVAL');
		throwsCode(() => h.record('usage'), 'EINVAL');
		throwsCode(() => h.record(), 'EINVAL');
	});

	test('recordResponse: each refusal has its code', () => {
		const ids = { sessionId: 'resp', llmReferenceId: LLM,
			      providerType: 'openAI' };

		throwsCode(() => h.recordResponse({ ...ids, providerType: 'x' },
						  '{}'), 'EPROTONOSUPPORT');
		throwsCode(() => h.recordResponse({ ...ids,
						    providerType: undefined },
						  '{}'), 'EINVAL');
		throwsCode(() => h.recordResponse(ids, '{"usage":'), 'EBADMSG');
		throwsCode(() => h.recordResponse(ids, '{"id":"x"}'),
			   'ENODATA');
		throwsCode(() => h.recordResponse(ids, {
			usage: { prompt_tokens: -4, completion_tokens: 1 },
		}), 'ERANGE');
		throwsCode(() => h.recordResponse(ids, 42), 'EINVAL');
		throwsCode(() => h.recordResponse(ids, undefined), 'EINVAL');
		throwsCode(() => h.recordResponse(null, '{}'), 'EINVAL');
		assert.equal(h.getLLMTokenUsageForSession('resp'), null);
	});

	test('getLLMTokenUsageForSession: bad ids throw', () => {
		throwsCode(() => h.getLLMTokenUsageForSession(''), 'EINVAL');
		throwsCode(() => h.getLLMTokenUsageForSession(), 'EINVAL');
		throwsCode(() => h.getLLMTokenUsageForSession(7), 'EINVAL');
		throwsCode(() => h.getLLMTokenUsageForSession('x'.repeat(256)),
			   'EINVAL');
		throwsCode(() => h.getLLMTokenUsageForSession('\ud83d'),
			   'EILSEQ');
		throwsCode(() => h.getLLMTokenUsageForSession('x',
							     { details: 1 }),
			   'EINVAL');
	});

	test('sync, stats and open refuse bad arguments', () => {
		throwsCode(() => h.sync(1.5), 'EINVAL');
		throwsCode(() => h.sync('1'), 'EINVAL');
		throwsCode(() => h.sync(2 ** 31), 'ERANGE');
		throwsCode(() => h.stats(-1), 'EINVAL');
		throwsCode(() => tally.open(''), 'EINVAL');
		throwsCode(() => tally.open(5), 'EINVAL');
		throwsCode(() => tally.open({ dir: daemon.dir, queueMax: -1 }),
			   'ERANGE');
		throwsCode(() => tally.open({ dir: daemon.dir,
					      closeTimeoutMs: -1 }), 'EINVAL');
		throwsCode(() => tally.open('/tmp/' + 'd'.repeat(200)),
			   'ENAMETOOLONG');
	});

	test('errors carry code, errno and a message', () => {
		try {
			h.record({ ...usage('e', LLM, 1, 1), inputTokens: -1 });
			assert.fail('no error');
		} catch (err) {
			assert.ok(err instanceof Error);
			assert.equal(err.code, 'ERANGE');
			assert.equal(err.errno, -34);
			assert.match(err.message,
				     /^tally\.record: a token count is negative or above the limit/);
		}
	});

	test('the native class refuses what is not its own', () => {
		const addon = require(process.env.TALLY_ADDON);

		// V8 checks the receiver of a class's methods itself.
		assert.throws(() => addon.Handle.prototype.pending.call({}),
			      TypeError);
		assert.throws(() => addon.Handle.prototype.record.call(null),
			      TypeError);
		throwsCode(() => addon.Handle(), 'EINVAL');
	});

	test('estimateTokens: counts, or says what is missing', (t) => {
		let n;

		try {
			n = tally.estimateTokens('claude-sonnet-4',
						 'Hello, world!');
		} catch (err) {
			assert.equal(err.code, 'ENOSYS', err.message);
			t.skip('this libtally cannot estimate');
			return;
		}
		// A ratio of 3.5 characters per token, rounded up.
		assert.equal(n, 4);
		assert.equal(h.estimateTokens('claude-sonnet-4',
					      Buffer.from('Hello, world!')), 4);
		try {
			n = tally.estimateTokens('gpt-4o', 'Hello, world!');
			assert.equal(n, 4);
		} catch (err) {
			assert.equal(err.code, 'ENOENT');
			assert.match(err.message,
				     /no rank file.*TALLY_DATA_DIR/);
		}
		throwsCode(() => tally.estimateTokens('claude', 5), 'EINVAL');
		throwsCode(() => tally.estimateTokens('claude',
						      Buffer.from([0xff])),
			   'EILSEQ');
	});

	test('recordText: estimated counts, marked as estimated', (t) => {
		try {
			h.recordText({ sessionId: 'text', llmReferenceId: LLM,
				       modelType: 'claude-sonnet-4' },
				     'Hello, world!', 'abcdefg');
		} catch (err) {
			assert.equal(err.code, 'ENOSYS', err.message);
			t.skip('this libtally cannot estimate');
			return;
		}
		h.recordText({ sessionId: 'text', llmReferenceId: LLM,
			       modelType: 'claude-sonnet-4' }, null, null);
		const got = h.getLLMTokenUsageForSession('text',
							 { details: true });
		assert.deepStrictEqual(got[LLM].usage,
				       { inputTokens: 4, outputTokens: 2 });
		assert.equal(got[LLM].details.estimatedInputTokens, 4);
		assert.equal(got[LLM].details.usageMissingCalls, 1);
		throwsCode(() => h.recordText({ sessionId: 'text',
						llmReferenceId: LLM }, 5),
			   'EINVAL');
	});
});

describe('errors without a daemon', () => {
	const dir = tempDir();

	after(() => new Daemon(dir).remove());

	test('sync: ETIMEDOUT; reading a ledger never made: ENOENT', () => {
		const h = tally.open({ dir, closeTimeoutMs: 100 });

		h.record(usage('nodaemon', LLM, 1, 1));
		throwsCode(() => h.sync(200), 'ETIMEDOUT');
		assert.equal(h.pending(), 1);
		throwsCode(() => h.getLLMTokenUsageForSession('nodaemon'),
			   'ENOENT');
		throwsCode(() => h.stats(100), 'ETIMEDOUT');
		h.close();
	});

	test('TALLY_ADDON naming no file fails to load, saying so', () => {
		const { spawnSync } = require('node:child_process');
		const r = spawnSync(process.execPath, [
			'-e', `require(${JSON.stringify(path.join(__dirname,
				'..', '..', 'client', 'node'))})`,
		], {
			env: { ...process.env,
			       TALLY_ADDON: path.join(dir, 'none.node') },
			encoding: 'utf8',
			timeout: 10000,
		});
		assert.notEqual(r.status, 0);
		assert.match(r.stderr, /MODULE_NOT_FOUND/);
		assert.match(r.stderr, /set TALLY_ADDON/);
	});
});
