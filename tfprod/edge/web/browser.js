// The in-browser page: loads a version's TF.js graph model from the server that serves it, runs it
// on TF.js's WASM backend, and shows the browser's answer beside the server's for the same input.
// window.tfprodPage is the page's programmatic face (the parity gate and the tests drive it).
"use strict";
(function () {
  const cfg = JSON.parse(document.getElementById("tfprod-config").textContent);
  const page = {ready: false, error: null};
  window.tfprodPage = page;
  const $ = (id) => document.getElementById(id);

  function status(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  function rowShape(info) {
    const dims = ((info.tensorShape || {}).dim || []).map((d) => Number(d.size));
    return dims.slice(1).map((d) => (d < 0 ? 1 : d));
  }

  const JS_DTYPES = {DT_FLOAT: "float32", DT_HALF: "float32", DT_DOUBLE: "float32", DT_INT32: "int32",
                     DT_INT64: "int32", DT_INT16: "int32", DT_INT8: "int32", DT_UINT8: "int32", DT_BOOL: "bool"};

  // inputs: {alias: {dtype, shape, data}} -> {alias: {dtype, shape, data}}, in the browser
  async function runInBrowser(model, inputs) {
    const feeds = {};
    for (const [alias, t] of Object.entries(inputs)) feeds[alias] = tf.tensor(t.data, t.shape, t.dtype);
    const aliases = Object.keys(model.signature.outputs || {}).sort();
    const started = performance.now();
    let results = await model.executeAsync(feeds, aliases);
    if (!Array.isArray(results)) results = [results];
    const outputs = {};
    for (let i = 0; i < aliases.length; i++) {
      outputs[aliases[i]] = {dtype: results[i].dtype, shape: results[i].shape, data: Array.from(await results[i].data())};
    }
    tf.dispose([...Object.values(feeds), ...results]);
    page.lastBrowserMs = performance.now() - started;
    return outputs;
  }

  function nest(data, shape) {
    if (shape.length === 0) return data[0];
    if (shape.length === 1) return data.slice(0, shape[0]);
    const step = shape.slice(1).reduce((a, b) => a * b, 1);
    return Array.from({length: shape[0]}, (_, i) => nest(data.slice(i * step, (i + 1) * step), shape.slice(1)));
  }

  function flat(value) {
    return Array.isArray(value) ? value.flatMap(flat) : [Number(value)];
  }

  // the same inputs through the server's REST predict API (columnar "inputs": TF Serving's format)
  async function runOnServer(inputs) {
    const body = {signature_name: cfg.signatureKey, inputs: {}};
    for (const [alias, t] of Object.entries(inputs)) body.inputs[alias] = nest(t.data, t.shape);
    const response = await fetch(cfg.predictUrl, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const doc = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    if (!response.ok) throw new Error(`the server answered ${response.status}: ${doc.error || ""}`);
    const aliases = Object.keys(page.model.signature.outputs || {}).sort();
    const outputs = {};
    // TF Serving's columnar answer: one output is the bare value, several are keyed by alias
    const named = aliases.length === 1 ? {[aliases[0]]: doc.outputs} : doc.outputs;
    for (const alias of aliases) outputs[alias] = {data: flat(named[alias])};
    return outputs;
  }

  function compare(browser, server) {
    const rows = [];
    for (const alias of Object.keys(browser)) {
      const a = browser[alias].data, b = (server[alias] || {data: []}).data;
      let diff = 0, low = Infinity, high = -Infinity;
      for (let i = 0; i < a.length; i++) {
        diff = Math.max(diff, Math.abs(a[i] - b[i]));
        low = Math.min(low, b[i]);
        high = Math.max(high, b[i]);
      }
      const argmax = (v) => v.reduce((best, x, i) => (x > v[best] ? i : best), 0);
      rows.push({output: alias, maxAbsDiff: a.length === b.length ? diff : NaN, range: high - low,
                 browserTop1: argmax(a), serverTop1: argmax(b), agree: a.length === b.length && argmax(a) === argmax(b)});
    }
    return rows;
  }

  // a drawing pad for an input of 8x8 or 28x28 values in [0, 1]
  function pad(alias, size, textarea) {
    const canvas = document.createElement("canvas");
    const cell = size === 8 ? 28 : 8;
    canvas.width = canvas.height = size * cell;
    canvas.className = "pad";
    canvas.setAttribute("aria-label", `drawing pad for input ${alias} (${size}x${size})`);
    canvas.id = `pad-${alias}`;
    const values = new Float32Array(size * size);
    const ctx = canvas.getContext("2d");
    function paint() {
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      for (let i = 0; i < values.length; i++) {
        const v = Math.round(255 * (1 - values[i]));
        ctx.fillStyle = `rgb(${v},${v},${v})`;
        ctx.fillRect((i % size) * cell, Math.floor(i / size) * cell, cell, cell);
      }
      textarea.value = JSON.stringify(Array.from(values, (v) => Math.round(v * 1000) / 1000));
    }
    function stroke(event) {
      const box = canvas.getBoundingClientRect();
      const x = (event.clientX - box.left) / cell, y = (event.clientY - box.top) / cell;
      const radius = size === 8 ? 0.8 : 1.6;
      for (let r = 0; r < size; r++) {
        for (let c = 0; c < size; c++) {
          const d = Math.hypot(c + 0.5 - x, r + 0.5 - y);
          if (d < radius) values[r * size + c] = Math.min(1, values[r * size + c] + (1 - d / radius));
        }
      }
      paint();
    }
    let down = false;
    canvas.addEventListener("pointerdown", (e) => { down = true; stroke(e); });
    canvas.addEventListener("pointermove", (e) => { if (down) stroke(e); });
    window.addEventListener("pointerup", () => { down = false; });
    paint();
    const clear = document.createElement("button");
    clear.type = "button";
    clear.textContent = "Clear";
    clear.addEventListener("click", () => { values.fill(0); paint(); });
    return [canvas, clear];
  }

  function buildForm(model) {
    const form = $("inputs");
    page.fields = {};
    for (const [alias, info] of Object.entries(model.signature.inputs).sort()) {
      const shape = rowShape(info);
      const size = shape.reduce((a, b) => a * b, 1);
      const dtype = JS_DTYPES[info.dtype] || "float32";
      const box = document.createElement("fieldset");
      const legend = document.createElement("legend");
      legend.textContent = `${alias}: ${info.dtype.replace("DT_", "").toLowerCase()} [${shape.join(", ")}] (one row)`;
      box.appendChild(legend);
      const textarea = document.createElement("textarea");
      textarea.id = `input-${alias}`;
      textarea.rows = 3;
      textarea.setAttribute("aria-label", `values of input ${alias}, as a JSON array`);
      textarea.value = JSON.stringify(nest(new Array(size).fill(0), shape));
      const side = Math.round(Math.sqrt(size));
      if (dtype === "float32" && (size === 64 || size === 784) && side * side === size) {
        box.append(...pad(alias, side, textarea));
      }
      box.appendChild(textarea);
      form.appendChild(box);
      page.fields[alias] = {shape: [1, ...shape], dtype, textarea};
    }
  }

  function formInputs() {
    const inputs = {};
    for (const [alias, f] of Object.entries(page.fields)) {
      let data;
      try { data = flat(JSON.parse(f.textarea.value)); } catch (e) { throw new Error(`input ${alias}: not JSON (${e.message})`); }
      const want = f.shape.reduce((a, b) => a * b, 1);
      if (data.length !== want) throw new Error(`input ${alias}: ${data.length} values, the signature takes ${want}`);
      inputs[alias] = {dtype: f.dtype, shape: f.shape, data};
    }
    return inputs;
  }

  function show(rows, browser, server) {
    const body = $("results").querySelector("tbody");
    body.innerHTML = "";
    for (const row of rows) {
      const tr = document.createElement("tr");
      tr.dataset.output = row.output;
      tr.dataset.maxAbsDiff = String(row.maxAbsDiff);
      const top = (v) => (browser[row.output].data.length > 1 ? `top-1 ${v}` : "");
      const fmt = (d) => d.slice(0, 10).map((x) => x.toPrecision(5)).join(", ") + (d.length > 10 ? ", ..." : "");
      for (const text of [row.output, `${fmt(browser[row.output].data)} ${top(row.browserTop1)}`,
                          server ? `${fmt(server[row.output].data)} ${top(row.serverTop1)}` : "(not asked)",
                          server ? row.maxAbsDiff.toExponential(2) : "", server ? (row.agree ? "yes" : "NO") : ""]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  // the page's button, and what the tests call: both answers for `inputs` (default: the form's)
  page.compare = async function (inputs) {
    inputs = inputs || formInputs();
    const browser = await runInBrowser(page.model, inputs);
    let server = null, serverError = null;
    if (cfg.predictUrl) {
      try { server = await runOnServer(inputs); } catch (e) { serverError = e.message; }
    }
    const rows = server ? compare(browser, server) : compare(browser, browser).map((r) => ({...r, maxAbsDiff: NaN}));
    show(rows, browser, server);
    status(serverError ? `browser answered in ${page.lastBrowserMs.toFixed(1)} ms; ${serverError}` :
      `browser (${tf.getBackend()}) answered in ${page.lastBrowserMs.toFixed(1)} ms` + (server ? "; server answered" : ""),
      Boolean(serverError));
    page.last = {browser, server, serverError, rows};
    return page.last;
  };
  page.run = (inputs) => runInBrowser(page.model, inputs);

  async function start() {
    tf.wasm.setWasmPaths(cfg.runtimeUrl);
    if (!(await tf.setBackend("wasm"))) throw new Error("the WASM backend did not start in this browser");
    await tf.ready();
    const loadStarted = performance.now();
    page.model = await tf.loadGraphModel(cfg.modelUrl, {requestInit: {credentials: "same-origin"}});
    page.backend = tf.getBackend();
    page.threads = typeof tf.wasm.getThreadsCount === "function" ? tf.wasm.getThreadsCount() : 1;
    page.crossOriginIsolated = window.crossOriginIsolated;
    buildForm(page.model);
    $("run").disabled = false;
    $("run").addEventListener("click", () => page.compare().catch((e) => status(e.message, true)));
    status(`loaded in ${(performance.now() - loadStarted).toFixed(0)} ms on TF.js ${tf.version_core} ` +
           `(${page.backend}, ${page.threads} thread${page.threads > 1 ? "s" : ""})`);
    page.ready = true;
  }

  start().catch((e) => {
    page.error = String((e && e.message) || e);
    status(`could not load the model in this browser: ${page.error}`, true);
  });
})();
