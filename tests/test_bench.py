"""`vimamba bench`: end to end on tiny CPU configurations, OOM / timeout / error reporting, the memory probe, the
scaling fit and the comparison. No timing is asserted: only that measurements are well formed and consistent."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vimamba.bench import Configuration, Measurement, fit_exponent, run_isolated, scaling_report
from vimamba.bench.measure import make_step
from vimamba.bench.memory import MemoryProbe, is_out_of_memory
from vimamba.bench.models import build_model, count_tokens, input_resolution
from vimamba.bench.report import compare, read_results
from vimamba.cli import main

TINY = ["--model-args", "depth=2", "embed_dim=96", "--device", "cpu", "--threads", "1", "--warmup", "1",
        "--repeats", "2"]
MiB = 1024 ** 2


def _deit(resolution: int, **fields) -> Configuration:
    """A one-block DeiT with the L x L-materialising attention: its memory is known in closed form."""
    fields = {"attention": "math", "batch_size": 8, "threads": 1, "warmup": 1, "repeats": 1, **fields}
    return Configuration(model="deit_tiny_patch16_224", resolution=resolution,
                         model_args={"depth": 1, "embed_dim": 96}, **fields)


# ---------------------------------------------------------------------------------------------------- end to end
def test_bench_end_to_end_writes_table_json_csv_png(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--models", "vim_tiny_patch16_224", "deit_tiny_patch16_224", "--resolutions", "64", "32",
            "--batch-size", "2", "--attention", "sdpa", "math", "--scan-impl", "reference", "--check-scaling",
            "--output", str(out), *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "median ms" in printed and "Scaling with the number of tokens" in printed

    document = json.loads((out / "bench.json").read_text())
    assert document["format"] == "vimamba-bench/1" and document["complete"] is True
    assert document["command"].startswith("vimamba bench --models vim_tiny_patch16_224 deit_tiny_patch16_224")
    env = document["environment"]
    for key in ("device_name", "cpu_model", "torch", "timm", "triton", "python", "load_average_end"):
        assert key in env
    assert document["settings"]["model_args"] == {"depth": 2, "embed_dim": 96}
    assert document["settings"]["resolutions"] == [32, 64]

    rows = document["measurements"]
    labels = ["vim_tiny_patch16_224", "deit_tiny_patch16_224 (sdpa attention)",
              "deit_tiny_patch16_224 (math attention)"]
    assert [(r["label"], r["resolution"]) for r in rows] == [(label, res) for res in (32, 64) for label in labels]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["tokens"] == {32: 2 * 2 + 1, 64: 4 * 4 + 1}[r["resolution"]]  # 16-px patches + class token
        assert r["threads"] == 1 and r["runs"] == 2 and r["params"] > 0
        assert r["latency_ms_min"] <= r["latency_ms_p25"] <= r["latency_ms_median"] <= r["latency_ms_p75"]
        assert r["latency_ms_p75"] <= r["latency_ms_max"]
        assert math.isclose(r["images_per_s"], 2 / (r["latency_ms_median"] / 1000), rel_tol=1e-9)
        assert r["peak_memory_bytes"] >= r["baseline_memory_bytes"] > 0
        assert r["working_memory_bytes"] == r["peak_memory_bytes"] - r["baseline_memory_bytes"]
        assert r["scan_impl"] == ("reference" if r["model"].startswith("vim") else None)
    assert len(document["scaling"]) == 2 * len(labels)
    assert all(fit["resolutions"] == [32, 64] for fit in document["scaling"] if fit["quantity"] == "time")
    assert {(c["resolution"], c["other"]) for c in document["comparison"]} == {
        (res, label) for res in (32, 64) for label in labels[1:]}

    with open(out / "bench.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["label"], int(t["resolution"])) for t in table] == [(r["label"], r["resolution"]) for r in rows]
    assert {t["device"] for t in table} == {"cpu"} and {t["dtype"] for t in table} == {"fp32"}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the saved results redraw without measuring anything
    redraw = tmp_path / "redraw"
    assert main(["bench", "--from-json", str(out / "bench.json"), "--output", str(redraw)]) == 0
    assert sorted(p.name for p in redraw.iterdir()) == ["bench.md", "bench.png"]
    assert "| vim_tiny_patch16_224 | 64 | 17 | reference |" in (redraw / "bench.md").read_text()


def test_memory_cap_gives_oom_and_skips_larger_inputs(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--models", "deit_tiny_patch16_224", "--attention", "math", "--resolutions", "256", "512",
            "--batch-size", "4", "--max-memory-gb", "0.001", "--output", str(out), *TINY]
    assert main(argv) == 0  # running out of memory is a result, not a failure
    rows = json.loads((out / "bench.json").read_text())["measurements"]
    assert [r["status"] for r in rows] == ["oom", "oom"]
    assert "the input alone (4x3x256x256 float32" in rows[0]["message"]  # refused before it was allocated
    assert rows[1]["message"] == "not run: OOM already at 256 px"
    assert "OOM" in capsys.readouterr().out
    assert (out / "bench.png").exists()


def test_timeout_and_errors_become_results():
    timed_out = run_isolated(_deit(512), timeout_s=0.05)
    assert timed_out.status == "timeout" and "--timeout" in timed_out.message

    failed = run_isolated(_deit(64, attention="flash"))
    assert failed.status == "error" and "attention must be one of" in failed.message


@pytest.mark.parametrize("argv, message", [
    (["--models", "vim_tinyy_patch16_224"], "unknown model 'vim_tinyy_patch16_224'"),
    (["--model-args", "depth"], "KEY=VALUE"),
    (["--model-args", "no_such_argument=1"], "no_such_argument"),
    (["--resolutions", "8"], "smaller than one patch"),
    (["--from-json", "missing.json"], "no benchmark results at missing.json"),
])
def test_invalid_arguments_give_clear_messages_and_run_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["bench", "--device", "cpu", "--output", str(out), *argv]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_choices_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--attention", "flash"])
    assert exit_info.value.code == 2 and "invalid choice: 'flash'" in capsys.readouterr().err


def test_results_file_that_is_not_ours_is_refused(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"results": []}))
    assert main(["bench", "--from-json", str(path)]) == 1
    assert "is not a `vimamba bench` results file" in capsys.readouterr().err
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON file"):
        read_results(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_gpu_is_refused(capsys):
    assert main(["bench", "--device", "cuda"]) == 1
    assert "no CUDA GPU" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- memory probe
def test_memory_probe_sees_a_larger_peak_for_a_larger_input():
    small, large = run_isolated(_deit(64)), run_isolated(_deit(384))
    assert small.status == large.status == "ok"
    assert large.peak_memory_bytes > small.peak_memory_bytes
    # At 384 px one (batch, heads, L, L) float32 attention matrix alone is 8 * 3 * 577^2 * 4 bytes = 30.5 MiB.
    assert large.working_memory_bytes - small.working_memory_bytes > 8 * 3 * 577 ** 2 * 4


def test_memory_probe_in_process_counts_a_touched_buffer():
    probe = MemoryProbe(torch.device("cpu"))
    baseline = probe.start()
    buffer = torch.ones(64 * MiB // 4)  # 64 MiB, written so that it is resident
    assert probe.peak() - baseline >= 60 * MiB
    del buffer


def test_out_of_memory_detection():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 1 bytes"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocator errors count


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_train_step_runs_forward_and_backward(dtype):
    torch.manual_seed(0)
    model = build_model("vim_tiny_patch16_224", scan_impl="reference",
                        model_args={"depth": 2, "embed_dim": 32, "num_classes": 5}).train()
    step = make_step(model, torch.randn(2, 3, 32, 32), "train", dtype)
    step()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------------------------------- models
def test_math_attention_is_the_same_model_without_fused_attention(monkeypatch):
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    x = torch.randn(2, 3, 48, 48)
    outputs = {}
    for attention in ("sdpa", "math"):
        torch.manual_seed(0)
        model = build_model("deit_tiny_patch16_224", attention=attention, model_args={"depth": 2}).eval()
        calls.clear()
        with torch.no_grad():
            outputs[attention] = model.forward_features(x)
        assert len(calls) == (2 if attention == "sdpa" else 0)  # one fused call per block, none when materialising
    torch.testing.assert_close(outputs["math"], outputs["sdpa"], rtol=1e-4, atol=1e-5)


def test_token_counts_match_the_paper():
    with torch.device("meta"):
        vim = build_model("vim_tiny_patch16_224")
        deit = build_model("deit_tiny_patch16_224")
    for model in (vim, deit):
        assert count_tokens(model, 224) == 14 * 14 + 1
        assert count_tokens(model, 738) == 46 * 46 + 1
        assert count_tokens(model, 1248) == 78 * 78 + 1  # "6084 tokens per image" plus the class token
    with pytest.raises(ValueError, match="smaller than one patch"):
        count_tokens(vim, 8)
    # 738 px: Vim's strided conv ignores the last 2 pixels; DeiT is given those same 736 pixels (46 x 46 patches)
    assert (input_resolution(vim, 738), input_resolution(deit, 738)) == (738, 736)
    assert input_resolution(deit, 1248) == 1248


# ---------------------------------------------------------------------------------------------------- analysis
def _row(label, resolution, tokens, status="ok", ms=None, peak=None, working=None, batch=1):
    return Measurement(label=label, model=label, attention=None, resolution=resolution, batch_size=batch,
                       status=status, tokens=tokens, latency_ms_median=ms, peak_memory_bytes=peak,
                       working_memory_bytes=working, images_per_s=batch / (ms / 1000) if ms else None)


def test_fit_exponent_recovers_power_laws():
    tokens = [197, 1025, 2117, 4097, 6085]
    for k in (1.0, 1.5, 2.0):
        assert fit_exponent(tokens, [3.0 * t ** k for t in tokens]) == pytest.approx(k, abs=1e-9)
    with pytest.raises(ValueError):
        fit_exponent([197, 197], [1.0, 2.0])


def test_scaling_report_uses_successful_points_only():
    rows = [_row("a", 224, 197, ms=197 * 0.01, working=197 ** 2), _row("a", 512, 1025, ms=1025 * 0.01,
            working=1025 ** 2), _row("a", 738, 2117, ms=2117 * 0.01 + 5, working=2117 ** 2),
            _row("a", 1024, 4097, status="oom"), _row("b", 224, 197, ms=1.0, working=10)]
    fits = {(f.label, f.quantity): f for f in scaling_report(rows)}
    assert fits["a", "time"].resolutions == [224, 512, 738]
    assert fits["a", "memory"].exponent == pytest.approx(2.0)
    assert fits["a", "memory"].last_exponent == pytest.approx(2.0)
    assert fits["a", "time"].exponent == pytest.approx(fit_exponent([197, 1025, 2117], [1.97, 10.25, 26.17]))
    assert fits["b", "time"].exponent is None and "two or more" in fits["b", "time"].note


def test_comparison_states_speedup_and_memory_saving_like_the_paper():
    rows = [_row("vim", 1248, 6085, ms=100.0, peak=int(11.14e9), working=int(10e9)),
            _row("deit", 1248, 6085, ms=280.0, peak=int(84.4e9), working=int(80e9)),
            _row("vim", 2048, 16385, ms=300.0, peak=int(30e9)), _row("deit", 2048, 16385, status="oom")]
    first, second = compare(rows)
    assert first["speedup"] == pytest.approx(2.8)
    assert first["peak_memory_saved"] == pytest.approx(1 - 11.14 / 84.4)
    assert first["working_memory_saved"] == pytest.approx(0.875)
    assert "speedup" not in second and second["other_status"] == "oom"
