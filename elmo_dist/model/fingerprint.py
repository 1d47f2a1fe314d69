"""A model's identity: a hash of its options and weights, computed without building the model."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from elmo_dist.model.files import load_official_files
from elmo_dist.model.options import ElmoOptions


def fingerprint_arrays(opts: ElmoOptions, weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(opts.to_official_dict(), sort_keys=True).encode())
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(path: str) -> tuple[str, int]:
    """(fingerprint, output dim D) of the model directory or URI ``path``."""
    fp, dim, _ = model_summary(path)
    return fp, dim


def model_summary(path: str) -> tuple[str, int, int]:
    """(fingerprint, output dim D, layers L+1) of the model directory or URI ``path``."""
    opts, weights = load_official_files(path)
    return fingerprint_arrays(opts, weights), opts.output_dim, opts.lstm.n_layers + 1
