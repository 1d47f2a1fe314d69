"""Trainer speed: tokens/s and loss after N steps, the previous trainer vs the current one, in one run.

    python bench/bench_train.py [--corpus DIR] [--steps 40] [--arch mini] [--vocab-size 30000]

Every row starts from the same seeded initialisation and trains ``--steps`` timed steps (after 3
untimed warm-up steps) on the corpus's batches (rows with the same token budget see the same
batches), then measures held-out perplexity (fp32, the first ``--eval-tokens`` of valid.txt):

- ``previous``: the trainer before the fused recurrence: per-step autograd LSTM, fp32, 1 thread,
  2048 tokens per batch (what trained the shipped elmo-dist-mini);
- ``fused fp32``: the recurrence as one autograd op with a hand-written backward (both directions
  in their own thread), fp32, 2 threads;
- ``fused bf16``: the same in bf16 (matrix products and convolutions; state and softmax fp32), same
  batches as ``fused fp32``, so its loss can be read against fp32's step for step;
- ``fused bf16, budget B``: larger batches (fewer, longer steps).

tokens/s counts predicted words of one direction per second of step time (the trainer's own
figure), median over the timed steps. The corpus defaults to the training corpus built by
``tools/corpus_recipe.py`` in ``~/.cache/elmo-dist/corpus`` or, without it, a small one made from the
bundled sample (``elmo_dist/data/sample_corpus.parquet``; a 6k-word vocabulary makes the softmax
cheaper than with the real corpus). Run it on a quiet machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def run_row(name: str, corpus: str, args, *, fused: bool, precision: str, threads: int, budget: int) -> dict:
    import torch

    from elmo_dist.model.bilstm import BiLstmLayer
    from elmo_dist.train.trainer import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(corpus=corpus, out=out, arch=args.arch, vocab_size=args.vocab_size,
                          token_budget=budget, threads=threads, precision=precision,
                          eval_tokens=args.eval_tokens, warmup_steps=args.steps, max_minutes=1e6)
        tr = Trainer(cfg)
        for layer in tr.bilm.lstm.layers:
            layer.fused_backward = fused
        order = tr._epoch_batches(0)
        speeds, losses = [], []
        for k in range(3 + args.steps):
            sents = [tr.train[i] for i in order[k % len(order)]]
            t0 = time.perf_counter()
            loss, n, _ = tr.train_step(sents)
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=None, help="directory with train.txt and valid.txt")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--arch", default="mini")
    ap.add_argument("--vocab-size", type=int, default=30000)
    ap.add_argument("--eval-tokens", type=int, default=20000)
    ap.add_argument("--big-budget", type=int, default=4096)
    args = ap.parse_args(argv)
    corpus = args.corpus or (CORPUS if os.path.exists(os.path.join(CORPUS, "valid.txt"))
                             else sample_corpus(os.path.expanduser("~/.cache/elmo-dist/bench/train-sample")))
    load0 = os.getloadavg()[0]
    rows = [
        run_row("previous (autograd loop)", corpus, args, fused=False, precision="fp32", threads=1, budget=2048),
        run_row("fused fp32", corpus, args, fused=True, precision="fp32", threads=2, budget=2048),
        run_row("fused bf16", corpus, args, fused=True, precision="bf16", threads=2, budget=2048),
        run_row(f"fused bf16, budget {args.big_budget}", corpus, args, fused=True, precision="bf16", threads=2,
                budget=args.big_budget),
    ]
    base = rows[0]["tok/s"]
    print(f"\ncorpus {corpus}; arch {args.arch}; {args.steps} timed steps per row; "
          f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end; {os.cpu_count()} CPUs\n")
    print("| trainer | threads | precision | tokens/batch | tokens/s | speed-up | train loss (last 10 steps) "
          "| held-out ppl after the steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['threads']} | {r['precision']} | {r['budget']} | {r['tok/s']:,.0f} | "
              f"{r['tok/s'] / base:.2f}x | {r['loss']:.3f} | {r['ppl']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
