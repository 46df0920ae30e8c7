// Tokens: sign-in, refresh before expiry (one refresh at a time), sign-out.

import { SdkError, backoff, sleep } from "./util.mjs";

const AUTH_FAILURES = ["unauthorized", "token_expired", "token_reused"];

export class Tokens {
  constructor(client) {
    this.client = client; // for HTTP, storage and events
    this.current = client.store.get("tokens"); // {access, refresh, expiresAt, ttl, user} or null
    this._refreshing = null; // the refresh in flight: concurrent callers share it
    this._timer = null; // refreshes the access token before it expires
    this.schedule();
  }

  get user() {
    return this.current && this.current.user;
  }

  /** Milliseconds before expiry at which the token is refreshed: a quarter of its life, at most a minute. */
  margin() {
    return Math.min(60000, (this.current ? this.current.ttl : 0) / 4);
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
      const [path, body] = options.dev ? ["/api/v1/auth/dev", { name: options.dev }]
        : ["/api/v1/auth/wechat", { code: options.code || (await client.platform.login()) }];
      let answer;
      try {
        answer = await client._fetch("POST", path, body);
      } catch (error) {
        const again = error.code === "network" || error.status >= 500 || error.status === 429;
        if (!again || attempt >= 2) throw error;
        await sleep(backoff(attempt, client.options.retryBase, 10000));
        continue;
      }
      this.keep(answer);
      return answer.user;
    }
  }

  keep(answer) {
    const previous = this.current;
    this.current = {
      access: answer.access_token, refresh: answer.refresh_token, ttl: answer.expires_in * 1000,
      // The server's exp is whole seconds from its iat (also whole): up to a second earlier than this clock's.
      expiresAt: Date.now() + answer.expires_in * 1000 - 1000, user: answer.user || (previous && previous.user),
    };
    this.client.store.set("tokens", this.current);
    this.schedule();
  }

  schedule() {
    clearTimeout(this._timer);
    if (!this.current || this.client.closed) return;
    const delay = Math.max(0, this.current.expiresAt - this.margin() - Date.now());
    this._timer = setTimeout(() => this.refresh().catch(() => {}), Math.min(delay, 2 ** 31 - 1));
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
    const stored = client.store.get("tokens"); // another client object on this storage may have refreshed
    if (stored && this.current && stored.refresh !== this.current.refresh) {
      this.current = stored;
      if (!this.stale()) return this.schedule();
    }
    if (!this.current) return this._lost("not signed in");
    let answer;
    try {
      answer = await client._fetch("POST", "/api/v1/auth/refresh", { refresh_token: this.current.refresh },
        { retries: 2 });
    } catch (error) {
      if (AUTH_FAILURES.includes(error.code)) return this._lost(error.message);
      clearTimeout(this._timer);
      if (!client.closed) this._timer = setTimeout(() => this.refresh().catch(() => {}), 5000); // network: soon again
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
        (error) => error); // the session ends here whatever the server answers
    }
  }
}
