// The client: subscriptions with recovery by seq, the persisted outbox of
// publishes, records with idempotency keys, uploads, and the app's lifecycle.

import { Tokens } from "./auth.mjs";
import { Connection } from "./connection.mjs";
import { detect } from "./platforms.mjs";
import { Emitter, Limiter, SdkError, Store, backoff, httpError, randomId, sleep } from "./util.mjs";

const CHANNEL = /^(room|feed|user):[A-Za-z0-9_-]{1,64}$/;
const MAX_DATA_BYTES = 16 * 1024;
const RETRY_PUBLISH = ["internal", "unavailable", "rate_limited", "disconnected"]; // stay queued, or subscribe again
const DEFAULTS = {
  storagePrefix: "mpr:", reconnectBase: 500, reconnectMax: 30000, healthyAfter: 15000, pingInterval: 20000,
  pingTimeout: 10000, openTimeout: 15000, commandTimeout: 15000, outboxLimit: 200, outboxBytes: 900 * 1024,
  recordsBytes: 900 * 1024, publishWindow: 8,
  requestRetries: 3, retryBase: 500, autoSignIn: true,
};

export class RealtimeClient extends Emitter {
  constructor(options) {
    super();
    if (!options || !options.url) throw new SdkError("invalid_options", "options.url (the server's https:// base) is required");
    this.options = { ...DEFAULTS, ...options }; // the settings, with defaults
    this.url = options.url.replace(/\/+$/, ""); // https://api.example.com
    this.platform = options.platform || detect(); // the adapter
    this.store = new Store(this.platform.storage, this.options.storagePrefix); // persisted state
    this.limiter = new Limiter(this.platform.maxRequests || 8); // HTTP requests at once
    this.closed = false; // close() was called
    this.subs = new Map(); // channel -> {channel, handlers, last, syncing}
    this.seqs = {}; // channel -> last seq seen (persisted per user)
    this.outbox = []; // [{cid, channel, data, sent}]: publishes not yet acknowledged (persisted)
    this.waiting = new Map(); // cid -> {resolve, reject} of publish() calls of this object
    this.records = []; // [{key, kind, body}]: records not yet acknowledged (persisted)
    this.tokens = new Tokens(this); // access and refresh tokens
    this.connection = new Connection(this); // the socket
    this._seqTimer = null; // writes seqs to storage shortly after they change
    this._unwatch = this.platform.watch({
      show: () => this.connection.pause(false), hide: () => this._hide(),
      network: (online) => this.connection.setOnline(online),
    }); // stops watching app and network events
    this._loadUser();
  }

  get state() {
    return this.connection.state;
  }

  get user() {
    return this.tokens.user || null;
  }

  // -- signing in -----------------------------------------------------------------------

  /** Signs in (wx.login, or `{dev: name}` in development); tokens are kept in storage. */
  async signIn(options) {
    const before = this.user && this.user.id;
    const user = await this.tokens.signIn(options);
    if (user.id !== before) this._loadUser();
    this.connection.wake();
    return user;
  }

  get signedIn() {
    return !!this.tokens.current;
  }

  /** Ends the session on the server and here; the socket closes. */
  async signOut() {
    this.connection.stop(1000, "signed out");
    await this.tokens.signOut();
    this.emit("signedOut", { reason: "signed out" });
  }

  _loadUser() {
    const user = this.user;
    this.seqs = (user && this.store.get("seqs:" + user.id)) || {};
    this.outbox = ((user && this.store.get("outbox:" + user.id)) || []).map((entry) => ({
      ...entry, sent: false, size: storedSize(entry.channel, entry.cid, wellFormed(entry.data).bytes),
    }));
    this.records = ((user && this.store.get("records:" + user.id)) || []).map((entry) => ({ ...entry, size: recordSize(entry) }));
    if (user && (this.outbox.length || this.records.length)) {
      this.connection.wanted = true;
      setTimeout(() => this._resendRecords(), 0);
      this.connection.wake();
    }
  }

  _save(what) {
    const user = this.user;
    if (!user) return;
    if (what === "outbox") this.store.set("outbox:" + user.id, this.outbox.map(({ cid, channel, data }) => ({ cid, channel, data })));
    else if (what === "records") this.store.set("records:" + user.id, this.records.map(({ key, kind, body }) => ({ key, kind, body })));
    else this.store.set("seqs:" + user.id, this.seqs);
  }

  // -- the connection -------------------------------------------------------------------

  /** Opens the socket (and keeps it open); subscribe() and publish() call it for you. */
  connect() {
    if (this.closed) throw new SdkError("closed", "this client is closed");
    this.connection.wanted = true;
    this.connection.wake();
  }

  /** Closes the socket and stops every timer; queued publishes stay in storage for the next client. */
  close() {
    this._flushSeqs();
    this.closed = true;
    this.connection.stop(1000, "client closed");
    clearTimeout(this.tokens._timer);
    for (const sub of this.subs.values()) clearTimeout(sub.timer);
    this._unwatch();
    for (const [, waiter] of this.waiting) waiter.reject(new SdkError("closed", "the client was closed"));
    this.waiting.clear();
  }

  _hide() {
    this._flushSeqs(); // the app may be destroyed while hidden
    this.connection.pause(true);
  }

  _onConnected() {
    for (const sub of this.subs.values()) this._sync(sub);
    for (const entry of this.outbox) entry.sent = false;
    this._pump();
  }

  _onDisconnected() {
    for (const entry of this.outbox) entry.sent = false;
    for (const sub of this.subs.values()) sub.syncing = false;
  }

  // -- subscriptions --------------------------------------------------------------------

  /** Subscribes to `channel`; `handlers`: {message, join, leave, error, recovery}.
   * Resumes after the last seq seen (kept in storage); `options.last` gives the n
   * newest the first time. Returns {channel, unsubscribe, history, presence}. */
  subscribe(channel, handlers = {}, options = {}) {
    checkChannel(channel);
    const sub = { channel, handlers, last: options.last, syncing: false };
    this.subs.set(channel, sub);
    this.connect();
    if (this.state === "connected") this._sync(sub);
    return {
      channel, unsubscribe: () => this.unsubscribe(channel),
      history: (o) => this.history(channel, o), presence: () => this.presence(channel),
    };
  }

  unsubscribe(channel) {
    const sub = this.subs.get(channel);
    if (!sub) return;
    clearTimeout(sub.timer);
    this.subs.delete(channel);
    delete this.seqs[channel];
    this._save("seqs");
    this.connection.command("unsubscribe", { channel }).catch(() => {});
  }

  /** subscribe with `since` (the last seq seen): the reply holds exactly what was missed. */
  _sync(sub) {
    const since = this.seqs[sub.channel];
    const args = since != null ? { channel: sub.channel, since } : sub.last ? { channel: sub.channel, last: sub.last }
      : { channel: sub.channel };
    sub.syncing = true;
    clearTimeout(sub.timer); // a retry waiting is this one
    this.connection.command("subscribe", args).then((reply) => {
      if (this.subs.get(sub.channel) !== sub) return;
      sub.syncing = false;
      sub.retries = 0;
      const messages = reply.messages || [];
      if (reply.recovered === false) {
        const event = { channel: sub.channel, recovered: false, oldest: messages.length ? messages[0].seq : reply.seq + 1 };
        this._call(sub, "recovery", event);
        this.emit("recovery", event);
      }
      for (const message of messages) this._accept(sub, message, true);
      if (this.seqs[sub.channel] == null || reply.seq > this.seqs[sub.channel]) this._seen(sub.channel, reply.seq);
      this.emit("subscribed", { channel: sub.channel, seq: reply.seq });
    }, (error) => {
      sub.syncing = false;
      if (error.code === "disconnected") return; // the next connection subscribes again
      error.channel = sub.channel;
      if (RETRY_PUBLISH.includes(error.code)) { // the server asks to try again, with backoff: the subscription stays
        sub.retries = (sub.retries || 0) + 1;
        sub.timer = setTimeout(() => this.subs.get(sub.channel) === sub && !sub.syncing && this.state === "connected"
          && this._sync(sub), backoff(sub.retries, this.options.retryBase, this.options.reconnectMax));
        this.emit("error", Object.assign(error, { willRetry: true }));
        return;
      }
      this.subs.delete(sub.channel);
      this._call(sub, "error", error);
      this.emit("error", error);
    });
  }

  _onPush(frame) {
    if (frame.push === "message") {
      const sub = this.subs.get(frame.message.channel);
      if (sub) this._accept(sub, frame.message, false);
    } else if (frame.push === "join" || frame.push === "leave") {
      const sub = this.subs.get(frame.channel);
      if (sub) this._call(sub, frame.push, { channel: frame.channel, user: frame.user });
      this.emit(frame.push, { channel: frame.channel, user: frame.user });
    }
  }

  /** Delivers a message once, in seq order; a gap in live pushes resubscribes. */
  _accept(sub, message, replayed) {
    const last = this.seqs[sub.channel];
    if (last != null && message.seq <= last) return; // already delivered
    if (last != null && message.seq > last + 1 && !replayed) {
      if (!sub.syncing) this._sync(sub); // missed some: the resubscribe's reply brings them
      return;
    }
    this._seen(sub.channel, message.seq);
    this._call(sub, "message", message);
    this.emit("message", message);
  }

  _seen(channel, seq) {
    this.seqs[channel] = seq;
    if (!this._seqTimer) this._seqTimer = setTimeout(() => this._flushSeqs(), 200);
  }

  _flushSeqs() {
    clearTimeout(this._seqTimer);
    this._seqTimer = null;
    this._save("seqs");
  }

  _call(sub, name, payload) {
    const handler = sub.handlers[name];
    if (typeof handler !== "function") return;
    try {
      handler(payload);
    } catch (error) {
      if (typeof console !== "undefined") console.error("handler " + name + " of " + sub.channel + " failed", error);
    }
  }

  /** {messages, has_more}: `before` or `after` a seq, `limit` 1..100. */
  async history(channel, options = {}) {
    checkChannel(channel);
    await this.connection.ready(this.options.commandTimeout);
    return this.connection.command("history", { channel, ...options });
  }

  /** {users, count} of a room. */
  async presence(channel) {
    checkChannel(channel);
    await this.connection.ready(this.options.commandTimeout);
    return this.connection.command("presence", { channel });
  }

  // -- publishing -------------------------------------------------------------------------

  /** Publishes `data` (a JSON object up to 16 KiB); resolves with {seq, id, ts} once
   * stored. Queued in order (and in storage) while disconnected, sent again with the
   * same cid after reconnecting, so it is stored once. */
  publish(channel, data, options = {}) {
    let bytes;
    try {
      checkChannel(channel);
      if (!data || typeof data !== "object" || Array.isArray(data)) throw new SdkError("invalid_request", "data must be a JSON object");
      ({ data, bytes } = wellFormed(data));
      if (bytes > MAX_DATA_BYTES) throw new SdkError("payload_too_large", "data is limited to 16 KiB");
      // The outbox is stored under one key: WeChat keeps at most 1 MB under one.
      const queued = this.outbox.reduce((sum, entry) => sum + entry.size, 0);
      if (this.outbox.length >= this.options.outboxLimit || queued + bytes > this.options.outboxBytes) {
        throw new SdkError("queue_full", this.outbox.length + " publishes are waiting to be sent; try again later");
      }
      if (this.closed) throw new SdkError("closed", "this client is closed");
      if (!this.user) throw new SdkError("signed_out", "sign in first");
    } catch (error) {
      return Promise.reject(error);
    }
    const cid = options.cid || randomId(24);
    this.outbox.push({ cid, channel, data, sent: false, size: storedSize(channel, cid, bytes) });
    this._save("outbox");
    const promise = new Promise((resolve, reject) => this.waiting.set(cid, { resolve, reject }));
    this.connect();
    this._pump();
    return promise;
  }

  /** Sends queued publishes in order, a few in flight at a time. */
  _pump() {
    if (this.state !== "connected") return;
    let inFlight = this.outbox.filter((entry) => entry.sent).length;
    for (const entry of this.outbox) {
      if (inFlight >= this.options.publishWindow) break;
      if (entry.sent) continue;
      entry.sent = true;
      inFlight++;
      const { cid, channel, data } = entry;
      this.connection.command("publish", { channel, data, cid }).then((ack) => {
        this._settle(entry, null, { cid, channel, ...ack });
      }, (error) => {
        if (this.outbox.indexOf(entry) < 0) return;
        entry.sent = false;
        if (RETRY_PUBLISH.includes(error.code)) {
          if (error.code !== "disconnected") setTimeout(() => this._pump(), 1000);
          return;
        }
        error.channel = channel;
        error.cid = cid;
        this._settle(entry, error);
      });
    }
  }

  _settle(entry, error, ack) {
    const index = this.outbox.indexOf(entry);
    if (index >= 0) this.outbox.splice(index, 1);
    this._save("outbox");
    const waiter = this.waiting.get(entry.cid);
    this.waiting.delete(entry.cid);
    if (error) {
      if (waiter) waiter.reject(error);
      this.emit("error", error);
    } else {
      if (waiter) waiter.resolve({ seq: ack.seq, id: ack.id, ts: ack.ts });
      this.emit("published", ack);
    }
    this._pump();
  }

  // -- HTTP: records and uploads ------------------------------------------------------------

  /** One HTTP call with retries of network failures, 5xx and 429; 401 refreshes once. */
  async _fetch(method, path, body, options = {}) {
    const retries = options.retries ?? 0;
    let refreshed = false;
    for (let attempt = 0; ; attempt++) {
      const headers = { ...options.headers };
      if (options.auth) headers.Authorization = "Bearer " + (await this.tokens.fresh());
      let answer;
      try {
        answer = await this.limiter.run(() => (options.upload
          ? this.platform.upload({ url: this.url + path, headers, ...options.upload })
          : this.platform.request({ method, url: this.url + path, headers, body })));
      } catch (error) {
        if (attempt < retries) {
          await sleep(backoff(attempt, this.options.retryBase, 10000));
          continue;
        }
        throw error;
      }
      if (answer.status === 401 && options.auth && !refreshed) {
        refreshed = true;
        await this.tokens.fresh(true);
        attempt--;
        continue;
      }
      if ((answer.status >= 500 || answer.status === 429) && attempt < retries) {
        await sleep(backoff(attempt, this.options.retryBase, 10000));
        continue;
      }
      if (answer.status >= 400) throw httpError(answer.status, answer.data);
      return answer.data;
    }
  }

  /** POST /api/v1/records/{kind} with an Idempotency-Key kept (in storage) until the
   * server answers: retries after a failure (even "interrupted") store it once.
   * `object` is one record or {items: [...]}; `options.key` to choose the key. */
  async createRecord(kind, object, options = {}) {
    if (!this.user) throw new SdkError("signed_out", "sign in first");
    const entry = { key: options.key || randomId(32), kind, body: object };
    entry.size = recordSize(entry);
    // The queue is stored under one key: WeChat keeps at most 1 MB under one.
    const queued = this.records.reduce((sum, r) => sum + r.size, 0);
    if (queued + entry.size > this.options.recordsBytes) {
      throw new SdkError("queue_full", this.records.length + " records are waiting to be sent; try again later");
    }
    this.records.push(entry);
    this._save("records");
    return this._sendRecord(entry);
  }

  async _sendRecord(entry) {
    try {
      const result = await this._fetch("POST", "/api/v1/records/" + encodeURIComponent(entry.kind), entry.body, {
        auth: true, retries: this.options.requestRetries, headers: { "Idempotency-Key": entry.key },
      });
      this._dropRecord(entry);
      this.emit("record", { key: entry.key, kind: entry.kind, result });
      return result;
    } catch (error) {
      if (error.code !== "network" && !(error.status >= 500) && error.status !== 429) this._dropRecord(entry);
      throw error; // a network failure stays queued: sent again (same key) on the next start
    }
  }

  _dropRecord(entry) {
    this.records = this.records.filter((r) => r !== entry && r.key !== entry.key);
    this._save("records");
  }

  _resendRecords() {
    for (const entry of this.records.slice()) {
      this._sendRecord(entry).catch((error) => this.emit("error", Object.assign(error, { key: entry.key })));
    }
  }

  /** Uploads a file (a wx temp path, or a Blob in a browser) to /api/v1/files, retrying
   * network failures with one Idempotency-Key (`options.idempotencyKey`, or one made for
   * this call), so a retry after a lost answer gets that answer and stores nothing twice;
   * `options`: {formData, onProgress, retries, idempotencyKey}. Resolves with the 201 body. */
  upload(file, options = {}) {
    const upload = { name: "file", formData: options.formData, onProgress: options.onProgress };
    if (typeof file === "string") upload.filePath = file;
    else upload.file = file;
    return this._fetch("POST", "/api/v1/files", undefined, {
      auth: true, retries: options.retries ?? this.options.requestRetries, upload,
      headers: { "Idempotency-Key": options.idempotencyKey || randomId(32) },
    });
  }

  /** An authenticated call of the HTTP API: `api("GET", "/api/v1/rooms?mine=1")`. */
  api(method, path, body) {
    return this._fetch(method, path, body, { auth: true });
  }
}

/** The bytes a records-queue entry takes in storage (its JSON, in UTF-8). */
const recordSize = ({ key, kind, body }) => wellFormed({ key, kind, body }).bytes + 8;

/** The bytes an outbox entry takes in storage, its data's JSON included. */
const storedSize = (channel, cid, bytes) => bytes + String(channel).length + String(cid).length + 40;

function checkChannel(channel) {
  if (typeof channel !== "string" || !CHANNEL.test(channel)) {
    throw new SdkError("invalid_request", "a channel is room:<id>, feed:<name> or user:<id>");
  }
}

/** `data` as JSON with every lone surrogate (half an emoji cut by slice()) made
 * U+FFFD, as TextEncoder does, and its UTF-8 length. The server cannot store a lone
 * surrogate: sent as is, it would fail on every retry. */
export function wellFormed(data) {
  const text = JSON.stringify(data);
  let out = "";
  let bytes = 0;
  let changed = false;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === 0x5c && text[i + 1] === "u") { // an escape: \uXXXX (a lone surrogate, from a modern engine)
      const escaped = parseInt(text.slice(i + 2, i + 6), 16);
      if (escaped >= 0xd800 && escaped <= 0xdfff) {
        out += "\\ufffd";
        bytes += 3; // the server writes U+FFFD as it is
        changed = true;
      } else {
        out += text.slice(i, i + 6);
        bytes += 6;
      }
      i += 5;
    } else if (code === 0x5c) { // any other escape: two characters
      out += text.slice(i, i + 2);
      bytes += 2;
      i++;
    } else if (code >= 0xd800 && code <= 0xdbff && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      out += text.slice(i, i + 2); // a pair: one character of 4 bytes
      bytes += 4;
      i++;
    } else if (code >= 0xd800 && code <= 0xdfff) { // lone, raw (an older engine's stringify)
      out += "\ufffd";
      bytes += 3;
      changed = true;
    } else {
      out += text[i];
      bytes += code < 0x80 ? 1 : code < 0x800 ? 2 : 3;
    }
  }
  return { data: changed ? JSON.parse(out) : data, bytes };
}

/** A client: `createClient({url, platform})`. */
export function createClient(options) {
  return new RealtimeClient(options);
}
