"""weights.hdf5 of the official ELMo format: read (local or s3://), validate, write.

Datasets (TF layout, ``y = x @ W + b``; see docs/elmo-format.md of the project):
``char_embed (261, E)``, ``CNN/W_cnn_i (1, w_i, E, n_i)``, ``CNN/b_cnn_i (n_i,)``,
``CNN_high_k/{W,b}_{transform,carry}``, ``CNN_proj/{W,b}_proj``,
``RNN_d/RNN/MultiRNNCell/Cell{l}/LSTMCell/{W_0 (2P, 4C), B (4C,), W_P_0 (C, P)}``.
This module only moves arrays; the layout conversions live with the modules that use them.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Mapping

import h5py
import numpy as np

from elmo_dist.errors import ElmoDistError
from elmo_dist.model.options import ElmoOptions
from elmo_dist.storage import atomic_local_path

logger = logging.getLogger(__name__)


class WeightsError(ElmoDistError, ValueError):
    """weights.hdf5 is missing, truncated, or does not match options.json."""


def lstm_prefix(direction: int, layer: int) -> str:
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def expected_shapes(opts: ElmoOptions, n_char_rows: int = 261) -> dict[str, tuple[int, ...]]:
    """Every dataset the model reads, with the shape ``opts`` implies."""
    e, f = opts.char_cnn.embedding.dim, opts.char_cnn.n_filters
    p, c = opts.lstm.projection_dim, opts.lstm.dim
    shapes: dict[str, tuple[int, ...]] = {"char_embed": (n_char_rows, e)}
    for i, (width, n) in enumerate(opts.char_cnn.filters):
        shapes[f"CNN/W_cnn_{i}"] = (1, width, e, n)
        shapes[f"CNN/b_cnn_{i}"] = (n,)
    for k in range(opts.char_cnn.n_highway):
        for part in ("transform", "carry"):
            shapes[f"CNN_high_{k}/W_{part}"] = (f, f)
            shapes[f"CNN_high_{k}/b_{part}"] = (f,)
    shapes["CNN_proj/W_proj"] = (f, p)
    shapes["CNN_proj/b_proj"] = (p,)
    for d in range(2):
        for layer in range(opts.lstm.n_layers):
            pre = lstm_prefix(d, layer)
            shapes[f"{pre}/W_0"] = (2 * p, 4 * c)
            shapes[f"{pre}/B"] = (4 * c,)
            shapes[f"{pre}/W_P_0"] = (c, p)
    return shapes


def _open_bytes(uri: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise WeightsError(f"{uri}: no such weights file") from None
    except Exception as e:  # network, credentials, bucket
        raise WeightsError(f"{uri}: cannot read weights ({type(e).__name__}: {e})") from e


def read_weights(path: str, opts: ElmoOptions) -> dict[str, np.ndarray]:
    """Read and validate every dataset of ``weights.hdf5`` at ``path`` (local path or URI).

    Raises:
        WeightsError naming the file, the dataset and the expected shape on any mismatch.
    """
    is_remote = "://" in path and not path.startswith("file://")
    source: str | io.BytesIO = io.BytesIO(_open_bytes(path)) if is_remote else path
    if not is_remote and not os.path.exists(path):
        raise WeightsError(f"{path}: no such weights file")
    try:
        fh = h5py.File(source, "r")
    except OSError as e:
        raise WeightsError(
            f"{path}: not a readable HDF5 file (truncated or wrong file?): {e}"
        ) from None
    out: dict[str, np.ndarray] = {}
    with fh:
        if "char_embed" not in fh:
            raise WeightsError(f"{path}: missing dataset 'char_embed' (is this an ELMo weights file?)")
        n_rows = fh["char_embed"].shape[0]
        if n_rows not in (261, 262):
            raise WeightsError(
                f"{path}: dataset 'char_embed' has {n_rows} rows, expected 261 "
                f"(shape (261, {opts.char_cnn.embedding.dim}))"
            )
        for name, shape in expected_shapes(opts, n_rows).items():
            if name not in fh:
                raise WeightsError(f"{path}: missing dataset '{name}' (expected shape {shape})")
            ds = fh[name]
            if tuple(ds.shape) != shape:
                raise WeightsError(
                    f"{path}: dataset '{name}' has shape {tuple(ds.shape)}, expected {shape} "
                    "(do options.json and weights.hdf5 belong together?)"
                )
            try:
                out[name] = np.asarray(ds[...], dtype=np.float32)
            except (OSError, ValueError) as e:
                raise WeightsError(
                    f"{path}: dataset '{name}' (shape {shape}) cannot be read, file truncated? ({e})"
                ) from None
    for name, arr in out.items():
        if not np.all(np.isfinite(arr)):
            raise WeightsError(f"{path}: dataset '{name}' holds NaN or infinite values")
    return out


def write_weights(path: str, opts: ElmoOptions, arrays: Mapping[str, np.ndarray],
                  dtype: str = "float32") -> None:
    """Write ``arrays`` in the official layout (validated against ``opts``), atomically."""
    shapes = expected_shapes(opts)
    missing = sorted(set(shapes) - set(arrays))
    if missing:
        raise WeightsError(f"cannot write {path}: missing datasets {missing}")
    with atomic_local_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            for name, shape in shapes.items():
                arr = np.asarray(arrays[name], dtype=np.float32)
                if arr.shape != shape:
                    raise WeightsError(f"cannot write {path}: '{name}' has shape {arr.shape}, expected {shape}")
                fh.create_dataset(name, data=arr.astype(dtype))
