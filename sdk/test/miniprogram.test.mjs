// examples/miniprogram's chat component in miniprogram-simulate (WeChat's component
// test tool, on jsdom), on an SDK client over the real-socket wx against run.py.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { JSDOM } from "jsdom";
import { collect, connected, makeClient, publicRoom, waitFor } from "./helpers/clients.mjs";
import { Server } from "./helpers/server.mjs";

const require = createRequire(import.meta.url);
const COMPONENT = fileURLToPath(new URL("../../examples/miniprogram/components/chat-room/chat-room", import.meta.url));
let server;
const clients = [];

before(async () => {
  const dom = new JSDOM("<!doctype html><html><body></body></html>");
  for (const name of ["window", "document", "Node", "HTMLElement", "Event", "CustomEvent", "MutationObserver", "getComputedStyle"]) {
    globalThis[name] = name === "window" ? dom.window : dom.window[name];
  }
  server = await new Server().start();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.close();
});

test("the chat component shows each message once and sends what is typed, queued while the app is hidden", async () => {
  const simulate = require("miniprogram-simulate");
  const me = makeClient(server.url, "component-me");
  const other = makeClient(server.url, "component-other");
  clients.push(me, other);
  await me.signIn();
  await other.signIn();
  const room = await publicRoom(me);
  const seen = collect(other, room);
  await connected(other);
  globalThis.getApp = () => ({ realtime: me });
  globalThis.wx = { ...me.wx, showToast: () => {} };
  const component = simulate.render(simulate.load(COMPONENT), { channel: room });
  component.attach(document.createElement("parent-wrapper"));
  await waitFor(() => me.state === "connected" && me.seqs[room] === 0, "the component subscribed");
  assert.equal(component.querySelector(".state").dom.textContent, "connected");
  await other.publish(room, { text: "hello from the other side" });
  await waitFor(() => component.querySelectorAll(".message").length === 1, "the message shown");
  assert.match(component.querySelector(".message").dom.textContent, /hello from the other side/);

  const type = async (text) => {
    component.querySelector(".draft").dispatchEvent("input", { detail: { value: text } });
    await simulate.sleep(0);
    component.querySelector(".send").dispatchEvent("tap");
    await simulate.sleep(0);
  };
  await type("hi, I am the component");
  await waitFor(() => seen.messages.length === 2, "the other user got it");
  me.wx.hide();
  await waitFor(() => me.state === "disconnected", "hidden");
  await type("written while hidden");
  await other.publish(room, { text: "while you were away" });
  me.wx.show();
  await waitFor(() => component.querySelectorAll(".message").length === 4 && seen.messages.length === 4, "all four");
  await simulate.sleep(300);
  const shown = component.querySelectorAll(".text").map((node) => node.dom.textContent);
  assert.deepEqual(shown, seen.texts(), "the component and the other user see the same, once each");
  assert.deepEqual(shown, ["hello from the other side", "hi, I am the component", "while you were away", "written while hidden"]);
  assert.equal(component.querySelectorAll(".mine").length, 2);
  assert.equal(component.data.draft, "");
  component.detach();
});
