'use strict';
// getLLMTokenUsageForSession() against a real tallyd: the seed's shape and
// values, null for a session with no usage, details, odd ids.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { after, before, describe, test } = require('node:test');
const { tally, Daemon, usage } = require('./helpers.js');

const FIXTURES = path.join(__dirname, '..', 'fixtures', 'providers');

const EMBED = '1c945b38-5dbb-4fcf-9fdd-112bd8177f9c';
const CHAT = 'ce190e1f-eff7-4f6b-9074-9f705375a3d3';

// The shape flow code already expects, from DESIGN.md.
const SEED = {
	[EMBED]: {
		llmDisplayName:
			'openAI - text-embedding-3-large - 1735891122507',
		providerType: 'openAI',
		modelType: 'text-embedding-3-large',
		usage: { inputTokens: 6, outputTokens: 0 },
	},
	[CHAT]: {
		llmDisplayName: 'openAI - gpt-4o - 1735891179896',
		providerType: 'openAI',
		modelType: 'gpt-4o',
		usage: { inputTokens: 441, outputTokens: 106 },
	},
};

describe('getLLMTokenUsageForSession', () => {
	const daemon = new Daemon();
	let h;

	before(async () => {
		await daemon.start();
		h = tally.open(daemon.dir);
	});

	after(async () => {
		if (h)
			h.close();
		await daemon.remove();
	});

	test('gives the seed shape and values from the ledger', () => {
		const sid = 'seed-session';

		h.record({ sessionId: sid, llmReferenceId: CHAT,
			   llmDisplayName: SEED[CHAT].llmDisplayName,
			   providerType: 'openAI', modelType: 'gpt-4o',
			   inputTokens: 400, outputTokens: 100 });
		h.record({ sessionId: sid, llmReferenceId: EMBED,
			   llmDisplayName: SEED[EMBED].llmDisplayName,
			   providerType: 'openAI',
			   modelType: 'text-embedding-3-large',
			   inputTokens: 6, outputTokens: 0 });
		h.record({ sessionId: sid, llmReferenceId: CHAT,
			   inputTokens: 41n, outputTokens: 6 });
		h.sync(5000);
		assert.equal(h.pending(), 0);

		// A second handle has no queue: this is the ledger's answer.
		const other = tally.open(daemon.dir);
		const got = other.getLLMTokenUsageForSession(sid);
		other.close();
		assert.deepStrictEqual(got, SEED);
		assert.deepStrictEqual(Object.keys(got), [EMBED, CHAT]);
		assert.equal(Object.getPrototypeOf(got), Object.prototype);
		assert.equal(typeof got[CHAT].usage.inputTokens, 'number');
	});

	test('answers null for an unknown session', () => {
		assert.equal(h.getLLMTokenUsageForSession('no-such-session'),
			     null);
		assert.equal(h.getLLMTokenUsageForSession('seed-sessio'), null);
		assert.equal(h.getLLMTokenUsageForSession('seed-session\u00e9'),
			     null);
	});

	test('adds details when asked', () => {
		const sid = 'details-session';

		h.record({ ...usage(sid, CHAT, 1000, 300),
			   cacheReadTokens: 600, cacheWriteTokens: 100n,
			   reasoningTokens: 200 });
		h.record({ ...usage(sid, CHAT, 50, 20), estimated: true });
		h.sync(5000);
		const got = h.getLLMTokenUsageForSession(sid,
							 { details: true });
		assert.deepStrictEqual(got[CHAT].usage, { inputTokens: 1050,
							  outputTokens: 320 });
		assert.deepStrictEqual(got[CHAT].details, {
			'gen_ai.usage.cache_read.input_tokens': 600,
			'gen_ai.usage.cache_creation.input_tokens': 100,
			'gen_ai.usage.reasoning.output_tokens': 200,
			calls: 2,
			estimatedInputTokens: 50,
			estimatedOutputTokens: 20,
			usageMissingCalls: 0,
		});
		const plain = h.getLLMTokenUsageForSession(sid);
		assert.equal(plain[CHAT].details, undefined);
	});

	test('keeps ids and names exactly, __proto__ included', () => {
		const sid = 'sessi\u00f6n \u{1F600} "quoted" \\ \n\t end';
		const names = {
			llmDisplayName: 'line\u2028separator',
			providerType: 'openAI',
			modelType: 'g\u00e9pt "4o"\u0001',
		};

		h.record({ sessionId: sid, llmReferenceId: '__proto__',
			   ...names, inputTokens: 3, outputTokens: 4 });
		h.record({ sessionId: sid, llmReferenceId: 'constructor',
			   inputTokens: 1, outputTokens: 1 });
		const got = h.getLLMTokenUsageForSession(sid);
		assert.equal(Object.getPrototypeOf(got), Object.prototype);
		assert.ok(Object.hasOwn(got, '__proto__'));
		assert.deepStrictEqual(got.__proto__, {
			...names, usage: { inputTokens: 3, outputTokens: 4 },
		});
		assert.deepStrictEqual(Object.keys(got),
				       ['__proto__', 'constructor']);
		assert.equal({}.polluted, undefined);
	});

	test('takes a provider response as text, Buffer or object', () => {
		const sid = 'response-session';
		const ids = { sessionId: sid, llmReferenceId: CHAT,
			      llmDisplayName: SEED[CHAT].llmDisplayName,
			      providerType: 'openAI', modelType: 'gpt-4o' };
		const body = {
			id: 'chatcmpl-1',
			object: 'chat.completion',
			choices: [{ index: 0, message: { role: 'assistant',
							  content: 'hi' } }],
			usage: { prompt_tokens: 441, completion_tokens: 106,
				 total_tokens: 547 },
		};

		h.recordResponse(ids, JSON.stringify(body));
		h.recordResponse(ids, Buffer.from(JSON.stringify(body)));
		h.recordResponse(ids, body);
		const got = h.getLLMTokenUsageForSession(sid);
		assert.deepStrictEqual(got[CHAT].usage,
				       { inputTokens: 3 * 441,
					 outputTokens: 3 * 106 });
		assert.equal(got[CHAT].modelType, 'gpt-4o');
	});

	test('reads an Anthropic response', () => {
		const sid = 'anthropic-session';
		const body = {
			type: 'message',
			usage: { input_tokens: 20, output_tokens: 7,
				 cache_read_input_tokens: 100,
				 cache_creation_input_tokens: 5 },
		};

		h.recordResponse({ sessionId: sid, llmReferenceId: 'claude',
				   providerType: 'anthropic',
				   modelType: 'claude-sonnet-4' }, body);
		const got = h.getLLMTokenUsageForSession(sid,
							 { details: true });
		assert.equal(got.claude.usage.outputTokens, 7);
		assert.equal(got.claude.details['gen_ai.usage.cache_read.input_tokens'], 100);
		assert.equal(got.claude.usage.inputTokens, 125);
	});

	test('reads a whole stream transcript', () => {
		const sid = 'stream-session';
		const sse = fs.readFileSync(path.join(FIXTURES,
						      'openai-chat-stream.sse'));

		h.recordResponse({ sessionId: sid, llmReferenceId: CHAT,
				   providerType: 'openAI',
				   modelType: 'gpt-4o' }, sse);
		const got = h.getLLMTokenUsageForSession(sid,
							 { details: true });
		// The last chunk's usage (tests/fixtures/providers/EXPECTED.md).
		assert.deepStrictEqual(got[CHAT].usage, { inputTokens: 1250,
							  outputTokens: 310 });
		assert.equal(got[CHAT].details['gen_ai.usage.cache_read.input_tokens'], 1024);
		assert.equal(got[CHAT].details['gen_ai.usage.reasoning.output_tokens'], 192);
	});
});
