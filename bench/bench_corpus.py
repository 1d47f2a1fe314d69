"""Real-text corpora for the benchmarks: the bundled sample and the Python 3.11 manual as Parquet.

    python bench/bench_corpus.py            # build (once) and describe the cached manual corpus

The larger corpus is the prose of the Python 3.11 documentation (Debian package ``python3.11-doc``,
PSF License 2), fetched with ``apt-get download`` + ``dpkg-deb -x`` into the cache (nothing is
installed system-wide) and turned into text with the training-corpus recipe's HTML extractor
(``tools/corpus_recipe.py``: code blocks, signatures and navigation skipped, one paragraph per
line). Each page is cut at paragraph boundaries into documents of about ``DOC_WORDS`` words (web
page sized), the documents are shuffled with a fixed seed (so a prefix is a fair sample of the
manual), and each is tokenized once with the job's default tokenizer to know its token count.

Cache (``~/.cache/elmo-dist/bench`` or ``$ELMO_DIST_BENCH_CACHE``): ``pydocs-v1/docs.parquet``
(id, text, tokens), ``pydocs-v1/meta.json``, and the per-size subsets the benchmarks read:
``pydocs-v1/subsets/<tokens>t-<files>f-<rows>r/part-NNN.parquet`` (columns id, text; several
files, row groups of ``rows`` documents).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("ELMO_DIST_BENCH_CACHE") or os.path.expanduser("~/.cache/elmo-dist/bench")
PYDOCS = "pydocs-v1"  # bump when the extraction or the cutting changes
PACKAGE = "python3.11-doc"
LICENCE = "PSF License 2 (Python Software Foundation)"
DOC_WORDS = 600
SEED = 1234


def _recipe():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import corpus_recipe
    finally:
        sys.path.pop(0)
    return corpus_recipe


def cut_page(page_id: str, text: str, words: int = DOC_WORDS) -> list[tuple[str, str]]:
    """A page (one paragraph per line) as documents of whole paragraphs, about ``words`` words each."""
    docs, cur, n = [], [], 0
    for line in text.split("\n"):
        cur.append(line)
        n += len(line.split())
        if n >= words:
            docs.append(cur)
            cur, n = [], 0
    if cur:
        if docs and n < words // 4:  # a short tail joins the previous document
            docs[-1] += cur
        else:
            docs.append(cur)
    return [(f"{page_id}#{i}", "\n".join(d)) for i, d in enumerate(docs)]


def build_pydocs(cache: str = CACHE, log=print) -> tuple[str, dict]:
    """The manual's documents (``docs.parquet``) and their description; built once, then read."""
    base = os.path.join(cache, PYDOCS)
    docs_path, meta_path = os.path.join(base, "docs.parquet"), os.path.join(base, "meta.json")
    if os.path.exists(docs_path) and os.path.exists(meta_path):
        with open(meta_path) as fh:
            return docs_path, json.load(fh)
    from pathlib import Path

    from elmo_dist.text.tokenize import Tokenizer

    t0 = time.perf_counter()
    recipe = _recipe()
    root, version = recipe.fetch_deb(PACKAGE, Path(cache) / "work")
    log(f"building the {PACKAGE} {version} corpus under {base} (once) ...")
    pages = list(recipe.iter_python_docs(root))
    docs = [d for pid, text in pages for d in cut_page(pid, text)]
    random.Random(SEED).shuffle(docs)
    tok = Tokenizer()
    counts = [sum(len(s) for s in tok(text)) for _, text in docs]
    os.makedirs(base, exist_ok=True)
    tmp = docs_path + ".tmp"
    pq.write_table(pa.table({"id": [d[0] for d in docs], "text": [d[1] for d in docs],
                             "tokens": pa.array(counts, pa.int64())}), tmp, row_group_size=1000)
    os.replace(tmp, docs_path)
    meta = {"name": "pydocs", "title": "Python 3.11 documentation (prose; code blocks skipped)",
            "package": PACKAGE, "version": version, "licence": LICENCE, "pages": len(pages),
            "documents": len(docs), "words": sum(len(d[1].split()) for d in docs), "tokens": sum(counts),
            "doc_words": DOC_WORDS, "seed": SEED, "tokenizer": "elmo_dist Tokenizer() (the job's default)",
            "build_seconds": round(time.perf_counter() - t0, 1)}
    with open(meta_path + ".tmp", "w") as fh:
        json.dump(meta, fh, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    log(f"built in {meta['build_seconds']} s: {meta['documents']} documents, {meta['tokens']} tokens")
    return docs_path, meta


def pydocs_subset(max_tokens: int, files: int, rows_per_group: int, cache: str = CACHE,
                  log=print) -> tuple[str, dict]:
    """A directory of ``files`` Parquet files (id, text; row groups of ``rows_per_group`` documents)
    holding the first documents of the shuffled manual up to ``max_tokens`` tokens (0: all)."""
    docs_path, meta = build_pydocs(cache, log)
    t = pq.read_table(docs_path)
    counts = t["tokens"].to_pylist()
    n, total = 0, 0
    for c in counts:
        if max_tokens and total >= max_tokens:
            break
        n, total = n + 1, total + c
    files = max(1, min(files, n))
    tag = f"{max_tokens or 'all'}t-{files}f-{rows_per_group}r"
    out = os.path.join(cache, PYDOCS, "subsets", tag)
    info = {**meta, "documents": n, "tokens": total, "files": files, "rows_per_group": rows_per_group}
    if os.path.exists(os.path.join(out, ".complete")):
        return out, info
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    sub = t.slice(0, n).select(["id", "text"])
    per = -(-n // files)
    for f in range(files):
        pq.write_table(sub.slice(f * per, per), os.path.join(tmp, f"part-{f:03d}.parquet"),
                       row_group_size=rows_per_group)
    open(os.path.join(tmp, ".complete"), "w").close()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out, info


def sample_corpus(max_rows: int = 0, tmp: str | None = None) -> tuple[str, dict]:
    """The bundled sample (Austen, public domain): the file itself, or its first ``max_rows`` rows
    written under ``tmp``."""
    from elmo_dist.paths import SAMPLE_CORPUS

    f = pq.ParquetFile(SAMPLE_CORPUS)
    info = {"name": "sample", "title": "bundled sample (Jane Austen, public domain)", "licence": "public domain",
            "documents": f.metadata.num_rows, "files": 1, "row_groups": f.metadata.num_row_groups}
    if not max_rows or max_rows >= f.metadata.num_rows:
        return SAMPLE_CORPUS, info
    os.makedirs(tmp, exist_ok=True)
    path = os.path.join(tmp, "sample.parquet")
    pq.write_table(f.read().slice(0, max_rows), path)
    return path, {**info, "documents": max_rows}


if __name__ == "__main__":
    path, meta = build_pydocs()
    print(path)
    print(json.dumps(meta, indent=1))
