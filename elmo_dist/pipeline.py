"""The corpus job, and the only module that wires Ray.

    take the output's lease (one driver per output)
      -> list inputs + check schemas and null ids (driver, before any work)
      -> plan work units, skip the ones already done (checkpoint: valid records only)
      -> per unit, in an actor pool (the biLM loaded once per actor; GPU when the cluster has one):
         read + prepare (tokenize, split, chunk) overlapped with the previous unit's embedding,
         embed, write the shards -> completion record
      -> check every planned unit has a valid record (else fail, naming what is missing)
      -> summary (rows, sentences, tokens, tokens/s, padding, time per stage) in _job/stats.json

A unit travels to its actor as one row (its description: file, row groups, size, version), so Ray
Data never splits or merges a unit: each unit is read, embedded and written whole by one actor
call, and its completion record is written only after its shards.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import socket
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from elmo_dist import schema as S
from elmo_dist import storage
from elmo_dist.checkpoint import JOB_DIR, JobState
from elmo_dist.config import ConfigError, JobConfig, TextSettings
from elmo_dist.errors import ElmoDistError
from elmo_dist.lease import Lease
from elmo_dist.model.files import load_frequencies
from elmo_dist.model.fingerprint import model_fingerprint, model_summary
from elmo_dist.output import OutputError
from elmo_dist.paths import resolve_model
from elmo_dist.stages.read import (InputError, InputFile, Unit, check_output_outside_inputs, check_schema,
                                   bytes_per_unit_for, list_inputs, plan_units, read_unit)


class IncompleteJobError(OutputError):
    """The job ended without a valid completion record for every planned unit."""

logger = logging.getLogger(__name__)


# ---- stage adapters (plain functions/classes; Ray only calls them) ----------------------------

def _call(fn, *args):
    return fn(*args)


class _NodeTasks:
    """``submit(fn, *args) -> Future`` as Ray tasks on this node that reserve no CPU: the actor that
    submits them reserved the node's CPUs they run on (``actor_plan``), so they never wait for a CPU
    another actor holds. Ray's worker processes are reused, and with them each one's tokenizer."""

    def __init__(self, node_id: str):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._task = ray.remote(num_cpus=0, max_retries=2, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id, soft=True))(_call)

    def submit(self, fn, *args) -> Future:
        return self._task.remote(fn, *args).future()


def prepare_unit(row: dict[str, Any], text: TextSettings, pool: Executor | _NodeTasks | None = None,
                 parts: int = 1) -> tuple[pa.Table, dict[str, Any]]:
    """Read and prepare one unit (a plain function: the actor calls it, tests call it directly);
    with a ``pool`` (processes, or Ray tasks in the job), in ``parts`` row slices at once
    (``stages.prepare.prepare_split``)."""
    from elmo_dist.stages.prepare import prepare_split

    t0 = time.perf_counter()
    table, stats = prepare_split(read_unit(Unit.from_dict(row), text), text, pool, parts)
    stats["prepare_seconds"] = time.perf_counter() - t0
    return table, stats


class EmbedWriter:
    """Actor: reads, prepares, embeds and writes one unit per call, then writes its completion record.

    Two calls run at once (``max_concurrent_calls_per_actor=2``): while one unit is embedded (torch,
    which releases the GIL, on all the actor's threads), the next one is read and tokenized (Python)
    on the side, so tokenizing overlaps the model instead of running between units. Two locks keep
    one unit in the model at a time (its threads are never oversubscribed) and one unit in the
    tokenizer at a time (the sentence splitters and Moses tokenizer are not thread-safe).

    Args:
        cfg: the job's config (model, embedding settings, run settings).
        metadata: what every shard's Parquet metadata records (``output_metadata``).
        actor: this actor's resources (``actor_plan``): num_gpus, threads.
        job_dir, subdir: where records and shards go, relative to ``cfg.output``.
    """

    def __init__(self, cfg: JobConfig, metadata: dict[str, Any], actor: dict[str, Any],
                 job_dir: str = JOB_DIR, subdir: str = "", s3: storage.S3Settings | None = None):
        from elmo_dist.stages.embed import Embedder, pick_device

        import ray

        if s3:  # before any filesystem is made: the driver's S3 settings where the node has none
            added = s3.apply()
            if added:
                logger.info("using the driver's S3 settings on this node: %s", ", ".join(sorted(added)))

        from elmo_dist.stages.embed import DeviceError

        try:
            self.device = pick_device(actor["num_gpus"], strict=cfg.run.device == "gpu")
        except DeviceError as e:  # raised from the first call: a task error reaches the driver as itself
            self._unusable: DeviceError | None = e
            return
        self._unusable = None
        self.gpu_ids = [int(g) if str(g).isdigit() else g for g in ray.get_gpu_ids()]
        self.embedder = Embedder(cfg.model, cfg.embedding, token_budget=cfg.run.token_budget,
                                 compute_dtype=cfg.run.compute_dtype, device=self.device, threads=actor["threads"])
        if self.embedder.elmo.fingerprint != metadata["model"]["fingerprint"]:
            raise RuntimeError(f"model {storage.redact(cfg.model)} changed while the job was starting "
                               f"({self.embedder.elmo.fingerprint} != {metadata['model']['fingerprint']})")
        self.schema = S.output_schema(self.embedder.dim, cfg.embedding.dtype, cfg.embedding.token_embeddings,
                                      self.embedder.token_layers, metadata)
        self.output, self.subdir = cfg.output, subdir
        self.state = JobState(cfg.output, job_dir)
        ctx = ray.get_runtime_context()
        self.node = {"node_id": ctx.get_node_id(), "host": socket.gethostname(), "pid": os.getpid(),
                     "device": self.device, "gpu_ids": self.gpu_ids}
        self.text = cfg.text
        self.prepare_parts = actor.get("prepare_processes", 0)
        self.pool = _NodeTasks(ctx.get_node_id()) if self.prepare_parts >= 2 else None
        self._model_lock = threading.Lock()
        self._prepare_lock = threading.Lock()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from elmo_dist.stages.write import write_unit

        if self._unusable is not None:
            raise self._unusable
        out = []
        for row in batch.to_pylist():
            t_start = time.time()
            with self._prepare_lock:  # overlaps the other call's embedding
                table, stats = prepare_unit(row, self.text, self.pool, self.prepare_parts)
            with self._model_lock:
                embedded, estats = self.embedder(table)
            t0 = time.perf_counter()
            files = write_unit(embedded, self.output, row["unit_id"], self.schema, subdir=self.subdir)
            self.state.write_unit_moments(row["unit_id"], unit_moments(embedded).to_bytes())
            stats.update(estats, write_seconds=time.perf_counter() - t0, files=len(files),
                         device=self.device, gpu_ids=self.gpu_ids, t_start=t_start, t_end=time.time())
            self.state.record(row["unit_id"], files, stats, node=self.node)
            out.append({"unit_id": row["unit_id"], "stats": json.dumps(stats)})
        return pa.Table.from_pylist(out)


def unit_moments(table: pa.Table):
    """Moments of a unit's sentence vectors as stored (what post-processing is fitted on)."""
    from elmo_dist.similarity import Moments

    col = table.column(S.SENTENCE_EMBEDDING)
    dim = col.type.list_size
    flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return Moments.of(flat.reshape(-1, dim)) if len(col) else Moments.zeros(dim)


def fit_postprocessing(state: JobState, unit_ids: list[str]) -> str | None:
    """Merge the units' moments, fit the default post-processor, store both beside the output."""
    from elmo_dist.similarity import Postprocessor

    moments = state.merged_moments(unit_ids)
    if moments is None or moments.n < 2:
        logger.warning("no sentence-vector moments for some units (written by an older version?): "
                       "no post-processor fitted")
        return None
    pp = Postprocessor.fit(moments)
    state.write_postprocessing(moments, pp)
    logger.info("post-processing: %r stored with the output", pp)
    return pp.method


# ---- the job ---------------------------------------------------------------------------------

def vectors_identity(cfg: JobConfig, model_fp: str) -> str:
    """What the job's fingerprint hashes for the model: its fingerprint, plus the sha256 of its word
    frequencies when the pooling uses them ("sif"; refused here, before any work, if it has none)."""
    if cfg.embedding.pooling != "sif":
        return model_fp
    freq = load_frequencies(cfg.model)
    if freq is None:
        raise ConfigError(f"pooling 'sif' needs word frequencies: {storage.redact(cfg.model)} has no "
                          f"frequencies.tsv (models exported by `elmo-dist train` have one)")
    return f"{model_fp}+freq:{freq[1][:16]}"


def output_metadata(cfg: JobConfig, fingerprint: str, dim: int, identity: str | None = None) -> dict[str, Any]:
    return {"format": 1, "model": {"source": storage.redact(cfg.model), "fingerprint": fingerprint, "output_dim": dim},
            "text": cfg.text.model_dump(mode="json"), "embedding": cfg.embedding.model_dump(mode="json"),
            "compute_dtype": cfg.run.compute_dtype, "config_fingerprint": cfg.fingerprint(identity or fingerprint)}


def init_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        # address None: RAY_ADDRESS, the cluster of a submitted job, or a new local runtime.
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
                 configure_logging=False)


CPU_THREADS_PER_ACTOR = 4  # torch scales sublinearly past a few threads: more actors instead
GPU_ACTOR_CPUS = 8  # a GPU actor's CPUs by default (at most): 7 tokenizing processes, ~1.8M tokens/s


def actor_plan(cfg: JobConfig, n_units: int) -> dict[str, Any]:
    """How many actors, and what each asks for, from the cluster's resources.

    CPU actors take ``cpus_per_actor`` CPUs and as many torch threads; by default a node's CPUs up
    to ``CPU_THREADS_PER_ACTOR`` (one actor per 2-core machine, on both cores: the actors read and
    prepare their units themselves, overlapped with the model, so no CPU is kept aside). GPU actors
    take their node's CPUs per GPU (up to ``GPU_ACTOR_CPUS``) and tokenize with all but one of them
    in processes (one process splits and tokenizes ~260k tokens/s of English: a GPU embeds more).
    """
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]  # each alive node's resources
    node_cpus = max([float(r.get("CPU", 0)) for r in nodes] or [cpus])
    device = cfg.run.device
    if device == "cpu":
        g = 0.0
    elif device == "gpu":  # even when no GPU node is up yet: the actors wait for the autoscaler's
        g = cfg.run.num_gpus_per_actor or 1.0
        if gpus < g:
            logger.warning("--device gpu: the cluster shows %s GPU(s) now; the actors wait for GPU nodes", gpus)
    else:
        g = cfg.run.num_gpus_per_actor if cfg.run.num_gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    if g > 0:
        per_gpu = min([r.get("CPU", 0) / r["GPU"] for r in nodes if r.get("GPU")] or [1.0])  # CPUs beside each GPU
        c = cfg.run.cpus_per_actor or float(max(1, min(int(per_gpu * g), GPU_ACTOR_CPUS)))
        c = min(c, max(node_cpus, 1.0))
        n = cfg.run.num_actors or max(1, int(gpus // g))
        threads = cfg.run.torch_threads or 1  # the model runs on the GPU; the CPUs tokenize
        prep = cfg.run.prepare_processes if cfg.run.prepare_processes is not None else int(c) - 1
    else:
        c = cfg.run.cpus_per_actor or float(max(1, min(int(node_cpus), CPU_THREADS_PER_ACTOR)))
        n = cfg.run.num_actors or max(1, int(max(cpus, c) // c))
        threads = cfg.run.torch_threads or max(1, math.ceil(c))
        prep = cfg.run.prepare_processes or 0
    n = max(1, min(n, n_units))
    top = max(n, min(cfg.run.max_actors or n, n_units))
    return {"actors": n, "max_actors": top, "num_cpus": c, "num_gpus": g, "threads": threads,
            "prepare_processes": prep if prep >= 2 else 0}


@dataclass
class Plan:
    """What a run has to do: the work units of ``files`` and the model's identity."""

    units: list[Unit]
    model_fingerprint: str
    dim: int
    identity: str  # model_fingerprint, + the word frequencies' hash for "sif" pooling (vectors_identity)

    @property
    def unit_ids(self) -> list[str]:
        return [u.unit_id for u in self.units]


def plan(cfg: JobConfig, files: list[InputFile], pack: bool = True) -> Plan:
    """Check the files' schemas and null ids (before any work), cut them into units (small files
    packed together unless ``pack`` is off), fingerprint the model. Shared by ``run`` and ``refresh``."""
    check_schema(files, cfg.text)
    fp, dim, layers = model_summary(cfg.model)
    identity = vectors_identity(cfg, fp)
    units = plan_units(files, cfg.run.rows_per_unit, bytes_per_unit_for(output_bytes_per_token(cfg, dim, layers)),
                       pack=pack)
    return Plan(units, fp, dim, identity)


TOKENS_PER_SENTENCE = 20  # 47 on the bundled sample; the low end: more sentences, more sentence vectors


def output_bytes_per_token(cfg: JobConfig, dim: int, layers: int) -> float:
    """Estimated output bytes per input token: the token vectors asked for, the sentence vectors
    (one per ~``TOKENS_PER_SENTENCE`` tokens) and ~8 bytes of the tokens column; units are cut so that
    their output stays within ``stages.read.OUTPUT_BYTES_PER_UNIT``."""
    emb = cfg.embedding
    size = 2 if emb.dtype == "float16" else 4
    per_token = dim * (layers if emb.token_output == "all" else 1) * size if emb.token_embeddings else 0
    return 8.0 + per_token + dim * size / TOKENS_PER_SENTENCE


def run(cfg: JobConfig, model: str | None = None) -> dict[str, Any]:
    """Embed the corpus described by ``cfg``; returns the summary (also in ``_job/stats.json``).

    ``model`` overrides ``cfg.model`` (a convenience for callers; the job uses one resolved path).

    Raises (one-line user errors): InputError, ResumeError, LeaseHeld, IncompleteJobError, ...
    """
    if model is not None:
        cfg = cfg.model_copy(update={"model": resolve_model(model)})
    t_start = time.perf_counter()
    state = JobState(cfg.output)
    check_output_outside_inputs(cfg.inputs, cfg.output)
    state.check_writable()
    with Lease(cfg.output, seconds=cfg.run.lease_seconds).acquire() as lease:
        state.cleanup()  # temporaries of writers killed earlier (no writer runs: we hold the lease)
        files = list_inputs(cfg.inputs)
        job = plan(cfg, files)
        resuming = state.begin(cfg, job.identity, job.unit_ids)
        done = set(state.scan().records)
        pending = [u for u in job.units if u.unit_id not in done]
        logger.info("%d input files, %d rows, %d work units (%d done, %d to do)%s",
                    len(files), sum(f.num_rows for f in files), len(job.units), len(job.units) - len(pending),
                    len(pending), " - resuming" if resuming else "")
        run_stats: dict[str, Any] = {"new_units": 0}
        if pending:
            run_stats = embed_units(cfg, output_metadata(cfg, job.model_fingerprint, job.dim, job.identity),
                                    pending, state)
        else:
            logger.info("nothing to do: every unit of %s is already embedded", storage.redact(cfg.output))
        lease.check()
        scan = state.scan()
        missing = scan.missing
        if missing:
            raise IncompleteJobError(
                f"{storage.redact(cfg.output)}: {len(missing)} of {len(scan.planned)} work unit(s) have no valid "
                f"completion record after the run (e.g. {missing[0]}"
                f"{': ' + scan.invalid[missing[0]] if missing[0] in scan.invalid else ''}). "
                + ("Unit records are not visible to the driver: is --output on a filesystem all nodes share? "
                   "(use s3:// or a shared mount on a multi-node cluster)" if run_stats.get("new_units") else
                   "Rerun the same command to redo them."))
        records = [scan.records[u] for u in scan.planned]
        summary = summarize(records, time.perf_counter() - t_start, **run_stats)
        previous = state.stats() or {}
        if run_stats.get("new_units") or "duplicate_ids" not in previous:
            summary["duplicate_ids"] = count_duplicate_ids(state, scan.files()) if cfg.text.id_column else 0
        else:
            summary["duplicate_ids"] = previous["duplicate_ids"]
        if run_stats.get("new_units") or not state.has_postprocessor():
            summary["postprocessor"] = fit_postprocessing(state, scan.planned)
        else:
            summary["postprocessor"] = previous.get("postprocessor")
        if summary["duplicate_ids"]:
            logger.warning("%d id(s) appear on more than one input row (counted in stats.json)",
                           summary["duplicate_ids"])
        return state.write_stats(summary, run=_run_entry(summary, run_stats))


def _run_entry(summary: dict[str, Any], run_stats: dict[str, Any]) -> dict[str, Any]:
    import datetime as dt

    return {"finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "units": run_stats.get("new_units", 0),
            "tokens": run_stats.get("new_tokens", 0), "seconds": round(run_stats.get("new_wall", 0.0), 2),
            "tokens_per_second": summary["tokens_per_second_this_run"], "actors": run_stats.get("actors")}


def count_duplicate_ids(state: JobState, files: list[str]) -> int:
    """Ids that appear on more than one input row, counted over the output's shards (one row per
    input row: its first sentence's first chunk). Reads only three small columns; holds 8 bytes
    per input row."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    hashes = []
    for rel in files:
        t = pq.read_table(f"{state.root}/{rel}", filesystem=state.fs, columns=[S.ID, S.SENTENCE_INDEX, S.CHUNK])
        first = pc.and_(pc.equal(t[S.SENTENCE_INDEX], 0), pc.equal(t[S.CHUNK], 0))
        ids = t.filter(first)[S.ID].to_pylist()
        hashes.append(np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids)))
    if not hashes:
        return 0
    h = np.sort(np.concatenate(hashes))
    return int(np.count_nonzero(h[1:] == h[:-1])) if len(h) > 1 else 0


def embed_units(cfg: JobConfig, metadata: dict[str, Any], pending: list[Unit], state: JobState,
                subdir: str = "") -> dict[str, Any]:
    """Run read -> prepare -> embed -> write over ``pending`` units on Ray; records go to ``state``.

    Shards are written under ``cfg.output``/``subdir``. Returns this run's counts.
    """
    import ray
    from ray.data import ActorPoolStrategy

    init_ray(cfg.run.address)
    # the original exception of a failed stage (e.g. InputChangedError) reaches the driver, which
    # reports it in one line instead of Ray's wrapper
    ray.data.DataContext.get_current().raise_original_map_exception = True
    actors = actor_plan(cfg, len(pending))
    logger.info("embedding %d unit(s) with %d actor(s): %s CPU, %s GPU, %d torch thread(s) each",
                len(pending), actors["actors"], actors["num_cpus"], actors["num_gpus"], actors["threads"])
    ds = ray.data.from_items([u.to_dict() for u in pending], override_num_blocks=len(pending))
    ds = ds.map_batches(  # read + prepare + embed + write in the actors: no CPU is left idle for tasks
        EmbedWriter, batch_size=1, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=actors["max_actors"], initial_size=actors["actors"],
                                  max_tasks_in_flight_per_actor=2,
                                  max_concurrent_calls_per_actor=2, enable_true_multi_threading=True),
        num_cpus=actors["num_cpus"], num_gpus=actors["num_gpus"],
        fn_constructor_kwargs=dict(cfg=cfg, metadata=metadata, actor=actors, job_dir=state.job_dir, subdir=subdir,
                                   # the driver's AWS settings reach workers of nodes started without them
                                   s3=storage.S3Settings.from_environ(dict(os.environ))),
    )
    t0, n_done, tokens = time.perf_counter(), 0, 0
    for row in _user_errors_unwrapped(ds.iter_rows()):
        n_done += 1
        st = json.loads(row["stats"])
        tokens += st.get("tokens", 0)
        el = time.perf_counter() - t0
        logger.info("unit %d/%d done (%s): %d sentences, %d tokens; %.0f tokens/s so far",
                    n_done, len(pending), row["unit_id"], st.get("sentences", 0), st.get("tokens", 0),
                    tokens / max(el, 1e-9))
    return {"new_units": n_done, "new_wall": time.perf_counter() - t0, "new_tokens": tokens, "actors": actors}


def _user_errors_unwrapped(rows):
    """Re-raise a user error raised inside a Ray actor (a changed input file, no CUDA for --device
    gpu) as itself (one line for the CLI), not as Ray's wrapper with a remote traceback."""
    try:
        yield from rows
    except Exception as e:
        stack: list[BaseException | None] = [e]
        seen: set[int] = set()
        while stack:
            c = stack.pop()
            if c is None or id(c) in seen:
                continue
            seen.add(id(c))
            if isinstance(c, ElmoDistError) and type(c).__module__.startswith("elmo_dist"):
                lines = str(c).strip().splitlines()  # Ray appends its retry advice to the message
                raise type(c)(lines[0] if lines else type(c).__name__) from None
            stack += [getattr(c, "cause", None), c.__cause__, c.__context__]
        raise


def summarize(records: list[dict[str, Any]], wall: float, new_units: int, new_wall: float = 0.0,
              new_tokens: int = 0, actors: dict[str, Any] | None = None) -> dict[str, Any]:
    tot: collections.Counter = collections.Counter()
    files = 0
    for r in records:
        files += len(r.get("files", []))
        for k, v in r["stats"].items():
            if isinstance(v, (int, float)) and not k.startswith("t_"):
                tot[k] += v
    padded = tot.get("padded_tokens", 0)
    out = {
        "units": len(records), "units_this_run": new_units, "files": files,
        "rows": int(tot.get("rows", 0)), "sentences": int(tot.get("sentences", 0)),
        "tokens": int(tot.get("tokens", 0)),
        "skipped": {k[len("skipped_"):]: int(v) for k, v in tot.items() if k.startswith("skipped_")},
        "invalid_utf8_rows": int(tot.get("invalid_utf8", 0)),
        "chunked_sentences": int(tot.get("chunked_sentences", 0)),
        "padding_ratio": 0.0 if not padded else round(1 - tot["tokens"] / padded, 4),
        "seconds": {"prepare": round(tot.get("prepare_seconds", 0), 2), "embed": round(tot.get("embed_seconds", 0), 2),
                    "write": round(tot.get("write_seconds", 0), 2), "wall": round(wall, 2)},
        "tokens_per_second_this_run": round(new_tokens / new_wall, 1) if new_wall else 0.0,
        "actors": actors,
    }
    logger.info("summary: %d rows, %d sentences, %d tokens, %.0f tokens/s this run, padding %.1f%%, "
                "skipped %s; seconds %s", out["rows"], out["sentences"], out["tokens"],
                out["tokens_per_second_this_run"], 100 * out["padding_ratio"], out["skipped"] or "none",
                out["seconds"])
    return out
