"""Integrity of the corpus job, on a real local Ray runtime: broken records and shards are noticed
and redone, unfinished outputs are refused, precision is fingerprinted, input is pinned, one driver
per output, bad input is found before any work, and no secret is written anywhere."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_corpus
from elmo_dist import read_embeddings
from elmo_dist import schema as S
from elmo_dist.checkpoint import JobState, ResumeError
from elmo_dist.cli import main
from elmo_dist.config import JobConfig
from elmo_dist.lease import LEASE, LeaseHeld
from elmo_dist.output import IncompleteOutputError, verify
from elmo_dist.pipeline import IncompleteJobError, run
from elmo_dist.stages.read import InputChangedError, InputError

pytestmark = pytest.mark.ray


def _cfg(inputs, output, address, **kw):
    base = {"text.id_column": "id", "run.rows_per_unit": 5, "run.address": address}
    base.update(kw)
    return JobConfig.build(inputs=[str(i) for i in inputs], output=str(output), **base)


def _keys(table):
    return list(zip(table[S.ID].to_pylist(), table[S.SENTENCE_INDEX].to_pylist(), table[S.CHUNK].to_pylist()))


def _vectors(out):
    t = read_embeddings(str(out)).to_table()
    keys = _keys(t)
    assert len(set(keys)) == len(keys), "a sentence appears twice"
    vecs = np.stack(t[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False))
    return dict(zip(keys, vecs))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_rows):
    d = tmp_path_factory.mktemp("icorpus")
    rows = sample_rows[:20]
    write_corpus(d / "a.parquet", rows[:10], row_group_size=5)
    write_corpus(d / "b.parquet", rows[10:], row_group_size=5)
    return d, rows


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory, tiny_dir, ray_runtime):
    """A finished job output (4 units) and its vectors; tests work on copies."""
    d, _ = corpus
    out = tmp_path_factory.mktemp("ifinished") / "out"
    cfg = _cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime)
    summary = run(cfg, tiny_dir)
    assert summary["units"] == 4
    return out, _vectors(out)


def _copy(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    return out


def test_actors_tokenize_like_the_library(finished, corpus):
    """Each actor prepares one unit while embedding another: the tokens must be exactly what the
    tokenizer gives on its own (the splitters and the Moses tokenizer are not thread-safe)."""
    from elmo_dist.config import TextSettings
    from elmo_dist.stages.prepare import tokenizer_for

    _, rows = corpus
    t = read_embeddings(str(finished[0])).to_table().sort_by([(S.ID, "ascending"), (S.SENTENCE_INDEX, "ascending"),
                                                               (S.CHUNK, "ascending")])
    got: dict[str, list] = {}
    for i, chunk, toks in zip(t[S.ID].to_pylist(), t[S.CHUNK].to_pylist(), t[S.TOKENS].to_pylist()):
        sentences = got.setdefault(i, [])
        if chunk:  # a long sentence was cut into chunks: join them back
            sentences[-1] = sentences[-1] + toks
        else:
            sentences.append(toks)
    tok = tokenizer_for(TextSettings())
    assert got == {i: tok(text) for i, text in rows if tok(text)}


def test_postprocessor_is_fitted_on_the_output(finished):
    from elmo_dist.similarity import Postprocessor

    out, vecs = finished
    pp = JobState(str(out)).postprocessor()
    assert pp is not None and pp.method == "center" and pp.n == len(vecs)
    x = np.stack(list(vecs.values()))
    np.testing.assert_allclose(pp.mean, x.mean(axis=0), atol=1e-5)
    ref = Postprocessor.fit(x, "abtt", k=2).transform(x)
    from elmo_dist.similarity import Moments

    m = Moments.from_bytes((out / "_job" / "moments.npz").read_bytes())
    np.testing.assert_allclose(Postprocessor.fit(m, "abtt", k=2).transform(x), ref, atol=1e-4)
    assert json.load(open(out / "_job" / "stats.json"))["postprocessor"] == "center"


def test_search_post_processes_by_default(finished, tiny_dir, capsys):
    from elmo_dist.search import SearchError, search

    out, _ = finished
    t = read_embeddings(str(out)).to_table()
    texts = t[S.TEXT].to_pylist()
    query = next(x for x in texts if texts.count(x) == 1 and len(x.split()) > 5)
    by = {}
    for pp in (None, "none", "center", "abtt", "whiten"):
        hits = search(str(out), [query], k=3, model=tiny_dir, postprocess=pp)[0]
        assert hits[0].text == query and abs(hits[0].score - 1) < 1e-4, pp  # the query itself first
        by[pp] = hits
    # the default is the job's fitted post-processor (mean-centering): it spreads the scores out
    assert [h.score for h in by[None]] == [h.score for h in by["center"]]
    assert by[None][1].score < by["none"][1].score
    with pytest.raises(SearchError, match="postprocess must be one of"):
        search(str(out), [query], model=tiny_dir, postprocess="pca")
    assert main(["search", str(out), query, "--model", tiny_dir, "--postprocess", "abtt", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["text"] == query


def test_records_list_shards_with_size_rows_and_node(finished):
    out, vecs = finished
    records = JobState(str(out)).records()
    assert len(records) == 4
    for r in records:
        for f in r["files"]:
            assert f["size"] == os.path.getsize(out / f["path"])
            assert f["rows"] == pq.ParquetFile(out / f["path"]).metadata.num_rows
        assert r["node"]["host"] == socket.gethostname() and r["node"]["node_id"] and r["node"]["device"] == "cpu"
    assert sum(f["rows"] for r in records for f in r["files"]) == len(vecs)
    report = verify(str(out), deep=True)
    assert report.ok and report.units_done == report.units_planned == 4 and report.rows == len(vecs)
    stats = json.load(open(out / "_job" / "stats.json"))
    assert stats["duplicate_ids"] == 0 and len(stats["runs"]) == 1 and stats["runs"][0]["units"] == 4


def test_status_of_a_finished_job(finished, capsys):
    from elmo_dist.output import status

    out, vecs = finished
    st = status(str(out))
    assert st["complete"] and st["units_done"] == st["units_planned"] == 4 and st["sentences"] == len(vecs)
    (node,) = st["per_node"]  # one Ray node here, named host/node id
    assert node.startswith(socket.gethostname() + "/") and st["per_node"][node]["units"] == 4
    assert st["running"] is None and st["runs"][0]["units"] == 4 and st["runs"][0]["tokens_per_second"] > 0
    assert main(["status", str(out)]) == 0
    assert "4 of 4 units done (complete)" in capsys.readouterr().out


def test_torn_record_is_redone(finished, corpus, tmp_path, tiny_dir, ray_runtime, capsys):
    d, _ = corpus
    out = _copy(finished, tmp_path)
    torn = sorted((out / "_job" / "units").glob("*.json"))[1]
    torn.write_bytes(b"")  # a record truncated to 0 bytes
    assert main(["verify", str(out)]) == 1
    assert "unreadable JSON" in capsys.readouterr().out
    summary = run(_cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime), tiny_dir)
    assert summary["units_this_run"] == 1 and summary["units"] == 4
    assert json.loads(torn.read_text())["files"]
    again = _vectors(out)
    assert again.keys() == finished[1].keys()
    for k, v in finished[1].items():
        np.testing.assert_allclose(again[k], v, atol=1e-6, rtol=0)
    assert main(["verify", str(out), "--deep"]) == 0
    stats = json.load(open(out / "_job" / "stats.json"))
    assert [r["units"] for r in stats["runs"]] == [4, 1]
    # the post-processing statistics are those of a run in one go (each unit counted once)
    from elmo_dist.similarity import Moments

    whole = Moments.from_bytes((finished[0] / "_job" / "moments.npz").read_bytes())
    again_m = Moments.from_bytes((out / "_job" / "moments.npz").read_bytes())
    assert again_m.n == whole.n == len(finished[1])
    # to float32 precision: the redone unit's vectors are recomputed (equal to ~1e-7, as above, not
    # bit for bit: BLAS may take another path for other buffer alignments); a unit counted twice or
    # missing would move these sums by a quarter
    np.testing.assert_allclose(again_m.outer, whole.outer, rtol=1e-6)
    np.testing.assert_allclose(again_m.total, whole.total, rtol=1e-6)


def test_cut_shard_is_noticed_and_redone(finished, corpus, tmp_path, tiny_dir, ray_runtime):
    d, _ = corpus
    out = _copy(finished, tmp_path)
    rec = JobState(str(out)).records()[2]
    shard = out / rec["files"][0]["path"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # cut in half
    report = verify(str(out))
    assert not report.ok and any("bytes, the record says" in p for p in report.problems)
    with pytest.raises(IncompleteOutputError, match="3 of 4 work units are done"):
        read_embeddings(str(out))
    summary = run(_cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime), tiny_dir)
    assert summary["units_this_run"] == 1
    assert shard.read_bytes() == data  # the same bytes again: deterministic, batch-invariant
    assert verify(str(out), deep=True).ok
    import duckdb

    assert duckdb.sql(f"select count(*) from '{out}/*.parquet'").fetchall()[0][0] == len(finished[1])


def test_unfinished_output_is_refused_by_readers(finished, tmp_path, tiny_dir):
    out = _copy(finished, tmp_path)
    for rec in sorted((out / "_job" / "units").glob("*.json"))[:3]:
        rec.unlink()  # as if the driver was killed after one unit
    with pytest.raises(IncompleteOutputError, match=r"incomplete: 1 of 4 work units are done.*allow_partial"):
        read_embeddings(str(out))
    part = read_embeddings(str(out), allow_partial=True).to_table()
    assert 0 < part.num_rows < len(finished[1])
    from elmo_dist.search import search

    with pytest.raises(IncompleteOutputError):
        search(str(out), ["Some words ."], k=2, model=tiny_dir)
    hits = search(str(out), ["Some words ."], k=2, model=tiny_dir, allow_partial=True)
    assert len(hits[0]) == 2
    assert main(["search", str(out), "Some words .", "--model", tiny_dir]) != 0
    assert main(["search", str(out), "Some words .", "--model", tiny_dir, "--allow-partial"]) == 0


def test_compute_dtype_is_fingerprinted(finished, corpus, tmp_path, tiny_dir, ray_runtime):
    d, _ = corpus
    out = _copy(finished, tmp_path)
    md = S.read_metadata(pq.read_schema(out / JobState(str(out)).records()[0]["files"][0]["path"]))
    assert md["compute_dtype"] == "float32"
    with pytest.raises(ResumeError, match=r"compute_dtype \(float32 -> bfloat16\)"):
        run(_cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime, **{"run.compute_dtype": "bfloat16"}), tiny_dir)
    a = _cfg([d / "a.parquet"], out, ray_runtime)
    assert a.fingerprint("m") != _cfg([d / "a.parquet"], out, ray_runtime, **{"run.compute_dtype": "float16"}).fingerprint("m")
    # what does not change the vectors does not change the fingerprint
    assert a.fingerprint("m") == _cfg([d / "a.parquet"], out, ray_runtime, **{"run.token_budget": 999}).fingerprint("m")


def test_other_unit_size_is_refused_with_a_hint(finished, corpus, tmp_path, tiny_dir, ray_runtime):
    d, _ = corpus
    out = _copy(finished, tmp_path)
    with pytest.raises(ResumeError, match="planned with rows_per_unit=5, now 10: rerun with --rows-per-unit 5"):
        run(_cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime, **{"run.rows_per_unit": 10}), tiny_dir)


def test_null_id_found_before_any_work(tmp_path, sample_rows, tiny_dir, ray_runtime):
    d = tmp_path / "in"
    d.mkdir()
    write_corpus(d / "1.parquet", sample_rows[:4])
    pq.write_table(pa.table({"id": ["x", None, "z"], "text": ["A b.", "C d.", "E f."]}), d / "2.parquet")
    write_corpus(d / "3.parquet", sample_rows[4:8])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"2\.parquet: id column 'id' has 1 null value"):
        run(_cfg([d], out, ray_runtime), tiny_dir)
    assert not list(out.rglob("*.parquet")) and not (out / "_job" / "plan.json").exists()


def test_duplicate_and_binary_ids(tmp_path, tiny_dir, ray_runtime):
    import uuid

    d = tmp_path / "in"
    d.mkdir()
    u = [uuid.UUID(int=i).bytes for i in range(3)]
    pq.write_table(pa.table({"id": pa.array(u + [u[0]], pa.binary(16)),
                             "text": ["One two.", "Three four.", "Five six.", "Seven."]}), d / "b.parquet")
    out = tmp_path / "out"
    summary = run(_cfg([d], out, ray_runtime, **{"run.rows_per_unit": 2}), tiny_dir)
    assert summary["duplicate_ids"] == 1
    ids = set(read_embeddings(str(out)).to_table()[S.ID].to_pylist())
    assert ids == {x.hex() for x in u}
    assert json.load(open(out / "_job" / "stats.json"))["duplicate_ids"] == 1


def test_file_rewritten_during_the_run_stops_the_job(corpus, tmp_path, tiny_dir, ray_runtime, monkeypatch, sample_rows):
    import elmo_dist.pipeline as P

    d = tmp_path / "in"
    d.mkdir()
    write_corpus(d / "a.parquet", sample_rows[:10], row_group_size=5)
    original = P.embed_units

    def rewrite_then_embed(*args, **kw):  # the file changes after planning, before any read
        time.sleep(0.05)
        write_corpus(d / "a.parquet", sample_rows[:11], row_group_size=5)
        return original(*args, **kw)

    monkeypatch.setattr(P, "embed_units", rewrite_then_embed)
    with pytest.raises(InputChangedError, match=r"a\.parquet: input file changed during the run") as e:
        run(_cfg([d], tmp_path / "out", ray_runtime), tiny_dir)
    assert "\n" not in str(e.value)


def test_records_invisible_to_the_driver_fail_loudly(corpus, tmp_path, tiny_dir, monkeypatch):
    """As with a node-local --output on a multi-node cluster: actors report units done, but the
    driver sees no record of them."""
    import elmo_dist.pipeline as P

    d, _ = corpus
    monkeypatch.setattr(P, "embed_units", lambda cfg, md, pending, state, **kw: {
        "new_units": len(pending), "new_wall": 1.0, "new_tokens": 10, "actors": {}})
    with pytest.raises(IncompleteJobError, match="4 of 4 work unit.*filesystem all nodes share"):
        run(_cfg([d / "a.parquet", d / "b.parquet"], tmp_path / "out", "unused"), tiny_dir)


def test_one_driver_per_output(finished, corpus, tmp_path, tiny_dir, ray_runtime):
    d, _ = corpus
    out = _copy(finished, tmp_path)
    cfg = _cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lease = {"owner": "other-driver@thishost:1", "token": "t", "expires": time.time() + 600,
                 "expires_at": "later", "host": socket.gethostname(), "pid": holder.pid}
        (out / LEASE).write_text(json.dumps(lease))
        with pytest.raises(LeaseHeld, match="held by other-driver@thishost:1"):
            run(cfg, tiny_dir)
    finally:
        holder.kill()
        holder.wait()
    # its holder is gone (same host): taken over at once; then released at the end
    assert run(cfg, tiny_dir)["units_this_run"] == 0
    assert not (out / LEASE).exists()
    # a live lease of another host that has expired is taken over too
    lease.update(host="elsewhere", pid=1, expires=time.time() - 1)
    (out / LEASE).write_text(json.dumps(lease))
    assert run(cfg, tiny_dir)["units_this_run"] == 0


def test_temporaries_of_killed_writers_are_removed(finished, corpus, tmp_path, tiny_dir, ray_runtime):
    d, _ = corpus
    out = _copy(finished, tmp_path)
    dead = out / f".part-dead-0000.parquet.tmp-{'b' * 32}"
    dead.write_bytes(b"half a shard")
    assert any("temporary" in n for n in verify(str(out)).notes)
    run(_cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime), tiny_dir)
    assert not dead.exists()


def test_output_inside_input_is_refused(corpus, tmp_path, tiny_dir, monkeypatch, capsys, sample_rows):
    d = tmp_path / "corpus"
    d.mkdir()
    write_corpus(d / "a.parquet", sample_rows[:3])
    monkeypatch.chdir(tmp_path)
    for cmd in ("embed", "refresh"):
        assert main([cmd, "corpus", "--output", "corpus/emb", "--model", tiny_dir]) == 2
        assert "overlap" in capsys.readouterr().err
    assert not (d / "emb").exists()


def test_hidden_directories_are_not_input(tmp_path, sample_rows):
    from elmo_dist.stages.read import list_inputs

    for sub in ("_temporary/0", ".spark-staging", "ok"):
        (tmp_path / sub).mkdir(parents=True)
        write_corpus(tmp_path / sub / "part-0.parquet", sample_rows[:2])
    assert [f.uri for f in list_inputs([str(tmp_path)])] == [str(tmp_path / "ok" / "part-0.parquet")]


@pytest.mark.s3
def test_no_secret_in_any_file_or_log(tmp_path, sample_rows, tiny_dir, ray_runtime, s3_endpoint, caplog,
                                      capsys, monkeypatch):
    import logging

    import pyarrow.fs as pafs

    secret_id, secret = "AKIAELMODISTTEST7Q", "s3cr3t-elmo-dist-7f3a9c"  # moto takes any credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", secret_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    bucket = s3_endpoint()
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint.endpoint, region="us-east-1")
    pq.write_table(pa.table({"id": [r[0] for r in sample_rows[:6]], "text": [r[1] for r in sample_rows[:6]]}),
                   f"{bucket}/in/a.parquet", filesystem=fs)
    caplog.set_level(logging.DEBUG, logger="elmo_dist")  # our log lines (botocore's own debug logs sign requests)
    cfg = _cfg([f"s3://{bucket}/in/"], f"s3://{bucket}/out", ray_runtime)
    run(cfg, tiny_dir)
    assert main(["verify", f"s3://{bucket}/out", "--deep"]) == 0
    client = s3_endpoint.client
    blobs = [client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
             for o in client.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].startswith("out/")]
    assert len(blobs) >= 4
    for blob in blobs + [caplog.text.encode()]:
        assert secret.encode() not in blob and secret_id.encode() not in blob
    # a URI carrying the secret is refused before any work, and the secret is not echoed
    code = main(["embed", f"s3://{bucket}/in/", "--output", f"s3://{secret_id}:{secret}@{bucket}/out2",
                 "--model", tiny_dir])
    err = capsys.readouterr().err
    assert code == 2 and "credentials in a URI are refused" in err
    assert secret not in err + caplog.text
