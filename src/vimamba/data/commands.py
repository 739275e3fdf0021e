"""Data subcommands: ``vimamba data fashion-mnist``, ``vimamba data cifar10``, ``vimamba data check DIR``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="get the demo datasets, or check an image folder")
    sub = p.add_subparsers(dest="data_command", metavar="WHAT", required=True)

    q = sub.add_parser("fashion-mnist", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="find Fashion-MNIST or fetch it (apt-get as root, else the official download)")
    q.add_argument("--root", default=None,
                   help="directory to look in / download to (default: ~/.cache/vimamba/fashion-mnist, then "
                        "/usr/share/datasets/fashion-mnist)")
    q.add_argument("--no-download", action="store_true", help="only look; fail with instructions if absent")
    q.add_argument("--samples", default=None, metavar="DIR",
                   help="also write the first --num test images as PNG files into DIR (for `vimamba predict`)")
    q.add_argument("--num", type=positive_int, default=8, help="how many sample images --samples writes")
    q.set_defaults(func=_fashion_mnist)

    q = sub.add_parser("cifar10", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="download CIFAR-10 with torchvision (needs network)")
    q.add_argument("--root", default=None, help="download directory (default: ~/.cache/vimamba/cifar10)")
    q.set_defaults(func=_cifar10)

    q = sub.add_parser("check", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="open every image of an image folder and list the unreadable ones")
    q.add_argument("directory", help="an image folder (DIR/<class>/*) or a dataset root (DIR/train, DIR/val)")
    q.set_defaults(func=_check)


def _fashion_mnist(args) -> int:
    from .datasets import FASHION_MNIST_CLASSES
    from .fashion_mnist import FashionMNIST, ensure_fashion_mnist

    root = ensure_fashion_mnist(args.root, download=not args.no_download)
    train, test = FashionMNIST(root, "train"), FashionMNIST(root, "test")
    print(f"Fashion-MNIST ready in {root}: {len(train):,} training and {len(test):,} test images, 28x28 grayscale, "
          f"classes: {', '.join(FASHION_MNIST_CLASSES)}")
    if args.samples:
        out = Path(args.samples)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(min(args.num, len(test))):
            img, label = test[i]
            name = FASHION_MNIST_CLASSES[label].replace("/", "-").replace(" ", "-").lower()
            img.save(out / f"test{i:05d}_{name}.png")
        print(f"wrote {min(args.num, len(test))} test images to {out}/ (true class in the file name)")
    return 0


def _cifar10(args) -> int:
    from .datasets import open_split, resolve_dataset

    spec = resolve_dataset("cifar10", args.root)
    print(f"CIFAR-10 ready in {spec.root}: {len(open_split(spec, 'train')):,} training and "
          f"{len(open_split(spec, 'val')):,} test images")
    return 0


def _check(args) -> int:
    from .images import IMG_EXTENSIONS, load_image

    root = Path(args.directory)
    if not root.is_dir():
        print(f"vimamba data check: error: not a directory: '{root}'", file=sys.stderr)
        return 1
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    bad = []
    for path in files:
        try:
            load_image(path)
        except Exception as e:  # report everything PIL can throw at a broken file
            bad.append(path)
            print(f"unreadable: {path}: {e}")
    print(f"checked {len(files):,} image files under {root}: {len(bad)} unreadable")
    return 1 if bad else 0
