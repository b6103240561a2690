"""InfraValidator: the candidate in a real `tfprod serve` on loopback, asked over REST and gRPC;
the answers must equal the Trainer's model's in-process answers; writes the warmup records."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from tfprod.pipeline import examples as ex
from tfprod.pipeline.components import _user, evaluator, trainer
from tfprod.pipeline.dsl import Component, PipelineError, RunContext


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InfraValidator(Component):
    """`InfraValidator(model=..., examples=..., requests=8, timeout_s=120)`."""

    INPUTS = ("model", "examples")
    OUTPUTS = {"infra_blessing": "InfraBlessing"}

    def __init__(self, *, requests: int = 8, timeout_s: float = 120.0, **kw: Any) -> None:
        super().__init__(requests=requests, timeout_s=timeout_s, **kw)

    def run(self, ctx: RunContext) -> None:
        import httpx

        model, examples = ctx.input("model"), ctx.input("examples")
        assert model is not None and examples is not None
        split = "eval" if "eval" in examples.properties["splits"] else "train"
        table = ex.read_split(examples.uri, split).slice(0, self.params["requests"])
        raw = model.properties["raw_features"]
        columns = _user.arrays(table, list(raw), raw)
        expected = evaluator.predict(model, table)
        instances = [{k: (v[i].item() if v.dtype != object else str(v[i])) for k, v in columns.items()}
                     for i in range(table.num_rows)]
        with tempfile.TemporaryDirectory(prefix="tfprod-infra-") as tmp:
            shutil.copytree(trainer.saved_model_dir(model), os.path.join(tmp, "candidate", "1"))
            port, grpc_port = _free_port(), _free_port()
            log_path = os.path.join(tmp, "server.log")
            with open(log_path, "wb") as log:
                server = subprocess.Popen([sys.executable, "-m", "tfprod", "serve", "--host=127.0.0.1",
                                           f"--rest_api_port={port}", f"--port={grpc_port}", "--model_name=candidate",
                                           f"--model_base_path={os.path.join(tmp, 'candidate')}"],
                                          stdout=log, stderr=subprocess.STDOUT)
            try:
                ctx.progress(f"serving the candidate on 127.0.0.1:{port} (REST) and :{grpc_port} (gRPC)")
                self._wait_ready(server, port, log_path)
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    r = client.post("/v1/models/candidate:predict", json={"instances": instances})
                if r.status_code != 200:
                    raise PipelineError(f"infra validation: REST predict answered {r.status_code}: {r.text[:300]}")
                rest = np.asarray(r.json()["predictions"], np.float64).reshape(expected.shape)
                grpc_answer = self._grpc(grpc_port, columns, expected.shape)
            finally:
                server.terminate()
                server.wait(timeout=30)
        if not np.isfinite(expected).all():
            raise PipelineError("infra validation: the trained model answers NaN or infinity for the validation rows")
        for what, got in (("REST", rest), ("gRPC", grpc_answer)):
            diff = float(np.abs(got - expected).max()) if np.isfinite(got).all() else float("inf")
            if diff > 1e-5:
                raise PipelineError(f"infra validation: the served model's {what} answers differ from the trained "
                                    f"model's by {diff:.3g}")
        out = ctx.output("infra_blessing", blessed=True, requests=table.num_rows, rest_and_grpc=True, model_id=model.id)
        from tfprod.export import warmup

        requests = [("serving_default", {k: v[i:i + 1] for k, v in columns.items()}) for i in range(table.num_rows)]
        warmup.write(out.uri, requests)

    def _wait_ready(self, server: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        import httpx

        deadline = time.monotonic() + self.params["timeout_s"]
        while time.monotonic() < deadline:
            if server.poll() is not None:
                with open(log_path, errors="replace") as f:
                    raise PipelineError(f"infra validation: the server exited with {server.returncode}: "
                                        f"{f.read()[-800:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise PipelineError(f"infra validation: the candidate was not ready within {self.params['timeout_s']} s")

    @staticmethod
    def _grpc(port: int, columns: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "candidate"
        for name, values in columns.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values.astype(str).astype(object)
                                                               if values.dtype == object else values))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
            except grpc.RpcError as e:
                raise PipelineError(f"infra validation: gRPC Predict failed: {e.details()}") from None
        first = sorted(answer.outputs)[0]
        return np.asarray(tf.make_ndarray(answer.outputs[first]), np.float64).reshape(shape)
