"""Finding, checking and reading a job's output: the shards of the current version, local or s3://.

An ``embed`` output's shards are those of its valid completion records (``checkpoint.JobState``);
it is *complete* when every planned unit has one. Readers refuse an incomplete output unless asked
(``allow_partial``), so a half-finished job is never mistaken for a whole corpus. A ``refresh``
output names its published version in ``_current.json``; a published version is complete by
construction.

``ShardSet.open`` reads every shard's footer (in parallel) and checks the shards can be compared
with each other (same model, embedding width and sentence settings), for search and its index;
``ShardSet.iter_vectors`` streams their sentence vectors in global row order (a row's position in
the concatenation of the shards, in ``list_shards`` order).

``stored_postprocessor`` / ``stored_moments`` find the post-processing fitted on the current
version (``_job/`` of an embed output; the files a refresh manifest names under
``_postprocessing/``), and ``resolve_postprocessor`` turns a ``postprocess=`` argument into one.
"""

from __future__ import annotations

import json
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.fs as pafs

from elmo_dist.errors import ElmoDistError, SearchError
from elmo_dist import schema, storage
from elmo_dist.checkpoint import JOB_DIR, JobState  # noqa: F401  (JOB_DIR re-exported)
from elmo_dist.storage import filesystem, read_json  # noqa: F401  (re-exported for callers)

logger = logging.getLogger(__name__)

CURRENT = "_current.json"  # refresh outputs: pointer to the published version's manifest
# what must agree between shards (and between a search index and its output) for vectors to be comparable
VECTOR_KEYS = ("sentence_output", "pooling", "mix_weights", "gamma")


class OutputError(ElmoDistError, FileNotFoundError):
    """An output directory is missing, empty, or not an elmo-dist output."""


class IncompleteOutputError(OutputError):
    """The output's job has not finished every planned unit."""


class InconsistentOutputError(SearchError):
    """The shards cannot be searched together: one lacks elmo-dist metadata or sentence vectors,
    they were embedded differently, or one changed while it was read. A ``SearchError`` (a
    ``ValueError``), which is what searching such an output has always raised."""


def _incomplete(directory: str, done: int, planned: int) -> IncompleteOutputError:
    return IncompleteOutputError(
        f"{storage.redact(directory)} is incomplete: {done} of {planned} work units are done (the job is "
        "still running, was interrupted, or its records are not visible here); rerun the job to finish "
        "it, or pass allow_partial=True (--allow-partial) to read the finished units only")


def _current_manifest(fs: pafs.FileSystem, root: str, directory: str) -> dict[str, Any] | None:
    """The manifest ``_current.json`` points at (refresh outputs); None when there is no pointer.

    Raises OutputError naming the problem when the pointer or the manifest is damaged.
    """
    where = storage.redact(directory)
    try:
        pointer = read_json(fs, posixpath.join(root, CURRENT), strict=True)
    except storage.CorruptFileError as e:
        raise OutputError(f"{e}: the output's version pointer is damaged") from None
    if pointer is None:
        return None
    name = pointer.get("manifest") if isinstance(pointer, dict) else None
    if not isinstance(name, str) or not name:
        raise OutputError(f"{where}: {CURRENT} is damaged (no manifest named in it)")
    try:
        manifest = read_json(fs, posixpath.join(root, name), strict=True)
    except storage.CorruptFileError as e:
        raise OutputError(f"{e}: the manifest {CURRENT} points at is damaged") from None
    if manifest is None:
        raise OutputError(f"{where}: {CURRENT} points at a missing manifest {name}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise OutputError(f"{where}: manifest {name} is damaged (no file list)")
    return manifest


def current_files(directory: str, allow_partial: bool = False) -> list[str]:
    """Shard names (relative to ``directory``) of the output's current, complete version.

    Raises:
        OutputError: no such directory, or no shard.
        IncompleteOutputError: an embed output whose job has not finished (unless ``allow_partial``).
    """
    fs, root = filesystem(directory)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise OutputError(f"{storage.redact(directory)}: no such output directory")
    manifest = _current_manifest(fs, root, directory)
    if manifest is not None:
        return list(manifest["files"])
    scan = JobState(directory).scan()
    if scan.planned and not scan.complete and not allow_partial:
        raise _incomplete(directory, len(set(scan.planned) & set(scan.records)), len(scan.planned))
    files = scan.files()
    if not files:
        raise OutputError(f"{storage.redact(directory)}: holds no embedding shards (has the job run?)")
    return files


def list_shards(directory: str, allow_partial: bool = False) -> list[str]:
    """Paths (in the filesystem of ``filesystem(directory)``) of the current output shards, sorted.

    Raises:
        OutputError if the directory is missing or holds no shard; IncompleteOutputError (a kind of
        OutputError) if its job has not finished and ``allow_partial`` is False.
    """
    _, root = filesystem(directory)
    return [posixpath.join(root, f) for f in current_files(directory, allow_partial)]


def read_embeddings(directory: str, columns: list[str] | None = None, allow_partial: bool = False,
                    postprocess=None):
    """The current version's rows as a ``pyarrow.dataset.Dataset`` (``.to_table()`` for a Table).

    Works on ``embed`` and ``refresh`` outputs, local or s3://. An unfinished ``embed`` output is
    refused (IncompleteOutputError) unless ``allow_partial=True``.

    Args:
        directory: the output directory.
        columns: without ``postprocess``, only checked to exist (the dataset has every column;
            project with ``.to_table(columns=...)``); with it, the columns read.
        allow_partial: read an unfinished job's finished units.
        postprocess: the ``sentence_embedding`` column as stored (None, the default, or "none"),
            or corrected for cosine comparison (``elmo_dist.similarity``): "fitted" applies the
            post-processor fitted on the output (by ``embed`` or each ``refresh`` version; an
            OutputError when it has none); "center", "abtt" or "whiten" fits that method (default
            k) on the output's stored sentence-vector moments; a ``Postprocessor`` is applied as it
            is. The vectors become float32, of width ``Postprocessor.output_dim`` (k for
            "whiten"); the rows (of ``columns``, default all) are then read into memory and
            returned as an in-memory Dataset, with the post-processing recorded in the schema
            metadata (key ``elmo_dist.postprocess``: method and fingerprint).
    """
    import pyarrow.dataset as ds

    fs, _ = filesystem(directory)
    dataset = ds.dataset(list_shards(directory, allow_partial), filesystem=fs, format="parquet")
    if columns is not None:
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise OutputError(f"{storage.redact(directory)}: no column(s) {missing} "
                              f"(columns: {', '.join(dataset.schema.names)})")
    if postprocess is None:
        return dataset
    pp = resolve_postprocessor(directory, postprocess)
    if pp is None:  # "none"
        return dataset
    return _postprocessed(dataset, columns, pp)


def _postprocessed(dataset, columns: list[str] | None, pp):
    """An in-memory Dataset of ``dataset``'s rows (``columns``) with ``sentence_embedding`` transformed."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    wanted = list(columns) if columns is not None else list(dataset.schema.names)
    schema_in = dataset.schema
    dim = getattr(schema_in.field(schema.SENTENCE_EMBEDDING).type, "list_size", None) \
        if schema.SENTENCE_EMBEDDING in schema_in.names else None
    if dim is not None and pp.mean.shape[0] != dim:
        raise OutputError(f"post-processor of width {pp.mean.shape[0]} does not fit vectors of width {dim}")
    out_schema = pa.schema([schema_in.field(c) for c in wanted], metadata=schema_in.metadata)
    if schema.SENTENCE_EMBEDDING in wanted:
        i = out_schema.get_field_index(schema.SENTENCE_EMBEDDING)
        old = out_schema.field(i)
        out_schema = out_schema.set(i, pa.field(old.name, pa.list_(pa.float32(), pp.output_dim), old.nullable,
                                                old.metadata))
    out_schema = out_schema.with_metadata({**(out_schema.metadata or {}), b"elmo_dist.postprocess": json.dumps(
        {"method": pp.method, "fingerprint": pp.fingerprint(), "dim": pp.output_dim}).encode()})
    batches = []
    for batch in dataset.to_batches(columns=wanted):
        arrays = list(batch.columns)
        if schema.SENTENCE_EMBEDDING in wanted:
            i = wanted.index(schema.SENTENCE_EMBEDDING)
            col = arrays[i]
            x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), dim)
            y = pp.transform(x)
            arrays[i] = pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1), pa.float32()), pp.output_dim)
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=out_schema))
    return ds.dataset(batches, schema=out_schema)


# ---- the post-processing stored with an output ------------------------------------------------

POSTPROCESSING_DIR = "_postprocessing"  # refresh outputs: each version's moments and post-processor


def _stored(directory: str, key: str, from_job):
    """The bytes of the current version's ``key`` ("moments" or "postprocessor"): ``_job/`` of an
    embed output (``from_job(JobState)``), the file the current manifest names for a refresh output."""
    fs, root = filesystem(directory)
    manifest = _current_manifest(fs, root, directory)
    if manifest is None:
        return from_job(JobState(directory))
    entry = manifest.get("postprocessing") or {}
    name = entry.get(key) if isinstance(entry, dict) else None
    if not name:
        return None
    data = storage.read_bytes(fs, posixpath.join(root, name))
    if data is None:
        raise OutputError(f"{storage.redact(directory)}: {name}, the {key} of version {manifest.get('version')}, "
                          "is missing")
    return data


def stored_postprocessor(directory: str):
    """The ``similarity.Postprocessor`` fitted on the output's current version, or None: an embed
    output's ``_job/postprocessor.npz``, a refresh output's (named by the current manifest)."""
    from elmo_dist.similarity import Postprocessor

    data = _stored(directory, "postprocessor", lambda state: state.postprocessor())
    return data if data is None or isinstance(data, Postprocessor) else Postprocessor.from_bytes(data)


def stored_moments(directory: str):
    """The ``similarity.Moments`` of the current version's sentence vectors, or None (see
    ``stored_postprocessor``); any method can be fitted from them."""
    from elmo_dist.similarity import Moments

    data = _stored(directory, "moments", lambda state: state.moments())
    return data if data is None or isinstance(data, Moments) else Moments.from_bytes(data)


def resolve_postprocessor(directory: str, postprocess):
    """The ``Postprocessor`` that ``postprocess`` names for this output, or None for the raw vectors.

    ``postprocess``: "fitted" (the stored one; OutputError when there is none), "none", a method
    ("center", "abtt", "whiten": fitted on the stored moments, OutputError when there are none), or
    a ``Postprocessor`` (returned as it is).
    """
    from elmo_dist.similarity import METHODS, Postprocessor

    where = storage.redact(directory)
    if isinstance(postprocess, Postprocessor):
        return postprocess
    if postprocess == "fitted":
        pp = stored_postprocessor(directory)
        if pp is None:
            raise OutputError(f"{where}: no fitted post-processor stored with this output (outputs of "
                              "`elmo-dist embed` and `refresh` fit one; older ones do not): pass a method "
                              "(\"center\", \"abtt\", \"whiten\") or a Postprocessor")
        return pp
    if postprocess not in METHODS:
        raise ValueError(f"postprocess must be None, 'fitted', one of {', '.join(METHODS)} or a Postprocessor, "
                         f"got {postprocess!r}")
    if postprocess == "none":
        return None
    moments = stored_moments(directory)
    if moments is None:
        raise OutputError(f"{where}: no sentence-vector moments stored with this output to fit {postprocess!r} on "
                          "(`elmo-dist embed` writes _job/moments.npz; `refresh` one per version)")
    return Postprocessor.fit(moments, postprocess)


# ---- the shards, opened for comparing their vectors (search) ---------------------------------

@dataclass(frozen=True)
class Shard:
    path: str  # in the output's filesystem
    name: str  # relative to the output directory
    rows: int
    size: int  # bytes


@dataclass(frozen=True)
class ShardSet:
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
        return {key: emb.get(key) for key in VECTOR_KEYS}

    @classmethod
    def open(cls, directory: str, allow_partial: bool = False) -> "ShardSet":
        """Read every shard's footer (in parallel) and check the shards can be searched together.

        Raises:
            OutputError: the directory is missing or holds no shard; IncompleteOutputError when its
                job has not finished (unless ``allow_partial``).
            InconsistentOutputError (a SearchError): a shard lacks the metadata, or shards disagree
                on the model or settings.
        """
        import pyarrow.parquet as pq

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
                raise InconsistentOutputError(
                    f"{directory}: shard {name} has no elmo_dist metadata (model fingerprint); "
                    "it was not written by elmo-dist embed")
            if schema.SENTENCE_EMBEDDING not in arrow_schema.names:
                raise InconsistentOutputError(f"{directory}: shard {name} has no {schema.SENTENCE_EMBEDDING} column")
            vec_type = arrow_schema.field(schema.SENTENCE_EMBEDDING).type
            shard_dim = getattr(vec_type, "list_size", None)
            if not shard_dim:
                raise InconsistentOutputError(
                    f"{directory}: shard {name}: {schema.SENTENCE_EMBEDDING} is {vec_type}, "
                    "expected a fixed-size list of floats")
            emb = md.get("embedding", {})
            key = (md["model"]["fingerprint"], shard_dim) + tuple(json.dumps(emb.get(k)) for k in VECTOR_KEYS)
            if first is None:
                first, first_key, dim = (name, md), key, shard_dim
                dtype = "float16" if str(vec_type.value_type) == "halffloat" else "float32"
            elif key != first_key:
                what = ("model fingerprints" if key[0] != first_key[0] else
                        "embedding widths" if key[1] != first_key[1] else "sentence embedding settings")
                raise InconsistentOutputError(
                    f"{directory}: shards were embedded differently ({what} differ): {first[0]} has "
                    f"model {first_key[0]}, D={first_key[1]}, {_describe(first[1])}; {name} has model {key[0]}, "
                    f"D={key[1]}, {_describe(md)}. Search one consistent output at a time.")
            shards.append(Shard(path, name, int(rows), int(infos.get(path) or 0)))
        return cls(directory, fs, root, tuple(shards), first[1], dim, dtype)

    def iter_vectors(self, batch_rows: int, shards: Sequence[Shard] | None = None) -> Iterator[np.ndarray]:
        """(B, D) float16/float32 batches of sentence vectors, shard after shard (default: all of
        them), in row order. Raises InconsistentOutputError if a shard's row count changed since
        ``open``."""
        import pyarrow.parquet as pq

        for shard in self.shards if shards is None else shards:
            with self.fs.open_input_file(shard.path) as fh:
                pf = pq.ParquetFile(fh)
                seen = 0
                for batch in pf.iter_batches(batch_size=batch_rows, columns=[schema.SENTENCE_EMBEDDING]):
                    col = batch.column(0)
                    flat = col.flatten().to_numpy(zero_copy_only=False)  # flatten() honours slicing
                    seen += len(col)
                    yield flat.reshape(len(col), self.dim)
            if seen != shard.rows:
                raise InconsistentOutputError(
                    f"shard {shard.name} changed during the search ({seen} rows, expected {shard.rows})")


def _describe(md: dict[str, Any]) -> str:
    emb = md.get("embedding", {})
    return ", ".join(f"{k}={emb.get(k)!r}" for k in VECTOR_KEYS)


# ---- verify ---------------------------------------------------------------------------------

@dataclass
class Report:
    """What ``verify`` found: ``problems`` is empty for a sound output."""

    directory: str
    kind: str  # "embed", "refresh" or "unknown"
    units_planned: int = 0
    units_done: int = 0
    shards: int = 0
    rows: int | None = None  # rows in the shards (deep only)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"directory": storage.redact(self.directory), "kind": self.kind, "ok": self.ok,
                "units_planned": self.units_planned, "units_done": self.units_done, "shards": self.shards,
                "rows": self.rows, "problems": self.problems, "notes": self.notes}


def _deep_check(fs: pafs.FileSystem, root: str, entries: list[dict[str, Any]], report: Report,
                config_fingerprint: str | None) -> None:
    """Read every shard's footer: readable, row count as recorded, metadata of this job."""
    import pyarrow.parquet as pq

    from elmo_dist.schema import read_metadata

    rows = 0
    for f in entries:
        path = posixpath.join(root, f["path"])
        try:
            pf = pq.ParquetFile(path, filesystem=fs)
        except Exception as e:
            report.problems.append(f"shard {f['path']}: unreadable Parquet ({type(e).__name__}: {e})")
            continue
        n = pf.metadata.num_rows
        rows += n
        if f.get("rows") is not None and n != f["rows"]:
            report.problems.append(f"shard {f['path']}: {n} rows, the record says {f['rows']}")
        md = read_metadata(pf.schema_arrow)
        if config_fingerprint and md.get("config_fingerprint") != config_fingerprint:
            report.problems.append(f"shard {f['path']}: written by another configuration "
                                   f"({md.get('config_fingerprint')} != {config_fingerprint})")
    report.rows = rows


def verify(directory: str, deep: bool = False) -> Report:
    """Check an output: records vs plan vs files (and with ``deep`` every shard's footer)."""
    fs, root = filesystem(directory)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise OutputError(f"{storage.redact(directory)}: no such output directory")
    try:
        manifest = _current_manifest(fs, root, directory)
    except OutputError as e:
        return Report(directory, "refresh", problems=[str(e)])
    if manifest is not None:
        return _verify_refresh(fs, root, directory, manifest, deep)
    state = JobState(directory)
    report = Report(directory, "embed")
    try:
        cfg = state.config()
    except storage.CorruptFileError as e:
        report.problems.append(str(e))
        cfg = None
    if cfg is None and not report.problems:
        raise OutputError(f"{storage.redact(directory)}: not an elmo-dist output (no {JOB_DIR}/config.json "
                          f"or {CURRENT})")
    try:
        plan = state.plan()
    except storage.CorruptFileError as e:
        report.problems.append(str(e))
        plan = None
    scan = state.scan()
    planned = set(scan.planned)
    report.units_planned, report.units_done = len(planned), len(planned & set(scan.records))
    if plan is None:
        report.problems.append(f"{JOB_DIR}/plan.json is missing")
    for uid, why in sorted(scan.invalid.items()):
        report.problems.append(f"unit {uid}: {why}")
    missing = [u for u in scan.missing if u not in scan.invalid]
    if missing:
        report.problems.append(f"{len(missing)} planned unit(s) have no completion record (e.g. {missing[0]})")
    extra = sorted(set(scan.records) - planned)
    if extra and planned:
        report.problems.append(f"{len(extra)} record(s) of units outside the plan (e.g. {extra[0]})")
    recorded = set(scan.files())
    report.shards = len(recorded)
    strays = sorted(p for p in scan.shard_sizes if p.endswith(".parquet") and p not in recorded)
    if strays:
        report.notes.append(f"{len(strays)} shard file(s) no record names (left by an interrupted unit; "
                            f"readers that follow the records ignore them, a rerun replaces them): "
                            f"{', '.join(strays[:3])}")
    temps = [p for p in scan.shard_sizes if storage._TMP_RE.match(posixpath.basename(p))]
    if temps:
        report.notes.append(f"{len(temps)} temporary file(s) of interrupted writes (a rerun removes them)")
    if deep:
        entries = [f for r in scan.records.values() for f in r["files"]]
        _deep_check(fs, root, entries, report, (cfg or {}).get("fingerprint"))
    return report


def _verify_refresh(fs: pafs.FileSystem, root: str, directory: str, manifest: dict[str, Any],
                    deep: bool) -> Report:
    report = Report(directory, "refresh")
    sizes = {p[len(root):].lstrip("/"): s for p, s in storage.list_files(fs, root, recursive=True).items()}
    recorded_sizes = manifest.get("sizes") or {}
    files = list(manifest.get("files", []))
    report.shards = len(files)
    units = {u for e in manifest.get("inputs", {}).values() for u in e.get("units", [])}
    report.units_planned = report.units_done = len(units)
    for f in files:
        if f not in sizes:
            report.problems.append(f"shard {f} of version {manifest.get('version')} is missing")
        elif f in recorded_sizes and recorded_sizes[f] != sizes[f]:
            report.problems.append(f"shard {f}: {sizes[f]} bytes, the manifest says {recorded_sizes[f]}")
    pp = manifest.get("postprocessing")
    for key in ("moments", "postprocessor"):
        name = pp.get(key) if isinstance(pp, dict) else None
        if name and name not in sizes:
            report.problems.append(f"{key} {name} of version {manifest.get('version')} is missing")
    if deep:
        _deep_check(fs, root, [{"path": f, "rows": None} for f in files if f in sizes], report,
                    manifest.get("config_fingerprint"))
    return report


# ---- status ---------------------------------------------------------------------------------

def status(directory: str) -> dict[str, Any]:
    """Progress of a running or finished `embed` job: units done of planned, rows, tokens, per node,
    the last runs' throughput, and who holds the output's lease (a running driver)."""
    import collections

    fs, root = filesystem(directory)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise OutputError(f"{storage.redact(directory)}: no such output directory")
    state = JobState(directory)
    if not state.exists():
        raise OutputError(f"{storage.redact(directory)}: not an `elmo-dist embed` output (no {JOB_DIR}/config.json)")
    scan = state.scan()
    per_node: dict[str, collections.Counter] = {}
    spans: dict[str, list[tuple[float, float, Any]]] = {}
    totals: collections.Counter = collections.Counter()
    for rec in scan.records.values():
        node = rec.get("node") or {}
        name = f"{node.get('host') or 'unknown'}/{(node.get('node_id') or '?')[:8]}"  # several nodes per host
        c = per_node.setdefault(name, collections.Counter())
        st = rec.get("stats") or {}
        for key in ("rows", "sentences", "tokens", "embed_seconds"):
            c[key] += st.get(key, 0)
            totals[key] += st.get(key, 0)
        c["units"] += 1
        if isinstance(st.get("t_start"), (int, float)) and isinstance(st.get("t_end"), (int, float)):
            spans.setdefault(name, []).append((st["t_start"], st["t_end"], node.get("pid")))
    for name, sp in spans.items():  # how busy the model was on the node while its units ran
        wall = max(e for _, e, _ in sp) - min(b for b, _, _ in sp)
        actors = len({pid for _, _, pid in sp}) or 1
        if wall > 0:
            per_node[name]["model_busy"] = per_node[name]["embed_seconds"] / (wall * actors)
    lease = read_json(fs, posixpath.join(root, "_lease.json"))
    stats = state.stats() or {}
    planned = len(scan.planned)
    done = len(set(scan.planned) & set(scan.records))
    return {
        "directory": storage.redact(directory), "units_planned": planned, "units_done": done,
        "complete": bool(planned) and done == planned, "invalid_records": len(scan.invalid),
        "rows": int(totals["rows"]), "sentences": int(totals["sentences"]), "tokens": int(totals["tokens"]),
        "per_node": {h: {k: (round(v, 3) if isinstance(v, float) else int(v)) for k, v in c.items()}
                     for h, c in sorted(per_node.items())},
        "running": {"owner": lease.get("owner"), "until": lease.get("expires_at")} if isinstance(lease, dict) else None,
        "runs": [{k: r.get(k) for k in ("finished", "host", "units", "tokens", "seconds", "tokens_per_second")}
                 for r in stats.get("runs", [])[-5:]],
    }
