"""Prepare: input rows -> one row per sentence (or chunk of a long sentence) with its tokens.

Raw text is split into sentences and tokenized (``text.tokenize.Tokenizer``); pre-tokenized input
is used as it is. Bad rows are skipped and counted by reason, never dropped silently:
``null``, ``empty`` (no token), ``too_long`` (text over max_document_chars); text that is not valid
UTF-8 is decoded with replacement characters and counted as ``invalid_utf8``.
"""

from __future__ import annotations

import collections
import logging
from concurrent.futures import Executor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from elmo_dist import schema as S
from elmo_dist.config import TextSettings
from elmo_dist.text.tokenize import Tokenizer

logger = logging.getLogger(__name__)

_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenizer_for(text: TextSettings) -> Tokenizer:
    """One Tokenizer per process and setting (building one costs far more than using it)."""
    if text.sentence_split not in _TOKENIZERS:
        _TOKENIZERS[text.sentence_split] = Tokenizer(text.sentence_split)
    return _TOKENIZERS[text.sentence_split]


def id_strings(col: pa.ChunkedArray) -> list[str]:
    """Ids as strings: text as it is, integers in decimal, binary and UUID values as hex."""
    t = col.type
    if isinstance(t, pa.ExtensionType):
        col = pa.chunked_array([c.storage for c in col.chunks], t.storage_type)
        t = t.storage_type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return [v.hex() for v in col.to_pylist()]
    return [str(v) for v in col.to_pylist()]


def _ids(table: pa.Table, text: TextSettings) -> list[str]:
    if text.id_column:
        col = table.column(text.id_column)
        if col.null_count:  # planning refuses null ids from the footers; this guards the rest
            raise ValueError(f"id column '{text.id_column}' has {col.null_count} null values")
        return id_strings(col)
    sources = table.column(S.SOURCE).to_pylist()
    rows = table.column(S.ROW).to_pylist()
    return [f"{s}#{r}" for s, r in zip(sources, rows)]


def _texts(col: pa.ChunkedArray, stats: collections.Counter) -> list[str | None]:
    """Decode a string/binary column without trusting it to be valid UTF-8."""
    raw = pc.cast(col, pa.large_binary()) if not pa.types.is_large_binary(col.type) else col
    out: list[str | None] = []
    for b in raw.to_pylist():
        if b is None:
            out.append(None)
            continue
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            stats["invalid_utf8"] += 1
            out.append(b.decode("utf-8", errors="replace"))
    return out


def chunk(tokens: list[str], max_tokens: int) -> list[list[str]]:
    return [tokens[i:i + max_tokens] for i in range(0, len(tokens), max_tokens)] or [[]]


def prepare(table: pa.Table, text: TextSettings) -> tuple[pa.Table, dict[str, int]]:
    """
    Args:
        table: a unit's rows (input column(s), ``source``, ``_row``).
    Returns:
        (sentences table with id, sentence_index, chunk, n_chunks, source, text, tokens, n_tokens;
         counts: rows, sentences, chunked_sentences, tokens, skipped_<reason>)
    """
    stats: collections.Counter = collections.Counter()
    ids = _ids(table, text)
    stats["duplicate_ids_in_unit"] = len(ids) - len(set(ids)) if text.id_column else 0
    sources = table.column(S.SOURCE).to_pylist()
    cols: dict[str, list[Any]] = {k: [] for k in (S.ID, S.SENTENCE_INDEX, S.CHUNK, S.N_CHUNKS,
                                                   S.SOURCE, S.TEXT, S.TOKENS, S.N_TOKENS)}

    def emit(i: int, s_idx: int, sentence_text: str | None, toks: list[str]) -> None:
        pieces = chunk(toks, text.max_sentence_tokens)
        if len(pieces) > 1:
            stats["chunked_sentences"] += 1
        for c, piece in enumerate(pieces):
            cols[S.ID].append(ids[i])
            cols[S.SENTENCE_INDEX].append(s_idx)
            cols[S.CHUNK].append(c)
            cols[S.N_CHUNKS].append(len(pieces))
            cols[S.SOURCE].append(sources[i])
            cols[S.TEXT].append(sentence_text if len(pieces) == 1 and sentence_text is not None
                                else " ".join(piece))
            cols[S.TOKENS].append(piece)
            cols[S.N_TOKENS].append(len(piece))
            stats["tokens"] += len(piece)
        stats["sentences"] += 1

    stats["rows"] = table.num_rows
    if text.text_column:
        tok = tokenizer_for(text)
        for i, doc in enumerate(_texts(table.column(text.text_column), stats)):
            if doc is None:
                stats["skipped_null"] += 1
            elif len(doc) > text.max_document_chars:
                stats["skipped_too_long"] += 1
                logger.warning("skipping row %s: %d characters > max_document_chars %d",
                               ids[i], len(doc), text.max_document_chars)
            else:
                n = 0
                for s_idx, sent in enumerate(tok.sentences(doc)):
                    toks = tok.tokens(sent)
                    if toks:
                        emit(i, n, sent, toks)
                        n += 1
                if n == 0:
                    stats["skipped_empty"] += 1
    else:
        col = table.column(text.tokens_column)
        nested = pa.types.is_list(col.type.value_type) or pa.types.is_large_list(col.type.value_type)
        for i, value in enumerate(col.to_pylist()):
            sentences = value if nested else [value]
            if value is None:
                stats["skipped_null"] += 1
                continue
            n = 0
            for sent in sentences:
                if sent is None or any(t is None for t in sent):
                    stats["skipped_null_sentences"] += 1
                    continue
                if sent:
                    emit(i, n, " ".join(sent), list(sent))
                    n += 1
            if n == 0:
                stats["skipped_empty"] += 1
    out = pa.table({
        S.ID: pa.array(cols[S.ID], pa.string()),
        S.SENTENCE_INDEX: pa.array(cols[S.SENTENCE_INDEX], pa.int32()),
        S.CHUNK: pa.array(cols[S.CHUNK], pa.int32()),
        S.N_CHUNKS: pa.array(cols[S.N_CHUNKS], pa.int32()),
        S.SOURCE: pa.array(cols[S.SOURCE], pa.string()),
        S.TEXT: pa.array(cols[S.TEXT], pa.string()),
        S.TOKENS: pa.array(cols[S.TOKENS], pa.list_(pa.string())),
        S.N_TOKENS: pa.array(cols[S.N_TOKENS], pa.int32()),
    })
    return out, dict(stats)


MIN_ROWS_PER_PART = 4  # a unit is sliced for parallel preparing only into parts of at least this many rows


def prepare_split(table: pa.Table, text: TextSettings, pool: Executor | None = None,
                  parts: int = 1) -> tuple[pa.Table, dict[str, int]]:
    """``prepare`` over up to ``parts`` contiguous row slices in ``pool`` (processes: splitting and
    tokenizing is pure Python), concatenated in row order: the same table and counts as
    ``prepare(table, text)`` (duplicate ids are counted over the whole table), plus ``prepare_parts``,
    the slices used. Without a pool, or for a small table, it is ``prepare`` itself (one part).
    ``pool``: an Executor, or anything with its ``submit(fn, *args) -> Future`` (the job's Ray tasks).
    """
    n = table.num_rows
    parts = min(parts, n // MIN_ROWS_PER_PART)
    if pool is None or parts < 2:
        out, stats = prepare(table, text)
        return out, dict(stats, prepare_parts=1)
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    futures = [pool.submit(prepare, table.slice(a, b - a), text) for a, b in zip(bounds, bounds[1:])]
    results = [f.result() for f in futures]
    stats: collections.Counter = collections.Counter()
    for _, s in results:
        stats.update(s)
    if text.id_column:  # a repeat may span two slices
        ids = _ids(table, text)
        stats["duplicate_ids_in_unit"] = len(ids) - len(set(ids))
    return pa.concat_tables([t for t, _ in results]), dict(stats, prepare_parts=parts)
