"""Real SavedModels built at test time, and a way to publish them as a server would see them."""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np
import tensorflow as tf

from tfprod.export import set_method_names
from tfprod.signature import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD


class HalfPlusTwo(tf.Module):
    """y = a*x + b, TF Serving's classic test model, with predict, classify and regress signatures."""

    def __init__(self, a: float = 0.5, b: float = 2.0) -> None:
        super().__init__()
        self.a = tf.Variable(a)
        self.b = tf.Variable(b)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.a * x + self.b}

    def _y_of_examples(self, serialized: tf.Tensor, feature: str = "x") -> tf.Tensor:
        parsed = tf.io.parse_example(serialized, {feature: tf.io.FixedLenFeature([1], tf.float32)})
        return self.a * parsed[feature] + self.b

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": self._y_of_examples(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self._y_of_examples(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_x2(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self._y_of_examples(inputs, "x2")}


def half_plus_two(path: str, a: float = 0.5, b: float = 2.0) -> HalfPlusTwo:
    module = HalfPlusTwo(a, b)
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.predict,
        "classify_x_to_y": module.classify,
        "regress_x_to_y": module.regress,
        "regress_x2_to_y": module.regress_x2,
    })
    set_method_names(path, {"classify_x_to_y": CLASSIFY_METHOD, "regress_x_to_y": REGRESS_METHOD,
                             "regress_x2_to_y": REGRESS_METHOD})
    return module


class MultiIO(tf.Module):
    """Several named inputs and outputs: float, int64, string (text and raw bytes)."""

    @tf.function(input_signature=[
        tf.TensorSpec([None, 2], tf.float32, name="a"),
        tf.TensorSpec([None], tf.int64, name="b"),
        tf.TensorSpec([None], tf.string, name="text"),
    ])
    def predict(self, a: tf.Tensor, b: tf.Tensor, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            "total": tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32),
            "doubled": b * 2,
            "length": tf.strings.length(text, unit="BYTE"),
            "upper": tf.strings.upper(text),
            "echo_bytes": text,
        }

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float64, name="m")])
    def scale(self, m: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scaled": m * 10.0}


def multi_io(path: str) -> MultiIO:
    module = MultiIO()
    tf.saved_model.save(module, path, signatures={"serving_default": module.predict, "scale": module.scale})
    return module


class Slow(tf.Module):
    """y = x, after busy-waiting max(x) seconds (wall clock), so a request is in flight long."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        seconds = tf.cast(tf.reduce_max(x), tf.float64)
        start = tf.timestamp()
        n, _ = tf.while_loop(lambda i, now: now - start < seconds,
                             lambda i, now: (i + 1, tf.timestamp()),
                             [tf.constant(0), start])
        return {"y": x + 0.0 * tf.cast(n, tf.float32)}


def slow(path: str) -> Slow:
    module = Slow()
    tf.saved_model.save(module, path, signatures={"serving_default": module.predict})
    return module


class BatchProbe(tf.Module):
    """Tells each row which batch it ran in: `y = a*x` and `rows` = the batch's row count (padding
    included), `length` = its padded row length; signature `twice` has a=2, `thrice` a=3. `x` is
    [batch, any] so variable lengths can be padded."""

    def _run(self, x: tf.Tensor, a: float) -> dict[str, tf.Tensor]:
        rows = tf.fill([tf.shape(x)[0]], tf.shape(x)[0])
        return {"y": a * x, "rows": rows, "length": tf.fill([tf.shape(x)[0]], tf.shape(x)[1])}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def twice(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._run(x, 2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def thrice(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._run(x, 3.0)


def batch_probe(path: str) -> BatchProbe:
    module = BatchProbe()
    tf.saved_model.save(module, path, signatures={"serving_default": module.twice, "thrice": module.thrice})
    return module


def digits_classifier(path: str, epochs: int = 3) -> tuple[tf.keras.Model, np.ndarray]:
    """A small Keras MLP on scikit-learn's bundled digits, exported with Keras 3's export."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((64,), name="pixels"),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    model.export(path, verbose=False)
    return model, x


def publish(src: str, base_path: str, version: int) -> str:
    """Copy a SavedModel into `base_path/version` atomically (copy aside, then rename)."""
    os.makedirs(base_path, exist_ok=True)
    tmp = os.path.join(base_path, f".tmp-{uuid.uuid4().hex}")
    shutil.copytree(src, tmp)
    dest = os.path.join(base_path, str(version))
    os.rename(tmp, dest)
    return dest


class VocabLookup(tf.Module):
    """Words -> ids through a table initialized from a vocabulary file: its init op reads a file."""

    def __init__(self, vocab_path: str) -> None:
        super().__init__()
        init = tf.lookup.TextFileInitializer(vocab_path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                             tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
        self.table = tf.lookup.StaticHashTable(init, default_value=-1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
    def predict(self, words: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"ids": self.table.lookup(words)}


def vocab_lookup(path: str, words: list[str]) -> VocabLookup:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    vocab = os.path.join(os.path.dirname(path) or ".", f"vocab-{uuid.uuid4().hex}.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(words) + "\n")
    module = VocabLookup(vocab)
    tf.saved_model.save(module, path, signatures={"serving_default": module.predict})
    os.remove(vocab)  # the SavedModel carries its own copy under assets/
    return module


def tf1_half_plus_two(path: str, *, as_text: bool = False, legacy_init_op: bool = False,
                      words: tuple[str, ...] = ("apple", "banana", "cherry")) -> None:
    """TF Serving's classic test model as its users built it: a TF 1 graph written with
    `tf.compat.v1.saved_model.Builder`. `x` is a `[None, 1]` placeholder, y = 0.5x + 2; the
    classify/regress signatures read a *scalar*-declared serialized tf.Example (`tf.saved_model.load`
    refuses such models), y2 = 0.5x + 3, y3 = 0.5x2 + 3; `lookup` maps words to ids through a table
    initialized from the asset `assets/vocab.txt` by the main op (or, with `legacy_init_op`, by the
    pre-TF-2 `legacy_init_op` collection). A second meta graph, tagged {serve, gpu}, serves y2 as
    its `serving_default`. `as_text` writes saved_model.pbtxt."""
    import tempfile

    from tensorflow.core.protobuf import saved_model_pb2

    tf1 = tf.compat.v1
    info = tf1.saved_model.utils.build_tensor_info
    sig = tf1.saved_model.signature_def_utils.build_signature_def
    with tempfile.TemporaryDirectory() as scratch, tf.Graph().as_default():
        vocab = os.path.join(scratch, "vocab.txt")
        with open(vocab, "w") as f:
            f.write("\n".join(words) + "\n")
        a, b, c = tf1.Variable(0.5, name="a"), tf1.Variable(2.0, name="b"), tf1.Variable(3.0, name="c")
        x = tf1.placeholder(tf.float32, [None, 1], name="x")
        y = tf.add(tf.multiply(a, x), b, name="y")
        serialized = tf1.placeholder(tf.string, [], name="tf_example")
        parsed = tf1.parse_example(serialized, {"x": tf1.FixedLenFeature([1], tf.float32),
                                                "x2": tf1.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        y2 = tf.add(tf.multiply(a, parsed["x"]), c, name="y2")
        y3 = tf.add(tf.multiply(a, parsed["x2"]), c, name="y3")
        classes = tf.strings.regex_replace(tf.strings.as_string(y2), ".*", "half", replace_global=False,
                                           name="classes")  # y2's shape as the graph computes it
        asset = tf.constant(vocab, name="vocab_path")
        tf1.add_to_collection(tf1.GraphKeys.ASSET_FILEPATHS, asset)
        table = tf1.lookup.StaticHashTable(
            tf1.lookup.TextFileInitializer(asset, tf.string, tf1.lookup.TextFileIndex.WHOLE_LINE,
                                           tf.int64, tf1.lookup.TextFileIndex.LINE_NUMBER), -1)
        word = tf1.placeholder(tf.string, [None], name="word")
        ids = table.lookup(word)
        x_only = tf1.placeholder(tf.float32, name="x_only")  # unknown rank
        y_only = tf.add(tf.multiply(a, x_only), c, name="y_only")
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            builder = tf1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                sess, ["serve"], main_op=tf1.tables_initializer(),
                assets_collection=tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS),
                signature_def_map={
                    "serving_default": sig({"x": info(x)}, {"y": info(y)}, PREDICT_METHOD),
                    "regress_x_to_y2": sig({"inputs": info(serialized)}, {"outputs": info(y2)}, REGRESS_METHOD),
                    "regress_x2_to_y3": sig({"inputs": info(serialized)}, {"outputs": info(y3)}, REGRESS_METHOD),
                    "classify_x_to_y2": sig({"inputs": info(serialized)},
                                            {"scores": info(y2), "classes": info(classes)}, CLASSIFY_METHOD),
                    "lookup": sig({"word": info(word)}, {"id": info(ids)}, PREDICT_METHOD),
                    "unknown_rank": sig({"x": info(x_only)}, {"y": info(y_only)}, PREDICT_METHOD),
                })
            builder.add_meta_graph(["serve", "gpu"], signature_def_map={
                "serving_default": sig({"x": info(x_only)}, {"y": info(y_only)}, PREDICT_METHOD)})
            builder.save(as_text=as_text)
    if legacy_init_op:  # what TF 1.x builders wrote before `main_op`
        pb = os.path.join(path, "saved_model.pbtxt" if as_text else "saved_model.pb")
        saved = saved_model_pb2.SavedModel()
        if as_text:
            from google.protobuf import text_format
            with open(pb) as f:
                text_format.Parse(f.read(), saved)
        else:
            with open(pb, "rb") as f:
                saved.ParseFromString(f.read())
        for meta_graph in saved.meta_graphs:
            collections = meta_graph.collection_def
            collections["legacy_init_op"].CopyFrom(collections["saved_model_main_op"])
            del collections["saved_model_main_op"]
        if as_text:
            from google.protobuf import text_format
            with open(pb, "w") as f:
                f.write(text_format.MessageToString(saved))
        else:
            with open(pb, "wb") as f:
                f.write(saved.SerializeToString())
