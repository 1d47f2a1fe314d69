"""Raw text -> sentences -> tokens.

Sentence splitting uses sentencex by default (Wikimedia's rule-based splitter, in Rust: no model
download, ~10M tokens/s) or pysbd (rule-based, pure Python, ~25k tokens/s); text is split on line
breaks first, so a line break always ends a sentence. Word tokenization uses the Moses tokenizer
from sacremoses, the tokenization style of the 1B Word Benchmark that ELMo was trained on
(``It's`` -> ``It 's``, punctuation split off, no HTML escaping), whatever the splitter. Both
are built once per ``Tokenizer`` and reused: constructing them is far costlier than using them.

The splitters were chosen against a sentence-boundary gold kept in the repository
(``tests/fixtures/sentence_gold.txt``, scored by ``elmo_dist.text.split_eval``); see
docs/performance.md "Sentence splitting".
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Iterator, Literal

logger = logging.getLogger(__name__)

SentenceSplit = Literal["sentencex", "pysbd", "newline", "none"]
SENTENCE_SPLITS: tuple[str, ...] = ("sentencex", "pysbd", "newline", "none")

# A piece that is only a list label ("1.", "(a)", "iv)") is no sentence: sentencex cuts "1." off
# the item it numbers, so such a piece is glued back onto the piece after it.
_LIST_LABEL = re.compile(r"\(?(?:\d{1,3}|[A-Za-z]|[ivxlcdmIVXLCDM]{2,6})[.)]")


def _glue_list_labels(pieces: list[str]) -> list[str]:
    out: list[str] = []
    carry = ""
    for p in pieces:
        if _LIST_LABEL.fullmatch(p.strip()):
            carry += p
            continue
        out.append(carry + p)
        carry = ""
    if carry:
        out.append(carry)
    return out


class _Sentencex:
    """sentencex on one line of text, list labels glued back to their item (a picklable callable)."""

    def __init__(self, lang: str):
        import sentencex

        self.lang, self._segment = lang, sentencex.segment

    def __call__(self, line: str) -> list[str]:
        return _glue_list_labels(list(self._segment(self.lang, line)))

    def __reduce__(self):
        return _Sentencex, (self.lang,)


def _moses_tokenizer(lang: str):
    """sacremoses' MosesTokenizer with its two character-class tests made set look-ups.

    sacremoses builds ``set(IsAlpha)`` / ``set(IsLower)`` (all of Unicode's letters) on every call
    of ``isanyalpha`` / ``islower``, which it makes for each token ending in a period: about a
    third of its time on news text. Here the sets are built once; the answers, and so the tokens,
    are the same (tests/text/test_split_gold.py checks them against plain sacremoses).
    """
    from sacremoses import MosesTokenizer

    class _Moses(MosesTokenizer):
        def __init__(self, lang: str):
            super().__init__(lang=lang)
            self._is_lower = frozenset(self.IsLower)
            self._is_alpha = frozenset(self.IsAlpha)

        def islower(self, text):  # sacremoses: not set(text).difference(set(self.IsLower))
            return self._is_lower.issuperset(text)

        def isanyalpha(self, text):  # sacremoses: any(set(text).intersection(set(self.IsAlpha)))
            return not self._is_alpha.isdisjoint(text)

        def __reduce__(self):  # the class is local: pickle as "build one again"
            return _moses_tokenizer, (self.lang,)

    return _Moses(lang)


class Tokenizer:
    """Split a document into sentences of tokens.

    Args:
        sentence_split: "sentencex" (default: fast rule-based splitter), "pysbd" (the slower
            rule-based splitter used before), "newline" (one sentence per non-empty line) or
            "none" (the whole text is one sentence). sentencex and pysbd split each line.
        lang: language code for the splitter and the Moses tokenizer.
    """

    def __init__(self, sentence_split: SentenceSplit = "sentencex", lang: str = "en"):
        if sentence_split not in SENTENCE_SPLITS:
            raise ValueError(f"sentence_split must be one of {', '.join(SENTENCE_SPLITS)}, "
                             f"got {sentence_split!r}")
        self.sentence_split = sentence_split
        self._moses = _moses_tokenizer(lang)
        self._split_line: Callable[[str], list[str]] | None = None
        if sentence_split == "sentencex":
            self._split_line = _Sentencex(lang)
        elif sentence_split == "pysbd":
            import pysbd

            self._split_line = pysbd.Segmenter(language=lang, clean=False).segment

    def sentences(self, text: str) -> list[str]:
        """Split ``text`` into sentence strings (stripped, empty ones dropped)."""
        if self.sentence_split == "none":
            parts = [text]
        elif self.sentence_split == "newline":
            parts = text.splitlines()
        else:
            parts = []
            split = self._split_line
            for line in text.splitlines():  # splitters are much faster on paragraphs than on books
                if line.strip():
                    parts.extend(split(line))
        return [p.strip() for p in parts if p and p.strip()]

    def tokens(self, sentence: str) -> list[str]:
        """Moses tokens of one sentence (no escaping of &, <, > or quotes)."""
        return self._moses.tokenize(sentence, escape=False)

    def __call__(self, text: str) -> list[list[str]]:
        """Tokenized sentences of a document; sentences with no token are dropped."""
        out = []
        for s in self.sentences(text):
            toks = self.tokens(s)
            if toks:
                out.append(toks)
        return out

    def iter_sentences(self, texts) -> Iterator[list[str]]:
        for text in texts:
            yield from self(text)
