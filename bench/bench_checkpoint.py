"""Resumption: Ray Data's ``CheckpointConfig(id_column=...)`` vs elmo-dist's per-unit completion records.

Builds a synthetic Parquet corpus (``id``, ``text``; default 200k rows in 20 files) and measures, with a
cheap hash-based fake embedding instead of the model (so the numbers are about resumption, not ELMo):

(a) Ray Data: ``read_parquet -> map_batches(fake embed, actor pool) -> write_parquet`` with
    ``DataContext.checkpoint_config = CheckpointConfig(id_column="id", checkpoint_path=...)``:
    first run; a resume of the finished job (the checkpoint load is timed from Ray's own log line);
    a run killed (SIGKILL) after half its checkpoint files are committed, then its resume; the
    rows the resume reads and passes on; driver RSS and worker PSS during the resume; a resume of a
    finished job on 2 CPUs; the default ``delete_checkpoint_on_success=True`` run twice; and a
    resume of a finished job over a larger corpus (``--big-rows`` ids) for memory.
(b) elmo-dist: ``list_inputs``/``plan_units`` from footers; ``JobState.done_units()`` and
    ``records()`` over 100 / 1,000 / 10,000 completion records; a resume of a finished job (no Ray);
    the pipeline's shape (``from_items(units) -> map(read) -> map_batches(actor: fake embed + write
    shard + record)``) run whole, killed after half its records, resumed, and run on 2 CPUs.

Every Ray run is a child process with its own ``ray.init(num_cpus=...)`` in a new session, so a kill
is a real kill (the child's process group) and memory is sampled per run. Exactly-once: every input
id appears exactly once in the output (for elmo-dist: in the shards named by completion records).
Prints a markdown table; medians where a scenario is repeated. Most of the time is fixed Ray cost
(``ray.init`` and each Ray Data execution), so it depends on the machine's load more than on the
sizes: 8.5 minutes on 2 cores at load 3-10, 15 minutes at load 11-20 (``ray.init`` alone 6 s vs
15-27 s per child); ``--quick`` shrinks the data, not the fixed costs. Python heap (tracemalloc)
figures leave out Arrow's buffers.

    python bench/bench_checkpoint.py
    python bench/bench_checkpoint.py --quick
    python bench/bench_checkpoint.py --footer-check     # also: how much of a resume is read_parquet's footer actors
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

DIM = 32  # fake embedding width
WORDS = np.array("the of and to in a is that for it as was with be by on not he this are or his from at "
                 "which but have an they you were her she there been one all we their has would when if "
                 "so no will more can out up who what about into them than some could time".split())


# ---- corpus and fake embedding ---------------------------------------------------------------

def make_corpus(path: str, rows: int, files: int, row_group: int, words: int = 16, seed: int = 0) -> None:
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = rows // files
    for f in range(files):
        ids = [f"f{f:03d}-r{i:07d}" for i in range(per)]
        toks = WORDS[rng.integers(0, len(WORDS), size=(per, words))]
        text = [" ".join(t) for t in toks]
        pq.write_table(pa.table({"id": ids, "text": text}), os.path.join(path, f"part-{f:03d}.parquet"),
                       row_group_size=row_group)


def fake_vectors(texts: list[str]) -> pa.FixedSizeListArray:
    raw = b"".join(hashlib.blake2b(t.encode(), digest_size=DIM).digest() for t in texts)
    v = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) / 255.0
    return pa.FixedSizeListArray.from_arrays(pa.array(v), DIM)


class FakeEmbed:
    """Ray Data UDF (actor): id + hash vector per row."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.table({"id": batch["id"], "vec": fake_vectors(batch["text"].to_pylist())})


def input_ids(corpus: str) -> list[str]:
    return pq.read_table(corpus, columns=["id"])["id"].to_pylist()


def check_once(ids: list[str], expected: int) -> dict:
    uniq = len(set(ids))
    return {"out_rows": len(ids), "unique": uniq, "expected": expected,
            "exactly_once": len(ids) == uniq == expected}


# ---- memory sampling (children) ----------------------------------------------------------------

def _status(pid: int | str, key: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pss(pid: str) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def session_pids(sid: int) -> list[str]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.getsid(int(p)) == sid:
                    out.append(p)
            except OSError:
                pass
    return out


class Sampler(threading.Thread):
    """Peak driver RSS, peak summed PSS of this session's Ray workers (``ray::...``), biggest worker."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.sid, self.me = period, os.getsid(0), str(os.getpid())
        self.stop_ev = threading.Event()
        self.reset()

    def reset(self) -> None:
        self.driver = self.workers = self.biggest = 0.0
        self.biggest_name = ""

    def sample(self) -> None:
        self.driver = max(self.driver, _status(self.me, "VmRSS"))
        tot = 0.0
        for p in session_pids(self.sid):
            if p == self.me:
                continue
            cmd = _cmdline(p)
            if cmd.startswith("ray::"):
                m = _pss(p)
                tot += m
                if m > self.biggest:
                    self.biggest, self.biggest_name = m, cmd.split()[0]
        self.workers = max(self.workers, tot)

    def run(self) -> None:
        while not self.stop_ev.is_set():
            self.sample()
            time.sleep(self.period)

    def peaks(self) -> dict:
        return {"driver_mb": round(self.driver), "workers_mb": round(self.workers),
                "biggest_worker_mb": round(self.biggest), "biggest_worker": self.biggest_name}


def init_ray(cpus: int) -> None:
    """A new local runtime (address="local": never join a cluster someone else started on this machine)."""
    import ray

    for attempt in range(3):  # raylet start-up can time out on a loaded 2-core machine
        try:
            ray.init(address="local", num_cpus=cpus, logging_level=logging.WARNING, include_dashboard=False,
                     object_store_memory=2 << 30)
            return
        except Exception as e:  # noqa: BLE001
            print(f"ray.init failed ({e}); retrying", file=sys.stderr, flush=True)
            ray.shutdown()
    raise RuntimeError("ray.init failed 3 times")


# ---- child: Ray Data CheckpointConfig --------------------------------------------------------

class _LogGrab(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _op_rows(stats: str) -> dict[str, int]:
    """'Total output num rows' per operator from a Dataset stats string."""
    out, name = {}, None
    for line in stats.splitlines():
        m = re.match(r"Operator \d+ (.+?): ", line)
        if m:
            name = m.group(1)
        m = re.search(r"Total output num rows: (\d+)", line)
        if m and name:
            out[name] = int(m.group(1))
    return out


def child_ray(spec: dict) -> None:
    import ray
    from ray.data import ActorPoolStrategy
    from ray.data.checkpoint import CheckpointConfig
    from ray.data.context import DataContext

    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    init_ray(spec["cpus"])
    emit({"step": "init", "seconds": round(time.perf_counter() - t0, 1)})
    def snapshots() -> None:  # what the cluster has free, for telling a hang from a slow run
        t0 = time.perf_counter()
        while True:
            time.sleep(10)
            emit({"step": "snapshot", "t": round(time.perf_counter() - t0),
                  "cpu_free": ray.available_resources().get("CPU", 0.0)})

    threading.Thread(target=snapshots, daemon=True).start()
    grab = _LogGrab()
    lg = logging.getLogger("ray.data.checkpoint.checkpoint_filter")
    lg.addHandler(grab)
    lg.setLevel(logging.INFO)
    for step in spec["steps"]:
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = bool(step.get("progress"))  # off a TTY: periodic progress lines in the log
        ctx.target_max_block_size = step["block_bytes"]
        if step.get("footer_actors"):
            os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = str(step["footer_actors"])
        else:
            os.environ.pop("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", None)
        ctx.checkpoint_config = CheckpointConfig(id_column="id", checkpoint_path=step["ckpt"],
                                                 delete_checkpoint_on_success=step["delete"])
        grab.lines.clear()
        sampler.reset()
        before = set(os.listdir(step["out"])) if os.path.isdir(step["out"]) else set()
        t0 = time.perf_counter()
        ds = ray.data.read_parquet(step["corpus"]).map_batches(
            FakeEmbed, batch_format="pyarrow", batch_size=4096,
            compute=ActorPoolStrategy(size=step["actors"]), num_cpus=1)
        ds.write_parquet(step["out"])
        secs = time.perf_counter() - t0
        sampler.sample()
        rows = _op_rows(ds._write_ds.stats())
        read = next((v for k, v in rows.items() if k.startswith("ReadFiles") and "->" not in k), None)
        passed = rows.get("CheckpointFilter", 0 if "CheckpointFilter" in ds._write_ds.stats() else None)
        load = None
        for line in grab.lines:
            m = re.search(r"Checkpoint loaded .* in ([\d.]+) seconds\. SizeBytes = (\d+)", line)
            if m:
                load = {"seconds": float(m.group(1)), "ids_bytes": int(m.group(2))}
        new = sorted(set(os.listdir(step["out"])) - before)
        written = sum(pq.ParquetFile(os.path.join(step["out"], f)).metadata.num_rows for f in new)
        res = {"step": step["label"], "seconds": round(secs, 2), "checkpoint_load": load,
               "rows_read": read, "rows_after_filter": passed, "rows_written": written,
               "ckpt_files": len(glob.glob(os.path.join(step["ckpt"], "*.parquet"))), **sampler.peaks()}
        if step.get("check"):
            ids = pq.read_table(step["out"], columns=["id"])["id"].to_pylist()
            res.update(check_once(ids, step["check"]))
        emit(res)
    sampler.stop_ev.set()
    ray.shutdown()


# ---- child: elmo-dist units ------------------------------------------------------------------

class UnitWriter:
    """The shape of pipeline.EmbedWriter with a fake embedding: one unit per call, shards then record."""

    def __init__(self, output: str, schema_ipc: bytes):
        from elmo_dist.checkpoint import JobState

        self.output = output
        self.schema = pa.ipc.read_schema(pa.py_buffer(schema_ipc))
        self.state = JobState(output)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from elmo_dist.stages.write import write_unit

        out = []
        for row in batch.to_pylist():
            t = pa.ipc.open_stream(row["prepared"]).read_all()
            t = t.append_column("vec", fake_vectors(t["text"].to_pylist()))
            files = write_unit(t, self.output, row["unit_id"], self.schema)
            self.state.record(row["unit_id"], files, {"rows": t.num_rows})
            out.append({"unit_id": row["unit_id"], "rows": t.num_rows})
        return pa.Table.from_pylist(out)


def _text() -> "object":
    from elmo_dist.config import TextSettings

    return TextSettings(text_column="text", id_column="id")


def prepare_row(row: dict) -> dict:
    """The shape of pipeline.prepare_unit: read one unit, ship it as one row of Arrow IPC bytes."""
    from elmo_dist.stages.read import Unit, read_unit

    table = read_unit(Unit.from_dict(row), _text())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return {**row, "prepared": sink.getvalue().to_pybytes()}


def unit_config(corpus: str, out: str, rows_per_unit: int):
    from elmo_dist.config import JobConfig

    return JobConfig(inputs=[corpus], output=out, text=_text(), run={"rows_per_unit": rows_per_unit})


def plan_and_skip(corpus: str, out: str, rows_per_unit: int) -> tuple:
    """What pipeline.run does before Ray: list + check + plan, begin (or check) the job, skip done units."""
    from elmo_dist.checkpoint import JobState
    from elmo_dist.stages.read import check_schema, list_inputs, plan_units

    cfg = unit_config(corpus, out, rows_per_unit)
    state = JobState(out)
    state.check_writable()
    files = list_inputs(cfg.inputs)
    check_schema(files, cfg.text)
    units = plan_units(files, rows_per_unit)
    state.begin(cfg, "fake-model", [u.unit_id for u in units])
    done = state.done_units()
    return cfg, state, units, [u for u in units if u.unit_id not in done]


def child_units(spec: dict) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    from elmo_dist.pipeline import actor_plan

    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    init_ray(spec["cpus"])
    emit({"step": "init", "seconds": round(time.perf_counter() - t0, 1)})
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("_row", pa.int64()),
                        ("vec", pa.list_(pa.float32(), DIM))])
    for step in spec["steps"]:
        sampler.reset()
        t0 = time.perf_counter()
        cfg, state, units, pending = plan_and_skip(step["corpus"], step["out"], step["rows_per_unit"])
        t_plan = time.perf_counter() - t0
        plan = actor_plan(cfg, max(1, len(pending)))
        n = 0
        if pending:
            ray.data.DataContext.get_current().enable_progress_bars = False
            ds = ray.data.from_items([u.to_dict() for u in pending], override_num_blocks=len(pending))
            ds = ds.map(prepare_row, num_cpus=1)
            ds = ds.map_batches(UnitWriter, batch_size=1, batch_format="pyarrow",
                                compute=ActorPoolStrategy(size=plan["actors"]), num_cpus=plan["num_cpus"],
                                fn_constructor_kwargs={"output": step["out"],
                                                       "schema_ipc": schema.serialize().to_pybytes()})
            for _ in ds.iter_rows():
                n += 1
        secs = time.perf_counter() - t0
        sampler.sample()
        res = {"step": step["label"], "seconds": round(secs, 2), "plan_seconds": round(t_plan, 3),
               "units": len(units), "units_run": n, "rows_read": sum(u.num_rows for u in pending),
               "actors": plan["actors"], **sampler.peaks()}
        if step.get("check"):
            res.update(check_units(step["out"], step["check"]))
        emit(res)
    sampler.stop_ev.set()
    ray.shutdown()


def check_units(out: str, expected: int) -> dict:
    from elmo_dist.output import current_files

    files = current_files(out)
    ids = pq.read_table([os.path.join(out, f) for f in files], columns=["id"])["id"].to_pylist()
    on_disk = {os.path.basename(p) for p in glob.glob(os.path.join(out, "*"))
               if os.path.isfile(p)}
    orphans = sorted(f for f in on_disk - set(files))
    return {**check_once(ids, expected), "unrecorded_files": len(orphans)}


# ---- parent: orchestration ---------------------------------------------------------------------

def emit(obj: dict) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def run_child(kind: str, spec: dict, log: str, kill_when=None, timeout: float | None = None,
              retry: bool = True) -> dict:
    """Run a child in a new session; SIGKILL its process group when ``kill_when()`` or on timeout.

    A child that dies on its own (on a shared machine, someone's ``ray stop`` ends every raylet) is
    run once more, its directories cleared first.
    """
    res = _run_child(kind, spec, log, kill_when, timeout)
    if retry and res["why"] is None and res["rc"] != 0:
        print(f"    {kind}: child died (rc {res['rc']}); running it again from scratch", file=sys.stderr, flush=True)
        for step in spec["steps"]:
            for key in ("out", "ckpt"):
                if step.get(key) and step.get("fresh"):
                    shutil.rmtree(step[key], ignore_errors=True)
        res = _run_child(kind, spec, log, kill_when, timeout)
    return res


def _run_child(kind: str, spec: dict, log: str, kill_when=None, timeout: float | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(spec)]
    t0 = time.perf_counter()
    with open(log, "a") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        why = None
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                why = "killed"
            elif timeout is not None and time.perf_counter() - t0 > timeout:
                why = "timeout"
            if why:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        proc.wait()
        reader.join(5)
    # Ray processes that left the process group but kept the session: end them by pid.
    for p in session_pids(proc.pid):
        try:
            os.kill(int(p), signal.SIGKILL)
        except OSError:
            pass
    results = [json.loads(x[7:]) for x in lines if x.startswith("RESULT ")]
    with open(os.path.join(os.path.dirname(log), "results.jsonl"), "a") as fh:
        fh.write(json.dumps({"kind": kind, "spec": spec, "results": results, "why": why,
                             "rc": proc.returncode}) + "\n")
    for r in results:
        print(f"    {kind}: {json.dumps(r)}", file=sys.stderr, flush=True)
    return {"results": results, "why": why, "rc": proc.returncode, "wall": round(time.perf_counter() - t0, 1)}


def committed(ckpt: str) -> int:
    return len([f for f in glob.glob(os.path.join(ckpt, "*.parquet")) if ".pending." not in f])


def records(out: str) -> int:
    return len(glob.glob(os.path.join(out, "_job", "units", "*.json")))


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Median seconds over ``repeat`` calls, peak Python heap (MB) of one call, its result."""
    secs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        secs.append(time.perf_counter() - t0)
    tracemalloc.start()
    res = fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(secs), peak, res


def bench_records(work: str, ns: list[int], repeat: int) -> list[dict]:
    from elmo_dist.checkpoint import JobState

    stats = {"rows": 20000, "sentences": 61234, "tokens": 1234567, "padded_tokens": 1400000,
             "chunked_sentences": 3, "invalid_utf8": 0, "skipped_empty": 2, "prepare_seconds": 12.3,
             "embed_seconds": 456.7, "write_seconds": 1.2, "device": "cuda", "gpu_ids": [0], "files": 1}
    rows = []
    for n in ns:
        out = os.path.join(work, f"records-{n}")
        st = JobState(out)
        t0 = time.perf_counter()
        for i in range(n):
            uid = hashlib.sha256(str(i).encode()).hexdigest()[:20]
            st.record(uid, [f"part-{uid}-0000.parquet"], stats)
        t_write = time.perf_counter() - t0
        s_done, m_done, done = timed(st.done_units, repeat)
        s_rec, m_rec, _ = timed(st.records, max(1, repeat // 2))
        assert len(done) == n
        rows.append({"n": n, "write_all_s": t_write, "done_units_s": s_done, "done_units_mb": m_done,
                     "records_s": s_rec, "records_mb": m_rec})
    return rows


def block_bytes(corpus: str) -> int:
    """About one file's uncompressed bytes, for ``target_max_block_size``. V2 read_parquet packs row
    groups into read tasks of up to 128 MiB (RAY_DATA_PARQUET_BIN_PACKING_BYTES) and cuts their output
    into blocks of up to target_max_block_size (128 MiB); each block is one write task and one
    checkpoint file. With the defaults this corpus is one block: one checkpoint file for everything."""
    md = pq.ParquetFile(sorted(glob.glob(os.path.join(corpus, "*.parquet")))[0]).metadata
    size = sum(md.row_group(g).column(c).total_uncompressed_size
               for g in range(md.num_row_groups) for c in range(md.num_columns))
    return int(size * 1.1)


def fmt_s(x) -> str:
    if not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.3f}" if x < 1 else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--big-rows", type=int, default=500_000, help="ids for the memory part (0: skip)")
    ap.add_argument("--rows-per-unit", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="repeats of the in-process timings")
    ap.add_argument("--ray-repeat", type=int, default=2, help="repeats of the Ray Data resume of a finished job")
    ap.add_argument("--timeout-2cpu", type=float, default=100.0)
    ap.add_argument("--quick", action="store_true",
                    help="--rows 50000 --files 10 --big-rows 200000 --ray-repeat 1 (a smoke run)")
    ap.add_argument("--footer-check", action="store_true",
                    help="also resume with RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=2 (read_parquet starts 32 by default)")
    ap.add_argument("--workdir", default=None, help="default: a temp dir, removed at the end")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, spec = args.child
        {"ray": child_ray, "units": child_units}[kind](json.loads(spec))
        return
    if args.quick:
        args.rows, args.files, args.big_rows, args.ray_repeat = 50_000, 10, 200_000, 1

    import ray

    from elmo_dist.stages.read import list_inputs, plan_units

    work = args.workdir or tempfile.mkdtemp(prefix="bench-ckpt-")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "children.log")
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    d = lambda name: os.path.join(work, name)  # noqa: E731
    rows_out: list[tuple] = []  # approach, scenario, seconds, driver MB, workers MB, re-read, once, notes
    footnotes: list[str] = []

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def by_step(res: dict) -> dict:
        return {r["step"]: r for r in res["results"]}

    def row(a: str, scenario: str, r: dict, reread: str, note: str) -> None:
        rows_out.append((a, scenario, r["seconds"], r["driver_mb"], r["workers_mb"], reread,
                         r.get("exactly_once"), note))

    say(f"workdir {work}; children's stderr in {log}")
    corpus = d("corpus")
    per_file = args.rows // args.files
    make_corpus(corpus, args.rows, args.files, row_group=args.rows_per_unit // 2)
    n_ids = len(input_ids(corpus))
    small = d("corpus-small")
    make_corpus(small, 2 * per_file, 2, row_group=args.rows_per_unit // 2, seed=1)
    block = block_bytes(corpus)
    RC = "Ray CheckpointConfig"

    # ---- (a) Ray Data CheckpointConfig ------------------------------------------------------
    base = {"corpus": corpus, "block_bytes": block, "actors": 2, "delete": False}
    fin = {**base, "out": d("r1-out"), "ckpt": d("r1-ckpt")}
    steps = [{**fin, "label": "first", "check": n_ids, "fresh": True}]
    steps += [{**fin, "label": f"resume-finished-{i}", "check": n_ids} for i in range(args.ray_repeat)]
    if args.footer_check:
        steps += [{**fin, "label": "resume-finished-footer2", "footer_actors": 2}]
    steps += [{**base, "corpus": small, "label": f"default-{i}", "out": d("r5-out"), "ckpt": d("r5-ckpt"),
               "delete": True, "check": 2 * per_file, "fresh": True} for i in range(2)]
    say("ray (4 CPUs): first run; resumes of the finished job; default delete_checkpoint_on_success run twice")
    ra = by_step(run_child("ray", {"cpus": 4, "steps": steps}, log))
    init_s = ra.get("init", {}).get("seconds")
    n_tasks = args.files
    if "first" in ra:
        r = ra["first"]
        n_tasks = r["ckpt_files"] or args.files
        row(RC, "first run (4 CPUs)", r, "-", f"{r['ckpt_files']} write tasks = checkpoint files")
    fins = [ra[k] for k in ra if k.startswith("resume-finished-") and "footer" not in k]
    if fins:
        loads = [r["checkpoint_load"]["seconds"] for r in fins if r["checkpoint_load"]]
        ids_mb = fins[0]["checkpoint_load"]["ids_bytes"] / 2**20 if fins[0]["checkpoint_load"] else float("nan")
        rows_out.append((RC, f"resume of finished job (median of {len(fins)})",
                         statistics.median(r["seconds"] for r in fins), max(r["driver_mb"] for r in fins),
                         max(r["workers_mb"] for r in fins), f"yes ({fins[0]['rows_read']} rows)",
                         fins[-1].get("exactly_once"),
                         f"checkpoint load {statistics.median(loads) if loads else float('nan'):.1f}s; "
                         f"ids array {ids_mb:.1f} MB; {fins[0]['rows_written']} rows written"))
    if "resume-finished-footer2" in ra:
        r = ra["resume-finished-footer2"]
        row(RC, "same, RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=2 (default 32)", r, f"yes ({r['rows_read']} rows)",
            f"checkpoint load {(r['checkpoint_load'] or {}).get('seconds')}s")
    if "default-1" in ra:
        r = ra["default-1"]
        row(RC, "default config (delete on success): rerun of a finished job", r, f"yes ({r['rows_read']} rows)",
            f"no checkpoint left: {r['rows_written']} rows written again; output holds {r['out_rows']} rows "
            f"for {2 * per_file} ids")

    say(f"ray (4 CPUs): run killed (SIGKILL) once {n_tasks // 2} of {n_tasks} checkpoint files are committed")
    rb = run_child("ray", {"cpus": 4, "steps": [{**base, "label": "interrupted", "out": d("r2-out"),
                                                  "ckpt": d("r2-ckpt"), "fresh": True}]},
                   log, kill_when=lambda: committed(d("r2-ckpt")) >= n_tasks // 2, timeout=900)
    state = (f"{committed(d('r2-ckpt'))} committed + {len(glob.glob(d('r2-ckpt') + '/*.pending.parquet'))} pending "
             f"checkpoint files, {len(glob.glob(d('r2-out') + '/*.parquet'))} data files")
    say(f"ray: {rb['why']}: {state}")

    steps = [{**base, "label": "resume", "out": d("r2-out"), "ckpt": d("r2-ckpt"), "check": n_ids}]
    if args.big_rows:
        big = d("corpus-big")
        make_corpus(big, args.big_rows, args.files, row_group=max(1, args.big_rows // args.files // 2),
                    words=2, seed=2)
        bb = {"corpus": big, "block_bytes": block_bytes(big), "actors": 2, "out": d("rb-out"),
              "ckpt": d("rb-ckpt"), "delete": False}
        steps += [{**bb, "label": "big-first", "fresh": True}, {**bb, "label": "big-resume", "check": args.big_rows}]
    say("ray (4 CPUs): resume of the killed run" + (f"; {args.big_rows:,}-id job run, then resumed" if args.big_rows else ""))
    rc = by_step(run_child("ray", {"cpus": 4, "steps": steps}, log, retry=False))
    if "resume" in rc:
        r = rc["resume"]
        row(RC, "resume after kill at ~half (4 CPUs)", r, f"yes ({r['rows_read']} rows)",
            f"killed run left {state}; {r['rows_after_filter']} rows pass the filter, {r['rows_written']} written; "
            f"checkpoint load {(r['checkpoint_load'] or {}).get('seconds')}s")
    if "big-resume" in rc:
        r = rc["big-resume"]
        ld = r["checkpoint_load"] or {}
        row(RC, f"resume of finished job, {args.big_rows:,} ids", r, f"yes ({r['rows_read']} rows)",
            f"checkpoint load {ld.get('seconds')}s; ids array {ld.get('ids_bytes', 0) / 2**20:.0f} MB; "
            f"biggest worker {r['biggest_worker']} {r['biggest_worker_mb']} MB; "
            f"(first run {rc.get('big-first', {}).get('seconds')}s, {rc.get('big-first', {}).get('workers_mb')} MB workers)")

    say("ray (2 CPUs): resume of the finished job, embed pool of 1 actor (as actor_plan sizes it)")
    log_at = os.path.getsize(log)
    rd = run_child("ray", {"cpus": 2, "steps": [{**fin, "actors": 1, "label": "resume-2cpu", "progress": True}]},
                   log, timeout=args.timeout_2cpu)
    with open(log, errors="replace") as fh:
        fh.seek(log_at)
        progress = [m.group(1) for m in re.finditer(r"logging_progress\.py:\d+ -- (.+)", fh.read())]
    starts = [i for i, x in enumerate(progress) if x.startswith("Total Progress")]
    last = starts[-1] if starts else len(progress)
    stuck = [x for x in progress[last:] if x.strip() and not x.startswith("=")]
    got = by_step(rd)
    if "resume-2cpu" in got:
        r = got["resume-2cpu"]
        row(RC, "resume of finished job, 2 CPUs", r, f"yes ({r['rows_read']} rows)", "completed")
    else:
        snaps = [r for r in rd["results"] if r["step"] == "snapshot"]
        free = f"; free CPUs at the end: {snaps[-1]['cpu_free']}" if snaps else ""
        rows_out.append((RC, "resume of finished job, 2 CPUs", f">{args.timeout_2cpu:.0f}", "-", "-", "-", "-",
                         f"did not finish: {rd['why']}{free}"))

    # ---- (b) per-unit completion records ----------------------------------------------------
    UR = "unit records"
    say("units: planning from footers; listing and reading completion records")
    n_units = len(plan_units(list_inputs([corpus]), args.rows_per_unit))
    for c in [corpus] + ([d("corpus-big")] if args.big_rows else []):
        s, m, units = timed(lambda c=c: plan_units(list_inputs([c]), args.rows_per_unit), args.repeat)
        rows_out.append((UR, f"list_inputs + plan_units: {len(glob.glob(c + '/*.parquet'))} files, "
                         f"{sum(u.num_rows for u in units):,} rows -> {len(units)} units", s, f"{m:.2f} (heap)", "-",
                         "footers only", "-", f"median of {args.repeat}"))
    for r in bench_records(work, [100, 1000, 10_000], args.repeat):
        rows_out.append((UR, f"done_units(): list {r['n']:,} records", r["done_units_s"],
                         f"{r['done_units_mb']:.2f} (heap)", "-", "no", "-",
                         f"median of {args.repeat}; records() reads them all: {r['records_s']:.2f}s, "
                         f"{r['records_mb']:.1f} MB heap; writing {r['n']:,}: {r['write_all_s']:.1f}s"))

    cfgu = {"corpus": corpus, "rows_per_unit": args.rows_per_unit}
    say(f"units (4 CPUs): run killed (SIGKILL) once {n_units // 2} of {n_units} completion records exist")
    ue = run_child("units", {"cpus": 4, "steps": [{**cfgu, "label": "interrupted", "out": d("u2-out"), "fresh": True}]},
                   log, kill_when=lambda: records(d("u2-out")) >= n_units // 2, timeout=900)
    ustate = f"{records(d('u2-out'))} records, {len(glob.glob(d('u2-out') + '/*.parquet'))} shards"
    say(f"units: {ue['why']}: {ustate}")
    say("units (4 CPUs): resume of the killed run; a whole run")
    uf = by_step(run_child("units", {"cpus": 4, "steps": [
        {**cfgu, "label": "resume", "out": d("u2-out"), "check": n_ids},
        {**cfgu, "label": "first", "out": d("u1-out"), "check": n_ids, "fresh": True}]}, log, retry=False))
    if "first" in uf:
        r = uf["first"]
        row(UR, f"first run (4 CPUs, {r['actors']} actors)", r, "-", f"{r['units']} units")

    def resume_finished() -> int:
        _, st, _, pending = plan_and_skip(corpus, d("u1-out"), args.rows_per_unit)
        assert not pending
        return len(st.records())  # pipeline.run summarizes the records before returning

    if "first" in uf:
        s, m, _ = timed(resume_finished, args.repeat)
        once = check_units(d("u1-out"), n_ids)
        rows_out.append((UR, "resume of finished job", s, f"{m:.1f} (heap)", "-", "no (footers only)",
                         once["exactly_once"], f"median of {args.repeat}; list + plan + begin + done_units + "
                         "records(); Ray is not started"))
    if "resume" in uf:
        r = uf["resume"]
        row(UR, "resume after kill at ~half (4 CPUs)", r, f"pending units only ({r['rows_read']} rows)",
            f"killed run left {ustate}; {r['units_run']} of {r['units']} units run; plan + skip "
            f"{r['plan_seconds']}s; {r['unrecorded_files']} unrecorded files after")
    say("units (2 CPUs): a whole run, 1 actor")
    ug = by_step(run_child("units", {"cpus": 2, "steps": [
        {**cfgu, "label": "first-2cpu", "out": d("u4-out"), "check": n_ids, "fresh": True}]}, log,
        timeout=args.timeout_2cpu + 300))
    if "first-2cpu" in ug:
        r = ug["first-2cpu"]
        row(UR, f"first run, 2 CPUs ({r['actors']} actor)", r, "-", "completed")
    else:
        rows_out.append((UR, "first run, 2 CPUs", "-", "-", "-", "-", "-", "did not finish"))

    if stuck:
        footnotes.append("Ray Data's last progress report before the 2-CPU resume was killed:\n\n    "
                         + "\n    ".join(stuck))
    # ---- table ------------------------------------------------------------------------------
    load1 = os.getloadavg()
    print(f"\nCorpus: {args.rows:,} rows (`id`, `text`) in {args.files} files, {args.rows_per_unit // 2:,}-row row "
          f"groups; fake embedding (blake2b -> {DIM} floats). ray {ray.__version__}, pyarrow {pa.__version__}. "
          f"Each Ray run: a child process with ray.init(num_cpus=4 or 2) (~{init_s}s, not counted). Ray Data: "
          f"embed pool of 2 actors x 1 CPU, target_max_block_size {block / 2**20:.1f} MiB. unit records: "
          f"rows_per_unit {args.rows_per_unit:,}, actors as pipeline.actor_plan sizes them.")
    print(f"Load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, at end "
          f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} ({os.cpu_count()} CPUs). Total {time.perf_counter() - t_all:.0f}s. "
          "driver MB: peak RSS (or peak Python heap where marked); workers MB: peak summed PSS of the run's "
          "ray:: processes.\n")
    print("| approach | scenario | seconds | driver MB | workers MB | input re-read? | exactly-once? | notes |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for a, s, sec, dm, wm, rr, once, note in rows_out:
        once = {True: "yes", False: "**no**", None: "-"}.get(once, once)
        print(f"| {a} | {s} | {fmt_s(sec)} | {dm} | {wm} | {rr} | {once} | {note} |")
    for note in footnotes:
        print("\n" + note)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
