"""Package a trained run as the built-in default model (elmo_dist/models/default/).

    python tools/package_model.py --run RUN_DIR [--dest elmo_dist/models/default] [--dtype float32]

Build tooling for the built-in model, run from the repository root (not part of the installed package).

Writes options.json + weights.hdf5 (official layout), frequencies.tsv (training word counts, for SIF
pooling) and model.json (fingerprint, architecture,
parameter count, training record) that the model card and the tests quote.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
from pathlib import Path

import torch

from elmo_dist.model.elmo import Elmo
from elmo_dist.storage import atomic_local_path
from elmo_dist.paths import default_model_path
from elmo_dist.train.trainer import make_options, read_sentences, write_frequencies

MAX_BYTES = 20 << 20
DEFAULT_DEST = Path(__file__).resolve().parents[1] / "elmo_dist" / "models" / "default"


def machine() -> str:
    """This machine in a few words (where a model is packaged is where it was trained): CPUs, model, GPU."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} vCPU ({name}), {gpu}"


def package(run_dir: str, dest: str, dtype: str = "float32", corpus: str | None = None,
            hardware: str | None = None, notes: list[str] | None = None) -> dict:
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True, map_location="cpu")
    arch = state.get("arch", state["config"]["arch"])
    if arch.startswith("init:"):  # fine-tuned: the architecture of the model it started from
        init = state["config"]["init_from"]
        opts = Elmo.from_pretrained(default_model_path() if init == "default" else init).opts
    else:
        opts = make_options(arch)
    elmo = Elmo(opts)
    elmo.bilm.load_state_dict(state["bilm"])
    elmo.save_pretrained(dest, dtype=dtype)
    size = os.path.getsize(os.path.join(dest, "weights.hdf5"))
    if size > MAX_BYTES and dtype == "float32":
        elmo.save_pretrained(dest, dtype="float16")  # loading restores float32
        dtype, size = "float16", os.path.getsize(os.path.join(dest, "weights.hdf5"))
    loaded = Elmo.from_pretrained(dest)
    freq = os.path.join(run_dir, "model", "frequencies.tsv")
    if os.path.exists(freq):
        shutil.copyfile(freq, os.path.join(dest, "frequencies.tsv"))
    elif corpus:
        write_frequencies(collections.Counter(t for s in read_sentences(os.path.join(corpus, "train.txt")) for t in s),
                          os.path.join(dest, "frequencies.tsv"))
    info = {
        "name": f"elmo-dist-{state['config']['arch']}",
        "init_from": state["config"].get("init_from", ""),
        "fingerprint": loaded.fingerprint,
        "arch": state["config"]["arch"],
        "output_dim": opts.output_dim,
        "parameters": sum(p.numel() for p in loaded.bilm.parameters()),
        "weights_dtype": dtype,
        "weights_bytes": size,
        "training": {
            "steps": state["step"], "epochs_completed": state["epoch"], "tokens_seen": state["tokens_seen"],
            "training_minutes": round(state["elapsed"] / 60, 1), "vocab_size": state["config"]["vocab_size"],
            "history": state["history"], "config": state["config"],
            "hardware": hardware or machine(), "notes": list(notes or []),
            **({"init_fingerprint": arch.split(":", 1)[1]} if arch.startswith("init:") else {}),
        },
    }
    with atomic_local_path(os.path.join(dest, "model.json")) as tmp, open(tmp, "w") as fh:
        json.dump(info, fh, indent=1)
    return info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python tools/package_model.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="training run directory (checkpoint.pt)")
    p.add_argument("--dest", default=str(DEFAULT_DEST), help="model directory to write (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--corpus", help="training corpus (train.txt): word counts for frequencies.tsv when the run's "
                                    "export has none")
    p.add_argument("--hardware", help="what it was trained on, for the card (default: this machine's CPUs and GPU)")
    p.add_argument("--note", action="append", default=[],
                   help="a line for the card's training section (how the run went: resumes, changes). Repeatable")
    args = p.parse_args(argv)
    info = package(args.run, args.dest, args.dtype, args.corpus, args.hardware, args.note)
    print(json.dumps({k: v for k, v in info.items() if k != "training"}, indent=1))


if __name__ == "__main__":
    main()
