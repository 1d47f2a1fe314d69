"""Corpus-fitted post-processing of sentence vectors, for comparing them by cosine.

Mean-pooled ELMo vectors are anisotropic: every pair has a cosine near 0.9 and a few directions
dominate (Ethayarajh 2019; Timkey & van Schijndel 2021). Cheap corpus-fitted remedies:

* ``center``: subtract the corpus mean;
* ``abtt``: "all-but-the-top" (Mu & Viswanath 2018): subtract the mean, then remove the projections
  on the top ``k`` principal components;
* ``whiten``: subtract the mean and whiten with the top ``k`` components (Su et al. 2021):
  ``(x - mu) @ U_k / sqrt(s_k)``, which also reduces the dimension to ``k``;
* ``none``: the vectors as they are.

Fitting needs only the count, the sum and the sum of outer products of the vectors
(``Moments``), which merge exactly: the corpus job accumulates them per unit and merges them at the
end, so a job killed and resumed fits the same post-processor as one run in one go.

Shapes: N vectors, D dimensions, k components.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from elmo_dist import storage

logger = logging.getLogger(__name__)

Method = Literal["none", "center", "abtt", "whiten"]
METHODS = ("none", "center", "abtt", "whiten")
DEFAULT_METHOD: Method = "center"  # measured best across the evaluate sets: docs/similarity.md
DEFAULT_K = {"abtt": 3, "whiten": 256}


def _digest(header: dict, *arrays: np.ndarray | None) -> str:
    """A content fingerprint (16 hex digits): the same numbers give the same digest on any machine
    (``to_bytes`` is not one: the npz zip records the time it was written)."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for a in arrays:
        if a is None:
            h.update(b"-")
            continue
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(f"{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass
class Moments:
    """Count, sum (D,) and sum of outer products (D, D) of vectors, in float64; mergeable."""

    n: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def zeros(cls, dim: int) -> "Moments":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, x: np.ndarray) -> "Moments":
        x = np.asarray(x, dtype=np.float64)  # (N, D)
        return cls(int(x.shape[0]), x.sum(axis=0), x.T @ x)

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def __sub__(self, other: "Moments") -> "Moments":
        """The moments without ``other``'s vectors (which must be among them): a refresh drops the
        vectors of changed and deleted files this way."""
        if other.n > self.n:
            raise ValueError(f"cannot remove {other.n} vectors from moments of {self.n}")
        return Moments(self.n - other.n, self.total - other.total, self.outer - other.outer)

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.n, 1)

    @property
    def covariance(self) -> np.ndarray:
        mu = self.mean
        return self.outer / max(self.n, 1) - np.outer(mu, mu)

    def fingerprint(self) -> str:
        """Content fingerprint (16 hex digits) of the count, sum and outer products."""
        return _digest({"n": int(self.n)}, self.total, self.outer)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, n=np.array(self.n), total=self.total, outer=self.outer)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Moments":
        z = np.load(io.BytesIO(data))
        return cls(int(z["n"]), z["total"], z["outer"])


class Postprocessor:
    """``fit`` on an (N, D) array (or on ``Moments``), ``transform`` vectors, ``save``/``load``.

    >>> pp = Postprocessor.fit(vectors, method="abtt", k=3)
    >>> pp.transform(vectors)  # (N, D); "whiten" gives (N, k)
    """

    def __init__(self, method: Method, mean: np.ndarray, components: np.ndarray | None = None,
                 scale: np.ndarray | None = None, n: int = 0):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method = method
        self.mean = np.asarray(mean, dtype=np.float64)  # (D,)
        self.components = components  # (D, k): abtt directions removed / whitening basis
        self.scale = scale  # (k,): whitening 1 / sqrt(eigenvalue)
        self.n = n

    @classmethod
    def fit(cls, x: np.ndarray | Moments, method: Method | None = None, k: int | None = None,
            eps: float = 1e-8) -> "Postprocessor":
        """Fit on vectors (N, D) or their ``Moments``. ``method`` None: ``DEFAULT_METHOD``."""
        method = method or DEFAULT_METHOD
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        m = x if isinstance(x, Moments) else Moments.of(x)
        if m.n < 2 and method != "none":
            raise ValueError(f"fitting {method!r} needs at least 2 vectors, got {m.n}")
        dim = m.total.shape[0]
        if method in ("none", "center"):
            mean = m.mean if method == "center" else np.zeros(dim)
            return cls(method, mean, n=m.n)
        k = min(int(k or DEFAULT_K[method]), dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if method == "whiten" and m.n - 1 <= k:
            logger.warning("whiten with k=%d on %d vectors: every pair comes out equally similar (n vectors "
                           "whitened onto n-1 or more dimensions form a regular simplex); fit on more than "
                           "k+1 vectors or use a smaller k", k, m.n)
        vals, vecs = np.linalg.eigh(m.covariance)  # ascending
        order = np.argsort(vals)[::-1][:k]
        comps = vecs[:, order]  # (D, k)
        if method == "abtt":
            return cls(method, m.mean, comps, n=m.n)
        return cls(method, m.mean, comps, 1.0 / np.sqrt(np.maximum(vals[order], eps)), n=m.n)

    @property
    def output_dim(self) -> int:
        return self.components.shape[1] if self.method == "whiten" else self.mean.shape[0]

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, D) (``whiten``: (N, k)), float32."""
        x = np.asarray(x, dtype=np.float64)
        if self.method == "none":
            return x.astype(np.float32)
        y = x - self.mean
        if self.method == "abtt":
            y = y - (y @ self.components) @ self.components.T
        elif self.method == "whiten":
            y = (y @ self.components) * self.scale
        return y.astype(np.float32)

    def fingerprint(self) -> str:
        """Content fingerprint (16 hex digits) of what ``transform`` computes: equal fingerprints,
        equal transforms (the count it was fitted on is not part of it)."""
        return _digest({"method": self.method}, self.mean, self.components, self.scale)

    # ---- persistence ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {"mean": self.mean}
        if self.components is not None:
            arrays["components"] = self.components
        if self.scale is not None:
            arrays["scale"] = self.scale
        np.savez(buf, meta=np.frombuffer(json.dumps({"method": self.method, "n": self.n}).encode(), np.uint8),
                 **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Postprocessor":
        z = np.load(io.BytesIO(data))
        meta = json.loads(bytes(z["meta"]).decode())
        return cls(meta["method"], z["mean"], z["components"] if "components" in z else None,
                   z["scale"] if "scale" in z else None, meta.get("n", 0))

    def save(self, uri: str) -> None:
        """Write to a local path or s3:// URI, atomically."""
        fs, path = storage.filesystem(uri)
        storage.write_bytes(fs, path, self.to_bytes())

    @classmethod
    def load(cls, uri: str) -> "Postprocessor":
        fs, path = storage.filesystem(uri)
        data = storage.read_bytes(fs, path)
        if data is None:
            raise FileNotFoundError(f"{storage.redact(uri)}: no post-processor there")
        return cls.from_bytes(data)

    def __repr__(self) -> str:
        return f"Postprocessor({self.method}, D={self.mean.shape[0]}, out={self.output_dim}, fitted on {self.n})"
