// Builds dist/index.js (CommonJS: WeChat's npm build, require()) and dist/index.mjs
// (an ES module: browsers, bundlers) from src/. `--check` fails if dist/ is stale.
import { buildSync } from "esbuild";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const banner = "// miniprogram-realtime-sdk " + JSON.parse(readFileSync(root + "package.json", "utf8")).version +
  " (MIT). Built from src/ by scripts/build.mjs: edit src/, not this file.";
const outputs = {};
for (const [format, file] of [["cjs", "dist/index.js"], ["esm", "dist/index.mjs"]]) {
  const result = buildSync({
    entryPoints: [root + "src/index.mjs"], bundle: true, format, target: "es2018", write: false,
    banner: { js: banner }, legalComments: "none", charset: "utf8",
  });
  outputs[file] = result.outputFiles[0].text;
}
const check = process.argv.includes("--check");
let stale = [];
for (const [file, text] of Object.entries(outputs)) {
  let old = "";
  try {
    old = readFileSync(root + file, "utf8");
  } catch {}
  if (old !== text) {
    if (check) stale.push(file);
    else writeFileSync(root + file, text);
  }
}
if (stale.length) {
  console.error("stale: " + stale.join(", ") + ": run `npm run build` in sdk/");
  process.exit(1);
}
