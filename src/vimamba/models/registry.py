"""The model registry: every variant is a name for a set of :class:`VimConfig` fields.

``create_model(name, pretrained=None|True|path, **overrides)`` builds any registered variant, with any field
overridden (``embed_dim``, ``depth``, ``d_state``, ``patch_size``, ``stride``, ``img_size``, ``in_chans``,
``num_classes``, ...), so small models for CPU work need no new registration. The official long names are aliases.
After ``import vimamba`` the same names work with ``timm.create_model``.
"""
from __future__ import annotations

import fnmatch
import os
import sys
import types
from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Optional, Tuple, Union

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .checkpoint import Checkpoint, infer_config, load_checkpoint, read_checkpoint
from .vim import VimConfig, VisionMamba

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "load_model", "find_registered_name",
           "get_model_entry", "resolve_name", "model_config", "data_config"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its config fields and where its official weights live."""

    name: str
    config: Dict[str, object]
    aliases: Tuple[str, ...] = ()
    hf_hub_id: Optional[str] = None  # Hugging Face repository with the official weights
    hf_fine_tuned: bool = False  # the "+" (stride-8 fine-tuned) file of that repository
    top1: Optional[float] = None  # official ImageNet-1k top-1 at 224 (README)
    notes: str = ""


_REGISTRY: Dict[str, ModelEntry] = {}
_ALIASES: Dict[str, str] = {}

_OFFICIAL_SUFFIX = "_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"


def register_model(entry: ModelEntry) -> ModelEntry:
    valid = {f.name for f in fields(VimConfig)}
    unknown = set(entry.config) - valid
    if unknown:
        raise ValueError(f"model {entry.name}: unknown config fields {sorted(unknown)}")
    for name in (entry.name, *entry.aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[entry.name] = entry
    for alias in entry.aliases:
        _ALIASES[alias] = entry.name
    _register_with_timm(entry)
    return entry


def resolve_name(name: str) -> str:
    """Canonical registered name for a name or alias (a timm-style ``.tag`` suffix is ignored)."""
    base = name.split(".", 1)[0]
    if base in _REGISTRY:
        return base
    if base in _ALIASES:
        return _ALIASES[base]
    close = fnmatch.filter(list(_REGISTRY) + list(_ALIASES), f"*{base.replace('_', '*')}*")[:3]
    hint = f" Did you mean {close}?" if close else ""
    raise KeyError(f"unknown Vim model {name!r}.{hint} Registered: {sorted(_REGISTRY)}")


def get_model_entry(name: str) -> ModelEntry:
    return _REGISTRY[resolve_name(name)]


def list_models(pattern: str = "*", include_aliases: bool = False) -> List[str]:
    """Registered model names matching a shell-style pattern (official long names with ``include_aliases``)."""
    names = list(_REGISTRY) + (list(_ALIASES) if include_aliases else [])
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def model_config(name: str, **overrides) -> VimConfig:
    """The VimConfig of a registered model with fields overridden."""
    entry = get_model_entry(name)
    valid = {f.name for f in fields(VimConfig)}
    unknown = set(overrides) - valid
    if unknown:
        raise TypeError(
            f"create_model({name!r}): unknown arguments {sorted(unknown)}; a Vim model takes {sorted(valid)}"
        )
    return VimConfig(**{**entry.config, **overrides})


def create_model(
    name: str,
    pretrained: Union[None, bool, str, os.PathLike] = None,
    *,
    weights: str = "auto",
    trust_pickle: bool = False,
    **overrides,
) -> VisionMamba:
    """Build a registered Vim model, optionally with weights.

    Args:
        name: a registered name or official alias (``vimamba.list_models(include_aliases=True)``).
        pretrained: None/False = random init (the official init); a path = load that checkpoint (official
            ``.pth``, vimamba ``.pth`` or ``.safetensors``); True = download the official weights from the
            Hugging Face Hub (needs network; cached by huggingface_hub).
        weights: with a checkpoint holding both: "auto"/"model" = the trained weights, "ema" = the EMA weights.
        trust_pickle: allow arbitrary pickled objects in a ``.pth`` file you trust.
        **overrides: any :class:`VimConfig` field (``num_classes``, ``img_size``, ``stride``, ``embed_dim``,
            ``depth``, ``drop_path_rate``, ``scan_impl``, ...). Overriding ``num_classes`` with weights gives a
            fresh head; a different ``img_size``/``stride`` resizes the position embedding.
    """
    canonical = resolve_name(name)
    model = VisionMamba(model_config(canonical, **overrides))
    model.arch = canonical
    model.pretrained_cfg = model.default_cfg = data_config(model.cfg)
    if pretrained:
        path = pretrained if not isinstance(pretrained, bool) else _download_official(get_model_entry(canonical))
        load_checkpoint(model, path, weights=weights, ignore_head="num_classes" in overrides,
                        trust_pickle=trust_pickle)
    return model


def find_registered_name(config: dict) -> Optional[str]:
    """The registered name whose architecture matches these config fields (ignoring classes and training knobs)."""
    keys = ("embed_dim", "depth", "d_state", "patch_size", "stride", "in_chans", "expand")
    base = VimConfig()
    for name, entry in _REGISTRY.items():
        ref = {**{k: getattr(base, k) for k in keys}, **entry.config}
        if all(config.get(k, getattr(base, k)) == ref[k] for k in keys):
            return name
    return None


def load_model(
    path: Union[str, os.PathLike, Checkpoint], *, weights: str = "auto", trust_pickle: bool = False, **overrides
) -> VisionMamba:
    """Build the model a checkpoint was made for and load it (config from the file, else inferred from the shapes)."""
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path, weights=weights, trust_pickle=trust_pickle)
    if ckpt.config is not None:
        config = dict(ckpt.config)
    else:
        config = infer_config(ckpt.state_dict)
        if config is None:
            from .checkpoint import CheckpointError, _describe_foreign

            raise CheckpointError(f"{ckpt.describe()} is {_describe_foreign(ckpt.state_dict)}")
    config.pop("scan_impl", None)
    model = VisionMamba(VimConfig.from_dict({**config, **overrides}))
    model.arch = ckpt.arch or find_registered_name(config)
    model.pretrained_cfg = model.default_cfg = data_config(model.cfg)
    load_checkpoint(model, ckpt, ignore_head="num_classes" in overrides)
    return model


# ---------------------------------------------------------------------------------------------------- hub download
def _download_official(entry: ModelEntry) -> str:
    """Fetch the official checkpoint of a registered model from the Hugging Face Hub (cached)."""
    if entry.hf_hub_id is None:
        raise ValueError(f"{entry.name} has no official weights; pass pretrained=PATH")
    try:
        from huggingface_hub import hf_hub_download, list_repo_files
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with timm
        raise RuntimeError("downloading official weights needs huggingface_hub (pip install huggingface_hub)") from e
    try:
        files = [f for f in list_repo_files(entry.hf_hub_id) if f.endswith((".pth", ".pt", ".safetensors"))]
        # Each official repository holds the 224/stride-16 weights and the stride-8 fine-tuned ("ft") weights.
        wanted = [f for f in files if ("ft" in os.path.basename(f).split("_")) == entry.hf_fine_tuned]
        if not wanted:
            raise FileNotFoundError(f"no {'fine-tuned ' if entry.hf_fine_tuned else ''}weights among {files}")
        return hf_hub_download(entry.hf_hub_id, sorted(wanted)[0])
    except Exception as e:
        raise RuntimeError(
            f"could not download the official weights of {entry.name} from https://huggingface.co/"
            f"{entry.hf_hub_id} ({type(e).__name__}: {e}). Without network, download the .pth file elsewhere and "
            f"pass pretrained='path/to/file.pth'."
        ) from e


# ---------------------------------------------------------------------------------------------------- timm
_TIMM_MODULE = "vimamba.models._timm_entrypoints"


def data_config(cfg: VimConfig) -> dict:
    """timm-style pretrained cfg: the official preprocessing (resize 256 bicubic, crop 224, ImageNet mean/std)."""
    return dict(
        url="", num_classes=cfg.num_classes, input_size=(cfg.in_chans, *cfg.img_size),
        pool_size=None, crop_pct=0.875, interpolation="bicubic", fixed_input_size=False,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj", classifier="head",
        license="apache-2.0",
    )


def _register_with_timm(entry: ModelEntry) -> None:
    """Make ``timm.create_model(name)`` build vimamba models (names and aliases)."""
    from timm.models import register_model as timm_register

    module = sys.modules.get(_TIMM_MODULE)
    if module is None:
        module = types.ModuleType(_TIMM_MODULE, "timm entrypoints of vimamba's registered models")
        module.default_cfgs = {}
        sys.modules[_TIMM_MODULE] = module

    for timm_name in (entry.name, *entry.aliases):
        def entrypoint(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                       _name=entry.name, **kwargs):
            features_only = kwargs.pop("features_only", False)
            out_indices = kwargs.pop("out_indices", None)
            model = create_model(_name, pretrained=True if pretrained is True else (pretrained or None), **kwargs)
            if features_only:
                from timm.models._features import FeatureGetterNet

                return FeatureGetterNet(model, out_indices=out_indices if out_indices is not None else 4)
            return model

        entrypoint.__name__ = entrypoint.__qualname__ = timm_name
        entrypoint.__module__ = _TIMM_MODULE
        entrypoint.__doc__ = f"Vision Mamba {entry.name} (vimamba)."
        module.default_cfgs[timm_name] = data_config(VimConfig(**entry.config))
        setattr(module, timm_name, entrypoint)
        timm_register(entrypoint)


# ---------------------------------------------------------------------------------------------------- the variants
register_model(ModelEntry(
    "vim_tiny_patch16_224", dict(embed_dim=192, stride=16),
    aliases=("vim_tiny_patch16_224" + _OFFICIAL_SUFFIX,),
    hf_hub_id="hustvl/Vim-tiny-midclstok", top1=76.1,
))
register_model(ModelEntry(
    "vim_tiny_patch16_stride8_224", dict(embed_dim=192, stride=8),
    aliases=("vim_tiny_patch16_stride8_224" + _OFFICIAL_SUFFIX,),
    hf_hub_id="hustvl/Vim-tiny-midclstok", hf_fine_tuned=True, top1=78.3,
    notes="Vim-Ti+ : fine-tuned at stride 8 (729 patches) for 30 epochs",
))
register_model(ModelEntry(
    "vim_small_patch16_224", dict(embed_dim=384, stride=16),
    aliases=("vim_small_patch16_224" + _OFFICIAL_SUFFIX,),
    hf_hub_id="hustvl/Vim-small-midclstok", top1=80.5,
))
register_model(ModelEntry(
    "vim_small_patch16_stride8_224", dict(embed_dim=384, stride=8),
    aliases=("vim_small_patch16_stride8_224" + _OFFICIAL_SUFFIX,),
    hf_hub_id="hustvl/Vim-small-midclstok", hf_fine_tuned=True, top1=81.6,
    notes="Vim-S+ : fine-tuned at stride 8 (729 patches) for 30 epochs",
))
register_model(ModelEntry(
    "vim_base_patch16_224", dict(embed_dim=768, stride=16),
    aliases=("vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",),
    hf_hub_id="hustvl/Vim-base-midclstok", top1=81.9,
))
