"""Storage: the one place that turns a URI into a filesystem and writes files atomically.

Reading and listing go through pyarrow's filesystems (local and ``s3://``, one interface for both).
Every file elmo-dist writes goes through :func:`write_bytes` / :func:`write_json` /
:func:`write_parquet` / :func:`atomic_local_path`, which give one guarantee: **a file appears under
its final name only complete**.

* Local paths: the bytes go to a temporary file beside the target (``.NAME.tmp-<32 hex>``: hidden
  from glob readers, which skip dot-files and do not match ``*.parquet``), which is flushed and
  ``fsync``-ed, renamed over the target (atomic on POSIX), and the directory is ``fsync``-ed so the
  rename survives a power loss. A crashed writer's temporaries are removed by
  :func:`remove_temporaries`, which the job calls while it holds the output's lease.
* ``s3://``: the object is built in memory and uploaded only when it is complete, with a single
  ``PutObject`` up to :data:`SINGLE_PUT_BYTES`, or a multipart upload that is aborted on any error
  (s3fs). pyarrow's own S3 output stream is not used for writing: it uploads even a small object as
  a multipart upload and completes that upload when the writing code raised (apache/arrow#40502),
  so a truncated object could appear under its final name.

URIs with credentials in them (``s3://KEY:SECRET@bucket/...``, ``?secret_key=...``) are refused:
they would end up in configs, manifests, logs and shard metadata. Credentials come from the usual
AWS chain (environment, profile, instance role).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import uuid
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from elmo_dist.errors import ElmoDistError

logger = logging.getLogger(__name__)

SINGLE_PUT_BYTES = 512 << 20  # objects up to this size are uploaded with one PutObject
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")
_SECRET_QUERY_KEYS = {"access_key", "secret_key", "session_token", "aws_access_key_id",
                      "aws_secret_access_key", "aws_session_token"}


class StorageError(ElmoDistError, ValueError):
    """A URI cannot be used (credentials in it, unsupported scheme) or a stored file is unreadable."""


class CorruptFileError(StorageError):
    """A small control file (JSON) exists but cannot be parsed: torn or overwritten."""


# ---- URIs -------------------------------------------------------------------------------------

def redact(uri: str) -> str:
    """``uri`` with any user info and secret query values replaced by ``***`` (safe to print)."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        q = parse_qs(query, keep_blank_values=True)
        query = "&".join(f"{k}={'***' if k.lower() in _SECRET_QUERY_KEYS else v[0]}" for k, v in q.items())
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{out}?{query}" if query else out


def check_uri(uri: str) -> str:
    """Refuse URIs that carry credentials; returns ``uri`` unchanged otherwise."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    secret_keys = {k.lower() for k in parse_qs(parts.query, keep_blank_values=True)} & _SECRET_QUERY_KEYS
    if "@" in parts.netloc or secret_keys:
        raise StorageError(
            f"{redact(uri)}: credentials in a URI are refused (they would be written into configs, "
            "manifests and logs); give them the usual AWS way: AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the node's instance role) in the environment")
    if parts.scheme not in ("s3", "file"):
        raise StorageError(f"{redact(uri)}: unsupported scheme {parts.scheme!r} (local paths and s3:// only)")
    return uri


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem and path inside it for a local path or an ``s3://`` URI.

    S3 settings (endpoint, region, credentials) come from the standard AWS environment and
    configuration files, or from the URI's query (``?endpoint_override=...&region=...``).
    """
    check_uri(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as e:
            raise StorageError(f"{redact(uri)}: cannot open filesystem ({type(e).__name__}: {e})") from None
    return pafs.LocalFileSystem(), posixpath.abspath(os.path.expanduser(uri))


def to_uri(like: str, path: str) -> str:
    """The URI of ``path`` (a path inside the filesystem of the URI ``like``)."""
    if "://" in like and not like.startswith("file://"):
        return f"{like.split('://', 1)[0]}://{path}"
    return path


def resolved(uri: str) -> str:
    """A canonical form for comparing locations: real local paths, ``s3://bucket/key`` otherwise."""
    check_uri(uri)
    if "://" in uri and not uri.startswith("file://"):
        parts = urlsplit(uri)
        return f"{parts.scheme}://{parts.netloc}{posixpath.normpath(parts.path or '/')}".rstrip("/")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.realpath(os.path.expanduser(path))


def is_within(path: str, parent: str) -> bool:
    """Whether the resolved location ``path`` is ``parent`` or lies under it."""
    p, q = resolved(path), resolved(parent)
    return p == q or p.startswith(q.rstrip("/") + "/")


# ---- S3 settings for the workers ------------------------------------------------------------

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
          "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED",
          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


class S3Settings:
    """The driver's S3 settings, carried to the workers of a cluster whose nodes were started
    without them (Ray workers do not inherit the driver's environment).

    It travels as an actor constructor argument (Ray's object store: not in the dashboard, the job's
    runtime_env or any file of ours), prints its keys only, and a worker applies it without
    overriding what its own node set (``apply``): node-level credentials (instance roles, IRSA, a
    profile on the node) win, and are the right choice on real clusters.
    """

    def __init__(self, values: dict[str, str]):
        self._values = {k: v for k, v in values.items() if k in S3_ENV and v}

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> "S3Settings":
        return cls({k: environ[k] for k in S3_ENV if environ.get(k)})

    def __repr__(self) -> str:
        shown = [k if k not in _SECRET_ENV else f"{k}=***" for k in sorted(self._values)]
        return f"S3Settings({', '.join(shown)})"

    def __bool__(self) -> bool:
        return bool(self._values)

    def apply(self, environ=None) -> list[str]:
        """Set the settings this process lacks; returns the names set (never the values)."""
        environ = os.environ if environ is None else environ
        added = [k for k in self._values if not environ.get(k)]
        for k in added:
            environ[k] = self._values[k]
        return added


# ---- reading ----------------------------------------------------------------------------------

def read_bytes(fs: pafs.FileSystem, path: str) -> bytes | None:
    """A file's bytes; None when it does not exist."""
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def read_json(fs: pafs.FileSystem, path: str, *, strict: bool = False) -> Any:
    """A small JSON file; None when it does not exist.

    A file that exists but does not parse (torn by a crash of a writer that did not use this
    module, truncated by hand) raises :class:`CorruptFileError` with ``strict``, else gives None
    with a warning.
    """
    data = read_bytes(fs, path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        msg = f"{path}: unreadable JSON ({len(data)} bytes: {e})"
        if strict:
            raise CorruptFileError(msg) from None
        logger.warning("%s", msg)
        return None


def list_files(fs: pafs.FileSystem, directory: str, recursive: bool = False) -> dict[str, int]:
    """{path: size} of the files under ``directory`` (one listing; empty when it does not exist)."""
    sel = pafs.FileSelector(directory, recursive=recursive, allow_not_found=True)
    return {i.path: int(i.size or 0) for i in fs.get_file_info(sel) if i.type == pafs.FileType.File}


# ---- atomic writes ----------------------------------------------------------------------------

def _tmp_name(path: str) -> str:
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex}")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp_local(path: str, data: bytes) -> str:
    """Write ``data`` to a new fsynced temporary file beside ``path``; returns its name. For
    writers that publish it themselves (an exclusive ``link`` or a rename under a lock)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        _fsync_file(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def create_exclusive_local(path: str, data: bytes) -> bool:
    """Create ``path`` with ``data`` only if it does not exist (atomically: a fully written, fsynced
    temporary is hard-linked to the name); False when it existed."""
    tmp = write_temp_local(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links on this filesystem: exclusive create, then the bytes
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(os.path.dirname(path) or ".")
    return True


@contextlib.contextmanager
def atomic_local_path(path: str) -> Iterator[str]:
    """A temporary path to write ``path``'s content to; on success it is fsynced and renamed over
    ``path`` (then the directory is fsynced); on error it is removed and ``path`` is untouched."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path) or ".")


def _s3fs_for(fs: pafs.FileSystem):
    """An s3fs filesystem with the settings of the pyarrow S3 filesystem ``fs``."""
    import s3fs

    kw: dict[str, Any] = {}
    region = getattr(fs, "region", None)
    if region:
        kw["client_kwargs"] = {"region_name": region}
    return s3fs.S3FileSystem(**kw)


def _s3_put(fs: pafs.FileSystem, path: str, data: bytes | memoryview) -> None:
    s3 = _s3fs_for(fs)
    # One PutObject up to SINGLE_PUT_BYTES; above, s3fs aborts its multipart upload on any error.
    s3.pipe_file(path, bytes(data) if isinstance(data, memoryview) else data,
                 chunksize=SINGLE_PUT_BYTES // 2)


def _put_complete(fs: pafs.FileSystem, path: str, data: bytes | memoryview | pa.Buffer) -> None:
    """Upload a complete object to a non-local filesystem (S3: one PUT or an aborting multipart)."""
    if fs.type_name == "s3":
        _s3_put(fs, path, memoryview(data))
    else:  # another pyarrow filesystem: best effort (a plain stream)
        with fs.open_output_stream(path) as fh:
            fh.write(data)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically (see the module doc); returns its size."""
    if is_local(fs):
        with atomic_local_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
    else:
        _put_complete(fs, path, data)
    return len(data)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def write_json(fs: pafs.FileSystem, path: str, obj: Any) -> int:
    """Write ``obj`` as JSON to ``path`` atomically; returns its size."""
    return write_bytes(fs, path, dumps(obj))


def write_parquet(fs: pafs.FileSystem, path: str, table: pa.Table, **write_options: Any) -> int:
    """Write ``table`` as one Parquet file at ``path`` atomically; returns the file's size."""
    import pyarrow.parquet as pq

    if is_local(fs):
        with atomic_local_path(path) as tmp:
            pq.write_table(table, tmp, **write_options)
        return os.path.getsize(path)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **write_options)
    buf = sink.getvalue()
    _put_complete(fs, path, buf)
    return buf.size


@contextlib.contextmanager
def atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[Any]:
    """A writable binary stream whose content appears at ``path`` only when the block ends without
    an error (local: a temporary file renamed; S3: buffered in memory, uploaded at the end)."""
    if is_local(fs):
        with atomic_local_path(path) as tmp, open(tmp, "wb") as fh:
            yield fh
        return
    sink = pa.BufferOutputStream()
    yield sink
    _put_complete(fs, path, sink.getvalue())


def remove_temporaries(fs: pafs.FileSystem, directory: str, recursive: bool = True) -> int:
    """Delete the temporaries that crashed writers of this module left under ``directory``
    (local only: S3 writes leave none). Call it only where no writer is running (under a lease)."""
    if not is_local(fs):
        return 0
    n = 0
    for path in list_files(fs, directory, recursive=recursive):
        if _TMP_RE.match(posixpath.basename(path)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                n += 1
    if n:
        logger.info("removed %d temporary file(s) of interrupted writes under %s", n, directory)
    return n


def delete_file(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)
