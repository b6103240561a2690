"""The SavedModel loader: a TensorFlow Session over the version's MetaGraph, run as TF Serving runs it.

TF Serving loads a SavedModelBundle (the MetaGraphDef and a Session over its graph) and runs a
signature by feeding the signature's input tensor names and fetching its output tensor names. It
never compares a fed shape with the shape written in the signature: the graph's ops decide what
they accept (a `[3]` tensor fed to a `[-1, 1]` placeholder runs). TF1 and TF2 SavedModels load the
same way here, which also loads TF1 models that `tf.saved_model.load` refuses (a scalar-declared
serialized tf.Example input), and runs their assets, `main_op`/`legacy_init_op` and TF2 init ops.
"""

from __future__ import annotations

import collections
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.saved_model import loader_impl

from tfprod.batching import BatchingOptions, BatchStats
from tfprod.config.model_config import ConfigError, read_batching_parameters
from tfprod.core.manager import ServableId
from tfprod.errors import Code, ServingError, invalid
from tfprod.format.saved_model import is_complete, read_meta_graph, signatures_of
from tfprod.servables.base import Servable, SignatureRunner, audit
from tfprod.signature import Signature

_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s+File |\s*\[\[)")


def _tf_message(e: Exception) -> str:
    """TF's error text without the graph-execution boilerplate and node/stack decorations."""
    message = getattr(e, "message", None) or str(e)
    lines = [re.sub(r"\s*\[\[\{\{node .*$", "", line).strip() for line in message.splitlines()
             if line.strip() and not _NOISE.match(line)]
    return " ".join(line for line in lines if line) or type(e).__name__


BATCHING_PARAMS_FILE = "batching_params.pbtxt"
_MAX_CALLABLES = 64  # per version, besides each signature's all-outputs one: least recently used go first


class _Session:
    """One version's Session and C++ callables (Session::MakeCallable) made from it: one per
    signature for all its outputs, made at load, and others for the output subsets clients ask for.
    The public `Session.make_callable` re-checks every feed's shape in Python on each call — the
    very check TF Serving does not make — so callables are made from CallableOptions, which hand
    numpy arrays straight to the runtime. Session runs are thread-safe."""

    def __init__(self, session: tf.compat.v1.Session, meta_graph: meta_graph_pb2.MetaGraphDef) -> None:
        self._session: tf.compat.v1.Session | None = session
        # Copies: reading a missing key of the proto's maps would insert it into the served MetaGraph.
        self._feeds = {name: [sig.inputs[k].name for k in sorted(sig.inputs)]
                       for name, sig in meta_graph.signature_def.items()}
        self._fetches = {name: {k: v.name for k, v in sig.outputs.items()}
                         for name, sig in meta_graph.signature_def.items()}
        self._callables: collections.OrderedDict[tuple[str, tuple[str, ...]], Any] = collections.OrderedDict()
        self._pinned: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()

    def _make(self, name: str, outputs: tuple[str, ...]) -> Any:
        for kind, names in (("input", self._feeds[name]), ("output", [self._fetches[name][k] for k in outputs])):
            if not all(names):
                raise ServingError(Code.UNIMPLEMENTED, f"signature '{name}' has a sparse or composite {kind}, "
                                   "which the serving APIs cannot feed or fetch")
        if self._session is None:
            raise ServingError(Code.UNAVAILABLE, "this model version was unloaded")
        options = config_pb2.CallableOptions(feed=self._feeds[name],
                                             fetch=[self._fetches[name][k] for k in outputs])
        return self._session._make_callable_from_options(options)

    def pin(self, name: str) -> None:
        """Make the all-outputs callable now (at load): the first request after a swap must not pay
        for it (Grappler and executor construction: seconds on large TF 1 graphs)."""
        key = (name, tuple(sorted(self._fetches[name])))
        try:
            self._pinned[key] = self._make(*key)
        except (ServingError, tf.errors.OpError, ValueError):  # as TF Serving, the request will say so
            pass

    def _callable(self, name: str, outputs: tuple[str, ...]) -> Any:
        key = (name, outputs)
        fn = self._pinned.get(key)
        if fn is not None:
            return fn
        with self._lock:
            fn = self._callables.get(key)
            if fn is not None:
                self._callables.move_to_end(key)
                return fn
        fn = self._make(name, outputs)  # outside the lock: a slow build must not hold up other calls
        with self._lock:
            self._callables[key] = fn
            while len(self._callables) > _MAX_CALLABLES:
                self._callables.popitem(last=False)
        return fn

    def runner(self, sig: Signature) -> SignatureRunner:
        """Inputs in the callable's feed order (the signature's sorted aliases, fixed at load); outputs
        already checked against the signature by `Servable`."""
        name, aliases = sig.name, tuple(sig.inputs)

        def run(inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
            wanted = tuple(sorted(set(outputs)))  # one callable per set, whatever order clients name them in
            try:
                values = self._callable(name, wanted)(*(inputs[k] for k in aliases))
            except tf.errors.InvalidArgumentError as e:
                raise invalid(_tf_message(e)) from None
            except tf.errors.OpError as e:
                raise ServingError(Code(e.error_code), _tf_message(e)) from None
            except (ValueError, TypeError) as e:  # a feed numpy cannot hand to TF (e.g. ragged objects)
                raise invalid(_tf_message(e)) from None
            by_alias = dict(zip(wanted, values, strict=True))
            return {k: np.asarray(by_alias[k]) for k in outputs}  # scalars come back as numpy scalars
        return run

    def close(self) -> None:
        with self._lock:
            self._callables.clear()  # each releases its handle while the session is still open
        self._pinned.clear()
        session, self._session = self._session, None
        if session is not None:
            session.close()


def load(sid: ServableId, path: str, tags: frozenset[str] = frozenset({"serve"}),
         batching: BatchingOptions | None = None, per_model_batching: bool = False,
         batch_stats: BatchStats | None = None,
         session_config: config_pb2.ConfigProto | None = None) -> Servable:
    """Load a version; with `batching`, its calls go through a Batcher (per-model parameters from
    the version's batching_params.pbtxt replace `batching` when `per_model_batching` is set)."""
    if not is_complete(path):
        raise ServingError(Code.NOT_FOUND, f"No SavedModel (saved_model.pb) in {path}")
    meta_graph = read_meta_graph(path, tags)  # first: TF Serving's message for a missing tag set
    own_batching = batching_for(path, batching, per_model_batching)
    metadata = audit(path)
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=session_config)
    try:
        with graph.as_default():
            loader_impl.SavedModelLoader(path).load(session, sorted(tags))
    except Exception as e:  # TF raises many types for corrupt or incompatible models
        session.close()
        raise ServingError(Code.UNKNOWN, f"Failed to load SavedModel at {path}: {_tf_message(e)}") from None
    model = _Session(session, meta_graph)
    signatures = signatures_of(meta_graph)
    for name in signatures:
        model.pin(name)
    runners = {name: model.runner(sig) for name, sig in signatures.items()}
    servable = Servable(sid, path, meta_graph, signatures, runners, audit=metadata, _close=model.close)
    servable.batch_with(own_batching, batch_stats)
    return servable


def batching_for(path: str, batching: BatchingOptions | None, per_model: bool) -> BatchingOptions | None:
    """The batching a version gets: with --enable_per_model_batching_parameters, the version's own
    batching_params.pbtxt, or none (TF Serving's rule)."""
    if batching is None or not per_model:
        return batching
    own = os.path.join(path, BATCHING_PARAMS_FILE)
    try:
        return read_batching_parameters(own) if os.path.isfile(own) else None
    except ConfigError as e:
        raise ServingError(Code.INVALID_ARGUMENT, str(e)) from None
