"""`elmo-dist evaluate`: data files checked up front, metrics against reference math, scores that follow
the model's own vectors."""

import json
import math

import numpy as np
import pytest

from elmo_dist.cli import main
from elmo_dist.evaluate import (EvaluateError, LabelledSet, PairSet, compare, evaluate, format_table, rank_rows,
                                rankdata, read_labelled, read_pairs, resample_pairs, row_key, sif_weights, spearman,
                                summarize)

SENTS = ["The cat sat on the mat .", "A dog ran in the park .", "Stocks fell sharply on Monday .",
         "The market rallied late in the day .", "She painted the old fence white .", "Rain is expected tomorrow .",
         "He reads a book every week .", "The team won the final match ."]


def test_spearman_matches_the_textbook_formula_and_averages_ties():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    d = rankdata(x) - rankdata(y)
    assert spearman(x, y) == pytest.approx(1 - 6 * (d @ d) / (30 * (30 ** 2 - 1)), abs=1e-12)
    assert list(rankdata(np.array([10, 20, 20, 5]))) == [1.0, 2.5, 2.5, 0.0]
    assert spearman(np.array([1, 2, 3.0]), np.array([3, 2, 1.0])) == pytest.approx(-1.0)
    assert spearman(np.ones(4), np.arange(4.0)) == 0.0


def test_sif_weights():
    w = sif_weights({"the": 900, "cat": 100}, a=1e-3)
    assert w("the") == pytest.approx(1e-3 / (1e-3 + 0.9))
    assert w("cat") == pytest.approx(1e-3 / (1e-3 + 0.1))
    assert w("zebra") == pytest.approx(1e-3 / (1e-3 + 1 / 1000))  # unseen: as a word seen once


def _write(path, header, rows):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def test_bad_files_are_named_before_any_work(tmp_path):
    with pytest.raises(EvaluateError, match=r"p\.tsv: missing column\(s\) score"):
        read_pairs(_write(tmp_path / "p.tsv", ["sentence1", "sentence2"], [("a", "b")] * 3))
    with pytest.raises(EvaluateError, match=r"q\.tsv: row 2: score 'high' is not a number"):
        read_pairs(_write(tmp_path / "q.tsv", ["sentence1", "sentence2", "score"],
                          [("a", "b", 1), ("c", "d", "high"), ("e", "f", 2)]))
    with pytest.raises(EvaluateError, match=r"l\.tsv: one label only"):
        read_labelled(_write(tmp_path / "l.tsv", ["text", "label"], [("a", "x")] * 10))
    with pytest.raises(EvaluateError, match=r"m\.tsv: row 2 has an empty 'text'"):
        read_labelled(_write(tmp_path / "m.tsv", ["text", "label"], [("a", "x"), (" ", "y")]))
    with pytest.raises(EvaluateError, match=r"unknown format"):
        read_pairs(_write(tmp_path / "p.xlsx", ["a"], []))
    with pytest.raises(EvaluateError, match=r"r\.tsv: row 2: score 'nan' is not a finite number"):
        read_pairs(_write(tmp_path / "r.tsv", ["sentence1", "sentence2", "score"],
                          [("a", "b", 1), ("c", "d", "nan"), ("e", "f", 2)]))


def test_pairs_scored_by_the_models_own_cosine(tiny_elmo, tmp_path):
    """Gold = the cosine of the model's own mean-pooled mix vectors (computed here with the public API):
    the (mix, mean, none) row must then be a perfect rank correlation, and the others must not all be."""
    vec = {s: v for s, v in zip(SENTS, tiny_elmo.embed_sentences(SENTS, pooling="mean"))}
    pairs = [(a, b) for i, a in enumerate(SENTS) for b in SENTS[i + 1:]]
    gold = [float(vec[a] @ vec[b] / np.linalg.norm(vec[a]) / np.linalg.norm(vec[b])) for a, b in pairs]
    ps = read_pairs(_write(tmp_path / "own.tsv", ["sentence1", "sentence2", "score"],
                           [(a, b, g) for (a, b), g in zip(pairs, gold)]))
    rows = evaluate(tiny_elmo, [ps], tfidf=False)
    # representations x poolings x post-processings; no whiten: 8 texts cannot fit it (every pair would
    # come out equally similar, test_similarity.py)
    assert len(rows) == (1 + 3) * 2 * 3
    assert "whiten" not in {r["postprocess"] for r in rows}
    by = {(r["representation"], r["pooling"], r["postprocess"]): r["value"] for r in rows}
    assert by[("mix", "mean", "none")] == pytest.approx(1.0, abs=1e-4)
    assert min(by.values()) < 0.99
    assert all(-1 <= v <= 1 for v in by.values())
    assert "| own | spearman | mix | mean | 100.0 |" in format_table(rows)


def test_labelled_cross_validation_separates_an_easy_task(tiny_elmo, tmp_path):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    pos = ["great", "wonderful", "superb", "lovely"]
    neg = ["awful", "terrible", "dreadful", "horrid"]
    rows = []
    for i in range(40):
        label = "pos" if i % 2 else "neg"
        word = rng.choice(pos if label == "pos" else neg)
        rows.append((f"the film was {word} and {rng.choice(pos if label == 'pos' else neg)} .", label))
    ls = read_labelled(_write(tmp_path / "films.tsv", ["text", "label"], rows))
    out = evaluate(tiny_elmo, labelled=[ls], poolings=["mean"], postprocess=["none", "center"])
    acc = {(r["representation"], r["postprocess"]): r["value"] for r in out if r["metric"] == "accuracy"}
    assert acc[("tfidf", "-")] == 1.0  # the words give the label away
    assert acc[("layer0", "none")] > 0.9  # so do the char-CNN's context-free vectors
    assert all(0 <= r["value"] <= 1 for r in out)


def test_cli_one_line_errors_and_json(tiny_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", tiny_dir]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["evaluate", "--model", tiny_dir, "--pairs", str(tmp_path / "missing.tsv")]) == 2
    assert "missing.tsv: no such file" in capsys.readouterr().err
    p = _write(tmp_path / "p.tsv", ["sentence1", "sentence2", "score"],
               [(SENTS[i], SENTS[i + 1], i) for i in range(6)])
    assert main(["evaluate", "--model", tiny_dir, "--pairs", p, "--pooling", "mean", "--postprocess", "none",
                 "--no-tfidf", "--json", "-"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["representation"] for r in rows] == ["mix", "layer0", "layer1", "layer2"]
    assert all(r["set"] == "p" and r["n"] == 6 and not math.isnan(r["value"]) for r in rows)


def test_rank_rows_is_rankdata_of_every_row():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, size=(50, 17)).astype(float)  # many ties
    a[3] = 2.0  # a constant row
    expected = np.stack([rankdata(row) for row in a])
    assert np.array_equal(rank_rows(a), expected)


def _toy_sets(rng, n_pairs=300, n_texts=400):
    gold = rng.normal(size=n_pairs)
    ps = PairSet("toy", [f"a{i}" for i in range(n_pairs)], [f"b{i}" for i in range(n_pairs)], gold)
    labels = np.array(["x", "y", "z"])[rng.integers(0, 3, n_texts)]
    ls = LabelledSet("cls", [f"t{i}" for i in range(n_texts)], labels, ["x", "y", "z"])
    return ps, ls


def _rows(ps, ls, cos, pred):
    """Rows and details as ``evaluate`` gives them, for one pair row and one labelled row."""
    from sklearn.metrics import accuracy_score, f1_score

    rows = [{"set": "toy", "kind": "pairs", "representation": "mix", "pooling": "mean", "postprocess": "none",
             "metric": "spearman", "value": spearman(cos, ps.gold), "n": len(cos)}]
    for metric, value in (("accuracy", accuracy_score(ls.labels, pred)),
                          ("macro_f1", f1_score(ls.labels, pred, average="macro"))):
        rows.append({"set": "cls", "kind": "labelled", "representation": "mix", "pooling": "mean",
                     "postprocess": "none", "metric": metric, "value": value, "n": len(pred)})
    return rows, {row_key(r): (cos if r["kind"] == "pairs" else pred) for r in rows}


def test_compare_finds_the_better_model_and_calls_a_model_against_itself_a_tie():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    ps, ls = _toy_sets(rng)
    good = _rows(ps, ls, ps.gold + rng.normal(scale=0.5, size=len(ps.gold)),
                 np.where(rng.random(len(ls.labels)) < 0.8, ls.labels, "x"))
    bad = _rows(ps, ls, rng.normal(size=len(ps.gold)), np.array(["x", "y", "z"])[rng.integers(0, 3, len(ls.labels))])
    out = compare(good[0], bad[0], good[1], bad[1], [ps], [ls], resamples=300)
    assert [r["verdict"] for r in out] == ["better"] * 3
    for r in out:
        assert r["low"] <= r["diff"] <= r["high"] and r["diff"] == pytest.approx(r["value"] - r["other"], abs=1e-4)
    assert [r["verdict"] for r in compare(bad[0], good[0], bad[1], good[1], [ps], [ls], resamples=300)] == \
        ["worse"] * 3
    same = compare(good[0], good[0], good[1], good[1], [ps], [ls], resamples=300)
    assert [(r["verdict"], r["low"], r["high"]) for r in same] == [("tie", 0.0, 0.0)] * 3
    lonely = [dict(good[0][0], postprocess="whiten")]  # a row the other model lacks: kept, not compared
    kept = compare(good[0] + lonely, bad[0], {**good[1], row_key(lonely[0]): good[1][row_key(good[0][0])]}, bad[1],
                   [ps], [ls], resamples=50)
    assert kept[-1] == lonely[0] and "verdict" not in kept[-1]
    assert summarize(same).startswith("3 rows: 0 significantly better, 3 within noise, 0 significantly worse")
    assert "▲" in format_table(out) and "▼" not in format_table(out)


def test_compare_resamples_score_like_the_full_metric():
    """With the identity as the only 'resample', the bootstrap's metric code gives the row's own value."""
    pytest.importorskip("sklearn")
    from elmo_dist.evaluate import _resampled

    rng = np.random.default_rng(2)
    ps, ls = _toy_sets(rng, n_pairs=40, n_texts=60)
    cos = np.round(rng.normal(size=40), 1)  # ties
    pred = np.array(["x", "y", "w"])[rng.integers(0, 3, 60)]  # a class the truth never has
    rows, details = _rows(ps, ls, cos, pred)
    for r in rows:
        truth = ps.gold if r["kind"] == "pairs" else ls.labels
        idx = np.arange(len(truth))[None]
        got = _resampled(r["metric"], details[row_key(r)], idx, truth, rank_rows(truth[idx]))
        assert got[0] == pytest.approx(r["value"], abs=1e-12)


def test_cli_against_another_model(tiny_dir, tmp_path, capsys):
    p = _write(tmp_path / "p.tsv", ["sentence1", "sentence2", "score"],
               [(SENTS[i], SENTS[(i + 3) % 8], i % 4) for i in range(8)])
    assert main(["evaluate", "--model", tiny_dir, "--pairs", p, "--against", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["evaluate", "--model", tiny_dir, "--pairs", p, "--pooling", "mean", "--postprocess", "none",
                 "--no-tfidf", "--against", tiny_dir, "--resamples", "50", "--json", "-"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and all(r["verdict"] == "tie" and r["diff"] == 0 and r["model"] == r["against"]
                                  and r["n"] == 8 and r["resampled"] == "texts" for r in rows)
    assert main(["evaluate", "--model", tiny_dir, "--pairs", p, "--pooling", "mean", "--postprocess", "none",
                 "--no-tfidf", "--against", tiny_dir, "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "4 rows: 0 significantly better, 4 within noise, 0 significantly worse" in out
    (tmp_path / "sub").mkdir()
    q = _write(tmp_path / "sub" / "p.tsv", ["sentence1", "sentence2", "score"], [(SENTS[0], SENTS[1], 1)] * 3)
    assert main(["evaluate", "--model", tiny_dir, "--pairs", p, "--pairs", q]) == 2
    assert "two sets are named 'p'" in capsys.readouterr().err


def test_pairs_that_share_texts_are_resampled_by_text():
    """Every pair of 12 documents (like Lee's 50): a resample draws documents, and a pair counts
    (draws of its first document) x (draws of its second). Pairs of distinct sentences: pairs are drawn."""
    docs = [f"d{i}" for i in range(12)]
    a, b = zip(*[(x, y) for i, x in enumerate(docs) for y in docs[i + 1:]])
    s = PairSet("docs", list(a), list(b), np.arange(len(a), dtype=float))
    unit, draws = resample_pairs(s, 5, np.random.default_rng(3))
    assert unit == "texts" and len(draws) == 5
    rng, code = np.random.default_rng(3), {d: i for i, d in enumerate(sorted(docs))}  # the same draws, by hand
    for ix in draws:
        count = np.bincount(rng.integers(0, 12, 12), minlength=12)
        want = [count[code[x]] * count[code[y]] for x, y in zip(a, b)]
        assert np.array_equal(np.bincount(ix, minlength=len(a)), want)
    unique = PairSet("sts", [f"a{i}" for i in range(30)], [f"b{i}" for i in range(30)], np.arange(30.0))
    unit, draws = resample_pairs(unique, 5, np.random.default_rng(0))
    assert unit == "pairs" and draws.shape == (5, 30)
