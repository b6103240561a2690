"""Pusher: a blessed, infra-validated model becomes the next version under a serving base path."""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

from tfprod.format.audit import METADATA_FILE, read_metadata
from tfprod.pipeline import storage
from tfprod.pipeline.components import trainer
from tfprod.pipeline.dsl import Component, PipelineError, RunContext


class Pusher(Component):
    """`Pusher(model=..., blessing=..., infra_blessing=..., push_destination="models/credit",
    private_key=None)`: copies the model (with the infra validator's warmup records) beside the base
    path, signs it when given a key, and renames it in as the next integer version; an existing
    version is never overwritten. A running `tfprod serve` on that base path picks it up."""

    INPUTS = ("model", "blessing", "infra_blessing")
    OUTPUTS = {"pushed_model": "PushedModel"}

    def __init__(self, *, push_destination: str, private_key: str | None = None, **kw: Any) -> None:
        super().__init__(push_destination=push_destination, private_key=private_key, **kw)

    def run(self, ctx: RunContext) -> None:
        model, blessing, infra = ctx.input("model"), ctx.input("blessing"), ctx.input("infra_blessing")
        assert model is not None and blessing is not None and infra is not None
        if not blessing.properties.get("blessed") or blessing.properties.get("model_id") != model.id:
            why = "; ".join(blessing.properties.get("reasons") or [])
            raise PipelineError(f"model {model.id} is not blessed ({why}): nothing is pushed")
        if not infra.properties.get("blessed") or infra.properties.get("model_id") not in (None, model.id):
            raise PipelineError(f"model {model.id} did not pass infra validation: nothing is pushed")
        base = os.path.abspath(self.params["push_destination"])
        os.makedirs(base, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".push-", dir=base)  # not a number: no server loads it
        try:
            target = os.path.join(staging, "model")
            shutil.copytree(trainer.saved_model_dir(model), target)
            from tfprod.export import warmup  # (imports TensorFlow: not at module level)

            requests = os.path.join(storage.localize(infra.uri), warmup.WARMUP_FILE)  # what InfraValidator sent
            if os.path.isfile(requests):
                shutil.copy2(requests, os.path.join(target, warmup.WARMUP_FILE))
            pushed_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            who = getpass.getuser()
            path = os.path.join(target, METADATA_FILE)
            audit = read_metadata(target) or {}
            audit["pipeline"] = {**audit.get("pipeline", {}), "pushed_at": pushed_at, "pushed_by": who,
                                 "push_run_id": ctx.run_id, "blessing_artifact": blessing.id,
                                 "infra_blessing_artifact": infra.id, "model_artifact": model.id}
            with open(path, "w") as f:
                json.dump(audit, f, indent=2, sort_keys=True)
            signer = ""
            if self.params["private_key"]:
                from tfprod.security import signing

                signing.sign(target, self.params["private_key"])
                with tempfile.TemporaryDirectory() as tmp, open(signing.public_key_file(
                        self.params["private_key"], tmp), "rb") as f:
                    signer = "sha256:" + hashlib.sha256(f.read()).hexdigest()
            version = self._rename_in(base, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ctx.output("pushed_model", version=version, path=os.path.join(base, str(version)), pushed_at=pushed_at,
                   pushed_by=who, signed=bool(self.params["private_key"]), signer_key=signer, model_id=model.id)
        ctx.progress(f"pushed version {version} to {base}")

    @staticmethod
    def _rename_in(base: str, target: str) -> int:
        for _ in range(100):
            version = max((int(d) for d in os.listdir(base) if d.isdigit()), default=0) + 1
            final = os.path.join(base, str(version))
            if os.path.exists(final):
                continue
            try:
                os.rename(target, final)  # onto a version another pusher just wrote: refused, next number
            except OSError:
                continue
            return version
        raise PipelineError(f"could not claim a new version number under {base}")
