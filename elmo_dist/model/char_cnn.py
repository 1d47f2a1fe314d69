"""Token encoder of ELMo: character embedding -> CNN (max-pool, then activation) -> highway -> projection.

Works on distinct tokens only: the caller passes the character ids of each distinct token once and
gathers the vectors back into sentences. Characters are trimmed to the width that can change the
result (see ``trimmed_width``), which is exact: windows lying wholly in the padding region give the
same value for every token, and at least one such window is always kept where the full width has one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from elmo_dist.model.options import CharCNNOptions
from elmo_dist.text.chars import N_CHARS, PAD_CHAR, W


def trimmed_width(char_ids: torch.Tensor, max_filter_width: int) -> int:
    """Smallest character width that gives exactly the same CNN output as the full 50.

    Args:
        char_ids: (U, W) shifted character ids.
    """
    if char_ids.shape[0] == 0:
        return W
    used = (char_ids != PAD_CHAR).sum(dim=1).max().item()  # longest token incl. BOW/EOW
    return int(min(W, used + max_filter_width))


class CharCNN(nn.Module):
    """char ids (U, W) -> token vectors (U, D)."""

    def __init__(self, opts: CharCNNOptions, projection_dim: int):
        super().__init__()
        e, f = opts.embedding.dim, opts.n_filters
        self.activation = torch.tanh if opts.activation == "tanh" else torch.relu
        self.widths = [w for w, _ in opts.filters]
        self.char_embed = nn.Embedding(N_CHARS, e)  # row 0 = no-token, kept at zero
        self.convs = nn.ModuleList(nn.Conv1d(e, n, kernel_size=w) for w, n in opts.filters)
        # One Linear(F, 2F) per highway layer: [transform | carry-gate] halves.
        self.highways = nn.ModuleList(nn.Linear(f, 2 * f) for _ in range(opts.n_highway))
        self.proj = nn.Linear(f, projection_dim)
        self.n_filters = f

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        """
        Args:
            char_ids: (U, W) int64 shifted character ids of U distinct tokens.
        Returns:
            (U, D) token representations (D = projection dim).
        """
        width = trimmed_width(char_ids, max(self.widths))
        x = self.char_embed(char_ids[:, :width])  # (U, W') -> (U, W', E)
        x = x.transpose(1, 2)  # (U, E, W')
        pooled = []
        for conv in self.convs:
            y = conv(x)  # (U, n_i, W' - w_i + 1)
            y = y.max(dim=-1).values  # (U, n_i): max over positions first ...
            pooled.append(self.activation(y))  # ... then the activation
        h = torch.cat(pooled, dim=-1)  # (U, F)
        for hw in self.highways:
            a, t = hw(h).chunk(2, dim=-1)  # (U, F), (U, F)
            t = torch.sigmoid(t)  # transform gate: selects the non-linear branch
            h = t * F.relu(a) + (1.0 - t) * h  # (U, F); highway is always relu
        return self.proj(h)  # (U, D)

    @torch.no_grad()
    def load_official(self, weights: dict[str, np.ndarray]) -> None:
        """Copy TF-layout arrays (see weights.py) into this module."""
        table = torch.from_numpy(weights["char_embed"])  # (261, E): raw ids 0..260
        if table.shape[0] == N_CHARS - 1:
            table = torch.cat([torch.zeros(1, table.shape[1]), table])  # (262, E): +1 shift
        self.char_embed.weight.copy_(table)
        for i, conv in enumerate(self.convs):
            w = torch.from_numpy(weights[f"CNN/W_cnn_{i}"])[0]  # (w, E, n)
            conv.weight.copy_(w.permute(2, 1, 0))  # (n, E, w)
            conv.bias.copy_(torch.from_numpy(weights[f"CNN/b_cnn_{i}"]))
        for k, hw in enumerate(self.highways):
            wt, wc = (torch.from_numpy(weights[f"CNN_high_{k}/W_{p}"]) for p in ("transform", "carry"))
            bt, bc = (torch.from_numpy(weights[f"CNN_high_{k}/b_{p}"]) for p in ("transform", "carry"))
            hw.weight.copy_(torch.cat([wt.T, wc.T]))  # (2F, F)
            hw.bias.copy_(torch.cat([bt, bc]))  # (2F,)
        self.proj.weight.copy_(torch.from_numpy(weights["CNN_proj/W_proj"]).T)  # (D, F)
        self.proj.bias.copy_(torch.from_numpy(weights["CNN_proj/b_proj"]))

    def export_official(self) -> dict[str, np.ndarray]:
        """The inverse of ``load_official``."""
        out: dict[str, np.ndarray] = {}
        t = lambda x: x.detach().cpu().float().numpy()  # noqa: E731
        out["char_embed"] = t(self.char_embed.weight[1:])
        for i, conv in enumerate(self.convs):
            out[f"CNN/W_cnn_{i}"] = t(conv.weight.permute(2, 1, 0))[None]
            out[f"CNN/b_cnn_{i}"] = t(conv.bias)
        f = self.n_filters
        for k, hw in enumerate(self.highways):
            out[f"CNN_high_{k}/W_transform"] = t(hw.weight[:f].T)
            out[f"CNN_high_{k}/W_carry"] = t(hw.weight[f:].T)
            out[f"CNN_high_{k}/b_transform"] = t(hw.bias[:f])
            out[f"CNN_high_{k}/b_carry"] = t(hw.bias[f:])
        out["CNN_proj/W_proj"] = t(self.proj.weight.T)
        out["CNN_proj/b_proj"] = t(self.proj.bias)
        return out
