"""Reduced-precision matmuls (the GPU/AMX fast path) stay close to fp32; fp32 stays the default; the
per-step paths CUDA uses (the in-place no-grad loop for inference, autograd for training) are exact too."""

import numpy as np
import pytest
import torch

from elmo_dist import Elmo
from elmo_dist.model.elmo import Batch

# Measured on the fixture (values up to 6): bf16 6.8e-2, fp16 3.0e-2 (Original, random low-gain
# weights: bf16 1.1e-3, fp16 1.3e-4; docs/performance.md). The bounds are about 3x the fixture's.
BOUND = {"bfloat16": 0.2, "float16": 0.1}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_close_to_fp32(tiny_dir, tiny_ref, dtype):
    sents, ref = tiny_ref
    fp32 = Elmo.from_pretrained(tiny_dir)
    low = Elmo.from_pretrained(tiny_dir, compute_dtype=dtype)
    assert fp32.compute_dtype == "float32"
    a, _ = fp32.embed_batch(sents)
    b, _ = low.embed_batch(sents)
    assert b.dtype == np.float32
    err = np.abs(a - b).max()
    assert 0 < err < BOUND[dtype], err  # not bit-identical (so the low precision really ran), but close
    np.testing.assert_allclose(b[:, 0], ref["layer0"], atol=BOUND[dtype])


@pytest.mark.parametrize("fused", [False, True])
def test_plain_autograd_path_matches_allennlp(tiny_dir, tiny_ref, fused):
    """With autograd on, the biLM takes the per-step paths, not the CPU inference fast path: the plain
    loop (what CUDA inference runs) and the training layer op (``_LayerFunction``) must both match
    AllenNLP's reference to 1e-5 as well."""
    sents, ref = tiny_ref
    elmo = Elmo.from_pretrained(tiny_dir)
    for p in elmo.parameters():
        p.requires_grad_(True)
    for layer in elmo.bilm.lstm.layers:
        layer.fused_backward = fused
    b = Batch.from_sentences(sents)
    ids, index, lengths = (torch.from_numpy(x) for x in (b.token_char_ids, b.token_index, b.lengths))
    with torch.enable_grad():
        acts = elmo.bilm(ids, index, lengths, None)  # (L+1, B, T+2, D)
    assert acts.requires_grad  # the autograd path really ran
    t = index.shape[1] - 2
    mask = torch.arange(t)[None] < lengths[:, None]
    layers = (acts[:, :, 1:t + 1] * mask[None, :, :, None]).detach().numpy()
    for k in range(3):
        np.testing.assert_allclose(layers[k], ref[f"layer{k}"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_in_place_no_grad_path_matches(tiny_dir, tiny_ref, dtype, monkeypatch):
    """CUDA inference runs the in-place step loop (``BiLstmLayer._forward_in_place``), not the CPU
    threads: with the CPU route switched off it runs here, and matches AllenNLP (fp32, 1e-5) and the
    CPU route (reduced precision, as close as the bounds above)."""
    from elmo_dist.model import bilstm

    sents, ref = tiny_ref
    elmo = Elmo.from_pretrained(tiny_dir, compute_dtype=dtype)
    cpu_route, _ = elmo.embed_batch(sents)
    calls = []
    monkeypatch.setattr(bilstm.BiLstm, "cpu_fast_path", False)
    original = bilstm.BiLstmLayer._forward_in_place
    monkeypatch.setattr(bilstm.BiLstmLayer, "_forward_in_place",
                        lambda self, *a: calls.append(1) or original(self, *a))
    layers, _ = elmo.embed_batch(sents)
    assert len(calls) == 2  # both layers took the in-place route
    if dtype == "float32":
        for k in range(3):
            np.testing.assert_allclose(layers[:, k], ref[f"layer{k}"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(layers, cpu_route, atol=1e-5 if dtype == "float32" else BOUND[dtype], rtol=0)
