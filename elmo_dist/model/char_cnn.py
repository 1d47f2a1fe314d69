"""Token encoder of ELMo: character embedding -> CNN (max-pool, then activation) -> highway -> projection.

Works on distinct tokens only: the caller passes the character ids of each distinct token once and
gathers the vectors back into sentences. Characters are trimmed to the width that can change the
result (see ``trimmed_width``), which is exact: windows lying wholly in the padding region give the
same value for every token, and at least one such window is always kept where the full width has one.

Without autograd on CPU a faster route computes the same function (docs/performance.md): tokens are
sorted by length and cut into blocks, each block trimmed to its own longest token; all filters become
one matrix (taps beyond a filter's width are zero) applied to every window position of the block by
one GEMM per position with a running max (positions a filter does not reach are left out), and the
blocks run on parallel threads (``run_parallel``), highway and projection included.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from elmo_dist.model.options import CharCNNOptions
from elmo_dist.model.threads import run_parallel
from elmo_dist.text.chars import N_CHARS, PAD_CHAR, W

BLOCK = 256  # distinct tokens per block on the fast path
GROUP_SHARES = (0.5, 0.9)  # autograd path: length groups cut at these quantiles of token length
MIN_GROUP = 64  # tokens; smaller groups join a neighbour


def trimmed_width(char_ids: torch.Tensor, max_filter_width: int) -> int:
    """Smallest character width that gives exactly the same CNN output as the full 50.

    Args:
        char_ids: (U, W) shifted character ids.
    """
    if char_ids.shape[0] == 0:
        return W
    used = (char_ids != PAD_CHAR).sum(dim=1).max().item()  # longest token incl. BOW/EOW
    return int(min(W, used + max_filter_width))


def length_groups(char_ids: torch.Tensor, shares: tuple[float, ...] = GROUP_SHARES) -> list[torch.Tensor]:
    """Distinct tokens split into groups of similar length (index tensors, shortest group first), so
    each group's convolution is trimmed to its own longest token: on English text the batch's longest
    token sets the width of all (~3x the median token's). The cuts are at the ``shares`` quantiles of
    the sorted lengths; groups under ``MIN_GROUP`` tokens join their neighbour. Exact: a token's output
    and gradients do not depend on the width it is trimmed to (see ``trimmed_width``)."""
    u = char_ids.shape[0]
    if u < 2 * MIN_GROUP:
        return [torch.arange(u, device=char_ids.device)]
    used = (char_ids != PAD_CHAR).sum(dim=1)  # (U,) chars incl. BOW/EOW
    order = torch.argsort(used, stable=True)  # (U,) shortest first
    cuts = sorted({min(u, max(MIN_GROUP, int(q * u))) for q in shares} | {u})
    groups, start = [], 0
    for end in cuts:
        if end - start >= MIN_GROUP or end == u:
            groups.append(order[start:end])
            start = end
    if len(groups) > 1 and groups[-1].shape[0] < MIN_GROUP:
        groups[-2:] = [torch.cat(groups[-2:])]
    return groups


class CharCNN(nn.Module):
    """char ids (U, W) -> token vectors (U, D)."""

    group_shares = GROUP_SHARES  # autograd route: length-group cuts (``length_groups``); () = one group

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
        if char_ids.device.type == "cpu" and not (torch.is_grad_enabled() and self.proj.weight.requires_grad):
            return self._forward_fast(char_ids)
        groups = length_groups(char_ids, self.group_shares)
        if len(groups) == 1:
            h = self._conv_pool(char_ids)  # (U, F)
        else:  # each group trimmed to its own longest token, then put back in order
            order = torch.cat(groups)  # (U,)
            h = torch.cat([self._conv_pool(char_ids[g]) for g in groups])  # (U, F) in `order`
            h = h[torch.argsort(order)]  # (U, F)
        for hw in self.highways:
            a, t = hw(h).chunk(2, dim=-1)  # (U, F), (U, F)
            t = torch.sigmoid(t)  # transform gate: selects the non-linear branch
            h = t * F.relu(a) + (1.0 - t) * h  # (U, F); highway is always relu
        return self.proj(h)  # (U, D)

    def _conv_pool(self, char_ids: torch.Tensor) -> torch.Tensor:
        """(U, W) char ids -> (U, F) max-pooled, activated filter outputs, trimmed to these tokens' width."""
        width = trimmed_width(char_ids, max(self.widths))
        x = self.char_embed(char_ids[:, :width])  # (U, W') -> (U, W', E)
        x = x.transpose(1, 2)  # (U, E, W')
        pooled = []
        for conv in self.convs:
            y = conv(x)  # (U, n_i, W' - w_i + 1)
            y = y.max(dim=-1).values  # (U, n_i): max over positions first ...
            pooled.append(self.activation(y))  # ... then the activation
        return torch.cat(pooled, dim=-1)  # (U, F)

    def _forward_fast(self, char_ids: torch.Tensor) -> torch.Tensor:
        """The no-grad CPU route of ``forward``: (U, W) char ids -> (U, D), same function."""
        u = char_ids.shape[0]
        out = self.proj.weight.new_empty(u, self.proj.out_features)  # (U, D)
        if u == 0:
            return out
        wmax, e, f = max(self.widths), self.char_embed.embedding_dim, self.n_filters
        # All filters as one [out, in] matrix over windows of wmax chars: (F, wmax*E), zero taps past w_i.
        w_all = self.proj.weight.new_zeros(f, wmax, e)  # (F, wmax, E)
        col, ncols = 0, []  # ncols[k] = filter columns reaching at most k chars (filters sorted by width)
        for conv, w in zip(self.convs, self.widths):
            w_all[col:col + conv.out_channels, :w] = conv.weight.transpose(1, 2)  # (n_i, w_i, E)
            col += conv.out_channels
        w_all = w_all.view(f, wmax * e)  # (F, wmax*E)
        b_all = torch.cat([conv.bias for conv in self.convs])  # (F,)
        order_w = sorted(range(len(self.widths)), key=lambda i: self.widths[i])
        sizes = [self.convs[i].out_channels for i in range(len(self.convs))]
        contiguous_prefix = order_w == list(range(len(self.widths)))
        for k in range(wmax + 1):
            ncols.append(sum(n for n, w in zip(sizes, self.widths) if w <= k) if contiguous_prefix else -1)
        used = (char_ids != PAD_CHAR).sum(dim=1)  # (U,) chars incl. BOW/EOW
        order = torch.argsort(used, stable=True)  # (U,) shortest first: blocks of similar width
        used_sorted = used[order].tolist()

        def block(start: int) -> None:
            idx = order[start:start + BLOCK]  # (n,)
            n = idx.shape[0]
            width = int(min(W, used_sorted[start + n - 1] + wmax))  # this block's trimmed width
            ids = torch.nn.functional.pad(char_ids[idx, :width], (0, wmax - 1), value=PAD_CHAR)  # (n, W'+wmax-1)
            x = self.char_embed(ids)  # (n, W'+wmax-1, E)
            win = x.as_strided((n, width, wmax * e), (x.stride(0), e, 1))  # (n, W', wmax*E) windows, a view
            if contiguous_prefix:
                h = torch.mm(win[:, 0], w_all.t())  # (n, F): position 0 (every filter reaches it)
                for p in range(1, width):
                    k = ncols[min(width - p, wmax)]  # filters whose window still fits at position p
                    y = torch.mm(win[:, p], w_all[:k].t())  # (n, k)
                    torch.maximum(h[:, :k], y, out=h[:, :k])
            else:  # filters not sorted by width: plain per-filter max over its valid positions
                y = torch.matmul(win, w_all.t())  # (n, W', F)
                parts, col = [], 0
                for conv, w in zip(self.convs, self.widths):
                    parts.append(y[:, : width - w + 1, col:col + conv.out_channels].amax(dim=1))
                    col += conv.out_channels
                h = torch.cat(parts, dim=-1)  # (n, F)
            h = self.activation(h.add_(b_all))  # (n, F): max first, then the activation
            for hw in self.highways:
                g = torch.addmm(hw.bias, h, hw.weight.t())  # (n, 2F): [transform | gate]
                a, t = g[:, :f].relu_(), g[:, f:].sigmoid_()  # (n, F), (n, F)
                carry = torch.rsub(t, 1.0).mul_(h)  # (1 - t) * h
                h = a.mul_(t).add_(carry)  # t * relu(a) + (1 - t) * h, rounded as written
            out[idx] = torch.addmm(self.proj.bias, h, self.proj.weight.t())  # (n, D)

        run_parallel([lambda s=s: block(s) for s in range(0, u, BLOCK)])
        return out

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
