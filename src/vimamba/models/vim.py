"""Vision Mamba (Vim): an attention-free backbone of bidirectional selective state-space blocks.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model", Zhu et al.,
ICML 2024 (arXiv:2401.09417). This module computes exactly what the official release (hustvl/Vim,
``vim/models_mamba.py`` with the ``bimamba_type="v2"`` mixer) computes, so its checkpoints load with
``strict=True`` and give the official logits. The forward pass, for an image x::

    tokens = Conv2d_{patch, stride}(x) flattened to (B, M, D)                 # M patches in raster order
    tokens = insert(tokens, cls_token, at=M // 2) + pos_embed                # class token in the middle slot
    r_0    = dropout(tokens)                                                 # the residual stream, float32
    r_k+1  = r_k + drop_path_k(BiMamba_k(RMSNorm_k(r_k)))                    # k = 0 .. depth-1
    logits = head(RMSNorm_f(r_depth)[:, M // 2])

and each bidirectional mixer, for h = RMSNorm(r) of shape (B, L, D)::

    x, z   = in_proj(h).chunk(2)                                             # (B, L, E) each, E = expand * D
    for the forward (f) and the backward (b) direction, each with its own weights:
        x_d    = silu(depthwise_conv_d(x))         # causal for f; anti-causal (the flipped sequence's) for b
        dt, B, C = x_proj_d(x_d).split(R, N, N)
        y_d    = selective_scan_d(x_d, dt_proj_d(dt), A_d = -exp(A_log_d), B, C, D_d)   # f: t ascending, b: t descending
    out    = out_proj(silu(z) * (y_f + y_b) / 2)

The official module names are kept (``layers.i.mixer.conv1d_b`` ...) so the state_dict matches key for key.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, lecun_normal_, trunc_normal_
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..ops import bidirectional_conv_silu, bidirectional_selective_scan, resolve_scan_impl
from ..ops.scan_inputs import ScanInputs
from .pos_embed import insert_cls_token, remove_cls_token, resize_pos_embed, same_grid

__all__ = ["VimConfig", "VisionMamba", "VimBlock", "BiMambaMixer", "RMSNorm", "PatchEmbed"]


def _to_2tuple(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise InputError(f"expected an int or a pair (height, width), got {v}")
    return v  # type: ignore[return-value]


def _float32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """float32, or the tensor's own dtype when it is wider (float64 for gradient checks)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class VimConfig:
    """Everything that defines a Vim model. Registered variants are named sets of these fields."""

    img_size: Union[int, Tuple[int, int]] = 224  # the size pos_embed is stored for; any other size works too
    patch_size: int = 16
    stride: int = 16  # 8 for the "+" (long-sequence fine-tuned) models
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192  # D
    depth: int = 24  # L
    d_state: int = 16  # N
    expand: int = 2  # E = expand * D
    d_conv: int = 4
    dt_rank: Optional[int] = None  # R; None = ceil(D / 16)
    drop_rate: float = 0.0  # dropout after the position embedding
    drop_path_rate: float = 0.1  # stochastic depth, linear over depth (the official default)
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    global_pool: str = "token"  # "token": the middle class token (official); "avg": mean of the patch tokens
    # Initialisation. The official code gives only the forward direction Mamba's dt init; the backward
    # direction keeps PyTorch's Linear init with a zero dt bias. symmetric_init=True gives both the Mamba init.
    symmetric_init: bool = False
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    # Which selective-scan implementation to run (None: automatic, see vimamba.ops).
    scan_impl: Optional[str] = None

    def __post_init__(self) -> None:
        self.img_size = _to_2tuple(self.img_size)
        for name in ("patch_size", "stride", "in_chans", "embed_dim", "depth", "d_state", "expand", "d_conv"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"VimConfig.{name} must be a positive integer, got {value!r}")
        if self.num_classes < 0:
            raise InputError(f"VimConfig.num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        if self.stride > self.patch_size:
            raise InputError(f"stride {self.stride} > patch_size {self.patch_size} would skip pixels")
        if min(self.img_size) < self.patch_size:
            raise InputError(f"img_size {self.img_size} is smaller than one patch ({self.patch_size})")
        if self.global_pool not in ("token", "avg"):
            raise InputError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.embed_dim / 16)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VimConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown VimConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (no bias, as the official Triton kernel)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = _float32_or_wider(x)
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(x32.dtype)
        return y.to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class PatchEmbed(nn.Module):
    """Image to patch tokens with a Conv2d (kernel ``patch_size``, stride ``stride``), any input size."""

    def __init__(self, img_size: Tuple[int, int], patch_size: int, stride: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.stride = stride
        self.in_chans = in_chans
        self.img_size = img_size
        self.grid_size = self.feat_size(img_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Patch grid (rows, cols) for an image of (height, width): ((H - p) // s + 1, (W - p) // s + 1)."""
        h, w = img_size
        return ((h - self.patch_size) // self.stride + 1, (w - self.patch_size) // self.stride + 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        if x.dim() != 4:
            raise InputError(f"expected images of shape (batch, channels, height, width), got {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise InputError(f"the model takes {self.in_chans}-channel images, got {x.shape[1]} channels")
        if min(x.shape[-2:]) < self.patch_size:
            raise InputError(f"image {tuple(x.shape[-2:])} is smaller than one {self.patch_size}x{self.patch_size} patch")
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


class BiMambaMixer(nn.Module):
    """The bidirectional Mamba mixer of Vim ("bimamba v2" with the /2 of ``if_divide_out``).

    Shared ``in_proj`` (D -> 2E, no bias) and ``out_proj`` (E -> D, no bias); per direction its own depthwise conv
    (kernel 4) + SiLU, ``x_proj`` (E -> R + 2N), ``dt_proj`` (R -> E), ``A_log`` (E, N) and ``D`` (E,).
    The backward direction's parameters carry the official ``_b`` suffix.
    """

    def __init__(self, cfg: VimConfig):
        super().__init__()
        d_model, d_inner, n_state, dt_rank = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        self.d_inner, self.d_state, self.dt_rank = d_inner, n_state, dt_rank
        self.scan_impl = cfg.scan_impl

        # Parameters in the official state_dict order: A_log, D, A_b_log, D_b, then the submodules.
        a_log = torch.log(torch.arange(1, n_state + 1, dtype=torch.float32)).repeat(d_inner, 1)  # S4D-real
        self.A_log = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_b_log = nn.Parameter(a_log.clone())
        self.D_b = nn.Parameter(torch.ones(d_inner))

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, padding=cfg.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * n_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.conv1d_b = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, padding=cfg.d_conv - 1, bias=True)
        self.x_proj_b = nn.Linear(d_inner, dt_rank + 2 * n_state, bias=False)
        self.dt_proj_b = nn.Linear(dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

        self._init_dt(self.dt_proj, cfg)
        if cfg.symmetric_init:
            self._init_dt(self.dt_proj_b, cfg)
        else:  # official quirk: default Linear weight init and, after the GPT-2 style re-init, a zero bias
            nn.init.zeros_(self.dt_proj_b.bias)

    @staticmethod
    def _init_dt(dt_proj: nn.Linear, cfg: VimConfig) -> None:
        """Mamba's dt init: weight ~ U(+-R^-0.5 * scale); softplus(bias) log-uniform in [dt_min, dt_max]."""
        bound = cfg.resolved_dt_rank ** -0.5 * cfg.dt_scale
        nn.init.uniform_(dt_proj.weight, -bound, bound)
        dt = torch.exp(
            torch.rand(dt_proj.bias.shape[0]) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        ).clamp(min=cfg.dt_init_floor)
        inverse_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            dt_proj.bias.copy_(inverse_softplus_dt)

    def _ssm_inputs(
        self, x: torch.Tensor, x_proj: nn.Linear, dt_proj: nn.Linear
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input-dependent dt (before bias), B and C of one scan direction from its conv output x."""
        dt, B, C = x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight)  # dt_proj's bias is added inside the scan, before the softplus
        return dt, B, C

    def _scan_inputs(self, x_f: torch.Tensor, x_b: torch.Tensor, z: torch.Tensor) -> ScanInputs:
        """The bidirectional scan's inputs from the two branches' conv outputs and the gate: each direction's dt, B
        and C from its projections, A = -exp(A_log), D and the dt bias (parameters in float32, or wider)."""
        dt_f, B_f, C_f = self._ssm_inputs(x_f, self.x_proj, self.dt_proj)
        dt_b, B_b, C_b = self._ssm_inputs(x_b, self.x_proj_b, self.dt_proj_b)
        wide = _float32_or_wider
        return ScanInputs(x_f, x_b, dt_f, dt_b, B_f, B_b, C_f, C_b, -torch.exp(wide(self.A_log)),
                          -torch.exp(wide(self.A_b_log)), wide(self.D), wide(self.D_b), wide(self.dt_proj.bias),
                          wide(self.dt_proj_b.bias), z)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        impl = resolve_scan_impl(self.scan_impl, x.device)
        # silu(conv) of both branches: causal for f, anti-causal (the flipped sequence's) for b; the native CPU
        # kernel does both in one pass when the scan runs natively too.
        x_f, x_b = bidirectional_conv_silu(x, self.conv1d.weight, self.conv1d.bias, self.conv1d_b.weight,
                                           self.conv1d_b.bias, native=impl == "cpp")
        y = bidirectional_selective_scan(*self._scan_inputs(x_f, x_b, z), impl=impl)  # silu(z) * (y_f + y_b) / 2
        return self.out_proj(y)


class VimBlock(nn.Module):
    """Pre-norm residual block: r + drop_path(mixer(RMSNorm(r))). Returns (new residual, mixer output)."""

    def __init__(self, cfg: VimConfig, drop_path: float = 0.0):
        super().__init__()
        self.mixer = BiMambaMixer(cfg)  # registered before `norm`: the official key order
        self.norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, residual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mixed = self.mixer(self.norm(residual))
        return residual + self.drop_path(mixed), mixed


class VisionMamba(nn.Module):
    """Vision Mamba with the class token in the middle of the patch sequence (the released "midclstok" models).

    Accepts images of any size: the position embedding, stored for ``cfg.img_size``, is resized bicubically for
    other patch grids while the class-token slot stays in the middle (:func:`vimamba.models.pos_embed.resize_pos_embed`).
    """

    def __init__(self, cfg: Optional[VimConfig] = None, **overrides):
        super().__init__()
        cfg = replace(cfg, **overrides) if cfg is not None else VimConfig(**overrides)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = cfg.embed_dim
        self.global_pool = cfg.global_pool
        self.num_prefix_tokens = 1  # the class token (in the middle of the sequence, not in front)
        self.grad_checkpointing = False

        # Registration order reproduces the official state_dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.stride, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        # linear stochastic-depth schedule: the output of block k is dropped with rate drop_path_rate * k / (depth-1)
        drop_path_rates = [cfg.drop_path_rate * k / max(cfg.depth - 1, 1) for k in range(cfg.depth)]
        self.layers = nn.ModuleList(VimBlock(cfg, drop_path=rate) for rate in drop_path_rates)
        self.norm_f = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        # timm feature metadata (features_only / FeatureGetterNet): one (B, D, H/stride, W/stride) map per block
        self.feature_info = [dict(module=f"layers.{i}", num_chs=cfg.embed_dim, reduction=cfg.stride)
                             for i in range(cfg.depth)]

        self.init_weights()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation (``segm_init_weights`` + Mamba's GPT-2 style ``_init_weights``)."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for block in self.layers:
            # out_proj: kaiming-uniform(a=sqrt(5)) scaled by 1/sqrt(depth) (one residual branch per layer)
            nn.init.kaiming_uniform_(block.mixer.out_proj.weight, a=math.sqrt(5))
            block.mixer.out_proj.weight /= math.sqrt(self.cfg.depth)

    # ------------------------------------------------------------------ timm-style utilities
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for timm's layer-wise LR decay (``timm.optim.create_optimizer_v2(layer_decay=)``)."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed", blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def set_scan_impl(self, impl: Optional[str]) -> None:
        """Select the selective-scan implementation of every mixer ("reference", "chunked", "triton" or None=auto)."""
        self.cfg.scan_impl = impl
        for block in self.layers:
            block.mixer.scan_impl = impl

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = self.cfg.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise InputError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
            self.global_pool = self.cfg.global_pool = global_pool
        device = self.pos_embed.device
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def load_pretrained(self, checkpoint_path: str, prefix: str = "") -> None:
        """Load a local weight file (timm calls this for ``pretrained_cfg_overlay=dict(file=...)``).

        Official ``.pth`` (the trained ``model`` weights), bare state_dicts, vimamba ``.pth``/``.safetensors``;
        ``pos_embed`` is resized, the head replaced when the model was built for another number of classes, and
        anything else that does not fit is refused (see :func:`vimamba.models.weights.load_pretrained`).
        """
        if prefix:
            raise InputError("Vim checkpoints have no prefix to strip; load_pretrained takes prefix=''")
        from .weights import load_pretrained  # imported on use: the weights module depends on this one

        load_pretrained(self, checkpoint_path)

    @torch.no_grad()
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None, stride: Optional[int] = None) -> None:
        """Change the native input size and/or patch stride, resizing ``pos_embed`` (class slot kept in the middle)."""
        pe = self.patch_embed
        old_grid = pe.grid_size
        if stride is not None:
            if stride > pe.patch_size:
                raise InputError(f"stride {stride} > patch_size {pe.patch_size}")
            pe.stride = stride
            pe.proj.stride = (stride, stride)
            self.cfg.stride = stride
            for info in self.feature_info:
                info["reduction"] = stride
        if img_size is not None:
            pe.img_size = self.cfg.img_size = _to_2tuple(img_size)
        pe.grid_size = pe.feat_size(pe.img_size)
        if pe.grid_size != old_grid:
            self.pos_embed = nn.Parameter(resize_pos_embed(self.pos_embed.data, old_grid, pe.grid_size),
                                          requires_grad=self.pos_embed.requires_grad)
        if hasattr(self, "_traits"):  # built by timm: keep its record of the current input size up to date
            self._traits = dict(self._traits, img_size=pe.img_size)

    # ------------------------------------------------------------------ forward
    def _pos_embed_for(self, grid: Tuple[int, int]) -> torch.Tensor:
        if same_grid(grid, self.patch_embed.grid_size):  # without pinning a symbolic (exported) image size
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, self.patch_embed.grid_size, grid)

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images -> token sequence with the class token in the middle slot, plus position embedding.

        Returns the (B, M + 1, D) residual stream (float32 when ``residual_in_fp32``) and the patch grid.
        """
        tokens, grid = self.patch_embed(x)
        tokens = insert_cls_token(tokens, self.cls_token.expand(tokens.shape[0], -1, -1))
        tokens = self.pos_drop(tokens + self._pos_embed_for(grid))
        if self.cfg.residual_in_fp32:
            tokens = _float32_or_wider(tokens)
        return tokens, grid

    def _run_block(self, block: VimBlock, residual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, residual, use_reentrant=False)
        return block(residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> final normalised tokens (B, M + 1, D), class token at index M // 2."""
        residual, _ = self.embed(x)
        for block in self.layers:
            residual, _ = self._run_block(block, residual)
        return self.norm_f(residual)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normalised tokens -> class logits (or the pooled feature with ``pre_logits=True``)."""
        if self.global_pool == "avg":
            feature = remove_cls_token(x).mean(dim=1)
        else:
            feature = x[:, (x.shape[1] - 1) // 2]  # the class token sits at M // 2 of M + 1 tokens
        return feature if pre_logits else self.head(feature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        feature: str = "residual",
    ):
        """Per-block token maps for dense prediction, with the class token removed (timm's ViT interface).

        Args:
            x: images (B, C, H, W), any size.
            indices: blocks to take: None = all, int n = the last n, a list = those (negative counts from the end).
            return_prefix_tokens: also return the class token of each intermediate, as (B, 1, D).
            norm: apply the final RMSNorm to each intermediate.
            stop_early: do not run the blocks after the last one taken (the final tokens are then those of the
                last block run, normalised).
            output_fmt: "NCHW" -> (B, D, H', W') maps; "NLC" -> (B, H'*W', D) sequences.
            intermediates_only: return only the list of intermediates.
            output_dict: return ``{"image_intermediates": [...], "image_features": final}`` (plus
                ``"image_intermediates_prefix"`` with ``return_prefix_tokens``), as timm's ViT.
            feature: "residual" = the residual stream after the block (its output, as in timm's ViT);
                "mixer" = the block's mixer output before the residual add (the official segmentation default).

        Returns:
            ``intermediates`` (a list) if ``intermediates_only``, else the tuple ``(final_normalised_tokens,
            intermediates)``; with ``return_prefix_tokens`` each intermediate is a pair (map, class_token).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise InputError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if feature not in ("residual", "mixer"):
            raise InputError(f"feature must be 'residual' or 'mixer', got {feature!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        take = set(take_indices)

        residual, (grid_h, grid_w) = self.embed(x)
        blocks = self.layers[: max_index + 1] if (stop_early or intermediates_only) else self.layers
        intermediates = []
        for i, block in enumerate(blocks):
            residual, mixed = self._run_block(block, residual)
            if i in take:
                out = residual if feature == "residual" else mixed
                intermediates.append(self.norm_f(out) if norm else out)

        maps, prefix_tokens = [], []
        for tokens in intermediates:
            cls_index = (tokens.shape[1] - 1) // 2
            patches = remove_cls_token(tokens)
            if output_fmt == "NCHW":
                patches = patches.reshape(patches.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
            maps.append(patches)
            prefix_tokens.append(tokens[:, cls_index:cls_index + 1])

        if output_dict:
            out = {"image_intermediates": maps}
            if return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                out["image_features"] = self.norm_f(residual)
            return out
        results = list(zip(maps, prefix_tokens)) if return_prefix_tokens else maps
        if intermediates_only:
            return results
        return self.norm_f(residual), results

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the blocks after the last needed intermediate (and optionally the final norm / head)."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take_indices
