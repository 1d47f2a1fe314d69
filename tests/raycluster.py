"""Ray runtimes of a test's own on this machine: a single head (``Head``) or a head plus worker nodes
(``Cluster``), each node its own ``ray start`` with its own temp dir and ports, on loopback, with
token authentication (Ray 2.60) and a private token file; torn down by killing only the processes
they started (command lines naming a node's temp dir or the GCS address, and their descendants;
never this process, never `ray stop`, which stops every Ray runtime on the machine).

Used by tests/test_ray_cluster.py, tests/test_multinode.py and bench/chaos.py (``--workers N``).
Linux only (/proc).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
HEAD_ATTEMPTS = 3
START_TIMEOUT = 240  # `ray start` alone takes 20-50 s on a loaded 2-core machine


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def _free_ports(n: int) -> list[int]:
    """n distinct free ports from the kernel's ephemeral range (outside Ray's worker ports 10002-19999)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _proc_table() -> dict[int, tuple[int, str]]:
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(d)] = (ppid, cmd)
    return table


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _head_pids(markers: list[str]) -> set[int]:
    """Processes of this head: command lines naming its temp dir or GCS address, and their descendants
    (workers and agents rename themselves, e.g. ``ray::IDLE``, but are children of the raylet)."""
    table = _proc_table()
    mine = {p for p, (_, cmd) in table.items() if any(m in cmd for m in markers)}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in table.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    # never this process or its ancestors
    pid = os.getpid()
    while pid > 1 and pid in table:
        mine.discard(pid)
        pid = table[pid][0]
    return mine


def _kill_head(markers: list[str], grace: float = 10.0) -> None:
    for _ in range(3):  # a second sweep catches processes started while the first one ran
        pids = _head_pids(markers)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.5)
        for pid in pids:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(1)


def _raylet_reason(temp_dir: Path) -> str:
    lines: list[str] = []
    for f in sorted(temp_dir.glob("session_*/logs/raylet.out")):
        for ln in f.read_text(errors="replace").splitlines():
            if "Check failed" in ln and ln not in lines:
                lines.append(ln)
    reasons = [ln.split("Check failed", 1)[1][:300] for ln in lines]
    return "\n".join(reasons) or "(no 'Check failed' in raylet.out)"


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(1)
    return False


def ray_env(root: Path, *, keep_aws: bool = False) -> dict[str, str]:
    """The environment of a runtime of our own: a private token under ``root``, token auth.

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is removed, not set to 0: at 0 Ray 2.60's `ray start` refuses
    to start a worker node ("Multi-node Ray clusters are not supported on Windows and OSX"). Loopback
    comes from ``--node-ip-address 127.0.0.1`` on every node (checked in ``Cluster.wait_nodes``)."""
    token = root / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_TMPDIR",
              "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(k, None)
    if not keep_aws:
        for k in [k for k in env if k.startswith("AWS_")]:  # the nodes know no S3 settings
            env.pop(k)
    env.update({
        "RAY_AUTH_MODE": "token",                  # Ray 2.60 clients send the token only in token mode
        "RAY_AUTH_TOKEN_PATH": str(token),         # this runtime's token, not ~/.ray/auth_token
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
    })
    return env


class Head:
    """The single-node head of tests/test_ray_cluster.py (without --node-ip-address, as there)."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.temp_dir: Path | None = None
        self.gcs_address = self.dashboard_url = ""
        self.markers: list[str] = []
        self.attempts: list[str] = []

    def start(self) -> None:
        for attempt in range(1, HEAD_ATTEMPTS + 1):
            self.temp_dir = Path(tempfile.mkdtemp(prefix=f"h{attempt}-", dir=self.root))
            (gcs, dash, agent_http, agent_grpc, metrics, rt_env, client, nm, om) = _free_ports(9)
            self.markers = [str(self.temp_dir), f":{gcs} "]
            cmd = [_tool("ray"), "start", "--head", "--temp-dir", str(self.temp_dir),
                   "--num-cpus", "2", "--disable-usage-stats", "--dashboard-host", "127.0.0.1",
                   "--port", str(gcs), "--dashboard-port", str(dash),
                   "--dashboard-agent-listen-port", str(agent_http),
                   "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
                   "--runtime-env-agent-port", str(rt_env), "--ray-client-server-port", str(client),
                   "--node-manager-port", str(nm), "--object-manager-port", str(om)]
            t0 = time.time()
            try:
                r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT)
                out, ok = r.stdout + r.stderr, r.returncode == 0
            except subprocess.TimeoutExpired as e:
                out, ok = f"timed out after {START_TIMEOUT}s: {e.stdout!r}", False
            address_file = self.temp_dir / "ray_current_cluster"
            if ok and address_file.exists():
                self.gcs_address = address_file.read_text().strip()
                self.markers = [str(self.temp_dir), f"={self.gcs_address}", f" {self.gcs_address}"]
                self.dashboard_url = f"http://127.0.0.1:{dash}"
                # `ray job submit` needs the agent's HTTP server; it may come up after `ray start` returns.
                if _wait_port(agent_http, 120):
                    self.attempts.append(f"attempt {attempt}: up in {time.time() - t0:.0f}s")
                    return
                out += "\n(dashboard agent HTTP port never opened)"
            tail = "\n".join(out.strip().splitlines()[-3:])
            self.attempts.append(f"attempt {attempt} failed after {time.time() - t0:.0f}s:\n{tail}\n"
                                 f"raylet: {_raylet_reason(self.temp_dir)}")
            self.stop()
        import pytest

        pytest.fail("could not start a Ray head:\n" + "\n".join(self.attempts))

    def stop(self) -> None:
        if self.markers:
            _kill_head(self.markers)


# ---- several nodes ----------------------------------------------------------------------------

class ClusterError(RuntimeError):
    pass


class Node:
    """One `ray start` of a Cluster: its temp dir (the marker of its processes) and ports."""

    def __init__(self, name: str, temp_dir: Path, ports: dict[str, int], num_cpus: int):
        self.name, self.temp_dir, self.ports, self.num_cpus = name, temp_dir, ports, num_cpus
        self.node_id = ""  # from `ray list nodes`, once it registered
        self.start_seconds = 0.0

    @property
    def markers(self) -> list[str]:
        # the dir followed by "/" or " ": .../w2 must not match .../w21
        return [f"{self.temp_dir}/", f"{self.temp_dir} "]

    def pids(self) -> set[int]:
        return _head_pids(self.markers)

    def raylet_pid(self) -> int | None:
        """The raylet of this node: the `raylet` binary whose command line names this node's temp
        dir (its session/socket paths) or its node-manager port."""
        table = _proc_table()
        nm = f"--node_manager_port={self.ports['node_manager']}"
        for pid, (_, cmd) in table.items():
            exe = cmd.split(" ", 1)[0]
            if exe.endswith("/raylet") and (f"{self.temp_dir}/" in cmd or f"{nm} " in cmd) and _alive(pid):
                return pid
        return None

    def raylet_node_id(self) -> str | None:
        """The node id the raylet was started with (``--node_id=HEX`` on its command line)."""
        pid = self.raylet_pid()
        if pid is None:
            return None
        for arg in _proc_table().get(pid, (0, ""))[1].split():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        return None

    def __repr__(self) -> str:
        return f"Node({self.name}, {self.node_id[:8] or '?'}, {self.temp_dir})"


class Cluster:
    """A head plus ``workers`` worker nodes on this machine, each its own `ray start` on 127.0.0.1.

    The head has ``head_cpus`` CPUs (0: actors go to the workers; the driver, run on the head's
    machine, connects to the head's raylet), each worker ``worker_cpus``.
    """

    def __init__(self, root: Path | None = None, *, workers: int = 2, head_cpus: int = 0, worker_cpus: int = 1,
                 object_store_mb: int = 200, env: dict[str, str] | None = None, attempts: int = HEAD_ATTEMPTS,
                 start_timeout: float = START_TIMEOUT, node_ip: str = "127.0.0.2"):
        # short: AF_UNIX socket paths under a temp dir must stay < 108 bytes
        self.own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="elmo-rc-", dir="/tmp")) if root is None else Path(root)
        self.n_workers, self.head_cpus, self.worker_cpus = workers, head_cpus, worker_cpus
        self.object_store = object_store_mb << 20
        self.env = env if env is not None else ray_env(self.root)
        self.attempts, self.start_timeout = attempts, start_timeout
        self.node_ip = node_ip
        self.head: Node | None = None
        self.workers: list[Node] = []
        self.retired: list[Node] = []  # killed workers (their leftovers are swept at stop)
        self.gcs_address = ""
        self.dashboard_url = ""
        self.log: list[str] = []
        self.start_seconds = 0.0
        self._count = 0

    # the interface bench/chaos.py expects of a head
    @property
    def address(self) -> str:
        return self.gcs_address

    @property
    def markers(self) -> list[str]:
        nodes = [n for n in (self.head, *self.workers, *self.retired) if n is not None]
        gcs = [f"={self.gcs_address}", f" {self.gcs_address}"] if self.gcs_address else []
        return [m for n in nodes for m in n.markers] + gcs

    def pids(self) -> set[int]:
        return _head_pids(self.markers) if self.markers else set()

    def processes(self, contains: str) -> list[int]:
        table = _proc_table()
        return sorted(p for p in self.pids() if p in table and contains in table[p][1] and _alive(p))

    # ---- start ----

    def _ray_start(self, name: str, head: bool, num_cpus: int, extra: tuple[str, ...] = ()) -> Node:
        """`ray start` of one node; retried with a fresh temp dir and fresh ports (a raylet whose
        dashboard agent is late aborts the start on a loaded machine, ray-project/ray#65983)."""
        keys = ["node_manager", "object_manager", "runtime_env_agent", "agent_http", "agent_grpc", "metrics"]
        if head:
            keys += ["gcs", "dashboard", "client"]
        failures = []
        for attempt in range(1, self.attempts + 1):
            self._count += 1
            temp_dir = self.root / f"{name[0]}{self._count}"  # short: AF_UNIX paths under it < 108 bytes
            temp_dir.mkdir()
            ports = dict(zip(keys, _free_ports(len(keys))))
            node = Node(name, temp_dir, ports, num_cpus)
            cmd = [_tool("ray"), "start", "--temp-dir", str(temp_dir), "--node-ip-address", self.node_ip,
                   "--num-cpus", str(num_cpus), "--object-store-memory", str(self.object_store),
                   "--disable-usage-stats", "--node-manager-port", str(ports["node_manager"]),
                   "--object-manager-port", str(ports["object_manager"]),
                   "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
                   "--dashboard-agent-listen-port", str(ports["agent_http"]),
                   "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
                   "--metrics-export-port", str(ports["metrics"]),
                   "--min-worker-port", "0", "--max-worker-port", "0", *extra]  # workers: ports the OS picks
            if head:
                cmd += ["--head", "--port", str(ports["gcs"]), "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", str(ports["dashboard"]),
                        "--ray-client-server-port", str(ports["client"])]
            else:
                cmd += ["--address", self.gcs_address]
            t0 = time.time()
            try:
                r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=self.start_timeout)
                out, ok = r.stdout + r.stderr, r.returncode == 0
            except subprocess.TimeoutExpired:
                out, ok = f"`ray start` timed out after {self.start_timeout:.0f} s", False
            if ok and (not head or (temp_dir / "ray_current_cluster").exists()):
                node.start_seconds = time.time() - t0
                self.log.append(f"{name} {temp_dir.name}: up in {node.start_seconds:.0f} s (attempt {attempt})")
                return node
            tail = "\n".join(out.strip().splitlines()[-3:])
            failures.append(f"{name} attempt {attempt} failed after {time.time() - t0:.0f} s:\n{tail}\n"
                            f"raylet: {_raylet_reason(temp_dir)}")
            _kill_head(node.markers + ([f":{ports['gcs']} "] if head else []))
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise ClusterError("could not start a Ray node:\n" + "\n".join(failures))

    def start(self, timeout: float = 180) -> "Cluster":
        t0 = time.time()
        try:
            self.head = self._ray_start("h", True, self.head_cpus)
            self.gcs_address = (self.head.temp_dir / "ray_current_cluster").read_text().strip()
            self.dashboard_url = f"http://127.0.0.1:{self.head.ports['dashboard']}"
            for _ in range(self.n_workers):
                self.workers.append(self._ray_start("w", False, self.worker_cpus))
            self.wait_nodes(self.n_workers + 1, timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.time() - t0
        self.log.append(f"cluster of {self.n_workers + 1} nodes up in {self.start_seconds:.0f} s")
        return self

    def add_worker(self, timeout: float = 180, extra: tuple[str, ...] = ()) -> Node:
        """A new worker node joining the head (e.g. to replace a killed one; ``extra`` flags of
        `ray start`, e.g. ``("--num-gpus", "1")`` for a node declaring a logical GPU)."""
        node = self._ray_start("w", False, self.worker_cpus, extra)
        self.workers.append(node)
        self.wait_nodes(len(self.workers) + 1, timeout)
        return node

    # ---- look ----

    def list_nodes(self) -> list[dict]:
        """`ray list nodes` (state API): node_id, node_ip, state, resources_total, ..."""
        r = subprocess.run([_tool("ray"), "list", "nodes", "--format", "json", "--limit", "100"],
                           env={**self.env, "RAY_ADDRESS": self.gcs_address}, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise ClusterError(f"ray list nodes failed: {(r.stdout + r.stderr)[-800:]}")
        return json.loads(r.stdout)

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.list_nodes() if n.get("state") == "ALIVE"]

    def wait_nodes(self, n: int, timeout: float = 180) -> list[dict]:
        """Wait until exactly ``n`` nodes are alive; fill in each node's node_id (matched by its
        node-manager port) and check that every node registered on 127.0.0.1."""
        deadline = time.time() + timeout
        nodes: list[dict] = []
        last = ""
        while time.time() < deadline:
            try:
                nodes = self.alive_nodes()
            except (ClusterError, subprocess.TimeoutExpired, ValueError) as e:
                last = str(e)
                nodes = []
            if len(nodes) == n:
                break
            time.sleep(2)
        else:
            raise ClusterError(f"{len(nodes)} alive node(s), expected {n}, after {timeout:.0f} s {last}")
        ips = {x.get("node_ip") for x in nodes}
        if ips != {self.node_ip}:
            raise ClusterError(f"nodes registered with {ips}, expected only {self.node_ip}")
        alive = {x["node_id"] for x in nodes}
        for node in [self.head, *self.workers]:
            if node is not None and not node.node_id:
                node.node_id = node.raylet_node_id() or ""
            if node is not None and node.node_id not in alive:
                raise ClusterError(f"{node} is not among the alive nodes")
        return nodes

    # ---- kill / stop ----

    def kill_raylet(self, worker: Node) -> int:
        """SIGKILL of a worker node's raylet (its workers and agents then exit on their own); the
        node is retired: stop() sweeps whatever of it is left."""
        if worker is self.head:
            raise ValueError("kill_raylet is for worker nodes")
        pid = worker.raylet_pid()
        if pid is None:
            raise ClusterError(f"no raylet process found for {worker}")
        os.kill(pid, signal.SIGKILL)
        self.workers.remove(worker)
        self.retired.append(worker)
        return pid

    def sweep(self, node: Node, grace: float = 5.0) -> None:
        """Stop whatever is left of a (killed) node's processes."""
        _kill_head(node.markers, grace=grace)

    def stop(self) -> None:
        for node in [*self.retired, *self.workers]:
            _kill_head(node.markers)
        if self.head is not None:
            _kill_head(self.markers)

    def close(self) -> list[int]:
        """stop(), remove the temp root if it is ours; the PIDs left behind (should be none)."""
        self.stop()
        left = sorted(self.pids())
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        return left

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
