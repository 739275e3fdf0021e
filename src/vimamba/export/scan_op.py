"""The export-time scan as one operator, ``torch.ops.vimamba_export.bidirectional_scan``.

Traced as a single node, the scan keeps ``torch.export`` fast (the blocked form unrolled into the trace would be
hundreds of nodes per block, each with symbolic-shape reasoning). The operator:

- computes, eagerly and inside an ExportedProgram, with :func:`vimamba.ops.bidirectional_selective_scan` (the
  fastest implementation on the device; the native CPU kernel where it is built);
- has a fake implementation (output shaped like ``x_f``), so shapes propagate symbolically;
- is translated to ONNX by :func:`vimamba.export.onnx_scan.bidirectional_scan_onnx`, the blocked scan of
  :mod:`vimamba.export.scan` written with standard ONNX operators.

Programs saved with ``vimamba export --format torch-export`` hold this operator: ``import vimamba.export`` before
``torch.export.load``.
"""
from __future__ import annotations

import torch

__all__ = ["bidirectional_scan_op", "OP_NAME"]

OP_NAME = "vimamba_export::bidirectional_scan"


@torch.library.custom_op(OP_NAME, mutates_args=())
def bidirectional_scan_op(
    x_f: torch.Tensor, x_b: torch.Tensor, dt_f: torch.Tensor, dt_b: torch.Tensor,
    B_f: torch.Tensor, B_b: torch.Tensor, C_f: torch.Tensor, C_b: torch.Tensor,
    A_f: torch.Tensor, A_b: torch.Tensor, D_f: torch.Tensor, D_b: torch.Tensor,
    dt_bias_f: torch.Tensor, dt_bias_b: torch.Tensor, z: torch.Tensor,
) -> torch.Tensor:
    """silu(z) * (y_f + y_b) / 2 (the contract of :func:`vimamba.ops.bidirectional_selective_scan`)."""
    from ..ops import bidirectional_selective_scan

    with torch.no_grad():
        return bidirectional_selective_scan(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b,
                                            dt_bias_f, dt_bias_b, z).clone()


@bidirectional_scan_op.register_fake
def _(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, A_f, A_b, D_f, D_b, dt_bias_f, dt_bias_b, z):
    return torch.empty_like(x_f)
