"""The built-in default model: shipped in the package, loads with no argument, matches its card."""

import json
import os
import re

import numpy as np

import elmo_dist
from elmo_dist import Elmo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_model_loads_and_matches_its_fingerprint():
    path = elmo_dist.default_model_path()
    assert os.path.exists(os.path.join(path, "options.json"))
    size = os.path.getsize(os.path.join(path, "weights.hdf5"))
    assert size <= 20 << 20
    info = json.load(open(os.path.join(path, "model.json")))
    elmo = Elmo.from_pretrained()
    assert elmo.fingerprint == info["fingerprint"]
    card = open(os.path.join(ROOT, "docs", "models.md")).read()
    assert info["fingerprint"] in card, "docs/models.md quotes another model's fingerprint"
    layers, mask = elmo.embed_batch([["Hello", "world"]])
    assert layers.shape == (1, 3, 2, info["output_dim"]) and layers.dtype == np.float32
    assert mask.all() and np.isfinite(layers).all()


def test_default_model_is_trained_not_random():
    """A trained LM puts a word's contexts to use: same word, different contexts -> different vectors,
    and the forward/backward LMs give the weights of a trained model (not the initial scale)."""
    elmo = Elmo.from_pretrained()
    a, _ = elmo.embed_batch([["I", "sat", "by", "the", "river", "bank", "."],
                             ["I", "put", "money", "in", "the", "bank", "."]])
    l0 = a[:, 0, 5]
    l2 = a[:, 2, 5]
    assert np.allclose(l0[0], l0[1])  # the char-CNN layer has no context
    assert not np.allclose(l2[0], l2[1], atol=1e-3)
    info = json.load(open(os.path.join(elmo_dist.default_model_path(), "model.json")))
    ppl = info["training"]["history"][-1]["valid_ppl_forward"]
    assert ppl < 400, ppl  # an untrained model over a 30k vocabulary scores in the thousands
    assert re.fullmatch(r"[0-9a-f]{16}", info["fingerprint"])
