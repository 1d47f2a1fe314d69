"""`evaluate`: score a model's sentence vectors on similarity pairs and labelled sentences you bring."""

from __future__ import annotations

import argparse
import json
import sys

from elmo_dist.config import CUDA_TOKEN_BUDGET, DEFAULT_TOKEN_BUDGET
from elmo_dist.errors import EXIT_OK

POOLINGS = ("mean", "sif")
METHODS = ("none", "center", "abtt", "whiten")


def _list(choices):
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)} (comma-separated), got {text!r}")
        return items
    return parse


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory with options.json + weights.hdf5 (local or s3://); "
                                   "default: the built-in model")
    p.add_argument("--pairs", action="append", default=[], metavar="FILE",
                   help="sentence pairs with human scores: columns sentence1, sentence2, score "
                        "(.tsv, .csv, .jsonl or .parquet); Spearman of the cosine. Repeatable")
    p.add_argument("--labelled", action="append", default=[], metavar="FILE",
                   help="labelled texts: columns text, label; cross-validated logistic regression "
                        "(accuracy, macro-F1; needs scikit-learn). Repeatable")
    p.add_argument("--pooling", type=_list(POOLINGS), default=list(POOLINGS),
                   help="poolings to score, comma-separated (default mean,sif)")
    p.add_argument("--postprocess", type=_list(METHODS), default=list(METHODS),
                   help="post-processings to score, fitted on each set's texts (default none,center,abtt,whiten)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for labelled sets (default 5)")
    p.add_argument("--no-tfidf", action="store_true", help="leave out the TF-IDF reference rows")
    p.add_argument("--json", metavar="FILE", help="also write every row as JSON ('-' = stdout, then no table)")
    p.add_argument("--against", metavar="MODEL",
                   help="compare with another model ('default' = the built-in one): both are scored on the "
                        "same sets and each row gets a paired bootstrap interval of the difference "
                        "(▲ significantly better, ▼ significantly worse)")
    p.add_argument("--resamples", type=int, default=1000,
                   help="bootstrap resamples for --against (default 1000; 95%% intervals)")
    p.add_argument("--token-budget", type=int, default=None,
                   help=f"max padded tokens per model call (default {DEFAULT_TOKEN_BUDGET} on a CPU, "
                        f"{CUDA_TOKEN_BUDGET} on a GPU)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from elmo_dist.evaluate import (EvaluateError, check_names, compare, evaluate, format_table, read_labelled,
                                    read_pairs, summarize)
    from elmo_dist.paths import resolve_model

    if not args.pairs and not args.labelled:
        raise EvaluateError("nothing to evaluate: give --pairs FILE and/or --labelled FILE")
    if args.against and args.resamples < 10:
        raise EvaluateError(f"--resamples must be at least 10, got {args.resamples}")
    pairs = [read_pairs(f) for f in args.pairs]  # every file checked before the model loads
    labelled = [read_labelled(f, folds=args.folds) for f in args.labelled]
    check_names(pairs, labelled)
    from elmo_dist.model.elmo import Elmo
    from elmo_dist.model.threads import keep_freed_memory

    keep_freed_memory()  # this process only computes: reuse freed pages (docs/performance.md)
    model = resolve_model(args.model)
    elmo = Elmo.from_pretrained(model)
    other = Elmo.from_pretrained(resolve_model(None if args.against == "default" else args.against)) \
        if args.against else None  # loaded before any work: a bad path fails fast
    options = dict(poolings=args.pooling, postprocess=args.postprocess, folds=args.folds,
                   tfidf=not args.no_tfidf, token_budget=args.token_budget)
    details: dict = {}
    rows = evaluate(elmo, pairs, labelled, details=details, **options)
    for r in rows:
        r["model"] = elmo.fingerprint
    if other is not None:
        other_details: dict = {}
        other_rows = evaluate(other, pairs, labelled, details=other_details, **options)
        rows = compare(rows, other_rows, details, other_details, pairs, labelled, resamples=args.resamples)
        for r in rows:
            r["model"], r["against"] = elmo.fingerprint, other.fingerprint
    if args.json:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if args.json == "-":
            sys.stdout.write(text)
            return EXIT_OK
        from elmo_dist import storage

        fs, path = storage.filesystem(args.json)
        storage.write_bytes(fs, path, text.encode())
    print(f"model {model} (fingerprint {elmo.fingerprint})")
    if other is not None:
        print(f"against {args.against} (fingerprint {other.fingerprint}): cells are 'this (other)'; "
              f"95% paired bootstrap over the items, {args.resamples} resamples")
        print(summarize(rows))
    print(format_table(rows))
    return EXIT_OK


def register(sub) -> None:
    e = sub.add_parser("evaluate", help="score a model's sentence vectors on your similarity pairs / labelled texts",
                       description="Score every representation (scalar mix, each layer) x pooling (mean, sif) x "
                                   "post-processing (none, center, abtt, whiten) of a model on sentence pairs "
                                   "with human scores (Spearman of cosine) and labelled texts (cross-validated "
                                   "logistic regression), next to TF-IDF; prints a table.")
    add_evaluate_arguments(e)
    e.set_defaults(func=cmd_evaluate)
