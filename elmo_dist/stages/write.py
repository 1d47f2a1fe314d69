"""Write: one unit's embedded sentences -> Parquet shards, each written whole or not at all.

Every shard goes through ``storage.write_parquet``: it appears under its final name only complete
(local: temporary file, fsync, rename; S3: uploaded only once fully built). Shards are cut to about
``target_bytes`` so that neither a storm of tiny files nor a 10 GB file comes out. Model fingerprint and settings go in each file's
metadata.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import pyarrow as pa

from elmo_dist import storage

logger = logging.getLogger(__name__)

TARGET_BYTES = 256 << 20
ROW_GROUP_ROWS = 8192


def shard_names(unit_id: str, n_rows: int, row_bytes: float,
                target_bytes: int = TARGET_BYTES) -> list[tuple[str, int, int]]:
    """(file name, first row, end row) for each shard of a unit."""
    per_file = max(1, int(target_bytes // max(row_bytes, 1.0)))
    starts = list(range(0, n_rows, per_file)) or [0]
    return [(f"part-{unit_id}-{k:04d}.parquet", s, min(n_rows, s + per_file)) for k, s in enumerate(starts)]


def write_unit(table: pa.Table, output: str, unit_id: str, schema: pa.Schema,
               target_bytes: int = TARGET_BYTES, subdir: str = "") -> list[dict[str, Any]]:
    """Write ``table`` (cast to ``schema``) as shards under ``output``.

    Returns ``{path, size, rows}`` of each shard (path relative to ``output``), for the unit's
    completion record.
    """
    fs, root = storage.filesystem(output)
    table = table.select(schema.names).cast(schema)
    row_bytes = table.nbytes / max(table.num_rows, 1)
    out = []
    for name, start, end in shard_names(unit_id, table.num_rows, row_bytes, target_bytes):
        rel = posixpath.join(subdir, name) if subdir else name
        size = storage.write_parquet(fs, posixpath.join(root, rel), table.slice(start, end - start),
                                     compression="zstd", row_group_size=ROW_GROUP_ROWS)
        out.append({"path": rel, "size": size, "rows": end - start})
    return out
