"""The light decoders of pretraining (discarded afterwards) and their fixed 2-D sin-cos position embedding.

* :class:`CrossAttentionBlock` (ARM's decoder block): queries attend to encoder features through a boolean mask,
  then an MLP; pre-norm residuals, no self-attention among the queries (so a query's output depends only on
  itself and the features its mask row allows)::

      q <- q + proj(softmax(Wq LN(q) . (Wk LN(m))^T / sqrt(d_head) + mask) Wv LN(m))
      q <- q + MLP(LN(q))

* The MAE decoder uses timm's ViT ``Block`` (self-attention over all tokens).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, build_sincos2d_pos_embed
from ..errors import InputError

__all__ = ["CrossAttentionBlock", "sincos_pos_embed", "init_decoder_weights"]


def sincos_pos_embed(grid: Tuple[int, int], dim: int, device=None) -> torch.Tensor:
    """(1, gh*gw, dim) fixed 2-D sin-cos position embedding, raster order (MAE's and ARM's decoder choice)."""
    if dim % 4:
        raise InputError(f"the decoder width must be a multiple of 4 for a 2-D sin-cos position embedding, got {dim}")
    return build_sincos2d_pos_embed(list(grid), dim=dim, device=device).unsqueeze(0)


def init_decoder_weights(module: nn.Module) -> None:
    """MAE's decoder init: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CrossAttentionBlock(nn.Module):
    """Masked cross-attention from queries to a memory, then an MLP (ARM's decoder block)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise InputError(f"decoder width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, allowed: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """queries (B, Lq, dim), memory (B, Lm, dim), allowed (Lq, Lm) bool (True: may attend)."""
        b, lq, dim = queries.shape
        heads, d_head = self.num_heads, dim // self.num_heads
        q = self.q(self.norm_q(queries)).reshape(b, lq, heads, d_head).transpose(1, 2)
        k, v = self.kv(self.norm_kv(memory)).reshape(b, memory.shape[1], 2, heads, d_head).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        queries = queries + self.proj(attended.transpose(1, 2).reshape(b, lq, dim))
        return queries + self.mlp(self.norm_mlp(queries))
