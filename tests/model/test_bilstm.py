"""The training recurrence (one autograd op with a hand-written backward through time) against autograd
over the per-step loop: same outputs and gradients, with clipping and ragged batches."""

import pytest
import torch

from elmo_dist.model.bilstm import BiLstmLayer


def _outputs_and_grads(layer, x, batch_sizes, fused):
    layer.fused_backward = fused
    layer.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    y = layer(x, batch_sizes)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * weight).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("clips", [(None, None), (0.5, 0.3)])
def test_fused_recurrence_matches_autograd_float64(clips):
    torch.manual_seed(0)
    p, c, t, b = 6, 5, 7, 4
    layer = BiLstmLayer(p, c, *clips).double()
    for prm in layer.parameters():
        torch.nn.init.normal_(prm, std=0.8)  # large enough that both clips are hit
    x = torch.randn(2, t, b, p, dtype=torch.float64)
    batch_sizes = [4, 4, 3, 3, 2, 1, 1]  # rows leave as their sentences end
    y0, gx0, gp0 = _outputs_and_grads(layer, x, batch_sizes, fused=False)
    y1, gx1, gp1 = _outputs_and_grads(layer, x, batch_sizes, fused=True)
    if clips[0]:
        assert (y0.abs() == clips[1]).any(), "the projection clip was never hit"
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=1e-12)
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], rtol=0, atol=1e-12, msg=name)
    assert y1[:, 5:, 1:].abs().max() == 0 and gx1[:, 5:, 1:].abs().max() == 0  # padding: no value, no gradient


def test_fused_recurrence_bf16_products_stay_close_to_fp32():
    torch.manual_seed(0)
    layer = BiLstmLayer(16, 32, 3.0, 3.0)
    for prm in layer.parameters():
        torch.nn.init.normal_(prm, std=0.2)
    x = torch.randn(2, 9, 5, 16)
    batch_sizes = [5, 5, 5, 4, 4, 3, 2, 2, 1]
    ref = layer(x, batch_sizes).detach()
    low = layer(x, batch_sizes, torch.bfloat16)
    assert low.dtype == torch.float32  # state and outputs stay fp32
    err = (low.detach() - ref).abs().max().item()
    assert 0 < err < 0.05, err


def test_in_place_no_grad_loop_matches_autograd_loop_float64():
    torch.manual_seed(0)
    layer = BiLstmLayer(6, 5, 0.5, 0.3).double()
    for prm in layer.parameters():
        torch.nn.init.normal_(prm, std=0.8)
    layer.requires_grad_(False)
    x = torch.randn(2, 7, 4, 6, dtype=torch.float64)
    batch_sizes = [4, 4, 3, 3, 2, 1, 1]
    layer.in_place = False
    ref = layer(x, batch_sizes)
    layer.in_place = True
    out = layer(x, batch_sizes)
    assert (ref.abs() == 0.3).any()  # the projection clip was hit
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert out[:, 5:, 1:].abs().max() == 0  # padding stays exactly 0


def _kernels_per_step(layer, compute_dtype):
    """Ops dispatched per time step (views and allocations left out), from two sequence lengths."""
    from torch.profiler import profile

    not_kernels = {"aten::select", "aten::slice", "aten::split", "aten::view", "aten::as_strided",
                   "aten::transpose", "aten::t", "aten::reshape", "aten::unbind", "aten::expand", "aten::empty",
                   "aten::empty_strided", "aten::to", "aten::unsqueeze", "aten::alias", "aten::resolve_conj",
                   "aten::resolve_neg", "aten::_reshape_alias", "aten::contiguous", "aten::detach"}

    def count(t):
        x = torch.randn(2, t, 4, 6)
        with torch.no_grad(), profile() as prof:
            layer(x, [4] * t, compute_dtype)
        return sum(1 for e in prof.events() if e.name.startswith("aten::") and (
            (e.name not in not_kernels and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
            or (e.name == "aten::_to_copy" and e.cpu_parent is not None and e.cpu_parent.name == "aten::to")))
    return (count(24) - count(8)) / 16


def test_in_place_loop_launches_fewer_kernels_per_step():
    """What CUDA inference pays per step: 11 kernels in fp32 where the autograd loop needs 15."""
    layer = BiLstmLayer(6, 5, 3.0, 3.0).requires_grad_(False)
    layer.in_place = True
    fp32, low = _kernels_per_step(layer, None), _kernels_per_step(layer, torch.bfloat16)
    layer.in_place = False
    old_fp32, old_low = _kernels_per_step(layer, None), _kernels_per_step(layer, torch.bfloat16)
    assert fp32 <= 11 and old_fp32 >= 15, (fp32, old_fp32)
    assert low < old_low, (low, old_low)
