"""``vimamba export``: write a checkpoint as ONNX, a torch.export program or safetensors."""
from __future__ import annotations

import argparse

from ..cli_args import at_least, image_size
from ..errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a Vim classifier or segmentor to ONNX, torch.export (.pt2) or safetensors",
        description="Export a checkpoint (official .pth, vimamba training checkpoint, .safetensors weights, or a "
                    "segmentation checkpoint) for deployment. The preprocessing and class names are stored in the "
                    "output (ONNX metadata_props / the program's vimamba.json / safetensors metadata).",
        epilog="examples:\n"
               "  vimamba export vim_t.pth --output vim_t.onnx --dynamic\n"
               "  vimamba predict --onnx vim_t.onnx cat.jpg\n"
               "  vimamba export runs/seg/best.pth --format onnx --output seg.onnx --img-size 512\n"
               "  vimamba export vim_t.pth --format torch-export --output vim_t.pt2 --dynamic",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the checkpoint to export")
    p.add_argument("--format", dest="fmt", default="onnx", choices=("onnx", "torch-export", "safetensors"),
                   help="output format (default: onnx)")
    p.add_argument("--output", "-o", required=True, metavar="PATH", help="the file to write")
    p.add_argument("--dynamic", action="store_true",
                   help="accept any image size (default: only --img-size); the batch size is always free")
    p.add_argument("--img-size", type=image_size, nargs="+", default=None, metavar="S",
                   help="trace at this size: S or H W (default: the checkpoint's; segmentation: its crop size)")
    p.add_argument("--opset", type=at_least(18, int), default=None, help="ONNX opset, 18 or newer (default: 18)")
    p.add_argument("--weights", default="auto", choices=("auto", "model", "ema"),
                   help="with a training checkpoint: the trained or the EMA weights")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects in a .pth you trust")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from .exporter import export_checkpoint

    if args.opset is not None and args.fmt != "onnx":
        raise InputError("--opset applies to --format onnx only")
    path, meta = export_checkpoint(args.checkpoint, args.output, args.fmt, dynamic=args.dynamic,
                                   img_size=args.img_size, opset=args.opset, weights=args.weights,
                                   trust_pickle=args.trust_checkpoint)
    sizes = "any image size" if meta.dynamic else f"{meta.input_size[0]}x{meta.input_size[1]} images"
    print(f"wrote {path} ({args.fmt}, {meta.task}, {len(meta.class_names)} classes, {sizes}, any batch size) "
          f"from {meta.model}")
    return 0
