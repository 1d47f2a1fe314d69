"""lease: compare-and-swap control objects (local store) and the exclusive, expiring output lease."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from elmo_dist.lease import (LEASE, Lease, LeaseError, LeaseHeld, LeaseLost, LocalStore, _process_start,
                             _proc_stat, holder_dead, store_for)


@pytest.fixture
def out(tmp_path):
    return str(tmp_path / "out")


def _lease_file(out):
    with open(os.path.join(out, LEASE)) as fh:
        return json.load(fh)


def _foreign(out, **fields):
    """A lease written by another run (a plain dict through the store)."""
    now = time.time()
    body = {"owner": "alice@elsewhere:42", "token": "n" * 32, "expires": now + 600,
            "expires_at": "later", "host": "some-other-host", "pid": 42, **fields}
    assert LocalStore(out).create(LEASE, body) is not None
    return body


@pytest.fixture
def sleeper():
    procs = []

    def start():
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


# ---- LocalStore: compare-and-swap ------------------------------------------------------------

def test_local_store_create_is_exclusive(out):
    store = LocalStore(out)
    assert store.read("x.json") == (None, None)
    tok = store.create("x.json", {"a": 1})
    assert tok is not None
    assert store.create("x.json", {"a": 2}) is None  # exists: refused
    obj, tok2 = store.read("x.json")
    assert obj == {"a": 1} and tok2 == tok
    with open(os.path.join(out, "x.json"), "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == tok
    assert [f for f in os.listdir(out) if f.startswith(".")] == []  # no temporary left behind


def test_local_store_replace_and_delete_need_the_current_token(out):
    store = LocalStore(out)
    t1 = store.create("c.json", {"v": 1})
    t2 = store.replace("c.json", {"v": 2}, t1)
    assert t2 is not None and t2 != t1
    assert store.read("c.json") == ({"v": 2}, t2)
    assert store.replace("c.json", {"v": 3}, t1) is None  # stale token
    assert store.read("c.json")[0] == {"v": 2}
    assert store.delete("c.json", t1) is False  # stale token
    assert os.path.exists(os.path.join(out, "c.json"))
    assert store.delete("c.json", t2) is True
    assert store.read("c.json") == (None, None)
    assert store.delete("c.json", t2) is False  # already gone
    assert store.replace("c.json", {"v": 4}, t2) is None  # replace never creates


def test_local_store_nested_names_and_unparsable_content(out):
    store = LocalStore(out)
    assert store.create("_versions/v000001.json", {"version": 1}) is not None
    assert os.path.isfile(os.path.join(out, "_versions", "v000001.json"))
    with open(os.path.join(out, "junk.json"), "w") as fh:
        fh.write("{not json")
    obj, tok = store.read("junk.json")
    assert obj == {} and tok == hashlib.sha256(b"{not json").hexdigest()
    assert store.replace("junk.json", {"fixed": True}, tok) is not None


def test_store_for_local_path(out):
    store = store_for(out)
    assert isinstance(store, LocalStore) and store.root == os.path.abspath(out)


# ---- the lease -----------------------------------------------------------------------------

def test_acquire_and_release(out):
    lease = Lease(out, owner="me@here:1", seconds=60).acquire()
    try:
        body = _lease_file(out)
        assert body["owner"] == "me@here:1"
        assert body["token"] == lease.nonce
        assert body["pid"] == os.getpid() and body["host"] == socket.gethostname()
        assert body["expires"] > time.time() + 50
        assert lease.taken_over is None and lease.lost is None
        lease.check()  # renewing our own lease works
        assert _lease_file(out)["token"] == lease.nonce
    finally:
        lease.release()
    assert not os.path.exists(os.path.join(out, LEASE))
    # released: another run can take it, as a context manager
    with Lease(out, owner="next", seconds=60) as again:
        assert _lease_file(out)["owner"] == "next" and again.token is not None
    assert not os.path.exists(os.path.join(out, LEASE))


def test_second_lease_is_refused_naming_the_owner(out):
    with Lease(out, owner="first-run@host:123", seconds=60):
        with pytest.raises(LeaseHeld, match="held by first-run@host:123") as e:
            Lease(out, owner="second", seconds=60).acquire()
        assert isinstance(e.value, LeaseError)
        assert _lease_file(out)["owner"] == "first-run@host:123"  # untouched


def test_live_lease_of_another_host_is_not_taken_over(out):
    _foreign(out)
    with pytest.raises(LeaseHeld, match="alice@elsewhere:42"):
        Lease(out, seconds=60).acquire()


def test_expired_lease_is_taken_over(out):
    old = _foreign(out, expires=time.time() - 5, expires_at="a while ago")
    lease = Lease(out, owner="rescuer", seconds=60).acquire()
    try:
        assert lease.taken_over == old
        assert _lease_file(out)["owner"] == "rescuer"
    finally:
        lease.release()


def test_unreadable_lease_is_taken_over(out):
    os.makedirs(out)
    with open(os.path.join(out, LEASE), "w") as fh:
        fh.write("\0\0 torn")
    lease = Lease(out, owner="rescuer", seconds=60).acquire()
    try:
        assert lease.taken_over == {}
        assert _lease_file(out)["owner"] == "rescuer"
    finally:
        lease.release()


def test_lease_of_dead_local_process_is_taken_over_at_once(out):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    old = _foreign(out, host=socket.gethostname(), pid=p.pid)  # expires in 10 minutes
    assert holder_dead(old)
    lease = Lease(out, owner="rerun", seconds=60).acquire()
    try:
        assert lease.taken_over == old
        assert _lease_file(out)["owner"] == "rerun"
    finally:
        lease.release()


def test_lease_of_live_local_process_is_not_taken_over(out, sleeper):
    p = sleeper()
    old = _foreign(out, host=socket.gethostname(), pid=p.pid, pid_start=_process_start(p.pid))
    assert not holder_dead(old)
    with pytest.raises(LeaseHeld, match="alice@elsewhere:42"):
        Lease(out, seconds=60).acquire()
    assert _lease_file(out) == old


def test_reused_pid_counts_as_dead(out, sleeper):
    p = sleeper()
    start = _process_start(p.pid)
    assert start is not None
    # the recorded holder had this pid but started at another time: the pid was reused
    assert holder_dead({"host": socket.gethostname(), "pid": p.pid, "pid_start": str(int(start) + 1)})
    assert not holder_dead({"host": socket.gethostname(), "pid": p.pid, "pid_start": start})
    assert not holder_dead({"host": socket.gethostname(), "pid": p.pid})  # no start recorded: alive
    assert not holder_dead({"host": "another-host", "pid": 999_999_999})  # another host: unknown
    assert not holder_dead({"host": socket.gethostname(), "pid": "123"})


def test_zombie_holder_counts_as_dead(out, sleeper):
    p = sleeper()
    start = _process_start(p.pid)
    os.kill(p.pid, signal.SIGKILL)  # killed, not reaped (no wait() yet): a zombie
    deadline = time.time() + 10
    while (_proc_stat(p.pid) or ["?"])[0] != "Z":
        assert time.time() < deadline, "child did not become a zombie"
        time.sleep(0.01)
    old = _foreign(out, host=socket.gethostname(), pid=p.pid, pid_start=start)
    assert holder_dead(old)
    lease = Lease(out, owner="rerun", seconds=60).acquire()
    try:
        assert lease.taken_over == old
    finally:
        lease.release()


def test_renew_after_takeover_raises_lease_lost(out):
    lease = Lease(out, owner="slow-run", seconds=60).acquire()
    try:
        store = LocalStore(out)
        cur, tok = store.read(LEASE)
        assert store.replace(LEASE, {**cur, "owner": "thief", "token": "t" * 32}, tok) is not None
        with pytest.raises(LeaseLost, match="now held by thief"):
            lease.renew()
        with pytest.raises(LeaseLost):
            lease.check()  # stays lost
        assert lease.lost
    finally:
        lease.release()
    assert _lease_file(out)["owner"] == "thief"  # a lost lease is not deleted at release


def test_renew_thread_extends_the_lease(out):
    lease = Lease(out, owner="me", seconds=30, renew_every=0.05).acquire()
    try:
        first = _lease_file(out)["expires"]
        deadline = time.time() + 5
        while _lease_file(out)["expires"] <= first:
            assert time.time() < deadline, "the lease was never renewed"
            time.sleep(0.02)
        assert _lease_file(out)["token"] == lease.nonce
    finally:
        lease.release()
    assert not os.path.exists(os.path.join(out, LEASE))


def test_bad_seconds():
    with pytest.raises(ValueError):
        Lease("/tmp/unused-lease-dir", seconds=0, store=LocalStore("/tmp/unused-lease-dir"))
