'use strict';
// A cluster worker of cluster.test.js and bigint.test.js: records the
// usages its load names, checks that it reads its own writes, waits for
// the daemon's commit, and reports to the primary.

const assert = require('node:assert/strict');
const cluster = require('node:cluster');
const { tally } = require('./helpers.js');

// The i-th usage of worker w in the 'mixed' load: its own session and one
// that every worker shares, two LLMs, counts that vary.
function mixedUsage(w, i) {
	const chat = i % 3 !== 0;

	return {
		sessionId: i % 2 ? 'shared' : `own-${w}`,
		llmReferenceId: chat ? 'chat' : 'embed',
		llmDisplayName: chat ? 'openAI - gpt-4o - 1'
				     : 'openAI - text-embedding-3-large - 1',
		providerType: 'openAI',
		modelType: chat ? 'gpt-4o' : 'text-embedding-3-large',
		inputTokens: 1 + (i % 7),
		outputTokens: chat ? i % 5 : 0,
	};
}

// The 'big' load: every usage carries the most one usage may.
function bigUsage(w, i) {
	return {
		sessionId: 'big',
		llmReferenceId: 'chat',
		inputTokens: 1000000000n,
		outputTokens: tally.TOKENS_MAX,
	};
}

const LOADS = { mixed: mixedUsage, big: bigUsage };

// The totals the usages of workers x records add up to, as BigInts.
function expectedTotals(load, workers, records) {
	const totals = {};

	for (let w = 0; w < workers; w++) {
		for (let i = 0; i < records; i++) {
			const u = LOADS[load](w, i);
			const s = (totals[u.sessionId] ??= {});
			const t = (s[u.llmReferenceId] ??=
				   { inputTokens: 0n, outputTokens: 0n });
			t.inputTokens += BigInt(u.inputTokens);
			t.outputTokens += BigInt(u.outputTokens);
		}
	}
	return totals;
}

function big(v) {
	return typeof v === 'bigint' ? v : BigInt(v);
}

function runWorker() {
	const w = Number(process.env.TALLY_WORKER);
	const records = Number(process.env.TALLY_RECORDS);
	const make = LOADS[process.env.TALLY_LOAD];
	const h = tally.open({ dir: process.env.TALLY_TEST_DIR,
			       recordTimeoutMs: 10000 });
	let own = 0n;

	for (let i = 0; i < records; i++) {
		const u = make(w, i);

		h.record(u);
		if (u.sessionId === `own-${w}`)
			own += big(u.inputTokens);
	}
	// Nobody else writes own-<w>: what this worker sees is its own.
	if (own > 0n) {
		const got = h.getLLMTokenUsageForSession(`own-${w}`);
		const sum = big(got.chat.usage.inputTokens) +
			    big(got.embed.usage.inputTokens);
		assert.equal(sum, own, 'read-your-writes in the worker');
	}
	h.sync(60000);
	assert.equal(h.pending(), 0);
	h.close();
	process.send({ worker: w, done: records }, () => process.exit(0));
}

if (cluster.isWorker)
	runWorker();

module.exports = { expectedTotals };
