// miniprogram-realtime-sdk 0.1.0 (MIT). Built from src/ by scripts/build.mjs: edit src/, not this file.

// src/util.mjs
var SdkError = class extends Error {
  constructor(code, message, extra) {
    super(message || code);
    this.name = "SdkError";
    this.code = code;
    Object.assign(this, extra);
  }
};
function httpError(status, body) {
  const error = body && body.error || {};
  return new SdkError(
    error.code || (status >= 500 ? "internal" : "http_" + status),
    error.message || "HTTP " + status,
    { status, details: error.details }
  );
}
var Emitter = class {
  constructor() {
    this._listeners = {};
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
        if (typeof console !== "undefined") console.error("listener of " + name + " failed", error);
      }
    }
  }
};
function backoff(attempt, base, max, random = Math.random) {
  return Math.round(Math.min(max, base * 2 ** Math.min(attempt, 30)) * (0.5 + random()));
}
function randomId(length = 20) {
  const bytes = new Uint8Array(length);
  const crypto = globalThis.crypto;
  if (crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < length; i++) bytes[i] = Math.floor(Math.random() * 256);
  let id = "";
  for (const byte of bytes) id += (byte % 36).toString(36);
  return id;
}
var sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
var Bucket = class {
  constructor(perSecond, burst) {
    this.rate = perSecond / 1e3;
    this.burst = burst;
    this.tokens = burst;
    this.at = Date.now();
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
};
var Limiter = class {
  constructor(limit) {
    this.limit = limit;
    this.running = 0;
    this.queue = [];
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
};
var Store = class {
  constructor(storage, prefix) {
    this.storage = storage;
    this.prefix = prefix;
  }
  get(key) {
    try {
      const text = this.storage.get(this.prefix + key);
      return text ? JSON.parse(text) : null;
    } catch (e) {
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
};

// src/auth.mjs
var AUTH_FAILURES = ["unauthorized", "token_expired", "token_reused"];
var Tokens = class {
  constructor(client) {
    this.client = client;
    this.current = client.store.get("tokens");
    this._refreshing = null;
    this._timer = null;
    this.schedule();
  }
  get user() {
    return this.current && this.current.user;
  }
  /** Milliseconds before expiry at which the token is refreshed: a quarter of its life, at most a minute. */
  margin() {
    return Math.min(6e4, (this.current ? this.current.ttl : 0) / 4);
  }
  stale() {
    return !this.current || Date.now() >= this.current.expiresAt - this.margin();
  }
  /** Signs in: with `dev` (a name) through dev login, otherwise the platform's wx.login code.
   * Retried after network failures, 5xx and 429; a wx.login code is single-use (a retry
   * after a lost answer would present a spent one), so each attempt asks for a new one. */
  async signIn(options = {}) {
    const client = this.client;
    if (!options.dev && !options.code && !client.platform.login) {
      throw new SdkError("no_login", "this platform has no wx.login: pass {dev} or a code");
    }
    for (let attempt = 0; ; attempt++) {
      const [path, body] = options.dev ? ["/api/v1/auth/dev", { name: options.dev }] : ["/api/v1/auth/wechat", { code: options.code || await client.platform.login() }];
      let answer;
      try {
        answer = await client._fetch("POST", path, body);
      } catch (error) {
        const again = error.code === "network" || error.status >= 500 || error.status === 429;
        if (!again || attempt >= 2) throw error;
        await sleep(backoff(attempt, client.options.retryBase, 1e4));
        continue;
      }
      this.keep(answer);
      return answer.user;
    }
  }
  keep(answer) {
    const previous = this.current;
    this.current = {
      access: answer.access_token,
      refresh: answer.refresh_token,
      ttl: answer.expires_in * 1e3,
      // The server's exp is whole seconds from its iat (also whole): up to a second earlier than this clock's.
      expiresAt: Date.now() + answer.expires_in * 1e3 - 1e3,
      user: answer.user || previous && previous.user
    };
    this.client.store.set("tokens", this.current);
    this.schedule();
  }
  schedule() {
    clearTimeout(this._timer);
    if (!this.current || this.client.closed) return;
    const delay = Math.max(0, this.current.expiresAt - this.margin() - Date.now());
    this._timer = setTimeout(() => this.refresh().catch(() => {
    }), Math.min(delay, 2 ** 31 - 1));
  }
  /** A fresh access token (refreshed first when stale, or always with `force`). */
  async fresh(force) {
    if (!this.current) await this._lost("not signed in");
    if (force || this.stale()) await this.refresh();
    return this.current.access;
  }
  /** POST /auth/refresh, then `refresh` on the open socket. One at a time: a refresh
   * token is spent by its use, and presenting it twice revokes the session. */
  refresh() {
    if (!this._refreshing) {
      this._refreshing = this._refresh().finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }
  async _refresh() {
    const client = this.client;
    const stored = client.store.get("tokens");
    if (stored && this.current && stored.refresh !== this.current.refresh) {
      this.current = stored;
      if (!this.stale()) return this.schedule();
    }
    if (!this.current) return this._lost("not signed in");
    let answer;
    try {
      answer = await client._fetch(
        "POST",
        "/api/v1/auth/refresh",
        { refresh_token: this.current.refresh },
        { retries: 2 }
      );
    } catch (error) {
      if (AUTH_FAILURES.includes(error.code)) return this._lost(error.message);
      clearTimeout(this._timer);
      if (!client.closed) this._timer = setTimeout(() => this.refresh().catch(() => {
      }), 5e3);
      throw error;
    }
    this.keep(answer);
    client.emit("tokenRefreshed", { expiresIn: answer.expires_in });
    client.connection.sendRefresh(this.current.access);
  }
  /** The session is gone: sign in again when the platform can, otherwise signed out. */
  async _lost(reason) {
    const client = this.client;
    const hadUser = this.user;
    this.clear();
    if (client.options.autoSignIn !== false && client.platform.login) {
      const user = await this.signIn();
      if (hadUser && user.id !== hadUser.id) client._loadUser();
      return;
    }
    client.emit("signedOut", { reason });
    client.connection.stop(4001, reason);
    throw new SdkError("signed_out", reason);
  }
  clear() {
    clearTimeout(this._timer);
    this.current = null;
    this.client.store.set("tokens", null);
  }
  async signOut() {
    const current = this.current;
    this.clear();
    if (current) {
      await this.client._fetch("POST", "/api/v1/auth/logout", { refresh_token: current.refresh }).catch(
        (error) => error
      );
    }
  }
};

// src/connection.mjs
var FINAL = {
  4e3: "disconnected by the server",
  4010: "replaced by a newer connection",
  4003: "forbidden",
  1008: "refused by policy"
};
var Connection = class {
  constructor(client) {
    this.client = client;
    this.options = client.options;
    this.state = "disconnected";
    this.wanted = false;
    this.paused = false;
    this.offline = false;
    this.socket = null;
    this.attempt = 0;
    this.failedOpens = 0;
    this.nextId = 1;
    this.pending = /* @__PURE__ */ new Map();
    this.outgoing = [];
    this.bucket = new Bucket(15, 30);
    this.timers = {};
    this.waiters = [];
  }
  setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.client.emit("state", state);
    }
  }
  clear(name) {
    clearTimeout(this.timers[name]);
    this.timers[name] = null;
  }
  /** Opens a socket now if one is wanted and possible. */
  wake() {
    if (!this.wanted || this.socket || this.paused || this.offline || this.client.closed || this.opening) return;
    this.clear("retry");
    this.open();
  }
  async open() {
    const client = this.client;
    this.opening = true;
    this.setState("connecting");
    client.emit("connecting", { attempt: this.attempt });
    let token;
    try {
      token = await client.tokens.fresh(this.failedOpens === 2);
    } catch (error) {
      this.opening = false;
      if (error.code === "signed_out" || !this.wanted) return this.setState("disconnected");
      return this.retry();
    } finally {
      this.opening = false;
    }
    if (!this.wanted || this.paused || this.offline || this.socket || client.closed) {
      return this.setState("disconnected");
    }
    const socket = { opened: false, conn: null };
    const url = client.url.replace(/^http/, "ws") + "/ws";
    this.socket = socket;
    try {
      socket.conn = client.platform.connect(url, token, {
        open: () => socket === this.socket && this.opened(),
        message: (text) => socket === this.socket && this.frame(text),
        close: (code, reason) => socket === this.socket && this.lost(code, reason),
        error: (message) => socket === this.socket && this.drop(1006, message)
      });
    } catch (error) {
      socket.conn = { send() {
      }, close() {
      } };
      return this.lost(1006, String(error && error.message));
    }
    this.timers.open = setTimeout(
      () => socket === this.socket && !socket.opened && this.drop(1006, "open timed out"),
      this.options.openTimeout
    );
  }
  opened() {
    this.clear("open");
    this.socket.opened = true;
    this.failedOpens = 0;
    this.setState("connected");
    this.timers.healthy = setTimeout(() => this.attempt = 0, this.options.healthyAfter);
    this.alive();
    this.client.emit("connected", {});
    this.client._onConnected();
    for (const resolve of this.waiters.splice(0)) resolve();
  }
  /** Closes the socket ourselves (dead, hidden, offline) and handles it as lost. */
  drop(code, reason) {
    const socket = this.socket;
    if (!socket) return;
    try {
      socket.conn.close(1e3, reason.slice(0, 100));
    } catch (e) {
    }
    this.lost(code, reason);
  }
  lost(code, reason) {
    const socket = this.socket;
    this.socket = null;
    for (const name of ["open", "healthy", "watchdog", "pace"]) this.clear(name);
    this.outgoing = [];
    for (const [, command] of this.pending) command.reject(new SdkError("disconnected", "the connection closed"));
    this.pending.clear();
    if (socket && !socket.opened) this.failedOpens++;
    this.client._onDisconnected();
    let again = this.wanted && !FINAL[code] && !this.client.closed;
    if (FINAL[code]) this.wanted = false;
    if (code === 4001) this.client.tokens.current && (this.client.tokens.current.expiresAt = 0);
    if (code === 4008) this.attempt = Math.max(this.attempt, 4);
    this.setState("disconnected");
    this.client.emit("disconnected", { code, reason: reason || FINAL[code] || "", willReconnect: again });
    if (again && !this.paused && !this.offline) this.retry(code === 4001 ? 0 : void 0);
  }
  retry(delay) {
    if (!this.wanted || this.paused || this.offline || this.client.closed) return;
    const wait = delay != null ? delay : backoff(this.attempt, this.options.reconnectBase, this.options.reconnectMax);
    this.attempt++;
    this.client.emit("reconnecting", { attempt: this.attempt, delay: wait });
    this.clear("retry");
    this.timers.retry = setTimeout(() => this.wake(), wait);
  }
  /** Stops without reconnecting (sign-out, close()); the app may connect() again. */
  stop(code, reason) {
    this.wanted = false;
    this.clear("retry");
    if (this.socket) this.drop(code === 4001 ? 1e3 : code, reason);
    else this.setState("disconnected");
  }
  pause(paused) {
    this.paused = paused;
    if (paused) {
      this.clear("retry");
      this.drop(1e3, "app hidden");
    } else {
      this.attempt = 0;
      this.wake();
    }
  }
  setOnline(online) {
    this.offline = !online;
    if (!online) this.drop(1006, "network lost");
    else {
      this.attempt = 0;
      this.wake();
    }
  }
  // -- frames --------------------------------------------------------------------------
  /** Any frame proves the connection alive; after `pingInterval` of silence a `ping`
   * goes, and `pingTimeout` more of silence drops the socket (no close frame ever came). */
  alive() {
    this.clear("watchdog");
    this.timers.watchdog = setTimeout(() => {
      this.command("ping", {}).catch(() => {
      });
      this.timers.watchdog = setTimeout(() => this.drop(1006, "no answer to ping"), this.options.pingTimeout);
    }, this.options.pingInterval);
  }
  frame(text) {
    this.alive();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (frame.push) return this.client._onPush(frame);
    const command = this.pending.get(frame.id);
    if (!command) return;
    this.pending.delete(frame.id);
    if (frame.error) command.reject(new SdkError(frame.error.code, frame.error.message, { op: command.op }));
    else command.resolve(frame.result);
  }
  /** Sends a command on the open socket; rejects with `disconnected` if there is none. */
  command(op, args) {
    if (this.state !== "connected") return Promise.reject(new SdkError("disconnected", "not connected"));
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject, op });
      this.outgoing.push(JSON.stringify({ id, op, ...args }));
      this.pace();
    });
  }
  pace() {
    while (this.outgoing.length && !this.timers.pace && this.socket) {
      const wait = this.bucket.wait();
      if (wait > 0) {
        this.timers.pace = setTimeout(() => {
          this.timers.pace = null;
          this.pace();
        }, wait);
        return;
      }
      try {
        this.socket.conn.send(this.outgoing.shift());
      } catch (error) {
        return this.drop(1006, "send failed");
      }
    }
  }
  /** Waits until connected (at most `timeout` ms). */
  ready(timeout) {
    if (this.state === "connected") return Promise.resolve();
    this.wanted = true;
    this.wake();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new SdkError("timeout", "not connected in time")), timeout);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  sendRefresh(token) {
    if (this.state === "connected") {
      this.command("refresh", { token }).catch((error) => {
        if (error.code !== "disconnected") this.drop(4001, "refresh refused");
      });
    }
  }
};

// src/platforms.mjs
var networkError = (message) => new SdkError("network", message || "network failure");
function parseBody(data) {
  if (typeof data !== "string") return data;
  try {
    return data ? JSON.parse(data) : null;
  } catch (e) {
    return data;
  }
}
function miniProgram(api, name = "wechat") {
  return {
    name,
    maxRequests: 8,
    // WeChat runs 10 wx.request at once; leave room for the app's own
    connect(url, token, on) {
      const made = api.connectSocket({
        url,
        header: { Authorization: "Bearer " + token },
        complete() {
        },
        fail(error) {
          on.error(error && error.errMsg || "connectSocket failed");
        }
      });
      let task = null;
      let closeWith = null;
      const wire = (t) => {
        task = t;
        t.onOpen(() => on.open());
        t.onMessage((event) => on.message(event.data));
        t.onClose((event) => on.close(event.code || 1006, event.reason || ""));
        t.onError((event) => on.error(event && event.errMsg || "socket error"));
        if (closeWith) t.close(closeWith);
      };
      if (made && typeof made.then === "function") made.then(wire, () => on.error("connectSocket failed"));
      else if (made) wire(made);
      return {
        send(text) {
          task.send({ data: text });
        },
        close(code, reason) {
          closeWith = { code, reason };
          if (task) task.close(closeWith);
        }
      };
    },
    request({ method, url, headers, body }) {
      return new Promise((resolve, reject) => {
        api.request({
          url,
          method,
          header: headers,
          data: body,
          dataType: "json",
          success: (res) => resolve({ status: res.statusCode, data: parseBody(res.data) }),
          fail: (error) => reject(networkError(error && error.errMsg))
        });
      });
    },
    upload({ url, headers, filePath, name: field, formData, onProgress }) {
      return new Promise((resolve, reject) => {
        const task = api.uploadFile({
          url,
          filePath,
          name: field,
          header: headers,
          formData,
          success: (res) => resolve({ status: res.statusCode, data: parseBody(res.data) }),
          fail: (error) => reject(networkError(error && error.errMsg))
        });
        if (onProgress && task && task.onProgressUpdate) {
          task.onProgressUpdate((p) => onProgress({
            progress: p.progress,
            sent: p.totalBytesSent,
            total: p.totalBytesExpectedToSend
          }));
        }
      });
    },
    login() {
      return new Promise((resolve, reject) => {
        api.login({
          provider: "weixin",
          // uni-app's; WeChat and Taro ignore it
          success: (res) => res.code ? resolve(res.code) : reject(new SdkError("login_failed", res.errMsg)),
          fail: (error) => reject(networkError(error && error.errMsg))
        });
      });
    },
    storage: {
      get(key) {
        const value = api.getStorageSync(key);
        return value === "" || value == null ? null : value;
      },
      set: (key, value) => api.setStorageSync(key, value),
      remove: (key) => api.removeStorageSync(key)
    },
    watch({ show, hide, network }) {
      const onNetwork = (status) => network(status.isConnected);
      const pairs = [
        ["onAppShow", "offAppShow", () => show()],
        ["onAppHide", "offAppHide", () => hide()],
        ["onNetworkStatusChange", "offNetworkStatusChange", onNetwork]
      ];
      for (const [on, , listener] of pairs) if (typeof api[on] === "function") api[on](listener);
      return () => {
        for (const [, off, listener] of pairs) if (typeof api[off] === "function") api[off](listener);
      };
    }
  };
}
var wechat = (wx2) => miniProgram(wx2, "wechat");
var uniApp = (u) => miniProgram(u, "uni");
var taro = (t) => miniProgram(t, "taro");
function browser(options = {}) {
  const g = globalThis;
  const memory = /* @__PURE__ */ new Map();
  const local = options.storage || (() => {
    try {
      return g.localStorage;
    } catch (e) {
      return null;
    }
  })();
  return {
    name: "browser",
    maxRequests: 6,
    connect(url, token, on) {
      const ws = new (options.WebSocket || g.WebSocket)(url + "?token=" + encodeURIComponent(token));
      ws.onopen = () => on.open();
      ws.onmessage = (event) => on.message(event.data);
      ws.onclose = (event) => on.close(event.code || 1006, event.reason || "");
      ws.onerror = () => on.error("socket error");
      return {
        send: (text) => ws.send(text),
        close(code, reason) {
          try {
            ws.close(code, reason);
          } catch (e) {
            ws.close();
          }
        }
      };
    },
    async request({ method, url, headers, body }) {
      let text, status;
      try {
        const response = await (options.fetch || g.fetch)(url, {
          method,
          headers: { "Content-Type": "application/json", ...headers },
          body: body === void 0 ? void 0 : JSON.stringify(body)
        });
        status = response.status;
        text = await response.text();
      } catch (error) {
        throw networkError(String(error && error.message));
      }
      return { status, data: parseBody(text) };
    },
    upload({ url, headers, file, filePath, name: field, formData, onProgress }) {
      return new Promise((resolve, reject) => {
        const form = new g.FormData();
        for (const key of Object.keys(formData || {})) form.append(key, formData[key]);
        form.append(field, file || filePath);
        const xhr = new g.XMLHttpRequest();
        xhr.open("POST", url);
        for (const key of Object.keys(headers)) xhr.setRequestHeader(key, headers[key]);
        if (onProgress) {
          xhr.upload.onprogress = (e) => onProgress({
            progress: e.total ? Math.round(100 * e.loaded / e.total) : 0,
            sent: e.loaded,
            total: e.total
          });
        }
        xhr.onload = () => resolve({ status: xhr.status, data: parseBody(xhr.responseText) });
        xhr.onerror = () => reject(networkError("upload failed"));
        xhr.send(form);
      });
    },
    storage: {
      get: (key) => {
        var _a;
        return local ? local.getItem(key) : (_a = memory.get(key)) != null ? _a : null;
      },
      set: (key, value) => local ? local.setItem(key, value) : memory.set(key, value),
      remove: (key) => local ? local.removeItem(key) : memory.delete(key)
    },
    watch({ show, hide, network }) {
      const doc = g.document;
      const visibility = () => doc.visibilityState === "hidden" ? options.pauseWhenHidden && hide() : show();
      const online = () => network(true);
      const offline = () => network(false);
      if (doc) doc.addEventListener("visibilitychange", visibility);
      if (g.addEventListener) {
        g.addEventListener("online", online);
        g.addEventListener("offline", offline);
      }
      return () => {
        if (doc) doc.removeEventListener("visibilitychange", visibility);
        if (g.removeEventListener) {
          g.removeEventListener("online", online);
          g.removeEventListener("offline", offline);
        }
      };
    }
  };
}
function detect() {
  if (typeof wx === "object" && wx && wx.connectSocket) return wechat(wx);
  if (typeof uni === "object" && uni && uni.connectSocket) return uniApp(uni);
  if (typeof WebSocket === "function") return browser();
  throw new SdkError("no_platform", "no platform found: pass options.platform (wechat(wx), taro(Taro)...)");
}

// src/client.mjs
var CHANNEL = /^(room|feed|user):[A-Za-z0-9_-]{1,64}$/;
var MAX_DATA_BYTES = 16 * 1024;
var RETRY_PUBLISH = ["internal", "unavailable", "rate_limited", "disconnected"];
var DEFAULTS = {
  storagePrefix: "mpr:",
  reconnectBase: 500,
  reconnectMax: 3e4,
  healthyAfter: 15e3,
  pingInterval: 2e4,
  pingTimeout: 1e4,
  openTimeout: 15e3,
  commandTimeout: 15e3,
  outboxLimit: 200,
  outboxBytes: 900 * 1024,
  recordsBytes: 900 * 1024,
  publishWindow: 8,
  requestRetries: 3,
  retryBase: 500,
  autoSignIn: true
};
var RealtimeClient = class extends Emitter {
  constructor(options) {
    super();
    if (!options || !options.url) throw new SdkError("invalid_options", "options.url (the server's https:// base) is required");
    this.options = { ...DEFAULTS, ...options };
    this.url = options.url.replace(/\/+$/, "");
    this.platform = options.platform || detect();
    this.store = new Store(this.platform.storage, this.options.storagePrefix);
    this.limiter = new Limiter(this.platform.maxRequests || 8);
    this.closed = false;
    this.subs = /* @__PURE__ */ new Map();
    this.seqs = {};
    this.outbox = [];
    this.waiting = /* @__PURE__ */ new Map();
    this.records = [];
    this.tokens = new Tokens(this);
    this.connection = new Connection(this);
    this._seqTimer = null;
    this._unwatch = this.platform.watch({
      show: () => this.connection.pause(false),
      hide: () => this._hide(),
      network: (online) => this.connection.setOnline(online)
    });
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
    this.connection.stop(1e3, "signed out");
    await this.tokens.signOut();
    this.emit("signedOut", { reason: "signed out" });
  }
  _loadUser() {
    const user = this.user;
    this.seqs = user && this.store.get("seqs:" + user.id) || {};
    this.outbox = (user && this.store.get("outbox:" + user.id) || []).map((entry) => ({
      ...entry,
      sent: false,
      size: storedSize(entry.channel, entry.cid, wellFormed(entry.data).bytes)
    }));
    this.records = (user && this.store.get("records:" + user.id) || []).map((entry) => ({ ...entry, size: recordSize(entry) }));
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
    this.connection.stop(1e3, "client closed");
    clearTimeout(this.tokens._timer);
    for (const sub of this.subs.values()) clearTimeout(sub.timer);
    this._unwatch();
    for (const [, waiter] of this.waiting) waiter.reject(new SdkError("closed", "the client was closed"));
    this.waiting.clear();
  }
  _hide() {
    this._flushSeqs();
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
      channel,
      unsubscribe: () => this.unsubscribe(channel),
      history: (o) => this.history(channel, o),
      presence: () => this.presence(channel)
    };
  }
  unsubscribe(channel) {
    const sub = this.subs.get(channel);
    if (!sub) return;
    clearTimeout(sub.timer);
    this.subs.delete(channel);
    delete this.seqs[channel];
    this._save("seqs");
    this.connection.command("unsubscribe", { channel }).catch(() => {
    });
  }
  /** subscribe with `since` (the last seq seen): the reply holds exactly what was missed. */
  _sync(sub) {
    const since = this.seqs[sub.channel];
    const args = since != null ? { channel: sub.channel, since } : sub.last ? { channel: sub.channel, last: sub.last } : { channel: sub.channel };
    sub.syncing = true;
    clearTimeout(sub.timer);
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
      if (error.code === "disconnected") return;
      error.channel = sub.channel;
      if (RETRY_PUBLISH.includes(error.code)) {
        sub.retries = (sub.retries || 0) + 1;
        sub.timer = setTimeout(() => this.subs.get(sub.channel) === sub && !sub.syncing && this.state === "connected" && this._sync(sub), backoff(sub.retries, this.options.retryBase, this.options.reconnectMax));
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
    if (last != null && message.seq <= last) return;
    if (last != null && message.seq > last + 1 && !replayed) {
      if (!sub.syncing) this._sync(sub);
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
          if (error.code !== "disconnected") setTimeout(() => this._pump(), 1e3);
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
    var _a;
    const retries = (_a = options.retries) != null ? _a : 0;
    let refreshed = false;
    for (let attempt = 0; ; attempt++) {
      const headers = { ...options.headers };
      if (options.auth) headers.Authorization = "Bearer " + await this.tokens.fresh();
      let answer;
      try {
        answer = await this.limiter.run(() => options.upload ? this.platform.upload({ url: this.url + path, headers, ...options.upload }) : this.platform.request({ method, url: this.url + path, headers, body }));
      } catch (error) {
        if (attempt < retries) {
          await sleep(backoff(attempt, this.options.retryBase, 1e4));
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
        await sleep(backoff(attempt, this.options.retryBase, 1e4));
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
        auth: true,
        retries: this.options.requestRetries,
        headers: { "Idempotency-Key": entry.key }
      });
      this._dropRecord(entry);
      this.emit("record", { key: entry.key, kind: entry.kind, result });
      return result;
    } catch (error) {
      if (error.code !== "network" && !(error.status >= 500) && error.status !== 429) this._dropRecord(entry);
      throw error;
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
    var _a;
    const upload = { name: "file", formData: options.formData, onProgress: options.onProgress };
    if (typeof file === "string") upload.filePath = file;
    else upload.file = file;
    return this._fetch("POST", "/api/v1/files", void 0, {
      auth: true,
      retries: (_a = options.retries) != null ? _a : this.options.requestRetries,
      upload,
      headers: { "Idempotency-Key": options.idempotencyKey || randomId(32) }
    });
  }
  /** An authenticated call of the HTTP API: `api("GET", "/api/v1/rooms?mine=1")`. */
  api(method, path, body) {
    return this._fetch(method, path, body, { auth: true });
  }
};
var recordSize = ({ key, kind, body }) => wellFormed({ key, kind, body }).bytes + 8;
var storedSize = (channel, cid, bytes) => bytes + String(channel).length + String(cid).length + 40;
function checkChannel(channel) {
  if (typeof channel !== "string" || !CHANNEL.test(channel)) {
    throw new SdkError("invalid_request", "a channel is room:<id>, feed:<name> or user:<id>");
  }
}
function wellFormed(data) {
  const text = JSON.stringify(data);
  let out = "";
  let bytes = 0;
  let changed = false;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === 92 && text[i + 1] === "u") {
      const escaped = parseInt(text.slice(i + 2, i + 6), 16);
      if (escaped >= 55296 && escaped <= 57343) {
        out += "\\ufffd";
        bytes += 3;
        changed = true;
      } else {
        out += text.slice(i, i + 6);
        bytes += 6;
      }
      i += 5;
    } else if (code === 92) {
      out += text.slice(i, i + 2);
      bytes += 2;
      i++;
    } else if (code >= 55296 && code <= 56319 && (text.charCodeAt(i + 1) & 64512) === 56320) {
      out += text.slice(i, i + 2);
      bytes += 4;
      i++;
    } else if (code >= 55296 && code <= 57343) {
      out += "�";
      bytes += 3;
      changed = true;
    } else {
      out += text[i];
      bytes += code < 128 ? 1 : code < 2048 ? 2 : 3;
    }
  }
  return { data: changed ? JSON.parse(out) : data, bytes };
}
function createClient(options) {
  return new RealtimeClient(options);
}
export {
  RealtimeClient,
  SdkError,
  browser,
  createClient,
  detect,
  miniProgram,
  taro,
  uniApp,
  wechat
};
