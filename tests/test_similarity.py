"""Post-processors against NumPy reference math; moments merge exactly; save/load round trip."""

import numpy as np
import pytest

from elmo_dist.similarity import Moments, Postprocessor


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 16)) @ np.diag(np.linspace(3, 0.1, 16))
    return base + rng.normal(5, 0.1, size=16)  # anisotropic, far from the origin (like ELMo vectors)


def test_center_and_none(x):
    np.testing.assert_allclose(Postprocessor.fit(x, "center").transform(x), x - x.mean(0), atol=1e-4)
    np.testing.assert_allclose(Postprocessor.fit(x, "none").transform(x), x, atol=1e-4)
    assert Postprocessor.fit(x).method == "center"  # the default


def test_abtt_removes_the_top_components(x):
    k = 3
    c = x - x.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    u = vt[:k].T  # (D, k)
    expected = c - c @ u @ u.T
    got = Postprocessor.fit(x, "abtt", k=k).transform(x)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert np.abs(got @ u).max() < 1e-3  # nothing left along the top directions


def test_whiten_gives_identity_covariance(x):
    k = 8
    y = Postprocessor.fit(x, "whiten", k=k).transform(x)
    assert y.shape == (500, k)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(k), atol=1e-4)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)


def test_whiten_on_too_few_vectors_makes_every_pair_equally_similar(x, caplog):
    """Why `evaluate` leaves such rows out: n vectors whitened onto n-1 dimensions form a regular
    simplex, so every cosine is -1/(n-1) whatever the vectors were (k > n-1 adds only rounding noise)."""
    n = 10
    y = Postprocessor.fit(x[:n], "whiten", k=n - 1).transform(x[:n]).astype(np.float64)
    cos = (y / np.linalg.norm(y, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T
    off = cos[~np.eye(n, dtype=bool)]
    np.testing.assert_allclose(off, -1 / (n - 1), atol=1e-3)
    assert "every pair comes out equally similar" in caplog.text
    caplog.clear()
    Postprocessor.fit(x[:50], "whiten", k=8)
    assert "equally similar" not in caplog.text


def test_moments_merge_exactly(x):
    whole = Moments.of(x)
    parts = Moments.of(x[:123]) + Moments.of(x[123:400]) + Moments.of(x[400:])
    assert parts.n == whole.n
    np.testing.assert_allclose(parts.total, whole.total, rtol=1e-12)
    np.testing.assert_allclose(parts.outer, whole.outer, rtol=1e-12)
    a = Postprocessor.fit(parts, "abtt", k=2).transform(x)
    b = Postprocessor.fit(x, "abtt", k=2).transform(x)
    np.testing.assert_allclose(a, b, atol=1e-5)
    back = Moments.from_bytes(parts.to_bytes())
    assert back.n == parts.n and np.array_equal(back.outer, parts.outer)


@pytest.mark.parametrize("method", ["none", "center", "abtt", "whiten"])
def test_save_load_round_trip(x, tmp_path, method):
    pp = Postprocessor.fit(x, method, k=4)
    pp.save(str(tmp_path / "pp.npz"))
    back = Postprocessor.load(str(tmp_path / "pp.npz"))
    assert back.method == method and back.n == 500
    np.testing.assert_array_equal(back.transform(x), pp.transform(x))


def test_bad_arguments(x):
    with pytest.raises(ValueError, match="method must be one of"):
        Postprocessor.fit(x, "pca")
    with pytest.raises(ValueError, match="at least 2 vectors"):
        Postprocessor.fit(x[:1], "center")
    with pytest.raises(FileNotFoundError, match="no post-processor"):
        Postprocessor.load("/nonexistent/pp.npz")
