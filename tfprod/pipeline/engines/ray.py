"""`--runner ray`: a step's data-parallel work as Ray tasks on a cluster (`pip install tfprod[ray]`).

The steps still run one after another in the driver (this process), which keeps the store and
publishes; what they hand to `ctx.map` (ExampleGen's files, StatisticsGen's row groups, a user
component's items) runs as one Ray task per item, over the same functions the in-process engine
calls, and the driver merges the results in the items' order. The answers are therefore the same
on both engines, to the last bit. Workers read and write the artifact root by path: on a cluster
it must be shared (the same mount, or an object store).

A task whose worker dies fails the step: Ray's exception names the function, the execution is
recorded FAILED and nothing of the step is published. `max_retries` lets Ray run a task again on
another worker instead. The pipeline file's folder is on the tasks' PYTHONPATH (a user
component's functions import there as here), and the object-storage settings of this process
(`FORWARDED`: endpoint, region, credentials when set) are in their environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from tfprod.pipeline.dsl import PipelineError
from tfprod.pipeline.runner import Engine

# What reaches object storage, passed to the tasks' environment when set here: an S3-compatible
# endpoint and its credentials (a cluster whose nodes have their own role needs none of them)
FORWARDED = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "TFPROD_ARTIFACT_CACHE")


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class RayEngine(Engine):
    name = "ray"

    def __init__(self, address: str = "", *, code_dir: str = "", max_retries: int = 0) -> None:
        try:
            import ray
        except ImportError:
            raise PipelineError("--runner ray needs Ray: pip install 'tfprod[ray]'") from None
        self._ray = ray
        # the pipeline's own modules (a user component's functions) import on the workers as they do here
        path = os.pathsep.join(p for p in (os.path.abspath(code_dir) if code_dir else "",
                                           os.environ.get("PYTHONPATH", "")) if p)
        forwarded = {k: v for k, v in os.environ.items() if k in FORWARDED}  # the same object store as here
        env = {"env_vars": {**forwarded, "PYTHONPATH": path,
                            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}}
        try:
            ray.init(address=address or None, runtime_env=env, log_to_driver=False, include_dashboard=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise PipelineError(f"cannot reach a Ray cluster at {address or '(a new local one)'}: "
                                f"{str(e).splitlines()[0][:300]}") from None
        self._remote = ray.remote(max_retries=max_retries, retry_exceptions=False)(_call)
        self.workers = int(ray.cluster_resources().get("CPU", 0))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        ray = self._ray
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "task")
        task = self._remote.options(name=name)  # what the cluster's task list shows
        refs = [task.remote(fn, item) for item in items]
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayTaskError as e:  # the function raised: the step fails with its own error
            self._cancel(refs)
            raise e.cause if isinstance(e.cause, Exception) else PipelineError(str(e)) from None
        except ray.exceptions.RayError as e:  # a worker or node died, an object was lost
            self._cancel(refs)
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise PipelineError(f"a Ray worker running {name} died ({type(e).__name__}: {first[:300]}); "
                                "nothing of the step is published") from None

    def _cancel(self, refs: list[Any]) -> None:
        """Stop the step's other tasks and wait for them, so none writes after the step's cleanup."""
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        try:
            self._ray.wait(refs, num_returns=len(refs), timeout=60)
        except Exception:  # cancelled and failed tasks raise on get, not on wait; a lost cluster: nothing to wait for
            pass

    def close(self) -> None:
        self._ray.shutdown()
