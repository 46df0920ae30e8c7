// Prints the size of dist/index.mjs minified (terser) and gzipped (zlib, level 9):
// the figure sdk/README.md states. `--max BYTES` fails above it.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { minify } from "terser";

const source = readFileSync(new URL("../dist/index.mjs", import.meta.url), "utf8");
const { code } = await minify(source, { module: true, compress: { passes: 2 }, mangle: true });
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(`dist/index.mjs: ${source.length} bytes, minified ${code.length}, minified+gzipped ${gzipped} ` +
  `(${(gzipped / 1024).toFixed(1)} KiB)`);
const max = process.argv.indexOf("--max");
if (max > 0 && gzipped > Number(process.argv[max + 1])) {
  console.error(`over the budget of ${process.argv[max + 1]} bytes`);
  process.exit(1);
}
