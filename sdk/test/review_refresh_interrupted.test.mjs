// Review findings: a request whose answer is lost ("request:fail interrupted" after
// the server acted on it) must not cost the session. A token refresh retried with the
// spent refresh token is answered with a fresh pair within the server's reuse grace
// (REFRESH_REUSE_GRACE) instead of token_reused; a sign-in retried after a lost
// answer asks wx.login for a new code, as a code is single-use.
import assert from "node:assert/strict";
import { test } from "node:test";
import { makeClient } from "./helpers/clients.mjs";
import { testServer } from "./helpers/fixture.mjs";

const env = testServer({ proxy: true });
const { clients } = env;


test("a refresh whose answer was lost keeps the session", async () => {
  const alice = makeClient(env.proxy.url, "lost-refresh", { client: { autoSignIn: false } });
  clients.push(alice);
  await alice.signIn();
  alice.platform.login = undefined; // as in a browser: no silent sign-in to hide a revoked session
  env.proxy.dropNextResponse();
  await alice.tokens.refresh();
  assert.equal(env.proxy.dropped, 1, "the first answer was lost");
  assert.ok(alice.signedIn, "still signed in");
  assert.ok(!alice.events.some(([name]) => name === "signedOut"));
  await alice.tokens.refresh(); // the pair the retry got is a live one
  assert.equal((await alice.api("GET", "/api/v1/me")).id, alice.user.id);
});

test("a sign-in whose answer was lost is retried with a new wx.login code", async () => {
  const bob = makeClient(env.proxy.url, "lost-sign-in");
  clients.push(bob);
  let codes = 0;
  bob.wx.login = ({ success }) => setTimeout(() => success({ code: "ok-lost-sign-in-" + ++codes }), 0);
  const dropped = env.proxy.dropped;
  env.proxy.dropNextResponse();
  await bob.signIn();
  assert.equal(env.proxy.dropped, dropped + 1, "the first answer was lost");
  const sent = env.server.wechat.calls.map(([, args]) => args.js_code).filter((code) => code.startsWith("ok-lost-sign-in"));
  assert.deepEqual(sent, ["ok-lost-sign-in-1", "ok-lost-sign-in-2"], "each attempt presents its own code");
  assert.equal(bob.user.id, (await bob.api("GET", "/api/v1/me")).id);
});
