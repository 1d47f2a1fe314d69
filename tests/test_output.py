"""output: finding, reading and verifying an output's current shards (no Ray: outputs built by hand)."""

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from elmo_dist import schema as S
from elmo_dist import storage
from elmo_dist.checkpoint import JOB_DIR, JobState
from elmo_dist.config import JobConfig
from elmo_dist.output import (CURRENT, IncompleteOutputError, OutputError, current_files, list_shards,
                              read_embeddings, verify)
from elmo_dist.stages.write import write_unit

DIM = 3
MODEL_FP = "0123456789abcdef"
UNITS = ["ua", "ub", "uc"]


def _rows(unit, n):
    tokens = [["tok"] * (1 + i % 2) for i in range(n)]
    return pa.table({
        S.ID: [f"{unit}-{i}" for i in range(n)],
        S.SENTENCE_INDEX: pa.array([0] * n, pa.int32()),
        S.CHUNK: pa.array([0] * n, pa.int32()),
        S.N_CHUNKS: pa.array([1] * n, pa.int32()),
        S.SOURCE: ["in.parquet"] * n,
        S.TEXT: [" ".join(t) for t in tokens],
        S.TOKENS: tokens,
        S.N_TOKENS: pa.array([len(t) for t in tokens], pa.int32()),
        S.SENTENCE_EMBEDDING: np.arange(n * DIM, dtype=np.float32).reshape(n, DIM).tolist(),
    })


def _build(tmp_path, done=UNITS, planned=UNITS, rows=4, fingerprint=None):
    """An embed output: plan + config of ``planned``, shards and records of ``done``."""
    out = str(tmp_path / "out")
    cfg = JobConfig.build(inputs=["/data/in.parquet"], output=out)
    state = JobState(out)
    state.begin(cfg, MODEL_FP, list(planned))
    schema = S.output_schema(DIM, metadata={"config_fingerprint": fingerprint or cfg.fingerprint(MODEL_FP)})
    for u in done:
        files = write_unit(_rows(u, rows), out, u, schema)
        state.record(u, files, {"sentences": rows})
    return out, state


def _rec_path(out, unit):
    return os.path.join(out, JOB_DIR, "units", f"{unit}.json")


# ---- reading -------------------------------------------------------------------------------

def test_complete_output_reads_recorded_shards(tmp_path):
    out, _ = _build(tmp_path)
    names = [f"part-{u}-0000.parquet" for u in UNITS]
    assert current_files(out) == names
    assert list_shards(out) == [os.path.join(out, n) for n in names]
    table = read_embeddings(out).to_table()
    assert table.num_rows == 12
    assert sorted(table.column(S.ID).to_pylist()) == sorted(f"{u}-{i}" for u in UNITS for i in range(4))
    sub = read_embeddings(out, columns=[S.ID, S.SENTENCE_EMBEDDING]).to_table(columns=[S.ID, S.SENTENCE_EMBEDDING])
    assert sub.schema.names == [S.ID, S.SENTENCE_EMBEDDING]
    with pytest.raises(OutputError, match="nope"):
        read_embeddings(out, columns=[S.ID, "nope"])


def test_incomplete_output_refused_unless_partial(tmp_path):
    out, _ = _build(tmp_path, done=["ua", "uc"])
    for fn in (current_files, list_shards, read_embeddings):
        with pytest.raises(IncompleteOutputError, match="2 of 3 work units"):
            fn(out)
    assert current_files(out, allow_partial=True) == ["part-ua-0000.parquet", "part-uc-0000.parquet"]
    assert read_embeddings(out, allow_partial=True).to_table().num_rows == 8
    assert isinstance(IncompleteOutputError("x"), OutputError)


def test_stray_shard_without_record_is_not_read(tmp_path):
    out, _ = _build(tmp_path, done=["ua", "ub"])
    # an interrupted unit: its shard was written, its record never
    write_unit(_rows("uc", 5), out, "uc", S.output_schema(DIM))
    assert os.path.exists(os.path.join(out, "part-uc-0000.parquet"))
    with pytest.raises(IncompleteOutputError, match="2 of 3"):
        current_files(out)
    assert current_files(out, allow_partial=True) == ["part-ua-0000.parquet", "part-ub-0000.parquet"]
    ids = read_embeddings(out, allow_partial=True).to_table().column(S.ID).to_pylist()
    assert not any(i.startswith("uc-") for i in ids) and len(ids) == 8
    report = verify(out)
    assert any("1 shard file(s) no record names" in n and "part-uc-0000.parquet" in n for n in report.notes)
    assert report.units_done == 2 and report.units_planned == 3
    assert any("1 planned unit(s) have no completion record" in p for p in report.problems)


def test_missing_directory_and_non_outputs(tmp_path):
    missing = str(tmp_path / "nowhere")
    for fn in (current_files, list_shards, read_embeddings, verify):
        with pytest.raises(OutputError, match="no such output directory"):
            fn(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OutputError, match="holds no embedding shards"):
        current_files(str(empty))
    with pytest.raises(OutputError, match="not an elmo-dist output"):
        verify(str(empty))
    assert issubclass(OutputError, FileNotFoundError)


# ---- verify --------------------------------------------------------------------------------

def test_verify_sound_output(tmp_path):
    out, _ = _build(tmp_path)
    report = verify(out)
    assert report.ok and report.problems == [] and report.notes == []
    assert report.kind == "embed"
    assert (report.units_planned, report.units_done, report.shards) == (3, 3, 3)
    assert report.rows is None  # rows only with deep
    deep = verify(out, deep=True)
    assert deep.ok and deep.rows == 12
    d = deep.to_dict()
    assert d["ok"] is True and d["rows"] == 12 and d["kind"] == "embed"


def test_verify_missing_shard(tmp_path):
    out, _ = _build(tmp_path)
    os.remove(os.path.join(out, "part-ub-0000.parquet"))
    report = verify(out)
    assert not report.ok
    assert report.problems == ["unit ub: shard part-ub-0000.parquet is missing"]
    assert report.units_done == 2
    with pytest.raises(IncompleteOutputError):
        current_files(out)


def test_verify_resized_shard(tmp_path):
    out, _ = _build(tmp_path)
    path = os.path.join(out, "part-ua-0000.parquet")
    size = os.path.getsize(path)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 10)
    report = verify(out)
    assert report.problems == [f"unit ua: shard part-ua-0000.parquet has {size + 10} bytes, the record says {size}"]


def test_verify_torn_record(tmp_path):
    out, _ = _build(tmp_path)
    with open(_rec_path(out, "uc"), "r+") as fh:
        fh.truncate(5)
    report = verify(out)
    assert len(report.problems) == 1
    assert report.problems[0].startswith("unit uc: ") and "unreadable JSON (5 bytes" in report.problems[0]
    # the torn unit's shard is now one no record names
    assert any("part-uc-0000.parquet" in n for n in report.notes)


def test_verify_damaged_plan_and_config(tmp_path):
    out, _ = _build(tmp_path)
    os.remove(os.path.join(out, JOB_DIR, "plan.json"))
    report = verify(out)
    assert f"{JOB_DIR}/plan.json is missing" in report.problems
    with open(os.path.join(out, JOB_DIR, "config.json"), "w") as fh:
        fh.write("{torn")
    report = verify(out)
    assert any("config.json" in p and "unreadable JSON" in p for p in report.problems)


def test_verify_deep_row_count_mismatch(tmp_path):
    out, state = _build(tmp_path)
    rec = json.load(open(_rec_path(out, "ub")))
    rec["files"][0]["rows"] = 999
    storage.write_json(state.fs, _rec_path(out, "ub"), rec)
    assert verify(out).ok  # the footer is read only with deep
    report = verify(out, deep=True)
    assert report.problems == ["shard part-ub-0000.parquet: 4 rows, the record says 999"]
    assert report.rows == 12


def test_verify_deep_other_configuration_and_unreadable_shard(tmp_path):
    out, state = _build(tmp_path, fingerprint="feedfeedfeedfeed")
    report = verify(out, deep=True)
    assert len(report.problems) == 3
    assert all("written by another configuration (feedfeedfeedfeed" in p for p in report.problems)

    out2, state2 = _build(tmp_path / "second")
    path = os.path.join(out2, "part-ua-0000.parquet")
    size = os.path.getsize(path)
    with open(path, "wb") as fh:  # same size, not Parquet any more
        fh.write(b"\0" * size)
    report = verify(out2, deep=True)
    assert any(p.startswith("shard part-ua-0000.parquet: unreadable Parquet") for p in report.problems)
    assert verify(out2).ok  # the shallow check only compares sizes


def test_verify_notes_temporaries_and_records_outside_plan(tmp_path):
    out, state = _build(tmp_path)
    open(os.path.join(out, ".part-ua-0000.parquet.tmp-" + "c" * 32), "w").close()
    files = write_unit(_rows("zz", 2), out, "zz", S.output_schema(DIM))
    state.record("zz", files, {})
    report = verify(out)
    assert any("1 temporary file(s)" in n for n in report.notes)
    assert report.problems == ["1 record(s) of units outside the plan (e.g. zz)"]


# ---- refresh outputs ---------------------------------------------------------------------

def _refresh_output(tmp_path):
    out = str(tmp_path / "refresh")
    fs = storage.pafs.LocalFileSystem()
    files = []
    for u in ("r1", "r2"):
        files += write_unit(_rows(u, 3), out, u, S.output_schema(DIM, metadata={"config_fingerprint": "cf"}),
                            subdir="data/cf")
    storage.write_json(fs, os.path.join(out, "_versions", "v000001.json"),
                       {"version": 1, "config_fingerprint": "cf", "files": [f["path"] for f in files],
                        "sizes": {f["path"]: f["size"] for f in files},
                        "inputs": {"/data/in.parquet": {"units": ["r1", "r2"]}}})
    storage.write_json(fs, os.path.join(out, CURRENT), {"version": 1, "manifest": "_versions/v000001.json"})
    # an unpublished shard of a running refresh: not referenced, never read
    write_unit(_rows("r3", 3), out, "r3", S.output_schema(DIM), subdir="data/cf")
    return out, files


def test_refresh_output_follows_the_pointer(tmp_path):
    out, files = _refresh_output(tmp_path)
    assert current_files(out) == [f["path"] for f in files]
    assert list_shards(out) == [os.path.join(out, f["path"]) for f in files]
    ids = read_embeddings(out).to_table().column(S.ID).to_pylist()
    assert sorted(ids) == sorted(f"{u}-{i}" for u in ("r1", "r2") for i in range(3))
    report = verify(out, deep=True)
    assert report.ok and report.kind == "refresh"
    assert (report.shards, report.units_planned, report.rows) == (2, 2, 6)


def test_refresh_output_problems(tmp_path):
    out, files = _refresh_output(tmp_path)
    os.remove(os.path.join(out, files[1]["path"]))
    assert verify(out).problems == [f"shard {files[1]['path']} of version 1 is missing"]
    with open(os.path.join(out, files[0]["path"]), "ab") as fh:
        fh.write(b"xx")
    assert any("the manifest says" in p for p in verify(out).problems)
    storage.write_json(storage.pafs.LocalFileSystem(), os.path.join(out, CURRENT),
                       {"version": 2, "manifest": "_versions/v000002.json"})
    with pytest.raises(OutputError, match="missing manifest"):
        current_files(out)
    assert any("missing manifest" in p for p in verify(out).problems)
    with open(os.path.join(out, CURRENT), "w") as fh:
        fh.write("{")
    with pytest.raises(OutputError, match="version pointer is damaged"):
        current_files(out)
    assert not verify(out).ok


@pytest.mark.parametrize("pointer", ["{}", "[]"])
def test_malformed_pointer_is_an_output_error(tmp_path, pointer):
    out, _ = _refresh_output(tmp_path)
    with open(os.path.join(out, CURRENT), "w") as fh:
        fh.write(pointer)
    with pytest.raises(OutputError):
        current_files(out)
    assert not verify(out).ok


def test_manifest_without_files_is_an_output_error(tmp_path):
    out, _ = _refresh_output(tmp_path)
    storage.write_json(storage.pafs.LocalFileSystem(), os.path.join(out, "_versions", "v000001.json"),
                       {"version": 1})
    assert not verify(out).ok
    with pytest.raises(OutputError):
        current_files(out)


# ---- post-processed reads ----------------------------------------------------------------------

def _raw_vectors(out):
    t = read_embeddings(out).to_table().sort_by([(S.ID, "ascending")])
    return t, np.stack(t[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False)).astype(np.float64)


def test_read_embeddings_postprocessed(tmp_path):
    import pyarrow.dataset

    from elmo_dist.similarity import Moments, Postprocessor

    out, state = _build(tmp_path)
    raw_table, stored = _raw_vectors(out)
    with pytest.raises(OutputError, match="no fitted post-processor"):
        read_embeddings(out, postprocess="fitted")
    with pytest.raises(OutputError, match="no sentence-vector moments"):
        read_embeddings(out, postprocess="abtt")
    # moments of full rank (the stored rows are collinear): the stored ones plus noise
    moments = Moments.of(stored + np.random.default_rng(0).standard_normal(stored.shape))
    fitted = Postprocessor.fit(moments, "center")
    state.write_postprocessing(moments, fitted)

    got = read_embeddings(out, postprocess="fitted")
    assert isinstance(got, pyarrow.dataset.Dataset)  # the same return type as without post-processing
    t = got.to_table().sort_by([(S.ID, "ascending")])
    assert t.column_names == raw_table.column_names and t[S.ID].equals(raw_table[S.ID])
    y = np.stack(t[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(y, fitted.transform(stored), atol=1e-6)
    assert json.loads(t.schema.metadata[b"elmo_dist.postprocess"])["fingerprint"] == fitted.fingerprint()
    assert S.read_metadata(t.schema) == S.read_metadata(raw_table.schema)  # the shards' metadata kept

    # a method: fitted on the stored moments; "whiten" with k < D changes the width
    t = read_embeddings(out, columns=[S.ID, S.SENTENCE_EMBEDDING], postprocess="abtt").to_table()
    assert t.column_names == [S.ID, S.SENTENCE_EMBEDDING]
    t = t.sort_by([(S.ID, "ascending")])
    np.testing.assert_allclose(np.stack(t[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False)),
                               Postprocessor.fit(moments, "abtt").transform(stored), atol=1e-6)
    whiten = Postprocessor.fit(moments, "whiten", k=2)
    t = read_embeddings(out, postprocess=whiten).to_table().sort_by([(S.ID, "ascending")])
    assert t.schema.field(S.SENTENCE_EMBEDDING).type.list_size == 2
    np.testing.assert_allclose(np.stack(t[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False)),
                               whiten.transform(stored), atol=1e-5)
    # "none" and None: the stored vectors, the lazy dataset as before
    for raw in (None, "none"):
        assert read_embeddings(out, postprocess=raw).to_table().sort_by([(S.ID, "ascending")]).equals(raw_table)
    with pytest.raises(ValueError, match="postprocess must be"):
        read_embeddings(out, postprocess="pca")
    with pytest.raises(OutputError, match="width 5"):
        read_embeddings(out, postprocess=Postprocessor.fit(np.ones((4, 5)) * np.arange(4)[:, None], "center"))


def test_read_embeddings_postprocessed_refresh_output(tmp_path):
    """A refresh output's post-processor is the one its current manifest names."""
    from elmo_dist.similarity import Moments, Postprocessor

    out, files = _refresh_output(tmp_path)
    with pytest.raises(OutputError, match="no fitted post-processor"):
        read_embeddings(out, postprocess="fitted")
    _, x = _raw_vectors(out)
    moments = Moments.of(x)
    pp = Postprocessor.fit(moments, "center")
    fs = storage.pafs.LocalFileSystem()
    names = {"moments": "_postprocessing/moments-test.npz", "postprocessor": "_postprocessing/postprocessor-test.npz"}
    storage.write_bytes(fs, os.path.join(out, names["moments"]), moments.to_bytes())
    storage.write_bytes(fs, os.path.join(out, names["postprocessor"]), pp.to_bytes())
    manifest = storage.read_json(fs, os.path.join(out, "_versions", "v000001.json"))
    storage.write_json(fs, os.path.join(out, "_versions", "v000001.json"),
                       {**manifest, "postprocessing": {"method": "center", "fingerprint": pp.fingerprint(), **names}})
    t = read_embeddings(out, postprocess="fitted").to_table().sort_by([(S.ID, "ascending")])
    np.testing.assert_allclose(np.stack(t[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False)), pp.transform(x),
                               atol=1e-6)
    assert verify(out).ok
    os.remove(os.path.join(out, names["moments"]))
    assert verify(out).problems == [f"moments {names['moments']} of version 1 is missing"]
    with pytest.raises(OutputError, match="moments-test.npz, the moments of version 1, is missing"):
        read_embeddings(out, postprocess="whiten")
