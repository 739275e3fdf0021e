"""Triton kernels of the fused bidirectional selective scan (device code; the host side is :mod:`.triton_scan`).

Design (see docs/kernels.md for the reasoning and the compile report):

* **Register tile [ITEMS, BLOCK_E, BLOCK_N]** (tokens x channels x states). The token axis lives inside each thread
  (the scan along it is a register loop: no lane shuffles, and ``reverse=True`` costs nothing); the state axis is
  split as 4 states per thread x 4 lanes, and channels go over the remaining 8 lanes and the warps. So the output
  ``y = sum_n C h`` is accumulated in registers (4 states) plus two shuffle rounds per token, and every other
  operation is a register FMA. The layout is anchored by the loads of ``A`` ([E, N], 4 floats per thread) and of
  ``B``/``C``, loaded as [ITEMS, E, N/4, 4] so each thread reads 4 consecutive states (vector loads).
* **Sequence split into segments** for parallelism: a program owns (segment, channel block, sequence). One segment
  per sequence when batch x channel blocks fill the GPU; otherwise (batch 1 at 1248 px) a summary pass computes
  each segment's end state from zero, a carry pass chains them (a short loop over segments per (channel, state)),
  and the main pass starts every segment from its true entering state.
* **Both directions in one program**, over the same tokens: the forward direction walks the segment ascending and
  writes its y into the output buffer (in the output dtype), the backward direction walks it descending, adds,
  gates with silu(z)/2 and writes the result: the output is written once more, and no float32 workspace exists.
* Loads of the next tile are issued before the current tile's math (the loop carries the prefetched x and dt).
* The state and all arithmetic are float32; decays are ``exp2(delta * A * log2(e))``; softplus(dt + dt_bias) is
  computed in-kernel (delta never goes to memory).

Scan order: position ``s`` of the forward direction is token ``s``; the backward direction walks tokens downward.
Checkpoints for the backward pass are token-aligned: ``states[b, 0, c]`` is the forward direction's state entering
token ``c * CK``, ``states[b, 1, c]`` the backward direction's state entering token ``c * CK + CK - 1`` from above.

Backward (adjoint): ``dh_s = g_s C_s + a_{s+1} dh_{s+1}``. The decay of the *next* position is folded into the
scan's operator instead of being loaded shifted and exponentiated again: each position is the map
``(dh', a') -> (gC_s + a' dh', a_s)``, and compositions of such maps are triples ``(K, P, alpha)``
(:func:`_adjoint_combine`). Per checkpoint chunk the states are recomputed twice (a forward walk that records the
entry state of every tile in a small per-program scratch, then the backward walk), so the backward spends two exps
per element. ``a_s h_{s-1} = h_s - b_s``: no division by a decay, ever. dB and dC (shared by all channels) are
reduced over the program's channels and accumulated, in a fixed order, into one float32 partial per channel group
(no atomics: bitwise deterministic always; extra memory = groups x (batch, L, N), independent of the block count).

Only ``triton.language`` features present in Triton 3.6 and later are used; every load and store is masked.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # exp(v) == exp2(v * LOG2E)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # softplus(v) == v above it, as in torch.nn.functional.softplus
STATES_PER_THREAD = tl.constexpr(4)  # the state axis is loaded as [N / 4, 4]: 4 consecutive states per thread


@triton.jit
def _affine(a_first, b_first, a_second, b_second):
    """Compose two affine maps h -> a*h + b, the first applied first (the forward scan's operator)."""
    return a_first * a_second, b_first * a_second + b_second


@triton.jit
def _adjoint_combine(k_right, p_right, alpha_right, k_left, p_left, alpha_left):
    """Compose adjoint maps f(dh', a') = (K + P a' dh', alpha) of a later (right) and an earlier (left) span, the
    right one applied first: the reverse scan's operator. A single position s is (g_s C_s, 1, a_s)."""
    return k_left + p_left * alpha_right * k_right, p_left * alpha_right * p_right, alpha_left


@triton.jit
def _softplus(v):
    """softplus(v) = log(1 + exp(v)), v above the threshold passed through, log1p by Kahan's trick."""
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
def _row(tile, index, ITEMS: tl.constexpr):
    """tile[index] of an [ITEMS, ...] tile whose first axis is inside each thread (a register pick: -0.0 is the
    identity of float addition, so the masked sum folds away)."""
    rows = tl.arange(0, ITEMS)[:, None, None]
    return tl.sum(tl.where(rows == index, tile, -0.0), axis=0)


@triton.jit
def _tile_tokens(first, pos, REVERSE: tl.constexpr, ITEMS: tl.constexpr):
    """Tokens of the tile at walk position ``pos``: ascending from ``first`` or, REVERSE, descending from it."""
    j = tl.arange(0, ITEMS)
    if REVERSE:
        return first - pos - j
    return first + pos + j


@triton.jit
def _load_te(ptr, stride_t, t, e, te_ok):
    """[ITEMS, BLOCK_E] tile of a (L, E) sequence, float32, 0 outside."""
    return tl.load(ptr + t[:, None] * stride_t + e[None, :], mask=te_ok, other=0.0).to(tl.float32)


@triton.jit
def _load_tn(ptr, stride_t, t, t_ok, n_state, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """[ITEMS, BLOCK_E, BLOCK_N] broadcast of a (L, N) sequence (B or C), float32, 0 outside. Loaded as
    [ITEMS, BLOCK_E, N/4, 4] so that each thread reads 4 consecutive states with one vector load."""
    g = tl.arange(0, BLOCK_N // STATES_PER_THREAD)
    v = tl.arange(0, STATES_PER_THREAD)
    n = g[:, None] * STATES_PER_THREAD + v[None, :]
    zero_e = tl.zeros([BLOCK_E], dtype=tl.int32)
    offsets = t[:, None, None, None] * stride_t + zero_e[None, :, None, None] + n[None, None, :, :]
    mask = t_ok[:, None, None, None] & (n < n_state)[None, None, :, :] & (zero_e == 0)[None, :, None, None]
    tile = tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return tl.reshape(tile, [t.shape[0], BLOCK_E, BLOCK_N])


@triton.jit
def _delta(dt, bias, te_ok):
    """(delta, dt + bias) with delta = softplus(dt + bias), 0 where the token or channel does not exist."""
    v = dt + bias[None, :]
    return tl.where(te_ok, _softplus(v), 0.0), v


@triton.jit
def _params(A_ptr, D_ptr, bias_ptr, e, n, e_ok, n_state):
    en_ok = e_ok[:, None] & (n < n_state)[None, :]
    A = tl.load(A_ptr + e[:, None] * n_state + n[None, :], mask=en_ok, other=0.0).to(tl.float32)
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    return A, D, bias, en_ok


@triton.jit
def _tile_states(delta, x, Bt, A2, h_in, ITEMS: tl.constexpr):
    """States of a tile from the state entering it: returns (a, b, h), each [ITEMS, BLOCK_E, BLOCK_N]."""
    a = tl.exp2(delta[:, :, None] * A2[None, :, :])
    b = (delta * x)[:, :, None] * Bt
    first = (tl.arange(0, ITEMS) == 0)[:, None, None]
    _, h = tl.associative_scan((a, tl.where(first, b + a * h_in[None, :, :], b)), 0, _affine)
    return a, b, h


# ---------------------------------------------------------------------------------------------------------------
# Forward

@triton.jit
def _load_ne(ptr, stride_t, t, t_ok, n_state, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
             ROW_SCALARS: tl.constexpr):
    """[BLOCK_N, BLOCK_E] broadcast of row t of a (L, N) sequence (B or C): every thread holds the N values.

    ROW_SCALARS (the compiled kernels): N scalar loads from one row address (the same for every lane), placed by
    ``where`` - the state axis is inside the thread, so each ``where`` is a register move once compiled, and the
    loads use immediate offsets. Otherwise one tile load (Triton's interpreter, where each op costs the same)."""
    n = tl.arange(0, BLOCK_N)[:, None]
    row = ptr + t * stride_t
    if ROW_SCALARS:
        tile = tl.zeros([BLOCK_N, BLOCK_E], dtype=tl.float32)
        for i in tl.static_range(BLOCK_N):
            value = tl.load(row + i, mask=t_ok & (i < n_state), other=0.0).to(tl.float32)
            tile = tl.where(n == i, value, tile)
    else:
        zero_e = tl.zeros([BLOCK_E], dtype=tl.int32)[None, :]
        tile = tl.load(row + n + zero_e, mask=(n < n_state) & t_ok & (zero_e == 0), other=0.0).to(tl.float32)
    return tile


@triton.jit
def _load_ne_rows(ptr, e, e_ok, n_state, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    """[BLOCK_N, BLOCK_E] float32 tile of an (E, N) array (A, a state), built from one [BLOCK_E] load per state.
    A 2D load would let the compiler choose the tile's layout (Triton 3.6 then lays N over the lanes); this way the
    tile gets the default layout, channels over the lanes and the N states inside each thread."""
    n = tl.arange(0, BLOCK_N)[:, None]
    tile = tl.zeros([BLOCK_N, BLOCK_E], dtype=tl.float32)
    for i in tl.static_range(BLOCK_N):
        row = tl.load(ptr + e * n_state + i, mask=e_ok & (i < n_state), other=0.0).to(tl.float32)
        tile = tl.where(n == i, row[None, :], tile)
    return tile


@triton.jit
def _store_ne_rows(ptr, tile, e, mask, n_state, BLOCK_N: tl.constexpr):
    """Store a [BLOCK_N, BLOCK_E] tile into an (E, N) float32 array, one [BLOCK_E] store per state."""
    n = tl.arange(0, BLOCK_N)[:, None]
    for i in tl.static_range(BLOCK_N):
        row = tl.sum(tl.where(n == i, tile, -0.0), axis=0)
        tl.store(ptr + e * n_state + i, row, mask=mask & (i < n_state))


@triton.jit
def _forward_direction(
    x_ptr, dt_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, z_ptr, out_ptr, states_ptr, carry_ptr, end_ptr, dsum_ptr,
    stride_x_t, stride_dt_t, stride_B_t, stride_C_t, stride_z_t, stride_out_t,
    length, n_channels, n_state, n_chunks, seg_first, seg_len, pid_e,
    REVERSE: tl.constexpr, COMBINE: tl.constexpr, HAS_Z: tl.constexpr, SAVE_STATES: tl.constexpr,
    SEEDED: tl.constexpr, SUMMARY: tl.constexpr,
    CK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ROW_SCALARS: tl.constexpr,
):
    """One direction over one segment for one (sequence, channel block); pointers are offset to the sequence
    (states/carry/end/dsum also to the direction and, for carry/end/dsum, the segment).

    Register layout: a thread owns one channel and its N states ([BLOCK_N, BLOCK_E] tiles, channels over the lanes
    and warps), and walks the tokens one by one: h = a h + b and y += C h are register FMAs, y needs no reduction
    across threads, softplus is computed once per (token, channel), and nothing is exchanged between threads.
    The next token's x and dt (the streams from HBM) are loaded before the current token's math; B and C rows
    are shared by all channel blocks of a sequence (L1/L2 hits) and loaded where they are used.

    SUMMARY: only the state leaving the segment from a zero start and the sum of delta (for the carry pass).
    Otherwise y of every token: COMBINE=False stores y into ``out``; True adds what is there, gates and stores."""
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok = e < n_channels
    A2 = _load_ne_rows(A_ptr, e, e_ok, n_state, BLOCK_N, BLOCK_E) * LOG2E
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    if SEEDED:
        h = _load_ne_rows(carry_ptr, e, e_ok, n_state, BLOCK_N, BLOCK_E)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_E], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_E], dtype=tl.float32)

    t = seg_first
    t_ok = (t >= 0) & (t < length)
    x_next = tl.load(x_ptr + t * stride_x_t + e, mask=e_ok & t_ok, other=0.0)
    dt_next = tl.load(dt_ptr + t * stride_dt_t + e, mask=e_ok & t_ok, other=0.0)
    for pos in range(0, seg_len):
        if REVERSE:
            t = seg_first - pos
        else:
            t = seg_first + pos
        if SAVE_STATES:
            if pos % CK == 0:  # the state entering this checkpoint chunk
                chunk = t // CK
                _store_ne_rows(states_ptr + chunk * n_channels * n_state, h, e, e_ok & (chunk < n_chunks), n_state,
                               BLOCK_N)
        t_ok = (t >= 0) & (t < length)
        te_ok = e_ok & t_ok
        x = x_next.to(tl.float32)
        dt = dt_next.to(tl.float32)
        # prefetch the next token's x and dt before this token's math
        if REVERSE:
            t_n = t - 1
        else:
            t_n = t + 1
        tn_ok = (t_n >= 0) & (t_n < length) & (pos + 1 < seg_len)
        x_next = tl.load(x_ptr + t_n * stride_x_t + e, mask=e_ok & tn_ok, other=0.0)
        dt_next = tl.load(dt_ptr + t_n * stride_dt_t + e, mask=e_ok & tn_ok, other=0.0)
        Bt = _load_ne(B_ptr, stride_B_t, t, t_ok, n_state, BLOCK_N, BLOCK_E, ROW_SCALARS)

        delta = tl.where(te_ok, _softplus(dt + bias), 0.0)  # 0 past the end: decay 1, drive 0
        h = tl.exp2(A2 * delta[None, :]) * h + Bt * (delta * x)[None, :]
        if SUMMARY:
            dsum += delta
        else:
            Ct = _load_ne(C_ptr, stride_C_t, t, t_ok, n_state, BLOCK_N, BLOCK_E, ROW_SCALARS)
            y = tl.sum(h * Ct, axis=0) + D * x
            if COMBINE:
                y = (y + tl.load(out_ptr + t * stride_out_t + e, mask=te_ok, other=0.0).to(tl.float32)) * 0.5
                if HAS_Z:
                    zt = tl.load(z_ptr + t * stride_z_t + e, mask=te_ok, other=0.0).to(tl.float32)
                    y = y * zt * _sigmoid(zt)
            tl.store(out_ptr + t * stride_out_t + e, y.to(out_ptr.dtype.element_ty), mask=te_ok)
    if SUMMARY:
        _store_ne_rows(end_ptr, h, e, e_ok, n_state, BLOCK_N)
        tl.store(dsum_ptr + e, dsum, mask=e_ok)


@triton.jit
def bidirectional_scan_fwd_kernel(
    x_f_ptr, dt_f_ptr, B_f_ptr, C_f_ptr, A_f_ptr, D_f_ptr, bias_f_ptr,
    x_b_ptr, dt_b_ptr, B_b_ptr, C_b_ptr, A_b_ptr, D_b_ptr, bias_b_ptr,
    z_ptr, out_ptr, states_ptr, carry_ptr, end_ptr, dsum_ptr,
    stride_x_f_b, stride_x_f_t, stride_dt_f_b, stride_dt_f_t, stride_B_f_b, stride_B_f_t, stride_C_f_b, stride_C_f_t,
    stride_x_b_b, stride_x_b_t, stride_dt_b_b, stride_dt_b_t, stride_B_b_b, stride_B_b_t, stride_C_b_b, stride_C_b_t,
    stride_z_b, stride_z_t, stride_out_b, stride_out_t,
    length, n_channels, n_state, n_chunks, n_segments, seg_len,
    HAS_Z: tl.constexpr, SAVE_STATES: tl.constexpr, SEEDED: tl.constexpr, SUMMARY: tl.constexpr,
    CK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ROW_SCALARS: tl.constexpr = True,
):
    """out = silu(z) * (y_f + y_b) / 2 (or, SUMMARY, the segments' end states); grid (segments, E blocks, batch).

    ``states``: (batch, 2, n_chunks, E, N) float32 checkpoints (SAVE_STATES); ``carry``/``end``: (batch, 2,
    segments, E, N) float32 states entering / leaving (from zero) each segment; ``dsum``: (batch, 2, segments, E)
    float32 sums of delta. ``seg_len`` is a multiple of CK."""
    pid_s = tl.program_id(0)
    pid_e = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    first = pid_s * seg_len
    states_f = states_ptr + (pid_b * 2) * n_chunks * n_channels * n_state
    states_b = states_f + n_chunks * n_channels * n_state
    seg_f = ((pid_b * 2) * n_segments + pid_s) * n_channels
    seg_b = ((pid_b * 2 + 1) * n_segments + pid_s) * n_channels
    out_b = out_ptr + pid_b * stride_out_b
    z_b = z_ptr + pid_b * stride_z_b
    _forward_direction(
        x_f_ptr + pid_b * stride_x_f_b, dt_f_ptr + pid_b * stride_dt_f_b, B_f_ptr + pid_b * stride_B_f_b,
        C_f_ptr + pid_b * stride_C_f_b, A_f_ptr, D_f_ptr, bias_f_ptr, z_b, out_b, states_f,
        carry_ptr + seg_f * n_state, end_ptr + seg_f * n_state, dsum_ptr + seg_f,
        stride_x_f_t, stride_dt_f_t, stride_B_f_t, stride_C_f_t, stride_z_t, stride_out_t,
        length, n_channels, n_state, n_chunks, first, seg_len, pid_e,
        False, False, HAS_Z, SAVE_STATES, SEEDED, SUMMARY, CK, BLOCK_E, BLOCK_N, ROW_SCALARS,
    )
    if not SUMMARY:
        tl.debug_barrier()  # the backward direction reads what the forward direction stored into out
    _forward_direction(
        x_b_ptr + pid_b * stride_x_b_b, dt_b_ptr + pid_b * stride_dt_b_b, B_b_ptr + pid_b * stride_B_b_b,
        C_b_ptr + pid_b * stride_C_b_b, A_b_ptr, D_b_ptr, bias_b_ptr, z_b, out_b, states_b,
        carry_ptr + seg_b * n_state, end_ptr + seg_b * n_state, dsum_ptr + seg_b,
        stride_x_b_t, stride_dt_b_t, stride_B_b_t, stride_C_b_t, stride_z_t, stride_out_t,
        length, n_channels, n_state, n_chunks, first + seg_len - 1, seg_len, pid_e,
        True, True, HAS_Z, SAVE_STATES, SEEDED, SUMMARY, CK, BLOCK_E, BLOCK_N, ROW_SCALARS,
    )


@triton.jit
def segment_carry_kernel(
    A_f_ptr, A_b_ptr, end_ptr, dsum_ptr, carry_ptr,
    n_channels, n_state, n_segments,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Chain the segments: grid (E blocks, batch, 2 directions). With end_k the state leaving segment k from a
    zero start and decay_k = exp(A * dsum_k) its total decay, the state entering the next segment in walk order
    is decay_k * carry_k + end_k. The forward direction walks segments upward, the backward one downward."""
    pid_e = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    direction = tl.program_id(2)
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok = e < n_channels
    en_ok = e_ok[:, None] & (n < n_state)[None, :]
    en_offsets = e[:, None] * n_state + n[None, :]
    A_f = tl.load(A_f_ptr + en_offsets, mask=en_ok, other=0.0).to(tl.float32)
    A_b = tl.load(A_b_ptr + en_offsets, mask=en_ok, other=0.0).to(tl.float32)
    A2 = tl.where(direction == 1, A_b, A_f) * LOG2E
    base = (pid_b * 2 + direction) * n_segments
    h = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
    for i in range(0, n_segments):
        k = tl.where(direction == 0, i, n_segments - 1 - i)
        seg = (base + k) * n_channels
        tl.store(carry_ptr + seg * n_state + en_offsets, h, mask=en_ok)
        dsum = tl.load(dsum_ptr + seg + e, mask=e_ok, other=0.0)
        end = tl.load(end_ptr + seg * n_state + en_offsets, mask=en_ok, other=0.0)
        h = tl.exp2(dsum[:, None] * A2) * h + end


# ---------------------------------------------------------------------------------------------------------------
# Backward

@triton.jit
def _backward_direction(
    x_ptr, dt_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, z_ptr, dout_ptr, states_ptr, scratch_ptr,
    dx_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    stride_x_t, stride_dt_t, stride_B_t, stride_C_t, stride_z_t, stride_dout_t, stride_grad_t, stride_dBC_t,
    length, n_channels, n_state, n_chunks, pid_e, first_block,
    REVERSE: tl.constexpr, WRITE_DZ: tl.constexpr, HAS_Z: tl.constexpr,
    CK: tl.constexpr, ITEMS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One direction of the backward pass for one (sequence, channel block), checkpoint chunks against the walk.

    Per chunk: a forward walk from the saved entry state records every tile's entry state in ``scratch``; then
    the tiles are visited backwards, their states recomputed, and the adjoint scanned. Stores dx, ddt of this
    direction per token; accumulates dB, dC into this channel group's partial (``first_block``: store instead of
    add); returns nothing, dA, dD, d(dt_bias) are stored per (sequence, channel). With z, WRITE_DZ=False stores
    this direction's y into dz, WRITE_DZ=True adds its own y and turns the sum into dz."""
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok = e < n_channels
    A, D, bias, en_ok = _params(A_ptr, D_ptr, bias_ptr, e, n, e_ok, n_state)
    A2 = A * LOG2E
    en_offsets = e[:, None] * n_state + n[None, :]
    scratch_offsets = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]
    tile_size = BLOCK_E * BLOCK_N
    n_tiles = CK // ITEMS
    n_ok = n < n_state

    q = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)  # a * dh at the position after this tile (walk order)
    dA = tl.zeros([BLOCK_E, BLOCK_N], dtype=tl.float32)
    dD = tl.zeros([BLOCK_E], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_E], dtype=tl.float32)
    for i in range(0, n_chunks):
        # walk order: the forward direction's last chunk first; the backward direction's first chunk first
        if REVERSE:
            chunk = i
            first = chunk * CK + CK - 1
        else:
            chunk = n_chunks - 1 - i
            first = chunk * CK
        h = tl.load(states_ptr + chunk * n_channels * n_state + en_offsets, mask=en_ok, other=0.0)
        for j in range(0, n_tiles):
            tl.store(scratch_ptr + j * tile_size + scratch_offsets, h)
            t = _tile_tokens(first, j * ITEMS, REVERSE, ITEMS)
            t_ok = (t >= 0) & (t < length)
            te_ok = t_ok[:, None] & e_ok[None, :]
            x = _load_te(x_ptr, stride_x_t, t, e, te_ok)
            delta, _ = _delta(_load_te(dt_ptr, stride_dt_t, t, e, te_ok), bias, te_ok)
            Bt = _load_tn(B_ptr, stride_B_t, t, t_ok, n_state, BLOCK_E, BLOCK_N)
            _, _, hs = _tile_states(delta, x, Bt, A2, h, ITEMS)
            h = _row(hs, ITEMS - 1, ITEMS)
        tl.debug_barrier()
        for jj in range(0, n_tiles):
            j = n_tiles - 1 - jj
            h_in = tl.load(scratch_ptr + j * tile_size + scratch_offsets)
            t = _tile_tokens(first, j * ITEMS, REVERSE, ITEMS)
            t_ok = (t >= 0) & (t < length)
            te_ok = t_ok[:, None] & e_ok[None, :]
            tn_ok = t_ok[:, None] & n_ok[None, :]
            x = _load_te(x_ptr, stride_x_t, t, e, te_ok)
            delta, v = _delta(_load_te(dt_ptr, stride_dt_t, t, e, te_ok), bias, te_ok)
            Bt = _load_tn(B_ptr, stride_B_t, t, t_ok, n_state, BLOCK_E, BLOCK_N)
            Ct = _load_tn(C_ptr, stride_C_t, t, t_ok, n_state, BLOCK_E, BLOCK_N)
            dout = _load_te(dout_ptr, stride_dout_t, t, e, te_ok)
            if HAS_Z:
                zt = _load_te(z_ptr, stride_z_t, t, e, te_ok)
                sig_z = _sigmoid(zt)
                g = dout * zt * sig_z * 0.5
            else:
                g = dout * 0.5
            a, b, hs = _tile_states(delta, x, Bt, A2, h_in, ITEMS)

            # adjoint: dh_s = g_s C_s + a_{s+1} dh_{s+1}; the last row takes q = a dh of the tile after
            last = (tl.arange(0, ITEMS) == ITEMS - 1)[:, None, None]
            gC = g[:, :, None] * Ct
            k = tl.where(last, gC + q[None, :, :], gC)
            ones = tl.full(a.shape, 1.0, tl.float32)
            dh, _, _ = tl.associative_scan((k, ones, a), 0, _adjoint_combine, reverse=True)
            q = _row(a * dh, 0, ITEMS)

            decayed_prev = hs - b  # a_s * h_{s-1}
            dh_delta = dh * delta[:, :, None]
            dx = tl.sum(dh_delta * Bt, axis=2) + D[None, :] * g
            ddelta = tl.sum(dh * (A[None, :, :] * decayed_prev + x[:, :, None] * Bt), axis=2)
            ddt = tl.where(te_ok, ddelta * _softplus_grad(v), 0.0)
            dA += tl.sum(dh_delta * decayed_prev, axis=0)
            dD += tl.sum(g * x, axis=0)
            dbias += tl.sum(ddt, axis=0)
            grad_offsets = t[:, None] * stride_grad_t + e[None, :]
            tl.store(dx_ptr + grad_offsets, dx.to(dx_ptr.dtype.element_ty), mask=te_ok)
            tl.store(ddt_ptr + grad_offsets, ddt.to(ddt_ptr.dtype.element_ty), mask=te_ok)

            dB = tl.sum(dh_delta * x[:, :, None], axis=1)  # [ITEMS, BLOCK_N], summed over this channel block
            dC = tl.sum(g[:, :, None] * hs, axis=1)
            bc_offsets = t[:, None] * stride_dBC_t + n[None, :]
            if not first_block:
                dB += tl.load(dB_ptr + bc_offsets, mask=tn_ok, other=0.0)
                dC += tl.load(dC_ptr + bc_offsets, mask=tn_ok, other=0.0)
            tl.store(dB_ptr + bc_offsets, dB, mask=tn_ok)
            tl.store(dC_ptr + bc_offsets, dC, mask=tn_ok)

            if HAS_Z:
                y = tl.sum(hs * Ct, axis=2) + D[None, :] * x
                if WRITE_DZ:
                    y_sum = y + tl.load(dz_ptr + grad_offsets, mask=te_ok, other=0.0).to(tl.float32)
                    dz = dout * 0.5 * y_sum * sig_z * (1.0 + zt * (1.0 - sig_z))
                    tl.store(dz_ptr + grad_offsets, dz.to(dz_ptr.dtype.element_ty), mask=te_ok)
                else:
                    tl.store(dz_ptr + grad_offsets, y.to(dz_ptr.dtype.element_ty), mask=te_ok)
        tl.debug_barrier()  # scratch is rewritten by the next chunk

    tl.store(dA_ptr + en_offsets, dA, mask=en_ok)
    tl.store(dD_ptr + e, dD, mask=e_ok)
    tl.store(dbias_ptr + e, dbias, mask=e_ok)


@triton.jit
def bidirectional_scan_bwd_kernel(
    x_f_ptr, dt_f_ptr, B_f_ptr, C_f_ptr, A_f_ptr, D_f_ptr, bias_f_ptr,
    x_b_ptr, dt_b_ptr, B_b_ptr, C_b_ptr, A_b_ptr, D_b_ptr, bias_b_ptr,
    z_ptr, dout_ptr, states_ptr, scratch_ptr,
    dx_f_ptr, ddt_f_ptr, dB_f_ptr, dC_f_ptr, dA_f_ptr, dD_f_ptr, dbias_f_ptr,
    dx_b_ptr, ddt_b_ptr, dB_b_ptr, dC_b_ptr, dA_b_ptr, dD_b_ptr, dbias_b_ptr,
    dz_ptr,
    stride_x_f_b, stride_x_f_t, stride_dt_f_b, stride_dt_f_t, stride_B_f_b, stride_B_f_t, stride_C_f_b, stride_C_f_t,
    stride_x_b_b, stride_x_b_t, stride_dt_b_b, stride_dt_b_t, stride_B_b_b, stride_B_b_t, stride_C_b_b, stride_C_b_t,
    stride_z_b, stride_z_t, stride_dout_b, stride_dout_t, stride_grad_b, stride_grad_t,
    stride_dBC_group, stride_dBC_b, stride_dBC_t,
    length, n_channels, n_state, n_chunks, blocks_per_group,
    HAS_Z: tl.constexpr,
    CK: tl.constexpr, ITEMS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Gradients of :func:`bidirectional_scan_fwd_kernel`; grid (channel groups, batch). A program walks the
    channel blocks of its group in order (so its dB/dC partial is summed in a fixed order, without atomics).

    dx, ddt, dz are (batch, L, E) with strides (stride_grad_b, stride_grad_t, 1); dB, dC are float32 (groups,
    batch, L, N) partials; dA is a float32 (batch, E, N) partial, dD and d(dt_bias) (batch, E), summed over the
    batch (and dB/dC over the groups) by the host. ``scratch``: float32, (groups, batch, CK/ITEMS, BLOCK_E,
    BLOCK_N) per program."""
    pid_g = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    n_programs_b = tl.num_programs(1)
    z_b = z_ptr + pid_b * stride_z_b
    dout_b = dout_ptr + pid_b * stride_dout_b
    dz_b = dz_ptr + pid_b * stride_grad_b
    bc_offset = pid_g.to(tl.int64) * stride_dBC_group + pid_b * stride_dBC_b
    states_f = states_ptr + (pid_b * 2) * n_chunks * n_channels * n_state
    states_b = states_f + n_chunks * n_channels * n_state
    scratch = scratch_ptr + (pid_g.to(tl.int64) * n_programs_b + pid_b) * ((CK // ITEMS) * BLOCK_E * BLOCK_N)
    en_offset = pid_b * n_channels * n_state
    for blk in range(0, blocks_per_group):
        pid_e = pid_g * blocks_per_group + blk
        first_block = blk == 0
        _backward_direction(
            x_f_ptr + pid_b * stride_x_f_b, dt_f_ptr + pid_b * stride_dt_f_b, B_f_ptr + pid_b * stride_B_f_b,
            C_f_ptr + pid_b * stride_C_f_b, A_f_ptr, D_f_ptr, bias_f_ptr, z_b, dout_b, states_f, scratch,
            dx_f_ptr + pid_b * stride_grad_b, ddt_f_ptr + pid_b * stride_grad_b, dz_b,
            dB_f_ptr + bc_offset, dC_f_ptr + bc_offset, dA_f_ptr + en_offset,
            dD_f_ptr + pid_b * n_channels, dbias_f_ptr + pid_b * n_channels,
            stride_x_f_t, stride_dt_f_t, stride_B_f_t, stride_C_f_t, stride_z_t, stride_dout_t, stride_grad_t,
            stride_dBC_t, length, n_channels, n_state, n_chunks, pid_e, first_block,
            False, False, HAS_Z, CK, ITEMS, BLOCK_E, BLOCK_N,
        )
        tl.debug_barrier()  # dz (holding y_f) and the dB/dC partials are read below by other threads
        _backward_direction(
            x_b_ptr + pid_b * stride_x_b_b, dt_b_ptr + pid_b * stride_dt_b_b, B_b_ptr + pid_b * stride_B_b_b,
            C_b_ptr + pid_b * stride_C_b_b, A_b_ptr, D_b_ptr, bias_b_ptr, z_b, dout_b, states_b, scratch,
            dx_b_ptr + pid_b * stride_grad_b, ddt_b_ptr + pid_b * stride_grad_b, dz_b,
            dB_b_ptr + bc_offset, dC_b_ptr + bc_offset, dA_b_ptr + en_offset,
            dD_b_ptr + pid_b * n_channels, dbias_b_ptr + pid_b * n_channels,
            stride_x_b_t, stride_dt_b_t, stride_B_b_t, stride_C_b_t, stride_z_t, stride_dout_t, stride_grad_t,
            stride_dBC_t, length, n_channels, n_state, n_chunks, pid_e, first_block,
            True, True, HAS_Z, CK, ITEMS, BLOCK_E, BLOCK_N,
        )
        tl.debug_barrier()
