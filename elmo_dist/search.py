"""Similarity search over an elmo-dist output: exact streaming cosine top-k, optional HNSW index.

The query is embedded by the same model, with the same sentence settings (``sentence_output``,
``pooling``, scalar-mix weights), as the output it is compared with; all of that is read from the
shards' metadata, and a model whose fingerprint differs from the one recorded there is refused.

Exact search streams the ``sentence_embedding`` column of every shard in batches of
``batch_rows`` rows and keeps a running top-k per query, as global row numbers (the row's position
in the concatenation of the shards, in ``list_shards`` order). Memory is O(batch_rows x D + queries
x k) whatever the corpus size; texts and ids are read afterwards for the k hits only.

The approximate index (``build_index``) is a faiss HNSW graph over the L2-normalised vectors
(inner product = cosine) plus ``index.json``: the shards it covers in label order (path relative to
the output, rows, bytes), so label -> (shard, row) is a cumulative-offset lookup, and the output's
fingerprints. An index whose shards no longer match the output is refused as stale;
``build_index`` adds new shards to it incrementally and rebuilds it when shards changed or vanished.

Shapes: N rows in the output, D = embedding width, Q queries, B = rows in a batch, K = k.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from elmo_dist.errors import ElmoDistError
from elmo_dist import schema, storage
from elmo_dist.output import OutputError, filesystem, list_shards

if TYPE_CHECKING:  # importing elmo_dist.search must not import torch
    from elmo_dist.model.elmo import Elmo

logger = logging.getLogger(__name__)

INDEX_DIR = "_index"  # default place of the approximate index inside the output directory
INDEX_META = "index.json"
INDEX_DATA = "hnsw.faiss"
INDEX_FORMAT = 1
HIT_COLUMNS = [schema.ID, schema.SENTENCE_INDEX, schema.CHUNK, schema.SOURCE, schema.TEXT]
# what must agree between shards (and between an index and its output) for vectors to be comparable
_VECTOR_KEYS = ("sentence_output", "pooling", "mix_weights", "gamma")


class SearchError(ElmoDistError, ValueError):
    """The search cannot run as asked: wrong model, inconsistent output, stale index, bad query."""


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


@dataclass(frozen=True)
class Shard:
    path: str  # in the output's filesystem
    name: str  # relative to the output directory
    rows: int
    size: int  # bytes


# ---- the output being searched ----------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """The shards of an output directory, their row offsets and their (consistent) metadata."""

    directory: str
    fs: pafs.FileSystem
    root: str
    shards: tuple[Shard, ...]
    metadata: dict[str, Any]  # of the first shard; the vector-relevant parts agree across shards
    dim: int
    dtype: str  # "float32" or "float16" (of the first shard; may differ between shards)

    @property
    def offsets(self) -> np.ndarray:
        """(n_shards + 1,) global row number of each shard's first row, then N."""
        return np.concatenate([[0], np.cumsum([s.rows for s in self.shards], dtype=np.int64)])

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def model_fingerprint(self) -> str:
        return self.metadata["model"]["fingerprint"]

    @property
    def config_fingerprint(self) -> str | None:
        return self.metadata.get("config_fingerprint")

    @property
    def vector_settings(self) -> dict[str, Any]:
        emb = self.metadata.get("embedding", {})
        return {key: emb.get(key) for key in _VECTOR_KEYS}

    @classmethod
    def open(cls, directory: str, allow_partial: bool = False) -> "Output":
        """Read every shard's footer (in parallel) and check the shards can be searched together.

        Raises:
            OutputError: the directory is missing or holds no shard; IncompleteOutputError when its
                job has not finished (unless ``allow_partial``).
            SearchError: a shard lacks the metadata, or shards disagree on the model or settings.
        """
        paths = list_shards(directory, allow_partial)
        fs, root = filesystem(directory)
        root = root.rstrip("/")
        infos = {i.path: i.size for i in fs.get_file_info(paths)}

        def footer(path: str):
            with fs.open_input_file(path) as fh:
                pf = pq.ParquetFile(fh)
                return pf.metadata.num_rows, pf.schema_arrow

        with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
            footers = list(pool.map(footer, paths))
        shards, first, first_key, dim, dtype = [], None, None, 0, "float32"
        for path, (rows, arrow_schema) in zip(paths, footers):
            name = path[len(root) + 1:] if path.startswith(root + "/") else path
            md = schema.read_metadata(arrow_schema)
            if not md.get("model", {}).get("fingerprint"):
                raise SearchError(f"{directory}: shard {name} has no elmo_dist metadata (model fingerprint); "
                                  "it was not written by elmo-dist embed")
            if schema.SENTENCE_EMBEDDING not in arrow_schema.names:
                raise SearchError(f"{directory}: shard {name} has no {schema.SENTENCE_EMBEDDING} column")
            vec_type = arrow_schema.field(schema.SENTENCE_EMBEDDING).type
            shard_dim = getattr(vec_type, "list_size", None)
            if not shard_dim:
                raise SearchError(f"{directory}: shard {name}: {schema.SENTENCE_EMBEDDING} is {vec_type}, "
                                  "expected a fixed-size list of floats")
            emb = md.get("embedding", {})
            key = (md["model"]["fingerprint"], shard_dim) + tuple(json.dumps(emb.get(k)) for k in _VECTOR_KEYS)
            if first is None:
                first, first_key, dim = (name, md), key, shard_dim
                dtype = "float16" if str(vec_type.value_type) == "halffloat" else "float32"
            elif key != first_key:
                what = ("model fingerprints" if key[0] != first_key[0] else
                        "embedding widths" if key[1] != first_key[1] else "sentence embedding settings")
                raise SearchError(
                    f"{directory}: shards were embedded differently ({what} differ): {first[0]} has "
                    f"model {first_key[0]}, D={first_key[1]}, {_describe(first[1])}; {name} has model {key[0]}, "
                    f"D={key[1]}, {_describe(md)}. Search one consistent output at a time.")
            shards.append(Shard(path, name, int(rows), int(infos.get(path) or 0)))
        return cls(directory, fs, root, tuple(shards), first[1], dim, dtype)


def _describe(md: dict[str, Any]) -> str:
    emb = md.get("embedding", {})
    return ", ".join(f"{k}={emb.get(k)!r}" for k in _VECTOR_KEYS)


def _locate(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global row numbers -> (shard position, row within the shard)."""
    shard = np.searchsorted(offsets, rows, side="right") - 1
    return shard, rows - offsets[shard]


def _iter_vectors(fs: pafs.FileSystem, shards: Sequence[Shard], dim: int,
                  batch_rows: int) -> Iterator[np.ndarray]:
    """(B, D) float16/float32 batches of sentence vectors, shard after shard, in row order."""
    for shard in shards:
        with fs.open_input_file(shard.path) as fh:
            pf = pq.ParquetFile(fh)
            seen = 0
            for batch in pf.iter_batches(batch_size=batch_rows, columns=[schema.SENTENCE_EMBEDDING]):
                col = batch.column(0)
                flat = col.flatten().to_numpy(zero_copy_only=False)  # flatten() honours slicing
                seen += len(col)
                yield flat.reshape(len(col), dim)
        if seen != shard.rows:
            raise SearchError(f"shard {shard.name} changed during the search ({seen} rows, expected {shard.rows})")


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


# ---- top-k ---------------------------------------------------------------------------------


class _TopK:
    """Running top-k per query over batches of scores.

    Once k rows are held, a batch only contributes the scores above each query's current k-th
    best (a comparison pass; few rows pass after the first batches), so the cost per batch is one
    matrix product plus O(Q x B) comparisons.
    """

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = np.empty((n_queries, 0), np.float32)
        self.rows = np.empty((n_queries, 0), np.int64)

    def push(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """Dense candidates. scores: (Q, C) float32; rows: (Q, C) or (C,) global row numbers."""
        rows = np.broadcast_to(rows, scores.shape)
        s = np.concatenate([self.scores, scores], axis=1)
        r = np.concatenate([self.rows, rows], axis=1)
        c = s.shape[1]
        if c > self.k:
            keep = np.argpartition(s, c - self.k, axis=1)[:, c - self.k:]
            s, r = np.take_along_axis(s, keep, 1), np.take_along_axis(r, keep, 1)
        self.scores, self.rows = s, r

    def push_batch(self, scores: np.ndarray, start: int) -> None:
        """scores: (Q, B) float32 of rows start .. start + B - 1."""
        q, b = scores.shape
        if self.scores.shape[1] == self.k:  # full: only scores beating the k-th best matter
            mask = scores > self.scores.min(axis=1)[:, None]
            n = int(np.count_nonzero(mask))
            if n == 0:
                return
            if n <= scores.size // 8:
                flat = np.flatnonzero(mask)  # much faster than the 2-D np.nonzero
                qi, bi = np.divmod(flat, b)
                all_q = np.concatenate([np.repeat(np.arange(q), self.k), qi])
                all_s = np.concatenate([self.scores.ravel(), scores[qi, bi]])
                all_r = np.concatenate([self.rows.ravel(), bi.astype(np.int64) + start])
                order = np.lexsort((all_r, -all_s, all_q))  # by query, then score desc, then row
                all_q, all_s, all_r = all_q[order], all_s[order], all_r[order]
                rank = np.arange(len(all_q)) - np.searchsorted(all_q, np.arange(q))[all_q]
                keep = rank < self.k  # every query holds >= k entries
                self.scores, self.rows = all_s[keep].reshape(q, self.k), all_r[keep].reshape(q, self.k)
                return
        if b > self.k:
            idx = np.argpartition(scores, b - self.k, axis=1)[:, b - self.k:]  # (Q, K)
            self.push(np.take_along_axis(scores, idx, 1), idx.astype(np.int64) + start)
        else:
            self.push(scores, np.arange(start, start + b, dtype=np.int64))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(Q, K') scores descending (ties: lower row first) and their rows, K' = min(k, rows seen)."""
        order = np.lexsort((self.rows, -self.scores), axis=-1)
        return np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.rows, order, 1)


def _inverse_norms(x: np.ndarray) -> np.ndarray:
    """1 / ||x_i|| per row, 0 for a zero row (whose cosine with anything is then 0, not NaN)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    with np.errstate(divide="ignore"):
        return np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x * _inverse_norms(x)[:, None]


def _resolve_device(device):
    """None (NumPy) or a CUDA torch.device. ``"auto"``: CUDA when present."""
    if device is None or str(device) in ("cpu", "numpy"):
        return None
    import torch

    if str(device) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    dev = torch.device(device)
    if dev.type == "cpu":
        return None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SearchError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


class _Scorer:
    """Cosine scores of batches against the (normalised) queries, top-k per batch: NumPy or torch."""

    def __init__(self, queries: np.ndarray, k: int, device):
        self.q = normalize(queries)  # (Q, D)
        self.k = k
        self.device = device
        if device is not None:
            import torch

            self.q_t = torch.from_numpy(self.q).to(device)

    def __call__(self, top: _TopK, x, start: int, unit: bool = False) -> None:
        """x: (B, D) numpy (any float) or a torch tensor on the device; unit: rows already normalised."""
        if self.device is None:
            x = np.asarray(x, dtype=np.float32)
            s = self.q @ x.T  # (Q, B)
            if not unit:
                s *= _inverse_norms(x)[None, :]
            top.push_batch(s, start)
            return
        import torch

        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x).to(self.device)
        x = x.float()
        s = self.q_t @ x.T  # (Q, B)
        if not unit:
            n = x.norm(dim=1)
            s = s * torch.where(n > 0, 1.0 / n, torch.zeros_like(n))[None, :]
        val, idx = torch.topk(s, min(self.k, s.shape[1]), dim=1)  # (Q, K)
        top.push(val.cpu().numpy(), idx.cpu().numpy().astype(np.int64) + start)


# ---- the approximate index ----------------------------------------------------------------


def _faiss():
    try:
        import faiss
    except ImportError:
        raise SearchError("the approximate index needs faiss: pip install 'elmo-dist[ann]' (faiss-cpu)") from None
    return faiss


def _join(fs_root: str, *parts: str) -> str:
    return posixpath.join(fs_root, *parts)


def default_index_path(directory: str) -> str:
    return directory.rstrip("/") + "/" + INDEX_DIR


@dataclass
class _IndexFiles:
    meta: dict[str, Any]
    index: Any  # faiss.Index


def _read_index(path: str, with_data: bool = True) -> _IndexFiles | None:
    fs, root = filesystem(path)
    meta_path = _join(root, INDEX_META)
    if fs.get_file_info(meta_path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(meta_path) as fh:
        meta = json.loads(fh.read())
    index = None
    if with_data:
        faiss = _faiss()
        data = _join(root, meta["data"])
        if isinstance(fs, pafs.LocalFileSystem):  # straight from the file: no second copy in memory
            index = faiss.read_index(data)
        else:
            with fs.open_input_stream(data) as fh:
                index = faiss.deserialize_index(np.frombuffer(fh.read(), dtype=np.uint8))
        if index.ntotal != meta["num_rows"]:
            raise SearchError(f"{path}: index holds {index.ntotal} vectors, index.json says {meta['num_rows']}; "
                              "rebuild it (build_index(..., rebuild=True))")
    return _IndexFiles(meta, index)


def _write_index(path: str, files: _IndexFiles) -> None:
    """The graph first, then ``index.json`` (the commit point), each written atomically."""
    faiss = _faiss()
    fs, root = filesystem(path)
    data = _join(root, files.meta["data"])
    if storage.is_local(fs):  # straight to the file: no second copy in memory
        with storage.atomic_local_path(data) as tmp:
            faiss.write_index(files.index, tmp)
    else:
        storage.write_bytes(fs, data, faiss.serialize_index(files.index).tobytes())
    storage.write_json(fs, _join(root, INDEX_META), files.meta)


def _build_hint(directory: str, path: str) -> str:
    if path == default_index_path(directory):
        return (f"build or update it with build_index({directory!r}) or "
                f"`elmo-dist search {directory} QUERY --build-index`")
    return (f"build or update it with build_index({directory!r}, {path!r}) or "
            f"`elmo-dist search {directory} QUERY --build-index --index {path}`")


def _check_index(meta: dict[str, Any], output: Output, path: str) -> tuple[list[Shard], np.ndarray]:
    """The index's shards (as current Shards, in label order) and offsets, or SearchError if stale."""
    if meta.get("format") != INDEX_FORMAT:
        raise SearchError(f"{path}: unknown index format {meta.get('format')!r}; rebuild it")
    if meta["model_fingerprint"] != output.model_fingerprint or meta["vector_settings"] != output.vector_settings \
            or meta["dim"] != output.dim:
        raise SearchError(
            f"{path}: index was built for model {meta['model_fingerprint']} ({meta['vector_settings']}), the output "
            f"{output.directory} now holds model {output.model_fingerprint} ({output.vector_settings}); rebuild it")
    if meta.get("config_fingerprint") != output.config_fingerprint:
        raise SearchError(f"{path}: index is stale: built for config {meta.get('config_fingerprint')}, the output is "
                          f"now config {output.config_fingerprint}; {_build_hint(output.directory, path)}")
    current = {s.name: s for s in output.shards}
    indexed = [(e["name"], e["rows"], e["size"]) for e in meta["shards"]]
    changed = [n for n, r, b in indexed if n not in current or (current[n].rows, current[n].size) != (r, b)]
    added = sorted(set(current) - {n for n, _, _ in indexed})
    if changed or added:
        raise SearchError(
            f"{path}: index is stale, the output changed since it was built ({len(added)} shard(s) added, "
            f"{len(changed)} changed or removed, e.g. {(added + changed)[0]}); {_build_hint(output.directory, path)}")
    shards = [current[n] for n, _, _ in indexed]
    return shards, np.concatenate([[0], np.cumsum([s.rows for s in shards], dtype=np.int64)])


def build_index(directory: str, out_path: str | None = None, *, m: int = 16, ef_construction: int = 100,
                storage: str = "float32", batch_rows: int = 65536, rebuild: bool = False,
                threads: int | None = None, allow_partial: bool = False) -> str:
    """Build, or bring up to date, the approximate (HNSW, cosine) index of an output.

    An existing index at ``out_path`` is kept when it covers exactly the current shards, extended
    when the output only gained shards since (a refresh), and rebuilt from scratch otherwise (or
    when ``rebuild``). Vectors are streamed ``batch_rows`` at a time; the index itself holds every
    vector (N x D x 4 bytes for float32 storage, half that for float16) plus the graph
    (about N x m x 8 bytes).

    Args:
        directory: the output directory (local or s3://).
        out_path: where the index goes (a directory); default ``DIR/_index``.
        m: HNSW graph degree (links per node; 2m on the bottom layer). Higher: better recall, more memory.
        ef_construction: candidate-list size while building. Higher: better graph, slower build.
        storage: "float32" (scores exact to float32) or "float16" (half the memory, scores to ~1e-3).
        rebuild: build from scratch even when the existing index could be kept or extended.
        threads: faiss (OpenMP) threads; default: all cores.
        allow_partial: index an unfinished job's finished units (refused by default).
    Returns:
        out_path.
    """
    faiss = _faiss()
    if threads:
        faiss.omp_set_num_threads(threads)
    if storage not in ("float32", "float16"):
        raise SearchError(f"storage must be float32 or float16, got {storage!r}")
    out_path = out_path or default_index_path(directory)
    output = Output.open(directory, allow_partial)
    existing = None if rebuild else _read_index(out_path, with_data=False)
    todo: list[Shard] = list(output.shards)
    if existing is not None:
        meta = existing.meta
        current = {s.name: s for s in output.shards}
        same_vectors = (meta.get("format") == INDEX_FORMAT and meta["model_fingerprint"] == output.model_fingerprint
                        and meta["vector_settings"] == output.vector_settings and meta["dim"] == output.dim
                        and meta.get("config_fingerprint") == output.config_fingerprint
                        and meta["params"] == {"m": m, "ef_construction": ef_construction, "storage": storage})
        kept = all(e["name"] in current and (current[e["name"]].rows, current[e["name"]].size)
                   == (e["rows"], e["size"]) for e in meta["shards"])
        if same_vectors and kept:
            names = {e["name"] for e in meta["shards"]}
            todo = [s for s in output.shards if s.name not in names]
            if not todo:
                logger.info("index %s is up to date (%d rows)", out_path, meta["num_rows"])
                return out_path
            existing = _read_index(out_path)
            logger.info("index %s: adding %d new shard(s) to %d rows", out_path, len(todo), meta["num_rows"])
        else:
            logger.info("index %s does not match the output or the parameters: rebuilding", out_path)
            existing = None
    if existing is None:
        if storage == "float16":
            index = faiss.IndexHNSWSQ(output.dim, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexHNSWFlat(output.dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        meta = {"format": INDEX_FORMAT, "backend": f"faiss {faiss.__version__}", "data": INDEX_DATA,
                "kind": "HNSW, inner product of L2-normalised vectors (cosine)",
                "params": {"m": m, "ef_construction": ef_construction, "storage": storage},
                "directory": output.directory, "dim": output.dim, "model_fingerprint": output.model_fingerprint,
                "vector_settings": output.vector_settings, "config_fingerprint": output.config_fingerprint,
                "shards": [], "num_rows": 0}
    else:
        index, meta = existing.index, existing.meta
    t0 = time.perf_counter()
    for shard in todo:
        for x in _iter_vectors(output.fs, [shard], output.dim, batch_rows):
            index.add(normalize(x))
        meta["shards"].append({"name": shard.name, "rows": shard.rows, "size": shard.size})
        meta["num_rows"] += shard.rows
        logger.info("index: %d rows (%.0f s)", meta["num_rows"], time.perf_counter() - t0)
    meta["built"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_index(out_path, _IndexFiles(meta, index))
    return out_path


# ---- search --------------------------------------------------------------------------------


def _load_model(model: "Elmo | str | None", output: Output) -> "Elmo":
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
    """

    def __init__(self, output: Output, model=None, index=None, batch_rows: int = 65536, device=None,
                 in_memory: bool = False, ef_search: int = 256):
        if batch_rows < 1:
            raise SearchError(f"batch_rows must be >= 1, got {batch_rows}")
        self.output = output
        self.batch_rows = batch_rows
        self.device = _resolve_device(device)
        self.ef_search = ef_search
        self._model_arg = model
        self._elmo: Elmo | None = None
        self._tokenizer = None
        self._matrix = None
        self.index_path: str | None = None
        self._ann = None
        self.shards, self.offsets = list(output.shards), output.offsets  # the row space of hits
        if index:
            self.index_path = default_index_path(output.directory) if index is True else str(index)
            files = _read_index(self.index_path, with_data=False)
            if files is None:
                raise SearchError(f"{self.index_path}: no index there; "
                                  f"{_build_hint(output.directory, self.index_path)}")
            self.shards, self.offsets = _check_index(files.meta, output, self.index_path)
            self._ann = _read_index(self.index_path).index
        elif in_memory:
            self._load_matrix()

    @classmethod
    def open(cls, directory: str, model=None, index=None, batch_rows: int = 65536, device=None,
             in_memory: bool = False, ef_search: int = 256, allow_partial: bool = False) -> "SearchIndex":
        """See the class doc; ``allow_partial`` searches an unfinished job's finished units."""
        return cls(Output.open(directory, allow_partial), model, index, batch_rows, device, in_memory,
                   ef_search)

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
        for x in _iter_vectors(self.output.fs, self.output.shards, self.output.dim, self.batch_rows):
            m[start:start + len(x)] = normalize(x)
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
        top = _TopK(len(vectors), k)
        scorer = _Scorer(vectors, k, self.device)
        if self._matrix is not None:
            for start in range(0, len(self._matrix), self.batch_rows):
                scorer(top, self._matrix[start:start + self.batch_rows], start, unit=True)
        else:
            start = 0
            for x in _prefetch(_iter_vectors(self.output.fs, self.output.shards, self.output.dim, self.batch_rows)):
                scorer(top, x, start)
                start += len(x)
        return top.result()

    def _search_ann(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self._ann.ntotal)
        if k == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        self._ann.hnsw.efSearch = max(self.ef_search, k)
        scores, rows = self._ann.search(normalize(vectors), k)
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
           batch_rows: int = 65536, device=None, allow_partial: bool = False) -> list[list[Hit]]:
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
    Returns:
        per query, its hits by descending score.
    """
    return SearchIndex.open(directory, model=model, index=index, batch_rows=batch_rows,
                            device=device, allow_partial=allow_partial).search(queries, k)


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
