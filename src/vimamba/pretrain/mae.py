"""Masked-autoencoder pretraining (MAE, He et al. 2022) for Vim, with the kept patches in raster order.

For an image with M patches and mask ratio r, n_keep = int(M * (1 - r)) patches are kept at random per image::

    keep    = sort(argsort(uniform noise)[:, :n_keep])               # random subset, *sorted*: raster order
    tokens  = (patch_embed(x) + pos_embed[patch slots])[:, keep]      # (B, n_keep, D)
    tokens  = insert(tokens, cls_token + pos_embed[class slot], at=n_keep // 2)   # Vim's middle class token
    feats   = norm_f(Vim blocks(tokens))                              # the bidirectional encoder, unchanged
    full    = mask_token everywhere, decoder_embed(feats) scattered to the kept raster positions
    full    = [decoder_embed(class feature)] + (full + sincos_pos)    # (B, 1 + M, d)
    pred    = decoder_pred(LN(TransformerBlocks(full)))[:, 1:]        # (B, M, p*p*C)
    loss    = sum_masked mean_pixels (pred - normalised_patches)^2 / #masked

Official MAE feeds the kept tokens in the order of a random permutation, harmless for attention and destructive
for a scan (neighbours in the sequence would be random patches); sorting keeps the scan's sense of order.

Decoder: timm ViT blocks (self-attention), as MAE. The decoder has to carry information from the visible patches
into mask tokens anywhere in the image, in both directions; attention does that in one layer at any position,
its cost at M <= a few hundred tokens and a narrow width is small next to the encoder's, and it is discarded
after pretraining, so it does not need to be a Vim. (A Vim decoder would also see both directions; it is an
untested option.)
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block

from ..errors import InputError
from ..models.pos_embed import insert_cls_token, remove_cls_token, split_pos_embed
from ..models.vim import VimConfig, VisionMamba
from .decoders import init_decoder_weights, sincos_pos_embed
from .patches import normalised_patches, patchify, unpatchify

__all__ = ["MAEObjective", "random_sorted_keep"]


def random_sorted_keep(batch: int, num_patches: int, num_keep: int, device=None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, num_keep) indices of a uniformly random subset of patches per image, ascending (raster order).

    The noise is drawn on the generator's device (``device`` when there is no generator), then moved to ``device``.
    """
    noise = torch.rand(batch, num_patches, device=generator.device if generator is not None else device,
                       generator=generator)
    return noise.argsort(dim=1)[:, :num_keep].sort(dim=1).values.to(device)


class MAEObjective(nn.Module):
    """Mask 75% of the patches, encode the rest with the bidirectional Vim, reconstruct the masked ones."""

    objective = "mae"

    def __init__(self, encoder_cfg: VimConfig, *, mask_ratio: float = 0.75, decoder_dim: int = 64,
                 decoder_depth: int = 2, decoder_heads: int = 4, decoder_mlp_ratio: float = 4.0):
        super().__init__()
        if not 0 <= mask_ratio < 1:
            raise InputError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if encoder_cfg.stride != encoder_cfg.patch_size:
            raise InputError(f"pretraining needs non-overlapping patches (stride == patch_size), got patch "
                             f"{encoder_cfg.patch_size} stride {encoder_cfg.stride}")
        self.hparams = dict(mask_ratio=mask_ratio, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                            decoder_heads=decoder_heads, decoder_mlp_ratio=decoder_mlp_ratio)
        self.encoder = VisionMamba(encoder_cfg, num_classes=0)
        self.mask_ratio = mask_ratio
        self.patch_size = encoder_cfg.patch_size
        self.in_chans = encoder_cfg.in_chans
        self.decoder_dim = decoder_dim
        self.decoder_embed = nn.Linear(encoder_cfg.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, decoder_mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * self.in_chans)
        init_decoder_weights(nn.ModuleList([self.decoder_embed, self.decoder_blocks, self.decoder_norm,
                                            self.decoder_pred]))
        trunc_normal_(self.mask_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"encoder.pos_embed", "encoder.cls_token", "mask_token"}

    def num_keep(self, num_patches: int) -> int:
        return max(1, int(num_patches * (1 - self.mask_ratio)))

    # ------------------------------------------------------------------ the objective
    def encode_visible(self, images: torch.Tensor, keep: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """Encoder features (B, n_keep + 1, D) of the kept patches (class token in the middle), the kept raster
        indices (B, n_keep), and the patch grid. ``keep`` (sorted indices) overrides the random choice;
        ``generator`` draws it (a fixed mask for evaluation and pictures; default: the global RNG)."""
        enc = self.encoder
        tokens, grid = enc.patch_embed(images)
        b, m, _ = tokens.shape
        cls_pos, patch_pos = split_pos_embed(enc._pos_embed_for(grid))
        tokens = tokens + patch_pos
        if keep is None:
            keep = random_sorted_keep(b, m, self.num_keep(m), device=images.device, generator=generator)
        kept = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        x = insert_cls_token(kept, (enc.cls_token + cls_pos).expand(b, -1, -1))
        x = enc.pos_drop(x)
        if enc.cfg.residual_in_fp32:
            x = x.to(torch.promote_types(x.dtype, torch.float32))
        for block in enc.layers:
            x, _ = enc._run_block(block, x)
        return enc.norm_f(x), keep, grid

    def predict(self, images: torch.Tensor, keep: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        feats, keep, grid = self.encode_visible(images, keep, generator)
        b, m = feats.shape[0], grid[0] * grid[1]
        x = self.decoder_embed(feats)
        cls_feature = x[:, keep.shape[1] // 2: keep.shape[1] // 2 + 1]
        visible = remove_cls_token(x)
        full = self.mask_token.to(x.dtype).expand(b, m, -1).scatter(
            1, keep.unsqueeze(-1).expand(-1, -1, self.decoder_dim), visible)
        full = full + sincos_pos_embed(grid, self.decoder_dim, device=images.device).to(x.dtype)
        x = torch.cat([cls_feature, full], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        mask = torch.ones(b, m, device=images.device).scatter(1, keep, 0.0)  # 1 = masked (predicted), 0 = kept
        return dict(pred=pred, mask=mask, keep=keep, grid=torch.tensor(grid))

    def forward(self, images: torch.Tensor, keep: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(loss, outputs): normalised-pixel MSE averaged over the masked patches only."""
        out = self.predict(images, keep, generator)
        target = normalised_patches(images, self.patch_size)
        per_patch = (out["pred"].float() - target).pow(2).mean(dim=-1)
        loss = (per_patch * out["mask"]).sum() / out["mask"].sum().clamp(min=1)
        return loss, out

    # ------------------------------------------------------------------ features and pictures
    def extract_features(self, images: torch.Tensor, pool: str = "avg") -> torch.Tensor:
        """Frozen features of the whole image (no masking): mean of the patch tokens, or the class token."""
        if pool not in ("avg", "token"):
            raise InputError(f"pool must be 'avg' or 'token', got {pool!r}")
        tokens = self.encoder.forward_features(images)
        return remove_cls_token(tokens).mean(dim=1) if pool == "avg" else tokens[:, (tokens.shape[1] - 1) // 2]

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, keep: Optional[torch.Tensor] = None,
                    generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(visible input with masked patches at 0, prediction: kept patches as given + masked ones predicted,
        de-normalised with each true patch's mean and std)."""
        out = self.predict(images, keep, generator)
        grid = tuple(int(g) for g in out["grid"])
        patches = patchify(images.float(), self.patch_size)
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        masked = out["mask"].unsqueeze(-1)
        predicted = patches * (1 - masked) + (out["pred"].float() * std + mean) * masked
        visible = patches * (1 - masked)
        return (unpatchify(visible, grid, self.patch_size, self.in_chans),
                unpatchify(predicted, grid, self.patch_size, self.in_chans))
