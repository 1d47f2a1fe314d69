"""The official format on disk: options.json + weights.hdf5 from a directory or URI, validated."""

from __future__ import annotations

import numpy as np

from elmo_dist.model.options import ElmoOptions, OptionsError
from elmo_dist.model.weights import read_weights

FREQUENCIES_FILE = "frequencies.tsv"  # word<TAB>count beside options.json: unigram counts for SIF pooling


def load_official_files(path: str) -> tuple[ElmoOptions, dict[str, np.ndarray]]:
    """Options and weight arrays of a model directory (local or URI), validated.

    ``path`` may also name the two files as ``"options.json,weights.hdf5"``.
    """
    if "," in path:
        opt_uri, w_uri = path.split(",", 1)
    else:
        base = path.rstrip("/")
        opt_uri, w_uri = f"{base}/options.json", f"{base}/weights.hdf5"
    return load_official_pair(opt_uri, w_uri)


def load_official_pair(opt_uri: str, w_uri: str) -> tuple[ElmoOptions, dict[str, np.ndarray]]:
    """Options and weight arrays from an options file and a weights file named separately
    (local paths or URIs, as AllenNLP's ``--options-file`` / ``--weight-file``), validated."""
    try:
        text = _read_text(opt_uri)
    except FileNotFoundError:
        raise OptionsError(f"{opt_uri}: no such options file (expected options.json beside weights.hdf5)") from None
    except OSError as e:
        raise OptionsError(f"{opt_uri}: cannot read options ({type(e).__name__}: {e})") from None
    opts = ElmoOptions.from_json(text, source=opt_uri)
    return opts, read_weights(w_uri, opts)


def _read_text(uri: str) -> str:
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        with fsspec.open(uri, "r") as fh:
            return fh.read()
    with open(uri) as fh:
        return fh.read()


def load_frequencies(path: str) -> tuple[dict[str, int], str] | None:
    """Word counts of a model directory's ``frequencies.tsv`` (local or URI) and the file's sha256, or None
    when the model has none (or ``path`` names the two files, not a directory)."""
    import hashlib

    if "," in path:
        return None
    uri = f"{path.rstrip('/')}/{FREQUENCIES_FILE}"
    try:
        text = _read_text(uri)
    except FileNotFoundError:
        return None
    counts: dict[str, int] = {}
    for line in text.splitlines():
        word, _, n = line.partition("\t")
        if word and n.isdigit():
            counts[word] = int(n)
    return (counts, hashlib.sha256(text.encode()).hexdigest()) if counts else None
