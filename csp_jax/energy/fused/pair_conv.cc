// Fused CPU kernels of one CGCNN' pair convolution (csp_jax.pair_conv), as XLA FFI handlers.
//
// Per chain, with P, Q: [N, 2d] node projections (gate half first), u: [E, 2d] edge terms
// W3 e without the bias b3: [2d], w: [E] edge weights, mask: [E] (false on padding), r, s: [E]
// the pair's atoms, and f = u + b3:
//
//   forward:  agg[i] = sum over directed edges i <- j of  w * sigmoid(z_gate) * z_core,
//             z = (P_i + Q_j) * f, for both directions (r <- s and s <- r) of every pair edge;
//   backward: given g = d loss / d agg ([N, d]), the cotangents of P, Q ([N, 2d]),
//             u ([E, 2d], also that of f) and w ([E]).
//
// One pass over the edges, nothing per edge kept between the two: the gradient recomputes
// the gate and core terms from P, Q and f. Masked-out edges (and edges whose atoms are out
// of range) carry no message and get zero cotangents. Leading dimensions are a batch of
// chains (vmap), shared out over XLA's intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// exp(x) for float32 (Cephes' polynomial, about 1 ulp), written so that loops calling it
// vectorise.
inline float exp_f32(float x) {
  x = std::min(88.0f, std::max(-88.0f, x));
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid_f32(float z) { return 1.0f / (1.0f + exp_f32(-z)); }

// One chain's inputs.
struct Chain {
  int n, e, d;
  const float *p, *q, *u, *b, *w;
  const bool* mask;
  const int32_t *r, *s;

  bool active(int k) const {
    return mask[k] && r[k] >= 0 && r[k] < n && s[k] >= 0 && s[k] < n;
  }
};

// D: the width d when known at compile time (the loops then unroll), else 0.
template <int D>
void forward_chain(const Chain& c, float* agg) {
  const int d = D > 0 ? D : c.d;
  std::fill(agg, agg + static_cast<int64_t>(c.n) * d, 0.0f);
  for (int k = 0; k < c.e; ++k) {
    if (!c.active(k)) continue;
    const float wk = c.w[k];
    const float* uk = c.u + static_cast<int64_t>(k) * 2 * d;
    for (int dir = 0; dir < 2; ++dir) {
      const int to = dir ? c.s[k] : c.r[k], from = dir ? c.r[k] : c.s[k];
      const float* pt = c.p + static_cast<int64_t>(to) * 2 * d;
      const float* qf = c.q + static_cast<int64_t>(from) * 2 * d;
      float* out = agg + static_cast<int64_t>(to) * d;
#pragma GCC ivdep
      for (int i = 0; i < d; ++i) {
        const float z_gate = (pt[i] + qf[i]) * (uk[i] + c.b[i]);
        const float z_core = (pt[d + i] + qf[d + i]) * (uk[d + i] + c.b[d + i]);
        out[i] += wk * sigmoid_f32(z_gate) * z_core;
      }
    }
  }
}

// One direction (to <- from) of pair edge k; FIRST: the first of the two, which sets gfk.
template <int D, bool FIRST>
inline float backward_direction(const Chain& c, int k, int to, int from, const float* g, float* gp,
                                float* gq, float* gfk) {
  const int d = D > 0 ? D : c.d;
  const float wk = c.w[k];
  const float* uk = c.u + static_cast<int64_t>(k) * 2 * d;
  const float* pt = c.p + static_cast<int64_t>(to) * 2 * d;
  const float* qf = c.q + static_cast<int64_t>(from) * 2 * d;
  const float* gt = g + static_cast<int64_t>(to) * d;
  float* gpt = gp + static_cast<int64_t>(to) * 2 * d;
  float* gqf = gq + static_cast<int64_t>(from) * 2 * d;
  float gwk = 0.0f;
#pragma GCC ivdep
  for (int i = 0; i < d; ++i) {
    const float a_gate = pt[i] + qf[i], a_core = pt[d + i] + qf[d + i];
    const float f_gate = uk[i] + c.b[i], f_core = uk[d + i] + c.b[d + i];
    const float gate = sigmoid_f32(a_gate * f_gate);
    const float product = gate * a_core * f_core;  // the message over w
    gwk += gt[i] * product;
    const float gm = gt[i] * wk;  // d loss / d (sigmoid(z_gate) z_core)
    const float dz_core = gm * gate;
    const float dz_gate = gm * product * (1.0f - gate);
    const float da_gate = dz_gate * f_gate, da_core = dz_core * f_core;
    gpt[i] += da_gate;
    gpt[d + i] += da_core;
    gqf[i] += da_gate;
    gqf[d + i] += da_core;
    gfk[i] = (FIRST ? 0.0f : gfk[i]) + dz_gate * a_gate;
    gfk[d + i] = (FIRST ? 0.0f : gfk[d + i]) + dz_core * a_core;
  }
  return gwk;
}

template <int D>
void backward_chain(const Chain& c, const float* g, float* gp, float* gq, float* gf, float* gw) {
  const int d = D > 0 ? D : c.d;
  std::fill(gp, gp + static_cast<int64_t>(c.n) * 2 * d, 0.0f);
  std::fill(gq, gq + static_cast<int64_t>(c.n) * 2 * d, 0.0f);
  for (int k = 0; k < c.e; ++k) {
    float* gfk = gf + static_cast<int64_t>(k) * 2 * d;
    if (!c.active(k)) {
      std::fill(gfk, gfk + 2 * d, 0.0f);
      gw[k] = 0.0f;
      continue;
    }
    gw[k] = backward_direction<D, true>(c, k, c.r[k], c.s[k], g, gp, gq, gfk) +
            backward_direction<D, false>(c, k, c.s[k], c.r[k], g, gp, gq, gfk);
  }
}

// body(b) for b in [0, count), shared with the pool's threads; returns when all are done.
// Helpers that start late find no work left and never touch `body`.
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t count, F& body) {
  struct Counters {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto counters = std::make_shared<Counters>();
  auto work = [counters, count, &body] {
    for (int64_t b; (b = counters->next.fetch_add(1)) < count;) {
      body(b);
      counters->done.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (counters->done.load() < count) std::this_thread::yield();
}

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;
using Pred = ffi::Buffer<ffi::PRED>;

struct Inputs {
  F32 p, q, u, b, w;
  Pred mask;
  S32 r, s;

  int64_t batch() const {  // product of the leading dimensions of P ([..., N, 2d])
    auto dims = p.dimensions();
    int64_t b = 1;
    for (size_t i = 0; i + 2 < dims.size(); ++i) b *= dims[i];
    return b;
  }

  Chain chain(int64_t b) const {
    auto pd = p.dimensions(), ud = u.dimensions();
    Chain c;
    c.n = static_cast<int>(pd[pd.size() - 2]);
    c.d = static_cast<int>(pd[pd.size() - 1] / 2);
    c.e = static_cast<int>(ud[ud.size() - 2]);
    const int64_t node = static_cast<int64_t>(c.n) * 2 * c.d, edge = static_cast<int64_t>(c.e);
    c.p = p.typed_data() + b * node;
    c.q = q.typed_data() + b * node;
    c.u = u.typed_data() + b * edge * 2 * c.d;
    c.b = this->b.typed_data() + b * 2 * c.d;
    c.w = w.typed_data() + b * edge;
    c.mask = mask.typed_data() + b * edge;
    c.r = r.typed_data() + b * edge;
    c.s = s.typed_data() + b * edge;
    return c;
  }
};

ffi::Error Forward(ffi::ThreadPool pool, F32 p, F32 q, F32 u, F32 b, F32 w, Pred mask, S32 r,
                   S32 s, ffi::Result<F32> agg) {
  const Inputs in{p, q, u, b, w, mask, r, s};
  const Chain c0 = in.chain(0);
  auto run = c0.d == 32 ? forward_chain<32> : c0.d == 64 ? forward_chain<64> : forward_chain<0>;
  auto body = [&](int64_t b) { run(in.chain(b), agg->typed_data() + b * c0.n * c0.d); };
  parallel_for(pool, in.batch(), body);
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, F32 p, F32 q, F32 u, F32 b, F32 w, Pred mask, S32 r,
                    S32 s, F32 g, ffi::Result<F32> gp, ffi::Result<F32> gq, ffi::Result<F32> gu,
                    ffi::Result<F32> gw) {
  const Inputs in{p, q, u, b, w, mask, r, s};
  const Chain c0 = in.chain(0);
  const int64_t node = static_cast<int64_t>(c0.n) * 2 * c0.d, edge = c0.e;
  auto run = c0.d == 32 ? backward_chain<32> : c0.d == 64 ? backward_chain<64> : backward_chain<0>;
  auto body = [&](int64_t b) {
    run(in.chain(b), g.typed_data() + b * c0.n * c0.d, gp->typed_data() + b * node,
        gq->typed_data() + b * node, gu->typed_data() + b * edge * 2 * c0.d,
        gw->typed_data() + b * edge);
  };
  parallel_for(pool, in.batch(), body);
  return ffi::Error::Success();
}

// The inputs both handlers take, in this order.
auto BindInputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<F32>()    // P
      .Arg<F32>()    // Q
      .Arg<F32>()    // u = W3 e
      .Arg<F32>()    // b3
      .Arg<F32>()    // w
      .Arg<Pred>()   // mask
      .Arg<S32>()    // receivers
      .Arg<S32>();   // senders
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CspPairConvForward, Forward,
                              BindInputs().Ret<F32>());  // aggregated messages [N, d]

XLA_FFI_DEFINE_HANDLER_SYMBOL(CspPairConvBackward, Backward,
                              BindInputs()
                                  .Arg<F32>()    // d loss / d aggregated [N, d]
                                  .Ret<F32>()    // d loss / d P
                                  .Ret<F32>()    // d loss / d Q
                                  .Ret<F32>()    // d loss / d u
                                  .Ret<F32>());  // d loss / d w
