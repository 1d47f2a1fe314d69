"""Outputs equal AllenNLP 2.10.1's own (reference.npz was made by its code on a fresh module)."""

import numpy as np
import pytest
import torch

from elmo_dist.model.elmo import Batch

TOL = 1e-5


@pytest.mark.parametrize("k", [0, 1, 2])
def test_layers_match_allennlp(tiny_elmo, tiny_ref, k):
    sents, ref = tiny_ref
    layers, mask = tiny_elmo.embed_batch(sents)
    np.testing.assert_array_equal(mask, ref["mask"])
    np.testing.assert_allclose(layers[:, k], ref[f"layer{k}"], atol=TOL, rtol=0)


def test_default_mix_matches_allennlp_elmo(tiny_elmo, tiny_ref):
    sents, ref = tiny_ref
    layers, mask = tiny_elmo.forward_batch(Batch.from_sentences(sents))
    mix = tiny_elmo.select(layers, "mix").numpy()
    np.testing.assert_allclose(mix, ref["elmo"], atol=TOL, rtol=0)
    np.testing.assert_array_equal(mask.numpy(), ref["elmo_mask"])


def test_char_id_input_path_matches(tiny_elmo, tiny_ref):
    sents, ref = tiny_ref
    layers, _ = tiny_elmo.forward_batch(Batch.from_char_ids(ref["char_ids"]))
    np.testing.assert_allclose(layers[2].numpy(), ref["layer2"], atol=TOL, rtol=0)


def test_padding_is_exactly_zero(tiny_elmo, tiny_ref):
    sents, _ = tiny_ref
    layers, mask = tiny_elmo.embed_batch(sents)
    assert np.all(layers.transpose(0, 2, 1, 3)[~mask] == 0.0)


def test_clipping_really_fires(tiny_elmo, tiny_ref):
    # proj_clip = 3 and a skip connection: layer 2 reaches exactly 2 x 3 in magnitude.
    sents, ref = tiny_ref
    layers, _ = tiny_elmo.embed_batch(sents)
    assert np.abs(layers[:, 2]).max() == pytest.approx(6.0, abs=1e-6)
    assert np.abs(ref["layer2"]).max() == pytest.approx(6.0, abs=1e-6)


def test_user_mix_weights_and_gamma(tiny_dir, tiny_ref):
    from elmo_dist import Elmo

    sents, ref = tiny_ref
    elmo = Elmo.from_pretrained(tiny_dir, mix_weights=[0.5, -1.0, 2.0], gamma=0.7)
    layers, _ = elmo.forward_batch(Batch.from_sentences(sents))
    s = torch.softmax(torch.tensor([0.5, -1.0, 2.0]), 0).numpy()
    expected = 0.7 * sum(s[k] * ref[f"layer{k}"] for k in range(3))
    np.testing.assert_allclose(elmo.select(layers, "mix").numpy(), expected, atol=TOL)
    np.testing.assert_allclose(elmo.select(layers, 1).numpy(), ref["layer1"], atol=TOL)
    assert elmo.select(layers, "all").shape == (12, 3, 40, 32)
    with pytest.raises(ValueError, match="output must be"):
        elmo.select(layers, 3)


@pytest.mark.gpu
def test_cuda_fp32_matches_allennlp(tiny_dir, tiny_ref):
    """The CUDA path in fp32 is exact too (run where a CUDA device exists; skipped elsewhere)."""
    from elmo_dist import Elmo

    sents, ref = tiny_ref
    elmo = Elmo.from_pretrained(tiny_dir).to("cuda")
    layers, mask = elmo.embed_batch(sents)
    for k in range(3):
        np.testing.assert_allclose(layers[:, k], ref[f"layer{k}"], atol=TOL, rtol=0)


def test_fp32_switches_tf32_off():
    """The CUDA path calls this before an fp32 batch; the flags exist (and are settable) on any build."""
    from elmo_dist.model.elmo import exact_fp32_on_cuda

    torch.backends.cudnn.allow_tf32 = True
    exact_fp32_on_cuda()
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default, restored
