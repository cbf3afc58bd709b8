// node serve_reuse.mjs FERRY WORKDIR [LAUNCHER...] [-- SERVE_FLAGS...]: prefix reuse through the official `openai`
// npm client. Two 8-turn conversations, their turns interleaved, against `ferry serve --parallel 2 --snapshot-every
// K`: each turn computes only what its conversation's session does not hold (the new turn, plus fewer than K tokens
// recomputed after a rewind), read from /metrics' cached and computed prompt-token counters; the answers are
// exactly those of a server with --prefix-reuse off (every prompt prefilled whole, greedy); the time to first token
// per turn of both servers is printed. With LAUNCHER (e.g. `mpiexec --oversubscribe -np 2`) the server with reuse
// runs under it, every rank a node of its own (--ranks-as-nodes), stopped with SIGUSR1 (what mpirun forwards),
// while the one without reuse is a single process: the ranks rewind their parts of a session together and answer
// as one process does. SERVE_FLAGS go to both servers (a placement: `--gpu sim:… --kv-type q8_0`; `--split …` is
// for ranks only and ignored by a single process). Fails (never skips) when tests/js/node_modules is missing.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
if (!fs.existsSync(path.join(here, 'node_modules', 'openai'))) {
  console.error('serve_reuse: tests/js/node_modules/openai is missing: run scripts/fetch-test-assets.sh');
  process.exit(1);
}
const { default: OpenAI } = await import('openai');

const [ferry, work, ...rest] = process.argv.slice(2);
const split = rest.includes('--') ? rest.indexOf('--') : rest.length;
const launcher = rest.slice(0, split), serveFlags = rest.slice(split + 1);
if (!ferry || !work) {
  console.error('usage: node serve_reuse.mjs FERRY WORKDIR [LAUNCHER...] [-- SERVE_FLAGS...]');
  process.exit(2);
}
fs.rmSync(work, { recursive: true, force: true });
const modelDir = path.join(work, 'tiny');
execFileSync(ferry, ['make-tiny', modelDir, '--seed', '11']);
// As a benchmark at a long context: FERRY_REUSE_WORDS words per message (default 3 × the turn), FERRY_REUSE_CTX
// context, FERRY_REUSE_K snapshot spacing.
const K = Number(process.env.FERRY_REUSE_K ?? 8), TURNS = 8;
const WORDS = Number(process.env.FERRY_REUSE_WORDS ?? 0), CTX = process.env.FERRY_REUSE_CTX ?? '4096';

// A server on a free port, under the launcher when `ranks`; resolves once it announced the port.
function startServer(flags, ranks) {
  const args = ['serve', '--model', modelDir, '--port', '0', '--ctx', CTX, '--parallel', '2', ...serveFlags, ...flags];
  const proc = ranks ? spawn(launcher[0], [...launcher.slice(1), ferry, ...args, '--ranks-as-nodes'],
                             { stdio: ['ignore', 'ignore', 'pipe'] })
                     : spawn(ferry, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const port = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no port announced in 60 s: ${log}`)), 60000);
    proc.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.on('exit', (code) => reject(new Error(`ferry serve exited with ${code}: ${log}`)));
  });
  return { proc, port, log: () => log, stopSignal: ranks ? 'SIGUSR1' : 'SIGTERM' };
}

async function counters(base) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const read = (name) => Number(text.match(new RegExp(`^${name} (\\S+)$`, 'm'))?.[1] ?? NaN);
  return { cached: read('ferry_prompt_tokens_cached_total'), computed: read('ferry_prompt_tokens_computed_total') };
}

// Plays both conversations, turn by turn, and returns per turn: the answer, usage, counters' deltas, TTFT.
async function converse(server) {
  const base = `http://127.0.0.1:${await server.port}`;
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60000 });
  const histories = [[{ role: 'system', content: 'You are terse.' }], [{ role: 'user', content: 'Count sheep.' },
    { role: 'assistant', content: 'One sheep.' }]];
  const turns = [];
  for (let t = 0; t < TURNS; ++t) {
    for (let c = 0; c < histories.length; ++c) {
      const messages = [...histories[c], { role: 'user', content: `Conversation ${c}, turn ${t}: ${'tell me more '.repeat(WORDS > 0 ? WORDS / 3 : t + 1)}` }];
      const before = await counters(base);
      const start = performance.now();
      let ttft = null, content = '', usage = null;
      const stream = await client.chat.completions.create({
        model: 'tiny', messages, max_tokens: 6, temperature: 0, stream: true, stream_options: { include_usage: true } });
      for await (const chunk of stream) {
        if (chunk.usage) usage = chunk.usage;
        for (const ch of chunk.choices) {
          if (ttft === null && ch.delta?.content) ttft = performance.now() - start;
          content += ch.delta?.content ?? '';
        }
      }
      const after = await counters(base);
      turns.push({ c, t, content, usage, ttft, cached: after.cached - before.cached, computed: after.computed - before.computed });
      histories[c] = [...messages, { role: 'assistant', content }];
    }
  }
  return turns;
}

let failed = false;
const results = {};
for (const [name, flags, ranks] of [['reuse', ['--snapshot-every', String(K)], launcher.length > 0],
                                    ['no-reuse', ['--prefix-reuse', 'off'], false]]) {
  const server = startServer(flags, ranks);
  try {
    results[name] = await converse(server);
  } catch (e) {
    failed = true;
    console.error(`FAIL ${name}: ${e.stack ?? e}\n--- ferry serve stderr ---\n${server.log()}`);
  }
  // A rank that failed (a follower refusing a rewind) ends the server with non-zero, even if answers came.
  const code = server.proc.exitCode ?? server.proc.signalCode ?? await new Promise((r) => {
    server.proc.on('exit', (c) => r(c));
    server.proc.kill(server.stopSignal);
  });
  if (code !== 0 && !failed) {
    failed = true;
    console.error(`FAIL ${name}: ferry serve exited with ${code}\n--- ferry serve stderr ---\n${server.log()}`);
  }
}

if (!failed) {
  try {
    const lastPrompt = [0, 0];
    console.log('conv turn  prompt  cached  computed  bound   TTFT reuse / no-reuse (ms)');
    results.reuse.forEach((r, i) => {
      const plain = results['no-reuse'][i];
      assert.equal(r.content, plain.content, `conversation ${r.c} turn ${r.t}: the answer differs without reuse`);
      assert.equal(r.cached + r.computed, r.usage.prompt_tokens, `conversation ${r.c} turn ${r.t}: the counters`);
      assert.equal(plain.cached, 0, 'no reuse with --prefix-reuse off');
      // What the session does not hold: the prompt past the previous turn's prompt (the answer, as re-encoded,
      // and the new message), plus fewer than K tokens recomputed back from the last snapshot.
      const bound = r.t === 0 ? r.usage.prompt_tokens : r.usage.prompt_tokens - lastPrompt[r.c] + K - 1;
      console.log(`${String(r.c).padStart(4)} ${String(r.t).padStart(4)} ${String(r.usage.prompt_tokens).padStart(7)} ` +
                  `${String(r.cached).padStart(7)} ${String(r.computed).padStart(9)} ${String(bound).padStart(6)}   ` +
                  `${r.ttft?.toFixed(1)} / ${plain.ttft?.toFixed(1)}`);
      assert.ok(r.computed <= bound, `conversation ${r.c} turn ${r.t}: computed ${r.computed} > ${bound}`);
      if (r.t > 0) assert.ok(r.cached >= lastPrompt[r.c] - K, `conversation ${r.c} turn ${r.t}: cached only ${r.cached}`);
      lastPrompt[r.c] = r.usage.prompt_tokens;
    });
  } catch (e) {
    failed = true;
    console.error(`FAIL ${e.stack ?? e}`);
  }
}
if (!failed) fs.rmSync(work, { recursive: true, force: true });
process.exit(failed ? 1 : 0);
