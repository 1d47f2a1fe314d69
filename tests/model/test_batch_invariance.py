"""A sentence's vectors never depend on the batch it lands in (AllenNLP's LSTM is stateful; ours is not)."""

import numpy as np

TOL = 1e-5


def _rows(elmo, sents):
    layers, mask = elmo.embed_batch(sents)
    return [layers[i, :, : len(s)] for i, s in enumerate(sents)]


def test_alone_equals_batched(tiny_elmo, tiny_ref):
    sents, ref = tiny_ref
    batched = _rows(tiny_elmo, sents)
    for i, s in enumerate(sents):
        alone = _rows(tiny_elmo, [s])[0]
        np.testing.assert_allclose(alone, batched[i], atol=TOL, rtol=0)
        for k in range(3):  # and AllenNLP's own one-sentence reference
            np.testing.assert_allclose(alone[k], ref[f"single_layer{k}"][i, : len(s)], atol=TOL, rtol=0)


def test_shuffled_and_repeated_calls(tiny_elmo, tiny_ref):
    sents, _ = tiny_ref
    base = _rows(tiny_elmo, sents)
    rng = np.random.default_rng(0)
    for _ in range(3):  # repeated calls: no state carried over
        perm = rng.permutation(len(sents))
        got = _rows(tiny_elmo, [sents[i] for i in perm])
        for j, i in enumerate(perm):
            np.testing.assert_allclose(got[j], base[i], atol=TOL, rtol=0)


def test_padded_to_different_lengths(tiny_elmo, tiny_ref):
    sents, _ = tiny_ref
    base = _rows(tiny_elmo, sents)
    long = ["word"] * 80  # forces a much longer padded batch
    got = _rows(tiny_elmo, [long] + sents + [[]])
    for i in range(len(sents)):
        np.testing.assert_allclose(got[i + 1], base[i], atol=TOL, rtol=0)
    assert got[-1].shape == (3, 0, 32)


def test_streaming_api_restores_order_and_pools(tiny_elmo, tiny_ref):
    sents, _ = tiny_ref
    base = _rows(tiny_elmo, sents)
    out = list(tiny_elmo.embed_sentences(sents, token_budget=25, output="all"))
    assert len(out) == len(sents)
    for i in range(len(sents)):
        np.testing.assert_allclose(out[i], base[i], atol=TOL, rtol=0)
    means = list(tiny_elmo.embed_sentences(sents, token_budget=25, output=2, pooling="mean"))
    for i, s in enumerate(sents):
        if s:
            np.testing.assert_allclose(means[i], base[i][2].mean(axis=0), atol=TOL)
    maxes = list(tiny_elmo.embed_sentences(sents, token_budget=7, pooling="max"))
    mix0 = base[0].mean(axis=0)  # default mix = plain mean of the 3 layers
    np.testing.assert_allclose(maxes[0], mix0.max(axis=0), atol=TOL)


def test_all_empty_batch(tiny_elmo):
    layers, mask = tiny_elmo.embed_batch([[], []])
    assert layers.shape == (2, 3, 0, 32) and mask.shape == (2, 0)
