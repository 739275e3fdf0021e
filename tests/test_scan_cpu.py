"""The fast CPU / any-device selective-scan paths ("chunked", "cpp") against the sequential reference.

Every comparison is against ``vimamba.ops.reference`` (a plain loop over tokens), in float64 where the path allows.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import vimamba.ops as ops
from vimamba.ops import chunked as chunked_mod
from vimamba.ops import cpp_scan
from vimamba.ops.chunked import bidirectional_scan_chunked
from vimamba.ops.conv import bidirectional_conv_silu, depthwise_conv1d
from vimamba.ops.reference import bidirectional_scan_reference

NAMES = ("x_f", "x_b", "dt_f", "dt_b", "B_f", "B_b", "C_f", "C_b", "A_f", "A_b", "D_f", "D_b",
         "dt_bias_f", "dt_bias_b", "z")


def _cpp_or_skip():
    if not cpp_scan.is_available():
        if os.environ.get("CI"):
            pytest.fail("the native CPU scan did not build in CI")
        pytest.skip("native CPU scan not available here")


IMPLS = {
    "chunked": lambda: bidirectional_scan_chunked,
    "cpp": lambda: (_cpp_or_skip(), cpp_scan.bidirectional_scan_cpp)[1],
}


def make_inputs(batch, length, channels, n_state, *, seed=0, dtype=torch.float32, z=True, D=True, bias=True,
                dt_shift=-1.0, a_scale=1.0):
    """Random inputs laid out as the model makes them: B and C are column slices of one x_proj output per
    direction, z is the second half of an in_proj output (both non-contiguous)."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x_proj = [randn(batch, length, 3 + 2 * n_state) for _ in range(2)]
    xz = randn(batch, length, 2 * channels)
    values = [
        randn(batch, length, channels), randn(batch, length, channels),
        randn(batch, length, channels) * 0.5 + dt_shift, randn(batch, length, channels) * 0.5 + dt_shift,
        x_proj[0][..., 3:3 + n_state], x_proj[1][..., 3:3 + n_state],
        x_proj[0][..., 3 + n_state:], x_proj[1][..., 3 + n_state:],
        -torch.rand(channels, n_state, generator=g, dtype=torch.float64).mul(3).add(0.1) * a_scale,
        -torch.rand(channels, n_state, generator=g, dtype=torch.float64).mul(3).add(0.1) * a_scale,
        randn(channels) if D else None, randn(channels) if D else None,
        randn(channels) * 0.3 if bias else None, randn(channels) * 0.3 if bias else None,
        xz[..., channels:] if z else None,
    ]
    return [v.to(dtype) if v is not None else None for v in values]


def leaf_copies(inputs, dtype=None):
    """Independent leaf tensors that require grad, keeping strides (slices stay slices)."""
    out = []
    for v in inputs:
        if v is None:
            out.append(None)
            continue
        base = v if dtype is None else v.to(dtype)
        out.append(base.detach().clone().requires_grad_() if base.is_contiguous()
                   else torch.empty_strided(base.shape, base.stride(), dtype=base.dtype).copy_(base).requires_grad_())
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("length", [1, 2, 7, 197, 1031])
def test_forward_matches_reference(impl, length):
    fn = IMPLS[impl]()
    inputs = make_inputs(2, length, 11, 5, seed=length)
    expected = bidirectional_scan_reference(*[v.double() if v is not None else None for v in inputs])
    out = fn(*inputs)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert relative_error(out, expected) < 2e-5


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("options", [dict(z=False), dict(D=False), dict(bias=False), dict(z=False, D=False, bias=False)])
def test_optional_inputs(impl, options):
    fn = IMPLS[impl]()
    inputs = make_inputs(1, 70, 9, 16, seed=3, **options)
    expected = bidirectional_scan_reference(*[v.double() if v is not None else None for v in inputs])
    assert relative_error(fn(*inputs), expected) < 2e-5


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_each_direction_alone(impl):
    """Zeroing one direction's C leaves exactly the other direction: both run in the right order."""
    fn = IMPLS[impl]()
    inputs = make_inputs(1, 33, 8, 4, seed=5, D=False, z=False)
    for silenced in (6, 7):  # C_f, C_b
        cut = list(inputs)
        cut[silenced] = torch.zeros_like(inputs[silenced])
        expected = bidirectional_scan_reference(*[v.double() if v is not None else None for v in cut])
        assert relative_error(fn(*cut), expected) < 2e-5


# --------------------------------------------------------------------------------------------- gradients


def test_chunked_gradcheck_float64():
    inputs = leaf_copies(make_inputs(1, 6, 2, 2, seed=1, dtype=torch.float64))
    assert torch.autograd.gradcheck(bidirectional_scan_chunked, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_chunked_gradcheck_float64_in_several_chunk_groups(monkeypatch):
    """Tiny transient budget: the chunk groups (and the states carried between them) are exercised."""
    monkeypatch.setattr(chunked_mod, "_GROUP_ELEMENTS", 8)
    inputs = leaf_copies(make_inputs(2, 11, 2, 2, seed=2, dtype=torch.float64))
    assert torch.autograd.gradcheck(bidirectional_scan_chunked, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def assert_gradients_match_reference(fn, length, channels, n_state, seed):
    inputs = make_inputs(2, length, channels, n_state, seed=seed)
    ours, ref = leaf_copies(inputs), leaf_copies(inputs, torch.float64)
    out, expected = fn(*ours), bidirectional_scan_reference(*ref)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out.backward(grad.float())
    expected.backward(grad)
    for name, mine, theirs in zip(NAMES, ours, ref):
        assert mine.grad is not None and mine.grad.dtype == mine.dtype, name
        assert relative_error(mine.grad, theirs.grad) < 1e-4, name


# State sizes below, at and above a SIMD vector's lanes (8 or 16): dB and dC are summed over channels in groups
# of as many states as lanes, the last group partly filled.
@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("length,channels,n_state", [(1, 3, 16), (70, 19, 16), (197, 16, 16), (40, 37, 5),
                                                     (33, 24, 40)])
def test_float32_gradients_match_float64_reference(impl, length, channels, n_state):
    assert_gradients_match_reference(IMPLS[impl](), length, channels, n_state, seed=length)


def test_portable_native_build_matches_reference(monkeypatch, fresh_library):
    """The kernel built without -march=native (8-lane vectors, as on CPUs without AVX-512) gives the same results
    as the reference: the code paths this machine's own build may not take."""
    monkeypatch.delenv(cpp_scan.DISABLE_ENV, raising=False)
    monkeypatch.setattr(cpp_scan, "_FLAG_SETS", (["-O3", "-fno-math-errno", "-fopenmp"],))
    _cpp_or_skip()
    assert cpp_scan.load_library().vimamba_scan_lanes() == 8
    for length, channels, n_state in ((70, 19, 16), (40, 37, 5), (33, 24, 40)):
        assert_gradients_match_reference(cpp_scan.bidirectional_scan_cpp, length, channels, n_state, seed=length)
    inputs = make_inputs(2, 197, 21, 16, seed=1)
    expected = bidirectional_scan_reference(*[v.double() if v is not None else None for v in inputs])
    assert relative_error(cpp_scan.bidirectional_scan_cpp(*inputs), expected) < 2e-5


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_only_some_inputs_need_grad(impl):
    fn = IMPLS[impl]()
    inputs = make_inputs(1, 20, 8, 4, seed=4)
    x_f = inputs[0].clone().requires_grad_()
    out = fn(x_f, *inputs[1:])
    (g,) = torch.autograd.grad(out.sum(), x_f)
    x_ref = inputs[0].double().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(bidirectional_scan_reference(x_ref, *[v.double() for v in inputs[1:]]).sum(), x_ref)
    assert relative_error(g, g_ref) < 1e-4


# --------------------------------------------------------------------------------------------- dtypes, range


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_within_half_tolerance(impl, dtype):
    fn = IMPLS[impl]()
    inputs = make_inputs(2, 50, 12, 8, seed=6, dtype=dtype)
    out = fn(*inputs)
    assert out.dtype == dtype
    expected = bidirectional_scan_reference(*[v.double() if v is not None else None for v in inputs])
    assert relative_error(out.float(), expected) < 2e-2
    ours = leaf_copies(inputs)
    fn(*ours).float().square().sum().backward()
    for name, t in zip(NAMES, ours):
        assert t.grad.dtype == dtype and torch.isfinite(t.grad.float()).all(), name


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_large_negative_decays_and_long_sequence_stay_finite(impl):
    """A*delta down to about -1e4 (decays underflow to 0) and 4097 tokens: no inf/NaN, values still right."""
    fn = IMPLS[impl]()
    inputs = make_inputs(1, 4097, 4, 3, seed=7, dt_shift=3.0, a_scale=1000.0)
    ours = leaf_copies(inputs)
    out = fn(*ours)
    expected = bidirectional_scan_reference(*[v.double() if v is not None else None for v in inputs])
    assert torch.isfinite(out).all()
    assert relative_error(out, expected) < 2e-5
    out.square().sum().backward()
    for name, t in zip(NAMES, ours):
        assert torch.isfinite(t.grad).all(), name


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_softplus_threshold_region(impl):
    """dt + bias above 20 (softplus is the identity there) gives the reference's values and gradients."""
    fn = IMPLS[impl]()
    inputs = make_inputs(1, 9, 6, 4, seed=8, dt_shift=21.0, a_scale=0.001)
    ours, ref = leaf_copies(inputs), leaf_copies(inputs, torch.float64)
    out, expected = fn(*ours), bidirectional_scan_reference(*ref)
    assert relative_error(out, expected) < 2e-5
    out.sum().backward()
    expected.sum().backward()
    assert relative_error(ours[2].grad, ref[2].grad) < 1e-4


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_extreme_gate_and_time_step_values(impl):
    """z and dt + bias far into both tails (|x| up to 60): the fast exp/softplus/silu saturate like torch's."""
    fn = IMPLS[impl]()
    inputs = make_inputs(1, 12, 8, 4, seed=12)
    tails = torch.linspace(-60, 60, 12 * 8).reshape(1, 12, 8)
    inputs[2], inputs[3], inputs[14] = tails, tails.flip(1), tails.flip(2)
    ours, ref = leaf_copies(inputs), leaf_copies(inputs, torch.float64)
    out, expected = fn(*ours), bidirectional_scan_reference(*ref)
    assert relative_error(out, expected) < 2e-5
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out.backward(grad.float())
    expected.backward(grad)
    for name, mine, theirs in zip(NAMES, ours, ref):
        assert torch.isfinite(mine.grad).all() and relative_error(mine.grad, theirs.grad) < 1e-4, name


def test_shape_errors_name_the_argument():
    inputs = make_inputs(1, 5, 4, 3)
    bad = list(inputs)
    bad[5] = inputs[5][:, :4]
    with pytest.raises(ValueError, match="B_b"):
        bidirectional_scan_chunked(*bad)
    with pytest.raises(ValueError, match="x_f"):
        bidirectional_scan_chunked(inputs[0][0], *inputs[1:])


# --------------------------------------------------------------------------------------------- conv + SiLU


@pytest.mark.parametrize("length,channels,width", [(1, 5, 4), (3, 13, 4), (197, 19, 4), (40, 16, 3)])
def test_native_conv_silu_matches_pytorch(length, channels, width):
    _cpp_or_skip()
    g = torch.Generator().manual_seed(length)
    x = torch.randn(2, length, 2 * channels, generator=g)[..., :channels].requires_grad_()  # a slice, as in the model
    params = [torch.randn(channels, 1, width, generator=g).requires_grad_(), torch.randn(channels, generator=g).requires_grad_(),
              torch.randn(channels, 1, width, generator=g).requires_grad_(), torch.randn(channels, generator=g).requires_grad_()]
    ours = bidirectional_conv_silu(x, *params, native=True)
    ref_inputs = [t.detach().double().requires_grad_() for t in (x, *params)]
    xr, wf, bf, wb, bb = ref_inputs
    expected = (F.silu(depthwise_conv1d(xr, wf, bf)), F.silu(depthwise_conv1d(xr, wb, bb, reverse=True)))
    for a, b in zip(ours, expected):
        assert relative_error(a, b) < 1e-5
    grads = [torch.randn(e.shape, generator=g, dtype=torch.float64) for e in expected]
    mine = torch.autograd.grad(ours, (x, *params), [gr.float() for gr in grads])
    theirs = torch.autograd.grad(expected, ref_inputs, grads)
    for a, b in zip(mine, theirs):
        assert a.shape == b.shape and relative_error(a, b) < 1e-4


def test_conv_silu_reference_path_is_two_convolutions():
    x = torch.randn(1, 6, 3)
    w, b = torch.randn(3, 1, 4), torch.randn(3)
    f, r = bidirectional_conv_silu(x, w, b, w, None, native=False)
    # hand-made: at the sequence's first (causal) or last (anti-causal) token only the token itself is seen, through
    # the kernel's last tap; one token further in, the neighbour comes through the tap before it.
    w = w[:, 0]
    assert torch.allclose(f[0, 0], F.silu(b + w[:, -1] * x[0, 0]))
    assert torch.allclose(f[0, 1], F.silu(b + w[:, -1] * x[0, 1] + w[:, -2] * x[0, 0]))
    assert torch.allclose(r[0, -1], F.silu(w[:, -1] * x[0, -1]))
    assert torch.allclose(r[0, -2], F.silu(w[:, -1] * x[0, -2] + w[:, -2] * x[0, -1]))


# --------------------------------------------------------------------------------------------- dispatch


def test_environment_override_and_unknown_name(monkeypatch):
    monkeypatch.setenv(ops.SCAN_IMPL_ENV, "reference")
    assert ops.resolve_scan_impl(None, torch.device("cpu")) == "reference"
    assert ops.resolve_scan_impl("chunked", torch.device("cpu")) == "chunked"  # the argument wins
    monkeypatch.setenv(ops.SCAN_IMPL_ENV, "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        ops.resolve_scan_impl(None, torch.device("cpu"))


@pytest.fixture
def fresh_library(monkeypatch):
    """load_library() forgets its cached result before and after the test."""
    cpp_scan.load_library.cache_clear()
    yield
    cpp_scan.load_library.cache_clear()


def test_failed_build_warns_once_and_falls_back_to_chunked(monkeypatch, fresh_library):
    def no_compiler(flags):
        raise RuntimeError("simulated: no C++ compiler")

    monkeypatch.delenv(ops.SCAN_IMPL_ENV, raising=False)
    monkeypatch.delenv(cpp_scan.DISABLE_ENV, raising=False)
    monkeypatch.setattr(cpp_scan, "_build", no_compiler)
    inputs = make_inputs(1, 10, 4, 3, seed=11)
    with pytest.warns(RuntimeWarning, match="chunked") as record:
        assert not cpp_scan.is_available()
        out = cpp_scan.bidirectional_scan_cpp(*inputs)
    assert len(record) == 1 and "simulated: no C++ compiler" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert ops.resolve_scan_impl(None, torch.device("cpu")) == "chunked"
        assert torch.equal(out, bidirectional_scan_chunked(*inputs))


def test_disable_environment_variable(monkeypatch, fresh_library):
    monkeypatch.setenv(cpp_scan.DISABLE_ENV, "1")
    monkeypatch.delenv(ops.SCAN_IMPL_ENV, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpp_scan.is_available()
        assert ops.resolve_scan_impl(None, torch.device("cpu")) == "chunked"
        assert ops.resolve_scan_impl("cpp", torch.device("cpu")) == "cpp"  # asked for by name ...
        assert ops.scan_impl_in_use("cpp", torch.device("cpu")) == "chunked"  # ... but reported as what runs


def test_auto_prefers_native_on_cpu(monkeypatch):
    _cpp_or_skip()
    monkeypatch.delenv(ops.SCAN_IMPL_ENV, raising=False)
    assert ops.resolve_scan_impl(None, torch.device("cpu")) == "cpp"


# --------------------------------------------------------------------------------------------- the model


def test_model_logits_and_gradients_equal_with_every_implementation():
    from vimamba.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("vim_tiny_patch16_224", embed_dim=32, depth=2, patch_size=4, stride=4, img_size=28,
                         in_chans=1, num_classes=10, drop_path_rate=0.0)
    images = torch.randn(2, 1, 28, 28)
    impls = ["reference", "chunked"] + (["cpp"] if cpp_scan.is_available() else [])
    results = {}
    for impl in impls:
        model.set_scan_impl(impl)
        model.zero_grad()
        logits = model(images)
        logits.logsumexp(-1).sum().backward()
        results[impl] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    ref_logits, ref_grads = results["reference"]
    for impl in impls[1:]:
        logits, grads = results[impl]
        assert torch.allclose(logits, ref_logits, rtol=1e-5, atol=1e-5), impl
        for a, b in zip(grads, ref_grads):
            assert relative_error(a, b) < 1e-4, impl
