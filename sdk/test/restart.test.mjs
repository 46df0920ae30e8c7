// The server stopped (SIGTERM) and started again on the same data directory in the
// middle of a conversation, both sides publishing meanwhile.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { collect, connected, consecutive, makeClient, publicRoom, waitFor } from "./helpers/clients.mjs";
import { Server } from "./helpers/server.mjs";

let server;
const clients = [];

after(async () => {
  for (const c of clients) c.close();
  await server?.close();
});

test("a server restart mid-conversation: each client ends with every message exactly once, in order", async () => {
  server = await new Server().start();
  const alice = makeClient(server.url, "restart-alice");
  const bob = makeClient(server.url, "restart-bob");
  clients.push(alice, bob);
  await alice.signIn();
  await bob.signIn();
  const room = await publicRoom(alice);
  const atAlice = collect(alice, room);
  const atBob = collect(bob, room);
  await connected(alice);
  await connected(bob);
  const sent = [];
  const say = (who, text) => {
    sent.push(text);
    return who.publish(room, { text }).catch((error) => assert.fail(`${text}: ${error.code} ${error.message}`));
  };
  const acks = [];
  for (let i = 0; i < 5; i++) acks.push(say(alice, "alice " + i), say(bob, "bob " + i));
  // Stopped while publishes may be in flight; both sides go on publishing while it is down.
  const stopping = server.stop();
  for (let i = 5; i < 10; i++) acks.push(say(alice, "alice " + i), say(bob, "bob " + i));
  assert.equal(await stopping, 0, "run.py exits 0 on SIGTERM");
  await waitFor(() => alice.state !== "connected" && bob.state !== "connected", "both see the server gone");
  for (let i = 10; i < 13; i++) acks.push(say(alice, "alice " + i), say(bob, "bob " + i));
  assert.ok(alice.events.some(([name, e]) => name === "disconnected" && e.code === 1001 && e.willReconnect),
    "closed with 1001 and reconnecting");
  await new Promise((resolve) => setTimeout(resolve, 300)); // a few refused reconnects
  await server.start();
  await Promise.all(acks);
  await waitFor(() => atAlice.messages.length >= sent.length && atBob.messages.length >= sent.length, "every message");
  await new Promise((resolve) => setTimeout(resolve, 300)); // a double would arrive now
  for (const side of [atAlice, atBob]) {
    assert.equal(side.messages.length, sent.length);
    assert.deepEqual(side.seqs(), sent.map((_, i) => i + 1));
    assert.deepEqual([...side.texts()].sort(), [...sent].sort(), "every text once");
    assert.ok(consecutive(side.seqs()));
  }
  assert.deepEqual(atAlice.texts(), atBob.texts(), "the same order for both");
  const inOrder = (who) => atAlice.texts().filter((t) => t.startsWith(who));
  assert.deepEqual(inOrder("alice"), [...Array(13).keys()].map((i) => "alice " + i), "alice's in the order she sent them");
  assert.deepEqual(inOrder("bob"), [...Array(13).keys()].map((i) => "bob " + i));
  const history = await alice.history(room, { after: 0, limit: 100 });
  assert.equal(history.messages.length, sent.length, "stored once each");
});
