// Properties of the SDK's pure parts over many random cases (a seeded generator):
// delivery by seq, JSON made storable, backoff bounds, pacing under the rate limit.
import assert from "node:assert/strict";
import { test } from "node:test";
import { RealtimeClient, wellFormed } from "../src/client.mjs";
import { Bucket, backoff } from "../src/util.mjs";

function random(seed) { // mulberry32: the same cases on every run
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function offlineClient() { // on a platform with no network: nothing here opens a socket
  const platform = {
    name: "test", maxRequests: 1, connect: () => ({ send() {}, close() {} }), request: () => new Promise(() => {}),
    upload: () => new Promise(() => {}), storage: { get: () => null, set() {}, remove() {} }, watch: () => () => {},
  };
  return new RealtimeClient({ url: "http://127.0.0.1:9", platform });
}

test("whatever live pushes do (duplicates, reordering, gaps), messages are delivered once each, in seq order", () => {
  const rand = random(7);
  for (let run = 0; run < 300; run++) {
    const client = offlineClient();
    const delivered = [];
    const sub = { channel: "room:p", handlers: { message: (m) => delivered.push(m.seq) }, syncing: false };
    client.subs.set(sub.channel, sub);
    const total = 1 + Math.floor(rand() * 40);
    const start = Math.floor(rand() * 3); // a subscribe reply set the seq, or not yet
    if (start) client.seqs[sub.channel] = start - 1;
    let resyncs = 0;
    client._sync = (s) => { // the resubscribe's reply: every message after the last seen
      resyncs++;
      const last = client.seqs[s.channel] ?? 0;
      for (let seq = last + 1; seq <= total; seq++) client._accept(s, { channel: s.channel, seq, data: {} }, true);
    };
    const pushes = [];
    for (let seq = 1; seq <= total; seq++) {
      if (rand() < 0.2) continue; // lost
      pushes.push(seq);
      if (rand() < 0.2) pushes.push(seq); // doubled
      if (rand() < 0.1 && pushes.length > 2) pushes.push(pushes[Math.floor(rand() * pushes.length)]); // an old one again
    }
    for (const seq of pushes) client._onPush({ push: "message", message: { channel: sub.channel, seq, data: {} } });
    if ((client.seqs[sub.channel] ?? 0) < total) client._sync(sub); // the next reconnect
    const first = start ? start : delivered[0];
    assert.deepEqual(delivered, Array.from({ length: total - first + 1 }, (_, i) => first + i), `run ${run}: ${pushes}`);
    assert.ok(resyncs <= pushes.length + 1);
    client.close();
  }
});

test("published data is made well-formed (lone surrogates become U+FFFD) and its size is the server's", () => {
  const rand = random(11);
  const pieces = ["a", "\"", "\\", "/", "\n", "\u0001", "é", "中", "\u2028", "😀", "\ud83d", "\ude00", "\ufffd", "\\ud800", "ud800"];
  for (let run = 0; run < 2000; run++) {
    let text = "";
    for (let n = Math.floor(rand() * 12); n > 0; n--) text += pieces[Math.floor(rand() * pieces.length)];
    const input = { text, nested: { list: [text, 1] } };
    const { data, bytes } = wellFormed(input);
    const out = JSON.stringify(data);
    assert.ok(data.text.isWellFormed() && data.nested.list[0].isWellFormed(), JSON.stringify(text));
    assert.equal(bytes, Buffer.byteLength(out), JSON.stringify(text));
    if (text.isWellFormed()) assert.deepEqual(data, input);
    else assert.equal(data.text, text.toWellFormed());
  }
});

test("backoff stays within min(max, base × 2^attempt) × [0.5, 1.5]", () => {
  const rand = random(3);
  for (let attempt = 0; attempt < 60; attempt++) {
    const ceiling = Math.min(30000, 500 * 2 ** attempt);
    for (let i = 0; i < 50; i++) {
      const delay = backoff(attempt, 500, 30000, rand);
      assert.ok(delay >= Math.floor(ceiling * 0.5) && delay <= Math.ceil(ceiling * 1.5), `${attempt}: ${delay}`);
    }
  }
});

test("the command pacer never lets more through than its burst plus its rate", () => {
  const bucket = new Bucket(15, 30);
  let now = 1_000_000;
  bucket.at = now;
  const realNow = Date.now;
  Date.now = () => now;
  try {
    const rand = random(5);
    const sent = [];
    for (let i = 0; i < 5000; i++) {
      now += Math.floor(rand() * 40);
      if (bucket.wait() === 0) sent.push(now);
    }
    for (let i = 0; i < sent.length; i++) { // any window of one second: at most 30 + 15
      let j = i;
      while (j < sent.length && sent[j] - sent[i] < 1000) j++;
      assert.ok(j - i <= 45, `${j - i} commands in a second`);
    }
  } finally {
    Date.now = realNow;
  }
});

test("dist/index.js (CommonJS, for WeChat's npm build) and dist/index.mjs export the same calls", async () => {
  const { createRequire } = await import("node:module");
  const cjs = createRequire(import.meta.url)("../dist/index.js");
  const esm = await import("../dist/index.mjs");
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  assert.deepEqual(Object.keys(esm).sort(),
    ["RealtimeClient", "SdkError", "browser", "createClient", "detect", "miniProgram", "taro", "uniApp", "wechat"]);
  assert.equal(typeof cjs.createClient, "function");
});
