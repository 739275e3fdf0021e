"""Compiled training (``vimamba train --compile auto|on|off``) that falls back to eager if compiling fails.

``torch.compile`` traces a Vim as one graph (the scan and the fused convolution are ``vimamba::`` operators), but
whether it pays off depends on the device: on CPU the time goes to the scan kernels and the matrix products, which
compiling does not change (measured with ``benchmarks/compile_speed.py``: 1.02x for the demo model, 1.03x for
Vim-Ti at 224, after 80-275 s of compiling), so ``auto`` compiles on CUDA only, where Inductor fuses the
element-wise work around the kernels. A failure while compiling (at the first step) is reported in one line and
the run continues eagerly.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn as nn

__all__ = ["COMPILE_CHOICES", "should_compile", "CompiledWithFallback", "maybe_compile"]

COMPILE_CHOICES = ("auto", "on", "off")


def should_compile(choice: str, device: torch.device) -> bool:
    """Whether ``--compile choice`` compiles on ``device`` (``auto``: on CUDA only)."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"--compile must be one of {COMPILE_CHOICES}, got {choice!r}")
    return choice == "on" or (choice == "auto" and device.type == "cuda")


class CompiledWithFallback(nn.Module):
    """Calls ``torch.compile(model)``; if a call fails inside the compiler, says so once and calls ``model`` from
    then on. ``_orig_mod`` is the model (what ``unwrap_model`` returns), so checkpoints and EMA see plain weights."""

    def __init__(self, model: nn.Module, log: Callable[[str], None] = print, **compile_kwargs):
        super().__init__()
        self.module = model
        object.__setattr__(self, "_compiled", torch.compile(model, **compile_kwargs))  # not a second submodule
        self._log = log
        self.failed: Optional[str] = None

    @property
    def _orig_mod(self) -> nn.Module:
        return self.module

    def no_sync(self):
        inner = self.module
        return inner.no_sync() if hasattr(inner, "no_sync") else contextlib.nullcontext()

    def forward(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001  (any compiler failure: run eagerly instead)
                if not _is_compiler_error(error):
                    raise
                self.failed = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
                self._log(f"warning: torch.compile failed ({self.failed}); training without compiling "
                          "(--compile off skips the attempt)")
        return self.module(*args, **kwargs)


def _is_compiler_error(error: BaseException) -> bool:
    """Errors raised by Dynamo / AOTAutograd / Inductor (not a wrong input, which eager would reject too)."""
    from torch._dynamo import exc

    if isinstance(error, (exc.BackendCompilerFailed, exc.Unsupported, exc.TorchRuntimeError, exc.InternalTorchDynamoError)):
        return True
    module = type(error).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx"))


def maybe_compile(model: nn.Module, choice: str, device: torch.device, log: Callable[[str], None] = print
                  ) -> nn.Module:
    """``model`` wrapped for compiled training when ``--compile choice`` asks for it on ``device``, else ``model``."""
    if not should_compile(choice, device):
        return model
    log("compiling the model for training with torch.compile (first step slower; --compile off to skip)")
    return CompiledWithFallback(model, log=log)
