'use strict';
// Several processes through Node's cluster module: 4 workers x 5,000
// records into one daemon add up exactly.

const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { tally, Daemon, runCluster } = require('./helpers.js');
const { expectedTotals } = require('./cluster-worker.js');

const WORKERS = 4;
const RECORDS = 5000;

const daemon = new Daemon();

before(() => daemon.start());
after(() => daemon.remove());

test(`${WORKERS} cluster workers x ${RECORDS} records add up exactly`,
     { timeout: 120000 }, async () => {
	const done = await runCluster(daemon.dir, 'mixed', WORKERS, RECORDS,
				      100000);
	assert.deepStrictEqual(done, Array(WORKERS).fill(RECORDS));

	const expected = expectedTotals('mixed', WORKERS, RECORDS);
	const h = tally.open(daemon.dir);
	for (const [sid, llms] of Object.entries(expected)) {
		const got = h.getLLMTokenUsageForSession(sid);
		for (const [llm, counts] of Object.entries(llms)) {
			assert.deepStrictEqual(
				got[llm].usage,
				{ inputTokens: Number(counts.inputTokens),
				  outputTokens: Number(counts.outputTokens) },
				`${sid} ${llm}`);
		}
		assert.deepStrictEqual(Object.keys(got).sort(),
				       Object.keys(llms).sort());
	}
	// Each usage applied once; any resend was dropped as a repeat.
	assert.equal(h.stats().usages_applied, WORKERS * RECORDS);
	h.close();
});
