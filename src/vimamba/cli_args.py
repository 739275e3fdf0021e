"""Argument types for every numeric flag of the ``vimamba`` command line: a bad value is refused where it is parsed.

Each type is a function from the flag's text to its value, raising :class:`argparse.ArgumentTypeError` with a
message that says what is allowed, so argparse prints one line (``vimamba eval: error: argument --img-size: must
be a positive integer, got -3``) instead of a traceback from deep inside a run. The same functions check values
that come from Python (``TrainConfig`` fields): they accept numbers as well as text.

=======================  ==========================================================
``positive_int``         1, 2, ...  (sizes, counts, epochs, batch sizes)
``non_negative_int``     0, 1, ...  (workers, seeds, warmup steps)
``positive_float``       > 0, finite (learning rates, epsilons, time limits)
``non_negative_float``   >= 0, finite (weight decay, alphas, smoothing)
``probability``          0 <= p <= 1 (probabilities, fractions, dropout rates)
``unit_interval_open``   0 < x <= 1 (crop fractions, area scales, decay factors)
``image_size``           a positive integer no smaller than ``IMAGE_SIZE_MIN`` (one pixel); models check it
                         against their patch size where that is known
=======================  ==========================================================

:func:`parse_settings` reads the ``KEY=VALUE`` lists of flags such as ``--override`` and ``--model-args``.
"""
from __future__ import annotations

import argparse
import ast
import math
from typing import Any, Callable, Dict, Optional, Sequence

from .errors import InputError

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float", "probability",
           "unit_interval_open", "image_size", "at_least", "check_image_size", "IMAGE_SIZE_MIN",
           "parse_settings"]

IMAGE_SIZE_MIN = 1


def _number(value: Any, kind: type, what: str) -> Any:
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}") from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be {what} (finite), got {value!r}")
    return number


def _checked(kind: type, what: str, ok: Callable[[Any], bool], name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        number = _number(value, kind, what)
        if not ok(number):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return number

    check.__name__ = check.__qualname__ = name
    check.__doc__ = f"``{name}``: {what}."
    return check


positive_int = _checked(int, "a positive integer", lambda v: v >= 1, "positive_int")
non_negative_int = _checked(int, "an integer >= 0", lambda v: v >= 0, "non_negative_int")
positive_float = _checked(float, "a number > 0", lambda v: v > 0, "positive_float")
non_negative_float = _checked(float, "a number >= 0", lambda v: v >= 0, "non_negative_float")
probability = _checked(float, "a number between 0 and 1", lambda v: 0 <= v <= 1, "probability")
unit_interval_open = _checked(float, "a number in (0, 1]", lambda v: 0 < v <= 1, "unit_interval_open")
image_size = _checked(int, f"an image size in pixels (an integer >= {IMAGE_SIZE_MIN})",
                      lambda v: v >= IMAGE_SIZE_MIN, "image_size")


def at_least(minimum: float, kind: type = float) -> Callable[[Any], Any]:
    """A type for numbers ``>= minimum`` (``kind`` int or float)."""
    what = f"{'an integer' if kind is int else 'a number'} >= {minimum:g}"
    return _checked(kind, what, lambda v: v >= minimum, f"at_least_{minimum:g}")


def check_image_size(size: int, patch_size: int, flag: str = "--img-size") -> None:
    """Refuse an input smaller than one patch (it would have no tokens), with the flag's name."""
    if size < patch_size:
        raise InputError(f"{flag} {size} is smaller than the patch size {patch_size}: the image would have no "
                         "patches")


def parse_settings(items: Optional[Sequence[str]], flag: str) -> Dict[str, Any]:
    """``["embed_dim=32", "global-pool=avg", "img_size=[512, 256]"]`` -> ``{"embed_dim": 32, "global_pool": "avg",
    "img_size": [512, 256]}``: values are Python literals (JSON's true/false/null too), anything else a string;
    dashes in keys become underscores. ``flag`` names the option in the error for a malformed item."""
    settings: Dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise InputError(f"{flag} takes KEY=VALUE settings (e.g. embed_dim=96), got {item!r}")
        text = text.strip()
        try:
            settings[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            settings[key] = _JSON_WORDS.get(text, text)
    return settings


_JSON_WORDS = {"true": True, "false": False, "null": None}

