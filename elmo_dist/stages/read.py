"""Read: list Parquet inputs (local or s3://), check their schema before any work, cut them into
work units (row-group ranges), and read one unit's rows.

A work unit is the unit of resumption: its id is derived from the file's identity (path, size,
modification time or ETag) and its row groups, so a changed file gets new unit ids.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from elmo_dist import schema as S
from elmo_dist.config import TextSettings

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Input files are missing, unreachable, or do not have the columns the job needs."""


@dataclass(frozen=True)
class InputFile:
    uri: str  # as the user sees it: /abs/path.parquet or s3://bucket/key.parquet
    path: str  # path inside the filesystem
    size: int
    version: str  # modification time (ns) or ETag-like token
    row_groups: tuple[int, ...]  # rows per row group

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class Unit:
    unit_id: str
    uri: str
    row_groups: tuple[int, ...]  # indices of the row groups read for this unit
    first_row: int  # row number of the unit's first row within the file
    num_rows: int
    offset: int = 0  # rows to skip within those row groups (a row group bigger than a unit is sliced)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["row_groups"] = list(self.row_groups)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        return cls(d["unit_id"], d["uri"], tuple(int(x) for x in d["row_groups"]),
                   int(d["first_row"]), int(d["num_rows"]), int(d.get("offset", 0)))


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as e:
            raise InputError(f"{uri}: cannot open filesystem ({e})") from None
    return pafs.LocalFileSystem(), posixpath.abspath(uri)


def _glob_regex(pattern: str) -> re.Pattern:
    """``*`` and ``?`` stay within one path segment; ``**`` crosses segments."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _to_uri(pattern: str, path: str) -> str:
    if "://" in pattern:
        return f"{pattern.split('://', 1)[0]}://{path}"
    return path


def _info(fs: pafs.FileSystem, path: str, what: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except Exception as e:  # unreachable endpoint, missing bucket, credentials
        raise InputError(f"{what}: cannot reach input ({type(e).__name__}: {e})") from None


def list_inputs(patterns: list[str]) -> list[InputFile]:
    """Expand files, directories (recursive *.parquet) and globs; read each file's footer."""
    found: dict[str, tuple[pafs.FileSystem, pafs.FileInfo, str]] = {}
    for pattern in patterns:
        fs, path = resolve_fs(pattern)
        if any(c in path for c in "*?["):
            base = path.split("*")[0].split("?")[0].split("[")[0]
            base = base if base.endswith("/") else posixpath.dirname(base)
            infos = _list_dir(fs, base.rstrip("/") or "/", pattern)
            rx = _glob_regex(path)
            infos = [i for i in infos if rx.fullmatch(i.path)]
        else:
            info = _info(fs, path, pattern)
            if info.type == pafs.FileType.NotFound:
                raise InputError(f"{pattern}: no such file or directory")
            infos = _list_dir(fs, path, pattern) if info.type == pafs.FileType.Directory else [info]
        if not infos:
            raise InputError(f"{pattern}: matches no Parquet file")
        for i in infos:
            found.setdefault(i.path, (fs, i, _to_uri(pattern, i.path)))
    out = []
    for path in sorted(found):
        fs, info, uri = found[path]
        try:
            md = pq.ParquetFile(path, filesystem=fs).metadata
        except Exception as e:
            raise InputError(f"{uri}: not a readable Parquet file ({e})") from None
        version = str(info.mtime_ns) if info.mtime_ns is not None else ""
        out.append(InputFile(uri, path, int(info.size or 0), version,
                             tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))))
    return out


def _list_dir(fs: pafs.FileSystem, path: str, what: str) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except Exception as e:
        raise InputError(f"{what}: cannot list input ({type(e).__name__}: {e})") from None
    return sorted(
        (i for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
         and not posixpath.basename(i.path).startswith((".", "_"))),
        key=lambda i: i.path,
    )


def input_columns(text: TextSettings) -> list[str]:
    cols = [text.text_column or text.tokens_column]
    if text.id_column:
        cols.append(text.id_column)
    return cols


def check_schema(files: list[InputFile], text: TextSettings) -> None:
    """Fail before any work if a file lacks a column or has the wrong type."""
    for f in files:
        fs, path = resolve_fs(f.uri)
        sch = pq.read_schema(path, filesystem=fs)
        names = set(sch.names)
        for col in input_columns(text):
            if col not in names:
                raise InputError(
                    f"{f.uri}: missing column '{col}' (columns: {', '.join(sch.names)})")
        if text.text_column:
            t = sch.field(text.text_column).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                    or pa.types.is_large_binary(t)):
                raise InputError(f"{f.uri}: column '{text.text_column}' is {t}, expected string text")
        else:
            t = sch.field(text.tokens_column).type
            ok = pa.types.is_list(t) or pa.types.is_large_list(t)
            inner = t.value_type if ok else None
            if ok and (pa.types.is_list(inner) or pa.types.is_large_list(inner)):
                inner = inner.value_type
            if not ok or not (pa.types.is_string(inner) or pa.types.is_large_string(inner)):
                raise InputError(f"{f.uri}: column '{text.tokens_column}' is {t}, expected "
                                 "list<string> (one sentence) or list<list<string>> (sentences)")
        if text.id_column:
            t = sch.field(text.id_column).type
            if pa.types.is_nested(t) or pa.types.is_floating(t):
                raise InputError(f"{f.uri}: id column '{text.id_column}' is {t}, expected string or integer")


def plan_units(files: list[InputFile], rows_per_unit: int) -> list[Unit]:
    """Cut files into units of about ``rows_per_unit`` rows: whole row groups where they are small
    enough, slices of one row group where a row group is bigger than a unit."""
    units = []
    for f in files:
        first, groups, rows = 0, [], 0
        for g, n in enumerate(f.row_groups):
            if groups and rows + n > rows_per_unit:
                units.append(_unit(f, groups, first, rows))
                first, groups, rows = first + rows, [], 0
            if n > rows_per_unit:  # slice a big row group
                for off in range(0, n, rows_per_unit):
                    units.append(_unit(f, [g], first + off, min(rows_per_unit, n - off), off))
                first += n
                continue
            groups.append(g)
            rows += n
        if groups and rows:
            units.append(_unit(f, groups, first, rows))
    return units


def _unit(f: InputFile, groups: list[int], first: int, rows: int, offset: int = 0) -> Unit:
    key = f"{f.uri}|{f.size}|{f.version}|{groups[0]}-{groups[-1]}|{offset}+{rows}"
    uid = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Unit(uid, f.uri, tuple(groups), first, rows, offset)


def read_unit(unit: Unit, text: TextSettings) -> pa.Table:
    """The unit's rows: the input columns plus ``source`` and ``_row`` (row number in the file)."""
    fs, path = resolve_fs(unit.uri)
    table = pq.ParquetFile(path, filesystem=fs).read_row_groups(list(unit.row_groups),
                                                                columns=input_columns(text))
    table = table.slice(unit.offset, unit.num_rows)
    n = table.num_rows
    table = table.append_column(S.SOURCE, pa.array([unit.uri] * n, pa.string()))
    return table.append_column(S.ROW, pa.array(range(unit.first_row, unit.first_row + n), pa.int64()))
