"""Train (or fine-tune) an ELMo biLM with the ELMo objective and export it in the official format.

One char-CNN token encoder feeds a forward and a backward LSTM language model (the same ``BiLM`` the
inference path uses); the forward LM predicts the next word, the backward LM the previous one, over a
word vocabulary with an adaptive softmax shared by both directions. Each sentence is one sequence
``<S> w1 .. wn </S>`` starting from a zero state: the same regime as stateless inference.

Checkpoints (model, optimizer, schedule, data position, RNG) are written every few minutes and on
exit; rerunning the same command resumes. ``export`` writes options.json + weights.hdf5.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from elmo_dist.config import DEFAULT_TOKEN_BUDGET
from elmo_dist.model.elmo import BiLM, Batch, Elmo
from elmo_dist.model.options import ElmoOptions
from elmo_dist.model.threads import keep_freed_memory
from elmo_dist.paths import default_model_path
from elmo_dist.train.config import ARCHS, TrainConfig  # noqa: F401  (re-exported)
from elmo_dist.stages.batch import plan_batches
from elmo_dist.storage import atomic_local_path

logger = logging.getLogger(__name__)

UNK, BOS, EOS = "<UNK>", "<S>", "</S>"

def make_options(arch: str, cell_clip: float = 3.0, proj_clip: float = 3.0) -> ElmoOptions:
    filters, n_highway, e, c, p = ARCHS[arch]
    return ElmoOptions.from_dict({
        "char_cnn": {"activation": "relu", "filters": filters, "n_highway": n_highway,
                     "embedding": {"dim": e}, "n_characters": 262, "max_characters_per_token": 50},
        "lstm": {"dim": c, "projection_dim": p, "n_layers": 2, "cell_clip": cell_clip,
                 "proj_clip": proj_clip, "use_skip_connections": True},
    })


def read_sentences(path: str, limit_tokens: int = 0) -> list[list[str]]:
    out, n = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            toks = line.split()
            if toks:
                out.append(toks)
                n += len(toks)
                if limit_tokens and n >= limit_tokens:
                    break
    return out


FREQUENCY_WORDS = 100_000  # words (most frequent first) in an exported model's frequencies.tsv


def write_frequencies(counts: collections.Counter, path: str, max_words: int = FREQUENCY_WORDS) -> None:
    """``word<TAB>count`` lines, most frequent first: the unigram counts of the training text, shipped
    next to options.json for frequency-weighted (SIF) pooling."""
    with atomic_local_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for w, c in counts.most_common(max_words):
            if "\t" not in w and "\n" not in w:
                fh.write(f"{w}\t{c}\n")


def build_vocab(sentences: list[list[str]], size: int) -> list[str]:
    counts = collections.Counter(t for s in sentences for t in s)
    words = [w for w, _ in counts.most_common(max(0, size - 3))]
    return [BOS, EOS, UNK] + [w for w in words if w not in (BOS, EOS, UNK)]


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_n -log softmax(x_n W^T)[target_n], the product in ``cd`` and the softmax in fp32, as one op.

    The same function as ``F.cross_entropy(F.linear(x.to(cd), W.to(cd)).float(), target, reduction="sum")``
    with fewer passes over the (N, V) logits: the forward keeps the softmax itself (one exp per logit;
    the loss is ``lse - logit[target]`` with ``lse = max - log(max softmax)``, finite however small the
    target's probability), and the backward subtracts the one-hot in place and casts once for the two
    products; no log-softmax output and no zero-filled gradient are made.

    forward(x (N, D), weight (V, D), target (N,) int64, cd) -> () fp32
    """

    @staticmethod
    def forward(ctx, x, weight, target, cd):
        x_c, w_c = x.to(cd), weight.to(cd)
        logits = torch.mm(x_c, w_c.t()).to(torch.promote_types(cd, torch.float32))  # (N, V) >= fp32
        top = logits.amax(dim=1)  # (N,)
        p = torch.softmax(logits, dim=1)  # (N, V)
        lse = top - torch.log(p.amax(dim=1))  # (N,) the max's probability is exp(0) / sum = 1 / sum
        nll = lse.sum() - logits.gather(1, target[:, None]).sum()
        ctx.save_for_backward(x_c, w_c, p, target)
        ctx.dtypes = (x.dtype, weight.dtype)
        return nll

    @staticmethod
    def backward(ctx, grad):
        x_c, w_c, p, target = ctx.saved_tensors
        p.scatter_add_(1, target[:, None], p.new_full((p.shape[0], 1), -1.0))  # softmax - one-hot, in place
        g = torch.mul(p, grad, out=torch.empty_like(p, dtype=x_c.dtype))  # (N, V) in cd
        gx = torch.mm(g, w_c).to(ctx.dtypes[0])  # (N, D)
        gw = torch.mm(g.t(), x_c).to(ctx.dtypes[1])  # (V, D)
        return gx, gw, None, None


class LMHead(nn.Module):
    """Adaptive softmax over the word vocabulary, shared by both directions."""

    def __init__(self, dim: int, vocab: int, cutoffs: list[int], dropout: float):
        super().__init__()
        cutoffs = [c for c in cutoffs if c < vocab - 1] or [max(1, vocab // 2)]
        self.drop = nn.Dropout(dropout)
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(dim, vocab, cutoffs=cutoffs, div_value=4.0)

    def forward(self, h: torch.Tensor, target: torch.Tensor, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
        """h (N, D), target (N,) -> summed negative log-likelihood.

        The adaptive softmax's own forward, with its matrix products in ``compute_dtype`` and the
        softmax and the sum in fp32 (torch's module mixes dtypes under autocast); each cluster's
        last product and its cross-entropy are one op (``_LinearCrossEntropy``)."""
        sm, x = self.softmax, self.drop(h)
        cd = compute_dtype or x.dtype
        head_class = target.clone()  # (N,) the head's column of each target: the word, or its cluster
        nll = x.new_zeros((), dtype=torch.float32)
        bounds = [0] + sm.cutoffs
        for k in range(1, len(bounds) - 1):
            rows = ((target >= bounds[k]) & (target < bounds[k + 1])).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            head_class[rows] = sm.shortlist_size + k - 1
            proj, out = sm.tail[k - 1]
            hidden = F.linear(x.index_select(0, rows).to(cd), proj.weight.to(cd))  # (n_k, D / 4^k)
            nll = nll + _LinearCrossEntropy.apply(hidden, out.weight, target[rows] - bounds[k], cd)
        return nll + _LinearCrossEntropy.apply(x, sm.head.weight, head_class, cd)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        keep_freed_memory()  # a step's large tensors reuse the previous step's pages (no page faults)
        self.train = read_sentences(os.path.join(cfg.corpus, "train.txt"))
        self.valid = read_sentences(os.path.join(cfg.corpus, "valid.txt"), cfg.eval_tokens)
        vocab_path = os.path.join(cfg.out, "vocab.txt")
        if os.path.exists(vocab_path):
            self.vocab = open(vocab_path, encoding="utf-8").read().split("\n")
        else:
            self.vocab = build_vocab(self.train, cfg.vocab_size)
            os.makedirs(cfg.out, exist_ok=True)
            with open(vocab_path, "w", encoding="utf-8") as fh:
                fh.write("\n".join(self.vocab))
        self.word_id = {w: i for i, w in enumerate(self.vocab)}
        init = None
        if cfg.init_from:  # "default": the built-in model
            init = Elmo.from_pretrained(default_model_path() if cfg.init_from == "default" else cfg.init_from)
        self.opts = init.opts if init is not None else make_options(cfg.arch)
        self.arch = f"init:{init.fingerprint}" if init is not None else cfg.arch
        self.bilm = BiLM(self.opts)
        self._init_weights()
        if init is not None:  # warm start: the encoder from the model, a new softmax over this corpus's words
            self.bilm.load_state_dict(init.bilm.state_dict())
            logger.info("warm start from %s (fingerprint %s)", cfg.init_from, init.fingerprint)
        ckpt = self._load_checkpoint()
        # The softmax's clusters are part of a run's state (as its vocabulary is): a resumed run keeps
        # the cutoffs it started with, even if the default has changed since.
        cutoffs = list(ckpt["config"].get("cutoffs", cfg.cutoffs)) if ckpt else list(cfg.cutoffs)
        if cutoffs != list(cfg.cutoffs):
            logger.info("resuming with the run's softmax cutoffs %s (the config has %s)", cutoffs, cfg.cutoffs)
        self.cutoffs = cutoffs
        p = self.opts.lstm.projection_dim
        self.head = LMHead(p, len(self.vocab), cutoffs, cfg.dropout)
        params = list(self.bilm.parameters()) + list(self.head.parameters())
        self.optim = torch.optim.Adam(params, lr=cfg.lr, fused=True)  # one kernel for all: 1.5 vs 4.7 ms a step
        self.step, self.epoch, self.cursor, self.tokens_seen, self.elapsed = 0, 0, 0, 0, 0.0
        self.history: list[dict] = []
        self._order: list[np.ndarray] | None = None
        self._resume(ckpt)
        n_params = sum(x.numel() for x in self.bilm.parameters())
        n_tok = sum(len(s) for s in self.train)
        logger.info("arch %s: %.2fM biLM parameters; %d train sentences, %d tokens; vocab %d; %s, %d thread(s)",
                    self.arch, n_params / 1e6, len(self.train), n_tok, len(self.vocab), cfg.precision,
                    cfg.threads)

    def _init_weights(self) -> None:
        g = torch.Generator().manual_seed(self.cfg.seed)
        for name, prm in self.bilm.named_parameters():
            if prm.dim() >= 2:
                fan_in = prm.shape[-1] if "w_" in name else prm[0].numel()
                with torch.no_grad():
                    prm.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=g)
            elif "bias" in name:
                with torch.no_grad():
                    prm.zero_()
        with torch.no_grad():
            self.bilm.char_cnn.char_embed.weight.uniform_(-1.0, 1.0, generator=g)
            self.bilm.char_cnn.char_embed.weight[0].zero_()
            for hw in self.bilm.char_cnn.highways:  # carry-gate bias -2: start close to identity
                f = hw.bias.shape[0] // 2
                hw.bias[f:].fill_(-2.0)

    # ---- data -----------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng(self.cfg.seed + epoch)
        lengths = np.array([len(s) for s in self.train])
        perm = rng.permutation(len(self.train))
        batches = []
        chunk = 50 * max(1, self.cfg.token_budget // 25)  # bucket within chunks of shuffled data
        for start in range(0, len(perm), chunk):
            idx = perm[start:start + chunk]
            batches += [idx[b] for b in plan_batches(lengths[idx] + 2, self.cfg.token_budget)]
        rng.shuffle(batches)
        return batches

    def _targets(self, sents: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Word ids (B, T+2) of ``<S> w1..wn </S>``; -1 past the end."""
        t = max(len(s) for s in sents) + 2
        ids = np.full((len(sents), t), -1, dtype=np.int64)
        unk = self.word_id[UNK]
        for b, s in enumerate(sents):
            ids[b, : len(s) + 2] = [self.word_id[BOS]] + [self.word_id.get(w, unk) for w in s] + [self.word_id[EOS]]
        return torch.from_numpy(ids), torch.tensor([len(s) for s in sents])

    def loss(self, sents: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Summed NLL of the forward and backward LMs, and the number of predictions of each.

        Works in the LSTM's own layout (time-major, rows sorted by length, the backward direction
        reversed within each row), so only the top layer is computed and nothing is re-ordered: at
        time t <= n of a row with n words, the forward LM predicts word t+1 of ``<S> w1..wn </S>``
        and the backward LM word n-t.
        """
        batch = Batch.from_sentences(sents)
        bf16 = self.cfg.precision == "bf16" and self.bilm.training  # held-out perplexity in fp32
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # char-CNN and every GEMM in bf16
            top, order, lens = self.bilm.top_time_major(
                torch.from_numpy(batch.token_char_ids), torch.from_numpy(batch.token_index),
                torch.from_numpy(batch.lengths), torch.bfloat16 if bf16 else None)  # (2, T', B, P)
        _, t_max, b, p = top.shape
        words, _ = self._targets([sents[i] for i in order.tolist()])  # (B, T+2) in sorted row order
        n = lens.numpy() - 2  # (B,) words per sorted row
        t = np.concatenate([np.arange(k + 1) for k in n])  # time steps 0..n of every row
        r = np.repeat(np.arange(b), n + 1)  # their rows
        at = torch.from_numpy(t * b + r)  # (K,) rows of the flattened (T' * B) layout
        target_f = words[torch.from_numpy(r), torch.from_numpy(t + 1)]  # (K,)
        target_b = words[torch.from_numpy(r), torch.from_numpy(np.repeat(n, n + 1) - t)]  # (K,)
        cd = torch.bfloat16 if bf16 else None
        nll_f = self.head(top[0].reshape(t_max * b, p).index_select(0, at), target_f, cd)
        nll_b = self.head(top[1].reshape(t_max * b, p).index_select(0, at), target_b, cd)
        return nll_f, nll_b, len(t)

    # ---- loop -----------------------------------------------------------------------------
    def evaluate(self) -> tuple[float, float]:
        self.bilm.eval()
        self.head.eval()
        tot_f = tot_b = 0.0
        n = 0
        lengths = np.array([len(s) for s in self.valid])
        with torch.no_grad():
            for idx in plan_batches(lengths + 2, DEFAULT_TOKEN_BUDGET):
                f, b, k = self.loss([self.valid[i] for i in idx])
                tot_f, tot_b, n = tot_f + f.item(), tot_b + b.item(), n + k
        self.bilm.train()
        self.head.train()
        return math.exp(tot_f / n), math.exp(tot_b / n)

    def _lr(self) -> float:
        warm = min(1.0, (self.step + 1) / self.cfg.warmup_steps)
        frac = min(1.0, self.elapsed / (60.0 * self.cfg.max_minutes))  # linear decay over the budget
        return self.cfg.lr * warm * max(0.1, 1.0 - frac)

    def train_step(self, sents: list[list[str]]) -> tuple[float, int, float]:
        """One optimizer step on a batch of sentences -> (mean loss per prediction, predictions per
        direction, gradient norm before clipping)."""
        nll_f, nll_b, n = self.loss(sents)
        loss = (nll_f + nll_b) / (2 * n)
        for g in self.optim.param_groups:
            g["lr"] = self._lr()
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(
            list(self.bilm.parameters()) + list(self.head.parameters()), self.cfg.clip_norm)
        self.optim.step()
        self.step += 1
        self.tokens_seen += n
        return loss.item(), n, float(gnorm)

    def run(self) -> None:
        cfg = self.cfg
        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        self.bilm.train()
        self.head.train()
        last_ckpt = t_log = time.time()
        tok_log = 0
        while not stop["now"]:
            if self._order is None or self.cursor >= len(self._order):
                if self._order is not None:
                    self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._epoch_batches(self.epoch)
            t0 = time.time()
            loss, n, gnorm = self.train_step([self.train[i] for i in self._order[self.cursor]])
            self.cursor += 1
            tok_log += n
            self.elapsed += time.time() - t0
            if self.step % 20 == 0:
                now = time.time()
                logger.info("step %d epoch %d loss %.3f (ppl %.1f) gnorm %.2f lr %.2e %.0f tok/s elapsed %.1f min",
                            self.step, self.epoch, loss, math.exp(loss), gnorm,
                            self._lr(), tok_log / (now - t_log), self.elapsed / 60)
                t_log, tok_log = now, 0
            if self.step % cfg.eval_every == 0:
                self._eval_and_record()
            done = (cfg.max_steps and self.step >= cfg.max_steps) or self.elapsed >= 60 * cfg.max_minutes
            if done or time.time() - last_ckpt > 60 * cfg.checkpoint_minutes:
                self.save_checkpoint()
                last_ckpt = time.time()
            if done:
                break
        self._eval_and_record()
        self.save_checkpoint()
        self.export(os.path.join(cfg.out, "model"))

    def _eval_and_record(self) -> None:
        pf, pb = self.evaluate()
        rec = {"step": self.step, "epoch": self.epoch, "tokens": self.tokens_seen,
               "minutes": round(self.elapsed / 60, 2), "valid_ppl_forward": round(pf, 2),
               "valid_ppl_backward": round(pb, 2)}
        self.history.append(rec)
        logger.info("eval %s", rec)
        with open(os.path.join(self.cfg.out, "history.jsonl"), "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    # ---- checkpoints ----------------------------------------------------------------------
    def _ckpt_path(self) -> str:
        return os.path.join(self.cfg.out, "checkpoint.pt")

    def save_checkpoint(self) -> None:
        state = {"bilm": self.bilm.state_dict(), "head": self.head.state_dict(),
                 "optim": self.optim.state_dict(), "step": self.step, "epoch": self.epoch,
                 "cursor": self.cursor, "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
                 "history": self.history, "config": {**asdict(self.cfg), "cutoffs": self.cutoffs},
                 "arch": self.arch,
                 "torch_rng": torch.get_rng_state(), "py_rng": random.getstate()}
        with atomic_local_path(self._ckpt_path()) as tmp:
            torch.save(state, tmp)
        logger.info("checkpoint at step %d (%.1f min of training)", self.step, self.elapsed / 60)

    def _load_checkpoint(self) -> dict | None:
        if not os.path.exists(self._ckpt_path()):
            return None
        return torch.load(self._ckpt_path(), weights_only=True)

    def _resume(self, state: dict | None) -> None:
        if state is None:
            return
        arch = state.get("arch", state["config"]["arch"])
        if arch != self.arch:
            raise ValueError(f"checkpoint in {self.cfg.out} is arch {arch}, not {self.arch}: "
                             "use another --out or the same --arch / --init-from")
        self.bilm.load_state_dict(state["bilm"])
        self.head.load_state_dict(state["head"])
        self.optim.load_state_dict(state["optim"])
        for k in ("step", "epoch", "cursor", "tokens_seen", "elapsed", "history"):
            setattr(self, k, state[k])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        self._order = self._epoch_batches(self.epoch)
        logger.info("resumed from step %d (epoch %d, %.1f min done)", self.step, self.epoch, self.elapsed / 60)

    def export(self, directory: str, dtype: str = "float32") -> Elmo:
        elmo = Elmo(self.opts)
        elmo.bilm.load_state_dict(self.bilm.state_dict())
        elmo.save_pretrained(directory, dtype=dtype)
        write_frequencies(collections.Counter(t for s in self.train for t in s),
                          os.path.join(directory, "frequencies.tsv"))
        logger.info("exported %s", directory)
        return elmo


def train(cfg: TrainConfig) -> None:
    """Train (resuming from ``cfg.out``'s checkpoint when there is one) until the time or step budget."""
    Trainer(cfg).run()
