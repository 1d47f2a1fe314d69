"""options.json of the official ELMo format, parsed and validated.

Unknown (training-only) keys such as ``bidirectional``, ``dropout`` or ``n_tokens_vocab`` are kept
but ignored. A bad value raises ``OptionsError`` naming the key.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from elmo_dist.errors import ElmoDistError
from elmo_dist.text.chars import W


class OptionsError(ElmoDistError, ValueError):
    """options.json is missing, unreadable or holds an invalid value."""


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class CharEmbedding(_Tolerant):
    dim: int = Field(gt=0)


class CharCNNOptions(_Tolerant):
    activation: Literal["relu", "tanh"]
    embedding: CharEmbedding
    filters: list[tuple[int, int]] = Field(min_length=1)
    n_highway: int = Field(ge=0)
    max_characters_per_token: int = W
    n_characters: int = 262  # never read (AllenNLP sizes the table from the weights)

    @field_validator("filters")
    @classmethod
    def _positive(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for width, n in v:
            if not (0 < width <= W and n > 0):
                raise ValueError(f"each filter is [width 1..{W}, count > 0], got [{width}, {n}]")
        return v

    @field_validator("max_characters_per_token")
    @classmethod
    def _fifty(cls, v: int) -> int:
        if v != W:
            raise ValueError(f"must be {W} (AllenNLP's character mapper hard-codes it), got {v}")
        return v

    @property
    def n_filters(self) -> int:
        """F, the width of the char-CNN output."""
        return sum(n for _, n in self.filters)


class LSTMOptions(_Tolerant):
    dim: int = Field(gt=0)
    projection_dim: int = Field(gt=0)
    n_layers: int = Field(ge=1)
    cell_clip: float | None = None  # 0 / null disables clipping (AllenNLP tests truthiness)
    proj_clip: float | None = None
    use_skip_connections: bool = True

    @field_validator("use_skip_connections")
    @classmethod
    def _skip(cls, v: bool) -> bool:
        if not v:
            raise ValueError("must be true: ELMo biLMs are only defined with residual connections")
        return v

    @field_validator("cell_clip", "proj_clip")
    @classmethod
    def _clip(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(f"must be >= 0 (0 or null disables clipping), got {v}")
        return v or None


class ElmoOptions(_Tolerant):
    char_cnn: CharCNNOptions
    lstm: LSTMOptions

    @property
    def output_dim(self) -> int:
        """D = 2 x projection_dim, the width of every output layer."""
        return 2 * self.lstm.projection_dim

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "options.json") -> "ElmoOptions":
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            raise OptionsError(f"{source}: invalid ELMo options: {problems}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "options.json") -> "ElmoOptions":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise OptionsError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise OptionsError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw, source)

    def to_official_dict(self) -> dict[str, Any]:
        """The options as written to options.json (extra keys preserved)."""
        return self.model_dump(mode="json")
