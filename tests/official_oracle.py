"""An independent re-statement of the official Vim forward pass, used as a test oracle.

It follows the official dataflow from ``vim-official.md`` (sections 2.4, 3.4, 3.5) rather than vimamba's own
formulation: channel-major (B, E, L) tensors, ``F.conv1d`` with padding 3 truncated to L, the backward branch run on
``xz.flip(-1)`` and flipped back, ``selective_scan_ref`` written with the (B, E, L) / (B, N, L) layouts, the fused
add-norm convention where each block returns (hidden, residual) and the final norm sees residual + hidden. Nothing
here imports vimamba's ops; it reads the model's parameters only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's selective_scan_ref semantics: u, delta, z (b, e, l); A (e, n); B, C (b, n, l); D, bias (e,)."""
    dtype = u.dtype
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, channels, length = u.shape
    x = A.new_zeros((batch, channels, A.shape[1]))
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(length):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D[..., None]
    if z is not None:
        out = out * F.silu(z)
    return out.to(dtype)


def mamba_inner_no_out_proj_ref(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias):
    """One direction of the v2 mixer on channel-major xz (b, 2e, l): returns the gated output (b, e, l)."""
    length = xz.shape[-1]
    channels = xz.shape[1] // 2
    rank = dt_proj_w.shape[1]
    n_state = A.shape[1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv_w, conv_b, padding=conv_w.shape[-1] - 1, groups=channels)[..., :length])
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, channels), x_proj_w)  # ((b l), r + 2n)
    delta = dt_proj_w @ x_dbl[:, :rank].t()  # (e, (b l))
    delta = delta.reshape(channels, -1, length).transpose(0, 1)  # (b, e, l)
    B = x_dbl[:, rank:rank + n_state].reshape(-1, length, n_state).transpose(1, 2)  # (b, n, l)
    C = x_dbl[:, rank + n_state:].reshape(-1, length, n_state).transpose(1, 2)
    return selective_scan_ref(x, delta, A, B, C, D, z=z, delta_bias=dt_bias, delta_softplus=True)


def mixer_forward(mixer, hidden):
    """The v2 bidirectional mixer with flips, /2, shared out_proj (hidden: (b, l, d))."""
    xz = (hidden @ mixer.in_proj.weight.t()).transpose(1, 2)  # (b, 2e, l)
    out = mamba_inner_no_out_proj_ref(
        xz, mixer.conv1d.weight, mixer.conv1d.bias, mixer.x_proj.weight, mixer.dt_proj.weight,
        -torch.exp(mixer.A_log), mixer.D, mixer.dt_proj.bias)
    out_b = mamba_inner_no_out_proj_ref(
        xz.flip(-1), mixer.conv1d_b.weight, mixer.conv1d_b.bias, mixer.x_proj_b.weight, mixer.dt_proj_b.weight,
        -torch.exp(mixer.A_b_log), mixer.D_b, mixer.dt_proj_b.bias)
    return F.linear((out + out_b.flip(-1)).transpose(1, 2) / 2, mixer.out_proj.weight)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def official_forward(model, images):
    """Logits of the released middle-class-token Vim (eval mode: no dropout, no drop path)."""
    eps = model.cfg.norm_eps
    x = model.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (b, m, d)
    batch, m, _ = x.shape
    token_position = m // 2
    x = torch.cat([x[:, :token_position], model.cls_token.expand(batch, -1, -1), x[:, token_position:]], dim=1)
    x = x + model.pos_embed
    residual = None
    hidden = x
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        hidden = mixer_forward(layer.mixer, rms_norm(residual, layer.norm.weight, eps))
    out = rms_norm(residual + hidden, model.norm_f.weight, eps)
    return model.head(out[:, token_position, :])
