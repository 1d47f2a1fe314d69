"""Where the package's own data lives: the built-in model and the bundled sample corpus."""

from __future__ import annotations

import os

_PKG = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL_DIR = os.path.join(_PKG, "models", "default")
SAMPLE_CORPUS = os.path.join(_PKG, "data", "sample_corpus.parquet")


def default_model_path() -> str:
    """Directory holding the built-in default model's options.json and weights.hdf5."""
    if not os.path.exists(os.path.join(DEFAULT_MODEL_DIR, "weights.hdf5")):
        raise FileNotFoundError(
            f"the built-in default model is not installed at {DEFAULT_MODEL_DIR}; pass a model directory")
    return DEFAULT_MODEL_DIR


def resolve_model(model: str | os.PathLike | None) -> str:
    """The model location a job uses: the built-in model for None, an absolute path for a local
    directory, a URI as it is (``s3://...``, or ``OPTIONS,WEIGHTS`` pairs of files)."""
    if model is None or str(model) == "":
        return default_model_path()
    model = str(model)
    if "://" in model:
        return model
    if "," in model:
        return ",".join(p if "://" in p else os.path.abspath(p) for p in model.split(","))
    return os.path.abspath(os.path.expanduser(model))
