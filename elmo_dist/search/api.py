"""The query API: ``search``, ``SearchIndex`` (an output opened for searching), ``Hit``, ``format_hits``.

The query is embedded by the same model, with the same sentence settings (``sentence_output``,
``pooling``, scalar-mix weights), as the output it is compared with; all of that is read from the
shards' metadata, and a model whose fingerprint differs from the one recorded there is refused.

Exact search streams the ``sentence_embedding`` column of every shard in batches of
``batch_rows`` rows through the top-k kernel (``elmo_dist.search.topk``), which keeps a running
top-k per query, as global row numbers (the row's position in the concatenation of the shards, in
``list_shards`` order). Memory is O(batch_rows x D + queries x k) whatever the corpus size; texts
and ids are read afterwards for the k hits only. Approximate search asks the HNSW index
(``elmo_dist.search.index``), whose labels are row numbers in the shards it covers; it holds the
post-processed vectors, and the queries are post-processed the same way before the lookup.

Shapes: N rows in the output, D = embedding width, Q queries, B = rows in a batch, K = k.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from elmo_dist import schema
from elmo_dist.errors import SearchError
from elmo_dist.output import Shard, ShardSet
from elmo_dist.search.index import (build_hint, default_index_path, indexed_shards, postprocessing_of, read_index,
                                    resolve_postprocessing)
from elmo_dist.search.topk import Scorer, TopK, normalize, resolve_device

if TYPE_CHECKING:  # importing elmo_dist.search must not import torch
    from elmo_dist.model.elmo import Elmo

HIT_COLUMNS = [schema.ID, schema.SENTENCE_INDEX, schema.CHUNK, schema.SOURCE, schema.TEXT]


@dataclass(frozen=True)
class Hit:
    """One result: the sentence (or chunk of one) and its cosine similarity to the query."""

    id: str
    sentence_index: int
    chunk: int
    score: float
    text: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _locate(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global row numbers -> (shard position, row within the shard)."""
    shard = np.searchsorted(offsets, rows, side="right") - 1
    return shard, rows - offsets[shard]


def _fetch(fs: pafs.FileSystem, shards: Sequence[Shard], offsets: np.ndarray,
           rows: np.ndarray) -> dict[int, tuple]:
    """Read the hit columns of the given global rows: {row: (id, sentence_index, chunk, source, text)}."""
    rows = np.unique(rows[rows >= 0])
    out: dict[int, tuple] = {}
    if rows.size == 0:
        return out
    shard_pos, local = _locate(offsets, rows)
    for s in np.unique(shard_pos):
        sel = shard_pos == s
        want_global, want = rows[sel], local[sel]
        with fs.open_input_file(shards[s].path) as fh:
            pf = pq.ParquetFile(fh)
            rg_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            rg_start = np.concatenate([[0], np.cumsum(rg_rows)])
            rg_of = np.searchsorted(rg_start, want, side="right") - 1
            for rg in np.unique(rg_of):
                m = rg_of == rg
                table = pf.read_row_group(int(rg), columns=HIT_COLUMNS).take(want[m] - rg_start[rg])
                cols = [table.column(c).to_pylist() for c in HIT_COLUMNS]
                for g, values in zip(want_global[m], zip(*cols)):
                    out[int(g)] = values
    return out


# ---- the model -----------------------------------------------------------------------------


def _load_model(model: "Elmo | str | None", output: ShardSet) -> "Elmo":
    from elmo_dist.model.elmo import Elmo

    expected = output.model_fingerprint
    emb = output.metadata.get("embedding", {})
    mix_weights, gamma = emb.get("mix_weights"), float(emb.get("gamma", 1.0))
    recorded = output.metadata["model"].get("source")
    if isinstance(model, Elmo):
        elmo, src = model, getattr(model, "source", "") or "the given Elmo"
        if emb.get("sentence_output", "mix") == "mix":
            want = np.asarray(mix_weights if mix_weights is not None else [0.0] * elmo.bilm.num_layers, np.float32)
            have = elmo.scalar_mix.weights.detach().cpu().numpy()
            if have.shape != want.shape or not np.allclose(have, want) \
                    or abs(float(elmo.scalar_mix.gamma) - gamma) > 1e-7:
                raise SearchError(
                    f"{src}: its scalar mix (weights {have.tolist()}, gamma {float(elmo.scalar_mix.gamma)}) "
                    f"differs from the output's (weights {mix_weights}, gamma {gamma}); "
                    "pass the model path instead and the settings are taken from the output")
    else:
        src = str(model) if model is not None else recorded
        try:
            elmo = Elmo.from_pretrained(src, mix_weights=mix_weights, gamma=gamma)
        except (OSError, ValueError) as e:
            if model is None:
                elmo = _default_model_if_matching(expected, mix_weights, gamma)
                if elmo is None:
                    raise SearchError(f"cannot load the output's model {recorded!r} (recorded in the shards' "
                                      f"metadata): {e}. Pass the model directory (--model / model=)") from e
                src = elmo.source
            else:
                raise SearchError(f"cannot load the model {src!r}: {e}") from e
    if elmo.fingerprint != expected:
        raise SearchError(
            f"model {src} has fingerprint {elmo.fingerprint or '(none)'}, but {output.directory} was embedded with "
            f"model {recorded} of fingerprint {expected}: query vectors would not be comparable. "
            "Pass the model the output was embedded with (--model / model=)")
    return elmo


def _default_model_if_matching(fingerprint: str, mix_weights, gamma) -> "Elmo | None":
    """The built-in default model when the recorded source is gone (another machine) but it matches."""
    from elmo_dist.model.elmo import Elmo

    try:
        elmo = Elmo.from_pretrained(None, mix_weights=mix_weights, gamma=gamma)
    except (OSError, ValueError):
        return None
    return elmo if elmo.fingerprint == fingerprint else None


# ---- search --------------------------------------------------------------------------------


class SearchIndex:
    """An output opened for searching: metadata read, model loaded (once, on the first text query).

    >>> idx = SearchIndex.open("out/embeddings")               # exact, streaming
    >>> idx.search("The cat sat on the mat .", k=5)[0][0].text
    >>> idx = SearchIndex.open("out/embeddings", index=True)   # approximate (build_index first)

    Args:
        directory: output directory (local or s3://).
        model: None (the model recorded in the output), a model directory, or a loaded ``Elmo``.
        index: None/False for exact search; True for the index at ``DIR/_index``; or its path.
        batch_rows: rows scored at a time by the exact search (memory ~ batch_rows x D x 8 bytes).
        device: None/"cpu" for NumPy; "cuda[:N]" for torch on that GPU; "auto" for CUDA when present.
        in_memory: exact search over a matrix of all (normalised, float32) vectors loaded once,
            N x D x 4 bytes (on the GPU with a CUDA device), instead of streaming the shards per search.
        ef_search: HNSW candidate-list size at query time (>= k; higher: better recall, slower).
        postprocess: how vectors are corrected before the cosine (``elmo_dist.similarity``): None
            (default) uses the post-processor fitted on the output (by the embed job, ``_job/
            postprocessor.npz``, or for the current refresh version), the raw vectors when it has
            none; "none", "center", "abtt", "whiten" (fitted from the output's moments) choose one;
            a ``Postprocessor`` is used as it is. The same for exact and approximate search: an
            index built with another post-processing (``build_index(..., postprocess=...)``) is
            refused as stale, naming both.
    """

    def __init__(self, output: ShardSet, model=None, index=None, batch_rows: int = 65536, device=None,
                 in_memory: bool = False, ef_search: int = 256, postprocess=None):
        if batch_rows < 1:
            raise SearchError(f"batch_rows must be >= 1, got {batch_rows}")
        self.output = output
        self.batch_rows = batch_rows
        self.device = resolve_device(device)
        self.ef_search = ef_search
        self._model_arg = model
        self._elmo: Elmo | None = None
        self._tokenizer = None
        self._matrix = None
        self.index_path: str | None = None
        self._ann = None
        self.shards, self.offsets = list(output.shards), output.offsets  # the row space of hits
        self.postprocessing: dict[str, Any] = {}  # method, fingerprint, ... (as recorded in an index)
        if index:
            self.index_path = default_index_path(output.directory) if index is True else str(index)
            files = read_index(self.index_path, with_data=False)
            if files is None:
                raise SearchError(f"{self.index_path}: no index there; "
                                  f"{build_hint(output.directory, self.index_path)}")
            self.postprocessor, self.postprocessing = resolve_postprocessing(output, postprocess, self.index_path,
                                                                             files.meta)
            self.shards, self.offsets = indexed_shards(files.meta, output, self.index_path, self.postprocessing)
            self._ann = read_index(self.index_path).index
            if self._ann.d != postprocessing_of(files.meta).get("dim", output.dim):
                raise SearchError(f"{self.index_path}: index holds vectors of width {self._ann.d}, index.json says "
                                  f"{postprocessing_of(files.meta).get('dim', output.dim)}; rebuild it "
                                  "(build_index(..., rebuild=True))")
        else:
            self.postprocessor, self.postprocessing = resolve_postprocessing(output, postprocess)
            if in_memory:
                self._load_matrix()

    @classmethod
    def open(cls, directory: str, model=None, index=None, batch_rows: int = 65536, device=None,
             in_memory: bool = False, ef_search: int = 256, allow_partial: bool = False,
             postprocess=None) -> "SearchIndex":
        """See the class doc; ``allow_partial`` searches an unfinished job's finished units."""
        return cls(ShardSet.open(directory, allow_partial), model, index, batch_rows, device, in_memory,
                   ef_search, postprocess)

    def _corrected(self, x: np.ndarray) -> np.ndarray:
        return x if self.postprocessor is None else self.postprocessor.transform(x)

    @property
    def num_rows(self) -> int:
        return self.output.num_rows

    @property
    def elmo(self) -> "Elmo":
        if self._elmo is None:
            self._elmo = _load_model(self._model_arg, self.output)
            if self.device is not None:
                self._elmo.to(self.device)
        return self._elmo

    def _load_matrix(self) -> None:
        m = np.empty((self.output.num_rows, self.output.dim), np.float32)
        start = 0
        if self.postprocessor is not None:
            m = np.empty((self.output.num_rows, self.postprocessor.output_dim), np.float32)
        for x in self.output.iter_vectors(self.batch_rows):
            m[start:start + len(x)] = normalize(self._corrected(x))
            start += len(x)
        if self.device is not None:
            import torch

            m = torch.from_numpy(m).to(self.device)
        self._matrix = m

    def embed(self, queries: str | Sequence[str]) -> np.ndarray:
        """(Q, D) float32 query vectors, each query tokenized as one sentence."""
        from elmo_dist.text.tokenize import Tokenizer

        queries = [queries] if isinstance(queries, str) else list(queries)
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(sentence_split="none")
        tokens = [self._tokenizer.tokens(q) for q in queries]
        for q, t in zip(queries, tokens):
            if not t:
                raise SearchError(f"query {q!r} has no tokens")
        emb = self.output.metadata.get("embedding", {})
        vecs = list(self.elmo.embed_sentences(tokens, output=emb.get("sentence_output", "mix"),
                                              pooling=emb.get("pooling", "mean")))
        return np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, self.output.dim), np.float32)

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top-k hits per query (descending cosine); fewer than k when the output has fewer rows."""
        vectors = self.embed(queries)
        return self.hits(*self.search_vectors(vectors, k))

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of query vectors (Q, D).

        Returns:
            scores (Q, K') float32 descending and rows (Q, K') int64 global row numbers (in this
            index's row space; -1 where the approximate index found fewer hits), K' = min(k, N).
        """
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.output.dim:
            raise SearchError(f"query vectors have width {vectors.shape[1]}, the output {self.output.dim}")
        if k < 1:
            raise SearchError(f"k must be >= 1, got {k}")
        if self._ann is not None:
            return self._search_ann(vectors, k)
        vectors = self._corrected(vectors)
        top = TopK(len(vectors), k)
        scorer = Scorer(vectors, k, self.device)
        if self._matrix is not None:
            for start in range(0, len(self._matrix), self.batch_rows):
                scorer(top, self._matrix[start:start + self.batch_rows], start, unit=True)
        else:
            start = 0
            for x in _prefetch(self.output.iter_vectors(self.batch_rows)):
                scorer(top, self._corrected(x), start)
                start += len(x)
        return top.result()

    def _search_ann(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self._ann.ntotal)
        if k == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        self._ann.hnsw.efSearch = max(self.ef_search, k)
        scores, rows = self._ann.search(normalize(self._corrected(vectors)), k)
        return scores.astype(np.float32), rows.astype(np.int64)

    def hits(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Hit]]:
        """Hits of ``search_vectors`` results: reads id, text etc. of those rows only."""
        values = _fetch(self.output.fs, self.shards, self.offsets, rows.reshape(-1))
        out = []
        for srow, rrow in zip(scores, rows):
            hits = []
            for s, r in zip(srow, rrow):
                if r < 0:
                    continue
                id_, sent, chunk, source, text = values[int(r)]
                hits.append(Hit(id_, int(sent), int(chunk), float(s), text, source))
            out.append(hits)
        return out

    def locate(self, rows: np.ndarray) -> list[tuple[str, int]]:
        """Global row numbers -> (shard name, row within the shard)."""
        shard, local = _locate(self.offsets, np.asarray(rows, dtype=np.int64))
        return [(self.shards[s].name, int(r)) for s, r in zip(shard, local)]


def _prefetch(it: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Read the next batch in a thread while the current one is scored (Parquet decoding and the
    matrix product both release the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(next, it, None)
        while True:
            x = nxt.result()
            if x is None:
                return
            nxt = pool.submit(next, it, None)
            yield x


def search(directory: str, queries: str | Sequence[str], k: int = 10, model=None, index=None,
           batch_rows: int = 65536, device=None, allow_partial: bool = False,
           postprocess=None) -> list[list[Hit]]:
    """Top-k most similar sentences of an output per query (cosine of sentence embeddings).

    Args:
        directory: output directory (local or s3://) written by ``elmo-dist embed``.
        queries: one query or a list; each is tokenized as one sentence.
        k: hits per query.
        model: None (the model recorded in the output's metadata), a model directory, or an ``Elmo``.
            Its fingerprint must equal the output's.
        index: None/False: exact search streaming the shards; True: the approximate index at
            ``DIR/_index``; a path: the index there (see ``build_index``).
        batch_rows: rows scored at a time (exact search).
        device: None/"cpu" (NumPy), "cuda[:N]" (torch) or "auto".
        allow_partial: search an unfinished job's finished units (refused by default).
        postprocess: None (the output's fitted post-processor, if any), a method ("none",
            "center", "abtt", "whiten") or a ``Postprocessor``; see ``SearchIndex``. An index must
            have been built with the same post-processing.
    Returns:
        per query, its hits by descending score (cosine of the post-processed vectors).
    """
    return SearchIndex.open(directory, model=model, index=index, batch_rows=batch_rows, device=device,
                            allow_partial=allow_partial, postprocess=postprocess).search(queries, k)


# ---- printing ----------------------------------------------------------------------------


def format_hits(hits: Sequence[Hit], query: str | None = None, width: int | None = None) -> str:
    """A plain-text table: rank, score, id, sentence (with chunk when a sentence was cut), text."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    chunked = any(h.chunk for h in hits)
    head = ["rank", "score", "id", "sentence" + (":chunk" if chunked else "")]
    rows = [[str(r), f"{h.score:.4f}", h.id, f"{h.sentence_index}" + (f":{h.chunk}" if chunked else "")]
            for r, h in enumerate(hits, 1)]
    widths = [max([len(head[c])] + [len(r[c]) for r in rows]) for c in range(4)]
    widths[2] = min(widths[2], 40)
    text_w = max(20, width - sum(widths) - 10)

    def cut(s: str, w: int) -> str:
        s = " ".join(s.split())
        return s if len(s) <= w else s[: w - 1] + "…"

    def line(cells: list[str], text: str) -> str:
        left = [cells[0].rjust(widths[0]), cells[1].rjust(widths[1]), cut(cells[2], widths[2]).ljust(widths[2]),
                cells[3].rjust(widths[3])]
        return "  ".join(left + [cut(text, text_w)]).rstrip()

    out = [f"query: {query}"] if query is not None else []
    out.append(line(head, "text"))
    out += [line(r, h.text) for r, h in zip(rows, hits)]
    if not hits:
        out.append("(no hits)")
    return "\n".join(out)
