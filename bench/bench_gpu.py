"""GPU throughput of the Original architecture: the model alone and the whole job, fp32 and bf16.

    python bench/bench_gpu.py                  # on a CUDA machine: < 8 minutes end to end
    python bench/bench_gpu.py --device cpu --quick   # smoke run of the same code on a CPU

Writes a random-weight model of the Original architecture (official layout, low-gain weights, never
downloaded) and a synthetic Zipf corpus, then prints one markdown table:

- model alone: ``Elmo.embed_sentences`` (mean pooling) at several token budgets, fp32 and bf16,
  tokens/s and peak GPU memory; fp32 is checked against the CPU result on the same sentences
  (max abs error; TF32 is off in fp32 mode, so this stays at fp32 rounding);
- the step loop: the in-place no-grad route CUDA inference takes against the autograd loop it
  replaced (fp32, largest budget);
- the job: ``elmo-dist embed``'s ``run()`` on a local Ray runtime with one GPU actor, raw text in
  (sentences split and tokenized by the actor's prepare processes), tokens/s of the streaming part
  and the ratio to the model alone at the job's token budget; also for the small built-in model,
  whose GPU speed the tokenizing has to keep up with.

Read the table with the machine's load (printed) in mind; compare within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import load_average, synthetic_corpus, write_model  # noqa: E402
from elmo_dist.paths import default_model_path  # noqa: E402  (bench_model puts the repository on the path)


def model_alone(model: str, sents: list[list[str]], device: str, dtype: str, budget: int,
                repeats: int) -> dict:
    import torch

    from elmo_dist import Elmo

    elmo = Elmo.from_pretrained(model, compute_dtype=dtype).to(device)
    list(elmo.embed_sentences(sents[:256], token_budget=budget, pooling="mean"))  # warm-up, autotune
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, vecs = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        vecs = np.stack(list(elmo.embed_sentences(sents, token_budget=budget, pooling="mean")))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tokens = sum(len(s) for s in sents)
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    return {"tokens_per_s": tokens / float(np.median(times)), "peak_mb": mem, "vecs": vecs}


def job(model: str, sents: list[list[str]], tmp: str, device: str, dtype: str, budget: int, tag: str = "") -> dict:
    import ray

    from elmo_dist.config import JobConfig
    from elmo_dist.pipeline import run

    inp = os.path.join(tmp, "in")
    os.makedirs(inp, exist_ok=True)
    per = max(1, len(sents) // 8)
    for f in range(0, len(sents), per):
        part = sents[f:f + per]
        pq.write_table(pa.table({"id": [f"d{f + i}" for i in range(len(part))],
                                 "text": [" ".join(s) for s in part]}), os.path.join(inp, f"p{f:06d}.parquet"))
    if not ray.is_initialized():
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="ERROR", configure_logging=False)
        ray_start = time.perf_counter() - t0
    else:
        ray_start = 0.0
    out = os.path.join(tmp, f"out{tag}-{dtype}-{budget}")
    gpus = 1.0 if device.startswith("cuda") else 0.0
    cfg = JobConfig.build(inputs=[inp], output=out, model=model, **{
        "text.id_column": "id", "text.sentence_split": "none", "run.compute_dtype": dtype,
        "run.token_budget": budget, "run.rows_per_unit": max(64, len(sents) // 8),
        "run.num_gpus_per_actor": gpus, "run.num_actors": 1})
    summary = run(cfg)
    return {"tokens_per_s": summary["tokens_per_second_this_run"], "ray_start": ray_start,
            "prepare_processes": summary["actors"]["prepare_processes"],
            "padding": summary["padding_ratio"], "seconds": summary["seconds"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sentences", type=int, default=20000)
    p.add_argument("--budgets", default="4096,16384,65536")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-job", action="store_true", help="model alone only")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run, e.g. on a CPU)")
    args = p.parse_args(argv)
    import torch

    if args.quick:
        args.sentences, args.budgets, args.repeats = 64, "1024", 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --quick for a smoke run")
    tmp = tempfile.mkdtemp(prefix="bench-gpu-")
    model = write_model(os.path.join(tmp, "model"), "original" if not args.quick else "small")
    sents = synthetic_corpus(args.sentences)
    n_tok = sum(len(s) for s in sents)
    budgets = [int(b) for b in args.budgets.split(",")]
    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    lines = [f"{'Original' if not args.quick else 'Small (quick)'} architecture, random weights; {len(sents)} "
             f"sentences, {n_tok} tokens; device {dev_name}; torch {torch.__version__}; load {load_average()}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}", "",
             "| what | dtype | token budget | tokens/s | peak GPU MB | max abs err vs CPU fp32 | notes |",
             "|---|---|---:|---:|---:|---:|---|"]
    ref = None
    check = sents[:128]
    from elmo_dist import Elmo

    cpu = Elmo.from_pretrained(model)
    ref = np.stack(list(cpu.embed_sentences(check, pooling="mean")))
    best: dict[str, float] = {}
    for dtype in args.dtypes.split(","):
        for budget in budgets:
            t0 = time.perf_counter()
            r = model_alone(model, sents, args.device, dtype, budget, args.repeats)
            elmo = Elmo.from_pretrained(model, compute_dtype=dtype).to(args.device)
            err = float(np.abs(np.stack(list(elmo.embed_sentences(check, token_budget=budget, pooling="mean")))
                               - ref).max())
            best[dtype] = max(best.get(dtype, 0.0), r["tokens_per_s"])
            lines.append(f"| model alone | {dtype} | {budget} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | "
                         f"{err:.2e} | {time.perf_counter() - t0:.0f} s |")
            print(lines[-1], flush=True)
    # The step loop: the in-place no-grad route (the default on CUDA) vs the autograd loop it replaced.
    from elmo_dist.model.bilstm import BiLstmLayer

    BiLstmLayer.in_place = False
    r = model_alone(model, sents, args.device, "float32", budgets[-1], 1)
    BiLstmLayer.in_place = True
    lines.append(f"| model alone, autograd step loop (previous route) | float32 | {budgets[-1]} | "
                 f"{r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | | 15 kernels per step and layer vs 11 |")
    print(lines[-1], flush=True)
    if not args.no_job:
        builtin = str(default_model_path())  # the small built-in model: the job must tokenize fast to feed it
        r = model_alone(builtin, sents, args.device, "float32", budgets[-1], 1)
        j = job(builtin, sents, tmp, args.device, "float32", budgets[-1], tag="-builtin")
        lines.append(f"| built-in model: alone / job (1 GPU actor) | float32 | {budgets[-1]} | "
                     f"{r['tokens_per_s']:.0f} / {j['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | | ratio "
                     f"{j['tokens_per_s'] / r['tokens_per_s']:.2f}; the actor's prepare processes: "
                     f"{j['prepare_processes']}; stage seconds {j['seconds']} |")
        print(lines[-1], flush=True)
        for dtype in args.dtypes.split(","):
            budget = budgets[-1]
            j = job(model, sents, tmp, args.device, dtype, budget)
            alone = model_alone(model, sents[:2000], args.device, dtype, budget, 1)["tokens_per_s"]
            lines.append(f"| job (1 GPU actor) | {dtype} | {budget} | {j['tokens_per_s']:.0f} | | | ratio to model "
                         f"alone {j['tokens_per_s'] / alone:.2f}; padding {100 * j['padding']:.1f}%; Ray start "
                         f"{j['ray_start']:.1f} s; stage seconds {j['seconds']} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
