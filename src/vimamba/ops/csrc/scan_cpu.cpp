// Vision Mamba's bidirectional selective scan on the CPU: forward and backward, float32, OpenMP.
//
// Per direction, channel e, state n, with delta_t = softplus(dt_t + dt_bias[e]):
//     h_t = exp(delta_t A[e,n]) h_prev + delta_t B_t[n] u_t,     y_t = sum_n C_t[n] h_t + D[e] u_t
// where h_prev is the state of token t-1 (direction 0) or t+1 (direction 1), and the op returns
//     out_t = silu(z_t) (y0_t + y1_t) / 2.
//
// Layout: token-major, as the projections produce it: u, dt, z: (batch, L, E), B, C: (batch, L, N), any strides
// over batch and token, unit stride over the last axis. Work is split over (batch, block of VE channels); a block
// keeps the states of its VE channels for all N states in lanes (h[n][lane]), walks the tokens in scan order
// and does one exp per (t, e, n). The B_t[n] and C_t[n] of a token are shared by the lanes (broadcasts), so
// nothing is reduced across lanes in the forward pass.
//
// Backward: the forward saves the state entering every chunk of `chunk` tokens (in scan order). The backward walks
// the chunks against the scan order; for each it recomputes the chunk's states and decays from the saved state
// into a small per-thread buffer, then runs the adjoint recurrence dh_t = C_t g_t + a_next dh_next over the chunk.
// dB and dC (shared by all channels) go to per-thread partial buffers, dA / dD / d(dt_bias) to per-batch
// partials; the caller sums them. No torch headers: the library is called through a plain C ABI (ctypes), so it
// compiles in about a second.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <immintrin.h>
#define VIMAMBA_HAVE_MXCSR 1
#endif

#ifndef VIMAMBA_LANES
#if defined(__AVX512F__)
#define VIMAMBA_LANES 16
#else
#define VIMAMBA_LANES 8
#endif
#endif

extern "C" {

struct VimScanDirection {
  const float* u;  int64_t u_sb, u_sl;    // (batch, L, E)
  const float* dt; int64_t dt_sb, dt_sl;  // (batch, L, E), before bias and softplus
  const float* B;  int64_t B_sb, B_sl;    // (batch, L, N)
  const float* C;  int64_t C_sb, C_sl;    // (batch, L, N)
  const float* A;                         // (E, N) contiguous
  const float* D;                         // (E,) or null
  const float* dt_bias;                   // (E,) or null
  float* states;                          // (batch, n_chunks, N, E): state entering each chunk; null: not saved
  float* du;                              // backward: (batch, L, E) contiguous
  float* ddt;                             // backward: (batch, L, E) contiguous
  float* dA;                              // backward: (batch, E, N) per-batch partial sums
  float* dD;                              // backward: (batch, E) partial sums, or null
  float* dbias;                           // backward: (batch, E) partial sums, or null
  float* dB;                              // backward: (threads, batch, L, N) per-thread partial sums
  float* dC;                              // backward: (threads, batch, L, N) per-thread partial sums
};

struct VimScanProblem {
  int64_t batch, length, channels, n_state, chunk, n_chunks, num_threads;
  const float* z; int64_t z_sb, z_sl;     // (batch, L, E) gate, or null
  float* out;                             // forward: (batch, L, E) contiguous
  const float* grad_out;                  // backward: (batch, L, E) contiguous
  float* dz;                              // backward: (batch, L, E) contiguous, or null when z is null
  VimScanDirection dir[2];                // 0: ascending tokens, 1: descending tokens
};

// Both depthwise convolutions of the mixer, each followed by SiLU, from the shared input x:
//     out_f[t] = silu(bias_f + sum_k w_f[k] x[t - (K-1) + k])     (causal: the forward branch)
//     out_b[t] = silu(bias_b + sum_k w_b[k] x[t + (K-1) - k])     (anti-causal: the flipped sequence's causal conv)
// with zeros outside the sequence. Backward: dx, and per-batch partial sums of dw and dbias.
struct VimConvProblem {
  int64_t batch, length, channels, width, num_threads;
  const float* x; int64_t x_sb, x_sl;     // (batch, L, E), unit stride over E
  const float* w[2];                      // (E, K) contiguous, forward / backward branch
  const float* bias[2];                   // (E,) or null
  float* out[2];                          // forward: (batch, L, E) contiguous
  const float* grad[2];                   // backward: (batch, L, E) contiguous, gradients of out
  float* dx;                              // backward: (batch, L, E) contiguous
  float* dw[2];                           // backward: (batch, E, K) partial sums
  float* dbias[2];                        // backward: (batch, E) partial sums, or null
  float* scratch;                         // backward: (threads, 2, L, VIMAMBA_LANES)
};

int vimamba_conv_silu_forward(const VimConvProblem* p);
int vimamba_conv_silu_backward(const VimConvProblem* p);

int vimamba_scan_abi_version() { return 2; }
int vimamba_scan_max_state() { return 64; }
int vimamba_conv_max_width() { return 16; }
int vimamba_scan_lanes() { return VIMAMBA_LANES; }
int vimamba_scan_forward(const VimScanProblem* p);
int vimamba_scan_backward(const VimScanProblem* p);
}

namespace {

constexpr int kMaxState = 64;
constexpr int kMaxWidth = 16;
constexpr float kLog2e = 1.4426950408889634f;

// SIMD vectors of W floats / int32 (GCC and Clang vector extensions: lowered to SSE/AVX/AVX-512/NEON).
template <int W> struct Vec {
  typedef float f __attribute__((vector_size(4 * W)));
  typedef int32_t i __attribute__((vector_size(4 * W)));
};

template <class V> inline V splat(float x) { return V{} + x; }
template <class V> inline V load(const float* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <class V> inline void store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }
template <class To, class From> inline To bitcast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bitcast between different sizes");
  To t; std::memcpy(&t, &v, sizeof(To)); return t;
}
template <class V> inline V vmin(V a, V b) { return a < b ? a : b; }
template <class V> inline V vmax(V a, V b) { return a > b ? a : b; }
#if defined(__AVX__)  // one instruction instead of compare + blend (NaN handling is irrelevant for clamping)
template <> inline Vec<8>::f vmin(Vec<8>::f a, Vec<8>::f b) { return bitcast<Vec<8>::f>(_mm256_min_ps(bitcast<__m256>(a), bitcast<__m256>(b))); }
template <> inline Vec<8>::f vmax(Vec<8>::f a, Vec<8>::f b) { return bitcast<Vec<8>::f>(_mm256_max_ps(bitcast<__m256>(a), bitcast<__m256>(b))); }
#endif
#if defined(__AVX512F__)
template <> inline Vec<16>::f vmin(Vec<16>::f a, Vec<16>::f b) { return bitcast<Vec<16>::f>(_mm512_min_ps(bitcast<__m512>(a), bitcast<__m512>(b))); }
template <> inline Vec<16>::f vmax(Vec<16>::f a, Vec<16>::f b) { return bitcast<Vec<16>::f>(_mm512_max_ps(bitcast<__m512>(a), bitcast<__m512>(b))); }
#endif
template <class V> inline float hsum(V v) {
  float s = 0.0f;
  for (unsigned l = 0; l < sizeof(V) / 4; ++l) s += v[l];
  return s;
}

// dst[r] += (sum of the lanes of rows[r]) for r < count: the backward pass's sums over channels of dB and dC.
// With GCC, groups of W rows are reduced by a butterfly of two-vector shuffles: W - 1 steps of 2 shuffles + 1 add
// for W rows instead of a log2(W)-step reduction per row. At the step with blocks of S lanes (one row's partial
// sums per block), x and y fold each block's halves into half-blocks side by side: the lower half-block for x's
// row, the upper for y's. After log2(W) steps lane j holds the sum of row j. rows is used as scratch.
#if defined(__GNUC__) && !defined(__clang__)
template <int W, int S, bool Upper> inline typename Vec<W>::i fold_mask() {
  typename Vec<W>::i m;
  for (int j = 0; j < W; ++j) {
    const int block = j / S * S, r = j % S, half = S / 2;
    m[j] = (r < half ? block + r : W + block + r - half) + (Upper ? half : 0);  // lanes >= W index y
  }
  return m;
}

template <int W, int S> inline void fold(typename Vec<W>::f* v) {
  if constexpr (S > 1) {
    for (int i = 0; i < S / 2; ++i)
      v[i] = __builtin_shuffle(v[i], v[i + S / 2], fold_mask<W, S, false>()) +
             __builtin_shuffle(v[i], v[i + S / 2], fold_mask<W, S, true>());
    fold<W, S / 2>(v);
  }
}

template <int W> inline void add_row_sums(float* dst, typename Vec<W>::f* rows, int64_t count) {
  typedef typename Vec<W>::f V;
  for (int64_t r0 = 0; r0 < count; r0 += W) {
    V* group = rows + r0;
    const int64_t n = std::min<int64_t>(W, count - r0);
    for (int64_t r = n; r < W; ++r) group[r] = splat<V>(0.0f);  // rows has room for a whole group
    fold<W, W>(group);
    if (n == W) {
      store(dst + r0, load<V>(dst + r0) + group[0]);
    } else {
      for (int64_t r = 0; r < n; ++r) dst[r0 + r] += group[0][r];
    }
  }
}
#else
template <int W> inline void add_row_sums(float* dst, typename Vec<W>::f* rows, int64_t count) {
  for (int64_t r = 0; r < count; ++r) dst[r] += hsum(rows[r]);
}
#endif

// dst0[r] += sum of rows[r], dst1[r] += sum of rows[count + r] (r < count), for dC and dB: when count is not a
// multiple of W, both sets share groups (one butterfly for N = 8 on 16 lanes instead of two half-empty ones).
template <int W> inline void add_row_sums_pair(float* dst0, float* dst1, typename Vec<W>::f* rows, int64_t count) {
  if (count % W == 0) {
    add_row_sums<W>(dst0, rows, count);
    add_row_sums<W>(dst1, rows + count, count);
    return;
  }
  float sums[2 * kMaxState + W] = {};
  add_row_sums<W>(sums, rows, 2 * count);
  for (int64_t r = 0; r < count; ++r) {
    dst0[r] += sums[r];
    dst1[r] += sums[count + r];
  }
}

// 2^f for |f| <= 1/2 by a degree-5 polynomial (Chebyshev fit, relative error < 3e-7).
template <class V> inline V exp2_fraction(V f) {
  V p = splat<V>(0.0013400433f);
  p = p * f + 0.0096760374f;
  p = p * f + 0.0555032715f;
  p = p * f + 0.2402210683f;
  p = p * f + 0.6931471825f;
  p = p * f + 1.0000001192f;
  return p;
}

// 2^x, relative error < 3e-7; x is clamped to [-125, 127] (2^-125 ~ 2e-38 stands for 0: no denormals).
// x = k + f with k integer, |f| <= 1/2; 2^f by exp2_fraction, 2^k in the exponent bits.
template <class V> inline V exp2_fast(V x) {
  typedef decltype(x < x) I;
  x = vmin(vmax(x, splat<V>(-125.0f)), splat<V>(127.0f));
  const V magic = splat<V>(12582912.0f);  // 1.5 * 2^23: adding it rounds to the nearest integer k
  const V shifted = x + magic;
  const V p = exp2_fraction(x - (shifted - magic));
  // the integer k sits in the low mantissa bits of `shifted`: (k + 127) << 23 are the bits of 2^k
  return p * bitcast<V>((bitcast<I>(shifted) - (0x4B400000 - 127)) << 23);
}

#if defined(__AVX512F__)
// AVX-512: the same polynomial, with k rounded by vrndscaleps and 2^k applied by vscalefps (3 instructions fewer
// per exp; decays underflowing below 2^-126 are flushed to 0 by the kernels' FTZ/DAZ mode). Identical results.
template <> inline Vec<16>::f exp2_fast(Vec<16>::f x) {
  typedef Vec<16>::f V;
  x = vmin(vmax(x, splat<V>(-150.0f)), splat<V>(128.0f));
  const __m512 k = _mm512_roundscale_ps(bitcast<__m512>(x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const V p = exp2_fraction(x - bitcast<V>(k));
  return bitcast<V>(_mm512_scalef_ps(bitcast<__m512>(p), k));
}
#endif

template <class V> inline V exp_fast(V x) { return exp2_fast(x * kLog2e); }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), identity above 20 as F.softplus. With v = exp(-|x|) in (0, 1]:
// log1p(v) = 2 atanh(s), s = v / (2 + v) in (0, 1/3], by its series to s^13 (relative error < 2e-8).
template <class V> inline V softplus_fast(V x) {
  const V v = exp_fast(vmin(x, -x));
  const V s = v / (2.0f + v), s2 = s * s;
  V p = splat<V>(1.0f / 13.0f);
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  const V sp = vmax(x, splat<V>(0.0f)) + 2.0f * s * p;
  return x > 20.0f ? x : sp;
}

template <class V> inline V sigmoid_fast(V x) { return 1.0f / (1.0f + exp_fast(-x)); }
template <class V> inline V silu_fast(V x) { return x * sigmoid_fast(x); }

// Flush denormals to zero while a kernel runs (decays underflowing through denormals are slow on x86).
struct DenormalsAreZero {
#ifdef VIMAMBA_HAVE_MXCSR
  unsigned int saved;
  DenormalsAreZero() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
  ~DenormalsAreZero() { _mm_setcsr(saved); }
#endif
};

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// One work item: batch element b, channels [e0, e0 + W), one SIMD vector of W lanes.
template <int W>
struct Item {
  typedef typename Vec<W>::f V;
  const VimScanProblem& p;
  int64_t b, e0;

  int64_t position(bool reverse, int64_t i) const { return reverse ? p.length - 1 - i : i; }

  struct Token { V pre, delta, du, u; };  // dt + bias, softplus of it, delta * u, u

  Token token(const VimScanDirection& d, V bias, int64_t t) const {
    Token k;
    k.u = load<V>(d.u + b * d.u_sb + t * d.u_sl + e0);
    k.pre = load<V>(d.dt + b * d.dt_sb + t * d.dt_sl + e0) + bias;
    k.delta = softplus_fast(k.pre);
    k.du = k.delta * k.u;
    return k;
  }

  V gate(int64_t t) const {  // silu(z_t), or 1 without a gate
    return p.z ? silu_fast(load<V>(p.z + b * p.z_sb + t * p.z_sl + e0)) : splat<V>(1.0f);
  }

  struct Parameters { V A2[kMaxState], A[kMaxState], bias, D; };  // A2 = A log2(e)

  void load_parameters(const VimScanDirection& d, Parameters& w) const {
    for (int64_t n = 0; n < p.n_state; ++n) {
      for (int l = 0; l < W; ++l) w.A[n][l] = d.A[(e0 + l) * p.n_state + n];
      w.A2[n] = w.A[n] * kLog2e;
    }
    w.bias = d.dt_bias ? load<V>(d.dt_bias + e0) : splat<V>(0.0f);
    w.D = d.D ? load<V>(d.D + e0) : splat<V>(0.0f);
  }

  float* saved_state(const VimScanDirection& d, int64_t chunk_index, int64_t n) const {
    return d.states + ((b * p.n_chunks + chunk_index) * p.n_state + n) * p.channels + e0;
  }

  // Direction `dir` over the whole sequence; direction 0 writes y0 to out, direction 1 finishes out.
  void forward(int dir) const {
    const VimScanDirection& d = p.dir[dir];
    const bool reverse = dir == 1;
    const int64_t L = p.length, N = p.n_state, E = p.channels;
    constexpr int64_t TB = 16;
    Parameters w;
    load_parameters(d, w);
    V h[kMaxState];
    V delta[TB], du[TB], uu[TB];
    for (int64_t n = 0; n < N; ++n) h[n] = splat<V>(0.0f);
    for (int64_t i0 = 0; i0 < L; i0 += TB) {
      const int64_t nb = std::min(TB, L - i0);
      for (int64_t j = 0; j < nb; ++j) {  // per-token work first: independent across tokens
        const Token k = token(d, w.bias, position(reverse, i0 + j));
        delta[j] = k.delta; du[j] = k.du; uu[j] = k.u;
      }
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t i = i0 + j, t = position(reverse, i);
        if (d.states != nullptr && i % p.chunk == 0) {
          for (int64_t n = 0; n < N; ++n) store(saved_state(d, i / p.chunk, n), h[n]);
        }
        V y = w.D * uu[j];
        const float* Bt = d.B + b * d.B_sb + t * d.B_sl;
        const float* Ct = d.C + b * d.C_sb + t * d.C_sl;
        for (int64_t n = 0; n < N; ++n) {
          const V a = exp2_fast(delta[j] * w.A2[n]);
          h[n] = a * h[n] + du[j] * Bt[n];
          y += h[n] * Ct[n];
        }
        float* o = p.out + (b * L + t) * E + e0;
        store(o, dir == 0 ? y : 0.5f * (load<V>(o) + y) * gate(t));
      }
    }
  }

  // Gradients of direction `dir`. `h_buf`, `a_buf`: chunk * N vectors of scratch, `tokens`: chunk of them. With a gate, y of this
  // direction is added to p.dz (which holds y0 + y1 when both directions are done).
  void backward(int dir, V* h_buf, V* a_buf, Token* tokens, int thread) const {
    const VimScanDirection& d = p.dir[dir];
    const bool reverse = dir == 1;
    const int64_t L = p.length, N = p.n_state, E = p.channels, K = p.chunk;
    Parameters w;
    load_parameters(d, w);
    V h_entry[kMaxState], carry[kMaxState], dA[kMaxState];  // carry = a_next * dh_next
    V rows[2 * kMaxState + W];  // a token's dC and dB terms, each summed over the lanes
    for (int64_t n = 0; n < N; ++n) carry[n] = dA[n] = splat<V>(0.0f);
    V dD = splat<V>(0.0f), dbias = splat<V>(0.0f);
    float* dB_base = d.dB + (static_cast<int64_t>(thread) * p.batch + b) * L * N;
    float* dC_base = d.dC + (static_cast<int64_t>(thread) * p.batch + b) * L * N;

    for (int64_t j = p.n_chunks - 1; j >= 0; --j) {
      const int64_t i0 = j * K, i1 = std::min(L, i0 + K);
      for (int64_t n = 0; n < N; ++n) h_entry[n] = load<V>(saved_state(d, j, n));
      for (int64_t i = i0; i < i1; ++i) tokens[i - i0] = token(d, w.bias, position(reverse, i));
      // Recompute the chunk's decays and states (and y, for the gate's gradient).
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = position(reverse, i);
        const Token& k = tokens[i - i0];
        V y = w.D * k.u;
        const float* Bt = d.B + b * d.B_sb + t * d.B_sl;
        const float* Ct = d.C + b * d.C_sb + t * d.C_sl;
        V* hs = h_buf + (i - i0) * N;
        V* as = a_buf + (i - i0) * N;
        const V* hp = i > i0 ? hs - N : h_entry;
        for (int64_t n = 0; n < N; ++n) {
          as[n] = exp2_fast(k.delta * w.A2[n]);
          hs[n] = as[n] * hp[n] + k.du * Bt[n];
          y += hs[n] * Ct[n];
        }
        if (p.dz != nullptr) {
          float* ys = p.dz + (b * L + t) * E + e0;
          store(ys, dir == 0 ? y : load<V>(ys) + y);
        }
      }
      // Adjoint walk over the chunk, against the scan order.
      for (int64_t i = i1 - 1; i >= i0; --i) {
        const int64_t t = position(reverse, i);
        const Token& k = tokens[i - i0];
        const V g = 0.5f * gate(t) * load<V>(p.grad_out + (b * L + t) * E + e0);  // d loss / d y, this direction
        V s = splat<V>(0.0f), ddelta = splat<V>(0.0f);
        const float* Bt = d.B + b * d.B_sb + t * d.B_sl;
        const float* Ct = d.C + b * d.C_sb + t * d.C_sl;
        const V* hs = h_buf + (i - i0) * N;
        const V* as = a_buf + (i - i0) * N;
        const V* hp = i > i0 ? hs - N : h_entry;
        float* dBt = dB_base + t * N;
        float* dCt = dC_base + t * N;
        for (int64_t n = 0; n < N; ++n) {
          const V dh = carry[n] + g * Ct[n];
          rows[n] = g * hs[n];          // dC terms
          rows[N + n] = dh * k.du;      // dB terms
          s += dh * Bt[n];
          const V q = dh * as[n] * hp[n];  // d loss / d log(a)
          dA[n] += q * k.delta;
          ddelta += q * w.A[n];
          carry[n] = as[n] * dh;
        }
        add_row_sums_pair<W>(dCt, dBt, rows, N);
        store(d.du + (b * L + t) * E + e0, s * k.delta + g * w.D);
        const V dd = ddelta + s * k.u;
        const V ddt = k.pre > 20.0f ? dd : dd * sigmoid_fast(k.pre);
        store(d.ddt + (b * L + t) * E + e0, ddt);
        dD += g * k.u;
        dbias += ddt;
      }
    }
    for (int l = 0; l < W; ++l) {
      for (int64_t n = 0; n < N; ++n) d.dA[(b * E + e0 + l) * N + n] = dA[n][l];
      if (d.dD) d.dD[b * E + e0 + l] = dD[l];
      if (d.dbias) d.dbias[b * E + e0 + l] = dbias[l];
    }
  }

  // dz = grad_out * (y0 + y1) / 2 * silu'(z), with y0 + y1 accumulated in p.dz by backward().
  void gate_gradient() const {
    for (int64_t t = 0; t < p.length; ++t) {
      const V z = load<V>(p.z + b * p.z_sb + t * p.z_sl + e0);
      const V go = load<V>(p.grad_out + (b * p.length + t) * p.channels + e0);
      float* dz = p.dz + (b * p.length + t) * p.channels + e0;
      const V sg = sigmoid_fast(z);
      store(dz, 0.5f * go * load<V>(dz) * sg * (1.0f + z * (1.0f - sg)));
    }
  }
};

// One work item of the convolutions: batch element b, channels [e0, e0 + W).
template <int W>
struct ConvItem {
  typedef typename Vec<W>::f V;
  const VimConvProblem& p;
  int64_t b, e0;

  template <bool Checked = true>
  V x_at(int64_t t) const {  // x[t], zero outside the sequence (Checked=false: t is known to be inside)
    return !Checked || (t >= 0 && t < p.length) ? load<V>(p.x + b * p.x_sb + t * p.x_sl + e0) : splat<V>(0.0f);
  }

  void taps(int dir, V* w, V& bias) const {
    const int64_t K = p.width;
    for (int64_t k = 0; k < K; ++k)
      for (int l = 0; l < W; ++l) w[k][l] = p.w[dir][(e0 + l) * K + k];
    bias = p.bias[dir] ? load<V>(p.bias[dir] + e0) : splat<V>(0.0f);
  }

  // Pre-activation of branch dir at token t: tap k reads x[t - (K-1) + k] (dir 0) or x[t + (K-1) - k] (dir 1).
  V pre(int dir, const V* w, V bias, int64_t t) const {
    const int64_t K = p.width;
    const bool inside = t >= K - 1 && t + K - 1 < p.length;  // no tap falls outside the sequence
    V acc = bias;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t s = dir == 0 ? t - (K - 1) + k : t + (K - 1) - k;
      acc += w[k] * (inside ? x_at<false>(s) : x_at(s));
    }
    return acc;
  }

  void forward() const {
    V w[2][kMaxWidth], bias[2];
    taps(0, w[0], bias[0]);
    taps(1, w[1], bias[1]);
    for (int64_t t = 0; t < p.length; ++t) {
      const int64_t at = (b * p.length + t) * p.channels + e0;
      store(p.out[0] + at, silu_fast(pre(0, w[0], bias[0], t)));
      store(p.out[1] + at, silu_fast(pre(1, w[1], bias[1], t)));
    }
  }

  // scratch: 2 * L vectors for the gradients of the pre-activations.
  void backward(V* scratch) const {
    const int64_t K = p.width, L = p.length;
    V w[2][kMaxWidth], bias[2];
    for (int dir = 0; dir < 2; ++dir) {
      taps(dir, w[dir], bias[dir]);
      V dw[kMaxWidth], db = splat<V>(0.0f);
      for (int64_t k = 0; k < K; ++k) dw[k] = splat<V>(0.0f);
      V* g_pre = scratch + dir * L;
      for (int64_t t = 0; t < L; ++t) {
        const V z = pre(dir, w[dir], bias[dir], t), sg = sigmoid_fast(z);
        const V g = load<V>(p.grad[dir] + (b * L + t) * p.channels + e0) * sg * (1.0f + z * (1.0f - sg));
        g_pre[t] = g;
        db += g;
        for (int64_t k = 0; k < K; ++k) dw[k] += g * x_at(dir == 0 ? t - (K - 1) + k : t + (K - 1) - k);
      }
      for (int l = 0; l < W; ++l) {
        for (int64_t k = 0; k < K; ++k) p.dw[dir][(b * p.channels + e0 + l) * K + k] = dw[k][l];
        if (p.dbias[dir]) p.dbias[dir][b * p.channels + e0 + l] = db[l];
      }
    }
    // dx[s] = sum_k w_f[k] g_f[s + (K-1) - k] + w_b[k] g_b[s - (K-1) + k]: the adjoint of each conv is the other one.
    for (int64_t s = 0; s < L; ++s) {
      V acc = splat<V>(0.0f);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t tf = s + (K - 1) - k, tb = s - (K - 1) + k;
        if (tf < L) acc += w[0][k] * scratch[tf];
        if (tb >= 0) acc += w[1][k] * scratch[L + tb];
      }
      store(p.dx + (b * L + s) * p.channels + e0, acc);
    }
  }
};

// Runs fn(item, thread) for every (batch, channel block): full blocks of VIMAMBA_LANES channels, then single
// channels for the rest.
template <template <int> class Work, typename Problem, typename Fn>
void for_each_item(const Problem& p, Fn fn) {
  const int64_t full_blocks = p.channels / VIMAMBA_LANES;
  const int64_t per_batch = full_blocks + (p.channels - full_blocks * VIMAMBA_LANES);
  const int64_t items = p.batch * per_batch;
#pragma omp parallel num_threads(static_cast<int>(std::max<int64_t>(1, p.num_threads)))
  {
    DenormalsAreZero daz;
    const int thread = thread_index();
#pragma omp for schedule(static)
    for (int64_t k = 0; k < items; ++k) {
      const int64_t b = k / per_batch, block = k % per_batch;
      if (block < full_blocks) {
        fn(Work<VIMAMBA_LANES>{p, b, block * VIMAMBA_LANES}, thread);
      } else {
        fn(Work<1>{p, b, full_blocks * VIMAMBA_LANES + (block - full_blocks)}, thread);
      }
    }
  }
}

bool valid(const VimConvProblem* p) {
  return p != nullptr && p->width >= 1 && p->width <= kMaxWidth && p->length >= 0;
}

bool valid(const VimScanProblem* p) {
  return p != nullptr && p->n_state >= 1 && p->n_state <= kMaxState && p->chunk >= 1 && p->length >= 0 &&
         p->n_chunks == (p->length + p->chunk - 1) / p->chunk;
}

}  // namespace

int vimamba_scan_forward(const VimScanProblem* p) {
  if (!valid(p)) return 1;
  for_each_item<Item>(*p, [](auto item, int) { item.forward(0); item.forward(1); });
  return 0;
}

int vimamba_scan_backward(const VimScanProblem* p) {
  if (!valid(p)) return 1;
  typedef Vec<VIMAMBA_LANES>::f V;
  // Per thread: states and decays of one chunk, and its per-token quantities (4 vectors a token). Single-channel
  // items use the front of the same memory.
  const int64_t scratch = p->chunk * p->n_state;
  std::vector<std::vector<V>> buffers(std::max<int64_t>(1, p->num_threads));
  for (auto& buffer : buffers) buffer.resize(2 * scratch + 4 * p->chunk);
  for_each_item<Item>(*p, [&](auto item, int thread) {
    typedef decltype(item) It;
    typedef typename It::V IV;
    V* base = buffers[thread].data();
    IV* h_buf = reinterpret_cast<IV*>(base);
    IV* a_buf = reinterpret_cast<IV*>(base + scratch);
    auto* tokens = reinterpret_cast<typename It::Token*>(base + 2 * scratch);
    item.backward(0, h_buf, a_buf, tokens, thread);
    item.backward(1, h_buf, a_buf, tokens, thread);
    if (p->dz != nullptr) item.gate_gradient();
  });
  return 0;
}

int vimamba_conv_silu_forward(const VimConvProblem* p) {
  if (!valid(p)) return 1;
  for_each_item<ConvItem>(*p, [](auto item, int) { item.forward(); });
  return 0;
}

int vimamba_conv_silu_backward(const VimConvProblem* p) {
  if (!valid(p)) return 1;
  typedef Vec<VIMAMBA_LANES>::f V;
  for_each_item<ConvItem>(*p, [&](auto item, int thread) {
    typedef typename decltype(item)::V IV;
    item.backward(reinterpret_cast<IV*>(reinterpret_cast<V*>(p->scratch) + thread * 2 * p->length));
  });
  return 0;
}
