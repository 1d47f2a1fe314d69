"""Embed: sentences -> sentence (and token) vectors with the biLM, in input order.

Sentences are grouped by length under a token budget (``stages.batch``), embedded, and put back in
input order. Every sentence starts from a zero LSTM state, so its vectors do not depend on the
batch it lands in. The model loads once per ``Embedder`` (once per Ray actor).
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pyarrow as pa
import torch

from elmo_dist import schema as S
from elmo_dist.config import EmbeddingSettings, token_budget_for
from elmo_dist.errors import ElmoDistError
from elmo_dist.model.elmo import Elmo, pool
from elmo_dist.model.threads import keep_freed_memory

logger = logging.getLogger(__name__)


class DeviceError(ElmoDistError, RuntimeError):
    """GPUs were asked for (``--device gpu``) where no CUDA device is usable."""


def pick_device(requested_gpus: float = 0.0, strict: bool = False) -> str:
    """"cuda" when a CUDA device is visible (Ray sets CUDA_VISIBLE_DEVICES per actor), else "cpu".

    Asking for GPUs where CUDA is absent (a logical GPU on a CPU machine) falls back to the CPU
    with a warning, or, with ``strict`` (``--device gpu``), raises: a job that asked for GPUs never
    embeds on the CPU silently.
    """
    if torch.cuda.is_available():
        return "cuda"
    if requested_gpus and strict:
        raise DeviceError(f"--device gpu: this actor was given {requested_gpus} GPU(s) but sees no CUDA device "
                           "(a CPU build of torch, or no driver on the node); not embedding on the CPU")
    if requested_gpus:
        msg = f"{requested_gpus} GPU(s) requested but CUDA is not available: embedding on the CPU"
        logger.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return "cpu"


def fixed_list(values: np.ndarray, *dims: int) -> pa.Array:
    """(N, *dims) NumPy -> nested fixed-size lists, innermost last."""
    arr: pa.Array = pa.array(values.reshape(-1))
    for d in reversed(dims):
        arr = pa.FixedSizeListArray.from_arrays(arr, d)
    return arr


class Embedder:
    """Loads the model once; ``__call__`` embeds a prepared table (see stages.prepare)."""

    def __init__(self, model: str, embedding: EmbeddingSettings, *, token_budget: int | None = None,
                 compute_dtype: str = "float32", device: str | None = None, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        keep_freed_memory()  # an actor is a long-lived compute process: its batches reuse freed pages
        self.device = device or pick_device()
        self.settings = embedding
        self.token_budget = token_budget_for(self.device, token_budget)
        self.elmo = Elmo.from_pretrained(model, mix_weights=embedding.mix_weights, gamma=embedding.gamma,
                                         compute_dtype=compute_dtype).to(self.device)
        self.dim = self.elmo.output_dim
        self.n_layers = self.elmo.bilm.num_layers

    @property
    def token_layers(self) -> int | None:
        return self.n_layers if self.settings.token_output == "all" else None

    def __call__(self, table: pa.Table) -> tuple[pa.Table, dict[str, float]]:
        """
        Args:
            table: prepared sentences (needs ``tokens`` and ``n_tokens``).
        Returns:
            the table plus ``sentence_embedding`` (and ``token_embeddings``); stats.
        """
        t0 = time.perf_counter()
        st, np_dtype = self.settings, np.dtype(self.settings.dtype)
        tokens = table.column(S.TOKENS).to_pylist()
        lengths = np.asarray(table.column(S.N_TOKENS).to_numpy(), dtype=np.int64)  # (N,)
        n, d = len(tokens), self.dim
        sent = np.zeros((n, d), dtype=np.float32)  # (N, D)
        per_token: list[np.ndarray | None] = [None] * n
        padded = 0
        for idx, layers, mask in self.elmo.embed_in_batches(tokens, self.token_budget):
            padded += len(idx) * int(lengths[idx].max())
            sel = self.elmo.select(layers, st.sentence_output)  # (b, T, D)
            w = self.elmo.sif_weights([tokens[i] for i in idx], mask.shape[1]).to(sel.device) \
                if st.pooling == "sif" else None
            sent[idx] = pool(sel, mask, st.pooling, w).cpu().numpy()
            if st.token_embeddings:
                tok = self.elmo.select(layers, st.token_output).cpu().numpy()  # (b, T, D) / (b, L+1, T, D)
                for j, i in enumerate(idx):
                    v = tok[j][..., : lengths[i], :]
                    per_token[i] = v if v.ndim == 2 else v.transpose(1, 0, 2)  # (T_i, D) / (T_i, L+1, D)
        out = table.append_column(S.SENTENCE_EMBEDDING, fixed_list(sent.astype(np_dtype), d))
        if st.token_embeddings:
            flat = np.concatenate([v for v in per_token if v is not None]) if n else \
                np.zeros((0, d), np.float32)
            dims = (d,) if self.token_layers is None else (self.token_layers, d)
            values = fixed_list(flat.astype(np_dtype), *dims)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
            out = out.append_column(S.TOKEN_EMBEDDINGS, pa.ListArray.from_arrays(offsets, values))
        seconds = time.perf_counter() - t0
        real = int(lengths.sum())
        return out, {"sentences": n, "tokens": real, "padded_tokens": padded, "embed_seconds": seconds}
