"""AllenNLP interop: `elmo-dist elmo` (a text file -> the HDF5 layout of `allennlp elmo`) and
`elmo-dist export` (a job's token embeddings -> the same layout), on real files with h5py."""

import inspect
import json
import os

import h5py
import numpy as np
import pytest

from conftest import write_corpus
from elmo_dist import schema as S
from elmo_dist.cli import main
from elmo_dist.interop import InteropError, atomic_hdf5, embed_file, escape_key, export_output

SENTENCES = [
    "The cat sat on the mat .",
    "Hello world",
    "São Paulo is n't small , is it ?",
    "A",
    "The cat sat on the mat .",  # a repeat: sentence_to_index keeps its last line
    "one  two\tthree",  # any whitespace separates tokens
]


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _no_temp_files(directory):
    return not [p for p in os.listdir(directory) if ".tmp-" in p]


@pytest.fixture(scope="module")
def reference(tiny_elmo):
    """All layers (L+1, T, D) per sentence from Elmo.embed_batch on the whitespace tokens."""
    tokens = [s.split() for s in SENTENCES]
    layers, mask = tiny_elmo.embed_batch(tokens)
    return [layers[i, :, : len(t)] for i, t in enumerate(tokens)]


def test_elmo_all_layout_and_vectors(tmp_path, tiny_dir, reference, capsys):
    src = _write(tmp_path / "in.txt", SENTENCES)
    out = tmp_path / "out.hdf5"
    assert main(["elmo", src, str(out), "--all", "--model", tiny_dir, "--batch-size", "2"]) == 0
    with h5py.File(out, "r") as f:
        assert set(f.keys()) == {str(i) for i in range(len(SENTENCES))} | {"sentence_to_index"}
        for i, ref in enumerate(reference):
            ds = f[str(i)]
            assert ds.dtype == np.float32 and ds.shape == (3, len(SENTENCES[i].split()), 32)
            np.testing.assert_allclose(ds[...], ref, atol=1e-5, rtol=0)
        s2i = f["sentence_to_index"]
        assert s2i.shape == (1,)
        string = h5py.check_string_dtype(s2i.dtype)
        assert string is not None and string.encoding == "utf-8" and string.length is None  # variable length
        mapping = json.loads(s2i[0])
    assert mapping == {s.strip(): str(i) for i, s in enumerate(SENTENCES) if i != 0}
    assert mapping["São Paulo is n't small , is it ?"] == "2"
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("layers", ["top", "average"])
def test_elmo_top_and_average(tmp_path, tiny_elmo, reference, layers):
    src = _write(tmp_path / "in.txt", SENTENCES)
    out = str(tmp_path / f"{layers}.hdf5")
    summary = embed_file(src, out, layers, elmo=tiny_elmo, batch_size=3, token_budget=10)
    assert summary["sentences"] == len(SENTENCES) and summary["tokens"] == sum(len(s.split()) for s in SENTENCES)
    with h5py.File(out, "r") as f:
        for i, ref in enumerate(reference):
            want = ref[-1] if layers == "top" else ref.mean(axis=0)
            assert f[str(i)].shape == want.shape and f[str(i)].dtype == np.float32
            np.testing.assert_allclose(f[str(i)][...], want, atol=1e-5, rtol=0)


def test_blank_lines_are_listed_before_any_work(tmp_path, tiny_dir, capsys):
    src = _write(tmp_path / "in.txt", ["a b", "", "c", "   ", "d"])
    out = tmp_path / "out.hdf5"
    assert main(["elmo", src, str(out), "--top", "--model", tiny_dir]) == 2
    err = capsys.readouterr().err
    assert "2 empty line(s), at line 2, 4" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and _no_temp_files(tmp_path)


def test_lines_are_file_lines(tmp_path):
    from elmo_dist.interop import read_sentences

    path = tmp_path / "crlf.txt"
    path.write_bytes("a\u2028b  \r\n c\td\n".encode("utf-8"))  # only newlines end a line
    assert read_sentences(str(path)) == ["a\u2028b", "c\td"]
    path.write_bytes(b"a\nb")  # no final newline
    assert read_sentences(str(path)) == ["a", "b"]


def test_sentence_keys_and_forget_sentences(tmp_path, tiny_elmo, tiny_dir, reference, capsys):
    unique = SENTENCES[:4] + SENTENCES[5:]
    src = _write(tmp_path / "u.txt", unique)
    out = str(tmp_path / "keys.hdf5")
    embed_file(src, out, "all", elmo=tiny_elmo, use_sentence_keys=True)
    with h5py.File(out, "r") as f:
        assert set(f.keys()) == {s.strip() for s in unique}  # no sentence_to_index with sentence keys
        np.testing.assert_allclose(f["São Paulo is n't small , is it ?"][...], reference[2], atol=1e-5, rtol=0)

    dup = _write(tmp_path / "dup.txt", SENTENCES)
    assert main(["elmo", dup, str(tmp_path / "d.hdf5"), "--all", "--use-sentence-keys", "--model", tiny_dir]) == 2
    assert "line 5 repeats the sentence of line 1" in capsys.readouterr().err
    assert not (tmp_path / "d.hdf5").exists()

    out = str(tmp_path / "forget.hdf5")
    embed_file(dup, out, "average", elmo=tiny_elmo, forget_sentences=True)
    with h5py.File(out, "r") as f:
        assert set(f.keys()) == {str(i) for i in range(len(SENTENCES))}


def test_options_and_weight_files(tmp_path, tiny_dir, reference):
    src = _write(tmp_path / "in.txt", SENTENCES)
    out = tmp_path / "pair.hdf5"
    assert main(["elmo", src, str(out), "--all", "--options-file", os.path.join(tiny_dir, "options.json"),
                 "--weight-file", os.path.join(tiny_dir, "weights.hdf5")]) == 0
    with h5py.File(out, "r") as f:
        for i, ref in enumerate(reference):
            np.testing.assert_allclose(f[str(i)][...], ref, atol=1e-5, rtol=0)


def test_cli_errors(tmp_path, tiny_dir, capsys):
    src = _write(tmp_path / "in.txt", ["a b"])
    with pytest.raises(SystemExit) as e:  # one of --all / --top / --average is required
        main(["elmo", src, str(tmp_path / "o.hdf5")])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["elmo", src, str(tmp_path / "o.hdf5"), "--all", "--top"])
    capsys.readouterr()
    cases = [
        (["--options-file", os.path.join(tiny_dir, "options.json")], "together"),
        (["--model", str(tmp_path / "nomodel")], "no such options file"),
        (["--weight-file", str(tmp_path / "w.hdf5"), "--options-file", os.path.join(tiny_dir, "options.json")],
         "no such weights file"),
        (["--model", tiny_dir, "--batch-size", "0"], "batch size"),
    ]
    for flags, message in cases:
        assert main(["elmo", src, str(tmp_path / "o.hdf5"), "--all", *flags]) == 2
        assert message in capsys.readouterr().err
    assert main(["elmo", str(tmp_path / "missing.txt"), str(tmp_path / "o.hdf5"), "--all"]) == 2
    assert "no such input file" in capsys.readouterr().err
    assert main(["elmo", src, str(tmp_path / "no" / "o.hdf5"), "--all", "--model", tiny_dir]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nojob"), str(tmp_path / "o.hdf5"), "--all"]) == 2
    assert "no such output directory" in capsys.readouterr().err
    assert not (tmp_path / "o.hdf5").exists()


def test_atomic_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "x.hdf5")
    with atomic_hdf5(path) as f:
        f.create_dataset("0", data=np.ones(3, np.float32))
    with pytest.raises(RuntimeError):
        with atomic_hdf5(path) as f:
            f.create_dataset("0", data=np.zeros(5, np.float32))
            raise RuntimeError("killed half way")
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == ["0"] and f["0"].shape == (3,)
    assert _no_temp_files(tmp_path)


def test_escape_key():
    assert escape_key("s3://b/x.parquet#3") == "s3:%2F%2Fb%2Fx.parquet#3"
    assert escape_key("100%/a") == "100%25%2Fa" and escape_key(".") == "%2E" and escape_key("plain") == "plain"


# ---- export of a job's output ----------------------------------------------------------------------

def _run_job(inputs, output, model, address, **kw):
    """pipeline.run on the local Ray runtime, whether it takes (cfg, model) or (cfg) with cfg.model."""
    from elmo_dist import pipeline
    from elmo_dist.config import JobConfig

    base = {"text.id_column": "id", "run.rows_per_unit": 6, "run.address": address, "model": model}
    base.update(kw)
    cfg = JobConfig.build(inputs=[str(i) for i in inputs], output=str(output), **base)
    if len(inspect.signature(pipeline.run).parameters) >= 2:
        return pipeline.run(cfg, model)
    return pipeline.run(cfg)


@pytest.mark.ray
def test_export_job_output(tmp_path, sample_rows, tiny_dir, tiny_elmo, ray_runtime, capsys):
    import pyarrow as pa

    from elmo_dist import read_embeddings

    corpus = tmp_path / "c.parquet"
    write_corpus(corpus, sample_rows[:12], row_group_size=6)
    out_all = tmp_path / "all"
    _run_job([corpus], out_all, tiny_dir, ray_runtime, **{
        "embedding.token_embeddings": True, "embedding.token_output": "all", "text.max_sentence_tokens": 12})
    t = read_embeddings(str(out_all)).to_table()
    assert pa.compute.max(t[S.N_CHUNKS]).as_py() > 1  # some sentences were cut into chunks
    rows = sorted(t.select([S.ID, S.SENTENCE_INDEX, S.CHUNK, S.TOKENS, S.TEXT]).to_pylist(),
                  key=lambda r: (r[S.ID], r[S.SENTENCE_INDEX], r[S.CHUNK]))
    sentences: dict[str, dict] = {}  # key -> chunks' tokens and texts, in chunk order
    for r in rows:
        s = sentences.setdefault(f"{r[S.ID]}:{r[S.SENTENCE_INDEX]}", {"chunks": [], "texts": []})
        s["chunks"].append(r[S.TOKENS])
        s["texts"].append(r[S.TEXT])

    h5 = {}
    for layers in ("all", "top", "average"):
        h5[layers] = tmp_path / f"{layers}.hdf5"
        assert main(["export", str(out_all), str(h5[layers]), f"--{layers}", "--batch-rows", "5"]) == 0
    with h5py.File(h5["all"], "r") as fa, h5py.File(h5["top"], "r") as ft, h5py.File(h5["average"], "r") as fm:
        assert fa.attrs["key_format"] == "id:sentence_index"
        assert set(fa.keys()) == set(sentences) | {"sentence_to_index"}
        mapping = json.loads(fa["sentence_to_index"][0])
        assert set(mapping.values()) <= set(sentences)
        for key, s in sentences.items():
            # each chunk embedded on its own, concatenated in chunk order
            ref = np.concatenate([layers[0, :, : len(c)] for c in s["chunks"]
                                  for layers in [tiny_elmo.embed_batch([c])[0]]], axis=1)  # (3, T, D)
            assert fa[key].dtype == np.float32 and fa[key].shape == ref.shape
            np.testing.assert_allclose(fa[key][...], ref, atol=1e-5, rtol=0)
            np.testing.assert_allclose(ft[key][...], ref[-1], atol=1e-5, rtol=0)
            np.testing.assert_allclose(fm[key][...], ref.mean(axis=0), atol=1e-5, rtol=0)
            assert mapping[" ".join(s["texts"])] == key

    forget = tmp_path / "forget.hdf5"
    export_output(str(out_all), str(forget), "top", forget_sentences=True)
    with h5py.File(forget, "r") as f:
        assert set(f.keys()) == set(sentences)

    # A job written with the default mix (one vector per token): --average is that mix
    # (equal weights, gamma 1); --all and --top cannot be had from it.
    out_mix = tmp_path / "mix"
    write_corpus(tmp_path / "d.parquet", sample_rows[:2])
    _run_job([tmp_path / "d.parquet"], out_mix, tiny_dir, ray_runtime, **{"embedding.token_embeddings": True})
    avg = tmp_path / "mix_avg.hdf5"
    summary = export_output(str(out_mix), str(avg), "average")
    assert summary["sentences"] > 2
    with h5py.File(avg, "r") as f, h5py.File(h5["average"], "r") as ref:
        for key in f:
            if key != "sentence_to_index" and ref[key].shape[0] <= 12:  # not cut in the first job
                np.testing.assert_allclose(f[key][...], ref[key][...], atol=1e-5, rtol=0)
    capsys.readouterr()
    for flag in ("--all", "--top"):
        assert main(["export", str(out_mix), str(tmp_path / "no.hdf5"), flag]) == 2
        err = capsys.readouterr().err
        assert "token_output='mix'" in err and "--token-output all" in err
    assert not (tmp_path / "no.hdf5").exists() and _no_temp_files(tmp_path)

    # Sentence vectors only: nothing to export.
    out_none = tmp_path / "none"
    _run_job([tmp_path / "d.parquet"], out_none, tiny_dir, ray_runtime)
    with pytest.raises(InteropError, match="no token_embeddings column"):
        export_output(str(out_none), str(tmp_path / "no.hdf5"), "average")
