"""`elmo` (AllenNLP 0.9's `elmo` command: text file -> HDF5) and `export` (a job's token vectors -> HDF5)."""

from __future__ import annotations

import argparse

from elmo_dist.config import CUDA_TOKEN_BUDGET, DEFAULT_TOKEN_BUDGET
from elmo_dist.errors import EXIT_OK


def _layers_arg(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("layers (one required)").add_mutually_exclusive_group(required=True)
    g.add_argument("--all", dest="layers", action="store_const", const="all",
                   help="all layers per sentence: (L+1, T, D) = char-CNN layer, LSTM 1, LSTM 2")
    g.add_argument("--top", dest="layers", action="store_const", const="top", help="the top layer: (T, D)")
    g.add_argument("--average", dest="layers", action="store_const", const="average",
                   help="the mean of the layers: (T, D)")


def add_elmo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input_file", metavar="INPUT.txt",
                   help="UTF-8 text, one sentence per line, tokens split on whitespace (no blank lines)")
    p.add_argument("output_file", metavar="OUTPUT.hdf5", help="HDF5 file to write (replaced atomically)")
    _layers_arg(p)
    p.add_argument("--model", help="model directory with options.json + weights.hdf5 (local or s3://); "
                                   "default: the built-in model")
    p.add_argument("--options-file", help="options.json of the official format (with --weight-file)")
    p.add_argument("--weight-file", help="weights.hdf5 of the official format (with --options-file)")
    p.add_argument("--batch-size", type=int, default=64, help="max sentences per model call (default 64)")
    p.add_argument("--token-budget", type=int, default=None,
                   help=f"max padded tokens per model call (default {DEFAULT_TOKEN_BUDGET} on a CPU, "
                        f"{CUDA_TOKEN_BUDGET} on a GPU)")
    p.add_argument("--forget-sentences", action="store_true", help="do not write the sentence_to_index dataset")
    p.add_argument("--use-sentence-keys", action="store_true",
                   help="key datasets by the sentence instead of its 0-based line number (sentences must be unique)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="matmul precision (default float32, exact)")


def cmd_elmo(args: argparse.Namespace) -> int:
    from elmo_dist.interop import embed_file
    from elmo_dist.model.threads import keep_freed_memory

    keep_freed_memory()  # this process only computes: reuse freed pages (docs/performance.md)

    embed_file(args.input_file, args.output_file, args.layers, model=args.model, options_file=args.options_file,
               weight_file=args.weight_file, batch_size=args.batch_size, token_budget=args.token_budget,
               forget_sentences=args.forget_sentences, use_sentence_keys=args.use_sentence_keys,
               device=args.device, compute_dtype=args.compute_dtype)
    return EXIT_OK


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="output directory of `elmo-dist embed` written with "
                                                    "--token-embeddings (local or s3://)")
    p.add_argument("output_file", metavar="OUTPUT.hdf5", help="HDF5 file to write (replaced atomically)")
    _layers_arg(p)
    p.add_argument("--forget-sentences", action="store_true", help="do not write the sentence_to_index dataset")
    p.add_argument("--batch-rows", type=int, default=1024, help="rows read at a time (default 1024)")


def cmd_export(args: argparse.Namespace) -> int:
    from elmo_dist.interop import export_output

    export_output(args.directory, args.output_file, args.layers, forget_sentences=args.forget_sentences,
                  batch_rows=args.batch_rows)
    return EXIT_OK


def register(sub) -> None:
    x = sub.add_parser("elmo", help="AllenNLP's `elmo` command: a text file of sentences -> HDF5",
                       description="Embed a text file, one whitespace-tokenized sentence per line, into an HDF5 "
                                   "file in the layout of AllenNLP's `allennlp elmo` command.")
    add_elmo_arguments(x)
    x.set_defaults(func=cmd_elmo)
    x = sub.add_parser("export", help="a job's token embeddings -> HDF5 in the `elmo` command's layout",
                       description="Write the token_embeddings of a finished `elmo-dist embed` output as an HDF5 "
                                   "file in the layout of AllenNLP's `allennlp elmo` command.")
    add_export_arguments(x)
    x.set_defaults(func=cmd_export)
