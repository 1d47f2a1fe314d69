"""Whole-job throughput against the bare model, same sentences, same run.

    python bench/bench_pipeline.py [--arch small] [--sentences 6000] [--num-cpus 2]

Writes a random-weight model of the official Small architecture (2x1024_128_2048cnn_1xhighway,
official layout, never downloaded), a synthetic Parquet corpus, then measures on a local Ray
runtime with the machine's real CPU count:
  - bare model: ``Elmo.embed_sentences`` over the job's own tokens (token budget as the job);
  - the job from raw text (tokenization included) and from pre-tokenized input;
and prints a markdown table with tokens/s and the job / bare-model ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import load_average, synthetic_corpus, write_model  # noqa: E402

from elmo_dist import Elmo, read_embeddings  # noqa: E402
from elmo_dist import schema as S  # noqa: E402
from elmo_dist.config import JobConfig  # noqa: E402
from elmo_dist.pipeline import run  # noqa: E402


def write_inputs(directory: str, sents: list[list[str]], files: int) -> None:
    os.makedirs(directory, exist_ok=True)
    per = (len(sents) + files - 1) // files
    for f in range(files):
        part = sents[f * per:(f + 1) * per]
        ids = [f"doc-{f}-{i}" for i in range(len(part))]
        pq.write_table(pa.table({"id": ids, "text": [" ".join(s) for s in part],
                                 "tokens": pa.array(part, pa.list_(pa.string()))}),
                       os.path.join(directory, f"part-{f}.parquet"), row_group_size=500)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="small", choices=["small", "medium", "original"])
    p.add_argument("--sentences", type=int, default=6000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--token-budget", type=int, default=4096)
    p.add_argument("--rows-per-unit", type=int, default=3000)
    p.add_argument("--out", help="append the table to this markdown file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray
    import torch

    tmp = tempfile.mkdtemp(prefix="bench-pipeline-")
    model = write_model(os.path.join(tmp, "model"), args.arch)
    sents = synthetic_corpus(args.sentences)
    write_inputs(os.path.join(tmp, "in"), sents, args.files)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    load_before = load_average()

    def job(name: str, **kw) -> dict:
        out = os.path.join(tmp, name)
        cfg = JobConfig.build(inputs=[os.path.join(tmp, "in")], output=out, **{
            "text.id_column": "id", "text.sentence_split": "none", "run.token_budget": args.token_budget,
            "run.rows_per_unit": args.rows_per_unit, **kw})
        t0 = time.perf_counter()
        summary = run(cfg, model)
        wall = time.perf_counter() - t0
        return {"name": name, "tokens": summary["tokens"], "wall": wall,
                "tps_stream": summary["tokens_per_second_this_run"], "tps_wall": summary["tokens"] / wall,
                "padding": summary["padding_ratio"], "actors": summary["actors"], "out": out}

    jobs = [job("job-text"), job("job-tokens", **{"text.tokens_column": "tokens", "text.text_column": None}),
            job("job-text-2threads", **{"run.torch_threads": 2})]
    # Bare model: the same sentences (as the job tokenized them), same token budget, 2 threads.
    toks = read_embeddings(jobs[0]["out"]).to_table(columns=[S.TOKENS])[S.TOKENS].to_pylist()
    torch.set_num_threads(args.num_cpus)
    elmo = Elmo.from_pretrained(model)
    list(elmo.embed_sentences(toks[:200], token_budget=args.token_budget, pooling="mean"))  # warm-up
    t0 = time.perf_counter()
    for _ in elmo.embed_sentences(toks, token_budget=args.token_budget, pooling="mean"):
        pass
    bare_wall = time.perf_counter() - t0
    n_tok = sum(len(t) for t in toks)
    bare = n_tok / bare_wall
    lines = [f"Arch {args.arch}, {len(sents)} sentences, {n_tok} tokens, {args.files} files, "
             f"{args.num_cpus} CPUs, token budget {args.token_budget}; load before {load_before}, "
             f"after {load_average()}; {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| run | tokens/s (whole job, wall incl. startup) | tokens/s (streaming part) | ratio to bare model (streaming) | padding |",
             "|---|---|---|---|---|",
             f"| bare model (`Elmo.embed_sentences`, {args.num_cpus} threads) | {bare:.0f} | {bare:.0f} | 1.00 | |"]
    for j in jobs:
        lines.append(f"| {j['name']} ({j['actors']['actors']} actor x {j['actors']['threads']} thread) | "
                     f"{j['tps_wall']:.0f} | {j['tps_stream']:.0f} | {j['tps_stream'] / bare:.2f} | "
                     f"{100 * j['padding']:.1f}% |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + table + "\n")
    print(json.dumps({"bare_tokens_per_s": bare, "jobs": [{k: v for k, v in j.items() if k != "out"} for j in jobs]}))
    ray.shutdown()


if __name__ == "__main__":
    main()
