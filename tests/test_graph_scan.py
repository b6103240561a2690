"""The graph scan on real SavedModels built here: clean models pass, file/network/Python ops are found
wherever they hide (init op, restore op, cond branches, while bodies); save ops never run and are not reported."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import saved_models
import tensorflow as tf
from tensorflow.core.framework import variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import op_def_registry

from tfprod import export
from tfprod.format.saved_model import read_meta_graph
from tfprod.security import graph_scan
from tfprod.security.graph_scan import (
    FILES,
    INIT_ROOT,
    NOT_ALLOWED,
    PYTHON,
    RESTORE_ROOT,
    Finding,
    describe,
    reachable_ops,
    scan,
)

SERVE = frozenset({"serve"})
MetaGraph = meta_graph_pb2.MetaGraphDef


def _save_module(path: str, fn: Callable[..., Any], *specs: tf.TensorSpec, module: tf.Module | None = None,
                 ) -> MetaGraph:
    module = module or tf.Module()
    module.fn = tf.function(fn, input_signature=list(specs))
    tf.saved_model.save(module, path, signatures={"serving_default": module.fn})
    return read_meta_graph(path, SERVE)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("graph_scan"))


@pytest.fixture(scope="module")
def vocab(tmp: str) -> str:
    path = os.path.join(tmp, "vocab.txt")
    with open(path, "w") as f:
        f.write("a\nb\nc\n")
    return path


X = tf.TensorSpec([None], tf.float32, name="x")
S = tf.TensorSpec([None], tf.string, name="s")


# -- clean models ---------------------------------------------------------------------------------

def test_half_plus_two_is_clean(tmp: str) -> None:
    path = os.path.join(tmp, "half_plus_two")
    saved_models.half_plus_two(path)
    meta_graph = read_meta_graph(path, SERVE)
    assert "ParseExampleV2" in reachable_ops(meta_graph)
    assert set(reachable_ops(meta_graph)["ParseExampleV2"]) == {"classify_x_to_y", "regress_x_to_y",
                                                                "regress_x2_to_y"}
    assert scan(meta_graph) == []


def test_multi_io_is_clean(tmp: str) -> None:
    path = os.path.join(tmp, "multi_io")
    saved_models.multi_io(path)
    assert scan(read_meta_graph(path, SERVE)) == []


def test_keras_digits_mlp_is_clean(tmp: str) -> None:
    path = os.path.join(tmp, "digits")
    saved_models.digits_classifier(path, epochs=1)
    meta_graph = read_meta_graph(path, SERVE)
    assert {"MatMul", "Relu", "Softmax"} <= set(reachable_ops(meta_graph))
    assert scan(meta_graph) == []


def test_keras_cnn_exported_by_tfprod_is_clean(tmp: str) -> None:
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1), name="image"),
        tf.keras.layers.Conv2D(4, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    meta_graph = read_meta_graph(export.save(model, os.path.join(tmp, "cnn")), SERVE)
    assert {"Conv2D", "MaxPool"} <= set(reachable_ops(meta_graph))
    assert scan(meta_graph) == []


def test_while_loop_and_cond_are_clean(tmp: str) -> None:
    def fn(x: tf.Tensor) -> dict[str, tf.Tensor]:
        n, total = tf.while_loop(lambda i, t: i < 3, lambda i, t: (i + 1, t + tf.reduce_sum(x)),
                                 [tf.constant(0), tf.constant(0.0)])
        y = tf.cond(total > 0, lambda: x * 2.0, lambda: x - 1.0)
        return {"y": y, "n": n}

    meta_graph = _save_module(os.path.join(tmp, "control_flow"), fn, X)
    ops = reachable_ops(meta_graph)
    assert {"While", "StatelessWhile"} & set(ops) and {"If", "StatelessIf"} & set(ops)
    assert scan(meta_graph) == []


def test_in_graph_lookup_table_is_clean(tmp: str) -> None:
    module = tf.Module()
    module.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64)), -1)
    meta_graph = _save_module(os.path.join(tmp, "table"), lambda s: {"id": module.table.lookup(s)}, S,
                              module=module)
    ops = reachable_ops(meta_graph)
    assert INIT_ROOT in ops["LookupTableImportV2"] and "serving_default" in ops["LookupTableFindV2"]
    assert scan(meta_graph) == []


def test_print_to_stderr_is_clean(tmp: str) -> None:
    def fn(x: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.print(x)
        return {"y": x + 1.0}

    meta_graph = _save_module(os.path.join(tmp, "print"), fn, X)
    assert "PrintV2" in reachable_ops(meta_graph)
    assert scan(meta_graph) == []


# -- findings -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def read_file_model(tmp: str, vocab: str) -> MetaGraph:
    return _save_module(os.path.join(tmp, "read_file"), lambda s: {"contents": tf.io.read_file(s[0])}, S)


def test_read_file_is_found(read_file_model: MetaGraph) -> None:
    assert scan(read_file_model) == [Finding("ReadFile", "serving_default", FILES)]


def test_allow_removes_the_finding(read_file_model: MetaGraph) -> None:
    assert scan(read_file_model, allow=["ReadFile"]) == []
    assert scan(read_file_model, allow=["WriteFile"]) == [Finding("ReadFile", "serving_default", FILES)]


def test_describe_names_op_reason_and_root(read_file_model: MetaGraph) -> None:
    line = describe(scan(read_file_model))
    assert line == "ReadFile (reads or writes files) reachable from serving_default"
    findings = [Finding("ReadFile", "serving_default", FILES), Finding("ReadFile", INIT_ROOT, FILES),
                Finding("MyOp", "serving_default", NOT_ALLOWED)]
    assert describe(findings) == ("MyOp (not in the allowlist) reachable from serving_default; "
                                  "ReadFile (reads or writes files) reachable from init op, serving_default")


def test_saver_ops_are_in_the_graph_but_not_reported(read_file_model: MetaGraph) -> None:
    library_ops = {node.op for f in read_file_model.graph_def.library.function for node in f.node_def}
    assert {"SaveV2", "RestoreV2", "MergeV2Checkpoints"} <= library_ops
    reachable = reachable_ops(read_file_model)
    assert reachable["RestoreV2"] == {RESTORE_ROOT}  # the restore op is scanned, RestoreV2 allowed there
    assert not {"SaveV2", "MergeV2Checkpoints", "ShardedFilename"} & set(reachable)
    assert [f.op for f in scan(read_file_model)] == ["ReadFile"]


def test_tf1_restore_op_is_scanned(tmp: str) -> None:
    """TF1 models run the saver's restore op while loading: a file write hidden there is found."""
    path = os.path.join(tmp, "tf1_restore")
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        w = tf.compat.v1.Variable(2.0, name="w")
        y = tf.identity(x * w, name="y")
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(path)
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder.add_meta_graph_and_variables(session, ["serve"], {"serving_default": signature})
        builder.save()
    clean = read_meta_graph(path, SERVE)
    assert scan(clean) == []
    assert "RestoreV2" in reachable_ops(clean)
    hidden = MetaGraph()
    hidden.CopyFrom(clean)
    hidden.graph_def.node.add(name="pwn", op="WriteFile")
    restore = next(n for n in hidden.graph_def.node if n.name == _node(hidden.saver_def.restore_op_name))
    restore.input.append("^pwn")
    assert scan(hidden) == [Finding("WriteFile", RESTORE_ROOT, FILES)]


def _node(ref: str) -> str:
    return ref.lstrip("^").split(":", 1)[0]


def test_signature_function_from_the_object_graph_is_scanned(read_file_model: MetaGraph) -> None:
    """tf.saved_model.load (tfprod convert, users' scripts) serves signatures from the object graph,
    not from signature_def."""
    tampered = MetaGraph()
    tampered.CopyFrom(read_file_model)
    outputs = tampered.signature_def["serving_default"].outputs
    for key in list(outputs):
        del outputs[key]
    assert scan(tampered) == [Finding("ReadFile", "serving_default", FILES)]


def test_write_file_is_found(tmp: str) -> None:
    def fn(s: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.control_dependencies([tf.io.write_file(s[0], s[1])]):
            return {"y": tf.identity(s)}

    meta_graph = _save_module(os.path.join(tmp, "write_file"), fn, S)
    assert scan(meta_graph) == [Finding("WriteFile", "serving_default", FILES)]


def test_matching_files_is_found(tmp: str) -> None:
    meta_graph = _save_module(os.path.join(tmp, "glob"), lambda s: {"files": tf.io.matching_files(s[0])}, S)
    assert scan(meta_graph) == [Finding("MatchingFiles", "serving_default", FILES)]


def test_print_to_a_file_is_found(tmp: str) -> None:
    target = "file://" + os.path.join(tmp, "leak.txt")

    def fn(x: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.print(x, output_stream=target)
        return {"y": x + 1.0}

    meta_graph = _save_module(os.path.join(tmp, "print_file"), fn, X)
    reason = f"writes to a file (PrintV2 output_stream {target})"
    assert scan(meta_graph) == [Finding("PrintV2", "serving_default", reason)]
    assert scan(meta_graph, allow=["PrintV2"]) == []


@pytest.fixture(scope="module")
def text_file_table(tmp: str, vocab: str) -> MetaGraph:
    module = tf.Module()
    module.table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), -1)
    return _save_module(os.path.join(tmp, "text_table"), lambda s: {"id": module.table.lookup(s)}, S, module=module)


def test_init_op_reading_a_file_is_found(text_file_table: MetaGraph) -> None:
    assert "__saved_model_init_op" in text_file_table.signature_def
    assert scan(text_file_table) == [Finding("InitializeTableFromTextFileV2", INIT_ROOT, FILES)]


def test_resource_initializer_from_the_object_graph_is_scanned(text_file_table: MetaGraph) -> None:
    """tf.saved_model.load (not the server's Session) runs each resource's initializer function
    itself, not the init op."""
    tampered = MetaGraph()
    tampered.CopyFrom(text_file_table)
    del tampered.signature_def["__saved_model_init_op"]
    for key in graph_scan.INIT_COLLECTIONS:
        if key in tampered.collection_def:
            del tampered.collection_def[key]
    assert scan(tampered) == [Finding("InitializeTableFromTextFileV2", INIT_ROOT, FILES)]


def test_file_op_in_a_cond_branch_and_a_while_body_is_found(tmp: str) -> None:
    def fn(s: tf.Tensor) -> dict[str, tf.Tensor]:
        read = tf.cond(tf.size(s) > 1, lambda: tf.io.read_file(s[0]), lambda: tf.constant(""))

        def body(i: tf.Tensor) -> tf.Tensor:
            with tf.control_dependencies([tf.io.write_file(s[0], read)]):
                return i + 1
        (n,) = tf.while_loop(lambda i: i < 2, body, [tf.constant(0)])
        return {"read": read, "n": n}

    meta_graph = _save_module(os.path.join(tmp, "nested"), fn, S)
    top_level = {node.op for node in meta_graph.graph_def.node}
    assert not {"ReadFile", "WriteFile"} & top_level
    ops = reachable_ops(meta_graph)
    assert {"If", "StatelessIf"} & set(ops) and {"While", "StatelessWhile"} & set(ops)
    assert scan(meta_graph) == [Finding("ReadFile", "serving_default", FILES),
                                Finding("WriteFile", "serving_default", FILES)]


def test_py_function_is_found(tmp: str) -> None:
    def fn(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.py_function(lambda v: v * 2.0, [x], tf.float32)}

    meta_graph = _save_module(os.path.join(tmp, "py_function"), fn, X)  # TF 2.21 saves it (pinned)
    assert scan(meta_graph) == [Finding("EagerPyFunc", "serving_default", PYTHON)]


def test_tf1_legacy_init_op_is_scanned(tmp: str, vocab: str) -> None:
    path = os.path.join(tmp, "tf1")
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x * 2.0, name="y")
        contents = tf.io.read_file(tf.constant(vocab))
        init = tf.group(tf.strings.length(contents), name="init")
        builder = tf.compat.v1.saved_model.Builder(path)
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder.add_meta_graph_and_variables(session, ["serve"], {"serving_default": signature}, main_op=init)
        builder.save()
    meta_graph = read_meta_graph(path, SERVE)
    assert scan(meta_graph) == [Finding("ReadFile", INIT_ROOT, FILES)]


@pytest.mark.parametrize("collection", ["saved_model_main_op", "legacy_init_op", "table_initializer",
                                        "local_variables"])
def test_tf1_init_collections_are_scanned(collection: str) -> None:
    meta_graph = MetaGraph()
    meta_graph.graph_def.node.add(name="read", op="ReadFile")
    meta_graph.graph_def.node.add(name="init", op="NoOp").input.append("^read")
    entries = meta_graph.collection_def[collection]
    if collection == "local_variables":
        entries.bytes_list.value.append(variable_pb2.VariableDef(initializer_name="init").SerializeToString())
    else:
        entries.node_list.value.append("^init" if collection == "table_initializer" else "init:0")
    assert scan(meta_graph) == [Finding("ReadFile", INIT_ROOT, FILES)]


def test_unknown_op_fails_closed() -> None:
    meta_graph = MetaGraph()
    node = meta_graph.graph_def.node.add(name="mystery", op="SomeCustomOp")
    node.input.append("^x")
    meta_graph.graph_def.node.add(name="x", op="Placeholder")
    meta_graph.signature_def["serving_default"].outputs["y"].name = "mystery:0"
    assert scan(meta_graph) == [Finding("SomeCustomOp", "serving_default", NOT_ALLOWED)]
    assert scan(meta_graph, allow={"SomeCustomOp"}) == []


def test_function_called_by_name_and_recursive_functions_are_walked() -> None:
    meta_graph = MetaGraph()
    library = meta_graph.graph_def.library
    outer = library.function.add()
    outer.signature.name = "outer"
    outer.node_def.add(name="call", op="inner")  # a node whose op is a library function calls it
    inner = library.function.add()
    inner.signature.name = "inner"
    inner.node_def.add(name="read", op="ReadFile")
    inner.node_def.add(name="again", op="StatefulPartitionedCall").attr["f"].func.name = "outer"  # a cycle
    meta_graph.graph_def.node.add(name="sig", op="PartitionedCall").attr["f"].func.name = "outer"
    meta_graph.signature_def["serving_default"].outputs["y"].name = "sig:0"
    assert reachable_ops(meta_graph) == {op: {"serving_default"} for op in ("PartitionedCall", "ReadFile",
                                                                             "StatefulPartitionedCall")}
    assert scan(meta_graph) == [Finding("ReadFile", "serving_default", FILES)]


# -- the lists themselves -------------------------------------------------------------------------

def test_allowlist_and_dangerous_ops_are_registered_ops() -> None:
    assert len(graph_scan.ALLOWED_OPS) > 300
    names = graph_scan.ALLOWED_OPS | set(graph_scan.DANGEROUS_OPS)
    unknown = sorted(op for op in names if op_def_registry.get(op) is None)
    assert unknown == []


def test_dangerous_ops_are_not_allowed() -> None:
    assert not graph_scan.ALLOWED_OPS & set(graph_scan.DANGEROUS_OPS)
