"""`train`: train a biLM on a tokenized corpus (resumable); exports the official format.

The flags are ``TrainConfig``'s fields (``elmo_dist.train.config``, no torch), so ``--help`` is fast
and every default is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses

from elmo_dist.errors import EXIT_OK

_HELP = {
    "corpus": "directory with train.txt and valid.txt (one tokenized sentence per line)",
    "out": "run directory: vocab, checkpoint.pt, history.jsonl, model/ (rerun to resume)",
    "arch": "architecture (ignored with --init-from: the model's own)",
    "init_from": "fine-tune: start the biLM from this official-format model (directory or s3://; "
                 "'default' = the built-in model) with a new softmax over the corpus's words",
    "vocab_size": "words in the softmax vocabulary",
    "token_budget": "padded tokens per training batch",
    "lr": "peak learning rate (Adam, warm-up then linear decay)",
    "max_minutes": "training time budget (resumes count)",
    "max_steps": "stop after this many steps (0: at the time budget)",
    "eval_every": "steps between held-out perplexity evaluations",
    "checkpoint_minutes": "minutes between checkpoints",
    "threads": "torch threads",
    "precision": "bf16: matrix products and convolutions in bfloat16, state and softmax in fp32; fp32: all fp32",
    "seed": "random seed",
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from elmo_dist.train.config import ARCHS, TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, text in _HELP.items():
        f = fields[name]
        flag = f"--{name.replace('_', '-')}"
        if f.default is dataclasses.MISSING:
            p.add_argument(flag, required=True, help=text)
            continue
        kw = ({"choices": sorted(ARCHS)} if name == "arch" else {"choices": ["bf16", "fp32"]}
              if name == "precision" else {"type": type(f.default)})
        p.add_argument(flag, default=f.default, help=f"{text} (default {f.default})", **kw)


def cmd_train(args: argparse.Namespace) -> int:
    from elmo_dist.train.config import TrainConfig
    from elmo_dist.train.trainer import train

    train(TrainConfig(**{name: getattr(args, name) for name in _HELP}))
    return EXIT_OK


def register(sub) -> None:
    t = sub.add_parser("train", help="train a biLM on a tokenized corpus; exports options.json + weights.hdf5",
                       description="Train an ELMo biLM (forward and backward LMs over a char-CNN) on a tokenized "
                                   "corpus; rerun the same command to resume from its checkpoint.")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)
