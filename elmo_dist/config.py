"""The job's configuration: one frozen pydantic model, built once at the entry point and passed down.

``JobConfig.fingerprint()`` hashes only what changes the output (model, columns, tokenization,
embedding settings, and the compute precision ``run.compute_dtype``), not how the job runs (cluster
address, actor counts, token budget): resuming on a bigger cluster is fine, resuming with another
model or precision is refused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from elmo_dist.errors import ElmoDistError
from elmo_dist.paths import resolve_model
from elmo_dist.storage import check_uri

DEFAULT_TOKEN_BUDGET = 4096  # padded tokens per model call on a CPU: the job's and the API's default
CUDA_TOKEN_BUDGET = 32768  # on a CUDA device: a step's products large enough not to be launch-bound


def token_budget_for(device: str, budget: int | None = None) -> int:
    """``budget`` when given, else the default of the device type ("cpu", "cuda", "cuda:1", ...)."""
    if budget is not None:
        return budget
    return CUDA_TOKEN_BUDGET if str(device).startswith("cuda") else DEFAULT_TOKEN_BUDGET


class ConfigError(ElmoDistError, ValueError):
    """The configuration is invalid; the message names the field."""


class EmbeddingSettings(BaseModel):
    """What the vectors are: these settings enter the fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sentence_output: Union[Literal["mix"], int] = Field(
        "mix", description="vectors pooled into sentence_embedding: the scalar mix or one layer (0..L)")
    pooling: Literal["mean", "max", "sif"] = Field(
        "mean", description="how token vectors become the sentence vector: mean, max, or sif (mean of "
                            "a/(a+p(w))-weighted token vectors, word frequencies from the model's frequencies.tsv)")
    token_embeddings: bool = Field(False, description="also write one vector per token")
    token_output: Union[Literal["mix", "all"], int] = Field(
        "mix", description="per-token vectors: the mix, one layer, or all layers")
    dtype: Literal["float32", "float16"] = Field("float32", description="stored float type")
    mix_weights: list[float] | None = Field(None, description="pre-softmax scalar-mix weights (default equal)")
    gamma: float = Field(1.0, description="scalar-mix scale")


class TextSettings(BaseModel):
    """How input rows become token sequences: these settings enter the fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_column: str | None = Field(None, description="column of raw text (tokenized by elmo-dist)")
    tokens_column: str | None = Field(None, description="column of pre-tokenized sentences, list<string>")
    id_column: str | None = Field(None, description="unique id column; default: derived from file and row")
    sentence_split: Literal["sentencex", "pysbd", "newline", "none"] = Field(
        "sentencex", description="how raw text is split into sentences: sentencex (fast, rule-based), "
                                 "pysbd (slower, rule-based), newline (one per line) or none")
    max_sentence_tokens: int = Field(
        256, ge=1, description="longer sentences are cut into chunks of this many tokens (chunk column)")
    max_document_chars: int = Field(
        1_000_000, ge=1, description="rows with longer text are skipped and counted (absurdly long documents)")

    @model_validator(mode="before")
    @classmethod
    def _one_input_column(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("text_column") and data.get("tokens_column"):
                raise ValueError("give text_column or tokens_column, not both")
            if not data.get("text_column") and not data.get("tokens_column"):
                data = {**data, "text_column": "text"}
        return data


class RunSettings(BaseModel):
    """How the job runs: not in the fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(
        None, description="Ray address ('auto' joins `ray start`); none: RAY_ADDRESS or a local runtime")
    num_actors: int | None = Field(None, ge=1, description="embedding actors (default: sized from the cluster)")
    cpus_per_actor: float | None = Field(
        None, gt=0, description="CPUs of each embedding actor; default: CPU actors take a node's CPUs up to 4 "
                                "as torch threads (so a 2-core machine runs one actor on both cores), GPU "
                                "actors their node's CPUs per GPU up to 8 (1 while no GPU node is up), "
                                "for the processes that tokenize for them")
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto: GPU actors when the cluster shows GPUs when the job starts, else CPU; gpu: "
                            "always GPU actors (they wait for GPU nodes an autoscaler adds, and an actor "
                            "without a CUDA device fails instead of embedding on the CPU); cpu: never GPUs")
    max_actors: int | None = Field(
        None, ge=1, description="the actor pool grows up to this many actors as the cluster grows "
                                "(default: what the cluster holds when the job starts)")
    num_gpus_per_actor: float | None = Field(
        None, ge=0, description="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="matmul precision on the device (fp32 is exact); changes the vectors, "
                               "so it enters the fingerprint")
    token_budget: int | None = Field(
        None, ge=16, description=f"padded tokens per model call (default: {DEFAULT_TOKEN_BUDGET} on a CPU, "
                                 f"{CUDA_TOKEN_BUDGET} on a GPU)")
    rows_per_unit: int = Field(
        20_000, ge=1, description="input rows per work unit (the unit of resumption and of an output shard)")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per actor (default: a CPU actor's "
                                                               "CPUs; 1 for a GPU actor)")
    prepare_processes: int | None = Field(
        None, ge=0, description="processes that split and tokenize each unit for an actor, in parallel row "
                                "slices (default: a GPU actor's CPUs minus one when that is 2 or more, so "
                                "tokenizing keeps up with the GPU; 0 for CPU actors, which tokenize on a "
                                "thread beside the model)")
    lease_seconds: float = Field(
        600.0, gt=0, description="lifetime of the driver's exclusive lease on the output, renewed every "
                                 "third of it; a lease whose holder died on this host is taken over at once")


class JobConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: list[str] = Field(min_length=1, description="Parquet files, directories or globs; local or s3://")
    output: str = Field(description="output directory, local or s3://")
    model: str | None = Field(None, validate_default=True,
                              description="model directory (options.json + weights.hdf5), local or s3://; "
                                          "default: the built-in model. Resolved once, when the config "
                                          "is built (an absolute path or a URI)")
    text: TextSettings = TextSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    run: RunSettings = RunSettings()

    @field_validator("output")
    @classmethod
    def _strip(cls, v: str) -> str:
        check_uri(v)
        return v.rstrip("/") or v

    @field_validator("inputs")
    @classmethod
    def _no_secrets(cls, v: list[str]) -> list[str]:
        for uri in v:
            check_uri(uri)
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model_uri(cls, v: Any) -> str:
        if v:
            check_uri(str(v))
        return resolve_model(v)

    def fingerprint(self, model_fingerprint: str) -> str:
        """Hash of everything that decides the output's content (incl. the compute precision)."""
        payload = {"model": model_fingerprint, "text": self.text.model_dump(mode="json"),
                   "embedding": self.embedding.model_dump(mode="json"), "compute_dtype": self.run.compute_dtype}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, file: str | None = None, **overrides: Any) -> "JobConfig":
        """From an optional YAML file plus overrides (flags); flags win. Nested keys use sections."""
        raw: dict[str, Any] = {}
        if file:
            try:
                with open(file) as fh:
                    raw = yaml.safe_load(fh) or {}
            except OSError as e:
                raise ConfigError(f"cannot read config file {file}: {e}") from None
            if not isinstance(raw, dict):
                raise ConfigError(f"{file}: expected a mapping at the top level")
        for key, value in overrides.items():
            if value is None:
                continue
            if "." in key:
                section, name = key.split(".", 1)
                raw.setdefault(section, {})[name] = value
            else:
                raw[key] = value
        try:
            return cls.model_validate(raw)
        except ValidationError as e:  # raised below, outside: the error must not carry the input
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid configuration: {problems}")
