"""``vimamba bench``: the Vim paper's speed and memory comparison with DeiT, on your hardware.

Modules, one idea each:

``models``   the models under test (Vim from vimamba, DeiT and others from timm with fused or materialising attention)
``measure``  one configuration measured: warm-up, timed runs, latency statistics
``memory``   peak-memory probes (CUDA allocator, process resident set), memory caps, out-of-memory detection
``runner``   every configuration in its own child process (OOM kills and timeouts become results)
``scaling``  fitted exponents of time and memory against the number of tokens
``report``   environment, tables, the paper-style comparison, JSON and CSV files
``plot``     the figure (images/s and memory against resolution)
``commands`` the command line
"""
from .measure import Configuration, Measurement, run_configuration
from .runner import run_isolated
from .scaling import fit_exponent, scaling_report

__all__ = ["Configuration", "Measurement", "run_configuration", "run_isolated", "fit_exponent", "scaling_report"]
