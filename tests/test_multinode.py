"""`elmo-dist embed` on a real multi-node Ray cluster on this machine (tests/raycluster.py): a head
with no CPUs (it holds the GCS and the driver's raylet) and two worker nodes of 1 CPU each, every
node its own `ray start` with its own temp dir and ports, token auth, all on loopback (127.0.0.2:
Ray rewrites 127.0.0.1 to the interface address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which
in turn forbids worker nodes). All nodes share this machine's disk, so a local --output is shared.

  * the job spreads over both workers (completion records name two node ids);
  * a worker's raylet SIGKILLed mid-run: the run finishes or fails with a one-line error, and a
    rerun leaves every sentence exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raycluster import Cluster, _tool

pytestmark = [  # the spread run and its status checks are in the default run; the fault drills are slow
    pytest.mark.ray,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to find and stop Ray processes"),
]

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "elmo_dist" / "data" / "sample_corpus.parquet"
MODEL = REPO / "tests" / "fixtures" / "elmo-tiny-f1"
ROWS = 60
ROWS_PER_UNIT = 3
RUN_TIMEOUT = 480
KEY = ("id", "sentence_index", "chunk")


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(workers=2, head_cpus=0, worker_cpus=1, object_store_mb=200)
    try:
        c.start()
        print("ray cluster:", *c.log, sep="\n  ")
        yield c
    finally:
        left = c.close()
        assert not left, f"cluster processes left behind: {left}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(CORPUS)
    ids, texts = t["id"].to_pylist(), t["text"].to_pylist()
    rows = [(ids[i % len(ids)] + (f"~r{i // len(ids)}" if i >= len(ids) else ""), texts[i % len(ids)])
            for i in range(ROWS)]
    path = tmp_path_factory.mktemp("corpus") / "part-0.parquet"
    pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), path, row_group_size=5)
    return path


def embed_cmd(corpus: Path, out: Path, address: str) -> list[str]:
    return [_tool("elmo-dist"), "embed", str(corpus), "--output", str(out), "--id-column", "id",
            "--model", str(MODEL), "--address", address, "--cpus-per-actor", "1",
            "--rows-per-unit", str(ROWS_PER_UNIT)]


def run_embed(cluster: Cluster, corpus: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(embed_cmd(corpus, out, cluster.gcs_address), cwd=REPO, env=cluster.env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def keys(out: Path) -> list[tuple]:
    from elmo_dist import read_embeddings

    t = read_embeddings(str(out)).to_table(columns=list(KEY))
    return list(zip(*(t[c].to_pylist() for c in KEY)))


def record_nodes(out: Path) -> list[str]:
    from elmo_dist.checkpoint import JobState

    return [r["node"]["node_id"] for r in JobState(str(out)).records()]


def unit_records(out: Path) -> int:
    units = out / "_job" / "units"
    return sum(1 for _ in units.glob("*.json")) if units.is_dir() else 0


@pytest.fixture(scope="module")
def spread_run(cluster, corpus, tmp_path_factory):
    """One uninterrupted run on both workers: the reference for the other tests."""
    out = tmp_path_factory.mktemp("spread") / "out"
    t0 = time.time()
    r = run_embed(cluster, corpus, out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"uninterrupted run on {len(cluster.workers)} workers: {time.time() - t0:.0f} s")
    return out


@pytest.mark.timeout(900)
def test_job_spreads_over_the_worker_nodes(cluster, spread_run):
    nodes = record_nodes(spread_run)
    workers = {w.node_id for w in cluster.workers}
    assert set(nodes) <= workers, f"units ran off the worker nodes: {set(nodes) - workers}"
    assert len(set(nodes)) >= 2, f"all {len(nodes)} units ran on {set(nodes)}"
    from elmo_dist.output import verify

    assert verify(str(spread_run), deep=True).ok
    ks = keys(spread_run)
    assert len(ks) == len(set(ks)), "duplicated keys"


@pytest.mark.timeout(900)
def test_status_counts_every_unit_per_node(cluster, spread_run):
    r = subprocess.run([_tool("elmo-dist"), "status", str(spread_run), "--json"], cwd=REPO, env=cluster.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    st = json.loads(r.stdout)
    assert st["complete"] and st["units_done"] == st["units_planned"]
    assert sum(c["units"] for c in st["per_node"].values()) == st["units_planned"]


@pytest.mark.timeout(900)
def test_status_per_node_tells_the_nodes_apart(cluster, spread_run):
    r = subprocess.run([_tool("elmo-dist"), "status", str(spread_run), "--json"], cwd=REPO, env=cluster.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    per_node = json.loads(r.stdout)["per_node"]
    assert len(per_node) == len(set(record_nodes(spread_run))) >= 2
    for name, c in per_node.items():  # how busy the model kept each node (tiny units: overheads show)
        assert 0 < c["model_busy"] <= 1.05, (name, c)
    print("per node:", json.dumps(per_node))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_worker_raylet_killed_mid_run_then_rerun_is_exactly_once(cluster, corpus, spread_run, tmp_path):
    from elmo_dist.output import verify

    out = tmp_path / "out"
    log = tmp_path / "killed-run.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(embed_cmd(corpus, out, cluster.gcs_address), cwd=REPO, env=cluster.env,
                                stdout=fh, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + RUN_TIMEOUT
        while unit_records(out) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, f"the run ended before any kill (rc {proc.returncode}):\n{log.read_text()[-2000:]}"
        at_kill = unit_records(out)
        victim = cluster.workers[0]
        pid = cluster.kill_raylet(victim)
        t_kill = time.time()
        rc = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    print(f"raylet {pid} of {victim} killed at {at_kill} unit record(s); run ended rc {rc} "
          f"{time.time() - t_kill:.0f} s later")
    if rc != 0:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        assert last.startswith("elmo-dist: error: "), f"no clear one-line error:\n{text[-4000:]}"
        assert "Traceback" not in text, text[-4000:]
        print("error:", last)
    cluster.sweep(victim)  # whatever of the killed node did not exit by itself

    # a rerun on the remaining worker finishes the output
    r = run_embed(cluster, corpus, out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ks = keys(out)
    dup = len(ks) - len(set(ks))
    assert dup == 0, f"{dup} duplicated key(s)"
    expected = set(keys(spread_run))
    assert set(ks) == expected, f"lost {len(expected - set(ks))}, unexpected {len(set(ks) - expected)}"
    report = verify(str(out), deep=True)
    assert report.ok, report.problems
    print("units per node:", {n[:8]: record_nodes(out).count(n) for n in set(record_nodes(out))})

    # a replacement worker joins; the cluster is whole again for later tests
    cluster.add_worker()
    assert len(cluster.alive_nodes()) == 3


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_device_gpu_waits_for_a_gpu_node_and_never_falls_back_to_the_cpu(cluster, corpus, tmp_path):
    """`--device gpu` on a cluster with no GPU yet: the job plans GPU actors and waits (an autoscaler
    would add GPU nodes); when a node declaring a GPU joins, its actor finds no CUDA device here and
    the job fails in one line instead of embedding on the CPU. (Runs last: it adds a node.)"""
    out = tmp_path / "out"
    log = tmp_path / "gpu-run.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(embed_cmd(corpus, out, cluster.gcs_address) + ["--device", "gpu"], cwd=REPO,
                                env=cluster.env, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        time.sleep(15)
        assert proc.poll() is None, f"the job did not wait for a GPU node:\n{log.read_text()[-2000:]}"
        assert unit_records(out) == 0  # nothing was embedded on the CPU meanwhile
        cluster.add_worker(extra=("--num-gpus", "1"))
        rc = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert rc == 2 and "sees no CUDA device" in text and "not embedding on the CPU" in text, text[-3000:]
    assert unit_records(out) == 0
