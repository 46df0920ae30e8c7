// The one socket: opening it with a fresh token, commands and their replies,
// pacing under the server's rate limit, the dead-connection timer, and what each
// close code means (docs/protocol.md).

import { Bucket, SdkError, backoff } from "./util.mjs";

// Close codes after which the client does not reconnect by itself (the app may call connect()).
const FINAL = { 4000: "disconnected by the server", 4010: "replaced by a newer connection", 4003: "forbidden",
  1008: "refused by policy" };

export class Connection {
  constructor(client) {
    this.client = client; // owner: tokens, subscriptions, outbox, events
    this.options = client.options; // timings
    this.state = "disconnected"; // disconnected | connecting | connected
    this.wanted = false; // the app wants a socket (connect(), subscribe(), publish())
    this.paused = false; // the app is in the background
    this.offline = false; // the platform says there is no network
    this.socket = null; // {conn, opened}: the current socket
    this.attempt = 0; // reconnect attempts since the last healthy connection
    this.failedOpens = 0; // sockets in a row that never opened (a refused token looks like this)
    this.nextId = 1; // command ids
    this.pending = new Map(); // id -> {resolve, reject, op}
    this.outgoing = []; // frames waiting for the rate limit
    this.bucket = new Bucket(15, 30); // under the server's 20/s, burst 40
    this.timers = {}; // retry, watchdog, healthy, pace, open
    this.waiters = []; // resolvers of ready()
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
      token = await client.tokens.fresh(this.failedOpens === 2); // a refused token looks like a failed open
    } catch (error) {
      this.opening = false;
      if (error.code === "signed_out" || !this.wanted) return this.setState("disconnected");
      return this.retry(); // no network for the refresh: try again later
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
        error: (message) => socket === this.socket && this.drop(1006, message),
      });
    } catch (error) { // a platform may throw (too many sockets, a bad url)
      socket.conn = { send() {}, close() {} };
      return this.lost(1006, String(error && error.message));
    }
    this.timers.open = setTimeout(() => socket === this.socket && !socket.opened && this.drop(1006, "open timed out"),
      this.options.openTimeout);
  }

  opened() {
    this.clear("open");
    this.socket.opened = true;
    this.failedOpens = 0;
    this.setState("connected");
    this.timers.healthy = setTimeout(() => (this.attempt = 0), this.options.healthyAfter);
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
      socket.conn.close(1000, reason.slice(0, 100));
    } catch {
      // already closed
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
    if (code === 4001) this.client.tokens.current && (this.client.tokens.current.expiresAt = 0); // refresh first
    if (code === 4008) this.attempt = Math.max(this.attempt, 4); // too many commands: slow down
    this.setState("disconnected");
    this.client.emit("disconnected", { code, reason: reason || FINAL[code] || "", willReconnect: again });
    if (again && !this.paused && !this.offline) this.retry(code === 4001 ? 0 : undefined);
  }

  retry(delay) {
    if (!this.wanted || this.paused || this.offline || this.client.closed) return;
    const wait = delay ?? backoff(this.attempt, this.options.reconnectBase, this.options.reconnectMax);
    this.attempt++;
    this.client.emit("reconnecting", { attempt: this.attempt, delay: wait });
    this.clear("retry");
    this.timers.retry = setTimeout(() => this.wake(), wait);
  }

  /** Stops without reconnecting (sign-out, close()); the app may connect() again. */
  stop(code, reason) {
    this.wanted = false;
    this.clear("retry");
    if (this.socket) this.drop(code === 4001 ? 1000 : code, reason);
    else this.setState("disconnected");
  }

  pause(paused) {
    this.paused = paused;
    if (paused) {
      this.clear("retry");
      this.drop(1000, "app hidden");
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
      this.command("ping", {}).catch(() => {});
      this.timers.watchdog = setTimeout(() => this.drop(1006, "no answer to ping"), this.options.pingTimeout);
    }, this.options.pingInterval);
  }

  frame(text) {
    this.alive();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
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
        if (error.code !== "disconnected") this.drop(4001, "refresh refused"); // reconnects with the new token
      });
    }
  }
}
