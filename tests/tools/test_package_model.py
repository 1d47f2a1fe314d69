"""tools/package_model.py: a trainer checkpoint becomes an official-format model plus model.json."""

import json

import numpy as np
import torch

import package_model  # tools/package_model.py
from elmo_dist import Elmo
from elmo_dist.model.elmo import BiLM
from elmo_dist.train.trainer import make_options


def test_package_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    bilm = BiLM(make_options("tiny"))
    run = tmp_path / "run"
    run.mkdir()
    history = [{"step": 5, "epoch": 0, "tokens": 99, "minutes": 1.5,
                "valid_ppl_forward": 10.0, "valid_ppl_backward": 11.0}]
    torch.save({"bilm": bilm.state_dict(), "config": {"arch": "tiny", "vocab_size": 50}, "step": 5, "epoch": 0,
                "tokens_seen": 99, "elapsed": 90.0, "history": history}, run / "checkpoint.pt")
    dest = tmp_path / "model"
    package_model.main(["--run", str(run), "--dest", str(dest), "--note", "resumed once", "--hardware", "a laptop"])
    printed = json.loads(capsys.readouterr().out)
    info = json.loads((dest / "model.json").read_text())
    loaded = Elmo.from_pretrained(dest)
    assert info["fingerprint"] == printed["fingerprint"] == loaded.fingerprint
    assert info["name"] == "elmo-dist-tiny" and info["weights_dtype"] == "float32"
    assert info["training"]["training_minutes"] == 1.5 and info["training"]["history"] == history
    assert info["training"]["notes"] == ["resumed once"] and info["training"]["hardware"] == "a laptop"
    assert "vCPU" in package_model.machine()
    live = Elmo(make_options("tiny"))
    live.bilm.load_state_dict(bilm.state_dict())
    sents = [["A", "tiny", "test", "."]]
    np.testing.assert_array_equal(loaded.embed_batch(sents)[0], live.embed_batch(sents)[0])
