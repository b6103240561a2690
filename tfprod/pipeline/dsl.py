"""How a pipeline is declared: components wired by their outputs, as in TFX.

    examples = ExampleGen(input_base="data", pattern="span-{SPAN}.csv")
    statistics = StatisticsGen(examples=examples.outputs["examples"])
    pipeline = Pipeline("credit", root="pipeline-root", components=[examples, statistics])

A component names its inputs (channels: another component's outputs) and its parameters
(JSON values); `run(ctx)` does the work, reading input artifacts and writing its outputs into the
directories `ctx.output(...)` hands out. The runner publishes those directories only when `run`
returns, so a failed step leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from tfprod.pipeline.store import Artifact, MetadataStore


class PipelineError(Exception):
    """A component cannot do its work: the run stops, and nothing of the step is published."""


@dataclasses.dataclass(frozen=True)
class Channel:
    producer: Component
    key: str
    type: str


class Component:
    OUTPUTS: ClassVar[dict[str, str]] = {}  # output key -> artifact type
    INPUTS: ClassVar[tuple[str, ...]] = ()  # input names (required unless listed in OPTIONAL)
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, id: str | None = None, **kwargs: Any) -> None:
        self.id = id or type(self).__name__
        self.outputs: dict[str, Channel] = {}
        self.inputs: dict[str, Channel] = {}
        self.params: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in self.INPUTS:
                if value is None:
                    continue
                if isinstance(value, Component):  # a component with one output stands for it
                    if len(value.OUTPUTS) != 1:
                        raise TypeError(f"{self.id}: pass one of {value.id}'s outputs {sorted(value.OUTPUTS)} as "
                                        f"{name}=")
                    value = value.outputs[next(iter(value.OUTPUTS))]
                if not isinstance(value, Channel):
                    raise TypeError(f"{self.id}: {name}= must be another component's output, got {value!r}")
                self.inputs[name] = value
            else:
                self.params[name] = value
        missing = [n for n in self.INPUTS if n not in self.inputs and n not in self.OPTIONAL]
        if missing:
            raise TypeError(f"{self.id} needs the input(s) {missing}")
        self.outputs.update({key: Channel(self, key, t) for key, t in self.OUTPUTS.items()})

    def run(self, ctx: RunContext) -> None:
        raise NotImplementedError

    def code_files(self) -> list[str]:
        """Files whose content changes what this component computes (user modules), for the cache key."""
        return []

    def code_version(self) -> str:
        """A hash of what computes this component's outputs: tfprod's pipeline package, the
        component's class, its module files and the Python files beside them (their imports)."""
        digest = hashlib.sha256(_package_digest().encode())
        try:
            digest.update(inspect.getsource(type(self)).encode())
        except (OSError, TypeError):  # a class defined in the pipeline file itself: its bytecode
            digest.update(repr(_code_of(type(self))).encode())
        files = set()
        for path in self.code_files():
            if not os.path.isfile(path):
                raise PipelineError(f"{self.id}: {path} does not exist")
            files.add(os.path.abspath(path))
            folder = os.path.dirname(os.path.abspath(path))
            files.update(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))
        for path in sorted(files):
            digest.update(path.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
        return digest.hexdigest()[:16]

    def cache_context(self, store: MetadataStore, pipeline_context: int, inputs: dict[str, list[Artifact]]
                      ) -> dict[str, Any]:
        """What else the outputs depend on that earlier runs decide (a baseline): part of the cache key."""
        return {}

    def describe_params(self) -> dict[str, Any]:
        return {k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v)
                for k, v in self.params.items()}


@dataclasses.dataclass
class Pipeline:
    name: str
    root: str
    components: Sequence[Component]
    metadata_url: str = ""  # default: sqlite:///ROOT/metadata.sqlite

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"pipeline name {self.name!r}: letters, digits, '.', '_' and '-' only")
        if "://" in self.root and not self.metadata_url:
            raise ValueError(f"the root {self.root} is in object storage: pass metadata_url (a database URL, e.g. "
                             "postgresql://... or sqlite:///metadata.sqlite) to Pipeline")
        ids = [c.id for c in self.components]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"component ids must differ: {dupes} (pass id=... to one of them)")
        known = set(map(id, self.components))
        for c in self.components:
            for name, ch in c.inputs.items():
                if id(ch.producer) not in known:
                    raise ValueError(f"{c.id}.{name} reads {ch.producer.id}, which is not in the pipeline")

    def ordered(self) -> list[Component]:
        """The components in an order where each comes after what it reads."""
        done: list[Component] = []
        seen: set[int] = set()

        def visit(c: Component, path: tuple[str, ...]) -> None:
            if id(c) in seen:
                return
            if c.id in path:
                raise ValueError(f"the pipeline has a cycle: {' -> '.join((*path, c.id))}")
            for ch in c.inputs.values():
                visit(ch.producer, (*path, c.id))
            seen.add(id(c))
            done.append(c)
        for c in self.components:
            visit(c, ())
        return done

    def store_url(self) -> str:
        return self.metadata_url or f"sqlite:///{os.path.abspath(os.path.join(self.root, 'metadata.sqlite'))}"


@dataclasses.dataclass
class RunContext:
    component: Component
    inputs: dict[str, list[Artifact]]
    store: MetadataStore
    pipeline_context: int
    run_id: str
    staging: str
    progress: Callable[[str], None] = lambda _: None
    pipeline_name: str = ""
    # map(fn, items): the module-level `fn` over `items`, in order, on the run's engine (here, or Ray workers)
    map: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]] = lambda fn, items: [fn(i) for i in items]
    # shared(key): where outputs its workers write go (the final URI on an object-storage root)
    shared: Callable[[str], str] | None = None
    # what the runner resolved into the step's cache key: describe_params() and cache_context(), so
    # the step uses the very span, files and baselines its key names
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    cache_context: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: dict[str, Artifact] = dataclasses.field(default_factory=dict)
    stop_reason: str = ""

    def input(self, name: str) -> Artifact | None:
        found = self.inputs.get(name) or []
        return found[0] if found else None

    def output(self, key: str, shared: bool = False, **properties: Any) -> Artifact:
        """The artifact for output `key`: write its files under `.uri`, a local staging directory,
        or with `shared=True` a URI the run's workers can write too (object storage, when the
        root is there: write through `tfprod.pipeline.storage`)."""
        if key not in self.component.OUTPUTS:
            raise KeyError(f"{self.component.id} has no output {key!r}")
        if key not in self.outputs:
            if shared and self.shared is not None:
                self.outputs[key] = Artifact(self.component.OUTPUTS[key], self.shared(key), dict(properties))
                return self.outputs[key]
            uri = os.path.join(self.staging, key)
            os.makedirs(uri, exist_ok=True)
            self.outputs[key] = Artifact(self.component.OUTPUTS[key], uri, dict(properties))
        else:
            self.outputs[key].properties.update(properties)
        return self.outputs[key]

    def stop(self, reason: str) -> None:
        """Publish this step's outputs, then stop the run (later components do not run)."""
        self.stop_reason = reason


@functools.cache
def _package_digest() -> str:
    import tfprod

    digest = hashlib.sha256(tfprod.__version__.encode())
    root = os.path.dirname(os.path.abspath(__file__))
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


def _code_of(cls: type) -> list[Any]:
    return [(name, fn.__code__.co_code, fn.__code__.co_consts) for name, fn in sorted(vars(cls).items())
            if callable(fn) and hasattr(fn, "__code__")]


def params_json(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=repr)
