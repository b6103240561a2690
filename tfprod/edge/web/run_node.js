// The parity gate's TF.js runtime where no browser is installed: Node runs the same shipped
// runtime files (tf-core, tf-converter, tf-backend-wasm) the browser page loads, on the WASM backend.
//
//   node run_node.js RUNTIME_DIR MODEL_DIR < request.json > answer.json
//
// request: {"inputs": {alias: {"dtype": "float32", "shape": [...], "data": [...]}}}
// answer: {"backend": "wasm", "outputs": {alias: {"dtype", "shape", "data"}}} or {"error": "..."}
"use strict";
const fs = require("fs");
const path = require("path");
const vm = require("vm");

const [runtime, modelDir] = process.argv.slice(2);
// the wasm backend reads its .wasm file with fs when it sees Node, as a CommonJS module would
globalThis.require = require;
globalThis.__dirname = path.resolve(runtime);
globalThis.__filename = path.join(globalThis.__dirname, "tf-backend-wasm.min.js");
for (const file of ["tf-core.min.js", "tf-converter.min.js", "tf-backend-wasm.min.js"]) {
  // as <script> tags do: each bundle sees no CommonJS `module`, so it sets globalThis.tf
  vm.runInThisContext(fs.readFileSync(path.join(runtime, file), "utf8"), {filename: file});
}
const tf = globalThis.tf;

function fromFiles(dir) {
  return {
    load: async () => {
      const model = JSON.parse(fs.readFileSync(path.join(dir, "model.json"), "utf8"));
      const specs = [], buffers = [];
      for (const group of model.weightsManifest) {
        specs.push(...group.weights);
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: model.modelTopology, format: model.format, generatedBy: model.generatedBy,
        convertedBy: model.convertedBy, signature: model.signature, weightSpecs: specs,
        userDefinedMetadata: model.userDefinedMetadata,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
      };
    },
  };
}

async function main() {
  const request = JSON.parse(fs.readFileSync(0, "utf8"));
  // the .wasm is fetched through TF.js's platform fetch (the bundle's own Node file reading is
  // compiled out of the browser build): answer those fetches from the runtime directory
  const platformFetch = globalThis.fetch;
  globalThis.fetch = async (url, init) => /^https?:/.test(String(url)) ? platformFetch(url, init) :
    new Response(fs.readFileSync(String(url)), {headers: {"content-type": "application/wasm"}});
  tf.wasm.setWasmPaths(path.resolve(runtime) + path.sep, true);
  await tf.setBackend("wasm");
  await tf.ready();
  const model = await tf.loadGraphModel(fromFiles(modelDir));
  const inputs = {};
  for (const [alias, t] of Object.entries(request.inputs)) inputs[alias] = tf.tensor(t.data, t.shape, t.dtype);
  const aliases = Object.keys(model.signature.outputs || {}).sort();
  let results = await model.executeAsync(inputs, aliases);
  if (!Array.isArray(results)) results = [results];
  const outputs = {};
  for (let i = 0; i < aliases.length; i++) {
    outputs[aliases[i]] = {dtype: results[i].dtype, shape: results[i].shape, data: Array.from(await results[i].data())};
  }
  process.stdout.write(JSON.stringify({backend: tf.getBackend(), outputs}));
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({error: String(e && e.message || e)}));
  process.exitCode = 1;
});
