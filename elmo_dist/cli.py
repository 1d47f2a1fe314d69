"""elmo-dist: ELMo embeddings of Parquet corpora on Ray.

A thin layer over the library: parse flags -> JobConfig -> pipeline.run().
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

EPILOG = """\
examples:
  elmo-dist embed corpus/ --output out/ --text-column text --id-column id
  ray start --head && elmo-dist embed s3://bucket/corpus/ --output s3://bucket/emb/ --address auto
  elmo-dist search out/ "a query sentence" -k 5
  elmo-dist train --corpus corpus_dir/ --out runs/mini

Rerunning the same `embed` command resumes an interrupted job (finished work units are skipped);
the output's _job/ directory holds the config, its fingerprint, completion records and stats.
"""


def _layer_or_name(value: str) -> Any:
    return int(value) if value.isdigit() else value


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="Parquet files, directories or globs; local paths or s3:// URIs")
    p.add_argument("--output", "-o", required=True, help="output directory (local or s3://)")
    p.add_argument("--model", help="model directory with options.json + weights.hdf5 (local or s3://); "
                                   "default: the built-in model")
    p.add_argument("--config", help="YAML file with any JobConfig fields (sections text/embedding/run); flags win")
    g = p.add_argument_group("input")
    col = g.add_mutually_exclusive_group()
    col.add_argument("--text-column", help="column of raw text, tokenized by elmo-dist (default: text)")
    col.add_argument("--tokens-column", help="column of pre-tokenized sentences: list<string> or list<list<string>>")
    g.add_argument("--id-column", help="unique id column (default: file path + row number)")
    g.add_argument("--sentence-split", choices=["pysbd", "newline", "none"], help="sentence splitter for raw text (default pysbd)")
    g.add_argument("--max-sentence-tokens", type=int, help="cut longer sentences into chunks (default 256)")
    g.add_argument("--max-document-chars", type=int, help="skip (and count) longer texts (default 1,000,000)")
    g = p.add_argument_group("embeddings")
    g.add_argument("--token-embeddings", action="store_true", default=None, help="also write one vector per token")
    g.add_argument("--token-output", type=_layer_or_name, help="per-token vectors: mix (default), all, or a layer 0..L")
    g.add_argument("--sentence-output", type=_layer_or_name, help="vectors pooled per sentence: mix (default) or a layer")
    g.add_argument("--pooling", choices=["mean", "max"], help="sentence pooling (default mean)")
    g.add_argument("--dtype", choices=["float32", "float16"], help="stored float type (default float32)")
    g.add_argument("--mix-weights", type=lambda s: [float(x) for x in s.split(",")],
                   help="pre-softmax scalar-mix weights, comma-separated (default equal)")
    g.add_argument("--gamma", type=float, help="scalar-mix scale (default 1.0)")
    g = p.add_argument_group("running")
    g.add_argument("--address", help="Ray address; 'auto' joins a cluster started with `ray start` "
                                     "(default: RAY_ADDRESS, the submitting job's cluster, or a local runtime)")
    g.add_argument("--num-actors", type=int, help="embedding actors (default: sized from the cluster)")
    g.add_argument("--cpus-per-actor", type=float, help="CPUs per actor in CPU mode (default 1)")
    g.add_argument("--num-gpus-per-actor", type=float, help="GPUs per actor (default 1 if the cluster has GPUs, else 0)")
    g.add_argument("--compute-dtype", choices=["float32", "bfloat16", "float16"], help="matmul precision (default float32, exact)")
    g.add_argument("--token-budget", type=int, help="padded tokens per model call (default 4096)")
    g.add_argument("--rows-per-unit", type=int, help="input rows per work unit (default 20000)")
    g.add_argument("--torch-threads", type=int, help="torch threads per actor")
    g.add_argument("--lease-seconds", type=float,
                   help="lifetime of the driver's exclusive lease on the output, renewed while it runs "
                        "(default 600; a lease whose process died on this host is taken over at once)")


_FIELDS = {
    "model": "model", "text_column": "text.text_column", "tokens_column": "text.tokens_column",
    "id_column": "text.id_column", "sentence_split": "text.sentence_split",
    "max_sentence_tokens": "text.max_sentence_tokens", "max_document_chars": "text.max_document_chars",
    "token_embeddings": "embedding.token_embeddings", "token_output": "embedding.token_output",
    "sentence_output": "embedding.sentence_output", "pooling": "embedding.pooling", "dtype": "embedding.dtype",
    "mix_weights": "embedding.mix_weights", "gamma": "embedding.gamma", "address": "run.address",
    "num_actors": "run.num_actors", "cpus_per_actor": "run.cpus_per_actor",
    "num_gpus_per_actor": "run.num_gpus_per_actor", "compute_dtype": "run.compute_dtype",
    "token_budget": "run.token_budget", "rows_per_unit": "run.rows_per_unit", "torch_threads": "run.torch_threads",
    "lease_seconds": "run.lease_seconds",
}


def build_config(args: argparse.Namespace):
    from elmo_dist.config import JobConfig

    overrides = {field: getattr(args, name) for name, field in _FIELDS.items() if hasattr(args, name)}
    if args.tokens_column:  # a flag for one input column replaces the other from a config file
        overrides["text.text_column"] = ""
    elif args.text_column:
        overrides["text.tokens_column"] = ""
    return JobConfig.build(args.config, inputs=args.inputs, output=args.output, **overrides)


def resolve_model(model: str | None) -> str:
    import os

    from elmo_dist import default_model_path

    if not model:
        return default_model_path()
    return model if "://" in model else os.path.abspath(model)


def cmd_embed(args: argparse.Namespace) -> int:
    from elmo_dist import pipeline

    cfg = build_config(args)
    summary = pipeline.run(cfg, resolve_model(cfg.model))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from elmo_dist.train.trainer import run_from_args

    run_from_args(args)
    return 0


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="output directory of `elmo-dist embed` or `refresh` (local or s3://)")
    p.add_argument("--deep", action="store_true",
                   help="also read every shard's footer: readable, row count as recorded, written by this job")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_verify(args: argparse.Namespace) -> int:
    from elmo_dist.output import verify

    report = verify(args.directory, deep=args.deep)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        d = report.to_dict()
        print(f"{d['directory']}: {d['kind']} output, {d['units_done']} of {d['units_planned']} units done, "
              f"{d['shards']} shards" + (f", {d['rows']} rows" if d["rows"] is not None else ""))
        for p in report.problems:
            print(f"PROBLEM: {p}")
        for n in report.notes:
            print(f"note: {n}")
        print("OK" if report.ok else f"{len(report.problems)} problem(s): rerun the job to repair them")
    return 0 if report.ok else 1


def cmd_search(args: argparse.Namespace) -> int:
    from elmo_dist.search import run_search_command

    return run_search_command(args)


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
    p.add_argument("--token-budget", type=int, default=4096, help="max padded tokens per model call (default 4096)")
    p.add_argument("--forget-sentences", action="store_true", help="do not write the sentence_to_index dataset")
    p.add_argument("--use-sentence-keys", action="store_true",
                   help="key datasets by the sentence instead of its 0-based line number (sentences must be unique)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="matmul precision (default float32, exact)")


def cmd_elmo(args: argparse.Namespace) -> int:
    from elmo_dist.interop import embed_file

    embed_file(args.input_file, args.output_file, args.layers, model=args.model, options_file=args.options_file,
               weight_file=args.weight_file, batch_size=args.batch_size, token_budget=args.token_budget,
               forget_sentences=args.forget_sentences, use_sentence_keys=args.use_sentence_keys,
               device=args.device, compute_dtype=args.compute_dtype)
    return 0


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
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elmo-dist", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    e = sub.add_parser("embed", help="embed a Parquet corpus (resumable)",
                       description="Embed a Parquet corpus into sentence (and token) embedding shards. "
                                   "Rerun the same command to resume.")
    add_job_arguments(e)
    e.set_defaults(func=cmd_embed)
    try:
        from elmo_dist.search import add_search_arguments

        s = sub.add_parser("search", help="nearest sentences to a query in an embedded output",
                           description="Cosine search over an output directory's sentence embeddings.")
        add_search_arguments(s)
        s.set_defaults(func=cmd_search)
    except ImportError:
        pass
    try:
        from elmo_dist.refresh import add_refresh_arguments, cmd_refresh

        r = sub.add_parser("refresh", help="incremental refresh: embed new/changed files, publish a new version",
                           description="Compare the corpus with the last published version and embed only what changed.")
        add_job_arguments(r)
        add_refresh_arguments(r)
        r.set_defaults(func=cmd_refresh)
    except ImportError:
        pass
    v = sub.add_parser("verify", help="check an output: records vs plan vs shards (--deep: every footer)",
                       description="Check an output's completion records against its plan and its shard files "
                                   "(sizes; with --deep, every footer's row count and metadata). Exit 0 when "
                                   "sound, 1 when problems were found (a rerun of the job repairs them).")
    add_verify_arguments(v)
    v.set_defaults(func=cmd_verify)
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
    from elmo_dist.train.trainer import add_arguments

    t = sub.add_parser("train", help="train or fine-tune a biLM; exports options.json + weights.hdf5",
                       description="Train an ELMo biLM (forward and backward LMs over a char-CNN) on a tokenized corpus.")
    add_arguments(t)
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from elmo_dist.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"elmo-dist: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
