// Review finding: WeChat stores at most 1 MB under one storage key (setStorageSync
// fails past it). The outbox is one key, bounded by count only (200 publishes of up
// to 16 KiB): past 1 MB its writes failed silently, and an app killed then lost the
// publishes it had accepted. Every publish accepted must reach the next client.
import assert from "node:assert/strict";
import { test } from "node:test";
import { collect, connected, makeClient, publicRoom, waitFor } from "./helpers/clients.mjs";
import { testServer } from "./helpers/fixture.mjs";
import { wechatStorage } from "./helpers/wx.mjs";

const env = testServer();
const { clients } = env;


test("publishes accepted while hidden are all sent by the next client, or refused queue_full", async () => {
  const watcher = makeClient(env.server.url, "outbox-watcher");
  const first = makeClient(env.server.url, "outbox-user", { storage: wechatStorage() });
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
  const second = makeClient(env.server.url, "outbox-user", { storage: first.wx.storage });
  clients.push(second);
  await waitFor(() => seen.messages.length >= accepted.length, `${accepted.length} accepted publishes`, 20000);
  assert.deepEqual(seen.texts(), accepted);
  first.close();
});
