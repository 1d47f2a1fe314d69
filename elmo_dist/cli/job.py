"""`embed`, `refresh` and `verify`: the corpus job's flags, derived from ``JobConfig``'s fields.

Every `--flag` of the job is a field of ``elmo_dist.config`` (its help text is the field's
description, its default the field's default: each declared once, in the config); ``--config
FILE`` takes any field from YAML, and flags win.
"""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any

from pydantic import BaseModel

from elmo_dist.config import EmbeddingSettings, JobConfig, RunSettings, TextSettings
from elmo_dist.errors import EXIT_OK, EXIT_PROBLEMS


def _layer_or_name(value: str) -> Any:
    return int(value) if value.lstrip("-").isdigit() else value


def _floats(value: str) -> list[float]:
    return [float(x) for x in value.split(",")]


def _literals(annotation: Any) -> list[Any]:
    """The values of Literal[...] inside an annotation (Union[Literal[...], int] included)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        out += _literals(arg)
    return out


def _field_flag(group, section: str, name: str, model: type[BaseModel]) -> None:
    """``--name`` for one config field, with its type, choices, help and default from the field."""
    info = model.model_fields[name]
    ann, args = info.annotation, typing.get_args(info.annotation)
    default = info.default
    kw: dict[str, Any] = {"dest": f"{section}.{name}", "default": None}
    lits = _literals(ann)
    if ann is bool:
        kw.update(action="store_true")
    elif lits and int in args:  # a named choice or a layer index
        kw.update(type=_layer_or_name, metavar="|".join(map(str, lits)) + "|LAYER")
    elif lits:
        kw.update(choices=lits)
    elif list[float] in (ann, *args) or "list[float]" in str(ann):
        kw.update(type=_floats, metavar="W1,W2,...")
    elif int in (ann, *args):
        kw.update(type=int, metavar="N")
    elif float in (ann, *args):
        kw.update(type=float, metavar="X")
    else:
        kw.update(metavar=name.upper())
    help_text = info.description or ""
    if default not in (None, False):
        help_text += f" (default {default})"
    group.add_argument(f"--{name.replace('_', '-')}", help=help_text, **kw)


# which fields get flags, in order, per help group (the input columns are handled apart)
_TEXT = ["id_column", "sentence_split", "max_sentence_tokens", "max_document_chars"]
_EMBEDDING = ["token_embeddings", "token_output", "sentence_output", "pooling", "dtype", "mix_weights", "gamma"]
_RUN = ["address", "device", "num_actors", "max_actors", "cpus_per_actor", "num_gpus_per_actor", "compute_dtype",
        "token_budget", "rows_per_unit", "torch_threads", "prepare_processes", "lease_seconds"]


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="Parquet files, directories or globs; local paths or s3:// URIs")
    p.add_argument("--output", "-o", required=True, help=JobConfig.model_fields["output"].description)
    p.add_argument("--model", help=JobConfig.model_fields["model"].description)
    p.add_argument("--config", help="YAML file with any JobConfig fields (sections text/embedding/run); flags win")
    g = p.add_argument_group("input")
    col = g.add_mutually_exclusive_group()
    col.add_argument("--text-column", dest="text.text_column", metavar="NAME",
                     help=TextSettings.model_fields["text_column"].description + " (default: text)")
    col.add_argument("--tokens-column", dest="text.tokens_column", metavar="NAME",
                     help=TextSettings.model_fields["tokens_column"].description + " or list<list<string>>")
    for name in _TEXT:
        _field_flag(g, "text", name, TextSettings)
    g = p.add_argument_group("embeddings")
    for name in _EMBEDDING:
        _field_flag(g, "embedding", name, EmbeddingSettings)
    g = p.add_argument_group("running")
    for name in _RUN:
        _field_flag(g, "run", name, RunSettings)


def build_config(args: argparse.Namespace) -> JobConfig:
    overrides = {k: v for k, v in vars(args).items() if "." in k}
    if overrides.get("text.tokens_column"):  # a flag for one input column replaces the other from a file
        overrides["text.text_column"] = ""
    elif overrides.get("text.text_column"):
        overrides["text.tokens_column"] = ""
    return JobConfig.build(args.config, inputs=args.inputs, output=args.output, model=args.model, **overrides)


def cmd_embed(args: argparse.Namespace) -> int:
    from elmo_dist import pipeline

    summary = pipeline.run(build_config(args))
    print(json.dumps(summary, indent=1))
    return EXIT_OK


def cmd_refresh(args: argparse.Namespace) -> int:
    from elmo_dist.refresh import refresh

    summary = refresh(build_config(args), keep_versions=args.keep_versions)
    print(json.dumps(summary, indent=1))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from elmo_dist.output import verify

    report = verify(args.directory, deep=args.deep)
    d = report.to_dict()
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        print(f"{d['directory']}: {d['kind']} output, {d['units_done']} of {d['units_planned']} units done, "
              f"{d['shards']} shards" + (f", {d['rows']} rows" if d["rows"] is not None else ""))
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
        for note in report.notes:
            print(f"note: {note}")
        print("OK" if report.ok else f"{len(report.problems)} problem(s): rerun the job to repair them")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_status(args: argparse.Namespace) -> int:
    from elmo_dist.output import status

    st = status(args.directory)
    if args.json:
        print(json.dumps(st, indent=1))
        return EXIT_OK
    print(f"{st['directory']}: {st['units_done']} of {st['units_planned']} units done"
          + (" (complete)" if st["complete"] else "") + f"; {st['rows']} rows, {st['sentences']} sentences, "
          f"{st['tokens']} tokens" + (f"; {st['invalid_records']} invalid record(s)" if st["invalid_records"] else ""))
    if st["running"]:
        print(f"running: lease held by {st['running']['owner']} until {st['running']['until']}")
    for host, c in st["per_node"].items():
        tps = c["tokens"] / c["embed_seconds"] if c.get("embed_seconds") else 0
        busy = f", model busy {100 * c['model_busy']:.0f}% of the node's span" if "model_busy" in c else ""
        print(f"  {host}: {c['units']} units, {c['tokens']} tokens, {tps:.0f} tokens/s embedding{busy}")
    for r in st["runs"]:
        print(f"  run finished {r['finished']} on {r['host']}: {r['units']} units, {r['tokens']} tokens, "
              f"{r['tokens_per_second']} tokens/s")
    return EXIT_OK


def register(sub) -> None:
    e = sub.add_parser("embed", help="embed a Parquet corpus (resumable)",
                       description="Embed a Parquet corpus into sentence (and token) embedding shards. "
                                   "Rerun the same command to resume.")
    add_job_arguments(e)
    e.set_defaults(func=cmd_embed)

    r = sub.add_parser("refresh", help="incremental refresh: embed new/changed files, publish a new version",
                       description="Compare the corpus with the last published version and embed only what "
                                   "changed; publish the result as a new version atomically.")
    add_job_arguments(r)
    g = r.add_argument_group("refresh")
    g.add_argument("--keep-versions", type=int, default=3, metavar="N",
                   help="published versions to keep (manifests and their shards); older ones are deleted "
                        "(default 3; keep >= 2 so readers that started on the previous version finish)")
    r.set_defaults(func=cmd_refresh)

    v = sub.add_parser("verify", help="check an output: records vs plan vs shards (--deep: every footer)",
                       description="Check an output's completion records against its plan and its shard files "
                                   "(sizes; with --deep, every footer's row count and metadata). Exit 0 when "
                                   "sound, 1 when problems were found (a rerun of the job repairs them).")
    v.add_argument("directory", metavar="DIR",
                   help="output directory of `elmo-dist embed` or `refresh` (local or s3://)")
    v.add_argument("--deep", action="store_true",
                   help="also read every shard's footer: readable, row count as recorded, written by this job")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_verify)

    st = sub.add_parser("status", help="progress of a running or finished job: units done, tokens, per node",
                        description="Show the progress of an `elmo-dist embed` output, running or finished: units "
                                    "done of planned, rows, sentences, tokens, per node, the last runs' throughput "
                                    "and the driver holding its lease.")
    st.add_argument("directory", metavar="DIR", help="output directory of `elmo-dist embed` (local or s3://)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=cmd_status)
