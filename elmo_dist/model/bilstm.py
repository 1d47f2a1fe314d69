"""ELMo's two independent LSTM stacks (forward LM and backward LM) with projection and clipping.

Both directions run in lock-step, stacked on a leading axis of size 2: the backward direction sees
each sentence reversed within its own length, so one loop over time serves both, with one batched
matrix multiply per step. Input-to-gate products for all timesteps are one matrix multiply per layer.
Sentences are sorted by length and only rows still inside their sentence are computed at a step,
so padding is never fed and never changes a result. Every call starts from a zero state
(stateless), so a sentence's vectors never depend on the batch it is in.

Gate blocks are kept in the file's TF order ``i, j, f, o``; TF's run-time ``forget_bias=1.0`` (not
stored in weights.hdf5) is added to the f block of the bias at run time, as a buffer, so that the
file's bias round-trips bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from elmo_dist.model.options import LSTMOptions
from elmo_dist.model.weights import lstm_prefix

FORGET_BIAS = 1.0


class BiLstmLayer(nn.Module):
    """One layer of both stacks. Parameters are stacked over direction (0 forward, 1 backward)."""

    def __init__(self, p: int, c: int, cell_clip: float | None, proj_clip: float | None):
        super().__init__()
        self.c, self.cell_clip, self.proj_clip = c, cell_clip, proj_clip
        self.w_in = nn.Parameter(torch.zeros(2, 4 * c, p))  # (2, 4C, D) [out, in] layout
        self.w_rec = nn.Parameter(torch.zeros(2, 4 * c, p))  # (2, 4C, D)
        self.bias = nn.Parameter(torch.zeros(2, 4 * c))  # (2, 4C), as stored in the file
        forget = torch.zeros(4 * c)
        forget[2 * c:3 * c] = FORGET_BIAS
        self.register_buffer("forget_bias", forget, persistent=False)  # (4C,)
        self.w_proj = nn.Parameter(torch.zeros(2, p, c))  # (2, D, C)

    def forward(self, x: torch.Tensor, batch_sizes: list[int],
                compute_dtype: torch.dtype | None = None) -> torch.Tensor:
        """
        Args:
            x: (2, T, B, D) time-major input of both directions (backward one reversed per row);
               rows sorted by length, longest first.
            batch_sizes: T ints, rows still active at each step (non-increasing).
            compute_dtype: dtype of the matrix multiplies (None = x's dtype); state stays in x's dtype.
        Returns:
            (2, T, B, D) projected, clipped hidden states; exactly 0 at padded steps.
        """
        _, t_max, b_max, d = x.shape
        c = self.c
        cd = compute_dtype or x.dtype
        w_in, w_rec, w_proj = (w.to(cd) for w in (self.w_in, self.w_rec, self.w_proj))
        w_rec_t = w_rec.transpose(1, 2)  # (2, D, 4C) view of the [out, in] weight
        w_proj_t = w_proj.transpose(1, 2)  # (2, C, D)
        gates_in = torch.matmul(x.to(cd).reshape(2, t_max * b_max, d), w_in.transpose(1, 2))
        gates_in = gates_in.to(x.dtype).view(2, t_max, b_max, 4 * c)  # (2, T, B, 4C)
        bias = self.bias + self.forget_bias  # (2, 4C)
        gates_in = gates_in + bias[:, None, None, :]
        training = torch.is_grad_enabled() and self.w_rec.requires_grad
        out = None if training else x.new_zeros(2, t_max, b_max, d)  # (2, T, B, D)
        steps: list[torch.Tensor] = []  # with autograd: no in-place writes, stack at the end
        h = x.new_zeros(2, b_max, d)  # (2, B, D) projected state
        cell = x.new_zeros(2, b_max, c)  # (2, B, C) memory cell
        gin = gates_in.unbind(1)  # T x (2, B, 4C): per-step views keep autograd's slice cost small
        for t, b in enumerate(batch_sizes):
            h, cell = h[:, :b], cell[:, :b]  # rows past their end drop out (sorted by length)
            rec = torch.bmm(h.to(cd), w_rec_t).to(x.dtype)  # (2, b, 4C)
            z = gin[t][:, :b] + rec  # (2, b, 4C)
            i, j, f, o = z.split(c, dim=-1)  # TF order
            cell = torch.sigmoid(i) * torch.tanh(j) + torch.sigmoid(f) * cell  # (2, b, C)
            if self.cell_clip:
                cell = cell.clamp(-self.cell_clip, self.cell_clip)
            m = torch.sigmoid(o) * torch.tanh(cell)  # (2, b, C)
            h = torch.bmm(m.to(cd), w_proj_t).to(x.dtype)  # (2, b, D)
            if self.proj_clip:
                h = h.clamp(-self.proj_clip, self.proj_clip)
            if training:
                steps.append(torch.nn.functional.pad(h, (0, 0, 0, b_max - b)))
            else:
                out[:, t, :b] = h
        if training:
            out = torch.stack(steps, dim=1) if steps else x.new_zeros(2, 0, b_max, d)
            if out.shape[1] < t_max:
                out = torch.nn.functional.pad(out, (0, 0, 0, 0, 0, t_max - out.shape[1]))
        return out


class BiLstm(nn.Module):
    """L layers of both LM directions; skip connections on every layer above the first."""

    def __init__(self, opts: LSTMOptions):
        super().__init__()
        self.layers = nn.ModuleList(
            BiLstmLayer(opts.projection_dim, opts.dim, opts.cell_clip, opts.proj_clip)
            for _ in range(opts.n_layers)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor,
                compute_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """
        Args:
            x: (B, T, D) token representations, BOS/EOS included, right-padded.
            lengths: (B,) int64 real positions per row (BOS/EOS included).
        Returns:
            L tensors (B, T, 2D): ``[forward, backward]`` outputs of each layer, 0 at padding.
        """
        b_size, t_max, d = x.shape
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
        lens = lengths[order]  # (B,) sorted, longest first
        x = x[order]  # (B, T, D)
        lens_cpu = lens.cpu()
        batch_sizes = [int((lens_cpu > t).sum()) for t in range(t_max)]
        while batch_sizes and batch_sizes[-1] == 0:
            batch_sizes.pop()
        t_used = len(batch_sizes)
        x = x[:, :t_used]
        # Reverse each row within its length: position t of the backward view is len-1-t.
        ar = torch.arange(t_used, device=x.device)  # (T,)
        rev = torch.where(ar[None] < lens[:, None], lens[:, None] - 1 - ar[None], ar[None])  # (B, T)
        x_rev = x.gather(1, rev[..., None].expand(-1, -1, d))  # (B, T, D)
        h = torch.stack([x, x_rev]).transpose(1, 2).contiguous()  # (2, T, B, D) time-major
        valid = (ar[None] < lens[:, None]).T[None, :, :, None].to(x.dtype)  # (1, T, B, 1)
        h = h * valid
        outputs = []
        for k, layer in enumerate(self.layers):
            y = layer(h, batch_sizes, compute_dtype)  # (2, T, B, D)
            if k > 0:
                y = y + h  # skip connection (not part of the recurrence)
            h = y
            outputs.append(y)
        inv = torch.argsort(order)  # (B,) undo the length sort
        results = []
        for y in outputs:
            fwd = y[0].transpose(0, 1)  # (B, T, D)
            bwd = y[1].transpose(0, 1).gather(1, rev[..., None].expand(-1, -1, d))  # (B, T, D)
            both = torch.cat([fwd, bwd], dim=-1)[inv]  # (B, T, 2D)
            if t_used < t_max:
                both = torch.nn.functional.pad(both, (0, 0, 0, t_max - t_used))
            results.append(both)
        return results

    @torch.no_grad()
    def load_official(self, weights: dict[str, np.ndarray]) -> None:
        for k, layer in enumerate(self.layers):
            p = layer.w_proj.shape[1]
            for d in range(2):
                pre = lstm_prefix(d, k)
                w0 = torch.from_numpy(weights[f"{pre}/W_0"])  # (2D, 4C): rows [input; state]
                layer.w_in[d].copy_(w0[:p].T)  # (4C, D)
                layer.w_rec[d].copy_(w0[p:].T)  # (4C, D)
                layer.bias[d].copy_(torch.from_numpy(weights[f"{pre}/B"]))  # (4C,)
                layer.w_proj[d].copy_(torch.from_numpy(weights[f"{pre}/W_P_0"]).T)  # (D, C)

    def export_official(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for k, layer in enumerate(self.layers):
            for d in range(2):
                pre = lstm_prefix(d, k)
                w0 = torch.cat([layer.w_in[d].T, layer.w_rec[d].T])  # (2D, 4C)
                out[f"{pre}/W_0"] = w0.detach().cpu().float().numpy()
                out[f"{pre}/B"] = layer.bias[d].detach().cpu().float().numpy()
                out[f"{pre}/W_P_0"] = layer.w_proj[d].T.detach().cpu().float().numpy()
        return out
