"""The corpus job on a real local Ray runtime: parity with the model, order, resume, faults, S3."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import descendants, write_corpus
from elmo_dist import Elmo, read_embeddings
from elmo_dist import schema as S
from elmo_dist.checkpoint import JobState, ResumeError
from elmo_dist.config import JobConfig
from elmo_dist.pipeline import run

pytestmark = pytest.mark.ray
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(inputs, output, address, **kw):
    base = {"text.id_column": "id", "run.rows_per_unit": 10, "run.address": address}
    base.update(kw)
    return JobConfig.build(inputs=[str(i) for i in inputs], output=str(output), **base)


def _by_key(table):
    keys = zip(table[S.ID].to_pylist(), table[S.SENTENCE_INDEX].to_pylist(), table[S.CHUNK].to_pylist())
    return {k: i for i, k in enumerate(keys)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_rows):
    d = tmp_path_factory.mktemp("corpus")
    rows = sample_rows[:36]
    write_corpus(d / "a.parquet", rows[:20])
    write_corpus(d / "b.parquet", rows[20:])
    rng = np.random.default_rng(1)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    (d / "shuffled").mkdir()
    write_corpus(d / "shuffled" / "all.parquet", shuffled, row_group_size=7)
    return d, rows


def test_job_equals_model_and_is_order_free(corpus, tmp_path, tiny_dir, ray_runtime):
    d, rows = corpus
    out = tmp_path / "out"
    cfg = _cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime,
               **{"embedding.token_embeddings": True, "run.token_budget": 300, "text.max_sentence_tokens": 40})
    summary = run(cfg, tiny_dir)
    assert summary["units"] == 4 and summary["rows"] == 36
    t = read_embeddings(str(out)).to_table()
    assert t.num_rows == summary["sentences"]
    assert len(_by_key(t)) == t.num_rows  # every sentence exactly once

    # The job's vectors equal Elmo.embed_batch on the same sentences.
    elmo = Elmo.from_pretrained(tiny_dir)
    tokens = t[S.TOKENS].to_pylist()
    layers, mask = elmo.embed_batch(tokens)
    mix = layers.mean(axis=1)  # default scalar mix: equal weights, gamma 1
    sent = np.stack(t[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False))
    expected = np.stack([mix[i, : len(tok)].mean(axis=0) for i, tok in enumerate(tokens)])
    np.testing.assert_allclose(sent, expected, atol=1e-5, rtol=0)
    tok_vecs = t[S.TOKEN_EMBEDDINGS].to_pylist()
    for i in (0, 7, len(tokens) - 1):
        np.testing.assert_allclose(np.array(tok_vecs[i]), mix[i, : len(tokens[i])], atol=1e-5, rtol=0)

    # Metadata: model fingerprint and settings, readable without custom code.
    md = S.read_metadata(pq.read_schema(str(out / JobState(str(out)).records()[0]["files"][0]["path"])))
    assert md["model"]["fingerprint"] == elmo.fingerprint and md["embedding"]["pooling"] == "mean"
    stats = json.load(open(out / "_job" / "stats.json"))
    assert stats["sentences"] == t.num_rows and 0 <= stats["padding_ratio"] < 1

    # Shuffled input (other file, other row groups): every row's vectors are unchanged.
    out2 = tmp_path / "out2"
    run(_cfg([d / "shuffled"], out2, ray_runtime, **{"run.token_budget": 120, "text.max_sentence_tokens": 40}), tiny_dir)
    t2 = read_embeddings(str(out2)).to_table()
    k1, k2 = _by_key(t), _by_key(t2)
    assert set(k1) == set(k2)
    s2 = np.stack(t2[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False))
    idx = [k2[k] for k in k1]
    np.testing.assert_allclose(s2[idx], sent, atol=1e-5, rtol=0)

    # Rerunning a finished job does nothing; another config or model is refused.
    again = run(cfg, tiny_dir)
    assert again["units_this_run"] == 0 and again["sentences"] == t.num_rows
    with pytest.raises(ResumeError, match="another configuration.*embedding"):
        run(_cfg([d / "a.parquet", d / "b.parquet"], out, ray_runtime,
                 **{"embedding.token_embeddings": True, "embedding.pooling": "max", "text.max_sentence_tokens": 40}), tiny_dir)


def test_duckdb_and_pandas_read_output(corpus, tmp_path, tiny_dir, ray_runtime):
    d, _ = corpus
    out = tmp_path / "out"
    run(_cfg([d / "a.parquet"], out, ray_runtime, **{"embedding.dtype": "float16"}), tiny_dir)
    duckdb = pytest.importorskip("duckdb")
    [(n, dim)] = duckdb.sql(f"select count(*), max(len(sentence_embedding)) from '{out}/*.parquet'").fetchall()
    assert n > 0 and dim == 32
    import pandas as pd

    df = pd.read_parquet(str(out))
    assert len(df) == n and df["sentence_embedding"].iloc[0].dtype == np.float16


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "elmo_dist", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_driver_then_resume_exactly_once(corpus, tmp_path, tiny_dir, ray_runtime):
    d, rows = corpus
    out = tmp_path / "out"
    args = ["embed", str(d / "a.parquet"), str(d / "b.parquet"), "--output", str(out), "--model", tiny_dir,
            "--id-column", "id", "--rows-per-unit", "3", "--num-actors", "1", "--address", ray_runtime]
    proc = _cli(args)
    units_dir = out / "_job" / "units"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if units_dir.exists() and len(list(units_dir.glob("*.json"))) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGKILL)  # kill the driver mid-run
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in units_dir.glob("*.json")}
    total_units = len(json.load(open(out / "_job" / "plan.json"))["units"])
    assert 2 <= len(before) < total_units

    proc = _cli(args)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    after = {p.name: p.stat().st_mtime_ns for p in units_dir.glob("*.json")}
    assert len(after) == total_units
    # Units finished before the kill were not redone (their records were not rewritten) ...
    assert all(after[name] == mtime for name, mtime in before.items())
    # ... and the resume embedded exactly the units it found undone (a unit in flight at the kill
    # may still have finished while Ray cleaned up the dead driver's workers).
    m = re.search(r"(\d+) work units \((\d+) done, (\d+) to do\) - resuming", log)
    assert m and int(m.group(1)) == total_units and int(m.group(2)) >= len(before)
    summary = json.loads(log[log.index("{\n"):])
    assert summary["units_this_run"] == int(m.group(3)) == total_units - int(m.group(2))
    t = read_embeddings(str(out)).to_table()
    assert len(_by_key(t)) == t.num_rows == summary["sentences"]
    assert set(t[S.ID].to_pylist()) == {r[0] for r in rows}

    proc = _cli(args)  # and a finished job does nothing, and says so
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "nothing to do" in log


def _actor_pids(name: str) -> list[int]:
    """PIDs of Ray worker processes whose title names ``name`` (Ray sets ray::<actor> titles) and
    that descend from this test process (the session's Ray runtime): never anyone else's."""
    pids = []
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if name.encode() in fh.read():
                    pids.append(pid)
        except OSError:
            pass
    return pids


def test_actor_crash_is_retried(corpus, tmp_path, tiny_dir, ray_runtime):
    d, rows = corpus
    out = tmp_path / "out"
    proc = _cli(["embed", str(d / "a.parquet"), "--output", str(out), "--model", tiny_dir, "--id-column", "id",
                 "--rows-per-unit", "2", "--num-actors", "1", "--address", ray_runtime])
    killed, deadline = None, time.time() + 240
    while killed is None and time.time() < deadline and proc.poll() is None:
        if (out / "_job" / "units").exists():
            for pid in _actor_pids("EmbedWriter"):
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.3)
    assert killed, "no embedding actor seen"
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    t = read_embeddings(str(out)).to_table()
    assert len(_by_key(t)) == t.num_rows
    assert set(t[S.ID].to_pylist()) == {r[0] for r in rows[:20]}


def test_logical_gpu_is_requested_and_cpu_fallback(corpus, tmp_path, tiny_dir):
    """A runtime that declares a logical GPU: the pool asks for it with the node's CPUs per GPU, and
    all but one of them tokenize in processes (row slices, same sentences); without CUDA the model
    runs on the CPU."""
    from elmo_dist.config import TextSettings
    from elmo_dist.stages.prepare import prepare

    d, _ = corpus
    out = tmp_path / "out"
    code = f"""
import json, logging, ray, warnings
logging.basicConfig(level=logging.INFO)
ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
from elmo_dist.config import JobConfig
from elmo_dist.pipeline import run
cfg = JobConfig.build(inputs=[{str(d / 'a.parquet')!r}], output={str(out)!r}, **{{"text.id_column": "id"}})
print("SUMMARY", json.dumps(run(cfg, {tiny_dir!r})))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout.split("SUMMARY", 1)[1])
    assert summary["actors"]["num_gpus"] == 1.0
    assert summary["actors"]["num_cpus"] == 4 and summary["actors"]["prepare_processes"] == 3
    assert summary["actors"]["threads"] == 1
    rec = JobState(str(out)).records()[0]["stats"]
    assert rec["prepare_parts"] == 3  # the unit was prepared in 3 row slices by Ray tasks on the node
    assert "Traceback" not in res.stderr
    assert rec["device"] == "cpu" and rec["gpu_ids"] == [0]
    assert "CUDA is not available" in res.stdout + res.stderr
    raw = pq.read_table(d / "a.parquet")  # 20 rows: 3 slices of 6-7 rows
    raw = raw.append_column(S.SOURCE, pa.array(["a"] * raw.num_rows)).append_column(
        S.ROW, pa.array(range(raw.num_rows), pa.int64()))
    expected, _ = prepare(raw, TextSettings(id_column="id"))
    t = read_embeddings(str(out)).to_table()
    assert sorted(zip(t[S.ID].to_pylist(), t[S.SENTENCE_INDEX].to_pylist())) == sorted(
        zip(expected[S.ID].to_pylist(), expected[S.SENTENCE_INDEX].to_pylist()))


def test_s3_input_and_output(tmp_path, sample_rows, tiny_dir, ray_runtime, s3_endpoint):
    import pyarrow.fs as pafs

    bucket = s3_endpoint()
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint.endpoint, region="us-east-1")
    write_corpus(f"{bucket}/corpus/a.parquet", sample_rows[:12], filesystem=fs)
    write_corpus(f"{bucket}/corpus/b.parquet", sample_rows[12:20], filesystem=fs)
    out = f"s3://{bucket}/emb"
    summary = run(_cfg([f"s3://{bucket}/corpus/"], out, ray_runtime), tiny_dir)
    assert summary["rows"] == 20
    t = read_embeddings(out).to_table()
    assert t.num_rows == summary["sentences"] and len(_by_key(t)) == t.num_rows
    assert t[S.SOURCE].to_pylist()[0].startswith(f"s3://{bucket}/corpus/")
    again = run(_cfg([f"s3://{bucket}/corpus/"], out, ray_runtime), tiny_dir)
    assert again["units_this_run"] == 0


def test_sif_pooling_uses_the_models_word_frequencies(corpus, tmp_path, tiny_dir, ray_runtime):
    """--pooling sif: the mean of a/(a+p(w))-weighted token vectors, p from the model's frequencies.tsv;
    refused before any work when the model has none; the frequencies enter the job's fingerprint."""
    import shutil

    from elmo_dist.config import ConfigError

    d, rows = corpus
    with pytest.raises(ConfigError, match="pooling 'sif' needs word frequencies.*frequencies.tsv"):
        run(_cfg([d / "a.parquet"], tmp_path / "refused", ray_runtime, **{"embedding.pooling": "sif"}), tiny_dir)
    assert not (tmp_path / "refused" / "_job" / "units").exists()

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    counts = {"the": 500, ",": 400, ".": 300, "of": 200, "and": 150, "a": 100, "was": 50, "Mr": 5}
    (model / "frequencies.tsv").write_text("".join(f"{w}\t{c}\n" for w, c in counts.items()))
    out = tmp_path / "sif"
    run(_cfg([d / "a.parquet"], out, ray_runtime, **{"embedding.pooling": "sif"}), str(model))
    t = read_embeddings(str(out)).to_table()
    tokens = t[S.TOKENS].to_pylist()
    elmo = Elmo.from_pretrained(str(model))
    layers, _ = elmo.embed_batch(tokens)
    mix = layers.mean(axis=1)  # (B, T, D)
    total, a = sum(counts.values()), 1e-3
    expected = []
    for i, tok in enumerate(tokens):  # reference math: unseen words weigh as a word counted once
        w = np.array([a / (a + counts.get(x, 1) / total) for x in tok])
        expected.append((mix[i, : len(tok)] * w[:, None]).sum(axis=0) / len(tok))
    sent = np.stack(t[S.SENTENCE_EMBEDDING].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(sent, np.stack(expected), atol=1e-5, rtol=0)
    api = np.stack(list(elmo.embed_sentences(tokens, pooling="sif")))
    np.testing.assert_allclose(api, sent, atol=1e-5, rtol=0)

    (model / "frequencies.tsv").write_text("".join(f"{w}\t{c * 2 + 1}\n" for w, c in counts.items()))
    with pytest.raises(ResumeError, match="another configuration"):
        run(_cfg([d / "a.parquet"], out, ray_runtime, **{"embedding.pooling": "sif"}), str(model))
