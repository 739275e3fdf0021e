"""What a person watching a training run sees: progress bars, a metrics log, curves, and a final summary.

* :func:`progress` is a tqdm bar on rank 0 (silent elsewhere); :class:`ProgressStats` formats its loss / LR /
  throughput postfix. When stderr is not a terminal (a log file, a batch job) the bar refreshes rarely.
* :class:`MetricsLog` appends one JSON object per line (``metrics.jsonl``) and, on resume, drops the lines of
  epochs the checkpoint does not include, so the log always describes the run that the checkpoint continues.
* :func:`plot_curves` draws loss and metric curves side by side into a PNG (``curves.png``) next to the
  checkpoints; it is redrawn after every epoch, so an interrupted run still has its plot.
* :func:`format_summary` renders the final summary as aligned text (the run also writes it as ``summary.json``).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from tqdm.auto import tqdm

from ..io import atomic_write
from .distributed import is_main_process

__all__ = ["progress", "ProgressStats", "MetricsLog", "plot_curves", "format_summary", "write_json"]

PathLike = Union[str, os.PathLike]


def progress(iterable: Iterable, *, total: Optional[int] = None, desc: str = "", initial: int = 0,
             enabled: Optional[bool] = None, log_interval: float = 30.0):
    """A progress bar on rank 0 (silent elsewhere): tqdm on a terminal; in a log file (stderr not a terminal,
    e.g. a batch job) one plain line every ``log_interval`` seconds instead of carriage-return redraws."""
    enabled = is_main_process() if enabled is None else enabled
    if enabled and not sys.stderr.isatty():
        return _LogLines(iterable, total=total, desc=desc, initial=initial, interval=log_interval)
    return tqdm(iterable, total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=True,
                leave=False, mininterval=0.5, file=sys.stderr)


class _LogLines:
    """The part of tqdm's interface the trainer uses, printing ``desc: n/total, postfix, eta`` lines."""

    def __init__(self, iterable: Iterable, *, total: Optional[int], desc: str, initial: int, interval: float):
        self.iterable, self.total, self.desc, self.n, self.interval = iterable, total, desc, initial, interval
        self.postfix: Dict[str, str] = {}
        self.start = self.last = time.perf_counter()
        self.initial = initial

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        done = self.n - self.initial
        eta = ""
        if self.total and done > 0:
            remaining = (now - self.start) / done * (self.total - self.n)
            eta = f", eta {int(remaining // 60)}:{int(remaining % 60):02d}"
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total or '?'}{extra}{eta}", file=sys.stderr, flush=True)

    def set_postfix(self, ordered_dict: Optional[Mapping[str, str]] = None, refresh: bool = False, **values) -> None:
        self.postfix = {**(ordered_dict or {}), **values}

    def close(self) -> None:
        pass


class ProgressStats:
    """Running mean of the loss and throughput (samples/s) since :meth:`reset`, for a progress-bar postfix."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum = 0.0
        self.loss_count = 0
        self.samples = 0
        self.start = time.perf_counter()

    def update(self, loss: float, samples: int) -> None:
        if math.isfinite(loss):
            self.loss_sum += loss * samples
            self.loss_count += samples
        self.samples += samples

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.loss_count if self.loss_count else float("nan")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def throughput(self) -> float:
        return self.samples / self.elapsed if self.elapsed > 0 else 0.0

    def postfix(self, lr: Optional[float] = None, world_size: int = 1) -> Dict[str, str]:
        out = {"loss": f"{self.mean_loss:.4f}"}
        if lr is not None:
            out["lr"] = f"{lr:.2e}"
        out["img/s"] = f"{self.throughput * world_size:.0f}"
        return out


class MetricsLog:
    """A JSON-lines file of per-epoch records (one dict per line), written by rank 0."""

    def __init__(self, path: PathLike, enabled: Optional[bool] = None):
        self.path = Path(path)
        self.enabled = is_main_process() if enabled is None else enabled

    def read(self) -> List[Dict[str, Any]]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by a crash: skip it
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def keep_before(self, epoch: int, key: str = "epoch") -> None:
        """Drop records with ``record[key] >= epoch`` (the epochs a resumed run is about to redo)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in self.read() if r.get(key, -1) < epoch]
        with atomic_write(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return Path(path)


def plot_curves(records: Sequence[Mapping[str, Any]], path: PathLike, *, loss_keys: Sequence[str] = (),
                metric_keys: Sequence[str] = (), x_key: str = "epoch", title: str = "",
                metric_label: str = "metric", trace_keys: Sequence[str] = ()) -> Optional[Path]:
    """Loss curves (left) and metric curves (right) against ``x_key``, saved as a PNG; None if nothing to plot.

    Keys missing from every record are left out; ``loss_keys`` defaults to every numeric key containing "loss".
    ``trace_keys`` name lists of ``[x, loss]`` points inside the records (losses logged more often than ``x_key``
    advances), drawn as thin lines on the loss panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no global backend switch
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not records:
        return None
    if not loss_keys:
        loss_keys = sorted({k for r in records for k, v in r.items() if "loss" in k and isinstance(v, (int, float))})
    traces = {key: [(x, y) for r in records for x, y in r.get(key) or () if math.isfinite(y)] for key in trace_keys}
    traces = {key: points for key, points in traces.items() if points}
    panels = [(list(loss_keys), "loss"), (list(metric_keys), metric_label)]
    panels = [(keys, label) for keys, label in panels if any(k in r for r in records for k in keys)]
    if not panels:
        return None
    fig = Figure(figsize=(6 * len(panels), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    for i, (keys, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if i == 0 and label == "loss":
            for key, points in traces.items():
                xs, ys = zip(*points)
                ax.plot(xs, ys, linewidth=0.8, alpha=0.6, label=key)
        for key in keys:
            points = [(r[x_key], r[key]) for r in records
                      if isinstance(r.get(key), (int, float)) and x_key in r and math.isfinite(r[key])]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x_key)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def format_summary(summary: Mapping[str, Any], title: str = "summary") -> str:
    """``key: value`` lines, aligned, floats rounded sensibly."""
    width = max((len(str(k)) for k in summary), default=0)
    lines = [f"==> {title}"]
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
        lines.append(f"    {str(key):<{width}}  {value}")
    return "\n".join(lines)
