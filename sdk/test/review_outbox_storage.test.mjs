// Review finding: WeChat stores at most 1 MB under one storage key (setStorageSync
// fails past it). The outbox is one key, bounded by count only (200 publishes of up
// to 16 KiB): past 1 MB its writes failed silently, and an app killed then lost the
// publishes it had accepted. Every publish accepted must reach the next client.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { collect, connected, makeClient, publicRoom, waitFor } from "./helpers/clients.mjs";
import { Server } from "./helpers/server.mjs";

const KEY_MAX = 1024 * 1024; // WeChat's largest value of one storage key
let server;
const clients = [];

before(async () => {
  server = await new Server().start();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.close();
});

/** A Map that refuses values over KEY_MAX, as wx.setStorageSync does. */
function wechatStorage() {
  const storage = new Map();
  const set = storage.set.bind(storage);
  storage.set = (key, value) => {
    if (typeof value === "string" && Buffer.byteLength(value) > KEY_MAX) {
      throw new Error("setStorageSync:fail exceed storage item max length");
    }
    return set(key, value);
  };
  return storage;
}

test("publishes accepted while hidden are all sent by the next client, or refused queue_full", async () => {
  const watcher = makeClient(server.url, "outbox-watcher");
  const first = makeClient(server.url, "outbox-user", { storage: wechatStorage() });
  clients.push(watcher, first);
  await watcher.signIn();
  await first.signIn();
  const room = await publicRoom(watcher);
  const seen = collect(watcher, room);
  await connected(watcher);
  first.wx.hide();
  const accepted = [];
  for (let n = 0; n < 80; n++) { // 80 x 15 KB: more than one storage key holds
    const text = n + ":" + "x".repeat(15000);
    const sent = first.publish(room, { text });
    const refused = await Promise.race([sent.then(() => false, (e) => e.code === "queue_full"),
      new Promise((resolve) => setTimeout(() => resolve(false), 5))]);
    if (!refused) accepted.push(text);
    sent.catch(() => {});
  }
  assert.ok(accepted.length > 0);
  const second = makeClient(server.url, "outbox-user", { storage: first.wx.storage });
  clients.push(second);
  await waitFor(() => seen.messages.length >= accepted.length, `${accepted.length} accepted publishes`, 20000);
  assert.deepEqual(seen.texts(), accepted);
  first.close();
});
