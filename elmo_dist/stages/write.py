"""Write: one unit's embedded sentences -> Parquet shards, each written whole or not at all.

Local files are written under a temporary name and renamed; on object stores a PUT (or a completed
multipart upload) is atomic already. Shards are cut to about ``target_bytes`` so that neither a
storm of tiny files nor a 10 GB file comes out. Model fingerprint and settings go in each file's
metadata.
"""

from __future__ import annotations

import logging
import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from elmo_dist.output import filesystem

logger = logging.getLogger(__name__)

TARGET_BYTES = 256 << 20


def shard_names(unit_id: str, n_rows: int, row_bytes: float, target_bytes: int = TARGET_BYTES) -> list[tuple[str, int, int]]:
    """(file name, first row, end row) for each shard of a unit."""
    per_file = max(1, int(target_bytes // max(row_bytes, 1.0)))
    starts = list(range(0, n_rows, per_file)) or [0]
    return [(f"part-{unit_id}-{k:04d}.parquet", s, min(n_rows, s + per_file)) for k, s in enumerate(starts)]


def write_atomic(fs: pafs.FileSystem, path: str, table: pa.Table, row_group_rows: int = 8192) -> None:
    local = isinstance(fs, pafs.LocalFileSystem)
    target = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}") if local else path
    if local:
        fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(target) as sink:
        pq.write_table(table, sink, compression="zstd", row_group_size=row_group_rows)
    if local:
        fs.move(target, path)


def write_unit(table: pa.Table, output: str, unit_id: str, schema: pa.Schema,
               target_bytes: int = TARGET_BYTES, subdir: str = "") -> list[str]:
    """Write ``table`` (cast to ``schema``) as shards under ``output``; returns their relative names."""
    fs, root = filesystem(output)
    table = table.select(schema.names).cast(schema)
    row_bytes = table.nbytes / max(table.num_rows, 1)
    names = []
    for name, start, end in shard_names(unit_id, table.num_rows, row_bytes, target_bytes):
        rel = posixpath.join(subdir, name) if subdir else name
        write_atomic(fs, posixpath.join(root, rel), table.slice(start, end - start))
        names.append(rel)
    return names
