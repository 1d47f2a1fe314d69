"""elmo-dist: exact ELMo (AllenNLP biLM) embeddings, batch-invariant, at corpus scale on Ray."""

from __future__ import annotations

from elmo_dist.paths import default_model_path

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: importing elmo_dist must not import torch
    if name == "Elmo":
        from elmo_dist.model.elmo import Elmo

        return Elmo
    if name == "Postprocessor":
        from elmo_dist.similarity import Postprocessor

        return Postprocessor
    if name == "read_embeddings":
        from elmo_dist.output import read_embeddings

        return read_embeddings
    raise AttributeError(name)


__all__ = ["Elmo", "Postprocessor", "default_model_path", "read_embeddings", "__version__"]
