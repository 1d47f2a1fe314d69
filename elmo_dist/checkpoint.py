"""Job state beside the output: config + fingerprint, the unit plan, and per-unit completion records.

The only module that knows the ``_job/`` layout:

  config.json   the resolved JobConfig, its fingerprint and the model's fingerprint
  plan.json     the work units of this job and how they were cut (written once, at the start)
  units/ID.json completion record of a unit, written only after its shards are durable:
                ``{unit, files: [{path, size, rows}], stats, node}``
  stats.json    the summary of the output, and one entry per run (a no-op rerun appends)
  moments/ID.npz  the unit's sentence-vector moments (count, sum, outer products), written before
                its record; merged into moments.npz and the fitted postprocessor.npz at the end

A unit counts as done only when its record parses, names this unit, and every shard it lists
exists with the recorded size. A torn or unreadable record, or a record whose shard is missing or
has another size, makes the unit "not done": it is logged and redone (its shards have fixed names,
so redoing overwrites them). A resume lists ``units/`` and the shard directory (one listing each)
and reads the records: it never re-reads finished input.
"""

from __future__ import annotations

import concurrent.futures
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from elmo_dist.errors import ElmoDistError
from elmo_dist import storage
from elmo_dist.config import JobConfig

logger = logging.getLogger(__name__)

JOB_DIR = "_job"  # job metadata of an `embed` output
POSTPROCESSOR = "postprocessor.npz"  # the post-processor fitted on the output's sentence vectors
_READERS = 16  # parallel record reads (S3 latency)


class ResumeError(ElmoDistError, RuntimeError):
    """The output holds a job with another configuration, model or input."""


@dataclass
class Scan:
    """What the completion records of a job say, checked against the files that exist."""

    planned: list[str]  # unit ids of the plan ([] when there is no plan)
    records: dict[str, dict[str, Any]]  # unit id -> valid record
    invalid: dict[str, str] = field(default_factory=dict)  # unit id -> why its record does not count
    shard_sizes: dict[str, int] = field(default_factory=dict)  # relative path -> size, as listed

    @property
    def missing(self) -> list[str]:
        return [u for u in self.planned if u not in self.records]

    @property
    def complete(self) -> bool:
        return bool(self.planned) and not self.missing

    def files(self) -> list[str]:
        return sorted(f["path"] for r in self.records.values() for f in r["files"])


def normalize_files(files: list[Any]) -> list[dict[str, Any]]:
    """Record file entries as ``{path, size, rows}`` (older records list bare paths)."""
    out = []
    for f in files:
        if isinstance(f, str):
            out.append({"path": f, "size": None, "rows": None})
        elif isinstance(f, dict) and isinstance(f.get("path"), str):
            out.append({"path": f["path"], "size": f.get("size"), "rows": f.get("rows")})
        else:
            raise ValueError(f"bad file entry {f!r}")
    return out


class JobState:
    def __init__(self, output: str, job_dir: str = JOB_DIR):
        self.output = output
        self.fs, self.root = storage.filesystem(output)
        self.job_dir = job_dir
        self.dir = posixpath.join(self.root, job_dir)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.dir, *parts)

    def exists(self) -> bool:
        return self.fs.get_file_info(self._path("config.json")).type == pafs.FileType.File

    def check_writable(self) -> None:
        """Fail before any work when the output cannot be written."""
        probe = self._path(".write-probe")
        try:
            storage.write_json(self.fs, probe, {"ok": True})
            self.fs.delete_file(probe)
        except Exception as e:
            raise PermissionError(f"{storage.redact(self.output)}: output is not writable "
                                  f"({type(e).__name__}: {e})") from None

    def cleanup(self, data_dir: str = "") -> None:
        """Remove temporaries of interrupted writes (call only while holding the output's lease)."""
        storage.remove_temporaries(self.fs, posixpath.join(self.root, data_dir) if data_dir else self.root,
                                   recursive=True)

    def config(self) -> dict[str, Any] | None:
        return storage.read_json(self.fs, self._path("config.json"), strict=True)

    def plan(self) -> dict[str, Any] | None:
        return storage.read_json(self.fs, self._path("plan.json"), strict=True)

    def begin(self, config: JobConfig, model_fingerprint: str, unit_ids: list[str]) -> bool:
        """Record or check the job's identity. Returns True when resuming an earlier run.

        Raises:
            ResumeError when the output holds a job with another fingerprint or another input.
        """
        fp = config.fingerprint(model_fingerprint)
        try:
            old = self.config()
        except storage.CorruptFileError as e:
            raise ResumeError(f"{e}: this output's job config is damaged; use a new --output") from None
        if old is not None:
            if old.get("fingerprint") != fp:
                now = config.model_dump(mode="json")
                changed = [k for k in ("text", "embedding") if old.get("config", {}).get(k) != now[k]]
                if old.get("config", {}).get("run", {}).get("compute_dtype") != config.run.compute_dtype:
                    changed.append(f"compute_dtype ({old.get('config', {}).get('run', {}).get('compute_dtype')}"
                                   f" -> {config.run.compute_dtype})")
                if old.get("model_fingerprint") != model_fingerprint:
                    changed.insert(0, f"model ({old.get('model_fingerprint')} -> {model_fingerprint})")
                raise ResumeError(
                    f"{storage.redact(self.output)} holds a job with another configuration (fingerprint "
                    f"{old.get('fingerprint')}, now {fp}; changed: {', '.join(changed) or 'settings'}). "
                    "Use a new --output, or `elmo-dist refresh` to re-embed into a new version.")
            plan = self.plan() or {}
            if sorted(plan.get("units", [])) != sorted(unit_ids):
                old_rpu = plan.get("rows_per_unit")
                hint = (f" It was planned with rows_per_unit={old_rpu}, now {config.run.rows_per_unit}: "
                        f"rerun with --rows-per-unit {old_rpu}." if old_rpu and old_rpu != config.run.rows_per_unit
                        else " Use a new --output, or `elmo-dist refresh` for incremental updates.")
                raise ResumeError(
                    f"{storage.redact(self.output)}: the work units differ from the job's plan "
                    f"({len(plan.get('units', []))} units planned, {len(unit_ids)} now; the input or the "
                    f"unit size changed since this job started).{hint}")
            return True
        storage.write_json(self.fs, self._path("plan.json"),
                           {"units": unit_ids, "rows_per_unit": config.run.rows_per_unit})
        storage.write_json(self.fs, self._path("config.json"),
                           {"config": config.model_dump(mode="json"), "fingerprint": fp,
                            "model_fingerprint": model_fingerprint})
        return False

    # ---- completion records --------------------------------------------------------------

    def record(self, unit_id: str, files: list[dict[str, Any]], stats: dict[str, Any],
               node: dict[str, Any] | None = None) -> None:
        """Mark ``unit_id`` done; ``files`` are ``{path, size, rows}`` of shards already durable."""
        storage.write_json(self.fs, self._path("units", f"{unit_id}.json"),
                           {"unit": unit_id, "files": normalize_files(files), "stats": stats,
                            "node": node or {}})

    def _record_paths(self) -> dict[str, str]:
        return {posixpath.basename(p)[:-5]: p for p in storage.list_files(self.fs, self._path("units"))
                if p.endswith(".json")}

    def scan(self, unit_ids: list[str] | None = None, data_dir: str | None = None) -> Scan:
        """Read and check every record (of ``unit_ids``, default all) against the shards on disk.

        ``data_dir``: where the shards live relative to the output root (default: the root).
        """
        paths = self._record_paths()
        if unit_ids is not None:
            wanted = set(unit_ids)
            paths = {u: p for u, p in paths.items() if u in wanted}
        try:
            plan = self.plan()
        except storage.CorruptFileError:
            plan = None
        planned = list(plan.get("units", [])) if isinstance(plan, dict) else []
        shard_dir = posixpath.join(self.root, data_dir) if data_dir else self.root
        sizes = {p[len(self.root):].lstrip("/"): s
                 for p, s in storage.list_files(self.fs, shard_dir, recursive=bool(data_dir)).items()}
        records: dict[str, dict[str, Any]] = {}
        invalid: dict[str, str] = {}

        def load(item: tuple[str, str]) -> tuple[str, Any, str | None]:
            uid, path = item
            try:
                return uid, storage.read_json(self.fs, path, strict=True), None
            except storage.CorruptFileError as e:
                return uid, None, str(e)

        with concurrent.futures.ThreadPoolExecutor(min(_READERS, max(1, len(paths)))) as pool:
            for uid, rec, err in pool.map(load, sorted(paths.items())):
                why = err or _check_record(uid, rec, sizes, strict_unit=bool(planned))
                if why:
                    invalid[uid] = why
                else:
                    rec["files"] = normalize_files(rec["files"])
                    records[uid] = rec
        for uid, why in sorted(invalid.items()):
            logger.warning("%s: unit %s does not count as done: %s", storage.redact(self.output), uid, why)
        return Scan(planned, records, invalid, sizes)

    def done_units(self) -> set[str]:
        return set(self.scan().records)

    def records(self) -> list[dict[str, Any]]:
        scan = self.scan()
        return [scan.records[u] for u in sorted(scan.records)]

    # ---- post-processing statistics ------------------------------------------------------

    def write_unit_moments(self, unit_id: str, data: bytes) -> None:
        storage.write_bytes(self.fs, self._path("moments", f"{unit_id}.npz"), data)

    def merged_moments(self, unit_ids: list[str]):
        """The merged ``similarity.Moments`` of ``unit_ids``; None when any unit has none (outputs
        written before moments existed)."""
        from elmo_dist.similarity import Moments

        def load(uid: str):
            data = storage.read_bytes(self.fs, self._path("moments", f"{uid}.npz"))
            return None if data is None else Moments.from_bytes(data)

        with concurrent.futures.ThreadPoolExecutor(min(_READERS, max(1, len(unit_ids)))) as pool:
            parts = list(pool.map(load, unit_ids))
        if not parts or any(p is None for p in parts):
            return None
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    def has_postprocessor(self) -> bool:
        return self.fs.get_file_info(self._path(POSTPROCESSOR)).type == pafs.FileType.File

    def postprocessor(self):
        """The fitted ``similarity.Postprocessor`` of this output, or None."""
        from elmo_dist.similarity import Postprocessor

        data = storage.read_bytes(self.fs, self._path(POSTPROCESSOR))
        return None if data is None else Postprocessor.from_bytes(data)

    def moments(self):
        """The merged ``similarity.Moments`` of the output's sentence vectors, or None."""
        from elmo_dist.similarity import Moments

        data = storage.read_bytes(self.fs, self._path("moments.npz"))
        return None if data is None else Moments.from_bytes(data)

    def write_postprocessing(self, moments, postprocessor) -> None:
        storage.write_bytes(self.fs, self._path("moments.npz"), moments.to_bytes())
        storage.write_bytes(self.fs, self._path(POSTPROCESSOR), postprocessor.to_bytes())

    # ---- stats ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any] | None:
        return storage.read_json(self.fs, self._path("stats.json"))

    def write_stats(self, summary: dict[str, Any], run: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the output's summary; ``run`` (this run's figures) is appended to the history.

        A run that embedded nothing keeps the throughput figures of the last run that did.
        """
        old = self.stats() or {}
        runs = list(old.get("runs", []))
        if run is not None:
            runs.append(run)
        out = dict(summary)
        if not summary.get("units_this_run") and old.get("tokens_per_second"):
            out["tokens_per_second"] = old["tokens_per_second"]
        out["runs"] = runs[-100:]
        storage.write_json(self.fs, self._path("stats.json"), out)
        return out


def _check_record(uid: str, rec: Any, sizes: dict[str, int], strict_unit: bool = True) -> str | None:
    """Why a parsed record does not prove its unit done (None when it does).

    ``strict_unit``: the record must name this unit (outputs with a plan; hand-assembled outputs
    without one are checked by their shards only).
    """
    if not isinstance(rec, dict) or not isinstance(rec.get("files"), list):
        return "record is not a completion record (no file list)"
    if strict_unit and rec.get("unit") != uid:
        return f"record names unit {rec.get('unit')!r}, not {uid!r}"
    try:
        files = normalize_files(rec["files"])
    except ValueError as e:
        return str(e)
    if not files:
        return "record lists no shard"
    for f in files:
        size = sizes.get(f["path"])
        if size is None:
            return f"shard {f['path']} is missing"
        if f["size"] is not None and size != f["size"]:
            return f"shard {f['path']} has {size} bytes, the record says {f['size']}"
    return None
