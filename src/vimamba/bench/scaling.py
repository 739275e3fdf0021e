"""How time and memory grow with the number of tokens L: the exponent k of cost ~ L^k, fitted on log-log axes.

For each model, over its successful measurements, ordinary least squares of ``log(cost)`` on ``log(L)`` gives k
(1 = linear, 2 = quadratic). Two fits per model:

- time: the median latency of a batch;
- memory: the *working* memory, peak minus the baseline held before the first forward (weights, the input, and
  on CPU the interpreter). The baseline is a constant offset that would pull a fit of the total towards 0.

Fixed per-image costs (kernel launches, the head, Python) make small resolutions cheaper than the asymptote, so
the exponent between the two largest resolutions is reported too: it is the better guide to what happens next.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError
from .measure import Measurement

__all__ = ["ScalingFit", "fit_exponent", "scaling_report", "format_scaling"]


@dataclass
class ScalingFit:
    label: str
    quantity: str  # "time" | "memory"
    exponent: Optional[float]  # least-squares slope over all points used
    last_exponent: Optional[float]  # slope over the points at the two largest token counts
    resolutions: List[int]  # the points used
    tokens: List[int]
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def fit_exponent(tokens: Sequence[float], costs: Sequence[float]) -> float:
    """Least-squares slope of log(cost) against log(tokens): the k of cost ~ tokens^k."""
    if len(tokens) != len(costs) or len(set(tokens)) < 2:
        raise InputError("fitting an exponent needs (tokens, cost) points at two or more token counts")
    slope, _intercept = np.polyfit(np.log(np.asarray(tokens, dtype=np.float64)),
                                   np.log(np.asarray(costs, dtype=np.float64)), deg=1)
    return float(slope)


def _fit(label: str, quantity: str, points: List[tuple]) -> ScalingFit:
    points = sorted(points)  # (tokens, resolution, cost)
    tokens = [p[0] for p in points]
    resolutions = [p[1] for p in points]
    if len(set(tokens)) < 2:
        return ScalingFit(label, quantity, None, None, resolutions, tokens,
                          note="needs successful measurements at two or more token counts")
    largest_two = sorted(set(tokens))[-2:]
    last = [p for p in points if p[0] in largest_two]
    return ScalingFit(label, quantity, fit_exponent(tokens, [p[2] for p in points]),
                      fit_exponent([p[0] for p in last], [p[2] for p in last]), resolutions, tokens)


def scaling_report(measurements: Sequence[Measurement]) -> List[ScalingFit]:
    """Time and memory exponents for every model label, over its "ok" measurements with a known token count."""
    by_label: Dict[str, List[Measurement]] = {}
    for m in measurements:
        by_label.setdefault(m.label, []).append(m)
    fits = []
    for label, rows in by_label.items():
        ok = [m for m in rows if m.status == "ok" and m.tokens]
        fits.append(_fit(label, "time", [(m.tokens, m.resolution, m.latency_ms_median) for m in ok]))
        fits.append(_fit(label, "memory", [(m.tokens, m.resolution, m.working_memory_bytes) for m in ok
                                           if m.working_memory_bytes]))
    return fits


def format_scaling(fits: Sequence[ScalingFit]) -> str:
    lines = ["Scaling with the number of tokens L (cost ~ L^k; 1 = linear, 2 = quadratic):",
             f"  {'model':<48} {'quantity':<15} {'k (all points)':>14} {'k (last two)':>12}  points used"]
    for fit in fits:
        quantity = "time" if fit.quantity == "time" else "working memory"
        if fit.exponent is None:
            lines.append(f"  {fit.label:<48} {quantity:<15} {'-':>14} {'-':>12}  {fit.note}")
            continue
        points = ", ".join(f"{r}px/L={t}" for r, t in zip(fit.resolutions, fit.tokens))
        lines.append(f"  {fit.label:<48} {quantity:<15} {fit.exponent:>14.2f} {fit.last_exponent:>12.2f}  {points}")
    return "\n".join(lines)
