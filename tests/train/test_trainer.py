"""A few training steps lower the loss, and the exported model loads back with identical outputs."""

import random

import numpy as np
import torch

from elmo_dist import Elmo
from elmo_dist.train.trainer import TrainConfig, Trainer


def _corpus(tmp_path):
    rng = random.Random(0)
    subjects, verbs, objects = ["the cat", "a dog", "my friend"], ["sees", "likes", "finds"], ["the ball", "a tree", "it"]
    d = tmp_path / "corpus"
    d.mkdir()
    for name, n in (("train", 400), ("valid", 40)):
        lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(n)]
        (d / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return d


def test_training_lowers_loss_and_exports(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(corpus=str(_corpus(tmp_path)), out=str(tmp_path / "run"), arch="tiny",
                      token_budget=512, lr=1e-2, warmup_steps=1, max_steps=60, eval_every=1000,
                      checkpoint_minutes=100, threads=1)
    tr = Trainer(cfg)
    before_f, before_b = tr.evaluate()
    tr.run()
    after_f, after_b = tr.history[-1]["valid_ppl_forward"], tr.history[-1]["valid_ppl_backward"]
    assert after_f < 0.6 * before_f and after_b < 0.6 * before_b, (before_f, after_f, before_b, after_b)

    sents = [["the", "cat", "likes", "it", "."], ["a", "dog", "sees", "the", "ball", "."]]
    exported = Elmo.from_pretrained(tmp_path / "run" / "model")
    live = Elmo(tr.opts)
    live.bilm.load_state_dict(tr.bilm.state_dict())
    np.testing.assert_array_equal(exported.embed_batch(sents)[0], live.embed_batch(sents)[0])

    # Resume: a second run with a larger step budget continues from the checkpoint.
    cfg2 = TrainConfig(**{**cfg.__dict__, "max_steps": 70})
    tr2 = Trainer(cfg2)
    assert tr2.step == 60
    tr2.run()
    assert tr2.step == 70
