"""Finding, checking and reading a job's output: the shards of the current version, local or s3://.

An ``embed`` output's shards are those of its valid completion records (``checkpoint.JobState``);
it is *complete* when every planned unit has one. Readers refuse an incomplete output unless asked
(``allow_partial``), so a half-finished job is never mistaken for a whole corpus. A ``refresh``
output names its published version in ``_current.json``; a published version is complete by
construction.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from elmo_dist.errors import ElmoDistError
from elmo_dist import storage
from elmo_dist.checkpoint import JOB_DIR, JobState  # noqa: F401  (JOB_DIR re-exported)
from elmo_dist.storage import filesystem, read_json  # noqa: F401  (re-exported for callers)

logger = logging.getLogger(__name__)

CURRENT = "_current.json"  # refresh outputs: pointer to the published version's manifest


class OutputError(ElmoDistError, FileNotFoundError):
    """An output directory is missing, empty, or not an elmo-dist output."""


class IncompleteOutputError(OutputError):
    """The output's job has not finished every planned unit."""


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


def read_embeddings(directory: str, columns: list[str] | None = None, allow_partial: bool = False):
    """The current version's rows as a ``pyarrow.dataset.Dataset`` (``.to_table()`` for a Table).

    Works on ``embed`` and ``refresh`` outputs, local or s3://. An unfinished ``embed`` output is
    refused (IncompleteOutputError) unless ``allow_partial=True``.
    """
    import pyarrow.dataset as ds

    fs, _ = filesystem(directory)
    dataset = ds.dataset(list_shards(directory, allow_partial), filesystem=fs, format="parquet")
    if columns is not None:
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise OutputError(f"{storage.redact(directory)}: no column(s) {missing} "
                              f"(columns: {', '.join(dataset.schema.names)})")
    return dataset


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
    if deep:
        _deep_check(fs, root, [{"path": f, "rows": None} for f in files if f in sizes], report,
                    manifest.get("config_fingerprint"))
    return report
