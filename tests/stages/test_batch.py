"""batch: ``plan_batches`` groups sentences by length under a token budget (and cuts early)."""

import numpy as np
import pytest

from elmo_dist.stages.batch import plan_batches


def _check_cover(lengths, batches):
    idx = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    assert sorted(idx.tolist()) == list(range(len(lengths)))  # every index exactly once
    assert all(len(b) > 0 for b in batches)


def _padded(lengths, b):
    return len(b) * int(np.asarray(lengths)[b].max())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [16, 100, 1000])
def test_every_index_once_within_budget_longest_first(seed, budget):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=257)
    batches = plan_batches(lengths, budget)
    _check_cover(lengths, batches)
    for b in batches:
        if _padded(lengths, b) > budget:  # only a single sentence over the budget may exceed it
            assert len(b) == 1 and lengths[b[0]] > budget
    # longest first: lengths never increase along the concatenated plan
    flat = lengths[np.concatenate(batches)]
    assert np.all(np.diff(flat) <= 0)


def test_over_long_sentence_gets_its_own_batch():
    lengths = np.array([5, 500, 5, 7, 300])
    batches = plan_batches(lengths, 100)
    _check_cover(lengths, batches)
    assert [b.tolist() for b in batches[:2]] == [[1], [4]]
    assert sorted(batches[2].tolist()) == [0, 2, 3]
    assert _padded(lengths, batches[2]) <= 100


def test_max_sentences_caps_batch_size():
    lengths = np.full(100, 3)
    batches = plan_batches(lengths, 10_000, max_sentences=7)
    _check_cover(lengths, batches)
    assert [len(b) for b in batches] == [7] * 14 + [2]


def test_early_cut_separates_lengths_once_min_batch_reached():
    # 40 sentences of 50 tokens, then 40 of 10: a huge budget would fit all 80 in one batch,
    # but once a batch holds >= min_batch (8) sentences it ends where lengths fall > 10% below its longest.
    lengths = np.array([50] * 40 + [10] * 40)
    batches = plan_batches(lengths, 1_000_000)
    _check_cover(lengths, batches)
    assert len(batches) == 2
    assert set(lengths[batches[0]].tolist()) == {50} and len(batches[0]) == 40
    assert set(lengths[batches[1]].tolist()) == {10} and len(batches[1]) == 40
    # without the early cut (slack 1.0: nothing is ever "more than 100% shorter") they mix
    mixed = plan_batches(lengths, 1_000_000, slack=1.0)
    assert len(mixed) == 1


def test_early_cut_within_slack_does_not_cut():
    # 45 is exactly 10% below 50: within the 10% slack, so one batch
    lengths = np.array([50] * 40 + [45] * 40)
    assert len(plan_batches(lengths, 1_000_000)) == 1
    # 44 is 12% below 50: cut
    lengths = np.array([50] * 40 + [44] * 40)
    assert [len(b) for b in plan_batches(lengths, 1_000_000)] == [40, 40]


def test_early_cut_keeps_at_least_min_batch_sentences():
    # only 5 long sentences: the batch is filled up to min_batch (8) with short ones before any cut
    lengths = np.array([50] * 5 + [10] * 70)
    batches = plan_batches(lengths, 1_000_000)
    _check_cover(lengths, batches)
    assert len(batches[0]) == 8
    assert lengths[batches[0]].tolist() == [50] * 5 + [10] * 3
    assert len(batches) == 2 and len(batches[1]) == 67
    # a smaller min_batch cuts right after the long ones
    batches = plan_batches(lengths, 1_000_000, min_batch=4)
    assert [len(b) for b in batches] == [5, 70]


def test_no_early_cut_with_fewer_than_min_batch_sentences():
    lengths = np.array([50] * 4 + [10] * 3)  # 7 < 8 sentences: never cut early
    batches = plan_batches(lengths, 1_000_000)
    assert len(batches) == 1 and sorted(batches[0].tolist()) == list(range(7))


def test_empty_and_zero_length():
    assert plan_batches(np.zeros(0, np.int64), 100) == []
    lengths = np.array([0, 0, 3])
    batches = plan_batches(lengths, 100)
    _check_cover(lengths, batches)


@pytest.mark.parametrize("budget", [0, -5])
def test_bad_budget_raises(budget):
    with pytest.raises(ValueError, match="token_budget"):
        plan_batches(np.array([1, 2, 3]), budget)


def test_padding_on_real_sentence_lengths_stays_under_five_percent():
    """Sentence lengths of news-like prose (the gold fixture's 600 sentences, Moses tokens, drawn with a
    seeded generator into a 2,000-sentence, ~21k-token unit, lengths jittered by +-2): under 5% padding
    at the default budget (the previous 20% slack / 32 minimum gave 9.3%)."""
    import os

    from elmo_dist.model.batching import padding_ratio
    from elmo_dist.text.tokenize import Tokenizer

    gold = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "sentence_gold.txt")
    tok = Tokenizer("none")
    base = [len(tok(line)[0]) for line in open(gold, encoding="utf-8") if line.strip() and not line.startswith("#")]
    base = [n for n in base if n]
    rng = np.random.default_rng(0)
    lengths = np.array([base[i] + rng.integers(-2, 3) for i in rng.integers(0, len(base), 2000)]).clip(1)
    assert padding_ratio(lengths, plan_batches(lengths, 4096)) < 0.05
