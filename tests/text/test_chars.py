import numpy as np

from elmo_dist.text.chars import BOS_IDS, EOS_IDS, batch_to_char_ids, tokens_to_char_ids


def test_char_ids_equal_allennlp_fixture(tiny_ref):
    sents, ref = tiny_ref
    ids = batch_to_char_ids(sents)
    assert ids.shape == ref["char_ids"].shape
    np.testing.assert_array_equal(ids, ref["char_ids"])


def test_word_layout_and_byte_truncation():
    row = tokens_to_char_ids(["ab"])[0]
    assert list(row[:4]) == [259, ord("a") + 1, ord("b") + 1, 260]
    assert (row[4:] == 261).all()
    long = "é" * 30  # 60 UTF-8 bytes: cut at 48 bytes, which may split a character
    row = tokens_to_char_ids([long])[0]
    assert list(row[1:49]) == [b + 1 for b in long.encode()[:48]]
    assert row[49] == 260


def test_special_and_empty_tokens():
    ids = tokens_to_char_ids(["<S>", "</S>", "<s>", ""])
    np.testing.assert_array_equal(ids[0], BOS_IDS)
    np.testing.assert_array_equal(ids[1], EOS_IDS)
    assert ids[2, 1] == ord("<") + 1  # only the exact literals are special
    assert list(ids[3, :3]) == [259, 260, 261]


def test_lone_surrogates_are_dropped_not_fatal():
    ids = tokens_to_char_ids(["a\udcff"])
    assert list(ids[0, :3]) == [259, ord("a") + 1, 260]


def test_empty_batch_shapes():
    assert batch_to_char_ids([[], []]).shape == (2, 0, 50)
