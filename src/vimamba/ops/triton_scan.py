"""The fused bidirectional selective scan on CUDA GPUs with Triton: host side and autograd.

:func:`bidirectional_scan_triton` has the signature and semantics of
:func:`vimamba.ops.reference.bidirectional_scan_reference`::

    out = silu(z) * (scan_forward(x_f) + scan_backward(x_b)) / 2

computed by one forward kernel (both directions per program over the same tokens, output written once; sequences
cut into segments chained by a carry pass when the batch alone would not fill the GPU) and one backward kernel
(checkpoint chunks walked against the scan, recomputed from saved states); see
:mod:`vimamba.ops.triton_scan_kernels` for the algorithm and docs/kernels.md for the design. Inputs stay in the
token-major layout the projections produce, (batch, L, E) and (batch, L, N), any strides with a unit last stride
(others are copied once); float32, bfloat16 and float16 are read as they are, the state and all arithmetic are
float32, the output has the dtype of ``x_f`` and every gradient the dtype of its input.

Memory kept for backward: the inputs plus the state entering every 32-token checkpoint chunk,
(batch, 2, ceil(L / 32), E, N) float32 (:func:`saved_states_shape`); nothing without autograd.

Gradients are bitwise deterministic: dB and dC are summed over channel blocks in a fixed order into at most
``max_bwd_groups`` float32 partials, without atomics.

The kernels need a CUDA device, or Triton's CPU interpreter (``TRITON_INTERPRET=1`` set before this module is
imported, which is how the tests run them without a GPU; slow, for testing only).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple

import torch

try:
    import triton
except ImportError:  # CPU-only torch wheels ship without Triton
    triton = None

if triton is not None:
    from . import triton_scan_kernels as _kernels
from .scan_inputs import ScanInputs, check_scan_shapes, scan_entry_point
from .triton_scan_plan import (BackwardPlan, ForwardPlan, TritonScanConfig, _cdiv, backward_plan,  # noqa: F401
                               forward_plan)

__all__ = ["bidirectional_scan_triton", "is_available", "INTERPRETED", "TritonScanConfig", "use_config",
           "current_config", "prepare_inputs", "scan_forward", "scan_backward", "saved_states_shape"]

#: True when the kernels run in Triton's CPU interpreter: Triton decides this from ``TRITON_INTERPRET`` when a
#: kernel is decorated, i.e. when this module is imported.
INTERPRETED = triton is not None and not isinstance(_kernels.bidirectional_scan_fwd_kernel, triton.runtime.JITFunction)

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_GRID_Y = 65535  # CUDA limit of the second grid axis (the batch axis here)


def is_available() -> bool:
    """Triton imports and its kernels can run: a CUDA device is present, or the kernels are interpreted."""
    return triton is not None and (INTERPRETED or torch.cuda.is_available())


_CONFIG = TritonScanConfig()


def current_config() -> TritonScanConfig:
    """The launch parameters in use."""
    return _CONFIG


@contextlib.contextmanager
def use_config(config: TritonScanConfig) -> Iterator[TritonScanConfig]:
    """Run the Triton scan with other launch parameters inside a ``with`` block (benchmark sweeps, tests)."""
    global _CONFIG
    previous, _CONFIG = _CONFIG, config
    try:
        yield config
    finally:
        _CONFIG = previous


def _target_programs(device: torch.device, config: TritonScanConfig) -> int:
    if config.min_programs:
        return config.min_programs
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter: no reason to split


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels address the last axis with stride 1 (true for every slice the Vim mixer passes)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _check_inputs(inputs: ScanInputs) -> None:
    """Every input a tensor the kernels read (z may be None), all on one device, with the scan's shapes."""
    x_f = inputs.x_f
    for name, t in inputs._asdict().items():
        if name == "z" and t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"the Triton scan reads float32, bfloat16 or float16 and computes in float32; {name} is {t.dtype} "
                f"(use impl='chunked' or 'reference' for other dtypes)"
            )
        if t.device != x_f.device:
            raise ValueError(f"all inputs must be on one device: x_f is on {x_f.device}, {name} on {t.device}")
    check_scan_shapes(inputs)
    batch = x_f.shape[0]
    if batch > _MAX_GRID_Y:
        raise ValueError(f"the Triton scan supports at most {_MAX_GRID_Y} sequences per call, got {batch}")
    if x_f.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"the Triton scan runs on CUDA tensors (got {x_f.device}); on CPU use impl='chunked', or set "
            f"TRITON_INTERPRET=1 before importing vimamba to run the kernels in Triton's (slow) interpreter"
        )


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it the inputs' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _direction_args(x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> List[int]:
    """(batch stride, token stride) of x, dt, B, C, in the kernels' argument order."""
    return [x.stride(0), x.stride(1), dt.stride(0), dt.stride(1), B.stride(0), B.stride(1), C.stride(0), C.stride(1)]


def _directions(inputs: Tuple[torch.Tensor, ...]) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
    """The 14 prepared inputs (``_f``/``_b`` pairs) as each direction's (x, dt, B, C, A, D, dt_bias), the order in
    which the kernels take them."""
    return tuple(inputs[0::2]), tuple(inputs[1::2])


def _forward(inputs: Tuple[torch.Tensor, ...], z: Optional[torch.Tensor], save_states: bool,
             config: TritonScanConfig) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Launch the forward pass (with a summary and a carry pass first when sequences are split into segments).
    Returns (out, checkpoint states or None)."""
    x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, bias_f, bias_b = inputs
    dir_f, dir_b = _directions(inputs)
    batch, length, channels = x_f.shape
    n_state = A_f.shape[1]
    device, f32 = x_f.device, torch.float32
    out = torch.empty((batch, length, channels), dtype=x_f.dtype, device=device)
    plan = forward_plan(batch, length, channels, n_state, _target_programs(device, config), config)
    states = (torch.empty((batch, 2, plan.n_chunks, channels, n_state), dtype=f32, device=device)
              if save_states else None)
    if out.numel() == 0:
        return out.zero_(), (states.zero_() if states is not None else None)
    seeded = plan.n_segments > 1
    if seeded:
        seg_shape = (batch, 2, plan.n_segments, channels)
        end, carry = (torch.empty(seg_shape + (n_state,), dtype=f32, device=device) for _ in range(2))
        dsum = torch.empty(seg_shape, dtype=f32, device=device)
    else:
        end = carry = dsum = out  # never touched
    z_arg = z if z is not None else x_f  # never read without z
    grid = (plan.n_segments, plan.e_blocks, batch)

    def launch(summary: bool) -> None:
        _kernels.bidirectional_scan_fwd_kernel[grid](
            *dir_f, *dir_b, z_arg, out, states if states is not None else out, carry, end, dsum,
            *_direction_args(*dir_f[:4]), *_direction_args(*dir_b[:4]),
            z_arg.stride(0), z_arg.stride(1), out.stride(0), out.stride(1),
            length, channels, n_state, plan.n_chunks, plan.n_segments, plan.seg_len,
            HAS_Z=z is not None, SAVE_STATES=save_states and not summary, SEEDED=seeded and not summary,
            SUMMARY=summary, CK=config.checkpoint, BLOCK_E=plan.block_e,
            ROW_SCALARS=not INTERPRETED if config.row_scalars is None else config.row_scalars,
            BLOCK_N=plan.block_n, num_warps=config.num_warps_fwd,
        )

    with _on_device(device):
        if seeded:
            launch(summary=True)
            _kernels.segment_carry_kernel[(_cdiv(channels, 16), batch, 2)](
                A_f, A_b, end, dsum, carry, channels, n_state, plan.n_segments,
                BLOCK_E=16, BLOCK_N=plan.block_n, num_warps=2,
            )
        launch(summary=False)
    return out, states


def _backward(inputs: Tuple[torch.Tensor, ...], z: Optional[torch.Tensor], states: torch.Tensor,
              dout: torch.Tensor, config: TritonScanConfig) -> Tuple[Optional[torch.Tensor], ...]:
    """Launch the backward kernel. Returns the gradients of (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b,
    D_f, D_b, dt_bias_f, dt_bias_b, z)."""
    x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, bias_f, bias_b = inputs
    dir_f, dir_b = _directions(inputs)
    batch, length, channels = x_f.shape
    n_state = A_f.shape[1]
    device, f32 = x_f.device, torch.float32
    n_chunks = states.shape[2]
    plan = backward_plan(batch, channels, n_state, _target_programs(device, config), config)

    def token_grad(like: torch.Tensor) -> torch.Tensor:
        return torch.empty((batch, length, channels), dtype=like.dtype, device=device)

    dx_f, dx_b, ddt_f, ddt_b = token_grad(x_f), token_grad(x_b), token_grad(dt_f), token_grad(dt_b)
    dz = token_grad(z) if z is not None else None
    dB_f, dB_b, dC_f, dC_b = (torch.empty((plan.groups, batch, length, n_state), dtype=f32, device=device)
                              for _ in range(4))
    dA_f, dA_b = (torch.empty((batch, channels, n_state), dtype=f32, device=device) for _ in range(2))
    dD_f, dD_b, dbias_f, dbias_b = (torch.empty((batch, channels), dtype=f32, device=device) for _ in range(4))
    scratch = torch.empty((plan.groups, batch, config.checkpoint // config.items_bwd, plan.block_e, plan.block_n),
                          dtype=f32, device=device)
    z_arg = z if z is not None else x_f  # never read without z
    dz_arg = dz if dz is not None else dx_f  # never written without z
    grads_f = (dx_f, ddt_f, dB_f, dC_f, dA_f, dD_f, dbias_f)  # in the order of each direction's inputs
    grads_b = (dx_b, ddt_b, dB_b, dC_b, dA_b, dD_b, dbias_b)

    with _on_device(device):
        _kernels.bidirectional_scan_bwd_kernel[(plan.groups, batch)](
            *dir_f, *dir_b, z_arg, dout, states, scratch, *grads_f, *grads_b, dz_arg,
            *_direction_args(*dir_f[:4]), *_direction_args(*dir_b[:4]),
            z_arg.stride(0), z_arg.stride(1), dout.stride(0), dout.stride(1), dx_f.stride(0), dx_f.stride(1),
            dB_f.stride(0), dB_f.stride(1), dB_f.stride(2),
            length, channels, n_state, n_chunks, plan.blocks_per_group,
            HAS_Z=z is not None, CK=config.checkpoint, ITEMS=config.items_bwd, BLOCK_E=plan.block_e,
            BLOCK_N=plan.block_n, num_warps=config.num_warps_bwd,
        )

    def reduced(partial: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return partial.sum(0).to(like.dtype)

    return (dx_f, dx_b, ddt_f, ddt_b,
            reduced(dB_f, B_f), reduced(dB_b, B_b), reduced(dC_f, C_f), reduced(dC_b, C_b),
            reduced(dA_f, A_f), reduced(dA_b, A_b), reduced(dD_f, D_f), reduced(dD_b, D_b),
            reduced(dbias_f, bias_f), reduced(dbias_b, bias_b), dz)


@scan_entry_point
def prepare_inputs(inputs: ScanInputs) -> Tuple[Tuple[torch.Tensor, ...], Optional[torch.Tensor]]:
    """Check the inputs and bring them into the layout the kernels accept (unit last stride for the sequences,
    contiguous parameters; copies only where needed). Returns ``(inputs, z)`` for :func:`scan_forward`."""
    _check_inputs(inputs)
    *tensors, z = inputs
    sequences = tuple(_unit_last_stride(t) for t in tensors[:8])  # x, dt, B, C of both directions
    parameters = tuple(t.contiguous() for t in tensors[8:])  # A, D, dt_bias of both directions
    return sequences + parameters, (_unit_last_stride(z) if z is not None else None)


def saved_states_shape(batch: int, length: int, channels: int, n_state: int) -> Tuple[int, ...]:
    """Shape of the float32 ``states`` tensor :func:`scan_forward` returns with ``save_states=True`` (so a
    fake/meta implementation can allocate it without running a kernel)."""
    return (batch, 2, max(1, _cdiv(length, _CONFIG.checkpoint)), channels, n_state)


def scan_forward(inputs: Tuple[torch.Tensor, ...], z: Optional[torch.Tensor],
                 save_states: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``silu(z) * (y_f + y_b) / 2`` of prepared inputs (see :func:`prepare_inputs`); returns ``(out, states)``
    where ``states`` (shape :func:`saved_states_shape`, float32) is what :func:`scan_backward` needs, or None
    without ``save_states``. No autograd: this is the raw kernel launch."""
    return _forward(tuple(inputs), z, save_states=save_states, config=_CONFIG)


def scan_backward(inputs: Tuple[torch.Tensor, ...], z: Optional[torch.Tensor], states: torch.Tensor,
                  dout: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    """Gradients of :func:`scan_forward`: the 14 inputs' gradients (x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f,
    A_b, D_f, D_b, dt_bias_f, dt_bias_b) then dz (None without z), each in its input's dtype. Bitwise
    deterministic when ``torch.are_deterministic_algorithms_enabled()``."""
    inputs = tuple(inputs)
    x_f = inputs[0]
    if x_f.numel() == 0:
        return tuple(torch.zeros_like(t) for t in inputs) + (torch.zeros_like(z) if z is not None else None,)
    return tuple(_backward(inputs, z, states, _unit_last_stride(dout), _CONFIG))


class _BidirectionalScanFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves the inputs and the chunk-entry states, backward runs the backward kernel."""

    @staticmethod
    def forward(ctx, z: Optional[torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        out, states = scan_forward(inputs, z, save_states=True)
        ctx.save_for_backward(states, z, *inputs)
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        states, z, *inputs = ctx.saved_tensors
        grads = list(scan_backward(tuple(inputs), z, states, dout))
        dz = grads.pop()
        return (dz, *grads)


@scan_entry_point
def bidirectional_scan_triton(inputs: ScanInputs) -> torch.Tensor:
    """silu(z) * (y_f + y_b) / 2 by the fused Triton kernels; differentiable in every input.

    Shapes (token-major): x_*, dt_*, z: (batch, L, E); B_*, C_*: (batch, L, N); A_*: (E, N); D_*, dt_bias_*: (E,).
    Same definition as :func:`vimamba.ops.reference.bidirectional_scan_reference`: per direction
    ``delta = softplus(dt + dt_bias)``, ``h_t = exp(delta_t A) h_prev + delta_t B_t x_t``, ``y_t = C_t . h_t + D x_t``
    with h_prev the state of token t-1 (forward direction) or t+1 (backward direction). Without grad (no_grad,
    inference mode, or no input requiring grad) nothing is saved for a backward pass.
    """
    prepared, z = prepare_inputs(*inputs)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*prepared, *(() if z is None else (z,)))):
        return _BidirectionalScanFunction.apply(z, *prepared)
    return scan_forward(prepared, z, save_states=False)[0]
