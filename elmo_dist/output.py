"""Finding and reading a job's output: the shards of the current version, local or s3://."""

from __future__ import annotations

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


def list_shards(directory: str) -> list[str]:
    """Paths (in the filesystem of ``filesystem(directory)``) of the current output shards, sorted.

    Raises:
        OutputError if the directory is missing or holds no shard.
    """
    fs, root = filesystem(directory)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise OutputError(f"{directory}: no such output directory")
    selector = pafs.FileSelector(root, recursive=True)
    shards = sorted(
        f.path for f in fs.get_file_info(selector)
        if f.type == pafs.FileType.File and f.path.endswith(".parquet")
        and f"/{JOB_DIR}/" not in f.path[len(root):] + "/"
        and not posixpath.basename(f.path).startswith((".", "_"))
    )
    if not shards:
        raise OutputError(f"{directory}: holds no embedding shards (has the job run?)")
    return shards
