"""Launch plans of the Triton scan: parameters, and how a shape is cut into programs (no torch, no Triton).

Shared by the launcher (:mod:`.triton_scan`) and ``benchmarks/triton_compile_report.py``, which compiles every
kernel variant these plans can choose on machines without a GPU (and without torch, for a second Triton version).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["TritonScanConfig", "ForwardPlan", "BackwardPlan", "forward_plan", "backward_plan"]


@dataclass(frozen=True)
class TritonScanConfig:
    """Launch parameters (powers of two). The kernels' register tile is [items, block_e, N]: ``items`` tokens
    inside each thread, channels over 8 lanes x the warps (so ``block_e`` is a multiple of 8 x ``num_warps``),
    the N states as 4 per thread x N/4 lanes. ``checkpoint`` is the backward pass's checkpoint interval (tokens per
    saved state). ``min_programs``: the forward splits sequences into segments until at least this many programs
    run (0: 4 per streaming multiprocessor of the device); ``max_bwd_groups`` bounds the backward's channel groups
    (each one float32 dB/dC partial of (batch, L, N)). Not yet tuned on a GPU: ``benchmarks/scan_triton.py
    --sweep`` does that."""

    items_bwd: int = 4
    block_e_fwd: int = 32
    block_e_bwd: int = 8
    num_warps_fwd: int = 1
    num_warps_bwd: int = 1
    checkpoint: int = 32
    min_programs: int = 0
    max_bwd_groups: int = 8
    row_scalars: Optional[bool] = None  # B/C rows as N scalar loads (None: yes when compiled, no interpreted)

    def __post_init__(self) -> None:
        for name in ("items_bwd", "block_e_fwd", "block_e_bwd", "num_warps_fwd", "num_warps_bwd",
                     "checkpoint"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"TritonScanConfig.{name} must be a power of two, got {value}")
        if self.checkpoint % self.items_bwd:
            raise ValueError("TritonScanConfig.checkpoint must be a multiple of items_bwd")
        if self.block_e_fwd % (32 * self.num_warps_fwd):
            raise ValueError(f"TritonScanConfig: the forward's channel block ({self.block_e_fwd}) must be a multiple "
                             f"of 32 x num_warps_fwd (one channel per thread)")
        if self.block_e_bwd % (8 * self.num_warps_bwd):
            raise ValueError(f"TritonScanConfig: the backward's channel block ({self.block_e_bwd}) must be a "
                             f"multiple of 8 x num_warps_bwd")
        if self.min_programs < 0 or self.max_bwd_groups < 1:
            raise ValueError("TritonScanConfig.min_programs must be >= 0 and max_bwd_groups >= 1")


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _state_block(n_state: int) -> int:
    """The state axis padded to a power of two of at least 4 (4 states per thread)."""
    return max(4, _next_power_of_2(n_state))


@dataclass(frozen=True)
class ForwardPlan:
    """How the forward pass is launched for one shape (also what the compile report enumerates)."""

    n_chunks: int  # checkpoints per direction
    n_segments: int
    seg_len: int  # tokens per segment, a multiple of the checkpoint interval
    e_blocks: int
    block_e: int
    block_n: int


def forward_plan(batch: int, length: int, channels: int, n_state: int, target_programs: int,
                 config: TritonScanConfig) -> ForwardPlan:
    """Segments: one per sequence when batch x channel blocks reach ``target_programs``, else enough to get there
    (at most one per checkpoint chunk)."""
    n_chunks = max(1, _cdiv(length, config.checkpoint))
    e_blocks = _cdiv(channels, config.block_e_fwd)
    programs = batch * e_blocks
    wanted = 1 if programs >= target_programs else min(n_chunks, _cdiv(target_programs, programs))
    seg_chunks = max(1, n_chunks // wanted)  # round down: at least `wanted` segments
    n_segments = _cdiv(n_chunks, seg_chunks)
    return ForwardPlan(n_chunks, n_segments, seg_chunks * config.checkpoint, e_blocks, config.block_e_fwd,
                       _state_block(n_state))


@dataclass(frozen=True)
class BackwardPlan:
    groups: int
    blocks_per_group: int
    block_e: int
    block_n: int


def backward_plan(batch: int, channels: int, n_state: int, target_programs: int,
                  config: TritonScanConfig) -> BackwardPlan:
    """Channel groups: as many as fill ``target_programs`` with the batch, at most ``max_bwd_groups``."""
    e_blocks = _cdiv(channels, config.block_e_bwd)
    wanted = max(1, min(e_blocks, config.max_bwd_groups, _cdiv(target_programs, batch)))
    per_group = _cdiv(e_blocks, wanted)
    return BackwardPlan(_cdiv(e_blocks, per_group), per_group, config.block_e_bwd, _state_block(n_state))
