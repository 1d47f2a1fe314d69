"""`search`: nearest sentences to a query in an embedded output (exact, or with the HNSW index)."""

from __future__ import annotations

import argparse
import json
import sys

from elmo_dist.errors import EXIT_OK, EXIT_USER_ERROR


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo-dist search DIR QUERY... [-k N] [--model PATH] [--json] [--index PATH | --ann]``."""
    parser.add_argument("directory", metavar="DIR", help="output directory of `elmo-dist embed` (local or s3://)")
    parser.add_argument("query", nargs="+", metavar="QUERY",
                        help="query text, tokenized as one sentence (the words are joined; quoting optional); "
                             "'-' reads one query per line from stdin")
    parser.add_argument("-k", "--top-k", type=int, default=10, dest="k", help="hits per query (default 10)")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="model directory (default: the one recorded in the output; must have its fingerprint)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per hit per line")
    ann = parser.add_mutually_exclusive_group()
    ann.add_argument("--index", default=None, metavar="PATH",
                     help="approximate search with the index at PATH (see --build-index)")
    ann.add_argument("--ann", action="store_true",
                     help="approximate search with the index at its default place, DIR/_index")
    parser.add_argument("--build-index", action="store_true",
                        help="build or update the approximate index (at --index PATH or the default place) "
                             "first, on vectors post-processed as --postprocess says (rebuilt when it was built "
                             "with another post-processing), then search with it")
    parser.add_argument("--ef-search", type=int, default=256,
                        help="HNSW search breadth (higher: better recall, slower; default 256)")
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows scored at a time (exact search)")
    parser.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto (default: CUDA when present)")
    parser.add_argument("--postprocess", choices=["none", "center", "abtt", "whiten"], default=None,
                        help="correction of the vectors before the cosine, for exact and approximate search "
                             "(default: the post-processor fitted on the output, if it has one; a method is "
                             "fitted on the output's moments). An index built with another post-processing is "
                             "refused (or rebuilt with --build-index)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="search the finished units of an unfinished job (refused by default)")


def cmd_search(args: argparse.Namespace) -> int:
    """Prints the hits; errors (SearchError, OutputError) reach the CLI's one-line handler (exit 2)."""
    from elmo_dist.search import SearchIndex, build_index, format_hits

    if args.query == ["-"]:
        queries = [line.strip() for line in sys.stdin if line.strip()]
    else:
        queries = [" ".join(args.query)]
    if not queries:
        print("elmo-dist: error: no query", file=sys.stderr)
        return EXIT_USER_ERROR
    index = args.index or (True if args.ann else None)
    if args.build_index:
        index = build_index(args.directory, args.index, allow_partial=args.allow_partial,
                            postprocess=args.postprocess)
    idx = SearchIndex.open(args.directory, model=args.model, index=index, batch_rows=args.batch_rows,
                           device=args.device, ef_search=args.ef_search, allow_partial=args.allow_partial,
                           postprocess=args.postprocess)
    results = idx.search(queries, k=args.k)
    if args.json:
        for q, hits in zip(queries, results):
            for rank, h in enumerate(hits, 1):
                print(json.dumps({"query": q, "rank": rank, **h.to_dict()}, ensure_ascii=False))
    else:
        for i, (q, hits) in enumerate(zip(queries, results)):
            if i:
                print()
            print(format_hits(hits, q if len(queries) > 1 else None))
    return EXIT_OK


def register(sub) -> None:
    s = sub.add_parser("search", help="nearest sentences to a query in an embedded output",
                       description="Cosine search over an output directory's sentence embeddings: exact "
                                   "(streaming the shards) or approximate (a faiss HNSW index).")
    add_search_arguments(s)
    s.set_defaults(func=cmd_search)
