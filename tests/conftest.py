import json
import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TINY = os.path.join(FIXTURES, "elmo-tiny-f1")


@pytest.fixture(scope="session")
def tiny_dir() -> str:
    """The tiny ELMo (official layout) whose reference outputs AllenNLP 2.10.1 computed."""
    return TINY


@pytest.fixture(scope="session")
def tiny_ref():
    ref = np.load(os.path.join(TINY, "reference.npz"))
    sents = json.load(open(os.path.join(TINY, "sentences.json")))["sentences"]
    return sents, ref


@pytest.fixture(scope="session")
def tiny_elmo(tiny_dir):
    from elmo_dist import Elmo

    return Elmo.from_pretrained(tiny_dir)
