"""The file-system source on a real directory tree: what it offers, and what it holds back."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from tfprod.core.manager import AspiredVersion
from tfprod.core.source import FileSystemSource, SourceOptions, Watch
from tfprod.core.version_policy import All, Latest


def complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


class Recorder:
    def __init__(self) -> None:
        self.last: dict[str, list[int]] = {}

    def __call__(self, model: str, versions: Sequence[AspiredVersion]) -> None:
        self.last[model] = [v.version for v in versions]


def version(base: Path, n: str, with_graph: bool = True) -> Path:
    d = base / n
    (d / "variables").mkdir(parents=True)
    (d / "variables" / "variables.data-00000-of-00001").write_bytes(b"w" * 100)
    if with_graph:
        (d / "saved_model.pb").write_bytes(b"graph")
    return d


def make(tmp_path: Path, policy: Latest | All | None = None) -> tuple[FileSystemSource, Recorder]:
    recorder = Recorder()
    source = FileSystemSource(recorder, complete, SourceOptions(poll_wait_s=1, settle_s=0))  # two scans settle
    source.set_watches([Watch("m", str(tmp_path), policy or Latest())])
    return source, recorder


def test_version_is_offered_once_settled(tmp_path: Path) -> None:
    source, rec = make(tmp_path)
    version(tmp_path, "1")
    assert source.poll() is True and rec.last["m"] == []  # first sighting: settling
    assert source.poll() is False and rec.last["m"] == [1]


def test_settling_takes_settle_s_however_soon_the_next_scan_comes(tmp_path: Path) -> None:
    rec = Recorder()
    source = FileSystemSource(rec, complete, SourceOptions(poll_wait_s=1, settle_s=0.3))
    source.set_watches([Watch("m", str(tmp_path), Latest())])
    version(tmp_path, "1")
    assert source.poll() is True and source.poll() is True and rec.last["m"] == []  # unchanged, but not for 0.3 s
    assert not source.nothing_to_offer("m")  # a version is on its way
    time.sleep(0.35)
    assert source.poll() is False and rec.last["m"] == [1]


def test_without_graph_file_nothing_is_offered(tmp_path: Path) -> None:
    source, rec = make(tmp_path)
    version(tmp_path, "1", with_graph=False)
    for _ in range(3):
        source.poll()
    assert rec.last["m"] == []


def test_changing_files_hold_a_version_back(tmp_path: Path) -> None:
    source, rec = make(tmp_path)
    d = version(tmp_path, "1")
    for i in range(4):
        (d / "variables" / "variables.data-00000-of-00001").write_bytes(b"w" * (200 + i))  # still copying
        assert source.poll() is True
        assert rec.last["m"] == []
    assert source.poll() is False
    assert rec.last["m"] == [1]


def test_latest_picks_newest_settled_and_ignores_other_names(tmp_path: Path) -> None:
    source, rec = make(tmp_path)
    version(tmp_path, "1")
    version(tmp_path, "0002")
    version(tmp_path, "tmp-3")
    (tmp_path / "7").write_text("a file, not a directory")
    source.poll()
    source.poll()
    assert rec.last["m"] == [2]
    version(tmp_path, "3", with_graph=False)  # half-written: the newest, but not ready
    source.poll()
    assert rec.last["m"] == [2]


def test_all_policy_and_removal(tmp_path: Path) -> None:
    source, rec = make(tmp_path, All())
    version(tmp_path, "1")
    version(tmp_path, "2")
    source.poll()
    source.poll()
    assert rec.last["m"] == [1, 2]
    for f in sorted((tmp_path / "1").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    (tmp_path / "1").rmdir()
    source.poll()
    assert rec.last["m"] == [2]


def test_dropped_watch_gets_an_empty_list(tmp_path: Path) -> None:
    source, rec = make(tmp_path)
    version(tmp_path, "1")
    source.poll()
    source.poll()
    assert rec.last["m"] == [1]
    source.set_watches([])
    assert rec.last["m"] == []


def test_serving_versions_are_held_while_their_successor_settles(tmp_path: Path) -> None:
    source, rec = make(tmp_path)
    version(tmp_path, "1")
    source.poll()
    source.poll()
    assert rec.last["m"] == [1]
    version(tmp_path, "2")
    for f in sorted((tmp_path / "1").rglob("*"), reverse=True):  # "publish new, delete old" at once
        f.unlink() if f.is_file() else f.rmdir()
    (tmp_path / "1").rmdir()
    assert source.poll() is True
    assert rec.last["m"] == [1]  # version 1 keeps serving from memory until 2 has settled
    assert source.poll() is False
    assert rec.last["m"] == [2]


def test_models_sharing_a_base_path_both_wait_for_settling(tmp_path: Path) -> None:
    rec = Recorder()
    source = FileSystemSource(rec, complete, SourceOptions(settle_s=0))
    source.set_watches([Watch("a", str(tmp_path), Latest()), Watch("b", str(tmp_path), Latest())])
    d = version(tmp_path, "1")
    for i in range(3):
        (d / "saved_model.pb").write_bytes(b"g" * (10 + i))
        source.poll()
        assert rec.last == {"a": [], "b": []}
    source.poll()
    assert rec.last == {"a": [1], "b": [1]}
