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
input-to-gate products are computed a chunk of timesteps at a time into a reused buffer; each step is
one ``addmm`` (gates = input part + h @ W_rec^T, weights used in their [out, in] layout) followed by
in-place activations, and the projection writes straight into the output tensor, so the time loop
allocates nothing. Reduced-precision weight copies are cached per parameter version.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn as nn

from elmo_dist.model.options import LSTMOptions
from elmo_dist.model.weights import lstm_prefix

FORGET_BIAS = 1.0
GATE_ROWS = 1024  # rows (timesteps x batch) per chunk of the input-to-gate product on the fast path


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

    def _weights(self, d: int, cd: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Direction ``d``'s (w_in (4C, D), w_rec (4C, D), w_proj (D, C)) in ``cd`` and its bias (4C,) with
        the forget bias, for the no-grad path. Copies in another dtype are cached per parameter version."""
        bias = self.bias[d] + self.forget_bias  # (4C,)
        ws = (self.w_in[d], self.w_rec[d], self.w_proj[d])
        if cd == self.w_in.dtype:
            return (*ws, bias)
        key = (cd, d) + tuple((p.data_ptr(), p._version) for p in (self.w_in, self.w_rec, self.w_proj))
        cache = self.__dict__.setdefault("_cast_cache", {})
        if cache.get(d, (None,))[0] != key:
            cache[d] = (key, tuple(w.to(cd) for w in ws))
        return (*cache[d][1], bias)

    def run_direction(self, d: int, x: torch.Tensor, batch_sizes: list[int], out: torch.Tensor,
                      compute_dtype: torch.dtype | None = None) -> None:
        """No-grad fast path for one direction: the same math as ``forward``, written into ``out``.

        Args:
            d: 0 forward, 1 backward (which stacked parameters to use).
            x: (T, B, D) time-major input of this direction, rows sorted by length, longest first.
            batch_sizes: T' <= T ints, rows still active at each step (non-increasing).
            out: (T, B, D) zero-filled, contiguous; rows active at step t are written at ``out[t, :b]``.
            compute_dtype: dtype of the matrix multiplies (None = x's dtype); state stays in x's dtype.
        """
        t_max, b_max, p = x.shape
        c = self.c
        cd = compute_dtype or x.dtype
        low = cd != x.dtype
        w_in, w_rec, w_proj, bias = self._weights(d, cd)
        w_in_t, w_rec_t, w_proj_t = w_in.t(), w_rec.t(), w_proj.t()  # (D, 4C), (D, 4C), (C, D) views
        chunk = max(1, min(len(batch_sizes), GATE_ROWS // max(b_max, 1)))  # timesteps per input GEMM
        gin = x.new_empty(chunk, b_max, 4 * c)  # (k, B, 4C) input part of the gates (+ bias)
        z = x.new_empty(b_max, 4 * c)  # (B, 4C) gates of one step
        cell = x.new_zeros(b_max, c)  # (B, C) memory cell
        m = x.new_empty(b_max, c, dtype=cd)  # (B, C) o * tanh(cell), the projection's input
        if low:
            rec = x.new_empty(b_max, 4 * c, dtype=cd)  # (B, 4C) h @ W_rec^T in cd
            h_low = x.new_zeros(b_max, p, dtype=cd)  # (B, D) projected state in cd
        h = x.new_zeros(b_max, p)  # (B, D) projected state
        for t, b in enumerate(batch_sizes):
            k = t % chunk
            if k == 0:  # input-to-gate products of the next `chunk` steps, one GEMM
                n = min(chunk, len(batch_sizes) - t)
                xs = x[t:t + n].reshape(n * b_max, p)  # (n*B, D)
                g = gin[:n].view(n * b_max, 4 * c)  # (n*B, 4C)
                if low:
                    torch.add(bias, torch.mm(xs.to(cd), w_in_t), out=g)
                else:
                    torch.addmm(bias, xs, w_in_t, out=g)
            zb = z[:b]  # (b, 4C)
            if low:
                torch.mm(h_low[:b], w_rec_t, out=rec[:b])
                torch.add(gin[k, :b], rec[:b], out=zb)
            else:
                torch.addmm(gin[k, :b], h[:b], w_rec_t, out=zb)
            i, j, f, o = zb.split(c, dim=-1)  # TF order; (b, C) each
            i.sigmoid_()
            j.tanh_()
            zb[:, 2 * c:].sigmoid_()  # f and o together
            cb = cell[:b]  # (b, C) rows past their end drop out (sorted by length)
            cb.mul_(f).addcmul_(i, j)  # cell = f * cell + i * j
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
                torch.mm(mb, w_proj_t, out=ob)
                if self.proj_clip:
                    ob.clamp_(-self.proj_clip, self.proj_clip)
                h = out[t]  # (B, D) next step reads its first b' <= b rows


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
        fast = x.device.type == "cpu" and not (torch.is_grad_enabled() and self.layers[0].w_rec.requires_grad)
        if fast:
            outputs = self._run_stacks(h, batch_sizes, compute_dtype)
        else:
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

    def _run_stacks(self, h: torch.Tensor, batch_sizes: list[int],
                    compute_dtype: torch.dtype | None) -> list[torch.Tensor]:
        """No-grad CPU path: each direction's whole stack in its own thread (half of torch's threads each).

        Args:
            h: (2, T, B, D) time-major input of both directions, 0 at padding.
        Returns:
            L tensors (2, T, B, D), post-residual, exactly 0 at padding.
        """
        outputs = [torch.zeros_like(h) for _ in self.layers]  # L x (2, T, B, D)

        def stack(d: int) -> None:
            inp = h[d]  # (T, B, D)
            for k, layer in enumerate(self.layers):
                out = outputs[k][d]  # (T, B, D), contiguous
                layer.run_direction(d, inp, batch_sizes, out, compute_dtype)
                if k > 0:
                    out += inp  # skip connection (not part of the recurrence)
                inp = out

        n_threads = torch.get_num_threads()
        if n_threads < 2 or not batch_sizes:
            for d in range(2):
                stack(d)
            return outputs
        errors: list[BaseException] = []
        grad_mode, inference_mode = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def worker(d: int) -> None:
            torch.set_num_threads(n_threads // 2)  # this thread's share; restored for threads made later
            try:
                with torch.inference_mode(inference_mode), torch.set_grad_enabled(grad_mode):
                    stack(d)
            except BaseException as e:  # re-raised in the caller
                errors.append(e)
            finally:
                torch.set_num_threads(n_threads)

        threads = [threading.Thread(target=worker, args=(d,), name=f"elmo-lstm-{d}") for d in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
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
