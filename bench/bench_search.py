"""Search throughput: exact (streaming the Parquet shards; in-memory matrix) vs approximate (faiss HNSW).

Writes N random D-dim float32 vectors as an elmo-dist output (Parquet shards with the usual
metadata and completion records) in a temp dir, then measures, for k nearest neighbours:

- exact, streaming: ``SearchIndex.open(dir)`` (reads the shards on every search)
- exact, in memory: ``SearchIndex.open(dir, in_memory=True)`` (normalised N x D float32 matrix)
- approximate: ``build_index`` (HNSW, faiss) then ``SearchIndex.open(dir, index=True)`` per ef_search

Queries per second one query at a time and as one batch of Q queries; recall@k of the approximate
index against the exact top-k; build/load time and memory. Prints a markdown table.

    python bench/bench_search.py                          # 1M x 256, gaussian (isotropic: ANN's worst case)
    python bench/bench_search.py --data lowrank           # intrinsic dim 32 + noise (more like real embeddings)
    python bench/bench_search.py --n 100000 --ef-search 32,128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from elmo_dist import schema  # noqa: E402
from elmo_dist.config import EmbeddingSettings, TextSettings  # noqa: E402
from elmo_dist.search import SearchIndex, build_index  # noqa: E402


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    return "load average %.2f, %.2f, %.2f" % os.getloadavg()


class Data:
    """Vectors drawn shard by shard (memory: one shard at a time)."""

    def __init__(self, kind: str, dim: int, seed: int = 0):
        self.kind, self.dim = kind, dim
        rng = np.random.default_rng(seed)
        self.basis = rng.standard_normal((32, dim)).astype(np.float32) if kind == "lowrank" else None

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "gaussian":
            return rng.standard_normal((n, self.dim), dtype=np.float32)
        z = rng.standard_normal((n, 32), dtype=np.float32) @ self.basis
        return z + 0.3 * rng.standard_normal((n, self.dim), dtype=np.float32)


def write_output(directory: str, data: Data, n: int, shards: int) -> None:
    dim = data.dim
    md = {"format": 1, "model": {"source": "bench", "fingerprint": "bench00000000000", "output_dim": dim},
          "text": TextSettings().model_dump(mode="json"), "embedding": EmbeddingSettings().model_dump(mode="json"),
          "config_fingerprint": "bench00000000000"}
    sch = schema.output_schema(dim, metadata=md)
    os.makedirs(os.path.join(directory, "_job", "units"))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
        rng = np.random.default_rng(1000 + s)
        vecs = data.draw(b - a, rng)
        m = b - a
        table = pa.table({
            schema.ID: [f"r{i}" for i in range(a, b)],
            schema.SENTENCE_INDEX: pa.array(np.zeros(m, np.int32)),
            schema.CHUNK: pa.array(np.zeros(m, np.int32)),
            schema.N_CHUNKS: pa.array(np.ones(m, np.int32)),
            schema.SOURCE: pa.array(["bench"] * m),
            schema.TEXT: [f"row {i}" for i in range(a, b)],
            schema.TOKENS: pa.array([[]] * m, pa.list_(pa.string())),
            schema.N_TOKENS: pa.array(np.zeros(m, np.int32)),
            schema.SENTENCE_EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
        }, schema=sch)
        name = f"part-{s:05d}.parquet"
        pq.write_table(table, os.path.join(directory, name), row_group_size=65536)
        with open(os.path.join(directory, "_job", "units", f"u{s:05d}.json"), "w") as fh:
            json.dump({"unit": f"u{s:05d}", "files": [name], "stats": {}}, fh)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def one_at_a_time(idx: SearchIndex, q: np.ndarray, k: int) -> float:
    t = time.perf_counter()
    for i in range(len(q)):
        idx.search_vectors(q[i:i + 1], k)
    return len(q) / (time.perf_counter() - t)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--data", choices=["gaussian", "lowrank"], default="gaussian")
    p.add_argument("--queries", type=int, default=200, help="queries (recall, batched and ANN throughput)")
    p.add_argument("--single", type=int, default=20, help="queries timed one at a time (exact, in memory)")
    p.add_argument("--single-streaming", type=int, default=3, help="queries timed one at a time (exact, streaming)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--ef-search", default="32,64,128,256,512")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir, deleted afterwards)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--no-ann", action="store_true")
    a = p.parse_args(argv)

    print(f"# search bench: N={a.n:,} D={a.dim} ({a.data}), {a.shards} shards, k={a.k}, "
          f"{a.queries} queries; {os.cpu_count()} CPUs; start: {load()}", flush=True)
    work = a.dir or tempfile.mkdtemp(prefix="bench-search-")
    out = os.path.join(work, "emb")
    rows = []
    try:
        data = Data(a.data, a.dim)
        _, t_write = timed(write_output, out, data, a.n, a.shards)
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".parquet"))
        print(f"wrote {size / 1e9:.2f} GB of shards in {t_write:.0f} s", flush=True)
        q = data.draw(a.queries, np.random.default_rng(7))

        stream = SearchIndex.open(out)
        qps1 = one_at_a_time(stream, q[: a.single_streaming], a.k)
        (exact_s, exact_r), t = timed(stream.search_vectors, q, a.k)
        rows.append(["exact, streaming Parquet", f"batch_rows {stream.batch_rows}", "-",
                     f"~{stream.batch_rows * a.dim * 8 / 1e6:.0f} MB", f"{qps1:.2f}", f"{a.queries / t:.1f}", "1"])
        _, t_fetch = timed(stream.hits, exact_s[:1], exact_r[:1])
        print(f"exact streaming done ({load()}); fetching the {a.k} hits' text: {t_fetch * 1e3:.0f} ms", flush=True)

        r0 = rss_mb()
        mem, t_load = timed(SearchIndex.open, out, in_memory=True)
        r_mem = rss_mb() - r0
        qps1 = one_at_a_time(mem, q[: a.single], a.k)
        (s2, r2), t = timed(mem.search_vectors, q, a.k)
        assert recall(r2, exact_r) > 0.999, "in-memory and streaming exact results differ"
        rows.append(["exact, in-memory matrix", "float32, normalised", f"load {t_load:.0f} s", f"{r_mem:.0f} MB",
                     f"{qps1:.1f}", f"{a.queries / t:.1f}", "1"])
        del mem
        print(f"exact in-memory done ({load()})", flush=True)

        if not a.no_ann:
            r0 = rss_mb()
            path, t_build = timed(build_index, out, m=a.m, ef_construction=a.ef_construction)
            idx_mb = os.path.getsize(os.path.join(path, "hnsw.faiss")) / 1e6
            print(f"index built in {t_build:.0f} s, {idx_mb:.0f} MB ({load()})", flush=True)
            ann, t_load = timed(SearchIndex.open, out, index=True)
            first = True
            for ef in [int(x) for x in a.ef_search.split(",")]:
                ann.ef_search = ef
                qps1 = one_at_a_time(ann, q, a.k)
                (s3, r3), t = timed(ann.search_vectors, q, a.k)
                rows.append([f"HNSW (faiss), ef_search {ef}", f"M {a.m}, ef_construction {a.ef_construction}",
                             f"build {t_build:.0f} s, load {t_load:.1f} s" if first else "",
                             f"{idx_mb:.0f} MB" if first else "", f"{qps1:.0f}", f"{a.queries / t:.0f}",
                             f"{recall(r3, exact_r):.3f}"])
                first = False
                print(f"ef {ef}: recall {rows[-1][-1]}", flush=True)
    finally:
        if not a.keep and not a.dir:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"N = {a.n:,} x D = {a.dim} float32 ({a.data}), k = {a.k}, {a.queries} queries; "
          f"{os.cpu_count()} CPUs; end: {load()}; peak RSS {rss_mb('VmHWM'):.0f} MB")
    print()
    head = ["method", "parameters", "build / load", "memory", "queries/s (one at a time)",
            f"queries/s (batch of {a.queries})", f"recall@{a.k}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
