"""The in-browser page of a real `tfprod serve`: headless Chromium loads the version's TF.js files
from the server, runs them on WASM and compares with the server's answer; the files it loads obey
the security config; converting a signed version while it serves does not disturb it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import saved_models
import tensorflow as tf
from conftest import ServerProcess, artifact_path

from tfprod.edge import page as page_files
from tfprod.edge import tfjs
from tfprod.security import signing

KEYS = {name: f"tfp_browser_{name}_" + "y" * 24 for name in ("viewer", "reader", "other")}


@pytest.fixture(scope="module")
def served(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("browser")
    digits = saved_models.publish(os.path.join(model_dir, "digits", "1"), str(root / "digits"), 1)
    tfjs.export(digits)
    saved_models.publish(os.path.join(model_dir, "half_plus_two", "1"), str(root / "half_plus_two"), 1)
    (root / "models.config").write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{root / n}" model_platform: "tensorflow" }}\n'
        for n in ("digits", "half_plus_two")) + "}\n")
    return start_server([f"--model_config_file={root / 'models.config'}"])


def _open(browser: Any, url: str, headers: dict[str, str] | None = None) -> Any:
    context = browser.new_context(extra_http_headers=headers or {})
    tab = context.new_page()
    tab.goto(url)
    tab.wait_for_function("window.tfprodPage && (tfprodPage.ready || tfprodPage.error)", timeout=60_000)
    return tab


def _draw_a_seven(tab: Any) -> None:
    box = tab.locator("canvas.pad").bounding_box()
    x, y, w = box["x"], box["y"], box["width"]
    tab.mouse.move(x + 0.2 * w, y + 0.15 * w)
    tab.mouse.down()
    tab.mouse.move(x + 0.8 * w, y + 0.15 * w, steps=10)
    tab.mouse.move(x + 0.35 * w, y + 0.9 * w, steps=10)
    tab.mouse.up()


def _tensorflow(version_dir: str, pixels: list[float]) -> np.ndarray:
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    return next(iter(fn(pixels=tf.constant([pixels], tf.float32)).values())).numpy()[0]


def test_page_runs_the_model_in_the_browser_and_agrees_with_the_server(served: ServerProcess, chromium: Any,
                                                                      model_dir: str) -> None:
    tab = _open(chromium, f"{served.url}/ui/models/digits/browser")
    try:
        assert tab.evaluate("tfprodPage.error") is None
        assert tab.evaluate("[tfprodPage.backend, tfprodPage.crossOriginIsolated]") == ["wasm", True]
        assert tab.title() == "digits version 1 in the browser - tfprod"
        _draw_a_seven(tab)
        tab.click("#run")
        tab.wait_for_selector("#results tbody tr")
        last = tab.evaluate("tfprodPage.last")
        pixels = [float(v) for v in tab.evaluate("JSON.parse(document.getElementById('input-pixels').value)")]
        assert sum(pixels) > 3  # the stroke reached the model's input
        expected = _tensorflow(os.path.join(model_dir, "digits", "1"), pixels)
        browser = np.array(last["browser"]["output_0"]["data"])
        server = np.array(last["server"]["output_0"]["data"])
        np.testing.assert_allclose(browser, expected, atol=1e-5)
        np.testing.assert_allclose(server, expected, atol=1e-5)
        row = tab.locator("#results tbody tr")
        assert row.get_attribute("data-output") == "output_0" and float(row.get_attribute("data-max-abs-diff")) < 1e-5
        assert row.locator("td").nth(4).inner_text() == "yes"
        assert "browser (wasm) answered" in tab.inner_text("#status")
        tab.screenshot(path=artifact_path("browser-page-digits.png"), full_page=True)
        # keyboard: the Run button is reachable and works without a mouse
        tab.focus("#input-pixels")
        tab.keyboard.press("Tab")
        assert tab.evaluate("document.activeElement.id") == "run"
    finally:
        tab.context.close()


def test_files_are_served_with_their_types_and_isolation_headers(served: ServerProcess) -> None:
    page = served.client.get("/ui/models/digits/versions/1/browser")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    assert page.headers["cross-origin-embedder-policy"] == "require-corp"
    wasm = served.client.get("/ui/models/digits/static/tfjs/tfjs-backend-wasm-simd.wasm")
    assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"
    assert wasm.content[:4] == b"\0asm" and wasm.headers["cross-origin-resource-policy"] == "same-origin"
    again = served.client.get("/ui/models/digits/static/tfjs/tfjs-backend-wasm-simd.wasm",
                              headers={"If-None-Match": wasm.headers["etag"]})
    assert again.status_code == 304 and not again.content
    core = served.client.get("/ui/models/digits/static/tfjs/tf-core.min.js")
    assert core.headers["content-type"].startswith("text/javascript")
    manifest = page_files.runtime_manifest()["files"]
    assert hashlib.sha256(core.content).hexdigest() == manifest["tf-core.min.js"]["sha256"]
    model = served.client.get("/ui/models/digits/versions/1/tfjs/model.json")
    assert model.status_code == 200 and model.json()["format"] == "graph-model"
    shard = served.client.get("/ui/models/digits/versions/1/tfjs/group1-shard1of1.bin")
    assert shard.status_code == 200 and shard.headers["content-type"] == "application/octet-stream"
    for path in ("/ui/models/digits/versions/1/tfjs/..%2Fsaved_model.pb",
                 "/ui/models/digits/static/..%2F..%2Fcli.py", "/ui/models/digits/static/tfjs/manifest.jsonx",
                 "/ui/models/digits/versions/1/tfjs/.hidden",
                 "/ui/models/no_such_model/static/tfjs/tf-core.min.js"):  # only under a model this server serves
        assert served.client.get(path).status_code == 404, path
    assert served.client.post("/ui/models/digits/browser").status_code == 404


def test_a_version_without_tfjs_and_an_unknown_model_say_what_is_wrong(served: ServerProcess) -> None:
    missing = served.client.get("/ui/models/half_plus_two/browser")
    assert missing.status_code == 404 and "tfprod convert MODEL_BASE_PATH/1 --to tfjs" in missing.text
    unknown = served.client.get("/ui/models/nope/browser")
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert served.client.get("/ui/models/digits/versions/7/browser").status_code == 404


@pytest.fixture(scope="module")
def signed(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pki import key_pairs

    root = tmp_path_factory.mktemp("signed-browser")
    keys = key_pairs(root, "release")
    version = str(root / "digits" / "1")
    shutil.copytree(os.path.join(model_dir, "digits", "1"), version)
    signing.sign(version, keys["release"])

    def entry(name: str, scopes: list[str]) -> str:
        digest = hashlib.sha256(KEYS[name].encode()).hexdigest()
        return f'[[auth.api_keys]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = {scopes!r}\n'.replace("'", '"')
    (root / "security.toml").write_text(
        "[auth]\n" + entry("viewer", ["read:digits", "predict:digits"]) + entry("reader", ["read:digits"])
        + entry("other", ["predict:fraud-*"])
        + f'[models]\nrequire_signature = true\ntrusted_keys = ["{keys["release.pub"]}"]\n')
    server = start_server(["--model_name=digits", f"--model_base_path={root / 'digits'}",
                           f"--security_config_file={root / 'security.toml'}"])
    return {"server": server, "version": version, "key": keys["release"], "pub": keys["release.pub"]}


def _key(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfprod", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_converting_a_signed_serving_version_neither_disturbs_it_nor_hands_out_unsigned_files(
        signed: dict[str, Any], chromium: Any) -> None:
    server, version = signed["server"], signed["version"]
    body = {"instances": [[0.0] * 64]}
    before = server.client.post("/v1/models/digits:predict", json=body, headers=_key("viewer"))
    assert before.status_code == 200
    done = _cli("convert", version, "--to", "tfjs")
    assert done.returncode == 0, done.stderr
    assert "is signed and its signature does not cover tfjs" in done.stderr and "tfprod sign" in done.stderr
    # the loaded version keeps serving, as it was verified when it loaded
    assert server.client.post("/v1/models/digits:predict", json=body, headers=_key("viewer")).json() == before.json()
    status = server.client.get("/v1/models/digits", headers=_key("viewer")).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    # ...but no browser gets files its signature does not cover
    for path in ("/ui/models/digits/versions/1/tfjs/model.json", "/ui/models/digits/browser"):
        refused = server.client.get(path, headers=_key("viewer"))
        assert refused.status_code == 403 and "not covered by its signature" in refused.json()["error"], path
        assert "tfjs/model.json" in refused.json()["error"]
    with pytest.raises(signing.VerificationError):
        signing.verify(version, [signed["pub"]])
    # re-signed by the publisher: the files are served and the page runs
    done = _cli("convert", version, "--to", "tfjs", "--quantize", "float16", "--private_key", signed["key"])
    assert done.returncode == 0 and "re-signed" in done.stdout, done.stderr
    signing.verify(version, [signed["pub"]])
    assert server.client.get("/ui/models/digits/versions/1/tfjs/model.json", headers=_key("viewer")).status_code == 200
    tab = _open(chromium, f"{server.url}/ui/models/digits/browser", _key("viewer"))
    try:
        assert tab.evaluate("tfprodPage.error") is None
        result = tab.evaluate("tfprodPage.compare()")
        assert result["serverError"] is None and result["rows"][0]["agree"]
        assert result["rows"][0]["maxAbsDiff"] < 2e-3  # float16 weights
    finally:
        tab.context.close()
    # a weight file changed in place after the check (same size, same mtime) is not handed out
    shard = os.path.join(version, "tfjs", "group1-shard1of1.bin")
    stat = os.stat(shard)
    with open(shard, "rb") as f:
        original = f.read()
    with open(shard, "r+b") as f:
        f.write(bytes([original[0] ^ 0xFF]))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    refused = server.client.get("/ui/models/digits/versions/1/tfjs/group1-shard1of1.bin", headers=_key("viewer"))
    assert refused.status_code == 403 and "not covered by its signature" in refused.json()["error"]
    with open(shard, "wb") as f:
        f.write(original)
    restored = server.client.get("/ui/models/digits/versions/1/tfjs/group1-shard1of1.bin", headers=_key("viewer"))
    assert restored.status_code == 200 and restored.content == original  # checked again: the signed bytes


def test_re_signing_refuses_a_version_that_changed_since_it_was_signed(signed: dict[str, Any]) -> None:
    version = signed["version"]
    signing.sign(version, signed["key"])
    before = sorted(os.listdir(version))
    with open(os.path.join(version, "assets.extra.txt"), "w") as f:
        f.write("slipped in after signing")
    try:
        done = _cli("convert", version, "--to", "tfjs", "--private_key", signed["key"])
        assert done.returncode == 1 and "does not verify with this key, so it is not re-signed" in done.stderr
        assert "assets.extra.txt" in done.stderr
        with pytest.raises(signing.VerificationError):
            signing.verify(version, [signed["pub"]])  # still refused: nothing was blessed
    finally:
        os.remove(os.path.join(version, "assets.extra.txt"))
    assert sorted(os.listdir(version)) == before
    unsigned = os.path.join(os.path.dirname(version), "unsigned")
    shutil.copytree(version, unsigned, ignore=shutil.ignore_patterns("model.sig"))
    done = _cli("convert", unsigned, "--to", "tfjs", "--private_key", signed["key"])
    assert done.returncode == 1 and "is not signed" in done.stderr


def test_the_page_and_its_files_need_the_read_scope(signed: dict[str, Any], chromium: Any) -> None:
    server = signed["server"]
    tfjs.export(signed["version"])
    signing.sign(signed["version"], signed["key"])
    for path in ("/ui/models/digits/browser", "/ui/models/digits/static/tfjs/tf-core.min.js",
                 "/ui/models/digits/static/browser.js", "/ui/models/digits/versions/1/tfjs/model.json"):
        assert server.client.get(path).status_code == 401, path
        assert server.client.get(path, headers=_key("other")).status_code == 403, path  # another model's key
    # read without predict: the browser answers, the server's answer is refused and the page says so
    tab = _open(chromium, f"{server.url}/ui/models/digits/browser", _key("reader"))
    try:
        assert tab.evaluate("tfprodPage.error") is None
        result = tab.evaluate("tfprodPage.compare()")
        assert result["browser"]["output_0"]["shape"] == [1, 10]
        assert result["server"] is None and "403" in result["serverError"]
        assert "403" in tab.inner_text("#status")
    finally:
        tab.context.close()
