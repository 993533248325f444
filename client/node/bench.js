'use strict';
// Calls per second of getLLMTokenUsageForSession() and record() from
// Node.js, against a tallyd of its own on a fresh directory.
//
//   TALLYD=build/daemon/tallyd TALLY_ADDON=build/client/node/tally.node \
//       node client/node/bench.js [records] [snapshots]

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const tally = require('./index.js');

const RECORDS = Number(process.argv[2] || 1000000);
const SNAPSHOTS = Number(process.argv[3] || 1000000);

function sleep(ms) {
	Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function startDaemon(dir) {
	const tallyd = process.env.TALLYD ||
		path.join(__dirname, '..', '..', 'build', 'daemon', 'tallyd');
	const log = fs.openSync(path.join(dir, 'tallyd.log'), 'a');
	const child = spawn(tallyd, ['--dir', dir],
			    { stdio: ['ignore', log, log] });
	const h = tally.open({ dir, recordTimeoutMs: 10000 });

	for (let i = 0; i < 500; i++) {
		try {
			h.stats(100);
			return { child, h };
		} catch (e) {
			sleep(10);
		}
	}
	child.kill('SIGTERM');
	throw new Error(`tallyd did not answer on ${dir}`);
}

function rate(n, ns) {
	return Math.round(n / (Number(ns) / 1e9));
}

const LLMS = ['1c945b38-5dbb-4fcf-9fdd-112bd8177f9c',
	      'ce190e1f-eff7-4f6b-9074-9f705375a3d3'];

// 1,000 sessions; every session gets both LLMs.
function usage(i) {
	return {
		sessionId: `bench-${i % 1000}`,
		llmReferenceId: LLMS[(i / 1000 | 0) % 2],
		llmDisplayName: 'openAI - gpt-4o - 1735891179896',
		providerType: 'openAI',
		modelType: 'gpt-4o',
		inputTokens: 441,
		outputTokens: 106,
	};
}

// A burst that fits the queue: what one call costs the caller.
function benchBurst(h) {
	const n = 50000;
	const start = process.hrtime.bigint();

	for (let i = 0; i < n; i++)
		h.record(usage(i));
	const ns = process.hrtime.bigint() - start;
	h.sync(60000);
	console.log(`record (burst of ${n}): ${rate(n, ns)} calls/s ` +
		    `(${(Number(ns) / n / 1000).toFixed(2)} us each)`);
}

// Many more than the queue holds: record() waits for room when the
// daemon falls behind, so this is the rate the daemon confirms.
function benchRecord(h) {
	const start = process.hrtime.bigint();

	for (let i = 0; i < RECORDS; i++)
		h.record(usage(i));
	const recorded = process.hrtime.bigint();
	h.sync(60000);
	const synced = process.hrtime.bigint();
	console.log(`record (sustained): ${RECORDS} calls, ` +
		    `${rate(RECORDS, recorded - start)} calls/s ` +
		    `(${rate(RECORDS, synced - start)}/s committed)`);
}

function benchSnapshot(h) {
	let entries = 0;
	const start = process.hrtime.bigint();

	for (let i = 0; i < SNAPSHOTS; i++) {
		const u = h.getLLMTokenUsageForSession(`bench-${i % 1000}`);
		entries += Object.keys(u).length;
	}
	const ns = process.hrtime.bigint() - start;
	console.log(`getLLMTokenUsageForSession: ${SNAPSHOTS} calls, ` +
		    `${rate(SNAPSHOTS, ns)} calls/s ` +
		    `(${(Number(ns) / SNAPSHOTS / 1000).toFixed(2)} us each, ` +
		    `${entries / SNAPSHOTS} LLMs per session)`);
}

function main() {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-bench-'));
	const { child, h } = startDaemon(dir);

	try {
		benchBurst(h);
		benchRecord(h);
		benchSnapshot(h);
	} finally {
		h.close();
		child.kill('SIGTERM');
		child.on('exit', () => fs.rmSync(dir, { recursive: true }));
	}
}

main();
