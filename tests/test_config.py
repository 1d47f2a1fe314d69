"""config: JobConfig built from YAML + flags, validated, frozen, fingerprinted."""

import inspect
import os

import pydantic
import pytest

from elmo_dist.config import (DEFAULT_TOKEN_BUDGET, ConfigError, EmbeddingSettings, JobConfig, RunSettings,
                              TextSettings)
from elmo_dist.paths import default_model_path

MODEL_FP = "0123456789abcdef"


def _cfg(**over):
    return JobConfig.build(inputs=["in/a.parquet"], output="out", **over)


def test_build_from_yaml_and_overrides(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text(
        "inputs: [s3://bucket/corpus/]\n"
        "output: s3://bucket/emb/\n"
        "text:\n  text_column: body\n  id_column: doc_id\n  sentence_split: newline\n"
        "embedding:\n  pooling: max\n"
        "run:\n  token_budget: 1000\n  rows_per_unit: 500\n")
    cfg = JobConfig.build(str(f))
    assert cfg.inputs == ["s3://bucket/corpus/"]
    assert cfg.output == "s3://bucket/emb"  # trailing slash stripped
    assert cfg.text.text_column == "body" and cfg.text.id_column == "doc_id"
    assert cfg.text.sentence_split == "newline"
    assert cfg.embedding.pooling == "max"
    assert cfg.run.token_budget == 1000 and cfg.run.rows_per_unit == 500

    over = JobConfig.build(str(f), output="/tmp/elsewhere", **{"text.id_column": "uid", "run.token_budget": 2048,
                                                               "run.num_actors": None, "embedding.dtype": "float16"})
    assert over.output == "/tmp/elsewhere"  # flags win
    assert over.text.id_column == "uid"
    assert over.text.text_column == "body" and over.text.sentence_split == "newline"  # rest of the section kept
    assert over.run.token_budget == 2048 and over.run.rows_per_unit == 500
    assert over.run.num_actors is None  # a None flag is "not given"
    assert over.embedding.dtype == "float16" and over.embedding.pooling == "max"


def test_build_without_file_uses_defaults():
    cfg = _cfg()
    assert cfg.text == TextSettings() and cfg.text.text_column == "text"
    assert cfg.embedding == EmbeddingSettings()
    assert cfg.run == RunSettings()


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        JobConfig.build(str(tmp_path / "missing.yaml"))
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        JobConfig.build(str(f))


@pytest.mark.parametrize("key,field", [
    ("bogus", "bogus"),
    ("text.colum", "text.colum"),
    ("run.token_budgett", "run.token_budgett"),
    ("embedding.pool", "embedding.pool"),
])
def test_unknown_keys_refused_naming_the_field(key, field):
    with pytest.raises(ConfigError) as e:
        _cfg(**{key: 1})
    assert field in str(e.value)


def test_unknown_key_in_yaml_refused(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("inputs: [a.parquet]\noutput: out\nrun:\n  tokens_budget: 100\n")
    with pytest.raises(ConfigError, match=r"run\.tokens_budget"):
        JobConfig.build(str(f))


def test_invalid_values_name_the_field():
    with pytest.raises(ConfigError, match=r"run\.token_budget"):
        _cfg(**{"run.token_budget": 3})
    with pytest.raises(ConfigError, match=r"embedding\.pooling"):
        _cfg(**{"embedding.pooling": "median"})
    with pytest.raises(ConfigError, match="inputs"):
        JobConfig.build(inputs=[], output="out")
    with pytest.raises(ConfigError, match="output"):
        JobConfig.build(inputs=["a.parquet"])


def test_text_and_tokens_column_exclusive():
    with pytest.raises(ConfigError, match="not both"):
        _cfg(**{"text.text_column": "body", "text.tokens_column": "toks"})
    cfg = _cfg(**{"text.tokens_column": "toks"})
    assert cfg.text.tokens_column == "toks" and cfg.text.text_column is None
    with pytest.raises(pydantic.ValidationError):
        TextSettings(text_column="a", tokens_column="b")


def test_fingerprint_changes_with_what_changes_the_output():
    base = _cfg().fingerprint(MODEL_FP)
    assert base == _cfg().fingerprint(MODEL_FP)  # deterministic
    assert len(base) == 16
    changed = [
        _cfg(**{"embedding.pooling": "max"}).fingerprint(MODEL_FP),
        _cfg(**{"embedding.token_embeddings": True}).fingerprint(MODEL_FP),
        _cfg(**{"embedding.dtype": "float16"}).fingerprint(MODEL_FP),
        _cfg(**{"embedding.mix_weights": [1.0, 0.0, 0.0]}).fingerprint(MODEL_FP),
        _cfg(**{"text.sentence_split": "newline"}).fingerprint(MODEL_FP),
        _cfg(**{"text.max_sentence_tokens": 100}).fingerprint(MODEL_FP),
        _cfg(**{"text.id_column": "doc"}).fingerprint(MODEL_FP),
        _cfg().fingerprint("fedcba9876543210"),
        _cfg(**{"run.compute_dtype": "bfloat16"}).fingerprint(MODEL_FP),
        _cfg(**{"run.compute_dtype": "float16"}).fingerprint(MODEL_FP),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)


def test_fingerprint_ignores_how_the_job_runs():
    base = _cfg().fingerprint(MODEL_FP)
    for over in ({"run.token_budget": 999}, {"run.num_actors": 7}, {"run.rows_per_unit": 3},
                 {"run.address": "ray://head:10001"}, {"run.cpus_per_actor": 4.0},
                 {"run.num_gpus_per_actor": 1.0}, {"run.torch_threads": 2}, {"run.lease_seconds": 60.0},
                 {"run.prepare_processes": 3},
                 {"output": "elsewhere"}, {"inputs": ["other.parquet"]}):
        over = dict(over)
        kw = {"inputs": over.pop("inputs", ["in/a.parquet"]), "output": over.pop("output", "out")}
        assert JobConfig.build(**kw, **over).fingerprint(MODEL_FP) == base, over


def test_config_is_frozen():
    cfg = _cfg()
    with pytest.raises(pydantic.ValidationError):
        cfg.output = "other"
    with pytest.raises(pydantic.ValidationError):
        cfg.run.token_budget = 5
    with pytest.raises(pydantic.ValidationError):
        cfg.embedding.pooling = "max"
    with pytest.raises(pydantic.ValidationError):
        cfg.text.text_column = "other"
    assert cfg.output == "out" and cfg.run.token_budget is None


def test_model_resolved_once_at_build(tmp_path, monkeypatch):
    assert _cfg().model == default_model_path()
    assert _cfg(model="").model == default_model_path()
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(model="models/mine")
    assert cfg.model == os.path.join(str(tmp_path), "models", "mine")
    monkeypatch.chdir("/")  # changing directory later does not move the model
    assert cfg.model == os.path.join(str(tmp_path), "models", "mine")
    assert _cfg(model="s3://bucket/models/elmo").model == "s3://bucket/models/elmo"
    assert _cfg(model=str(tmp_path / "abs")).model == str(tmp_path / "abs")
    # the resolved model survives a dump/validate round trip unchanged (what config.json stores)
    again = JobConfig.model_validate(cfg.model_dump(mode="json"))
    assert again.model == cfg.model and again == cfg


@pytest.mark.parametrize("field,value", [
    ("output", "s3://AKIAXXXX:hunter2SECRET@bucket/out"),
    ("inputs", ["s3://AKIAXXXX:hunter2SECRET@bucket/in/"]),
    ("model", "s3://AKIAXXXX:hunter2SECRET@bucket/model"),
    ("output", "s3://bucket/out?secret_key=hunter2SECRET&region=us-east-1"),
])
def test_credentials_in_uris_refused_without_echo(field, value):
    kw = {"inputs": ["a.parquet"], "output": "out", field: value}
    with pytest.raises(ConfigError) as e:
        JobConfig.build(**kw)
    msg = str(e.value)
    assert "credentials" in msg
    assert "hunter2SECRET" not in msg and "AKIAXXXX" not in msg
    assert field in msg


def test_token_budget_default_is_per_device_and_declared_once():
    """Every entry point leaves the budget to ``token_budget_for``, which knows the device."""
    from elmo_dist.config import CUDA_TOKEN_BUDGET, token_budget_for
    from elmo_dist.model.elmo import Elmo
    from elmo_dist.stages.embed import Embedder

    assert RunSettings().token_budget is None  # resolved where the device is known (the actor, the API)
    for fn in (Embedder.__init__, Elmo.embed_sentences, Elmo.embed_in_batches):
        assert inspect.signature(fn).parameters["token_budget"].default is None, fn
    assert token_budget_for("cpu") == DEFAULT_TOKEN_BUDGET
    assert token_budget_for("cuda") == token_budget_for("cuda:1") == CUDA_TOKEN_BUDGET > DEFAULT_TOKEN_BUDGET
    assert token_budget_for("cuda", 1000) == token_budget_for("cpu", 1000) == 1000
