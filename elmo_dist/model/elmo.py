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
from elmo_dist.model.batching import plan_batches
from elmo_dist.model.files import load_frequencies, load_official_files, load_official_pair  # noqa: F401
from elmo_dist.model.fingerprint import fingerprint_arrays
from elmo_dist.model.options import ElmoOptions, OptionsError
from elmo_dist.model.weights import read_weights, write_weights
from elmo_dist.config import TextSettings, token_budget_for
from elmo_dist.paths import default_model_path
from elmo_dist.storage import atomic_local_path
from elmo_dist.text.chars import BOS_IDS, EOS_IDS, tokens_to_char_ids

logger = logging.getLogger(__name__)

DEFAULT_SENTENCE_SPLIT = TextSettings.model_fields["sentence_split"].default  # the job's splitter

Output = Literal["mix", "all"] | int
Pooling = Literal["mean", "max", "sif"] | None
SIF_A = 1e-3  # Arora et al.'s a in the SIF token weight a / (a + p(w))
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
        x, full_len = self._tokens(token_char_ids, token_index, lengths)  # (B, T+2, D/2), (B,)
        layers = [torch.cat([x, x], dim=-1)]  # layer 0: (B, T+2, D), token vector duplicated
        layers += self.lstm(x, full_len, compute_dtype)  # L x (B, T+2, D)
        return torch.stack(layers)  # (L+1, B, T+2, D)

    def _tokens(self, token_char_ids: torch.Tensor, token_index: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T+2, D/2) token vectors, 0 at padding, and (B,) lengths with BOS/EOS."""
        tok = self.char_cnn(token_char_ids)  # (U, D/2)
        tok = tok.to(self.lstm.layers[0].w_in.dtype)  # under autocast (training) the LSTM state stays fp32
        tok = torch.cat([tok, tok.new_zeros(1, tok.shape[1])])  # (U+1, D/2): padding row
        x = tok[token_index]  # (B, T+2, D/2)
        full_len = lengths + 2  # (B,) with BOS/EOS
        mask = (torch.arange(token_index.shape[1], device=x.device)[None] < full_len[:, None])  # (B, T+2)
        return x * mask[..., None].to(x.dtype), full_len

    def top_time_major(self, token_char_ids: torch.Tensor, token_index: torch.Tensor, lengths: torch.Tensor,
                       compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top layer only, left in the LSTM's layout (training: no re-ordering of every layer).

        Returns:
            top (2, T', B, D/2) (direction, time, sorted row; the backward direction reversed within
            each row), order (B,) (row r is the batch's row order[r]), lens (B,) sorted lengths with BOS/EOS.
        """
        x, full_len = self._tokens(token_char_ids, token_index, lengths)
        h, order, lens, batch_sizes = self.lstm.time_major(x, full_len)
        return self.lstm.run_layers(h, batch_sizes, compute_dtype)[-1], order, lens


class Elmo(nn.Module):
    """ELMo contextual embeddings, exact to AllenNLP, stateless and batch-invariant.

    >>> elmo = Elmo.from_pretrained()                        # the built-in default model
    >>> layers, mask = elmo.embed_batch([["Hello", "world"]])   # (1, 3, 2, D), (1, 2)
    >>> layers, mask = elmo.embed_batch(["Hello world!"])       # raw text, Moses-tokenized: T = 3
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
        self.frequencies: dict[str, int] | None = None  # training word counts (frequencies.tsv), for "sif"
        self.frequencies_sha = ""
        self._tokenizers: dict[bool, object] = {}  # split_sentences -> Tokenizer, built on first use
        self.eval()

    def __getstate__(self):  # pickling (Ray, deepcopy) leaves the cached tokenizers behind
        state = self.__dict__.copy()
        state["_tokenizers"] = {}
        return state

    # ---- loading and saving ------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *,
                        mix_weights: Sequence[float] | None = None, gamma: float = 1.0,
                        compute_dtype: str = "float32", options_file: str | os.PathLike | None = None,
                        weight_file: str | os.PathLike | None = None) -> "Elmo":
        """Load options.json + weights.hdf5 from a directory (local or s3://).

        ``path`` may also be a pair given as ``"options.json,weights.hdf5"``, or the two files may
        be named by ``options_file`` and ``weight_file`` (both, and no ``path``). With none of
        these, the built-in default model is loaded.
        """
        if options_file is not None or weight_file is not None:
            if options_file is None or weight_file is None or path is not None:
                raise OptionsError("give options_file and weight_file together, and no model path")
            opt_uri, w_uri = str(options_file), str(weight_file)
            opts, weights = load_official_pair(opt_uri, w_uri)
            path = f"{opt_uri},{w_uri}"
        else:
            if path is None:
                path = default_model_path()
            path = str(path)
            opts, weights = load_official_files(path)
        model = cls(opts, mix_weights, gamma, compute_dtype)
        model.load_official(weights)
        model.fingerprint = fingerprint_arrays(opts, weights)
        model.source = path
        freq = load_frequencies(path)
        if freq is not None:
            model.frequencies, model.frequencies_sha = freq
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
        with atomic_local_path(os.path.join(directory, "options.json")) as tmp, open(tmp, "w") as fh:
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
            if self.compute_dtype == "float32":
                exact_fp32_on_cuda()
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

    # ---- raw text --------------------------------------------------------------------------
    def tokenize(self, text: str, *, split_sentences: bool = False) -> list[list[str]]:
        """Raw text -> sentences of Moses tokens, as the corpus job tokenizes its text column.

        Without ``split_sentences`` the text is one sentence: ``[tokens]`` (``[[]]`` for text with
        no token). With it, the text is split into sentences first (the job's default splitter) and sentences with no
        token are dropped, so the list may be empty. The tokenizer is built once per ``Elmo``.
        """
        if not isinstance(text, str):
            raise TypeError(f"tokenize() takes a str, got {type(text).__name__}")
        tok = self._tokenizers.get(split_sentences) if hasattr(self, "_tokenizers") else None
        if tok is None:
            from elmo_dist.text.tokenize import Tokenizer  # lazy: sacremoses and the splitter only when used

            tok = Tokenizer(DEFAULT_SENTENCE_SPLIT if split_sentences else "none")
            if not hasattr(self, "_tokenizers"):
                self._tokenizers = {}
            self._tokenizers[split_sentences] = tok
        return tok(text) if split_sentences else [tok.tokens(text)]

    def _token_lists(self, sentences, split_sentences: bool, checked: bool = False) -> Iterator[Sequence[str]]:
        """Token lists from raw strings (tokenized) or token lists (as they are); see embed_batch."""
        _refuse_bare_text(sentences)
        first: str | None = None
        for i, s in enumerate(sentences):
            kind = ("string" if isinstance(s, str) else "token list") if checked else _kind(s, i)
            if first is None:
                first = kind
            elif kind != first:
                raise TypeError(f"sentences[{i}] is a {kind} but sentences[0] is a {first}: "
                                "give all raw strings or all token lists, not a mix")
            if kind == "string":
                yield from self.tokenize(s, split_sentences=split_sentences)
            else:
                yield s

    def embed_batch(self, sentences: Sequence[Sequence[str]] | Sequence[str], *,
                    split_sentences: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """All layers of a batch of sentences, like AllenNLP's ``batch_to_embeddings``.

        Args:
            sentences: token lists (``[["Hello", "world"], ["Hi"]]``, used as they are) or raw
                strings (``["Hello world!", "Hi"]``), each Moses-tokenized as one sentence like
                the corpus job's text column. Not a bare str, not a mix of the two (TypeError).
            split_sentences: split each raw string into sentences first (the job's default splitter); the batch then
                has one row per sentence, all sentences of string 0 first, then string 1's, ...
                (``elmo.tokenize(text, split_sentences=True)`` gives each string's sentences).
        Returns:
            float32 (B, L+1, T, D) and bool mask (B, T), T = longest sentence; 0 at padding.
        """
        tokens = list(self._token_lists(sentences, split_sentences))
        layers, mask = self.forward_batch(Batch.from_sentences(tokens))
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

    def embed_sentences(self, sentences: Iterable[Sequence[str]] | Iterable[str], *,
                        token_budget: int | None = None,
                        output: Output = "mix", pooling: Pooling = None, window: int = 20000,
                        max_sentences: int | None = None,
                        split_sentences: bool = False) -> Iterator[np.ndarray]:
        """Stream embeddings in input order, batching by sorted length under a token budget.

        Args:
            sentences: token lists, used as they are, or raw strings, each Moses-tokenized as one
                sentence (any iterable; consumed ``window`` sentences at a time). A bare str, or
                strings mixed with token lists, raise TypeError.
            token_budget: max padded tokens (B x T) per model call (default: 4096 on a CPU,
                32768 on a CUDA device).
            output: "mix", "all" or a layer index.
            pooling: None (one vector per token), "mean" or "max" over tokens.
            max_sentences: optional cap on sentences per model call.
            split_sentences: split each raw string into sentences first (the job's default splitter); one result is
                yielded per sentence, in order (string 0's sentences, then string 1's, ...; a
                string with no token yields nothing). ``elmo.tokenize(text, split_sentences=True)``
                tells how many sentences a string has.
        Yields:
            per sentence: (T, D) or (L+1, T, D) without pooling; (D,) or (L+1, D) with it.
        """
        _refuse_bare_text(sentences)  # here, not at the first next(): the generator below is lazy
        checked = isinstance(sentences, Sequence)
        if checked:
            _check_kinds(sentences)  # a list is checked whole before any work
        return self._embed_stream(self._token_lists(sentences, split_sentences, checked), token_budget,
                                  output, pooling, window, max_sentences)

    def _embed_stream(self, sentences, token_budget, output, pooling, window, max_sentences):
        buf: list[Sequence[str]] = []
        for s in sentences:
            buf.append(s)
            if len(buf) >= window:
                yield from self._embed_window(buf, token_budget, output, pooling, max_sentences)
                buf = []
        if buf:
            yield from self._embed_window(buf, token_budget, output, pooling, max_sentences)

    def embed_in_batches(self, tokens: Sequence[Sequence[str]], token_budget: int | None = None,
                         max_sentences: int | None = None
                         ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """The one batching loop (the API and the corpus job both use it): sentences grouped by
        length under ``token_budget`` (``batching.plan_batches``), each group embedded.

        Yields:
            (idx, layers, mask): the positions in ``tokens`` of a batch's sentences, their layers
            (L+1, b, T, D) and mask (b, T). Every sentence starts from a zero state, so a
            sentence's vectors do not depend on the batch it lands in.
        """
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        for idx in plan_batches(lengths, token_budget_for(self.device.type, token_budget), max_sentences):
            layers, mask = self.forward_batch(Batch.from_sentences([tokens[i] for i in idx]))
            yield idx, layers, mask

    def sif_weights(self, sentences: Sequence[Sequence[str]], t: int) -> torch.Tensor:
        """(B, T) SIF token weights ``a / (a + p(w))`` from the model's ``frequencies.tsv`` (0 at padding;
        a word it never counted weighs as one counted once). Frequent words weigh little."""
        if not self.frequencies:
            raise OptionsError(f"pooling 'sif' needs word frequencies: {self.source or 'this model'} has no "
                               "frequencies.tsv (models exported by `elmo-dist train` have one)")
        if not hasattr(self, "_sif_table"):
            self._sif_table = sif_table(self.frequencies)
        table, rare = self._sif_table
        out = torch.zeros(len(sentences), t)
        for b, s in enumerate(sentences):
            out[b, : len(s)] = torch.tensor([table.get(w, rare) for w in s])
        return out

    def _embed_window(self, sents, token_budget, output, pooling, max_sentences=None):
        lengths = [len(s) for s in sents]
        results: list[np.ndarray | None] = [None] * len(sents)
        for idx, layers, mask in self.embed_in_batches(sents, token_budget, max_sentences):
            out = self.select(layers, output)  # (B, T, D) or (B, L+1, T, D)
            w = self.sif_weights([sents[i] for i in idx], mask.shape[1]).to(out.device) if pooling == "sif" else None
            vecs = pool(out, mask, pooling, w) if pooling else out
            vecs = vecs.cpu().numpy()
            for j, i in enumerate(idx):
                results[i] = vecs[j] if pooling else vecs[j][..., : lengths[i], :]
        yield from results  # type: ignore[misc]


def exact_fp32_on_cuda() -> None:
    """fp32 means fp32: PyTorch lets cuDNN convolutions (the char-CNN) use TF32 by default, which
    rounds inputs to 10 mantissa bits; matmuls too where a user turned it on. Both are switched off
    for fp32 compute (bf16/fp16 compute is chosen explicitly and does not depend on these flags)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _refuse_bare_text(sentences) -> None:
    if isinstance(sentences, (str, bytes)):
        raise TypeError(f"sentences is a bare {type(sentences).__name__}: pass a list of strings "
                        "(one sentence each) or of token lists, e.g. [text]")


def _kind(s, i: int) -> str:
    """"string" (raw text) or "token list"; anything else is a TypeError naming the index."""
    if isinstance(s, str):
        return "string"
    if isinstance(s, (bytes, bytearray)) or not isinstance(s, (Sequence, np.ndarray)):
        raise TypeError(f"sentences[{i}] has type {type(s).__name__}: expected a string (raw text) "
                        "or a list of token strings")
    for j, t in enumerate(s):
        if not isinstance(t, str):
            raise TypeError(f"sentences[{i}][{j}] has type {type(t).__name__}: a token list must hold strings")
    return "token list"


def _check_kinds(sentences: Sequence) -> None:
    """Type check of a whole list up front, before any tokenizing or model call."""
    first = None
    for i, s in enumerate(sentences):
        kind = _kind(s, i)
        if first is None:
            first = kind
        elif kind != first:
            raise TypeError(f"sentences[{i}] is a {kind} but sentences[0] is a {first}: "
                            "give all raw strings or all token lists, not a mix")


def sif_table(counts: dict[str, int], a: float = SIF_A) -> tuple[dict[str, float], float]:
    """SIF token weights ``a / (a + p(w))`` of counted words, and the weight of an uncounted word (as if
    counted once)."""
    total = float(sum(counts.values())) or 1.0
    return {w: a / (a + c / total) for w, c in counts.items()}, a / (a + 1.0 / total)


def pool(x: torch.Tensor, mask: torch.Tensor, how: Literal["mean", "max", "sif"],
         weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pool over tokens. x: (B, T, D) or (B, K, T, D); mask: (B, T); weights: (B, T) token weights for
    "sif" (the mean of weight x vector: Arora et al. 2017). Empty rows give 0."""
    m = mask[:, None, :, None] if x.dim() == 4 else mask[..., None]  # broadcast over D (and K)
    m = m.to(x.dtype)
    if how == "sif":
        if weights is None:
            raise ValueError("pooling 'sif' needs token weights")
        w = weights.to(x.dtype)
        w = w[:, None, :, None] if x.dim() == 4 else w[..., None]
        return (x * m * w).sum(dim=-2) / m.sum(dim=-2).clamp(min=1.0)
    if how == "mean":
        n = m.sum(dim=-2).clamp(min=1.0)
        return (x * m).sum(dim=-2) / n
    if how == "max":
        big = torch.finfo(x.dtype).min
        out = torch.where(m.bool(), x, torch.full_like(x, big)).max(dim=-2).values
        return torch.where(m.bool().any(dim=-2), out, torch.zeros_like(out))
    raise ValueError(f"pooling must be 'mean', 'max' or 'sif', got {how!r}")
