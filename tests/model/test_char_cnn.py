"""The token encoder's routes compute one function: the autograd route with tokens grouped by length
(each group trimmed to its own width) equals one group trimmed to the batch's longest token, in
values and gradients, and the no-grad CPU route equals both."""

import random

import pytest
import torch

from elmo_dist.model import char_cnn
from elmo_dist.model.char_cnn import MIN_GROUP, length_groups
from elmo_dist.model.elmo import Batch, Elmo


def _words(n: int) -> list[str]:
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 3, 4, 5, 6, 7, 9, 12]))) for _ in range(n)}
    words |= {"x" * 40, "internationalization", "a"}  # a few long ones set the batch's width
    return sorted(words)


def _encode(cnn, ids, shares):
    cnn.zero_grad()
    cnn.group_shares = shares
    out = cnn(ids)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weight).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in cnn.named_parameters()}


@pytest.fixture
def cnn_and_ids(tiny_dir):
    elmo = Elmo.from_pretrained(tiny_dir).double()
    cnn = elmo.bilm.char_cnn
    for p in cnn.parameters():
        p.requires_grad_(True)
    ids = torch.from_numpy(Batch.from_sentences([_words(600)]).token_char_ids)  # (U, W) distinct tokens
    return cnn, ids


def test_groups_cover_every_token_once(cnn_and_ids):
    _, ids = cnn_and_ids
    groups = length_groups(ids)
    assert len(groups) >= 2 and all(g.numel() >= MIN_GROUP for g in groups)
    assert sorted(torch.cat(groups).tolist()) == list(range(ids.shape[0]))
    used = (ids != char_cnn.PAD_CHAR).sum(1)
    assert [int(used[g].max()) for g in groups] == sorted(int(used[g].max()) for g in groups)
    assert len(length_groups(ids[: 2 * MIN_GROUP - 1])) == 1


def test_grouped_widths_match_one_width_in_values_and_gradients(cnn_and_ids):
    cnn, ids = cnn_and_ids
    with torch.enable_grad():
        one, g_one = _encode(cnn, ids, ())
        grouped, g_grouped = _encode(cnn, ids, char_cnn.GROUP_SHARES)
    assert len(length_groups(ids)) >= 2  # the grouping really ran
    torch.testing.assert_close(grouped, one, rtol=0, atol=1e-12)
    for name in g_one:
        torch.testing.assert_close(g_grouped[name], g_one[name], rtol=0, atol=1e-12, msg=name)
    with torch.no_grad():  # the CPU inference route: blocks of 256 trimmed per block, one GEMM per position
        fast = cnn(ids)
    torch.testing.assert_close(fast, one, rtol=0, atol=1e-12)
