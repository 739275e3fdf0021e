"""Vim run forward-only: the causal encoder of autoregressive pretraining.

The bidirectional mixer computes ``out_proj(silu(z) * (y_f + y_b) / 2)``. Its backward scan at token t has read
every later token, so an autoregressive objective would see the future. :class:`ForwardOnlyMixer` wraps the
*same* modules and parameters as a :class:`~vimamba.models.vim.BiMambaMixer` (``in_proj``, the forward branch's
``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, and ``out_proj``; the backward branch is not kept) and
computes the unidirectional Mamba mixer of ARM::

    x, z = in_proj(h).chunk(2)
    x_f  = silu(causal_conv1d(x))
    y_f  = selective_scan(x_f, dt_proj(dt), A = -exp(A_log), B, C, D)          # t ascending only
    out  = out_proj(silu(z) * y_f)

i.e. twice the forward branch's share of the bidirectional mixer (without the /2, so that after the forward
weights are cloned into the backward branch for fine-tuning, ``(y_f + y_b) / 2`` starts at the scale the blocks
were trained at). The scan itself is the project's bidirectional kernel with an all-zero backward branch (whose
output is exactly 0); a single-direction kernel would halve the scan cost.

:class:`ForwardOnlyVim` holds the patch embedding, the position embedding of the patches (no class slot: there is
no class token in AR pretraining), the blocks and the final norm of a freshly built :class:`VisionMamba`, under the
same parameter names, so its state_dict maps onto a classifier key by key (see :mod:`.transfer`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..models.pos_embed import insert_cls_token, remove_cls_token, resize_pos_embed, split_pos_embed
from ..models.vim import BiMambaMixer, VimBlock, VimConfig, VisionMamba
from ..ops import bidirectional_selective_scan, depthwise_conv1d, resolve_scan_impl

__all__ = ["forward_selective_scan", "ForwardOnlyMixer", "ForwardOnlyBlock", "ForwardOnlyVim"]


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def forward_selective_scan(x, dt, B, C, A, D, dt_bias, z, impl: Optional[str] = None) -> torch.Tensor:
    """``silu(z) * y_f`` for the forward (t ascending) scan alone, through the bidirectional kernel.

    The backward branch gets zero inputs, zero B/C/D: its state stays 0 and its output is exactly 0, so the kernel
    returns ``silu(z) * y_f / 2``; doubling it is exact in floating point. No gradient reaches the zeros.
    """
    zeros_x, zeros_n = torch.zeros_like(x), torch.zeros_like(B)
    zeros_e = torch.zeros_like(D)
    half = bidirectional_selective_scan(x, zeros_x, dt, zeros_x, B, zeros_n, C, zeros_n, A, A.detach(), D, zeros_e,
                                        dt_bias, zeros_e, z, impl=impl)
    return half * 2


class ForwardOnlyMixer(nn.Module):
    """The forward branch of a :class:`BiMambaMixer` as a unidirectional Mamba mixer (same parameter objects)."""

    def __init__(self, mixer: BiMambaMixer):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
        self.scan_impl = mixer.scan_impl
        self.A_log = mixer.A_log
        self.D = mixer.D
        self.in_proj = mixer.in_proj
        self.conv1d = mixer.conv1d
        self.x_proj = mixer.x_proj
        self.dt_proj = mixer.dt_proj
        self.out_proj = mixer.out_proj

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = F.silu(depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias))  # causal: token t sees t-3..t
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # the bias is added inside the scan, before the softplus
        y = forward_selective_scan(x, dt, B, C, -torch.exp(_f32(self.A_log)), _f32(self.D), _f32(self.dt_proj.bias),
                                   z, impl=resolve_scan_impl(self.scan_impl, x.device))
        return self.out_proj(y)


class ForwardOnlyBlock(nn.Module):
    """A :class:`VimBlock` with its mixer run forward-only: ``r + drop_path(mixer_f(RMSNorm(r)))``."""

    def __init__(self, block: VimBlock):
        super().__init__()
        self.mixer = ForwardOnlyMixer(block.mixer)
        self.norm = block.norm
        self.drop_path = block.drop_path

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return residual + self.drop_path(self.mixer(self.norm(residual)))


class ForwardOnlyVim(nn.Module):
    """A causal Vim encoder for any token order: each output token depends only on the tokens before it.

    ``patch_embed`` / ``pos_embed`` (patch slots only, raster order, (1, M, D)) / ``layers`` / ``norm_f`` carry the
    names of :class:`VisionMamba`; the class token, its position slot, the head and the backward branches do not
    exist here.
    """

    def __init__(self, cfg: VimConfig):
        super().__init__()
        if cfg.stride != cfg.patch_size:
            raise InputError(f"pretraining needs non-overlapping patches (stride == patch_size), got patch "
                             f"{cfg.patch_size} stride {cfg.stride}")
        full = VisionMamba(replace(cfg, num_classes=0))  # the classifier's own construction and initialisation
        self.cfg = full.cfg
        self.embed_dim = cfg.embed_dim
        self.patch_embed = full.patch_embed
        self.pos_embed = nn.Parameter(split_pos_embed(full.pos_embed.detach())[1].clone())
        self.pos_drop = full.pos_drop
        self.layers = nn.ModuleList(ForwardOnlyBlock(block) for block in full.layers)
        self.norm_f = full.norm_f

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed"}

    def set_scan_impl(self, impl: Optional[str]) -> None:
        for block in self.layers:
            block.mixer.scan_impl = impl

    def patch_pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The (1, gh*gw, D) patch position embedding for a patch grid (resized bicubically when it differs)."""
        if tuple(grid) == self.patch_embed.grid_size:
            return self.pos_embed
        with_slot = insert_cls_token(self.pos_embed, self.pos_embed.new_zeros(1, 1, self.embed_dim))
        return remove_cls_token(resize_pos_embed(with_slot, self.patch_embed.grid_size, grid))

    def embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images -> (B, M, D) patch tokens in raster order, position embedding added; and the patch grid."""
        tokens, grid = self.patch_embed(images)
        return tokens + self.patch_pos_embed(grid), grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) tokens in scan order -> the normalised features (B, L, D), causal in L."""
        residual = self.pos_drop(tokens)
        if self.cfg.residual_in_fp32:
            residual = _f32(residual)
        for block in self.layers:
            residual = block(residual)
        return self.norm_f(residual)
