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
from typing import Callable, NamedTuple, Optional, get_type_hints

from torch import Tensor

__all__ = ["ScanInputs", "scan_entry_point"]


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


def scan_entry_point(compute: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorator: ``compute(inputs: ScanInputs, **options)`` becomes ``f(x_f, x_b, ..., z=None, **options)``.

    The 15 inputs bind by position or by name exactly as :class:`ScanInputs` does (a missing one is a TypeError
    naming it); any other keyword (e.g. the dispatcher's ``impl``) goes to ``compute`` as a keyword-only option.
    The returned function's ``__signature__`` lists the inputs, so ``help()`` and IDEs show them.
    """
    options = list(inspect.signature(compute).parameters.values())[1:]

    @functools.wraps(compute)
    def entry_point(*args, **kwargs) -> Tensor:
        given_options = {name: kwargs.pop(name) for name in list(kwargs) if name not in ScanInputs._fields}
        return compute(ScanInputs(*args, **kwargs), **given_options)

    types = get_type_hints(ScanInputs)
    inputs = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=types[name],
                                default=ScanInputs._field_defaults.get(name, inspect.Parameter.empty))
              for name in ScanInputs._fields]
    entry_point.__signature__ = inspect.Signature(inputs + options, return_annotation=Tensor)
    return entry_point
