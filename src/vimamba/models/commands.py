"""Model subcommands: ``vimamba models``, ``vimamba info``, ``vimamba convert``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_args import check_image_size, image_size


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the registered Vim models",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'vim_tiny*'")
    p.add_argument("--aliases", action="store_true", help="also list the official long names")
    p.set_defaults(func=_models)

    p = subparsers.add_parser("info", help="describe a model name or a checkpoint file",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="registered model name or checkpoint path")
    p.add_argument("--img-size", type=image_size, nargs="+", default=None, help="also show the token count at these sizes")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects in a .pth you trust")
    p.set_defaults(func=_info)

    p = subparsers.add_parser(
        "convert", help="re-save a checkpoint (official .pth, training checkpoint) as .safetensors or .pth weights",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="input checkpoint")
    p.add_argument("output", help="output file; .safetensors or .pth")
    p.add_argument("--weights", choices=["auto", "model", "ema"], default="auto",
                   help="which weights of a training checkpoint: the model's or the EMA's")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects in a .pth you trust")
    p.set_defaults(func=_convert)


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


def _info(args) -> int:
    import torch

    from .checkpoint import read_checkpoint
    from .registry import load_model, model_config
    from .vim import VisionMamba

    if Path(args.model).exists():
        ckpt = read_checkpoint(args.model, trust_pickle=args.trust_checkpoint)
        model = load_model(ckpt)
        print(f"{ckpt.describe()}: {len(ckpt.state_dict)} tensors")
        if ckpt.class_names:
            shown = ", ".join(ckpt.class_names[:10]) + (" ..." if len(ckpt.class_names) > 10 else "")
            print(f"classes ({len(ckpt.class_names)}): {shown}")
    else:
        with torch.device("meta"):
            model = VisionMamba(model_config(args.model))
    cfg = model.cfg
    print(f"architecture: {getattr(model, 'arch', None) or 'custom Vim'}")
    print(f"parameters: {_count(model):,}")
    print(json.dumps({k: v for k, v in cfg.to_dict().items()}, indent=2))
    for size in args.img_size or []:
        check_image_size(size, cfg.patch_size)
        grid = model.patch_embed.feat_size((size, size))
        print(f"{size}x{size}: {grid[0]}x{grid[1]} patches + 1 class token = {grid[0] * grid[1] + 1} tokens")
    return 0


def _convert(args) -> int:
    from .checkpoint import read_checkpoint, save_weights
    from .registry import load_model

    from ..errors import UserError
    from ..io import same_file

    if same_file(args.checkpoint, args.output):  # a symlink or hard link to the input counts as the input
        raise UserError(f"the output '{args.output}' is the input checkpoint '{args.checkpoint}'; converting in "
                        "place would replace it (with its optimizer, scheduler and EMA state) by bare weights. "
                        "Choose another output file")
    ckpt = read_checkpoint(args.checkpoint, weights=args.weights, trust_pickle=args.trust_checkpoint)
    model = load_model(ckpt)
    out = save_weights(model, args.output, class_names=ckpt.class_names)
    print(f"wrote {out} ({getattr(model, 'arch', None) or 'custom Vim'}, {_count(model):,} parameters, "
          f"weights from {ckpt.weights_key})")
    return 0
