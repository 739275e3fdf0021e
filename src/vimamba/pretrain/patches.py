"""Pixels <-> patches, the normalised-pixel targets, and the cluster-major token order of autoregressive pretraining.

Layout (MAE's): an image (B, C, H, W) with non-overlapping p x p patches becomes (B, M, p*p*C), patches in raster
order (row by row), each patch flattened as (row in patch, column in patch, channel). The pretraining target of a
patch is that patch normalised by its own mean and variance::

    target = (patch - mean(patch)) / sqrt(var(patch) + 1e-6)        # var unbiased, as MAE's torch .var()

Cluster-major order (ARM): the (gh, gw) patch grid is cut into (gh/k) x (gw/k) clusters of k x k patches; the
sequence lists cluster after cluster (clusters row by row), and inside a cluster its k*k patches row by row.
"""
from __future__ import annotations

from typing import Tuple

import torch
from ..errors import InputError

__all__ = ["patchify", "unpatchify", "normalised_patches", "cluster_order", "check_cluster_grid", "NORM_PIX_EPS"]

NORM_PIX_EPS = 1e-6


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), p*p*C); H and W must be multiples of p."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise InputError(f"image {h}x{w} is not a whole number of {p}x{p} patches; pretraining needs an image size "
                         f"that is a multiple of the patch size")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, grid: Tuple[int, int], patch_size: int, channels: int) -> torch.Tensor:
    """(B, gh*gw, p*p*C) -> (B, C, gh*p, gw*p), the inverse of :func:`patchify`."""
    b = patches.shape[0]
    gh, gw = grid
    p = patch_size
    x = patches.reshape(b, gh, gw, p, p, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, channels, gh * p, gw * p)


def normalised_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The per-patch normalised pixel targets (B, M, p*p*C), computed in float32."""
    patches = patchify(images.float(), patch_size)
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + NORM_PIX_EPS).sqrt()


def check_cluster_grid(grid: Tuple[int, int], cluster_size: int, patch_size: int) -> None:
    """Raise a ValueError unless the patch grid is a whole number of clusters (and at least two of them)."""
    gh, gw = grid
    k = cluster_size
    if gh % k or gw % k:
        raise InputError(
            f"the image gives a {gh}x{gw} patch grid ({gh * patch_size}x{gw * patch_size} px with patch "
            f"{patch_size}), which is not a whole number of {k}x{k}-patch clusters ({k * patch_size}x"
            f"{k * patch_size} px); use an image size that is a multiple of {k * patch_size} or another cluster size")
    if (gh // k) * (gw // k) < 2:
        raise InputError(f"a {gh}x{gw} patch grid holds a single {k}x{k} cluster: nothing to predict autoregressively")


def cluster_order(grid: Tuple[int, int], cluster_size: int, device=None) -> torch.Tensor:
    """Raster indices of the patches in cluster-major order: ``tokens[:, cluster_order(...)]`` reorders them."""
    gh, gw = grid
    k = cluster_size
    raster = torch.arange(gh * gw, device=device).reshape(gh // k, k, gw // k, k)
    return raster.permute(0, 2, 1, 3).reshape(-1)
