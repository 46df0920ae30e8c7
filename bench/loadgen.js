'use strict';
// A fan-out load generator in Node: one process holding many subscribed sessions.
//
//     node bench/loadgen.js '{"url": "ws://127.0.0.1:PORT/ws", "tokens": [...], "sessions": 3334,
//                             "channel": "feed:bench", "sample_every": 10, "source": "127.0.0.2",
//                             "seconds": 600}'
//
// It does what bench/loadgen.py does in its "ours" dialect for the fan-out
// benches (connect, upgrade, subscribe, answer pings, count every delivered
// message by its seq, time a sample of deliveries from the publisher's data.t),
// at a fraction of the CPU: Python's per-frame parsing cost the load generators
// five to eight times the server's CPU per delivery, so on this 2-core machine
// they, not the server, bound the comparison of one server process with two.
//
// No dependencies: RFC 6455 over node:net (a client library's per-message
// objects and events would cost more than the parsing). Driven by JSON lines:
// it writes {"kind":"ready",...} once every session has subscribed or failed,
// then answers "report" on stdin with {"kind":"report",...} (the counts since
// the last report) and exits on "stop", on stdin's end or after `seconds`.
// Bounded: it connects only to loopback, at most CONNECTING handshakes at a
// time, and a session not subscribed OPEN_SECONDS after its connect fails.

const net = require('node:net');
const crypto = require('node:crypto');
const readline = require('node:readline');
const { performance } = require('node:perf_hooks');

const CONNECTING = 64; // handshakes in flight: the ramp measures the server, not a queue
const OPEN_SECONDS = 120; // a session not subscribed this long after its connect counts as failed
const SEQ = Buffer.from('"seq":');
const T = Buffer.from('"t":');
const REPLY = Buffer.from('{"id"');
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
           by_seq: new Map(), why_failed: {} };
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
  constructor(token) {
    this.token = token;
    this.socket = null;
    this.buffer = null; // bytes not yet parsed
    this.upgraded = false;
    this.settled = false; // subscribed or failed
    this.started = 0; // when its connect began (ms, monotonic)
    this.last = 0; // newest seq received
  }

  connect() {
    this.started = performance.now();
    const socket = net.connect({ host, port, localAddress: config.source, noDelay: true });
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
      if (!this.settled) this.settle(false, 'connection lost before subscribing (closed)');
      else if (!stopping) counts.closed += 1;
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
      this.send(1, Buffer.from(JSON.stringify({ id: 0, op: 'subscribe', channel: config.channel })));
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
    if (buffer.compare(REPLY, 0, REPLY.length, start, start + REPLY.length) === 0) {
      this.reply(buffer.toString('utf8', start, end));
      return;
    }
    const at = buffer.indexOf(SEQ, start);
    if (at < 0 || at >= Math.min(end, start + SCAN)) return; // presence and other pushes
    let digit = at + SEQ.length;
    while (buffer[digit] === 32) digit++; // Tornado's JSON puts a space after the colon
    let seq = 0;
    for (let c = buffer[digit]; c >= 48 && c <= 57; c = buffer[++digit]) seq = seq * 10 + (c - 48);
    let sent = null;
    if (counts.deliveries % sampleEvery === 0) {
      const t = buffer.indexOf(T, start);
      if (t >= 0 && t < end) sent = parseFloat(buffer.toString('latin1', t + T.length, Math.min(end, t + 40)));
    }
    this.message(seq, sent);
  }

  reply(text) {
    const reply = JSON.parse(text);
    if (reply.id !== 0 || this.settled) return; // no other command is sent
    if (!reply.result) {
      this.fail(`subscribe refused: ${text.slice(0, 160)}`);
      return;
    }
    for (const message of reply.result.messages || []) this.message(message.seq, null);
    this.last = Math.max(this.last, reply.result.seq);
    this.settle(true);
  }

  message(seq, sent) {
    counts.deliveries += 1;
    counts.by_seq.set(seq, (counts.by_seq.get(seq) || 0) + 1);
    if (sent !== null) counts.latencies.push(now() - sent);
    if (seq <= this.last) {
      counts.doubled += 1;
      return;
    }
    if (this.last && seq > this.last + 1) counts.skipped += seq - this.last - 1;
    this.last = seq;
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
    }
    connectMore();
  }
}

const waiting = Array.from({ length: config.sessions }, (_, i) => new Session(tokens[i % tokens.length]));
const connecting = new Set();
const sessions = [];
const begun = performance.now();
let stopping = false;
let ready = false;

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
    clearInterval(expiry);
    write({ kind: 'ready', opened: counts.opened, failed: counts.failed,
            seconds: (performance.now() - begun) / 1000, why_failed: counts.why_failed });
  }
}

const expiry = setInterval(() => { // fails the sessions too long unsubscribed (a guard)
  const limit = performance.now() - OPEN_SECONDS * 1000;
  for (const session of [...connecting]) {
    if (session.started < limit) session.fail(`not subscribed ${OPEN_SECONDS} s after its connect`);
  }
}, OPEN_SECONDS * 250);

function stop() {
  stopping = true;
  for (const session of sessions) session.socket.destroy();
  setTimeout(() => process.exit(0), 200);
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'report') {
    const report = { kind: 'report', ...counts, by_seq: Object.fromEntries(counts.by_seq) };
    counts = fresh();
    write(report);
  } else if (line === 'stop') {
    stop();
  }
}).on('close', stop);
setTimeout(stop, config.seconds * 1000).unref();
connectMore();
