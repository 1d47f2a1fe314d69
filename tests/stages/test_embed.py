"""embed: a prepared table -> sentence (and token) vectors, equal to the model's own output."""

import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

from elmo_dist import schema as S
from elmo_dist.config import EmbeddingSettings, TextSettings
from elmo_dist.stages.embed import Embedder, pick_device
from elmo_dist.stages.prepare import prepare

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world!",
    "A somewhat longer sentence, with commas, numbers like 42 and punctuation; it goes on.",
    "Short one. And another sentence follows here.",
    "Word",
]


def _prepared(texts, source="corpus.parquet"):
    n = len(texts)
    raw = pa.table({"id": [f"r{i}" for i in range(n)], "text": texts,
                    S.SOURCE: pa.array([source] * n, pa.string()),
                    S.ROW: pa.array(range(n), pa.int64())})
    table, _ = prepare(raw, TextSettings(id_column="id", sentence_split="pysbd"))
    return table


@pytest.fixture(scope="module")
def table():
    return _prepared(TEXTS)


@pytest.fixture(scope="module")
def embedder(tiny_dir):
    return Embedder(tiny_dir, EmbeddingSettings(), device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_elmo, table):
    """(B, L+1, T, D) layers and (B, T) mask of the prepared sentences, in one model call."""
    return tiny_elmo.embed_batch(table.column(S.TOKENS).to_pylist())


def _sent(out):
    col = out.column(S.SENTENCE_EMBEDDING)
    return np.asarray(col.to_pylist(), dtype=np.float64)


def test_sentence_embedding_is_mean_pooled_mix(embedder, table, reference):
    layers, mask = reference
    out, _ = embedder(table)
    assert out.num_rows == table.num_rows
    assert out.column(S.ID).to_pylist() == table.column(S.ID).to_pylist()  # input order kept
    assert out.schema.field(S.SENTENCE_EMBEDDING).type == pa.list_(pa.float32(), embedder.dim)
    assert S.TOKEN_EMBEDDINGS not in out.schema.names
    mix = layers.mean(axis=1)  # default scalar mix: equal weights, gamma 1 -> mean of the layers
    m = mask[..., None].astype(np.float64)
    expected = (mix * m).sum(axis=1) / m.sum(axis=1)
    np.testing.assert_allclose(_sent(out), expected, atol=1e-5)


def test_max_pooling(tiny_dir, table, reference):
    layers, mask = reference
    out, _ = Embedder(tiny_dir, EmbeddingSettings(pooling="max"), device="cpu")(table)
    mix = layers.mean(axis=1)
    expected = np.stack([mix[i, mask[i]].max(axis=0) for i in range(len(mix))])
    np.testing.assert_allclose(_sent(out), expected, atol=1e-5)


def test_token_embeddings_one_vector_per_token(tiny_dir, table, reference):
    layers, mask = reference
    emb = Embedder(tiny_dir, EmbeddingSettings(token_embeddings=True), device="cpu")
    out, _ = emb(table)
    assert out.schema.field(S.TOKEN_EMBEDDINGS).type == pa.list_(pa.list_(pa.float32(), emb.dim))
    mix = layers.mean(axis=1)
    n_tokens = table.column(S.N_TOKENS).to_pylist()
    for i, (toks, n) in enumerate(zip(out.column(S.TOKEN_EMBEDDINGS).to_pylist(), n_tokens)):
        arr = np.asarray(toks)
        assert arr.shape == (n, emb.dim)
        np.testing.assert_allclose(arr, mix[i, :n], atol=1e-5)


def test_token_output_all_gives_every_layer(tiny_dir, table, reference):
    layers, _ = reference
    n_out = layers.shape[1]  # L + 1
    emb = Embedder(tiny_dir, EmbeddingSettings(token_embeddings=True, token_output="all"), device="cpu")
    assert emb.token_layers == n_out
    out, _ = emb(table)
    assert out.schema.field(S.TOKEN_EMBEDDINGS).type == \
        pa.list_(pa.list_(pa.list_(pa.float32(), emb.dim), n_out))
    n_tokens = table.column(S.N_TOKENS).to_pylist()
    for i, (toks, n) in enumerate(zip(out.column(S.TOKEN_EMBEDDINGS).to_pylist(), n_tokens)):
        arr = np.asarray(toks)  # (T_i, L+1, D)
        assert arr.shape == (n, n_out, emb.dim)
        np.testing.assert_allclose(arr, layers[i, :, :n].transpose(1, 0, 2), atol=1e-5)


def test_sentence_output_single_layer(tiny_dir, table, reference):
    layers, mask = reference
    out, _ = Embedder(tiny_dir, EmbeddingSettings(sentence_output=0), device="cpu")(table)
    m = mask[..., None].astype(np.float64)
    expected = (layers[:, 0] * m).sum(axis=1) / m.sum(axis=1)
    np.testing.assert_allclose(_sent(out), expected, atol=1e-5)


def test_float16_storage(tiny_dir, embedder, table):
    emb16 = Embedder(tiny_dir, EmbeddingSettings(dtype="float16", token_embeddings=True), device="cpu")
    out16, _ = emb16(table)
    assert out16.schema.field(S.SENTENCE_EMBEDDING).type == pa.list_(pa.float16(), emb16.dim)
    assert out16.schema.field(S.TOKEN_EMBEDDINGS).type == pa.list_(pa.list_(pa.float16(), emb16.dim))
    out32, _ = embedder(table)
    v16 = out16.column(S.SENTENCE_EMBEDDING).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    v32 = out32.column(S.SENTENCE_EMBEDDING).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    assert v16.dtype == np.float16
    np.testing.assert_array_equal(v16, v32.astype(np.float16))  # rounded once, at storage


def test_stats(embedder, table):
    _, stats = embedder(table)
    n_tokens = table.column(S.N_TOKENS).to_pylist()
    assert stats["sentences"] == table.num_rows == len(n_tokens)
    assert stats["tokens"] == sum(n_tokens)
    assert stats["padded_tokens"] >= stats["tokens"]
    assert stats["embed_seconds"] >= 0


def test_stats_padding_counts_every_batch(tiny_dir, table):
    # a tiny budget: many batches; padded tokens stay >= tokens and the vectors do not change
    small = Embedder(tiny_dir, EmbeddingSettings(), token_budget=16, device="cpu")
    big = Embedder(tiny_dir, EmbeddingSettings(), token_budget=4096, device="cpu")
    out_s, st_s = small(table)
    out_b, st_b = big(table)
    assert st_s["tokens"] == st_b["tokens"]
    assert st_s["padded_tokens"] >= st_s["tokens"]
    np.testing.assert_allclose(_sent(out_s), _sent(out_b), atol=1e-6)


def test_empty_table(tiny_dir, table):
    emb = Embedder(tiny_dir, EmbeddingSettings(token_embeddings=True), device="cpu")
    out, stats = emb(table.slice(0, 0))
    assert out.num_rows == 0
    assert S.SENTENCE_EMBEDDING in out.schema.names and S.TOKEN_EMBEDDINGS in out.schema.names
    assert stats["sentences"] == 0 and stats["tokens"] == 0 and stats["padded_tokens"] == 0


def test_batch_invariance_across_tables(tiny_dir):
    emb = Embedder(tiny_dir, EmbeddingSettings(token_embeddings=True), token_budget=64, device="cpu")
    target = "The same sentence lands in different batches."
    a = _prepared([target, "x y", "Hi"])
    b = _prepared(["Completely different company, with far longer sentences around it, " * 3,
                   "tiny", target, "Another one of middling length here."])
    out_a, _ = emb(a)
    out_b, _ = emb(b)
    ia = a.column(S.TEXT).to_pylist().index(target)
    ib = b.column(S.TEXT).to_pylist().index(target)
    va = np.asarray(out_a.column(S.SENTENCE_EMBEDDING)[ia].as_py())
    vb = np.asarray(out_b.column(S.SENTENCE_EMBEDDING)[ib].as_py())
    np.testing.assert_allclose(va, vb, atol=1e-6)
    ta = np.asarray(out_a.column(S.TOKEN_EMBEDDINGS)[ia].as_py())
    tb = np.asarray(out_b.column(S.TOKEN_EMBEDDINGS)[ib].as_py())
    assert ta.shape == tb.shape
    np.testing.assert_allclose(ta, tb, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_pick_device_cpu_and_fallback_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when no GPU was asked for
        assert pick_device(0) == "cpu"
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        assert pick_device(1) == "cpu"
