// node serve_e2e.mjs FERRY WORKDIR [LAUNCHER...] [-- SERVE_FLAGS...]: `ferry serve` on a tiny model, spoken to by
// the official `openai` npm client; with LAUNCHER (e.g. `mpiexec --oversubscribe -np 2`) the server runs under it,
// every rank a node holding its share of the experts (--ranks-as-nodes), and is stopped with SIGUSR1 (what mpirun
// forwards); SERVE_FLAGS go to `ferry serve` (a placement: `--gpu sim:… --kv-type q8_0`).
// (a) a chat completion, (b) the same streamed, (c) a tools + thinking request whose prompt is DeepSeek's own
// encoding of it (test vector 1), (d) usage counts, (e) /v1/models, (f) 16 clients at once, (g) a client that
// aborts mid-stream, (h) malformed requests answered 400 — the server serving on after each — and a graceful
// SIGTERM. Fails (never skips) when tests/js/node_modules is missing.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
if (!fs.existsSync(path.join(here, 'node_modules', 'openai'))) {
  console.error('serve_e2e: tests/js/node_modules/openai is missing: run scripts/fetch-test-assets.sh');
  process.exit(1);
}
const { default: OpenAI } = await import('openai');

const [ferry, work, ...rest] = process.argv.slice(2);
const split = rest.includes('--') ? rest.indexOf('--') : rest.length;
const launcher = rest.slice(0, split), serveFlags = rest.slice(split + 1);
if (!ferry || !work) {
  console.error('usage: node serve_e2e.mjs FERRY WORKDIR [LAUNCHER...] [-- SERVE_FLAGS...]');
  process.exit(2);
}
fs.rmSync(work, { recursive: true, force: true });
const modelDir = path.join(work, 'tiny');
execFileSync(ferry, ['make-tiny', modelDir]);
const CTX = 4096;  // the tools prompt below is ~1,600 tiny-tokenizer tokens
const vectors = path.join(here, '..', 'data', 'deepseek-v4-flash', 'encoding-tests');

// Token count of `text` with the model's tokenizer, from `ferry tokenize` (no BOS added: the texts carry it).
const countTokens = (text) => JSON.parse(execFileSync(ferry, ['tokenize', '-m', modelDir], { input: text })).length;

const serveArgs = ['serve', '--model', modelDir, '--port', '0', '--ctx', String(CTX), '--parallel', '4',
                   ...serveFlags];
const ranks = launcher.length > 0;
const server = spawn(ranks ? launcher[0] : ferry,
                     ranks ? [...launcher.slice(1), ferry, ...serveArgs, '--ranks-as-nodes'] : serveArgs,
                     { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, FERRY_LOG_LEVEL: 'info' } });
const stopSignal = ranks ? 'SIGUSR1' : 'SIGTERM';
let serverLog = '';
const port = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no port announced in 60 s: ${serverLog}`)), 60000);
  server.stderr.on('data', (d) => {
    serverLog += d;
    const m = serverLog.match(/on http:\/\/127\.0\.0\.1:(\d+)/);
    if (m) {
      clearTimeout(timer);
      resolve(Number(m[1]));
    }
  });
  server.on('exit', (code) => reject(new Error(`ferry serve exited with ${code}: ${serverLog}`)));
});
const base = `http://127.0.0.1:${port}`;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60000 });

const BOS = '<｜begin▁of▁sentence｜>';
const hello = [{ role: 'user', content: 'Hello, who are you?' }];

async function streamText(params, options) {
  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } },
                                                      options);
  let content = '', finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    ++chunks;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      content += c.delta?.content ?? '';
      finish = c.finish_reason ?? finish;
    }
  }
  return { content, finish, usage, chunks };
}

async function expectStatus(promise, status, what) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.status, status, `${what}: ${e}`);
    assert.ok(e.error?.message, `${what}: an error body with a message`);
    return e;
  }
  assert.fail(`${what}: expected HTTP ${status}`);
}

async function stillServes() {
  const r = await client.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 2, temperature: 0 });
  assert.equal(r.usage.completion_tokens, 2);
}

const steps = {
  async 'a, d: a chat completion and its usage'() {
    const r = await client.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 16, temperature: 0,
                                                     seed: 7 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.model, 'tiny');
    const choice = r.choices[0];
    assert.equal(choice.message.role, 'assistant');
    assert.equal(typeof choice.message.content, 'string');
    // V4 chat mode, encoded by hand: the server must count exactly these tokens.
    const prompt = `${BOS}<｜User｜>Hello, who are you?<｜Assistant｜></think>`;
    assert.equal(r.usage.prompt_tokens, countTokens(prompt));
    if (choice.finish_reason === 'length') assert.equal(r.usage.completion_tokens, 16);
    else assert.ok(choice.finish_reason === 'stop' && r.usage.completion_tokens <= 16, JSON.stringify(r));
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
    return r;
  },

  async 'b: streamed deltas join to the non-streamed answer'(first) {
    const s = await streamText({ model: 'tiny', messages: hello, max_tokens: 16, temperature: 0, seed: 7 });
    assert.equal(s.content, first.choices[0].message.content);
    assert.equal(s.finish, first.choices[0].finish_reason);
    assert.deepEqual(s.usage, first.usage);
    assert.ok(s.chunks >= 3, `${s.chunks} chunks`);
  },

  async 'c: tools and thinking are encoded as DeepSeek encodes them'() {
    // DeepSeek's test vector 1 up to the tool result: its expected text, cut where the generation prompt ends.
    const input = JSON.parse(fs.readFileSync(path.join(vectors, 'test_input_1.json'), 'utf8'));
    const output = fs.readFileSync(path.join(vectors, 'test_output_1.txt'), 'utf8');
    const cut = '</tool_result><｜Assistant｜><think>';
    const expected = output.slice(0, output.indexOf(cut) + cut.length);
    assert.ok(expected.includes('<｜DSML｜tool_calls>') && expected.endsWith(cut));
    const r = await client.chat.completions.create({
      model: 'tiny', messages: input.messages.slice(0, 4), tools: input.tools, max_tokens: 4, temperature: 0,
      chat_template_kwargs: { thinking: true },
    });
    assert.equal(r.usage.prompt_tokens, countTokens(expected));
    // The count has teeth: the same prompt with the tool schemas' keys sorted (what a JSON library that sorts
    // keys would write) has another count.
    const sortKeys = (v) => (Array.isArray(v) ? v.map(sortKeys)
      : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])])) : v);
    const pyJson = (v) => JSON.stringify(v).replaceAll('","', '", "').replaceAll('":', '": ')
      .replaceAll(',"', ', "');
    let sorted = expected;
    for (const t of input.tools) sorted = sorted.replace(pyJson(t.function), pyJson(sortKeys(t.function)));
    assert.notEqual(sorted, expected, 'the schema lines were found in the expected text');
    assert.notEqual(countTokens(sorted), r.usage.prompt_tokens);
    assert.ok(['stop', 'length', 'tool_calls'].includes(r.choices[0].finish_reason));
  },

  async 'e: /v1/models lists the model'() {
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
  },

  async 'f: 16 clients at once all get complete answers'() {
    const asks = Array.from({ length: 16 }, (_, i) => {
      const params = { model: 'tiny', messages: [{ role: 'user', content: `Client ${i} says hi` }], max_tokens: 12,
                       temperature: 0.8, seed: i };
      if (i % 2) return streamText(params);
      return client.chat.completions.create(params).then((r) => ({ content: r.choices[0].message.content,
                                                                   finish: r.choices[0].finish_reason,
                                                                   usage: r.usage }));
    });
    for (const a of await Promise.all(asks)) {
      assert.ok(['stop', 'length'].includes(a.finish), JSON.stringify(a));
      assert.ok(a.usage.completion_tokens > 0 && a.usage.completion_tokens <= 12, JSON.stringify(a));
      if (a.finish === 'length') assert.equal(a.usage.completion_tokens, 12);
    }
  },

  async 'g: a client aborting mid-stream disturbs no one'() {
    const controller = new AbortController();
    const long = (async () => {
      const stream = await client.chat.completions.create(
        { model: 'tiny', messages: hello, max_tokens: 900, temperature: 1, seed: 3, stream: true },
        { signal: controller.signal });
      let chunks = 0;
      // The client's stream just ends when its request is aborted (after the chunks it had already read).
      for await (const _ of stream) if (++chunks === 5) controller.abort();
      return chunks;
    })();
    const others = Array.from({ length: 3 }, (_, i) => client.chat.completions.create(
      { model: 'tiny', messages: [{ role: 'user', content: `Bystander ${i}` }], max_tokens: 20, temperature: 0 }));
    const chunks = await long;
    assert.ok(chunks >= 5 && chunks < 100, `${chunks} chunks`);
    for (const r of await Promise.all(others)) assert.ok(r.usage.completion_tokens > 0);
    await stillServes();
    // The server noticed (it says so at log level info) and stopped long before the 900 tokens.
    const leftAfter = /client left after (\d+) tokens; generation cancelled/;
    for (let i = 0; i < 50 && !leftAfter.test(serverLog); ++i) await new Promise((r) => setTimeout(r, 100));
    const left = serverLog.match(leftAfter);
    assert.ok(left && Number(left[1]) < 900, serverLog);
  },

  async 'h: malformed requests get 400s with error bodies'() {
    const bad = await fetch(`${base}/v1/chat/completions`,
                            { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"model": "tiny", ' });
    assert.equal(bad.status, 400);
    assert.ok((await bad.json()).error.message.includes('JSON'));
    await expectStatus(client.chat.completions.create({ model: 'tiny', messages: 'hi' }), 400, 'messages a string');
    await expectStatus(client.chat.completions.create({ model: 'tiny', messages: hello, temperature: 'hot' }), 400,
                       'temperature a string');
    const negative = await expectStatus(client.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: -1 }),
                                        400, 'negative max_tokens');
    assert.equal(negative.param, 'max_tokens');
    const long = [{ role: 'user', content: 'many words '.repeat(CTX) }];
    const over = await expectStatus(client.chat.completions.create({ model: 'tiny', messages: long }), 400,
                                    'a prompt over the context');
    assert.equal(over.code, 'context_length_exceeded');
    await expectStatus(client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: CTX }), 400,
                       'max_tokens beyond the context');
    await stillServes();
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /ferry_host_memory_bytes\{kind="kv_cache"\} [1-9]/);
    assert.match(metrics, /ferry_requests_total\{status="400"\} [1-9]/);
  },
};

let failed = false;
try {
  let previous;
  for (const [name, step] of Object.entries(steps)) {
    const t0 = Date.now();
    previous = await step(previous);
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  }
} catch (e) {
  failed = true;
  console.error(`FAIL ${e.stack ?? e}\n--- ferry serve stderr ---\n${serverLog}`);
}
if (ranks && !/rank 1 \([^)]*\): .*experts \d+-\d+ of layer/.test(serverLog)) {
  failed = true;
  console.error(`rank 1 holds no experts:\n${serverLog}`);
}
const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({ code, signal })));
server.kill(stopSignal);
const { code } = await Promise.race([exited, new Promise((r) => setTimeout(() => r({ code: 'timeout' }), 30000))]);
if (code !== 0) {
  failed = true;
  console.error(`ferry serve did not exit 0 after ${stopSignal}: ${code}\n${serverLog}`);
}
if (!failed) fs.rmSync(work, { recursive: true, force: true });
process.exit(failed ? 1 : 0);
