"""The web console of a real `tfprod serve` in headless Chromium: two models (one with a version
that fails to load, one batched and in a rollout), API keys with and without the admin scope.
Each section shows what the JSON APIs say, the live plots move as requests arrive, the rollout
buttons act only for an admin, and axe-core finds no accessibility violation. Screenshots land in
build/test-artifacts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import saved_models
import tensorflow as tf
from conftest import ServerProcess, artifact_path, free_port, npm_package

from tfprod.edge import tfjs

KEYS = {"reader": ["read:*", "predict:*"], "operator": ["read:*", "admin"], "hpt_only": ["read:hpt"]}
AXE = "axe-core@4.14.1"
UPLOT = "uplot@1.6.32"  # the version vendored in tfprod/console/static/vendor


@pytest.fixture(scope="module")
def served(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("console")
    saved_models.half_plus_two(str(root / "hpt" / "1"))
    saved_models.half_plus_two(str(root / "hpt" / "2"), a=2.0, b=1.0)
    digits = saved_models.publish(os.path.join(model_dir, "digits", "1"), str(root / "digits"), 1)
    tfjs.export(digits)
    converter = tf.lite.TFLiteConverter.from_saved_model(digits)
    (root / "digits" / "1" / "model.tflite").write_bytes(converter.convert())
    broken = root / "digits" / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")  # fails to load, v1 keeps serving
    (root / "models.config").write_text(textwrap.dedent(f"""\
        model_config_list {{
          config {{ name: "digits" base_path: "{root / 'digits'}" model_platform: "tensorflow"
                   model_version_policy {{ all {{}} }} }}
          config {{ name: "hpt" base_path: "{root / 'hpt'}" model_platform: "tensorflow"
                   model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
                   version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }}
        }}
        """))
    (root / "rollout.toml").write_text(textwrap.dedent("""\
        [models.hpt]
        stable = "stable"
        canary = "canary"
        steps = [30, 60, 100]
        [models.hpt.analysis]
        interval_s = 3600
        """))
    (root / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }')
    (root / "security.toml").write_text("".join(
        f'[[auth.api_keys]]\nname = "{name}"\nsha256 = "{hashlib.sha256(name.encode()).hexdigest()}"\n'
        f"scopes = {json.dumps(scopes)}\n" for name, scopes in KEYS.items()))
    return start_server([f"--model_config_file={root / 'models.config'}",
                         f"--rollout_config_file={root / 'rollout.toml'}",
                         f"--security_config_file={root / 'security.toml'}", "--enable_batching",
                         f"--monitoring_config_file={root / 'monitoring.config'}",
                         "--strict_readiness=false", "--max_num_load_retries=0"])


def _get(server: ServerProcess, path: str, key: str = "reader") -> Any:
    r = server.client.get(path, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()


@contextlib.contextmanager
def _open(chromium: Any, server: ServerProcess, key: str | None = "reader", csp: bool = False) -> Iterator[Any]:
    """A tab on the console. Playwright's waits evaluate strings, which the page's policy forbids:
    only the first test keeps the policy (a violation is a console error, which fails it)."""
    tab = chromium.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=not csp).new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text
           and "403" not in m.text else None)
    tab.errors = errors
    tab.goto(f"{server.url}/ui/?refresh=0.5")
    if key is not None:
        _use_key(tab, key)
    try:
        yield tab
    finally:
        tab.context.close()


def _use_key(tab: Any, key: str) -> None:
    tab.fill("#key", key)
    tab.press("#key", "Enter")
    tab.wait_for_selector("#models article")


def _until(tab: Any, expression: str, timeout: float = 20) -> None:
    """Poll an expression in the page (Playwright's wait_for_function waits on animation frames)."""
    deadline = time.monotonic() + timeout
    while not tab.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        tab.wait_for_timeout(100)


def _predict(server: ServerProcess, model: str, instances: list[Any], n: int) -> None:
    for _ in range(n):
        r = server.client.post(f"/v1/models/{model}:predict", json={"instances": instances},
                               headers={"X-API-Key": "reader"})
        assert r.status_code == 200, r.text


def test_models_section_shows_what_the_json_apis_say(served: ServerProcess, chromium: Any) -> None:
    with _open(chromium, served, key=None, csp=True) as tab:
        tab.wait_for_selector("#alert:not([hidden])")
        assert "API key" in tab.inner_text("#alert") and "Missing credentials" in tab.inner_text("#alert")
        _use_key(tab, "reader")
        listed = {m["name"]: m for m in _get(served, "/v1/models")["models"]}
        assert set(listed) == {"digits", "hpt"}
        for name, model in listed.items():
            article = tab.locator(f'#models article[data-model="{name}"]')
            rows = article.locator("table").first.locator("tbody tr")
            shown = {rows.nth(i).locator("th").inner_text(): rows.nth(i).locator("td").all_inner_texts()
                     for i in range(rows.count())}
            assert set(shown) == {s["version"] for s in model["model_version_status"]}
            for status in model["model_version_status"]:
                state, labels, error, files, checked, _ = shown[status["version"]]
                assert state == status["state"]
                assert error == status["status"]["error_message"]
                assert labels == ", ".join(sorted(k for k, v in model["version_labels"].items()
                                                  if v == status["version"]))
        digits_rows = tab.locator('#models article[data-model="digits"] table').first.locator("tbody tr")
        assert digits_rows.nth(0).locator("td").all_inner_texts()[:2] == ["END", ""]
        assert "Error parsing message" in digits_rows.nth(0).locator("td").nth(2).inner_text()  # why it failed
        assert digits_rows.nth(1).locator("td").nth(3).inner_text() == "TFLite, TF.js"
        # what the security rules checked of each serving version when it loaded
        console = {m["name"]: m for m in _get(served, "/ui/api/models")["models"]}
        digits_1 = next(v for v in console["digits"]["versions"] if v["version"] == 1)["checked"]
        assert digits_1 == {"signature": "not required", "graph_scan": "passed"}  # graph_scan = "warn" by default
        assert digits_rows.nth(1).locator("td").nth(4).inner_text() == \
            f"signature: {digits_1['signature']}; graph scan: {digits_1['graph_scan']}"
        assert tab.locator('#models article[data-model="digits"] a', has_text="In the browser").get_attribute(
            "href") == "/ui/models/digits/versions/1/browser"
        policy = 'dt:text("Version policy") + dd'
        assert tab.inner_text(f'#models article[data-model="digits"] {policy}') == "all"
        assert tab.inner_text(f'#models article[data-model="hpt"] {policy}') == "specific [1, 2]"
        # signatures as the metadata API has them
        meta = _get(served, "/v1/models/digits/versions/1/metadata")["metadata"]["signature_def"]["signature_def"]
        tab.click('#models article[data-model="digits"] summary')
        sig_rows = tab.locator('#models article[data-model="digits"] details table tbody tr')
        sigs = {sig_rows.nth(i).locator("th").inner_text(): sig_rows.nth(i).locator("td").all_inner_texts()
                for i in range(sig_rows.count())}
        assert set(sigs) == set(meta)
        pixels = meta["serving_default"]["inputs"]["pixels"]
        assert sigs["serving_default"][1] == "pixels: float [" + ", ".join(
            d["size"] for d in pixels["tensor_shape"]["dim"]) + "]"
        assert "not required" in tab.inner_text("#checks")
        _predict(served, "hpt", [1.0], 2)
        tab.wait_for_selector('#metrics article[data-model="hpt"] canvas', timeout=20_000)  # uPlot under the policy
        tab.screenshot(path=artifact_path("console-models.png"), full_page=True)
        assert tab.errors == []


def test_live_metrics_move_as_requests_arrive(served: ServerProcess, chromium: Any) -> None:
    with _open(chromium, served) as tab:
        _predict(served, "hpt", [1.0], 1)
        tab.wait_for_selector('#metrics article[data-model="hpt"] canvas', timeout=20_000)
        before = tab.evaluate("tfprodConsole.totals.hpt.total")
        points = tab.evaluate("tfprodConsole.history.hpt.t.length")
        _predict(served, "hpt", [1.0, 2.0], 40)
        _predict(served, "digits", [np.zeros(64).tolist()], 10)
        _until(tab, f"tfprodConsole.totals.hpt && tfprodConsole.totals.hpt.total >= {before + 40}"
              " && tfprodConsole.totals.digits && tfprodConsole.totals.digits.total >= 10")
        served_metrics = _get(served, "/ui/api/metrics")["models"]
        shown = tab.evaluate("tfprodConsole.totals")
        for name in ("hpt", "digits"):
            assert shown[name]["total"] == sum(served_metrics[name]["requests"].values())
            assert shown[name]["versions"] == {v: sum(d["requests"].values())
                                               for v, d in served_metrics[name]["versions"].items()}
        # TF Serving's own counter says the same (the console reads no Prometheus, but must agree)
        exposition = served.client.get("/metrics")
        assert f'model_name="hpt",status="OK"}} {served_metrics["hpt"]["requests"]["OK"]}' in exposition.text
        routed = shown["hpt"]["versions"]
        assert set(routed) == {"1", "2"} and sum(routed.values()) == shown["hpt"]["total"]  # both arms took traffic
        history = tab.evaluate("tfprodConsole.history.hpt")
        assert len(history["t"]) > points and max(v or 0 for v in history["versions"]["1"]) > 0
        assert any(p is not None and p > 0 for p in history["p99"])
        rows = tab.locator('#metrics article[data-model="hpt"] table').first.locator("tbody tr")
        assert rows.nth(0).locator("td").first.inner_text() == str(shown["hpt"]["total"])
        batching = tab.locator('#metrics article[data-model="hpt"] table').nth(1)
        assert "Mean batch size" in batching.inner_text()
        assert tab.locator('#metrics article[data-model="hpt"] figure figcaption').all_inner_texts() == [
            "Requests per second to hpt, by version", "Latency of hpt in ms (P50, P99)",
            "Batching of hpt: mean batch size, queueing P99 in ms"]
        assert max(b or 0 for b in tab.evaluate("tfprodConsole.history.hpt.batch")) >= 1
        tab.screenshot(path=artifact_path("console-metrics.png"), full_page=True)
        assert tab.errors == []


def test_rollout_buttons_act_for_an_admin_only(served: ServerProcess, chromium: Any) -> None:
    with _open(chromium, served) as tab:
        tab.wait_for_selector('#rollouts article[data-rollout="hpt"]')
        rollout = _get(served, "/v1/rollouts")["rollouts"][0]
        assert tab.inner_text('#rollouts [data-field="weight"]') == f"{rollout['weight']:g}%"
        assert f"{rollout['model']}: {rollout['state']}" in tab.inner_text("#rollouts h3")
        tab.click("text=Pause hpt")
        tab.wait_for_selector("#alert:not([hidden])")
        assert "admin" in tab.inner_text("#alert")  # refused: the reader has no admin scope
        assert _get(served, "/v1/rollouts")["rollouts"][0]["state"] == rollout["state"]
        _use_key(tab, "operator")
        tab.click("text=Pause hpt")
        _until(tab, "document.querySelector('#rollouts h3').textContent.includes('paused')")
        assert _get(served, "/v1/rollouts")["rollouts"][0]["state"] == "paused"
        assert "paused by an admin" in tab.inner_text("#rollouts table")
        tab.screenshot(path=artifact_path("console-rollouts.png"), full_page=True)
        tab.click("text=Resume hpt")
        _until(tab, "document.querySelector('#rollouts h3').textContent.includes('progressing')")
        assert _get(served, "/v1/rollouts")["rollouts"][0]["state"] == "progressing"
        assert tab.locator("text=Resume hpt").is_disabled() and not tab.locator("text=Pause hpt").is_disabled()
        tab.once("dialog", lambda dialog: dialog.dismiss())  # asked first; "no" leaves it alone
        tab.click("text=Abort hpt")
        assert _get(served, "/v1/rollouts")["rollouts"][0]["state"] == "progressing"
        tab.once("dialog", lambda dialog: dialog.accept())
        tab.click("text=Abort hpt")
        _until(tab, "document.querySelector('#rollouts h3').textContent.includes('aborted')")
        assert _get(served, "/v1/rollouts")["rollouts"][0]["weight"] == 0
        tab.click("text=Resume hpt")  # restarts at the first step
        _until(tab, "document.querySelector('#rollouts h3').textContent.includes('progressing')")
        assert _get(served, "/v1/rollouts")["rollouts"][0]["weight"] == 30
        assert tab.errors == []


def test_the_console_is_usable_from_the_keyboard_and_by_a_screen_reader(served: ServerProcess,
                                                                         chromium: Any) -> None:
    with _open(chromium, served) as tab:
        assert tab.title() == "tfprod console"
        tab.wait_for_selector('#metrics article[data-model="hpt"] canvas', timeout=20_000)
        axe = os.path.join(npm_package(AXE, "axe-core"), "node_modules", "axe-core", "axe.min.js")
        tab.add_script_tag(path=axe)
        found = tab.evaluate("axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'best-practice']})")
        violations = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in found["violations"]]
        assert violations == [], violations
        assert found["passes"]  # axe did look
        # the keyboard: the skip link first, then the sections' links; a rollout button works from Enter
        tab.reload()  # the key stays for the tab's session
        tab.wait_for_selector("#rollouts article")
        tab.keyboard.press("Tab")
        assert tab.evaluate("document.activeElement.textContent") == "Skip to the console"
        tab.keyboard.press("Enter")
        assert tab.evaluate("document.activeElement.id") == "main"
        headings = tab.locator("h2").all_inner_texts()
        assert headings == ["Models", "Live metrics", "Rollouts", "Lineage"]
        _use_key(tab, "operator")
        tab.focus("text=Pause hpt")
        tab.keyboard.press("Enter")
        _until(tab, "document.querySelector('#rollouts h3').textContent.includes('paused')")
        assert tab.evaluate("document.activeElement.textContent") == "Resume hpt"  # focus moved on, not lost
        tab.keyboard.press("Enter")
        _until(tab, "document.querySelector('#rollouts h3').textContent.includes('progressing')")


def test_make_demo_prints_the_console_and_it_shows_the_demo_model_live(chromium: Any, tmp_path: Any) -> None:
    """`tfprod demo` (what `make demo` runs): the printed console URL shows digits, its requests live."""
    rest, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tfprod", "demo", "--base_path", str(tmp_path / "digits"),
                             f"--rest_api_port={rest}", f"--port={grpc_port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tab = None
    client = httpx.Client(base_url=f"http://127.0.0.1:{rest}", timeout=10)
    try:
        printed: list[str] = []
        assert proc.stdout is not None
        while not any("/ui/" in line for line in printed):  # the console's URL comes before the server starts
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(printed)
            printed.append(line)
        url = next(line.split()[0] for line in printed if "/ui/" in line)
        assert url == f"http://localhost:{rest}/ui/"
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "".join(printed)
            time.sleep(0.2)
        tab = chromium.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True).new_page()
        tab.goto(url.replace("localhost", "127.0.0.1") + "?refresh=0.5")
        tab.wait_for_selector('#models article[data-model="digits"]')
        request = (tmp_path / "digits" / "request.json").read_bytes()  # the printed curl line's request
        for _ in range(5):
            assert client.post("/v1/models/digits:predict", content=request).status_code == 200
        _until(tab, "tfprodConsole.totals.digits && tfprodConsole.totals.digits.versions['1'] >= 5")
        assert "AVAILABLE" in tab.inner_text('#models article[data-model="digits"]')
        tab.screenshot(path=artifact_path("console-demo.png"), full_page=True)
    finally:
        if tab is not None:
            tab.context.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        client.close()
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_json_behind_the_console_needs_the_read_scope(served: ServerProcess) -> None:
    assert served.client.get("/ui/").status_code == 200  # the page itself holds no data
    assert "default-src 'self'" in served.client.get("/ui/").headers["content-security-policy"]
    assert served.client.get("/ui/console/vendor/LICENSE").text.startswith("The MIT License")
    for path in ("/ui/console/%2e%2e/routes.py", "/ui/console/vendor%2f..%2f..%2froutes.py", "/ui/console/"):
        assert served.client.get(path).status_code == 404, path
    assert served.client.post("/ui/api/models", headers={"X-API-Key": "reader"}).status_code == 404
    for path in ("/ui/api/models", "/ui/api/metrics"):
        assert served.client.get(path).status_code == 401
        refused = served.client.get(path, headers={"X-API-Key": "hpt_only"})
        assert refused.status_code == 403 and "read:*" in refused.text  # every model's data: a server-wide scope
    other = served.client.get("/ui/api/models/digits/versions/1/lineage", headers={"X-API-Key": "hpt_only"})
    assert other.status_code == 403  # another model's lineage
    missing = served.client.get("/ui/api/models/hpt/versions/1/lineage", headers={"X-API-Key": "hpt_only"})
    assert missing.status_code == 404 and "not pushed by a tfprod pipeline" in missing.text
    assert served.client.get("/ui/api/nothing", headers={"X-API-Key": "reader"}).status_code == 404


def test_console_files_ship_with_the_package() -> None:
    """Every file of the page is in the wheel's package data, and none is fetched from elsewhere."""
    import glob
    import tomllib

    from tfprod.console import routes

    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["tfprod.console"]
    package = os.path.dirname(routes.STATIC_DIR)
    shipped = {os.path.relpath(p, routes.STATIC_DIR) for pattern in patterns
               for p in glob.glob(os.path.join(package, pattern))}
    assert {"index.html", *routes._FILES} <= shipped
    uplot = os.path.join(npm_package(UPLOT, "uplot"), "node_modules", "uplot")
    for shipped_name, npm_name in (("uPlot.iife.min.js", "dist/uPlot.iife.min.js"),
                                   ("uPlot.min.css", "dist/uPlot.min.css"), ("LICENSE", "LICENSE")):
        with open(os.path.join(routes.STATIC_DIR, "vendor", shipped_name), "rb") as a, \
                open(os.path.join(uplot, npm_name), "rb") as b:
            assert a.read() == b.read(), f"vendor/{shipped_name} is not npm {UPLOT}'s {npm_name}"
    for name in ("index.html", "console.js", "console.css"):
        with open(os.path.join(routes.STATIC_DIR, name)) as f:
            text = f.read()
        assert "http://" not in text and "https://" not in text, name  # no CDN: everything from this server
