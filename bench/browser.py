"""The in-browser page's speed: how long until a version answers in the browser, and per answer.

    .venv/bin/python bench/browser.py MODEL_VERSION_DIR [--runs 50]

Serves a copy of the version (converted to TF.js first when it has no tfjs/), opens its page in
headless Chromium (Debian's, through Playwright), and reports: page request to model ready
(runtime download, WASM compile, model load), the in-browser answer for one row (TF.js on WASM,
median and P90 of `--runs`, after one warm-up), and the page's compare (browser + the server's
REST answer). Inputs: zeros of the signature's shapes, batch 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from run import Server, free_port  # bench/run.py: the bench's server process and ports

_MEASURE = """async (runs) => {
  const inputs = {};
  for (const [alias, f] of Object.entries(tfprodPage.fields)) {
    const size = f.shape.reduce((a, b) => a * b, 1);
    inputs[alias] = {dtype: f.dtype, shape: f.shape, data: new Array(size).fill(0)};
  }
  const time = async (call) => {
    await call();
    const t = [];
    for (let i = 0; i < runs; i++) { const a = performance.now(); await call(); t.push(performance.now() - a); }
    t.sort((a, b) => a - b);
    return [t[Math.floor(runs / 2)], t[Math.floor(runs * 0.9)]];
  };
  return [await time(() => tfprodPage.run(inputs)), await time(() => tfprodPage.compare(inputs))];
}"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("version_dir")
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    from tfprod.edge import tfjs
    from tfprod.edge.parity import chromium_path

    with tempfile.TemporaryDirectory() as tmp:
        version = os.path.join(tmp, "model", "1")
        shutil.copytree(args.version_dir, version)
        if not os.path.isfile(os.path.join(version, tfjs.TFJS_DIR, tfjs.MODEL_JSON)):
            tfjs.export(version)
        port = free_port()
        server = Server("tfprod", [sys.executable, "-m", "tfprod", "serve", "--host=127.0.0.1",
                                   f"--rest_api_port={port}", f"--port={free_port()}", "--model_name=model",
                                   f"--model_base_path={os.path.dirname(version)}"], port, "/readyz")
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
                tab = browser.new_page()
                started = time.perf_counter()
                tab.goto(f"http://127.0.0.1:{port}/ui/models/model/browser")
                tab.wait_for_function("window.tfprodPage && (tfprodPage.ready || tfprodPage.error)", timeout=120_000)
                ready_ms = (time.perf_counter() - started) * 1e3
                if tab.evaluate("tfprodPage.error"):
                    sys.exit(f"the page could not load the model: {tab.evaluate('tfprodPage.error')}")
                (run_p50, run_p90), (cmp_p50, cmp_p90) = tab.evaluate(_MEASURE, args.runs)
                threads = tab.evaluate("tfprodPage.threads")
                browser.close()
        finally:
            server.stop()
    print(f"page to model ready: {ready_ms:.0f} ms (TF.js {tfjs.runtime_version()}, WASM, {threads} thread(s))")
    print(f"in-browser answer, 1 row: median {run_p50:.2f} ms, P90 {run_p90:.2f} ms ({args.runs} runs)")
    print(f"page compare (browser + server REST): median {cmp_p50:.2f} ms, P90 {cmp_p90:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
