"""Reduced-precision matmuls (the GPU/AMX fast path) stay close to fp32; fp32 stays the default."""

import numpy as np
import pytest

from elmo_dist import Elmo


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_low_precision_close_to_fp32(tiny_dir, tiny_ref, dtype):
    sents, ref = tiny_ref
    fp32 = Elmo.from_pretrained(tiny_dir)
    low = Elmo.from_pretrained(tiny_dir, compute_dtype=dtype)
    assert fp32.compute_dtype == "float32"
    a, _ = fp32.embed_batch(sents)
    b, _ = low.embed_batch(sents)
    assert b.dtype == np.float32
    err = np.abs(a - b).max()
    assert 0 < err < 0.5, err  # not bit-identical (so bf16 really ran), but close on values up to 6
    np.testing.assert_allclose(b[:, 0], ref["layer0"], atol=0.1)
