"""Autoregressive pretraining (ARM, Ren et al., ICLR 2025): predict the next cluster of patches.

For images whose patch grid is K clusters of k x k patches (cluster-major order, :mod:`.patches`), with
n = k*k patches per cluster::

    tokens  = cluster_major(patch_embed(x) + pos_embed)                      # (B, K*n, D), no class token
    feats   = ForwardOnlyVim(tokens[:, : (K-1)*n])                           # causal: clusters 1..K-1
    memory  = decoder_embed(feats)                                           # (B, (K-1)*n, d)
    queries = ar_token + sincos_pos(target patches of clusters 2..K)         # (B, (K-1)*n, d)
    queries = CrossAttentionBlock(queries, memory, allowed)  x decoder_depth # allowed[i, j]: j // n <= i // n
    pred    = decoder_pred(LN(queries))                                      # (B, (K-1)*n, p*p*C)
    loss    = mean((pred - normalised_patches(clusters 2..K))^2)             # every target, nothing masked

The query of a patch in cluster c+1 sees only encoder features of clusters <= c, and the forward-only encoder's
feature at position t depends only on tokens <= t: the prediction of cluster c+1 depends on clusters 1..c only.

Differences from ARM, on purpose: the decoder reads the final (normalised) encoder features rather than a
LayerNorm-ed concatenation of four encoder depths (simpler; at the depth-6 scale we run, the difference is
untested); ARM's blocks add a SwiGLU MLP after each Mamba mixer, ours are plain Vim blocks (so the weights
transfer to Vim unchanged).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from ..errors import InputError
from ..models.vim import VimConfig
from .causal import ForwardOnlyVim
from .decoders import CrossAttentionBlock, init_decoder_weights, sincos_pos_embed
from .patches import check_cluster_grid, cluster_order, normalised_patches, patchify, unpatchify

__all__ = ["ARObjective", "block_causal_mask"]


def block_causal_mask(num_clusters: int, cluster_len: int, device=None) -> torch.Tensor:
    """(T, T) bool with T = num_clusters * cluster_len: query i may see memory j iff j's cluster <= i's cluster.

    Queries index the *targets* (clusters 2..K), memory the *context* (clusters 1..K-1), both cluster-major, so
    "same index" means "the cluster just before the target".
    """
    cluster = torch.arange(num_clusters * cluster_len, device=device) // cluster_len
    return cluster[None, :] <= cluster[:, None]


class ARObjective(nn.Module):
    """Next-cluster prediction with a forward-only Vim encoder and a block-causal cross-attention decoder."""

    objective = "ar"

    def __init__(self, encoder_cfg: VimConfig, *, cluster_size: int = 2, decoder_dim: int = 64,
                 decoder_depth: int = 2, decoder_heads: int = 4, decoder_mlp_ratio: float = 4.0):
        super().__init__()
        if cluster_size < 1:
            raise InputError(f"cluster_size must be >= 1, got {cluster_size}")
        self.hparams = dict(cluster_size=cluster_size, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                            decoder_heads=decoder_heads, decoder_mlp_ratio=decoder_mlp_ratio)
        self.encoder = ForwardOnlyVim(encoder_cfg)
        self.cluster_size = cluster_size
        self.patch_size = encoder_cfg.patch_size
        self.in_chans = encoder_cfg.in_chans
        check_cluster_grid(self.encoder.patch_embed.grid_size, cluster_size, self.patch_size)
        self.decoder_dim = decoder_dim
        self.decoder_embed = nn.Linear(encoder_cfg.embed_dim, decoder_dim)
        self.ar_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(CrossAttentionBlock(decoder_dim, decoder_heads, decoder_mlp_ratio)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * self.in_chans)
        init_decoder_weights(nn.ModuleList([self.decoder_embed, self.decoder_blocks, self.decoder_norm,
                                            self.decoder_pred]))
        trunc_normal_(self.ar_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"encoder.pos_embed", "ar_token"}

    # ------------------------------------------------------------------ the objective
    def _layout(self, grid: Tuple[int, int], device) -> Tuple[torch.Tensor, int, int]:
        check_cluster_grid(grid, self.cluster_size, self.patch_size)
        n = self.cluster_size ** 2
        return cluster_order(grid, self.cluster_size, device), grid[0] * grid[1] // n, n

    def predict(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Predictions (B, (K-1)*n, p*p*C) for the patches of clusters 2..K, cluster-major; plus the layout."""
        tokens, grid = self.encoder.embed(images)
        order, num_clusters, n = self._layout(grid, images.device)
        context = tokens[:, order[: (num_clusters - 1) * n]]
        memory = self.decoder_embed(self.encoder(context))
        dec_pos = sincos_pos_embed(grid, self.decoder_dim, device=images.device)[:, order[n:]]
        queries = (self.ar_token + dec_pos).expand(images.shape[0], -1, -1).to(memory.dtype)
        allowed = block_causal_mask(num_clusters - 1, n, device=images.device)
        for block in self.decoder_blocks:
            queries = block(queries, memory, allowed)
        pred = self.decoder_pred(self.decoder_norm(queries))
        return dict(pred=pred, order=order, grid=torch.tensor(grid), cluster_len=torch.tensor(n))

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(loss, outputs): MSE over every target patch of clusters 2..K in normalised pixels. (``generator``:
        the objectives' common signature; next-cluster prediction draws no random numbers.)"""
        out = self.predict(images)
        n = int(out["cluster_len"])
        target = normalised_patches(images, self.patch_size)[:, out["order"][n:]]
        loss = F.mse_loss(out["pred"].float(), target)
        return loss, out

    # ------------------------------------------------------------------ features and pictures
    def extract_features(self, images: torch.Tensor, pool: str = "avg") -> torch.Tensor:
        """Frozen features: the forward-only encoder over all K clusters (cluster-major), mean of the tokens."""
        if pool != "avg":
            raise InputError("AR pretraining has no class token; use pool='avg' (mean of the patch tokens)")
        tokens, grid = self.encoder.embed(images)
        order, _, _ = self._layout(grid, images.device)
        return self.encoder(tokens[:, order]).mean(dim=1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(visible input, prediction) as images like ``images``, for a picture grid.

        The visible input is the first cluster (the only one never predicted; other pixels 0). The prediction shows
        the first cluster as given and every later cluster as predicted from the true clusters before it (teacher
        forcing), de-normalised with each true patch's own mean and std, as MAE's visualisation does.
        """
        out = self.predict(images)
        n, order = int(out["cluster_len"]), out["order"]
        grid = tuple(int(g) for g in out["grid"])
        patches = patchify(images.float(), self.patch_size)
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        predicted = patches.clone()
        targets = order[n:]
        predicted[:, targets] = out["pred"].float() * std[:, targets] + mean[:, targets]
        visible = torch.zeros_like(patches)
        visible[:, order[:n]] = patches[:, order[:n]]
        return (unpatchify(visible, grid, self.patch_size, self.in_chans),
                unpatchify(predicted, grid, self.patch_size, self.in_chans))
