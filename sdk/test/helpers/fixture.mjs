// The server a test file runs against (and, with `proxy`, a TCP proxy in front of
// it): started before its tests; it and the clients pushed on `clients` closed after.
import { after, before } from "node:test";
import { startProxy } from "./proxy.mjs";
import { Server } from "./server.mjs";

export function testServer({ proxy = false } = {}) {
  const env = { server: null, proxy: null, clients: [] };
  before(async () => {
    env.server = await new Server().start();
    if (proxy) env.proxy = await startProxy(env.server.port);
  });
  after(async () => {
    for (const c of env.clients) c.close();
    await env.proxy?.close();
    await env.server?.close();
  });
  return env;
}
