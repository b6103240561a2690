"""The transport-neutral core every front end (REST v1, gRPC, V2 on both) delegates to.

Each call pins one version through a manager handle only for as long as the model runs, then
answers plain data: front ends own the wire formats (`tfprod.codec`) and the status codes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from tfprod.core.manager import Manager, VersionStatus
from tfprod.core.states import State
from tfprod.errors import Code, ServingError, invalid, not_found
from tfprod.servables.base import Servable
from tfprod.signature import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD, Signature

Decode = Callable[[Signature], Mapping[str, np.ndarray]]
Classes = tuple[np.ndarray | None, np.ndarray | None]  # (classes, scores)
OutputFilter = tuple[str, ...] | Callable[[Signature], tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = DEFAULT_SIGNATURE


@dataclasses.dataclass(frozen=True)
class Prediction:
    version: int
    signature: Signature
    outputs: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class InputBounds:
    """The security config's [limits] on one request's tensors (None: unbounded)."""

    max_tensor_elements: int | None = None
    max_batch_rows: int | None = None

    def check(self, name: str, elements: int, rows: int | None) -> None:
        if self.max_tensor_elements is not None and elements > self.max_tensor_elements:
            raise invalid(f"input '{name}' has {elements} elements; this server accepts at most "
                          f"{self.max_tensor_elements} per tensor (max_tensor_elements)")
        if self.max_batch_rows is not None and rows is not None and rows > self.max_batch_rows:
            raise invalid(f"input '{name}' has {rows} rows; this server accepts at most "
                          f"{self.max_batch_rows} per request (max_batch_rows)")


class Service:
    def __init__(self, manager: Manager[Servable], check_method_names: bool = False,
                 bounds: InputBounds = InputBounds(), executor: concurrent.futures.Executor | None = None,
                 statuses_of: Callable[[Sequence[str]], dict[str, list[VersionStatus]]] | None = None) -> None:
        self._manager = manager
        # ServerCore.statuses_of: the pool's, in a pool of workers
        self._statuses_of = statuses_of or (lambda names: {n: manager.status(n) for n in names})
        self._check = check_method_names  # --enable_signature_method_name_check
        self._bounds = bounds
        self._executor = executor  # runs unbatched model calls; batched ones wait on the loop, not here

    def _bounded(self, decode: Decode) -> Decode:
        bounds = self._bounds
        if bounds.max_tensor_elements is None and bounds.max_batch_rows is None:
            return decode

        def checked(sig: Signature) -> Mapping[str, np.ndarray]:
            inputs = decode(sig)
            for name, arr in inputs.items():
                bounds.check(name, arr.size, arr.shape[0] if arr.ndim else None)
            return inputs
        return checked

    def _check_examples(self, examples: list[bytes]) -> None:
        self._bounds.check("examples", len(examples), len(examples))  # one serialized tf.Example per row

    # The model APIs run on the event loop: decoding and encoding are the callers' (small requests
    # decode in microseconds; REST hands large bodies to a thread first), the model call is the
    # servable's (`Servable.run_async`). The version stays pinned while its call runs.

    async def predict(self, spec: ModelSpec, decode: Decode, output_filter: OutputFilter = (),
                      offload: bool = False) -> Prediction:
        """Run a signature; `output_filter` names the outputs to return (all when empty), or is a
        function of the signature that does. `offload`: decode on an executor thread (a large
        request would hold the event loop)."""
        bounded = self._bounded(decode)
        inputs_of = _offloaded(bounded, self._executor) if offload else bounded
        with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
            sig, outputs = await _run(servable, spec.signature_name, inputs_of, output_filter, self._executor)
        return Prediction(version, sig, outputs)

    async def classify(self, spec: ModelSpec, examples: list[bytes]) -> tuple[int, Classes]:
        """(version, (classes, scores)) for serialized tf.Examples on a classify signature."""
        self._check_examples(examples)
        with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
            return version, await _classify(servable, spec.signature_name, examples, self._check, self._executor)

    async def regress(self, spec: ModelSpec, examples: list[bytes]) -> tuple[int, np.ndarray]:
        self._check_examples(examples)
        with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
            return version, await _regress(servable, spec.signature_name, examples, self._check, self._executor)

    async def multi_inference(self, spec: ModelSpec, tasks: Sequence[tuple[str, str]],
                              examples: list[bytes]) -> tuple[int, list[Classes | np.ndarray]]:
        """Several classify/regress signatures of one model version over the same examples.
        `tasks` are (signature_name, method_name) pairs; results come back in their order."""
        self._check_examples(examples)
        with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
            results: list[Classes | np.ndarray] = []
            for signature_name, method in tasks:
                if method == CLASSIFY_METHOD:
                    results.append(await _classify(servable, signature_name, examples, self._check, self._executor))
                elif method == REGRESS_METHOD:
                    results.append(await _regress(servable, signature_name, examples, self._check, self._executor))
                else:
                    raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {method}")
            return version, results

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        if label is not None:
            version = self._manager.labels(name).get(label)
            if version is None:
                raise invalid(f"Unrecognized servable version label: {label}")
        statuses = self._statuses_of([name])[name]
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise not_found(f"Could not find version {version} of model {name}")
        if not statuses:
            raise not_found(f"Could not find any versions of model {name}")
        return statuses

    def signature(self, spec: ModelSpec) -> tuple[int, Signature]:
        with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
            return version, servable.signature(spec.signature_name)

    def version_dir(self, spec: ModelSpec) -> tuple[int, str]:
        """(version, its directory) of a version being served."""
        with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
            return version, servable.path

    def available_versions(self, name: str) -> list[int]:
        return sorted(s.version for s in self._statuses_of([name])[name] if s.state is State.AVAILABLE)

    def metadata(self, spec: ModelSpec) -> tuple[int, meta_graph_pb2.MetaGraphDef, dict[str, Any] | None]:
        """(version, MetaGraphDef, the version's audit metadata or None)."""
        with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
            return version, servable.meta_graph, servable.audit

    def models(self) -> dict[str, tuple[list[VersionStatus], dict[str, int]]]:
        names = self._manager.models()
        statuses = self._statuses_of(names)
        return {m: (statuses[m], self._manager.labels(m)) for m in names}


AsyncDecode = Callable[[Signature], Awaitable[Mapping[str, np.ndarray]]]


def _offloaded(decode: Decode, executor: concurrent.futures.Executor | None) -> AsyncDecode:
    async def run(sig: Signature) -> Mapping[str, np.ndarray]:
        return await asyncio.get_running_loop().run_in_executor(executor, decode, sig)
    return run


async def _run(servable: Servable, signature_name: str, decode: Decode | AsyncDecode, output_filter: OutputFilter = (),
               executor: concurrent.futures.Executor | None = None) -> tuple[Signature, dict[str, np.ndarray]]:
    sig = servable.signature(signature_name)
    if callable(output_filter):
        output_filter = output_filter(sig)
    inputs = decode(sig)
    if inspect.isawaitable(inputs):
        inputs = await inputs
    return sig, await servable.run_async(sig, inputs, output_filter, executor)


async def classify_on(servable: Servable, signature_name: str, examples: list[bytes]) -> Classes:
    """Classify on a servable already in hand (warmup replays before a version is AVAILABLE)."""
    return await _classify(servable, signature_name, examples, False)


async def regress_on(servable: Servable, signature_name: str, examples: list[bytes]) -> np.ndarray:
    return await _regress(servable, signature_name, examples, False)


def _check_method(servable: Servable, signature_name: str, method: str, kind: str) -> None:
    sig = servable.signature(signature_name)
    if sig.method_name != method:
        raise invalid(f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}")


async def _classify(servable: Servable, signature_name: str, examples: list[bytes], check: bool,
                    executor: concurrent.futures.Executor | None = None) -> Classes:
    if check:
        _check_method(servable, signature_name, CLASSIFY_METHOD, "classification")
    _, outputs = await _run(servable, signature_name, _examples_decoder(examples, "classification"), (), executor)
    if "classes" not in outputs and "scores" not in outputs:
        raise invalid('Expected classification signature outputs to contain at least one of "classes" '
                      f'or "scores". Signature outputs: {sorted(outputs)}')
    return outputs.get("classes"), outputs.get("scores")


async def _regress(servable: Servable, signature_name: str, examples: list[bytes], check: bool,
                   executor: concurrent.futures.Executor | None = None) -> np.ndarray:
    if check:
        _check_method(servable, signature_name, REGRESS_METHOD, "regression")
    _, outputs = await _run(servable, signature_name, _examples_decoder(examples, "regression"), (), executor)
    if len(outputs) != 1:
        raise invalid("Expected one output Tensor.")
    return next(iter(outputs.values()))


def _examples_decoder(examples: list[bytes], kind: str) -> Decode:
    def decode(sig: Signature) -> dict[str, np.ndarray]:
        if len(sig.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        name, info = next(iter(sig.inputs.items()))
        if not info.is_string:
            raise ServingError(Code.INVALID_ARGUMENT, f"No {kind} inputs found in SignatureDef: input "
                               f"'{name}' is {info.dtype_name}, not serialized tf.Examples (DT_STRING)")
        arr = np.empty(len(examples), dtype=object)
        arr[:] = examples
        return {name: arr}
    return decode
