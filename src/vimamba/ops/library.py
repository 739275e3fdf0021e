"""Vim's fused kernels as PyTorch operators, so ``torch.compile`` and ``torch.export`` see them as single nodes.

Four operators in the ``vimamba`` namespace (``torch.ops.vimamba.*``):

``bidirectional_scan(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f?, D_b?, dt_bias_f?, dt_bias_b?, z?,
save_states) -> (out, states)``
    out = silu(z) * (y_f + y_b) / 2 (see :func:`vimamba.ops.bidirectional_selective_scan`); ``states`` are the
    float32 chunk-entry states the backward pass starts from (an empty tensor when ``save_states`` is false or the
    kernel keeps none). CPU kernel: the native C++ one (:mod:`vimamba.ops.cpp_scan`); CUDA kernel: the Triton one
    (:mod:`vimamba.ops.triton_scan`); every other case (float64, other devices, a native kernel that cannot be
    built): the chunked PyTorch scan.
``bidirectional_scan_backward(<the 15 inputs>, states, dout) -> 15 gradients``
    the gradients of the 15 inputs (an empty tensor for an input that is None); the forward operator's autograd
    formula calls it, so a compiled training step holds one node per pass.
``bidirectional_conv_silu(x, weight_f, bias_f?, weight_b, bias_b?) -> (silu(causal conv x), silu(anti-causal conv x))``
    the mixer's two depthwise convolutions + SiLU; CPU kernel: the native fused one; otherwise PyTorch.
``bidirectional_conv_silu_backward(x, weight_f, bias_f?, weight_b, bias_b?, grad_f, grad_b) -> 5 gradients``

Each has a fake ("meta") implementation, so shapes propagate symbolically (dynamic batch and sequence length), and
the forward operators carry their autograd formula. Where a kernel keeps no states (the chunked fallback), the
backward operator recomputes the forward pass under autograd: correct, only slower.

The Python entry points :func:`bidirectional_scan` and :func:`bidirectional_conv_silu` check the shapes and ask
for the states only when a gradient will be needed.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpp_scan
from .chunked import chunked_scan_backward, chunked_scan_forward
from .conv import depthwise_conv1d
from .scan_inputs import ScanInputs, check_scan_shapes, scan_entry_point

__all__ = ["bidirectional_scan", "bidirectional_conv_silu", "scan_op", "scan_backward_op", "conv_silu_op",
           "conv_silu_backward_op"]

_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _no_states(like: Tensor) -> Tensor:
    return like.new_empty(0, dtype=torch.float32)


def _placeholder(like: Tensor) -> Tensor:
    """What the backward operators return for an input that is None (operators cannot return None)."""
    return like.new_empty(0)


def _uses_triton(x_f: Tensor) -> bool:
    return x_f.device.type == "cuda" and x_f.dtype in _TRITON_DTYPES


def _uses_native(x_f: Tensor, A_f: Tensor) -> bool:
    return x_f.device.type == "cpu" and cpp_scan.native_scan_supported(x_f, A_f)


def _contiguous_grads(grads: Sequence[Optional[Tensor]], inputs: Sequence[Optional[Tensor]], like: Tensor
                      ) -> List[Tensor]:
    """Gradients as the backward operators return them: contiguous, each in its input's dtype; a placeholder where
    the input is None."""
    return [g.to(t.dtype).contiguous() if t is not None and g is not None
            else (torch.zeros(t.shape, dtype=t.dtype, device=t.device) if t is not None else _placeholder(like))
            for g, t in zip(grads, inputs)]


# ------------------------------------------------------------------------------------------ the selective scan


def _scan_chunked(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z):
    inputs = (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z)
    out, _, _ = chunked_scan_forward(inputs, save_entries=False)
    return out.contiguous(), _no_states(x_f)


@torch.library.custom_op("vimamba::bidirectional_scan", mutates_args=())
def scan_op(x_f: Tensor, x_b: Tensor, dt_f: Tensor, dt_b: Tensor, B_f: Tensor, B_b: Tensor, C_f: Tensor,
            C_b: Tensor, A_f: Tensor, A_b: Tensor, D_f: Optional[Tensor], D_b: Optional[Tensor],
            dt_bias_f: Optional[Tensor], dt_bias_b: Optional[Tensor], z: Optional[Tensor], save_states: bool
            ) -> Tuple[Tensor, Tensor]:
    """Devices without a kernel of their own: the chunked scan (it keeps no states)."""
    return _scan_chunked(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z)


@scan_op.register_kernel("cpu")
def _scan_cpu(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z, save_states):
    inputs = (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b)
    if not _uses_native(x_f, A_f):
        return _scan_chunked(*inputs, z)
    out, states = cpp_scan.scan_forward(inputs, z, save_states)
    return out, states if states is not None else _no_states(x_f)


def _triton_inputs(inputs: Sequence[Optional[Tensor]], z: Optional[Tensor]):
    """The Triton kernels take every parameter (zeros stand in for a missing D / dt_bias) and a unit last stride."""
    x_f = inputs[0]
    filled = [t if t is not None else torch.zeros(x_f.shape[-1], dtype=torch.float32, device=x_f.device)
              for t in inputs]
    unit = [t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous() for t in filled]
    return tuple(unit), (z if z is None or z.stride(-1) == 1 else z.contiguous())


@scan_op.register_kernel("cuda")
def _scan_cuda(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z, save_states):
    inputs = (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b)
    if not _uses_triton(x_f):
        return _scan_chunked(*inputs, z)
    from . import triton_scan

    out, states = triton_scan.scan_forward(*_triton_inputs(inputs, z), save_states)
    return out, states if states is not None else _no_states(x_f)


def _states_shape(x_f: Tensor, A_f: Tensor, save_states: bool):
    if not save_states:
        return (0,)
    batch, length, channels = x_f.shape
    if _uses_native(x_f, A_f):
        return cpp_scan.saved_states_shape(batch, length, channels, A_f.shape[1])
    if _uses_triton(x_f):
        from . import triton_scan

        return triton_scan.saved_states_shape(batch, length, channels, A_f.shape[1])
    return (0,)


@scan_op.register_fake
def _scan_fake(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z, save_states):
    return x_f.new_empty(x_f.shape), x_f.new_empty(_states_shape(x_f, A_f, save_states), dtype=torch.float32)


def _scan_backward_chunked(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z,
                           dout):
    """Recompute the chunked forward pass (its chunk-entry states), then its backward pass."""
    inputs = (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z)
    _, entries_f, entries_b = chunked_scan_forward(inputs, save_entries=True)
    return _contiguous_grads(chunked_scan_backward(inputs, entries_f, entries_b, dout), inputs, x_f)


@torch.library.custom_op("vimamba::bidirectional_scan_backward", mutates_args=())
def scan_backward_op(x_f: Tensor, x_b: Tensor, dt_f: Tensor, dt_b: Tensor, B_f: Tensor, B_b: Tensor, C_f: Tensor,
                     C_b: Tensor, A_f: Tensor, A_b: Tensor, D_f: Optional[Tensor], D_b: Optional[Tensor],
                     dt_bias_f: Optional[Tensor], dt_bias_b: Optional[Tensor], z: Optional[Tensor], states: Tensor,
                     dout: Tensor) -> List[Tensor]:
    """Devices without a kernel of their own: recompute the chunked scan under autograd."""
    return _scan_backward_chunked(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f,
                                  dt_bias_b, z, dout)


@scan_backward_op.register_kernel("cpu")
def _scan_backward_cpu(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z,
                       states, dout):
    inputs = (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b)
    if not _uses_native(x_f, A_f):
        return _scan_backward_chunked(*inputs, z, dout)
    return _contiguous_grads(cpp_scan.scan_backward(inputs, z, states, dout), (*inputs, z), x_f)


@scan_backward_op.register_kernel("cuda")
def _scan_backward_cuda(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z,
                        states, dout):
    inputs = (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b)
    if not _uses_triton(x_f):
        return _scan_backward_chunked(*inputs, z, dout)
    from . import triton_scan

    kernel_inputs, kernel_z = _triton_inputs(inputs, z)
    if states.numel() == 0:  # called without saved states: compute them
        states = triton_scan.scan_forward(kernel_inputs, kernel_z, True)[1]
    grads = triton_scan.scan_backward(kernel_inputs, kernel_z, states, dout.contiguous())
    return _contiguous_grads(grads, (*inputs, z), x_f)


@scan_backward_op.register_fake
def _scan_backward_fake(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z,
                        states, dout):
    inputs = (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z)
    return [t.new_empty(t.shape) if t is not None else _placeholder(x_f) for t in inputs]


def _scan_setup_context(ctx, inputs, output):
    tensors = inputs[:15]
    ctx.is_none = [t is None for t in tensors]
    ctx.save_for_backward(*tensors, output[1])
    ctx.mark_non_differentiable(output[1])


def _scan_backward(ctx, dout, dstates):
    *tensors, states = ctx.saved_tensors
    grads = scan_backward_op(*tensors, states, dout)
    return (*(None if none else g for g, none in zip(grads, ctx.is_none)), None)


scan_op.register_autograd(_scan_backward, setup_context=_scan_setup_context)


@scan_entry_point
def bidirectional_scan(inputs: ScanInputs) -> Tensor:
    """silu(z) * (y_f + y_b) / 2 through ``vimamba::bidirectional_scan`` (native on CPU, Triton on CUDA)."""
    check_scan_shapes(inputs)
    save_states = torch.is_grad_enabled() and any([t is not None and t.requires_grad for t in inputs])
    return scan_op(*inputs, save_states)[0]


# ------------------------------------------------------------------------------------- convolution + SiLU


def _conv_silu_pytorch(x, weight_f, bias_f, weight_b, bias_b):
    return F.silu(depthwise_conv1d(x, weight_f, bias_f)), F.silu(depthwise_conv1d(x, weight_b, bias_b, reverse=True))


def _conv_silu_default(x, weight_f, bias_f, weight_b, bias_b):
    with torch.no_grad():
        out_f, out_b = _conv_silu_pytorch(x, weight_f, bias_f, weight_b, bias_b)
    return out_f.contiguous(), out_b.contiguous()


def _conv_silu_branch_backward(x, weight, bias, grad, reverse: bool):
    """(dx, dweight, dbias) of silu(depthwise_conv1d(x, weight, bias, reverse)) given the output's gradient: the
    gradient of a causal convolution is the anti-causal convolution with the same taps, and vice versa."""
    compute = torch.promote_types(x.dtype, torch.float32)
    x32, w = x.to(compute), weight.reshape(weight.shape[0], -1).to(compute)
    pre = depthwise_conv1d(x32, w, bias.to(compute) if bias is not None else None, reverse=reverse)
    s = torch.sigmoid(pre)
    dpre = grad.to(compute) * s * (1 + pre * (1 - s))
    dx = depthwise_conv1d(dpre, w, None, reverse=not reverse)
    k, length = w.shape[1], x.shape[1]
    padded = F.pad(x32, (0, 0, k - 1, 0) if not reverse else (0, 0, 0, k - 1))
    taps = [(dpre * padded[:, (tap if not reverse else k - 1 - tap):][:, :length]).sum((0, 1)) for tap in range(k)]
    dw = torch.stack(taps, dim=-1).reshape(weight.shape)
    return dx, dw, dpre.sum((0, 1)) if bias is not None else None


def _conv_silu_backward_default(x, weight_f, bias_f, weight_b, bias_b, grad_f, grad_b):
    dx_f, dw_f, db_f = _conv_silu_branch_backward(x, weight_f, bias_f, grad_f, reverse=False)
    dx_b, dw_b, db_b = _conv_silu_branch_backward(x, weight_b, bias_b, grad_b, reverse=True)
    return _contiguous_grads((dx_f + dx_b, dw_f, db_f, dw_b, db_b), (x, weight_f, bias_f, weight_b, bias_b), x)


@torch.library.custom_op("vimamba::bidirectional_conv_silu", mutates_args=())
def conv_silu_op(x: Tensor, weight_f: Tensor, bias_f: Optional[Tensor], weight_b: Tensor, bias_b: Optional[Tensor]
                 ) -> Tuple[Tensor, Tensor]:
    """Devices without a kernel of their own: two PyTorch depthwise convolutions + SiLU."""
    return _conv_silu_default(x, weight_f, bias_f, weight_b, bias_b)


@conv_silu_op.register_kernel("cpu")
def _conv_silu_cpu(x, weight_f, bias_f, weight_b, bias_b):
    if not cpp_scan.conv_silu_supported(x, weight_f, weight_b):
        return _conv_silu_default(x, weight_f, bias_f, weight_b, bias_b)
    return cpp_scan.conv_silu_forward(x, weight_f, bias_f, weight_b, bias_b)


@conv_silu_op.register_fake
def _conv_silu_fake(x, weight_f, bias_f, weight_b, bias_b):
    return x.new_empty(x.shape), x.new_empty(x.shape)


@torch.library.custom_op("vimamba::bidirectional_conv_silu_backward", mutates_args=())
def conv_silu_backward_op(x: Tensor, weight_f: Tensor, bias_f: Optional[Tensor], weight_b: Tensor,
                          bias_b: Optional[Tensor], grad_f: Tensor, grad_b: Tensor) -> List[Tensor]:
    """Devices without a kernel of their own: recompute the PyTorch convolutions under autograd."""
    return _conv_silu_backward_default(x, weight_f, bias_f, weight_b, bias_b, grad_f, grad_b)


@conv_silu_backward_op.register_kernel("cpu")
def _conv_silu_backward_cpu(x, weight_f, bias_f, weight_b, bias_b, grad_f, grad_b):
    if not cpp_scan.conv_silu_supported(x, weight_f, weight_b):
        return _conv_silu_backward_default(x, weight_f, bias_f, weight_b, bias_b, grad_f, grad_b)
    inputs = (x, weight_f, bias_f, weight_b, bias_b)
    return _contiguous_grads(cpp_scan.conv_silu_backward(*inputs, grad_f, grad_b), inputs, x)


@conv_silu_backward_op.register_fake
def _conv_silu_backward_fake(x, weight_f, bias_f, weight_b, bias_b, grad_f, grad_b):
    return [t.new_empty(t.shape) if t is not None else _placeholder(x) for t in (x, weight_f, bias_f, weight_b, bias_b)]


def _conv_setup_context(ctx, inputs, output):
    ctx.is_none = [t is None for t in inputs]
    ctx.save_for_backward(*inputs)


def _conv_backward(ctx, grad_f, grad_b):
    grads = conv_silu_backward_op(*ctx.saved_tensors, grad_f, grad_b)
    return tuple(None if none else g for g, none in zip(grads, ctx.is_none))


conv_silu_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def bidirectional_conv_silu(x: Tensor, weight_f: Tensor, bias_f: Optional[Tensor], weight_b: Tensor,
                            bias_b: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """(silu(causal depthwise conv of x), silu(anti-causal depthwise conv of x)) through
    ``vimamba::bidirectional_conv_silu`` (the native fused kernel on CPU). x: (batch, L, E); weights (E, 1, K) or
    (E, K); biases (E,) or None."""
    if x.dim() != 3:
        raise ValueError(f"bidirectional_conv_silu expects (batch, L, E), got shape {tuple(x.shape)}")
    for name, w in (("weight_f", weight_f), ("weight_b", weight_b)):
        if w.shape[0] != x.shape[-1]:
            raise ValueError(f"{name} has {w.shape[0]} channels, the input has {x.shape[-1]}")
    return tuple(conv_silu_op(x, weight_f, bias_f, weight_b, bias_b))
