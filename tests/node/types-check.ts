// Compiled by types.js with tsc --noEmit: the declarations in
// client/node/index.d.ts describe the API as extension code uses it, and
// refuse what the addon refuses. Never run.
import tally = require('../../client/node');
import type {
	LLMTokenUsage,
	SessionTokenUsage,
	TallyError,
	TokenCount,
	Usage,
} from '../../client/node';

// Without @types/node there is no console: values are given to this.
declare function use(...values: unknown[]): void;

const h: tally.Tally = tally.open();
const h2 = tally.open({ dir: '/tmp/x', queueMax: 10, closeTimeoutMs: 100 });
const h3 = new tally.Tally('/tmp/x');

const usage: Usage = {
	sessionId: 's',
	llmReferenceId: 'l',
	llmDisplayName: 'openAI - gpt-4o - 1',
	providerType: 'openAI',
	modelType: 'gpt-4o',
	inputTokens: 441,
	outputTokens: 106n,
	cacheReadTokens: 400,
	estimated: false,
};
h.record(usage);
h.record({ sessionId: 's', llmReferenceId: 'l', inputTokens: 1,
	   outputTokens: 0 });
h.recordResponse({ sessionId: 's', llmReferenceId: 'l',
		   providerType: 'anthropic' }, '{"usage":{}}');
h.recordResponse({ sessionId: 's', llmReferenceId: 'l',
		   providerType: 'openAI' }, { usage: { prompt_tokens: 1 } });
h.recordResponse({ sessionId: 's', llmReferenceId: 'l',
		   providerType: 'openAI' }, new Uint8Array(2));
h.recordText({ sessionId: 's', llmReferenceId: 'l' }, 'prompt', null);
h.sync();
h.sync(100);

const snap: SessionTokenUsage | null = h.getLLMTokenUsageForSession('s');
if (snap !== null) {
	for (const [llm, entry] of Object.entries(snap)) {
		const e: LLMTokenUsage = entry;
		const input: TokenCount = e.usage.inputTokens;
		const output: TokenCount = e.usage.outputTokens;
		const total: bigint = BigInt(input) + BigInt(output);
		use(llm, e.llmDisplayName, e.providerType, e.modelType,
			    total);
	}
}
const detailed = h.getLLMTokenUsageForSession('s', { details: true });
if (detailed !== null) {
	const calls: TokenCount = detailed['l'].details.calls;
	use(calls);
}

const pending: number = h.pending();
const stats: Record<string, TokenCount> = h.stats(500);
const n: TokenCount = tally.estimateTokens('gpt-4o', 'hello');
const m: TokenCount = h.estimateTokens(null, new Uint8Array(0));
const v: string = tally.version;
const max: number = tally.TOKENS_MAX + tally.ID_MAX + tally.NAME_MAX;
use(pending, stats, n, m, v, max);

try {
	h.record(usage);
} catch (err) {
	const e = err as TallyError;
	const code: string = e.code;
	const errno: number = e.errno;
	use(code, errno, e.message);
}

// What the declarations must refuse.
// @ts-expect-error: sessionId is required
h.record({ llmReferenceId: 'l', inputTokens: 1, outputTokens: 1 });
// @ts-expect-error: counts are numbers or BigInts
h.record({ ...usage, inputTokens: '5' });
// @ts-expect-error: recordResponse needs a provider type it can read
h.recordResponse({ sessionId: 's', llmReferenceId: 'l' }, '{}');
// @ts-expect-error: an unknown provider type
h.recordResponse({ ...usage, providerType: 'nope' }, '{}');
// @ts-expect-error: the snapshot may be null
h.getLLMTokenUsageForSession('s').x;
// @ts-expect-error: sync takes milliseconds
h.sync('1s');

h.close();
h2.close();
h3.close();
