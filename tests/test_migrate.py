"""`tfprod migrate` on real Keras files, and `tfprod serve` refusing them."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from tfprod.export import read_metadata
from tfprod.export.migrate import MigrateError, migrate


def model(with_lambda: bool = False) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    layers: list[Any] = [tf.keras.Input((4,), name="x"), tf.keras.layers.Dense(3)]
    if with_lambda:
        layers.append(tf.keras.layers.Lambda(lambda t: t * 2))
    return tf.keras.Sequential(layers)


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_keras_file_becomes_a_version_that_answers_like_the_model(tmp_path: Any, suffix: str) -> None:
    m = model()
    source = str(tmp_path / f"model{suffix}")
    m.save(source)
    path = migrate(source, str(tmp_path / "served"))
    assert path.endswith(os.path.join("served", "1"))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    got = next(iter(tf.saved_model.load(path).signatures["serving_default"](tf.constant(x)).values()))
    np.testing.assert_allclose(got.numpy(), m(x).numpy(), rtol=1e-6)
    assert read_metadata(path)["description"] == f"migrated from model{suffix}"  # type: ignore[index]


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_lambda_layers_are_refused_not_run(tmp_path: Any, suffix: str) -> None:
    source = str(tmp_path / f"lambda{suffix}")
    model(with_lambda=True).save(source)
    with pytest.raises(MigrateError, match="Lambda|safe"):
        migrate(source, str(tmp_path / "served"))
    assert not os.path.exists(tmp_path / "served" / "1")


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_base_path_that_is_a_keras_file_gets_the_migrate_command(tmp_path: Any, suffix: str) -> None:
    source = tmp_path / f"credit{suffix}"
    model().save(str(source))
    result = subprocess.run([sys.executable, "-m", "tfprod", "serve", "--rest_api_port=1", "--model_name=credit",
                             f"--model_base_path={source}"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"{source} is a Keras file" in result.stderr
    assert f"tfprod migrate {source} {tmp_path / 'credit'}`, then serve --model_base_path={tmp_path / 'credit'}" \
        in result.stderr
    assert "Traceback" not in result.stderr
    migrate(str(source), str(tmp_path / "credit"))  # the command it names works
    assert os.path.isfile(tmp_path / "credit" / "1" / "saved_model.pb")


def test_serve_refuses_keras_files_and_names_migrate(tmp_path: Any) -> None:
    base = tmp_path / "m"
    base.mkdir()
    model().save(str(base / "model.h5"))
    result = subprocess.run([sys.executable, "-m", "tfprod", "serve", "--rest_api_port=1",
                             f"--model_base_path={base}"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "tfprod migrate" in result.stderr and "model.h5" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_commands_from_a_keras_file_to_a_served_warmed_up_version(tmp_path: Any, start_server: Any) -> None:
    """The README's path: `tfprod migrate ... --metadata --warmup`, then `tfprod serve`."""
    source = str(tmp_path / "model.keras")
    m = model()
    m.save(source)
    (tmp_path / "audit.json").write_text('{"owner": "risk-team", "approval_id": "CR-7", "metrics": {"auc": 0.9}}')
    (tmp_path / "request.json").write_text('{"instances": [[1, 2, 3, 4]]}')
    done = subprocess.run([sys.executable, "-m", "tfprod", "migrate", source, str(tmp_path / "served"),
                           f"--metadata={tmp_path / 'audit.json'}", f"--warmup={tmp_path / 'request.json'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    server = start_server([f"--model_base_path={tmp_path / 'served'}", "--model_name=m",
                           "--required_metadata_fields=owner,approval_id"])
    assert "warmed up m version 1: 1 records" in server.log()
    assert server.client.get("/v1/models/m/metadata").json()["metadata"]["audit"]["approval_id"] == "CR-7"
    r = server.client.post("/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]})
    np.testing.assert_allclose(r.json()["predictions"], m(np.array([[1, 2, 3, 4]], np.float32)).numpy(), rtol=1e-5)
    bad = subprocess.run([sys.executable, "-m", "tfprod", "migrate", source, str(tmp_path / "served"),
                          f"--warmup={tmp_path / 'audit.json'}"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "warmup request 0" in bad.stderr and "Traceback" not in bad.stderr
    assert not os.path.exists(tmp_path / "served" / "2")
