"""Training batch size (and architecture): held-out perplexity after the same words or CPU time.

    python bench/bench_batch.py [--corpus DIR] [--tokens 2000000] [--budgets 4096,8192,16384,8192@0.004]
    python bench/bench_batch.py --minutes 6 --budgets 4096:mini,4096:small-512   # perplexity per CPU time
    python bench/bench_batch.py --budgets 4096,4096/1000-10000   # the adaptive softmax's cutoffs

A larger batch runs faster per token on a CPU (bigger matrix products, fewer steps) but takes fewer
optimizer steps for the same text; this measures both sides: every row trains an architecture (the
built-in one unless the row names another) from the same seeded initialisation on the same corpus
order for ``--tokens`` predicted words (one direction), or ``--minutes`` of step time, with the
learning-rate warm-up the default gives 4096-token batches counted in tokens (200 steps x 4096),
constant rate after it, bf16, 2 threads; then held-out perplexity (fp32,
the first ``--eval-tokens`` of valid.txt). Each row runs in a fresh process, one after the other: run
it on a quiet machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from elmo_dist.train.config import TrainConfig  # noqa: E402
CORPUS = os.path.expanduser("~/.cache/elmo-dist/corpus")
WARMUP_TOKENS = 200 * 4096


def run_row(corpus: str, budget: int, lr: float, arch: str, tokens: int, minutes: float, eval_tokens: int,
            cutoffs: list[int] | None = None) -> dict:
    from elmo_dist.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        extra = {"cutoffs": cutoffs} if cutoffs else {}  # else the trainer's default
        cfg = TrainConfig(corpus=corpus, out=out, arch=arch, token_budget=budget, lr=lr, threads=2, precision="bf16",
                          eval_tokens=eval_tokens, warmup_steps=max(1, WARMUP_TOKENS // budget), max_minutes=1e6,
                          **extra)
        tr = Trainer(cfg)
        order, k, seen, busy, losses = tr._epoch_batches(0), 0, 0, 0.0, []
        while (seen < tokens) if not minutes else (busy < 60 * minutes):
            t0 = time.perf_counter()
            loss, n, _ = tr.train_step([tr.train[i] for i in order[k % len(order)]])
            busy += time.perf_counter() - t0
            seen, k = seen + n, k + 1
            losses.append(loss)
        ppl_f, ppl_b = tr.evaluate()
    params = sum(p.numel() for p in tr.bilm.parameters())
    return {"budget": budget, "lr": lr, "arch": arch, "cutoffs": tr.cutoffs, "params": params, "steps": k,
            "tokens": seen, "minutes": busy / 60, "tok/s": seen / busy,
            "loss": sum(losses[-20:]) / len(losses[-20:]), "ppl_f": ppl_f, "ppl_b": ppl_b}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=CORPUS, help="directory with train.txt and valid.txt")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="predicted words per row")
    ap.add_argument("--budgets", default="4096,8192,16384",
                    help="rows: BUDGET[@LR][/C1-C2][:ARCH] (tokens per batch, learning rate, adaptive-softmax "
                         "cutoffs, --arch of elmo-dist train)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="train each row for this many minutes of steps instead of --tokens words")
    ap.add_argument("--eval-tokens", type=int, default=60000)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:  # a child: one row, printed as JSON
        spec, _, arch = args.one.partition(":")
        spec, _, cut = spec.partition("/")
        budget, _, lr = spec.partition("@")
        cutoffs = [int(c) for c in cut.split("-")] if cut else None
        print("ROW " + json.dumps(run_row(args.corpus, int(budget), float(lr or TrainConfig.lr),
                                          arch or TrainConfig.arch, args.tokens, args.minutes, args.eval_tokens,
                                          cutoffs)))
        return 0
    load0, rows = os.getloadavg()[0], []
    for budget in args.budgets.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--one", budget, "--corpus", args.corpus,
               "--tokens", str(args.tokens), "--minutes", str(args.minutes), "--eval-tokens", str(args.eval_tokens)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in res.stdout.splitlines() if x.startswith("ROW ")]
        if res.returncode or not line:
            sys.exit(f"row {budget} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(line[-1][4:]))
        print(f"done {budget}", file=sys.stderr, flush=True)
    budget_text = f"{args.minutes:g} minutes of steps" if args.minutes else f"{args.tokens:,} tokens"
    print(f"\ncorpus {args.corpus}; {budget_text} per row; bf16, 2 threads; load average {load0:.2f} at "
          f"start, {os.getloadavg()[0]:.2f} at end; {os.cpu_count()} CPUs\n")
    print("| arch (biLM parameters) | tokens/batch | lr | softmax cutoffs | steps | tokens | minutes of steps | "
          "tokens/s | train loss (last 20 steps) | held-out ppl fwd / bwd |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cut = " / ".join(f"{c:,}" for c in r["cutoffs"])
        print(f"| {r['arch']} ({r['params'] / 1e6:.1f}M) | {r['budget']} | {r['lr']:g} | {cut} | {r['steps']} | "
              f"{r['tokens']:,} | {r['minutes']:.1f} | {r['tok/s']:,.0f} | {r['loss']:.3f} | "
              f"{r['ppl_f']:.1f} / {r['ppl_b']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
