"""The ``vimamba::`` PyTorch operators (scan, fused conv + SiLU, and their backward operators).

``torch.library.opcheck`` checks each operator's schema, fake (meta) implementation, autograd registration and
AOT dispatch; the values are checked against the plain-PyTorch oracles (the sequential reference scan in float64,
``depthwise_conv1d`` + SiLU).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vimamba.ops import cpp_scan, library
from vimamba.ops.conv import depthwise_conv1d
from vimamba.ops.reference import bidirectional_scan_reference

from test_scan_cpu import _cpp_or_skip, leaf_copies, make_inputs, relative_error

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def conv_inputs(batch=2, length=9, channels=6, width=4, *, dtype=torch.float32, bias=True, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, 2 * channels, generator=g, dtype=dtype)[..., :channels]  # a slice, as in the model
    w_f, w_b = (torch.randn(channels, 1, width, generator=g, dtype=dtype) for _ in range(2))
    b_f, b_b = ((torch.randn(channels, generator=g, dtype=dtype) if bias else None) for _ in range(2))
    return [t.to(device) if t is not None else None for t in (x, w_f, b_f, w_b, b_b)]


def no_native(monkeypatch):
    """Make the operators' CPU kernels take their PyTorch fallback, as where the native kernel cannot be built."""
    monkeypatch.setattr(cpp_scan, "native_scan_supported", lambda *args: False)
    monkeypatch.setattr(cpp_scan, "conv_silu_supported", lambda *args: False)


# --------------------------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("options", [dict(), dict(z=False, D=False, bias=False)])
@pytest.mark.parametrize("save_states", [True, False])
def test_opcheck_scan(options, save_states):
    _cpp_or_skip()
    inputs = leaf_copies(make_inputs(2, 70, 8, 4, seed=1, **options))  # 70 tokens: two native chunks
    torch.library.opcheck(library.scan_op, (*inputs, save_states))


def test_opcheck_scan_float64_runs_the_chunked_path():
    inputs = leaf_copies(make_inputs(1, 12, 4, 3, seed=2, dtype=torch.float64))
    out, states = library.scan_op(*inputs, True)
    assert states.numel() == 0  # the chunked fallback keeps no states; backward recomputes
    torch.library.opcheck(library.scan_op, (*inputs, True))


def test_opcheck_scan_backward():
    _cpp_or_skip()
    inputs = make_inputs(2, 20, 8, 4, seed=3)
    _, states = library.scan_op(*inputs, True)
    dout = torch.randn(2, 20, 8)
    torch.library.opcheck(library.scan_backward_op, (*inputs, states, dout))
    torch.library.opcheck(library.scan_backward_op, (*inputs, states[:0].reshape(0), dout))  # no saved states


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_conv_silu(bias):
    _cpp_or_skip()
    inputs = [t.requires_grad_() if t is not None else None for t in conv_inputs(bias=bias)]
    torch.library.opcheck(library.conv_silu_op, tuple(inputs))
    grads = [torch.randn(2, 9, 6), torch.randn(2, 9, 6)]
    torch.library.opcheck(library.conv_silu_backward_op, (*[t.detach() if t is not None else None for t in inputs],
                                                          *grads))


def test_opcheck_without_the_native_kernel(monkeypatch):
    no_native(monkeypatch)
    inputs = leaf_copies(make_inputs(1, 10, 4, 3, seed=4))
    torch.library.opcheck(library.scan_op, (*inputs, True))
    conv = [t.requires_grad_() for t in conv_inputs()]
    torch.library.opcheck(library.conv_silu_op, tuple(conv))


# --------------------------------------------------------------------------------------------- values


def _scan_grads_against_reference(inputs32):
    leaves = leaf_copies(inputs32)
    out = library.bidirectional_scan(*leaves)
    ref_leaves = leaf_copies(inputs32, torch.float64)
    expected = bidirectional_scan_reference(*ref_leaves)
    assert relative_error(out, expected) < 1e-5
    g = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    wrt = [t for t in leaves if t is not None]
    mine = torch.autograd.grad(out, wrt, g.float())
    theirs = torch.autograd.grad(expected, [t for t in ref_leaves if t is not None], g)
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape and relative_error(a, b) < 1e-4


def test_scan_operator_matches_reference():
    _cpp_or_skip()
    _scan_grads_against_reference(make_inputs(2, 70, 8, 4, seed=5))


def test_scan_operator_fallback_matches_reference(monkeypatch):
    no_native(monkeypatch)
    _scan_grads_against_reference(make_inputs(2, 30, 8, 4, seed=6))


def test_backward_without_saved_states_recomputes_them():
    _cpp_or_skip()
    inputs = make_inputs(2, 70, 8, 4, seed=7)
    _, states = library.scan_op(*inputs, True)
    dout = torch.randn(2, 70, 8)
    with_states = library.scan_backward_op(*inputs, states, dout)
    without = library.scan_backward_op(*inputs, torch.empty(0), dout)
    for a, b in zip(with_states, without):
        assert torch.equal(a, b)


def test_inference_call_saves_no_states():
    _cpp_or_skip()
    inputs = leaf_copies(make_inputs(1, 10, 4, 3, seed=8))
    with torch.no_grad():
        assert library.scan_op(*inputs, False)[1].numel() == 0
    assert library.scan_op(*inputs, True)[1].shape == cpp_scan.saved_states_shape(1, 10, 4, 3)


@pytest.mark.parametrize("native", [True, False])
def test_conv_operator_matches_pytorch(native, monkeypatch):
    if native:
        _cpp_or_skip()
    else:
        no_native(monkeypatch)
    inputs = [t.requires_grad_() for t in conv_inputs(length=11, seed=10)]
    ours = library.bidirectional_conv_silu(*inputs)
    ref = [t.detach().double().requires_grad_() for t in inputs]
    expected = (F.silu(depthwise_conv1d(ref[0], ref[1], ref[2])),
                F.silu(depthwise_conv1d(ref[0], ref[3], ref[4], reverse=True)))
    for a, b in zip(ours, expected):
        assert relative_error(a, b) < 1e-5
    g = [torch.randn(e.shape, dtype=torch.float64) for e in expected]
    for a, b in zip(torch.autograd.grad(ours, inputs, [t.float() for t in g]), torch.autograd.grad(expected, ref, g)):
        assert a.shape == b.shape and relative_error(a, b) < 1e-4


def test_shape_errors_are_clear():
    inputs = make_inputs(1, 6, 4, 3)
    inputs[4] = inputs[4][:, :5]
    with pytest.raises(ValueError, match="B_f"):
        library.bidirectional_scan(*inputs)
    x, w_f, b_f, w_b, b_b = conv_inputs()
    with pytest.raises(ValueError, match="weight_b"):
        library.bidirectional_conv_silu(x, w_f, b_f, w_b[:3], b_b)


# --------------------------------------------------------------------------------------------- CUDA (Triton)


@CUDA
@pytest.mark.parametrize("save_states", [True, False])
def test_opcheck_scan_cuda(save_states):
    inputs = [t.cuda() if t is not None else None for t in make_inputs(2, 70, 8, 4, seed=11)]
    torch.library.opcheck(library.scan_op, (*leaf_copies_cuda(inputs), save_states))


@CUDA
def test_scan_operator_cuda_matches_reference():
    inputs = make_inputs(2, 70, 8, 4, seed=12)
    leaves = [t.cuda().requires_grad_() if t is not None else None for t in inputs]
    out = library.bidirectional_scan(*leaves)
    ref = leaf_copies(inputs, torch.float64)
    expected = bidirectional_scan_reference(*ref)
    assert relative_error(out.cpu(), expected) < 1e-5
    g = torch.randn(expected.shape, dtype=torch.float64)
    mine = torch.autograd.grad(out, leaves, g.float().cuda())
    theirs = torch.autograd.grad(expected, ref, g)
    for a, b in zip(mine, theirs):
        assert relative_error(a.cpu(), b) < 1e-4


def leaf_copies_cuda(inputs):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
