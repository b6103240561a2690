"""The transport-neutral core every front end (REST v1, gRPC, V2 on both) delegates to.

Each call pins one version through a manager handle only for as long as the model runs, then
answers plain data: front ends own the wire formats (`tfprod.codec`) and the status codes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from tfprod.core.manager import Manager, VersionStatus
from tfprod.core.states import State
from tfprod.errors import Code, ServingError, invalid, not_found
from tfprod.rollout.controller import Choice, Rollouts
from tfprod.servables.base import Servable
from tfprod.signature import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD, Signature

log = logging.getLogger("tfprod.service")

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


def _no_key(name: str) -> str | None:
    return None


_shadows: set[asyncio.Task[None]] = set()  # running shadow tasks (the loop keeps only weak references)


@dataclasses.dataclass
class Routed:
    """A model call's part in a rollout (`tfprod.rollout`). In: how to read the caller's sticky key
    (a header or gRPC metadata). Out: the arm and version that answered, and the shadow run the
    front end starts once the answer is on its way (`start_shadow`)."""

    key_of: Callable[[str], str | None] = _no_key
    arm: str | None = None
    version: int | None = None
    shadow: Callable[[], Coroutine[Any, Any, None]] | None = None

    def headers(self) -> dict[str, str]:
        """What the response says about the arm (nothing for a request no rollout routed)."""
        return {} if self.arm is None else {"x-tfprod-arm": self.arm, "x-tfprod-version": str(self.version)}

    async def run_shadow(self) -> None:
        """Run the shadow here (REST runs it as the response's background, after the answer is sent)."""
        shadow, self.shadow = self.shadow, None
        if shadow is not None:
            await shadow()

    def start_shadow(self) -> None:
        """Start the shadow as a task of its own (gRPC, whose answer is sent once the handler returns)."""
        if self.shadow is not None:
            task = asyncio.get_running_loop().create_task(self.shadow())
            _shadows.add(task)
            task.add_done_callback(_shadows.discard)
            self.shadow = None


T = TypeVar("T")


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
                 statuses_of: Callable[[Sequence[str]], dict[str, list[VersionStatus]]] | None = None,
                 rollouts: Rollouts | None = None,
                 on_answer: Callable[[str, int, str, float], None] | None = None) -> None:
        self._manager = manager
        self._on_answer = on_answer  # (model, version, status, seconds) of each model call: the console's numbers
        self._rollouts = rollouts
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
                      offload: bool = False, routed: Routed | None = None) -> Prediction:
        """Run a signature; `output_filter` names the outputs to return (all when empty), or is a
        function of the signature that does. `offload`: decode on an executor thread (a large
        request would hold the event loop). `routed`: this call may be routed by a rollout."""
        bounded = self._bounded(decode)
        inputs_of = _offloaded(bounded, self._executor) if offload else bounded

        async def run(servable: Servable) -> tuple[Signature, dict[str, np.ndarray]]:
            return await _run(servable, spec.signature_name, inputs_of, output_filter, self._executor)
        version, (sig, outputs) = await self._answer(spec, routed, run, lambda result: result[1])
        return Prediction(version, sig, outputs)

    async def classify(self, spec: ModelSpec, examples: list[bytes], routed: Routed | None = None
                       ) -> tuple[int, Classes]:
        """(version, (classes, scores)) for serialized tf.Examples on a classify signature."""
        self._check_examples(examples)

        async def run(servable: Servable) -> Classes:
            return await _classify(servable, spec.signature_name, examples, self._check, self._executor)
        return await self._answer(spec, routed, run, lambda result: _named(("classes", "scores"), result))

    async def regress(self, spec: ModelSpec, examples: list[bytes], routed: Routed | None = None
                      ) -> tuple[int, np.ndarray]:
        self._check_examples(examples)

        async def run(servable: Servable) -> np.ndarray:
            return await _regress(servable, spec.signature_name, examples, self._check, self._executor)
        return await self._answer(spec, routed, run, lambda result: {"outputs": result})

    async def multi_inference(self, spec: ModelSpec, tasks: Sequence[tuple[str, str]],
                              examples: list[bytes], routed: Routed | None = None
                              ) -> tuple[int, list[Classes | np.ndarray]]:
        """Several classify/regress signatures of one model version over the same examples.
        `tasks` are (signature_name, method_name) pairs; results come back in their order."""
        self._check_examples(examples)

        async def run(servable: Servable) -> list[Classes | np.ndarray]:
            results: list[Classes | np.ndarray] = []
            for signature_name, method in tasks:
                if method == CLASSIFY_METHOD:
                    results.append(await _classify(servable, signature_name, examples, self._check, self._executor))
                elif method == REGRESS_METHOD:
                    results.append(await _regress(servable, signature_name, examples, self._check, self._executor))
                else:
                    raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {method}")
            return results

        def outputs_of(results: list[Classes | np.ndarray]) -> dict[str, np.ndarray]:
            named: dict[str, np.ndarray] = {}
            for (signature_name, _), result in zip(tasks, results, strict=True):
                parts = _named(("classes", "scores"), result) if isinstance(result, tuple) else {"outputs": result}
                named.update({f"{signature_name}/{k}": v for k, v in parts.items()})
            return named
        return await self._answer(spec, routed, run, outputs_of)

    async def _answer(self, spec: ModelSpec, routed: Routed | None, run: Callable[[Servable], Awaitable[T]],
                      outputs_of: Callable[[T], Mapping[str, np.ndarray]]) -> tuple[int, T]:
        """Run on the version the request names; a request naming none, of a model in a rollout, on
        the arm the rollout chooses (its outcome recorded per arm, its shadow prepared)."""
        choice = None
        if self._rollouts is not None and routed is not None and spec.version is None and spec.label is None:
            choice = self._rollouts.choose(spec.name, routed.key_of)
        if choice is None:
            with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
                if self._on_answer is None:
                    return version, await run(servable)
                started, status = time.perf_counter(), Code.INTERNAL.name
                try:
                    result = await run(servable)
                    status = Code.OK.name
                    return version, result
                except ServingError as e:
                    status = e.code.name
                    raise
                except asyncio.CancelledError:
                    status = Code.CANCELLED.name
                    raise
                finally:
                    self._on_answer(spec.name, version, status, time.perf_counter() - started)
        rollouts, started, status = self._rollouts, time.perf_counter(), Code.INTERNAL.name
        outputs: Mapping[str, np.ndarray] | None = None
        assert rollouts is not None and routed is not None
        try:
            with self._manager.handle(spec.name, choice.version) as (version, servable):
                result = await run(servable)
            outputs, status = outputs_of(result), Code.OK.name
        except ServingError as e:
            status = e.code.name
            # which arm failed, on an error of its own: a batch hands one error to all its requests
            answered = ServingError(e.code, e.message)
            answered.headers = {**e.headers, **Routed(arm=choice.arm, version=choice.version).headers()}
            raise answered from e
        except asyncio.CancelledError:
            status = Code.CANCELLED.name
            raise
        finally:
            seconds = time.perf_counter() - started
            rollouts.record(choice, status, seconds, outputs)
            if self._on_answer is not None:
                self._on_answer(spec.name, choice.version, status, seconds)
        routed.arm, routed.version = choice.arm, version
        if choice.shadow_version is not None:
            routed.shadow = lambda: self._shadow(choice, run, outputs_of, outputs)
        return version, result

    async def _shadow(self, choice: Choice, run: Callable[[Servable], Awaitable[T]],
                      outputs_of: Callable[[T], Mapping[str, np.ndarray]], live: Mapping[str, np.ndarray] | None
                      ) -> None:
        """The same request on the shadow version; its answer is compared with the live one, then dropped."""
        assert self._rollouts is not None and choice.shadow_version is not None
        if not self._rollouts.shadow_slot(choice.model):
            return  # dropped: max_in_flight shadows run already
        shadow: Mapping[str, np.ndarray] | None = None
        try:
            with self._manager.handle(choice.model, choice.shadow_version) as (_, servable):
                shadow = outputs_of(await run(servable))  # no timeout: its slot is free when the call is done
        except Exception as e:  # the shadow's failure is counted, never answered
            log.debug("shadow run of %s version %d failed: %s", choice.model, choice.shadow_version, e)
        finally:
            self._rollouts.compared(choice.model, live, shadow)

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

    def _read_spec(self, spec: ModelSpec) -> ModelSpec:
        """An unversioned metadata call of a model in a rollout reads the stable arm, as its
        unversioned requests without a canary draw run on it."""
        if self._rollouts is None or spec.version is not None or spec.label is not None:
            return spec
        version = self._rollouts.stable_version(spec.name)
        return spec if version is None else dataclasses.replace(spec, version=version)

    def signature(self, spec: ModelSpec) -> tuple[int, Signature]:
        spec = self._read_spec(spec)
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
        spec = self._read_spec(spec)
        with self._manager.handle(spec.name, spec.version, spec.label) as (version, servable):
            return version, servable.meta_graph, servable.audit

    def models(self) -> dict[str, tuple[list[VersionStatus], dict[str, int]]]:
        names = self._manager.models()
        statuses = self._statuses_of(names)
        return {m: (statuses[m], self._manager.labels(m)) for m in names}


def _named(names: tuple[str, ...], values: tuple[np.ndarray | None, ...]) -> dict[str, np.ndarray]:
    return {n: v for n, v in zip(names, values, strict=True) if v is not None}


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
