"""Trainer speed: tokens/s and loss after N steps, the previous trainer vs the current one, in one run.

    python bench/bench_train.py [--corpus DIR] [--steps 40] [--arch mini] [--vocab-size 30000]

Every row starts from the same seeded initialisation and trains ``--steps`` timed steps (after 3
untimed warm-up steps) on the corpus's batches (rows with the same token budget see the same
batches), then measures held-out perplexity (fp32, the first ``--eval-tokens`` of valid.txt):

- ``previous``: the trainer as it was before this work, run from its own code (``git archive`` of
  ``--baseline-rev``, default 1a336a6): per-step autograd LSTM, fp32, 2048 tokens per batch, with
  1 thread (as the shipped elmo-dist-mini was trained) and with 2 (its default);
- ``current, fp32``: the recurrence as one autograd op with a hand-written backward (each
  direction on its own thread), the loss read in the LSTM's own layout (top layer only), fp32;
- ``current, bf16``: the same with bf16 matrix products and convolutions (state, gate arithmetic,
  log-softmax fp32), same batches as the fp32 row, so its loss can be read against fp32's;
- ``current, bf16 (defaults)``: with the trainer's default batch size (``--big-budget``), 4096 tokens.

tokens/s counts predicted words of one direction per second of step time (the trainer's own
figure), median over the timed steps. The corpus defaults to the training corpus built by
``tools/corpus_recipe.py`` in ``~/.cache/elmo-dist/corpus`` or, without it, a small one made from the
bundled sample (``elmo_dist/data/sample_corpus.parquet``; a 6k-word vocabulary makes the softmax
cheaper than with the real corpus). Run it on a quiet machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--code-dir" in sys.argv:  # a child row: import elmo_dist from that tree (the previous trainer's, or ours)
    sys.path.insert(0, sys.argv[sys.argv.index("--code-dir") + 1])
else:
    sys.path.insert(0, REPO)

CORPUS = os.path.expanduser("~/.cache/elmo-dist/corpus")


def sample_corpus(directory: str) -> str:
    """train.txt / valid.txt tokenized from the bundled sample (made once)."""
    if os.path.exists(os.path.join(directory, "valid.txt")):
        return directory
    import pyarrow.parquet as pq

    from elmo_dist.paths import SAMPLE_CORPUS
    from elmo_dist.text.tokenize import Tokenizer

    tok = Tokenizer()
    sents = [" ".join(s) for text in pq.read_table(SAMPLE_CORPUS).column("text").to_pylist() for s in tok(text)]
    random.Random(0).shuffle(sents)
    os.makedirs(directory, exist_ok=True)
    k = max(1, len(sents) // 10)
    for name, part in (("valid.txt", sents[:k]), ("train.txt", sents[k:])):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as fh:
            fh.write("\n".join(part) + "\n")
    return directory


def _old_step(tr, sents) -> tuple[float, int, float]:
    """One step of the previous trainer (no ``train_step`` there): its loop body."""
    import torch

    nll_f, nll_b, n = tr.loss(sents)
    loss = (nll_f + nll_b) / (2 * n)
    for g in tr.optim.param_groups:
        g["lr"] = tr._lr()
    tr.optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(tr.bilm.parameters()) + list(tr.head.parameters()), tr.cfg.clip_norm)
    tr.optim.step()
    tr.step += 1
    return loss.item(), n, 0.0


def run_row(name: str, corpus: str, args, *, code: str, precision: str, threads: int, budget: int) -> dict:
    import torch

    from elmo_dist.train.trainer import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as out:
        extra = {"precision": precision} if code == "current" else {}
        cfg = TrainConfig(corpus=corpus, out=out, arch=args.arch, vocab_size=args.vocab_size,
                          token_budget=budget, threads=threads, eval_tokens=args.eval_tokens,
                          warmup_steps=args.steps, max_minutes=1e6, **extra)
        tr = Trainer(cfg)
        step = tr.train_step if code == "current" else lambda sents: _old_step(tr, sents)
        order = tr._epoch_batches(0)
        speeds, losses = [], []
        for k in range(3 + args.steps):
            sents = [tr.train[i] for i in order[k % len(order)]]
            t0 = time.perf_counter()
            loss, n, _ = step(sents)
            dt = time.perf_counter() - t0
            if k >= 3:
                speeds.append(n / dt)
                losses.append(loss)
        ppl_f, ppl_b = tr.evaluate()
        torch.set_num_threads(threads)
    return {"row": name, "threads": threads, "precision": precision, "budget": budget,
            "tok/s": statistics.median(speeds), "loss": statistics.mean(losses[-10:]),
            "ppl": (ppl_f + ppl_b) / 2}


def main(argv: list[str] | None = None) -> int:
    from elmo_dist.train.config import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=None, help="directory with train.txt and valid.txt")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--arch", default="mini")
    ap.add_argument("--vocab-size", type=int, default=30000)
    ap.add_argument("--eval-tokens", type=int, default=20000)
    ap.add_argument("--big-budget", type=int, default=TrainConfig.token_budget,
                    help="tokens per batch of the last row (default: the trainer's default)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--code-dir", default=REPO, help=argparse.SUPPRESS)
    ap.add_argument("--baseline-rev", default="1a336a6", help="git revision of the previous trainer")
    ap.add_argument("--repeat", type=int, default=2, help="runs of every row (median reported)")
    ap.add_argument("--rows", default="", help="comma-separated row numbers to run (0 = previous; default all)")
    args = ap.parse_args(argv)
    corpus = args.corpus or (CORPUS if os.path.exists(os.path.join(CORPUS, "valid.txt"))
                             else sample_corpus(os.path.expanduser("~/.cache/elmo-dist/bench/train-sample")))
    load0 = os.getloadavg()[0]
    specs = [
        (f"previous ({args.baseline_rev})", dict(code="previous", precision="fp32", threads=1, budget=2048)),
        (f"previous ({args.baseline_rev})", dict(code="previous", precision="fp32", threads=2, budget=2048)),
        ("current, fp32", dict(code="current", precision="fp32", threads=2, budget=2048)),
        ("current, bf16", dict(code="current", precision="bf16", threads=2, budget=2048)),
        ("current, bf16 (defaults)", dict(code="current", precision="bf16", threads=2, budget=args.big_budget)),
    ]
    if args.one is not None:  # a child: one row, printed as JSON
        print("ROW " + json.dumps(run_row(specs[args.one][0], corpus, args, **specs[args.one][1])))
        return 0
    baseline = os.path.expanduser(f"~/.cache/elmo-dist/bench/trainer-{args.baseline_rev}")
    if not os.path.isdir(os.path.join(baseline, "elmo_dist")):
        os.makedirs(baseline, exist_ok=True)
        archive = subprocess.run(["git", "-C", REPO, "archive", args.baseline_rev, "elmo_dist"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", baseline], input=archive, check=True)
    keep = [int(k) for k in args.rows.split(",")] if args.rows else range(len(specs))
    runs: dict[int, list[dict]] = {k: [] for k in keep}
    order = [k for rep in range(args.repeat) for k in (keep if rep % 2 == 0 else list(keep)[::-1])]
    for k in order:  # each row in a fresh process: no thread pool or allocator state carried over
        code_dir = baseline if specs[k][1]["code"] == "previous" else REPO
        cmd = [sys.executable, os.path.abspath(__file__), "--code-dir", code_dir, "--one", str(k), "--corpus", corpus,
               "--steps",
               str(args.steps), "--arch", args.arch, "--vocab-size", str(args.vocab_size), "--eval-tokens",
               str(args.eval_tokens), "--big-budget", str(args.big_budget), "--baseline-rev", args.baseline_rev]
        res = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in res.stdout.splitlines() if x.startswith("ROW ")]
        if res.returncode or not line:
            sys.exit(f"row {k} failed:\n{res.stderr[-3000:]}")
        runs[k].append(json.loads(line[-1][4:]))
    rows = []
    for k in keep:  # the median of the repeats (rows alternate order: a load drift hits all alike)
        row = dict(runs[k][0], spread=[r["tok/s"] for r in runs[k]])
        row["tok/s"] = statistics.median(row["spread"])
        rows.append(row)
    base = rows[0]["tok/s"]
    print(f"\ncorpus {corpus}; arch {args.arch}; {args.steps} timed steps per row; "
          f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; {os.cpu_count()} CPUs; "
          f"tokens/s: median of {args.repeat} run(s) per row, rows in alternating order\n")
    print(f"| trainer | threads | precision | tokens/batch | tokens/s | speed-up vs row 1 | train loss (last 10 steps) "
          "| held-out ppl after the steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        spread = "" if len(r["spread"]) < 2 else f" ({min(r['spread']):,.0f}-{max(r['spread']):,.0f})"
        print(f"| {r['row']} | {r['threads']} | {r['precision']} | {r['budget']} | {r['tok/s']:,.0f}{spread} | "
              f"{r['tok/s'] / base:.2f}x | {r['loss']:.3f} | {r['ppl']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
