// Review finding (not fixed): a token refresh whose answer is lost ("request:fail
// interrupted" after the server spent the refresh token) is retried with the same,
// now spent, refresh token: the server answers token_reused and revokes the session.
// A platform without wx.login (a browser) is then signed out.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { makeClient } from "./helpers/clients.mjs";
import { startProxy } from "./helpers/proxy.mjs";
import { Server } from "./helpers/server.mjs";

let server;
let proxy;
const clients = [];

after(async () => {
  for (const c of clients) c.close();
  await proxy?.close();
  await server?.close();
});

test("a refresh whose answer was lost keeps the session", { todo: "review: refresh retried with a spent token" },
  async () => {
    server = await new Server().start();
    proxy = await startProxy(server.port);
    const alice = makeClient(proxy.url, "lost-refresh", { client: { autoSignIn: false } });
    clients.push(alice);
    await alice.signIn();
    alice.platform.login = undefined; // as in a browser: no silent sign-in to hide a revoked session
    proxy.dropNextResponse();
    await alice.tokens.refresh(); // rejects signed_out (token_reused) today
    assert.equal(proxy.dropped, 1, "the first answer was lost");
    assert.ok(alice.signedIn, "still signed in");
    assert.ok(!alice.events.some(([name]) => name === "signedOut"));
  });
