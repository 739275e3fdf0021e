"""Reading, checking, adapting and writing Vim weights (official ``.pth`` files, our own ``.pth`` and ``.safetensors``).

* :func:`read_checkpoint` opens a file: an official training checkpoint (a dict with ``model`` and/or
  ``model_ema``), a bare state_dict, a vimamba checkpoint, or a ``.safetensors`` file.
* :func:`load_checkpoint` puts the weights into a model. Position embeddings of another patch grid are resized (the
  class slot stays in the middle); anything else that does not fit raises :class:`CheckpointError`, naming the
  missing, unexpected and mis-shaped keys and the architecture the checkpoint looks like.
* :func:`save_weights` writes weights atomically, with the model config and class names, to ``.pth`` or
  ``.safetensors``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import UserError
from ..io import atomic_write
from .pos_embed import infer_square_grid, resize_pos_embed
from .variants import find_registered_name

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "LoadReport",
    "read_checkpoint",
    "select_weights",
    "load_checkpoint",
    "prepare_state_dict",
    "save_weights",
    "infer_config",
    "clean_state_dict",
    "CONFIG_KEY",
    "CLASS_NAMES_KEY",
    "PREPROCESSING_KEY",
]

PathLike = Union[str, os.PathLike]

# Keys vimamba writes next to the weights (in .pth dicts and in .safetensors metadata).
CONFIG_KEY = "vimamba_config"
CLASS_NAMES_KEY = "class_names"
PREPROCESSING_KEY = "preprocessing"  # how inputs are prepared (size, channels, mean/std, crop), a plain dict
ARCH_KEY = "arch"

# Containers in which training scripts store weights, in order of preference for weights="auto".
_MODEL_KEYS = ("model", "state_dict", "module", "model_state_dict")
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""


@dataclass
class Checkpoint:
    """Weights read from a file, with what vimamba knows about them."""

    state_dict: Dict[str, torch.Tensor]
    config: Optional[dict] = None  # VimConfig fields, when written by vimamba
    class_names: Optional[List[str]] = None
    arch: Optional[str] = None  # registered model name, when known
    preprocessing: Optional[dict] = None  # input preparation saved with the weights (vimamba.data.Preprocessing)
    weights_key: str = "(bare state_dict)"  # where in the file the weights came from
    path: Optional[Path] = None

    def describe(self) -> str:
        where = f"'{self.path}'" if self.path else "the given state_dict"
        return f"checkpoint {where} (weights from {self.weights_key})"


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)  # e.g. pos_embed (1, 197, D) -> (1, 1025, D)
    skipped: List[str] = field(default_factory=list)  # e.g. a head of another number of classes


# ---------------------------------------------------------------------------------------------------- reading
def clean_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile)."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _torch_load(path: Path, trust_pickle: bool):
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        # Official training checkpoints store their argparse.Namespace next to the weights.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for damaged files (RuntimeError, KeyError, EOFError, ...)
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise CheckpointError(
                f"'{path}' holds Python objects that are not loaded by default for safety. If you trust the file, "
                f"load it with trust_pickle=True (command line: --trust-checkpoint). Details: {str(e).splitlines()[0]}"
            ) from e
        raise CheckpointError(
            f"could not read '{path}' as a PyTorch checkpoint ({type(e).__name__}: {e}). The file may be truncated "
            "(an interrupted download or copy) or not a checkpoint at all."
        ) from e


def _read_safetensors(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"could not read '{path}' as a safetensors file: {e}. The file may be truncated.") from e
    return tensors, metadata


def select_weights(obj: dict, weights: str = "auto",
                   where: str = "the checkpoint") -> Tuple[Dict[str, torch.Tensor], str]:
    """The weights inside a checkpoint dict and where they were: ``(clean state_dict, "'model'")``.

    A bare state_dict is returned as it is. In a training checkpoint (the official ``{"model", "model_ema",
    "optimizer", "args", ...}`` layout, or ``state_dict``/``module``/``model_state_dict``), ``weights`` picks the
    trained weights ("model"), the EMA weights ("ema"), or the trained weights else the EMA ones ("auto").
    """
    if weights not in ("auto", "model", "ema"):
        raise ValueError(f"weights must be 'auto', 'model' or 'ema', got {weights!r}")
    if _is_state_dict(obj):
        if weights == "ema":
            raise CheckpointError(f"{where} is a bare state_dict; it has no EMA weights")
        return clean_state_dict(obj), "(bare state_dict)"
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not model weights")
    model_keys = [k for k in _MODEL_KEYS if _is_state_dict(obj.get(k))]
    ema_keys = [k for k in _EMA_KEYS if _is_state_dict(obj.get(k))]
    if weights == "ema":
        candidates = ema_keys
    elif weights == "model":
        candidates = model_keys
    else:
        candidates = model_keys + ema_keys
    if not candidates:
        wanted = {"ema": "EMA weights (model_ema)", "model": "model weights (model)"}.get(weights, "model weights")
        raise CheckpointError(f"no {wanted} found in {where}; its top-level keys are {sorted(map(str, obj))}")
    key = candidates[0]
    return clean_state_dict(obj[key]), f"'{key}'"


def read_checkpoint(path: PathLike, weights: str = "auto", trust_pickle: bool = False) -> Checkpoint:
    """Open a checkpoint file and find the model weights in it.

    Args:
        path: ``.pth``/``.pt``/``.bin`` (torch pickle) or ``.safetensors``.
        weights: "auto" (the trained model: ``model``, else ``state_dict``, else the EMA weights), "model", or
            "ema" (``model_ema``).
        trust_pickle: allow arbitrary pickled objects (only for files you trust).
    """
    if weights not in ("auto", "model", "ema"):
        raise ValueError(f"weights must be 'auto', 'model' or 'ema', got {weights!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")

    if path.suffix == ".safetensors":
        tensors, metadata = _read_safetensors(path)
        if weights == "ema":
            raise CheckpointError(f"'{path}' is a safetensors file with one set of weights; it has no EMA weights")
        return Checkpoint(
            state_dict=clean_state_dict(tensors),
            config=json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else None,
            class_names=json.loads(metadata[CLASS_NAMES_KEY]) if CLASS_NAMES_KEY in metadata else None,
            arch=metadata.get(ARCH_KEY),
            preprocessing=json.loads(metadata[PREPROCESSING_KEY]) if PREPROCESSING_KEY in metadata else None,
            weights_key="safetensors",
            path=path,
        )

    obj = _torch_load(path, trust_pickle)
    state_dict, key = select_weights(obj, weights, f"'{path}'")
    if _is_state_dict(obj):
        return Checkpoint(state_dict=state_dict, weights_key=key, path=path)
    config = obj.get(CONFIG_KEY)
    return Checkpoint(
        state_dict=state_dict,
        config=dict(config) if isinstance(config, dict) else None,
        class_names=list(obj[CLASS_NAMES_KEY]) if obj.get(CLASS_NAMES_KEY) is not None else None,
        arch=obj.get(ARCH_KEY) if isinstance(obj.get(ARCH_KEY), str) else None,
        preprocessing=dict(obj[PREPROCESSING_KEY]) if isinstance(obj.get(PREPROCESSING_KEY), dict) else None,
        weights_key=key,
        path=path,
    )


# ---------------------------------------------------------------------------------------------------- architecture
def infer_config(state_dict: Dict[str, torch.Tensor]) -> Optional[dict]:
    """The VimConfig fields a Vim state_dict implies (None if it is not a Vim state_dict).

    The patch stride is not stored in the weights: it is inferred from the position-embedding length assuming the
    official 224x224 input (so 730 slots -> stride 8), else stride = patch size at the matching image size.
    """
    needed = ("patch_embed.proj.weight", "pos_embed", "layers.0.mixer.A_log", "layers.0.mixer.dt_proj.weight")
    if not all(k in state_dict for k in needed):
        return None
    proj = state_dict["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    layer_ids = {int(k.split(".")[1]) for k in state_dict if k.startswith("layers.") and k.split(".")[1].isdigit()}
    a_log = state_dict["layers.0.mixer.A_log"]
    conv = state_dict.get("layers.0.mixer.conv1d.weight")
    config = dict(
        embed_dim=embed_dim,
        in_chans=in_chans,
        patch_size=patch,
        depth=max(layer_ids) + 1,
        d_state=a_log.shape[1],
        expand=max(1, a_log.shape[0] // embed_dim),
        dt_rank=state_dict["layers.0.mixer.dt_proj.weight"].shape[1],
        num_classes=state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
    )
    if conv is not None:
        config["d_conv"] = conv.shape[-1]
    if config["dt_rank"] == math.ceil(embed_dim / 16):
        config["dt_rank"] = None
    try:
        grid = infer_square_grid(state_dict["pos_embed"].shape[1])[0]
    except ValueError:
        return config
    stride_at_224 = (224 - patch) / (grid - 1) if grid > 1 else None
    if stride_at_224 is not None and stride_at_224.is_integer() and 0 < stride_at_224 <= patch:
        config.update(img_size=224, stride=int(stride_at_224))
    else:
        config.update(img_size=grid * patch, stride=patch)
    return config


def _describe_foreign(state_dict: Dict[str, torch.Tensor]) -> str:
    keys = set(state_dict)
    if any(k.startswith("rope.freqs") for k in keys):
        return ("an early (January 2024) RoPE Vim checkpoint without a middle class token; vimamba implements the "
                "released middle-class-token models (hustvl/Vim-*-midclstok)")
    if any(".attn.qkv." in k for k in keys):
        return "a ViT/DeiT (attention) checkpoint, not a Vision Mamba one; build it with timm"
    if any(k.startswith("backbone.") for k in keys):
        return "a detection/segmentation checkpoint (keys start with 'backbone.'); load it with vimamba's dense tools"
    sample = ", ".join(sorted(keys)[:5])
    return f"not a Vision Mamba checkpoint (first keys: {sample})"


def _describe_config(config: dict) -> str:
    img = config.get("img_size", 224)
    img = f"{img[0]}x{img[1]}" if isinstance(img, (list, tuple)) else img
    parts = [
        f"embed_dim={config['embed_dim']}", f"depth={config['depth']}", f"d_state={config['d_state']}",
        f"patch {config['patch_size']}", f"stride {config.get('stride', config['patch_size'])} at {img}px",
        f"{config['in_chans']} input channels", f"{config['num_classes']} classes",
    ]
    name = find_registered_name(config)
    return ", ".join(parts) + (f" -- registered as '{name}'" if name else "")


def _model_description(model: nn.Module) -> str:
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return type(model).__name__
    return f"{type(model).__name__}({_describe_config(cfg.to_dict())})"


def _format_keys(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------------- loading
def _source_grid(ckpt: Checkpoint, num_slots: int) -> Tuple[int, int]:
    """The patch grid the checkpoint's pos_embed was stored for: from its config, else assumed square."""
    if ckpt.config is not None and {"img_size", "patch_size", "stride"} <= set(ckpt.config):
        img = ckpt.config["img_size"]
        height, width = (img, img) if isinstance(img, int) else img
        patch, stride = ckpt.config["patch_size"], ckpt.config["stride"]
        grid = ((height - patch) // stride + 1, (width - patch) // stride + 1)
        if grid[0] * grid[1] + 1 == num_slots:
            return grid
    return infer_square_grid(num_slots)


def _as_checkpoint(source, weights: str, trust_pickle: bool) -> Checkpoint:
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, dict):
        return Checkpoint(state_dict=clean_state_dict(source))
    return read_checkpoint(source, weights=weights, trust_pickle=trust_pickle)


def prepare_state_dict(
    model: nn.Module,
    ckpt: Checkpoint,
    *,
    strict: bool = True,
    ignore_head: bool = False,
    in_chans: str = "refuse",
) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """The checkpoint's weights adapted to ``model``, or :class:`CheckpointError` naming what does not fit.

    * ``pos_embed`` of another patch grid is resized (class slot kept in the middle).
    * ``ignore_head``: a classifier head of another shape (or one the model does not have) is dropped.
    * ``in_chans``: a patch embedding made for another number of input channels is refused ("refuse"), converted
      with timm's ``adapt_input_conv`` ("adapt"), or passed through for the caller to adapt ("leave").
    * Anything else that differs raises; with ``strict=False`` missing and unexpected keys are only reported.
    Nothing is loaded: the model is left untouched.
    """
    if in_chans not in ("refuse", "adapt", "leave"):
        raise ValueError(f"in_chans must be 'refuse', 'adapt' or 'leave', got {in_chans!r}")
    target = model.state_dict()
    incoming = dict(ckpt.state_dict)
    report = LoadReport()

    # Position embeddings of another grid: resize.
    pe = incoming.get("pos_embed")
    if pe is not None and "pos_embed" in target and pe.shape != target["pos_embed"].shape:
        if pe.dim() == 3 and pe.shape[-1] == target["pos_embed"].shape[-1]:
            try:
                old_grid = _source_grid(ckpt, pe.shape[1])
            except ValueError as e:
                raise CheckpointError(f"{ckpt.describe()}: cannot resize its pos_embed: {e}") from e
            new_grid = model.patch_embed.grid_size
            incoming["pos_embed"] = resize_pos_embed(pe, old_grid, new_grid)
            report.resized.append(f"pos_embed {tuple(pe.shape)} -> {tuple(incoming['pos_embed'].shape)}")

    # A patch embedding for another number of input channels (e.g. RGB weights into a one-channel model).
    stem, stem_ok = "patch_embed.proj.weight", None
    w = incoming.get(stem)
    if in_chans != "refuse" and w is not None and stem in target and w.shape != target[stem].shape:
        if w.dim() == 4 and w.shape[0] == target[stem].shape[0] and w.shape[2:] == target[stem].shape[2:]:
            if in_chans == "adapt":
                from timm.models import adapt_input_conv

                incoming[stem] = adapt_input_conv(target[stem].shape[1], w)
                report.resized.append(f"{stem} {tuple(w.shape)} -> {tuple(incoming[stem].shape)}")
            else:
                stem_ok = stem

    if ignore_head:
        for key in [k for k in incoming if k.startswith("head.")]:
            if key not in target or incoming[key].shape != target[key].shape:
                incoming.pop(key)
                report.skipped.append(key)

    missing = [k for k in target if k not in incoming and k not in report.skipped]
    unexpected = [k for k in incoming if k not in target]
    mis_shaped = [
        f"{k}: checkpoint {tuple(incoming[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target if k in incoming and incoming[k].shape != target[k].shape and k != stem_ok
    ]
    if mis_shaped or (strict and (missing or unexpected)):
        lines = [f"{ckpt.describe()} does not fit the model {_model_description(model)}:"]
        if mis_shaped:
            lines.append(f"  mis-shaped keys ({len(mis_shaped)}): {_format_keys(mis_shaped, 5)}")
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        config = infer_config(ckpt.state_dict)
        if config is not None:
            lines.append(f"  the checkpoint looks like a Vim with {_describe_config(config)}")
            lines.append("  build that architecture (vimamba.load_model(path) does it from the file), or pass "
                         "ignore_head=True if only the classifier differs")
        else:
            lines.append(f"  the checkpoint looks like {_describe_foreign(ckpt.state_dict)}")
        raise CheckpointError("\n".join(lines))
    return incoming, report


def load_checkpoint(
    model: nn.Module,
    source: Union[PathLike, Checkpoint, Dict[str, torch.Tensor]],
    *,
    strict: bool = True,
    weights: str = "auto",
    ignore_head: bool = False,
    trust_pickle: bool = False,
    in_chans: str = "refuse",
) -> LoadReport:
    """Load weights into a Vim model, adapting what can be adapted and refusing what cannot.

    * ``pos_embed`` of another patch grid (other image size or stride) is resized bicubically with the class slot
      kept in the middle.
    * With ``ignore_head=True`` a classifier head of another shape (or a head the model does not have) is skipped;
      the model keeps its own freshly initialised head.
    * ``in_chans="adapt"`` converts a patch embedding made for another number of input channels (timm's rule).
    * Anything else that differs raises :class:`CheckpointError`; with ``strict=False`` missing and unexpected keys
      are reported instead (mis-shaped ones still raise).
    """
    ckpt = _as_checkpoint(source, weights, trust_pickle)
    incoming, report = prepare_state_dict(model, ckpt, strict=strict, ignore_head=ignore_head, in_chans=in_chans)
    result = model.load_state_dict(incoming, strict=False)
    report.missing_keys = list(result.missing_keys)
    report.unexpected_keys = list(result.unexpected_keys)
    if ckpt.class_names is not None:
        model.class_names = list(ckpt.class_names)
    return report


# ---------------------------------------------------------------------------------------------------- writing
def save_weights(
    model: nn.Module,
    path: PathLike,
    class_names: Optional[Sequence[str]] = None,
    arch: Optional[str] = None,
    state_dict: Optional[Dict[str, torch.Tensor]] = None,
    preprocessing: Optional[dict] = None,
) -> Path:
    """Write the model's weights (or ``state_dict``) with its config, class names and preprocessing, atomically.

    ``.safetensors`` -> a safetensors file whose metadata holds the config and class names as JSON;
    anything else -> a torch file ``{"model": state_dict, "vimamba_config": ..., "class_names": ..., "arch": ...}``
    that :func:`read_checkpoint` and the official code's ``checkpoint['model']`` both understand.
    """
    path = Path(path)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    cfg = getattr(model, "cfg", None)
    config = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None
    if config is not None:
        config.pop("scan_impl", None)  # a property of the machine, not of the weights
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    arch = arch or getattr(model, "arch", None)

    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            metadata = {"format": "pt"}
            if config is not None:
                metadata[CONFIG_KEY] = json.dumps(config)
            if class_names is not None:
                metadata[CLASS_NAMES_KEY] = json.dumps(list(class_names))
            if arch:
                metadata[ARCH_KEY] = arch
            if preprocessing is not None:
                metadata[PREPROCESSING_KEY] = json.dumps(preprocessing)
            save_file(state_dict, str(tmp), metadata=metadata)
        else:
            payload = {"model": state_dict}
            if config is not None:
                payload[CONFIG_KEY] = config
            if class_names is not None:
                payload[CLASS_NAMES_KEY] = list(class_names)
            if arch:
                payload[ARCH_KEY] = arch
            if preprocessing is not None:
                payload[PREPROCESSING_KEY] = dict(preprocessing)
            torch.save(payload, tmp)
    return path
