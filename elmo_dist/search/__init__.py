"""Similarity search over an elmo-dist output: exact streaming cosine top-k, optional HNSW index.

>>> from elmo_dist.search import search, SearchIndex, build_index
>>> search("out/embeddings", "The cat sat on the mat .", k=5)

Modules, each importing only those before it:

* ``topk``: the streaming top-k kernel (cosine scores of batches, running top-k; NumPy or torch).
* ``index``: the approximate index: faiss HNSW over the post-processed, L2-normalised vectors, its
  files, ``resolve_postprocessing`` (which post-processor a search or an index applies), and
  ``index_staleness``, the one check of whether an index matches its output.
* ``api``: ``search``, ``SearchIndex``, ``Hit``, ``format_hits``: query embedding with the output's
  own model, exact or approximate search, reading the hits' texts.

The shards are opened (footers read, consistency checked) by ``elmo_dist.output.ShardSet``.
Importing this package does not import torch or faiss.
"""

from __future__ import annotations

from elmo_dist.errors import SearchError
from elmo_dist.output import InconsistentOutputError, Shard, ShardSet
from elmo_dist.search.api import Hit, SearchIndex, format_hits, search
from elmo_dist.search.index import INDEX_DIR, build_index, default_index_path, index_staleness
from elmo_dist.search.topk import Scorer, TopK, normalize
from elmo_dist.search.topk import _inverse_norms, _resolve_device, _Scorer, _TopK  # noqa: F401  (old names)

Output = ShardSet  # the name of the single-module search.py; it shadowed the module elmo_dist.output

__all__ = [
    "search", "SearchIndex", "build_index", "Hit", "SearchError", "InconsistentOutputError", "format_hits",
    "normalize", "default_index_path", "index_staleness", "INDEX_DIR", "ShardSet", "Shard", "Output",
    "TopK", "Scorer",
]
