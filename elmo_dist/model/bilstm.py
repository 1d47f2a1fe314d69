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

Inference on CPU (no autograd) takes a faster route with the same math (docs/performance.md): the two
directions are independent stacks, so each runs all its layers in its own thread with half of torch's
threads (no lock-step barrier per op, which also keeps a shared machine from stalling both); the
first layer's input-to-gate products are computed once per distinct input row (the input is token
vectors, which repeat) and gathered, the other layers' a chunk of timesteps at a time; each step is
one ``addmm`` (gates = input part + h @ W_rec^T, weights used in their [out, in] layout) followed by
in-place activations, and the projection writes straight into the output tensor, so the time loop
allocates nothing. Reduced-precision weight copies are cached per parameter version.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from elmo_dist.model.options import LSTMOptions
from elmo_dist.model.threads import run_parallel
from elmo_dist.model.weights import lstm_prefix

FORGET_BIAS = 1.0
GATE_ROWS = 1024  # rows (timesteps x batch) per chunk of the input-to-gate product on the fast path


LOW_IN_OUT = True  # keep reduced-precision weight copies in [in, out] memory layout
MKL_PACK = True  # use MKL's packed GEMM for the per-step products when this torch has it


def _mkl_pack(weights: Sequence[torch.Tensor], rows: int) -> list[torch.Tensor] | None:
    """MKL-packed copies of [out, in] fp32 CPU weights for products with ``rows``-row inputs, or None.

    A per-step product re-packs its weight on every call otherwise; packing once per batch is ~25%
    faster for the skinny recurrent products. Uses torch's (private) MKL ops, so any failure means None
    and the caller keeps plain ``addmm``/``mm`` (same results: the same MKL kernels compute them).
    """
    if not MKL_PACK or rows < 1 or not torch.backends.mkl.is_available():
        return None
    if any(w.dtype != torch.float32 or w.device.type != "cpu" for w in weights):
        return None
    try:
        return [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in weights]
    except (AttributeError, RuntimeError):
        return None


def _distinct_rows(x: torch.Tensor, max_share: float = 0.75) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The distinct rows of x (..., D) and the index of each row, or None if fewer than
    ``1 - max_share`` of the rows repeat.

    Rows are grouped by a float64 fingerprint (a fixed random projection) and the grouping is then
    verified exactly; any fingerprint collision gives None, so a caller can always fall back.
    Returns:
        ((U, D) distinct rows, (...) int64 index into them).
    """
    d = x.shape[-1]
    flat = x.reshape(-1, d)  # (N, D)
    n = flat.shape[0]
    if n == 0:
        return None
    probe = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (D,)
    keys, inverse = torch.unique(flat.to(torch.float64) @ probe.to(flat.device), return_inverse=True)
    u = keys.shape[0]
    if u > max_share * n:
        return None
    first = torch.empty(u, dtype=torch.int64, device=flat.device)
    first.scatter_(0, inverse, torch.arange(n, device=flat.device))  # (U,) one row of each group
    rows = flat[first]  # (U, D)
    if not torch.equal(rows[inverse], flat):  # a collision: two different rows, one fingerprint
        return None
    return rows, inverse.view(x.shape[:-1])


def _tanh(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """tanh(x) written into ``out``, as 2 sigmoid(2x) - 1 (scaling by 2 is exact): this CPU build's tanh
    runs ~5x slower than its sigmoid. The training layer computes the j gate the same way, its rows of
    the weights and bias doubled so that one sigmoid covers all four gates."""
    return torch.mul(x, 2, out=out).sigmoid_().mul_(2).sub_(1)


class _LayerFunction(torch.autograd.Function):
    """One layer of both directions for training, with a hand-written backward through time.

    Autograd over the per-step loop records ~15 small ops per step and replays them one by one;
    this function saves only each step's GEMM operand ``[x_t | h_{t-1}]``, gate activations, cell,
    ``tanh(cell)`` and ``o * tanh(cell)``, runs the backward as one loop of in-place ops (ATen's fused
    ``sigmoid_backward`` / ``tanh_backward`` / ``hardtanh_backward`` for the activations and clips) and
    every weight gradient as one GEMM over all steps. Each step's gates are one GEMM,
    ``[x_t | h_{t-1}] @ [W_in | W_rec]^T`` (K = 2D), so no (T, B, 4C) input-to-gate product is made,
    cast and biased in a separate pass. The two directions are independent, so each runs on its own
    thread (``run_parallel``), as on the inference path. Matrix products run in ``cd`` (their operands
    are kept in ``cd``: no cast per use); state, activations and the gate arithmetic stay in x's dtype.
    Same math as ``BiLstmLayer.forward`` under autograd (tests compare outputs and gradients in
    float64); a clamp's gradient passes where the clamped value is strictly inside the bounds. Padded
    steps are never computed: their outputs and gradients are 0.

    forward(x (2, T, B, D), w_in (2, 4C, D), bias (2, 4C) incl. the forget bias, w_rec (2, 4C, D),
            w_proj (2, D, C), batch_sizes, cell_clip, proj_clip, cd) -> (2, T, B, D)
    """

    @staticmethod
    def forward(ctx, x, w_in, bias, w_rec, w_proj, batch_sizes, cell_clip, proj_clip, cd):
        two, t_max, b_max, p = x.shape
        c4 = w_in.shape[1]
        c, dt = c4 // 4, x.dtype
        xh = x.new_zeros(two, t_max, b_max, 2 * p, dtype=cd)  # (2, T, B, 2D) [x_t | h_{t-1}], h_{-1} = 0
        xh[..., :p].copy_(x)
        act = x.new_empty(two, t_max, b_max, c4)  # (2, T, B, 4C) sigmoid(i), tanh(j), sigmoid(f), sigmoid(o)
        cells = x.new_empty(two, t_max + 1, b_max, c)  # (2, T+1, B, C) cells[:, t+1] = c_t
        cells[:, 0].zero_()
        tanh_c = x.new_empty(two, t_max, b_max, c)  # (2, T, B, C) tanh(c_t), for the backward
        m_all = x.new_empty(two, t_max, b_max, c, dtype=cd)  # (2, T, B, C) o * tanh(c_t)
        out = x.new_empty(two, t_max, b_max, p)  # (2, T, B, D)
        pad = _padded(batch_sizes, t_max, b_max)
        t_used = len(batch_sizes)

        def direction(d: int) -> None:
            # [W_in | W_rec] as one (4C, 2D) operand and the bias, the j block doubled (exact, a power of
            # 2): its activation is then tanh(z) = 2 sigmoid(2z) - 1 from one sigmoid over the whole row.
            w = torch.cat([w_in[d], w_rec[d]], dim=1)  # (4C, 2D)
            w[c:2 * c] *= 2
            w_t = w.to(cd).t()  # (2D, 4C) view of the [out, in] operand
            b2 = bias[d].clone()  # (4C,)
            b2[c:2 * c] *= 2
            w_proj_t = w_proj[d].to(cd).t()  # (C, D)
            for t, b in pad:  # padded rows: never computed, 0 in the output and the saved products
                out[d, t, b:].zero_()
                m_all[d, t, b:].zero_()
            m32 = x.new_empty(b_max, c)  # (B, C) o * tanh(c_t) before its cast to cd
            for t, b in enumerate(batch_sizes):
                z = act[d, t, :b]  # (b, 4C)
                if cd == dt:
                    torch.addmm(b2, xh[d, t, :b], w_t, out=z)
                else:
                    z.copy_(torch.mm(xh[d, t, :b], w_t)).add_(b2)
                z.sigmoid_()
                i, j, f, o = z.split(c, dim=-1)
                j.mul_(2).sub_(1)  # tanh of the (undoubled) pre-activation
                cell = cells[d, t + 1, :b]  # (b, C)
                torch.mul(f, cells[d, t, :b], out=cell).addcmul_(i, j)
                if cell_clip:
                    cell.clamp_(-cell_clip, cell_clip)
                tc = _tanh(cell, out=tanh_c[d, t, :b])  # (b, C)
                m = m_all[d, t, :b]  # (b, C)
                if cd == dt:
                    torch.mul(tc, o, out=m)
                else:
                    m.copy_(torch.mul(tc, o, out=m32[:b]))
                h = torch.mm(m, w_proj_t)  # (b, D) in cd
                if proj_clip:
                    h.clamp_(-proj_clip, proj_clip)
                out[d, t, :b] = h
                if t + 1 < t_used:
                    nb = batch_sizes[t + 1]
                    xh[d, t + 1, :nb, p:] = h[:nb]

        run_parallel([lambda d=d: direction(d) for d in range(two)])
        ctx.save_for_backward(xh, act, cells, tanh_c, m_all, out, w_in, w_rec, w_proj)
        ctx.meta = (batch_sizes, cell_clip, proj_clip, cd, dt)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xh, act, cells, tanh_c, m_all, out, w_in, w_rec, w_proj = ctx.saved_tensors
        batch_sizes, cell_clip, proj_clip, cd, dt = ctx.meta
        two, t_max, b_max, c4 = act.shape
        c, p, n, t_used = c4 // 4, out.shape[-1], t_max * b_max, len(batch_sizes)
        aten = torch.ops.aten
        grad_out = grad_out.contiguous()
        g_x = out.new_empty(two, t_max, b_max, p)
        g_in, g_rec, g_proj = torch.empty_like(w_in), torch.empty_like(w_rec), torch.empty_like(w_proj)
        g_bias = act.new_zeros(two, c4)
        pad = _padded(batch_sizes, t_max, b_max)

        def direction(d: int) -> None:
            w_in_c, w_rec_c, w_proj_c = w_in[d].to(cd), w_rec[d].to(cd), w_proj[d].to(cd)
            d_gates = act.new_empty(t_max, b_max, c4, dtype=cd)  # (T, B, 4C) gate gradients, GEMM operand
            d_hraw = out.new_empty(t_max, b_max, p, dtype=cd)  # (T, B, D) at the projection's output
            for t, b in pad:  # padded rows: no gradient
                d_gates[t, b:].zero_()
                d_hraw[t, b:].zero_()
            dz = act.new_empty(b_max, c4)  # (B, 4C) this step's gate gradients, in dt
            tmp = act.new_empty(b_max, c)  # (B, C) scratch
            dh = out.new_zeros(b_max, p, dtype=cd)  # (B, D) from step t+1 through W_rec
            dc = act.new_zeros(b_max, c)  # (B, C) from step t+1 through the cell
            gb = g_bias[d]
            for t in range(t_used - 1, -1, -1):
                b = batch_sizes[t]
                hr = d_hraw[t, :b]  # (b, D)
                if proj_clip:  # the clamp's gradient: 0 where the output sits on a bound
                    aten.hardtanh_backward.grad_input(torch.add(grad_out[d, t, :b], dh[:b]), out[d, t, :b],
                                                      -proj_clip, proj_clip, grad_input=hr)
                else:
                    torch.add(grad_out[d, t, :b], dh[:b], out=hr)
                dm = torch.mm(hr, w_proj_c)  # (b, C) in cd
                if cd != dt:
                    dm = dm.to(dt)  # once, not in each of the mixed-dtype products below
                i, j, f, o = act[d, t, :b].split(c, dim=-1)
                tc, prev = tanh_c[d, t, :b], cells[d, t, :b]  # tanh(c_t), c_{t-1}
                z = d_gates[t, :b] if cd == dt else dz[:b]  # (b, 4C)
                dz_i, dz_j, dz_f, dz_o = z.split(c, dim=-1)
                s = tmp[:b]
                aten.sigmoid_backward.grad_input(torch.mul(dm, tc, out=s), o, grad_input=dz_o)  # dm tanh(c) o(1-o)
                dcb = dc[:b]
                dcb.add_(aten.tanh_backward.grad_input(torch.mul(dm, o, out=s), tc, grad_input=s))  # dm o (1-tanh^2)
                if cell_clip:
                    aten.hardtanh_backward.grad_input(dcb, cells[d, t + 1, :b], -cell_clip, cell_clip,
                                                      grad_input=dcb)
                aten.sigmoid_backward.grad_input(torch.mul(dcb, j, out=s), i, grad_input=dz_i)  # dc j i(1-i)
                aten.tanh_backward.grad_input(torch.mul(dcb, i, out=s), j, grad_input=dz_j)  # dc i (1-j^2)
                aten.sigmoid_backward.grad_input(torch.mul(dcb, prev, out=s), f, grad_input=dz_f)  # dc c_{t-1} f(1-f)
                dcb.mul_(f)
                gb.add_(z.sum(0))
                if cd != dt:
                    d_gates[t, :b].copy_(z)
                torch.mm(d_gates[t, :b], w_rec_c, out=dh[:b])  # (b, D)
            dg = d_gates.view(n, c4)
            g_cat = torch.mm(dg.t(), xh[d].view(n, 2 * p))  # (4C, 2D): [dW_in | dW_rec]
            g_in[d], g_rec[d] = g_cat[:, :p], g_cat[:, p:]
            g_proj[d] = torch.mm(d_hraw.view(n, p).t(), m_all[d].view(n, c))  # (D, C)
            g_x[d].view(n, p).copy_(torch.mm(dg, w_in_c))  # (T*B, D)

        run_parallel([lambda d=d: direction(d) for d in range(two)])
        return g_x, g_in, g_bias, g_rec, g_proj, None, None, None, None


def _padded(batch_sizes: list[int], t_max: int, b_max: int) -> list[tuple[int, int]]:
    """(t, b): steps with padded rows and the first such row (steps past the longest row: 0)."""
    return [(t, b) for t, b in enumerate(batch_sizes) if b < b_max] + \
           [(t, 0) for t in range(len(batch_sizes), t_max)]


class BiLstmLayer(nn.Module):
    """One layer of both stacks. Parameters are stacked over direction (0 forward, 1 backward)."""

    fused_backward = True  # training: the layer as one autograd op (_LayerFunction), not per-step autograd
    in_place = True  # no grad: the in-place step loop (_forward_in_place), not the autograd loop

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
        training = torch.is_grad_enabled() and self.w_rec.requires_grad
        if training and self.fused_backward:
            return _LayerFunction.apply(x, self.w_in, self.bias + self.forget_bias, self.w_rec, self.w_proj,
                                        list(batch_sizes), self.cell_clip, self.proj_clip, cd)
        if not training and self.in_place:
            return self._forward_in_place(x, batch_sizes, cd)
        gates_in = torch.matmul(x.to(cd).reshape(2, t_max * b_max, d), w_in.transpose(1, 2))
        gates_in = gates_in.to(x.dtype).view(2, t_max, b_max, 4 * c)  # (2, T, B, 4C)
        bias = self.bias + self.forget_bias  # (2, 4C)
        gates_in = gates_in + bias[:, None, None, :]
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

    def _forward_in_place(self, x: torch.Tensor, batch_sizes: list[int], cd: torch.dtype) -> torch.Tensor:
        """No-grad route on any device (CUDA inference): ``forward``'s math with both directions in each
        kernel, activations and the cell update in place, the projection written straight into the
        output: 11 kernels per step in fp32 (16 with reduced-precision products) where the autograd
        loop launches 15 (19), and nothing is allocated inside the loop. Rounded as the loop rounds, except
        that the recurrent product is accumulated onto the gates by the GEMM itself (fp32).

        Args / Returns: as ``forward``.
        """
        two, t_max, b_max, d = x.shape
        c = self.c
        low = cd != x.dtype
        w_in, w_rec, w_proj = (w.to(cd) for w in (self.w_in, self.w_rec, self.w_proj))
        w_rec_t, w_proj_t = w_rec.transpose(1, 2), w_proj.transpose(1, 2)  # (2, D, 4C), (2, C, D)
        gates = torch.bmm(x.to(cd).reshape(two, t_max * b_max, d), w_in.transpose(1, 2))  # (2, T*B, 4C)
        gates = gates.to(x.dtype).add_((self.bias + self.forget_bias)[:, None, :]).view(two, t_max, b_max, 4 * c)
        out = x.new_zeros(two, t_max, b_max, d)  # (2, T, B, D)
        cell = x.new_zeros(two, b_max, c)  # (2, B, C)
        buf = x.new_empty(two, b_max, c)  # (2, B, C) tanh(j), then i * tanh(j), then o * tanh(cell)
        h = x.new_zeros(two, b_max, d)  # (2, B, D) projected state
        for t, b in enumerate(batch_sizes):
            z = gates[:, t, :b]  # (2, b, 4C) input part + bias; the recurrent part is added in place
            if low:
                z.add_(torch.bmm(h[:, :b].to(cd), w_rec_t))
            else:
                z.baddbmm_(h[:, :b], w_rec_t)
            j = torch.tanh(z[..., c:2 * c], out=buf[:, :b])  # (2, b, C)
            z.sigmoid_()  # i, f, o (the j block is not read again)
            i, _, f, o = z.split(c, dim=-1)
            cb = cell[:, :b]  # (2, b, C) rows past their end drop out (sorted by length)
            cb.mul_(f).add_(j.mul_(i))  # cell = i * tanh(j) + f * cell, each product rounded as written
            if self.cell_clip:
                cb.clamp_(-self.cell_clip, self.cell_clip)
            m = torch.tanh(cb, out=buf[:, :b]).mul_(o)  # (2, b, C)
            ob = out[:, t, :b]  # (2, b, D)
            if low:
                ob.copy_(torch.bmm(m.to(cd), w_proj_t))
            else:
                torch.bmm(m, w_proj_t, out=ob)
            if self.proj_clip:
                ob.clamp_(-self.proj_clip, self.proj_clip)
            h = out[:, t]  # (2, B, D) the next step reads its first b' <= b rows
        return out

    def _weights(self, d: int, cd: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Direction ``d``'s (w_in (4C, D), w_rec (4C, D), w_proj (D, C)) in ``cd`` and its bias (4C,) with
        the forget bias, for the no-grad path. Copies in another dtype are cached per parameter version."""
        bias = self.bias[d] + self.forget_bias  # (4C,)
        ws = (self.w_in[d], self.w_rec[d], self.w_proj[d])
        if cd == self.w_in.dtype:
            return (*ws, bias)
        key = (cd, d, LOW_IN_OUT) + tuple((p.data_ptr(), p._version) for p in (self.w_in, self.w_rec, self.w_proj))
        cache = self.__dict__.setdefault("_cast_cache", {})
        if cache.get(d, (None,))[0] != key:
            # Stored [in, out] (returned as a transposed view of that): oneDNN's bf16 GEMM then skips a
            # per-call weight reorder.
            cast = (w.to(cd).t().contiguous().t() if LOW_IN_OUT else w.to(cd) for w in ws)
            cache[d] = (key, tuple(cast))
        return (*cache[d][1], bias)

    def run_direction(self, d: int, x: torch.Tensor, batch_sizes: list[int], out: torch.Tensor,
                      compute_dtype: torch.dtype | None = None,
                      distinct: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """No-grad fast path for one direction: the same math as ``forward``, written into ``out``.

        Args:
            d: 0 forward, 1 backward (which stacked parameters to use).
            x: (T, B, D) time-major input of this direction, rows sorted by length, longest first.
            batch_sizes: T' <= T ints, rows still active at each step (non-increasing).
            out: (T, B, D) zero-filled, contiguous; rows active at step t are written at ``out[t, :b]``.
            compute_dtype: dtype of the matrix multiplies (None = x's dtype); state stays in x's dtype.
            distinct: optional ((U, D) distinct rows of x, (T, B) int64 row of each position): the
                input-to-gate products are then computed once per distinct row and gathered.
        """
        t_max, b_max, p = x.shape
        c = self.c
        cd = compute_dtype or x.dtype
        low = cd != x.dtype
        w_in, w_rec, w_proj, bias = self._weights(d, cd)
        w_in_t, w_rec_t, w_proj_t = w_in.t(), w_rec.t(), w_proj.t()  # (D, 4C), (D, 4C), (C, D) views
        if distinct is not None:
            xu, index = distinct  # (U, D), (T, B)
            if low:
                gates_u = torch.add(bias, torch.mm(xu.to(cd), w_in_t))  # (U, 4C)
            else:
                gates_u = torch.addmm(bias, xu, w_in_t)  # (U, 4C)
            chunk = 1
        else:
            chunk = max(1, min(len(batch_sizes), GATE_ROWS // max(b_max, 1)))  # timesteps per input GEMM
        gin = x.new_empty(chunk, b_max, 4 * c)  # (k, B, 4C) input part of the gates (+ bias)
        cell = x.new_zeros(b_max, c)  # (B, C) memory cell
        m = x.new_zeros(b_max, c, dtype=cd)  # (B, C) o * tanh(cell), the projection's input
        b0 = batch_sizes[0] if batch_sizes else 0
        packed = None if low else _mkl_pack((w_rec, w_proj), b0)  # weights packed for b0-row products
        if low:
            rec = x.new_empty(b_max, 4 * c, dtype=cd)  # (B, 4C) h @ W_rec^T in cd
            h_low = x.new_zeros(b_max, p, dtype=cd)  # (B, D) projected state in cd
        h = x.new_zeros(b_max, p)  # (B, D) projected state
        for t, b in enumerate(batch_sizes):
            k = t % chunk
            if distinct is not None:
                torch.index_select(gates_u, 0, index[t, :b], out=gin[0, :b])  # (b, 4C)
            elif k == 0:  # input-to-gate products of the next `chunk` steps, one GEMM
                n = min(chunk, len(batch_sizes) - t)
                xs = x[t:t + n].reshape(n * b_max, p)  # (n*B, D)
                g = gin[:n].view(n * b_max, 4 * c)  # (n*B, 4C)
                if low:
                    torch.add(bias, torch.mm(xs.to(cd), w_in_t), out=g)
                else:
                    torch.addmm(bias, xs, w_in_t, out=g)
            zb = gin[k, :b]  # (b, 4C) the gates, accumulated in place over the input part (used once)
            if low:
                zb.add_(torch.mm(h_low[:b], w_rec_t, out=rec[:b]))
            elif packed is not None:  # all b0 rows (rows past b hold finite stale state), keep b
                zb.add_(torch.ops.mkl._mkl_linear(h[:b0], packed[0], w_rec, None, b0)[:b])
            else:
                zb.addmm_(h[:b], w_rec_t)
            i, j, f, o = zb.split(c, dim=-1)  # TF order; (b, C) each
            i.sigmoid_()
            j.tanh_()
            zb[:, 2 * c:].sigmoid_()  # f and o together
            cb = cell[:b]  # (b, C) rows past their end drop out (sorted by length)
            ij = torch.mul(i, j, out=m[:b]) if not low else i * j  # (b, C)
            cb.mul_(f).add_(ij)  # cell = i * j + f * cell, rounded as written
            if self.cell_clip:
                cb.clamp_(-self.cell_clip, self.cell_clip)
            mb = m[:b]  # (b, C)
            if low:
                torch.mul(torch.tanh(cb), o, out=mb)
                hb = h_low[:b]  # (b, D)
                torch.mm(mb, w_proj_t, out=hb)
                if self.proj_clip:
                    hb.clamp_(-self.proj_clip, self.proj_clip)
                out[t, :b].copy_(hb)
            else:
                torch.tanh(cb, out=mb)
                mb.mul_(o)
                ob = out[t, :b]  # (b, D), contiguous
                if packed is not None:
                    ob.copy_(torch.ops.mkl._mkl_linear(m[:b0], packed[1], w_proj, None, b0)[:b])
                else:
                    torch.mm(mb, w_proj_t, out=ob)
                if self.proj_clip:
                    ob.clamp_(-self.proj_clip, self.proj_clip)
                h = out[t]  # (B, D) next step reads its first b' <= b rows


class BiLstm(nn.Module):
    """L layers of both LM directions; skip connections on every layer above the first."""

    cpu_fast_path = True  # no grad on CPU: each direction's stack on its own thread (_run_stacks)

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
        h, order, lens, batch_sizes = self.time_major(x, lengths)  # (2, T', B, D)
        t_used = len(batch_sizes)
        ar = torch.arange(t_used, device=x.device)  # (T',)
        rev = torch.where(ar[None] < lens[:, None], lens[:, None] - 1 - ar[None], ar[None])  # (B, T')
        fast = self.cpu_fast_path and x.device.type == "cpu" and not (
            torch.is_grad_enabled() and self.layers[0].w_rec.requires_grad)
        if fast:
            outputs = self._run_stacks(h, batch_sizes, compute_dtype)
        else:
            outputs = self.run_layers(h, batch_sizes, compute_dtype)
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

    @staticmethod
    def time_major(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """The layers' input layout: rows sorted by length, time-major, the backward direction reversed
        within each row's length.

        Args:
            x: (B, T, D) right-padded; lengths: (B,) int64.
        Returns:
            h (2, T', B, D) (T' = longest length, 0 at padding), order (B,) the sort (h's row r is
            x's row order[r]), lens (B,) sorted lengths, batch_sizes (T' ints, rows active per step).
        """
        d = x.shape[-1]
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
        lens = lengths[order]  # (B,) sorted, longest first
        lens_cpu = lens.cpu()
        batch_sizes = [int((lens_cpu > t).sum()) for t in range(x.shape[1])]
        while batch_sizes and batch_sizes[-1] == 0:
            batch_sizes.pop()
        t_used = len(batch_sizes)
        x = x[order, :t_used]  # (B, T', D)
        # Reverse each row within its length: position t of the backward view is len-1-t.
        ar = torch.arange(t_used, device=x.device)  # (T',)
        rev = torch.where(ar[None] < lens[:, None], lens[:, None] - 1 - ar[None], ar[None])  # (B, T')
        x_rev = x.gather(1, rev[..., None].expand(-1, -1, d))  # (B, T', D)
        h = torch.stack([x, x_rev]).transpose(1, 2).contiguous()  # (2, T', B, D) time-major
        valid = (ar[None] < lens[:, None]).T[None, :, :, None].to(x.dtype)  # (1, T', B, 1)
        return h * valid, order, lens, batch_sizes

    def run_layers(self, h: torch.Tensor, batch_sizes: list[int],
                   compute_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Every layer on the time-major layout (any device, autograd or not).

        Args:
            h: (2, T, B, D) from ``time_major``.
        Returns:
            L tensors (2, T, B, D), post-residual, exactly 0 at padding.
        """
        outputs = []
        for k, layer in enumerate(self.layers):
            y = layer(h, batch_sizes, compute_dtype)  # (2, T, B, D)
            if k > 0:
                y = y + h  # skip connection (not part of the recurrence)
            h = y
            outputs.append(y)
        return outputs

    def _run_stacks(self, h: torch.Tensor, batch_sizes: list[int],
                    compute_dtype: torch.dtype | None) -> list[torch.Tensor]:
        """No-grad CPU path: each direction's whole stack in its own thread (half of torch's threads each).

        Args:
            h: (2, T, B, D) time-major input of both directions, 0 at padding.
        Returns:
            L tensors (2, T, B, D), post-residual, exactly 0 at padding.
        """
        outputs = [torch.zeros_like(h) for _ in self.layers]  # L x (2, T, B, D)
        distinct = _distinct_rows(h)  # layer 0's input repeats (token vectors): gates once per row

        def stack(d: int) -> None:
            inp = h[d]  # (T, B, D)
            for k, layer in enumerate(self.layers):
                out = outputs[k][d]  # (T, B, D), contiguous
                rows = (distinct[0], distinct[1][d]) if distinct is not None and k == 0 else None
                layer.run_direction(d, inp, batch_sizes, out, compute_dtype, rows)
                if k > 0:
                    out += inp  # skip connection (not part of the recurrence)
                inp = out

        run_parallel([lambda d=d: stack(d) for d in range(2)])
        return outputs

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
