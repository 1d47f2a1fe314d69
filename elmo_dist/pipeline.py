"""The corpus job, and the only module that wires Ray.

    list inputs + check schemas (driver, before any work)
      -> plan work units, skip the ones already done (checkpoint)
      -> read + prepare one unit per Ray task (CPU: tokenize, split, chunk)
      -> embed + write one unit per call in an actor pool (the biLM loaded once per actor;
         GPU when the cluster has one) -> completion record
      -> summary (rows, sentences, tokens, tokens/s, padding, time per stage) in _job/stats.json

A unit travels between the two stages as one row holding its prepared sentences as Arrow IPC
bytes, so Ray Data never splits or merges a unit: each unit is embedded and written whole, and
its completion record is written only after its shards.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import time
from typing import Any

import pyarrow as pa

from elmo_dist import schema as S
from elmo_dist.checkpoint import JobState
from elmo_dist.output import JOB_DIR
from elmo_dist.config import EmbeddingSettings, JobConfig, TextSettings
from elmo_dist.model.fingerprint import model_fingerprint
from elmo_dist.stages.read import Unit, check_schema, list_inputs, plan_units, read_unit

logger = logging.getLogger(__name__)


# ---- stage adapters (plain functions/classes; Ray only calls them) ----------------------------

def prepare_unit(row: dict[str, Any], text: TextSettings) -> dict[str, Any]:
    from elmo_dist.stages.prepare import prepare

    t0 = time.perf_counter()
    unit = Unit.from_dict(row)
    table, stats = prepare(read_unit(unit, text), text)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    stats["prepare_seconds"] = time.perf_counter() - t0
    return {**row, "prepared": sink.getvalue().to_pybytes(), "prepare_stats": json.dumps(stats)}


class EmbedWriter:
    """Actor: embeds one prepared unit per call, writes its shards, then its completion record."""

    def __init__(self, model: str, embedding: EmbeddingSettings, output: str, metadata: dict[str, Any],
                 token_budget: int, compute_dtype: str, num_gpus: float, threads: int | None,
                 job_dir: str = JOB_DIR, subdir: str = ""):
        from elmo_dist.stages.embed import Embedder, pick_device

        import ray

        self.device = pick_device(num_gpus)
        self.gpu_ids = [int(g) if str(g).isdigit() else g for g in ray.get_gpu_ids()]
        self.embedder = Embedder(model, embedding, token_budget=token_budget, compute_dtype=compute_dtype,
                                 device=self.device, threads=threads)
        if self.embedder.elmo.fingerprint != metadata["model"]["fingerprint"]:
            raise RuntimeError(f"model {model} changed while the job was starting "
                               f"({self.embedder.elmo.fingerprint} != {metadata['model']['fingerprint']})")
        self.schema = S.output_schema(self.embedder.dim, embedding.dtype, embedding.token_embeddings,
                                      self.embedder.token_layers, metadata)
        self.output, self.subdir = output, subdir
        self.state = JobState(output, job_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from elmo_dist.stages.write import write_unit

        out = []
        for row in batch.to_pylist():
            table = pa.ipc.open_stream(row["prepared"]).read_all()
            stats = json.loads(row["prepare_stats"])
            embedded, estats = self.embedder(table)
            t0 = time.perf_counter()
            files = write_unit(embedded, self.output, row["unit_id"], self.schema, subdir=self.subdir)
            stats.update(estats, write_seconds=time.perf_counter() - t0, device=self.device,
                         gpu_ids=self.gpu_ids, files=len(files))
            self.state.record(row["unit_id"], files, stats)
            out.append({"unit_id": row["unit_id"], "stats": json.dumps(stats)})
        return pa.Table.from_pylist(out)


# ---- the job ---------------------------------------------------------------------------------

def output_metadata(cfg: JobConfig, model: str, fingerprint: str, dim: int) -> dict[str, Any]:
    return {"format": 1, "model": {"source": model, "fingerprint": fingerprint, "output_dim": dim},
            "text": cfg.text.model_dump(mode="json"), "embedding": cfg.embedding.model_dump(mode="json"),
            "config_fingerprint": cfg.fingerprint(fingerprint)}


def init_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        # address None: RAY_ADDRESS, the cluster of a submitted job, or a new local runtime.
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
                 configure_logging=False)


def actor_plan(cfg: JobConfig, n_units: int) -> dict[str, Any]:
    """How many actors, and what each asks for, from the cluster's resources."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    g = cfg.run.num_gpus_per_actor if cfg.run.num_gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
    if g > 0:
        c = min(cfg.run.cpus_per_actor, 1.0)
        n = cfg.run.num_actors or max(1, int(gpus // g))
    else:
        c = cfg.run.cpus_per_actor
        # Leave at least one CPU for the read/prepare tasks: a pool that takes every CPU starves them.
        n = cfg.run.num_actors or max(1, int(max(cpus - 1.0, c) // c))
    n = max(1, min(n, n_units))
    threads = cfg.run.torch_threads or max(1, math.ceil(c))
    return {"actors": n, "num_cpus": c, "num_gpus": g, "threads": threads}


def run(cfg: JobConfig, model: str) -> dict[str, Any]:
    """Embed the corpus described by ``cfg`` with the model at ``model``; returns the summary."""
    t_start = time.perf_counter()
    state = JobState(cfg.output)
    state.check_writable()
    files = list_inputs(cfg.inputs)
    check_schema(files, cfg.text)
    units = plan_units(files, cfg.run.rows_per_unit)
    fp, dim = model_fingerprint(model)
    resuming = state.begin(cfg, fp, [u.unit_id for u in units])
    done = state.done_units()
    pending = [u for u in units if u.unit_id not in done]
    logger.info("%d input files, %d rows, %d work units (%d done, %d to do)%s",
                len(files), sum(f.num_rows for f in files), len(units), len(done), len(pending),
                " - resuming" if resuming else "")
    if not pending:
        logger.info("nothing to do: every unit of %s is already embedded", cfg.output)
        summary = summarize(state.records(), time.perf_counter() - t_start, new_units=0)
        state.write_stats(summary)
        return summary
    run_stats = embed_units(cfg, model, output_metadata(cfg, model, fp, dim), pending, state)
    summary = summarize(state.records(), time.perf_counter() - t_start, **run_stats)
    state.write_stats(summary)
    return summary


def embed_units(cfg: JobConfig, model: str, metadata: dict[str, Any], pending: list[Unit],
                state: JobState, subdir: str = "") -> dict[str, Any]:
    """Run read -> prepare -> embed -> write over ``pending`` units on Ray; records go to ``state``.

    Shards are written under ``cfg.output``/``subdir``. Returns this run's counts.
    """
    import ray
    from ray.data import ActorPoolStrategy

    init_ray(cfg.run.address)
    plan = actor_plan(cfg, len(pending))
    logger.info("embedding %d unit(s) with %d actor(s): %s CPU, %s GPU, %d torch thread(s) each",
                len(pending), plan["actors"], plan["num_cpus"], plan["num_gpus"], plan["threads"])
    ds = ray.data.from_items([u.to_dict() for u in pending], override_num_blocks=len(pending))
    ds = ds.map(prepare_unit, fn_kwargs={"text": cfg.text}, num_cpus=1)
    ds = ds.map_batches(
        EmbedWriter, batch_size=1, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=plan["actors"]),
        num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"],
        fn_constructor_kwargs=dict(
            model=model, embedding=cfg.embedding, output=cfg.output, metadata=metadata,
            token_budget=cfg.run.token_budget, compute_dtype=cfg.run.compute_dtype,
            num_gpus=plan["num_gpus"], threads=plan["threads"], job_dir=state.job_dir, subdir=subdir),
    )
    t0, n_done, tokens = time.perf_counter(), 0, 0
    for row in ds.iter_rows():
        n_done += 1
        st = json.loads(row["stats"])
        tokens += st.get("tokens", 0)
        el = time.perf_counter() - t0
        logger.info("unit %d/%d done (%s): %d sentences, %d tokens; %.0f tokens/s so far",
                    n_done, len(pending), row["unit_id"], st.get("sentences", 0), st.get("tokens", 0),
                    tokens / max(el, 1e-9))
    return {"new_units": n_done, "new_wall": time.perf_counter() - t0, "new_tokens": tokens, "actors": plan}


def summarize(records: list[dict[str, Any]], wall: float, new_units: int, new_wall: float = 0.0,
              new_tokens: int = 0, actors: dict[str, Any] | None = None) -> dict[str, Any]:
    tot: collections.Counter = collections.Counter()
    files = 0
    for r in records:
        files += len(r.get("files", []))
        for k, v in r["stats"].items():
            if isinstance(v, (int, float)):
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
