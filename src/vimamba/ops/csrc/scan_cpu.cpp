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
#include <xmmintrin.h>
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

int vimamba_scan_abi_version() { return 1; }
int vimamba_scan_max_state() { return 64; }
int vimamba_scan_lanes() { return VIMAMBA_LANES; }
int vimamba_scan_forward(const VimScanProblem* p);
int vimamba_scan_backward(const VimScanProblem* p);
}

namespace {

constexpr int kMaxState = 64;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

inline float bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int32_t float_to_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }

// 2^x, relative error < 2e-7; x is clamped to [-125, 127] (2^-125 ~ 2.4e-38 stands for 0: no denormals).
inline float exp2_fast(float x) {
  x = std::min(std::max(x, -125.0f), 127.0f);
  const float k = std::floor(x + 0.5f);
  const float f = (x - k) * kLn2;  // |f| <= ln2 / 2: Taylor series of e^f to degree 6
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(k) + 127) << 23);
}

inline float exp_fast(float x) { return exp2_fast(x * kLog2e); }

// log(w) for w >= 1 (finite): w = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m - 1) / (m + 1)).
inline float log_fast(float w) {
  const int32_t bits = float_to_bits(w);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 127);
  float m = bits_to_float((bits & 0x7fffff) | 0x3f800000);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  float p = 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return e * kLn2 + 2.0f * s * p;
}

// softplus(x) = log1p(exp(x)) as F.softplus (identity above 20); log1p(v) = log(1 + v) * v / ((1 + v) - 1).
inline float softplus_fast(float x) {
  const float v = exp_fast(std::min(x, 20.0f));
  const float w = 1.0f + v, wm1 = w - 1.0f;
  const float log1p_v = wm1 == 0.0f ? v : log_fast(w) * (v / wm1);
  return x > 20.0f ? x : log1p_v;
}

inline float sigmoid_fast(float x) { return 1.0f / (1.0f + exp_fast(-x)); }

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

// One work item: batch element b, channels [e0, e0 + VE).
template <int VE>
struct Item {
  const VimScanProblem& p;
  int64_t b, e0;

  int64_t position(bool reverse, int64_t i) const { return reverse ? p.length - 1 - i : i; }

  // Per-token quantities of direction d at token t: pre-activation of delta, delta, delta * u, u.
  void token(const VimScanDirection& d, const float* bias, int64_t t, float* pre, float* delta, float* du,
             float* u) const {
    const float* up = d.u + b * d.u_sb + t * d.u_sl + e0;
    const float* dtp = d.dt + b * d.dt_sb + t * d.dt_sl + e0;
#pragma omp simd
    for (int l = 0; l < VE; ++l) {
      u[l] = up[l];
      pre[l] = dtp[l] + bias[l];
      delta[l] = softplus_fast(pre[l]);
      du[l] = delta[l] * u[l];
    }
  }

  void gate(int64_t t, float* silu_z) const {
    if (p.z == nullptr) {
      for (int l = 0; l < VE; ++l) silu_z[l] = 1.0f;
      return;
    }
    const float* zp = p.z + b * p.z_sb + t * p.z_sl + e0;
#pragma omp simd
    for (int l = 0; l < VE; ++l) silu_z[l] = zp[l] * sigmoid_fast(zp[l]);
  }

  void load_parameters(const VimScanDirection& d, float (*A2)[VE], float (*A)[VE], float* bias, float* D) const {
    const int64_t N = p.n_state, E = p.channels;
    for (int l = 0; l < VE; ++l) {
      for (int64_t n = 0; n < N; ++n) {
        A[n][l] = d.A[(e0 + l) * N + n];
        A2[n][l] = A[n][l] * kLog2e;
      }
      bias[l] = d.dt_bias ? d.dt_bias[e0 + l] : 0.0f;
      D[l] = d.D ? d.D[e0 + l] : 0.0f;
    }
    (void)E;
  }

  float* saved_state(const VimScanDirection& d, int64_t chunk_index, int64_t n) const {
    return d.states + ((b * p.n_chunks + chunk_index) * p.n_state + n) * p.channels + e0;
  }

  // Direction `dir` over the whole sequence; direction 0 writes y0 to out, direction 1 finishes out.
  void forward(int dir) const {
    const VimScanDirection& d = p.dir[dir];
    const bool reverse = dir == 1;
    const int64_t L = p.length, N = p.n_state, E = p.channels;
    alignas(64) float h[kMaxState][VE], A2[kMaxState][VE], A[kMaxState][VE];
    float bias[VE], D[VE];
    load_parameters(d, A2, A, bias, D);
    std::memset(h, 0, sizeof(h));
    for (int64_t i = 0; i < L; ++i) {
      const int64_t t = position(reverse, i);
      if (d.states != nullptr && i % p.chunk == 0) {
        for (int64_t n = 0; n < N; ++n) std::memcpy(saved_state(d, i / p.chunk, n), h[n], sizeof(float) * VE);
      }
      float pre[VE], delta[VE], du[VE], u[VE], y[VE];
      token(d, bias, t, pre, delta, du, u);
      for (int l = 0; l < VE; ++l) y[l] = D[l] * u[l];
      const float* Bt = d.B + b * d.B_sb + t * d.B_sl;
      const float* Ct = d.C + b * d.C_sb + t * d.C_sl;
      for (int64_t n = 0; n < N; ++n) {
        const float bn = Bt[n], cn = Ct[n];
#pragma omp simd
        for (int l = 0; l < VE; ++l) {
          const float a = exp2_fast(delta[l] * A2[n][l]);
          h[n][l] = a * h[n][l] + du[l] * bn;
          y[l] += h[n][l] * cn;
        }
      }
      float* o = p.out + (b * L + t) * E + e0;
      if (dir == 0) {
        for (int l = 0; l < VE; ++l) o[l] = y[l];
      } else {
        float silu_z[VE];
        gate(t, silu_z);
#pragma omp simd
        for (int l = 0; l < VE; ++l) o[l] = 0.5f * (o[l] + y[l]) * silu_z[l];
      }
    }
  }

  // Gradients of direction `dir`. `h_buf`, `a_buf`: chunk * N * VE floats of scratch. With a gate, y of this
  // direction is added to p.dz (which holds y0 + y1 when both directions are done).
  void backward(int dir, float* h_buf, float* a_buf, int thread) const {
    const VimScanDirection& d = p.dir[dir];
    const bool reverse = dir == 1;
    const int64_t L = p.length, N = p.n_state, E = p.channels, K = p.chunk;
    alignas(64) float A2[kMaxState][VE], A[kMaxState][VE], h[kMaxState][VE], h_entry[kMaxState][VE];
    alignas(64) float carry[kMaxState][VE], dA[kMaxState][VE];  // carry = a_next * dh_next
    float bias[VE], D[VE], dD[VE], dbias[VE];
    load_parameters(d, A2, A, bias, D);
    std::memset(carry, 0, sizeof(carry));
    std::memset(dA, 0, sizeof(dA));
    for (int l = 0; l < VE; ++l) dD[l] = dbias[l] = 0.0f;
    float* dB_base = d.dB + (static_cast<int64_t>(thread) * p.batch + b) * L * N;
    float* dC_base = d.dC + (static_cast<int64_t>(thread) * p.batch + b) * L * N;

    for (int64_t j = p.n_chunks - 1; j >= 0; --j) {
      const int64_t i0 = j * K, i1 = std::min(L, i0 + K);
      for (int64_t n = 0; n < N; ++n) {
        std::memcpy(h_entry[n], saved_state(d, j, n), sizeof(float) * VE);
        std::memcpy(h[n], h_entry[n], sizeof(float) * VE);
      }
      // Recompute the chunk's decays and states (and y, for the gate's gradient).
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = position(reverse, i);
        float pre[VE], delta[VE], du[VE], u[VE], y[VE];
        token(d, bias, t, pre, delta, du, u);
        for (int l = 0; l < VE; ++l) y[l] = D[l] * u[l];
        const float* Bt = d.B + b * d.B_sb + t * d.B_sl;
        const float* Ct = d.C + b * d.C_sb + t * d.C_sl;
        float* hs = h_buf + (i - i0) * N * VE;
        float* as = a_buf + (i - i0) * N * VE;
        for (int64_t n = 0; n < N; ++n) {
          const float bn = Bt[n], cn = Ct[n];
#pragma omp simd
          for (int l = 0; l < VE; ++l) {
            const float a = exp2_fast(delta[l] * A2[n][l]);
            h[n][l] = a * h[n][l] + du[l] * bn;
            y[l] += h[n][l] * cn;
            as[n * VE + l] = a;
            hs[n * VE + l] = h[n][l];
          }
        }
        if (p.dz != nullptr) {
          float* ys = p.dz + (b * L + t) * E + e0;
          for (int l = 0; l < VE; ++l) ys[l] = dir == 0 ? y[l] : ys[l] + y[l];
        }
      }
      // Adjoint walk over the chunk, against the scan order.
      for (int64_t i = i1 - 1; i >= i0; --i) {
        const int64_t t = position(reverse, i);
        float pre[VE], delta[VE], du[VE], u[VE], g[VE], s[VE], ddelta[VE];
        token(d, bias, t, pre, delta, du, u);
        gate(t, g);
        const float* go = p.grad_out + (b * L + t) * E + e0;
        for (int l = 0; l < VE; ++l) {
          g[l] *= 0.5f * go[l];  // d loss / d y of this direction
          s[l] = ddelta[l] = 0.0f;
        }
        const float* Bt = d.B + b * d.B_sb + t * d.B_sl;
        const float* Ct = d.C + b * d.C_sb + t * d.C_sl;
        const float* hs = h_buf + (i - i0) * N * VE;
        const float* as = a_buf + (i - i0) * N * VE;
        const float* hp = i > i0 ? hs - N * VE : nullptr;
        float* dBt = dB_base + t * N;
        float* dCt = dC_base + t * N;
        for (int64_t n = 0; n < N; ++n) {
          const float bn = Bt[n], cn = Ct[n];
          const float* hprev = hp ? hp + n * VE : h_entry[n];
          float dB_sum = 0.0f, dC_sum = 0.0f;
#pragma omp simd reduction(+ : dB_sum, dC_sum)
          for (int l = 0; l < VE; ++l) {
            const float a = as[n * VE + l];
            const float dh = carry[n][l] + g[l] * cn;
            dC_sum += g[l] * hs[n * VE + l];
            dB_sum += dh * du[l];
            s[l] += dh * bn;
            const float q = dh * a * hprev[l];  // d loss / d log(a)
            dA[n][l] += q * delta[l];
            ddelta[l] += q * A[n][l];
            carry[n][l] = a * dh;
          }
          dBt[n] += dB_sum;
          dCt[n] += dC_sum;
        }
        float* du_out = d.du + (b * L + t) * E + e0;
        float* ddt_out = d.ddt + (b * L + t) * E + e0;
#pragma omp simd
        for (int l = 0; l < VE; ++l) {
          du_out[l] = s[l] * delta[l] + g[l] * D[l];
          const float dd = ddelta[l] + s[l] * u[l];
          const float ddt = pre[l] > 20.0f ? dd : dd * sigmoid_fast(pre[l]);
          ddt_out[l] = ddt;
          dD[l] += g[l] * u[l];
          dbias[l] += ddt;
        }
      }
    }
    for (int l = 0; l < VE; ++l) {
      for (int64_t n = 0; n < N; ++n) d.dA[(b * E + e0 + l) * N + n] = dA[n][l];
      if (d.dD) d.dD[b * E + e0 + l] = dD[l];
      if (d.dbias) d.dbias[b * E + e0 + l] = dbias[l];
    }
  }

  // dz = grad_out * (y0 + y1) / 2 * silu'(z), with y0 + y1 accumulated in p.dz by backward().
  void gate_gradient() const {
    for (int64_t t = 0; t < p.length; ++t) {
      const float* zp = p.z + b * p.z_sb + t * p.z_sl + e0;
      const float* go = p.grad_out + (b * p.length + t) * p.channels + e0;
      float* dz = p.dz + (b * p.length + t) * p.channels + e0;
#pragma omp simd
      for (int l = 0; l < VE; ++l) {
        const float sg = sigmoid_fast(zp[l]);
        dz[l] = 0.5f * go[l] * dz[l] * sg * (1.0f + zp[l] * (1.0f - sg));
      }
    }
  }
};

// Runs fn(item) for every (batch, channel block): full blocks of VIMAMBA_LANES channels, then single channels.
template <typename FullFn, typename TailFn>
void for_each_item(const VimScanProblem& p, FullFn full, TailFn tail) {
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
        full(Item<VIMAMBA_LANES>{p, b, block * VIMAMBA_LANES}, thread);
      } else {
        tail(Item<1>{p, b, full_blocks * VIMAMBA_LANES + (block - full_blocks)}, thread);
      }
    }
  }
}

bool valid(const VimScanProblem* p) {
  return p != nullptr && p->n_state >= 1 && p->n_state <= kMaxState && p->chunk >= 1 && p->length >= 0 &&
         p->n_chunks == (p->length + p->chunk - 1) / p->chunk;
}

}  // namespace

int vimamba_scan_forward(const VimScanProblem* p) {
  if (!valid(p)) return 1;
  auto run = [](auto item, int) { item.forward(0); item.forward(1); };
  for_each_item(*p, run, run);
  return 0;
}

int vimamba_scan_backward(const VimScanProblem* p) {
  if (!valid(p)) return 1;
  const int64_t scratch = p->chunk * p->n_state * VIMAMBA_LANES;
  std::vector<std::vector<float>> buffers(std::max<int64_t>(1, p->num_threads));
  for (auto& buffer : buffers) buffer.resize(2 * scratch);
  auto run = [&](auto item, int thread) {
    float* h_buf = buffers[thread].data();
    item.backward(0, h_buf, h_buf + scratch, thread);
    item.backward(1, h_buf, h_buf + scratch, thread);
    if (p->dz != nullptr) item.gate_gradient();
  };
  for_each_item(*p, run, run);
  return 0;
}
