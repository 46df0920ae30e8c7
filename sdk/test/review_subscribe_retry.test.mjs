// Review finding: a subscribe answered `unavailable` (the database did not answer
// within the server's 10 s) dropped the subscription for good, though the protocol
// says to try again: the database stalls (the store stopped with SIGSTOP), comes
// back, and the subscription must still deliver.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import { collect, connected, makeClient, waitFor } from "./helpers/clients.mjs";
import { Server } from "./helpers/server.mjs";

let server;
let stalled = 0; // the store's pid while it is stopped
const clients = [];

after(async () => {
  if (stalled) process.kill(stalled, "SIGCONT");
  for (const c of clients) c.close();
  await server?.close();
});

function storePid(serverPid) { // run.py's child: the embedded store it launched
  const children = readFileSync(`/proc/${serverPid}/task/${serverPid}/children`, "utf8").trim().split(/\s+/);
  assert.equal(children.length, 1, "run.py has one child, its store");
  return Number(children[0]);
}

test("a subscribe answered unavailable while the database stalls is tried again, and then delivers", async () => {
  server = await new Server().start();
  const alice = makeClient(server.url, "retry-alice");
  clients.push(alice);
  await alice.signIn();
  alice.connect();
  await connected(alice);
  const errors = [];
  const subscribed = [];
  alice.on("error", (error) => errors.push(error.code));
  alice.on("subscribed", (event) => subscribed.push(event.channel));
  stalled = storePid(server.child.pid);
  process.kill(stalled, "SIGSTOP");
  const feed = collect(alice, "feed:review-stall");
  await waitFor(() => errors.includes("unavailable"), "the subscribe answered unavailable", 20000);
  process.kill(stalled, "SIGCONT");
  stalled = 0;
  await waitFor(() => subscribed.includes("feed:review-stall"), "subscribed once the database is back");
  const published = await server.serverApi("POST", "/api/v1/server/publish",
    { channel: "feed:review-stall", data: { text: "after the stall" } });
  assert.equal(published.status, 200, JSON.stringify(published.body));
  await waitFor(() => feed.messages.length === 1, "the message on the feed (the subscription was dropped)");
  assert.equal(feed.messages[0].data.text, "after the stall");
});
