"""elmo-dist: ELMo embeddings of Parquet corpora on Ray.

The command line, and the only place with argparse: a thin layer that parses flags, builds the
config once, calls the library, and maps errors to exit codes (``elmo_dist.errors``):
0 done, 1 a check found problems (``verify``), 2 a user error (printed as one line).
The library never imports this package; torch is imported only inside the commands that need it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from elmo_dist.cli import evaluate, interop, job, search, train
from elmo_dist.errors import EXIT_USER_ERROR, USER_ERRORS

EPILOG = """\
examples:
  elmo-dist embed corpus/ --output out/ --text-column text --id-column id
  ray start --head && elmo-dist embed s3://bucket/corpus/ --output s3://bucket/emb/ --address auto
  elmo-dist verify out/ --deep
  elmo-dist search out/ "a query sentence" -k 5
  elmo-dist refresh s3://bucket/corpus/ --output s3://bucket/emb-nightly/
  elmo-dist elmo sentences.txt out.hdf5 --all          # AllenNLP's `elmo` command
  elmo-dist train --corpus corpus_dir/ --out runs/mini
  elmo-dist evaluate --pairs pairs.tsv --labelled labelled.tsv   # which layer/pooling/post-processing works

Rerunning the same `embed` command resumes an interrupted job (finished work units are skipped);
the output's _job/ directory holds the config, its fingerprint, completion records and stats.
Exit codes: 0 done, 1 `verify` found problems, 2 bad input, config, model or output (one line).
"""

COMMANDS = (job, search, interop, train, evaluate)  # each module adds its subcommands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elmo-dist", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        msg = " ".join(str(e).split("\n")[:1]) or type(e).__name__
        print(f"elmo-dist: error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR


def build_config(args: argparse.Namespace):
    """The JobConfig of parsed `embed`/`refresh` flags (kept here for callers of the old cli module)."""
    return job.build_config(args)


if __name__ == "__main__":
    sys.exit(main())
