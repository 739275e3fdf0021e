"""The figure, in the style of the Vim paper's Figure 1 (b, c): throughput (images/s, log scale) and peak memory
against input resolution, one line per model, configurations that ran out of memory (or time) marked on the axis.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence

from ..io import atomic_write
from .measure import Measurement

__all__ = ["plot_results"]

_GiB = 1024 ** 3
_MARK = {"oom": "OOM", "timeout": "timeout", "error": "error"}


def _title(settings: dict, environment: dict) -> str:
    what = "forward_features, no_grad" if settings["mode"] == "features" else "forward + backward"
    threads = f", {settings['threads']} thread(s)" if settings.get("threads") else ""
    overrides = "".join(f", {key}={value}" for key, value in settings.get("model_args", {}).items())
    return (f"{settings['mode']} ({what}), batch {settings['batch_size']}, {settings['dtype']}, "
            f"{environment['device_name']}{threads}{overrides}")


def plot_results(measurements: Sequence[Measurement], path: Path, *, settings: dict, environment: dict) -> Path:
    """Write a two-panel PNG: images/s (log) and peak memory (GiB) against resolution; ``settings`` and
    ``environment`` are those of the results file (mode, batch, dtype, device name, ...) for the title."""
    title = _title(settings, environment)
    memory_label = ("peak allocated GPU memory (GiB)" if settings["device"] == "cuda"
                    else "peak resident memory of the process (GiB)")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter
    from matplotlib.transforms import blended_transform_factory

    by_label: Dict[str, List[Measurement]] = {}
    for m in measurements:
        by_label.setdefault(m.label, []).append(m)
    resolutions = sorted({m.resolution for m in measurements})

    fig, (ax_speed, ax_memory) = plt.subplots(1, 2, figsize=(12, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(by_label.items()):
        color = colors[i % len(colors)]
        rows = sorted(rows, key=lambda m: m.resolution)
        ok = [m for m in rows if m.status == "ok"]
        xs = [m.resolution for m in ok]
        ax_speed.plot(xs, [m.images_per_s for m in ok], "o-", color=color, label=label)
        ax_memory.plot(xs, [m.peak_memory_bytes / _GiB for m in ok], "o-", color=color, label=label)
        for m in rows:  # failed configurations: a cross on the edge of each panel, with the reason
            if m.status == "ok":
                continue
            for ax, y in ((ax_speed, 0.04 + 0.06 * i), (ax_memory, 0.96 - 0.06 * i)):
                transform = blended_transform_factory(ax.transData, ax.transAxes)
                ax.plot([m.resolution], [y], "x", color=color, markersize=10, mew=2.5, transform=transform,
                        clip_on=False)
                ax.annotate(_MARK.get(m.status, m.status), (m.resolution, y), xycoords=transform,
                            xytext=(6, -4), textcoords="offset points", color=color, fontsize=9, fontweight="bold")

    ax_speed.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.1, 1, 20 rather than 1e-01, 10^0, 2x10^1
    ax_speed.yaxis.set_major_formatter(plain)
    low, high = ax_speed.get_ylim()
    ax_speed.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())  # label minor ticks if < 1 decade
    ax_speed.set_ylabel("throughput (images/s, log scale)")
    ax_memory.set_ylabel(memory_label)
    for ax in (ax_speed, ax_memory):
        ax.set_xlabel("resolution (pixels per side)")
        ax.set_xticks(resolutions)
        ax.set_xticklabels([str(r) for r in resolutions], rotation=45 if len(resolutions) > 6 else 0)
        ax.grid(True, which="both", alpha=0.3)
    ax_memory.set_ylim(0, ax_memory.get_ylim()[1] * 1.15)  # room above the highest line for the OOM marks
    ax_speed.set_title("throughput")
    ax_memory.set_title("peak memory")
    handles, labels = ax_speed.get_legend_handles_labels()
    columns = min(len(labels), 3) or 1
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.03 + 0.045 * math.ceil(len(labels) / columns), 1, 1))  # legend below the panels
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
