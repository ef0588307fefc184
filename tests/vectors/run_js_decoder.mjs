// Folds each vector's frames with the browser decoder (web/decoder.js) and prints the
// summaries as one JSON object {vector file name: summary}. Used by tests/test_vectors.py.
//
// Usage: node tests/vectors/run_js_decoder.mjs VECTOR.json...
//
// web/ has no package.json (it is served as it is), so node would read decoder.js as
// CommonJS; importing its text as a data: URL module keeps it an ES module untouched.
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = readFileSync(join(here, "..", "..", "web", "decoder.js"), "utf8");
const { ViewState } = await import(`data:text/javascript;charset=utf-8,${encodeURIComponent(source)}`);

const out = {};
for (const path of process.argv.slice(2)) {
  const vector = JSON.parse(readFileSync(path, "utf8"));
  const state = new ViewState({ tapeLimit: vector.tape_limit, detailLimit: vector.detail_limit });
  for (const frame of vector.frames) state.applyFrame(frame);
  out[basename(path)] = state.summary();
}
process.stdout.write(JSON.stringify(out));
