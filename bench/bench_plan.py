"""Planning at scale: list, read footers, check schemas and null ids, cut units, for many small files.

    python bench/bench_plan.py [--counts 1000,10000,100000] [--s3-counts 1000]

Writes N tiny Parquet files (3 rows of id/text each, cached under ~/.cache/elmo-dist/bench/plan/),
then times the driver's planning (``list_inputs`` -> ``check_schema`` -> ``plan_units``) on local
disk, and on S3 (a moto server on loopback) counts the requests it makes with moto's recorder.
Prints a markdown table: files, where, seconds, files/s, units (small files are packed), requests
per file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq

from elmo_dist.config import TextSettings
from elmo_dist.stages.read import check_schema, list_inputs, plan_units

CACHE = os.path.expanduser("~/.cache/elmo-dist/bench/plan")


def tiny_table(k: int) -> pa.Table:
    return pa.table({"id": [f"f{k}-{i}" for i in range(3)], "text": [f"Sentence {i} of file {k}." for i in range(3)]})


def local_corpus(n: int) -> str:
    d = os.path.join(CACHE, f"local-{n}")
    done = os.path.join(d, "_done")
    if not os.path.exists(done):
        os.makedirs(d, exist_ok=True)
        for k in range(n):
            sub = os.path.join(d, f"{k // 1000:04d}")
            os.makedirs(sub, exist_ok=True)
            pq.write_table(tiny_table(k), os.path.join(sub, f"part-{k:06d}.parquet"))
        open(done, "w").close()
    return d


def plan(uri: str, rows_per_unit: int) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    files = list_inputs([uri])
    check_schema(files, TextSettings(id_column="id"))
    units = plan_units(files, rows_per_unit)
    return time.perf_counter() - t0, len(files), len(units)


def moto(port: int):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_EC2_METADATA_DISABLED="true")
    return server


def recorder(port: int, action: str) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/recorder/{action}",
                                 method="GET" if action == "download-recording" else "POST")
    with urllib.request.urlopen(req) as r:
        return r.read()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1000,10000,100000")
    p.add_argument("--s3-counts", default="1000", help="file counts to plan on S3 (moto); '' for none")
    p.add_argument("--rows-per-unit", type=int, default=20000)
    args = p.parse_args(argv)
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    rows = ["| files | where | seconds | files/s | units | requests per file |", "|---:|---|---:|---:|---:|---:|"]
    for n in [int(c) for c in args.counts.split(",") if c]:
        d = local_corpus(n)
        sec, nf, nu = plan(d, args.rows_per_unit)
        rows.append(f"| {nf} | local | {sec:.2f} | {nf / sec:.0f} | {nu} | - |")
        print(rows[-1], flush=True)
    s3_counts = [int(c) for c in args.s3_counts.split(",") if c]
    if s3_counts:
        import boto3
        import pyarrow.fs as pafs

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = moto(port)
        client = boto3.client("s3")
        fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", region="us-east-1")
        for n in s3_counts:
            bucket = f"plan-{n}"
            client.create_bucket(Bucket=bucket)
            for k in range(n):
                pq.write_table(tiny_table(k), f"{bucket}/corpus/part-{k:06d}.parquet", filesystem=fs)
            recorder(port, "reset-recording")
            recorder(port, "start-recording")
            sec, nf, nu = plan(f"s3://{bucket}/corpus/", args.rows_per_unit)
            recorder(port, "stop-recording")
            log = recorder(port, "download-recording").decode().splitlines()
            requests = [json.loads(line) for line in log if line.strip()]
            methods: dict[str, int] = {}
            for r in requests:
                methods[r.get("method", "?")] = methods.get(r.get("method", "?"), 0) + 1
            rows.append(f"| {nf} | s3 (moto) | {sec:.2f} | {nf / sec:.0f} | {nu} | {len(requests) / nf:.2f} "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(methods.items()))}) |")
            print(rows[-1], flush=True)
        server.stop()
    print(f"\nPlanning (list + footers + schema/null-id check + units), rows per unit {args.rows_per_unit}; "
          f"{os.cpu_count()} CPUs, load {load}; {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
