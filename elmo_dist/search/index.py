"""The approximate index of an output: a faiss HNSW graph, its files, and whether it is current.

The index (``build_index``) is a faiss HNSW graph over the post-processed, L2-normalised vectors
(inner product = cosine) plus ``index.json``: the shards it covers in label order (path relative
to the output, rows, bytes), so label -> (shard, row) is a cumulative-offset lookup, the output's
fingerprints, and the post-processing the vectors went through (``postprocess``: method and
fingerprint; the post-processor itself is ``postprocessor.npz`` beside it). By default that is the
post-processor fitted on the output (as for exact search). ``index_staleness`` is the one place
that compares an index with its output: searching refuses an index that does not cover exactly the
current shards, or was built with another post-processing than the search's, as stale
(``indexed_shards``); ``build_index`` adds new shards to it incrementally and rebuilds it when
shards changed or vanished, or the vectors (model, settings, config, post-processing) are no
longer the ones asked for.

faiss is imported only when an index is read or built (``pip install 'elmo-dist[ann]'``).
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from elmo_dist import storage as _storage  # not `storage`: build_index has a parameter of that name
from elmo_dist.errors import SearchError
from elmo_dist.output import Shard, ShardSet, filesystem, stored_moments, stored_postprocessor
from elmo_dist.search.topk import normalize

logger = logging.getLogger(__name__)

INDEX_DIR = "_index"  # default place of the approximate index inside the output directory
INDEX_META = "index.json"
INDEX_DATA = "hnsw.faiss"
INDEX_POSTPROCESSOR = "postprocessor.npz"  # the post-processor applied to the vectors (none: absent)
INDEX_FORMAT = 1


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
class IndexFiles:
    meta: dict[str, Any]
    index: Any  # faiss.Index


def read_index(path: str, with_data: bool = True) -> IndexFiles | None:
    """The index at ``path`` (``index.json``, and with ``with_data`` the graph), None if there is none."""
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
    return IndexFiles(meta, index)


def write_index(path: str, files: IndexFiles, postprocessor=None) -> None:
    """The graph (and the post-processor) first, then ``index.json`` (the commit point), each
    written atomically."""
    faiss = _faiss()
    fs, root = filesystem(path)
    if postprocessor is not None:
        _storage.write_bytes(fs, _join(root, INDEX_POSTPROCESSOR), postprocessor.to_bytes())
    elif fs.get_file_info(_join(root, INDEX_POSTPROCESSOR)).type == pafs.FileType.File:
        fs.delete_file(_join(root, INDEX_POSTPROCESSOR))  # of an earlier build with post-processing
    data = _join(root, files.meta["data"])
    if _storage.is_local(fs):  # straight to the file: no second copy in memory
        with _storage.atomic_local_path(data) as tmp:
            faiss.write_index(files.index, tmp)
    else:
        _storage.write_bytes(fs, data, faiss.serialize_index(files.index).tobytes())
    _storage.write_json(fs, _join(root, INDEX_META), files.meta)


def build_hint(directory: str, path: str, postprocess: str | None = None) -> str:
    flag, arg = (f" --postprocess {postprocess}", f", postprocess={postprocess!r}") if postprocess else ("", "")
    if path == default_index_path(directory):
        return (f"build or update it with build_index({directory!r}{arg}) or "
                f"`elmo-dist search {directory} QUERY --build-index{flag}`")
    return (f"build or update it with build_index({directory!r}, {path!r}{arg}) or "
            f"`elmo-dist search {directory} QUERY --build-index --index {path}{flag}`")


# ---- post-processing ------------------------------------------------------------------------

NO_POSTPROCESSING = {"method": "none", "fingerprint": None}


def postprocessing_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The post-processing an index was built with (indexes from before it was recorded: none)."""
    return meta.get("postprocess") or NO_POSTPROCESSING


def describe_postprocessing(pp: dict[str, Any]) -> str:
    if pp.get("method", "none") == "none":
        return "'none' (the raw vectors)"
    how = {"fitted": "the output's fitted post-processor", "moments": "fitted on the output's moments",
           "given": "a given post-processor"}.get(pp.get("source"), "post-processor")
    return f"{pp['method']!r} ({how}, {pp.get('fingerprint')})"


def _same_postprocessing(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("method", "none"), a.get("fingerprint")) == (b.get("method", "none"), b.get("fingerprint"))


def read_index_postprocessor(path: str):
    """The post-processor stored with the index at ``path``, or None."""
    from elmo_dist.similarity import Postprocessor

    fs, root = filesystem(path)
    data = _storage.read_bytes(fs, _join(root, INDEX_POSTPROCESSOR))
    return None if data is None else Postprocessor.from_bytes(data)


def resolve_postprocessing(output: ShardSet, postprocess, index_path: str | None = None,
                           index_meta: dict[str, Any] | None = None):
    """The post-processor a search or an index applies, and its description for ``index.json``.

    ``postprocess``: None (the post-processor fitted on the output, when it has one; else the raw
    vectors), "none", a method ("center", "abtt", "whiten": fitted on the output's moments), or a
    ``Postprocessor``. A method fitted on the same moments as the index at ``index_path`` (its
    ``index_meta``) was built with is that index's post-processor (read from it, not refitted: an
    eigendecomposition need not give the same bits on another machine).

    Returns:
        (Postprocessor or None for the raw vectors, {"method", "fingerprint", "source", "moments", "dim"}).
    """
    from elmo_dist.similarity import METHODS, Postprocessor

    moments_fp = None
    if isinstance(postprocess, Postprocessor):
        chosen, source = postprocess, "given"
    elif postprocess is None:
        source = "fitted"
        try:
            chosen = stored_postprocessor(output.directory)
        except Exception as e:  # an unreadable file: the raw vectors, as for an output without one
            logger.warning("%s: cannot read the output's post-processor (%s: %s): using the raw vectors",
                           _storage.redact(output.directory), type(e).__name__, e)
            chosen = None
    elif postprocess not in METHODS:
        raise SearchError(f"postprocess must be one of {', '.join(METHODS)}, got {postprocess!r}")
    elif postprocess == "none":
        chosen, source = None, "none"
    else:
        moments = stored_moments(output.directory)
        if moments is None:
            raise SearchError(f"{_storage.redact(output.directory)}: no sentence-vector moments to fit "
                              f"{postprocess!r} on (outputs of `elmo-dist embed` have them in _job/moments.npz, "
                              "of `elmo-dist refresh` in each version's _postprocessing/ files)")
        source, moments_fp, chosen = "moments", moments.fingerprint(), None
        built = postprocessing_of(index_meta) if index_meta is not None else {}
        if index_path and built.get("method") == postprocess and built.get("moments") == moments_fp:
            chosen = read_index_postprocessor(index_path)
            if chosen is not None and chosen.fingerprint() != built.get("fingerprint"):
                chosen = None
        if chosen is None:
            chosen = Postprocessor.fit(moments, postprocess)
    if chosen is not None and chosen.mean.shape[0] != output.dim:
        raise SearchError(f"post-processor of width {chosen.mean.shape[0]} does not fit vectors of width {output.dim}")
    if chosen is None or chosen.method == "none":
        return None, {**NO_POSTPROCESSING, "source": source, "moments": None, "dim": output.dim}
    return chosen, {"method": chosen.method, "fingerprint": chosen.fingerprint(), "source": source,
                    "moments": moments_fp, "dim": chosen.output_dim}


@dataclass(frozen=True)
class Staleness:
    """How an index stands against its output's current shards (see ``index_staleness``)."""

    mismatch: str | None = None  # why its vectors are not the ones wanted (format, model, settings, config,
    #                              post-processing)
    changed: tuple[str, ...] = ()  # indexed shards that changed or vanished since it was built
    added: tuple[str, ...] = ()  # the output's shards it does not cover yet, sorted

    @property
    def extendable(self) -> bool:
        """The same vectors and every indexed shard unchanged: adding the ``added`` shards updates it."""
        return self.mismatch is None and not self.changed

    @property
    def current(self) -> bool:
        """It covers exactly the output's current shards, with the output's vectors."""
        return self.extendable and not self.added


def index_staleness(meta: dict[str, Any], output: ShardSet, path: str,
                    postprocessing: dict[str, Any] | None = None) -> Staleness:
    """Whether the index at ``path`` (its ``index.json``, ``meta``) matches the output: the one check,
    used by both ``build_index`` (keep, extend or rebuild) and searching (``indexed_shards``).

    ``postprocessing`` (the second value of ``resolve_postprocessing``): the post-processing the
    vectors should have; an index built with another one (e.g. before a refresh refitted the
    output's post-processor) is stale. None: not checked."""
    if meta.get("format") != INDEX_FORMAT:
        return Staleness(f"{path}: unknown index format {meta.get('format')!r}; rebuild it")
    if meta["model_fingerprint"] != output.model_fingerprint or meta["vector_settings"] != output.vector_settings \
            or meta["dim"] != output.dim:
        return Staleness(
            f"{path}: index was built for model {meta['model_fingerprint']} ({meta['vector_settings']}), the output "
            f"{output.directory} now holds model {output.model_fingerprint} ({output.vector_settings}); rebuild it")
    if meta.get("config_fingerprint") != output.config_fingerprint:
        return Staleness(f"{path}: index is stale: built for config {meta.get('config_fingerprint')}, the output is "
                         f"now config {output.config_fingerprint}; {build_hint(output.directory, path)}")
    if postprocessing is not None and not _same_postprocessing(postprocessing_of(meta), postprocessing):
        method = postprocessing.get("method") if postprocessing.get("source") in ("moments", "none") else None
        return Staleness(
            f"{path}: index is stale: it was built on vectors post-processed with "
            f"{describe_postprocessing(postprocessing_of(meta))}, this search uses "
            f"{describe_postprocessing(postprocessing)}; {build_hint(output.directory, path, method)}")
    current = {s.name: s for s in output.shards}
    indexed = [(e["name"], e["rows"], e["size"]) for e in meta["shards"]]
    changed = [n for n, r, b in indexed if n not in current or (current[n].rows, current[n].size) != (r, b)]
    added = sorted(set(current) - {n for n, _, _ in indexed})
    return Staleness(None, tuple(changed), tuple(added))


def indexed_shards(meta: dict[str, Any], output: ShardSet, path: str,
                   postprocessing: dict[str, Any] | None = None) -> tuple[list[Shard], np.ndarray]:
    """The index's shards (as current Shards, in label order) and offsets, or SearchError if stale
    (also when built with another post-processing than ``postprocessing``, if given)."""
    state = index_staleness(meta, output, path, postprocessing)
    if state.mismatch is not None:
        raise SearchError(state.mismatch)
    if not state.current:
        raise SearchError(
            f"{path}: index is stale, the output changed since it was built ({len(state.added)} shard(s) added, "
            f"{len(state.changed)} changed or removed, e.g. {(state.added + state.changed)[0]}); "
            f"{build_hint(output.directory, path)}")
    current = {s.name: s for s in output.shards}
    shards = [current[e["name"]] for e in meta["shards"]]
    return shards, np.concatenate([[0], np.cumsum([s.rows for s in shards], dtype=np.int64)])


def build_index(directory: str, out_path: str | None = None, *, m: int = 16, ef_construction: int = 100,
                storage: str = "float32", batch_rows: int = 65536, rebuild: bool = False,
                threads: int | None = None, allow_partial: bool = False, postprocess=None) -> str:
    """Build, or bring up to date, the approximate (HNSW, cosine) index of an output.

    The index holds the post-processed vectors (``postprocess``), L2-normalised; searching it
    post-processes the queries the same way, and refuses a search asking for another
    post-processing. An existing index at ``out_path`` is kept when it covers exactly the current
    shards, extended when the output only gained shards since (a refresh) and its post-processing
    is still the one asked for, and rebuilt from scratch otherwise (or when ``rebuild``): after a
    refresh refits the output's post-processor, the default post-processing changed, so the index
    is rebuilt. Vectors are streamed ``batch_rows`` at a time; the index itself holds every vector
    (N x D' x 4 bytes for float32 storage, half that for float16; D' = the post-processed width)
    plus the graph (about N x m x 8 bytes).

    Args:
        directory: the output directory (local or s3://).
        out_path: where the index goes (a directory); default ``DIR/_index``.
        m: HNSW graph degree (links per node; 2m on the bottom layer). Higher: better recall, more memory.
        ef_construction: candidate-list size while building. Higher: better graph, slower build.
        storage: "float32" (scores exact to float32) or "float16" (half the memory, scores to ~1e-3).
        rebuild: build from scratch even when the existing index could be kept or extended.
        threads: faiss (OpenMP) threads; default: all cores.
        allow_partial: index an unfinished job's finished units (refused by default).
        postprocess: None (default: the post-processor fitted on the output, the raw vectors when
            it has none), "none", "center", "abtt", "whiten" (fitted on the output's moments), or a
            ``similarity.Postprocessor``; as for exact search.
    Returns:
        out_path.
    """
    faiss = _faiss()
    if threads:
        faiss.omp_set_num_threads(threads)
    if storage not in ("float32", "float16"):
        raise SearchError(f"storage must be float32 or float16, got {storage!r}")
    out_path = out_path or default_index_path(directory)
    output = ShardSet.open(directory, allow_partial)
    existing = None if rebuild else read_index(out_path, with_data=False)
    pp, pp_meta = resolve_postprocessing(output, postprocess, out_path if existing is not None else None,
                                         existing.meta if existing is not None else None)
    todo: list[Shard] = list(output.shards)
    if existing is not None:
        meta = existing.meta
        state = index_staleness(meta, output, out_path, pp_meta)
        if state.extendable and meta["params"] == {"m": m, "ef_construction": ef_construction, "storage": storage}:
            added = set(state.added)
            todo = [s for s in output.shards if s.name in added]
            if not todo:
                logger.info("index %s is up to date (%d rows)", out_path, meta["num_rows"])
                return out_path
            existing = read_index(out_path)
            logger.info("index %s: adding %d new shard(s) to %d rows", out_path, len(todo), meta["num_rows"])
        else:
            logger.info("index %s does not match the output, the post-processing or the parameters: rebuilding",
                        out_path)
            existing = None
    dim = pp.output_dim if pp is not None else output.dim
    if existing is None:
        if storage == "float16":
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        meta = {"format": INDEX_FORMAT, "backend": f"faiss {faiss.__version__}", "data": INDEX_DATA,
                "kind": "HNSW, inner product of L2-normalised post-processed vectors (cosine)",
                "params": {"m": m, "ef_construction": ef_construction, "storage": storage},
                "directory": output.directory, "dim": output.dim, "model_fingerprint": output.model_fingerprint,
                "vector_settings": output.vector_settings, "config_fingerprint": output.config_fingerprint,
                "postprocess": pp_meta, "shards": [], "num_rows": 0}
        logger.info("index %s: post-processing %s, %d dimensions", out_path, describe_postprocessing(pp_meta), dim)
    else:
        index, meta = existing.index, existing.meta
    t0 = time.perf_counter()
    for shard in todo:
        for x in output.iter_vectors(batch_rows, [shard]):
            index.add(normalize(x if pp is None else pp.transform(x)))
        meta["shards"].append({"name": shard.name, "rows": shard.rows, "size": shard.size})
        meta["num_rows"] += shard.rows
        logger.info("index: %d rows (%.0f s)", meta["num_rows"], time.perf_counter() - t0)
    meta["built"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_index(out_path, IndexFiles(meta, index), pp)
    return out_path
