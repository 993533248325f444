'use strict';
// A real tallyd per test, on a fresh mkdtemp directory, for the node tests.
// tallyd is $TALLYD (meson sets it, and TALLY_ADDON for the addon); it is
// stopped by its pid, and every wait is bounded.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const tally = require(path.join(__dirname, '..', '..', 'client', 'node'));

function sleep(ms) {
	return new Promise((resolve) => setTimeout(resolve, ms));
}

function tempDir() {
	return fs.mkdtempSync(path.join(process.env.TMPDIR || os.tmpdir(),
					'tally-node-'));
}

// Resolves once tallyd answers on dir; rejects after timeoutMs.
async function waitReady(dir, timeoutMs = 5000) {
	const h = tally.open(dir);
	const deadline = Date.now() + timeoutMs;

	try {
		while (Date.now() < deadline) {
			try {
				h.stats(100);
				return;
			} catch (err) {
				if (err.code !== 'ETIMEDOUT')
					throw err;
			}
			await sleep(10);
		}
		throw new Error(`tallyd did not answer on ${dir} in ` +
				`${timeoutMs} ms; see ${dir}/tallyd.log`);
	} finally {
		h.close();
	}
}

class Daemon {
	constructor(dir) {
		this.dir = dir || tempDir();
		this.child = null;
	}

	async start(...extra) {
		const tallyd = process.env.TALLYD;
		assert.ok(tallyd, 'TALLYD must name the tallyd to test');
		// Never the test's own stdout: meson waits for it to close.
		const log = fs.openSync(path.join(this.dir, 'tallyd.log'), 'a');
		this.child = spawn(tallyd, ['--dir', this.dir, ...extra],
				   { stdio: ['ignore', log, log] });
		fs.closeSync(log);
		const signals = os.constants.signals;
		this.exited = new Promise((resolve) => {
			this.child.on('exit', (code, signal) =>
				resolve(signal ? 128 + signals[signal] : code));
		});
		await waitReady(this.dir);
		return this;
	}

	// Sends sig and waits up to timeoutMs; SIGKILL after that. Returns
	// the exit status, 128 + signal when killed, -1 when it had to be.
	async stop(sig = 'SIGTERM', timeoutMs = 5000) {
		const child = this.child;
		let timer;

		if (child === null)
			return 0;
		this.child = null;
		if (child.exitCode !== null || child.signalCode !== null)
			return this.exited;
		process.kill(child.pid, sig);
		const late = new Promise((resolve) => {
			timer = setTimeout(() => resolve('late'), timeoutMs);
		});
		const status = await Promise.race([this.exited, late]);
		clearTimeout(timer);
		if (status !== 'late')
			return status;
		process.kill(child.pid, 'SIGKILL');
		await this.exited;
		return -1;
	}

	async remove() {
		await this.stop();
		fs.rmSync(this.dir, { recursive: true, force: true });
	}
}

// A usage with the seed's names for gpt-4o and the given counts.
function usage(sessionId, llmReferenceId, inputTokens, outputTokens) {
	return {
		sessionId,
		llmReferenceId,
		llmDisplayName: 'openAI - gpt-4o - 1735891179896',
		providerType: 'openAI',
		modelType: 'gpt-4o',
		inputTokens,
		outputTokens,
	};
}

// Asserts that fn throws a tally error with this code.
function throwsCode(fn, code, what) {
	assert.throws(fn, (err) => {
		assert.ok(err instanceof Error, 'an Error is thrown');
		assert.equal(err.code, code, `${what || ''}: ${err.message}`);
		assert.equal(typeof err.errno, 'number');
		assert.ok(err.errno < 0, 'errno is negative');
		assert.match(err.message, /^tally\.\w+: /);
		return true;
	});
}

// Forks n cluster workers that run cluster-worker.js with the named load
// on dir. Resolves with the records each one reported once all exited 0;
// after timeoutMs, kills the ones left by their pid and rejects.
function runCluster(dir, load, n, records, timeoutMs) {
	const cluster = require('node:cluster');
	const workers = [];
	const done = Array(n).fill(0);
	let left = n;
	let timer;

	cluster.setupPrimary({ exec: path.join(__dirname,
					       'cluster-worker.js') });
	const killAll = () => {
		clearTimeout(timer);
		for (const w of workers) {
			if (w.process.exitCode === null &&
			    w.process.signalCode === null)
				process.kill(w.process.pid, 'SIGKILL');
		}
	};
	return new Promise((resolve, reject) => {
		timer = setTimeout(() => {
			killAll();
			reject(new Error(`cluster workers still ran after ` +
					 `${timeoutMs} ms`));
		}, timeoutMs);
		for (let i = 0; i < n; i++) {
			const w = cluster.fork({
				TALLY_TEST_DIR: dir,
				TALLY_WORKER: String(i),
				TALLY_RECORDS: String(records),
				TALLY_LOAD: load,
			});
			workers.push(w);
			w.on('message', (m) => {
				done[m.worker] = m.done;
			});
			w.on('exit', (code, signal) => {
				const how = `cluster worker ${i} ended: ` +
					    `${signal || code}`;

				if (code !== 0) {
					killAll();
					reject(new Error(how));
				} else if (--left === 0) {
					clearTimeout(timer);
					resolve(done);
				}
			});
		}
	});
}

module.exports = {
	tally, Daemon, sleep, tempDir, usage, throwsCode, runCluster,
};
