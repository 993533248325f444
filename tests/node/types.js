'use strict';
// The TypeScript declarations compile: tsc --noEmit on types-check.ts,
// with the TypeScript that tools/setup installs into .deps/. Without it
// the test is skipped (exit status 77), saying why.

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..', '..');
const tsc = process.env.TSC ||
	path.join(root, '.deps', 'node_modules', 'typescript', 'bin', 'tsc');

if (!fs.existsSync(tsc)) {
	console.log(`SKIP: no TypeScript compiler at ${tsc}; run tools/setup ` +
		    'to install it (or set TSC to one)');
	process.exit(77);
}

const project = path.join(__dirname, 'tsconfig.json');
const r = spawnSync(process.execPath, [tsc, '--noEmit', '-p', project],
		    { encoding: 'utf8', timeout: 100000 });
process.stdout.write(r.stdout || '');
process.stderr.write(r.stderr || '');
if (r.error)
	console.error(`tsc did not run: ${r.error.message}`);
console.log(r.status === 0 ? 'index.d.ts: compiles' :
	    `tsc failed (status ${r.status})`);
process.exit(r.status === 0 ? 0 : 1);
