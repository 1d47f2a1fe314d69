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

    # Resume: a second run with a larger step budget continues from the checkpoint, with the softmax
    # clusters the run started with even where its config now says otherwise (a changed default).
    cfg2 = TrainConfig(**{**cfg.__dict__, "max_steps": 70, "cutoffs": [4, 12]})
    tr2 = Trainer(cfg2)
    assert tr2.step == 60 and tr2.cutoffs == list(cfg.cutoffs)
    assert tr2.head.softmax.cutoffs == tr.head.softmax.cutoffs
    tr2.run()
    assert tr2.step == 70


def _steps(tr, n):
    order = tr._epoch_batches(0)
    return [tr.train_step([tr.train[i] for i in order[k % len(order)]])[0] for k in range(n)]


def test_bf16_training_follows_fp32(tmp_path):
    """Same seed, same batches: the first loss (same weights) agrees to 0.5%, and after 25 steps the
    curves agree to 3% on average (single steps drift apart a little: the trajectories are chaotic at
    this learning rate)."""
    corpus = str(_corpus(tmp_path))
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(corpus=corpus, out=str(tmp_path / precision), arch="tiny", token_budget=256,
                          lr=1e-2, warmup_steps=1, threads=1, precision=precision)
        curves[precision] = _steps(Trainer(cfg), 25)
    fp32, bf16 = np.array(curves["fp32"]), np.array(curves["bf16"])
    assert fp32[-5:].mean() < 0.8 * fp32[:5].mean()  # it learned something
    assert abs(bf16[0] - fp32[0]) / fp32[0] < 0.005, (fp32, bf16)
    assert abs(bf16[-5:].mean() - fp32[-5:].mean()) / fp32[-5:].mean() < 0.03, (fp32, bf16)


def test_fine_tuning_from_the_built_in_model(tmp_path):
    """--init-from: the built-in model's encoder, a new softmax over the domain corpus's words; after the
    same steps its held-out perplexity is lower than at the start and than a from-scratch model's."""
    import pyarrow.parquet as pq

    from elmo_dist.paths import SAMPLE_CORPUS, default_model_path
    from elmo_dist.text.tokenize import Tokenizer

    tok = Tokenizer()
    sents = [" ".join(s) for t in pq.read_table(SAMPLE_CORPUS).column("text").to_pylist() for s in tok(t)]
    random.Random(0).shuffle(sents)
    corpus = tmp_path / "domain"
    corpus.mkdir()
    (corpus / "valid.txt").write_text("\n".join(sents[:60]) + "\n")
    (corpus / "train.txt").write_text("\n".join(sents[60:]) + "\n")
    ppl = {}
    for init in ("", "default"):
        cfg = TrainConfig(corpus=str(corpus), out=str(tmp_path / f"run-{init or 'scratch'}"), init_from=init,
                          token_budget=512, warmup_steps=3, max_steps=15, eval_every=10**6, eval_tokens=3000,
                          checkpoint_minutes=100, vocab_size=3000, threads=2)
        tr = Trainer(cfg)
        start = sum(tr.evaluate()) / 2
        tr.run()
        ppl[init] = (start, (tr.history[-1]["valid_ppl_forward"] + tr.history[-1]["valid_ppl_backward"]) / 2)
    assert ppl["default"][1] < 0.7 * ppl["default"][0], ppl
    assert ppl["default"][1] < 0.8 * ppl[""][1], ppl
    tuned = Elmo.from_pretrained(tmp_path / "run-default" / "model")
    assert tuned.opts == Elmo.from_pretrained(default_model_path()).opts  # same architecture, official format


def test_loss_in_lstm_layout_equals_loss_from_batch_major_outputs(tmp_path):
    """The trainer reads the top layer in the LSTM's sorted, time-major layout; the same predictions
    read from BiLM.forward's (B, T+2, 2P) output give the same summed NLL."""
    from elmo_dist.model.elmo import Batch

    cfg = TrainConfig(corpus=str(_corpus(tmp_path)), out=str(tmp_path / "run"), arch="tiny", precision="fp32")
    tr = Trainer(cfg)
    tr.bilm.eval()
    tr.head.eval()
    sents = [["a", "dog", "sees", "the", "ball", "."], ["it", "."], ["my", "friend", "likes", "a", "tree", "now", "."]]
    with torch.no_grad():
        nll_f, nll_b, n = tr.loss(sents)
        batch = Batch.from_sentences(sents)
        top = tr.bilm(torch.from_numpy(batch.token_char_ids), torch.from_numpy(batch.token_index),
                      torch.from_numpy(batch.lengths))[-1]  # (B, T+2, 2P)
        p = tr.opts.lstm.projection_dim
        words, lens = tr._targets(sents)
        ref_f = ref_b = 0.0
        for b, s in enumerate(sents):
            for t in range(len(s) + 1):  # forward: position t predicts t+1; backward: t+1 predicts t
                ref_f += tr.head(top[b, t, :p][None], words[b, t + 1][None]).item()
                ref_b += tr.head(top[b, t + 1, p:][None], words[b, t][None]).item()
    assert n == sum(len(s) + 1 for s in sents)
    assert abs(nll_f.item() - ref_f) < 1e-4 * ref_f and abs(nll_b.item() - ref_b) < 1e-4 * ref_b


def test_lm_head_equals_torchs_adaptive_softmax():
    """The head's own forward (products in a chosen dtype, log-softmax in fp32) gives torch's
    AdaptiveLogSoftmaxWithLoss loss, with targets in the shortlist and in both tail clusters."""
    from elmo_dist.train.trainer import LMHead

    torch.manual_seed(0)
    head = LMHead(16, 300, [50, 150], dropout=0.0).eval()
    x, target = torch.randn(500, 16), torch.randint(0, 300, (500,))
    assert (target >= 150).any() and ((target >= 50) & (target < 150)).any()
    ref = -head.softmax(x, target).output.sum()
    assert torch.allclose(head(x, target), ref, rtol=1e-5)
    assert torch.allclose(head(x, target, torch.bfloat16), ref, rtol=1e-2)


def test_lm_head_gradients_equal_torchs_adaptive_softmax_float64():
    """The fused product + cross-entropy op's backward: the head's gradients (input and every weight)
    equal autograd's through torch's AdaptiveLogSoftmaxWithLoss, in float64."""
    from elmo_dist.train.trainer import LMHead

    torch.manual_seed(0)
    head = LMHead(16, 300, [50, 150], dropout=0.0).double().eval()
    x0, target = torch.randn(400, 16, dtype=torch.float64), torch.randint(0, 300, (400,))
    grads = []
    for fn in (lambda x: head(x, target), lambda x: -head.softmax(x, target).output.sum()):
        head.zero_grad()
        x = x0.clone().requires_grad_(True)
        (0.37 * fn(x)).backward()
        grads.append([x.grad] + [p.grad.clone() for p in head.parameters()])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_linear_cross_entropy_stays_finite_far_below_the_max():
    """A target whose logit is 400 below the row's max: its probability underflows to 0 in fp32, and
    the loss is still the exact 400 (log-sum-exp from the max), with a finite gradient."""
    from elmo_dist.train.trainer import _LinearCrossEntropy

    x = torch.tensor([[1.0, 0.0]], requires_grad=True)
    w = torch.tensor([[200.0, 0.0], [0.0, 0.0], [-200.0, 0.0]], requires_grad=True)
    loss = _LinearCrossEntropy.apply(x, w, torch.tensor([2]), torch.float32)
    assert abs(loss.item() - 400.0) < 1e-3
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    torch.testing.assert_close(w.grad[2], torch.tensor([-1.0, 0.0]))  # d loss / d w_target = -x
