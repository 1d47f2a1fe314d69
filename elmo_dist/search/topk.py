"""The streaming top-k kernel of exact search: cosine scores of batches of rows, running top-k.

Exact search streams the rows in batches of B and keeps a running top-k per query, as global row
numbers, so memory is O(B x D + Q x K) whatever the corpus size. Scores are computed with NumPy, or
with torch on a CUDA device (``resolve_device``); torch is imported only then.

Shapes: D = embedding width, Q queries, B = rows in a batch, K = k.
"""

from __future__ import annotations

import numpy as np

from elmo_dist.errors import SearchError


class TopK:
    """Running top-k per query over batches of scores.

    Once k rows are held, a batch only contributes the scores above each query's current k-th
    best (a comparison pass; few rows pass after the first batches), so the cost per batch is one
    matrix product plus O(Q x B) comparisons.
    """

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = np.empty((n_queries, 0), np.float32)
        self.rows = np.empty((n_queries, 0), np.int64)

    def push(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """Dense candidates. scores: (Q, C) float32; rows: (Q, C) or (C,) global row numbers."""
        rows = np.broadcast_to(rows, scores.shape)
        s = np.concatenate([self.scores, scores], axis=1)
        r = np.concatenate([self.rows, rows], axis=1)
        c = s.shape[1]
        if c > self.k:
            keep = np.argpartition(s, c - self.k, axis=1)[:, c - self.k:]
            s, r = np.take_along_axis(s, keep, 1), np.take_along_axis(r, keep, 1)
        self.scores, self.rows = s, r

    def push_batch(self, scores: np.ndarray, start: int) -> None:
        """scores: (Q, B) float32 of rows start .. start + B - 1."""
        q, b = scores.shape
        if self.scores.shape[1] == self.k:  # full: only scores beating the k-th best matter
            mask = scores > self.scores.min(axis=1)[:, None]
            n = int(np.count_nonzero(mask))
            if n == 0:
                return
            if n <= scores.size // 8:
                flat = np.flatnonzero(mask)  # much faster than the 2-D np.nonzero
                qi, bi = np.divmod(flat, b)
                all_q = np.concatenate([np.repeat(np.arange(q), self.k), qi])
                all_s = np.concatenate([self.scores.ravel(), scores[qi, bi]])
                all_r = np.concatenate([self.rows.ravel(), bi.astype(np.int64) + start])
                order = np.lexsort((all_r, -all_s, all_q))  # by query, then score desc, then row
                all_q, all_s, all_r = all_q[order], all_s[order], all_r[order]
                rank = np.arange(len(all_q)) - np.searchsorted(all_q, np.arange(q))[all_q]
                keep = rank < self.k  # every query holds >= k entries
                self.scores, self.rows = all_s[keep].reshape(q, self.k), all_r[keep].reshape(q, self.k)
                return
        if b > self.k:
            idx = np.argpartition(scores, b - self.k, axis=1)[:, b - self.k:]  # (Q, K)
            self.push(np.take_along_axis(scores, idx, 1), idx.astype(np.int64) + start)
        else:
            self.push(scores, np.arange(start, start + b, dtype=np.int64))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(Q, K') scores descending (ties: lower row first) and their rows, K' = min(k, rows seen)."""
        order = np.lexsort((self.rows, -self.scores), axis=-1)
        return np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.rows, order, 1)


def inverse_norms(x: np.ndarray) -> np.ndarray:
    """1 / ||x_i|| per row, 0 for a zero row (whose cosine with anything is then 0, not NaN)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    with np.errstate(divide="ignore"):
        return np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x * inverse_norms(x)[:, None]


def resolve_device(device):
    """None (NumPy) or a CUDA torch.device. ``"auto"``: CUDA when present."""
    if device is None or str(device) in ("cpu", "numpy"):
        return None
    import torch

    if str(device) == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    dev = torch.device(device)
    if dev.type == "cpu":
        return None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SearchError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


class Scorer:
    """Cosine scores of batches against the (normalised) queries, top-k per batch: NumPy or torch."""

    def __init__(self, queries: np.ndarray, k: int, device):
        self.q = normalize(queries)  # (Q, D)
        self.k = k
        self.device = device
        if device is not None:
            import torch

            self.q_t = torch.from_numpy(self.q).to(device)

    def __call__(self, top: TopK, x, start: int, unit: bool = False) -> None:
        """x: (B, D) numpy (any float) or a torch tensor on the device; unit: rows already normalised."""
        if self.device is None:
            x = np.asarray(x, dtype=np.float32)
            s = self.q @ x.T  # (Q, B)
            if not unit:
                s *= inverse_norms(x)[None, :]
            top.push_batch(s, start)
            return
        import torch

        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x).to(self.device)
        x = x.float()
        s = self.q_t @ x.T  # (Q, B)
        if not unit:
            n = x.norm(dim=1)
            s = s * torch.where(n > 0, 1.0 / n, torch.zeros_like(n))[None, :]
        val, idx = torch.topk(s, min(self.k, s.shape[1]), dim=1)  # (Q, K)
        top.push(val.cpu().numpy(), idx.cpu().numpy().astype(np.int64) + start)


# the names of the single-module search.py, kept for existing callers
_TopK, _Scorer, _inverse_norms, _resolve_device = TopK, Scorer, inverse_norms, resolve_device
