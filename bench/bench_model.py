"""Benchmark of the ELMo forward pass on this machine: speed, padding, memory, share of matmul peak.

For the official Small / Medium / Original architectures it writes LOW-GAIN random weights in the
official layout (never downloaded), loads them with ``Elmo.from_pretrained`` and runs a fixed-seed
synthetic corpus (lognormal sentence lengths 5..60, a Zipf vocabulary of English-looking words)
through the public streaming API, for a few token budgets. In the same run it measures

* tokens/s (real words, BOS/EOS excluded; median of repeats after a warm-up),
* padding waste (``padding_ratio`` of the batch plan), peak RSS during the measurement,
* achieved GFLOP/s (analytic count of the work actually done) and its share of this machine's
  fp32 matmul peak (a 2048^3 ``torch.matmul``, measured in the same run),
* a plain per-timestep baseline written AllenNLP's way (``AllenNlpStyleBiLM`` below: full char-CNN
  over all 50 characters of every position incl. padding, one LSTM cell per direction and layer
  stepping through time in Python with ``input_linearity``/``state_linearity``/``state_projection``
  Linear layers, rows sorted by length, no dedup) and the speedup of ours over it; the baseline's
  outputs are checked against AllenNLP's reference on tests/fixtures/elmo-tiny-f1 and against ours,
* the bf16 (and fp16, if the CPU runs it) compute modes: speed and max abs error vs fp32.

Usage::

    python bench/bench_model.py                       # small, medium, original; budgets 1024,4096,8192
    python bench/bench_model.py --archs original --budgets 4096 --sentences 600
    python bench/bench_model.py --quick               # tiny smoke run (seconds)
    python bench/bench_model.py --write-doc docs/performance.md

Compare numbers only within one run: this 2-core machine is often shared (the load is printed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elmo_dist.model.elmo import Batch, Elmo  # noqa: E402
from elmo_dist.model.options import ElmoOptions  # noqa: E402
from elmo_dist.model.weights import expected_shapes, read_weights, write_weights  # noqa: E402
from elmo_dist.stages.batch import padding_ratio, plan_batches  # noqa: E402
from elmo_dist.text.chars import PAD_CHAR, W, tokens_to_char_ids  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "fixtures", "elmo-tiny-f1")
FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]
ARCHS = {  # name: (lstm dim, projection dim, n_highway, official file stem)
    "small": (1024, 128, 1, "2x1024_128_2048cnn_1xhighway"),
    "medium": (2048, 256, 1, "2x2048_256_2048cnn_1xhighway"),
    "original": (4096, 512, 2, "2x4096_512_2048cnn_2xhighway"),
}
TOL = 1e-5


# ---- machine ------------------------------------------------------------------------------------
def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def current_rss_mb() -> float:
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssPeak:
    """Peak resident memory while the block runs (sampled every 5 ms from /proc/self/statm)."""

    def __enter__(self) -> "RssPeak":
        self.peak = current_rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, current_rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, current_rss_mb())


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):  # the best pass: a peak, not a typical speed
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---- model and corpus ---------------------------------------------------------------------------
def arch_options(arch: str) -> ElmoOptions:
    c, p, n_highway, _ = ARCHS[arch]
    return ElmoOptions.from_dict({
        "char_cnn": {"activation": "relu", "filters": FILTERS, "n_highway": n_highway,
                     "embedding": {"dim": 16}, "n_characters": 262, "max_characters_per_token": 50},
        "lstm": {"dim": c, "projection_dim": p, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
                 "use_skip_connections": True},
    })


def random_weights(opts: ElmoOptions, seed: int = 0) -> dict[str, np.ndarray]:
    """Low-gain random weights (std 0.5/sqrt(fan_in)): the LSTM stays non-chaotic, so two correct
    implementations agree to fp32 rounding (~1e-6) instead of drifting apart."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in expected_shapes(opts).items():
        if name == "char_embed":
            arr = rng.uniform(-1.0, 1.0, shape)
        elif len(shape) == 1:
            arr = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[:-1]))
            arr = rng.standard_normal(shape, dtype=np.float32) * (0.5 / math.sqrt(fan_in))
        out[name] = arr.astype(np.float32)
    return out


def write_model(directory: str, arch: str, seed: int = 0) -> str:
    opts = arch_options(arch)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "options.json"), "w") as fh:
        json.dump(opts.to_official_dict(), fh)
    write_weights(os.path.join(directory, "weights.hdf5"), opts, random_weights(opts, seed))
    return directory


_ONSETS = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "w", "br", "ch", "cl",
           "cr", "dr", "fl", "fr", "gr", "pl", "pr", "sh", "sl", "sp", "st", "str", "th", "tr", "wh"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ee", "ai", "ou", "oo", "ie", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "d", "ng", "st", "nd", "ck", "th", "rt", "ss", "m", "nt"]
_SUFFIXES = [""] * 10 + ["s", "s", "ed", "ing", "er", "ly", "tion", "ness", "ment", "able", "es"]
_FUNCTION = ["the", ",", ".", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it",
             "with", "as", "his", "on", "be", "at", "by", "I", "had", "not", "are", "but", "from",
             "or", "have", "an", "they", "which", "one", "you", "were", "her", "all", "she", "there",
             "would", "their", "we", "him", "been", "has", "when", "who", "will", "more", "no",
             "\"", "'s", "(", ")", ";", ":", "?", "-"]


def synthetic_corpus(n_sentences: int, seed: int = 1234, vocab_size: int = 50000,
                     zipf_s: float = 1.07) -> list[list[str]]:
    """Fixed-seed English-looking text: sentence lengths lognormal (median 21) clipped to 5..60;
    tokens drawn from a Zipf(s) law over function words, then generated content words (1-4
    syllables plus a suffix, some capitalised, a few numbers), so words repeat as in real text."""
    rng = np.random.default_rng(seed)
    words = list(_FUNCTION)
    seen = set(words)
    while len(words) < vocab_size:
        n_syl = int(rng.choice([1, 2, 3, 4], p=[0.45, 0.37, 0.14, 0.04]))
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n_syl))
        w += rng.choice(_SUFFIXES)
        r = rng.random()
        if r < 0.08:
            w = w.capitalize()
        elif r < 0.1:
            w = str(int(rng.integers(0, 100000)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    p = 1.0 / np.arange(1, vocab_size + 1) ** zipf_s
    p /= p.sum()
    lengths = np.clip(np.round(rng.lognormal(math.log(21), 0.5, n_sentences)), 5, 60).astype(int)
    flat = rng.choice(vocab_size, size=int(lengths.sum()), p=p)
    out, k = [], 0
    for n in lengths:
        s = [words[i] for i in flat[k:k + n]]
        s[0] = s[0][:1].upper() + s[0][1:]
        out.append(s)
        k += n
    return out


# ---- FLOP count ---------------------------------------------------------------------------------
def lstm_flops_per_position(opts: ElmoOptions) -> float:
    p, c, n = opts.lstm.projection_dim, opts.lstm.dim, opts.lstm.n_layers
    return n * 2 * (2 * p * 4 * c + 2 * p * 4 * c + 2 * c * p)  # input, recurrent, projection


def token_encoder_flops(opts: ElmoOptions, width: int = W) -> tuple[float, float]:
    """(char-CNN convs at this char width, highway + projection) FLOPs for one token."""
    e, f, p = opts.char_cnn.embedding.dim, opts.char_cnn.n_filters, opts.lstm.projection_dim
    conv = sum(2 * e * w * n * max(width - w + 1, 0) for w, n in opts.char_cnn.filters)
    return conv, opts.char_cnn.n_highway * 2 * f * 2 * f + 2 * f * p


def nominal_mflops_per_token(opts: ElmoOptions) -> float:
    """AllenNLP's work per position (full 50-char CNN, no dedup): 204 MFLOP for Original."""
    conv, dense = token_encoder_flops(opts)
    return (conv + dense + lstm_flops_per_position(opts)) / 1e6


def actual_flops(opts: ElmoOptions, sents: list[list[str]], batches: list[np.ndarray]) -> float:
    """FLOPs our path performs on these batches: char-CNN once per distinct token, in blocks of
    similar length each at its own trimmed width; LSTMs on real positions incl. BOS/EOS (padding is
    never fed), except the first layer's input product, done once per distinct token (+ padding row)."""
    from elmo_dist.model.char_cnn import BLOCK

    total = 0.0
    max_w = max(w for w, _ in opts.char_cnn.filters)
    p, c = opts.lstm.projection_dim, opts.lstm.dim
    lstm = lstm_flops_per_position(opts)
    layer0_input = 2 * (2 * p * 4 * c)  # both directions
    for idx in batches:
        batch = Batch.from_sentences([sents[i] for i in idx])
        used = np.sort((batch.token_char_ids != PAD_CHAR).sum(1))
        for start in range(0, len(used), BLOCK):
            conv, dense = token_encoder_flops(opts, min(W, int(used[start:start + BLOCK].max()) + max_w))
            total += len(used[start:start + BLOCK]) * (conv + dense)
        positions = float((batch.lengths + 2).sum())
        total += (lstm - layer0_input) * positions + layer0_input * min(positions, len(used) + 1)
    return total


# ---- the AllenNLP-style per-timestep baseline ---------------------------------------------------
class _Highway(nn.Module):
    """AllenNLP's ``Highway``: one Linear(F, 2F), ``g * x + (1 - g) * relu(a)``."""

    def __init__(self, f: int, n: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(f, 2 * f) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            a, g = layer(x).chunk(2, dim=-1)  # (N, F), (N, F)
            g = torch.sigmoid(g)
            x = g * x + (1 - g) * F.relu(a)
        return x


class _LstmCellWithProjection(nn.Module):
    """AllenNLP's ``LstmCellWithProjection``: one direction of one layer, a Python loop over time."""

    def __init__(self, p: int, c: int, go_forward: bool, cell_clip, proj_clip):
        super().__init__()
        self.c, self.go_forward, self.cell_clip, self.proj_clip = c, go_forward, cell_clip, proj_clip
        self.input_linearity = nn.Linear(p, 4 * c, bias=False)
        self.state_linearity = nn.Linear(p, 4 * c, bias=True)
        self.state_projection = nn.Linear(c, p, bias=False)

    def forward(self, inputs: torch.Tensor, batch_lengths: list[int]) -> torch.Tensor:
        """inputs (B, T, P) sorted by length (longest first) -> (B, T, P), 0 at padding."""
        b, t_total, _ = inputs.shape
        c = self.c
        out = inputs.new_zeros(b, t_total, self.state_projection.out_features)  # (B, T, P)
        mem = inputs.new_zeros(b, c)  # (B, C)
        state = inputs.new_zeros(b, self.state_projection.out_features)  # (B, P)
        cur = b - 1 if self.go_forward else 0
        for step in range(t_total):
            index = step if self.go_forward else t_total - step - 1
            if self.go_forward:
                while batch_lengths[cur] <= index:
                    cur -= 1
            else:
                while cur < len(batch_lengths) - 1 and batch_lengths[cur + 1] > index:
                    cur += 1
            prev_mem = mem[: cur + 1].clone()  # (b, C)
            prev_state = state[: cur + 1].clone()  # (b, P)
            x_t = inputs[: cur + 1, index]  # (b, P)
            pi = self.input_linearity(x_t)  # (b, 4C), torch gate order i, f, j, o
            ps = self.state_linearity(prev_state)  # (b, 4C)
            i = torch.sigmoid(pi[:, 0:c] + ps[:, 0:c])
            f = torch.sigmoid(pi[:, c:2 * c] + ps[:, c:2 * c])
            j = torch.tanh(pi[:, 2 * c:3 * c] + ps[:, 2 * c:3 * c])
            o = torch.sigmoid(pi[:, 3 * c:4 * c] + ps[:, 3 * c:4 * c])
            m = i * j + f * prev_mem  # (b, C)
            if self.cell_clip:
                m = torch.clamp(m, -self.cell_clip, self.cell_clip)
            h = self.state_projection(o * torch.tanh(m))  # (b, P)
            if self.proj_clip:
                h = torch.clamp(h, -self.proj_clip, self.proj_clip)
            mem = mem.clone()
            state = state.clone()
            mem[: cur + 1] = m
            state[: cur + 1] = h
            out[: cur + 1, index] = h
        return out


class AllenNlpStyleBiLM(nn.Module):
    """The same math as AllenNLP's ``_ElmoBiLm`` on a fresh module, computed the way it does."""

    def __init__(self, opts: ElmoOptions, weights: dict[str, np.ndarray]):
        super().__init__()
        cc, ls = opts.char_cnn, opts.lstm
        e, f, p, c = cc.embedding.dim, cc.n_filters, ls.projection_dim, ls.dim
        self.activation = torch.tanh if cc.activation == "tanh" else torch.relu
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        self.char_table = nn.Parameter(torch.cat([torch.zeros(1, e), t(weights["char_embed"])]))
        self.convs = nn.ModuleList()
        for i, (w, n) in enumerate(cc.filters):
            conv = nn.Conv1d(e, n, kernel_size=w, bias=True)
            conv.weight.data = t(np.transpose(weights[f"CNN/W_cnn_{i}"][0], (2, 1, 0)))
            conv.bias.data = t(weights[f"CNN/b_cnn_{i}"])
            self.convs.append(conv)
        self.highway = _Highway(f, cc.n_highway)
        for k, layer in enumerate(self.highway.layers):  # AllenNLP's _load_highway: carry negated
            layer.weight.data = torch.cat([t(weights[f"CNN_high_{k}/W_transform"]).T,
                                           -t(weights[f"CNN_high_{k}/W_carry"]).T]).contiguous()
            layer.bias.data = torch.cat([t(weights[f"CNN_high_{k}/b_transform"]),
                                         -t(weights[f"CNN_high_{k}/b_carry"])])
        self.proj = nn.Linear(f, p)
        self.proj.weight.data = t(weights["CNN_proj/W_proj"]).T.contiguous()
        self.proj.bias.data = t(weights["CNN_proj/b_proj"])
        self.cells = nn.ModuleList()  # [layer0 fwd, layer0 bwd, layer1 fwd, ...]
        for layer in range(ls.n_layers):
            for d in range(2):
                cell = _LstmCellWithProjection(p, c, d == 0, ls.cell_clip, ls.proj_clip)
                pre = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
                w0 = t(weights[f"{pre}/W_0"]).T  # (4C, 2P), TF blocks i, j, f, o
                bias = t(weights[f"{pre}/B"]).clone()
                bias[2 * c:3 * c] += 1.0  # TF's run-time forget_bias
                swap = torch.cat([torch.arange(0, c), torch.arange(2 * c, 3 * c),
                                  torch.arange(c, 2 * c), torch.arange(3 * c, 4 * c)])  # -> i, f, j, o
                cell.input_linearity.weight.data = w0[swap, :p].contiguous()
                cell.state_linearity.weight.data = w0[swap, p:].contiguous()
                cell.state_linearity.bias.data = bias[swap].contiguous()
                cell.state_projection.weight.data = t(weights[f"{pre}/W_P_0"]).T.contiguous()
                self.cells.append(cell)
        self.n_layers = ls.n_layers

    def forward(self, char_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """char_ids (B, T, 50) from ``batch_to_ids`` -> activations (L+1, B, T+2, 2P), mask (B, T+2)."""
        from elmo_dist.text.chars import BOS_IDS, EOS_IDS

        b, t, _ = char_ids.shape
        n = (char_ids > 0).any(-1).sum(-1)  # (B,)
        ids = char_ids.new_zeros(b, t + 2, W)  # (B, T+2, 50)
        ids[:, 1:t + 1] = char_ids
        ids[:, 0] = torch.from_numpy(BOS_IDS)
        ids[torch.arange(b), n + 1] = torch.from_numpy(EOS_IDS)
        mask = (ids > 0).any(-1)  # (B, T+2)
        x = F.embedding(ids.view(-1, W), self.char_table).transpose(1, 2)  # (N, E, 50): every position
        pooled = [self.activation(conv(x).max(dim=-1).values) for conv in self.convs]
        tok = self.proj(self.highway(torch.cat(pooled, dim=-1))).view(b, t + 2, -1)  # (B, T+2, P)
        tok = tok * mask[..., None]
        lengths = mask.sum(-1)  # (B,)
        order = torch.argsort(lengths, descending=True, stable=True)  # sort_batch_by_length
        lens = lengths[order].tolist()
        inputs = [tok[order], tok[order]]  # forward, backward
        outs = []
        for layer in range(self.n_layers):
            ys = []
            for d in range(2):
                y = self.cells[2 * layer + d](inputs[d], lens)  # (B, T+2, P)
                if layer > 0:
                    y = y + inputs[d]
                ys.append(y)
            inputs = ys
            outs.append(torch.cat(ys, dim=-1))
        inv = torch.argsort(order)
        acts = [torch.cat([tok, tok], -1)] + [o[inv] for o in outs]
        return torch.stack(acts), mask


def char_ids_of(sents: list[list[str]]) -> torch.Tensor:
    """AllenNLP's ``batch_to_ids``: (B, T, 50), right-padded with all-zero rows."""
    t = max((len(s) for s in sents), default=0)
    out = np.zeros((len(sents), t, W), dtype=np.int64)
    for i, s in enumerate(sents):
        if s:
            out[i, : len(s)] = tokens_to_char_ids(s)
    return torch.from_numpy(out)


def baseline_layers(model: AllenNlpStyleBiLM, sents: list[list[str]]) -> np.ndarray:
    """(B, L+1, T, D) without BOS/EOS, like ``Elmo.embed_batch``."""
    with torch.inference_mode():
        acts, mask = model(char_ids_of(sents))
    t = acts.shape[2] - 2
    lens = torch.tensor([len(s) for s in sents])
    m = (torch.arange(t)[None] < lens[:, None])[None, :, :, None]
    return (acts[:, :, 1:t + 1] * m).transpose(0, 1).numpy()


def check_baseline_on_fixture() -> float:
    """Max abs diff of the baseline vs AllenNLP's own reference outputs on the tiny fixture."""
    opts = ElmoOptions.from_json(open(os.path.join(TINY, "options.json")).read())
    model = AllenNlpStyleBiLM(opts, read_weights(os.path.join(TINY, "weights.hdf5"), opts)).eval()
    sents = json.load(open(os.path.join(TINY, "sentences.json")))["sentences"]
    ref = np.load(os.path.join(TINY, "reference.npz"))
    got = baseline_layers(model, sents)
    ours = Elmo.from_pretrained(TINY).embed_batch(sents)[0]
    err = max(float(np.abs(got[:, k] - ref[f"layer{k}"]).max()) for k in range(got.shape[1]))
    err_ours = float(np.abs(got - ours).max())
    print(f"tiny fixture: baseline vs AllenNLP {err:.1e}, baseline vs ours {err_ours:.1e}, "
          f"ours vs AllenNLP {max(float(np.abs(ours[:, k] - ref[f'layer{k}']).max()) for k in range(3)):.1e}")
    if err > TOL or err_ours > TOL:
        raise SystemExit(f"baseline does not match on the fixture: vs AllenNLP {err:.2e}, vs ours {err_ours:.2e}")
    return err


# ---- the measurements ---------------------------------------------------------------------------
@dataclass
class Row:
    arch: str
    mode: str
    budget: int
    tokens_per_s: float
    padding: float
    rss_mb: float
    gflops: float
    peak_share: float
    extra: dict = field(default_factory=dict)
    tokens_per_cpu_s: float = float("nan")


def free_memory() -> None:
    """Give freed heap back to the OS so that the next row's peak RSS is its own."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def sample_plan(lengths: np.ndarray, budget: int, tokens: int) -> tuple[list[np.ndarray], float]:
    """The batch plan of the whole corpus (what ``embed_sentences`` runs for a window) and an evenly
    spaced sample of its batches holding about ``tokens`` tokens (at least one batch), so that the
    timed batches have the plan's mix of lengths. Returns (sample, padding waste of the full plan)."""
    plan = plan_batches(lengths, budget)
    per = np.array([lengths[b].sum() for b in plan])
    k = int(np.clip(round(tokens / per.mean()), 1, len(plan)))
    picks = np.unique(((np.arange(k) + 0.5) * len(plan) / k).astype(int))  # centred: k=1 is the median batch
    return [plan[i] for i in picks], padding_ratio(lengths, plan)


def embed(elmo: Elmo, sents: list[list[str]], batches: list[np.ndarray], output="mix") -> list[np.ndarray]:
    """What ``Elmo.embed_sentences`` does per batch: char ids, forward, select, to numpy, per sentence."""
    res = []
    for idx in batches:
        layers, _ = elmo.forward_batch(Batch.from_sentences([sents[i] for i in idx]))
        out = elmo.select(layers, output).cpu().numpy()  # (B, T, D) or (B, L+1, T, D)
        res += [out[j][..., : len(sents[i]), :] for j, i in enumerate(idx)]
    return res


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, float, float]:
    """(median wall seconds, median CPU seconds of this process, peak RSS MB) of ``fn`` after a
    warm-up call. CPU seconds are less sensitive to other load than wall time."""
    if warmup:
        fn()
    walls, cpus = [], []
    with RssPeak() as rss:
        for _ in range(repeats):
            c0, t0 = cpu_seconds(), time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(cpu_seconds() - c0)
    return statistics.median(walls), statistics.median(cpus), rss.peak


def max_err(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def bench_arch(arch: str, args, peak: float, tmp: str, log) -> list[Row]:
    rows: list[Row] = []
    directory = write_model(os.path.join(tmp, arch), arch)
    opts = arch_options(arch)
    sents = synthetic_corpus(args.sentences, seed=args.seed)
    lengths = np.array([len(s) for s in sents])
    check = [sents[i] for i in np.linspace(0, len(sents) - 1, args.check_sentences).astype(int)]
    check_batches = [np.arange(len(check))]
    free_memory()

    # 1. Ours, fp32, alone in the process.
    t0 = time.perf_counter()
    elmo = Elmo.from_pretrained(directory)
    log(f"[{arch}] loaded in {time.perf_counter() - t0:.1f} s; nominal {nominal_mflops_per_token(opts):.0f} "
        f"MFLOP/token (AllenNLP's work); load {load_average()}")
    for budget in args.budgets:
        sample, pad = sample_plan(lengths, budget, args.timed_tokens)
        n_tok = int(sum(lengths[b].sum() for b in sample))
        flops = actual_flops(opts, sents, sample)
        t, cpu, rss = timed(lambda: embed(elmo, sents, sample), args.repeats)
        gf = flops / t / 1e9
        rows.append(Row(arch, "fp32", budget, n_tok / t, pad, rss, gf, gf / peak,
                        {"mflop_per_token": flops / n_tok / 1e6, "tokens": n_tok}, n_tok / cpu))
        log(f"[{arch}] fp32 budget {budget}: {n_tok / t:.0f} tokens/s ({n_tok} tokens in {len(sample)} batches), "
            f"padding {100 * pad:.1f}%, {gf:.1f} GFLOP/s ({100 * gf / peak:.0f}% of peak), peak RSS {rss:.0f} MB; "
            f"load {load_average()}")
    ref = embed(elmo, check, check_batches, "all")  # (L+1, T, D) per sentence
    elmo = None
    free_memory()

    # 2. The AllenNLP-style baseline alone: exactness on this model, then speed on sampled batches.
    budget = args.baseline_budget or min(args.budgets)
    sample, pad = sample_plan(lengths, budget, args.baseline_tokens)
    weights = read_weights(os.path.join(directory, "weights.hdf5"), opts)
    base = AllenNlpStyleBiLM(opts, weights).eval()
    del weights
    got = baseline_layers(base, check)
    err_base = max_err(ref, [got[i, :, : len(s)] for i, s in enumerate(check)])
    log(f"[{arch}] ours vs baseline: max abs diff {err_base:.2e} on {len(check)} sentences (all layers)")
    if err_base > TOL:
        raise SystemExit(f"[{arch}] ours and the AllenNLP-style baseline differ by {err_base:.2e} > {TOL}")
    batches = [[sents[i] for i in idx] for idx in sample]
    n_sub = int(sum(lengths[b].sum() for b in sample))
    tb, cpu_b, rss_b = timed(lambda: [baseline_layers(base, b) for b in batches], args.baseline_repeats,
                             warmup=args.baseline_repeats > 1)
    base = None
    free_memory()
    # ... and ours again on exactly those batches, right after (same run, same load).
    elmo = Elmo.from_pretrained(directory)
    t_ours, cpu_ours, _ = timed(lambda: embed(elmo, sents, sample), max(args.baseline_repeats, 2))
    speedup = tb / t_ours
    base_flops = nominal_mflops_per_token(opts) * 1e6 * sum(len(b) * (max(map(len, b)) + 2) for b in batches)
    rows.append(Row(arch, "baseline (AllenNLP-style)", budget, n_sub / tb, pad, rss_b,
                    base_flops / tb / 1e9, base_flops / tb / 1e9 / peak,
                    {"ours_same": n_sub / t_ours, "speedup": speedup, "tokens": n_sub,
                     "cpu_speedup": cpu_b / cpu_ours}, n_sub / cpu_b))
    log(f"[{arch}] baseline {n_sub / tb:.0f} tokens/s vs ours {n_sub / t_ours:.0f} on the same {n_sub} tokens "
        f"({len(sample)} batches, budget {budget}): speedup {speedup:.2f}x; load {load_average()}")
    elmo = None
    free_memory()

    # 3. Reduced-precision compute modes, each alone: error vs fp32 on the check sentences, speed.
    budget = max(args.budgets)
    sample, pad = sample_plan(lengths, budget, args.timed_tokens)
    n_tok = int(sum(lengths[b].sum() for b in sample))
    flops = actual_flops(opts, sents, sample)
    scale = max(float(np.abs(r).max()) for r in ref)
    for mode in args.modes:
        try:
            low = Elmo.from_pretrained(directory, compute_dtype=mode)
            err = max_err(embed(low, check, check_batches, "all"), ref)
        except Exception as e:  # fp16 kernels may be missing on this CPU
            log(f"[{arch}] {mode}: not available ({type(e).__name__}: {e})")
            rows.append(Row(arch, mode, budget, float("nan"), pad, float("nan"), float("nan"), float("nan"),
                            {"error": type(e).__name__}))
            continue
        t, cpu, rss = timed(lambda: embed(low, sents, sample), args.repeats)
        gf = flops / t / 1e9
        rows.append(Row(arch, mode, budget, n_tok / t, pad, rss, gf, gf / peak,
                        {"max_abs_err": err, "max_abs_value": scale, "tokens": n_tok}, n_tok / cpu))
        log(f"[{arch}] {mode} budget {budget}: {n_tok / t:.0f} tokens/s, max abs err vs fp32 {err:.2e} "
            f"(values up to {scale:.1f}); load {load_average()}")
        low = None
        free_memory()
    return rows


def markdown(rows: list[Row], peak: float, peak_bf16: float, meta: dict) -> str:
    lines = [
        f"Run {meta['date']} on {meta['machine']}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average before/after: {meta['load_before']} / "
        f"{meta['load_after']}. Matmul peak in this run (best of 12 passes of a 2048^3 matmul): fp32 "
        f"{peak:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s. Corpus: {meta['sentences']} synthetic sentences, {meta['tokens']} tokens "
        f"(lengths 5-60, median {meta['median_len']}), batched over the whole corpus like one window of "
        f"`embed_sentences`; each timed pass runs an evenly spaced sample of ~{meta['timed_tokens']} "
        f"tokens of those batches (median of {meta['repeats']}, after a warm-up). tokens/s counts words "
        f"(BOS/EOS excluded); tokens per CPU-s divides by this process's CPU time (all threads), which "
        f"other load disturbs less than wall time; GFLOP/s counts the work done (for the baseline: "
        f"AllenNLP's nominal work). "
        f"Baseline vs AllenNLP's own reference on the tiny fixture: max abs diff {meta['fixture_err']:.1e}.",
        "",
        "| arch | mode | token budget | tokens/s | tokens per CPU-s | padding | peak RSS | GFLOP/s | % of fp32 peak | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        notes = []
        if "speedup" in r.extra:
            notes.append(f"ours {r.extra['ours_same']:.0f} tokens/s on the same batches: "
                         f"**{r.extra['speedup']:.2f}x** ({r.extra['cpu_speedup']:.2f}x in CPU time)")
        if "max_abs_err" in r.extra:
            notes.append(f"max abs err vs fp32 {r.extra['max_abs_err']:.1e} (values up to "
                         f"{r.extra['max_abs_value']:.1f})")
        if "mflop_per_token" in r.extra:
            notes.append(f"{r.extra['mflop_per_token']:.0f} MFLOP/token done")
        if "error" in r.extra:
            notes.append(f"not available: {r.extra['error']}")
        fmt = lambda v, f: "n/a" if v != v else f.format(v)  # noqa: E731
        lines.append(f"| {r.arch} | {r.mode} | {r.budget} | {fmt(r.tokens_per_s, '{:.0f}')} | "
                     f"{fmt(r.tokens_per_cpu_s, '{:.0f}')} | "
                     f"{fmt(100 * r.padding, '{:.1f}%')} | {fmt(r.rss_mb, '{:.0f} MB')} | "
                     f"{fmt(r.gflops, '{:.0f}')} | {fmt(100 * r.peak_share, '{:.0f}%')} | {'; '.join(notes)} |")
    return "\n".join(lines)


def write_doc(path: str, table: str) -> None:
    """Replace the block between the BENCH markers of ``path`` with ``table``."""
    start, end = "<!-- BENCH:START -->", "<!-- BENCH:END -->"
    text = open(path).read() if os.path.exists(path) else f"# Performance\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as fh:
        fh.write(f"{head}{start}\n{table}\n{end}{tail}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="small,medium,original")
    ap.add_argument("--budgets", default="1024,4096,8192")
    ap.add_argument("--sentences", type=int, default=20000,
                    help="corpus size; batches are planned over all of it (= the API's window)")
    ap.add_argument("--timed-tokens", type=int, default=8000,
                    help="tokens per timed pass: an evenly spaced sample of the plan's batches")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="bfloat16,float16", help="reduced-precision compute modes")
    ap.add_argument("--baseline-tokens", type=int, default=1000)
    ap.add_argument("--baseline-repeats", type=int, default=1)
    ap.add_argument("--baseline-budget", type=int, default=0, help="default: the smallest budget")
    ap.add_argument("--check-sentences", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--write-doc", default="", help="put the table into this markdown file")
    ap.add_argument("--json", default="", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.archs, args.budgets, args.sentences, args.repeats = "small", "512,2048", 2000, 1
        args.timed_tokens, args.baseline_tokens, args.check_sentences = 1500, 300, 6
    args.archs = [a for a in args.archs.split(",") if a]
    args.budgets = [int(b) for b in str(args.budgets).split(",") if b]
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = [a for a in args.archs if a not in ARCHS]
    if unknown:
        ap.error(f"unknown arch {unknown}; choose from {sorted(ARCHS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    log = lambda s: print(s, flush=True)  # noqa: E731
    load_before = load_average()
    log(f"load average {load_before}; {os.cpu_count()} CPUs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, mkldnn {torch.backends.mkldnn.is_available()}")
    fixture_err = check_baseline_on_fixture()
    log(f"baseline vs AllenNLP reference on the tiny fixture: max abs diff {fixture_err:.1e}")
    peak = matmul_peak_gflops()
    peak_bf16 = matmul_peak_gflops(torch.bfloat16)
    log(f"matmul peak: fp32 {peak:.0f} GFLOP/s, bf16 {peak_bf16:.0f} GFLOP/s")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="elmo-bench-") as tmp:
        for arch in args.archs:
            rows += bench_arch(arch, args, peak, tmp, log)
    sents = synthetic_corpus(args.sentences, seed=args.seed)
    lens = [len(s) for s in sents]
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
            "load_before": load_before, "load_after": load_average(), "sentences": len(sents),
            "tokens": sum(lens), "median_len": int(np.median(lens)), "fixture_err": fixture_err,
            "timed_tokens": args.timed_tokens, "repeats": args.repeats}
    table = markdown(rows, peak, peak_bf16, meta)
    print()
    print(table)
    print(f"\npeak RSS of the whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.write_doc:
        write_doc(args.write_doc, table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "peak_gflops": peak, "rows": [r.__dict__ for r in rows]}, fh, indent=1)


if __name__ == "__main__":
    main()
