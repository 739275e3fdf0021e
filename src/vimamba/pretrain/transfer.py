"""Pretraining checkpoints, and a bidirectional Vim classifier initialised from one.

A pretraining checkpoint is what ``vimamba pretrain`` writes: the checkpoint format every run writes
(:mod:`vimamba.checkpoints.format`, version 2) with ``task == "pretraining"``, ``arch`` the encoder and
``task_config = {"objective": "ar"|"mae", "objective_kwargs": the objective's constructor arguments,
"encoder_config": the encoder's VimConfig fields}``. Files of earlier vimamba versions,
``{"model": objective.state_dict(), "pretraining": {"objective", "encoder_config", "objective_kwargs",
"objective_config", "preprocessing"}}``, are read too. The objective's keys are ``encoder.*`` (the Vim) and the
decoder's (``decoder_*``, ``ar_token``, ``mask_token``).

:func:`init_classifier_from_pretraining` puts the encoder into a normal (bidirectional) :class:`VisionMamba`:

* ``ar``: the pretrained encoder has only the forward branch. Each block's backward branch starts as a clone of
  the forward one, by the explicit map :data:`AR_BACKWARD_CLONE_MAP` (``conv1d -> conv1d_b``, ``x_proj ->
  x_proj_b``, ``dt_proj -> dt_proj_b``, ``A_log -> A_b_log``, ``D -> D_b``), as ARM does for its extra scan
  directions. The class token and its position slot are new (there was no class token in AR pretraining).
* ``mae``: the encoder loads as it is (its class token was trained in the middle of the kept sequence).
* Both: decoder keys are dropped; the head is new; position embeddings are resized to the classifier's patch grid
  (class slot kept in the middle, :func:`~vimamba.models.pos_embed.resize_pos_embed`). Anything else missing,
  unexpected or mis-shaped is a :class:`~vimamba.models.checkpoint.CheckpointError` naming the keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..checkpoints.format import is_current_format, load_checkpoint_file, make_checkpoint
from ..io import atomic_torch_save
from ..models.checkpoint import CLASS_NAMES_KEY, CheckpointError, clean_state_dict
from ..models.pos_embed import insert_cls_token, remove_cls_token, resize_pos_embed, split_pos_embed
from ..models.variants import find_registered_name
from ..models.vim import VimConfig, VisionMamba

__all__ = ["PRETRAINING_KEY", "PRETRAINING_TASK", "AR_BACKWARD_CLONE_MAP", "PretrainingCheckpoint", "InitReport",
           "is_pretraining_checkpoint", "save_pretraining_checkpoint", "read_pretraining_checkpoint",
           "init_classifier_from_pretraining", "classifier_from_pretraining", "objective_from_pretraining"]

PathLike = Union[str, os.PathLike]
PRETRAINING_KEY = "pretraining"  # the record of the files earlier vimamba versions wrote
PRETRAINING_TASK = "pretraining"  # the checkpoint task of `vimamba pretrain`
ENCODER_PREFIX = "encoder."

# forward-branch parameter of a mixer -> the backward-branch parameter it is cloned into (names in vim.py)
AR_BACKWARD_CLONE_MAP: Tuple[Tuple[str, str], ...] = (
    ("conv1d.weight", "conv1d_b.weight"),
    ("conv1d.bias", "conv1d_b.bias"),
    ("x_proj.weight", "x_proj_b.weight"),
    ("dt_proj.weight", "dt_proj_b.weight"),
    ("dt_proj.bias", "dt_proj_b.bias"),
    ("A_log", "A_b_log"),
    ("D", "D_b"),
)
# keys a classifier gets fresh from each objective (everything else must come from the checkpoint)
_NEW_KEYS = {"ar": ("cls_token", "head.weight", "head.bias"), "mae": ("head.weight", "head.bias")}
# markers of a labelled (classification) checkpoint
_LABELLED_MARKERS = ("model_spec", CLASS_NAMES_KEY, "optimizer", "model_ema")


@dataclass
class PretrainingCheckpoint:
    objective: str
    state_dict: Dict[str, torch.Tensor]  # the objective's state_dict (encoder.* and decoder keys)
    record: Dict[str, Any]
    source: str

    @property
    def encoder_config(self) -> Optional[VimConfig]:
        cfg = self.record.get("encoder_config")
        return VimConfig.from_dict({k: v for k, v in cfg.items() if k != "scan_impl"}) if cfg else None

    @property
    def preprocessing(self) -> Optional[Dict[str, Any]]:
        """How the pretraining images were prepared (a :class:`~vimamba.data.transforms.Preprocessing` dict)."""
        return self.record.get("preprocessing")


@dataclass
class InitReport:
    objective: str
    loaded: List[str] = field(default_factory=list)
    cloned: List[str] = field(default_factory=list)  # "fwd -> bwd" pairs (ar)
    new: List[str] = field(default_factory=list)  # left at the classifier's own initialisation
    dropped: List[str] = field(default_factory=list)  # decoder keys
    resized: List[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.cloned:
            parts.append(f"{len(self.cloned)} backward-branch tensors cloned from the forward branch")
        parts.append(f"new: {', '.join(self.new) or 'none'}")
        if self.dropped:
            parts.append(f"{len(self.dropped)} decoder tensors dropped")
        if self.resized:
            parts.append("resized: " + "; ".join(self.resized))
        return f"initialised from {self.objective} pretraining: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------------- files
def save_pretraining_checkpoint(objective: nn.Module, path: PathLike, config: Optional[Mapping[str, Any]] = None,
                                preprocessing: Optional[Mapping[str, Any]] = None) -> Path:
    """Write an objective's weights as a weights-only pretraining checkpoint of the current format, atomically.

    For objectives trained outside ``vimamba pretrain`` (experiments, tests); the command's own checkpoints come
    from the engine. ``arch`` names the registered Vim of the same shape when there is one, and its overrides hold
    the whole encoder config, so the architecture is rebuilt exactly either way."""
    encoder_config = objective.encoder.cfg.to_dict()
    encoder_config.pop("scan_impl", None)
    arch = {"name": find_registered_name(encoder_config) or "vim_tiny_patch16_224", "family": "vim",
            "overrides": encoder_config}
    payload = make_checkpoint(
        task=PRETRAINING_TASK, arch=arch, model={k: v.detach().cpu() for k, v in objective.state_dict().items()},
        task_config={"objective": objective.objective, "objective_kwargs": dict(objective.hparams),
                     "encoder_config": encoder_config},
        preprocessing=preprocessing, config=config)
    atomic_torch_save(payload, path)
    return Path(path)


def is_pretraining_checkpoint(obj: Any) -> bool:
    """Whether a loaded checkpoint dict is a pretraining checkpoint (current format, or an earlier record)."""
    if is_current_format(obj):
        return obj.get("task") == PRETRAINING_TASK
    return isinstance(obj, dict) and isinstance(obj.get(PRETRAINING_KEY), dict)


def _labelled_error(where: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{where} is a labelled classification checkpoint ({why}), not a pretraining checkpoint. Initialisation from "
        "pretraining takes the output of `vimamba pretrain`; to start from a classifier's weights use "
        "`vimamba train --finetune CKPT`")


def _from_current_format(obj: Dict[str, Any], where: str, objective: Optional[str]) -> PretrainingCheckpoint:
    """A format-2 checkpoint as a :class:`PretrainingCheckpoint`; any other task is refused by name."""
    task = obj.get("task")
    if task != PRETRAINING_TASK:
        if task == "classification":
            raise _labelled_error(where, f"it has {len(obj.get('class_names') or [])} classes")
        raise CheckpointError(f"{where} is a {task} checkpoint, not a pretraining checkpoint; initialisation from "
                              "pretraining takes the output of `vimamba pretrain`")
    task_config = obj.get("task_config") or {}
    name, state = task_config.get("objective"), obj.get("model")
    if not isinstance(state, dict) or not isinstance(task_config.get("encoder_config"), dict):
        raise CheckpointError(f"{where} is a pretraining checkpoint without its weights ('model') or its encoder "
                              "config (task_config['encoder_config']); the file is damaged")
    if objective is not None and name != objective:
        raise CheckpointError(f"{where} holds {name!r} pretraining, not {objective!r}")
    record = {"objective": name, "encoder_config": task_config["encoder_config"],
              "objective_kwargs": task_config.get("objective_kwargs") or {}, "objective_config": obj.get("config"),
              "preprocessing": obj.get("preprocessing"), "step": obj.get("step")}
    return PretrainingCheckpoint(str(name), clean_state_dict(state), record, where)


def read_pretraining_checkpoint(source: Union[PathLike, Mapping[str, Any]], objective: Optional[str] = None, *,
                                where: Optional[str] = None) -> PretrainingCheckpoint:
    """Open a pretraining checkpoint (a path or an already loaded dict), refusing anything else clearly.

    Reads the current format (``task == "pretraining"``) and the records of earlier vimamba versions. A bare
    objective state_dict (``encoder.*`` keys, no record) is accepted when ``objective`` is given. ``where`` names
    an already loaded dict in messages.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = f"'{path}'"
        if path.suffix == ".safetensors" and path.is_file():
            raise _labelled_error(where, "a .safetensors export holds classifier weights")
        obj = load_checkpoint_file(path)
    else:
        where = where or "the given checkpoint"
        obj = dict(source)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a pretraining checkpoint")
    if is_current_format(obj):
        return _from_current_format(obj, where, objective)

    record = obj.get(PRETRAINING_KEY)
    if isinstance(record, dict):
        state = obj.get("model")
        if not isinstance(state, dict):
            raise CheckpointError(f"{where} has a pretraining record but no weights ('model')")
        name = record.get("objective")
        if objective is not None and name != objective:
            raise CheckpointError(f"{where} holds {name!r} pretraining, not {objective!r}")
        return PretrainingCheckpoint(str(name), clean_state_dict(state), record, where)

    # no record: a labelled checkpoint, or a bare objective state_dict
    markers = [m for m in _LABELLED_MARKERS if m in obj]
    if markers:
        raise _labelled_error(where, f"it holds {', '.join(repr(m) for m in markers)} and no pretraining record")
    state = obj.get("model", obj) if isinstance(obj.get("model", obj), dict) else obj
    state = {k: v for k, v in clean_state_dict(state).items() if isinstance(v, torch.Tensor)} if state else {}
    if any(k == "head.weight" or k.startswith("head.") for k in state):
        raise _labelled_error(where, "its weights include a classifier head")
    if not any(k.startswith(ENCODER_PREFIX) for k in state):
        raise CheckpointError(f"{where} is not a pretraining checkpoint: no '{PRETRAINING_KEY}' record and no "
                              f"'{ENCODER_PREFIX}*' weights (first keys: {sorted(state)[:4]})")
    if objective is None:
        raise CheckpointError(f"{where} has no pretraining record; say which objective made it (ar or mae)")
    return PretrainingCheckpoint(objective, state, {"objective": objective}, where)


# ---------------------------------------------------------------------------------------------------- transfer
def _resize_patch_slots(pe: torch.Tensor, old: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
    if tuple(old) == tuple(new):
        return pe
    with_slot = insert_cls_token(pe, pe.new_zeros(1, 1, pe.shape[-1]))
    return remove_cls_token(resize_pos_embed(with_slot, old, new))


def _source_grid(ckpt: PretrainingCheckpoint, num_patches: int) -> Tuple[int, int]:
    cfg = ckpt.encoder_config
    if cfg is not None:
        grid = ((cfg.img_size[0] - cfg.patch_size) // cfg.stride + 1, (cfg.img_size[1] - cfg.patch_size) // cfg.stride + 1)
        if grid[0] * grid[1] == num_patches:
            return grid
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise CheckpointError(f"{ckpt.source}: cannot tell the patch grid of its {num_patches}-patch position "
                              "embedding (no encoder_config recorded)")
    return (side, side)


def _format(keys: List[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def init_classifier_from_pretraining(model: VisionMamba, source: Union[PathLike, Mapping[str, Any],
                                                                        PretrainingCheckpoint],
                                     objective: Optional[str] = None) -> InitReport:
    """Load a pretraining checkpoint's encoder into a bidirectional Vim classifier (see the module docs)."""
    ckpt = source if isinstance(source, PretrainingCheckpoint) else read_pretraining_checkpoint(source, objective)
    name = ckpt.objective
    if name not in _NEW_KEYS:
        raise CheckpointError(f"{ckpt.source}: unknown pretraining objective {name!r} (known: {sorted(_NEW_KEYS)})")
    report = InitReport(name)
    encoder = {k[len(ENCODER_PREFIX):]: v for k, v in ckpt.state_dict.items() if k.startswith(ENCODER_PREFIX)}
    report.dropped = sorted(k for k in ckpt.state_dict if not k.startswith(ENCODER_PREFIX))
    target = model.state_dict()
    grid = model.patch_embed.grid_size

    if name == "ar":
        leaked = sorted(k for k in encoder if any(k.endswith("mixer." + dst) for _, dst in AR_BACKWARD_CLONE_MAP)
                        or k == "cls_token")
        if leaked:
            raise CheckpointError(f"{ckpt.source}: an AR (forward-only) pretraining has no backward branch or class "
                                  f"token, but these keys are present: {_format(leaked)}")
        layer_ids = sorted({int(k.split(".")[1]) for k in encoder if k.startswith("layers.")})
        for i in layer_ids:
            for src, dst in AR_BACKWARD_CLONE_MAP:
                src_key, dst_key = f"layers.{i}.mixer.{src}", f"layers.{i}.mixer.{dst}"
                if src_key in encoder:
                    encoder[dst_key] = encoder[src_key].clone()
                    report.cloned.append(f"{src_key} -> {dst_key}")
        pe = encoder.get("pos_embed")
        if pe is not None and "pos_embed" in target and pe.dim() == 3 and pe.shape[-1] == target["pos_embed"].shape[-1]:
            old = _source_grid(ckpt, pe.shape[1])
            patches = _resize_patch_slots(pe, old, grid)
            if old != tuple(grid):
                report.resized.append(f"pos_embed {old} -> {tuple(grid)}")
            encoder["pos_embed"] = insert_cls_token(patches, split_pos_embed(target["pos_embed"])[0])
            report.new.append("pos_embed class slot")
    else:
        pe = encoder.get("pos_embed")
        if pe is not None and "pos_embed" in target and pe.shape != target["pos_embed"].shape and pe.dim() == 3 \
                and pe.shape[-1] == target["pos_embed"].shape[-1]:
            old = _source_grid(ckpt, pe.shape[1] - 1)
            encoder["pos_embed"] = resize_pos_embed(pe, old, grid)
            report.resized.append(f"pos_embed {old} -> {tuple(grid)}")

    new_keys = [k for k in _NEW_KEYS[name] if k in target]
    missing = [k for k in target if k not in encoder and k not in new_keys]
    unexpected = [k for k in encoder if k not in target]
    mis_shaped = [f"{k}: checkpoint {tuple(encoder[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in target if k in encoder and encoder[k].shape != target[k].shape]
    if missing or unexpected or mis_shaped:
        lines = [f"{ckpt.source} ({name} pretraining) does not fit the classifier:"]
        if mis_shaped:
            lines.append(f"  mis-shaped keys ({len(mis_shaped)}): {_format(mis_shaped, 5)}")
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_format(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_format(unexpected)}")
        cfg = ckpt.encoder_config
        if cfg is not None:
            lines.append(f"  the pretrained encoder is embed_dim={cfg.embed_dim}, depth={cfg.depth}, "
                         f"d_state={cfg.d_state}, patch {cfg.patch_size}, {cfg.in_chans} channels")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v for k, v in encoder.items()}, strict=False)
    report.loaded = sorted(encoder)
    report.new = [k for k in new_keys if k not in encoder] + report.new
    return report


def classifier_from_pretraining(source: Union[PathLike, Mapping[str, Any], PretrainingCheckpoint], num_classes: int,
                                objective: Optional[str] = None, **overrides: Any) -> Tuple[VisionMamba, InitReport]:
    """Build the bidirectional Vim of the pretrained encoder's architecture (``overrides``: any VimConfig field,
    e.g. img_size, drop_path_rate, global_pool) with a new ``num_classes`` head, initialised from pretraining."""
    ckpt = source if isinstance(source, PretrainingCheckpoint) else read_pretraining_checkpoint(source, objective)
    cfg = ckpt.encoder_config
    if cfg is None:
        raise CheckpointError(f"{ckpt.source} records no encoder_config; build the classifier yourself and call "
                              "init_classifier_from_pretraining")
    model = VisionMamba(replace(cfg, num_classes=num_classes, **overrides))
    return model, init_classifier_from_pretraining(model, ckpt)


def objective_from_pretraining(source: Union[PathLike, Mapping[str, Any], PretrainingCheckpoint]) -> nn.Module:
    """Rebuild the pretraining objective (encoder + decoder) a checkpoint was saved from, with its weights."""
    from .config import build_objective

    ckpt = source if isinstance(source, PretrainingCheckpoint) else read_pretraining_checkpoint(source)
    cfg = ckpt.encoder_config
    if cfg is None:
        raise CheckpointError(f"{ckpt.source} records no encoder_config")
    kwargs = dict(ckpt.record.get("objective_kwargs") or {})
    objective = build_objective(cfg, ckpt.objective, **kwargs)
    try:
        objective.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {ckpt.source} do not fit the {ckpt.objective} objective they "
                              f"describe: {e}") from e
    return objective
