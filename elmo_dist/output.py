"""Finding and reading a job's output: the shards of the current version, local or s3://."""

from __future__ import annotations

import json
import logging
import posixpath

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

JOB_DIR = "_job"  # job metadata: config, fingerprint, completion records, stats


class OutputError(FileNotFoundError):
    """An output directory is missing, empty, or not an elmo-dist output."""


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and path for a local path or URI (s3:// uses AWS_* settings)."""
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    return pafs.LocalFileSystem(), posixpath.abspath(uri) if not uri.startswith("/") else uri


CURRENT = "_current.json"  # refresh outputs: pointer to the published version's manifest


def read_json(fs: pafs.FileSystem, path: str):
    """A small JSON object from any pyarrow filesystem; None when it does not exist."""
    try:
        with fs.open_input_stream(path) as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def current_files(directory: str) -> list[str]:
    """Shard names (relative to ``directory``) of the output's current, complete version.

    A refresh output names its published version in ``_current.json``; an embed output's shards are
    those of its completion records (a shard left by a killed job without a record is not read).
    """
    fs, root = filesystem(directory)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise OutputError(f"{directory}: no such output directory")
    pointer = read_json(fs, posixpath.join(root, CURRENT))
    if pointer is not None:
        manifest = read_json(fs, posixpath.join(root, pointer["manifest"]))
        if manifest is None:
            raise OutputError(f"{directory}: {CURRENT} points at a missing manifest {pointer['manifest']}")
        return list(manifest["files"])
    units = posixpath.join(root, JOB_DIR, "units")
    files: list[str] = []
    for rec in fs.get_file_info(pafs.FileSelector(units, allow_not_found=True)):
        if rec.path.endswith(".json"):
            files.extend(read_json(fs, rec.path)["files"])
    if not files:
        raise OutputError(f"{directory}: holds no embedding shards (has the job run?)")
    return sorted(files)


def list_shards(directory: str) -> list[str]:
    """Paths (in the filesystem of ``filesystem(directory)``) of the current output shards, sorted.

    Raises:
        OutputError if the directory is missing or holds no shard.
    """
    _, root = filesystem(directory)
    return [posixpath.join(root, f) for f in current_files(directory)]


def read_embeddings(directory: str, columns: list[str] | None = None):
    """The current version's rows as a ``pyarrow.dataset.Dataset`` (``.to_table()`` for a Table).

    Works on ``embed`` and ``refresh`` outputs, local or s3://.
    """
    import pyarrow.dataset as ds

    fs, _ = filesystem(directory)
    return ds.dataset(list_shards(directory), filesystem=fs, format="parquet")
