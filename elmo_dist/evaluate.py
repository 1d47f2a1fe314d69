"""`elmo-dist evaluate`: how well a model's sentence vectors rank similar pairs and separate labels.

Two kinds of data the user brings (or the sets ``tools/evaluate_model.py --write-sets`` builds):

* **pairs**: ``sentence1, sentence2, score`` rows (human similarity). Metric: Spearman correlation
  (x100 in the table) between the gold scores and the cosine of the two sentence vectors.
* **labelled**: ``text, label`` rows. Metric: a logistic regression on the sentence vectors
  (standardised, C = 1), stratified k-fold cross-validated (seeded): accuracy and macro-F1.

Every combination of representation (the model's scalar mix and each layer), pooling (``mean`` of
the token vectors, or ``sif``: the mean of ``a / (a + p(w))``-weighted token vectors, Arora et al.
2017) and post-processing (``elmo_dist.similarity``: none, center, abtt, whiten; fitted on the
set's own texts, without labels) is scored; TF-IDF (word uni+bigrams) is the reference row. A text
is split into sentences (the job's default splitter) and Moses-tokenized; its vector pools all its
tokens. Word frequencies for ``sif`` come from the model directory's ``frequencies.tsv`` when it
has one (``word<TAB>count``, written by ``elmo-dist train``; what the job's ``--pooling sif`` uses),
else from the texts being evaluated.

Classifiers, CV and TF-IDF use scikit-learn (the ``eval`` extra); pairs with ELMo vectors need
only NumPy. Shapes: N texts, L+1 layers, D dims.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from elmo_dist.errors import ElmoDistError
from elmo_dist.model.elmo import SIF_A, sif_table
from elmo_dist.similarity import DEFAULT_K, METHODS, Postprocessor

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "sif")
PAIR_COLUMNS = ("sentence1", "sentence2", "score")
LABELLED_COLUMNS = ("text", "label")


class EvaluateError(ElmoDistError):
    """Bad evaluation data or options (one line, naming the file, column or row)."""


@dataclass
class PairSet:
    name: str
    a: list[str]
    b: list[str]
    gold: np.ndarray  # (N,) float


@dataclass
class LabelledSet:
    name: str
    texts: list[str]
    labels: np.ndarray  # (N,) label strings
    classes: list[str] = field(default_factory=list)


# ---- data ----------------------------------------------------------------------------------
def _read_table(path: str) -> dict[str, list]:
    """Columns of a .tsv / .csv (header row) / .jsonl / .parquet file."""
    if not os.path.exists(path):
        raise EvaluateError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pydict()
    if ext == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise EvaluateError(f"{path}: line {i} is not JSON ({e.msg})") from None
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return {k: [r.get(k) for r in rows] for k in keys}
    if ext in (".tsv", ".csv", ".txt"):
        import csv

        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="," if ext == ".csv" else "\t", quoting=csv.QUOTE_MINIMAL)
            try:
                header = next(reader)
            except StopIteration:
                raise EvaluateError(f"{path}: empty file") from None
            cols: dict[str, list] = {h.strip(): [] for h in header}
            for i, row in enumerate(reader, 2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise EvaluateError(f"{path}: line {i} has {len(row)} fields, the header {len(header)}")
                for h, v in zip(cols, row):
                    cols[h].append(v)
        return cols
    raise EvaluateError(f"{path}: unknown format {ext!r} (use .tsv, .csv, .jsonl or .parquet)")


def _columns(path: str, table: dict[str, list], names: Sequence[str]) -> list[list]:
    missing = [c for c in names if c not in table]
    if missing:
        raise EvaluateError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(table) or 'none'}; "
                            f"expected {', '.join(names)})")
    out = [table[c] for c in names]
    for name, col in zip(names, out):
        for i, v in enumerate(col):
            if v is None or (isinstance(v, str) and not v.strip()):
                raise EvaluateError(f"{path}: row {i + 1} has an empty {name!r}")
    if not out[0]:
        raise EvaluateError(f"{path}: no rows")
    return out


def read_pairs(path: str, name: str | None = None) -> PairSet:
    """Columns sentence1, sentence2, score (a number)."""
    a, b, score = _columns(path, _read_table(path), PAIR_COLUMNS)
    gold = np.empty(len(score))
    for i, v in enumerate(score):
        try:
            gold[i] = float(v)
        except (TypeError, ValueError):
            raise EvaluateError(f"{path}: row {i + 1}: score {v!r} is not a number") from None
        if not np.isfinite(gold[i]):
            raise EvaluateError(f"{path}: row {i + 1}: score {v!r} is not a finite number")
    if len(a) < 3:
        raise EvaluateError(f"{path}: {len(a)} pairs; a rank correlation needs at least 3")
    return PairSet(name or _stem(path), [str(x) for x in a], [str(x) for x in b], gold)


def read_labelled(path: str, name: str | None = None, folds: int = 5) -> LabelledSet:
    """Columns text, label (any values: each distinct value is a class)."""
    texts, labels = _columns(path, _read_table(path), LABELLED_COLUMNS)
    y = np.array([str(v) for v in labels])
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise EvaluateError(f"{path}: one label only ({classes[0]!r}); classification needs two or more")
    if counts.min() < folds:
        raise EvaluateError(f"{path}: label {classes[counts.argmin()]!r} has {counts.min()} rows, fewer than "
                            f"the {folds} cross-validation folds")
    return LabelledSet(name or _stem(path), [str(t) for t in texts], y, [str(c) for c in classes])


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# ---- metrics -------------------------------------------------------------------------------
def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 0..N-1, ties given their average rank."""
    x = np.asarray(x)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts
    return (start + (counts - 1) / 2.0)[inverse.ravel()]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks); 0 when one side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / den) if den > 0 else 0.0


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, D), (N, D) -> (N,) cosine of each row pair (0 for a zero row)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.where(na * nb == 0, 1.0, na * nb)


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise EvaluateError("labelled sets and the TF-IDF rows need scikit-learn: pip install 'elmo-dist[eval]'") \
            from None


def cross_validate(x, y: np.ndarray, folds: int = 5, seed: int = 0, scale: bool = True) -> dict:
    """Stratified k-fold logistic regression (C = 1): accuracy and macro-F1 of the out-of-fold predictions
    (returned too, under "pred")."""
    _sklearn()
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = ([StandardScaler()] if scale else []) + [LogisticRegression(max_iter=2000)]
    pred = cross_val_predict(make_pipeline(*steps), x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro")),
            "pred": np.asarray(pred)}


def _tfidf(texts: list[str]):
    _sklearn()
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(token_pattern=r"\S+", lowercase=True, ngram_range=(1, 2), sublinear_tf=True).fit(texts)


# ---- vectors -------------------------------------------------------------------------------
def sif_weights(counts: dict[str, int], a: float = SIF_A):
    """word -> a / (a + p(w)) (the model's own rule, ``elmo_dist.model.elmo.sif_table``)."""
    table, rare = sif_table(counts, a)
    return lambda w: table.get(w, rare)


def text_vectors(elmo, texts: Sequence[Sequence[Sequence[str]]], weight=None,
                 token_budget: int | None = None) -> dict[str, np.ndarray]:
    """Pooled per-layer vectors of each text, given as its tokenized sentences: {"mean": (N, L+1, D),
    "sif": (N, L+1, D)}. A text with no token gets zeros."""
    sents = [s for text in texts for s in text]
    owner = [i for i, text in enumerate(texts) for _ in text]
    n_layers, dim = elmo.bilm.num_layers, elmo.output_dim
    sums = {p: np.zeros((len(texts), n_layers, dim)) for p in POOLINGS}
    counts = np.zeros(len(texts))
    for idx, layers, mask in elmo.embed_in_batches(sents, token_budget):
        layers = layers.cpu().numpy()  # (L+1, b, T, D)
        for j, k in enumerate(idx):
            s, i = sents[k], owner[k]
            v = layers[:, j, : len(s)]  # (L+1, n, D)
            sums["mean"][i] += v.sum(axis=1)
            w = np.array([weight(t) for t in s]) if weight is not None else np.ones(len(s))
            sums["sif"][i] += (v * w[None, :, None]).sum(axis=1)
            counts[i] += len(s)
    return {p: (x / np.maximum(counts, 1)[:, None, None]).astype(np.float32) for p, x in sums.items()}


def _representations(elmo, pooled: np.ndarray) -> dict[str, np.ndarray]:
    """(N, L+1, D) -> {"mix": (N, D), "layer0": .., ...}; the scalar mix is linear, so mixing pooled
    layers equals pooling the mixed vectors."""
    import torch

    with torch.no_grad():
        mix = elmo.scalar_mix(torch.from_numpy(np.ascontiguousarray(pooled.transpose(1, 0, 2)))).numpy()
    return {"mix": mix, **{f"layer{k}": pooled[:, k] for k in range(pooled.shape[1])}}


def degenerate(method: str, n: int, dim: int) -> bool:
    """True where ``method`` fitted on ``n`` vectors of ``dim`` dims measures nothing: whitening onto
    k >= n - 1 components makes every pair of the n vectors equally similar (they become the corners
    of a regular simplex), so a rank correlation over them is rounding noise."""
    return method == "whiten" and n - 1 <= min(DEFAULT_K["whiten"], dim)


def _postprocessed(x: np.ndarray, method: str) -> np.ndarray:
    if method == "none":
        return x
    k = min(DEFAULT_K[method], x.shape[1], max(1, x.shape[0] - 1)) if method in DEFAULT_K else None
    return Postprocessor.fit(x, method, k).transform(x)


# ---- the evaluation ------------------------------------------------------------------------
def check_names(pairs: Sequence[PairSet], labelled: Sequence[LabelledSet]) -> None:
    """Rows are keyed by set name (a file's stem): two sets may not share one."""
    names = [s.name for s in pairs] + [s.name for s in labelled]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvaluateError(f"two sets are named {dup[0]!r} (the file name without its extension): rename one")


def row_key(r: dict) -> tuple:
    """(set, metric, representation, pooling, postprocess): what a row measures, whichever model."""
    return (r["set"], r["metric"], r["representation"], r["pooling"], r["postprocess"])


def evaluate(elmo, pairs: Sequence[PairSet] = (), labelled: Sequence[LabelledSet] = (), *,
             frequencies: dict[str, int] | None = None, poolings: Sequence[str] = POOLINGS,
             postprocess: Sequence[str] = METHODS, folds: int = 5, seed: int = 0, tfidf: bool = True,
             token_budget: int | None = None, details: dict | None = None) -> list[dict]:
    """Score ``elmo`` on every set; one row per (set, representation, pooling, post-processing, metric).

    Rows: {"set", "kind" (pairs|labelled), "representation" (mix, layerK, tfidf), "pooling",
    "postprocess", "metric" (spearman|accuracy|macro_f1), "value", "n"}. Spearman is a correlation
    in [-1, 1] (the table prints x100). A ``whiten`` row is left out where the set has too few texts
    to fit it (``degenerate``). ``details``, when given, receives each row's per-item scores under
    ``row_key(row)`` (pairs: the cosines, labelled: the out-of-fold predictions), for ``compare``.
    """
    check_names(pairs, labelled)
    for p in poolings:
        if p not in POOLINGS:
            raise EvaluateError(f"pooling must be one of {', '.join(POOLINGS)}, got {p!r}")
    for m in postprocess:
        if m not in METHODS:
            raise EvaluateError(f"postprocess must be one of {', '.join(METHODS)}, got {m!r}")
    if labelled:
        _sklearn()
    if tfidf:
        try:
            _sklearn()
        except EvaluateError:
            logger.warning("scikit-learn is not installed: no TF-IDF rows")
            tfidf = False
    texts: dict[str, None] = {}
    for s in pairs:
        texts.update(dict.fromkeys(s.a + s.b))
    for s in labelled:
        texts.update(dict.fromkeys(s.texts))
    order = list(texts)
    t0 = time.time()
    source = "given"
    if frequencies is None:
        frequencies, source = getattr(elmo, "frequencies", None), "model"  # the model's frequencies.tsv
    sentences = [elmo.tokenize(text, split_sentences=True) for text in order]  # per text, once
    tokens = [[t for s in text for t in s] for text in sentences]
    if "sif" in poolings and frequencies is None:  # else: counted over the texts being evaluated
        source = "texts"
        frequencies = collections.Counter(t for text in tokens for t in text)
    weight = sif_weights(frequencies) if "sif" in poolings else None
    pooled = text_vectors(elmo, sentences, weight, token_budget)
    n_tok = sum(len(t) for t in tokens)
    logger.info("embedded %d texts (%d tokens) in %.1f s", len(order), n_tok, time.time() - t0)
    row_of = {t: i for i, t in enumerate(order)}
    joined = {t: " ".join(tok) for t, tok in zip(order, tokens)}
    reps = {p: _representations(elmo, pooled[p]) for p in poolings}
    out: list[dict] = []

    def emit(s, kind, rep, pooling, pp, metric, value, items=None):
        out.append({"set": s.name, "kind": kind, "representation": rep, "pooling": pooling, "postprocess": pp,
                    "metric": metric, "value": round(float(value), 4), "n": len(s.a) if kind == "pairs" else
                    len(s.texts), **({"sif_frequencies": source} if pooling == "sif" else {})})
        if details is not None and items is not None:
            details[row_key(out[-1])] = items

    skipped = set()

    def usable(s, pp, n, dim) -> bool:
        if degenerate(pp, n, dim):
            if (s.name, pp) not in skipped:
                skipped.add((s.name, pp))
                logger.warning("%s: no %s rows: %d texts cannot fit it (k = %d components needs more than %d)",
                               s.name, pp, n, min(DEFAULT_K[pp], dim), min(DEFAULT_K[pp], dim) + 1)
            return False
        return True

    for s in pairs:
        ia = np.array([row_of[t] for t in s.a])
        ib = np.array([row_of[t] for t in s.b])
        used = np.unique(np.concatenate([ia, ib]))  # fit post-processing on this set's texts
        for pooling in poolings:
            for rep, x in reps[pooling].items():
                for pp in postprocess:
                    if not usable(s, pp, len(used), x.shape[1]):
                        continue
                    z = _postprocessed(x[used], pp)
                    y = np.zeros((x.shape[0], z.shape[1]), np.float32)
                    y[used] = z
                    cos = paired_cosine(y[ia], y[ib])
                    emit(s, "pairs", rep, pooling, pp, "spearman", spearman(cos, s.gold), cos)
        if tfidf:
            vec = _tfidf([joined[t] for t in s.a + s.b])
            ca = vec.transform([joined[t] for t in s.a])
            cb = vec.transform([joined[t] for t in s.b])
            cos = np.asarray(ca.multiply(cb).sum(axis=1)).ravel()  # rows are L2-normalised
            emit(s, "pairs", "tfidf", "-", "-", "spearman", spearman(cos, s.gold), cos)
    for s in labelled:
        idx = np.array([row_of[t] for t in s.texts])
        for pooling in poolings:
            for rep, x in reps[pooling].items():
                for pp in postprocess:
                    if not usable(s, pp, len(np.unique(idx)), x.shape[1]):
                        continue
                    scores = cross_validate(_postprocessed(x[idx], pp), s.labels, folds, seed)
                    for metric in ("accuracy", "macro_f1"):
                        emit(s, "labelled", rep, pooling, pp, metric, scores[metric], scores["pred"])
        if tfidf:
            x = _tfidf([joined[t] for t in s.texts]).transform([joined[t] for t in s.texts])
            scores = cross_validate(x, s.labels, folds, seed, scale=False)
            for metric in ("accuracy", "macro_f1"):
                emit(s, "labelled", "tfidf", "-", "-", metric, scores[metric], scores["pred"])
    logger.info("evaluated %d set(s), %d rows in %.1f s", len(pairs) + len(labelled), len(out), time.time() - t0)
    return out


# ---- comparing two models ------------------------------------------------------------------
def rank_rows(a: np.ndarray) -> np.ndarray:
    """(B, N) -> (B, N): ``rankdata`` of every row (ties given their average rank), vectorised."""
    a = np.asarray(a)
    b, n = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    new = np.ones((b, n), bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    group = np.cumsum(new.ravel()) - 1  # groups of equal values, contiguous in row-major order
    counts = np.bincount(group)
    start = (np.cumsum(counts) - counts) % n  # a group never spans two rows: row starts are new groups
    ranks = np.empty((b, n))
    np.put_along_axis(ranks, order, (start + (counts - 1) / 2.0)[group].reshape(b, n), axis=1)
    return ranks


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    return np.where(den > 0, (x * y).sum(1) / np.where(den > 0, den, 1.0), 0.0)


CHUNK = 100  # resamples scored at once


def _resampled(metric: str, items: np.ndarray, idx, truth: np.ndarray, truth_ranks) -> np.ndarray:
    """The metric on each resample of a row's per-item scores -> (B,). ``idx``: (B, N) item indices,
    or (Spearman only) a list of B index arrays of any length with ``truth_ranks`` the matching list."""
    if metric == "spearman":
        if isinstance(idx, list):  # NaN where a resample has fewer than 3 pairs: no rank correlation
            return np.array([_row_pearson(rankdata(items[ix])[None], gr[None])[0] if len(ix) >= 3 else np.nan
                             for ix, gr in zip(idx, truth_ranks)])
        return np.concatenate([_row_pearson(rank_rows(items[idx[i:i + CHUNK]]), truth_ranks[i:i + CHUNK])
                               for i in range(0, len(idx), CHUNK)])
    if len(idx) > CHUNK:  # bounded memory: (CHUNK, N) at a time
        return np.concatenate([_resampled(metric, items, idx[i:i + CHUNK], truth, None)
                               for i in range(0, len(idx), CHUNK)])
    classes = np.unique(np.concatenate([truth, items]))
    truth, items = np.searchsorted(classes, truth)[idx], np.searchsorted(classes, items)[idx]  # (B, N) codes
    if metric == "accuracy":
        return (items == truth).mean(axis=1)
    f1s, present = [], []
    for c in range(len(classes)):  # macro-F1 over the classes in each resample
        t, p = truth == c, items == c
        tp, fp, fn = (t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)
        den = 2 * tp + fp + fn
        f1s.append(np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0))
        present.append(den > 0)
    return (np.array(f1s) * np.array(present)).sum(0) / np.maximum(np.array(present).sum(0), 1)


def resample_pairs(s: PairSet, resamples: int, rng: np.random.Generator) -> tuple[str, object]:
    """Bootstrap resamples of a pair set: ("texts", list of pair-index arrays) where its texts recur
    (on average in 2 or more pairs each, as Lee's 50 documents in 1,225 pairs): the texts are drawn
    with replacement and each pair counts (draws of its first text) x (draws of its second), so the
    dependence between pairs that share a text is kept; else ("pairs", (B, N) indices): pairs drawn
    with replacement."""
    texts, codes = np.unique(np.array(s.a + s.b, dtype=object).astype(str), return_inverse=True)
    n = len(s.a)
    if 2 * n / len(texts) < 2:
        return "pairs", rng.integers(0, n, (resamples, n))
    ia, ib = codes[:n], codes[n:]
    draws = []
    for _ in range(resamples):
        count = np.bincount(rng.integers(0, len(texts), len(texts)), minlength=len(texts))
        draws.append(np.repeat(np.arange(n), count[ia] * count[ib]))
    return "texts", draws


def compare(rows: list[dict], other: list[dict], details: dict, other_details: dict,
            pairs: Sequence[PairSet] = (), labelled: Sequence[LabelledSet] = (), *,
            resamples: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict]:
    """Paired bootstrap of every row two models share (same sets; ``details`` from ``evaluate``).

    Each set is resampled ``resamples`` times (labelled sets: their texts with the out-of-fold
    predictions; pair sets: ``resample_pairs``, by text where texts recur); both models are scored
    on the same resamples, and the ``level`` percentile interval of the difference decides the
    verdict: "better" (above 0), "worse" (below 0) or "tie". Post-processing and classifiers stay as
    fitted on the whole set, so only the choice of items varies.

    Returns ``rows``, each row two models share with "other", "diff", "low", "high", "verdict",
    "resampled" (pairs, texts) and "resamples" added; a row the other model lacks (``whiten`` where
    only one model's dimension allows it) is kept as it is, and logged.
    """
    rng = np.random.default_rng(seed)
    truth, draws, unit, truth_ranks = {}, {}, {}, {}
    for s in pairs:
        truth[s.name] = s.gold
        unit[s.name], draws[s.name] = resample_pairs(s, resamples, rng)
        truth_ranks[s.name] = [rankdata(s.gold[ix]) for ix in draws[s.name]] if unit[s.name] == "texts" \
            else rank_rows(s.gold[draws[s.name]])
    for s in labelled:
        truth[s.name], unit[s.name] = s.labels, "texts"
        draws[s.name] = rng.integers(0, len(s.labels), (resamples, len(s.labels)))
    theirs = {row_key(r): r for r in other}
    out, alone = [], []
    for r in rows:
        k = row_key(r)
        if k not in theirs or k not in details or k not in other_details or r["set"] not in truth:
            out.append(r)
            alone.append("/".join(k))
            continue
        name, metric = r["set"], r["metric"]
        idx, t = draws[name], truth[name]
        diff = (_resampled(metric, details[k], idx, t, truth_ranks.get(name))
                - _resampled(metric, other_details[k], idx, t, truth_ranks.get(name)))
        diff = diff[np.isfinite(diff)]  # resamples too small to score are left out
        low, high = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2]) if len(diff) else (-np.inf, np.inf)
        verdict = "better" if low > 0 else "worse" if high < 0 else "tie"
        out.append({**r, "other": theirs[k]["value"], "diff": round(r["value"] - theirs[k]["value"], 4),
                    "low": round(float(low), 4), "high": round(float(high), 4), "verdict": verdict,
                    "resampled": unit[name], "resamples": int(len(diff))})
    missing = {row_key(r) for r in other} - {row_key(r) for r in rows}
    if alone or missing:
        logger.warning("not compared: %d row(s) only this model has (%s), %d only the other has (%s)",
                       len(alone), ", ".join(alone[:3]) or "-", len(missing),
                       ", ".join("/".join(k) for k in sorted(missing)[:3]) or "-")
    return out


MARKS = {"better": " ▲", "worse": " ▼", "tie": ""}


def summarize(comparison: list[dict]) -> str:
    """One line: how many of the model rows (TF-IDF left out) are better, tied, worse, at least as good."""
    rows = [r for r in comparison if r["representation"] != "tfidf" and "verdict" in r]
    n = {v: sum(r["verdict"] == v for r in rows) for v in ("better", "tie", "worse")}
    point = sum(r["value"] >= r["other"] for r in rows)
    return (f"{len(rows)} rows: {n['better']} significantly better, {n['tie']} within noise, {n['worse']} "
            f"significantly worse; {point} at least as good by the point values alone")


def format_table(rows: list[dict], previous: list[dict] | None = None) -> str:
    """A markdown table, values x100: one line per set / metric / representation / pooling, one
    column per post-processing; with ``previous`` (another model's rows), ``new (previous)`` cells;
    rows from ``compare`` (they carry "other" and "verdict") print ``new (other)`` with ▲ where the
    difference is significantly positive and ▼ where it is significantly negative."""
    key = row_key  # (set, metric, representation, pooling, postprocess)
    methods = list(dict.fromkeys(r["postprocess"] for r in rows if r["postprocess"] != "-"))
    value = {key(r): r["value"] for r in rows}
    before = {key(r): r["value"] for r in previous or []}
    before.update({key(r): r["other"] for r in rows if "other" in r})
    mark = {key(r): MARKS[r["verdict"]] for r in rows if "verdict" in r}
    lines = ["| set | metric (x100) | representation | pooling | " + " | ".join(methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    for g in dict.fromkeys(key(r)[:4] for r in rows):
        cells = []
        for m in (["-"] if g[2] == "tfidf" else methods):
            k = (*g, m)
            cell = f"{100 * value[k]:.1f}" if k in value else ""
            if k in value and k in before and g[2] != "tfidf":
                cell += f" ({100 * before[k]:.1f})" + mark.get(k, "")
            cells.append(cell)
        cells += [""] * (len(methods) - len(cells))
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {g[3]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
