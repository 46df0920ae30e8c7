// A `wx` for tests, built on real sockets (ws) and real HTTP (node:http): the
// calls the SDK uses, answering as WeChat documents them, with in-memory storage.
// The test plays the platform's part: hide(), show(), network(false).
import { readFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { basename } from "node:path";
import WebSocket from "ws";

/** Storage shared by the wx objects given it: a restarted app keeps it. */
export const memoryStorage = () => new Map();

const KEY_MAX = 1024 * 1024; // WeChat's largest value of one storage key

/** Storage that refuses values over 1 MB, as wx.setStorageSync does. */
export function wechatStorage() {
  const storage = memoryStorage();
  const set = storage.set.bind(storage);
  storage.set = (key, value) => {
    if (typeof value === "string" && Buffer.byteLength(value) > KEY_MAX) {
      throw new Error("setStorageSync:fail exceed storage item max length");
    }
    return set(key, value);
  };
  return storage;
}

export function makeWx({ storage = memoryStorage(), code = "ok-user" } = {}) {
  const listeners = { show: [], hide: [], network: [] };
  const sockets = [];
  const wx = {
    sockets, // every SocketTask made, for tests
    storage, // the Map under getStorageSync
    loginCode: code, // what wx.login answers
    connects: 0, // connectSocket calls

    connectSocket({ url, header }) {
      wx.connects++;
      const ws = new WebSocket(url, { headers: header });
      const on = { open: [], message: [], close: [], error: [] };
      const fire = (name, event) => on[name].forEach((f) => f(event));
      let closed = false;
      const closeOnce = (code, reason) => {
        if (closed) return;
        closed = true;
        fire("close", { code, reason });
      };
      ws.on("open", () => fire("open", { header: {} }));
      ws.on("message", (data) => fire("message", { data: data.toString() }));
      ws.on("close", (code, reason) => closeOnce(code, reason.toString()));
      ws.on("error", (error) => {
        fire("error", { errMsg: String(error.message) });
        closeOnce(1006, "");
      });
      ws.on("unexpected-response", (req, res) => {
        fire("error", { errMsg: `Invalid HTTP status ${res.statusCode}` });
        closeOnce(1006, "");
        req.destroy();
      });
      const task = {
        ws,
        send({ data }) {
          ws.send(data);
        },
        close({ code, reason } = {}) {
          try {
            ws.close(code || 1000, reason);
          } catch {
            ws.terminate();
          }
        },
        onOpen: (f) => on.open.push(f),
        onMessage: (f) => on.message.push(f),
        onClose: (f) => on.close.push(f),
        onError: (f) => on.error.push(f),
      };
      sockets.push(task);
      return task;
    },

    request({ url, method = "GET", header = {}, data, success, fail }) {
      const body = data === undefined || method === "GET" ? null : Buffer.from(JSON.stringify(data));
      const headers = { ...header };
      if (body) headers["Content-Type"] = "application/json";
      send(url, method, headers, body, (status, text, responseHeaders) => {
        let parsed = text;
        try {
          parsed = JSON.parse(text);
        } catch {}
        success({ statusCode: status, data: parsed, header: responseHeaders });
      }, (message) => fail({ errMsg: "request:fail " + message }));
    },

    uploadFile({ url, filePath, name, header = {}, formData = {}, success, fail }) {
      const boundary = "----wxtest" + Math.random().toString(16).slice(2);
      const parts = [];
      for (const [key, value] of Object.entries(formData)) {
        parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${key}"\r\n\r\n${value}\r\n`));
      }
      parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"; filename="${basename(filePath)}"\r\n` +
        "Content-Type: application/octet-stream\r\n\r\n"), readFileSync(filePath), Buffer.from(`\r\n--${boundary}--\r\n`));
      const body = Buffer.concat(parts);
      const progress = [];
      const task = { onProgressUpdate: (f) => progress.push(f) };
      send(url, "POST", { ...header, "Content-Type": `multipart/form-data; boundary=${boundary}` }, body,
        (status, text) => success({ statusCode: status, data: text }), // uploadFile gives the body as a string
        (message) => fail({ errMsg: "uploadFile:fail " + message }),
        (sent) => progress.forEach((f) => f({ progress: Math.round((100 * sent) / body.length), totalBytesSent: sent,
          totalBytesExpectedToSend: body.length })));
      return task;
    },

    login({ success, fail }) {
      if (wx.loginCode) setTimeout(() => success({ code: wx.loginCode, errMsg: "login:ok" }), 0);
      else setTimeout(() => fail({ errMsg: "login:fail" }), 0);
    },

    getStorageSync: (key) => (storage.has(key) ? storage.get(key) : ""),
    setStorageSync: (key, value) => storage.set(key, value),
    removeStorageSync: (key) => storage.delete(key),

    onAppShow: (f) => listeners.show.push(f),
    offAppShow: (f) => (listeners.show = listeners.show.filter((g) => g !== f)),
    onAppHide: (f) => listeners.hide.push(f),
    offAppHide: (f) => (listeners.hide = listeners.hide.filter((g) => g !== f)),
    onNetworkStatusChange: (f) => listeners.network.push(f),
    offNetworkStatusChange: (f) => (listeners.network = listeners.network.filter((g) => g !== f)),

    // The platform's side, played by the test:
    hide: () => listeners.hide.forEach((f) => f()),
    show: () => listeners.show.forEach((f) => f({ scene: 1001 })),
    network: (isConnected) => listeners.network.forEach((f) => f({ isConnected, networkType: isConnected ? "wifi" : "none" })),
  };
  return wx;
}

function send(url, method, headers, body, done, failed, progress) {
  const request = httpRequest(url, { method, headers: { ...headers, ...(body ? { "Content-Length": body.length } : {}) } },
    (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => done(response.statusCode, Buffer.concat(chunks).toString(), response.headers));
      response.on("error", () => failed("interrupted"));
    });
  request.on("error", () => failed("interrupted")); // WeChat's word for a request cut in flight
  if (body) {
    request.write(body, () => progress && progress(body.length)); // as WeChat: progress comes later
  }
  request.end();
}
