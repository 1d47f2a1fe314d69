"""Is the model busy on every node of a multi-node cluster? (prepare overlapped with embedding)

    python bench/bench_multinode.py [--workers 2] [--worker-cpus 1] [--copies 4] [--rows-per-unit 50]

Starts a real multi-node Ray cluster on this machine (tests/raycluster.py: a head with no CPUs and
``--workers`` worker nodes, each its own `ray start`), runs `elmo-dist embed` with the built-in model
on the bundled sample corpus repeated ``--copies`` times (realistic units of ``--rows-per-unit``
rows), and prints, per node, what `elmo-dist status` reads from the completion records: units,
tokens, tokens/s while embedding and **model busy**: the model's own seconds over the node's span
from its first unit's start to its last unit's end, per actor. Reading, tokenizing and writing a
unit overlap the next unit's embedding inside the actor (two calls in flight), so a busy share near
100% means the CPU the job reserves never waits for the prepare stage. Ray's start is excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.raycluster import Cluster, _tool
    from elmo_dist.paths import SAMPLE_CORPUS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-cpus", type=int, default=1)
    ap.add_argument("--copies", type=int, default=4, help="the sample corpus repeated (distinct ids)")
    ap.add_argument("--rows-per-unit", type=int, default=50)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="elmo-mn-"))
    t = pq.read_table(SAMPLE_CORPUS)
    ids, texts = t["id"].to_pylist(), t["text"].to_pylist()
    corpus = work / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"{i}~{k}" for k in range(args.copies) for i in ids],
                             "text": texts * args.copies}), corpus, row_group_size=args.rows_per_unit)
    out = work / "out"
    cluster = Cluster(workers=args.workers, head_cpus=0, worker_cpus=args.worker_cpus, object_store_mb=300)
    load0 = os.getloadavg()[0]
    try:
        cluster.start()
        t0 = time.time()
        r = subprocess.run([_tool("elmo-dist"), "embed", str(corpus), "--output", str(out), "--id-column", "id",
                            "--address", cluster.gcs_address, "--rows-per-unit", str(args.rows_per_unit)],
                           cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=1800)
        wall = time.time() - t0
        if r.returncode:
            print(r.stdout[-3000:], r.stderr[-3000:])
            return 1
        st = subprocess.run([_tool("elmo-dist"), "status", str(out), "--json"], capture_output=True, text=True,
                            env=cluster.env, check=True)
        status = json.loads(st.stdout)
    finally:
        cluster.close()
    print(f"\n{args.workers} worker nodes x {args.worker_cpus} CPU, built-in model, {len(ids) * args.copies} rows, "
          f"{args.rows_per_unit} rows per unit; job {wall:.0f} s after Ray's start ({cluster.start_seconds:.0f} s); "
          f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end\n")
    print("| node | units | tokens | tokens/s embedding | model busy |")
    print("|---|---|---|---|---|")
    for name, c in sorted(status.get("per_node", {}).items()):
        tps = c["tokens"] / c["embed_seconds"] if c.get("embed_seconds") else 0
        busy = f"{100 * c['model_busy']:.0f}%" if "model_busy" in c else "-"
        print(f"| {name} | {c['units']} | {c['tokens']:,} | {tps:,.0f} | {busy} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
