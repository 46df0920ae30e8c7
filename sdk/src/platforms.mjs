// Platform adapters: what the client needs of WeChat, uni-app, Taro or a browser.
//
// An adapter is {name, maxRequests, connect, request, upload, login?, storage, watch}:
//   connect(url, token, {open, message, close, error}) -> {send(text), close(code, reason)}
//   request({method, url, headers, body}) -> Promise<{status, data}>, rejects with code "network"
//   upload({url, headers, filePath | file, name, formData, onProgress}) -> Promise<{status, data}>
//   login() -> Promise<code of wx.login>  (Mini Programs only)
//   storage: {get(key) -> string | null, set(key, string), remove(key)}, synchronous
//   watch({show, hide, network(online)}) -> a function that stops watching

import { SdkError } from "./util.mjs";

const networkError = (message) => new SdkError("network", message || "network failure");

function parseBody(data) {
  if (typeof data !== "string") return data;
  try {
    return data ? JSON.parse(data) : null;
  } catch {
    return data;
  }
}

/** WeChat's `wx`, or an object with the same calls (uni-app's `uni`, Taro's `Taro`). */
export function miniProgram(api, name = "wechat") {
  return {
    name,
    maxRequests: 8, // WeChat runs 10 wx.request at once; leave room for the app's own
    connect(url, token, on) {
      // uni-app returns a SocketTask only when a callback is given; Taro returns a promise of it.
      const made = api.connectSocket({
        url, header: { Authorization: "Bearer " + token }, complete() {}, fail(error) {
          on.error((error && error.errMsg) || "connectSocket failed");
        },
      });
      let task = null;
      let closeWith = null;
      const wire = (t) => {
        task = t;
        t.onOpen(() => on.open());
        t.onMessage((event) => on.message(event.data));
        t.onClose((event) => on.close(event.code || 1006, event.reason || ""));
        t.onError((event) => on.error((event && event.errMsg) || "socket error"));
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
        },
      };
    },
    request({ method, url, headers, body }) {
      return new Promise((resolve, reject) => {
        api.request({
          url, method, header: headers, data: body, dataType: "json",
          success: (res) => resolve({ status: res.statusCode, data: parseBody(res.data) }),
          fail: (error) => reject(networkError(error && error.errMsg)),
        });
      });
    },
    upload({ url, headers, filePath, name: field, formData, onProgress }) {
      return new Promise((resolve, reject) => {
        const task = api.uploadFile({
          url, filePath, name: field, header: headers, formData,
          success: (res) => resolve({ status: res.statusCode, data: parseBody(res.data) }),
          fail: (error) => reject(networkError(error && error.errMsg)),
        });
        if (onProgress && task && task.onProgressUpdate) {
          task.onProgressUpdate((p) => onProgress({
            progress: p.progress, sent: p.totalBytesSent, total: p.totalBytesExpectedToSend,
          }));
        }
      });
    },
    login() {
      return new Promise((resolve, reject) => {
        api.login({
          provider: "weixin", // uni-app's; WeChat and Taro ignore it
          success: (res) => (res.code ? resolve(res.code) : reject(new SdkError("login_failed", res.errMsg))),
          fail: (error) => reject(networkError(error && error.errMsg)),
        });
      });
    },
    storage: {
      get(key) {
        const value = api.getStorageSync(key);
        return value === "" || value == null ? null : value;
      },
      set: (key, value) => api.setStorageSync(key, value),
      remove: (key) => api.removeStorageSync(key),
    },
    watch({ show, hide, network }) {
      const onNetwork = (status) => network(status.isConnected);
      const pairs = [["onAppShow", "offAppShow", () => show()], ["onAppHide", "offAppHide", () => hide()],
        ["onNetworkStatusChange", "offNetworkStatusChange", onNetwork]];
      for (const [on, , listener] of pairs) if (typeof api[on] === "function") api[on](listener);
      return () => {
        for (const [, off, listener] of pairs) if (typeof api[off] === "function") api[off](listener);
      };
    },
  };
}

export const wechat = (wx) => miniProgram(wx, "wechat");
export const uniApp = (u) => miniProgram(u, "uni");
export const taro = (t) => miniProgram(t, "taro");

/** A browser: WebSocket (the token in the query), fetch, localStorage, visibility and
 * online/offline. `pauseWhenHidden: true` closes the socket while the page is hidden. */
export function browser(options = {}) {
  const g = globalThis;
  const memory = new Map();
  const local = options.storage || (() => {
    try {
      return g.localStorage;
    } catch {
      return null; // storage blocked (private mode, sandboxed frame)
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
          } catch {
            ws.close();
          }
        },
      };
    },
    async request({ method, url, headers, body }) {
      let text, status;
      try {
        const response = await (options.fetch || g.fetch)(url, {
          method, headers: { "Content-Type": "application/json", ...headers },
          body: body === undefined ? undefined : JSON.stringify(body),
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
            progress: e.total ? Math.round((100 * e.loaded) / e.total) : 0, sent: e.loaded, total: e.total,
          });
        }
        xhr.onload = () => resolve({ status: xhr.status, data: parseBody(xhr.responseText) });
        xhr.onerror = () => reject(networkError("upload failed"));
        xhr.send(form);
      });
    },
    storage: {
      get: (key) => (local ? local.getItem(key) : memory.get(key) ?? null),
      set: (key, value) => (local ? local.setItem(key, value) : memory.set(key, value)),
      remove: (key) => (local ? local.removeItem(key) : memory.delete(key)),
    },
    watch({ show, hide, network }) {
      const doc = g.document;
      const visibility = () => (doc.visibilityState === "hidden" ? options.pauseWhenHidden && hide() : show());
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
    },
  };
}

/** The platform this code runs on: wx, then uni, then a browser. */
export function detect() {
  // Bare names: a Mini Program's `wx` is a global of its own, not always on globalThis.
  if (typeof wx === "object" && wx && wx.connectSocket) return wechat(wx);
  if (typeof uni === "object" && uni && uni.connectSocket) return uniApp(uni);
  if (typeof WebSocket === "function") return browser();
  throw new SdkError("no_platform", "no platform found: pass options.platform (wechat(wx), taro(Taro)...)");
}
