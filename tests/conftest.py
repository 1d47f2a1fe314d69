import json
import os
import sys

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# The build tooling in tools/ (not part of the installed package) is imported by module name in
# tests/tools/; set here, in the one conftest, so that `conftest` always names this module.
_TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)
TINY = os.path.join(FIXTURES, "elmo-tiny-f1")


@pytest.fixture(scope="session")
def tiny_dir() -> str:
    """The tiny ELMo (official layout) whose reference outputs AllenNLP 2.10.1 computed."""
    return TINY


@pytest.fixture(scope="session")
def tiny_ref():
    ref = np.load(os.path.join(TINY, "reference.npz"))
    sents = json.load(open(os.path.join(TINY, "sentences.json")))["sentences"]
    return sents, ref


@pytest.fixture(scope="session")
def tiny_elmo(tiny_dir):
    from elmo_dist import Elmo

    return Elmo.from_pretrained(tiny_dir)


def descendants(root: int) -> list[int]:
    """PIDs of every live descendant of process ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_runtime(s3_endpoint):
    """One local Ray runtime for the session (4 logical CPUs so actors and read tasks never starve).

    Started after the S3 endpoint: Ray workers inherit the AWS_* settings present at ray.init.
    """
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ctx = ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING",
                   configure_logging=False, _node_ip_address="127.0.0.1")
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on loopback (moto's server), with test credentials in the environment.

    Returns a function making a fresh bucket: ``bucket = s3_endpoint()``.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    counter = iter(range(10_000))

    def make_bucket(prefix: str = "elmo") -> str:
        name = f"{prefix}-{next(counter)}-{port}"
        client.create_bucket(Bucket=name)
        return name

    make_bucket.endpoint = env["AWS_ENDPOINT_URL"]
    make_bucket.client = client
    yield make_bucket
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def write_corpus(path, rows: list[tuple[str, str]], row_group_size: int = 10, filesystem=None) -> None:
    """A Parquet file with columns id, text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]})
    pq.write_table(table, str(path), row_group_size=row_group_size, filesystem=filesystem)


@pytest.fixture(scope="session")
def sample_rows():
    """(id, text) rows of the bundled public-domain sample corpus."""
    import pyarrow.parquet as pq

    from elmo_dist import __file__ as pkg

    t = pq.read_table(os.path.join(os.path.dirname(pkg), "data", "sample_corpus.parquet"))
    return list(zip(t["id"].to_pylist(), t["text"].to_pylist()))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped, saying so, where there is none."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
        for item in gpu:
            item.add_marker(skip)
