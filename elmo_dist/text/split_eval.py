"""Sentence-boundary gold and scores: how well a sentence splitter does on text with known boundaries.

The gold (``tests/fixtures/sentence_gold.txt`` in the repository) holds paragraphs written one
sentence per line; a paragraph's text is its sentences glued with one space. A splitter's output is
aligned with the text by counting non-space characters, so splitters that strip, keep or normalize
whitespace are scored alike. Scores: boundary precision, recall and F1 over all paragraphs, and the
share of paragraphs split exactly right.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class GoldParagraph:
    category: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def load_gold(path: str | Path) -> list[GoldParagraph]:
    """Parse the gold file (format described in its header)."""
    out: list[GoldParagraph] = []
    category = None
    current: list[str] = []

    def flush() -> None:
        if current:
            if category is None:
                raise ValueError(f"{path}: paragraph before any '## category' line")
            out.append(GoldParagraph(category, tuple(current)))
            current.clear()

    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith("## "):
            flush()
            category = line[3:].strip()
        elif line.startswith("#"):
            continue
        elif not line:
            flush()
        else:
            if raw != line:
                raise ValueError(f"{path}:{lineno}: sentence with leading or trailing space")
            current.append(line)
    flush()
    return out


_SPACE = re.compile(r"\s+")


def _nonspace_len(s: str) -> int:
    return len(_SPACE.sub("", s))


def boundaries(sentences: Iterable[str]) -> set[int]:
    """Sentence boundaries as counts of non-space characters before each sentence but the first."""
    out, n = set(), 0
    for s in sentences:
        k = _nonspace_len(s)
        if k == 0:
            continue
        if n:
            out.add(n)
        n += k
    return out


@dataclasses.dataclass
class Scores:
    precision: float
    recall: float
    f1: float
    exact: float  # share of paragraphs split exactly right
    paragraphs: int
    gold_boundaries: int
    errors: list[tuple[GoldParagraph, list[str]]]

    def row(self) -> str:
        return f"P {self.precision:.3f} R {self.recall:.3f} F1 {self.f1:.3f} exact {self.exact:.3f}"


def score(split: Callable[[str], Sequence[str]], gold: Sequence[GoldParagraph]) -> Scores:
    """Score ``split`` (paragraph text -> sentence strings) on the gold paragraphs."""
    tp = fp = fn = exact = 0
    errors = []
    for para in gold:
        text = para.text
        got = list(split(text))
        if sum(map(_nonspace_len, got)) != _nonspace_len(text):
            raise ValueError(f"splitter changed the non-space characters of {text!r}: {got!r}")
        g, p = boundaries(para.sentences), boundaries(got)
        tp += len(g & p)
        fp += len(p - g)
        fn += len(g - p)
        if g == p:
            exact += 1
        else:
            errors.append((para, got))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1, exact / len(gold) if gold else 1.0, len(gold), tp + fn, errors)
