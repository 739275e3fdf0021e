"""Settings dataclasses to and from the plain dicts that checkpoints store, strict about unknown fields."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Mapping
from ..errors import InputError

__all__ = ["ConfigDict"]


class ConfigDict:
    """Mixin for dataclasses: ``to_dict()`` (nested dataclasses become dicts) and ``from_dict()``."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown {cls.__name__} settings {unknown}; known: {sorted(known)}")
        return cls(**d)
