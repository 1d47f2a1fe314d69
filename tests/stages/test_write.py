"""write: a unit's rows -> whole Parquet shards with fixed names, sizes and row counts recorded."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elmo_dist import schema as S
from elmo_dist.stages.write import shard_names, write_unit

DIM = 4
META = {"model_fingerprint": "abc", "config_fingerprint": "f00d", "dim": DIM}


def _schema(token_embeddings=False):
    return S.output_schema(DIM, token_embeddings=token_embeddings, metadata=META)


def _rows(n, start=0, token_embeddings=False, seed=0):
    rng = np.random.default_rng(seed)
    tokens = [["w"] * (1 + (i % 3)) for i in range(start, start + n)]
    cols = {
        S.ID: [f"doc{i}" for i in range(start, start + n)],
        S.SENTENCE_INDEX: pa.array([0] * n, pa.int32()),
        S.CHUNK: pa.array([0] * n, pa.int32()),
        S.N_CHUNKS: pa.array([1] * n, pa.int32()),
        S.SOURCE: ["in.parquet"] * n,
        S.TEXT: [" ".join(t) for t in tokens],
        S.TOKENS: tokens,
        S.N_TOKENS: pa.array([len(t) for t in tokens], pa.int32()),
        S.SENTENCE_EMBEDDING: rng.standard_normal((n, DIM)).astype(np.float32).tolist(),
        "_order": list(range(n)),  # an internal column: not in the schema, dropped on write
    }
    if token_embeddings:
        cols[S.TOKEN_EMBEDDINGS] = [rng.standard_normal((len(t), DIM)).astype(np.float32).tolist()
                                    for t in tokens]
    return pa.table(cols)


def _check_entries(out_dir, entries):
    for e in entries:
        path = os.path.join(out_dir, e["path"])
        assert os.path.getsize(path) == e["size"]
        assert pq.ParquetFile(path).metadata.num_rows == e["rows"]


def _leftovers(root):
    return [f for _, _, files in os.walk(root) for f in files if f.startswith(".")]


def test_shard_names():
    assert shard_names("u1", 10, 100.0, target_bytes=10_000) == [("part-u1-0000.parquet", 0, 10)]
    assert shard_names("u1", 10, 100.0, target_bytes=400) == [
        ("part-u1-0000.parquet", 0, 4), ("part-u1-0001.parquet", 4, 8), ("part-u1-0002.parquet", 8, 10)]
    assert shard_names("u1", 0, 0.0) == [("part-u1-0000.parquet", 0, 0)]  # an empty unit: one shard
    # a row bigger than the target still gets written, one row per shard
    assert [s[1:] for s in shard_names("u", 3, 1e9, target_bytes=10)] == [(0, 1), (1, 2), (2, 3)]


def test_one_shard_entries_match_file(tmp_path):
    out = str(tmp_path / "out")
    table = _rows(25)
    entries = write_unit(table, out, "unitA", _schema())
    assert [e["path"] for e in entries] == ["part-unitA-0000.parquet"]
    assert entries[0]["rows"] == 25
    _check_entries(out, entries)
    back = pq.read_table(os.path.join(out, entries[0]["path"]))
    assert back.schema.names == _schema().names  # _order dropped
    assert back.column(S.ID).to_pylist() == table.column(S.ID).to_pylist()
    assert back.column(S.SENTENCE_EMBEDDING).to_pylist() == table.column(S.SENTENCE_EMBEDDING).to_pylist()
    assert S.read_metadata(back.schema) == META
    assert S.METADATA_KEY in pq.ParquetFile(os.path.join(out, entries[0]["path"])).schema_arrow.metadata
    assert _leftovers(out) == []


def test_small_target_gives_several_shards_in_order(tmp_path):
    out = str(tmp_path / "out")
    table = _rows(50, token_embeddings=True)
    schema = _schema(token_embeddings=True)
    entries = write_unit(table, out, "u7", schema, target_bytes=table.nbytes // 5)
    assert len(entries) >= 4
    assert [e["path"] for e in entries] == [f"part-u7-{k:04d}.parquet" for k in range(len(entries))]
    assert sum(e["rows"] for e in entries) == 50
    _check_entries(out, entries)
    ids = [i for e in entries for i in pq.read_table(os.path.join(out, e["path"])).column(S.ID).to_pylist()]
    assert ids == [f"doc{i}" for i in range(50)]
    for e in entries:
        assert S.read_metadata(pq.read_schema(os.path.join(out, e["path"]))) == META
    assert sorted(os.listdir(out)) == [e["path"] for e in entries]  # nothing else, no temporaries


def test_empty_table_writes_one_empty_shard(tmp_path):
    out = str(tmp_path / "out")
    entries = write_unit(_rows(0), out, "empty", _schema())
    assert len(entries) == 1 and entries[0]["rows"] == 0
    assert entries[0]["path"] == "part-empty-0000.parquet"
    _check_entries(out, entries)
    back = pq.read_table(os.path.join(out, entries[0]["path"]))
    assert back.num_rows == 0 and back.schema.names == _schema().names


def test_subdir(tmp_path):
    out = str(tmp_path / "out")
    entries = write_unit(_rows(3), out, "u1", _schema(), subdir="data/v1")
    assert entries[0]["path"] == "data/v1/part-u1-0000.parquet"
    assert os.path.isfile(os.path.join(out, "data", "v1", "part-u1-0000.parquet"))
    assert [p for p in os.listdir(out)] == ["data"]
    _check_entries(out, entries)


def test_rewrite_replaces_the_shard(tmp_path):
    out = str(tmp_path / "out")
    first = write_unit(_rows(10, seed=1), out, "u1", _schema())
    path = os.path.join(out, first[0]["path"])
    old_ino = os.stat(path).st_ino
    with open(path, "rb") as held:  # a reader of the old shard while it is replaced
        second_table = _rows(6, start=100, seed=2)
        second = write_unit(second_table, out, "u1", _schema())
        old = pq.read_table(pa.BufferReader(held.read()))
    assert old.num_rows == 10  # the reader still sees the whole old file: replaced by a rename
    assert os.stat(path).st_ino != old_ino
    assert [e["path"] for e in first] == [e["path"] for e in second]
    _check_entries(out, second)
    back = pq.read_table(os.path.join(out, second[0]["path"]))
    assert back.num_rows == 6
    assert back.column(S.ID).to_pylist() == [f"doc{i}" for i in range(100, 106)]
    assert back.column(S.SENTENCE_EMBEDDING).to_pylist() == \
        second_table.column(S.SENTENCE_EMBEDDING).to_pylist()
    assert _leftovers(out) == []


def test_cast_to_schema_float16(tmp_path):
    out = str(tmp_path / "out")
    schema = S.output_schema(DIM, dtype="float16", metadata=META)
    entries = write_unit(_rows(5), out, "h", schema)
    back = pq.read_table(os.path.join(out, entries[0]["path"]))
    assert back.schema.field(S.SENTENCE_EMBEDDING).type == pa.list_(pa.float16(), DIM)


def test_missing_column_fails_and_writes_nothing(tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(KeyError):
        write_unit(_rows(5).drop_columns([S.TEXT]), out, "bad", _schema())
    assert not os.path.exists(out) or os.listdir(out) == []
