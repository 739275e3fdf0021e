"""Model subcommands: ``vimamba models``, ``vimamba info``, ``vimamba convert``."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..cli_args import check_image_size, image_size
from ..command_options import (GROUP_TITLES, checkpoint_option, json_option, trust_checkpoint_option,
                               weights_option)
from ..engine.config import add_config_flags, command_config, option


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the registered Vim models",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'vim_tiny*'")
    p.add_argument("--aliases", action="store_true", help="also list the official long names")
    p.set_defaults(func=_models)

    p = subparsers.add_parser("info", help="describe a model name or any checkpoint file (task, architecture, "
                                           "step, classes, preprocessing, format)",
                              epilog="The checkpoint or model name may also be given as the first argument (the "
                                     "older spelling: vimamba info NAME|CKPT).")
    add_config_flags(p, [InfoConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_info)

    p = subparsers.add_parser(
        "convert", help="re-save a checkpoint (official .pth, training checkpoint) as .safetensors or .pth weights",
        epilog="The checkpoint and the output may also be given as positional arguments, in this order (the older "
               "spelling: vimamba convert CKPT OUT).")
    add_config_flags(p, [ConvertConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_convert)


@dataclass
class InfoConfig:
    """``vimamba info``."""

    model: Optional[str] = checkpoint_option("a checkpoint file (any format vimamba reads) or a registered model name",
                                             also_positional=True)
    trust_checkpoint: bool = trust_checkpoint_option()
    img_size: Optional[Tuple[int, ...]] = option(None, "also show the token count at these sizes", "output",
                                                 metavar="S", nargs="+", check=image_size)
    json: bool = json_option("the description")


@dataclass
class ConvertConfig:
    """``vimamba convert``."""

    checkpoint: Optional[str] = checkpoint_option("the checkpoint to convert: an official .pth, a vimamba training "
                                                  "checkpoint or weights", also_positional=True)
    weights: str = weights_option()
    trust_checkpoint: bool = trust_checkpoint_option()
    output: Optional[str] = option(None, "the file to write: .safetensors or .pth (bare weights)", "output",
                                   metavar="FILE", required=True, also_positional=True)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _models(args) -> int:
    from .registry import get_model_entry, list_models
    from .vim import VimConfig, VisionMamba

    import torch

    names = list_models(args.pattern, include_aliases=args.aliases)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    width = max(len(n) for n in names)
    print(f"{'name':<{width}} {'params':>12} {'tokens@224':>10} {'official top-1':>14}")
    for name in names:
        entry = get_model_entry(name)
        with torch.device("meta"):
            model = VisionMamba(VimConfig(**entry.config))
        tokens = model.patch_embed.num_patches + 1
        top1 = f"{entry.top1:.1f}" if entry.top1 is not None else "-"
        print(f"{name:<{width}} {_count(model):>12,} {tokens:>10} {top1:>14}")
    return 0


def _tokens(cfg, sizes) -> dict:
    """``{"HxW": token count}`` of a Vim config at each square size (a meta-device model: no memory, no time)."""
    import torch

    from .vim import VisionMamba

    with torch.device("meta"):
        model = VisionMamba(cfg)
    tokens = {}
    for size in sizes or []:
        check_image_size(size, cfg.patch_size)
        grid = model.patch_embed.feat_size((size, size))
        tokens[f"{size}x{size}"] = {"grid": list(grid), "tokens": grid[0] * grid[1] + 1}
    return tokens


def _print_tokens(tokens: dict) -> None:
    for size, t in tokens.items():
        print(f"{size}: {t['grid'][0]}x{t['grid'][1]} patches + 1 class token = {t['tokens']} tokens")


def _info(args) -> int:
    options = command_config(args, InfoConfig)
    if Path(options.model).exists():
        return _info_checkpoint(options)
    import torch

    from .registry import model_config
    from .vim import VisionMamba

    cfg = model_config(options.model)
    with torch.device("meta"):
        model = VisionMamba(cfg)
    info = {"name": options.model, "parameters": _count(model), "config": cfg.to_dict(),
            "tokens": _tokens(cfg, options.img_size)}
    if options.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"architecture: {options.model}")
    print(f"parameters: {info['parameters']:,}")
    print(json.dumps(info["config"], indent=2))
    _print_tokens(info["tokens"])
    return 0


def _info_checkpoint(options: InfoConfig) -> int:
    """Describe any checkpoint through the loader, without building its model."""
    from ..checkpoints.reading import read_checkpoint
    from ..checkpoints.state_dicts import describe_foreign
    from .vim import VimConfig

    ckpt = read_checkpoint(options.model, trust_pickle=options.trust_checkpoint)
    vim = ckpt.vim_config()
    info = {
        "path": str(ckpt.path), "source_format": ckpt.source_format, "task": ckpt.task, "arch": ckpt.arch,
        "task_config": ckpt.task_config, "step": ckpt.step, "progress": ckpt.progress, "num_classes": len(ckpt.class_names),
        "class_names": ckpt.class_names, "preprocessing": ckpt.preprocessing, "data_config": ckpt.data_config,
        "weights": {"from": ckpt.weights_key, "tensors": len(ckpt.weights),
                    "values": sum(v.numel() for v in ckpt.weights.values()), "ema": ckpt.ema_weights is not None},
        "vim_config": vim, "tokens": _tokens(VimConfig.from_dict(vim), options.img_size) if vim else {},
    }
    if ckpt.task is None:
        info["looks_like"] = describe_foreign(ckpt.weights)
    if options.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"checkpoint '{ckpt.path}' ({ckpt.source_format})")
    print(f"task: {ckpt.task or 'unknown: ' + info['looks_like']}")
    if ckpt.arch:
        overrides = ", ".join(f"{k}={v}" for k, v in ckpt.arch["overrides"].items())
        print(f"architecture: {ckpt.arch['name']} ({ckpt.arch['family']})" + (f" with {overrides}" if overrides
                                                                              else ""))
    if ckpt.step is not None or ckpt.progress:
        details = ", ".join(f"{k.replace('_', ' ')} {json.dumps(v, default=str)}" for k, v in ckpt.progress.items())
        print(f"step: {ckpt.step if ckpt.step is not None else '-'}" + (f" ({details})" if details else ""))
    weights = info["weights"]
    print(f"weights: {weights['tensors']} tensors, {weights['values']:,} values, from {ckpt.weights_key}"
          + (" (+ EMA weights)" if weights["ema"] else ""))
    if ckpt.class_names:
        shown = ", ".join(ckpt.class_names[:10]) + (" ..." if len(ckpt.class_names) > 10 else "")
        print(f"classes ({len(ckpt.class_names)}): {shown}")
    for name in ("preprocessing", "data_config", "task_config"):
        if info[name]:
            print(f"{name.replace('_', ' ')}: {json.dumps(info[name], default=str)}")
    _print_tokens(info["tokens"])
    return 0


def _convert(args) -> int:
    from ..checkpoints.reading import read_checkpoint
    from ..loader import load_model
    from ..errors import UserError
    from ..io import same_file
    from .checkpoint import CheckpointError, save_weights
    from .vim import VisionMamba

    cfg = command_config(args, ConvertConfig)
    if same_file(cfg.checkpoint, cfg.output):  # a symlink or hard link to the input counts as the input
        raise UserError(f"the output '{cfg.output}' is the input checkpoint '{cfg.checkpoint}'; converting in "
                        "place would replace it (with its optimizer, scheduler and EMA state) by bare weights. "
                        "Choose another output file")
    ckpt = read_checkpoint(cfg.checkpoint, trust_pickle=cfg.trust_checkpoint)
    model = load_model(ckpt, weights=cfg.weights, task="classification")
    if not isinstance(model, VisionMamba):
        raise CheckpointError(f"{ckpt.describe()} holds a {type(model).__name__}, not a Vim: vimamba convert "
                              "writes Vim weights")
    out = save_weights(model, cfg.output, class_names=ckpt.class_names or None, preprocessing=ckpt.preprocessing)
    print(f"wrote {out} ({getattr(model, 'arch', None) or 'custom Vim'}, {_count(model):,} parameters, "
          f"weights from {ckpt.select(cfg.weights)[1]})")
    return 0
