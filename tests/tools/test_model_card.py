"""tools/model_card.py: docs/models.md is the card rendered from the shipped model's JSON records."""

import os

import model_card  # tools/model_card.py

from elmo_dist import default_model_path


def test_docs_models_md_is_the_rendered_card():
    with open(os.path.join(model_card.ROOT, "docs", "models.md")) as fh:
        committed = fh.read()
    assert model_card.render(str(default_model_path())) == committed, (
        "docs/models.md differs from the card: rerun `python tools/model_card.py`")


def test_main_writes_the_card(tmp_path, capsys):
    out = tmp_path / "card.md"
    model_card.main(["--model-dir", str(default_model_path()), "--out", str(out)])
    assert out.read_text().startswith("# The built-in default model: `")
    assert str(out) in capsys.readouterr().out
