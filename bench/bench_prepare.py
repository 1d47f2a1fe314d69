"""Prepare-stage speed and sentence-splitting quality, one process.

Corpus (deterministic): the gold paragraphs of ``tests/fixtures/sentence_gold.txt`` shuffled
``--repeats`` times and grouped 3-8 per document (one paragraph per line, like a news article),
plus the bundled sample corpus (``elmo_dist/data/sample_corpus.parquet``, column ``text``).
About 107k Moses tokens with the defaults. Every tokens/s figure divides the same token count
(Moses tokens of the corpus as the default path makes them) by the wall time of one process.

Measured, in one run so the candidates share the machine's load:

- per splitter candidate (those installed): split alone (each line of each document), split +
  sacremoses Moses tokenization of each sentence, boundary F1 and exact paragraphs on the gold;
- Moses tokenizers on the default path's sentences: plain sacremoses, the project's sacremoses
  with set look-ups (``Tokenizer.tokens``) and, when installed, opus-fast-mosestokenizer (C++),
  with the share of sentences whose tokens equal plain sacremoses';
- end to end: ``elmo_dist.stages.prepare.prepare()`` on a pyarrow table of the documents for
  ``sentence_split="pysbd"`` (the old default) and ``"sentencex"`` (the default), each with plain
  sacremoses (as before this change) and with the project's faster sacremoses;
- a unit split over a pool of spawned processes (``prepare_split``, what a GPU actor's prepare
  processes do), for each ``--processes`` size: tokens/s and the speed-up over one process.

    python bench/bench_prepare.py
    python bench/bench_prepare.py --repeats 20 --passes 3
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from elmo_dist import schema as S  # noqa: E402
from elmo_dist.config import TextSettings  # noqa: E402
from elmo_dist.stages.prepare import prepare, tokenizer_for  # noqa: E402
from elmo_dist.text.split_eval import load_gold, score  # noqa: E402
from elmo_dist.text.tokenize import Tokenizer  # noqa: E402

GOLD = ROOT / "tests" / "fixtures" / "sentence_gold.txt"
SAMPLE = ROOT / "elmo_dist" / "data" / "sample_corpus.parquet"


def load() -> str:
    return "%.2f" % os.getloadavg()[0]


def corpus(repeats: int, seed: int = 0) -> list[str]:
    gold = load_gold(GOLD)
    rng = random.Random(seed)
    docs = []
    for _ in range(repeats):
        paras = [p.text for p in gold]
        rng.shuffle(paras)
        i = 0
        while i < len(paras):
            k = rng.randint(3, 8)
            docs.append("\n".join(paras[i:i + k]))
            i += k
    docs += pq.read_table(SAMPLE, columns=["text"]).column("text").to_pylist()
    rng.shuffle(docs)
    return docs


def candidates():
    """name -> (licence, builder of a line splitter: str -> list[str]). Builders import lazily."""

    def tok(name):
        return Tokenizer(name).sentences

    def sentencex_raw():
        import sentencex
        return lambda t: sentencex.segment("en", t)

    def blingfire():
        import blingfire
        return lambda t: blingfire.text_to_sentences(t).split("\n")

    def nupunkt():
        import nupunkt
        return nupunkt.sent_tokenize

    def nupunkt_rs():
        import nupunkt_rs
        return nupunkt_rs.create_default_tokenizer().tokenize

    def sentence_splitter():
        from sentence_splitter import SentenceSplitter
        return SentenceSplitter(language="en").split

    def segtok():
        from segtok.segmenter import split_single
        return lambda t: list(split_single(t))

    def syntok():
        from syntok import segmenter

        def split(t):
            return ["".join(x.spacing + x.value for x in sent) for para in segmenter.process(t) for sent in para]
        return split

    def fast_moses():
        from mosestokenizer import MosesTokenizer
        return MosesTokenizer("en").split

    return {
        "sentencex + list-label glue (default)": ("MIT", lambda: tok("sentencex")),
        "sentencex (raw)": ("MIT", sentencex_raw),
        "pysbd (old default)": ("MIT", lambda: tok("pysbd")),
        "blingfire": ("MIT", blingfire),
        "nupunkt": ("MIT", nupunkt),
        "nupunkt-rs": ("MIT", nupunkt_rs),
        "sentence-splitter (Moses port)": ("LGPL-3.0", sentence_splitter),
        "syntok": ("MIT", syntok),
        "segtok": ("MIT", segtok),
        "opus-fast-mosestokenizer .split": ("LGPL-2.1+", fast_moses),
    }


def best_of(passes: int, fn):
    best, out = float("inf"), None
    for _ in range(passes):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="times the gold paragraphs enter the corpus")
    ap.add_argument("--passes", type=int, default=2, help="timed passes per measurement (best is kept)")
    ap.add_argument("--processes", default="2", help="pool sizes for the prepare_split rows ('' to skip)")
    args = ap.parse_args(argv)

    docs = corpus(args.repeats)
    lines = [ln for d in docs for ln in d.splitlines() if ln.strip()]
    gold = load_gold(GOLD)
    default = Tokenizer()
    sents = default.sentences("\n".join(lines))
    moses = default.tokens
    n_tokens = sum(len(moses(s)) for s in sents)
    print(f"corpus: {len(docs)} documents, {len(lines)} lines, {n_tokens:,} Moses tokens; "
          f"gold: {len(gold)} paragraphs, {sum(len(p.sentences) for p in gold)} sentences; "
          f"{os.cpu_count()} CPUs, load {load()}\n")

    print("| splitter | licence | split tokens/s | split + Moses (`Tokenizer.tokens`) tokens/s | boundary P / R / F1 | exact paragraphs | load |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for name, (licence, build) in candidates().items():
        try:
            split = build()
        except Exception as e:  # not installed
            print(f"| {name} | {licence} | not installed ({type(e).__name__}) | | | | |")
            continue
        split(lines[0])
        t_split, pieces = best_of(args.passes, lambda: [s.strip() for ln in lines for s in split(ln) if s.strip()])
        t_tok, _ = best_of(args.passes, lambda: [moses(s) for s in pieces])
        q = score(split, gold)
        print(f"| {name} | {licence} | {n_tokens / t_split:,.0f} | {n_tokens / (t_split + t_tok):,.0f} | "
              f"{q.precision:.3f} / {q.recall:.3f} / **{q.f1:.3f}** | {q.exact:.3f} | {load()} |", flush=True)

    from sacremoses import MosesTokenizer

    plain = MosesTokenizer(lang="en")
    print("\n| Moses tokenizer (default path's sentences) | tokens/s | sentences with tokens equal to sacremoses' | load |")
    print("| --- | ---: | ---: | ---: |")
    t, ref = best_of(args.passes, lambda: [plain.tokenize(s, escape=False) for s in sents])
    print(f"| sacremoses `tokenize(escape=False)` (before) | {n_tokens / t:,.0f} | 1.000 | {load()} |", flush=True)
    t, got = best_of(args.passes, lambda: [moses(s) for s in sents])
    same = sum(a == b for a, b in zip(ref, got)) / len(ref)
    print(f"| sacremoses with set look-ups (`Tokenizer.tokens`, used) | {n_tokens / t:,.0f} | {same:.3f} | {load()} |",
          flush=True)
    try:
        from mosestokenizer import MosesTokenizer as FastMoses
        fast = FastMoses("en")
        t, got = best_of(args.passes, lambda: [fast.tokenize(s) for s in sents])
        same = sum(a == b for a, b in zip(ref, got)) / len(ref)
        print(f"| opus-fast-mosestokenizer (C++, LGPL) | {n_tokens / t:,.0f} | {same:.3f} | {load()} |")
    except Exception as e:
        print(f"| opus-fast-mosestokenizer | not installed ({type(e).__name__}) | | |")

    n = len(docs)
    table = pa.table({"text": pa.array(docs, pa.string()), S.SOURCE: pa.array(["bench.parquet"] * n),
                      S.ROW: pa.array(range(n), pa.int64())})
    print(f"\n| `stages.prepare.prepare()`, {n} documents, splitter + Moses | tokens/s per process | sentences | tokens | load |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for split, moses_kind in (("pysbd", "plain"), ("pysbd", "fast"), ("sentencex", "plain"), ("sentencex", "fast")):
        settings = TextSettings(sentence_split=split)
        tok = tokenizer_for(settings)  # built once per process, as in the pipeline: not timed
        fast_moses, tok._moses = tok._moses, (plain if moses_kind == "plain" else tok._moses)
        try:
            t, (out, stats) = best_of(args.passes, lambda: prepare(table, settings))
        finally:
            tok._moses = fast_moses
        label = f"`{split}`, " + ("plain sacremoses" if moses_kind == "plain" else "sacremoses with set look-ups")
        if (split, moses_kind) == ("pysbd", "plain"):
            label += " (before)"
        elif (split, moses_kind) == (TextSettings().sentence_split, "fast"):
            label += " (**default now**)"
        print(f"| {label} | {stats['tokens'] / t:,.0f} | {stats['sentences']:,} | {stats['tokens']:,} | {load()} |",
              flush=True)

    if args.processes:  # a GPU actor's prepare processes: one unit in row slices over a process pool
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from elmo_dist.stages.prepare import prepare_split

        settings = TextSettings()
        big = pa.concat_tables([table] * 4)  # a unit of a realistic size for one pool round trip
        t1, (ref, _) = best_of(args.passes, lambda: prepare(big, settings))
        print(f"\n| `prepare_split()` over k spawned processes, {big.num_rows} documents | tokens/s | "
              "speed-up vs one process | same table | load |")
        print("| --- | ---: | ---: | --- | ---: |")
        print(f"| 1 (`prepare()` in the caller) | {ref.num_rows and sum(ref[S.N_TOKENS].to_pylist()) / t1:,.0f} | "
              f"1.00x | - | {load()} |", flush=True)
        for k in [int(x) for x in args.processes.split(",")]:
            with ProcessPoolExecutor(k, mp_context=multiprocessing.get_context("spawn")) as pool:
                prepare_split(big.slice(0, 8 * k), settings, pool, k)  # start the workers, build tokenizers
                t, (out, _) = best_of(args.passes, lambda: prepare_split(big, settings, pool, k))
            n_tok = sum(out[S.N_TOKENS].to_pylist())
            print(f"| {k} | {n_tok / t:,.0f} | {t1 / t:.2f}x | {out.equals(ref)} | {load()} |", flush=True)


if __name__ == "__main__":
    main()
