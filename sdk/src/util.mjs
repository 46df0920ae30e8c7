// Small parts the client is built from: errors, events, backoff, ids, pacing.

/** An error of the SDK or of the server: `code` is the server's error code
 * (`forbidden`, `rate_limited`...) or the SDK's own (`network`, `disconnected`,
 * `queue_full`, `payload_too_large`, `signed_out`, `timeout`, `closed`). */
export class SdkError extends Error {
  constructor(code, message, extra) {
    super(message || code);
    this.name = "SdkError";
    this.code = code;
    Object.assign(this, extra);
  }
}

/** From an HTTP answer's body `{error: {code, message, details}}`. */
export function httpError(status, body) {
  const error = (body && body.error) || {};
  return new SdkError(error.code || (status >= 500 ? "internal" : "http_" + status),
    error.message || "HTTP " + status, { status, details: error.details });
}

export class Emitter {
  constructor() {
    this._listeners = {}; // event name -> listeners
  }

  /** Adds a listener; returns a function that removes it. */
  on(name, listener) {
    (this._listeners[name] = this._listeners[name] || []).push(listener);
    return () => this.off(name, listener);
  }

  off(name, listener) {
    const list = this._listeners[name];
    if (list) this._listeners[name] = list.filter((l) => l !== listener);
  }

  emit(name, payload) {
    for (const listener of this._listeners[name] || []) {
      try {
        listener(payload);
      } catch (error) {
        // A listener's bug must not break delivery to the others, nor the SDK.
        if (typeof console !== "undefined") console.error("listener of " + name + " failed", error);
      }
    }
  }
}

/** docs/protocol.md's delay: min(max, base × 2^attempt) × random(0.5..1.5). */
export function backoff(attempt, base, max, random = Math.random) {
  return Math.round(Math.min(max, base * 2 ** Math.min(attempt, 30)) * (0.5 + random()));
}

/** A random id of `length` characters from [0-9a-z] (cids, idempotency keys). */
export function randomId(length = 20) {
  const bytes = new Uint8Array(length);
  const crypto = globalThis.crypto;
  if (crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < length; i++) bytes[i] = Math.floor(Math.random() * 256);
  let id = "";
  for (const byte of bytes) id += (byte % 36).toString(36);
  return id;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A token bucket: `wait()` is how long to wait before the next command may go. */
export class Bucket {
  constructor(perSecond, burst) {
    this.rate = perSecond / 1000; // tokens per millisecond
    this.burst = burst; // most tokens held
    this.tokens = burst; // tokens now
    this.at = Date.now(); // when `tokens` was counted
  }

  wait() {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + (now - this.at) * this.rate);
    this.at = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil((1 - this.tokens) / this.rate);
  }
}

/** Runs at most `limit` tasks at once (Mini Programs allow 10 requests in flight). */
export class Limiter {
  constructor(limit) {
    this.limit = limit; // tasks at once
    this.running = 0; // tasks running
    this.queue = []; // starters of tasks waiting
  }

  run(task) {
    return new Promise((resolve, reject) => {
      const start = () => {
        this.running++;
        Promise.resolve().then(task).then(resolve, reject).then(() => {
          this.running--;
          if (this.queue.length) this.queue.shift()();
        });
      };
      if (this.running < this.limit) start();
      else this.queue.push(start);
    });
  }
}

/** JSON values in the platform's synchronous string storage, under a prefix. */
export class Store {
  constructor(storage, prefix) {
    this.storage = storage; // {get, set, remove} of strings
    this.prefix = prefix; // keeps this SDK's keys apart from the app's
  }

  get(key) {
    try {
      const text = this.storage.get(this.prefix + key);
      return text ? JSON.parse(text) : null;
    } catch {
      return null;
    }
  }

  set(key, value) {
    try {
      if (value == null) this.storage.remove(this.prefix + key);
      else this.storage.set(this.prefix + key, JSON.stringify(value));
    } catch (error) {
      if (typeof console !== "undefined") console.error("storage write failed", error);
    }
  }
}
