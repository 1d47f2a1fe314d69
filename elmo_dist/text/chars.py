"""Token -> ELMo character ids, exactly as AllenNLP's ``ELMoCharacterMapper`` / ``batch_to_ids``.

Raw id space: bytes 0..255, 256 begin-of-sentence, 257 end-of-sentence, 258 begin-of-word,
259 end-of-word, 260 padding char; every id is then shifted by +1 so that 0 means "no token".
A word is ``[BOW] + utf8_bytes[:48] + [EOW] + [pad] * ...`` (50 ids). The literal tokens
``"<S>"`` and ``"</S>"`` map to the sentence-boundary sequences. Vectorised with NumPy: one pass
over the concatenated bytes of all tokens, no Python loop per character.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

W = 50  # characters per token (AllenNLP hard-codes 50)
MAX_BYTES = W - 2  # 48 UTF-8 bytes survive, the rest is cut (can split a multi-byte char)

# Shifted ids (raw + 1).
BOS_CHAR = 257
EOS_CHAR = 258
BOW = 259
EOW = 260
PAD_CHAR = 261
N_CHARS = 262  # size of the shifted id space (row 0 = padding token)


def _boundary(char: int) -> np.ndarray:
    row = np.full(W, PAD_CHAR, dtype=np.int64)
    row[:3] = (BOW, char, EOW)
    return row


BOS_IDS = _boundary(BOS_CHAR)  # the sentence-start token, [259, 257, 260, 261 x 47]
EOS_IDS = _boundary(EOS_CHAR)  # the sentence-end token,   [259, 258, 260, 261 x 47]
_SPECIAL = {"<S>": BOS_IDS, "</S>": EOS_IDS}


def tokens_to_char_ids(tokens: Sequence[str]) -> np.ndarray:
    """Character ids of a flat list of tokens.

    Args:
        tokens: N tokens (str).
    Returns:
        int64 array (N, W): shifted ELMo character ids, one row per token.
    """
    n = len(tokens)
    encoded = [t.encode("utf-8", "ignore")[:MAX_BYTES] for t in tokens]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=n)  # (N,)
    out = np.full((n, W), PAD_CHAR, dtype=np.int64)  # (N, W)
    out[:, 0] = BOW
    flat = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int64) + 1  # (sum bytes,)
    rows = np.repeat(np.arange(n), lengths)  # (sum bytes,) token index of each byte
    starts = np.cumsum(lengths) - lengths  # (N,) offset of each token's first byte in `flat`
    cols = np.arange(flat.size) - np.repeat(starts, lengths) + 1  # (sum bytes,) column 1..48
    out[rows, cols] = flat
    out[np.arange(n), lengths + 1] = EOW
    for i, tok in enumerate(tokens):  # rare literal boundary tokens
        if tok in _SPECIAL:
            out[i] = _SPECIAL[tok]
    return out


def batch_to_char_ids(sentences: Sequence[Sequence[str]]) -> np.ndarray:
    """``allennlp.modules.elmo.batch_to_ids`` as NumPy.

    Args:
        sentences: B tokenized sentences.
    Returns:
        int64 array (B, T, W), T = longest sentence; padding token rows are all zero.
    """
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)  # (B,)
    b, t = len(sentences), int(lengths.max(initial=0))
    out = np.zeros((b, t, W), dtype=np.int64)  # (B, T, W)
    flat = tokens_to_char_ids([tok for s in sentences for tok in s])  # (sum T_b, W)
    rows = np.repeat(np.arange(b), lengths)
    cols = np.arange(flat.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = flat
    return out
