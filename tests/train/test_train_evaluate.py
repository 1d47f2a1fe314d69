"""The evaluation harness: hand-written polysemy data, parsers, metrics and scorers (no downloads)."""

import json

import numpy as np
import pytest
import torch

from elmo_dist import Elmo
from elmo_dist.text.tokenize import Tokenizer
from elmo_dist.train import evaluate as ev
from elmo_dist.train.polysemy_pairs import PAIRS, SenseTriple


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(sentence_split="none")


# ---- polysemy data and scorer ----------------------------------------------------------------
def test_polysemy_pairs_are_well_formed(tok):
    assert len(PAIRS) >= 24
    assert len({p.word for p in PAIRS}) == len(PAIRS)
    sentences = [s for p in PAIRS for s in (p.same_a, p.same_b, p.other)]
    assert len(set(sentences)) == len(sentences)
    for p in PAIRS:
        assert p.word == p.word.lower() and p.word.isalpha()
        assert "/" in p.senses
        for s in (p.same_a, p.same_b, p.other):
            tokens = tok.tokens(s)
            assert tokens.count(p.word) == 1, (p.word, tokens)
            # no other form (plural, capitalised copy) of the word either
            assert sum(t.lower().startswith(p.word) for t in tokens) == 1, (p.word, tokens)
            assert tokens[0] != p.word
            assert ev.target_index(tokens, p.word) == tokens.index(p.word)


def test_target_index_rejects_missing_and_repeated(tok):
    with pytest.raises(ValueError):
        ev.target_index(tok.tokens("The bank by the bank ."), "bank")
    with pytest.raises(ValueError):
        ev.target_index(tok.tokens("No such word here ."), "bank")


def test_ties_count_as_failures():
    assert ev.sense_success(0.9, 0.5)
    assert not ev.sense_success(0.5, 0.9)
    assert not ev.sense_success(0.7, 0.7)
    assert not ev.sense_success(0.7 + ev.TIE_TOL / 2, 0.7)


def test_polysemy_layer0_scores_zero_on_tiny_model(tiny_elmo):
    res = ev.score_polysemy(tiny_elmo)
    n = len(PAIRS)
    assert res["n_pairs"] == n
    assert set(res["share"]) == {"mix", "layer0", "layer1", "layer2"}
    # layer 0 is context-free: the three occurrences get the same vector -> all ties -> all fail
    assert res["share"]["layer0"] == 0.0
    assert res["ties"]["layer0"] == n
    for name in ("mix", "layer1", "layer2"):
        assert 0.0 <= res["share"][name] <= 1.0
        assert res["ties"][name] < n
    assert len(res["mix_details"]) == n
    assert np.mean([d["success"] for d in res["mix_details"]]) == res["share"]["mix"]


class _BagOfWordsModel:
    """Fake model: layer 0 is the same vector for every token, layer 1 the sentence's bag of words."""

    scalar_mix = staticmethod(lambda layers: layers.mean(0))

    def embed_sentences(self, sents, output="all"):
        assert output == "all"
        vocab = sorted({t for s in sents for t in s})
        for s in sents:
            ctx = np.array([float(w in s) for w in vocab])
            yield np.stack([np.ones((len(s), len(vocab))), np.tile(ctx, (len(s), 1))])


def test_polysemy_scorer_counts_wins(tok):
    pairs = [SenseTriple("bank", "the river bank is wet .", "the river bank is green .",
                         "the money bank is closed today .", "a / b"),
             SenseTriple("bat", "a bat flies .", "the bat sleeps .", "a bat flies .", "a / b")]
    res = ev.score_polysemy(_BagOfWordsModel(), pairs, tok)
    assert res["share"]["layer0"] == 0.0 and res["ties"]["layer0"] == 2  # identical vectors: ties fail
    assert res["share"]["layer1"] == 0.5  # bank wins; bat's C is A itself, so it loses
    assert res["ties"]["layer1"] == 0


# ---- embeddings ------------------------------------------------------------------------------
def test_doc_layers_is_the_mean_over_all_tokens(tiny_elmo):
    docs = [[["The", "cat", "sat", "."], ["It", "purred", "."]], [["Hello", "world"]], []]
    got = ev.doc_layers(tiny_elmo, docs, token_budget=16)
    assert got.shape == (3, 3, tiny_elmo.output_dim)
    want = []
    for doc in docs[:2]:
        vecs = [tiny_elmo.embed_batch([s])[0][0] for s in doc]  # (L+1, T, D) each
        want.append(np.concatenate(vecs, axis=1).mean(axis=1))
    np.testing.assert_allclose(got[:2], np.stack(want), rtol=1e-5, atol=1e-6)
    assert not got[2].any()  # empty document -> zeros
    reps = ev.representations(tiny_elmo, got)
    np.testing.assert_allclose(reps["mix"], got.mean(axis=1), rtol=1e-5, atol=1e-6)  # equal weights, gamma 1
    np.testing.assert_array_equal(reps["layer2"], got[:, 2])


def test_export_checkpoint(tmp_path):
    from elmo_dist.model.elmo import BiLM
    from elmo_dist.train.trainer import make_options

    torch.manual_seed(0)
    bilm = BiLM(make_options("tiny"))
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"bilm": bilm.state_dict(), "config": {"arch": "tiny"}, "step": 7, "epoch": 0,
                "tokens_seen": 99, "elapsed": 90.0, "history": []}, run / "checkpoint.pt")
    info = ev.export_checkpoint(str(run), str(tmp_path / "model"))
    assert info["step"] == 7 and info["arch"] == "tiny" and info["training_minutes"] == 1.5
    loaded = Elmo.from_pretrained(tmp_path / "model")
    live = Elmo(make_options("tiny"))
    live.bilm.load_state_dict(bilm.state_dict())
    sents = [["A", "tiny", "test", "."], ["Two", "sentences"]]
    np.testing.assert_array_equal(loaded.embed_batch(sents)[0], live.embed_batch(sents)[0])


# ---- parsers ---------------------------------------------------------------------------------
RT_SAMPLE = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A bank manager (Someone) robs his own bank. He is, ironically, caught.",m1,True\n'
    'fresh,"A sharp, funny ""heist"" movie.",m1,True\n'
    "rotten,Dull and far too long.,m1,True\n"
    'fresh,"Line one\nline two of the same review.",m2,False\n'
    "rotten,,m2,False\n"
    "fresh,Dull and far too long.,m3,False\n"
    "fresh,Great fun.,m3,False\n"
    "fresh,Great fun.,m4,False\n"
)


def test_parse_rt_csv():
    rows = ev.parse_rt_csv(RT_SAMPLE)
    assert rows == [('A sharp, funny "heist" movie.', 1),
                    ("Line one\nline two of the same review.", 1),
                    ("Great fun.", 1)]  # plot and empty rows dropped; conflicting duplicate dropped


def test_split_sentiment_is_seeded_stratified_and_capped():
    rows = [(f"r{i}", int(i % 3 == 0)) for i in range(200)]
    tr, te = ev.split_sentiment(rows, cap=100)
    assert len(tr) == 80 and len(te) == 20 and not set(tr) & set(te)
    tr2, te2 = ev.split_sentiment(rows, cap=100)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(te, te2)
    share = np.mean([rows[i][1] for i in te])
    assert abs(share - np.mean([rows[i][1] for i in np.concatenate([tr, te])])) < 0.06
    tr3, te3 = ev.split_sentiment(rows, cap=0)
    assert len(tr3) + len(te3) == 200


LEE_CORPUS = "First doc. It has two sentences.\nSecond doc \xa33,000 here.\n\nThird doc.\n"
LEE_SIMS = "1\t0.5\t0.2\n0\t1\t0.8\n0\t0\t1\n"


def test_parse_lee():
    docs, sim = ev.parse_lee(LEE_CORPUS, LEE_SIMS)
    assert docs == ["First doc. It has two sentences.", "Second doc \xa33,000 here.", "Third doc."]
    i, j = ev.upper_pairs(len(docs))
    assert list(zip(i, j)) == [(0, 1), (0, 2), (1, 2)]
    assert sim[i, j].tolist() == [0.5, 0.2, 0.8]
    with pytest.raises(ValueError):
        ev.parse_lee(LEE_CORPUS, "1\t0.5\n0\t1\n")
    # the real file's pair count: 50 documents -> 1225 pairs
    assert len(ev.upper_pairs(50)[0]) == 1225


# ---- metrics ---------------------------------------------------------------------------------
def test_cosine():
    assert ev.cosine([1, 0], [0, 2]) == 0.0
    assert ev.cosine([1, 1], [2, 2]) == pytest.approx(1.0)
    assert ev.cosine([0, 0], [1, 2]) == 0.0
    m = ev.cosine_matrix(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    np.testing.assert_allclose(m, [[1, 2 ** -0.5, 0], [2 ** -0.5, 1, 0], [0, 0, 0]], atol=1e-12)


def test_spearman_on_known_rankings():
    pytest.importorskip("scipy")
    assert ev.spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert ev.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = (1, 1, 1, 1, 0): rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert ev.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)


def test_classification_metrics():
    pytest.importorskip("sklearn")
    m = ev.classification_metrics([1, 1, 0, 0], [1, 0, 0, 0])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1_fresh"] == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # rotten: P = 2/3, R = 1


def test_fit_logreg_separable():
    pytest.importorskip("sklearn")
    rng = np.random.RandomState(0)
    x = rng.randn(100, 3)
    y = (x[:, 0] > 0).astype(int)
    pred, c = ev.fit_logreg(x[:80], y[:80], x[80:], scale=True)
    assert (pred == y[80:]).mean() >= 0.9 and c > 0


# ---- report ----------------------------------------------------------------------------------
def test_evaluate_polysemy_only(tiny_dir):
    rep = ev.evaluate(tiny_dir, ["polysemy"])
    assert rep["model"]["fingerprint"] == Elmo.from_pretrained(tiny_dir).fingerprint
    assert rep["polysemy"]["share"]["layer0"] == 0.0
    assert "sentiment" not in rep and "similarity" not in rep and rep["data"] == {}
    assert [r["representation"].split(" (")[0] for r in rep["table"]][:2] == ["ELMo default mix", "ELMo layer 0"]
    assert rep["runtime_seconds"] >= 0 and "date" in rep
    json.dumps(rep)  # the report is plain JSON


def test_evaluate_refuses_unknown_tasks_and_missing_data(tiny_dir):
    with pytest.raises(ValueError, match="unknown task"):
        ev.evaluate(tiny_dir, ["polysemy", "nli"])
    with pytest.raises(ValueError, match="sentiment"):  # the library downloads nothing
        ev.evaluate(tiny_dir, ["sentiment"])
    with pytest.raises(ValueError, match="similarity"):
        ev.evaluate(tiny_dir, ["polysemy", "similarity"], sentiment=([], {}))


def test_markdown_table():
    report = {"sentiment": {"n_test": 20, "results": {"tfidf": {"macro_f1": 0.5, "accuracy": 0.75}}},
              "similarity": {"n_pairs": 3, "results": {"mix": 0.25}}}
    table = ev.markdown_table(ev.table_rows(report))
    lines = table.splitlines()
    assert len(lines) == 5
    assert lines[2] == "| RT sentiment (20 test) | TF-IDF word uni+bigrams + logreg | macro-F1 | 0.500 |"
    assert lines[4].endswith("| Spearman rho | 0.250 |")


def test_export_random_init(tmp_path):
    info = ev.export_random_init("tiny", str(tmp_path / "m"))
    assert info["step"] == 0
    a = Elmo.from_pretrained(tmp_path / "m")
    ev.export_random_init("tiny", str(tmp_path / "m2"))
    assert Elmo.from_pretrained(tmp_path / "m2").fingerprint == a.fingerprint  # seeded
