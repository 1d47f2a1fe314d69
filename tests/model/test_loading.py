"""options.json / weights.hdf5: validation, clear errors, round trip, float16 storage."""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from elmo_dist import Elmo
from elmo_dist.model.options import ElmoOptions, OptionsError
from elmo_dist.model.weights import WeightsError


def _copy(tiny_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    os.chmod(d / "weights.hdf5", 0o644)
    os.chmod(d / "options.json", 0o644)
    return d


def test_unknown_training_keys_are_tolerated(tiny_dir):
    raw = json.load(open(os.path.join(tiny_dir, "options.json")))
    raw["lstm"]["dropout"] = 0.1
    raw["n_tokens_vocab"] = 793471
    raw["bidirectional"] = True
    opts = ElmoOptions.from_dict(raw)
    assert opts.lstm.projection_dim == 16 and opts.output_dim == 32


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda r: r["char_cnn"].update(activation="gelu"), "char_cnn.activation"),
        (lambda r: r["lstm"].update(use_skip_connections=False), "lstm.use_skip_connections"),
        (lambda r: r["char_cnn"].update(max_characters_per_token=64), "char_cnn.max_characters_per_token"),
        (lambda r: r["lstm"].pop("projection_dim"), "lstm.projection_dim"),
        (lambda r: r["char_cnn"].update(filters=[[0, 4]]), "char_cnn.filters"),
    ],
)
def test_bad_option_names_the_key(tiny_dir, edit, key):
    raw = json.load(open(os.path.join(tiny_dir, "options.json")))
    edit(raw)
    with pytest.raises(OptionsError, match=key.replace(".", r"\.")):
        ElmoOptions.from_dict(raw)


def test_zero_clip_disables_clipping(tiny_dir):
    raw = json.load(open(os.path.join(tiny_dir, "options.json")))
    raw["lstm"]["cell_clip"] = 0
    raw["lstm"]["proj_clip"] = None
    opts = ElmoOptions.from_dict(raw)
    assert opts.lstm.cell_clip is None and opts.lstm.proj_clip is None


def test_missing_dataset_named(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    with h5py.File(d / "weights.hdf5", "a") as fh:
        del fh["CNN_proj/W_proj"]
    with pytest.raises(WeightsError, match=r"missing dataset 'CNN_proj/W_proj' \(expected shape \(28, 16\)\)"):
        Elmo.from_pretrained(d)


def test_wrong_shape_named(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    name = "RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_P_0"
    with h5py.File(d / "weights.hdf5", "a") as fh:
        del fh[name]
        fh[name] = np.zeros((32, 8), dtype=np.float32)
    with pytest.raises(WeightsError, match=rf"'{name}' has shape \(32, 8\), expected \(32, 16\)"):
        Elmo.from_pretrained(d)


def test_options_from_another_model_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    raw = json.load(open(d / "options.json"))
    raw["lstm"]["dim"] = 64
    json.dump(raw, open(d / "options.json", "w"))
    with pytest.raises(WeightsError, match="expected .*options.json and weights.hdf5 belong together"):
        Elmo.from_pretrained(d)


def test_truncated_file(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    data = open(d / "weights.hdf5", "rb").read()
    open(d / "weights.hdf5", "wb").write(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="weights.hdf5"):
        Elmo.from_pretrained(d)


def test_not_hdf5_and_missing_files(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    open(d / "weights.hdf5", "w").write("this is not hdf5")
    with pytest.raises(WeightsError, match="not a readable HDF5 file"):
        Elmo.from_pretrained(d)
    with pytest.raises(OptionsError, match="no such options file"):
        Elmo.from_pretrained(tmp_path / "nowhere")
    os.remove(d / "weights.hdf5")
    with pytest.raises(WeightsError, match="no such weights file"):
        Elmo.from_pretrained(d)


def test_nan_weights_refused(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    with h5py.File(d / "weights.hdf5", "a") as fh:
        fh["CNN_proj/b_proj"][0] = np.nan
    with pytest.raises(WeightsError, match="'CNN_proj/b_proj' holds NaN"):
        Elmo.from_pretrained(d)


@pytest.mark.parametrize("dtype, tol", [("float32", 0.0), ("float16", 5e-2)])
def test_save_round_trip(tiny_elmo, tiny_ref, tmp_path, dtype, tol):
    sents, _ = tiny_ref
    tiny_elmo.save_pretrained(tmp_path / "out", dtype=dtype)
    with h5py.File(tmp_path / "out" / "weights.hdf5") as fh:
        assert fh["CNN/W_cnn_2"].dtype == np.dtype(dtype)
        assert fh["char_embed"].shape == (261, 4)
    back = Elmo.from_pretrained(tmp_path / "out")
    a, _ = tiny_elmo.embed_batch(sents)
    b, _ = back.embed_batch(sents)
    assert b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=tol, rtol=0)
    if dtype == "float32":
        assert back.fingerprint == tiny_elmo.fingerprint
