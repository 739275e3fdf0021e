"""The error raised for unusable dense-prediction data, and the way its messages list offending items."""
from __future__ import annotations

from typing import Sequence

__all__ = ["DatasetError", "list_examples"]


class DatasetError(ValueError):
    """A dataset that cannot be used as given: missing or unreadable files, malformed or inconsistent annotations."""


def list_examples(items: Sequence[object], limit: int = 5) -> str:
    """'a, b, c' or 'a, b, c, ... (12 in all)'."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
