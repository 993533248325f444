'use strict';
// record() against a real tallyd: read-your-writes, delivery through a
// daemon restart, exit without close(), worker threads, close().

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { after, afterEach, beforeEach, describe, test } = require('node:test');
const { Worker } = require('node:worker_threads');
const { tally, Daemon, usage, throwsCode } = require('./helpers.js');

const LLM = 'ce190e1f-eff7-4f6b-9074-9f705375a3d3';

function counts(h, sid, llm = LLM) {
	const got = h.getLLMTokenUsageForSession(sid);
	return got === null ? null : got[llm].usage;
}

describe('record', () => {
	let daemon;
	let h;

	beforeEach(async () => {
		daemon = await new Daemon().start();
		h = tally.open({ dir: daemon.dir, closeTimeoutMs: 2000 });
	});

	afterEach(async () => {
		h.close();
		await daemon.remove();
	});

	test('is read back at once (read-your-writes)', () => {
		const sid = 'ryw';

		for (let i = 1; i <= 100; i++) {
			h.record(usage(sid, LLM, 10, 1));
			assert.deepStrictEqual(counts(h, sid),
					       { inputTokens: 10 * i,
						 outputTokens: i });
		}
		h.sync(5000);
		assert.equal(h.pending(), 0);
		const other = tally.open(daemon.dir);
		const want = { inputTokens: 1000, outputTokens: 100 };
		assert.deepStrictEqual(counts(other, sid), want);
		other.close();
	});

	test('is counted once through a daemon restart', async () => {
		const sid = 'restart';

		h.record(usage(sid, LLM, 5, 5));
		h.sync(5000);
		assert.equal(await daemon.stop(), 0, 'tallyd stops cleanly');
		for (let i = 0; i < 50; i++)
			h.record(usage(sid, LLM, 1, 2));
		// Read from the ledger plus this handle's queue.
		assert.deepStrictEqual(counts(h, sid),
				       { inputTokens: 55, outputTokens: 105 });
		throwsCode(() => h.sync(300), 'ETIMEDOUT', 'sync, no daemon');
		assert.equal(h.pending(), 50);
		await daemon.start();
		h.sync(10000);
		const other = tally.open(daemon.dir);
		assert.deepStrictEqual(counts(other, sid),
				       { inputTokens: 55, outputTokens: 105 });
		other.close();
	});

	test('is delivered by a process that exits without close()', () => {
		const script = `
			const tally = require(${JSON.stringify(
				path.join(__dirname, '..', '..', 'client',
					  'node'))});
			const h = tally.open(process.argv[1]);
			for (let i = 0; i < 2000; i++)
				h.record({ sessionId: 'exit',
					   llmReferenceId: 'x',
					   inputTokens: 1, outputTokens: 0 });
			process.exit(0);`;
		const r = spawnSync(process.execPath,
				    ['-e', script, daemon.dir],
				    { timeout: 30000, encoding: 'utf8' });
		assert.equal(r.status, 0, r.stderr);
		assert.deepStrictEqual(counts(h, 'exit', 'x'),
				       { inputTokens: 2000, outputTokens: 0 });
	});

	test('works from a worker thread', async () => {
		const code = `
			const { workerData } = require('node:worker_threads');
			const tally = require(workerData.module);
			const h = tally.open(workerData.dir);
			for (let i = 0; i < 1000; i++)
				h.record({ sessionId: 'thread',
					   llmReferenceId: 'x',
					   inputTokens: 2, outputTokens: 1 });
			h.sync(5000);
			h.close();`;
		const w = new Worker(code, {
			eval: true,
			workerData: {
				dir: daemon.dir,
				module: path.join(__dirname, '..', '..',
						  'client', 'node'),
			},
		});
		const status = await new Promise((resolve, reject) => {
			w.on('error', reject);
			w.on('exit', resolve);
		});
		assert.equal(status, 0);
		assert.deepStrictEqual(counts(h, 'thread', 'x'),
				       { inputTokens: 2000,
					 outputTokens: 1000 });
	});

	test('close() is idempotent and ends the handle', () => {
		const other = tally.open(daemon.dir);

		other.record(usage('close', LLM, 1, 1));
		other.close();
		other.close();
		throwsCode(() => other.record(usage('close', LLM, 1, 1)),
			   'EBADF', 'record after close');
		throwsCode(() => other.getLLMTokenUsageForSession('close'),
			   'EBADF', 'read after close');
		// close() waited for the commit.
		assert.deepStrictEqual(counts(h, 'close'),
				       { inputTokens: 1, outputTokens: 1 });
	});

	test('accepts BigInt counts', () => {
		h.record(usage('bigint-in', LLM, 1000000000n, 0n));
		assert.deepStrictEqual(counts(h, 'bigint-in'),
				       { inputTokens: 1000000000,
					 outputTokens: 0 });
	});
});

describe('a handle without a daemon', () => {
	const daemon = new Daemon();

	after(() => daemon.remove());

	test('fills its queue, then throws ENOBUFS', () => {
		const h = tally.open({ dir: daemon.dir, queueMax: 4,
				       closeTimeoutMs: 100 });

		for (let i = 0; i < 4; i++)
			h.record(usage('full', LLM, 1, 1));
		assert.equal(h.pending(), 4);
		throwsCode(() => h.record(usage('full', LLM, 1, 1)), 'ENOBUFS');
		// tallyd never ran here: there is no ledger to read.
		throwsCode(() => h.getLLMTokenUsageForSession('full'),
			   'ENOENT');
		h.close();
	});
});
