// Sign-in and chat, hide/show, a silent network drop, a restarted app, close codes,
// records and uploads: the SDK on a real-socket `wx` against the real server.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { taro } from "../src/index.mjs";
import { collect, connected, consecutive, makeClient, publicRoom, waitFor } from "./helpers/clients.mjs";
import { startProxy } from "./helpers/proxy.mjs";
import { makeWx } from "./helpers/wx.mjs";
import { Server } from "./helpers/server.mjs";

let server;
const clients = [];
const client = (name, options) => {
  const made = makeClient(options?.url || server.url, name, options);
  clients.push(made);
  return made;
};

before(async () => {
  server = await new Server({ RECOVERY_MAX: "5" }).start();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.close();
});

test("two users sign in with wx.login and chat: each message once, in order, with join, presence and history", async () => {
  const alice = client("alice");
  const bob = client("bob");
  const aliceUser = await alice.signIn();
  const bobUser = await bob.signIn();
  assert.notEqual(aliceUser.id, bobUser.id);
  assert.deepEqual(server.wechat.calls.map(([path, args]) => [path, args.js_code]).slice(-2),
    [["/sns/jscode2session", "ok-alice"], ["/sns/jscode2session", "ok-bob"]]);
  const room = await publicRoom(alice);
  const atAlice = collect(alice, room);
  await connected(alice);
  await waitFor(() => alice.seqs[room] === 0, "alice subscribed");
  const atBob = collect(bob, room);
  await waitFor(() => atAlice.others.some(([kind, user]) => kind === "join" && user === bobUser.id), "bob's join");
  const ack = await alice.publish(room, { text: "hi bob" });
  assert.equal(ack.seq, 1);
  assert.match(ack.id, /^[0-9a-f]{24}$/);
  assert.ok(ack.ts);
  await bob.publish(room, { text: "hi alice" });
  await alice.publish(room, { text: "how are you?" });
  for (const side of [atAlice, atBob]) await waitFor(() => side.messages.length === 3, "three messages");
  assert.deepEqual(atBob.texts(), ["hi bob", "hi alice", "how are you?"]);
  assert.deepEqual(atAlice.seqs(), [1, 2, 3]);
  assert.equal(atBob.messages[0].from, aliceUser.id);
  const presence = await bob.presence(room);
  assert.deepEqual([...presence.users].sort(), [aliceUser.id, bobUser.id].sort());
  const history = await bob.history(room, { before: 3, limit: 10 });
  assert.deepEqual(history.messages.map((m) => m.data.text), ["hi bob", "hi alice"]);
  assert.equal(alice.wx.connects, 1, "one socket whatever is subscribed");
});

test("app hidden: the socket closes and nothing reconnects; shown: at once, the missed messages and the queued publishes once", async () => {
  const alice = client("hide-alice");
  const bob = client("hide-bob");
  await alice.signIn();
  await bob.signIn();
  const room = await publicRoom(alice);
  const atAlice = collect(alice, room);
  const atBob = collect(bob, room);
  await connected(alice);
  await connected(bob);
  await alice.publish(room, { text: "before" });
  await waitFor(() => atBob.messages.length === 1, "bob got the first");
  const connects = bob.wx.connects;
  bob.wx.hide();
  await waitFor(() => bob.state === "disconnected", "bob's socket closed");
  const queued = [bob.publish(room, { text: "bob while hidden 1" }), bob.publish(room, { text: "bob while hidden 2" })];
  await alice.publish(room, { text: "while bob is away" });
  await new Promise((resolve) => setTimeout(resolve, 600));
  assert.equal(bob.wx.connects, connects, "no reconnect while hidden");
  bob.wx.show();
  const acks = await Promise.all(queued);
  assert.deepEqual(acks.map((a) => a.seq), [3, 4]);
  await waitFor(() => atBob.messages.length === 4 && atAlice.messages.length === 4, "everyone has four");
  assert.deepEqual(atBob.texts(), ["before", "while bob is away", "bob while hidden 1", "bob while hidden 2"]);
  assert.deepEqual(atAlice.texts(), atBob.texts());
  assert.ok(bob.events.some(([name, e]) => name === "disconnected" && e.reason === "app hidden"));
});

test("a network that drops without a close frame: the ping timer notices, the client reconnects and misses nothing", async () => {
  const proxy = await startProxy(server.port);
  try {
    const alice = client("net-alice");
    const bob = client("net-bob", { url: proxy.url });
    await alice.signIn();
    await bob.signIn();
    const room = await publicRoom(alice);
    const atBob = collect(bob, room);
    collect(alice, room);
    await connected(bob);
    await waitFor(() => bob.seqs[room] === 0, "bob subscribed");
    proxy.cut();
    await alice.publish(room, { text: "lost in the dead socket" });
    await alice.publish(room, { text: "and this one" });
    await waitFor(() => bob.events.some(([name, e]) => name === "disconnected" && e.reason === "no answer to ping"),
      "the dead connection noticed");
    await waitFor(() => atBob.messages.length === 2, "bob recovered both");
    await bob.publish(room, { text: "back" });
    await waitFor(() => atBob.messages.length === 3, "bob's own");
    assert.deepEqual(atBob.texts(), ["lost in the dead socket", "and this one", "back"]);
    assert.ok(consecutive(atBob.seqs()));
  } finally {
    await proxy.close();
  }
});

test("an app killed with queued publishes: the next client on the same storage sends them once", async () => {
  const watcher = client("kill-watcher");
  const first = client("kill-user");
  await watcher.signIn();
  await first.signIn();
  const room = await publicRoom(watcher);
  const seen = collect(watcher, room);
  await connected(watcher);
  first.wx.hide(); // in the background, where WeChat destroys apps
  const lost = [1, 2, 3].map((n) => first.publish(room, { text: "queued " + n }));
  for (const p of lost) p.catch(() => {}); // the killed app never learns
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(seen.messages.length, 0);
  // The app is destroyed (its object is never used again); the user opens it again.
  const second = client("kill-user", { storage: first.wx.storage });
  const published = [];
  second.on("published", (ack) => published.push(ack.seq));
  await waitFor(() => published.length === 3, "the queue sent by the new client");
  await waitFor(() => seen.messages.length === 3, "the watcher got three");
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(seen.texts(), ["queued 1", "queued 2", "queued 3"]);
  const history = await watcher.history(room, { after: 0 });
  assert.equal(history.messages.length, 3, "stored once each");
  first.close();
});

test("close code 4010 (replaced) and 4000 (server API) start no reconnect fight; connect() reconnects", async () => {
  const alice = client("codes-alice");
  const user = await alice.signIn();
  alice.connect();
  await connected(alice);
  const token = alice.tokens.current.access;
  const extra = [];
  for (let i = 0; i < 5; i++) {
    const ws = new WebSocket(server.url.replace("http", "ws") + "/ws", { headers: { Authorization: "Bearer " + token } });
    extra.push(ws);
    await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
  }
  await waitFor(() => alice.state === "disconnected", "replaced");
  const replaced = alice.events.find(([name]) => name === "disconnected")[1];
  assert.equal(replaced.code, 4010);
  assert.equal(replaced.willReconnect, false);
  const connects = alice.wx.connects;
  await new Promise((resolve) => setTimeout(resolve, 800));
  assert.equal(alice.wx.connects, connects, "no reconnect after 4010");
  for (const ws of extra) ws.close();
  alice.connect();
  await connected(alice);
  const answer = await server.serverApi("POST", "/api/v1/server/disconnect", { user_id: user.id });
  assert.equal(answer.status, 200);
  await waitFor(() => alice.state === "disconnected", "disconnected by the server API");
  const last = alice.events.filter(([name]) => name === "disconnected").at(-1)[1];
  assert.equal(last.code, 4000);
  const before = alice.wx.connects;
  await new Promise((resolve) => setTimeout(resolve, 800));
  assert.equal(alice.wx.connects, before, "no reconnect after 4000");
  assert.ok(!alice.events.some(([name]) => name === "reconnecting"));
});

test("a record whose answer is lost ('interrupted') is retried with its Idempotency-Key and stored once", async () => {
  const proxy = await startProxy(server.port);
  try {
    const user = client("records", { url: proxy.url });
    await user.signIn();
    proxy.dropNextResponse();
    const record = await user.createRecord("feedback", { name: "Li Lei", rating: 5, message: "great app" });
    assert.equal(record.data.name, "Li Lei");
    assert.equal(proxy.dropped, 1, "the first answer was lost");
    const stored = await user.api("GET", "/api/v1/records/feedback?limit=50");
    assert.equal(stored.items.length, 1, "stored once");
    assert.equal(stored.items[0].id, record.id);
    assert.deepEqual(user.records, [], "the key is forgotten once acknowledged");
    await assert.rejects(user.createRecord("feedback", { name: "x" }), (error) => error.code === "validation_failed");
  } finally {
    await proxy.close();
  }
});

test("upload sends a file over wx.uploadFile with progress and answers the stored file", async () => {
  const user = client("uploader");
  await user.signIn();
  const path = join(tmpdir(), "sdk-test-pixel.png");
  writeFileSync(path, Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==", "base64"));
  const progress = [];
  const file = await user.upload(path, { formData: { album: "trip" }, onProgress: (p) => progress.push(p.progress) });
  assert.equal(file.content_type, "image/png");
  assert.equal(file.size, 70);
  assert.equal(progress.at(-1), 100);
});

test("text with half an emoji (a lone surrogate, which the server cannot store) is sent with U+FFFD, once", async () => {
  const alice = client("surrogate-alice");
  await alice.signIn();
  const room = await publicRoom(alice);
  const seen = collect(alice, room);
  await connected(alice);
  const cut = "👋 hi 😀".slice(0, -1); // slice() cut the emoji in half
  const guard = new Promise((_, reject) => setTimeout(() => reject(new Error("never acknowledged")), 10000).unref());
  const ack = await Promise.race([alice.publish(room, { text: cut }), guard]);
  assert.equal(ack.seq, 1);
  await waitFor(() => seen.messages.length === 1, "delivered");
  assert.equal(seen.texts()[0], "👋 hi \ufffd");
  assert.equal(alice.wx.connects, 1, "the socket survived");
});

test("more missed than the server replays (RECOVERY_MAX 5): a recovery event, the newest five, older ones by history", async () => {
  const alice = client("recovery-alice");
  const bob = client("recovery-bob");
  await alice.signIn();
  await bob.signIn();
  const room = await publicRoom(alice);
  const atBob = collect(bob, room);
  await connected(bob);
  await waitFor(() => bob.seqs[room] === 0, "bob subscribed");
  bob.wx.hide();
  for (let i = 1; i <= 8; i++) await alice.publish(room, { text: "m" + i });
  const recovery = new Promise((resolve) => bob.on("recovery", resolve));
  bob.wx.show();
  const event = await recovery;
  assert.deepEqual(event, { channel: room, recovered: false, oldest: 4 });
  await waitFor(() => atBob.messages.length === 5, "the newest five");
  assert.deepEqual(atBob.texts(), ["m4", "m5", "m6", "m7", "m8"]);
  const older = await bob.history(room, { before: event.oldest });
  assert.deepEqual(older.messages.map((m) => m.data.text), ["m1", "m2", "m3"]);
});

test("a Taro-style platform (connectSocket answers a promise of the SocketTask) signs in and chats", async () => {
  const wxLike = makeWx({ code: "ok-taro-user" });
  const promised = { ...wxLike, connectSocket: (options) => Promise.resolve(wxLike.connectSocket(options)) };
  const user = makeClient(server.url, "taro-user", { client: { platform: taro(promised) } });
  clients.push(user);
  await user.signIn();
  const room = await publicRoom(user);
  const seen = collect(user, room);
  await user.publish(room, { text: "from Taro" });
  await waitFor(() => seen.messages.length === 1, "delivered");
  assert.equal(seen.texts()[0], "from Taro");
  assert.equal(wxLike.connects, 1);
});
