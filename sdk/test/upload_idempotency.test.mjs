// Uploads carry an Idempotency-Key, reused on the SDK's own retries: an upload whose
// answer is lost ("uploadFile:fail interrupted" after the server stored the file) is
// retried and the file is stored once, with the first answer.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { makeClient } from "./helpers/clients.mjs";
import { testServer } from "./helpers/fixture.mjs";

const env = testServer({ proxy: true });
const { clients } = env;
const PNG = Buffer.from("89504e470d0a1a0a0000000d49484452", "hex");

/** A PNG-looking temp file of `size` random bytes. */
function pngFile(name, size) {
  const path = join(tmpdir(), `sdk-upload-${process.pid}-${name}.png`);
  writeFileSync(path, Buffer.concat([PNG, randomBytes(size)]));
  return path;
}


test("an upload whose answer is lost is retried with its Idempotency-Key: one file, the first answer", async () => {
  const user = makeClient(env.proxy.url, "uploads-lost");
  clients.push(user);
  await user.signIn();
  const path = pngFile("lost", 600 * 1024);
  env.proxy.dropNextResponse();
  const file = await user.upload(path, { formData: { album: "trip" } });
  assert.equal(env.proxy.dropped, 1, "the first answer was lost");
  assert.equal(file.size, PNG.length + 600 * 1024);
  assert.equal(env.server.count("files.files"), 1, "stored once");
  assert.equal(env.server.count("files.chunks"), 3, "no chunks of a second copy");
  const again = await user.upload(path, { idempotencyKey: "album-trip-1" });
  assert.notEqual(again.id, file.id, "each upload() call has a key of its own");
  assert.deepEqual(await user.upload(path, { idempotencyKey: "album-trip-1" }), again, "the same key: the first answer");
  await assert.rejects(user.upload(pngFile("other", 10), { idempotencyKey: "album-trip-1" }),
    (error) => error.code === "conflict" && error.status === 409);
  assert.equal(env.server.count("files.files"), 2);
});
