"""The pipeline's model half on the credit example (examples/credit): Transform's baked analyzers,
training, blessing rules, infra validation, pushing into a base path a real `tfprod serve`
watches, and the lineage of what it serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from conftest import ServerProcess, artifact_path

from tfprod.pipeline import Evaluator, Pipeline, PipelineError, Pusher, RunContext, runner
from tfprod.pipeline import examples as ex
from tfprod.pipeline.cli import load
from tfprod.pipeline.components import _user, transformc
from tfprod.pipeline.lineage import chain
from tfprod.pipeline.store import Artifact, MetadataStore

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "credit")
sys.path.insert(0, EXAMPLE)

from data import write_spans  # noqa: E402
from preprocessing import NUMERIC  # noqa: E402


@pytest.fixture(scope="module")
def credit(tmp_path_factory: pytest.TempPathFactory, start_server: Any) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("credit")
    write_spans(str(work / "data"))
    serving = work / "models" / "credit"
    serving.mkdir(parents=True)
    server = start_server(["--model_name=credit", f"--model_base_path={serving}", "--file_system_poll_wait_seconds=1"],
                          wait=False)
    return {"work": work, "data": str(work / "data"), "root": str(work / "pipeline"), "serving": str(serving),
            "server": server}


def _pipeline(credit: dict[str, Any], span: str, **overrides: str) -> Pipeline:
    args = {"span": span, "data": credit["data"], "root": credit["root"], "serving": credit["serving"], **overrides}
    return load(os.path.join(EXAMPLE, "pipeline.py"), args)


def _served(server: ServerProcess) -> list[int]:
    r = server.client.get("/v1/models/credit")
    if r.status_code != 200:
        return []
    return sorted(int(v["version"]) for v in r.json()["model_version_status"] if v["state"] == "AVAILABLE")


def _lineage(serving: str, version: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "tfprod", "lineage", serving, str(version), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_spans_push_v1_stop_the_drift_and_bless_v2_against_v1(credit: dict[str, Any]) -> None:
    server = credit["server"]
    first = runner.run(_pipeline(credit, "1"))
    assert not first.stopped and first.output("Pusher", "pushed_model").properties["version"] == 1
    with open(os.path.join(first.output("Evaluator", "evaluation").uri, "evaluation.json")) as f:
        assert json.load(f)["change_thresholds_applied"] is False  # no baseline yet: said, not hidden
    server.wait_until(lambda: _served(server) == [1], 60, "version 1 served")
    # the served model applies the training-time transformation to raw features
    row = ex.read_split(first.output("ExampleGen", "examples").uri, "eval").slice(0, 3)
    raw = {c: row.column(c).to_pylist() for c in first.output("Trainer", "model").properties["raw_features"]}
    instances = [{k: v[i] for k, v in raw.items()} for i in range(3)]
    answer = server.client.post("/v1/models/credit:predict", json={"instances": instances})
    assert answer.status_code == 200, answer.text
    from tfprod.pipeline.components import evaluator
    expected = evaluator.predict(first.output("Trainer", "model"), row)
    np.testing.assert_allclose(np.asarray(answer.json()["predictions"]).reshape(expected.shape), expected, atol=1e-6)

    drifted = runner.run(_pipeline(credit, "2"))
    assert drifted.stopped.startswith("ExampleValidator:") and "mean_radius" in drifted.stopped
    assert [s.component for s in drifted.steps][-1] == "ExampleValidator"  # nothing trained, nothing pushed
    assert sorted(os.listdir(credit["serving"])) == ["1"]

    third = runner.run(_pipeline(credit, "3"))
    assert not third.stopped and third.output("Pusher", "pushed_model").properties["version"] == 2
    evaluation = third.output("Evaluator", "evaluation")
    assert evaluation.properties["baseline_model"] == first.output("Trainer", "model").id
    server.wait_until(lambda: 2 in _served(server), 60, "version 2 served without a restart")

    with open(third.report) as f:
        report = f.read()
    assert "## Evaluation" in report and "Blessed: **True**" in report and "region=east" in report
    folder = os.path.dirname(third.report)
    for png in ("features.png", "evaluation.png"):
        with open(os.path.join(folder, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "Against span 1" in report
    cached = runner.run(_pipeline(credit, "3"))
    assert {s.state for s in cached.steps} == {"CACHED"} and sorted(os.listdir(credit["serving"])) == ["1", "2"]

    v1, v2 = _lineage(credit["serving"], 1), _lineage(credit["serving"], 2)
    assert v1["data"]["span"] == 1 and v2["data"]["span"] == 3
    assert v1["data"]["fingerprint"] == first.output("ExampleGen", "examples").properties["fingerprint"]
    assert v2["anomalies"]["blessed"] and v2["anomalies"]["drift_baseline_span"] == 1  # not the drifted span 2
    assert v2["blessing"]["blessed"] and v2["evaluation"]["thresholds"] == {"auc": {"lower": 0.95}}
    assert v2["evaluation"]["baseline_model"] == v1["push"]["model_id"]
    assert set(v2["evaluation"]["slices"]) == {"region=east", "region=north", "region=south"}
    assert v2["training"]["hyperparameters"] == {"epochs": 30, "units": 16, "learning_rate": 0.01}
    assert v2["infra_validation"]["blessed"] and v2["push"]["version"] == 2 and v2["push"]["pushed_by"]
    assert len(v2["transform"]["analyzers"]) == 2 * len(NUMERIC) + 2
    metadata = server.client.get("/v1/models/credit/versions/2/metadata").json()["metadata"]
    audit = metadata["audit"]
    assert metadata["lineage"]["command"] == f"tfprod lineage {os.path.join(credit['serving'], '2')}"
    assert audit["pipeline"]["run_id"] == third.run_id and audit["training_data_sha256"] == v2["data"]["fingerprint"]
    assert audit["owner"] == "credit-risk" and "eval_accuracy" in audit["metrics"]
    assert os.path.isfile(os.path.join(credit["serving"], "2", "assets.extra", "tf_serving_warmup_requests"))


def test_the_console_shows_where_a_pushed_version_came_from(credit: dict[str, Any], chromium: Any) -> None:
    """The console's lineage of version 2 is `tfprod lineage`'s, and its page shows the chain."""
    server = credit["server"]
    server.wait_until(lambda: 2 in _served(server), 60, "version 2 served")
    expected = _lineage(credit["serving"], 2)
    r = server.client.get("/ui/api/models/credit/versions/2/lineage")
    assert r.status_code == 200, r.text
    assert r.json() == expected
    copy = credit["work"] / "elsewhere" / "2"  # a server's cache of object storage: the same push
    shutil.copytree(os.path.join(credit["serving"], "2"), copy)
    assert chain(str(copy))["push"] == expected["push"]
    tab = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    try:
        tab.goto(f"{server.url}/ui/")
        tab.click("text=Lineage of credit 2")
        tab.wait_for_selector("#lineage-body ol.chain")
        shown = tab.inner_text("#lineage-body")
        assert tab.evaluate("document.activeElement.id") == "lineage-h"  # a screen reader lands on the answer
        for part in (f"span {expected['data']['span']}", str(expected["data"]["fingerprint"]),
                     f"run {expected['training']['run_id']}", "blessed", expected["push"]["pushed_by"],
                     expected["push"]["pushed_at"], "auc: {lower: 0.95}"):
            assert part in shown, part
        tab.screenshot(path=artifact_path("console-lineage.png"), full_page=True)
    finally:
        tab.context.close()


def test_the_transform_graph_computes_the_training_time_features(credit: dict[str, Any]) -> None:
    result = runner.run(_pipeline(credit, "1"))  # cached: the artifacts of the first test (or a fresh run)
    graph, transformed = result.output("Transform", "transform_graph"), result.output("Transform",
                                                                                      "transformed_examples")
    train = ex.read_split(result.output("ExampleGen", "examples").uri, "train")
    analyzers = graph.properties["analyzers"]
    radius = np.asarray(train.column("mean_radius"), np.float64)
    assert analyzers[0] == {"analyzer": "mean", "value": pytest.approx(radius.mean())}
    assert analyzers[1] == {"analyzer": "std", "value": pytest.approx(radius.std())}
    vocabulary = next(a["value"] for a in analyzers if a["analyzer"] == "vocabulary")
    regions, counts = np.unique(train.column("region").to_pylist(), return_counts=True)
    assert vocabulary == [r for _, r in sorted(zip(-counts, regions, strict=True))]
    features = transformed.properties
    stored = ex.read_split(transformed.uri, "train")
    assert features["label"] == "label" and "label" in stored.schema.names
    np.testing.assert_allclose(np.asarray(stored.column("mean_radius_z")), (radius - radius.mean()) / radius.std(),
                               rtol=1e-5, atol=1e-5)
    fn = transformc.load(graph).signatures["transform"]
    raw = graph.properties["raw_features"]
    served = fn(**{c: tf.constant(v) for c, v in _user.arrays(train, list(raw), raw).items()})
    for name in stored.schema.names:
        if name != "label":
            np.testing.assert_array_equal(served[name].numpy(), np.asarray(stored.column(name)))


def test_blessing_is_explicit_and_thresholds_decide(credit: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="blessing is explicit"):
        Evaluator(examples=None, model=None)
    with pytest.raises(TypeError, match="no metric 'rmse'"):
        Evaluator(thresholds={"rmse": {"upper": 1.0}})
    before = sorted(os.listdir(credit["serving"]))
    refused = runner.run(_pipeline(credit, "3", min_auc="1.01"))
    assert refused.stopped.startswith("Evaluator: model not blessed: auc") and "below the threshold 1.01" in \
        refused.stopped
    assert sorted(os.listdir(credit["serving"])) == before  # nothing pushed


def _ctx(tmp_path: Any, store: MetadataStore, component: Any, inputs: dict[str, Artifact]) -> RunContext:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return RunContext(component, {k: [v] for k, v in inputs.items()}, store, store.context("pipeline", "t"), "run",
                      str(staging))


def test_pusher_refuses_unblessed_models_and_never_overwrites(credit: dict[str, Any], tmp_path: Any) -> None:
    result = runner.run(_pipeline(credit, "3"))
    model = result.output("Trainer", "model")
    infra = result.output("InfraValidator", "infra_blessing")
    store = MetadataStore(f"sqlite:///{tmp_path / 'm.sqlite'}")
    try:
        base = tmp_path / "base"
        (base / "1").mkdir(parents=True)
        (base / "1" / "keep.txt").write_text("an existing version")
        (base / "3").mkdir()
        unblessed = Artifact("ModelBlessing", str(tmp_path), {"blessed": False, "model_id": model.id,
                                                             "reasons": ["auc 0.5 is below the threshold 0.9"]})
        pusher = _bare_pusher(str(base))
        with pytest.raises(PipelineError, match="is not blessed .auc 0.5 is below the threshold 0.9.: nothing"):
            pusher.run(_ctx(tmp_path, store, pusher, {"model": model, "blessing": unblessed, "infra_blessing": infra}))
        blessed = Artifact("ModelBlessing", str(tmp_path), {"blessed": True, "model_id": model.id})
        ctx = _ctx(tmp_path, store, pusher, {"model": model, "blessing": blessed, "infra_blessing": infra})
        pusher.run(ctx)
        assert ctx.outputs["pushed_model"].properties["version"] == 4  # after the highest, never into a gap
        assert (base / "1" / "keep.txt").read_text() == "an existing version"
        assert os.path.isfile(base / "4" / "saved_model.pb") and not [d for d in os.listdir(base) if d.startswith(".")]
        from pki import key_pairs

        from tfprod.security import signing
        keys = key_pairs(tmp_path, "release")
        signed = _bare_pusher(str(base))
        signed.params["private_key"] = keys["release"]
        ctx = _ctx(tmp_path, store, signed, {"model": model, "blessing": blessed, "infra_blessing": infra})
        signed.run(ctx)
        pushed = ctx.outputs["pushed_model"].properties
        assert pushed["version"] == 5 and pushed["signed"] and pushed["signer_key"].startswith("sha256:")
        signing.verify(str(base / "5"), [keys["release.pub"]])
    finally:
        store.close()


def _bare_pusher(destination: str) -> Pusher:
    """A Pusher outside a pipeline (its inputs are handed to run() directly)."""
    pusher = Pusher.__new__(Pusher)
    pusher.id, pusher.inputs, pusher.outputs = "Pusher", {}, {}
    pusher.params = {"push_destination": destination, "private_key": None}
    return pusher


CHAINED = '''
import tensorflow as tf
from tfprod.pipeline import transform as tft

def preprocessing_fn(inputs):
    z = tft.scale_to_z_score(inputs["x"])  # analyzers over an analyzer's output: later phases
    bucket = tft.bucketize(z, 4)
    return {"z": z, "z_bucket": bucket, "z01": tft.scale_to_0_1(z * 2.0 + 1.0),
            "city_id": tft.compute_and_apply_vocabulary(inputs["city"], top_k=2),
            "bucket01": tft.scale_to_0_1(tf.cast(bucket, tf.float32)),  # over an op the stand-in passes through
            "above": tft.mean(tf.cast(inputs["x"] > tft.mean(inputs["x"]), tf.float32)) + 0.0 * z,
            "all_cities": tft.compute_and_apply_vocabulary(inputs["city"], top_k=len(tft.vocabulary(inputs["city"])))}
'''


def test_analyzers_merge_over_pieces_in_phases_as_over_the_whole_column(tmp_path: Any) -> None:
    import pyarrow as pa

    from tfprod.pipeline import transform as tft
    from tfprod.pipeline.runner import Engine

    rng = np.random.default_rng(3)
    x = rng.normal(5, 2, 1000)
    x[::37] = np.nan  # missing values: ignored by the statistics
    city = rng.choice(["rome", "oslo", "lima", ""], 1000, p=[0.5, 0.3, 0.15, 0.05])
    os.makedirs(tmp_path / "pieces" / "Split-train")
    os.makedirs(tmp_path / "whole" / "Split-train")
    table = pa.table({"x": x, "city": city})
    pq.write_table(table, tmp_path / "pieces" / "Split-train" / "data.parquet", row_group_size=128)  # 8 pieces
    pq.write_table(table, tmp_path / "whole" / "Split-train" / "data.parquet")
    (tmp_path / "prep.py").write_text(CHAINED)
    dtypes = {"x": "float32", "city": "string"}
    results = {}
    for layout in ("pieces", "whole"):
        units = ex.units(str(tmp_path / layout), "train")
        results[layout] = tft.analyze(str(tmp_path / "prep.py"), units, ["x", "city"], dtypes, Engine().map)
    assert len(ex.units(str(tmp_path / "pieces"), "train")) == 8
    names, values = results["pieces"]
    assert names == ["mean", "std", "quantiles", "min", "max", "vocabulary", "min", "max", "mean", "mean",
                     "vocabulary", "vocabulary"]
    assert results["whole"][0] == names
    x32 = x.astype(np.float32)
    assert values[0] == pytest.approx(np.nanmean(x32.astype(np.float64)), rel=1e-12)
    assert values[1] == pytest.approx(np.nanstd(x32.astype(np.float64)), rel=1e-12)
    m, s = tf.constant(values[0], tf.float32), tf.constant(values[1], tf.float32)
    z = ((tf.constant(x32) - m) / s).numpy().astype(np.float64)  # as the graph computes it
    want = sorted({float(q) for q in np.quantile(z[~np.isnan(z)], [0.25, 0.5, 0.75])})
    assert values[2] == want == results["whole"][1][2]  # exact, whatever the pieces
    scaled = ((tf.constant(z.astype(np.float32)) * 2.0) + 1.0).numpy().astype(np.float64)
    assert values[3] == float(np.nanmin(scaled)) and values[4] == float(np.nanmax(scaled))
    assert values[5] == ["rome", "oslo"] == results["whole"][1][5]
    assert (values[6], values[7]) == (0.0, 3.0)  # NaN lands in the last bucket: all four buckets are used
    above = (x32 > np.float32(values[8])).mean()  # x > mean(x): NaN compares false
    assert values[8] == pytest.approx(values[0], rel=1e-12) and values[9] == pytest.approx(above, rel=1e-12)
    assert values[10] == values[11] == ["rome", "oslo", "lima"]  # top_k from a vocabulary: it waited for it
    for i in (0, 1, 8, 9):  # moments merged by Chan's formulas: equal up to float summation order
        assert values[i] == pytest.approx(results["whole"][1][i], rel=1e-12)
    assert [v for i, v in enumerate(values) if i not in (0, 1, 8, 9)] == [
        v for i, v in enumerate(results["whole"][1]) if i not in (0, 1, 8, 9)]


def test_a_function_that_cannot_be_traced_is_analyzed_one_analyzer_per_phase(tmp_path: Any) -> None:
    import pyarrow as pa

    from tfprod.pipeline import transform as tft
    from tfprod.pipeline.runner import Engine

    os.makedirs(tmp_path / "Split-train")
    x = np.arange(100.0)
    pq.write_table(pa.table({"x": x}), tmp_path / "Split-train" / "data.parquet", row_group_size=30)
    (tmp_path / "prep.py").write_text(
        "from tfprod.pipeline import transform as tft\n"
        "def preprocessing_fn(inputs):\n"
        "    m = float(tft.mean(inputs['x']).numpy())  # eager only: a graph trace fails here\n"
        "    return {'above': tft.mean(inputs['x'] - m) + 0.0 * inputs['x']}\n")
    names, values = tft.analyze(str(tmp_path / "prep.py"), ex.units(str(tmp_path), "train"), ["x"],
                                {"x": "float32"}, Engine().map)
    assert names == ["mean", "mean"]
    assert values[0] == pytest.approx(49.5) and values[1] == pytest.approx(0.0, abs=1e-6)

