"""Reading any checkpoint a user has into one description (:func:`read_checkpoint` -> :class:`RunCheckpoint`).

:func:`read_checkpoint` reads, into a :class:`RunCheckpoint` (``source_format`` says which):

==========================  ==========================================================================================
``vimamba-2``               the format every run writes (:mod:`.format`), of every task
``vimamba-1-train``         classification training checkpoints of earlier versions (``model_spec``, ``vimamba_config``)
``vimamba-1-dense``         segmentation / detection training checkpoints of earlier versions (``dense_task``,
                            ``dense_config``)
``vimamba-1-pretraining``   pretraining checkpoints of earlier versions (``{"model", "pretraining": record}``)
``vimamba-1-weights``       ``.pth`` weights earlier versions of ``save_weights`` wrote (``model``, ``vimamba_config``)
``official``                official ``.pth`` training files (``model`` / ``model_ema``, ``args``): the Vim
                            architecture is inferred from the shapes
``safetensors``             ``.safetensors`` weights (``vimamba convert`` / ``export`` write the config, class names and
                            preprocessing into the metadata; without them the architecture is inferred)
``state_dict``              a bare state_dict (``module.`` / ``_orig_mod.`` prefixes stripped)
==========================  ==========================================================================================

Every ``.pth`` is opened by :func:`vimamba.checkpoints.load_checkpoint_file` (the one ``torch.load`` site).
Reading builds nothing and imports no task: :mod:`vimamba.loader` rebuilds the model of any task from a
:class:`RunCheckpoint`, and :func:`check_task` refuses a checkpoint of another task than the one asked for with one
line saying what the file is and what to do with it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import InputError, MissingFileError
from ..models.variants import find_registered_name, model_config, resolve_name
from ..models.vim import VimConfig
from .format import FORMAT, FORMAT_VERSION, TASKS, CheckpointFormatError, is_current_format, load_checkpoint_file
from .state_dicts import EMA_KEYS, clean_state_dict, describe_foreign, infer_config, is_state_dict, select_weights

__all__ = ["RunCheckpoint", "read_checkpoint", "vim_arch", "check_task", "load_exactly", "DENSE_TASKS",
           "SOURCE_FORMATS", "CONFIG_KEY", "CLASS_NAMES_KEY", "PREPROCESSING_KEY", "ARCH_KEY"]

PathLike = Union[str, os.PathLike]

SOURCE_FORMATS = ("vimamba-2", "vimamba-1-train", "vimamba-1-dense", "vimamba-1-pretraining", "vimamba-1-weights",
                  "official", "safetensors", "state_dict")

# Keys earlier vimamba versions wrote next to the weights (in .pth dicts; .safetensors metadata still has them).
CONFIG_KEY = "vimamba_config"
CLASS_NAMES_KEY = "class_names"
PREPROCESSING_KEY = "preprocessing"
ARCH_KEY = "arch"
MODEL_SPEC_KEY = "model_spec"  # vimamba-1-train: {"family", "name", "kwargs"}
PRETRAINING_KEY = "pretraining"  # vimamba-1-pretraining: {"objective", "encoder_config", "objective_kwargs", ...}
DENSE_TASKS = ("segmentation", "detection")

# The registered name a custom Vim architecture is written as (its overrides say the rest).
_BASE_VIM = "vim_tiny_patch16_224"

# What to do with a checkpoint of each task (said when it was given for another task).
_USES = {
    "classification": "evaluate or predict with it (`vimamba eval|predict --checkpoint`), or start a segmentation or "
                      "detection run from its weights (--pretrained)",
    "segmentation": "use it with `vimamba segment eval|predict`",
    "detection": "use it with `vimamba detect eval|predict`",
    "pretraining": "probe it (`vimamba probe`) or initialise a classifier from it "
                   "(vimamba.pretrain.classifier_from_pretraining)",
}


@dataclass
class RunCheckpoint:
    """Everything a checkpoint file says, whatever wrote it (see the module docstring for the formats).

    ``task`` and ``arch`` are None for weights whose architecture cannot be recognised (a foreign state_dict);
    :func:`build_model` then says what the weights look like.
    """

    task: Optional[str]
    arch: Optional[Dict[str, Any]]  # {"name", "family": "vim"|"timm", "overrides"}: classifier / backbone / encoder
    task_config: Dict[str, Any]
    preprocessing: Optional[Dict[str, Any]]
    class_names: List[str]
    data_config: Dict[str, Any]
    weights: Dict[str, torch.Tensor]
    ema_weights: Optional[Dict[str, torch.Tensor]]
    step: Optional[int]
    config: Dict[str, Any]
    source_format: str
    path: Optional[Path] = None
    weights_key: str = "'model'"  # where ``weights`` came from in the file
    ema_key: str = "'model_ema'"  # where ``ema_weights`` came from
    progress: Dict[str, Any] = field(default_factory=dict)  # where a training run stopped: epoch, batch_in_epoch,
    # best_metric (those the file has)

    @property
    def where(self) -> str:
        return f"'{self.path}'" if self.path is not None else "the checkpoint"

    def describe(self, weights_key: Optional[str] = None) -> str:
        """``'run/best.pth' (classification checkpoint of vim_tiny_patch16_224, vimamba-2[, weights from 'model'])``."""
        what = f"{self.task} checkpoint" if self.task else "weights"
        if self.arch:
            what += f" of {self.arch['name']}"
        return f"{self.where} ({what}, {self.source_format}" + (f", weights from {weights_key})" if weights_key
                                                                 else ")")

    def select(self, weights: str = "auto") -> Tuple[Dict[str, torch.Tensor], str]:
        """``(state_dict, where it came from)``: the trained weights ("model"), the EMA ones ("ema"), or the trained
        weights else the EMA ones ("auto")."""
        if weights not in ("auto", "model", "ema"):
            raise InputError(f"weights must be 'auto', 'model' or 'ema', got {weights!r}")
        if weights == "ema":
            if self.ema_weights is None:
                raise CheckpointFormatError(f"{self.where} has no EMA weights ({self.source_format} file); leave out "
                                            "--weights ema to use its trained weights")
            return self.ema_weights, self.ema_key
        if weights == "model" and self.weights_key.strip("'") in EMA_KEYS:
            raise CheckpointFormatError(f"no model weights (model) found in {self.where}; it holds only EMA weights "
                                        f"({self.weights_key})")
        return self.weights, self.weights_key

    def vim_config(self) -> Optional[Dict[str, Any]]:
        """The full :class:`VimConfig` fields of a Vim ``arch`` (None for timm models and unknown weights)."""
        if not self.arch or self.arch.get("family") != "vim":
            return None
        try:
            return model_config(self.arch["name"], **self.arch.get("overrides", {})).to_dict()
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointFormatError(f"{self.where} names an architecture vimamba cannot build "
                                        f"({self.arch}): {e}") from e


# ---------------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: PathLike, *, trust_pickle: bool = False) -> RunCheckpoint:
    """Read any checkpoint file (see the module docstring) into a :class:`RunCheckpoint`.

    A missing file is a ``FileNotFoundError``; a damaged or unrecognised one a :class:`CheckpointFormatError`
    naming it. ``trust_pickle``: allow arbitrary pickled objects (only for files you trust).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = load_checkpoint_file(path, trust_pickle=trust_pickle)
    return _from_object(obj, path)


def _from_object(obj: Any, path: Optional[Path] = None) -> RunCheckpoint:
    """The :class:`RunCheckpoint` of what ``torch.load`` returned for ``path`` (a dict of any known layout)."""
    where = f"'{path}'" if path is not None else "the checkpoint"
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{where} holds a {type(obj).__name__}, not a checkpoint")
    if obj.get("format") == FORMAT and not is_current_format(obj):
        raise CheckpointFormatError(f"{where} is a vimamba checkpoint of format version {obj.get('format_version')!r};"
                                    f" this vimamba reads version {FORMAT_VERSION} and the files of earlier versions. "
                                    "Upgrade vimamba to read it")
    if is_current_format(obj):
        ckpt = _from_current_format(obj, where)
    elif is_state_dict(obj):
        ckpt = _from_weights(clean_state_dict(obj), None, "state_dict", "(bare state_dict)")
    elif isinstance(obj.get(PRETRAINING_KEY), dict):
        ckpt = _from_pretraining_record(obj, where)
    elif "dense_task" in obj:
        ckpt = _from_dense(obj, where)
    elif isinstance(obj.get(MODEL_SPEC_KEY), dict):
        ckpt = _from_training(obj, where)
    else:
        ckpt = _from_weights_file(obj, where)
    ckpt.path = path
    ckpt.progress = {k: obj[k] for k in ("epoch", "batch_in_epoch", "best_metric") if obj.get(k) is not None}
    return ckpt


def _state(obj: Mapping[str, Any], key: str, where: str, required: bool = True) -> Optional[Dict[str, torch.Tensor]]:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise CheckpointFormatError(f"{where} has no usable weights under '{key}' (found {type(value).__name__}); "
                                    "the file is damaged or not a checkpoint")
    return clean_state_dict(value)


def _plain(value: Any) -> Dict[str, Any]:
    """A config stored as a dict or an ``argparse.Namespace`` (official files) as a dict."""
    if isinstance(value, dict):
        return dict(value)
    return dict(vars(value)) if hasattr(value, "__dict__") else {}


def _step(obj: Mapping[str, Any]) -> Optional[int]:
    value = obj.get("step", obj.get("global_step"))
    return int(value) if isinstance(value, (int, float)) else None


def _from_current_format(obj: Dict[str, Any], where: str) -> RunCheckpoint:
    task, arch = obj.get("task"), obj.get("arch")
    if task not in TASKS or not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise CheckpointFormatError(f"{where} is a damaged vimamba checkpoint: task {task!r}, arch {arch!r}")
    return RunCheckpoint(
        task=task, arch={"name": arch["name"], "family": arch.get("family", "vim"),
                         "overrides": dict(arch.get("overrides") or {})},
        task_config=dict(obj.get("task_config") or {}), preprocessing=obj.get("preprocessing"),
        class_names=list(obj.get("class_names") or []), data_config=dict(obj.get("data_config") or {}),
        weights=_state(obj, "model", where), ema_weights=_state(obj, "model_ema", where, required=False),
        step=_step(obj), config=dict(obj.get("config") or {}), source_format="vimamba-2")


def _from_training(obj: Dict[str, Any], where: str) -> RunCheckpoint:
    spec = obj[MODEL_SPEC_KEY]
    if spec.get("family") not in ("vim", "timm") or not isinstance(spec.get("name"), str):
        raise CheckpointFormatError(f"{where} has a damaged model_spec: {spec!r}")
    return RunCheckpoint(
        task="classification",
        arch={"name": spec["name"], "family": spec["family"], "overrides": dict(spec.get("kwargs") or {})},
        task_config={}, preprocessing=obj.get(PREPROCESSING_KEY), class_names=list(obj.get(CLASS_NAMES_KEY) or []),
        data_config={}, weights=_state(obj, "model", where), ema_weights=_state(obj, "model_ema", where, False),
        step=_step(obj), config=_plain(obj.get("config")), source_format="vimamba-1-train")


def _from_dense(obj: Dict[str, Any], where: str) -> RunCheckpoint:
    task, dense = obj["dense_task"], obj.get("dense_config")
    if task not in DENSE_TASKS or not isinstance(dense, dict):
        raise CheckpointFormatError(f"{where} is a damaged segmentation/detection checkpoint: dense_task {task!r}, "
                                    f"dense_config of type {type(dense).__name__}")
    backbone = dense.get("backbone")
    arch = None
    if isinstance(backbone, dict):
        arch = {"name": backbone.get("model", _BASE_VIM), "family": "vim", "overrides": dict(backbone.get("vim") or {})}
    return RunCheckpoint(
        task=task, arch=arch, task_config={"dense_config": dense}, preprocessing=obj.get(PREPROCESSING_KEY),
        class_names=list(obj.get(CLASS_NAMES_KEY) or []), data_config=dict(obj.get("data_config") or {}),
        weights=_state(obj, "model", where), ema_weights=_state(obj, "model_ema", where, False), step=_step(obj),
        config=_plain(obj.get("config")), source_format="vimamba-1-dense")


def _from_pretraining_record(obj: Dict[str, Any], where: str) -> RunCheckpoint:
    record = obj[PRETRAINING_KEY]
    encoder = record.get("encoder_config")
    return RunCheckpoint(
        task="pretraining", arch=vim_arch(encoder, where=where) if isinstance(encoder, dict) else None,
        task_config={"objective": record.get("objective"), "objective_kwargs": dict(record.get("objective_kwargs")
                                                                                    or {}),
                     "encoder_config": encoder},
        preprocessing=record.get("preprocessing"), class_names=[], data_config={},
        weights=_state(obj, "model", where), ema_weights=_state(obj, "model_ema", where, False), step=_step(obj),
        config=_plain(record.get("objective_config") or obj.get("config")), source_format="vimamba-1-pretraining")


def _from_weights_file(obj: Dict[str, Any], where: str) -> RunCheckpoint:
    """Official training files and earlier vimamba weight files: weights under ``model`` / ``model_ema`` / ...,
    with (vimamba) or without (official) the architecture beside them."""
    weights, key = select_weights(obj, "auto", where)
    ema_key = next((k for k in EMA_KEYS if is_state_dict(obj.get(k))), None)
    config = obj.get(CONFIG_KEY)
    metadata = {"config": config if isinstance(config, dict) else None,
                "arch": obj.get(ARCH_KEY) if isinstance(obj.get(ARCH_KEY), str) else None,
                "class_names": obj.get(CLASS_NAMES_KEY), "preprocessing": obj.get(PREPROCESSING_KEY)}
    ckpt = _from_weights(weights, metadata, "vimamba-1-weights" if metadata["config"] else "official", key, where)
    if ema_key is not None:
        ckpt.ema_weights, ckpt.ema_key = clean_state_dict(obj[ema_key]), f"'{ema_key}'"
    ckpt.config = _plain(obj.get("args") or obj.get("config"))
    return ckpt


def _read_safetensors(path: Path) -> RunCheckpoint:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: '{path}'", path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointFormatError(f"could not read '{path}' as a safetensors file: {e}. The file may be "
                                    "truncated.") from e
    try:
        found = {"config": json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else None,
                 "arch": metadata.get(ARCH_KEY),
                 "class_names": json.loads(metadata[CLASS_NAMES_KEY]) if CLASS_NAMES_KEY in metadata else None,
                 "preprocessing": json.loads(metadata[PREPROCESSING_KEY]) if PREPROCESSING_KEY in metadata else None}
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(f"'{path}' has damaged vimamba metadata ({e})") from e
    ckpt = _from_weights(clean_state_dict(tensors), found, "safetensors", "safetensors", f"'{path}'")
    ckpt.path = path
    return ckpt


def _from_weights(weights: Dict[str, torch.Tensor], metadata: Optional[Mapping[str, Any]], source_format: str,
                  key: str, where: str = "the checkpoint") -> RunCheckpoint:
    """A classifier's weights, its architecture from the metadata or else inferred from the shapes (None when
    the weights are not a Vim classifier's)."""
    metadata = metadata or {}
    config = metadata.get("config") or infer_config(weights)
    return RunCheckpoint(
        task="classification" if config else None,
        arch=vim_arch(config, metadata.get("arch"), where=where) if config else None,
        task_config={}, preprocessing=metadata.get("preprocessing"),
        class_names=list(metadata.get("class_names") or []), data_config={}, weights=weights, ema_weights=None,
        step=None, config={}, source_format=source_format, weights_key=key)


def vim_arch(config: Mapping[str, Any], name: Optional[str] = None, *, where: str = "the checkpoint"
             ) -> Dict[str, Any]:
    """``{"name", "family": "vim", "overrides"}`` for a full set of :class:`VimConfig` fields: the registered
    ``name`` (else the variant the fields match, else a base variant) and the fields that differ from it."""
    fields = {k: v for k, v in config.items() if k != "scan_impl"}  # a property of the machine, not of the weights
    try:
        full = VimConfig.from_dict(fields).to_dict()
    except (TypeError, ValueError) as e:
        raise CheckpointFormatError(f"{where} stores a Vim configuration vimamba cannot build: {e}") from e
    try:
        name = resolve_name(name) if name else None
    except KeyError:
        name = None
    name = name or find_registered_name(full) or _BASE_VIM
    base = model_config(name).to_dict()
    return {"name": name, "family": "vim",
            "overrides": {k: v for k, v in full.items() if k != "scan_impl" and v != base.get(k)}}


# ---------------------------------------------------------------------------------------------------- checks
def check_task(ckpt: RunCheckpoint, task: Union[None, str, Sequence[str]]) -> str:
    """The checkpoint's task, or one line saying it is the wrong kind (or not a model vimamba can build)."""
    if ckpt.task is None:
        raise CheckpointFormatError(f"{ckpt.describe()} is {describe_foreign(ckpt.weights)}")
    wanted = (task,) if isinstance(task, str) else tuple(task or ())
    unknown = [t for t in wanted if t not in TASKS]
    if unknown:
        raise InputError(f"task must be one of {TASKS}, got {unknown}")
    if wanted and ckpt.task not in wanted:
        raise CheckpointFormatError(f"{ckpt.where} is a {ckpt.task} checkpoint, not a {' or '.join(wanted)} one: "
                                    f"{_USES[ckpt.task]}")
    return ckpt.task


def load_exactly(model: nn.Module, weights: Dict[str, torch.Tensor], ckpt: RunCheckpoint, what: str) -> None:
    """Load ``weights`` into ``model`` with every key matching, or one error naming ``ckpt`` and ``what`` it should
    fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointFormatError(f"the weights in {ckpt.where} do not fit {what}: {e}") from e
