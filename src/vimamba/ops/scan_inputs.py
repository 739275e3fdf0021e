"""The inputs of the bidirectional selective scan, defined once for every implementation.

Every implementation of the scan (reference, chunked, native C++, Triton, the operator and the dispatching entry
point :func:`vimamba.ops.bidirectional_selective_scan`) takes the same 15 tensors, by position or by name.
:class:`ScanInputs` names them in that order; :func:`scan_entry_point` turns a function of one :class:`ScanInputs`
into a function with that public signature, so the argument list is written here and nowhere else.

Shapes (token-major): x_*, dt_*, z: (batch, L, E); B_*, C_*: (batch, L, N); A_*: (E, N); D_*, dt_bias_*: (E,).
``D_*``, ``dt_bias_*`` and ``z`` may be None where an implementation says so.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, NamedTuple, Optional, TypeVar, get_type_hints

from torch import Tensor

__all__ = ["ScanInputs", "scan_entry_point", "check_scan_shapes"]

T = TypeVar("T")


class ScanInputs(NamedTuple):
    """The 15 inputs of the bidirectional scan, forward (``_f``) and backward (``_b``) direction side by side."""

    x_f: Tensor
    x_b: Tensor
    dt_f: Tensor
    dt_b: Tensor
    B_f: Tensor
    B_b: Tensor
    C_f: Tensor
    C_b: Tensor
    A_f: Tensor
    A_b: Tensor
    D_f: Optional[Tensor]
    D_b: Optional[Tensor]
    dt_bias_f: Optional[Tensor]
    dt_bias_b: Optional[Tensor]
    z: Optional[Tensor] = None


def scan_entry_point(compute: Callable[..., T]) -> Callable[..., T]:
    """Decorator: ``compute(inputs: ScanInputs, **options)`` becomes ``f(x_f, x_b, ..., z=None, **options)``.

    The 15 inputs bind by position or by name exactly as :class:`ScanInputs` does (a missing one is a TypeError
    naming it); any other keyword (e.g. the dispatcher's ``impl``) goes to ``compute`` as a keyword-only option.
    The returned function's ``__signature__`` lists the inputs, so ``help()`` and IDEs show them.
    """
    signature = inspect.signature(compute)
    options = list(signature.parameters.values())[1:]

    @functools.wraps(compute)
    def entry_point(*args, **kwargs):
        given_options = {name: kwargs.pop(name) for name in list(kwargs) if name not in ScanInputs._fields}
        return compute(ScanInputs(*args, **kwargs), **given_options)

    types = get_type_hints(ScanInputs)
    inputs = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=types[name],
                                default=ScanInputs._field_defaults.get(name, inspect.Parameter.empty))
              for name in ScanInputs._fields]
    entry_point.__signature__ = signature.replace(parameters=inputs + options)
    return entry_point


def check_scan_shapes(inputs: ScanInputs) -> None:
    """Raise a ValueError naming the offending input unless the shapes are those above (``x_f`` and ``A_f`` fix
    batch, L, E and N; an input that is None is not checked)."""
    x_f, A_f = inputs.x_f, inputs.A_f
    if x_f.dim() != 3:
        raise ValueError(f"x_f must be (batch, L, E), got shape {tuple(x_f.shape)}")
    batch, length, channels = x_f.shape
    if A_f.dim() != 2 or A_f.shape[0] != channels:
        raise ValueError(f"A_f must be (E, N) = ({channels}, N), got shape {tuple(A_f.shape)}")
    n_state = A_f.shape[1]
    sequence, projection, per_channel = (batch, length, channels), (batch, length, n_state), (channels,)
    expected = {"x_b": sequence, "dt_f": sequence, "dt_b": sequence, "B_f": projection, "B_b": projection,
                "C_f": projection, "C_b": projection, "A_b": (channels, n_state), "D_f": per_channel,
                "D_b": per_channel, "dt_bias_f": per_channel, "dt_bias_b": per_channel, "z": sequence}
    for name, shape in expected.items():
        tensor = getattr(inputs, name)
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (from x_f {tuple(x_f.shape)} and "
                             f"A_f {tuple(A_f.shape)}), got {tuple(tensor.shape)}")
