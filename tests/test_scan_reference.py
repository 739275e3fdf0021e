"""The reference selective scan and the depthwise convolutions against closed forms written independently."""
import inspect

import pytest
import torch
import torch.nn.functional as F

from vimamba.ops import bidirectional_scan_reference, bidirectional_selective_scan, depthwise_conv1d
from vimamba.ops import selective_scan_reference


def closed_form_scan(u, delta, A, B, C, D, reverse):
    """y_t = sum_{s before or at t} C_t . (prod_{r strictly between s and t, and t} exp(delta_r A)) delta_s B_s u_s + D u_t.

    Brute force, float64, O(L^2): the unrolled recurrence with h = 0 before the first token of the direction.
    """
    batch, length, channels = u.shape
    y = torch.zeros(batch, length, channels, dtype=torch.float64)
    for t in range(length):
        sources = range(t + 1) if not reverse else range(t, length)
        for s in sources:
            between = range(s + 1, t + 1) if not reverse else range(t, s)
            decay = torch.ones(batch, channels, A.shape[1], dtype=torch.float64)
            for r in between:
                decay = decay * torch.exp(delta[:, r, :, None] * A)
            drive = delta[:, s, :, None] * B[:, s, None, :] * u[:, s, :, None]
            y[:, t] += (C[:, t, None, :] * decay * drive).sum(-1)
    return y + u * D


def random_inputs(batch=2, length=6, channels=3, n_state=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(batch, length, channels, generator=g, dtype=dtype)
    delta = torch.rand(batch, length, channels, generator=g, dtype=dtype)
    A = -torch.rand(channels, n_state, generator=g, dtype=dtype) * 2
    B = torch.randn(batch, length, n_state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, n_state, generator=g, dtype=dtype)
    D = torch.randn(channels, generator=g, dtype=dtype)
    return u, delta, A, B, C, D


@pytest.mark.parametrize("reverse", [False, True])
def test_reference_scan_equals_closed_form(reverse):
    u, delta, A, B, C, D = random_inputs()
    expected = closed_form_scan(u, delta, A, B, C, D, reverse)
    got = selective_scan_reference(u, delta, A, B, C, D, reverse=reverse)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_reverse_scan_is_the_flipped_forward_scan():
    u, delta, A, B, C, D = random_inputs(length=9)
    flip = lambda t: t.flip(1)
    expected = flip(selective_scan_reference(flip(u), flip(delta), A, flip(B), flip(C), D))
    torch.testing.assert_close(selective_scan_reference(u, delta, A, B, C, D, reverse=True), expected)


def test_bias_softplus_and_gate():
    u, delta, A, B, C, D = random_inputs()
    bias = torch.randn(u.shape[-1], dtype=torch.float64)
    z = torch.randn_like(u)
    got = selective_scan_reference(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    expected = closed_form_scan(u, F.softplus(delta + bias), A, B, C, D, False) * z * torch.sigmoid(z)
    torch.testing.assert_close(got, expected)


def test_float32_inputs_give_float32_and_low_precision_is_cast_back():
    u, delta, A, B, C, D = random_inputs(dtype=torch.float32)
    assert selective_scan_reference(u, delta, A, B, C, D).dtype == torch.float32
    out = selective_scan_reference(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D)
    assert out.dtype == torch.bfloat16


def test_bidirectional_reference_combines_both_directions():
    u, delta, A, B, C, D = random_inputs()
    u2, delta2, A2, B2, C2, D2 = (t.flip(0) if t.dim() == 3 else t * 0.5 for t in random_inputs())
    bias, bias2 = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    z = torch.randn_like(u)
    got = bidirectional_scan_reference(u, u2, delta, delta2, B, B2, C, C2, A, A2, D, D2, bias, bias2, z)
    y_f = closed_form_scan(u, F.softplus(delta + bias), A, B, C, D, False)
    y_b = closed_form_scan(u2, F.softplus(delta2 + bias2), A2, B2, C2, D2, True)
    torch.testing.assert_close(got, (y_f + y_b) / 2 * F.silu(z))
    # the dispatching entry point with impl="reference" is the same function
    via_entry = bidirectional_selective_scan(u, u2, delta, delta2, B, B2, C, C2, A, A2, D, D2, bias, bias2, z,
                                             impl="reference")
    torch.testing.assert_close(via_entry, got, rtol=0, atol=0)


def test_scan_inputs_bind_by_position_or_by_name():
    u, delta, A, B, C, D = random_inputs()
    positional = (u, u.flip(1), delta, delta.flip(1), B, B.flip(1), C, C.flip(1), A, A * 0.5, D, D, D, -D, u)
    names = ["x_f", "x_b", "dt_f", "dt_b", "B_f", "B_b", "C_f", "C_b", "A_f", "A_b", "D_f", "D_b", "dt_bias_f",
             "dt_bias_b", "z"]
    by_name = dict(zip(names, positional))
    expected = bidirectional_scan_reference(*positional)
    torch.testing.assert_close(bidirectional_scan_reference(**by_name), expected, rtol=0, atol=0)
    torch.testing.assert_close(bidirectional_selective_scan(*positional[:4], **dict(list(by_name.items())[4:]),
                                                            impl="reference"), expected, rtol=0, atol=0)
    assert list(inspect.signature(bidirectional_selective_scan).parameters) == names + ["impl"]
    with pytest.raises(TypeError, match="dt_bias_b"):
        bidirectional_scan_reference(*positional[:13])


def test_unknown_impl_is_a_clear_error(monkeypatch):
    u, delta, A, B, C, D = random_inputs()
    args = (u, u, delta, delta, B, B, C, C, A, A, D, D, D, D)
    with pytest.raises(ValueError, match="unknown selective-scan implementation 'fastest'"):
        bidirectional_selective_scan(*args, impl="fastest")
    monkeypatch.setenv("VIMAMBA_SCAN_IMPL", "bogus")
    with pytest.raises(ValueError, match="VIMAMBA_SCAN_IMPL"):
        bidirectional_selective_scan(*args)


def test_no_overflow_for_large_negative_decay():
    u, delta, A, B, C, D = random_inputs(length=50, dtype=torch.float32)
    out = selective_scan_reference(u, delta * 100, A * 100, B, C, D)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("reverse", [False, True])
def test_depthwise_conv_matches_conv1d(reverse):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)  # (batch, L, E)
    w = torch.randn(5, 1, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    channel_major = x.transpose(1, 2)
    if reverse:  # the official backward branch: causal conv of the flipped sequence, flipped back
        channel_major = channel_major.flip(-1)
    expected = F.conv1d(channel_major, w, b, padding=3, groups=5)[..., :7]
    if reverse:
        expected = expected.flip(-1)
    torch.testing.assert_close(depthwise_conv1d(x, w, b, reverse=reverse), expected.transpose(1, 2))
