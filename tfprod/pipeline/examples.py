"""Examples on disk: reading CSV, Parquet and TFRecord (tf.Example) files into Arrow tables, and
the Examples artifact's layout (`Split-<name>/data.parquet` or `Split-<name>/data.tfrecord`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import re
import tempfile
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tfprod.pipeline import storage
from tfprod.pipeline.dsl import PipelineError

FORMATS = ("parquet", "tfrecord")


def spans(input_base: str, pattern: str) -> dict[int, list[str]]:
    """{span: files} for a `pattern` relative to `input_base` with a `{SPAN}` part (digits); a
    pattern without it is span 0."""
    if "{SPAN}" not in pattern:
        files = storage.glob(os.path.join(input_base, pattern))
        return {0: files} if files else {}
    regex = re.compile(re.escape(os.path.join(input_base, pattern)).replace(re.escape("{SPAN}"), r"(\d+)")
                       .replace(r"\*", r"[^/]*"))
    found: dict[int, list[str]] = {}
    for path in storage.glob(os.path.join(input_base, pattern.replace("{SPAN}", "*"))):
        m = regex.fullmatch(path)
        if m:
            found.setdefault(int(m.group(1)), []).append(path)
    return found


def fingerprint(files: Sequence[str]) -> str:
    """sha256 over the files' names (relative to their common folder) and contents."""
    digest = hashlib.sha256()
    paths = [absolute(f).split("://", 1)[-1] for f in files]
    base = posixpath.commonpath(paths) if len(paths) > 1 else posixpath.dirname(paths[0])
    for path, name in sorted(zip(files, paths, strict=True)):
        digest.update(posixpath.relpath(name, base).encode() + b"\0")
        with storage.open_file(path) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def absolute(path: str) -> str:
    return path if storage.remote(path) else os.path.abspath(path)


def read_files(files: Sequence[str]) -> pa.Table:
    tables = []
    for path in files:
        lower = path.lower()
        try:
            if lower.endswith(".csv"):
                # an empty cell is a missing value, for strings too (not "")
                with storage.open_file(path) as f:
                    tables.append(pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)))
            elif lower.endswith(".parquet"):
                with storage.open_file(path) as f:
                    tables.append(pq.read_table(f))
            elif lower.endswith((".tfrecord", ".tfrecords", ".tfrecord.gz")):
                tables.append(read_tfrecord(storage.localize(path)))
            else:
                raise PipelineError(f"{path}: input files must be .csv, .parquet or .tfrecord")
        except (pa.ArrowInvalid, OSError, ValueError) as e:
            raise PipelineError(f"cannot read {path}: {str(e).splitlines()[0][:300]}") from None
    if not tables:
        raise PipelineError("no input files")
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as e:
        raise PipelineError(f"the input files have different columns or types: {e}") from None


def read_tfrecord(path: str) -> pa.Table:
    """tf.Examples with one value per feature (missing features are nulls)."""
    import tensorflow as tf

    columns: dict[str, list[object]] = {}
    kinds: dict[str, str] = {}
    count = 0
    compression = "GZIP" if path.endswith(".gz") else ""
    try:
        for record in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            for name, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                values = list(getattr(feature, kind).value) if kind else []
                if len(values) > 1:
                    raise ValueError(f"feature '{name}' has {len(values)} values in example {count}: only "
                                     "single-valued features are supported")
                kinds.setdefault(name, kind or "")
                columns.setdefault(name, [None] * count).append(
                    (values[0].decode("utf-8", "replace") if kind == "bytes_list" else values[0]) if values else None)
            count += 1
            for values in columns.values():
                if len(values) < count:
                    values.append(None)
    except tf.errors.OpError as e:
        raise ValueError(f"not a TFRecord file of tf.Examples ({e.message})") from None
    types = {"float_list": pa.float32(), "int64_list": pa.int64(), "bytes_list": pa.string(), "": pa.string()}
    return pa.table({n: pa.array(v, type=types[kinds[n]]) for n, v in sorted(columns.items())})


def split_rows(table: pa.Table, ratios: Mapping[str, int], key: str = "") -> dict[str, pa.Table]:
    """Deterministic hash split: each row goes to a split by crc32 of its `key` column (or of the
    whole row) modulo the sum of `ratios`, so a row lands in the same split in every run."""
    total = sum(ratios.values())
    if total <= 0 or any(v < 0 for v in ratios.values()):
        raise PipelineError(f"split ratios must be positive: {dict(ratios)}")
    columns = [key] if key else table.schema.names
    if key and key not in table.schema.names:
        raise PipelineError(f"split key '{key}' is not a column ({table.schema.names})")
    text = [c.cast(pa.string()).fill_null("\x00") for c in (table.column(n) for n in columns)]
    joined = pc.binary_join_element_wise(*text, "\x1f") if len(text) > 1 else text[0]
    buckets = np.fromiter((zlib.crc32(s.encode()) % total for s in joined.to_pylist()), np.int64, table.num_rows)
    out, start = {}, 0
    for name, share in ratios.items():
        mask = (buckets >= start) & (buckets < start + share)
        out[name] = table.filter(pa.array(mask))
        start += share
    return out


ROW_GROUP_ROWS = 262_144  # Parquet row groups: the units a cluster's workers read


@dataclasses.dataclass(frozen=True)
class SplitJob:
    """One input file of ExampleGen: read, split and written as part `index` of `count` of each split."""

    path: str
    index: int
    count: int
    out: str
    ratios: dict[str, int]
    key: str
    fmt: str
    schema: pa.Schema | None = None  # the column types to cast to (the span's, unified over its files)


def split_file(job: SplitJob) -> dict[str, object]:
    """Read one input file, split its rows, write `Split-<name>/data-<index>-of-<count>.<ext>`; its
    row counts per split, columns and schema. Splitting file by file and concatenating in file
    order gives the rows, and their order, that splitting the concatenated files would (the split
    hashes each row as text before any cast)."""
    table = read_files([job.path])
    parts = split_rows(table, job.ratios, job.key)
    if job.schema is not None:
        parts = {k: t.cast(job.schema) for k, t in parts.items()}
    for split, part in parts.items():
        write_split(job.out, split, part, job.fmt, f"data-{job.index:05d}-of-{job.count:05d}")
    return {"rows": {k: t.num_rows for k, t in parts.items()}, "columns": table.schema.names,
            "schema": table.schema}


def write_split(uri: str, split: str, table: pa.Table, fmt: str, name: str = "data") -> None:
    folder = storage.join(uri, f"Split-{split}")
    if storage.remote(uri):
        if fmt == "parquet":
            with storage.open_file(storage.join(folder, f"{name}.parquet"), "wb") as f:
                pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS)
            return
        with tempfile.TemporaryDirectory() as local:  # TensorFlow writes TFRecords to local files
            write_tfrecord(os.path.join(local, "part.tfrecord"), table)
            storage.fs_of(uri).put_file(os.path.join(local, "part.tfrecord"), storage.join(folder, f"{name}.tfrecord"))
        return
    os.makedirs(folder, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, os.path.join(folder, f"{name}.parquet"), row_group_size=ROW_GROUP_ROWS)
    else:
        write_tfrecord(os.path.join(folder, f"{name}.tfrecord"), table)


def write_tfrecord(path: str, table: pa.Table) -> None:
    import tensorflow as tf

    columns = {n: table.column(n).to_pylist() for n in table.schema.names}
    kinds = {n: ("float" if pa.types.is_floating(t) else "int" if pa.types.is_integer(t) or pa.types.is_boolean(t)
                 else "bytes") for n, t in zip(table.schema.names, table.schema.types, strict=True)}
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(table.num_rows):
            feature = {}
            for n, values in columns.items():
                v = values[i]
                if v is None:
                    continue
                if kinds[n] == "float":
                    feature[n] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                elif kinds[n] == "int":
                    feature[n] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
                else:
                    feature[n] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode()]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def split_files(uri: str, split: str) -> list[str]:
    files = storage.glob(storage.join(uri, f"Split-{split}", "data*.*"))
    if not files:
        raise PipelineError(f"the examples at {uri} have no split '{split}'")
    return files


def read_split(uri: str, split: str) -> pa.Table:
    return read_files(split_files(uri, split))


Unit = tuple[str, int]  # (file, Parquet row group); -1: the whole file (TFRecord)


def units(uri: str, split: str) -> list[Unit]:
    """The pieces of a split that can be read on their own, in order: its files' row groups."""
    out: list[Unit] = []
    for path in split_files(uri, split):
        if path.endswith(".parquet"):
            with storage.open_file(path) as f:
                out.extend((path, g) for g in range(pq.ParquetFile(f).num_row_groups))
        else:
            out.append((path, -1))
    return out


def read_unit(unit: Unit) -> pa.Table:
    path, group = unit
    if group < 0:
        return read_files([path])
    with storage.open_file(path) as f:
        return pq.ParquetFile(f).read_row_group(group)
