"""The engine's settings (:class:`EngineConfig`) and the one generator of command-line flags from config dataclasses.

Every training subcommand (``vimamba train``, ``segment train``, ``detect train``, ``pretrain``) builds its parser
as ``EngineConfig`` + its task's config: each dataclass field declared with :func:`option` is one flag, with its help,
group, choices and the :mod:`vimamba.cli_args` type that parses and validates it. The command line, the
configuration saved in checkpoints and the Python API therefore cannot drift apart:

* :func:`add_config_flags` adds the flags of some config classes to a parser (defaults shown in the help; a
  command's own defaults, e.g. the segmentation recipe, are passed as ``defaults``);
* :func:`explicit_values` returns the flags actually given (the parser's defaults are ``SUPPRESS``, so recipes and
  a resumed run's saved configuration can sit between the field defaults and the command line);
* :func:`build_configs` turns one flat dict of values into one instance per config class, each value checked;
* :func:`command_config` is the whole path for the commands that are not training runs (``eval``, ``predict``,
  ``export``, ...): parsed arguments -> one config instance, checked.

Beyond flags, a field can be a positional argument (``positional=True``, e.g. the image list of ``predict``) or a
flag that may also be given positionally (``also_positional=True``: ``segment eval CKPT`` keeps working next to
``segment eval --checkpoint CKPT``).
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type

from ..cli_args import (non_negative_float, non_negative_int, positive_float, positive_int, probability,
                        unit_interval_open)
from ..errors import InputError

__all__ = ["EngineConfig", "option", "ConfigMixin", "add_config_flags", "explicit_values", "build_configs",
           "command_config", "field_defaults", "PRECISION_CHOICES", "SCHEDULES"]

PRECISION_CHOICES = ("off", "bf16", "fp16")
SCHEDULES = ("cosine", "poly", "multistep", "step", "tanh", "const")


def option(default: Any, help: str, group: str, *, flag: Optional[str] = None, aliases: Sequence[str] = (),
           choices: Optional[Sequence[Any]] = None, metavar: Any = None,
           check: Optional[Callable[[Any], Any]] = None, required: bool = False, nargs: Any = None,
           positional: bool = False, also_positional: bool = False):
    """A dataclass field that is also a flag: ``help``, ``group`` (the help section), ``flag`` (default:
    ``--field-name``), ``aliases`` (older spellings still accepted), ``choices``, ``metavar``, and ``check``, the
    :mod:`vimamba.cli_args` type that parses and validates the value (for tuple fields, each element's).

    ``required``: the command needs a value; ``nargs``: instead of the one the field's type implies (``"+"`` for a
    list that cannot be empty); ``positional``: an argument without a flag (at most one per command, last);
    ``also_positional``: the flag's value may instead be given as a leading positional argument (the older
    spelling of a command), resolved by :func:`command_config`."""
    return field(default=default, metadata=dict(help=help, group=group, flag=flag, aliases=tuple(aliases),
                                                choices=choices, metavar=metavar, check=check, required=required,
                                                nargs=nargs, positional=positional,
                                                also_positional=also_positional))


class ConfigMixin:
    """``to_dict()`` as plain data (tuples become lists) for checkpoints and ``config.json``."""

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore


@dataclass
class EngineConfig(ConfigMixin):
    """How a run trains, whatever the task: length, optimiser, schedule, precision, EMA, intervals, output."""

    # ------------------------------------------------------------------------------------------ length and batch
    epochs: int = option(300, "training epochs (ignored when --steps is given)", "schedule", check=positive_int)
    steps: Optional[int] = option(None, "optimizer steps to train for (default: --epochs x steps per epoch)",
                                  "schedule", aliases=("--iterations",), check=positive_int)
    batch_size: int = option(64, "samples per process per micro-batch (global batch = this x processes x "
                             "--accum-steps)", "schedule", metavar="B", check=positive_int)
    accum_steps: int = option(1, "gradient accumulation: micro-batches per optimizer step", "schedule",
                              check=positive_int)
    # ------------------------------------------------------------------------------------------ learning rate
    lr: float = option(5e-4, "peak learning rate per 512 samples (scaled by global batch / 512 unless "
                       "--unscale-lr)", "schedule", metavar="LR", check=positive_float)
    unscale_lr: bool = option(False, "use --lr as given, without the global-batch scaling", "schedule")
    sched: str = option("cosine", "learning-rate schedule (stepped every optimizer step)", "schedule",
                        aliases=("--schedule",), choices=SCHEDULES)
    min_lr: float = option(1e-5, "final learning rate of the cosine / poly schedule (not scaled)", "schedule",
                           check=non_negative_float)
    warmup_lr: float = option(1e-6, "learning rate at the start of the warmup (not scaled)", "schedule",
                              check=non_negative_float)
    warmup_epochs: float = option(5.0, "linear warmup length in epochs (ignored when --warmup-steps is given)",
                                  "schedule", check=non_negative_float)
    warmup_steps: Optional[int] = option(None, "linear warmup length in optimizer steps", "schedule",
                                         aliases=("--warmup-iters",), check=non_negative_int)
    milestones: Tuple[int, ...] = option((), "multistep / step schedules: optimizer steps at which the LR is "
                                         "multiplied by --decay-rate", "schedule", check=positive_int)
    decay_rate: float = option(0.1, "multistep / step schedules: LR factor at each milestone", "schedule",
                               check=positive_float)
    poly_power: float = option(1.0, "poly schedule: the exponent", "schedule", check=positive_float)
    # ------------------------------------------------------------------------------------------ optimizer
    opt: str = option("adamw", "optimizer (timm name: adamw, sgd, lamb, lion, ...)", "optimizer")
    opt_eps: float = option(1e-8, "optimizer epsilon", "optimizer", check=positive_float)
    opt_betas: Optional[Tuple[float, float]] = option(None, "optimizer betas (default: the optimizer's, 0.9 "
                                                      "0.999)", "optimizer", aliases=("--betas",), check=probability)
    momentum: float = option(0.9, "SGD momentum", "optimizer", check=probability)
    weight_decay: float = option(0.05, "weight decay (never on 1-D parameters, biases, pos_embed, cls_token)",
                                 "optimizer", check=non_negative_float)
    decay_ssm: bool = option(True, "weight decay on the 2-D SSM matrices A_log/A_b_log, as the official recipes "
                             "do; --no-decay-ssm exempts them too", "optimizer")
    layer_decay: Optional[float] = option(None, "layer-wise learning-rate decay factor, e.g. 0.75 for fine-tuning "
                                          "(default: off; 1 is off too)", "optimizer", check=unit_interval_open)
    clip_grad: Optional[float] = option(None, "clip the global gradient norm to this (default: off)", "optimizer",
                                        check=positive_float)
    # ------------------------------------------------------------------------------------------ EMA, precision
    model_ema: bool = option(False, "keep an exponential moving average of the weights (evaluated next to them; "
                             "its metrics are prefixed ema_)", "ema")
    model_ema_decay: float = option(0.99996, "EMA decay per optimizer step", "ema", check=probability)
    model_ema_warmup: bool = option(False, "ramp the EMA decay up over the first steps (for short runs)", "ema")
    amp: str = option("off", "mixed precision: bf16 (autocast, SSM state in float32), fp16 (with loss scaling), or "
                      "off (float32, the official setting)", "precision", choices=PRECISION_CHOICES)
    max_bad_steps: int = option(20, "stop after this many optimizer steps in a row with a NaN/inf loss or gradient "
                                "(each is skipped)", "precision", check=positive_int)
    grad_checkpointing: bool = option(False, "recompute block activations in backward (less memory, ~30% slower)",
                                      "precision")
    # ------------------------------------------------------------------------------------------ run
    output: Optional[str] = option(None, "run folder: last.pth, best.pth, metrics.jsonl, curves.png, summary.json "
                                   "(with --resume: the checkpoint's folder)", "run", metavar="DIR")
    resume: Optional[str] = option(None, "continue the run saved in this last.pth (same schedule, data order and "
                                   "random numbers); its configuration is reused, flags given here override it",
                                   "run", metavar="CKPT")
    overwrite: bool = option(False, "start a new run in an output folder that already holds one (its checkpoints "
                             "are replaced)", "run")
    eval_interval: Optional[int] = option(None, "evaluate every N optimizer steps (default: after every epoch), "
                                          "and always after the last", "run", check=positive_int)
    save_interval: Optional[int] = option(None, "write last.pth every N optimizer steps (default: after every "
                                          "epoch), and at every evaluation and the end", "run",
                                          aliases=("--checkpoint-interval",), check=positive_int)
    log_interval: Optional[int] = option(None, "append the training loss to metrics.jsonl every N optimizer steps "
                                         "(default: about 25 times per epoch)", "run", check=positive_int)
    best_metric: Optional[str] = option(None, "the evaluation metric that selects best.pth (default: the task's; "
                                        "ema_<metric> selects by the EMA weights)", "run", metavar="NAME")
    workers: int = option(4, "data-loading worker processes per training process (0: load in the main process)",
                          "run", check=non_negative_int)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps (under torchrun: one GPU per process)", "run")
    compile: str = option("auto", "train the model compiled with torch.compile: on, off, or auto (on CUDA only); a "
                          "failure to compile falls back to eager with a warning", "run",
                          choices=("auto", "on", "off"))
    seed: int = option(0, "random seed", "run", check=non_negative_int)

    def check(self) -> None:
        """Relations between fields that no single flag's check covers (raises ValueError)."""
        if self.resume is None and self.output is None:
            raise InputError("pass --output DIR: the folder for the run's checkpoints and logs")
        if self.steps is None and self.epochs < 1:
            raise InputError(f"--epochs must be >= 1, got {self.epochs}")


# ---------------------------------------------------------------------------------------------------- flags
_GROUP_TITLES = {"schedule": "schedule and batch", "optimizer": "optimizer", "ema": "weight EMA",
                 "precision": "precision and memory", "run": "run"}


def _field_kind(cls: type, f) -> Tuple[Any, Any, bool]:
    """(element type, nargs, is_bool) of a config field, from its resolved annotation."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    if hint is bool:
        return bool, None, True
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis:
            return items[0], "*", False
        return items[0], len(items), False
    if hint in (int, float, str):
        return hint, None, False
    raise TypeError(f"{cls.__name__}.{f.name}: no flag for fields of type {hint}")


def show_value(value: Any) -> str:
    """A value as the help text shows it."""
    if isinstance(value, (tuple, list)):
        return " ".join(show_value(v) for v in value) if value else "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, classes: Sequence[type], *,
                     defaults: Optional[Mapping[str, Any]] = None, notes: Optional[Mapping[str, str]] = None,
                     group_titles: Optional[Mapping[str, str]] = None, skip: Sequence[str] = ()) -> None:
    """One flag per :func:`option` field of ``classes`` (in order, grouped by their ``group``).

    ``defaults`` are the command's own defaults (shown in the help instead of the field's); ``notes`` add a line to a
    field's help (e.g. the recipes' values); ``skip`` names fields the command sets itself. Every flag's default is
    ``argparse.SUPPRESS``: :func:`explicit_values` then returns exactly what was typed.
    """
    titles = {**_GROUP_TITLES, **(group_titles or {})}
    defaults, notes = dict(defaults or {}), dict(notes or {})
    groups: Dict[str, Any] = {}
    chosen = [(cls, f) for cls in classes for f in fields(cls) if "group" in f.metadata and f.name not in skip]
    if not any(f.metadata.get("positional") for _, f in chosen):
        # no positional list to carry them: each field that may be given positionally gets an optional positional
        for _, f in chosen:
            if f.metadata.get("also_positional"):
                parser.add_argument(_POSITIONAL + f.name, nargs="?", default=argparse.SUPPRESS,
                                    metavar=f.name.upper(), help=f"the same as {flag_of(f)} (the older spelling)")
    for cls, f in chosen:
        meta = f.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(titles.get(meta["group"], meta["group"]))
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        extra = []
        if meta.get("required"):
            extra.append("required")
        elif "default:" not in meta["help"] and not meta.get("positional"):
            extra.append(f"default: {show_value(default)}")
        if f.name in notes:
            extra.append(notes[f.name])
        help_text = meta["help"] + (f" ({'; '.join(extra)})" if extra else "")
        kwargs: Dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        kind, nargs, is_bool = _field_kind(cls, f)
        if meta.get("positional"):
            names = [f.name]
        else:
            names = [flag_of(f), *meta.get("aliases", ())]
            kwargs["dest"] = f.name
            if meta.get("required") and not meta.get("also_positional"):
                kwargs["required"] = True
        if is_bool:
            groups[meta["group"]].add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["type"] = meta.get("check") or kind
        nargs = meta.get("nargs") or nargs
        if nargs:
            kwargs["nargs"] = nargs
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        groups[meta["group"]].add_argument(*names, **kwargs)


_POSITIONAL = "positional_"  # the dest prefix of the positional spelling of an ``also_positional`` flag


def explicit_values(args: argparse.Namespace, classes: Sequence[type]) -> Dict[str, Any]:
    """The config values given on the command line (fields of ``classes`` present in ``args``)."""
    names = {f.name for cls in classes for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def field_defaults(*classes: type) -> Dict[str, Any]:
    """Every field's default, of all ``classes`` (later classes win on a shared name)."""
    out: Dict[str, Any] = {}
    for cls in classes:
        for f in fields(cls):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def build_configs(values: Mapping[str, Any], classes: Sequence[Type], *, unknown: str = "error") -> Tuple[Any, ...]:
    """One instance of each class in ``classes`` from one flat dict; missing fields take their defaults.

    Each value passes its field's ``check`` (an invalid value is a ``ValueError`` naming the flag); list values of
    tuple fields become tuples. Keys that belong to no class are an error unless ``unknown="ignore"``.
    """
    owned = {f.name for cls in classes for f in fields(cls)}
    stray = sorted(set(values) - owned)
    if stray and unknown == "error":
        raise InputError(f"unknown training options {stray}")
    out = []
    for cls in classes:
        kwargs = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            if isinstance(value, list):
                value = tuple(value)
            _check_value(f, value)
            kwargs[f.name] = value
        out.append(cls(**kwargs))
    return tuple(out)


def command_config(args: argparse.Namespace, cls: Type) -> Any:
    """The ``cls`` instance of a command's parsed ``args``: fields given positionally resolved, required ones
    present, every value checked, then the instance's own ``check()`` (relations between fields), if it has one.

    A field with ``also_positional`` not given as its flag takes the first positional value: of its own optional
    positional argument, or else the front of the command's positional list (``segment predict CKPT IMAGE...``).
    Giving it both ways, or not at all, is a one-line :class:`InputError`.
    """
    values = explicit_values(args, [cls])
    spelled = [f for f in fields(cls) if f.metadata.get("also_positional")]
    listed = next((f for f in fields(cls) if f.metadata.get("positional")), None)
    if listed is not None and spelled:
        given = list(values.get(listed.name, ()))
        for f in spelled:
            if f.name not in values and given:
                values[f.name] = given.pop(0)
        if not given:  # what argparse counted was the leading argument(s) only
            raise InputError(f"pass at least one {listed.metadata.get('metavar') or listed.name.upper()}")
        values[listed.name] = tuple(given)
    else:  # the positional values, in order, fill the fields not given as flags
        given = [getattr(args, _POSITIONAL + f.name) for f in spelled if hasattr(args, _POSITIONAL + f.name)]
        open_fields = [f for f in spelled if f.name not in values]
        if len(given) > len(open_fields):
            flags = " and ".join(flag_of(f) for f in spelled if f.name in values)
            raise InputError(f"{flags} given twice: as a flag and as the argument(s) {' '.join(given)}; keep one")
        values.update((f.name, value) for f, value in zip(open_fields, given))
    for f in fields(cls):
        if f.metadata.get("required") and not values.get(f.name):
            what = f.metadata.get("metavar") or f.name.upper()
            raise InputError(f"pass at least one {what}" if f.metadata.get("positional")
                             else f"pass {flag_of(f)} {what}")
    config = build_configs(values, [cls])[0]
    if hasattr(config, "check"):
        config.check()
    return config


def _check_value(f, value: Any) -> None:
    check = f.metadata.get("check")
    if check is None or value is None:
        return
    for item in value if isinstance(value, tuple) else (value,):
        try:
            check(item)
        except argparse.ArgumentTypeError as e:
            raise InputError(f"{flag_of(f)} {e}") from None
