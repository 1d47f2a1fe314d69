"""Job state beside the output: config + fingerprint, the unit plan, and per-unit completion records.

Layout under ``OUTPUT/_job/``:
  config.json   the resolved JobConfig, its fingerprint and the model's fingerprint
  plan.json     the work-unit ids of this job (written once, at the start)
  units/ID.json completion record of a unit: its shards and stats, written only after the shards
  stats.json    the merged summary of the last run

A unit counts as done only when its record exists, and its record is written only after its shards
are durable, so a killed job re-does at most the units that were in flight. A resume lists
``units/`` (one small object per unit): it never re-reads finished input, and its memory grows with
the number of units, not rows.
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

import pyarrow.fs as pafs

from elmo_dist.config import JobConfig
from elmo_dist.output import JOB_DIR, filesystem, read_json

logger = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """The output holds a job with another configuration, model or input."""


def _write_json(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = f"{path}.tmp"
        with fs.open_output_stream(tmp) as fh:
            fh.write(data)
        fs.move(tmp, path)
    else:
        with fs.open_output_stream(path) as fh:
            fh.write(data)


class JobState:
    def __init__(self, output: str, job_dir: str = JOB_DIR):
        self.output = output
        self.fs, self.root = filesystem(output)
        self.job_dir = job_dir
        self.dir = posixpath.join(self.root, job_dir)

    def check_writable(self) -> None:
        """Fail before any work when the output cannot be written."""
        probe = posixpath.join(self.dir, ".write-probe")
        try:
            _write_json(self.fs, probe, {"ok": True})
            self.fs.delete_file(probe)
        except Exception as e:
            raise PermissionError(f"{self.output}: output is not writable ({type(e).__name__}: {e})") from None

    def begin(self, config: JobConfig, model_fingerprint: str, unit_ids: list[str]) -> bool:
        """Record or check the job's identity. Returns True when resuming an earlier run.

        Raises:
            ResumeError when the output holds a job with another fingerprint or another input.
        """
        fp = config.fingerprint(model_fingerprint)
        cfg_path = posixpath.join(self.dir, "config.json")
        old = read_json(self.fs, cfg_path)
        if old is not None:
            if old["fingerprint"] != fp:
                changed = [k for k in ("text", "embedding") if old["config"].get(k) != config.model_dump(mode="json")[k]]
                if old.get("model_fingerprint") != model_fingerprint:
                    changed.insert(0, f"model ({old.get('model_fingerprint')} -> {model_fingerprint})")
                raise ResumeError(
                    f"{self.output} holds a job with another configuration (fingerprint {old['fingerprint']}, "
                    f"now {fp}; changed: {', '.join(changed) or 'settings'}). Use a new --output, "
                    "or `elmo-dist refresh` to re-embed into a new version.")
            plan = read_json(self.fs, posixpath.join(self.dir, "plan.json")) or {}
            if sorted(plan.get("units", [])) != sorted(unit_ids):
                raise ResumeError(
                    f"{self.output}: the input changed since this job started ({len(plan.get('units', []))} "
                    f"units planned, {len(unit_ids)} now, not the same). Use a new --output, or "
                    "`elmo-dist refresh` for incremental updates.")
            return True
        _write_json(self.fs, posixpath.join(self.dir, "plan.json"), {"units": unit_ids})
        _write_json(self.fs, cfg_path, {"config": config.model_dump(mode="json"), "fingerprint": fp,
                                        "model_fingerprint": model_fingerprint})
        return False

    def done_units(self) -> set[str]:
        sel = pafs.FileSelector(posixpath.join(self.dir, "units"), allow_not_found=True)
        return {posixpath.basename(i.path)[:-5] for i in self.fs.get_file_info(sel)
                if i.path.endswith(".json")}

    def record(self, unit_id: str, files: list[str], stats: dict[str, Any]) -> None:
        _write_json(self.fs, posixpath.join(self.dir, "units", f"{unit_id}.json"),
                    {"unit": unit_id, "files": files, "stats": stats})

    def records(self) -> list[dict[str, Any]]:
        return [r for u in sorted(self.done_units())
                if (r := read_json(self.fs, posixpath.join(self.dir, "units", f"{u}.json")))]

    def write_stats(self, stats: dict[str, Any]) -> None:
        _write_json(self.fs, posixpath.join(self.dir, "stats.json"), stats)
