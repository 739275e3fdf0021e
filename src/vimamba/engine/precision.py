"""Mixed precision that does not blow up: autocast, loss scaling, and a guard against non-finite steps.

Modes:

``off``   float32 everywhere (the official Vim recipe trains this way).
``bf16``  ``torch.autocast(dtype=bfloat16)``: matmuls and convolutions in bfloat16, while the parameters, the
          residual stream (``residual_in_fp32``), the norms and the selective-scan state and accumulation stay in
          float32 (every scan implementation of :mod:`vimamba.ops` computes its recurrence in float32 whatever
          the input dtype). No loss scaling is needed: bfloat16 has float32's exponent range.
``fp16``  ``torch.autocast(dtype=float16)`` with a dynamic ``GradScaler``; the scaler skips steps whose scaled
          gradients overflow and lowers the scale, as it should.

Whatever the mode, every optimizer step goes through :meth:`MixedPrecision.step`, which looks at the loss and the
gradient norm (on all ranks): a non-finite loss or gradient skips the update (weights, optimizer moments and EMA
stay as they were) and is counted. After ``max_bad_steps`` such steps in a row :class:`NonFiniteLossError` stops
the run with a message saying what to try; the last checkpoint, written before the trouble, is left intact.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import torch

from .distributed import all_reduce_max

__all__ = ["PRECISION_MODES", "MixedPrecision", "StepOutcome", "NonFiniteLossError"]

PRECISION_MODES = ("off", "bf16", "fp16")


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a NaN/inf loss or gradient."""


@dataclass
class StepOutcome:
    """What :meth:`MixedPrecision.step` did."""

    stepped: bool  # the optimizer updated the weights
    grad_norm: float  # total gradient norm before clipping (nan/inf when non-finite)
    reason: str = ""  # why a step was skipped: "non-finite loss", "non-finite gradient", "fp16 overflow"


class MixedPrecision:
    """Autocast context, (fp16) loss scaling and the non-finite step guard for one training run.

    Usage, one optimizer step (with ``accum`` micro-batches)::

        for images, targets in micro_batches:
            with precision.autocast():
                loss = criterion(model(images), targets)
            precision.backward(loss / accum)
            finite = finite and precision.is_finite(loss)
        outcome = precision.step(optimizer, model.parameters(), clip_grad=1.0, loss_finite=finite)
        if outcome.stepped:
            ema.update(model)
    """

    def __init__(self, mode: str = "off", device: torch.device = torch.device("cpu"), max_bad_steps: int = 20):
        mode = (mode or "off").lower()
        if mode not in PRECISION_MODES:
            raise ValueError(f"precision must be one of {PRECISION_MODES}, got {mode!r}")
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_bad_steps}")
        device = torch.device(device)
        if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bfloat16; use --amp fp16 or --amp off")
        self.mode = mode
        self.device = device
        self.max_bad_steps = max_bad_steps
        self.dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device.type) if mode == "fp16" else None
        )
        self.consecutive_bad = 0
        self.skipped_steps = 0  # all skipped steps of this run (non-finite loss/gradient, fp16 overflow)

    # ------------------------------------------------------------------ forward / backward
    def autocast(self):
        """The autocast context for the forward pass and the loss (a no-op when mode is ``off``)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the loss scaler in fp16 mode."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    @staticmethod
    def is_finite(loss: torch.Tensor) -> bool:
        return bool(torch.isfinite(loss.detach()).all())

    # ------------------------------------------------------------------ the optimizer step
    def step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[torch.nn.Parameter],
        *,
        clip_grad: Optional[float] = None,
        loss_finite: bool = True,
        where: str = "",
    ) -> StepOutcome:
        """Unscale, measure (and optionally clip) the gradient norm, then update, or skip a non-finite step.

        ``loss_finite`` is this rank's verdict on its loss(es) since the last step; the decision to skip is taken
        jointly by all ranks, so they stay in lockstep. ``where`` (e.g. "epoch 3, step 120") goes into the error
        message. Gradients are zeroed in every case.
        """
        params = [p for p in parameters if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        max_norm = clip_grad if clip_grad and clip_grad > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        loss_bad = all_reduce_max({"bad": 0.0 if loss_finite else 1.0})["bad"] > 0
        grad_bad = not math.isfinite(grad_norm)

        if not loss_bad and not grad_bad:
            if self.scaler is not None:
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            self.consecutive_bad = 0
            return StepOutcome(True, grad_norm)

        self.skipped_steps += 1
        if self.scaler is not None:
            # An overflow of the scaled fp16 gradients is the scaler's normal way of finding its scale: step() skips
            # the update and update() lowers the scale. It counts as a failure only once the scale is already < 1.
            overflow_only = grad_bad and not loss_bad
            if overflow_only:
                self.scaler.step(optimizer)  # sees the recorded inf and skips the update
            self.scaler.update()
            if overflow_only and self.scaler.get_scale() >= 1.0:
                optimizer.zero_grad(set_to_none=True)
                return StepOutcome(False, grad_norm, "fp16 overflow")
        optimizer.zero_grad(set_to_none=True)
        self.consecutive_bad += 1
        reason = "non-finite loss" if loss_bad else "non-finite gradient"
        if self.consecutive_bad >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.consecutive_bad} optimizer steps in a row had a {reason} (last at {where or 'this step'}); "
                f"stopping the run (mixed precision: {self.mode}). The weights were not updated by those steps. "
                "Things to try: --amp off (float32; the official recipe), a lower --lr, --clip-grad 1.0, more "
                "--warmup-epochs, or check the data for broken images."
            )
        return StepOutcome(False, grad_norm, reason)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, object]:
        return {
            "mode": self.mode,
            "skipped_steps": self.skipped_steps,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])  # type: ignore[arg-type]
