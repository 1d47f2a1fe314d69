"""Raw text in the Python API: strings are Moses-tokenized like the corpus job's text column."""

import os
import subprocess
import sys

import numpy as np
import pytest

from elmo_dist.text.tokenize import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = ["I will show you a valid point.", "Isn't it raining in São Paulo?", "Hi"]


@pytest.fixture(scope="module")
def moses():
    return Tokenizer("none")


def test_strings_are_moses_tokenized(tiny_elmo, moses):
    tokens = [moses.tokens(t) for t in TEXTS]
    assert [len(t) for t in tokens] == [8, 8, 1]  # "Isn't" -> "Is", "n't"; "." and "?" split off
    layers, mask = tiny_elmo.embed_batch(TEXTS)
    ref_layers, ref_mask = tiny_elmo.embed_batch(tokens)
    assert layers.shape == (3, 3, 8, tiny_elmo.output_dim)  # T = Moses tokens, not characters
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(layers, ref_layers)
    assert mask.sum(axis=1).tolist() == [8, 8, 1]

    # embed_sentences: same vectors, in input order, whatever the batching.
    got = list(tiny_elmo.embed_sentences(TEXTS, output="all", token_budget=8))
    for g, t, ref in zip(got, tokens, ref_layers):
        assert g.shape == (3, len(t), tiny_elmo.output_dim)
        np.testing.assert_allclose(g, ref[:, : len(t)], atol=1e-5, rtol=0)  # other batch shapes
    # a generator of strings works too
    pooled = list(tiny_elmo.embed_sentences((t for t in TEXTS), pooling="mean"))
    ref_pooled = list(tiny_elmo.embed_sentences(tokens, pooling="mean"))
    np.testing.assert_array_equal(np.stack(pooled), np.stack(ref_pooled))


def test_token_lists_are_used_as_they_are(tiny_elmo):
    layers, mask = tiny_elmo.embed_batch([["Isn't", "it"], ("Hello",)])
    assert layers.shape[2] == 2 and mask.sum(axis=1).tolist() == [2, 1]


def test_split_sentences(tiny_elmo, moses):
    docs = ["The cat sat. The dog ran away!", "", "One more sentence here."]
    sents = [tiny_elmo.tokenize(d, split_sentences=True) for d in docs]
    assert [len(s) for s in sents] == [2, 0, 1]
    flat = [s for doc in sents for s in doc]
    assert flat[0] == moses.tokens("The cat sat.") and flat[1] == moses.tokens("The dog ran away!")
    out = list(tiny_elmo.embed_sentences(docs, output="all", split_sentences=True))
    assert len(out) == 3  # one per sentence, in order; the empty document yields nothing
    ref = list(tiny_elmo.embed_sentences(flat, output="all"))
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)
    layers, mask = tiny_elmo.embed_batch(docs, split_sentences=True)
    assert layers.shape[0] == 3 and mask.sum(axis=1).tolist() == [len(s) for s in flat]
    # without splitting, each string is one sentence
    assert tiny_elmo.tokenize(docs[0]) == [moses.tokens(docs[0])]
    assert tiny_elmo.embed_batch(docs)[0].shape[0] == 3


def test_tokenizer_is_cached(tiny_elmo):
    tiny_elmo.tokenize("warm up")
    tok = tiny_elmo._tokenizers[False]
    tiny_elmo.embed_batch(["again"])
    assert tiny_elmo._tokenizers[False] is tok


@pytest.mark.parametrize("bad, where", [
    ("Hello world", "bare str"),
    (["Hello world", ["Hi"]], "sentences[1] is a token list but sentences[0] is a string"),
    ([["Hi"], "Hello world"], "sentences[1] is a string but sentences[0] is a token list"),
    ([["Hi"], ["a", 3]], "sentences[1][1] has type int"),
    ([b"bytes"], "sentences[0] has type bytes"),
])
def test_bad_input_is_a_one_line_type_error(tiny_elmo, bad, where):
    for call in (tiny_elmo.embed_batch, tiny_elmo.embed_sentences):
        with pytest.raises(TypeError) as e:
            call(bad)  # embed_sentences checks a str or a list before returning its generator
        assert where in str(e.value) and "\n" not in str(e.value)


def test_mixed_stream_is_refused_at_the_index(tiny_elmo):
    with pytest.raises(TypeError, match=r"sentences\[2\] is a token list"):
        list(tiny_elmo.embed_sentences(iter(["a b", "c", ["d"]])))


def test_import_stays_light():
    code = ("import sys, elmo_dist; from elmo_dist.model.elmo import Elmo; "
            "assert 'sacremoses' not in sys.modules and 'pysbd' not in sys.modules; "
            "import elmo_dist.interop; assert 'elmo_dist.cli' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
