"""Raw text -> sentences -> tokens.

Sentence splitting uses pysbd (rule-based, no model download); word tokenization uses the Moses
tokenizer from sacremoses, the tokenization style of the 1B Word Benchmark that ELMo was trained on
(``Isn't`` -> ``Is n't``, punctuation split off, no HTML escaping). Both are built once per
``Tokenizer`` and reused: constructing them is far costlier than using them.
"""

from __future__ import annotations

import logging
from typing import Iterator, Literal

logger = logging.getLogger(__name__)

SentenceSplit = Literal["pysbd", "newline", "none"]


class Tokenizer:
    """Split a document into sentences of tokens.

    Args:
        sentence_split: "pysbd" (rule-based English splitter), "newline" (one sentence per
            non-empty line) or "none" (the whole text is one sentence).
        lang: language code for both the splitter and the Moses tokenizer.
    """

    def __init__(self, sentence_split: SentenceSplit = "pysbd", lang: str = "en"):
        from sacremoses import MosesTokenizer

        self.sentence_split = sentence_split
        self._moses = MosesTokenizer(lang=lang)
        self._segmenter = None
        if sentence_split == "pysbd":
            import pysbd

            self._segmenter = pysbd.Segmenter(language=lang, clean=False)
        elif sentence_split not in ("newline", "none"):
            raise ValueError(f"sentence_split must be pysbd, newline or none, got {sentence_split!r}")

    def sentences(self, text: str) -> list[str]:
        """Split ``text`` into sentence strings (stripped, empty ones dropped)."""
        if self.sentence_split == "none":
            parts = [text]
        elif self.sentence_split == "newline":
            parts = text.splitlines()
        else:
            parts = []
            for para in text.splitlines():  # pysbd is much faster on paragraphs than on books
                if para.strip():
                    parts.extend(self._segmenter.segment(para))
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
