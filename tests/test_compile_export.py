"""Vim under ``torch.compile`` (one graph, no breaks; compiled equals eager) and ``torch.export`` (dynamic batch and
image size; the exported program equals eager at two sizes).

Compiling with Inductor takes a minute on a small CPU, so only the one test marked ``slow`` uses it; the others
capture the graph with Dynamo and run it through AOTAutograd (``backend="aot_eager"``), which checks the same
things that can break (graph breaks, fake implementations, the operators' autograd) in seconds.
"""
from __future__ import annotations

import pytest
import torch

import vimamba
from vimamba.models.export import dynamic_image_shapes, export_vim

from conftest import tiny_vim


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def demo_sized_vim(depth=2):
    """The Fashion-MNIST demo's shape: 28x28 grey images, 7x7 patches (16 + 1 tokens)."""
    return vimamba.create_model("vim_tiny_patch16_224", embed_dim=96, depth=depth, patch_size=7, stride=7,
                                img_size=28, in_chans=1, num_classes=10, drop_path_rate=0.0)


def test_demo_model_traces_as_one_graph():
    torch.manual_seed(0)
    model = demo_sized_vim()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 1, 28, 28))
    assert explanation.graph_break_count == 0, [str(r.reason)[:200] for r in explanation.break_reasons]
    assert explanation.graph_count == 1


def _step(model, images):
    model.zero_grad()
    logits = model(images)
    logits.logsumexp(-1).sum().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_same_step(eager, compiled):
    assert torch.allclose(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled[1], eager[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_training_step_equals_eager_fullgraph():
    torch.manual_seed(0)
    model = tiny_vim(depth=2)
    images = torch.randn(3, 3, 16, 16)
    eager = _step(model, images)
    compiled = _step(torch.compile(model, fullgraph=True, backend="aot_eager"), images)
    _assert_same_step(eager, compiled)
    with torch.no_grad():
        assert torch.allclose(torch.compile(model, fullgraph=True, backend="aot_eager")(images), eager[0],
                              rtol=1e-5, atol=1e-5)


def test_scan_implementation_choice_is_honoured_when_compiling(monkeypatch):
    """The environment variable is read while tracing: the reference scan gives the same step."""
    torch.manual_seed(0)
    model = tiny_vim(depth=1)
    images = torch.randn(2, 3, 16, 16)
    eager = _step(model, images)
    monkeypatch.setenv(vimamba.ops.SCAN_IMPL_ENV, "reference")
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = _step(torch.compile(model, backend=capture), images)
    _assert_same_step(eager, compiled)
    code = "".join(g.code for g in graphs)
    assert "vimamba" not in code and "bidirectional_scan" not in code  # the reference loop, traced op by op


@pytest.mark.slow
def test_inductor_compiled_training_equals_eager():
    torch.manual_seed(0)
    model = tiny_vim(depth=1)
    images = torch.randn(2, 3, 16, 16)
    eager = _step(model, images)
    compiled = _step(torch.compile(model, fullgraph=True), images)
    _assert_same_step(eager, compiled)


# --------------------------------------------------------------------------------------------- torch.export


@pytest.mark.parametrize("name,sizes", [
    ("vim_tiny_patch16_224", [(2, 64, 64), (1, 48, 80)]),
    ("vim_tiny_patch16_stride8_224", [(2, 64, 64), (3, 40, 56)]),
])
def test_exported_program_equals_eager_at_two_sizes(name, sizes, tmp_path):
    torch.manual_seed(0)
    model = vimamba.create_model(name, embed_dim=16, depth=1, d_state=4, img_size=64, num_classes=7).eval()
    program = export_vim(model)
    graph = str(program.graph)
    assert "vimamba.bidirectional_scan" in graph and "vimamba.bidirectional_conv_silu" in graph
    torch.export.save(program, tmp_path / "vim.pt2")  # and it survives a save and load
    exported = torch.export.load(tmp_path / "vim.pt2").module()
    for batch, height, width in sizes:
        images = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(images)
            got = exported(images)
        assert got.shape == (batch, 7)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (batch, height, width)


def test_dynamic_shapes_follow_the_stride():
    model = vimamba.create_model("vim_tiny_patch16_stride8_224", embed_dim=16, depth=1, d_state=4, img_size=64)
    shapes = dynamic_image_shapes(model)["x"]
    assert set(shapes) == {0, 2, 3}
    assert "8" in str(shapes[2])  # height = 8 * a dimension
    with pytest.raises(ValueError, match="multiples of the stride"):
        export_vim(model, torch.zeros(1, 3, 60, 64))
    with pytest.raises(TypeError, match="VisionMamba"):
        export_vim(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------- vimamba train --compile


def test_compile_choice_by_device():
    from vimamba.engine.compiled import should_compile

    assert should_compile("auto", torch.device("cuda")) and not should_compile("auto", torch.device("cpu"))
    assert should_compile("on", torch.device("cpu")) and not should_compile("off", torch.device("cuda"))
    with pytest.raises(ValueError, match="--compile"):
        should_compile("yes", torch.device("cpu"))


def test_training_wrapper_compiles_and_unwraps():
    from vimamba.engine.compiled import CompiledWithFallback
    from vimamba.engine.distributed import unwrap_model

    torch.manual_seed(0)
    model = tiny_vim(depth=1)
    images = torch.randn(2, 3, 16, 16)
    eager = _step(model, images)
    wrapper = CompiledWithFallback(model, log=lambda line: None, backend="aot_eager")
    assert unwrap_model(wrapper) is model
    assert list(wrapper.state_dict()) == [f"module.{k}" for k in model.state_dict()]  # one copy of the weights
    _assert_same_step(eager, _step(wrapper, images))
    assert wrapper.failed is None


def test_training_wrapper_falls_back_to_eager_with_one_line(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    from vimamba.train import compiled

    def broken_compile(model, **kwargs):
        def call(*args, **kw):
            raise BackendCompilerFailed(lambda *a: None, RuntimeError("simulated: no C++ compiler"), None)
        return call

    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    lines = []
    model = tiny_vim(depth=1).eval()
    wrapper = compiled.maybe_compile(model, "on", torch.device("cpu"), log=lines.append)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(wrapper(images), model(images))
        assert torch.equal(wrapper(images), model(images))
    warnings = [line for line in lines if "failed" in line]
    assert len(warnings) == 1 and "simulated: no C++ compiler" in warnings[0] and "--compile off" in warnings[0]
    assert compiled.maybe_compile(model, "off", torch.device("cpu")) is model


def test_training_wrapper_does_not_hide_input_errors():
    from vimamba.engine.compiled import CompiledWithFallback

    wrapper = CompiledWithFallback(tiny_vim(depth=1), log=lambda line: None, backend="aot_eager")
    with pytest.raises(ValueError, match="channel"):
        wrapper(torch.randn(2, 5, 16, 16))


def test_training_names_what_was_built():
    from vimamba.train.models import create_classifier, describe_model

    demo, _ = create_classifier("vim_tiny_patch16_224", patch_size=7, embed_dim=96, depth=6, img_size=28,
                                in_chans=1, num_classes=10)
    assert describe_model(demo, "vim_tiny_patch16_224") == "Vim 0.49M (D=96, depth 6, N=16, patch 7)"
    plus, _ = create_classifier("vim_tiny_patch16_stride8_224", embed_dim=32, depth=2)
    assert describe_model(plus, "vim_tiny_patch16_stride8_224").endswith("(D=32, depth 2, N=16, patch 16, stride 8)")
    deit, _ = create_classifier("deit_tiny_patch16_224", patch_size=7, embed_dim=96, depth=6, num_heads=3,
                                img_size=28, in_chans=1, num_classes=10)
    assert describe_model(deit, "deit_tiny_patch16_224") == "DeiT 0.68M (D=96, depth 6, 3 heads, patch 7)"
