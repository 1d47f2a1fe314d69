"""Small control objects with compare-and-swap, and the refresh lease built on them.

A refresh output keeps three kinds of small JSON objects beside its shards: the lease
(``_lease.json``), the pointer to the published version (``_current.json``) and the versioned
manifests (``_versions/vNNNNNN.json``). They must change atomically and conditionally:

* local paths: an exclusive create is ``link(2)`` of a fully written temporary file (atomic and
  failing when the name exists, like ``O_CREAT|O_EXCL`` but never showing a half-written file;
  ``O_CREAT|O_EXCL`` is the fallback where hard links are unsupported); a conditional replace or
  delete compares the current bytes and renames/unlinks under an ``flock`` on ``_lease.lock`` that
  every elmo-dist writer takes (readers take no lock: a rename is atomic for them).
* s3://: one request each, conditional on the object's ETag: ``PutObject`` with ``If-None-Match: *``
  (create), ``PutObject`` with ``If-Match: <etag>`` (replace), ``DeleteObject`` with ``If-Match``
  (delete). S3 has supported these since 2024/2025; moto supports them. An S3-compatible store
  that answers ``NotImplemented`` gets a best-effort fallback (read, check, write, read back) with a
  warning: there a race within a few milliseconds can let two writers both believe they won.

The lease: ``{owner, token, acquired, expires, expires_at}``. ``acquire`` creates it; when it exists
and is expired (its holder died), it is taken over by a conditional replace of exactly the expired
content, so of two runs taking over the same expired lease only one succeeds. A thread renews it
(conditional on the holder's own last write) every ``seconds / 3``; if a renewal finds someone
else's lease, the run has lost it and must not publish (``Lease.check`` raises ``LeaseLost``).
Expiry compares wall clocks of different machines: keep ``seconds`` far above any clock skew.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any

from elmo_dist.errors import ElmoDistError
from elmo_dist import storage

logger = logging.getLogger(__name__)

LEASE = "_lease.json"
LOCK = "_lease.lock"  # local outputs only: serializes conditional replace/delete of control objects


class LeaseError(ElmoDistError, RuntimeError):
    """The refresh lease of an output is held by another run, or was lost."""


class LeaseHeld(LeaseError):
    """Another refresh of the same output is running (its lease has not expired)."""


class LeaseLost(LeaseError):
    """This run's lease expired and was taken over by another run: it must not publish."""


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def default_owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


# ---- control objects with compare-and-swap --------------------------------------------------

class Store:
    """Conditional operations on small objects under one output directory (local or s3://).

    A *token* identifies an object's content as read: the ETag on S3, a hash of the bytes locally.
    """

    def read(self, name: str) -> tuple[Any | None, str | None]:
        """(parsed JSON, token) or (None, None) when absent. Unparsable content gives ({}, token)."""
        raise NotImplementedError

    def create(self, name: str, obj: Any) -> str | None:
        """Write ``obj`` only if ``name`` does not exist; its token, or None if it existed."""
        raise NotImplementedError

    def replace(self, name: str, obj: Any, token: str) -> str | None:
        """Write ``obj`` only if ``name`` still has ``token``; the new token, or None if not."""
        raise NotImplementedError

    def delete(self, name: str, token: str) -> bool:
        """Delete ``name`` only if it still has ``token``."""
        raise NotImplementedError


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return {}


class LocalStore(Store):
    def __init__(self, root: str):
        self.root = root

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        fd = os.open(os.path.join(self.root, LOCK), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _read_bytes(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def read(self, name):
        data = self._read_bytes(self._path(name))
        if data is None:
            return None, None
        return _loads(data), hashlib.sha256(data).hexdigest()

    def create(self, name, obj):
        path, data = self._path(name), _dumps(obj)
        if not storage.create_exclusive_local(path, data):
            return None
        return hashlib.sha256(data).hexdigest()

    def replace(self, name, obj, token):
        path, data = self._path(name), _dumps(obj)
        with self._locked():
            cur = self._read_bytes(path)
            if cur is None or hashlib.sha256(cur).hexdigest() != token:
                return None
            storage.write_bytes(storage.pafs.LocalFileSystem(), path, data)
        return hashlib.sha256(data).hexdigest()

    def delete(self, name, token):
        path = self._path(name)
        with self._locked():
            cur = self._read_bytes(path)
            if cur is None or hashlib.sha256(cur).hexdigest() != token:
                return False
            os.unlink(path)
        return True


class S3Store(Store):
    def __init__(self, uri: str, root: str):
        import boto3
        from urllib.parse import parse_qs, urlparse

        q = {k: v[0] for k, v in parse_qs(urlparse(uri).query).items()}
        kw: dict[str, Any] = {}
        if q.get("endpoint_override"):
            ep = q["endpoint_override"]
            kw["endpoint_url"] = ep if "://" in ep else f"{q.get('scheme', 'https')}://{ep}"
        if q.get("region"):
            kw["region_name"] = q["region"]
        self.client = boto3.client("s3", **kw)
        self.bucket, _, self.prefix = root.partition("/")
        self.conditional = True  # False once the store answered NotImplemented

    def _key(self, name: str) -> str:
        return posixpath.join(self.prefix, name) if self.prefix else name

    @staticmethod
    def _code(e: Exception) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def _mismatch(self, e: Exception) -> bool:
        return self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")

    def _unsupported(self, e: Exception) -> bool:
        if self._code(e) in ("NotImplemented", "501"):
            if self.conditional:
                logger.warning("s3://%s does not support conditional writes: falling back to "
                               "read-check-write (a race of a few ms between two writers is possible)", self.bucket)
            self.conditional = False
            return True
        return False

    def read(self, name):
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as e:
            if self._code(e) in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise
        return _loads(r["Body"].read()), r["ETag"]

    def _put(self, name: str, data: bytes, **cond) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data,
                                          ContentType="application/json", **cond)["ETag"]
        except Exception as e:
            if self._mismatch(e):
                return None
            raise

    def create(self, name, obj):
        data = _dumps(obj)
        if self.conditional:
            try:
                return self._put(name, data, IfNoneMatch="*")
            except Exception as e:
                if not self._unsupported(e):
                    raise
        if self.read(name)[0] is not None:  # fallback: check, write, read back
            return None
        self._put(name, data)
        back, tok = self.read(name)
        return tok if back == json.loads(data) else None

    def replace(self, name, obj, token):
        data = _dumps(obj)
        if self.conditional:
            try:
                return self._put(name, data, IfMatch=token)
            except Exception as e:
                if not self._unsupported(e):
                    raise
        if self.read(name)[1] != token:
            return None
        self._put(name, data)
        back, tok = self.read(name)
        return tok if back == json.loads(data) else None

    def delete(self, name, token):
        if self.read(name)[1] != token:  # also guards stores that ignore If-Match on DELETE
            return False
        if self.conditional:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self._key(name), IfMatch=token)
                return True
            except Exception as e:
                if self._mismatch(e):
                    return False
                if self._code(e) in ("NoSuchKey", "404"):
                    return False
                if not self._unsupported(e) and self._code(e) not in ("InvalidArgument", "InvalidRequest"):
                    raise
        if self.read(name)[1] != token:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))
        return True


def store_for(directory: str) -> Store:
    """The control-object store of an output directory (local path or s3:// URI)."""
    fs, root = storage.filesystem(directory)
    if fs.type_name == "s3":
        return S3Store(directory, root)
    if fs.type_name != "local":
        raise storage.StorageError(f"{storage.redact(directory)}: leases support local paths and s3:// only "
                                   f"(got {fs.type_name})")
    return LocalStore(root)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux); None when unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """Start time of a local process (Linux /proc), to tell a live holder from a reused pid."""
    st = _proc_stat(pid)
    return st[19] if st and len(st) > 19 else None


def _pid_namespace() -> str | None:
    """This process's pid namespace (Linux): pids are comparable only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def holder_dead(cur: dict[str, Any]) -> bool:
    """Whether the lease ``cur`` was taken by a process of this host (same hostname and pid
    namespace: containers sharing a hostname are told apart) that no longer runs."""
    if cur.get("host") != socket.gethostname() or not isinstance(cur.get("pid"), int):
        return False
    if cur.get("pid_ns") is not None and cur["pid_ns"] != _pid_namespace():
        return False
    pid = cur["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    st = _proc_stat(pid)
    if st and st[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return True
    start = cur.get("pid_start")
    now = st[19] if st and len(st) > 19 else None  # the same /proc read: no second one
    return bool(start) and now not in (None, start)


# ---- the lease ------------------------------------------------------------------------------

class Lease:
    """Exclusive, expiring, renewed ownership of an output directory for one run (embed or refresh).

    A lease is taken over when it expired, or at once when its holder was a process of this host
    that is gone (``holder_dead``): a driver killed and rerun on the same machine does not wait.

    Use as ``with Lease(dir, seconds=3600).acquire() as lease: ...; lease.check()`` before any
    step that must not happen after the lease was lost (publishing, deleting).
    """

    def __init__(self, directory: str, owner: str | None = None, seconds: float = 3600.0,
                 renew_every: float | None = None, store: Store | None = None):
        if seconds <= 0:
            raise ValueError("lease seconds must be > 0")
        self.directory = directory
        self.owner = owner or default_owner()
        self.seconds = float(seconds)
        self.renew_every = renew_every if renew_every is not None else max(0.2, min(self.seconds / 3, 300.0))
        self.store = store or store_for(directory)
        self.token: str | None = None  # store token of our last write
        self.nonce = uuid.uuid4().hex
        self.taken_over: dict[str, Any] | None = None  # the expired lease we replaced, if any
        self.lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> dict[str, Any]:
        now = _now()
        return {"owner": self.owner, "token": self.nonce, "renewed": _iso(now),
                "expires": now + self.seconds, "expires_at": _iso(now + self.seconds),
                "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                "pid_ns": _pid_namespace()}

    def _held_error(self, cur: dict[str, Any]) -> LeaseHeld:
        left = float(cur.get("expires", 0)) - _now()
        return LeaseHeld(
            f"{storage.redact(self.directory)}: another elmo-dist run is using this output: lease {LEASE} "
            f"is held by {cur.get('owner', 'an unknown owner')} until {cur.get('expires_at', '?')} "
            f"({max(0, round(left))} s from now). It expires by itself if that run died; if you are "
            f"sure no run is active, delete {posixpath.join(storage.redact(self.directory), LEASE)}.")

    def acquire(self) -> "Lease":
        for _ in range(10):
            tok = self.store.create(LEASE, self._body())
            if tok is not None:
                self.token = tok
                break
            cur, cur_tok = self.store.read(LEASE)
            if cur is None:  # released in between: try creating again
                continue
            if not isinstance(cur, dict):
                cur = {}  # unreadable: treat as expired
            if isinstance(cur.get("expires"), (int, float)) and cur["expires"] > _now() \
                    and not holder_dead(cur):
                raise self._held_error(cur)
            tok = self.store.replace(LEASE, self._body(), cur_tok)  # CAS on the expired content
            if tok is not None:
                self.token, self.taken_over = tok, cur
                logger.warning("%s: took over the lease of %s (%s)", storage.redact(self.directory),
                               cur.get("owner", "unknown"), "its process is gone" if holder_dead(cur)
                               else f"expired {cur.get('expires_at', '?')}")
                break
        else:
            cur, _ = self.store.read(LEASE)
            raise self._held_error(cur or {})
        back, _ = self.store.read(LEASE)  # guards stores that ignore conditional headers
        if not isinstance(back, dict) or back.get("token") != self.nonce:
            self.token = None
            raise self._held_error(back if isinstance(back, dict) else {})
        logger.info("%s: lease acquired by %s for %.0f s (renewed every %.0f s)", self.directory,
                    self.owner, self.seconds, self.renew_every)
        self._thread = threading.Thread(target=self._renew_loop, name="elmo-dist-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> None:
        """Extend the lease now. Raises LeaseLost if another run took it over."""
        with self._mutex:
            if self.lost:
                raise LeaseLost(self.lost)
            tok = self.store.replace(LEASE, self._body(), self.token)
            if tok is None:
                cur, _ = self.store.read(LEASE)
                self.lost = (f"{self.directory}: this run ({self.owner}) lost its lease: it is now held by "
                             f"{(cur or {}).get('owner', 'nobody')}; not publishing. Raise --lease-seconds "
                             "if runs stall longer than it.")
                raise LeaseLost(self.lost)
            self.token = tok

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
            except LeaseLost as e:
                logger.error("%s", e)
                return
            except Exception as e:  # transient (network): retry at the next tick
                logger.warning("%s: lease renewal failed (%s: %s); retrying", self.directory, type(e).__name__, e)

    def check(self) -> None:
        """Renew synchronously; raises LeaseLost when the lease is no longer ours."""
        self.renew()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._mutex:
            if self.token is not None and not self.lost:
                try:
                    if not self.store.delete(LEASE, self.token):
                        logger.warning("%s: lease was no longer ours at release", self.directory)
                except Exception as e:
                    logger.warning("%s: could not release the lease (%s); it expires at its time",
                                   self.directory, e)
            self.token = None

    def __enter__(self) -> "Lease":
        if self.token is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
