// Access tokens that live 3 seconds: refreshed before expiry, over HTTP then on
// the open socket, with nothing lost; and after a stay in the background past expiry.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { collect, connected, consecutive, makeClient, publicRoom, waitFor } from "./helpers/clients.mjs";
import { Server } from "./helpers/server.mjs";

let server;
const clients = [];

before(async () => {
  server = await new Server({ ACCESS_TOKEN_TTL: "3" }).start();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.close();
});

test("tokens expiring mid-session are refreshed on the socket: no 4001, nothing lost", async () => {
  const alice = makeClient(server.url, "ttl-alice");
  const bob = makeClient(server.url, "ttl-bob");
  clients.push(alice, bob);
  await alice.signIn();
  await bob.signIn();
  const room = await publicRoom(alice);
  const atAlice = collect(alice, room);
  const atBob = collect(bob, room);
  await connected(alice);
  await connected(bob);
  const sent = [];
  for (let i = 0; i < 25; i++) { // 5 s: more than two lifetimes of a token
    const who = i % 2 ? bob : alice;
    sent.push("m" + i);
    await who.publish(room, { text: "m" + i });
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await waitFor(() => atAlice.messages.length === sent.length && atBob.messages.length === sent.length, "all");
  assert.deepEqual(atBob.texts(), sent);
  assert.deepEqual(atAlice.texts(), sent);
  for (const c of [alice, bob]) {
    assert.ok(c.events.filter(([name]) => name === "tokenRefreshed").length >= 2, "refreshed at least twice");
    assert.ok(!c.events.some(([name, e]) => name === "disconnected" && e.code === 4001), "never closed for expiry");
  }
  assert.equal(alice.wx.connects, 1, "the same socket all along");
});

test("back from the background after the token expired: refreshed first, then reconnected with what was missed", async () => {
  const alice = makeClient(server.url, "ttl2-alice");
  const bob = makeClient(server.url, "ttl2-bob");
  clients.push(alice, bob);
  await alice.signIn();
  await bob.signIn();
  const room = await publicRoom(alice);
  collect(alice, room);
  const atBob = collect(bob, room);
  await connected(bob);
  bob.wx.hide();
  clearTimeout(bob.tokens._timer); // a suspended app runs no timers
  await alice.publish(room, { text: "while bob sleeps" });
  await new Promise((resolve) => setTimeout(resolve, 3500));
  assert.ok(bob.tokens.stale(), "bob's token expired meanwhile");
  bob.wx.show();
  await waitFor(() => atBob.messages.length === 1, "bob caught up");
  assert.deepEqual(atBob.texts(), ["while bob sleeps"]);
  assert.ok(consecutive(atBob.seqs()));
  assert.ok(!bob.tokens.stale());
});
