"""Peak-memory probes for one benchmark configuration, an optional memory cap, and out-of-memory detection.

Each configuration runs in its own child process (:mod:`vimamba.bench.runner`), so a probe only ever sees the
memory of that configuration:

- CUDA: ``torch.cuda.max_memory_allocated`` (tensors held by PyTorch's caching allocator), peak counter reset
  after the model and the input are on the device. ``--max-memory-gb`` becomes a per-process memory fraction,
  so a large GPU can stand in for a smaller one.
- CPU: the peak resident set size of the process (``VmHWM`` in ``/proc/self/status``), reset after set-up where
  the kernel allows it (``/proc/self/clear_refs``). It includes the interpreter and its libraries, which is why
  the baseline (resident memory before the first forward) is recorded next to it. ``--max-memory-gb`` limits the
  address space the configuration may add once its model is loaded (``RLIMIT_AS``, set before the input batch
  is allocated, so the input counts; an input larger than the cap is refused without allocating it); an
  allocation past it fails and is reported as OOM instead of letting the OS kill the machine's other processes.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Dict, Optional

import torch

from ..errors import InputError

__all__ = ["MemoryProbe", "is_out_of_memory", "describe_out_of_memory"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

# Messages of PyTorch's and the C library's allocation failures on CPU (CUDA raises torch.OutOfMemoryError).
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
                 "defaultcpuallocator")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocation failure (CUDA OOM, CPU allocator failure, MemoryError)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OOM_MESSAGES)


def describe_out_of_memory(error: BaseException) -> str:
    """A one-line reason: the allocator's own sentence, without its C++ source location."""
    text = " ".join(str(error).split()) or type(error).__name__
    start = text.find("DefaultCPUAllocator")  # "[enforce fail at alloc_cpu.cpp:NN] err == 0. DefaultCPUAllocator: ..."
    text = text[start:] if start >= 0 else text
    return text if len(text) <= 200 else text[:197] + "..."


def _proc_status() -> Dict[str, int]:
    """The ``Vm*`` lines of /proc/self/status in bytes (empty where there is no /proc)."""
    try:
        lines = _STATUS.read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key.startswith("Vm") and rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _max_rss_from_rusage() -> int:
    """Peak RSS from getrusage: kilobytes on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class MemoryProbe:
    """Measures the peak memory of the code run between :meth:`start` and :meth:`peak` on one device."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.baseline_bytes = 0
        self.peak_resettable = True
        if self.is_cuda:
            self.description = "CUDA peak allocated memory (torch.cuda.max_memory_allocated)"
        elif _STATUS.exists():
            self.description = "peak resident set size of the configuration's process (VmHWM)"
        else:
            self.description = "peak resident set size of the configuration's process (getrusage ru_maxrss)"

    def current(self) -> int:
        if self.is_cuda:
            return torch.cuda.memory_allocated(self.device)
        status = _proc_status()
        return status.get("VmRSS", _max_rss_from_rusage())

    def start(self) -> int:
        """Record the baseline (memory held now: model, input, and on CPU the process) and reset the peak."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
                _CLEAR_REFS.write_text("5")
            except OSError:
                self.peak_resettable = False  # the peak then also covers the set-up, which is never higher
        self.baseline_bytes = self.current()
        return self.baseline_bytes

    def peak(self) -> int:
        """Peak memory since :meth:`start`."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        status = _proc_status()
        return status.get("VmHWM", _max_rss_from_rusage())

    def cap(self, max_bytes: Optional[int]) -> None:
        """Make allocations beyond ``max_bytes`` fail (on CPU: beyond the current baseline; see module docs)."""
        if not max_bytes:
            return
        if self.is_cuda:
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, max_bytes / total), self.device)
            return
        address_space = _proc_status().get("VmSize")
        if address_space is None:
            raise InputError("--max-memory-gb on CPU needs Linux (/proc/self/status)")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = address_space + int(max_bytes)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
