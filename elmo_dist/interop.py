"""Interop with AllenNLP's ELMo tooling: its ``elmo`` command's HDF5 layout, from a text file or a job.

``embed_file`` does what AllenNLP 0.9's ``allennlp elmo`` command is documented to do, with this
package's exact, stateless model; ``export_output`` writes a finished job's ``token_embeddings`` in
the same layout. The layout (one HDF5 file):

- one float32 dataset per sentence: ``(L+1, T, D)`` with ``all`` (char-CNN layer, then each LSTM
  layer), ``(T, D)`` with ``top`` (the last layer) or ``average`` (the mean of the L+1 layers);
- ``sentence_to_index``: shape ``(1,)``, one variable-length UTF-8 string holding the JSON object
  sentence text -> dataset key (a repeated sentence maps to its last key), unless
  ``forget_sentences`` (or, for ``embed_file``, ``use_sentence_keys``).

Keys: ``embed_file`` uses the 0-based line number (``"0"``, ``"1"``, ...) or, with
``use_sentence_keys``, the sentence itself. ``export_output`` uses the row id when every id has one
sentence, else ``<id>:<sentence_index>``; ids are escaped for HDF5 (``%`` -> ``%25``, ``/`` ->
``%2F``, an id ``.`` -> ``%2E``), and the rule is recorded in the root attribute ``key_format``.

The file is written under a temporary name in the output's directory, fsynced and renamed: a run
that fails or is killed never leaves a partial ``OUTPUT.hdf5`` (an interrupted run may leave a
``.OUTPUT.hdf5.tmp-<hex>`` file behind; an error removes it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Iterator, Literal

import numpy as np

from elmo_dist import storage
from elmo_dist.stages.read import InputError

logger = logging.getLogger(__name__)

Layers = Literal["all", "top", "average"]
LAYERS = ("all", "top", "average")
SENTENCE_TO_INDEX = "sentence_to_index"
LOG_EVERY_S = 10.0


class InteropError(InputError):
    """Bad input to ``elmo`` / ``export`` (blank lines, duplicate sentence keys, vectors that cannot
    give the requested layers, unwritable output); the CLI prints it in one line (exit 2)."""


# ---- shared: layers, keys, atomic HDF5 -------------------------------------------------------------

def _check_layers(layers: str) -> None:
    if layers not in LAYERS:
        raise InteropError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")


def select_layers(vectors: np.ndarray, layers: Layers) -> np.ndarray:
    """(L+1, T, D) -> (L+1, T, D) for ``all``, (T, D) for ``top`` / ``average``; float32."""
    if layers == "all":
        out = vectors
    elif layers == "top":
        out = vectors[-1]
    else:
        out = vectors.mean(axis=0, dtype=np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def escape_key(key: str) -> str:
    """An HDF5 link name for ``key``: ``%`` -> ``%25``, ``/`` -> ``%2F``; ``.`` -> ``%2E``. Reversible."""
    out = key.replace("%", "%25").replace("/", "%2F")
    return "%2E" if out == "." else out


def _check_output_path(path: str) -> str:
    if "://" in path:
        raise InteropError(f"{path}: the HDF5 output must be a local file path")
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.isdir(path):
        raise InteropError(f"{path}: is a directory; give the path of the .hdf5 file to write")
    if not os.path.isdir(parent):
        raise InteropError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InteropError(f"{path}: directory {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_hdf5(path: str) -> Iterator[Any]:
    """An ``h5py.File`` open for writing at a temporary name beside ``path``; on success it is closed,
    fsynced and renamed to ``path`` (``storage.atomic_local_path``); on any error it is removed."""
    import h5py

    with storage.atomic_local_path(path) as tmp:
        try:
            fh = h5py.File(tmp, "w")
        except OSError as e:
            raise InteropError(f"{path}: cannot create {tmp}: {e}") from None
        try:
            yield fh
        finally:
            fh.close()


def _write_sentence_to_index(fh, mapping: dict[str, str]) -> None:
    import h5py

    ds = fh.create_dataset(SENTENCE_TO_INDEX, (1,), dtype=h5py.string_dtype("utf-8"))
    ds[0] = json.dumps(mapping, ensure_ascii=False)


class _Progress:
    def __init__(self, what: str, total: int | None = None):
        self.what, self.total = what, total
        self.t0 = self.last = time.perf_counter()
        self.sentences = self.tokens = 0

    def add(self, tokens: int) -> None:
        self.sentences += 1
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last >= LOG_EVERY_S:
            self.last = now
            of = f"/{self.total}" if self.total is not None else ""
            logger.info("%s: %d%s sentences, %d tokens, %.0f tokens/s", self.what, self.sentences, of,
                        self.tokens, self.tokens / max(now - self.t0, 1e-9))

    def summary(self, output: str, **extra: Any) -> dict[str, Any]:
        seconds = time.perf_counter() - self.t0
        out = {"sentences": self.sentences, "tokens": self.tokens,
               "tokens_per_second": round(self.tokens / max(seconds, 1e-9), 1),
               "seconds": round(seconds, 2), "output": output, **extra}
        logger.info("%s: %d sentences, %d tokens, %.0f tokens/s, %.2f s -> %s", self.what, out["sentences"],
                    out["tokens"], out["tokens_per_second"], out["seconds"], output)
        return out


# ---- elmo: a text file, one whitespace-tokenized sentence per line ---------------------------------

def _show_lines(numbers: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > limit else "")


def read_sentences(path: str) -> list[str]:
    """The stripped lines of a UTF-8 text file, local or a URI.

    Raises:
        InteropError listing the (1-based) numbers of blank lines, before any work.
    """
    try:
        if "://" in path and not path.startswith("file://"):
            import fsspec

            with fsspec.open(path, "r", encoding="utf-8") as fh:
                text = fh.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except FileNotFoundError:
        raise InteropError(f"{path}: no such input file") from None
    except UnicodeDecodeError as e:
        raise InteropError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise InteropError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    raw = text.split("\n")  # text mode: \r\n and \r are \n already; other separators stay in the line
    if raw and raw[-1] == "":
        raw.pop()  # the newline that ends the last line
    lines = [ln.strip() for ln in raw]
    blank = [i + 1 for i, ln in enumerate(lines) if not ln]
    if blank:
        raise InteropError(f"{path}: {len(blank)} empty line(s), at line {_show_lines(blank)} (1-based); "
                           "one sentence per line, remove them")
    return lines


def _sentence_keys(lines: list[str], path: str) -> list[str]:
    seen: dict[str, int] = {}
    for i, s in enumerate(lines):
        if s in seen:
            raise InteropError(f"{path}: line {i + 1} repeats the sentence of line {seen[s] + 1}; "
                               "with --use-sentence-keys every sentence must be unique")
        if "/" in s or s == ".":
            raise InteropError(f"{path}: line {i + 1}: a sentence key cannot contain '/' or be '.' in HDF5; "
                               "use line-number keys (without --use-sentence-keys)")
        seen[s] = i
    return list(lines)


def load_model(model: str | None = None, options_file: str | None = None, weight_file: str | None = None,
               device: str = "cpu", compute_dtype: str = "float32"):
    """The ``Elmo`` of a model directory / URI, of an options + weights pair, or the built-in model."""
    import torch

    from elmo_dist.model.elmo import DTYPES, Elmo

    if (options_file is None) != (weight_file is None):
        raise InteropError("give --options-file and --weight-file together")
    if options_file is not None and model:
        raise InteropError("give a model directory (--model) or --options-file/--weight-file, not both")
    if compute_dtype not in DTYPES:
        raise InteropError(f"compute dtype must be one of {', '.join(DTYPES)}, got {compute_dtype!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InteropError(f"device must be cpu or cuda[:N], got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InteropError(f"device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise InteropError(f"device must be cpu or cuda[:N], got {device!r}")
    if options_file is not None:
        elmo = Elmo.from_pretrained(options_file=options_file, weight_file=weight_file, compute_dtype=compute_dtype)
    else:
        if model and "://" not in model:
            model = os.path.abspath(model)
        elmo = Elmo.from_pretrained(model or None, compute_dtype=compute_dtype)
    return elmo.to(dev)


def embed_file(input_path: str, output_path: str, layers: Layers = "all", *, model: str | None = None,
               options_file: str | None = None, weight_file: str | None = None, elmo=None,
               batch_size: int = 64, token_budget: int | None = None, forget_sentences: bool = False,
               use_sentence_keys: bool = False, device: str = "cpu",
               compute_dtype: str = "float32") -> dict[str, Any]:
    """AllenNLP's ``elmo`` command: a text file, one sentence per line, split on whitespace (tokens are
    used as they are), -> an HDF5 file in the layout of the module docstring.

    Args:
        layers: "all", "top" or "average".
        model / options_file + weight_file / elmo: the model (default: the built-in one); ``elmo``
            is an already loaded ``Elmo`` (then ``device`` and ``compute_dtype`` are not used).
        batch_size: max sentences per model call (sentences are batched by sorted length).
        token_budget: max padded tokens per model call (default: the device's, as ``Elmo.embed_sentences``).
        forget_sentences: no ``sentence_to_index`` dataset.
        use_sentence_keys: key each dataset by its sentence (stripped line) instead of its line
            number; a repeated sentence is refused. No ``sentence_to_index`` then.
    Returns:
        summary: sentences, tokens, tokens_per_second, seconds, output.
    """
    _check_layers(layers)
    if batch_size < 1:
        raise InteropError(f"batch size must be >= 1, got {batch_size}")
    if token_budget is not None and token_budget < 1:
        raise InteropError(f"token budget must be >= 1, got {token_budget}")
    out = _check_output_path(output_path)
    lines = read_sentences(input_path)  # blank lines refused before the model loads
    keys = _sentence_keys(lines, input_path) if use_sentence_keys else [str(i) for i in range(len(lines))]
    if not lines:
        logger.warning("%s holds no sentence: writing an empty %s", input_path, out)
    if elmo is None:
        elmo = load_model(model, options_file, weight_file, device, compute_dtype)
    sentences = [ln.split() for ln in lines]
    progress = _Progress("elmo", len(lines))
    logger.info("embedding %d sentences of %s with %s (%s layers) -> %s", len(lines), input_path,
                elmo.source or "the given model", layers, out)
    with atomic_hdf5(out) as fh:
        vecs = elmo.embed_sentences(sentences, token_budget=token_budget, output="all",
                                    max_sentences=batch_size)
        for key, toks, v in zip(keys, sentences, vecs):  # (L+1, T, D) each, in input order
            fh.create_dataset(key, data=select_layers(v, layers))
            progress.add(len(toks))
        if not (forget_sentences or use_sentence_keys):
            _write_sentence_to_index(fh, dict(zip(lines, keys)))
    return progress.summary(out, layers=layers)


# ---- export: a job's output directory --------------------------------------------------------------

def _stored_layers(meta: dict[str, Any], token_type) -> tuple[Any, int | None]:
    """(token_output as stored, number of layers L+1 if known) of an output's shards."""
    import pyarrow as pa

    emb = meta.get("embedding", {})
    stored = emb.get("token_output", "mix")
    per_token = token_type.value_type  # fixed_size_list<f, D> or fixed_size_list<fixed_size_list<f, D>, L+1>
    n_layers = None
    if pa.types.is_fixed_size_list(per_token) and pa.types.is_fixed_size_list(per_token.value_type):
        stored, n_layers = "all", per_token.list_size
    return stored, n_layers


def _model_layers(meta: dict[str, Any]) -> int | None:
    """L+1 of the output's model: from its mix weights, else from its options.json if readable."""
    emb = meta.get("embedding", {})
    if emb.get("mix_weights"):
        return len(emb["mix_weights"])
    source = meta.get("model", {}).get("source")
    if not source:
        return None
    from elmo_dist.model.elmo import _read_text
    from elmo_dist.model.options import ElmoOptions

    opt_uri = source.split(",", 1)[0] if "," in source else f"{source.rstrip('/')}/options.json"
    try:
        return ElmoOptions.from_json(_read_text(opt_uri), source=opt_uri).lstm.n_layers + 1
    except Exception:  # noqa: BLE001 - any failure means "unknown"
        return None


def _plan_export(directory: str, layers: Layers, stored, n_layers: int | None, meta: dict[str, Any]) -> str:
    """How the stored vectors give ``layers``: "all" (select from L+1 layers) or "as_is" (one vector
    per token that already is the top layer / the average); raises when they cannot."""
    if stored == "all":
        return "all"
    hint = "re-run the job with --token-embeddings --token-output all"
    if layers == "all":
        raise InteropError(f"{directory}: token vectors were written with token_output={stored!r}, one vector "
                           f"per token; --all needs every layer: {hint}")
    emb = meta.get("embedding", {})
    if layers == "average":
        weights, gamma = emb.get("mix_weights"), float(emb.get("gamma", 1.0))
        equal = weights is None or len(set(float(w) for w in weights)) == 1
        if stored == "mix" and equal and gamma == 1.0:
            return "as_is"  # equal softmax weights, gamma 1: the mix is the mean of the layers
        raise InteropError(f"{directory}: token vectors were written with token_output={stored!r}"
                           + (f" (mix weights {weights}, gamma {gamma})" if stored == "mix" else "")
                           + f", not the average of the layers: {hint}")
    # top
    if isinstance(stored, int):
        total = _model_layers(meta)
        if total is not None and stored == total - 1:
            return "as_is"
        if total is None:
            raise InteropError(f"{directory}: token vectors are layer {stored}, and the model "
                               f"({meta.get('model', {}).get('source')}) cannot be read to tell whether it is the "
                               f"top layer: {hint}")
    raise InteropError(f"{directory}: token vectors were written with token_output={stored!r}, not the top "
                       f"layer: {hint}")


def _read_schema(fs, path: str):
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as fh:
        return pq.ParquetFile(fh).schema_arrow


def _batch_vectors(col, n_layers: int | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A record batch's token_embeddings column -> (N_tokens, [L+1,] D) float32 and row offsets (N+1,)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = col.flatten()  # per-token fixed-size lists, honouring slices
    while hasattr(values, "flatten") and hasattr(values.type, "list_size"):
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    shape = (int(offsets[-1]), n_layers, dim) if n_layers else (int(offsets[-1]), dim)
    return flat.reshape(shape), offsets


def export_output(directory: str, output_path: str, layers: Layers = "all", *,
                  forget_sentences: bool = False, batch_rows: int = 1024) -> dict[str, Any]:
    """A finished job's output (``token_embeddings`` column) -> an HDF5 file in the ``elmo`` layout.

    Streams the current version's shards ``batch_rows`` rows at a time. A sentence cut into chunks
    (``n_chunks`` > 1) becomes one dataset: its chunks' vectors concatenated in chunk order (each
    chunk was embedded on its own), its text the chunks' texts joined by a space.

    Args:
        directory: output directory of ``elmo-dist embed`` / ``refresh`` (local or s3://).
        layers: "all" and "top" need ``token_output=all`` (or, for "top", the top layer stored);
            "average" needs ``all``, or the default equal-weight mix (which is the average).
    Returns:
        summary: sentences, tokens, rows, key_format, tokens_per_second, seconds, output.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from elmo_dist import schema as S
    from elmo_dist.output import filesystem, list_shards

    _check_layers(layers)
    out = _check_output_path(output_path)
    fs, _ = filesystem(directory)
    shards = list_shards(directory)
    schemas = [_read_schema(fs, p) for p in shards]
    first = schemas[0]
    if S.TOKEN_EMBEDDINGS not in first.names:
        raise InteropError(f"{directory}: has no {S.TOKEN_EMBEDDINGS} column (written without --token-embeddings); "
                           "re-run the job with --token-embeddings --token-output all")
    meta = S.read_metadata(first)
    token_type = first.field(S.TOKEN_EMBEDDINGS).type
    for p, sch in zip(shards, schemas):
        if S.TOKEN_EMBEDDINGS not in sch.names or sch.field(S.TOKEN_EMBEDDINGS).type != token_type \
                or S.read_metadata(sch).get("embedding") != meta.get("embedding"):
            raise InteropError(f"{directory}: shard {p} was embedded differently from {shards[0]}")
    stored, n_layers = _stored_layers(meta, token_type)
    mode = _plan_export(directory, layers, stored, n_layers, meta)
    per_token = token_type.value_type
    dim = per_token.value_type.list_size if n_layers else per_token.list_size

    # Key rule, decided before writing: the id alone when every id has one sentence.
    max_sidx = 0
    for p in shards:
        with fs.open_input_file(p) as fh:
            col = pq.ParquetFile(fh).read(columns=[S.SENTENCE_INDEX]).column(S.SENTENCE_INDEX)
        if len(col):
            max_sidx = max(max_sidx, int(pc.max(col).as_py()))
    key_format = "id" if max_sidx == 0 else "id:sentence_index"

    def key_of(id_: str, sidx: int) -> str:
        k = escape_key(id_)
        return k if key_format == "id" else f"{k}:{sidx}"

    progress = _Progress("export")
    mapping: dict[str, str] = {}
    pending: dict[tuple[str, int], dict[int, tuple[np.ndarray, str]]] = {}  # chunks of a cut sentence
    rows = 0
    cols = [S.ID, S.SENTENCE_INDEX, S.CHUNK, S.N_CHUNKS, S.TEXT, S.TOKEN_EMBEDDINGS]
    logger.info("exporting %d shard(s) of %s (token_output=%s, %s) -> %s", len(shards), directory,
                stored, layers, out)

    def emit(fh, key: str, vecs: np.ndarray, text: str) -> None:  # vecs: (T, [L+1,] D)
        if mode == "all":
            data = select_layers(vecs.transpose(1, 0, 2), layers)
        else:
            data = np.ascontiguousarray(vecs, dtype=np.float32)
        if key in fh or (key == SENTENCE_TO_INDEX and not forget_sentences):
            raise InteropError(f"{directory}: two sentences have the key {key!r} (duplicate id?)")
        fh.create_dataset(key, data=data)
        if not forget_sentences:
            mapping[text] = key
        progress.add(len(vecs))

    with atomic_hdf5(out) as fh:
        fh.attrs["key_format"] = key_format
        fh.attrs["layers"] = layers
        for p in shards:
            with fs.open_input_file(p) as src:
                for batch in pq.ParquetFile(src).iter_batches(batch_size=batch_rows, columns=cols):
                    vecs, offsets = _batch_vectors(batch.column(S.TOKEN_EMBEDDINGS), n_layers, dim)
                    ids = batch.column(S.ID).to_pylist()
                    sidx = batch.column(S.SENTENCE_INDEX).to_pylist()
                    chunk = batch.column(S.CHUNK).to_pylist()
                    n_chunks = batch.column(S.N_CHUNKS).to_pylist()
                    texts = batch.column(S.TEXT).to_pylist()
                    for r in range(batch.num_rows):
                        rows += 1
                        v = vecs[offsets[r]:offsets[r + 1]]
                        if n_chunks[r] <= 1:
                            emit(fh, key_of(ids[r], sidx[r]), v, texts[r])
                            continue
                        parts = pending.setdefault((ids[r], sidx[r]), {})
                        parts[chunk[r]] = (v.copy(), texts[r])
                        if len(parts) == n_chunks[r]:
                            del pending[(ids[r], sidx[r])]
                            ordered = [parts[c] for c in sorted(parts)]
                            emit(fh, key_of(ids[r], sidx[r]), np.concatenate([x[0] for x in ordered]),
                                 " ".join(x[1] for x in ordered))
        if pending:
            (id_, s), parts = next(iter(pending.items()))
            raise InteropError(f"{directory}: {len(pending)} sentence(s) miss chunks, e.g. id {id_!r} sentence {s} "
                               f"has chunks {sorted(parts)} only")
        if not forget_sentences:
            _write_sentence_to_index(fh, mapping)
    return progress.summary(out, layers=layers, rows=rows, key_format=key_format)
