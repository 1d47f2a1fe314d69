"""The nightly refresh: versions, pointer, incremental diff, lease, crash recovery, retention.

Each embedding run costs seconds on a small machine, so the scenarios are chained: one local
lifecycle (7 refreshes, 5 of them embedding) and one S3 lifecycle (3 refreshes, 2 embedding).
The S3 tests come first and ask for ``s3_endpoint`` before ``ray_runtime``: Ray workers only see
the AWS_* variables that were set before the runtime started.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from conftest import write_corpus
from elmo_dist.config import JobConfig
from elmo_dist.lease import LEASE, Lease, LeaseHeld, LeaseLost, store_for
from elmo_dist.output import CURRENT, current_files, read_embeddings, stored_moments, stored_postprocessor
from elmo_dist.refresh import DATA, RUNS, VERSIONS, Diff, refresh, version_postprocessing
from elmo_dist.similarity import Moments, Postprocessor

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def rows(sample_rows):
    """64 short (id, text) rows."""
    return [(str(i), t[:160]) for i, t in sample_rows[:64]]


def _cfg(inputs, output, model, address, **kw) -> JobConfig:
    return JobConfig.build(inputs=inputs, output=output, model=model,
                           **{"text.id_column": "id", "run.num_actors": 1, "run.address": address, **kw})


def _ids_by_source(directory: str) -> dict[str, set[str]]:
    t = read_embeddings(directory).to_table(columns=["id", "source"])
    out: dict[str, set[str]] = {}
    for i, s in zip(t["id"].to_pylist(), t["source"].to_pylist()):
        out.setdefault(s, set()).add(str(i))
    return out


def _ids(rs) -> set[str]:
    return {r[0] for r in rs}


def _check_postprocessing(directory: str) -> None:
    """The current version's stored moments and post-processor are those of its vectors."""
    t = read_embeddings(directory).to_table(columns=["sentence_embedding"])
    x = np.stack(t["sentence_embedding"].to_numpy(zero_copy_only=False)).astype(np.float64)
    want_m = Moments.of(x)
    got_m = stored_moments(directory)
    assert got_m.n == want_m.n == len(x)
    np.testing.assert_allclose(got_m.total, want_m.total, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_m.outer, want_m.outer, rtol=0, atol=1e-6)
    want, got = Postprocessor.fit(want_m), stored_postprocessor(directory)
    assert got.method == want.method == "center" and got.n == len(x)
    np.testing.assert_allclose(got.mean, want.mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.transform(x), want.transform(x), rtol=0, atol=1e-6)
    y = read_embeddings(directory, postprocess="fitted").to_table(columns=["sentence_embedding"])
    np.testing.assert_allclose(np.stack(y["sentence_embedding"].to_numpy(zero_copy_only=False)),
                               want.transform(x), rtol=0, atol=1e-6)


# ---- the lease on its own (no Ray) ----------------------------------------------------------

@pytest.mark.s3
def test_lease_compare_and_swap_local_and_s3(s3_endpoint, tmp_path):
    bucket = s3_endpoint()
    for directory in (str(tmp_path / "out"), f"s3://{bucket}/out"):
        a = Lease(directory, owner="run-a", seconds=600, renew_every=600).acquire()
        with pytest.raises(LeaseHeld, match="held by run-a"):
            Lease(directory, owner="run-b", seconds=600).acquire()
        a.renew()
        # a crashed run: its lease expires; two runs race to take it over, exactly one wins
        store = store_for(directory)
        cur, tok = store.read(LEASE)
        dead = {**cur, "expires": time.time() - 1, "expires_at": "the past"}
        tok = store.replace(LEASE, dead, tok)
        assert tok is not None
        assert store.replace(LEASE, {"owner": "x"}, "stale-token") is None
        b = Lease(directory, owner="run-b", seconds=600, renew_every=600).acquire()
        assert b.taken_over["owner"] == "run-a"
        assert store.replace(LEASE, {"owner": "run-c"}, tok) is None  # the CAS run-b won
        with pytest.raises(LeaseLost, match="held by run-b"):
            a.check()  # run-a finds out it lost the lease: it must not publish
        a.release()  # does not delete run-b's lease
        assert store.read(LEASE)[0]["owner"] == "run-b"
        b.release()
        assert store.read(LEASE) == (None, None)
        with Lease(directory, owner="run-c", seconds=600) as c:  # free again
            assert c.token


# ---- S3 end to end --------------------------------------------------------------------------

@pytest.mark.s3
def test_refresh_s3_add_change_delete_nochange(s3_endpoint, ray_runtime, tiny_dir, rows):
    bucket = s3_endpoint()
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}")
    uri = {n: f"s3://{bucket}/corpus/{n}.parquet" for n in "abcd"}
    for n, sl in (("a", rows[0:8]), ("b", rows[8:16]), ("c", rows[16:24])):
        write_corpus(f"{bucket}/corpus/{n}.parquet", sl, filesystem=fs)
    out = f"s3://{bucket}/emb"
    cfg = _cfg([f"s3://{bucket}/corpus/"], out, tiny_dir, ray_runtime)

    s1 = refresh(cfg, tiny_dir)
    assert (s1["version"], s1["new_version"], s1["units_embedded"]) == (1, True, 3)
    assert sorted(s1["added"]) == [uri["a"], uri["b"], uri["c"]]
    assert _ids_by_source(out) == {uri["a"]: _ids(rows[0:8]), uri["b"]: _ids(rows[8:16]),
                                   uri["c"]: _ids(rows[16:24])}
    assert all(f.startswith(f"{DATA}/") for f in current_files(out))
    pointer = json.loads(fs.open_input_stream(f"{bucket}/emb/{CURRENT}").read())
    assert pointer == {**pointer, "version": 1, "manifest": f"{VERSIONS}/v000001.json"}
    assert fs.get_file_info(f"{bucket}/emb/{LEASE}").type == pafs.FileType.NotFound  # released

    s2 = refresh(cfg, tiny_dir)
    assert (s2["version"], s2["new_version"], s2["units_embedded"]) == (1, False, 0)

    write_corpus(f"{bucket}/corpus/b.parquet", rows[24:32], filesystem=fs)  # changed
    fs.delete_file(f"{bucket}/corpus/c.parquet")  # deleted
    write_corpus(f"{bucket}/corpus/d.parquet", rows[32:40], filesystem=fs)  # added
    s3 = refresh(cfg, tiny_dir)
    assert (s3["version"], s3["units_embedded"], s3["unchanged"]) == (2, 2, 1)
    assert (s3["added"], s3["changed"], s3["deleted"]) == ([uri["d"]], [uri["b"]], [uri["c"]])
    assert s3["rows_dropped"] == 16
    assert _ids_by_source(out) == {uri["a"]: _ids(rows[0:8]), uri["b"]: _ids(rows[24:32]),
                                   uri["d"]: _ids(rows[32:40])}
    keys = {i.path[len(f"{bucket}/emb/"):] for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/emb", recursive=True))
            if i.type == pafs.FileType.File}
    v1 = json.loads(fs.open_input_stream(f"{bucket}/emb/{VERSIONS}/v000001.json").read())
    v2 = json.loads(fs.open_input_stream(f"{bucket}/emb/{VERSIONS}/v000002.json").read())
    # no lease, no run state left; shards and post-processing of both kept versions (keep_versions=3),
    # nothing else
    pp_files = {m["postprocessing"][k] for m in (v1, v2) for k in ("moments", "postprocessor")}
    assert keys == {CURRENT, f"{VERSIONS}/v000001.json", f"{VERSIONS}/v000002.json", *v1["files"], *v2["files"],
                    *pp_files}
    _check_postprocessing(out)  # refitted for version 2


# ---- local end to end -----------------------------------------------------------------------

def _manifest(out: str, version: int) -> dict:
    with open(os.path.join(out, VERSIONS, f"v{version:06d}.json")) as fh:
        return json.load(fh)


def _data_files(out: str) -> set[str]:
    root = os.path.join(out, DATA)
    return {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(root) for f in fs}


def _perturbed_model(tiny_dir: str, path: str) -> str:
    import torch

    from elmo_dist import Elmo

    m = Elmo.from_pretrained(tiny_dir)
    with torch.no_grad():
        m.bilm.lstm.layers[0].w_proj.add_(0.05)
    m.save_pretrained(path)
    return path


def test_refresh_local_lifecycle(tmp_path, ray_runtime, tiny_dir, rows, capsys):
    from elmo_dist.cli import main

    corpus, out = tmp_path / "corpus", str(tmp_path / "out")
    corpus.mkdir()
    uri = {n: str(corpus / f"{n}.parquet") for n in "abcdef"}
    for n, sl in (("a", rows[0:8]), ("b", rows[8:16]), ("c", rows[16:24])):
        write_corpus(uri[n], sl)
    cfg = _cfg([str(corpus)], out, tiny_dir, ray_runtime)

    # -- first version
    s1 = refresh(cfg, tiny_dir, keep_versions=2)
    assert (s1["version"], s1["new_version"], s1["units_embedded"], s1["reason"]) == (1, True, 3, "first version")
    v1 = _manifest(out, 1)
    assert set(v1["inputs"]) == {uri["a"], uri["b"], uri["c"]}
    assert v1["inputs"][uri["a"]]["size"] == os.path.getsize(uri["a"])
    assert v1["inputs"][uri["a"]]["version"] == str(os.stat(uri["a"]).st_mtime_ns)
    assert set(v1["files"]) == _data_files(out) and v1["rows"] == 24
    assert json.load(open(os.path.join(out, CURRENT)))["manifest"] == f"{VERSIONS}/v000001.json"
    assert s1["postprocessor"] == v1["postprocessing"]["method"] == "center"
    _check_postprocessing(out)
    assert not os.path.exists(os.path.join(out, LEASE)) and not os.path.exists(os.path.join(out, RUNS))

    # -- nothing changed: no embedding work, the same version, no new manifest
    s2 = refresh(cfg, tiny_dir, keep_versions=2)
    assert (s2["version"], s2["new_version"], s2["units_embedded"]) == (1, False, 0)
    assert "nothing changed" in s2["reason"] and s2["stats"] is None
    assert os.listdir(os.path.join(out, VERSIONS)) == ["v000001.json"]

    # -- b changed, c deleted, d added: only b and d are embedded, a's shards carried over
    write_corpus(uri["b"], rows[24:32])
    os.remove(uri["c"])
    write_corpus(uri["d"], rows[32:40])
    s3 = refresh(cfg, tiny_dir, keep_versions=2)
    assert (s3["version"], s3["units_embedded"], s3["unchanged"], s3["rows_dropped"]) == (2, 2, 1, 16)
    assert (s3["added"], s3["changed"], s3["deleted"]) == ([uri["d"]], [uri["b"]], [uri["c"]])
    v2 = _manifest(out, 2)
    assert v2["previous"] == 1 and v2["inputs"][uri["a"]] == v1["inputs"][uri["a"]]
    new_shards = set(v2["files"]) - set(v1["files"])
    new_sources = set().union(*(pq.read_table(os.path.join(out, f)).column("source").to_pylist()
                                for f in new_shards))
    assert new_sources == {uri["b"], uri["d"]}
    assert _ids_by_source(out) == {uri["a"]: _ids(rows[0:8]), uri["b"]: _ids(rows[24:32]),
                                   uri["d"]: _ids(rows[32:40])}
    _check_postprocessing(out)  # refitted: a's vectors carried over, b's and d's new ones, c's gone
    assert v2["postprocessing"]["fingerprint"] != v1["postprocessing"]["fingerprint"]

    # -- a run crashes after embedding, before publishing (test hook _before_publish)
    write_corpus(uri["e"], rows[40:48])
    write_corpus(uri["f"], rows[48:56])

    def crash(manifest):
        assert manifest["version"] == 3
        raise RuntimeError("simulated crash before publishing")

    with pytest.raises(RuntimeError, match="simulated crash"):
        refresh(cfg, tiny_dir, keep_versions=2, _before_publish=crash)
    assert json.load(open(os.path.join(out, CURRENT)))["version"] == 2  # the previous version stays
    assert sorted(current_files(out)) == sorted(v2["files"])
    assert set(_ids_by_source(out)) == {uri["a"], uri["b"], uri["d"]}  # readers see only version 2
    (run_dir,) = os.listdir(os.path.join(out, RUNS))
    records = [json.load(open(os.path.join(out, RUNS, run_dir, "units", r)))
               for r in os.listdir(os.path.join(out, RUNS, run_dir, "units"))]
    assert len(records) == 2
    # make it look like the run was killed while unit f was in flight: no record, shard half done
    (rec_f,) = [r for r in records
                if pq.read_table(os.path.join(out, r["files"][0]["path"])).column("source")[0].as_py() == uri["f"]]
    os.remove(os.path.join(out, RUNS, run_dir, "units", f"{rec_f['unit']}.json"))
    # ... and its lease was left behind, expired (a SIGKILLed run cannot release it)
    with open(os.path.join(out, LEASE), "w") as fh:
        json.dump({"owner": "crashed-run@nightly:7", "expires": time.time() - 5, "expires_at": "earlier"}, fh)
    # orphans a crash can leave: an unreferenced shard, a temporary file, a dead run's state
    orphan = os.path.join(out, DATA, "0123456789abcdef", "part-orphan-0000.parquet")
    os.makedirs(os.path.dirname(orphan))
    open(orphan, "wb").close()
    tmp_leftover = os.path.join(out, v2["files"][0].rsplit("/", 1)[0], ".tmp-dead-part-x.parquet")
    open(tmp_leftover, "wb").close()
    os.makedirs(os.path.join(out, RUNS, "deadrun", "units"))
    tmp_pointer = os.path.join(out, f"{CURRENT}.tmp-{'0' * 32}")
    open(tmp_pointer, "wb").close()

    s4 = refresh(cfg, tiny_dir, keep_versions=2)  # completes the interrupted work
    assert s4["lease"]["took_over_from"] == "crashed-run@nightly:7"
    assert (s4["units_planned"], s4["units_reused"], s4["units_embedded"]) == (2, 1, 1)
    assert s4["run_id"] == run_dir and s4["previous_version"] == 2 and s4["version"] == 4
    assert s4["added"] == [uri["e"], uri["f"]]
    assert sorted(os.listdir(os.path.join(out, VERSIONS))) == ["v000002.json", "v000004.json"]  # v3 never published
    assert not any(map(os.path.exists, (orphan, tmp_leftover, tmp_pointer)))
    assert not os.path.exists(os.path.join(out, RUNS))  # the resumed run's state and the dead run's
    v4 = _manifest(out, 4)
    assert _data_files(out) == set(v2["files"]) | set(v4["files"])  # v1's b and c shards are gone
    assert _ids_by_source(out) == {uri["a"]: _ids(rows[0:8]), uri["b"]: _ids(rows[24:32]),
                                   uri["d"]: _ids(rows[32:40]), uri["e"]: _ids(rows[40:48]),
                                   uri["f"]: _ids(rows[48:56])}
    _check_postprocessing(out)  # v2's moments plus e's (from the crashed run's state) and f's
    kept_pp = {m["postprocessing"][k] for m in (v2, v4) for k in ("moments", "postprocessor")}
    assert {f"_postprocessing/{n}" for n in os.listdir(os.path.join(out, "_postprocessing"))} == kept_pp

    # -- a concurrent refresh is refused, naming the holder; the CLI exits 2
    held = Lease(out, owner="other-refresh@host:42", seconds=600, renew_every=600).acquire()
    try:
        with pytest.raises(LeaseHeld, match="held by other-refresh@host:42"):
            refresh(cfg, tiny_dir)
        rc = main(["refresh", str(corpus), "--output", out, "--model", tiny_dir, "--id-column", "id"])
        assert rc == 2 and "other-refresh@host:42" in capsys.readouterr().err
    finally:
        held.release()
    assert json.load(open(os.path.join(out, CURRENT)))["version"] == 4

    # -- the model changed: everything re-embedded into a new version; retention keeps 2 versions
    before = read_embeddings(out).to_table(columns=["id", "sentence_index", "chunk", "sentence_embedding"])
    model2 = _perturbed_model(tiny_dir, str(tmp_path / "model2"))
    cfg2 = _cfg([str(corpus)], out, model2, ray_runtime)
    s5 = refresh(cfg2, model2, keep_versions=2)
    assert s5["reason"].startswith("full re-embed: model") and s5["units_embedded"] == 5
    assert (s5["version"], s5["added"], s5["changed"], s5["deleted"]) == (5, [], [], [])
    v5 = _manifest(out, 5)
    assert v5["model_fingerprint"] != v4["model_fingerprint"]
    assert not set(v5["files"]) & set(v4["files"])
    assert sorted(os.listdir(os.path.join(out, VERSIONS))) == ["v000004.json", "v000005.json"]
    assert s5["retention"]["kept_versions"] == [5, 4]
    assert _data_files(out) == set(v4["files"]) | set(v5["files"])  # v4 kept whole, v2-only shards gone
    after = read_embeddings(out).to_table(columns=["id", "sentence_index", "chunk", "sentence_embedding"])
    assert after.num_rows == before.num_rows
    key = ["id", "sentence_index", "chunk"]
    before, after = before.sort_by([(k, "ascending") for k in key]), after.sort_by([(k, "ascending") for k in key])
    assert before.select(key).equals(after.select(key))
    assert not pc.all(pc.equal(before["sentence_embedding"].combine_chunks().flatten(),
                               after["sentence_embedding"].combine_chunks().flatten())).as_py()
    _check_postprocessing(out)  # fitted on the re-embedded vectors only


# ---- the post-processing of a version, step by step (no Ray) ------------------------------

def test_version_postprocessing_carries_over_and_drops(tmp_path):
    """Unchanged files' moments carried over (from the previous version's, minus the dropped
    files' shards, or summed over their shards), new units' from their run's moments or shards."""
    from elmo_dist import schema as S
    from elmo_dist.checkpoint import JobState
    from elmo_dist.stages.write import write_unit

    out, dim = str(tmp_path / "out"), 4
    fs = pafs.LocalFileSystem()
    rng = np.random.default_rng(0)
    vecs = {}

    def unit(uid, n):
        vecs[uid] = (rng.standard_normal((n, dim)) + 3.0).astype(np.float32)
        table = pa.table({S.ID: [f"{uid}-{i}" for i in range(n)], S.SENTENCE_INDEX: pa.array([0] * n, pa.int32()),
                          S.CHUNK: pa.array([0] * n, pa.int32()), S.N_CHUNKS: pa.array([1] * n, pa.int32()),
                          S.SOURCE: [uid] * n, S.TEXT: ["x"] * n, S.TOKENS: [["x"]] * n,
                          S.N_TOKENS: pa.array([1] * n, pa.int32()),
                          S.SENTENCE_EMBEDDING: vecs[uid].tolist()})
        return {"files": write_unit(table, out, uid, S.output_schema(dim), subdir="data/cf")}

    def check(entry, uids):
        want = Moments.of(np.concatenate([vecs[u] for u in uids]))
        got = Moments.from_bytes(open(os.path.join(out, entry["moments"]), "rb").read())
        assert got.n == want.n == entry["n"]
        np.testing.assert_allclose(got.total, want.total, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.outer, want.outer, rtol=0, atol=1e-6)
        pp = Postprocessor.from_bytes(open(os.path.join(out, entry["postprocessor"]), "rb").read())
        np.testing.assert_allclose(pp.mean, Postprocessor.fit(want).mean, rtol=0, atol=1e-6)
        assert pp.fingerprint() == entry["fingerprint"]

    # version 1: a (20 rows), b, c (5 each); no moments files: computed from the shards
    records = {u: unit(u, n) for u, n in (("ua", 20), ("ub", 5), ("uc", 5))}
    v1 = version_postprocessing(out, fs, out, None, Diff(["a", "b", "c"], [], [], []), False,
                                ["ua", "ub", "uc"], records, {})
    check(v1, ["ua", "ub", "uc"])
    inputs = {k: {"rows": len(vecs[u]), "units": [u], "files": [f["path"] for f in records[u]["files"]]}
              for k, u in (("a", "ua"), ("b", "ub"), ("c", "uc"))}
    current = {"version": 1, "inputs": inputs, "postprocessing": v1}
    # version 2: b changed (unit ub2, its moments written by its run), c deleted, a unchanged:
    # v1's moments minus b's and c's shards, plus ub2's moments file
    new = {"ub2": unit("ub2", 7)}
    JobState(out, "_refresh/run2").write_unit_moments("ub2", Moments.of(vecs["ub2"]).to_bytes())
    diff = Diff([], ["b"], ["c"], ["a"])
    v2 = version_postprocessing(out, fs, out, current, diff, False, ["ub2"], new, {"ub2": "_refresh/run2"})
    check(v2, ["ua", "ub2"])
    # the moments file of a unit is what is used (not its shards)
    JobState(out, "_refresh/run3").write_unit_moments("ub2", Moments.of(vecs["ub2"][:3]).to_bytes())
    partial = version_postprocessing(out, fs, out, current, diff, False, ["ub2"], new, {"ub2": "_refresh/run3"})
    assert partial["n"] == 20 + 3
    # the previous version without stored moments: a's summed from its shards, the same result
    v2b = version_postprocessing(out, fs, out, {**current, "postprocessing": None}, diff, False, ["ub2"], new, {})
    check(v2b, ["ua", "ub2"])
    # a full re-embed: the new units only
    full = version_postprocessing(out, fs, out, current, Diff([], [], [], ["a", "b", "c"]), True, ["ub2"], new, {})
    check(full, ["ub2"])
    # fewer than 2 vectors: none
    one = {"u1": unit("u1", 1)}
    assert version_postprocessing(out, fs, out, None, Diff(["z"], [], [], []), False, ["u1"], one, {}) is None
