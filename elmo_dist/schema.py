"""Column names, Arrow schemas and Parquet metadata keys, in one place."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

# ---- output columns (one row per sentence, or per chunk of a sentence cut at the max length) ----
ID = "id"  # the input row's id (given id column, or derived from file + row)
SENTENCE_INDEX = "sentence_index"  # position of the sentence within its input row
CHUNK = "chunk"  # 0-based chunk of the sentence; > 0 only when a long sentence was cut
N_CHUNKS = "n_chunks"  # chunks the sentence was cut into (1 = not cut)
SOURCE = "source"  # the input file the row came from
TEXT = "text"  # the sentence as text (tokens joined by spaces for pre-tokenized input)
TOKENS = "tokens"  # list<string>
N_TOKENS = "n_tokens"
SENTENCE_EMBEDDING = "sentence_embedding"  # fixed_size_list<float, D>
TOKEN_EMBEDDINGS = "token_embeddings"  # list<fixed_size_list<float, D>> (or (L+1) x D with "all")

# ---- internal columns between stages (never written) ----
ORDER = "_order"  # input order key, restored after length-sorted batching
ROW = "_row"  # row number within the input file

METADATA_KEY = b"elmo_dist"  # Parquet key-value metadata: JSON of model + settings (see output_metadata)


def float_type(dtype: str) -> pa.DataType:
    return {"float32": pa.float32(), "float16": pa.float16()}[dtype]


def output_schema(dim: int, dtype: str = "float32", token_embeddings: bool = False,
                  token_layers: int | None = None, metadata: dict[str, Any] | None = None) -> pa.Schema:
    """Arrow schema of an output shard.

    Args:
        dim: D, the embedding width.
        dtype: "float32" or "float16".
        token_embeddings: include the per-token column.
        token_layers: None for one vector per token, else L+1 vectors per token ("all" layers).
    """
    f = float_type(dtype)
    fields = [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(SENTENCE_INDEX, pa.int32(), nullable=False),
        pa.field(CHUNK, pa.int32(), nullable=False),
        pa.field(N_CHUNKS, pa.int32(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(TEXT, pa.string(), nullable=False),
        pa.field(TOKENS, pa.list_(pa.string()), nullable=False),
        pa.field(N_TOKENS, pa.int32(), nullable=False),
        pa.field(SENTENCE_EMBEDDING, pa.list_(f, dim), nullable=False),
    ]
    if token_embeddings:
        vec = pa.list_(f, dim)
        per_token = vec if token_layers is None else pa.list_(vec, token_layers)
        fields.append(pa.field(TOKEN_EMBEDDINGS, pa.list_(per_token), nullable=False))
    md = {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()} if metadata else None
    return pa.schema(fields, metadata=md)


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The elmo_dist metadata of an output file's schema ({} if absent)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
