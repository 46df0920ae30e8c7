'use strict';
// A fan-out load generator in Node: one process holding many subscribed sessions.
//
//     node bench/loadgen.js '{"url": "ws://127.0.0.1:PORT/ws", "tokens": [...], "sessions": 3334,
//                             "channel": "feed:bench", "sample_every": 10, "seconds": 600}'
//
// It does what bench/loadgen.py does in its "ours" dialect for the fan-out and
// storm benches (connect, upgrade, subscribe, answer pings, count every delivered
// message by its seq, time a sample of deliveries from the publisher's data.t;
// drop every session at once, then reconnect each with `since` its last seq and
// time until all have every missed message), at a fraction of the CPU: Python's per-frame parsing cost the load generators
// five to eight times the server's CPU per delivery, so on this 2-core machine
// they, not the server, bound the comparison of one server process with two.
//
// No dependencies: RFC 6455 over node:net (a client library's per-message
// objects and events would cost more than the parsing). Driven by JSON lines:
// it writes {"kind":"ready",...} once every session has subscribed or failed,
// then answers "report" on stdin with {"kind":"report",...} (the counts since
// the last report), "drop" with {"kind":"dropped",...} and "reconnect SEQ" with
// {"kind":"storm",...} once every session is back with every message up to SEQ,
// and exits on "stop", on stdin's end or after `seconds`.
//
// It connects from 127.0.0.1 with ports the kernel picks at connect (Node cannot
// bind a source address without taking a port at bind time, which a reconnect
// storm's thousands of TIME_WAIT ports made slow): up to about 28,000 sessions
// to one server port over all processes. Bounded: it connects only to loopback,
// at most CONNECTING handshakes at a time, and a session not subscribed
// OPEN_SECONDS after its connect fails.

const net = require('node:net');
const crypto = require('node:crypto');
const readline = require('node:readline');
const { performance } = require('node:perf_hooks');

const CONNECTING = 64; // handshakes in flight: the ramp measures the server, not a queue
const OPEN_SECONDS = 120; // a session not subscribed this long after its connect counts as failed
const SEQ = Buffer.from('"seq":');
const T = Buffer.from('"t":');
const MESSAGES = Buffer.from('"messages":[');
const SUBSCRIBED = Buffer.from('{"id":0,"result":'); // the start of a successful subscribe reply
const SCAN = 300; // a push's seq is in its first bytes (the frame's own envelope)

const config = JSON.parse(process.argv[2]);
const url = new URL(config.url);
if (!['127.0.0.1', 'localhost'].includes(url.hostname)) {
  throw new Error('the load generator connects to loopback only');
}
const host = '127.0.0.1';
const port = Number(url.port || 80);
const path = url.pathname + url.search;
const tokens = config.tokens.length ? config.tokens : [''];
const sampleEvery = Math.max(1, config.sample_every | 0);

function fresh() {
  return { opened: 0, failed: 0, closed: 0, deliveries: 0, doubled: 0, skipped: 0, latencies: [],
           by_seq: [], why_failed: {} }; // by_seq: seq -> sessions that received it (seqs are dense)
}

function find(buffer, needle, from, to) { // indexOf within [from, to): a byte loop the JIT compiles beats
  const first = needle[0]; //                 a native call per frame on these short scans
  const last = to - needle.length;
  outer: for (let i = from; i <= last; i++) {
    if (buffer[i] !== first) continue;
    for (let j = 1; j < needle.length; j++) if (buffer[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

let counts = fresh();

function now() { // epoch seconds, sub-millisecond (the publisher's data.t is Python's time.time())
  return (performance.timeOrigin + performance.now()) / 1000;
}

function frame(opcode, payload) { // a client frame, masked as RFC 6455 requires of clients
  const size = payload.length;
  const head = size < 126 ? 2 : size < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(head + 4 + size);
  out[0] = 0x80 | opcode;
  if (size < 126) {
    out[1] = 0x80 | size;
  } else if (size < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(size, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(size), 2);
  }
  const mask = crypto.randomBytes(4);
  mask.copy(out, head);
  for (let i = 0; i < size; i++) out[head + 4 + i] = payload[i] ^ mask[i & 3];
  return out;
}

class Session {
  constructor(token, last = 0) {
    this.token = token;
    this.socket = null;
    this.buffer = null; // bytes not yet parsed
    this.upgraded = false;
    this.settled = false; // subscribed or failed
    this.started = 0; // when its connect began (ms, monotonic)
    this.last = last; // newest seq received: a reconnect asks for what follows it
    this.behind = false; // not yet at the storm's target seq
  }

  connect() {
    this.started = performance.now();
    const socket = net.connect({ host, port, noDelay: true });
    this.socket = socket;
    socket.on('connect', () => {
      const key = crypto.randomBytes(16).toString('base64');
      const lines = [`GET ${path} HTTP/1.1`, `Host: ${host}:${port}`, 'Upgrade: websocket', 'Connection: Upgrade',
                     `Sec-WebSocket-Key: ${key}`, 'Sec-WebSocket-Version: 13'];
      if (this.token) lines.push(`Authorization: Bearer ${this.token}`);
      socket.write(lines.join('\r\n') + '\r\n\r\n');
    });
    socket.on('data', (data) => this.received(data));
    socket.on('error', (error) => {
      if (!this.settled) this.settle(false, `connection lost before subscribing (${error.code || error.message})`);
    });
    socket.on('close', () => {
      if (!this.settled) {
        this.settle(false, 'connection lost before subscribing (closed)');
      } else if (!stopping) {
        counts.closed += 1;
        if (this.behind) { // closed before it had every missed message: its shortfall counts as lost
          this.behind = false;
          caughtUp();
        }
      }
    });
  }

  received(data) {
    let buffer = this.buffer === null ? data : Buffer.concat([this.buffer, data]);
    if (!this.upgraded) {
      const end = buffer.indexOf('\r\n\r\n');
      if (end < 0) {
        this.buffer = buffer;
        return;
      }
      if (buffer.toString('latin1', 0, 12) !== 'HTTP/1.1 101') {
        this.buffer = null;
        this.fail(buffer.toString('latin1', 0, buffer.indexOf('\r\n')) + ' '
                  + buffer.toString('utf8', end + 4, end + 164));
        return;
      }
      this.upgraded = true;
      buffer = buffer.subarray(end + 4);
      const command = { id: 0, op: 'subscribe', channel: config.channel };
      if (this.last) command.since = this.last;
      this.send(1, Buffer.from(JSON.stringify(command)));
    }
    const size = buffer.length;
    let position = 0;
    while (size - position >= 2) {
      let length = buffer[position + 1] & 0x7f;
      let start = position + 2;
      if (length === 126) {
        if (size < start + 2) break;
        length = buffer.readUInt16BE(start);
        start += 2;
      } else if (length === 127) {
        if (size < start + 8) break;
        length = Number(buffer.readBigUInt64BE(start));
        start += 8;
      }
      const end = start + length;
      if (end > size) break;
      const opcode = buffer[position] & 0x0f;
      position = end;
      if (opcode === 1) {
        this.text(buffer, start, end);
      } else if (opcode === 9) {
        this.send(10, buffer.subarray(start, end));
      } else if (opcode === 8) {
        if (!this.settled) {
          const code = length >= 2 ? buffer.readUInt16BE(start) : 0;
          this.fail(`closed ${code} before subscribing: ${buffer.toString('utf8', start + 2, end)}`);
        }
        this.socket.end();
      }
    }
    // the rest is copied, so that a big read is not kept alive by its last few bytes
    this.buffer = position < size ? Buffer.from(buffer.subarray(position)) : null;
  }

  text(buffer, start, end) {
    if (buffer[start + 2] === 0x69 && buffer[start + 3] === 0x64) { // {"id": a reply (pushes start {"push")
      this.reply(buffer, start, end);
      return;
    }
    const at = find(buffer, SEQ, start, Math.min(end, start + SCAN));
    if (at < 0) return; // presence and other pushes
    let digit = at + SEQ.length;
    while (buffer[digit] === 32) digit++; // Tornado's JSON puts a space after the colon
    let seq = 0;
    for (let c = buffer[digit]; c >= 48 && c <= 57; c = buffer[++digit]) seq = seq * 10 + (c - 48);
    let sent = null;
    if (counts.deliveries % sampleEvery === 0) {
      const t = find(buffer, T, start, end);
      if (t >= 0) sent = parseFloat(buffer.toString('latin1', t + T.length, Math.min(end, t + 40)));
    }
    this.message(seq, sent);
  }

  reply(buffer, start, end) {
    // A subscribe reply, {"id":0,"result":{"channel":..,"seq":N,..,"messages":[..]}}, scanned as
    // bench/loadgen.py's replay_seqs does rather than decoded (up to RECOVERY_MAX messages each).
    if (this.settled) return; // no other command is sent
    const messages = find(buffer, MESSAGES, start, end);
    if (find(buffer, SUBSCRIBED, start, start + SUBSCRIBED.length) !== start || messages < 0) {
      this.fail(`subscribe refused: ${buffer.toString('utf8', start, Math.min(end, start + 160))}`);
      return;
    }
    let current = -1;
    for (let at = find(buffer, SEQ, start, end); at >= 0; at = find(buffer, SEQ, at + SEQ.length, end)) {
      let digit = at + SEQ.length;
      while (buffer[digit] === 32) digit++;
      let seq = 0;
      for (let c = buffer[digit]; c >= 48 && c <= 57; c = buffer[++digit]) seq = seq * 10 + (c - 48);
      if (at < messages) {
        if (current < 0) current = seq; // the channel's seq, before the messages
      } else {
        this.message(seq, null); // a replayed message
      }
    }
    if (current < 0) {
      this.fail('subscribe reply without its seq');
      return;
    }
    if (this.last && current > this.last) counts.skipped += current - this.last;
    this.last = Math.max(this.last, current);
    this.settle(true);
    this.checkTarget();
  }

  checkTarget() {
    if (this.behind && this.last >= target) {
      this.behind = false;
      caughtUp();
    }
  }

  message(seq, sent) {
    counts.deliveries += 1;
    const bySeq = counts.by_seq;
    bySeq[seq] = (bySeq[seq] || 0) + 1;
    if (sent !== null) counts.latencies.push(now() - sent);
    if (seq <= this.last) {
      counts.doubled += 1;
      return;
    }
    if (this.last && seq > this.last + 1) counts.skipped += seq - this.last - 1;
    this.last = seq;
    if (this.behind && seq >= target) this.checkTarget();
  }

  send(opcode, payload) {
    if (this.socket && !this.socket.destroyed) this.socket.write(frame(opcode, payload));
  }

  fail(why) {
    if (!this.settled) this.settle(false, why);
    if (this.socket) this.socket.destroy();
  }

  settle(ok, why) {
    this.settled = true;
    connecting.delete(this);
    if (ok) {
      counts.opened += 1;
      sessions.push(this);
    } else {
      counts.failed += 1;
      counts.why_failed[why] = (counts.why_failed[why] || 0) + 1;
      if (this.behind) {
        this.behind = false;
        caughtUp();
      }
    }
    connectMore();
  }
}

const waiting = Array.from({ length: config.sessions }, (_, i) => new Session(tokens[i % tokens.length]));
const connecting = new Set();
let sessions = [];
let begun = performance.now();
let stopping = false; // closing every session on purpose (stop, or a storm's drop)
let ready = false; // the current opening was reported
let target = 0; // the seq every session must reach (reconnect storm)
let behind = 0; // sessions not yet at target
let stormStarted = 0; // when the reconnect began (epoch seconds)
let allCaughtUp = 0; // when the last session reached target (epoch seconds)

function write(message) {
  process.stdout.write(JSON.stringify(message) + '\n');
}

function connectMore() {
  while (connecting.size < CONNECTING && waiting.length) {
    const session = waiting.pop();
    connecting.add(session);
    session.connect();
  }
  if (!connecting.size && !ready) {
    ready = true;
    if (target) {
      reportStorm();
    } else {
      write({ kind: 'ready', opened: counts.opened, failed: counts.failed,
              seconds: (performance.now() - begun) / 1000, why_failed: counts.why_failed });
    }
  }
}

function caughtUp() {
  behind -= 1;
  if (behind === 0) allCaughtUp = now();
  reportStorm();
}

function reportStorm() { // the storm's report, once every session is open and at target (or failed)
  if (!ready || behind > 0 || !target) return;
  const lost = sessions.reduce((sum, session) => sum + Math.max(0, target - session.last), 0) + counts.skipped;
  write({ kind: 'storm', opened: counts.opened, failed: counts.failed, start: stormStarted,
          caught_up: allCaughtUp || now(), lost, doubled: counts.doubled, deliveries: counts.deliveries,
          why_failed: counts.why_failed });
  target = 0;
}

function closeAll() { // closes every session at once; their closes are not counted as the server's
  stopping = true;
  for (const session of sessions) session.socket.destroy();
}

function drop() { // the client side of a reconnect storm
  closeAll();
  setTimeout(() => write({ kind: 'dropped', sessions: sessions.length }), 500);
}

function reconnect(seq) { // reopens every dropped session with since its last seq
  stopping = false;
  counts = fresh();
  target = seq;
  stormStarted = now();
  allCaughtUp = 0;
  const reopened = sessions.map((session) => new Session(session.token, session.last));
  sessions = [];
  behind = reopened.length;
  for (const session of reopened) session.behind = true;
  waiting.push(...reopened.reverse()); // popped from the end: the original order
  ready = false;
  begun = performance.now();
  connectMore();
}

const expiry = setInterval(() => { // fails the sessions too long unsubscribed (a guard)
  const limit = performance.now() - OPEN_SECONDS * 1000;
  for (const session of [...connecting]) {
    if (session.started < limit) session.fail(`not subscribed ${OPEN_SECONDS} s after its connect`);
  }
}, OPEN_SECONDS * 250);
expiry.unref();

function stop() {
  closeAll();
  setTimeout(() => process.exit(0), 200);
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'report') {
    const bySeq = {};
    counts.by_seq.forEach((n, seq) => { bySeq[seq] = n; }); // skips the holes
    const report = { kind: 'report', ...counts, by_seq: bySeq };
    counts = fresh();
    write(report);
  } else if (line === 'stop') {
    stop();
  } else if (line === 'drop') {
    drop();
  } else if (line.startsWith('reconnect ')) {
    reconnect(Number(line.slice(10)));
  }
}).on('close', stop);
setTimeout(stop, config.seconds * 1000).unref();
connectMore();
