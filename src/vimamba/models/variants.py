"""The registered Vim variants: each is a name for a set of :class:`VimConfig` fields and its official weights.

This table is the one place a variant is defined. :mod:`vimamba.models.registry` turns it into timm entrypoints and
pretrained cfgs; checkpoint messages use it to name the architecture a file looks like. It imports nothing but the
model config, so every other module of the package can read it.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Tuple

from ..errors import ArgumentsError, InputError, UnknownNameError
from .vim import VimConfig

__all__ = ["ModelEntry", "VARIANTS", "OFFICIAL_REPOSITORY", "resolve_name", "get_model_entry", "list_models",
           "model_config", "find_registered_name"]

OFFICIAL_REPOSITORY = "https://github.com/hustvl/Vim"


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its config fields and where its official weights live."""

    name: str
    config: Dict[str, object]
    aliases: Tuple[str, ...] = ()  # the official model names of hustvl/Vim
    hf_hub_id: Optional[str] = None  # Hugging Face repository with the official weights
    hf_hub_filename: Optional[str] = None  # the file of that repository with this variant's weights
    top1: Optional[float] = None  # official ImageNet-1k top-1 at 224 (README)
    notes: str = ""


_OFFICIAL_SUFFIX = "_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
_STRIDE8_NOTE = "{} : fine-tuned at stride 8 (729 patches) for 30 epochs"


def _official(name: str, embed_dim: int, stride: int, weights: str, top1: float, notes: str = "",
              official_name: str = "") -> ModelEntry:
    """A variant with official hustvl/Vim weights: ``weights`` is ``"<Hugging Face repository>/<file>"``, and the
    official model name (its alias) is ``name`` + the common suffix unless ``official_name`` says otherwise."""
    hf_hub_id, _, hf_hub_filename = weights.rpartition("/")
    return ModelEntry(name, dict(embed_dim=embed_dim, stride=stride),
                      aliases=(official_name or name + _OFFICIAL_SUFFIX,), hf_hub_id=hf_hub_id, hf_hub_filename=hf_hub_filename, top1=top1, notes=notes)


# File names: each hustvl/Vim-*-midclstok repository holds the 224/stride-16 weights and, for tiny and small, the
# stride-8 fine-tuned ("ft", the README's "+") weights.
VARIANTS: Dict[str, ModelEntry] = {entry.name: entry for entry in (
    _official("vim_tiny_patch16_224", 192, 16, "hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth", 76.1),
    _official("vim_tiny_patch16_stride8_224", 192, 8, "hustvl/Vim-tiny-midclstok/vim_t_midclstok_ft_78p3acc.pth",
              78.3, _STRIDE8_NOTE.format("Vim-Ti+")),
    _official("vim_small_patch16_224", 384, 16, "hustvl/Vim-small-midclstok/vim_s_midclstok_80p5acc.pth", 80.5),
    _official("vim_small_patch16_stride8_224", 384, 8, "hustvl/Vim-small-midclstok/vim_s_midclstok_ft_81p6acc.pth",
              81.6, _STRIDE8_NOTE.format("Vim-S+")),
    _official("vim_base_patch16_224", 768, 16, "hustvl/Vim-base-midclstok/vim_b_midclstok_81p9acc.pth", 81.9,
              official_name="vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2"),
)}

_ALIASES: Dict[str, str] = {alias: entry.name for entry in VARIANTS.values() for alias in entry.aliases}


def _check_table() -> None:
    valid = {f.name for f in fields(VimConfig)}
    for entry in VARIANTS.values():
        unknown = set(entry.config) - valid
        if unknown:
            raise InputError(f"model {entry.name}: unknown config fields {sorted(unknown)}")


_check_table()


def resolve_name(name: str) -> str:
    """Canonical registered name for a name or alias (a timm-style ``.tag`` suffix is ignored)."""
    base = name.split(".", 1)[0]
    if base in VARIANTS:
        return base
    if base in _ALIASES:
        return _ALIASES[base]
    close = fnmatch.filter(list(VARIANTS) + list(_ALIASES), f"*{base.replace('_', '*')}*")[:3]
    hint = f" Did you mean {close}?" if close else ""
    raise UnknownNameError(f"unknown Vim model {name!r}.{hint} Registered: {sorted(VARIANTS)}")


def get_model_entry(name: str) -> ModelEntry:
    return VARIANTS[resolve_name(name)]


def list_models(pattern: str = "*", include_aliases: bool = False) -> List[str]:
    """Registered model names matching a shell-style pattern (official long names with ``include_aliases``)."""
    names = list(VARIANTS) + (list(_ALIASES) if include_aliases else [])
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def model_config(name: str, **overrides) -> VimConfig:
    """The VimConfig of a registered model with fields overridden."""
    entry = get_model_entry(name)
    valid = {f.name for f in fields(VimConfig)}
    unknown = set(overrides) - valid
    if unknown:
        raise ArgumentsError(
            f"create_model({name!r}): unknown arguments {sorted(unknown)}; a Vim model takes {sorted(valid)}"
        )
    return VimConfig(**{**entry.config, **overrides})


def find_registered_name(config: dict) -> Optional[str]:
    """The registered name whose architecture matches these config fields (ignoring classes and training knobs)."""
    keys = ("embed_dim", "depth", "d_state", "patch_size", "stride", "in_chans", "expand")
    base = VimConfig()
    for name, entry in VARIANTS.items():
        ref = {**{k: getattr(base, k) for k in keys}, **entry.config}
        if all(config.get(k, getattr(base, k)) == ref[k] for k in keys):
            return name
    return None
