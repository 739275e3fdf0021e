"""The benchmark's outputs: the environment it ran in, the terminal tables, the paper-style comparison, and the
JSON and CSV files (the JSON is the complete record; :func:`read_results` loads it back for re-plotting).
"""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import InputError, MissingFileError
from ..io import atomic_write
from .measure import Measurement

__all__ = ["FORMAT", "collect_environment", "load_average", "format_measurement", "format_table", "compare",
           "format_comparison", "format_markdown", "write_json", "write_csv", "write_markdown", "read_results"]

FORMAT = "vimamba-bench/1"
_MiB = 1024 ** 2


# ---------------------------------------------------------------------------------------------------- environment
def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The processor's model name, with its family/model numbers and widest SIMD extension where /proc/cpuinfo
    tells them, e.g. "AMD EPYC (family 26 model 2, AVX-512)": virtual machines often report a generic name, and
    the same name can stand for hosts of different generations."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:  # the first processor's block is enough
                break
    except OSError:
        fields = {}
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    simd = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags),
                None)
    details = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    details += [simd] if simd else []
    return fields["model name"] + (f" ({', '.join(details)})" if details else "")


def _total_memory_bytes() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git_revision() -> Optional[str]:
    """The commit of the vimamba source tree in use (with "+changes" when modified), if it is a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+changes" if dirty else "")


def load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def collect_environment(device: str) -> Dict[str, object]:
    """Machine, library versions and settings that a timing depends on."""
    env: Dict[str, object] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "triton": _version("triton"),
        "vimamba": _version("vimamba"),
        "vimamba_git": _git_revision(),
        "numpy": _version("numpy"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_total_bytes": _total_memory_bytes(),
        "torch_default_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=torch.cuda.get_device_name(0), gpu_memory_bytes=props.total_memory,
                   gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), gpu_count=torch.cuda.device_count())
    else:
        env["device_name"] = env["cpu_model"]
    return env


# ---------------------------------------------------------------------------------------------------- tables
def _mib(n: Optional[int]) -> str:
    return f"{n / _MiB:,.0f}" if n is not None else "-"


def format_measurement(m: Measurement) -> str:
    """One line of progress for a finished configuration."""
    head = f"{m.label} @ {m.resolution}px (L={m.tokens if m.tokens else '?'}, batch {m.batch_size})"
    if m.status != "ok":
        return f"{head}: {m.status.upper()} {m.message}"
    return (f"{head}: {m.latency_ms_median:,.1f} ms median (IQR {m.latency_ms_p25:,.1f}-{m.latency_ms_p75:,.1f}, "
            f"{m.runs} runs), {m.images_per_s:,.2f} img/s, peak {_mib(m.peak_memory_bytes)} MiB "
            f"(working {_mib(m.working_memory_bytes)} MiB)")


def format_table(measurements: Sequence[Measurement]) -> str:
    header = (f"{'model':<48} {'res':>5} {'tokens':>7} {'median ms':>11} {'IQR ms':>17} {'img/s':>10} "
              f"{'peak MiB':>9} {'work MiB':>9}")
    lines = [header, "-" * len(header)]
    order = {label: i for i, label in enumerate(dict.fromkeys(m.label for m in measurements))}
    for m in sorted(measurements, key=lambda m: (order[m.label], m.resolution)):  # grouped by model
        tokens = str(m.tokens) if m.tokens else "-"
        if m.status == "ok":
            iqr = f"{m.latency_ms_p25:,.1f}-{m.latency_ms_p75:,.1f}"
            lines.append(f"{m.label:<48} {m.resolution:>5} {tokens:>7} {m.latency_ms_median:>11,.1f} {iqr:>17} "
                         f"{m.images_per_s:>10,.2f} {_mib(m.peak_memory_bytes):>9} {_mib(m.working_memory_bytes):>9}")
        else:
            lines.append(f"{m.label:<48} {m.resolution:>5} {tokens:>7} {m.status.upper():>11}   {m.message[:70]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- comparison
def compare(measurements: Sequence[Measurement]) -> List[Dict[str, object]]:
    """The first model against every other one, per resolution, as the paper states its claim.

    ``speedup`` = images/s of the first / images/s of the other (>1: the first is faster); ``peak_memory_saved``
    = 1 - peak(first) / peak(other), likewise for working memory. A side that did not run gives its status.
    """
    labels = list(dict.fromkeys(m.label for m in measurements))
    if len(labels) < 2:
        return []
    index = {(m.label, m.resolution): m for m in measurements}
    reference = labels[0]
    rows = []
    for resolution in sorted({m.resolution for m in measurements}):
        ref = index.get((reference, resolution))
        if ref is None:
            continue
        for other_label in labels[1:]:
            other = index.get((other_label, resolution))
            if other is None:
                continue
            row: Dict[str, object] = dict(resolution=resolution, model=reference, other=other_label,
                                          status=ref.status, other_status=other.status)
            if ref.status == "ok" and other.status == "ok":
                row["speedup"] = ref.images_per_s / other.images_per_s
                row["peak_memory_saved"] = 1.0 - ref.peak_memory_bytes / other.peak_memory_bytes
                if other.working_memory_bytes:
                    row["working_memory_saved"] = 1.0 - (ref.working_memory_bytes or 0) / other.working_memory_bytes
            rows.append(row)
    return rows


def _compared_cells(row: Dict[str, object]) -> Optional[Tuple[str, str, str]]:
    """(speed-up, peak memory saved, working memory saved) of a :func:`compare` row, formatted for the text and
    Markdown tables; None where the two models were not both measured."""
    if "speedup" not in row:
        return None
    working = f"{row['working_memory_saved']:.1%}" if "working_memory_saved" in row else "-"
    return f"{row['speedup']:.2f}x", f"{row['peak_memory_saved']:.1%}", working


def format_comparison(rows: Sequence[Dict[str, object]]) -> str:
    if not rows:
        return ""
    lines = [f"{rows[0]['model']} against the other models (speed-up = ratio of images/s; memory saved = 1 - "
             f"its memory / the other's):",
             f"  {'res':>5}  {'other model':<48} {'speed-up':>9} {'peak mem saved':>15} {'working mem saved':>18}"]
    for row in rows:
        cells = _compared_cells(row)
        if cells is not None:
            speedup, peak, working = cells
            lines.append(f"  {row['resolution']:>5}  {row['other']:<48} {speedup:>9} {peak:>15} {working:>18}")
        else:
            lines.append(f"  {row['resolution']:>5}  {row['other']:<48} not compared (this model: "
                         f"{row['status'].upper()}, other: {row['other_status'].upper()})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- files
def write_json(path: Path, document: Dict[str, object]) -> Path:
    """``document`` as indented JSON, written atomically (the bench command and the benchmark scripts' --json)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return Path(path)


def write_csv(path: Path, measurements: Sequence[Measurement], context: Dict[str, object]) -> Path:
    """One row per measurement; ``context`` columns (device, dtype, mode, versions) repeated on every row."""
    rows = [{**context, **m.to_dict()} for m in measurements]
    fieldnames = list(context) + list(Measurement.__dataclass_fields__)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def format_markdown(document: Dict[str, object], measurements: Sequence[Measurement]) -> str:
    """A summary to paste into documentation: the command, the machine, the measurements and the comparison."""
    env, settings = document["environment"], document["settings"]
    host = (f" (host CPU: {env['cpu_model']}, {env['cpu_count']} cores)" if settings["device"] == "cuda"
            else f", {env['cpu_count']} cores")
    threads = settings["threads"] or env["torch_default_threads"]
    lines = [f"Command: `{document['command']}`", "",
             f"Machine: {env['device_name']}{host}, torch {env['torch']}, timm {env['timm']}, triton {env['triton']}, "
             f"vimamba {env['vimamba']} ({env.get('vimamba_git') or 'not a git checkout'}), {threads} thread(s), "
             f"{env['date_utc']}, load average {env['load_average_start']} at the start and "
             f"{env.get('load_average_end')} at the end. Memory: {settings['memory_probe']}.", "",
             "| model | res | tokens | scan | median ms (IQR) | img/s | peak MiB | working MiB |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    order = {label: i for i, label in enumerate(dict.fromkeys(m.label for m in measurements))}
    for m in sorted(measurements, key=lambda m: (order[m.label], m.resolution)):
        scan = m.scan_impl or ""
        if m.status == "ok":
            lines.append(f"| {m.label} | {m.resolution} | {m.tokens} | {scan} | {m.latency_ms_median:,.1f} "
                         f"({m.latency_ms_p25:,.1f}-{m.latency_ms_p75:,.1f}) | {m.images_per_s:,.3g} | "
                         f"{_mib(m.peak_memory_bytes)} | {_mib(m.working_memory_bytes)} |")
        else:
            lines.append(f"| {m.label} | {m.resolution} | {m.tokens or '-'} | {scan} | **{m.status.upper()}** | "
                         f"| | |")
    comparison = document.get("comparison") or []
    if comparison:
        lines += ["", f"{comparison[0]['model']} against the others:", "",
                  "| res | other | speed-up | peak memory saved | working memory saved |", "|---:|---|---:|---:|---:|"]
        for row in comparison:
            cells = _compared_cells(row)
            if cells is not None:
                lines.append(f"| {row['resolution']} | {row['other']} | {' | '.join(cells)} |")
            else:
                lines.append(f"| {row['resolution']} | {row['other']} | {row['status'].upper()} vs "
                             f"{row['other_status'].upper()} | | |")
    fits = document.get("scaling") or []
    if fits:
        lines += ["", "Exponent k of cost ~ tokens^k (all points / the two largest):", "",
                  "| model | time k | working memory k |", "|---|---:|---:|"]
        by_label: Dict[str, Dict[str, dict]] = {}
        for fit in fits:
            by_label.setdefault(fit["label"], {})[fit["quantity"]] = fit

        def k(fit: Optional[dict]) -> str:
            return f"{fit['exponent']:.2f} / {fit['last_exponent']:.2f}" if fit and fit["exponent"] is not None else "-"

        for label, pair in by_label.items():
            lines.append(f"| {label} | {k(pair.get('time'))} | {k(pair.get('memory'))} |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, document: Dict[str, object], measurements: Sequence[Measurement]) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(format_markdown(document, measurements))
    return Path(path)


def read_results(path: os.PathLike) -> Tuple[Dict[str, object], List[Measurement]]:
    """Load a ``bench.json`` written by ``vimamba bench``: (the document, its measurements)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no benchmark results at {path}", path)
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a JSON file ({e})") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"{path} is not a `vimamba bench` results file (expected \"format\": \"{FORMAT}\")")
    try:
        measurements = [Measurement(**row) for row in document["measurements"]]
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: malformed measurements ({e})") from e
    return document, measurements
