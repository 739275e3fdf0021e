"""``vimamba export``: write a checkpoint as ONNX, a torch.export program or safetensors."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Tuple

from ..cli_args import at_least, image_size
from ..command_options import GROUP_TITLES, checkpoint_option, trust_checkpoint_option, weights_option
from ..engine.config import add_config_flags, command_config, option
from ..errors import InputError
from .exporter import FORMATS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a Vim classifier or segmentor to ONNX, torch.export (.pt2) or safetensors",
        description="Export a checkpoint (official .pth, vimamba training checkpoint, .safetensors weights, or a "
                    "segmentation checkpoint) for deployment. The preprocessing and class names are stored in the "
                    "output (ONNX metadata_props / the program's vimamba.json / safetensors metadata).",
        epilog="examples:\n"
               "  vimamba export --checkpoint vim_t.pth --output vim_t.onnx --dynamic\n"
               "  vimamba predict --onnx vim_t.onnx cat.jpg\n"
               "  vimamba export --checkpoint runs/seg/best.pth --format onnx --output seg.onnx --img-size 512\n"
               "  vimamba export --checkpoint vim_t.pth --format torch-export --output vim_t.pt2 --dynamic\n"
               "  vimamba export vim_t.pth --output vim_t.onnx      # the checkpoint as the first argument works too",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, [ExportConfig], group_titles=GROUP_TITLES)
    p.set_defaults(func=_export)


@dataclass
class ExportConfig:
    """``vimamba export``."""

    checkpoint: Optional[str] = checkpoint_option(
        "the checkpoint to export: an official .pth, a vimamba training checkpoint, .safetensors weights, or a "
        "segmentation checkpoint", also_positional=True)
    weights: str = weights_option()
    trust_checkpoint: bool = trust_checkpoint_option()
    fmt: str = option("onnx", "output format", "output", flag="--format", choices=FORMATS)
    output: Optional[str] = option(None, "the file to write", "output", aliases=("-o",), metavar="PATH",
                                   required=True)
    dynamic: bool = option(False, "accept any image size (default: only --img-size); the batch size is always free",
                           "output")
    img_size: Optional[Tuple[int, ...]] = option(None, "trace at this size: S or H W (default: the checkpoint's; "
                                                 "segmentation: its crop size)", "output", metavar="S", nargs="+",
                                                 check=image_size)
    opset: Optional[int] = option(None, "ONNX opset, 18 or newer (default: 18)", "output", check=at_least(18, int))

    def check(self) -> None:
        if self.opset is not None and self.fmt != "onnx":
            raise InputError("--opset applies to --format onnx only")


def _export(args) -> int:
    from .exporter import export_checkpoint

    cfg = command_config(args, ExportConfig)
    path, meta = export_checkpoint(cfg.checkpoint, cfg.output, cfg.fmt, dynamic=cfg.dynamic,
                                   img_size=cfg.img_size, opset=cfg.opset, weights=cfg.weights,
                                   trust_pickle=cfg.trust_checkpoint)
    sizes = "any image size" if meta.dynamic else f"{meta.input_size[0]}x{meta.input_size[1]} images"
    print(f"wrote {path} ({cfg.fmt}, {meta.task}, {len(meta.class_names)} classes, {sizes}, any batch size) "
          f"from {meta.model}")
    return 0
