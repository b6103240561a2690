// The tfprod console: reads the server's JSON (/ui/api/*, /v1/rollouts) and draws it. Every value
// from the server goes into the page as text (textContent), never as markup.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_S = Math.max(0.5, Number(params.get("refresh")) || 2);
const KEEP = 150; // points per plot: 5 minutes at the default refresh
const state = { metrics: null, history: {}, charts: {}, modelsJson: "", rolloutsJson: "", totals: {} };
window.tfprodConsole = state; // for whoever wants the numbers behind the plots

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function key() { return sessionStorage.getItem("tfprod-key") || ""; }

async function api(path, options) {
  const headers = { Accept: "application/json" };
  if (key()) headers.Authorization = "Bearer " + key();
  const response = await fetch(path, { ...(options || {}), headers });
  const text = await response.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : {}; } catch (e) { doc = { error: text }; }
  if (!response.ok) {
    const error = new Error((doc && doc.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return doc;
}

function say(message) { document.getElementById("status").textContent = message; }

function alarm(message) {
  const node = document.getElementById("alert");
  node.textContent = message;
  node.hidden = !message;
}

function table(caption, head, rows) {
  return el("table", {},
    el("caption", { class: "note" }, caption),
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c, i) =>
      i === 0 ? el("th", { scope: "row" }, c) : (c instanceof Node ? el("td", {}, c)
        : el("td", typeof c === "number" ? { class: "num" } : {}, c)))))));
}

function show(v) { // a value as a person reads it: 4 significant digits, {key: value, ...}
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  if (Array.isArray(v)) return v.map(show).join(", ");
  if (v && typeof v === "object") return Object.entries(v).map(([k, x]) =>
    `${k}: ${x && typeof x === "object" && !Array.isArray(x) ? `{${show(x)}}` : show(x)}`).join(", ");
  return String(v);
}

function keeping(section, render) { // re-render a section, keeping open <details> and the focused control
  const node = document.getElementById(section);
  const open = new Set([...node.querySelectorAll("details[open] > summary")].map((s) => s.textContent));
  const focused = node.contains(document.activeElement) ? document.activeElement.textContent : null;
  render();
  for (const summary of node.querySelectorAll("details > summary")) {
    if (open.has(summary.textContent)) summary.parentElement.open = true;
  }
  if (focused !== null) {
    let again = [...node.querySelectorAll("button, summary, a")].find((e) => e.textContent === focused);
    if (again && again.disabled) { // pressed "Pause": focus moves on to the next action that applies ("Resume")
      again = [...again.parentElement.querySelectorAll("button")].find((b) => !b.disabled) || null;
    }
    if (again) again.focus();
  }
}

function pairs(doc) {
  return el("dl", {}, Object.entries(doc).map(([k, v]) => [el("dt", {}, k), el("dd", {}, show(v))]));
}

// -- models ------------------------------------------------------------------------------------

function tensors(doc) {
  return Object.entries(doc).map(([alias, t]) =>
    `${alias}: ${t.dtype.replace("DT_", "").toLowerCase()} ${t.shape === null ? "(any shape)" : "[" + t.shape.join(", ") + "]"}`)
    .join("; ");
}

function versionDetails(model, v) {
  const parts = [];
  const sigs = Object.entries(v.signatures || {});
  parts.push(table(`Signatures of version ${v.version}`, ["Signature", "Method", "Inputs", "Outputs"],
    sigs.map(([name, s]) => [name, s.method, tensors(s.inputs), tensors(s.outputs)])));
  if (v.audit && Object.keys(v.audit).length) parts.push(el("h4", {}, "Audit metadata"), pairs(v.audit));
  return el("details", {}, el("summary", {}, `Signatures and audit of version ${v.version}`), parts);
}

function renderModels(doc) {
  const checks = doc.checks;
  document.getElementById("checks").textContent =
    `The rules now — signed models: ${checks.signature}; graph scan: ${checks.graph_scan}.`;
  const body = document.getElementById("models-body");
  body.replaceChildren();
  if (!doc.models.length) body.append(el("p", {}, "This server serves no models."));
  for (const m of doc.models) {
    const labels = Object.entries(m.labels).map(([k, v]) => `${k} → ${v}`).join(", ") || "none";
    const rows = m.versions.map((v) => {
      const links = [];
      if (v.browser) { // a page load sends no key: under auth the browser must send it as a header (docs/edge.md)
        links.push(el("a", { href: v.browser }, "In the browser"), doc.auth ? " (send your key as X-API-Key) " : " ");
      }
      if (v.lineage) {
        links.push(el("button", { type: "button", onclick: () => showLineage(m.name, v.version, v.lineage) },
          `Lineage of ${m.name} ${v.version}`));
      }
      const files = v.files ? [v.files.tflite ? "TFLite" : "", v.files.tfjs ? "TF.js" : ""].filter(Boolean)
        .join(", ") || "SavedModel" : "";
      const checked = v.checked && v.checked.signature ?
        `signature: ${v.checked.signature}; graph scan: ${v.checked.graph_scan}` : "";
      return [String(v.version), el("span", { class: `state-${v.state}` }, v.state), v.labels.join(", "),
        el("span", { class: "error" }, v.error), files, checked, el("span", {}, links)];
    });
    const article = el("article", { "data-model": m.name },
      el("h3", {}, m.name),
      el("dl", {}, el("dt", {}, "Base path"), el("dd", {}, m.base_path || "(not in the config)"),
        el("dt", {}, "Version policy"), el("dd", {}, m.policy || "-"), el("dt", {}, "Labels"), el("dd", {}, labels)),
      table(`Versions of ${m.name}`, ["Version", "State", "Labels", "Error", "Files", "Checked at load", "Links"], rows),
      m.versions.filter((v) => v.signatures).map((v) => versionDetails(m, v)));
    body.append(article);
  }
}

// -- metrics -----------------------------------------------------------------------------------

function minus(now, before) { // a histogram over the interval; a restarted server counts from zero again
  if (!before || now.counts.some((c, i) => c < (before.counts[i] || 0))) return now;
  return { bounds: now.bounds, sum: now.sum - before.sum, counts: now.counts.map((c, i) => c - (before.counts[i] || 0)) };
}

function quantile(h, q) { // as Prometheus' histogram_quantile: linear within the bucket
  const total = h.counts.reduce((a, b) => a + b, 0);
  if (total <= 0) return null;
  let seen = 0;
  const target = q * total;
  for (let i = 0; i < h.counts.length; i++) {
    if (seen + h.counts[i] >= target && h.counts[i] > 0) {
      const lower = i === 0 ? 0 : h.bounds[i - 1];
      const upper = i < h.bounds.length ? h.bounds[i] : h.bounds[h.bounds.length - 1];
      return lower + (upper - lower) * ((target - seen) / h.counts[i]);
    }
    seen += h.counts[i];
  }
  return h.bounds[h.bounds.length - 1];
}

const sum = (doc) => Object.values(doc || {}).reduce((a, b) => a + b, 0);
const errors = (doc) => Object.entries(doc || {}).reduce((a, [k, n]) => a + (k === "OK" ? 0 : n), 0);
const ms = (us) => (us === null ? null : us / 1000);
const fixed = (x, digits) => (x === null || x === undefined || Number.isNaN(x) ? "-" : x.toFixed(digits));

function interval(now, before, dt) {
  const d = { requests: {}, latency: minus(now.latency_us, before && before.latency_us) };
  const reset = before && Object.entries(before.requests).some(([k, n]) => (now.requests[k] || 0) < n);
  for (const [k, n] of Object.entries(now.requests)) d.requests[k] = n - ((!reset && before && before.requests[k]) || 0);
  return { rate: sum(d.requests) / dt, errors: errors(d.requests) / dt, p50: ms(quantile(d.latency, 0.5)),
    p99: ms(quantile(d.latency, 0.99)), total: sum(now.requests), failed: errors(now.requests) };
}

function chart(model, kind, title, series, data) {
  const id = `${model}|${kind}`;
  let c = state.charts[id];
  if (!c) {
    const holder = el("div", { "aria-hidden": "true" }); // drawn for the eye; the table above has the numbers
    const figure = el("figure", {}, holder, el("figcaption", {}, title));
    document.getElementById(`chart-${kind}-${model}`).replaceChildren(figure);
    c = state.charts[id] = new uPlot({ width: 380, height: 180, title, series: [{}, ...series.map((s, i) =>
      ({ label: s, stroke: ["#0550ae", "#bf3989", "#1a7f37", "#9a6700", "#8250df"][i % 5], width: 2 }))],
    axes: [{}, { size: 60 }], // at least a minute across, so a few points do not spread over years
    scales: { x: { time: true, range: (u) => {
      const t = u.data[0], last = t[t.length - 1];
      return [Math.min(t[0], last - 60), last];
    } } } }, data, holder);
    c.seriesNames = series.join("|");
  } else if (c.seriesNames !== series.join("|")) { // a version came or went: draw it anew
    const figure = c.root.closest("figure");
    c.destroy();
    figure.remove();
    delete state.charts[id];
    return chart(model, kind, title, series, data);
  } else {
    c.setData(data);
  }
  return c;
}

function renderMetrics(now, before, dt, at) {
  const body = document.getElementById("metrics-body");
  const names = Object.keys(now).sort();
  if (!names.length) {
    body.replaceChildren(el("p", {}, "No requests yet."));
    state.charts = {};
    state.history = {};
    return;
  }
  for (const name of names) {
    const m = now[name], was = before && before[name];
    const h = state.history[name] || (state.history[name] = { t: [], versions: {}, errors: [], p50: [], p99: [], batch: [], queue: [] });
    const model = interval(m, was, dt);
    const versions = Object.keys(m.versions).sort((a, b) => Number(a) - Number(b));
    const perVersion = Object.fromEntries(versions.map((v) =>
      [v, interval(m.versions[v], was && was.versions[v], dt)]));
    h.t.push(at);
    for (const v of versions) {
      const line = h.versions[v] || (h.versions[v] = h.t.slice(0, -1).map(() => null));
      line.push(perVersion[v].rate);
    }
    h.errors.push(model.errors);
    h.p50.push(model.p50);
    h.p99.push(model.p99);
    if (h.t.length > KEEP) {
      for (const arr of [h.t, h.errors, h.p50, h.p99, h.batch, h.queue, ...Object.values(h.versions)]) {
        arr.splice(0, arr.length - KEEP);
      }
    }
    let article = body.querySelector(`article[data-model="${CSS.escape(name)}"]`);
    if (!article) {
      if (body.querySelector("p")) body.replaceChildren();
      article = el("article", { "data-model": name }, el("h3", {}, name), el("div", { class: "numbers" }),
        el("div", { class: "charts" }, ["rate", "latency", "batching"].map((k) => el("div", { id: `chart-${k}-${name}` }))));
      body.append(article);
    }
    const batching = m.batching.input_batch_size ? minus(m.batching.input_batch_size,
      was && was.batching.input_batch_size) : null;
    const queue = m.batching.queuing_latency ? minus(m.batching.queuing_latency,
      was && was.batching.queuing_latency) : null;
    const batches = batching ? sum(batching.counts) : 0;
    h.batch.push(batches ? batching.sum / batches : null);
    h.queue.push(queue ? ms(quantile(queue, 0.99)) : null);
    const rows = [["all APIs", model.total, model.failed, fixed(model.rate, 1), fixed(model.errors, 1),
      fixed(model.p50, 2), fixed(model.p99, 2)],
    ...versions.map((v) => [`version ${v}`, perVersion[v].total, perVersion[v].failed, fixed(perVersion[v].rate, 1),
      fixed(perVersion[v].errors, 1), fixed(perVersion[v].p50, 2), fixed(perVersion[v].p99, 2)])];
    const numbers = [table(`Requests to ${name}`, ["Versions", "Requests", "Failed", "Requests/s", "Errors/s",
      "P50 ms", "P99 ms"], rows)];
    if (m.batching.input_batch_size) {
      numbers.push(table(`Batching of ${name}`, ["Over", "Batches", "Mean batch size", "Queue P50 ms", "Queue P99 ms"],
        [["last interval", batches, batches ? fixed(batching.sum / batches, 1) : "-",
          fixed(queue && ms(quantile(queue, 0.5)), 2), fixed(queue && ms(quantile(queue, 0.99)), 2)]]));
    }
    article.querySelector(".numbers").replaceChildren(...numbers);
    state.totals[name] = { total: model.total, failed: model.failed,
      versions: Object.fromEntries(versions.map((v) => [v, perVersion[v].total])) };
    chart(name, "rate", `Requests per second to ${name}, by version`,
      [...versions.map((v) => `version ${v}`), "errors"], [h.t, ...versions.map((v) => h.versions[v]), h.errors]);
    chart(name, "latency", `Latency of ${name} in ms (P50, P99)`, ["P50", "P99"], [h.t, h.p50, h.p99]);
    if (m.batching.input_batch_size) {
      chart(name, "batching", `Batching of ${name}: mean batch size, queueing P99 in ms`,
        ["mean batch size", "queue P99 ms"], [h.t, h.batch, h.queue]);
    }
  }
}

async function refreshMetrics() {
  const doc = await api("/ui/api/metrics");
  const before = state.metrics, at = doc.time; // the server's clock: when the counts were read
  if (before && at <= before.at) return;
  if (before) renderMetrics(doc.models, before.models, at - before.at, at);
  state.metrics = { models: doc.models, at };
}

// -- rollouts ----------------------------------------------------------------------------------

const ACTIONS = { // what each button does, and in which states it applies
  pause: ["progressing"], resume: ["paused", "rolled_back", "aborted"],
  promote: ["progressing", "paused", "rolled_back", "aborted"], abort: ["progressing", "paused"],
};

async function act(model, action) {
  if ((action === "promote" || action === "abort") &&
      !window.confirm(`${action === "promote" ? "Promote the canary of" : "Abort the rollout of"} ${model}?`)) return;
  try {
    await api(`/v1/rollouts/${encodeURIComponent(model)}:${action}`, { method: "POST" });
    alarm("");
    say(`Rollout of ${model}: ${action} done.`);
  } catch (e) {
    alarm(`Could not ${action} the rollout of ${model}: ${e.message}`);
  }
  await refreshRollouts();
}

function renderRollouts(list) {
  const body = document.getElementById("rollouts-body");
  body.replaceChildren();
  if (!list.length) body.append(el("p", {}, "No rollouts are configured."));
  for (const r of list) {
    const analysis = r.last_analysis;
    body.append(el("article", { "data-rollout": r.model },
      el("h3", {}, `${r.model}: ${r.state}`),
      el("dl", {},
        el("dt", {}, "Canary weight"), el("dd", { "data-field": "weight" }, `${r.weight}%`),
        el("dt", {}, "Step"), el("dd", {}, `${r.step + 1} of ${r.steps.length} (${r.steps.join("% → ")}%)`),
        el("dt", {}, "Stable"), el("dd", {}, `${r.stable.arm} (version ${r.stable.version})`),
        el("dt", {}, "Canary"), el("dd", {}, `${r.canary.arm} (version ${r.canary.version})`),
        el("dt", {}, "Shadow"), el("dd", {}, r.shadow ? `${r.shadow.arm} (version ${r.shadow.version}), ` +
          `${r.shadow.sample_percent}% of requests` : "none"),
        el("dt", {}, "Reason"), el("dd", {}, r.reason || "-"),
        el("dt", {}, "Failed intervals"), el("dd", {}, String(r.failures))),
      el("div", { class: "actions" }, Object.entries(ACTIONS).map(([a, states]) => {
        const button = el("button", { type: "button", onclick: () => act(r.model, a) },
          `${a[0].toUpperCase()}${a.slice(1)} ${r.model}`);
        button.disabled = !states.includes(r.state);
        return button;
      })),
      analysis ? [el("h4", {}, `Last analysis (${analysis.time})`), pairs(analysis)]
        : el("p", { class: "note" }, `No analysis yet (every ${r.interval_s} s).`),
      r.history.length ? table(`History of the rollout of ${r.model}`, ["Time", "Event"],
        r.history.slice().reverse().map((e) => [e.time, e.event])) : null));
  }
}

async function refreshRollouts() {
  let list = [];
  try {
    list = (await api("/v1/rollouts")).rollouts;
  } catch (e) {
    if (!/runs no rollouts/.test(e.message)) throw e;
  }
  const json = JSON.stringify(list);
  if (json !== state.rolloutsJson) {
    state.rolloutsJson = json;
    keeping("rollouts-body", () => renderRollouts(list));
  }
}

// -- lineage -----------------------------------------------------------------------------------

async function showLineage(model, version, url) {
  const body = document.getElementById("lineage-body");
  body.replaceChildren(el("p", {}, `Reading the lineage of ${model} version ${version}…`));
  try {
    const d = await api(url);
    const push = d.push || {}, blessing = d.blessing || {}, ev = d.evaluation || {}, train = d.training || {};
    const anomalies = d.anomalies || {}, data = d.data || {};
    const step = (title, summary, fields) => el("li", {}, el("strong", {}, `${title}: `), summary,
      pairs(Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== null && v !== undefined))));
    body.replaceChildren(el("h3", {}, `${model} version ${version}`), el("ol", { class: "chain" },
      step("Data", `span ${data.span}, fingerprint ${data.fingerprint}`, { rows: data.rows, files: data.files }),
      step("Statistics and validation", anomalies.blessed ? "no anomalies" : "anomalies found",
        { anomalies: anomalies.anomalies, "drift baseline span": anomalies.drift_baseline_span,
          statistics: (d.statistics || {}).uri, schema: (d.schema || {}).source || (d.schema || {}).uri }),
      step("Transform", `${((d.transform || {}).analyzers || []).length} analyzers`, { graph: (d.transform || {}).uri }),
      step("Training", `run ${train.run_id}`, { "hyper-parameters": train.hyperparameters, metrics: train.metrics,
        code: train.code_version, revision: train.source_revision }),
      step("Evaluation", "", { metrics: ev.overall, slices: ev.slices, thresholds: ev.thresholds,
        "change thresholds": ev.change_thresholds, "baseline model": ev.baseline_model, baseline: ev.baseline }),
      step("Blessing", blessing.blessed ? "blessed" : "not blessed", { reasons: (blessing.reasons || []).join("; ") || null,
        "infra validation": d.infra_validation }),
      step("Push", `pushed ${push.pushed_at} by ${push.pushed_by}, ${push.signed ? "signed" : "not signed"}`,
        { path: d.path, store: d.metadata_url })));
  } catch (e) {
    body.replaceChildren(el("p", { class: "error" }, `No lineage for ${model} version ${version}: ${e.message}`));
  }
  document.getElementById("lineage-h").focus();
}

// -- the loop ----------------------------------------------------------------------------------

async function refreshModels() {
  const doc = await api("/ui/api/models");
  const json = JSON.stringify(doc);
  if (json !== state.modelsJson) {
    state.modelsJson = json;
    keeping("models-body", () => renderModels(doc));
  }
}

let paused = false, timer = null, lastSaid = "", running = false, again = false;

function sayOnce(message) { // a live region: announce a change, not every read
  if (message !== lastSaid) say(message);
  lastSaid = message;
}

async function tick() { // one read at a time: a slow server must not get overlapping, out-of-order reads
  if (running) { again = true; return; }
  running = true;
  clearTimeout(timer);
  try {
    await Promise.all([refreshModels(), refreshMetrics(), refreshRollouts()]);
    sayOnce(`Live: read every ${REFRESH_S} s.`);
    if (document.getElementById("alert").dataset.auth) { alarm(""); delete document.getElementById("alert").dataset.auth; }
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      alarm(`${e.message}. Enter an API key or token with the read scope above.`);
      document.getElementById("alert").dataset.auth = "1";
    } else {
      sayOnce(`Could not read the server: ${e.message}`);
      console.error(e);
    }
  } finally {
    running = false;
  }
  if (again) { again = false; tick(); } else if (!paused) timer = setTimeout(tick, REFRESH_S * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("refresh").textContent = String(REFRESH_S);
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("tfprod-key", document.getElementById("key").value.trim());
    document.getElementById("key").value = "";
    state.modelsJson = state.rolloutsJson = "";
    tick();
  });
  const pause = document.getElementById("pause");
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume updates" : "Pause updates";
    pause.setAttribute("aria-pressed", String(paused));
    if (paused) { clearTimeout(timer); say("Updates paused."); lastSaid = ""; } else tick();
  });
  tick();
});
