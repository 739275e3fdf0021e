"""The configuration of a classification run, and the recipes that set it per model variant.

A run is configured by two dataclasses: :class:`~vimamba.engine.config.EngineConfig` (how to train: schedule,
optimizer, EMA, precision, output, ...) and :class:`ClassificationConfig` (what to train: data, model, augmentation,
loss). Every field of both is a ``vimamba train`` flag (:func:`vimamba.engine.config.add_config_flags`). A value is
decided, last one wins, by:

1. the field default (the DeiT / Vim ``main.py`` defaults, the ImageNet recipe) and :data:`ENGINE_DEFAULTS`,
2. the recipe (``--recipe``; ``auto`` picks it from the model name, see :data:`RECIPES`),
3. the flags given on the command line (and, when resuming, the configuration saved in the checkpoint comes
   before the flags).

Learning rates are per 512 images and scaled by the global batch unless ``--unscale-lr``: the official recipe.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, NamedTuple, Optional, Tuple

from ..cli_args import image_size, non_negative_float, positive_float, positive_int, probability, unit_interval_open
from ..engine.config import ConfigMixin, EngineConfig, build_configs, field_defaults
from ..engine.config import option as _f
from ..errors import InputError

__all__ = ["ClassificationConfig", "TrainConfig", "RECIPES", "RECIPE_NOTES", "ENGINE_DEFAULTS", "pick_recipe",
           "resolve_config", "ARCH_FIELDS"]


@dataclass
class ClassificationConfig(ConfigMixin):
    """What a classification run trains: the data, the model and its initial weights, augmentation and loss."""

    # --------------------------------------------------------------------------------------------- data
    data: Optional[str] = _f(None, "image folder with train/<class>/* and val/<class>/* (ImageNet layout); with "
                             "--dataset, where that dataset lives", "data", metavar="DIR")
    dataset: Optional[str] = _f(None, "a named dataset instead of a folder (fashion-mnist and cifar10 are fetched "
                                "when missing); with neither --data nor --dataset: the Fashion-MNIST demo", "data",
                                choices=("fashion-mnist", "cifar10", "imagenet"))
    strict_data: bool = _f(False, "stop on an unreadable image instead of skipping it (skipped files are named and "
                           "counted)", "data")
    # --------------------------------------------------------------------------------------------- model
    model: str = _f("vim_tiny_patch16_224", "a vimamba model (`vimamba models`) or a timm model name such as "
                    "deit_tiny_patch16_224 (the size flags below apply to both)", "model", metavar="NAME")
    img_size: Optional[int] = _f(None, "input resolution (default: the dataset's native size: 224 for folders/"
                                 "ImageNet, 28 Fashion-MNIST, 32 CIFAR-10)", "model", metavar="S", check=image_size)
    patch_size: Optional[int] = _f(None, "patch size (default: the model's, 16)", "model", check=positive_int)
    stride: Optional[int] = _f(None, "patch stride, Vim only (default: the model's; 8 for the '+' long-sequence "
                               "models)", "model", check=positive_int)
    embed_dim: Optional[int] = _f(None, "embedding width (default: the model's)", "model", check=positive_int)
    depth: Optional[int] = _f(None, "number of blocks (default: the model's)", "model", check=positive_int)
    d_state: Optional[int] = _f(None, "SSM state size N, Vim only (default: the model's, 16)", "model",
                                check=positive_int)
    num_heads: Optional[int] = _f(None, "attention heads, timm ViT/DeiT only (default: the model's)", "model",
                                  check=positive_int)
    drop_path: float = _f(0.1, "stochastic depth rate", "model", check=probability)
    drop: float = _f(0.0, "dropout rate (Vim: after the position embedding)", "model", check=probability)
    finetune: Optional[str] = _f(None, "start from these weights (a new run: fresh optimizer and schedule; another "
                                 "class count gets a new head; position embeddings are resized, e.g. stride 16 -> 8)",
                                 "model", metavar="CKPT")
    init: Optional[str] = _f(None, "start a bidirectional Vim from the encoder of this pretraining checkpoint "
                             "(vimamba pretrain): a new head, position embeddings resized; size flags not given are "
                             "taken from the encoder", "model", metavar="PRETRAIN_CKPT")
    # --------------------------------------------------------------------------------------------- augmentation
    aa: Optional[str] = _f("rand-m9-mstd0.5-inc1", "RandAugment policy (timm syntax); 'none' turns it off",
                           "augmentation")
    color_jitter: float = _f(0.3, "colour jitter strength (only when --aa is off)", "augmentation",
                             check=non_negative_float)
    scale: Tuple[float, float] = _f((0.08, 1.0), "random-resized-crop area range", "augmentation",
                                    check=unit_interval_open)
    ratio: Tuple[float, float] = _f((3 / 4, 4 / 3), "random-resized-crop aspect-ratio range", "augmentation",
                                    check=positive_float)
    hflip: float = _f(0.5, "horizontal flip probability", "augmentation", check=probability)
    train_interpolation: str = _f("bicubic", "resize interpolation for training crops", "augmentation",
                                  choices=("bicubic", "bilinear", "nearest", "random"))
    reprob: float = _f(0.25, "random erasing probability", "augmentation", check=probability)
    remode: str = _f("pixel", "random erasing fill", "augmentation", choices=("pixel", "rand", "const"))
    recount: int = _f(1, "random erasing count", "augmentation", check=positive_int)
    repeated_aug: bool = _f(True, "repeated augmentation (3 augmented copies of each image per epoch across "
                            "processes; distributed runs only)", "augmentation")
    smoothing: float = _f(0.1, "label smoothing", "augmentation", check=probability)
    mixup: float = _f(0.8, "mixup alpha (0: off)", "augmentation", check=non_negative_float)
    cutmix: float = _f(1.0, "cutmix alpha (0: off)", "augmentation", check=non_negative_float)
    mixup_prob: float = _f(1.0, "probability of mixing a batch", "augmentation", check=probability)
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup when both are on", "augmentation",
                                  check=probability)
    mixup_mode: str = _f("batch", "mixup granularity", "augmentation", choices=("batch", "pair", "elem"))
    # --------------------------------------------------------------------------------------------- run
    export: bool = _f(True, "at the end, export the best weights as model.safetensors with class names (Vim "
                      "models)", "run")
    recipe: str = _f("auto", "named set of defaults (see the list below); auto picks it from the model and data",
                     "run")



class TrainConfig(NamedTuple):
    """A classification run's whole configuration: how it trains and what it trains."""

    engine: EngineConfig
    task: ClassificationConfig

    def to_dict(self) -> Dict[str, Any]:
        return {**self.task.to_dict(), **self.engine.to_dict()}


# The engine settings of a classification run that differ from the engine's own defaults.
ENGINE_DEFAULTS: Dict[str, Any] = dict(output="runs/train", model_ema=True)

# Fields that define the network (they must match between a checkpoint and the model built to resume it).
ARCH_FIELDS = ("model", "img_size", "patch_size", "stride", "embed_dim", "depth", "d_state", "num_heads")
VIM_ONLY_FIELDS = ("stride", "d_state")

# The demo: a 0.44M-parameter Vim (7x7 patches on 28x28: 16 patches + class token; N = 8 states, 1.2x the images/s
# of N = 16) on Fashion-MNIST, 5 epochs on a CPU: 6-9 minutes on 2 idle cores (by host), 90.2%. A schedule this short
# underfits, so what fits fastest wins (docs/benchmarks.md, "Fashion-MNIST demo"): a high learning rate (2e-3 per 64
# images beat 1e-3, 5e-4 and 2.5e-4), no flips (flips and smoothing off: +0.3 points after 4 epochs), label
# smoothing 0.1 (re-checked on a second host: 90.17% with it, 89.86-89.97% without, where EMA, weight decay 0.01,
# a 6th epoch and N = 16 gave 89.9-90.0%), batches of 64 (32: no better, slower), no random-resized crops, and no
# data worker (the images are in memory; a worker process competes with the two compute threads: 12% slower).
_DEMO = dict(
    dataset="fashion-mnist", model="vim_tiny_patch16_224", patch_size=7, stride=7, embed_dim=96, depth=6, d_state=8,
    epochs=5, batch_size=64, lr=1.6e-2, warmup_lr=1e-5, warmup_epochs=0.1, drop_path=0.0, aa=None, color_jitter=0.0,
    scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, smoothing=0.1, train_interpolation="bilinear", reprob=0.0,
    mixup=0.0, cutmix=0.0, model_ema=False, repeated_aug=False, workers=0,
    output="runs/fashion-mnist-demo",
)

RECIPES: Dict[str, Dict[str, Any]] = {
    # DeiT / Vim main.py defaults = the TrainConfig defaults
    "deit": {},
    # scripts/pt-vim-t.sh: 8 GPUs x 128, lr 5e-4 per 512 (-> 1e-3), wd 0.1, no drop path, fp32
    "vim_tiny": dict(batch_size=128, lr=5e-4, weight_decay=0.1, drop_path=0.0),
    # scripts/pt-vim-s.sh: 8 GPUs x 64, lr 1e-3 at 512, wd 0.05, drop path 0.05
    "vim_small": dict(batch_size=64, lr=1e-3, weight_decay=0.05, drop_path=0.05),
    # no official script: main.py defaults (unverified for Vim-B)
    "vim_base": dict(batch_size=64, lr=5e-4, weight_decay=0.05, drop_path=0.1),
    # scripts/ft-vim-{t,s}.sh: stride-8 long-sequence fine-tuning, 30 epochs at an effectively constant 1e-5
    "vim_ft_stride8": dict(epochs=30, batch_size=128, lr=5e-6, min_lr=1e-5, warmup_lr=1e-5, weight_decay=1e-8,
                           drop_path=0.0),
    "demo": _DEMO,
    # fine-tuning a self-supervised (vimamba.pretrain) encoder: MAE's FINETUNE.md / ARM's recipe, lr 5e-4 per 256
    # images = 1e-3 per 512; layer decay 0.65 (ARM-B, MAE ViT-B, depth 12) to 0.75 (ViT-L, ARM-L): 0.75 here, for
    # Vim's depth 24 (sweep 0.65-0.8)
    "ssl_finetune": dict(epochs=100, lr=1e-3, min_lr=1e-6, warmup_epochs=5.0, weight_decay=0.05, layer_decay=0.75,
                         drop_path=0.1, reprob=0.25, mixup=0.8, cutmix=1.0, smoothing=0.1, opt_betas=(0.9, 0.999)),
}
RECIPE_NOTES = {
    "deit": "DeiT/Vim main.py defaults",
    "vim_tiny": "official Vim-Ti pre-training (scripts/pt-vim-t.sh): 76.1 top-1 with 8x128 images per step",
    "vim_small": "official Vim-S pre-training (scripts/pt-vim-s.sh): 80.5 top-1 with 8x64 images per step",
    "vim_base": "Vim-B: no official script; main.py defaults (81.9 top-1 reported, recipe unpublished)",
    "vim_ft_stride8": "official '+' stride-8 fine-tuning (scripts/ft-vim-*.sh): 78.3 (Ti+) / 81.6 (S+) top-1",
    "demo": "Fashion-MNIST on CPU: a 0.44M-parameter Vim, 5 epochs, 6-9 minutes on 2 idle cores, ~90%",
    "ssl_finetune": "fine-tuning after self-supervised pretraining (MAE/ARM): layer-wise lr decay 0.75, 100 epochs",
}


def pick_recipe(model: str, *, finetune: bool, demo: bool, stride: Optional[int] = None,
                init: bool = False) -> str:
    """The recipe ``--recipe auto`` means for this model and run (``init``: starting from self-supervised
    pretraining, which MAE and ARM fine-tune with layer-wise lr decay)."""
    if demo:
        return "demo"
    if init:
        return "ssl_finetune"
    name = model.lower()
    stride8 = "stride8" in name or stride == 8
    if finetune and stride8 and name.startswith(("vim_tiny", "vim_small")):
        return "vim_ft_stride8"
    for prefix in ("vim_tiny", "vim_small", "vim_base"):
        if name.startswith(prefix):
            return prefix
    return "deit"


def resolve_config(explicit: Dict[str, Any], saved: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Build the run's configuration from the flags given (``explicit``) and, when resuming, the saved one (the
    flat ``config`` dict of the checkpoint)."""
    classes = (EngineConfig, ClassificationConfig)
    known = {f.name for cls in classes for f in fields(cls)}
    unknown = sorted(set(explicit) - known)
    if unknown:
        raise InputError(f"unknown training options {unknown}")
    if saved is not None:
        changed = [k for k in ARCH_FIELDS if k in explicit and explicit[k] != saved.get(k)]
        if changed:
            raise InputError(f"a resumed run keeps its architecture; {', '.join('--' + k.replace('_', '-') for k in changed)}"
                             " differ from the checkpoint's. Start a new run from its weights with --finetune instead")
        base = {k: v for k, v in saved.items() if k in known}
        return _make({**base, **explicit})
    if explicit.get("init"):
        sizes = encoder_sizes(explicit["init"])
        explicit = {**explicit, **{k: v for k, v in sizes.items() if explicit.get(k) is None}}
    demo = explicit.get("data") is None and explicit.get("dataset") is None
    recipe = explicit.get("recipe", "auto")
    if recipe == "auto":
        recipe = pick_recipe(explicit.get("model", "" if demo else ClassificationConfig.model), finetune=bool(
            explicit.get("finetune") or explicit.get("init")), demo=demo, stride=explicit.get("stride"),
            init=bool(explicit.get("init")))
    if recipe not in RECIPES:
        raise InputError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)} or auto")
    values = {**field_defaults(*classes), **ENGINE_DEFAULTS, **RECIPES[recipe], **explicit, "recipe": recipe}
    from .models import is_vim_model

    if not is_vim_model(values["model"]):  # a recipe's Vim-only sizes do not apply to a DeiT trained by it
        values.update({k: None for k in VIM_ONLY_FIELDS if k not in explicit})
    return _make(values)


def encoder_sizes(init: str) -> Dict[str, Any]:
    """The size settings of the encoder in the pretraining checkpoint ``init``: a run started with ``--init`` builds
    that network unless a flag says otherwise. Reading it here also refuses a wrong file before anything is
    written."""
    from ..pretrain.transfer import read_pretraining_checkpoint

    encoder = read_pretraining_checkpoint(init).encoder_config
    if encoder is None:
        return {}
    sizes = {k: getattr(encoder, k) for k in ("patch_size", "stride", "embed_dim", "depth", "d_state")}
    height, width = encoder.img_size
    if height == width:
        sizes["img_size"] = height
    return sizes


def _make(values: Dict[str, Any]) -> TrainConfig:
    if isinstance(values.get("aa"), str) and values["aa"].lower() in ("", "none", "off"):
        values["aa"] = None
    engine, task = build_configs(values, (EngineConfig, ClassificationConfig))
    cfg = TrainConfig(engine, task)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    """Relations between settings that no single flag's check covers."""
    run, task = cfg
    mixing = task.mixup > 0 or task.cutmix > 0
    checks = [
        (task.scale[0] <= task.scale[1], f"--scale MIN MAX needs MIN <= MAX, got {task.scale}"),
        (task.ratio[0] <= task.ratio[1], f"--ratio MIN MAX needs MIN <= MAX, got {task.ratio}"),
        (not mixing or run.batch_size >= 2, f"Mixup/CutMix mix pairs of images: --batch-size must be >= 2 (got "
         f"{run.batch_size}), or turn them off with --mixup 0 --cutmix 0"),
        (task.smoothing < 1, f"--smoothing must be < 1, got {task.smoothing}"),
        (0 <= task.drop_path < 1, f"--drop-path must be in [0, 1), got {task.drop_path}"),
        (not (run.resume and task.finetune), "--resume continues a run, --finetune starts a new one: give one"),
        (not (task.init and task.finetune), "--init (a pretraining checkpoint) and --finetune (classifier weights) "
         "both set the initial weights: give one"),
        (run.best_metric in (None, "top1", "ema_top1", "top5", "ema_top5"),
         f"--best-metric must be top1, ema_top1, top5 or ema_top5, got {run.best_metric!r}"),
        (not (run.best_metric or "").startswith("ema_") or run.model_ema, "--best-metric ema_... needs --model-ema"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    run.check()
