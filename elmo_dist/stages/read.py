"""Read: list Parquet inputs (local or s3://), check their schema before any work, cut them into
work units (row-group ranges), and read one unit's rows.

A work unit is the unit of resumption: its id is derived from the file's identity (path, size,
modification time or ETag) and its row groups, so a changed file gets new unit ids. A unit also
carries its file's size and version, and reading it checks them: a file rewritten after planning
stops the job (``InputChangedError``) instead of being embedded under the old unit.

Listing skips files and directories whose name starts with ``_`` or ``.`` (``_SUCCESS``,
``_temporary/``, ``.spark-staging/``, ``_job/``): writers keep unfinished data there.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import posixpath
import re
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from elmo_dist.errors import ElmoDistError
from elmo_dist import schema as S
from elmo_dist import storage
from elmo_dist.config import TextSettings

logger = logging.getLogger(__name__)

FOOTER_READERS = 16  # footers read in parallel when listing (S3 latency)
BYTES_PER_UNIT = 512 << 20  # uncompressed input bytes per work unit, at most
OUTPUT_BYTES_PER_UNIT = 1 << 30  # a unit's estimated output (its shard, the actor's buffers), at most
INPUT_BYTES_PER_TOKEN = 4.0  # English prose: 4.9 on the bundled sample; the low end, so estimates run high
MIN_BYTES_PER_UNIT = 256 << 10  # however large each token's output, a unit reads at least this much


def bytes_per_unit_for(output_bytes_per_token: float) -> int:
    """Uncompressed input bytes per unit that keep the unit's estimated output within
    ``OUTPUT_BYTES_PER_UNIT`` (all layers of per-token vectors of a 1024-dim model are ~12 kB per
    token: a unit of 20,000 web-page rows would otherwise write hundreds of GB)."""
    if output_bytes_per_token <= 0:
        return BYTES_PER_UNIT
    cap = int(OUTPUT_BYTES_PER_UNIT * INPUT_BYTES_PER_TOKEN / output_bytes_per_token)
    return max(MIN_BYTES_PER_UNIT, min(BYTES_PER_UNIT, cap))


class InputError(ElmoDistError, ValueError):
    """Input files are missing, unreachable, or do not have the columns the job needs."""


class InputChangedError(InputError):
    """An input file changed between planning and reading."""


@dataclass(frozen=True)
class InputFile:
    uri: str  # as the user sees it: /abs/path.parquet or s3://bucket/key.parquet
    path: str  # path inside the filesystem
    size: int
    version: str  # modification time (ns) or ETag-like token
    row_groups: tuple[int, ...]  # rows per row group
    metadata: pq.FileMetaData | None = field(default=None, compare=False, repr=False)  # the footer

    @property
    def group_bytes(self) -> tuple[int, ...]:
        """Uncompressed bytes of each row group (0 where the footer is not at hand)."""
        if self.metadata is None:
            return tuple(0 for _ in self.row_groups)
        return tuple(self.metadata.row_group(i).total_byte_size for i in range(len(self.row_groups)))

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class Part:
    """A whole small file packed into a unit after the unit's first file (see ``plan_units``)."""

    uri: str
    num_rows: int
    file_size: int
    file_version: str


@dataclass(frozen=True)
class Unit:
    unit_id: str
    uri: str
    row_groups: tuple[int, ...]  # indices of the row groups read for this unit
    first_row: int  # row number of the unit's first row within the file
    num_rows: int
    offset: int = 0  # rows to skip within those row groups (a row group bigger than a unit is sliced)
    file_size: int = -1  # the file's size and version when planned (-1 / "": not checked)
    file_version: str = ""
    more: tuple[Part, ...] = ()  # further whole small files read after this one (packed units)

    @property
    def total_rows(self) -> int:
        return self.num_rows + sum(p.num_rows for p in self.more)

    @property
    def uris(self) -> list[str]:
        return [self.uri] + [p.uri for p in self.more]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["row_groups"] = list(self.row_groups)
        d["more"] = [asdict(p) for p in self.more]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        return cls(d["unit_id"], d["uri"], tuple(int(x) for x in d["row_groups"]),
                   int(d["first_row"]), int(d["num_rows"]), int(d.get("offset", 0)),
                   int(d.get("file_size", -1)), str(d.get("file_version", "")),
                   tuple(Part(p["uri"], int(p["num_rows"]), int(p["file_size"]), str(p["file_version"]))
                         for p in d.get("more") or ()))


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return storage.filesystem(uri)
    except storage.StorageError as e:
        raise InputError(str(e)) from None


def file_version(info: pafs.FileInfo) -> str:
    return str(info.mtime_ns) if info.mtime_ns is not None else ""


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
    return storage.to_uri(pattern, path)


def _info(fs: pafs.FileSystem, path: str, what: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except Exception as e:  # unreachable endpoint, missing bucket, credentials
        raise InputError(f"{storage.redact(what)}: cannot reach input ({type(e).__name__}: {e})") from None


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
    paths = sorted(found)
    with concurrent.futures.ThreadPoolExecutor(min(FOOTER_READERS, max(1, len(paths)))) as pool:
        footers = list(pool.map(lambda p: _footer(*found[p]), paths))
    out = []
    for path, md in zip(paths, footers):
        fs, info, uri = found[path]
        if isinstance(md, Exception):
            raise InputError(f"{storage.redact(uri)}: not a readable Parquet file ({md})") from None
        out.append(InputFile(uri, path, int(info.size or 0), file_version(info),
                             tuple(md.row_group(i).num_rows for i in range(md.num_row_groups)), md))
    return out


def _footer(fs: pafs.FileSystem, info: pafs.FileInfo, uri: str) -> pq.FileMetaData | Exception:
    """A file's footer, read once."""
    try:
        with fs.open_input_file(info.path) as fh:
            return pq.ParquetFile(fh).metadata
    except Exception as e:  # reported in listing order by the caller
        return e


def _hidden(path: str, base: str) -> bool:
    """Whether a file or a directory between ``base`` and it starts with ``_`` or ``.``."""
    rel = path[len(base):].lstrip("/") if path.startswith(base) else posixpath.basename(path)
    return any(part.startswith((".", "_")) for part in rel.split("/") if part)


def _list_dir(fs: pafs.FileSystem, path: str, what: str) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except Exception as e:
        raise InputError(f"{storage.redact(what)}: cannot list input ({type(e).__name__}: {e})") from None
    return sorted(
        (i for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
         and not _hidden(i.path, path.rstrip("/"))),
        key=lambda i: i.path,
    )


def check_output_outside_inputs(patterns: list[str], output: str) -> None:
    """Refuse an output that lies inside an input location (its shards would become input on the
    next run), or an input inside the output; compared on resolved paths."""
    for pattern in patterns:
        base = pattern
        if any(c in pattern for c in "*?["):
            base = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
            base = base if base.endswith("/") else posixpath.dirname(base)
        if storage.is_within(output, base.rstrip("/") or "/") or storage.is_within(pattern if base == pattern
                                                                                    else base, output):
            raise InputError(f"the output {storage.redact(output)} and the input {storage.redact(pattern)} "
                             "overlap: give an output outside every input directory (its shards would be "
                             "read as input by the next run)")


def input_columns(text: TextSettings) -> list[str]:
    cols = [text.text_column or text.tokens_column]
    if text.id_column:
        cols.append(text.id_column)
    return cols


def _id_type_ok(t: pa.DataType) -> bool:
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t))


def _null_ids(f: InputFile, fs: pafs.FileSystem, path: str, column: str) -> int:
    """Null values in ``column``, from the footer's statistics (the column is read only where a
    row group has no null count)."""
    md = f.metadata if f.metadata is not None else pq.ParquetFile(path, filesystem=fs).metadata
    idx = [i for i in range(md.num_columns) if md.schema.column(i).path == column]
    if not idx:
        return 0
    nulls, unknown = 0, []
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(idx[0]).statistics
        if st is not None and st.has_null_count:
            nulls += st.null_count
        else:
            unknown.append(g)
    if unknown:
        col = pq.ParquetFile(path, filesystem=fs).read_row_groups(unknown, columns=[column]).column(0)
        nulls += col.null_count
    return nulls


def check_schema(files: list[InputFile], text: TextSettings) -> None:
    """Fail before any work if a file lacks a column, has the wrong type, or has null ids."""
    for f in files:
        fs, path = resolve_fs(f.uri)
        sch = f.metadata.schema.to_arrow_schema() if f.metadata is not None else pq.read_schema(path, filesystem=fs)
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
            if not _id_type_ok(t):
                raise InputError(f"{f.uri}: id column '{text.id_column}' is {t}, expected string, integer "
                                 "or binary (binary and UUID ids are written as hex strings)")
            nulls = _null_ids(f, fs, path, text.id_column)
            if nulls:
                raise InputError(f"{f.uri}: id column '{text.id_column}' has {nulls} null value(s); every "
                                 "row needs an id (or drop --id-column to derive ids from file and row)")


def plan_units(files: list[InputFile], rows_per_unit: int, bytes_per_unit: int = BYTES_PER_UNIT,
               pack: bool = True) -> list[Unit]:
    """Cut files into units of about ``rows_per_unit`` rows and at most ``bytes_per_unit``
    uncompressed input bytes: whole row groups where they are small enough, slices of one row group
    where a row group is bigger than a unit. With ``pack``, consecutive small files (in listing
    order) are packed into one unit while the sum stays within both limits, so 3,000 tiny files
    give a few units, shards and records, not 3,000; a file alone keeps the unit id it always had."""
    units: list[Unit] = []
    group: list[InputFile] = []
    rows = size = 0

    def flush() -> None:
        if len(group) == 1:
            units.extend(_file_units(group[0], rows_per_unit, bytes_per_unit))
        elif group:
            units.append(_packed_unit(group))
        group.clear()

    for f in files:
        f_bytes = sum(f.group_bytes)
        small = pack and f.num_rows <= rows_per_unit and f_bytes <= bytes_per_unit
        if not small or rows + f.num_rows > rows_per_unit or size + f_bytes > bytes_per_unit:
            flush()
            rows = size = 0
        if not small:
            units.extend(_file_units(f, rows_per_unit, bytes_per_unit))
            continue
        group.append(f)
        rows, size = rows + f.num_rows, size + f_bytes
    flush()
    return units


def _file_units(f: InputFile, rows_per_unit: int, bytes_per_unit: int) -> list[Unit]:
    units = []
    first, groups, rows, size = 0, [], 0, 0
    for g, (n, b) in enumerate(zip(f.row_groups, f.group_bytes)):
        if groups and (rows + n > rows_per_unit or size + b > bytes_per_unit):
            units.append(_unit(f, groups, first, rows))
            first, groups, rows, size = first + rows, [], 0, 0
        if n > rows_per_unit:  # slice a big row group
            for off in range(0, n, rows_per_unit):
                units.append(_unit(f, [g], first + off, min(rows_per_unit, n - off), off))
            first += n
            continue
        groups.append(g)
        rows, size = rows + n, size + b
    if groups and rows:
        units.append(_unit(f, groups, first, rows))
    return units


def _packed_unit(files: list[InputFile]) -> Unit:
    key = "||".join(f"{f.uri}|{f.size}|{f.version}|all" for f in files)
    uid = hashlib.sha256(key.encode()).hexdigest()[:20]
    head, rest = files[0], files[1:]
    return Unit(uid, head.uri, tuple(range(len(head.row_groups))), 0, head.num_rows, 0, head.size, head.version,
                tuple(Part(f.uri, f.num_rows, f.size, f.version) for f in rest))


def _unit(f: InputFile, groups: list[int], first: int, rows: int, offset: int = 0) -> Unit:
    key = f"{f.uri}|{f.size}|{f.version}|{groups[0]}-{groups[-1]}|{offset}+{rows}"
    uid = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Unit(uid, f.uri, tuple(groups), first, rows, offset, f.size, f.version)


def read_unit(unit: Unit, text: TextSettings) -> pa.Table:
    """The unit's rows: the input columns plus ``source`` and ``_row`` (row number in its file).
    Each file's size and version are checked after reading (``check_unchanged``)."""
    fs, path = resolve_fs(unit.uri)
    cols = input_columns(text)
    pf = pq.ParquetFile(path, filesystem=fs)
    if unit.offset or unit.num_rows < sum(pf.metadata.row_group(g).num_rows for g in unit.row_groups):
        table = _read_slice(pf, unit, cols)
    else:
        table = pf.read_row_groups(list(unit.row_groups), columns=cols)
    check_unchanged(unit, fs, path)
    tables = [_with_origin(table, unit.uri, unit.first_row)]
    for part in unit.more:
        pfs, ppath = resolve_fs(part.uri)
        t = pq.read_table(ppath, filesystem=pfs, columns=cols)
        check_unchanged(Unit("", part.uri, (), 0, part.num_rows, 0, part.file_size, part.file_version), pfs, ppath)
        tables.append(_with_origin(t, part.uri, 0))
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def _read_slice(pf: pq.ParquetFile, unit: Unit, cols: list[str]) -> pa.Table:
    """Rows [offset, offset + num_rows) of one big row group, decoding batch by batch and keeping
    only the batches that overlap the slice (not the whole row group at once)."""
    out, pos, end = [], 0, unit.offset + unit.num_rows
    for batch in pf.iter_batches(batch_size=8192, row_groups=list(unit.row_groups), columns=cols):
        lo, hi = pos, pos + batch.num_rows
        pos = hi
        if hi <= unit.offset:
            continue
        out.append(batch.slice(max(0, unit.offset - lo), min(hi, end) - max(lo, unit.offset)))
        if hi >= end:
            break
    return pa.Table.from_batches(out, schema=pf.schema_arrow.empty_table().select(cols).schema)


def _with_origin(table: pa.Table, uri: str, first_row: int) -> pa.Table:
    n = table.num_rows
    table = table.append_column(S.SOURCE, pa.array([uri] * n, pa.string()))
    return table.append_column(S.ROW, pa.array(range(first_row, first_row + n), pa.int64()))


def check_unchanged(unit: Unit, fs: pafs.FileSystem, path: str) -> None:
    """Raise InputChangedError when the unit's file no longer has the size and version it was
    planned with (checked after reading, so a rewrite before or during the read is caught)."""
    if unit.file_size < 0:
        return
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise InputChangedError(f"{storage.redact(unit.uri)}: input file disappeared during the run; rerun the job")
    size, version = int(info.size or 0), file_version(info)
    if size != unit.file_size or (unit.file_version and version != unit.file_version):
        raise InputChangedError(
            f"{storage.redact(unit.uri)}: input file changed during the run (size {unit.file_size} -> {size}, "
            f"version {unit.file_version} -> {version}); the job stopped so that no unit mixes versions. "
            "Rerun it when the input is stable (or use `elmo-dist refresh` for changing corpora)")
