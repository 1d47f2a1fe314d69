"""The assembled ELMo: token encoder + biLSTM = biLM; scalar mix; the public ``Elmo`` class.

Shapes: B sentences, T tokens (BOS/EOS excluded unless said), W = 50 chars per token,
U distinct tokens in a batch, D = 2 x projection dim (output width), L + 1 output layers.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn

from elmo_dist.model.bilstm import BiLstm
from elmo_dist.model.char_cnn import CharCNN
from elmo_dist.model.fingerprint import fingerprint_arrays
from elmo_dist.model.options import ElmoOptions, OptionsError
from elmo_dist.model.weights import read_weights, write_weights
from elmo_dist.text.chars import BOS_IDS, EOS_IDS, tokens_to_char_ids

logger = logging.getLogger(__name__)

Output = Literal["mix", "all"] | int
Pooling = Literal["mean", "max"] | None
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Batch:
    """A batch in the form the model consumes: distinct tokens once, sentences as indices.

    token_char_ids: (U, W) char ids of the distinct tokens; row 0 is BOS, row 1 EOS.
    token_index: (B, T + 2) index into token_char_ids per position, BOS and EOS included;
        padding points at U (a zero vector).
    lengths: (B,) tokens per sentence (BOS/EOS excluded).
    """

    token_char_ids: np.ndarray
    token_index: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_sentences(cls, sentences: Sequence[Sequence[str]]) -> "Batch":
        vocab: dict[str, int] = {}
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        b, t = len(sentences), int(lengths.max(initial=0))
        flat = np.fromiter(
            (vocab.setdefault(tok, len(vocab)) for s in sentences for tok in s),
            dtype=np.int64, count=int(lengths.sum()),
        ) + 2  # (sum T_b,) rows 0/1 are BOS/EOS
        u = len(vocab) + 2
        ids = np.concatenate([BOS_IDS[None], EOS_IDS[None], tokens_to_char_ids(list(vocab))])  # (U, W)
        index = np.full((b, t + 2), u, dtype=np.int64)  # (B, T + 2) padding -> U
        index[:, 0] = 0
        rows = np.repeat(np.arange(b), lengths)
        cols = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1
        index[rows, cols] = flat
        index[np.arange(b), lengths + 1] = 1
        return cls(ids, index, lengths)

    @classmethod
    def from_char_ids(cls, char_ids: np.ndarray, lengths: np.ndarray | None = None) -> "Batch":
        """From AllenNLP's ``batch_to_ids`` layout (B, T, W); distinct rows found with np.unique."""
        b, t, w = char_ids.shape
        if lengths is None:
            lengths = (char_ids > 0).any(-1).sum(-1).astype(np.int64)  # (B,)
        mask = np.arange(t)[None] < lengths[:, None]  # (B, T)
        real = np.ascontiguousarray(char_ids[mask])  # (N, W)
        uniq, inv = np.unique(real, axis=0, return_inverse=True)
        ids = np.concatenate([BOS_IDS[None], EOS_IDS[None], uniq])  # (U, W)
        index = np.full((b, t + 2), len(ids), dtype=np.int64)
        index[:, 0] = 0
        inner = index[:, 1:t + 1]
        inner[mask] = inv.reshape(-1) + 2
        index[np.arange(b), lengths + 1] = 1
        return cls(ids, index, lengths.astype(np.int64))


class ScalarMix(nn.Module):
    """``gamma * sum_k softmax(w)_k * layer_k`` (AllenNLP's ScalarMix without layer norm)."""

    def __init__(self, n_layers: int, weights: Sequence[float] | None = None, gamma: float = 1.0):
        super().__init__()
        w = torch.tensor(list(weights) if weights is not None else [0.0] * n_layers)
        if w.numel() != n_layers:
            raise ValueError(f"scalar mix needs {n_layers} weights, got {w.numel()}")
        self.weights = nn.Parameter(w.float(), requires_grad=False)  # pre-softmax
        self.gamma = nn.Parameter(torch.tensor(float(gamma)), requires_grad=False)

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        """(L+1, ..., D) -> (..., D)"""
        s = torch.softmax(self.weights, dim=0)  # (L+1,)
        out = s[0] * layers[0]
        for k in range(1, layers.shape[0]):
            out = out + s[k] * layers[k]
        return self.gamma * out


class BiLM(nn.Module):
    """Char-CNN token encoder + two LSTM LMs: ``_ElmoBiLm`` without its statefulness."""

    def __init__(self, opts: ElmoOptions):
        super().__init__()
        self.opts = opts
        self.char_cnn = CharCNN(opts.char_cnn, opts.lstm.projection_dim)
        self.lstm = BiLstm(opts.lstm)

    @property
    def num_layers(self) -> int:
        return self.opts.lstm.n_layers + 1

    def forward(self, token_char_ids: torch.Tensor, token_index: torch.Tensor,
                lengths: torch.Tensor, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
        """
        Args:
            token_char_ids: (U, W) distinct tokens; token_index: (B, T+2); lengths: (B,).
        Returns:
            (L+1, B, T+2, D) activations with BOS/EOS, exactly 0 at padding.
        """
        tok = self.char_cnn(token_char_ids)  # (U, D/2)
        tok = torch.cat([tok, tok.new_zeros(1, tok.shape[1])])  # (U+1, D/2): padding row
        x = tok[token_index]  # (B, T+2, D/2)
        full_len = lengths + 2  # (B,) with BOS/EOS
        t2 = token_index.shape[1]
        mask = (torch.arange(t2, device=x.device)[None] < full_len[:, None])  # (B, T+2)
        x = x * mask[..., None].to(x.dtype)
        layers = [torch.cat([x, x], dim=-1)]  # layer 0: (B, T+2, D), token vector duplicated
        layers += self.lstm(x, full_len, compute_dtype)  # L x (B, T+2, D)
        return torch.stack(layers)  # (L+1, B, T+2, D)


def load_official_files(path: str) -> tuple[ElmoOptions, dict[str, np.ndarray]]:
    """Options and weight arrays of a model directory (local or URI), validated.

    ``path`` may also name the two files as ``"options.json,weights.hdf5"``.
    """
    if "," in path:
        opt_uri, w_uri = path.split(",", 1)
    else:
        base = path.rstrip("/")
        opt_uri, w_uri = f"{base}/options.json", f"{base}/weights.hdf5"
    try:
        text = _read_text(opt_uri)
    except FileNotFoundError:
        raise OptionsError(f"{opt_uri}: no such options file (expected options.json beside weights.hdf5)") from None
    except OSError as e:
        raise OptionsError(f"{opt_uri}: cannot read options ({type(e).__name__}: {e})") from None
    opts = ElmoOptions.from_json(text, source=opt_uri)
    return opts, read_weights(w_uri, opts)


def _read_text(uri: str) -> str:
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        with fsspec.open(uri, "r") as fh:
            return fh.read()
    with open(uri) as fh:
        return fh.read()


class Elmo(nn.Module):
    """ELMo contextual embeddings, exact to AllenNLP, stateless and batch-invariant.

    >>> elmo = Elmo.from_pretrained()                        # the built-in default model
    >>> layers, mask = elmo.embed_batch([["Hello", "world"]])   # (1, 3, 2, D), (1, 2)
    """

    def __init__(self, opts: ElmoOptions, mix_weights: Sequence[float] | None = None,
                 gamma: float = 1.0, compute_dtype: str = "float32"):
        super().__init__()
        self.opts = opts
        self.bilm = BiLM(opts)
        self.scalar_mix = ScalarMix(self.bilm.num_layers, mix_weights, gamma)
        self.compute_dtype = compute_dtype
        self.fingerprint = ""
        self.source = ""
        self.eval()

    # ---- loading and saving ------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *,
                        mix_weights: Sequence[float] | None = None, gamma: float = 1.0,
                        compute_dtype: str = "float32") -> "Elmo":
        """Load options.json + weights.hdf5 from a directory (local or s3://).

        ``path`` may also be a pair given as ``"options.json,weights.hdf5"``. With no path, the
        built-in default model is loaded.
        """
        if path is None:
            from elmo_dist import default_model_path

            path = default_model_path()
        path = str(path)
        opts, weights = load_official_files(path)
        model = cls(opts, mix_weights, gamma, compute_dtype)
        model.load_official(weights)
        model.fingerprint = fingerprint_arrays(opts, weights)
        model.source = path
        logger.info("loaded ELMo %s (D=%d, %d layers, fingerprint %s)", path,
                    opts.output_dim, model.bilm.num_layers, model.fingerprint)
        return model

    def load_official(self, weights: dict[str, np.ndarray]) -> None:
        self.bilm.char_cnn.load_official(weights)
        self.bilm.lstm.load_official(weights)

    def export_official(self) -> dict[str, np.ndarray]:
        return {**self.bilm.char_cnn.export_official(), **self.bilm.lstm.export_official()}

    def save_pretrained(self, directory: str | os.PathLike, dtype: str = "float32") -> None:
        """Write options.json + weights.hdf5 in the official layout."""
        directory = str(directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "options.json"), "w") as fh:
            json.dump(self.opts.to_official_dict(), fh, indent=2, sort_keys=True)
        write_weights(os.path.join(directory, "weights.hdf5"), self.opts, self.export_official(), dtype)

    @property
    def device(self) -> torch.device:
        return self.scalar_mix.weights.device

    @property
    def output_dim(self) -> int:
        return self.opts.output_dim

    # ---- the forward pass --------------------------------------------------------------
    def forward_batch(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Returns:
            layers (L+1, B, T, D) float32 without BOS/EOS, and mask (B, T) bool.
        """
        dev = self.device
        if dev.type == "cuda":  # pinned host memory makes the copies asynchronous
            as_t = lambda a: torch.from_numpy(a).pin_memory().to(dev, non_blocking=True)  # noqa: E731
        else:
            as_t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
        ids, index, lengths = as_t(batch.token_char_ids), as_t(batch.token_index), as_t(batch.lengths)
        cd = DTYPES[self.compute_dtype]
        with torch.inference_mode():
            acts = self.bilm(ids, index, lengths, None if cd == torch.float32 else cd)  # (L+1, B, T+2, D)
            t = index.shape[1] - 2
            mask = torch.arange(t, device=dev)[None] < lengths[:, None]  # (B, T)
            layers = acts[:, :, 1:t + 1] * mask[None, :, :, None].to(acts.dtype)  # (L+1, B, T, D)
        return layers.float(), mask

    def embed_batch(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """All layers of a batch of tokenized sentences, like AllenNLP's ``batch_to_embeddings``.

        Returns:
            float32 (B, L+1, T, D) and bool mask (B, T), T = longest sentence; 0 at padding.
        """
        layers, mask = self.forward_batch(Batch.from_sentences(sentences))
        return layers.transpose(0, 1).cpu().numpy(), mask.cpu().numpy()

    def select(self, layers: torch.Tensor, output: Output = "mix") -> torch.Tensor:
        """(L+1, B, T, D) -> the requested output: "mix" (B, T, D), "all" (B, L+1, T, D), k (B, T, D)."""
        if output == "mix":
            return self.scalar_mix(layers)
        if output == "all":
            return layers.transpose(0, 1)
        if isinstance(output, int) and 0 <= output < layers.shape[0]:
            return layers[output]
        raise ValueError(f"output must be 'mix', 'all' or a layer 0..{layers.shape[0] - 1}, got {output!r}")

    def embed_sentences(self, sentences: Iterable[Sequence[str]], *, token_budget: int = 4096,
                        output: Output = "mix", pooling: Pooling = None,
                        window: int = 20000) -> Iterator[np.ndarray]:
        """Stream embeddings in input order, batching by sorted length under a token budget.

        Args:
            sentences: tokenized sentences (any iterable; consumed ``window`` at a time).
            token_budget: max padded tokens (B x T) per model call.
            output: "mix", "all" or a layer index.
            pooling: None (one vector per token), "mean" or "max" over tokens.
        Yields:
            per sentence: (T, D) or (L+1, T, D) without pooling; (D,) or (L+1, D) with it.
        """
        from elmo_dist.stages.batch import plan_batches

        buf: list[Sequence[str]] = []
        for s in sentences:
            buf.append(s)
            if len(buf) >= window:
                yield from self._embed_window(buf, token_budget, output, pooling, plan_batches)
                buf = []
        if buf:
            yield from self._embed_window(buf, token_budget, output, pooling, plan_batches)

    def _embed_window(self, sents, token_budget, output, pooling, plan_batches):
        lengths = np.array([len(s) for s in sents])
        results: list[np.ndarray | None] = [None] * len(sents)
        for idx in plan_batches(lengths, token_budget):
            layers, mask = self.forward_batch(Batch.from_sentences([sents[i] for i in idx]))
            out = self.select(layers, output)  # (B, T, D) or (B, L+1, T, D)
            vecs = pool(out, mask, pooling) if pooling else out
            vecs = vecs.cpu().numpy()
            for j, i in enumerate(idx):
                results[i] = vecs[j] if pooling else vecs[j][..., : lengths[i], :]
        yield from results  # type: ignore[misc]


def pool(x: torch.Tensor, mask: torch.Tensor, how: Literal["mean", "max"]) -> torch.Tensor:
    """Pool over tokens. x: (B, T, D) or (B, K, T, D); mask: (B, T). Empty rows give 0."""
    m = mask[:, None, :, None] if x.dim() == 4 else mask[..., None]  # broadcast over D (and K)
    m = m.to(x.dtype)
    if how == "mean":
        n = m.sum(dim=-2).clamp(min=1.0)
        return (x * m).sum(dim=-2) / n
    if how == "max":
        big = torch.finfo(x.dtype).min
        out = torch.where(m.bool(), x, torch.full_like(x, big)).max(dim=-2).values
        return torch.where(m.bool().any(dim=-2), out, torch.zeros_like(out))
    raise ValueError(f"pooling must be 'mean' or 'max', got {how!r}")
