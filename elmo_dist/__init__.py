"""elmo-dist: exact ELMo (AllenNLP biLM) embeddings, batch-invariant, at corpus scale on Ray."""

from __future__ import annotations

import os

__version__ = "0.1.0"

_DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "models", "default")


def default_model_path() -> str:
    """Directory holding the built-in default model's options.json and weights.hdf5."""
    if not os.path.exists(os.path.join(_DEFAULT_MODEL, "weights.hdf5")):
        raise FileNotFoundError(
            f"the built-in default model is not installed at {_DEFAULT_MODEL}; pass a model directory"
        )
    return _DEFAULT_MODEL


def __getattr__(name: str):  # lazy: importing elmo_dist must not import torch
    if name == "Elmo":
        from elmo_dist.model.elmo import Elmo

        return Elmo
    if name == "read_embeddings":
        from elmo_dist.output import read_embeddings

        return read_embeddings
    raise AttributeError(name)


__all__ = ["Elmo", "default_model_path", "read_embeddings", "__version__"]
