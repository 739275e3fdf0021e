"""Vim weights into a model (official ``.pth`` files, vimamba checkpoints, ``.safetensors``), and writing them.

Files are read by the one loader (:func:`vimamba.checkpoints.read_checkpoint`); this module puts the weights it
found into a Vim:

* :func:`load_checkpoint` puts the weights into a model. Position embeddings of another patch grid are resized (the
  class slot stays in the middle); anything else that does not fit raises :class:`CheckpointError`, naming the
  missing, unexpected and mis-shaped keys and the architecture the checkpoint looks like.
* :func:`save_weights` writes weights atomically, with the architecture, class names and preprocessing: a
  weights-only checkpoint of the current format (``.pth``) or a ``.safetensors`` file with JSON metadata.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..checkpoints.format import CheckpointFormatError, make_checkpoint
from ..checkpoints.reading import (ARCH_KEY, CLASS_NAMES_KEY, CONFIG_KEY, PREPROCESSING_KEY, RunCheckpoint,
                                   read_checkpoint, vim_arch)
from ..checkpoints.state_dicts import clean_state_dict, describe_foreign, infer_config, select_weights
from ..errors import InputError
from ..io import atomic_write
from .pos_embed import infer_square_grid, resize_pos_embed
from .variants import find_registered_name

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "LoadReport",
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

# A checkpoint that cannot be read, or whose weights do not fit the model: one error class for every checkpoint.
CheckpointError = CheckpointFormatError


@dataclass
class Checkpoint:
    """One set of Vim weights, with what is known about them (from a file: :meth:`from_run`)."""

    state_dict: Dict[str, torch.Tensor]
    config: Optional[dict] = None  # VimConfig fields, when known
    class_names: Optional[List[str]] = None
    arch: Optional[str] = None  # registered model name, when known
    preprocessing: Optional[dict] = None  # input preparation saved with the weights (vimamba.data.Preprocessing)
    weights_key: str = "(bare state_dict)"  # where in the file the weights came from
    path: Optional[Path] = None

    @classmethod
    def from_run(cls, run: RunCheckpoint, weights: str = "auto") -> "Checkpoint":
        """The classifier weights of a checkpoint read by the loader (``weights``: "auto", "model" or "ema")."""
        if run.task not in (None, "classification"):  # None: unrecognised weights, judged by their keys
            raise CheckpointError(f"{run.where} is a {run.task} checkpoint, not the weights of a Vim classifier")
        state_dict, key = run.select(weights)
        return cls(state_dict=state_dict, config=run.vim_config(), class_names=run.class_names or None,
                   arch=run.arch["name"] if run.arch else None, preprocessing=run.preprocessing, weights_key=key,
                   path=run.path)

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


# ---------------------------------------------------------------------------------------------------- architecture
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
    if isinstance(source, RunCheckpoint):
        return Checkpoint.from_run(source, weights)
    if isinstance(source, dict):
        return Checkpoint(state_dict=clean_state_dict(source))
    return Checkpoint.from_run(read_checkpoint(source, trust_pickle=trust_pickle), weights)


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
        raise InputError(f"in_chans must be 'refuse', 'adapt' or 'leave', got {in_chans!r}")
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
            lines.append(f"  the checkpoint looks like {describe_foreign(ckpt.state_dict)}")
        raise CheckpointError("\n".join(lines))
    return incoming, report


def load_checkpoint(
    model: nn.Module,
    source: Union[PathLike, Checkpoint, RunCheckpoint, Dict[str, torch.Tensor]],
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
    """Write a Vim's weights (or ``state_dict``) with its architecture, class names and preprocessing, atomically.

    ``.safetensors`` -> a safetensors file whose metadata holds the config, class names and preprocessing as JSON;
    anything else -> a weights-only checkpoint of the current format (:func:`vimamba.checkpoints.make_checkpoint`,
    task "classification"), which :func:`vimamba.load_model` and the official code's ``checkpoint['model']`` both
    understand.
    """
    path = Path(path)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "d_state"):
        raise TypeError(f"save_weights writes Vim weights; got a {type(model).__name__}")
    config = cfg.to_dict()
    config.pop("scan_impl", None)  # a property of the machine, not of the weights
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    arch = arch or getattr(model, "arch", None)

    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            metadata = {"format": "pt", CONFIG_KEY: json.dumps(config)}
            if class_names is not None:
                metadata[CLASS_NAMES_KEY] = json.dumps(list(class_names))
            if arch:
                metadata[ARCH_KEY] = arch
            if preprocessing is not None:
                metadata[PREPROCESSING_KEY] = json.dumps(preprocessing)
            save_file(state_dict, str(tmp), metadata=metadata)
        else:
            torch.save(make_checkpoint(task="classification", arch=vim_arch(config, arch), model=state_dict,
                                       preprocessing=preprocessing, class_names=class_names or ()), tmp)
    return path
