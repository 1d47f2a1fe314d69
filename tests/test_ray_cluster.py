"""The README's cluster path, end to end, against a head started with `ray start --head`.

    ray start --head ...
    elmo-dist embed INPUT --output DIR --address auto        (or --address HOST:PORT)
    ray job submit --working-dir . -- python jobs/embed_corpus.py INPUT --output DIR

The head is this module's own: its own --temp-dir and its own ports (the defaults -- GCS 6379,
dashboard 8265, dashboard agent 52365 -- may belong to other Ray runtimes on the machine), its own
token file (Ray 2.60 turns token authentication on), and it is torn down by killing only its own
processes (never `ray stop`, which stops every Ray process on the machine).

Two things this guards, both of which show up as `ray job submit` failing with
"No available agent to submit job":
  * a dashboard-agent port already taken by another runtime (the agent then runs without its HTTP
    server), hence fresh ports for everything;
  * Ray 2.60's raylet gives the dashboard agent a fixed 15 s to write its port files and aborts when
    it is late (ray-project/ray#65983, not configurable); on a loaded machine that happens, `ray start`
    fails with "The current node timed out during startup" and leaves the GCS and dashboard running.
    The fixture retries the head start (fresh temp dir and ports) and reports the raylet's reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to tear the head down"),
]

REPO = Path(__file__).resolve().parents[1]
CORPUS_REL = "elmo_dist/data/sample_corpus.parquet"
MODEL_REL = "tests/fixtures/elmo-tiny-f1"
RUN_TIMEOUT = 480


# the head and process helpers live in tests/raycluster.py (shared with test_multinode.py and bench/chaos.py)
from raycluster import Head, _head_pids, _tool, ray_env  # noqa: E402


@pytest.fixture(scope="module")
def ray_head():
    root = Path(tempfile.mkdtemp(prefix="elmo-ray-", dir="/tmp"))  # short: AF_UNIX paths max 107 bytes
    env = ray_env(root)  # a private token, token auth, no S3 settings: the head's node knows none
    head = Head(root, env)
    try:
        head.start()
        print("ray head:", *head.attempts, sep="\n  ")
        yield head
    finally:
        head.stop()
        left = _head_pids(head.markers) if head.markers else set()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"head processes left behind: {sorted(left)}"


def _run(cmd: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _check_output(out_dir: Path) -> None:
    from elmo_dist import read_embeddings

    assert read_embeddings(str(out_dir)).to_table().num_rows > 0


def _drivers(head: Head) -> list[str]:
    """Entrypoints of the jobs (drivers and submissions) the head has seen."""
    r = _run([_tool("ray"), "list", "jobs", "--format", "json", "--limit", "1000"],
             {**head.env, "RAY_ADDRESS": head.gcs_address}, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return [j.get("entrypoint") or "" for j in json.loads(r.stdout)]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("how", ["explicit", "auto"])
def test_embed_joins_the_head(ray_head, tmp_path, how):
    """`elmo-dist embed --address HOST:PORT`, and `--address auto` with RAY_ADDRESS naming the head
    (with several runtimes on the machine, a bare `auto` may pick any of them)."""
    out = tmp_path / "out"
    env = dict(ray_head.env)
    if how == "auto":
        env["RAY_ADDRESS"] = ray_head.gcs_address
        address = "auto"
    else:
        address = ray_head.gcs_address
    r = _run([_tool("elmo-dist"), "embed", CORPUS_REL, "--output", str(out), "--id-column", "id",
              "--model", MODEL_REL, "--address", address], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_output(out)
    assert any(str(out) in e for e in _drivers(ray_head)), "the run did not join this head"


@pytest.mark.s3
@pytest.mark.timeout(1200)
def test_s3_from_workers_of_a_node_started_without_aws_settings(ray_head, tmp_path, s3_endpoint):
    """The head was started with no AWS_* variables (its workers cannot find the moto endpoint on
    their own); the driver has them and passes them on: S3 in and out works from the actors."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    assert not any(k.startswith("AWS_") for k in ray_head.env)
    bucket = s3_endpoint()
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint.endpoint, region="us-east-1")
    sample = pq.read_table(REPO / CORPUS_REL).slice(0, 12)
    pq.write_table(sample, f"{bucket}/in/a.parquet", filesystem=fs)
    env = {**ray_head.env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    r = _run([_tool("elmo-dist"), "embed", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/out",
              "--id-column", "id", "--model", MODEL_REL, "--address", ray_head.gcs_address], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from elmo_dist import read_embeddings

    assert set(read_embeddings(f"s3://{bucket}/out").to_table()["id"].to_pylist()) == set(sample["id"].to_pylist())
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in r.stdout + r.stderr


@pytest.mark.timeout(1200)
def test_job_submit(ray_head, tmp_path):
    """`ray job submit --working-dir . -- python jobs/embed_corpus.py ...` from the repo root."""
    out = tmp_path / "out"
    cmd = [_tool("ray"), "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", ".",
           "--", "python", "jobs/embed_corpus.py", CORPUS_REL, "--output", str(out), "--id-column", "id",
           "--model", MODEL_REL]
    for _ in range(3):
        r = _run(cmd, ray_head.env)
        text = r.stdout + r.stderr
        if "No available agent" not in text:
            break
        time.sleep(10)  # the head's dashboard agent is not registered yet; nothing was submitted
    assert r.returncode == 0 and "succeeded" in text, text[-4000:]
    _check_output(out)
    assert any("jobs/embed_corpus.py" in e and str(out) in e for e in _drivers(ray_head))


def test_working_dir_upload_leaves_out_the_venv():
    """What `--working-dir .` uploads: .gitignore and Ray's default excludes keep .venv/ out."""
    import zipfile

    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as d:
        pkg = Path(d) / "pkg.zip"
        create_package(str(REPO), pkg, include_gitignore=True, excludes=get_runtime_env_default_excludes())
        names = zipfile.ZipFile(pkg).namelist()
        size_mib = pkg.stat().st_size / 2**20
    assert not [n for n in names if n.startswith((".venv/", ".git/"))]
    assert "jobs/embed_corpus.py" in names and f"{MODEL_REL}/weights.hdf5" in names
    assert size_mib < 100, f"working_dir package is {size_mib:.0f} MiB"
