"""Chaos drill: does `elmo-dist embed` keep its exactly-once promise when it is killed over and over?

The README promises: kill the driver, an actor or a node at any moment, rerun the same command, and
the output holds each sentence exactly once. This drill tries it for real, against a Ray head of
its own:

1. Writes a small corpus (``--rows`` rows of the bundled sample corpus, repeated with fresh ids,
   split into ``--files`` Parquet files with different row-group sizes, so that with
   ``--rows-per-unit`` there are units of several row groups, of one, and slices of one) and
   starts a single-node Ray head on loopback: its own ``--temp-dir``, its own ports, token auth
   with a private token file, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and
   ``--node-ip-address 127.0.0.1`` (see tests/test_ray_cluster.py and docs field notes).
2. Runs the job uninterrupted on a reference output (its rows are the expected result), then once
   more on a calibration output: that warm run's duration D calibrates the kills (the first run
   on a fresh head also pays for starting its worker pool).
3. For each drill output (``--kills-per-output`` kills each): launches the same
   ``elmo-dist embed ... --address <head>`` (own process group), waits a seeded random time in
   [0.3 s, 1.1 D] and kills something (``--kinds``):
     * ``driver``: SIGKILL of the driver process only; the next run starts at once;
     * ``actor``: SIGKILL of one ``EmbedWriter`` actor process of *this* head (a descendant of its
       raylet; never anything else); the driver is left to recover and finish.
     * ``node`` (needs ``--workers N``): SIGKILL of the raylet of a random worker node; the driver
       is left to finish or fail (with a one-line ``elmo-dist: error: ...``; a traceback or any
       other failure counts as an error), then the killed node's leftovers are stopped and a
       replacement worker (a new ``ray start`` joining the head) is added before the next run.
   The number of unit records at the kill gives its phase: 0, partial or all (all = killed during
   the final check). A run that ends before its kill time "finished early"; when a run leaves
   the output complete, the output's batch ends and the remaining kills go to a new output.
   Each output is then finished by one uninterrupted rerun.
4. Checks every output against the reference: lost / duplicated / unexpected keys
   ``(id, sentence_index, chunk)``, ``sentence_embedding`` vs the reference run and vs
   ``Elmo.from_pretrained(model).embed_batch`` (mean over tokens of the mean over layers, the
   default) on a sample, ``elmo_dist.output.verify(deep=True)``, shard files no record names,
   temporaries (``.NAME.tmp-HEX``) and a ``_lease.json`` left after the final run.
5. Prints a markdown summary and a per-run table; exits 1 if anything was lost, duplicated, left
   over, differs by more than 1e-5, or a run failed with an error.

Everything started here is stopped by PID, also on Ctrl-C: the drivers (their process groups) and
the head (processes naming its temp dir or GCS address, and their descendants). ``ray stop`` is
not used: it stops every Ray runtime on the machine.

    python bench/chaos.py                          # 20 driver kills: 4 outputs x 5 kills
    python bench/chaos.py --kills 3 --seed 7       # a quick drill
    python bench/chaos.py --kinds driver,actor     # also kill embedding actors
    python bench/chaos.py --workdir /tmp/drill --keep   # keep outputs and logs for inspection
    python bench/chaos.py --workers 2 --kinds driver,node --kills 4   # head + 2 worker nodes

With ``--workers N`` the runtime is a head with no CPUs plus N worker nodes of ``--worker-cpus``
CPUs each, every node its own ``ray start`` on 127.0.0.2 (tests/raycluster.py); the actors run on
the workers and all nodes share this machine's disk, so the local output is shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.raycluster import _alive as alive  # noqa: E402  (the test fixtures' /proc and port helpers)
from tests.raycluster import _free_ports as free_ports  # noqa: E402
from tests.raycluster import _head_pids as head_pids  # noqa: E402
from tests.raycluster import _proc_table as proc_table  # noqa: E402
from tests.raycluster import _tool as tool  # noqa: E402

logger = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
SAMPLE_CORPUS = ROOT / "elmo_dist" / "data" / "sample_corpus.parquet"
TINY_MODEL = ROOT / "tests" / "fixtures" / "elmo-tiny-f1"
ROW_GROUP_SIZES = (3, 6, 10)  # per file, cycled: with 6 rows per unit -> 2 groups, 1 group, sliced groups
TOLERANCE = 1e-5
KILL_WINDOW = (0.3, 1.1)  # kill times: uniform in [0.3 s, 1.1 x the reference run's duration]
HEAD_ATTEMPTS = 3
HEAD_START_TIMEOUT = 240
TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]+$")  # temporaries of interrupted atomic writes
KEY = ("id", "sentence_index", "chunk")


# ---- the Ray head -----------------------------------------------------------------------------

class RayHead:
    """A single-node head of our own on loopback, torn down by killing only its own processes."""

    def __init__(self, temp_root: Path, num_cpus: int):
        self.temp_root, self.num_cpus = temp_root, num_cpus
        self.temp_dir: Path | None = None
        self.address = ""
        self.markers: list[str] = []
        self.env = self._environment()
        self.start_seconds = 0.0

    def _environment(self) -> dict[str, str]:
        token = self.temp_root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = dict(os.environ)
        for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_TMPDIR"):
            env.pop(k, None)
        env.update({
            "RAY_AUTH_MODE": "token",                  # Ray 2.60 clients send the token only in token mode
            "RAY_AUTH_TOKEN_PATH": str(token),         # this head's token, not ~/.ray/auth_token
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # with --node-ip-address: stay on 127.0.0.1
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        })
        return env

    def start(self) -> None:
        t0 = time.perf_counter()
        failures = []
        for attempt in range(1, HEAD_ATTEMPTS + 1):
            self.temp_dir = Path(tempfile.mkdtemp(prefix=f"h{attempt}-", dir=self.temp_root))
            gcs, dash, agent_http, agent_grpc, metrics, rt_env, client, nm, om = free_ports(9)
            self.markers = [str(self.temp_dir), f":{gcs} "]
            cmd = [tool("ray"), "start", "--head", "--temp-dir", str(self.temp_dir),
                   "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.num_cpus),
                   "--object-store-memory", str(512 << 20), "--disable-usage-stats",
                   "--dashboard-host", "127.0.0.1", "--port", str(gcs), "--dashboard-port", str(dash),
                   "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
                   "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env),
                   "--ray-client-server-port", str(client), "--node-manager-port", str(nm),
                   "--object-manager-port", str(om)]
            try:
                r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=HEAD_START_TIMEOUT)
                text, ok = r.stdout + r.stderr, r.returncode == 0
            except subprocess.TimeoutExpired:
                text, ok = f"`ray start` timed out after {HEAD_START_TIMEOUT} s", False
            address_file = self.temp_dir / "ray_current_cluster"
            if ok and address_file.exists():
                self.address = address_file.read_text().strip()
                self.markers = [str(self.temp_dir), f"={self.address}", f" {self.address}"]
                self.start_seconds = time.perf_counter() - t0
                logger.info("ray head %s up in %.1f s (attempt %d)", self.address, self.start_seconds, attempt)
                return
            failures.append(f"attempt {attempt}: " + "\n".join(text.strip().splitlines()[-3:]))
            logger.warning("ray start failed (attempt %d); retrying with fresh ports", attempt)
            self.stop()
        raise RuntimeError("could not start a Ray head:\n" + "\n".join(failures))

    def pids(self) -> set[int]:
        """Processes of this head: those naming its temp dir or GCS address, and their descendants."""
        return head_pids(self.markers) if self.markers else set()

    def processes(self, contains: str) -> list[int]:
        """PIDs of this head's processes whose command line contains ``contains``."""
        table = proc_table()
        return sorted(p for p in self.pids() if p in table and contains in table[p][1] and alive(p))

    def stop(self, grace: float = 10.0) -> None:
        for _ in range(3):  # a second sweep catches processes started while the first one ran
            pids = self.pids()
            if not pids:
                return
            signal_all(pids, signal.SIGTERM)
            deadline = time.time() + grace
            while time.time() < deadline and any(alive(p) for p in pids):
                time.sleep(0.3)
            signal_all([p for p in pids if alive(p)], signal.SIGKILL)
            time.sleep(0.5)


def signal_all(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


# ---- the corpus and the job -------------------------------------------------------------------

def write_corpus(directory: Path, n_rows: int, n_files: int) -> list[Path]:
    """``n_rows`` rows of the sample corpus (cycled; repeats get ids ``ID~rK``) in ``n_files`` files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sample = pq.read_table(SAMPLE_CORPUS)
    ids, texts = sample["id"].to_pylist(), sample["text"].to_pylist()
    rows = [(ids[i % len(ids)] + (f"~r{i // len(ids)}" if i >= len(ids) else ""), texts[i % len(ids)])
            for i in range(n_rows)]
    directory.mkdir(parents=True)
    paths, per_file = [], math.ceil(n_rows / n_files)
    for k in range(n_files):
        part = rows[k * per_file:(k + 1) * per_file]
        if not part:
            break
        path = directory / f"part-{k}.parquet"
        pq.write_table(pa.table({"id": [r[0] for r in part], "text": [r[1] for r in part]}), path,
                       row_group_size=ROW_GROUP_SIZES[k % len(ROW_GROUP_SIZES)])
        paths.append(path)
    return paths


@dataclasses.dataclass
class Job:
    """The `elmo-dist embed` command line, minus the output."""

    inputs: list[Path]
    model: Path
    rows_per_unit: int
    address: str
    env: dict[str, str]
    logs: Path
    drivers: list["Driver"] = dataclasses.field(default_factory=list)

    def command(self, output: Path) -> list[str]:
        return [tool("elmo-dist"), "embed", *map(str, self.inputs), "--output", str(output),
                "--id-column", "id", "--text-column", "text", "--rows-per-unit", str(self.rows_per_unit),
                "--model", str(self.model), "--address", self.address]

    def launch(self, output: Path, tag: str) -> "Driver":
        log = self.logs / f"{tag}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(self.command(output), cwd=ROOT, env=self.env, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        driver = Driver(proc, log, time.perf_counter())
        self.drivers.append(driver)
        return driver

    def stop_drivers(self) -> None:
        """Kill the process group of every driver still running (on errors and Ctrl-C)."""
        for driver in self.drivers:
            if driver.proc.poll() is None:
                driver.reap_group()
                driver.proc.wait()


@dataclasses.dataclass
class Driver:
    proc: subprocess.Popen
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def wait_until(self, deadline: float) -> int | None:
        """Exit status if the driver ends before ``deadline`` (perf_counter), else None."""
        while time.perf_counter() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return rc
            time.sleep(0.05)
        return self.proc.poll()

    def error_tail(self, lines: int = 3) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def reap_group(self) -> None:
        """Kill whatever is left in the driver's own process group (we created it)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass


def unit_progress(output: Path) -> tuple[int, int | None]:
    """(unit records present, units planned or None before plan.json exists)."""
    units = output / "_job" / "units"
    records = sum(1 for p in units.glob("*.json")) if units.is_dir() else 0
    try:
        planned = len(json.loads((output / "_job" / "plan.json").read_text())["units"])
    except (OSError, ValueError, KeyError, TypeError):
        planned = None
    return records, planned


def phase_of(records: int, planned: int | None) -> str:
    if records == 0:
        return "0"
    return "all" if planned is not None and records >= planned else "partial"


# ---- kills ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """One launch of the driver."""

    output: str
    index: int
    kind: str  # "reference", "calibration", a kill kind ("driver", "actor", "node"), "final"
    kill_at: float | None = None  # seconds after launch
    outcome: str = ""  # "killed", "killed+recovered", "finished early", "finished", "error", "hung"
    phase: str = ""  # records at the kill: "0", "partial", "all"
    records_at_kill: int | None = None
    planned: int | None = None
    target: int | None = None  # pid killed
    rc: int | None = None
    seconds: float = 0.0
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.outcome.startswith("killed")


class Killer:
    """Delivers one kind of kill to a running job. A new kind (e.g. "node": SIGKILL of a worker
    node's raylet, on a head plus worker nodes) subclasses this and joins ``KILLERS``."""

    kind = ""

    def __init__(self, head: RayHead, run_timeout: float, rng: random.Random):
        self.head, self.run_timeout, self.rng = head, run_timeout, rng

    def deliver(self, driver: Driver, output: Path, run: Run) -> None:
        """Wait until ``run.kill_at``, kill, fill in ``run`` (outcome, phase, rc); return once the
        driver has exited."""
        raise NotImplementedError

    def recover(self, run: Run) -> None:
        """Called after the run (and its timing): put the runtime back together for the next one."""

    def _await_recovery(self, driver: Driver, run: Run) -> bool:
        """After a kill the driver keeps running (actor, node kills): wait for it to end and fill in
        ``run``; False when it hung."""
        rc = driver.wait_until(driver.started + self.run_timeout)
        if rc is None:
            hung(run, driver, self.run_timeout)
            return False
        run.rc = rc
        run.outcome = "killed+recovered" if rc == 0 else "killed"
        if rc != 0:
            run.error = driver.error_tail()
        return True

    def _mark(self, run: Run, output: Path, target: int) -> None:
        run.records_at_kill, run.planned = unit_progress(output)
        run.phase, run.target = phase_of(run.records_at_kill, run.planned), target


class DriverKiller(Killer):
    """SIGKILL of the driver process itself, at the kill time."""

    kind = "driver"

    def deliver(self, driver, output, run):
        rc = driver.wait_until(driver.started + run.kill_at)
        if rc is not None:
            finished(run, rc, driver)
            return
        os.kill(driver.pid, signal.SIGKILL)
        self._mark(run, output, driver.pid)
        run.rc = driver.proc.wait()  # reap now: a zombie still looks alive to the lease's pid check
        driver.reap_group()
        run.outcome = "killed"


class ActorKiller(Killer):
    """SIGKILL of one ``EmbedWriter`` actor process of our head (a descendant of its raylet) at, or
    first after, the kill time; the driver keeps running and must recover and finish."""

    kind = "actor"
    MARK = "EmbedWriter"

    def deliver(self, driver, output, run):
        rc = driver.wait_until(driver.started + run.kill_at)
        while rc is None:
            targets = self.head.processes(self.MARK)
            if targets:
                target = self.rng.choice(targets)
                os.kill(target, signal.SIGKILL)
                self._mark(run, output, target)
                run.kill_at = driver.elapsed()
                break
            rc = driver.wait_until(time.perf_counter() + 0.1)
        if rc is not None:
            finished(run, rc, driver)
            return
        self._await_recovery(driver, run)


class NodeKiller(Killer):
    """SIGKILL of the raylet of a random worker node of a multi-node cluster (``--workers N``) at the
    kill time; the driver keeps running and must finish, or fail with a one-line error. Afterwards
    (``recover``) the node's leftovers are stopped and a replacement worker joins the head."""

    kind = "node"
    CLEAR = "elmo-dist: error: "

    def __init__(self, head, run_timeout, rng):
        super().__init__(head, run_timeout, rng)
        if not getattr(head, "workers", None):
            raise SystemExit("--kinds node needs a multi-node cluster: pass --workers N (N >= 2)")
        self.victim = None
        self.replace_seconds: list[float] = []

    def deliver(self, driver, output, run):
        rc = driver.wait_until(driver.started + run.kill_at)
        if rc is not None:
            finished(run, rc, driver)
            return
        self.victim = self.rng.choice(self.head.workers)
        target = self.head.kill_raylet(self.victim)
        self._mark(run, output, target)
        if self._await_recovery(driver, run) and run.rc != 0:
            lines = [ln for ln in driver.log.read_text(errors="replace").strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else ""
            text = "\n".join(lines)
            if last.startswith(self.CLEAR) and "Traceback" not in text:
                run.error = last
            else:  # not a clear one-line error: counts as a failure of the drill
                run.outcome, run.error = "error", "unclear failure after a node kill: " + driver.error_tail()

    def recover(self, run):
        if self.victim is None:
            return
        t0 = time.perf_counter()
        self.head.sweep(self.victim)
        node = self.head.add_worker()
        self.replace_seconds.append(time.perf_counter() - t0)
        logger.info("replaced worker %s by %s in %.1f s", self.victim.temp_dir.name, node.temp_dir.name,
                    self.replace_seconds[-1])
        self.victim = None


KILLERS: dict[str, type[Killer]] = {k.kind: k for k in (DriverKiller, ActorKiller, NodeKiller)}


def finished(run: Run, rc: int, driver: Driver) -> None:
    run.rc = rc
    run.outcome = "finished early" if rc == 0 else "error"
    if rc != 0:
        run.error = driver.error_tail()


def hung(run: Run, driver: Driver, timeout: float) -> None:
    driver.proc.kill()
    run.rc = driver.proc.wait()
    driver.reap_group()
    run.outcome, run.error = "hung", f"no exit after {timeout:.0f} s; killed"


# ---- the drill --------------------------------------------------------------------------------

def run_uninterrupted(job: Job, output: Path, tag: str, kind: str, index: int, timeout: float) -> Run:
    run = Run(output.name, index, kind)
    driver = job.launch(output, tag)
    rc = driver.wait_until(driver.started + timeout)
    if rc is None:
        hung(run, driver, timeout)
    else:
        run.rc, run.outcome = rc, "finished" if rc == 0 else "error"
        if rc != 0:
            run.error = driver.error_tail()
    run.seconds = driver.elapsed()
    driver.reap_group()
    logger.info("%s: %s in %.1f s%s", tag, run.outcome, run.seconds, f" ({run.error})" if run.error else "")
    return run


def drill_output(job: Job, output: Path, kills: int, killers: dict[str, Killer], rng: random.Random,
                 window: tuple[float, float], max_runs: int, timeout: float) -> list[Run]:
    """Kill jobs on ``output`` until ``kills`` were delivered or a run leaves it complete, then
    finish it with one uninterrupted rerun."""
    runs: list[Run] = []
    delivered = 0
    while delivered < kills and len(runs) < max_runs:
        kind = rng.choice(sorted(killers))
        run = Run(output.name, len(runs) + 1, kind, kill_at=rng.uniform(*window))
        driver = job.launch(output, f"{output.name}-{run.index:02d}-{kind}")
        killers[kind].deliver(driver, output, run)
        run.seconds = driver.elapsed()
        driver.reap_group()
        killers[kind].recover(run)
        runs.append(run)
        delivered += run.delivered
        logger.info("%s run %d: %s kill at %.2f s -> %s%s (records %s/%s)%s", output.name, run.index, kind,
                    run.kill_at, run.outcome, f" in phase {run.phase}" if run.phase else "", run.records_at_kill,
                    run.planned, f": {run.error}" if run.error else "")
        if run.outcome in ("finished early", "killed+recovered"):
            break  # the run completed the output: the remaining kills go to a new output
    runs.append(run_uninterrupted(job, output, f"{output.name}-final", "final", len(runs) + 1, timeout))
    return runs


# ---- checks -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Check:
    output: str
    rows: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    extra_files: int = 0
    lease_left: bool = False
    diff_reference: float = math.nan
    diff_library: float = math.nan
    verify_ok: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)


def keyed(table) -> dict[tuple, int]:
    """key -> first row index; duplicates are counted by the caller from the table's length."""
    keys = zip(*(table[c].to_pylist() for c in KEY))
    out: dict[tuple, int] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, i)
    return out


def vectors(table):
    import numpy as np

    return np.stack(table["sentence_embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)


def library_diff(table, elmo, sample: int, rng: random.Random) -> float:
    """Max abs difference between the output's sentence vectors and the library's default
    (mean over tokens of the mean over layers) on ``sample`` random rows."""
    import numpy as np

    rows = sorted(rng.sample(range(table.num_rows), min(sample, table.num_rows)))
    part = table.take(rows)
    tokens = part["tokens"].to_pylist()
    layers, _ = elmo.embed_batch(tokens)
    mix = layers.mean(axis=1)
    expected = np.stack([mix[i, : len(t)].mean(axis=0) for i, t in enumerate(tokens)])
    return float(np.abs(vectors(part) - expected).max())


def stray_files(output: Path) -> list[str]:
    """Parquet files in the output that no record names, and temporaries anywhere under it."""
    from elmo_dist.checkpoint import JobState

    named = set(JobState(str(output)).scan().files())
    strays = []
    for path in output.rglob("*"):
        rel = path.relative_to(output).as_posix()
        if path.is_file() and (TMP_RE.match(path.name) or (rel.endswith(".parquet") and rel not in named)):
            strays.append(rel)
    return sorted(strays)


def check_output(output: Path, reference, elmo, sample: int, rng: random.Random) -> Check:
    import numpy as np

    from elmo_dist import read_embeddings
    from elmo_dist.output import verify

    check = Check(output.name)
    report = verify(str(output), deep=True)
    check.verify_ok = report.ok
    check.problems += report.problems
    if report.notes:
        logger.info("%s: verify notes: %s", output.name, "; ".join(report.notes))
    strays = stray_files(output)
    check.extra_files = len(strays)
    if strays:
        check.problems.append(f"extra files: {', '.join(strays[:5])}")
    check.lease_left = (output / "_lease.json").exists()
    try:
        table = read_embeddings(str(output)).to_table()
    except Exception as e:  # an incomplete or unreadable output: report, do not crash the drill
        check.problems.append(f"read_embeddings: {type(e).__name__}: {e}")
        check.lost = reference.num_rows
        return check
    check.rows = table.num_rows
    ref_keys, keys = keyed(reference), keyed(table)
    check.duplicated = table.num_rows - len(keys)
    check.lost = len(ref_keys.keys() - keys.keys())
    check.unexpected = len(keys.keys() - ref_keys.keys())
    common = sorted(ref_keys.keys() & keys.keys())
    if common:
        ours = vectors(table.take([keys[k] for k in common]))
        theirs = vectors(reference.take([ref_keys[k] for k in common]))
        check.diff_reference = float(np.abs(ours - theirs).max())
    if table.num_rows:
        check.diff_library = library_diff(table, elmo, sample, rng)
    return check


def check_failed(c: Check) -> bool:
    return bool(c.lost or c.duplicated or c.unexpected or c.extra_files or c.lease_left or not c.verify_ok
                or not c.diff_reference <= TOLERANCE or not c.diff_library <= TOLERANCE)


# ---- report -----------------------------------------------------------------------------------

def count(runs: list[Run], **where) -> int:
    return sum(all(getattr(r, k) == v for k, v in where.items()) for r in runs)


def worst(diffs) -> str:
    """The largest difference; "n/a" when there is none or one could not be computed (a failure)."""
    diffs = list(diffs)
    if not diffs or any(math.isnan(d) for d in diffs):
        return "n/a"
    return f"{max(diffs):.2e}"


def summary_table(runs: list[Run], checks: list[Check], kinds: list[str], seconds: float) -> str:
    drill = [r for r in runs if r.kind in kinds]
    killed = [r for r in drill if r.delivered]
    rows = [
        ("outputs (each killed, then finished by a clean rerun)", len(checks)),
        ("runs (reference, calibration, killed or early, final reruns)", len(runs)),
        ("kills delivered", len(killed)),
        *((f"kills: {k}", count(killed, kind=k)) for k in kinds),
        ("kills at 0 / partial / all unit records",
         " / ".join(str(count(killed, phase=p)) for p in ("0", "partial", "all"))),
        *([(f"{k} kills the driver recovered from", count(killed, kind=k, outcome="killed+recovered"))
           for k in ("actor", "node") if k in kinds]),
        ("finished early (before the kill time)", count(drill, outcome="finished early")),
        ("runs failed with an error / hung", f"{count(runs, outcome='error')} / {count(runs, outcome='hung')}"),
        ("lost keys", sum(c.lost for c in checks)),
        ("duplicated keys", sum(c.duplicated for c in checks)),
        ("unexpected keys", sum(c.unexpected for c in checks)),
        ("extra files (unrecorded shards, temporaries)", sum(c.extra_files for c in checks)),
        ("_lease.json left after the final run", sum(c.lease_left for c in checks)),
        ("max abs diff vs reference run", worst(c.diff_reference for c in checks)),
        ("max abs diff vs Elmo.embed_batch (sample)", worst(c.diff_library for c in checks)),
        ("verify(deep=True) ok", f"{sum(c.verify_ok for c in checks)}/{len(checks)}"),
        ("total seconds (without ray start)", f"{seconds:.0f}"),
    ]
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def runs_table(runs: list[Run]) -> str:
    lines = ["| output | run | kind | kill at s | outcome | phase | records at kill | seconds | rc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        kill_at = "" if r.kill_at is None else f"{r.kill_at:.2f}"
        recs = "" if r.records_at_kill is None else f"{r.records_at_kill}/{r.planned if r.planned is not None else '?'}"
        lines.append(f"| {r.output} | {r.index} | {r.kind} | {kill_at} | {r.outcome} | {r.phase} | {recs} "
                     f"| {r.seconds:.1f} | {r.rc} |")
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="kills to deliver in all (default 20)")
    p.add_argument("--kills-per-output", type=int, default=5,
                   help="kills on one output before it is finished by a clean rerun (default 5)")
    p.add_argument("--kinds", default="driver",
                   help="comma-separated kill kinds: driver, actor, node (node needs --workers; default driver)")
    p.add_argument("--seed", type=int, default=1, help="seeds kill times, kinds and targets (default 1)")
    p.add_argument("--rows", type=int, default=240, help="corpus rows, cycled from the sample corpus (default 240)")
    p.add_argument("--files", type=int, default=3, help="Parquet files of the corpus (default 3)")
    p.add_argument("--rows-per-unit", type=int, default=6, help="rows per work unit (default 6)")
    p.add_argument("--model", default=str(TINY_MODEL), help="model directory (default: the tiny test model)")
    p.add_argument("--num-cpus", type=int, default=4,
                   help="logical CPUs of the head (default 4; 0 with --workers)")
    p.add_argument("--workers", type=int, default=0,
                   help="worker nodes besides the head, each its own `ray start` (default 0: a single head)")
    p.add_argument("--worker-cpus", type=int, default=1, help="logical CPUs of each worker node (default 1)")
    p.add_argument("--library-sample", type=int, default=64,
                   help="rows per output compared with Elmo.embed_batch (default 64)")
    p.add_argument("--run-timeout", type=float, default=600, help="seconds before a run counts as hung")
    p.add_argument("--workdir", help="where corpus, outputs and logs go (default: a new dir in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the workdir (always kept when the drill fails)")
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in KILLERS]
    if unknown or not args.kinds:
        p.error(f"--kinds: {', '.join(unknown) or 'none given'} (implemented: {', '.join(KILLERS)})")
    if "node" in args.kinds and args.workers < 2:
        p.error("--kinds node needs --workers 2 or more (the job must have a node left)")
    return args


def ray_temp_root(workdir: Path) -> tuple[Path, bool]:
    """A directory for the head's temp dir; AF_UNIX socket paths under it must stay < 108 bytes."""
    candidate = workdir / "ray"
    if len(str(candidate)) <= 40:
        candidate.mkdir()
        return candidate, False
    return Path(tempfile.mkdtemp(prefix="elmo-chaos-ray-", dir="/tmp")), True


def make_runtime(args: argparse.Namespace, temp_root: Path):
    """The single-node RayHead, or with ``--workers N`` a head (no CPUs) plus N worker nodes."""
    if not args.workers:
        return RayHead(temp_root, args.num_cpus)
    from tests.raycluster import Cluster, ray_env

    return Cluster(temp_root, workers=args.workers, head_cpus=0, worker_cpus=args.worker_cpus,
                   object_store_mb=256, env=ray_env(temp_root, keep_aws=True), attempts=HEAD_ATTEMPTS,
                   start_timeout=HEAD_START_TIMEOUT)


def drill(args: argparse.Namespace, workdir: Path) -> bool:
    """The whole drill on a head of our own; returns True when every check passed."""
    kinds = args.kinds
    rng = random.Random(args.seed)
    inputs = write_corpus(workdir / "corpus", args.rows, args.files)
    (workdir / "logs").mkdir()
    temp_root, temp_is_separate = ray_temp_root(workdir)
    head = make_runtime(args, temp_root)
    job: Job | None = None
    try:
        head.start()
        killers = {k: KILLERS[k](head, args.run_timeout, rng) for k in kinds}
        job = Job(inputs, Path(args.model).resolve(), args.rows_per_unit, head.address, head.env, workdir / "logs")
        return run_drill(args, workdir, job, killers, kinds, rng, head)
    finally:
        if job is not None:
            job.stop_drivers()
        head.stop()
        left = head.pids()
        if left:
            logger.error("head processes left behind: %s", sorted(left))
        if temp_is_separate:
            shutil.rmtree(temp_root, ignore_errors=True)


def run_drill(args, workdir: Path, job: Job, killers: dict[str, Killer], kinds: list[str],
              rng: random.Random, head: RayHead) -> bool:
    from elmo_dist import Elmo, read_embeddings

    t0 = time.perf_counter()
    outputs = workdir / "out"
    outputs.mkdir()
    ref_run = run_uninterrupted(job, outputs / "reference", "reference", "reference", 1, args.run_timeout)
    if ref_run.outcome != "finished":
        raise RuntimeError(f"the reference run failed: {ref_run.error} (log: {workdir / 'logs' / 'reference.log'})")
    reference = read_embeddings(str(outputs / "reference")).to_table()
    # The first run on a fresh head also starts its worker pool: time a second one for the kills.
    cal_run = run_uninterrupted(job, outputs / "calibration", "calibration", "calibration", 1, args.run_timeout)
    if cal_run.outcome != "finished":
        raise RuntimeError(f"the calibration run failed: {cal_run.error}")
    window = (KILL_WINDOW[0], max(KILL_WINDOW[0] + 0.1, KILL_WINDOW[1] * cal_run.seconds))
    logger.info("reference: %d rows in %.1f s, calibration run %.1f s; kill times in [%.1f, %.1f] s",
                reference.num_rows, ref_run.seconds, cal_run.seconds, *window)
    elmo = Elmo.from_pretrained(str(job.model))

    runs, checks = [ref_run, cal_run], []
    delivered, k = 0, 0
    max_runs = 10 * args.kills + 10
    while delivered < args.kills and len(runs) < max_runs:
        k += 1
        output = outputs / f"o{k}"
        quota = min(args.kills_per_output, args.kills - delivered)
        out_runs = drill_output(job, output, quota, killers, rng, window, max_runs - len(runs), args.run_timeout)
        runs += out_runs
        delivered += sum(r.delivered for r in out_runs)
        check = check_output(output, reference, elmo, args.library_sample, rng)
        checks.append(check)
        logger.info("%s: %d rows, lost %d, duplicated %d, unexpected %d, extra files %d, diff ref %.2e, "
                    "diff lib %.2e, verify %s%s", output.name, check.rows, check.lost, check.duplicated,
                    check.unexpected, check.extra_files, check.diff_reference, check.diff_library,
                    "ok" if check.verify_ok else "FAILED", f"; problems: {check.problems}" if check.problems else "")
    seconds = time.perf_counter() - t0

    nodes = f", {len(head.workers)} worker node(s)" if getattr(head, "workers", None) is not None else ""
    replaced = [s for k in killers.values() for s in getattr(k, "replace_seconds", [])]
    if replaced:
        nodes += f", {len(replaced)} replaced (max {max(replaced):.0f} s each)"
    print(f"\nray start: {head.start_seconds:.1f} s ({head.address}{nodes}); reference run {ref_run.seconds:.1f} s "
          f"({reference.num_rows} rows), calibration run {cal_run.seconds:.1f} s -> kill times uniform in "
          f"[{window[0]:.1f}, {window[1]:.1f}] s; seed {args.seed}\n")
    print(summary_table(runs, checks, kinds, seconds))
    print()
    print(runs_table(runs))
    errors = [r for r in runs if r.outcome in ("error", "hung")]
    for r in errors:
        print(f"\n{r.output} run {r.index} ({r.kind}): {r.outcome}, rc {r.rc}: {r.error}")
    for c in checks:
        for p in c.problems:
            print(f"\n{c.output}: {p}")
    return not errors and not any(check_failed(c) for c in checks) and delivered >= args.kills


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # tear down on `kill` as on Ctrl-C
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if not sys.platform.startswith("linux"):
        raise SystemExit("the drill uses /proc to find and stop its own processes: Linux only")
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise SystemExit(f"--workdir {workdir} is not empty")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="elmo-chaos-", dir="/tmp"))
    ok = False
    try:
        ok = drill(args, workdir)
    except KeyboardInterrupt:
        logger.warning("interrupted")
    finally:
        if ok and not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            logger.info("workdir kept: %s", workdir)
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
