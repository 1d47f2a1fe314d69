"""Similarity search: exact streaming top-k vs brute force, model checks, errors, float16, ANN index."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from elmo_dist import Elmo, schema
from elmo_dist.config import EmbeddingSettings, TextSettings
from elmo_dist.output import OutputError
from elmo_dist.cli import main
from elmo_dist.search import (
    Output, SearchError, SearchIndex, _Scorer, _TopK, build_index, normalize, search,
)
from elmo_dist.text.tokenize import Tokenizer

TINY = os.path.join(os.path.dirname(__file__), "fixtures", "elmo-tiny-f1")
SUBJECTS = ["The cat", "A dog", "My neighbour", "The old sailor", "Every student"]
VERBS = ["reads", "paints", "sells", "forgets", "repairs", "watches", "carries", "finds"]
OBJECTS = ["a red bicycle", "the kitchen table", "three letters", "an umbrella", "the blue boat",
           "twelve apples", "a broken clock", "the morning paper"]


def _sentences(n=40):
    out = []
    for i in range(n):  # distinct by construction
        out.append(f"{SUBJECTS[i % 5]} {VERBS[(i // 5) % 8]} {OBJECTS[(i * 3 + i // 8) % 8]} near house {i} .")
    assert len(set(out)) == n
    return out


@pytest.fixture(scope="module")
def corpus(tiny_elmo):
    texts = _sentences()
    tok = Tokenizer(sentence_split="none")
    tokens = [tok.tokens(t) for t in texts]
    vecs = np.stack(list(tiny_elmo.embed_sentences(tokens, output="mix", pooling="mean")))
    return texts, tokens, vecs.astype(np.float32)


def _metadata(fingerprint, dim, dtype="float32", source=None):
    return {
        "format": 1,
        "model": {"source": source or TINY, "fingerprint": fingerprint, "output_dim": dim},
        "text": TextSettings(sentence_split="none").model_dump(mode="json"),
        "embedding": EmbeddingSettings(dtype=dtype).model_dump(mode="json"),
        "config_fingerprint": "0123456789abcdef",
    }


def _write_shard(path, texts, tokens, vecs, md, dtype="float32", ids=None, first_row=0):
    dim = vecs.shape[1]
    n = len(texts)
    flat = pa.array(vecs.astype(dtype).reshape(-1), type=schema.float_type(dtype))
    table = pa.table({
        schema.ID: ids or [f"doc-{first_row + i}" for i in range(n)],
        schema.SENTENCE_INDEX: pa.array(np.arange(first_row, first_row + n) % 3, pa.int32()),
        schema.CHUNK: pa.array([0] * n, pa.int32()),
        schema.N_CHUNKS: pa.array([1] * n, pa.int32()),
        schema.SOURCE: ["corpus.parquet"] * n,
        schema.TEXT: texts,
        schema.TOKENS: tokens,
        schema.N_TOKENS: pa.array([len(t) for t in tokens], pa.int32()),
        schema.SENTENCE_EMBEDDING: pa.FixedSizeListArray.from_arrays(flat, dim),
    }, schema=schema.output_schema(dim, dtype, metadata=md))
    pq.write_table(table, path, row_group_size=6)  # several row groups per shard


def _record(directory, name):
    """The completion record that makes a shard part of the output (as the embed job writes it)."""
    units = os.path.join(directory, "_job", "units")
    os.makedirs(units, exist_ok=True)
    with open(os.path.join(units, name.replace(".parquet", ".json")), "w") as fh:
        json.dump({"unit": name, "files": [name], "stats": {}}, fh)


def _add_shard(directory, name, *args, **kwargs):
    _write_shard(os.path.join(directory, name), *args, **kwargs)
    _record(directory, name)


def _write_output(directory, texts, tokens, vecs, md, dtype="float32", cuts=(13, 29)):
    os.makedirs(directory, exist_ok=True)
    bounds = [0, *cuts, len(texts)]
    for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
        _add_shard(directory, f"part-{s:05d}.parquet", texts[a:b], tokens[a:b], vecs[a:b], md, dtype, first_row=a)
    return str(directory)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, corpus, tiny_elmo):
    texts, tokens, vecs = corpus
    d = tmp_path_factory.mktemp("out") / "emb"
    return _write_output(d, texts, tokens, vecs, _metadata(tiny_elmo.fingerprint, vecs.shape[1]))


@pytest.fixture(scope="module")
def index(out_dir):
    return SearchIndex.open(out_dir)


def _brute(vecs, q, k):
    s = normalize(vecs) @ normalize(q).T  # (N, Q)
    order = np.argsort(-s, axis=0, kind="stable")[:k].T  # (Q, k)
    return order, np.take_along_axis(s.T, order, 1)


def test_in_corpus_query_ranks_itself_first(index, corpus):
    texts = corpus[0]
    picks = [0, 7, 13, 22, 39]  # first rows of shards 0, 1, 2 among them
    results = index.search([texts[i] for i in picks], k=3)
    for i, hits in zip(picks, results):
        assert hits[0].text == texts[i] and hits[0].id == f"doc-{i}"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].score > hits[1].score


def test_top_k_equals_brute_force(out_dir, corpus, tiny_elmo):
    texts, _, vecs = corpus
    queries = ["A cat repairs the red boat .", "Twelve students watch the sea", "house 17"]
    tok = Tokenizer(sentence_split="none")
    qv = np.stack(list(tiny_elmo.embed_sentences([tok.tokens(q) for q in queries], output="mix", pooling="mean")))
    want_rows, want_scores = _brute(vecs, qv, 10)
    for batch_rows in (65536, 5):  # one batch per shard, and batches smaller than k across shards
        results = search(out_dir, queries, k=10, batch_rows=batch_rows)
        for hits, rows, scores in zip(results, want_rows, want_scores):
            got = [h.score for h in hits]
            assert got == sorted(got, reverse=True)
            assert [h.id for h in hits] == [f"doc-{r}" for r in rows]
            assert [h.text for h in hits] == [texts[r] for r in rows]
            np.testing.assert_allclose(got, scores, atol=1e-5)


def test_random_vectors_match_brute_force_and_torch_path(index, corpus):
    vecs = corpus[2]
    q = np.random.default_rng(0).standard_normal((6, vecs.shape[1])).astype(np.float32)
    want_rows, want_scores = _brute(vecs, q, 8)
    scores, rows = index.search_vectors(q, k=8)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # the torch scorer (used on GPUs) gives the same top-k; run it on the CPU here
    for device in (None, torch.device("cpu")):
        top = _TopK(len(q), 8)
        sc = _Scorer(q, 8, device)
        for start in range(0, len(vecs), 7):
            sc(top, vecs[start:start + 7], start)
        s, r = top.result()
        np.testing.assert_array_equal(r, want_rows)
        np.testing.assert_allclose(s, want_scores, atol=1e-5)


def test_k_larger_than_corpus(index, corpus):
    hits = index.search("The cat reads a red bicycle", k=1000)[0]
    assert len(hits) == len(corpus[0])
    assert len({(h.id, h.sentence_index) for h in hits}) == len(hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_zero_vector_scores_zero(tmp_path, corpus, tiny_elmo):
    texts, tokens, vecs = corpus
    vecs = vecs.copy()
    vecs[5] = 0.0  # an empty sentence pools to 0
    d = _write_output(tmp_path / "o", texts, tokens, vecs, _metadata(tiny_elmo.fingerprint, vecs.shape[1]))
    hits = search(d, texts[0], k=100)[0]
    zero = [h for h in hits if h.id == "doc-5"]
    assert zero[0].score == 0.0
    assert not any(np.isnan(h.score) for h in hits)


def test_float16_shards(tmp_path, corpus, tiny_elmo):
    texts, tokens, vecs = corpus
    md = _metadata(tiny_elmo.fingerprint, vecs.shape[1], dtype="float16")
    d = _write_output(tmp_path / "o16", texts, tokens, vecs, md, dtype="float16")
    idx = SearchIndex.open(d)
    assert idx.output.dtype == "float16"
    assert idx.search(texts[21], k=1)[0][0].id == "doc-21"
    q = np.random.default_rng(1).standard_normal((3, vecs.shape[1])).astype(np.float32)
    want_rows, want_scores = _brute(vecs.astype(np.float16).astype(np.float32), q, 10)
    scores, rows = idx.search_vectors(q, k=10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_mismatched_model_refused(tmp_path, out_dir, tiny_dir):
    other = Elmo.from_pretrained(tiny_dir)
    with torch.no_grad():
        other.bilm.lstm.parameters().__next__().add_(0.01)
    other.save_pretrained(tmp_path / "other")
    reloaded = Elmo.from_pretrained(tmp_path / "other")
    with pytest.raises(SearchError) as e:
        search(out_dir, "The cat", model=str(tmp_path / "other"))
    msg = str(e.value)
    assert reloaded.fingerprint in msg and Output.open(out_dir).model_fingerprint in msg
    with pytest.raises(SearchError, match="fingerprint"):
        search(out_dir, "The cat", model=reloaded)


def test_missing_or_empty_output(tmp_path):
    with pytest.raises(OutputError, match="no such output"):
        search(str(tmp_path / "nope"), "The cat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutputError, match="no embedding shards"):
        search(str(tmp_path / "empty"), "The cat")


def test_shards_of_different_models_refused(tmp_path, corpus, tiny_elmo):
    texts, tokens, vecs = corpus
    d = _write_output(tmp_path / "mixed", texts, tokens, vecs, _metadata(tiny_elmo.fingerprint, vecs.shape[1]))
    _add_shard(d, "part-00009.parquet", texts[:3], tokens[:3], vecs[:3],
                 _metadata("ffffffffffffffff", vecs.shape[1]))
    with pytest.raises(SearchError, match="model fingerprints differ.*ffffffffffffffff"):
        search(d, "The cat")


def test_empty_query_refused(index):
    with pytest.raises(SearchError, match="no tokens"):
        index.search("   ")


def test_cli_table_and_json(out_dir, corpus, capsys, monkeypatch):
    assert main(["search", out_dir, corpus[0][3], "-k", "3", "--device", "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["rank", "score", "id", "sentence"]
    assert table[1].split()[:3] == ["1", "1.0000", "doc-3"] and len(table) == 4
    assert main(["search", out_dir, corpus[0][3], "-k", "2", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["rank"] for x in lines] == [1, 2] and lines[0]["id"] == "doc-3" and lines[0]["text"] == corpus[0][3]
    assert main(["search", out_dir + "/missing", "x"]) == 2  # one policy: user error
    assert "no such output directory" in capsys.readouterr().err
    # options between DIR and the query words; the words form one query
    assert main(["search", out_dir, "--json", "-k", "1", *corpus[0][8].split()]) == 0 and json.loads(capsys.readouterr().out)["id"] == "doc-8"
    # '-': one query per line from stdin
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{corpus[0][1]}\n\n{corpus[0][2]}\n"))
    assert main(["search", out_dir, "-", "-k", "1", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["query"], x["id"]) for x in lines] == [(corpus[0][1], "doc-1"), (corpus[0][2], "doc-2")]
    assert main(["search", out_dir, "x", "--ann"]) == 2
    assert "no index there" in capsys.readouterr().err


# ---- approximate index ------------------------------------------------------------------------


@pytest.fixture
def faiss_one_thread():
    """OpenMP threads spin-wait: on a busy 2-core CI box one thread is ~4x faster for tiny indexes."""
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_index_top1_and_staleness(tmp_path, corpus, tiny_elmo, faiss_one_thread):
    texts, tokens, vecs = corpus
    md = _metadata(tiny_elmo.fingerprint, vecs.shape[1])
    d = _write_output(tmp_path / "o", texts[:30], tokens[:30], vecs[:30], md, cuts=(10, 20))
    path = build_index(d)
    assert path == d + "/_index" and os.path.exists(os.path.join(path, "index.json"))
    idx = SearchIndex.open(d, index=True)
    for i, hits in enumerate(idx.search(texts[:30], k=5)):
        assert hits[0].id == f"doc-{i}" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # the output gains a shard (a refresh): the index is stale until updated, then covers it
    _add_shard(d, "part-00003.parquet", texts[30:], tokens[30:], vecs[30:], md, first_row=30)
    with pytest.raises(SearchError, match="stale"):
        SearchIndex.open(d, index=True)
    build_index(d)  # incremental: adds the new shard
    meta = json.load(open(os.path.join(path, "index.json")))
    assert meta["num_rows"] == 40 and [s["name"] for s in meta["shards"]][-1] == "part-00003.parquet"
    hits = search(d, texts[35], k=3, index=True)[0]
    assert hits[0].id == "doc-35" and hits[0].text == texts[35]
    # a shard rewritten: stale, and build_index rebuilds
    _add_shard(d, "part-00000.parquet", texts[:5], tokens[:5], vecs[:5], md)
    with pytest.raises(SearchError, match="stale"):
        search(d, texts[0], index=True)
    build_index(d)
    assert json.load(open(os.path.join(path, "index.json")))["num_rows"] == 35
    assert search(d, texts[25], k=1, index=True)[0][0].id == "doc-25"
    # same rows and bytes, another config fingerprint (re-embedded with other settings): stale
    md2 = {**md, "config_fingerprint": "fedcba9876543210"}
    _write_output(d, texts[:30], tokens[:30], vecs[:30], md2, cuts=(10, 20))
    _add_shard(d, "part-00003.parquet", texts[30:], tokens[30:], vecs[30:], md2, first_row=30)
    with pytest.raises(SearchError, match="stale.*fedcba9876543210"):
        search(d, texts[0], index=True)
    build_index(d)
    assert json.load(open(os.path.join(path, "index.json")))["config_fingerprint"] == "fedcba9876543210"


def test_index_recall_on_random_vectors(tmp_path, faiss_one_thread):
    rng = np.random.default_rng(0)
    n, dim = 3000, 32
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    md = _metadata("0123456789abcdef", dim)
    texts = [f"row {i}" for i in range(n)]
    d = _write_output(tmp_path / "rnd", texts, [[t] for t in texts], vecs, md, cuts=(1000, 2000))
    build_index(d)
    q = rng.standard_normal((50, dim)).astype(np.float32)
    exact = SearchIndex.open(d).search_vectors(q, k=10)[1]
    approx = SearchIndex.open(d, index=True).search_vectors(q, k=10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall
    # float16 storage: half the memory, same neighbours
    build_index(d, str(tmp_path / "idx16"), storage="float16")
    approx16 = SearchIndex.open(d, index=str(tmp_path / "idx16")).search_vectors(q, k=10)[1]
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx16, exact)]) >= 0.9


@pytest.mark.s3
def test_s3_output_search_and_index(tmp_path, out_dir, corpus, s3_endpoint, faiss_one_thread):
    import pyarrow.fs as pafs

    bucket = s3_endpoint()
    s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint.endpoint, region="us-east-1")
    pafs.copy_files(out_dir, f"{bucket}/emb", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    uri = f"s3://{bucket}/emb"
    texts = corpus[0]
    assert search(uri, texts[17], k=2)[0][0].id == "doc-17"
    assert build_index(uri) == uri + "/_index"
    assert s3.get_file_info(f"{bucket}/emb/_index/hnsw.faiss").size > 0
    hits = search(uri, texts[30], k=2, index=True)[0]
    assert hits[0].id == "doc-30" and hits[0].text == texts[30]


# ---- the approximate index on post-processed vectors ------------------------------------------


def _with_postprocessor(directory, vecs, method="center"):
    """Store moments and a fitted post-processor with an output, as the embed job does."""
    from elmo_dist.checkpoint import JobState
    from elmo_dist.similarity import Moments, Postprocessor

    moments = Moments.of(vecs)
    pp = Postprocessor.fit(moments, method)
    JobState(str(directory)).write_postprocessing(moments, pp)
    return pp


def test_index_on_postprocessed_vectors(tmp_path, corpus, tiny_elmo, faiss_one_thread, capsys):
    from elmo_dist.similarity import Postprocessor

    texts, tokens, vecs = corpus
    d = _write_output(tmp_path / "pp", texts, tokens, vecs, _metadata(tiny_elmo.fingerprint, vecs.shape[1]))
    fitted = _with_postprocessor(d, vecs)
    path = build_index(d)  # default: the output's fitted post-processor, as exact search
    meta = json.load(open(os.path.join(path, "index.json")))
    assert meta["postprocess"]["method"] == "center" and meta["postprocess"]["fingerprint"] == fitted.fingerprint()
    assert os.path.exists(os.path.join(path, "postprocessor.npz"))
    ann = SearchIndex.open(d, index=True)
    assert ann.postprocessor.fingerprint() == fitted.fingerprint()
    results = ann.search(texts, k=3)
    for i, hits in enumerate(results):  # every in-corpus query finds itself first
        assert hits[0].id == f"doc-{i}" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # the scores are cosines of the centred vectors: those of the exact search (same default)
    exact = SearchIndex.open(d).search(texts[:5], k=3)
    for a, e in zip(results, exact):
        assert [h.id for h in a] == [h.id for h in e]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in e], atol=1e-5)
    y = normalize(fitted.transform(vecs))
    assert exact[0][1].score == pytest.approx(float(y[0] @ y[int(exact[0][1].id[4:])]), abs=1e-5)

    # another post-processing than the index's: refused, naming both; the CLI says it in one line
    with pytest.raises(SearchError, match=r"stale: it was built on vectors post-processed with 'center' "
                                          r"\(the output's fitted post-processor, [0-9a-f]{16}\), this search uses "
                                          r"'none' \(the raw vectors\)"):
        search(d, texts[0], index=True, postprocess="none")
    assert main(["search", d, texts[0], "--ann", "--postprocess", "abtt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'center'" in err and "'abtt'" in err and "--build-index" in err
    # --build-index rebuilds it for the post-processing asked for; then the default is refused
    assert main(["search", d, texts[4], "--build-index", "--postprocess", "abtt", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "doc-4"
    meta = json.load(open(os.path.join(path, "index.json")))
    assert meta["postprocess"]["method"] == "abtt" and meta["postprocess"]["source"] == "moments"
    assert search(d, texts[6], k=1, index=True, postprocess="abtt")[0][0].id == "doc-6"
    with pytest.raises(SearchError, match="'abtt'.*'center'"):
        search(d, texts[0], index=True)

    # whiten to k < D dimensions: the index has the post-processor's width
    whiten = Postprocessor.fit(vecs, "whiten", k=8)
    wpath = build_index(d, str(tmp_path / "idx-whiten"), postprocess=whiten)
    idx = SearchIndex.open(d, index=wpath, postprocess=whiten)
    assert idx._ann.d == 8 and json.load(open(os.path.join(wpath, "index.json")))["postprocess"]["dim"] == 8
    for i, hits in enumerate(idx.search(texts[:10], k=2)):
        assert hits[0].id == f"doc-{i}" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(SearchError, match="stale"):
        SearchIndex.open(d, index=wpath, postprocess=Postprocessor.fit(vecs, "whiten", k=4))


def test_index_stale_when_the_fitted_postprocessor_changes(tmp_path, corpus, tiny_elmo, faiss_one_thread):
    texts, tokens, vecs = corpus
    md = _metadata(tiny_elmo.fingerprint, vecs.shape[1])
    d = _write_output(tmp_path / "o", texts[:30], tokens[:30], vecs[:30], md, cuts=(10, 20))
    _with_postprocessor(d, vecs[:30])
    path = build_index(d)
    # the output grows and its post-processor is refitted (what a refresh does): stale, and
    # build_index rebuilds (the old vectors were centred on the old mean) rather than extends
    _add_shard(d, "part-00003.parquet", texts[30:], tokens[30:], vecs[30:], md, first_row=30)
    refit = _with_postprocessor(d, vecs)
    with pytest.raises(SearchError, match="stale"):
        search(d, texts[0], index=True)
    build_index(d)
    meta = json.load(open(os.path.join(path, "index.json")))
    assert meta["num_rows"] == 40 and meta["postprocess"]["fingerprint"] == refit.fingerprint()
    assert search(d, texts[35], k=1, index=True)[0][0].id == "doc-35"
    # an index from before the post-processing was recorded (no "postprocess"): the raw vectors
    raw = build_index(d, str(tmp_path / "raw"), postprocess="none")
    meta = json.load(open(os.path.join(raw, "index.json")))
    assert meta.pop("postprocess")["method"] == "none" and not os.path.exists(os.path.join(raw, "postprocessor.npz"))
    with open(os.path.join(raw, "index.json"), "w") as fh:
        json.dump(meta, fh)
    with pytest.raises(SearchError, match="built on vectors post-processed with 'none'"):
        search(d, texts[0], index=raw)
    assert search(d, texts[12], k=1, index=raw, postprocess="none")[0][0].id == "doc-12"
