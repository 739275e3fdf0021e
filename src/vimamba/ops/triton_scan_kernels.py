"""Triton kernels of the fused bidirectional selective scan (device code; the host side is :mod:`.triton_scan`).

One program owns one batch element and a block of ``BLOCK_E`` channels and runs *both* scan directions of that
block, one after the other, so the gated output ``silu(z) * (y_f + y_b) / 2`` is written once. Inside a direction
the sequence is walked in chunks of ``BLOCK_T`` tokens; a chunk is a register tile ``[BLOCK_T, BLOCK_E, BLOCK_N]``
(tokens x channels x states) scanned in parallel along the token axis with ``tl.associative_scan`` on
(decay, drive) pairs, seeded with the state carried from the previous chunk. The state and all arithmetic are
float32; decays are ``exp2(delta * A * log2(e))``.

Scan order. Position ``s`` of a direction's scan is token ``t = s`` (forward direction) or ``t = L - 1 - s``
(backward direction), so both directions share one code path and neither needs a flipped copy of the sequence::

    delta_s = softplus(dt_t + dt_bias)            a_s = exp(delta_s * A)          b_s = delta_s * B_t * x_t
    h_s     = a_s * h_{s-1} + b_s                  y_t = C_t . h_s + D * x_t

Backward (adjoint, walked from the last chunk to the first, each chunk recomputed from its saved entry state)::

    dh_s  = g_s * C_t + a_{s+1} * dh_{s+1}         g = dL/dy = dout * silu(z) / 2
    a_s * h_{s-1} = h_s - b_s                      (so h_{s-1} is never recovered by dividing by a decay)

Memory contract: the forward saves only the state entering every chunk, ``(batch, 2, n_chunks, E, N)`` float32
(``1 / BLOCK_T`` of the full state); dB and dC, shared by all channels, are reduced over the program's channel block
before they leave the program (``tl.atomic_add`` into float32 buffers, or per-block partial buffers for
deterministic results). Within a program the first direction hands its per-token result to the second through a
float32 ``(batch, L, E)`` workspace, with a barrier in between.

Only ``triton.language`` features present in Triton 3.6 and later are used; every load and store is masked.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # exp(v) == exp2(v * LOG2E)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # softplus(v) == v above it, as in torch.nn.functional.softplus


@triton.jit
def _linear_recurrence(a_first, b_first, a_second, b_second):
    """Compose two affine maps h -> a*h + b, the first applied first (the associative operator of the scan)."""
    return a_first * a_second, b_first * a_second + b_second


@triton.jit
def _softplus(v):
    """softplus(v) = log(1 + exp(v)), v above the threshold passed through, log1p by Kahan's trick (accurate for
    tiny exp(v), where log(1 + u) would round to 0)."""
    u = tl.exp(tl.minimum(v, SOFTPLUS_THRESHOLD))
    w = 1.0 + u
    w_minus_one = tl.where(w == 1.0, 1.0, w - 1.0)
    log1p_u = tl.where(w == 1.0, u, tl.log(w) * (u / w_minus_one))
    return tl.where(v > SOFTPLUS_THRESHOLD, v, log1p_u)


@triton.jit
def _sigmoid(v):
    """1 / (1 + exp(-v)) without overflow for large |v|."""
    e = tl.exp(-tl.abs(v))
    return tl.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _softplus_grad(v):
    """d softplus / dv with the same threshold as :func:`_softplus`."""
    return tl.where(v > SOFTPLUS_THRESHOLD, 1.0, _sigmoid(v))


@triton.jit
def _scan_tokens(chunk, length, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr):
    """Scan positions of a chunk, their token indices and which of them exist (s < L)."""
    s = chunk * BLOCK_T + tl.arange(0, BLOCK_T)
    if REVERSE:
        t = length - 1 - s
    else:
        t = s
    return s, t, s < length


@triton.jit
def _load_delta(dt_ptr, stride_dt_t, t, e, te_ok, bias):
    """delta = softplus(dt + bias) for a [BLOCK_T, BLOCK_E] tile, 0 where the token or channel does not exist.

    Returns (delta, dt + bias)."""
    dt = tl.load(dt_ptr + t[:, None] * stride_dt_t + e[None, :], mask=te_ok, other=0.0).to(tl.float32)
    v = dt + bias[None, :]
    return tl.where(te_ok, _softplus(v), 0.0), v


@triton.jit
def _chunk_states(delta, x, Bt, A2, h_in, BLOCK_T: tl.constexpr):
    """States h_s of one chunk, [BLOCK_T, BLOCK_E, BLOCK_N], from the state entering it (h_in, [BLOCK_E, BLOCK_N]).

    Returns (decay a_s, drive b_s, state h_s)."""
    a = tl.exp2(delta[:, :, None] * A2[None, :, :])
    b = (delta * x)[:, :, None] * Bt[:, None, :]
    first = (tl.arange(0, BLOCK_T) == 0)[:, None, None]
    seeded = tl.where(first, b + a * h_in[None, :, :], b)
    _, h = tl.associative_scan((a, seeded), 0, _linear_recurrence)
    return a, b, h


@triton.jit
def _last_row(tile, BLOCK_T: tl.constexpr):
    """tile[BLOCK_T - 1] of a [BLOCK_T, ...] tile (the state leaving a chunk)."""
    last = (tl.arange(0, BLOCK_T) == BLOCK_T - 1)[:, None, None]
    return tl.sum(tl.where(last, tile, 0.0), axis=0)


@triton.jit
def _first_row(tile, BLOCK_T: tl.constexpr):
    """tile[0] of a [BLOCK_T, ...] tile."""
    first = (tl.arange(0, BLOCK_T) == 0)[:, None, None]
    return tl.sum(tl.where(first, tile, 0.0), axis=0)


@triton.jit
def _forward_direction(
    x_ptr, dt_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, z_ptr, out_ptr, ws_ptr, states_ptr,
    stride_x_t, stride_dt_t, stride_B_t, stride_C_t, stride_z_t, stride_out_t,
    length, n_channels, n_state, n_chunks, pid_e,
    REVERSE: tl.constexpr, WRITE_OUT: tl.constexpr, HAS_Z: tl.constexpr, SAVE_STATES: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One direction of the forward pass for one (batch element, channel block); pointers are already offset to the
    batch element. WRITE_OUT=False: store y into the float32 workspace; True: add the workspace's y of the other
    direction, gate and store the output."""
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok = e < n_channels
    n_ok = n < n_state
    en_ok = e_ok[:, None] & n_ok[None, :]
    A2 = tl.load(A_ptr + e[:, None] * n_state + n[None, :], mask=en_ok, other=0.0).to(tl.float32) * LOG2E
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    state_offsets = e[:, None] * n_state + n[None, :]

    h = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
    for chunk in range(0, n_chunks):
        if SAVE_STATES:  # the state entering this chunk, the backward pass's checkpoint
            tl.store(states_ptr + chunk * n_channels * n_state + state_offsets, h, mask=en_ok)
        s, t, t_ok = _scan_tokens(chunk, length, REVERSE, BLOCK_T)
        te_ok = t_ok[:, None] & e_ok[None, :]
        tn_ok = t_ok[:, None] & n_ok[None, :]
        x = tl.load(x_ptr + t[:, None] * stride_x_t + e[None, :], mask=te_ok, other=0.0).to(tl.float32)
        delta, _ = _load_delta(dt_ptr, stride_dt_t, t, e, te_ok, bias)
        Bt = tl.load(B_ptr + t[:, None] * stride_B_t + n[None, :], mask=tn_ok, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + t[:, None] * stride_C_t + n[None, :], mask=tn_ok, other=0.0).to(tl.float32)

        _, _, hs = _chunk_states(delta, x, Bt, A2, h, BLOCK_T)
        h = _last_row(hs, BLOCK_T)  # positions past the end have decay 1 and drive 0: the state passes through
        y = tl.sum(hs * Ct[:, None, :], axis=2) + D[None, :] * x

        out_offsets = t[:, None] * stride_out_t + e[None, :]
        if WRITE_OUT:
            y = (y + tl.load(ws_ptr + out_offsets, mask=te_ok, other=0.0)) * 0.5
            if HAS_Z:
                zt = tl.load(z_ptr + t[:, None] * stride_z_t + e[None, :], mask=te_ok, other=0.0).to(tl.float32)
                y = y * zt * _sigmoid(zt)
            tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=te_ok)
        else:
            tl.store(ws_ptr + out_offsets, y, mask=te_ok)


@triton.jit
def bidirectional_scan_fwd_kernel(
    x_f_ptr, dt_f_ptr, B_f_ptr, C_f_ptr, A_f_ptr, D_f_ptr, bias_f_ptr,
    x_b_ptr, dt_b_ptr, B_b_ptr, C_b_ptr, A_b_ptr, D_b_ptr, bias_b_ptr,
    z_ptr, out_ptr, ws_ptr, states_ptr,
    stride_x_f_b, stride_x_f_t, stride_dt_f_b, stride_dt_f_t, stride_B_f_b, stride_B_f_t, stride_C_f_b, stride_C_f_t,
    stride_x_b_b, stride_x_b_t, stride_dt_b_b, stride_dt_b_t, stride_B_b_b, stride_B_b_t, stride_C_b_b, stride_C_b_t,
    stride_z_b, stride_z_t, stride_out_b, stride_out_t,
    length, n_channels, n_state, n_chunks,
    HAS_Z: tl.constexpr, SAVE_STATES: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """out = silu(z) * (y_f + y_b) / 2; grid (cdiv(E, BLOCK_E), batch). All (batch, L, E|N) tensors have unit
    stride along their last axis; ``out`` and the float32 workspace ``ws`` share strides."""
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    out_b = out_ptr + pid_b * stride_out_b
    ws_b = ws_ptr + pid_b * stride_out_b
    z_b = z_ptr + pid_b * stride_z_b
    states_f = states_ptr + (pid_b * 2) * n_chunks * n_channels * n_state
    states_b = states_f + n_chunks * n_channels * n_state
    _forward_direction(
        x_f_ptr + pid_b * stride_x_f_b, dt_f_ptr + pid_b * stride_dt_f_b, B_f_ptr + pid_b * stride_B_f_b,
        C_f_ptr + pid_b * stride_C_f_b, A_f_ptr, D_f_ptr, bias_f_ptr, z_b, out_b, ws_b, states_f,
        stride_x_f_t, stride_dt_f_t, stride_B_f_t, stride_C_f_t, stride_z_t, stride_out_t,
        length, n_channels, n_state, n_chunks, pid_e,
        False, False, HAS_Z, SAVE_STATES, BLOCK_T, BLOCK_E, BLOCK_N,
    )
    tl.debug_barrier()  # the workspace written above is read below by other threads of this program
    _forward_direction(
        x_b_ptr + pid_b * stride_x_b_b, dt_b_ptr + pid_b * stride_dt_b_b, B_b_ptr + pid_b * stride_B_b_b,
        C_b_ptr + pid_b * stride_C_b_b, A_b_ptr, D_b_ptr, bias_b_ptr, z_b, out_b, ws_b, states_b,
        stride_x_b_t, stride_dt_b_t, stride_B_b_t, stride_C_b_t, stride_z_t, stride_out_t,
        length, n_channels, n_state, n_chunks, pid_e,
        True, True, HAS_Z, SAVE_STATES, BLOCK_T, BLOCK_E, BLOCK_N,
    )


@triton.jit
def _backward_direction(
    x_ptr, dt_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, z_ptr, dout_ptr, ws_ptr, states_ptr,
    dx_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    stride_x_t, stride_dt_t, stride_B_t, stride_C_t, stride_z_t, stride_dout_t, stride_grad_t, stride_dBC_t,
    length, n_channels, n_state, n_chunks, pid_e,
    REVERSE: tl.constexpr, WRITE_DZ: tl.constexpr, HAS_Z: tl.constexpr, ATOMIC_BC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One direction of the backward pass for one (batch element, channel block), chunks from last to first.

    Per token it stores dx and ddt of this direction; per program it stores its dA, dD, d(dt_bias) partial sums;
    dB, dC are summed over the channel block, then added atomically (ATOMIC_BC) or stored into this block's
    partial buffer. With z, WRITE_DZ=False stores this direction's y into the workspace and WRITE_DZ=True
    combines it with its own y into dz."""
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok = e < n_channels
    n_ok = n < n_state
    en_ok = e_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + e[:, None] * n_state + n[None, :], mask=en_ok, other=0.0).to(tl.float32)
    A2 = A * LOG2E
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    state_offsets = e[:, None] * n_state + n[None, :]

    dh_next = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)  # dh at the first position of the chunk after
    dA = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
    dD = tl.zeros([BLOCK_E], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_E], dtype=tl.float32)
    for i in range(0, n_chunks):
        chunk = n_chunks - 1 - i
        s, t, t_ok = _scan_tokens(chunk, length, REVERSE, BLOCK_T)
        te_ok = t_ok[:, None] & e_ok[None, :]
        tn_ok = t_ok[:, None] & n_ok[None, :]
        x = tl.load(x_ptr + t[:, None] * stride_x_t + e[None, :], mask=te_ok, other=0.0).to(tl.float32)
        delta, v = _load_delta(dt_ptr, stride_dt_t, t, e, te_ok, bias)
        Bt = tl.load(B_ptr + t[:, None] * stride_B_t + n[None, :], mask=tn_ok, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + t[:, None] * stride_C_t + n[None, :], mask=tn_ok, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + t[:, None] * stride_dout_t + e[None, :], mask=te_ok, other=0.0).to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_ptr + t[:, None] * stride_z_t + e[None, :], mask=te_ok, other=0.0).to(tl.float32)
            sig_z = _sigmoid(zt)
            g = dout * zt * sig_z * 0.5
        else:
            g = dout * 0.5

        # Recompute the chunk's states from its checkpoint.
        h_in = tl.load(states_ptr + chunk * n_channels * n_state + state_offsets, mask=en_ok, other=0.0)
        _, b, hs = _chunk_states(delta, x, Bt, A2, h_in, BLOCK_T)

        # Adjoint: reverse scan of (a_{s+1}, g_s C_s), seeded with dh of the chunk after. a_{s+1} is recomputed
        # from a load shifted by one position (the last row's comes from the next chunk's first token).
        s1 = s + 1
        if REVERSE:
            t1 = length - 1 - s1
        else:
            t1 = s1
        t1e_ok = (s1 < length)[:, None] & e_ok[None, :]
        delta_next, _ = _load_delta(dt_ptr, stride_dt_t, t1, e, t1e_ok, bias)
        a_next = tl.exp2(delta_next[:, :, None] * A2[None, :, :])
        last = (tl.arange(0, BLOCK_T) == BLOCK_T - 1)[:, None, None]
        beta = g[:, :, None] * Ct[:, None, :]
        beta = tl.where(last, beta + a_next * dh_next[None, :, :], beta)
        _, dh = tl.associative_scan((a_next, beta), 0, _linear_recurrence, reverse=True)
        dh_next = _first_row(dh, BLOCK_T)

        decayed_prev = hs - b  # a_s * h_{s-1}
        dh_delta = dh * delta[:, :, None]
        dx = tl.sum(dh_delta * Bt[:, None, :], axis=2) + D[None, :] * g
        ddelta = tl.sum(dh * (A[None, :, :] * decayed_prev + x[:, :, None] * Bt[:, None, :]), axis=2)
        ddt = tl.where(te_ok, ddelta * _softplus_grad(v), 0.0)
        dA += tl.sum(dh_delta * decayed_prev, axis=0)
        dD += tl.sum(g * x, axis=0)
        dbias += tl.sum(ddt, axis=0)

        grad_offsets = t[:, None] * stride_grad_t + e[None, :]
        tl.store(dx_ptr + grad_offsets, dx.to(dx_ptr.dtype.element_ty), mask=te_ok)
        tl.store(ddt_ptr + grad_offsets, ddt.to(ddt_ptr.dtype.element_ty), mask=te_ok)

        dB = tl.sum(dh_delta * x[:, :, None], axis=1)  # [BLOCK_T, BLOCK_N], summed over this channel block
        dC = tl.sum(g[:, :, None] * hs, axis=1)
        bc_offsets = t[:, None] * stride_dBC_t + n[None, :]
        if ATOMIC_BC:
            tl.atomic_add(dB_ptr + bc_offsets, dB, mask=tn_ok, sem="relaxed")
            tl.atomic_add(dC_ptr + bc_offsets, dC, mask=tn_ok, sem="relaxed")
        else:
            tl.store(dB_ptr + bc_offsets, dB, mask=tn_ok)
            tl.store(dC_ptr + bc_offsets, dC, mask=tn_ok)

        if HAS_Z:
            y = tl.sum(hs * Ct[:, None, :], axis=2) + D[None, :] * x
            if WRITE_DZ:
                y_sum = y + tl.load(ws_ptr + grad_offsets, mask=te_ok, other=0.0)
                dz = dout * 0.5 * y_sum * sig_z * (1.0 + zt * (1.0 - sig_z))
                tl.store(dz_ptr + grad_offsets, dz.to(dz_ptr.dtype.element_ty), mask=te_ok)
            else:
                tl.store(ws_ptr + grad_offsets, y, mask=te_ok)

    tl.store(dA_ptr + state_offsets, dA, mask=en_ok)
    tl.store(dD_ptr + e, dD, mask=e_ok)
    tl.store(dbias_ptr + e, dbias, mask=e_ok)


@triton.jit
def bidirectional_scan_bwd_kernel(
    x_f_ptr, dt_f_ptr, B_f_ptr, C_f_ptr, A_f_ptr, D_f_ptr, bias_f_ptr,
    x_b_ptr, dt_b_ptr, B_b_ptr, C_b_ptr, A_b_ptr, D_b_ptr, bias_b_ptr,
    z_ptr, dout_ptr, ws_ptr, states_ptr,
    dx_f_ptr, ddt_f_ptr, dB_f_ptr, dC_f_ptr, dA_f_ptr, dD_f_ptr, dbias_f_ptr,
    dx_b_ptr, ddt_b_ptr, dB_b_ptr, dC_b_ptr, dA_b_ptr, dD_b_ptr, dbias_b_ptr,
    dz_ptr,
    stride_x_f_b, stride_x_f_t, stride_dt_f_b, stride_dt_f_t, stride_B_f_b, stride_B_f_t, stride_C_f_b, stride_C_f_t,
    stride_x_b_b, stride_x_b_t, stride_dt_b_b, stride_dt_b_t, stride_B_b_b, stride_B_b_t, stride_C_b_b, stride_C_b_t,
    stride_z_b, stride_z_t, stride_dout_b, stride_dout_t, stride_grad_b, stride_grad_t,
    stride_dBC_block, stride_dBC_b, stride_dBC_t,
    length, n_channels, n_state, n_chunks,
    HAS_Z: tl.constexpr, ATOMIC_BC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Gradients of :func:`bidirectional_scan_fwd_kernel`; grid (cdiv(E, BLOCK_E), batch).

    dx, ddt, dz (and the workspace) are (batch, L, E) with strides (stride_grad_b, stride_grad_t, 1); dB, dC are
    float32 (blocks, batch, L, N) buffers (blocks = 1 and stride_dBC_block = 0 with ATOMIC_BC); dA is a float32
    (batch, E, N) partial buffer and dD, d(dt_bias) (batch, E), summed over the batch by the host."""
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    z_b = z_ptr + pid_b * stride_z_b
    dout_b = dout_ptr + pid_b * stride_dout_b
    ws_b = ws_ptr + pid_b * stride_grad_b
    dz_b = dz_ptr + pid_b * stride_grad_b
    bc_offset = pid_e.to(tl.int64) * stride_dBC_block + pid_b * stride_dBC_b
    states_f = states_ptr + (pid_b * 2) * n_chunks * n_channels * n_state
    states_b = states_f + n_chunks * n_channels * n_state
    en_offset = pid_b * n_channels * n_state
    _backward_direction(
        x_f_ptr + pid_b * stride_x_f_b, dt_f_ptr + pid_b * stride_dt_f_b, B_f_ptr + pid_b * stride_B_f_b,
        C_f_ptr + pid_b * stride_C_f_b, A_f_ptr, D_f_ptr, bias_f_ptr, z_b, dout_b, ws_b, states_f,
        dx_f_ptr + pid_b * stride_grad_b, ddt_f_ptr + pid_b * stride_grad_b, dz_b,
        dB_f_ptr + bc_offset, dC_f_ptr + bc_offset, dA_f_ptr + en_offset,
        dD_f_ptr + pid_b * n_channels, dbias_f_ptr + pid_b * n_channels,
        stride_x_f_t, stride_dt_f_t, stride_B_f_t, stride_C_f_t, stride_z_t, stride_dout_t, stride_grad_t,
        stride_dBC_t, length, n_channels, n_state, n_chunks, pid_e,
        False, False, HAS_Z, ATOMIC_BC, BLOCK_T, BLOCK_E, BLOCK_N,
    )
    tl.debug_barrier()  # the workspace written above is read below by other threads of this program
    _backward_direction(
        x_b_ptr + pid_b * stride_x_b_b, dt_b_ptr + pid_b * stride_dt_b_b, B_b_ptr + pid_b * stride_B_b_b,
        C_b_ptr + pid_b * stride_C_b_b, A_b_ptr, D_b_ptr, bias_b_ptr, z_b, dout_b, ws_b, states_b,
        dx_b_ptr + pid_b * stride_grad_b, ddt_b_ptr + pid_b * stride_grad_b, dz_b,
        dB_b_ptr + bc_offset, dC_b_ptr + bc_offset, dA_b_ptr + en_offset,
        dD_b_ptr + pid_b * n_channels, dbias_b_ptr + pid_b * n_channels,
        stride_x_b_t, stride_dt_b_t, stride_B_b_t, stride_C_b_t, stride_z_t, stride_dout_t, stride_grad_t,
        stride_dBC_t, length, n_channels, n_state, n_chunks, pid_e,
        True, True, HAS_Z, ATOMIC_BC, BLOCK_T, BLOCK_E, BLOCK_N,
    )
