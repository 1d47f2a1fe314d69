"""Incremental refresh: embed only what changed in the corpus, publish it as a new version.

Layout of a refresh output ``DIR`` (local or s3://)::

  data/<config fp>/part-<unit>-NNNN.parquet   shards; a path is fixed by (settings+model, work unit)
  _versions/v000001.json                      immutable manifest of each version (created exclusively):
      {version, previous, created, config_fingerprint, model_fingerprint, model, settings,
       inputs: {uri: {size, version, rows, units: [unit ids], files: [shards]}},
       files: [shard paths relative to DIR], rows, run_id,
       postprocessing: {method, fingerprint, n, moments, postprocessor}}
  _current.json                               {version, manifest}: the published version, written LAST
                                              with one atomic conditional write
  _postprocessing/moments-<fp>.npz            each version's sentence-vector moments and the post-processor
  _postprocessing/postprocessor-<fp>.npz      fitted on them (content-addressed; the manifest names them)
  _lease.json                                 the running refresh's lease (see elmo_dist.lease)
  _refresh/<run id>/                          the running (or crashed) run's JobState: config, plan,
                                              per-unit completion records; deleted after publishing

A run: take the lease -> list the corpus (uri, size, mtime/version) -> compare with the current
manifest's inputs -> plan work units of new and changed files (all files when the model or the
text/embedding settings changed) -> embed the units that no completion record covers (records of an
interrupted run with the same settings are reused; the run id is a hash of the settings and the
planned unit ids, so rerunning after a crash resumes it) -> refit the post-processing (the
previous version's moments minus those of the dropped files' shards, plus the new units'; see
``version_postprocessing``) -> write the next manifest -> flip the pointer -> retention (keep the newest ``keep_versions`` published versions; delete other
manifests, finished/crashed run state, and shards that no kept version references).

Readers (``elmo_dist.output.current_files``/``read_embeddings``/search) follow the pointer to one
manifest, so they see exactly one version, also while a refresh runs: new shards are not
referenced until the pointer flips, and shards of kept versions are never rewritten or deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow.fs as pafs

from elmo_dist.errors import ElmoDistError
from elmo_dist import storage
from elmo_dist.checkpoint import JOB_DIR, JobState
from elmo_dist.config import ConfigError, JobConfig
from elmo_dist.lease import Lease, LeaseError, Store, store_for
from elmo_dist.output import CURRENT, POSTPROCESSING_DIR
from elmo_dist.paths import resolve_model
from elmo_dist.stages.read import InputFile, Unit, check_output_outside_inputs, list_inputs
from elmo_dist.storage import filesystem, read_json

logger = logging.getLogger(__name__)

DATA = "data"
VERSIONS = "_versions"
RUNS = "_refresh"
_MANIFEST_RE = re.compile(r"^v(\d+)\.json$")


class RefreshError(ElmoDistError, RuntimeError):
    """The output cannot be refreshed (not a refresh output, pointer changed underneath, ...)."""


# ---- helpers --------------------------------------------------------------------------------

def manifest_name(version: int) -> str:
    return f"{VERSIONS}/v{version:06d}.json"


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _rel(root: str, path: str) -> str:
    return path[len(root):].lstrip("/")


def _listing(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))


def run_id_for(config_fingerprint: str, unit_ids: list[str]) -> str:
    """Deterministic id of the work of a refresh: rerunning the same work resumes the same run."""
    return hashlib.sha256(json.dumps([config_fingerprint, sorted(unit_ids)]).encode()).hexdigest()[:16]


def _settings(cfg: JobConfig) -> dict[str, Any]:
    return {"text": cfg.text.model_dump(mode="json"), "embedding": cfg.embedding.model_dump(mode="json")}


def _why_full(current: dict[str, Any], cfg: JobConfig, model_fp: str) -> str:
    parts = []
    if current.get("model_fingerprint") != model_fp:
        parts.append(f"model {current.get('model_fingerprint')} -> {model_fp}")
    old = current.get("settings") or {}
    for k, v in _settings(cfg).items():
        if old.get(k) != v:
            parts.append(f"{k} settings")
    return "full re-embed: " + (", ".join(parts) or "settings changed")


def _completed(output: str, fs: pafs.FileSystem, root: str, config_fp: str,
               wanted: set[str], origin: dict[str, str] | None = None) -> dict[str, dict]:
    """Valid completion records of ``wanted`` units in any run dir with the same config fingerprint
    (``origin``, when given, gets the run's job dir of each: where its moments are).

    A record counts only when its shards exist with the recorded sizes (``JobState.scan``); a torn
    record or a damaged shard makes its unit pending again. Retention deletes a run's records
    before any shard.
    """
    found: dict[str, dict] = {}
    if not wanted:
        return found
    for run in _listing(fs, posixpath.join(root, RUNS)):
        if run.type != pafs.FileType.Directory:
            continue
        conf = read_json(fs, posixpath.join(run.path, "config.json"))
        if not conf or conf.get("fingerprint") != config_fp:
            continue
        state = JobState(output, f"{RUNS}/{posixpath.basename(run.path)}")
        for uid, rec in state.scan(sorted(wanted - set(found)), data_dir=f"{DATA}/{config_fp}").records.items():
            found.setdefault(uid, rec)
            if origin is not None:
                origin.setdefault(uid, state.job_dir)
    return found


def _publish_manifest(store: Store, fs: pafs.FileSystem, root: str, manifest: dict[str, Any],
                      floor: int) -> tuple[int, str]:
    """Create the next manifest exclusively (published manifests are never overwritten)."""
    nums = [int(m.group(1)) for i in _listing(fs, posixpath.join(root, VERSIONS))
            if (m := _MANIFEST_RE.match(posixpath.basename(i.path)))]
    version = max(nums + [floor]) + 1
    for _ in range(100):
        name = manifest_name(version)
        if store.create(name, {**manifest, "version": version}) is not None:
            return version, name
        version += 1
    raise RefreshError(f"could not create a new manifest under {VERSIONS}/")


def _retention(fs: pafs.FileSystem, root: str, store: Store, current_name: str, keep: int,
               lease: Lease) -> dict[str, Any]:
    """Keep the ``keep`` newest published versions (following ``previous`` from the current one);
    delete other manifests, all run state (we hold the lease: no run is in progress), then every
    shard under data/ that no kept manifest references."""
    kept: list[tuple[str, dict]] = []
    name: str | None = current_name
    while name and len(kept) < keep:
        m, _ = store.read(name)
        if not m:
            break
        kept.append((name, m))
        name = manifest_name(m["previous"]) if m.get("previous") else None
    kept_names = {n for n, _ in kept}
    referenced = {f for _, m in kept for f in m["files"]}
    kept_pp = {e[k] for _, m in kept if isinstance(e := m.get("postprocessing"), dict)
               for k in ("moments", "postprocessor") if e.get(k)}
    runs = [i.path for i in _listing(fs, posixpath.join(root, RUNS)) if i.type == pafs.FileType.Directory]
    manifests = [i.path for i in _listing(fs, posixpath.join(root, VERSIONS))
                 if i.type == pafs.FileType.File and _rel(root, i.path) not in kept_names]
    pp_files = [i.path for i in _listing(fs, posixpath.join(root, POSTPROCESSING_DIR))
                if i.type == pafs.FileType.File and _rel(root, i.path) not in kept_pp]
    data = _listing(fs, posixpath.join(root, DATA), recursive=True)
    shards = [i.path for i in data if i.type == pafs.FileType.File and _rel(root, i.path) not in referenced]
    if isinstance(fs, pafs.LocalFileSystem):  # temporaries of interrupted pointer/lease writes (old naming)
        shards += [i.path for i in _listing(fs, root) if i.type == pafs.FileType.File
                   and re.match(r"^_(current|lease)\.json\.tmp-[0-9a-f]{32}$", posixpath.basename(i.path))]
    lease.check()  # never delete after losing the lease
    storage.remove_temporaries(fs, root, recursive=True)  # of writers killed earlier (we hold the lease)
    for p in runs:  # records first: no record may outlive its shards
        fs.delete_dir(p)
    for p in manifests:
        fs.delete_file(p)
    for p in pp_files + shards:
        fs.delete_file(p)
    if isinstance(fs, pafs.LocalFileSystem):  # empty data/<fp>/ and _refresh/ directories
        dirs = [i.path for i in data if i.type == pafs.FileType.Directory] + [posixpath.join(root, RUNS)]
        for d in sorted(dirs, key=len, reverse=True):
            try:
                if fs.get_file_info(d).type == pafs.FileType.Directory and not _listing(fs, d):
                    fs.delete_dir(d)
            except OSError:
                pass
    out = {"kept_versions": [m["version"] for _, m in kept], "manifests_deleted": len(manifests),
           "shards_deleted": len(shards), "runs_deleted": len(runs), "postprocessing_deleted": len(pp_files)}
    logger.info("retention: kept versions %s; deleted %d manifest(s), %d shard(s), %d run state dir(s)",
                out["kept_versions"], len(manifests), len(shards), len(runs))
    return out


# ---- the refresh ----------------------------------------------------------------------------

# ---- pure steps (no I/O): tested without Ray ----------------------------------------------

@dataclass
class Diff:
    """How the corpus listing differs from the current version's inputs (URIs in listing order)."""

    added: list[str]
    changed: list[str]
    deleted: list[str]
    unchanged: list[str]

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.deleted)


def diff_inputs(previous: dict[str, dict[str, Any]], listing: dict[str, InputFile]) -> Diff:
    """Compare the listing (uri -> file) with the previous manifest's inputs, by size and version. O(N)."""
    added, changed, unchanged = [], [], []
    for uri, f in listing.items():
        prev = previous.get(uri)
        if prev is None:
            added.append(uri)
        elif prev.get("size") != f.size or prev.get("version") != f.version:
            changed.append(uri)
        else:
            unchanged.append(uri)
    deleted = sorted(u for u in previous if u not in listing)
    return Diff(added, changed, deleted, unchanged)


def build_manifest(cfg: JobConfig, files: list[InputFile], embedded: set[str], units: list[Unit],
                   records: dict[str, dict[str, Any]], current: dict[str, Any] | None, config_fp: str,
                   model_fp: str, run_id: str, created: str) -> dict[str, Any]:
    """The next version's manifest: embedded files take their units' shards from ``records``, the
    others keep their entry of ``current``. O(files + units)."""
    prev_inputs: dict[str, dict] = current["inputs"] if current else {}
    units_by_uri: dict[str, list[str]] = {}
    for u in units:
        units_by_uri.setdefault(u.uri, []).append(u.unit_id)
    inputs: dict[str, dict] = {}
    for f in files:
        if f.uri not in embedded:
            inputs[f.uri] = prev_inputs[f.uri]
            continue
        uids = units_by_uri.get(f.uri, [])
        inputs[f.uri] = {"size": f.size, "version": f.version, "rows": f.num_rows, "units": uids,
                         "files": [e["path"] for u in uids for e in records[u]["files"]]}
    shards = sorted({p for e in inputs.values() for p in e.get("files", [])})
    known = {**(current or {}).get("sizes", {}),
             **{e["path"]: e["size"] for r in records.values() for e in r["files"] if e.get("size") is not None}}
    return {"previous": current["version"] if current else None, "created": created,
            "config_fingerprint": config_fp, "model_fingerprint": model_fp, "model": storage.redact(cfg.model),
            "settings": _settings(cfg), "inputs": inputs, "files": shards,
            "sizes": {p: known[p] for p in shards if p in known},
            "rows": sum(int(e.get("rows", 0)) for e in inputs.values()), "run_id": run_id}


# ---- post-processing of a version -----------------------------------------------------------

_MOMENT_READERS = 16  # unit moments read at a time (each D x D float64: 8 MB at D = 1024)


def _shards_moments(fs: pafs.FileSystem, root: str, paths: list[str]):
    """Moments of the sentence vectors stored in the shards ``paths`` (relative to ``root``); None
    when there are none."""
    import numpy as np
    import pyarrow.parquet as pq

    from elmo_dist import schema
    from elmo_dist.similarity import Moments

    total = None
    for rel in paths:
        with fs.open_input_file(posixpath.join(root, rel)) as fh:
            pf = pq.ParquetFile(fh)
            dim = pf.schema_arrow.field(schema.SENTENCE_EMBEDDING).type.list_size
            m = Moments.zeros(dim)
            for batch in pf.iter_batches(batch_size=65536, columns=[schema.SENTENCE_EMBEDDING]):
                col = batch.column(0)
                m = m + Moments.of(np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), dim))
        total = m if total is None else total + m
    return total


def _units_moments(fs: pafs.FileSystem, root: str, unit_ids: list[str], records: dict[str, dict],
                   origin: dict[str, str]):
    """Merged moments of the units: each from the moments file its run wrote beside its record
    (``JobState.write_unit_moments``), or from its shards when there is none. None for no unit."""
    import concurrent.futures

    from elmo_dist.similarity import Moments

    def load(uid: str):
        job_dir = origin.get(uid)
        data = storage.read_bytes(fs, posixpath.join(root, job_dir, "moments", f"{uid}.npz")) if job_dir else None
        if data is not None:
            return Moments.from_bytes(data)
        logger.info("unit %s: no moments file; computing them from its shards", uid)
        return _shards_moments(fs, root, [f["path"] for f in records[uid]["files"]])

    total = None
    with concurrent.futures.ThreadPoolExecutor(_MOMENT_READERS) as pool:
        for start in range(0, len(unit_ids), _MOMENT_READERS):  # bounded memory
            for m in pool.map(load, unit_ids[start:start + _MOMENT_READERS]):
                if m is not None:
                    total = m if total is None else total + m
    return total


def _version_moments(fs: pafs.FileSystem, root: str, manifest: dict[str, Any]):
    """The stored moments of a published version; None when it has none (or they are unreadable)."""
    from elmo_dist.similarity import Moments

    entry = manifest.get("postprocessing")
    if not isinstance(entry, dict) or not entry.get("moments"):
        return None
    try:
        data = storage.read_bytes(fs, posixpath.join(root, entry["moments"]))
        return None if data is None else Moments.from_bytes(data)
    except Exception as e:  # a damaged file: recomputed from the shards instead
        logger.warning("version %s: moments %s unreadable (%s: %s); recomputing them", manifest.get("version"),
                       entry["moments"], type(e).__name__, e)
        return None


def version_postprocessing(output: str, fs: pafs.FileSystem, root: str, current: dict[str, Any] | None,
                           diff: Diff, full: bool, unit_ids: list[str], records: dict[str, dict],
                           origin: dict[str, str]) -> dict[str, Any] | None:
    """Fit the new version's post-processor and store it with its moments; the manifest's entry.

    The new version's vectors are those of the unchanged files (carried over) plus those of the
    units embedded for it, each counted once. Their moments: the previous version's stored
    moments minus those of the changed and deleted files' shards (still there: the previous version
    is current until this one is published), or, when the previous version has none or the
    dropped files are the larger part, summed over the unchanged files' shards; plus each new
    unit's moments (written by its run, or computed from its shards). A full re-embed sums the new
    units only. The files are content-addressed under ``_postprocessing/``, so a rerun after a
    crash writes the same names. None (no post-processing) for fewer than 2 vectors.
    """
    from elmo_dist.similarity import Postprocessor

    total = None
    if current is not None and not full:
        prev_inputs: dict[str, dict] = current["inputs"]
        dropped = diff.changed + diff.deleted

        def rows(uris: list[str]) -> int:
            return sum(int(prev_inputs[u].get("rows") or 0) for u in uris)

        def shards(uris: list[str]) -> list[str]:
            return [f for u in uris for f in prev_inputs[u].get("files", [])]

        prev = _version_moments(fs, root, current) if rows(dropped) <= rows(diff.unchanged) else None
        if prev is not None:
            gone = _shards_moments(fs, root, shards(dropped))
            total = prev - gone if gone is not None else prev
        else:
            total = _shards_moments(fs, root, shards(diff.unchanged))
    new = _units_moments(fs, root, unit_ids, records, origin)
    if new is not None:
        total = new if total is None else total + new
    if total is None or total.n < 2:
        logger.warning("%s: fewer than 2 sentence vectors in the new version: no post-processor fitted",
                       storage.redact(output))
        return None
    pp = Postprocessor.fit(total)
    logger.info("%s: post-processing %r fitted for the new version", storage.redact(output), pp)
    names = {"moments": f"{POSTPROCESSING_DIR}/moments-{total.fingerprint()}.npz",
             "postprocessor": f"{POSTPROCESSING_DIR}/postprocessor-{pp.fingerprint()}.npz"}
    storage.write_bytes(fs, posixpath.join(root, names["moments"]), total.to_bytes())
    storage.write_bytes(fs, posixpath.join(root, names["postprocessor"]), pp.to_bytes())
    return {"method": pp.method, "fingerprint": pp.fingerprint(), "n": int(total.n), **names}


# ---- the refresh ----------------------------------------------------------------------------

def refresh(cfg: JobConfig, model: str | None = None, keep_versions: int = 3, lease_seconds: float | None = None,
            owner: str | None = None, _before_publish: Callable[[dict[str, Any]], None] | None = None
            ) -> dict[str, Any]:
    """Bring the refresh output ``cfg.output`` up to date with the corpus ``cfg.inputs``.

    ``model`` overrides ``cfg.model`` (a convenience; the run uses one resolved path).

    Returns a summary: ``version`` (current after the run), ``new_version`` (False when nothing
    changed), ``added``/``changed``/``deleted`` (file URIs), ``unchanged`` (count),
    ``units_embedded`` (this run), ``units_reused`` (records of an interrupted run), ``rows_dropped``...

    ``_before_publish`` is for tests only: called with the new manifest after it is written and
    before the pointer flips (raise from it to simulate a crash there).

    Raises:
        LeaseHeld: another run on the same output is active.
        RefreshError / InputError / ConfigError: see the message.
    """
    if keep_versions < 1:
        raise ConfigError("keep_versions must be >= 1")
    if model is not None:
        cfg = cfg.model_copy(update={"model": resolve_model(model)})
    t0 = time.perf_counter()
    check_output_outside_inputs(cfg.inputs, cfg.output)
    store = store_for(cfg.output)
    lease = Lease(cfg.output, owner=owner, seconds=lease_seconds or cfg.run.lease_seconds, store=store)
    try:
        lease.acquire()
    except LeaseError:
        raise
    except Exception as e:  # permissions, missing bucket, unreachable endpoint
        raise PermissionError(f"{storage.redact(cfg.output)}: cannot take the lease: output not writable or "
                              f"unreachable ({type(e).__name__}: {e})") from None
    with lease:
        JobState(cfg.output, RUNS).check_writable()  # under the lease: no retention races the probe
        summary = _refresh_locked(cfg, keep_versions, lease, store, _before_publish)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _refresh_locked(cfg: JobConfig, keep: int, lease: Lease, store: Store,
                    before_publish: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    from elmo_dist.model.fingerprint import model_fingerprint
    from elmo_dist.pipeline import embed_units, output_metadata, plan, summarize, vectors_identity

    fs, root = filesystem(cfg.output)
    pointer, pointer_token = store.read(CURRENT)
    current: dict[str, Any] | None = None
    if pointer is None:
        if JobState(cfg.output).exists():
            raise RefreshError(f"{storage.redact(cfg.output)} holds an `elmo-dist embed` output ({JOB_DIR}/): "
                               "refresh into a new directory (its first run embeds everything)")
    else:
        if not pointer.get("manifest"):
            raise RefreshError(f"{storage.redact(cfg.output)}: {CURRENT} is unreadable")
        current, _ = store.read(pointer["manifest"])
        if not current:
            raise RefreshError(f"{storage.redact(cfg.output)}: {CURRENT} points at a missing manifest "
                               f"{pointer['manifest']}")

    files = list_inputs(cfg.inputs)
    model_fp, _ = model_fingerprint(cfg.model)
    identity = vectors_identity(cfg, model_fp)
    config_fp = cfg.fingerprint(identity)
    prev_inputs: dict[str, dict] = current["inputs"] if current else {}
    listing = {f.uri: f for f in files}
    diff = diff_inputs(prev_inputs, listing)
    if current is None:
        reason = "first version"
    elif current.get("config_fingerprint") != config_fp:
        reason = _why_full(current, cfg, model_fp)
    else:
        reason = "incremental"
    full = reason != "incremental"
    rows_dropped = sum(int(prev_inputs[u].get("rows", 0)) for u in diff.changed + diff.deleted)
    base = {"output": storage.redact(cfg.output), "previous_version": current["version"] if current else None,
            "config_fingerprint": config_fp, "model_fingerprint": model_fp,
            "added": diff.added, "changed": diff.changed, "deleted": diff.deleted, "unchanged": len(diff.unchanged),
            "rows_dropped": rows_dropped,
            "lease": {"owner": lease.owner, "took_over_from": (lease.taken_over or {}).get("owner")
                      if lease.taken_over is not None else None}}
    logger.info("%s: %d input file(s): %d added, %d changed, %d deleted, %d unchanged (%s)",
                storage.redact(cfg.output), len(files), len(diff.added), len(diff.changed), len(diff.deleted),
                len(diff.unchanged), reason)

    if not full and diff.empty:
        assert current is not None and pointer is not None
        logger.info("nothing changed since version %d: no embedding work, version %d stays current",
                    current["version"], current["version"])
        retention = _retention(fs, root, store, pointer["manifest"], keep, lease)
        return {**base, "version": current["version"], "new_version": False,
                "reason": f"nothing changed: version {current['version']} stays current", "run_id": None,
                "units_planned": 0, "units_embedded": 0, "units_reused": 0, "rows": int(current.get("rows", 0)),
                "rows_embedded": 0, "retention": retention, "stats": None,
                "postprocessor": (current.get("postprocessing") or {}).get("method")}

    to_embed = files if full else [listing[u] for u in diff.added + diff.changed]
    job = plan(cfg, to_embed, pack=False)  # one file per unit: a changed file drops exactly its shards
    ids = job.unit_ids
    run_id = run_id_for(config_fp, ids)
    origin: dict[str, str] = {}  # unit id -> the run's job dir holding its record and moments
    records = _completed(cfg.output, fs, root, config_fp, set(ids), origin)
    pending = [u for u in job.units if u.unit_id not in records]
    reused = len(job.units) - len(pending)
    logger.info("%d work unit(s) planned (run %s): %d already done by an interrupted run, %d to embed",
                len(job.units), run_id, reused, len(pending))
    run_stats: dict[str, Any] = {"new_units": 0}
    if pending:
        state = JobState(cfg.output, f"{RUNS}/{run_id}")
        state.begin(cfg, identity, ids)
        run_stats = embed_units(cfg, output_metadata(cfg, model_fp, job.dim, identity), pending, state,
                                subdir=f"{DATA}/{config_fp}")
        done = state.scan(ids, data_dir=f"{DATA}/{config_fp}").records
        records.update(done)
        origin.update({u: state.job_dir for u in done})
    missing = [u for u in ids if u not in records]
    if missing:
        raise RefreshError(f"{len(missing)} work unit(s) have no completion record after embedding "
                           f"(e.g. {missing[0]}); is --output on a filesystem all nodes share? Rerun to "
                           "complete them")

    embedded = {f.uri for f in to_embed}
    postprocessing = version_postprocessing(cfg.output, fs, root, current, diff, full, ids, records, origin)
    manifest = build_manifest(cfg, files, embedded, job.units, records, current, config_fp, model_fp, run_id,
                              _now_iso())
    manifest["postprocessing"] = postprocessing
    lease.check()
    version, name = _publish_manifest(store, fs, root, manifest, current["version"] if current else 0)
    manifest["version"] = version
    if before_publish is not None:
        before_publish(manifest)
    lease.check()
    new_pointer = {"version": version, "manifest": name, "published": _now_iso()}
    tok = (store.create(CURRENT, new_pointer) if pointer_token is None
           else store.replace(CURRENT, new_pointer, pointer_token))
    if tok is None:
        raise RefreshError(f"{storage.redact(cfg.output)}: {CURRENT} was changed by another writer during this "
                           f"run; version {version} ({name}) was not published")
    logger.info("published version %d (%s): %d files, %d rows, %d shards", version, name, len(manifest["inputs"]),
                manifest["rows"], len(manifest["files"]))
    retention = _retention(fs, root, store, name, keep, lease)
    stats = summarize([records[u] for u in ids], run_stats.get("new_wall", 0.0), **run_stats) if ids else None
    return {**base, "version": version, "new_version": True, "reason": reason, "run_id": run_id,
            "units_planned": len(ids), "units_embedded": run_stats.get("new_units", 0),
            "units_reused": reused, "rows": manifest["rows"],
            "rows_embedded": sum(listing[u].num_rows for u in embedded), "retention": retention, "stats": stats,
            "postprocessor": (postprocessing or {}).get("method")}


__all__ = ["refresh", "diff_inputs", "build_manifest", "version_postprocessing", "Diff", "RefreshError", "LeaseError",
           "run_id_for"]
