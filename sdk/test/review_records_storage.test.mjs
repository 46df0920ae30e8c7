// Review finding: the records queue (records waiting for the server's answer, with
// their Idempotency-Keys) is one storage key, as the outbox is, and was unbounded:
// past WeChat's 1 MB a key its writes failed silently, and an app killed then lost
// records createRecord had accepted. Every record accepted must reach the server.
import assert from "node:assert/strict";
import { test } from "node:test";
import { makeClient } from "./helpers/clients.mjs";
import { startProxy } from "./helpers/proxy.mjs";
import { testServer } from "./helpers/fixture.mjs";
import { wechatStorage } from "./helpers/wx.mjs";

const env = testServer();
const { clients } = env;


/** Every feedback record of `client`'s user, paged. */
async function stored(client) {
  const names = [];
  for (let path = "/api/v1/records/feedback?limit=100"; ;) {
    const page = await client.api("GET", path);
    names.push(...page.items.map((item) => item.data.name));
    if (!page.next) return names;
    path = "/api/v1/records/feedback?limit=100&before=" + encodeURIComponent(page.next);
  }
}

test("records accepted while the network is down are all stored by the next client, or refused queue_full", async () => {
  const proxy = await startProxy(env.server.port);
  const first = makeClient(proxy.url, "records-user", { storage: wechatStorage(), client: { requestRetries: 0 } });
  clients.push(first);
  await first.signIn();
  await proxy.close(); // the network is gone: every request fails ("interrupted")
  const accepted = [];
  let refused = 0;
  for (let n = 0; n < 30; n++) { // 30 x 60 KB: more than one storage key holds
    const name = "batch-" + n;
    const items = Array.from({ length: 10 }, () => ({ name, rating: 5, message: "字".repeat(2000) }));
    const error = await first.createRecord("feedback", { items }).then(() => null, (e) => e);
    if (error?.code === "queue_full") refused++;
    else if (error?.code === "network") accepted.push(name);
    else assert.fail("unexpected answer " + (error?.code ?? "ok"));
  }
  assert.ok(accepted.length > 0 && refused > 0, `${accepted.length} accepted, ${refused} refused`);
  first.close();
  const second = makeClient(env.server.url, "records-user", { storage: first.wx.storage });
  clients.push(second);
  await second.signIn();
  const deadline = Date.now() + 20000; // a guard against hanging only
  while (second.records.length && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  const names = await stored(second);
  assert.deepEqual([...new Set(names)].sort(), [...accepted].sort());
  assert.equal(names.length, accepted.length * 10, "each batch stored once");
});
