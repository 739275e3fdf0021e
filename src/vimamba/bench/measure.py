"""One benchmark configuration (a model at a resolution) measured: warm-up, timed runs, latency statistics, memory.

This is what runs inside the isolated child process (:mod:`vimamba.bench.runner`). Two modes:

``"features"``  the Vim paper's setting: ``model.forward_features(images)`` under ``torch.no_grad()``, eval mode
                (patch embedding, all blocks, final norm; no head).
``"train"``     a training step without the optimiser: ``model(images)`` in train mode, then ``backward`` of the
                mean output, gradients released (``zero_grad(set_to_none=True)``) before each step.

Timing: ``warmup`` untimed steps, then up to ``repeats`` timed steps, stopping early (after at least
``min(3, repeats)`` steps) once the timed steps exceed ``time_budget_s``. On CUDA each step is timed with CUDA
events around it and waited for; on CPU with ``time.perf_counter``. bf16 is ``torch.autocast`` mixed precision
(float32 weights, bfloat16 matmuls), the way models are run and trained in practice.
"""
from __future__ import annotations

import math

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from ..errors import InputError
from .memory import MemoryProbe, describe_out_of_memory, is_out_of_memory
from .models import build_model, count_parameters, count_tokens, input_resolution, is_vim_model, model_label

__all__ = ["Configuration", "Measurement", "run_configuration", "make_step", "time_steps", "latency_summary", "MODES",
           "DTYPES"]

MODES = ("features", "train")
DTYPES = ("fp32", "bf16")


@dataclass
class Configuration:
    """Everything that defines one measurement."""

    model: str
    resolution: int
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    mode: str = "features"
    attention: Optional[str] = None  # timm models: "sdpa" | "math"; None for Vim
    scan_impl: Optional[str] = None  # Vim models: None/"auto" or an implementation name
    model_args: Dict[str, object] = field(default_factory=dict)
    warmup: int = 2
    repeats: int = 10
    time_budget_s: float = 60.0
    threads: Optional[int] = None
    max_memory_bytes: Optional[int] = None
    allow_tf32: bool = False
    seed: int = 0

    @property
    def label(self) -> str:
        return model_label(self.model, self.attention)


@dataclass
class Measurement:
    """The result of one configuration; ``status`` is "ok", "oom", "timeout" or "error" (see ``message``)."""

    label: str
    model: str
    attention: Optional[str]
    resolution: int
    batch_size: int
    status: str = "ok"
    message: str = ""
    scan_impl: Optional[str] = None
    input_resolution: Optional[int] = None  # pixels per side fed to the model (see models.input_resolution)
    tokens: Optional[int] = None
    params: Optional[int] = None
    threads: Optional[int] = None
    runs: int = 0
    latency_ms_median: Optional[float] = None
    latency_ms_p25: Optional[float] = None
    latency_ms_p75: Optional[float] = None
    latency_ms_min: Optional[float] = None
    latency_ms_max: Optional[float] = None
    images_per_s: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    baseline_memory_bytes: Optional[int] = None
    working_memory_bytes: Optional[int] = None  # peak - baseline: what the forward (and backward) itself adds

    @classmethod
    def for_configuration(cls, config: Configuration, **fields) -> "Measurement":
        return cls(label=config.label, model=config.model, attention=config.attention,
                   resolution=config.resolution, batch_size=config.batch_size, **fields)

    def to_dict(self) -> dict:
        return asdict(self)


def time_steps(
    step: Callable[[], None], device: torch.device, warmup: int, repeats: int, time_budget_s: float
) -> List[float]:
    """Run ``step`` ``warmup`` times untimed, then time up to ``repeats`` runs; returns seconds per run."""
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    synchronize()
    seconds: List[float] = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - t0)
        if sum(seconds) > time_budget_s and len(seconds) >= min(3, repeats):
            break
    return seconds


def latency_summary(seconds: List[float]) -> Dict[str, float]:
    """Median, quartiles (linear interpolation), min and max, in milliseconds."""
    ms = torch.tensor(seconds, dtype=torch.float64) * 1000.0
    q25, q50, q75 = torch.quantile(ms, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return dict(latency_ms_median=q50, latency_ms_p25=q25, latency_ms_p75=q75,
                latency_ms_min=ms.min().item(), latency_ms_max=ms.max().item())


def _input_channels(model: nn.Module) -> int:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first_conv.in_channels if first_conv is not None else 3


def make_step(model: nn.Module, images: torch.Tensor, mode: str, dtype: str) -> Callable[[], None]:
    """The work that is timed: one feature extraction or one forward + backward of ``images``."""
    def autocast():
        if dtype == "bf16":
            return torch.autocast(device_type=images.device.type, dtype=torch.bfloat16)
        return nullcontext()

    if mode == "features":
        def step() -> None:
            with torch.no_grad(), autocast():
                model.forward_features(images)
    elif mode == "train":
        def step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast():
                out = model(images)
            out.float().mean().backward()
    else:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    return step


def _input_over_cap(shape, max_bytes: Optional[int]) -> Optional[str]:
    """Why an input batch of ``shape`` (float32) cannot fit under ``max_bytes``; None when it can (or no cap)."""
    needed = 4 * math.prod(shape)
    if not max_bytes or needed <= max_bytes:
        return None
    return (f"the input alone ({'x'.join(map(str, shape))} float32, {needed / 1024 ** 3:.3g} GiB) exceeds "
            f"--max-memory-gb {max_bytes / 1024 ** 3:.3g}; not run")


def run_configuration(config: Configuration) -> Measurement:
    """Build the model and input, then time and probe them. Allocation failures give status "oom"."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config.allow_tf32
    result = Measurement.for_configuration(config, threads=torch.get_num_threads())
    probe = MemoryProbe(device)
    try:
        model = build_model(config.model, attention=config.attention, scan_impl=config.scan_impl,
                            model_args=config.model_args)
        result.params = count_parameters(model)
        result.tokens = count_tokens(model, config.resolution)
        result.input_resolution = size = input_resolution(model, config.resolution)
        if is_vim_model(config.model):
            from ..ops import scan_impl_in_use

            result.scan_impl = scan_impl_in_use(config.scan_impl if config.scan_impl != "auto" else None, device)
        model = model.to(device).train(config.mode == "train")
        shape = (config.batch_size, _input_channels(model), size, size)
        # The cap covers the input and everything the run allocates: refuse an input that alone exceeds it,
        # and set the cap before the input is allocated.
        refused = _input_over_cap(shape, config.max_memory_bytes)
        if refused:
            result.status, result.message = "oom", refused
            return result
        probe.cap(config.max_memory_bytes)
        images = torch.randn(*shape, device=device)
        step = make_step(model, images, config.mode, config.dtype)

        result.baseline_memory_bytes = probe.start()
        seconds = time_steps(step, device, config.warmup, config.repeats, config.time_budget_s)
        result.peak_memory_bytes = probe.peak()
    except Exception as error:  # noqa: BLE001 - only allocation failures are results; anything else propagates
        if not is_out_of_memory(error):
            raise
        result.status = "oom"
        result.message = describe_out_of_memory(error)
        return result

    result.working_memory_bytes = max(result.peak_memory_bytes - result.baseline_memory_bytes, 0)
    result.runs = len(seconds)
    for name, value in latency_summary(seconds).items():
        setattr(result, name, value)
    result.images_per_s = config.batch_size / (result.latency_ms_median / 1000.0)
    return result
