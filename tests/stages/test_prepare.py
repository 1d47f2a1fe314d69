"""prepare: sentences, chunks and the documented skips (counted, never silent)."""

import pyarrow as pa

from elmo_dist import schema as S
from elmo_dist.config import TextSettings
from elmo_dist.stages.prepare import prepare


def _table(texts, ids=None, col="text", typ=pa.string()):
    n = len(texts)
    cols = {col: pa.array(texts, typ), S.SOURCE: pa.array(["f.parquet"] * n), S.ROW: pa.array(range(n), pa.int64())}
    if ids is not None:
        cols["id"] = pa.array(ids)
    return pa.table(cols)


def test_sentences_tokens_and_derived_ids():
    out, stats = prepare(_table(["Hello world. It's late!", "One more"]), TextSettings())
    assert out.column(S.TOKENS).to_pylist() == [["Hello", "world", "."], ["It", "'s", "late", "!"], ["One", "more"]]
    assert out.column(S.ID).to_pylist() == ["f.parquet#0", "f.parquet#0", "f.parquet#1"]
    assert out.column(S.SENTENCE_INDEX).to_pylist() == [0, 1, 0]
    assert stats["sentences"] == 3 and stats["tokens"] == 9 and stats["rows"] == 2


def test_bad_rows_are_skipped_and_counted():
    bad_utf8 = b"caf\xe9 au lait"
    texts = [None, "", "   ", "x" * 2000, "fine text"]
    t = _table(texts + [None], ids=[f"r{i}" for i in range(6)], typ=pa.string())
    # replace the last value by invalid UTF-8 bytes through a binary column
    t = t.set_column(0, "text", pa.array(texts + [bad_utf8], pa.binary()))
    out, stats = prepare(t, TextSettings(id_column="id", max_document_chars=1000))
    assert stats["skipped_null"] == 1
    assert stats["skipped_empty"] == 2
    assert stats["skipped_too_long"] == 1
    assert stats["invalid_utf8"] == 1
    assert out.column(S.ID).to_pylist() == ["r4", "r5"]
    assert out.column(S.TEXT).to_pylist()[1] == "caf\ufffd au lait"  # decoded with a replacement char


def test_long_sentence_is_cut_into_chunks():
    out, stats = prepare(_table([" ".join(["w"] * 25)]), TextSettings(max_sentence_tokens=10, sentence_split="none"))
    assert out.column(S.N_TOKENS).to_pylist() == [10, 10, 5]
    assert out.column(S.CHUNK).to_pylist() == [0, 1, 2]
    assert out.column(S.N_CHUNKS).to_pylist() == [3, 3, 3]
    assert stats["chunked_sentences"] == 1


def test_pretokenized_sentences_and_documents():
    one = _table([["A", "b"], [], None, ["c"]], col="toks", typ=pa.list_(pa.string()))
    out, stats = prepare(one, TextSettings(tokens_column="toks"))
    assert out.column(S.TOKENS).to_pylist() == [["A", "b"], ["c"]]
    assert out.column(S.TEXT).to_pylist() == ["A b", "c"]
    assert stats["skipped_empty"] == 1 and stats["skipped_null"] == 1
    docs = _table([[["A"], ["b", "c"]]], col="toks", typ=pa.list_(pa.list_(pa.string())))
    out, _ = prepare(docs, TextSettings(tokens_column="toks"))
    assert out.column(S.SENTENCE_INDEX).to_pylist() == [0, 1]


def test_sentence_split_options_through_prepare():
    doc = "Mr. Patel said the plant would reopen in the U.S. in March. Sales rose 2.5% to $3.50.\nA new line"
    want = [["Mr.", "Patel", "said", "the", "plant", "would", "reopen", "in", "the", "U.S.", "in", "March", "."],
            ["Sales", "rose", "2.5", "%", "to", "$", "3.50", "."], ["A", "new", "line"]]
    assert TextSettings().sentence_split == "sentencex"
    for split in ("sentencex", "pysbd"):
        out, stats = prepare(_table([doc]), TextSettings(sentence_split=split))
        assert out.column(S.TOKENS).to_pylist() == want, split
        assert out.column(S.TEXT).to_pylist()[0].startswith("Mr. Patel") and stats["sentences"] == 3
    out, _ = prepare(_table([doc]), TextSettings(sentence_split="newline"))
    assert out.column(S.N_TOKENS).to_pylist() == [21, 3]


def test_split_over_processes_equals_one_pass():
    """prepare_split: row slices prepared in worker processes give the same table and counts as one
    prepare(), duplicate ids counted across slices too."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from elmo_dist.stages.prepare import prepare_split

    texts = [f"Row {i} says hello. It has {i % 3 + 1} sentences here! Dr. Smith agrees." for i in range(40)]
    texts[7], texts[20] = None, ""
    ids = [f"id{i}" for i in range(40)]
    ids[33] = ids[2]  # a repeat that lands in another slice
    table, text = _table(texts, ids=ids), TextSettings(id_column="id")
    one, one_stats = prepare(table, text)
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        split, split_stats = prepare_split(table, text, pool, 3)
        small, _ = prepare_split(table.slice(0, 7), text, pool, 3)  # too small to split: one pass
    assert split.equals(one)
    assert split_stats == dict(one_stats, prepare_parts=3) and one_stats["duplicate_ids_in_unit"] == 1
    assert small.equals(prepare(table.slice(0, 7), text)[0])
