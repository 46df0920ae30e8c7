// Clients of the SDK on the test `wx`, with timings shortened for tests, and waiting helpers.
import { createClient, wechat } from "../../src/index.mjs";
import { makeWx } from "./wx.mjs";

export const FAST = { reconnectBase: 100, reconnectMax: 1000, pingInterval: 1000, pingTimeout: 1000, retryBase: 50 };

/** A signed-in-able client of user `name` (wx.login answers ok-<name>); `storage` to share one. */
export function makeClient(url, name, options = {}) {
  const wx = makeWx({ code: "ok-" + name, storage: options.storage });
  const client = createClient({ url, platform: wechat(wx), ...FAST, ...options.client });
  client.wx = wx;
  client.events = [];
  for (const event of ["disconnected", "reconnecting", "connected", "recovery", "tokenRefreshed", "signedOut"]) {
    client.on(event, (payload) => client.events.push([event, payload]));
  }
  return client;
}

/** Collects the messages a subscription delivers. */
export function collect(client, channel, options) {
  const messages = [];
  const others = [];
  client.subscribe(channel, {
    message: (m) => messages.push(m), join: (e) => others.push(["join", e.user]), leave: (e) => others.push(["leave", e.user]),
  }, options);
  return { messages, others, texts: () => messages.map((m) => m.data.text), seqs: () => messages.map((m) => m.seq) };
}

/** Waits until `predicate()` is true (polls); the timeout only guards against hanging. */
export async function waitFor(predicate, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export const connected = (client) => waitFor(() => client.state === "connected", "connected");

export async function publicRoom(client) {
  const room = await client.api("POST", "/api/v1/rooms", { name: "sdk-test", public: true });
  return "room:" + room.id;
}

/** Every seq from `first` to `last` exactly once, in order. */
export function consecutive(seqs) {
  return seqs.every((seq, i) => i === 0 || seq === seqs[i - 1] + 1);
}
