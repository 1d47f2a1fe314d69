"""The whole job against the bare model, on real text, for the built-in and the Original model.

    python bench/bench_pipeline.py                       # full run (quiet machine; ~35 min on 2 cores)
    python bench/bench_pipeline.py --quick               # smoke run (~1-2 min; first run also builds the corpus)
    python bench/bench_pipeline.py --models original --corpora pydocs --variants default,budget=8192
    python bench/bench_pipeline.py --out docs/performance.md --json /tmp/bench.json

Corpora (``bench_corpus.py``): ``sample``, the bundled sample (Jane Austen, public domain; one file,
one row group, 200 documents) and ``pydocs``, the prose of the Python 3.11 manual (Debian
``python3.11-doc``, PSF License 2; ~1.5M tokens in ~2000 documents of ~600 words), built once into
``~/.cache/elmo-dist/bench`` and cut per model to ``--max-tokens`` tokens, in ``--files`` Parquet
files with row groups of ``--row-group-rows`` documents. Models: ``builtin`` (the package's
default model) and ``original`` (random low-gain weights of the official Original architecture,
2x4096_512_2048cnn_2xhighway, as ``bench_model.write_model`` writes them; same cost as the real one).

Ray is started once, in this process, with the machine's CPUs (its start is timed and reported
apart). For each model x corpus x variant the job (``elmo_dist.pipeline.run``) runs with the
default settings except what the variant sets, on a fresh output; then the bare model,
``Elmo.embed_sentences(tokens, token_budget=<the variant's>, pooling="mean")`` with torch threads =
all CPUs, after a warm-up, on exactly the job's own tokens (read back from its output). The bare
figure is measured once per model x corpus x token budget, right after the first job with that
budget (``--bare-each``: after every job).

Job throughput, two ways:
  * units: tokens / (last unit done - first unit start): the job's own work, from its first unit
    to its last. A unit's end is when the driver saw its result; a unit's start is its end minus
    its own prepare + embed + write seconds (its record), and the first start is the earliest.
  * iteration: the summary's ``tokens_per_second_this_run`` (from the start of the iteration over
    the actor pool: includes starting the actors and loading the model in each).
``startup`` = iteration seconds - units seconds (actor start + model load + pipeline fill).
ratio = job / bare. Padding: the job's (summed over its units) and the bare model's plan.

Variants (``--variants``, comma-separated; a variant is ``default`` or ``key=value`` pairs joined by
``+``): ``cpus=`` run.cpus_per_actor (default 1: one 1-thread actor per CPU, as many actors as
units allow; ``cpus=2`` on 2 CPUs: one actor with 2 threads), ``threads=`` run.torch_threads,
``actors=`` run.num_actors, ``budget=`` run.token_budget (the bare model uses the same), ``rows=``
run.rows_per_unit. The default set: ``default`` (rows_per_unit 20000: each corpus here is one
unit, so one actor), ``cpus=2``, ``rows=64`` (units of ~13k tokens on the sample, ~47k on pydocs:
two 1-thread actors), ``rows=64+cpus=2``, ``budget=8192`` (vs the default 4096) and ``rows=4``
(small units: the padding they cost). ``--quick``: ``default,rows=4`` on a few thousand tokens.

Duration (2 quiet cores, default sizes): builtin ~10 min, original ~25 min; ``--quick`` ~1-2 min
per model (the first run also builds the pydocs corpus, ~20 s). Under load, the bare model's 2
OpenMP threads suffer far more than 1-thread actors: only a quiet machine gives fair ratios.
Compare figures only within one run (the load average is in every row).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_corpus import CACHE, pydocs_subset, sample_corpus  # noqa: E402
from bench_model import load_average, write_model  # noqa: E402

from elmo_dist import schema as S  # noqa: E402
from elmo_dist.config import DEFAULT_TOKEN_BUDGET, JobConfig, RunSettings  # noqa: E402

VARIANT_KEYS = {"cpus": ("run.cpus_per_actor", float), "threads": ("run.torch_threads", int),
                "actors": ("run.num_actors", int), "budget": ("run.token_budget", int),
                "rows": ("run.rows_per_unit", int)}
DEFAULT_VARIANTS = "default,cpus=2,rows=64,rows=64+cpus=2,budget=8192,rows=4"
DEFAULT_MAX_TOKENS = "builtin=400000,original=100000"
QUICK_MAX_TOKENS = "builtin=5000,original=500"
QUICK_SAMPLE_ROWS = {"builtin": 24, "original": 2}


def parse_variant(spec: str) -> dict:
    if spec == "default":
        return {}
    out = {}
    for part in spec.split("+"):
        key, _, value = part.partition("=")
        if key not in VARIANT_KEYS or not value:
            raise SystemExit(f"bad variant {spec!r}: use default or key=value[+key=value] with keys "
                             f"{', '.join(VARIANT_KEYS)}")
        name, kind = VARIANT_KEYS[key]
        out[name] = kind(value)
    return out


def parse_caps(spec: str) -> dict[str, int]:
    return {k: int(v) for k, v in (p.split("=") for p in spec.split(",") if p)}


class UnitTimes(logging.Handler):
    """Driver-side end time of each unit, from the pipeline's "unit i/N done" log line."""

    def __init__(self, echo: bool):
        super().__init__(logging.INFO)
        self.done: dict[str, float] = {}
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("unit %d/%d done") and record.args:
            i, n, uid = record.args[:3]
            self.done[uid] = record.created
            if self.echo and (i == n or i == 1 or i % max(1, n // 4) == 0):
                print(f"    unit {i}/{n} done", flush=True)
        elif record.levelno >= logging.WARNING:
            print(f"    {record.levelname}: {record.getMessage()}", flush=True)


def job_throughput(out: str, done: dict[str, float]) -> dict:
    """Units' first start -> last end, from the records' stage seconds and the driver's end times."""
    from elmo_dist.checkpoint import JobState

    recs = {r["unit"]: r["stats"] for r in JobState(out).records()}
    ends = {u: t for u, t in done.items() if u in recs}
    if not ends:
        return {}
    starts = [t - sum(recs[u].get(k, 0.0) for k in ("prepare_seconds", "embed_seconds", "write_seconds"))
              for u, t in ends.items()]
    span = max(ends.values()) - min(starts)
    tokens = sum(recs[u].get("tokens", 0) for u in ends)
    return {"units_seconds": span, "units_tokens": tokens, "tps_units": tokens / span if span > 0 else 0.0}


class Bare:
    """The model alone, in this process, with all the CPUs' threads (or the GPU)."""

    def __init__(self, model: str, threads: int):
        import torch

        from elmo_dist import Elmo

        torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.elmo = Elmo.from_pretrained(model).to(self.device)
        self.threads = threads

    def measure(self, toks: list[list[str]], budget: int, warmup: int) -> dict:
        from elmo_dist.model.batching import plan_batches

        list(self.elmo.embed_sentences(toks[:warmup], token_budget=budget, pooling="mean"))
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in self.elmo.embed_sentences(toks, token_budget=budget, pooling="mean"):
            pass
        wall = time.perf_counter() - t0
        lengths = np.array([len(t) for t in toks])
        padded = 0
        for w in range(0, len(lengths), 20000):  # embed_sentences' default window
            ln = lengths[w:w + 20000]
            padded += sum(len(b) * int(ln[b].max()) for b in plan_batches(ln, budget))
        n = int(lengths.sum())
        return {"tokens": n, "seconds": wall, "tps": n / wall, "padding": 1 - n / padded if padded else 0.0}


def run_job(inputs: str, model: str, overrides: dict, tmp: str, times: UnitTimes) -> tuple[dict, str]:
    from elmo_dist.pipeline import run

    out = tempfile.mkdtemp(prefix="job-", dir=tmp)
    cfg = JobConfig.build(inputs=[inputs], output=out, model=model, **overrides)
    times.done.clear()
    t0 = time.perf_counter()
    summary = run(cfg)
    wall = time.perf_counter() - t0
    last_run = (summary.get("runs") or [{}])[-1]
    res = {"summary": summary, "wall": wall, "iteration_seconds": last_run.get("seconds"),
           "cfg": cfg.run.model_dump(mode="json"), **job_throughput(out, times.done)}
    return res, out


def fmt(v, spec: str = "{:.0f}") -> str:
    return "n/a" if v is None or v != v else spec.format(v)


HEADER = ("| corpus | model | variant | actors x threads | token budget | rows/unit | units | tokens | "
          "Ray start s | job wall s | startup s | job tokens/s (units) | job tokens/s (iteration) | "
          "bare tokens/s | ratio (units) | ratio (iteration) | padding job / bare | "
          "prepare / embed / write s | load before -> after |")


def row_line(r: dict) -> str:
    s, a = r["summary"], r["summary"].get("actors") or {}
    sec = s["seconds"]
    bare = r["bare"]["tps"]
    tu, ti = r.get("tps_units"), s["tokens_per_second_this_run"]
    startup = (r["iteration_seconds"] - r["units_seconds"]) if r.get("units_seconds") and r["iteration_seconds"] else None
    return (f"| {r['corpus']} | {r['model']} | {r['variant']} | {a.get('actors')} x {a.get('threads')} | "
            f"{r['cfg']['token_budget']} | {r['cfg']['rows_per_unit']} | {s['units']} | {s['tokens']} | "
            f"{r['ray_start']:.1f} | {r['wall']:.1f} | {fmt(startup, '{:.1f}')} | {fmt(tu)} | {fmt(ti)} | "
            f"{bare:.0f} | {fmt(tu / bare if tu else None, '{:.2f}')} | {ti / bare:.2f} | "
            f"{100 * s['padding_ratio']:.1f}% / {100 * r['bare']['padding']:.1f}% | "
            f"{sec['prepare']:.1f} / {sec['embed']:.1f} / {sec['write']:.1f} | "
            f"{r['load_before']} -> {r['load_after']} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="builtin,original", help="builtin, original")
    p.add_argument("--corpora", default="sample,pydocs", help="sample, pydocs")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--max-tokens", default=DEFAULT_MAX_TOKENS,
                   help="pydocs size per model, in tokens (0: the whole manual)")
    p.add_argument("--files", type=int, default=8, help="pydocs: Parquet files")
    p.add_argument("--row-group-rows", type=int, default=16, help="pydocs: documents per row group")
    p.add_argument("--sample-rows", type=int, default=0, help="use only the sample's first rows (0: all)")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="Ray's CPUs and the bare model's threads")
    p.add_argument("--warmup", type=int, default=200, help="sentences of the bare model's warm-up")
    p.add_argument("--bare-each", action="store_true", help="measure the bare model after every job")
    p.add_argument("--cache", default=CACHE)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--quiet", action="store_true", help="no per-unit progress lines")
    p.add_argument("--out", help="append the table to this markdown file")
    p.add_argument("--json", help="write all figures here")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    corpora = [c for c in args.corpora.split(",") if c]
    if set(models) - {"builtin", "original"} or set(corpora) - {"sample", "pydocs"}:
        p.error("models: builtin, original; corpora: sample, pydocs")
    if args.quick:
        if args.variants == DEFAULT_VARIANTS:
            args.variants = "default,rows=4"
        if args.max_tokens == DEFAULT_MAX_TOKENS:
            args.max_tokens = QUICK_MAX_TOKENS
        args.files, args.row_group_rows, args.warmup = 2, 4, 100
    variants = [(v, parse_variant(v)) for v in args.variants.split(",") if v]
    caps = parse_caps(args.max_tokens)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    times = UnitTimes(echo=not args.quiet)
    plog = logging.getLogger("elmo_dist.pipeline")
    plog.setLevel(logging.INFO)
    plog.addHandler(times)
    plog.propagate = False

    import ray
    import ray.data
    import torch

    from elmo_dist import read_embeddings
    from elmo_dist.paths import default_model_path

    t_all = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="bench-pipeline-")
    load_start = load_average()
    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
             configure_logging=False, log_to_driver=True)
    ray_start = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    print(f"Ray started in {ray_start:.1f} s with {args.num_cpus} CPUs; load {load_start}", flush=True)

    rows: list[dict] = []
    corpus_notes: dict[str, str] = {}
    try:
        for model_name in models:
            model = default_model_path() if model_name == "builtin" else \
                write_model(os.path.join(tmp, "original"), "original")
            bare_model = None
            for corpus in corpora:
                if corpus == "sample":
                    n = args.sample_rows or (QUICK_SAMPLE_ROWS[model_name] if args.quick else 0)
                    inputs, info = sample_corpus(n, os.path.join(tmp, f"sample-{model_name}"))
                    note = f"{info['title']}: {info['documents']} documents, 1 file, 1 row group"
                else:
                    inputs, info = pydocs_subset(caps.get(model_name, 0), args.files, args.row_group_rows,
                                                 args.cache, log=lambda s: print(s, flush=True))
                    note = (f"{info['title']}, Debian {info['package']} {info['version']}, {info['licence']}: "
                            f"{info['documents']} documents of ~{info['doc_words']} words (fixed-seed shuffle "
                            f"of the manual's {info['pages']} pages), {info['files']} files, row groups of "
                            f"{info['rows_per_group']}")
                corpus_notes[f"{corpus} ({model_name})"] = note
                bare: dict[int, dict] = {}
                for vname, overrides in variants:
                    budget = overrides.get("run.token_budget", DEFAULT_TOKEN_BUDGET)
                    print(f"[{model_name} / {corpus} / {vname}] job ... load {load_average()}", flush=True)
                    load_before = load_average()
                    res, out = run_job(inputs, model, overrides, tmp, times)
                    s = res["summary"]
                    print(f"    {s['tokens']} tokens, {s['units']} units, {s['actors']['actors']} actor(s) x "
                          f"{s['actors']['threads']} thread(s): {fmt(res.get('tps_units'))} tokens/s (units), "
                          f"{s['tokens_per_second_this_run']:.0f} (iteration), wall {res['wall']:.1f} s", flush=True)
                    if budget not in bare or args.bare_each:
                        toks = read_embeddings(out, columns=[S.TOKENS]).to_table(columns=[S.TOKENS])[S.TOKENS].to_pylist()
                        if bare_model is None:
                            bare_model = Bare(model, args.num_cpus)
                        bare[budget] = bare_model.measure(toks, budget, args.warmup)
                        if bare[budget]["tokens"] != s["tokens"]:
                            print(f"    WARNING: bare model got {bare[budget]['tokens']} tokens, job {s['tokens']}")
                        print(f"    bare model, budget {budget}: {bare[budget]['tps']:.0f} tokens/s", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
                    rows.append({**res, "corpus": corpus, "model": model_name, "variant": vname,
                                 "ray_start": ray_start, "bare": dict(bare[budget]), "load_before": load_before,
                                 "load_after": load_average()})
            bare_model = None
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [f"`bench/bench_pipeline.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} {os.cpu_count()} CPUs, torch "
             f"{torch.__version__}; Ray started in {ray_start:.1f} s ({args.num_cpus} CPUs), not counted in "
             f"any job figure; bare model: `Elmo.embed_sentences(pooling=\"mean\")`, {args.num_cpus} torch "
             f"threads, same tokens and token budget; load average at start {load_start}, at end "
             f"{load_average()}; whole run {time.perf_counter() - t_all:.0f} s.", ""]
    lines += [f"* {k}: {v}" for k, v in corpus_notes.items()] + [""]
    lines += [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    lines += [row_line(r) for r in rows]
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + table + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ray_start": ray_start, "corpora": corpus_notes, "rows": rows}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
