"""``vimamba bench``: speed and memory of Vim against DeiT (or any timm model) across input resolutions."""
from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

from ..cli_args import image_size, non_negative_int, parse_settings, positive_float, positive_int
from ..errors import InputError

DEFAULT_MODELS = ["vim_tiny_patch16_224", "deit_tiny_patch16_224"]
DEFAULT_RESOLUTIONS = [224, 512, 738, 1024, 1248]
DEFAULT_OUTPUT = "runs/bench"


def register(subparsers) -> None:
    from ..ops import available_scan_impls
    from .measure import DTYPES, MODES
    from .models import ATTENTION_MODES

    p = subparsers.add_parser(
        "bench", help="speed and memory of Vim against DeiT (or any timm model) across resolutions",
        description="Measure latency, images/s and peak memory of each model at each resolution, every "
                    "configuration in its own process; print a table and write bench.json, bench.csv, a Markdown "
                    "summary bench.md and bench.png (the Vim paper's Figure 1, on your hardware).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="NAME",
                   help="vimamba model names and/or timm model names; the first is compared with the others")
    p.add_argument("--resolutions", nargs="+", type=image_size, default=DEFAULT_RESOLUTIONS, metavar="PIXELS",
                   help="square input sizes")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="bf16 = torch.autocast mixed precision")
    p.add_argument("--mode", choices=MODES, default="features",
                   help="features: forward_features under no_grad (the paper's setting); train: forward + backward")
    p.add_argument("--attention", nargs="+", choices=ATTENTION_MODES, default=["sdpa"],
                   help="attention of timm models: sdpa = PyTorch fused attention (timm's default, memory linear "
                        "in tokens); math = the plain path that materialises the L x L matrix (the paper's DeiT). "
                        "Several values: each timm model is measured with each")
    p.add_argument("--scan-impl", default="auto", choices=["auto", *available_scan_impls()],
                   help="selective-scan implementation of Vim models")
    p.add_argument("--model-args", nargs="+", default=[], metavar="KEY=VALUE",
                   help="constructor overrides for every model, e.g. depth=2 embed_dim=96 (quick runs)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed runs per configuration")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed runs per configuration (at most)")
    p.add_argument("--time-budget", type=positive_float, default=60.0, metavar="SECONDS",
                   help="stop timing a configuration once its timed runs exceed this (after at least 3 runs)")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="kill a configuration that takes longer than this in all (reported as timeout)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--max-memory-gb", type=positive_float, default=None,
                   help="memory cap per configuration, reported as OOM when exceeded. CUDA: a per-process "
                        "fraction of the GPU; CPU: address space beyond the loaded model (RLIMIT_AS), so the input "
                        "counts: an input batch larger than the cap is refused before it is allocated")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA (fp32 only)")
    p.add_argument("--check-scaling", action="store_true",
                   help="fit the exponent of time and memory against the number of tokens for each model")
    p.add_argument("--output", default=None, metavar="DIR",
                   help=f"where bench.json, .csv, .md and .png go (default: {DEFAULT_OUTPUT}, or with "
                        "--from-json the folder of that file)")
    p.add_argument("--json", action="store_true",
                   help="print the results (bench.json) as JSON to stdout; the progress and tables go to stderr")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="measure nothing: print the tables, rewrite bench.md and redraw bench.png of an earlier "
                        "bench.json")
    p.set_defaults(func=_bench)


# ---------------------------------------------------------------------------------------------------- arguments
def _validate(args) -> None:
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to PyTorch on this machine")
    if args.device == "cuda" and args.dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise InputError("--dtype bf16: this GPU does not support bfloat16")
    for name, value, minimum in (("--batch-size", args.batch_size, 1), ("--warmup", args.warmup, 0),
                                 ("--repeats", args.repeats, 1)):
        if value < minimum:
            raise InputError(f"{name} must be >= {minimum}, got {value}")
    if min(args.resolutions) < 1:
        raise InputError(f"--resolutions must be positive, got {args.resolutions}")
    for name, value in (("--time-budget", args.time_budget), ("--timeout", args.timeout),
                        ("--max-memory-gb", args.max_memory_gb), ("--threads", args.threads)):
        if value is not None and value <= 0:
            raise InputError(f"{name} must be positive, got {value}")
    args.models = list(dict.fromkeys(args.models))
    args.resolutions = sorted(set(args.resolutions))
    args.attention = list(dict.fromkeys(args.attention))


def _configurations(args, model_args: Dict[str, object]):
    """Every (model, attention) x resolution, checked on the meta device before anything runs."""
    from .measure import Configuration
    from .models import count_tokens, describe_on_meta, is_vim_model, uses_attention

    variants = []  # (name, attention)
    for name in args.models:
        try:
            model = describe_on_meta(name, None, model_args)
        except TypeError as e:  # unknown constructor arguments
            raise InputError(f"{name}: {e}") from e
        attentions: List[Optional[str]] = [None]
        if not is_vim_model(name) and uses_attention(model):
            attentions = list(args.attention)
        for resolution in args.resolutions:
            count_tokens(model, resolution)  # raises for an image smaller than one patch
        variants += [(name, attention) for attention in attentions]
    # Resolution-major order: the models compared at one resolution run close together in time, so a change in
    # the machine's load during a long run affects them alike.
    return [Configuration(
        model=name, resolution=resolution, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        mode=args.mode, attention=attention, scan_impl=args.scan_impl if is_vim_model(name) else None,
        model_args=model_args, warmup=args.warmup, repeats=args.repeats, time_budget_s=args.time_budget,
        threads=args.threads, max_memory_bytes=int(args.max_memory_gb * 1024 ** 3) if args.max_memory_gb else None,
        allow_tf32=args.tf32)
        for resolution in args.resolutions for name, attention in variants]


def _command_line(args) -> str:
    """The command that reproduces this run."""
    words = ["vimamba", "bench", "--models", *args.models, "--resolutions", *map(str, args.resolutions),
             "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype,
             "--mode", args.mode, "--attention", *args.attention, "--scan-impl", args.scan_impl,
             "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--time-budget", f"{args.time_budget:g}"]
    for flag, value in (("--model-args", args.model_args), ("--timeout", args.timeout),
                        ("--threads", args.threads), ("--max-memory-gb", args.max_memory_gb)):
        if value:
            words += [flag, *value] if isinstance(value, list) else [flag, f"{value:g}"]
    words += ["--tf32"] * args.tf32 + ["--check-scaling"] * args.check_scaling
    return shlex.join(words)


# ---------------------------------------------------------------------------------------------------- the command
def _bench(args) -> int:
    if not args.json:
        return _run(args)
    with contextlib.redirect_stdout(sys.stderr):
        code = _run(args)
    results = Path(args.from_json) if args.from_json else Path(args.output or DEFAULT_OUTPUT) / "bench.json"
    if results.is_file():
        print(results.read_text().rstrip())
    return code


def _run(args) -> int:
    """Measure (or re-read ``--from-json``), print the tables and write the files."""
    from .report import read_results

    if args.from_json:
        document, measurements = read_results(args.from_json)
        output = Path(args.output) if args.output else Path(args.from_json).parent
        _finish(document, measurements, output, check_scaling=args.check_scaling, write_data=False)
        return 0

    _validate(args)
    model_args = parse_settings(args.model_args, "--model-args")
    configs = _configurations(args, model_args)
    return _measure(args, configs, Path(args.output or DEFAULT_OUTPUT))


def _measure(args, configs, output: Path) -> int:
    from .memory import MemoryProbe
    from .report import FORMAT, collect_environment, format_measurement, write_json
    from .runner import run_isolated

    document = {
        "format": FORMAT,
        "command": _command_line(args),
        "complete": False,
        "settings": dict(
            models=args.models, resolutions=args.resolutions, batch_size=args.batch_size, device=args.device,
            dtype=args.dtype, mode=args.mode, attention=args.attention, scan_impl=args.scan_impl,
            model_args=parse_settings(args.model_args, "--model-args"), warmup=args.warmup, repeats=args.repeats,
            time_budget_s=args.time_budget, timeout_s=args.timeout, threads=args.threads,
            max_memory_gb=args.max_memory_gb, allow_tf32=args.tf32,
            memory_probe=MemoryProbe(args.device).description),
        "environment": collect_environment(args.device),
        "measurements": [],
    }
    print(f"vimamba bench: {len(configs)} configurations on {document['environment']['device_name']} "
          f"({args.mode}, batch {args.batch_size}, {args.dtype}); results in {output}/", flush=True)
    measurements = []
    failed_at: Dict[str, object] = {}  # label -> the failed measurement: larger inputs of that model are skipped
    previous_handler = _interrupt_on_sigterm()
    try:
        for i, config in enumerate(configs, 1):
            failure = failed_at.get(config.label)
            if failure is not None:
                result = type(failure).for_configuration(
                    config, status=failure.status,
                    message=f"not run: {failure.status.upper()} already at {failure.resolution} px")
            else:
                result = run_isolated(config, timeout_s=args.timeout)
                if result.status in ("oom", "timeout"):
                    failed_at[config.label] = result
            measurements.append(result)
            print(f"[{i}/{len(configs)}] {format_measurement(result)}", flush=True)
            document["measurements"] = [m.to_dict() for m in measurements]
            write_json(output / "bench.json", document)  # after every configuration: an interrupted run keeps them
    except KeyboardInterrupt:
        _finish(document, measurements, output, check_scaling=args.check_scaling)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    document["complete"] = True
    _finish(document, measurements, output, check_scaling=args.check_scaling)
    errors = [m for m in measurements if m.status == "error"]
    if errors:
        print(f"vimamba bench: {len(errors)} configuration(s) failed with an error (see the table; "
              f"VIMAMBA_DEBUG=1 prints their tracebacks)")
    return 1 if errors else 0


def _interrupt_on_sigterm():
    """Treat SIGTERM (``kill``, a job scheduler's time limit) like Ctrl-C: stop the running configuration and write
    what was measured. Returns the previous handler (None when not in the main thread, where it cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


def _finish(document: dict, measurements, output: Path, *, check_scaling: bool, write_data: bool = True) -> None:
    """Print the tables (and the scaling report), write bench.json / .csv / .md and draw bench.png."""
    from .plot import plot_results
    from .report import (compare, format_comparison, format_table, load_average, write_csv, write_json,
                         write_markdown)
    from .scaling import format_scaling, scaling_report

    settings, env = document["settings"], document["environment"]
    print()
    print(format_table(measurements))
    comparison = compare(measurements)
    if comparison:
        print()
        print(format_comparison(comparison))
    if check_scaling:
        fits = scaling_report(measurements)
        print()
        print(format_scaling(fits))
        document["scaling"] = [fit.to_dict() for fit in fits]
    document["comparison"] = comparison
    if write_data:
        document["environment"]["load_average_end"] = load_average()
        write_json(output / "bench.json", document)
        context = dict(device=settings["device"], device_name=env["device_name"], dtype=settings["dtype"],
                       mode=settings["mode"], torch=env["torch"], timm=env["timm"])
        write_csv(output / "bench.csv", measurements, context)
    write_markdown(output / "bench.md", document, measurements)
    if measurements:
        plot_results(measurements, output / "bench.png", settings=settings, environment=env)
    written = (["bench.json", "bench.csv"] if write_data else []) + ["bench.md"]
    written += ["bench.png"] if measurements else []
    print(f"\nwrote {', '.join(str(output / name) for name in written)}")

