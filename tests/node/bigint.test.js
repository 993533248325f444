'use strict';
// Counts above 2^53 come back as exact BigInts, never rounded: through the
// addon's JSON reader, and through a real daemon's ledger.

const assert = require('node:assert/strict');
const { describe, test } = require('node:test');
const { tally, Daemon, runCluster, throwsCode } = require('./helpers.js');
const { expectedTotals } = require('./cluster-worker.js');

const addon = require(process.env.TALLY_ADDON);

describe('the JSON reader', () => {
	test('gives Numbers up to 2^53 - 1 and BigInts above', () => {
		const got = addon.parseJson('{"a":0,"b":9007199254740991,' +
			'"c":9007199254740992,"d":9007199254740993,' +
			'"e":18446744073709551615,"f":123456789012345}');
		assert.deepStrictEqual(got, {
			a: 0,
			b: Number.MAX_SAFE_INTEGER,
			c: 9007199254740992n,
			d: 9007199254740993n,
			e: 18446744073709551615n,
			f: 123456789012345,
		});
	});

	test('reads what JSON.parse reads', () => {
		const texts = [
			'{"k":"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t"}',
			'{"k":"\\u00e9\\ud83d\\ude00"}',
			'[1, -2, 3.5, -0.25e2, true, false, null, "", {}, []]',
			'{"\\u00e9t\\u00e9":{"x":[{"y":"\u00fcber"}]}}',
			'{"y":"\u{1F600}"}',
			' \n {"a" : 1 , "b":[ ] } \t',
			'"just a string"',
		];
		for (const t of texts)
			assert.deepStrictEqual(addon.parseJson(t),
					       JSON.parse(t), t);
	});

	test('makes "__proto__" an own key, as JSON.parse does', () => {
		const text = '{"__proto__":{"polluted":1}}';
		const got = addon.parseJson(text);

		assert.ok(Object.hasOwn(got, '__proto__'));
		assert.equal(Object.getPrototypeOf(got), Object.prototype);
		assert.equal({}.polluted, undefined);
		assert.deepStrictEqual(got, JSON.parse(text));
	});

	test('refuses what is not JSON', () => {
		for (const t of ['', '{', '{"a"}', '{"a":1,}', '[1 2]', '"abc',
				 'tru', '{"a":1} x', '-', '"\\x"', '"\\u12"',
				 '['.repeat(100) + ']'.repeat(100)])
			throwsCode(() => addon.parseJson(t), 'EBADMSG', t);
	});

	test('agrees with JSON.parse on 20,000 mutated texts', () => {
		const seeds = [
			'{"a":{"llmDisplayName":"x\\"y","usage":' +
				'{"inputTokens":12,"outputTokens":0}}}',
			'[1,-2.5e3,true,false,null,"\\ud83d\\ude00",' +
				'{"__proto__":[]}]',
			'{"k":"\\u00e9","e":"\\n\\t\\/"}',
		];
		const alphabet = '{}[]":,\\u0123456789abcdefE-+. tnrl\u00e9';
		let seed = 12345;
		const rnd = (n) => {
			seed = (seed * 1103515245 + 12345) & 0x7fffffff;
			return seed % n;
		};

		for (let i = 0; i < 20000; i++) {
			let t = seeds[rnd(seeds.length)];
			for (let e = 1 + rnd(4); e > 0; e--) {
				const at = rnd(t.length + 1);
				const c = alphabet[rnd(alphabet.length)];
				t = t.slice(0, at) + c + t.slice(at + rnd(2));
			}
			let want;
			try {
				want = JSON.parse(t);
			} catch {
				continue;
			}
			// A lone surrogate escape has no UTF-8 form: U+FFFD.
			if (/\\u[dD][89a-fA-F]/.test(t))
				continue;
			assert.deepStrictEqual(addon.parseJson(t), want, t);
		}
	});

	test('takes Buffers too', () => {
		const text = Buffer.from('{"n":18446744073709551615}');

		assert.deepStrictEqual(addon.parseJson(text),
				       { n: 18446744073709551615n });
	});
});

// 2^53 / TOKENS_MAX usages of TOKENS_MAX tokens each, rounded up.
const WORKERS = 2;
const RECORDS = Math.ceil(Math.ceil(2 ** 53 / tally.TOKENS_MAX) / WORKERS);

test(`a session past 2^53 tokens reads back exactly (${WORKERS} x ` +
     `${RECORDS} records)`, { timeout: 240000 }, async () => {
	// Durable commits are not what this test is about.
	const daemon = await new Daemon().start('--no-sync');

	try {
		const done = await runCluster(daemon.dir, 'big', WORKERS,
					      RECORDS, 200000);
		assert.deepStrictEqual(done, Array(WORKERS).fill(RECORDS));
		const want = expectedTotals('big', 1, 1).big.chat.inputTokens *
			     BigInt(WORKERS * RECORDS);
		assert.ok(want > 2n ** 53n);

		const h = tally.open(daemon.dir);
		let got = h.getLLMTokenUsageForSession('big');
		assert.deepStrictEqual(got.chat.usage, { inputTokens: want,
							 outputTokens: want });
		assert.equal(typeof got.chat.usage.inputTokens, 'bigint');

		// One token more is still told apart (a double could not).
		h.record({ sessionId: 'big', llmReferenceId: 'chat',
			   inputTokens: 1, outputTokens: 0 });
		got = h.getLLMTokenUsageForSession('big', { details: true });
		assert.equal(got.chat.usage.inputTokens, want + 1n);
		assert.equal(got.chat.details.calls,
			     WORKERS * RECORDS + 1);
		h.close();
	} finally {
		await daemon.remove();
	}
});
