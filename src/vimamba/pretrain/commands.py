"""Pretraining subcommands: ``vimamba probe`` (k-NN / linear probe of frozen features).

``vimamba pretrain`` itself waits for the step-counted training engine (issue 11); its configuration, objectives,
checkpoints and reconstructions are in this package already (docs/pretraining.md).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from typing import Any, Dict, List

from ..cli_args import image_size, non_negative_int, positive_float, positive_int

def _parse_overrides(items: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--override takes KEY=VALUE (e.g. embed_dim=96), got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip().replace("-", "_")] = value
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="k-NN / linear-probe accuracy of a model's frozen features",
        description="Evaluate frozen features: k-NN (k=20, cosine, DINO's exp(sim/T) weighted vote) or a linear probe "
                    "(BatchNorm without affine + Linear, trained on features computed once). Works for pretraining "
                    "checkpoints (vimamba pretrain), classifiers (vimamba train, exported or official weights) and "
                    "random:MODEL_NAME (a freshly initialised Vim, with --override for its size).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="examples:\n"
               "  vimamba probe --checkpoint runs/pretrain-ar/last.pth --dataset fashion-mnist --method knn\n"
               "  vimamba probe --checkpoint random:vim_tiny_patch16_224 --dataset fashion-mnist "
               "--override patch_size=4 embed_dim=96 depth=6 img_size=32 in_chans=1 --method linear")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a pretraining or classification checkpoint, or random:MODEL_NAME")
    p.add_argument("--data", default=None, metavar="DIR", help="image folder DIR/train/<class>/* and DIR/val/<class>/*")
    p.add_argument("--dataset", default=None, choices=("fashion-mnist", "cifar10", "imagenet"),
                   help="a named dataset instead (with --data: where it lives)")
    p.add_argument("--method", default="knn", choices=("knn", "linear"), help="k-NN or linear probe")
    p.add_argument("--k", type=positive_int, default=20, help="k-NN: neighbours")
    p.add_argument("--temperature", type=positive_float, default=0.07, help="k-NN: vote weight exp(similarity / T)")
    p.add_argument("--vote", default="weighted", choices=("weighted", "majority"),
                   help="k-NN: DINO's temperature-weighted vote or a plain majority")
    p.add_argument("--epochs", type=positive_int, default=30, help="linear probe: epochs over the cached features")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="linear probe: AdamW peak learning rate (cosine decay)")
    p.add_argument("--pool", default="avg", choices=("avg", "token"),
                   help="feature: mean of the patch tokens, or the class token (not for AR pretraining)")
    p.add_argument("--as-classifier", action="store_true",
                   help="pretraining checkpoint: probe the bidirectional classifier built from it (what fine-tuning "
                        "starts from) instead of the encoder as pretrained")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model fields for random: models and --as-classifier (embed_dim=96 depth=6 patch_size=4 ...)")
    p.add_argument("--img-size", type=image_size, default=None, metavar="S", help="probe at this resolution")
    p.add_argument("--train-limit", type=positive_int, default=None, help="use a random subset of N training images")
    p.add_argument("--val-limit", type=positive_int, default=None, help="use a random subset of N validation images")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    p.add_argument("--workers", type=non_negative_int, default=0, help="data-loading worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the subsets and the linear probe")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects in a .pth you trust")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_probe)


def _probe(args) -> int:
    import torch

    from .probe import load_feature_model, run_probe

    if args.data is None and args.dataset is None:
        raise ValueError("pass --data DIR (an image folder) or --dataset NAME")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    feature_model = load_feature_model(args.checkpoint, pool=args.pool, as_classifier=args.as_classifier,
                                       overrides=_parse_overrides(args.override),
                                       trust_pickle=args.trust_checkpoint)
    log = (lambda message: print(message, file=sys.stderr, flush=True))
    result = run_probe(feature_model, dataset=args.dataset, data=args.data, method=args.method, k=args.k,
                       temperature=args.temperature, vote=args.vote, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, workers=args.workers, train_limit=args.train_limit,
                       val_limit=args.val_limit, img_size=args.img_size, device=device, seed=args.seed, log=log)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    what = (f"k-NN (k={result['k']}, {result['vote']} vote, T={result['temperature']:g})" if args.method == "knn"
            else f"linear probe ({result['epochs']} epochs)")
    print(f"{result['model']} on {result['dataset']}: {what} top-1 {result['top1']:.2f}% "
          f"({result['train_count']:,} train / {result['val_count']:,} val images, {result['feature_dim']}-d features)")
    return 0
