// Multi-head / grouped-query attention with RoPE, padding and causal masks; explicit backward.
//
// Layouts: q [B, T, H, D], k and v [B, T, KV, D] straight out of the projections (no transpose):
// the head h slice of batch b is a [T, D] matrix with leading dimension H·D (or KV·D), which is
// what gemm_raw takes. P [B, H, T, T] holds the softmax probabilities.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "nn/nn_internal.h"

namespace lorafit::nn {

namespace {

constexpr const char* kOp = "Attention";
// Multiply-adds (B·H·T·T·D) below which the head loop stays on one thread.
constexpr int64_t kParallelWork = int64_t{1} << 20;

std::string cfg_str(const AttentionConfig& c) {
  return "hidden " + std::to_string(c.hidden) + ", n_heads " + std::to_string(c.n_heads) +
         ", n_kv_heads " + std::to_string(c.n_kv_heads) + ", head_dim " +
         std::to_string(c.head_dim);
}

// Which keys query i of head h sees: causal, padding (pad_keys[j] != 0) and the S² groups.
struct Visible {
  bool causal = false;
  const int32_t* pad_keys = nullptr;  // [T] of this batch row, nullptr = no padding
  int64_t group = 0;                  // S² group G, 0 = full attention
  int64_t shift = 0;                  // this head's group offset: 0 or G - G/2
  int64_t seg(int64_t t) const { return (t + shift) / group; }
  bool operator()(int64_t i, int64_t j) const {
    if (causal && j > i) return false;
    if (pad_keys && !pad_keys[j]) return false;
    return group == 0 || seg(i) == seg(j);
  }
  // Keys [lo, hi) that can be visible to some query of [i0, i1).
  void key_range(int64_t i0, int64_t i1, int64_t T, int64_t& lo, int64_t& hi) const {
    lo = 0;
    hi = causal ? i1 : T;
    if (group > 0) {
      lo = std::max<int64_t>(0, seg(i0) * group - shift);
      hi = std::min(hi, std::min<int64_t>(T, (seg(i1 - 1) + 1) * group - shift));
    }
  }
};

constexpr int64_t kTileQ = 64, kTileK = 64;

// A per-thread BF16 scratch of n values, kept between calls (no fresh pages per head).
uint16_t* bf16_scratch(int slot, int64_t n) {
  thread_local std::vector<uint16_t> buf[2];
  std::vector<uint16_t>& b = buf[slot];
  if (b.size() < static_cast<size_t>(n)) b.resize(static_cast<size_t>(n));
  return b.data();
}

// x [B, T, n] fp32 as BF16 bits in the arena.
Tensor to_bf16(Context& ctx, const Tensor& x) {
  Tensor y = ctx.alloc(x.shape(), DType::BF16);
  kernels::f32_to_bf16(x.f32(), y.u16(), x.numel());
  return y;
}

int64_t s2_group_for(const AttentionConfig& c, const Context& ctx, int64_t T) {
  if (!ctx.training || c.s2_ratio <= 0.0f) return 0;
  return std::max<int64_t>(2, std::llround(static_cast<double>(T) * c.s2_ratio));
}

struct Masking {
  bool causal = false;
  const int32_t* pad = nullptr;  // [B, T], nullptr = no padding
  int64_t T = 0, H = 0, group = 0;
  Visible at(int64_t b, int64_t h) const {
    Visible v;
    v.causal = causal;
    v.pad_keys = pad ? pad + b * T : nullptr;
    v.group = group;
    v.shift = group > 0 && h >= H / 2 ? group - group / 2 : 0;
    return v;
  }
};

// FlashAttention-2 forward: per (b, h) and query tile, the key tiles update a running row max m,
// a running sum l and the unnormalised output (written straight into out, which is zero).
// out /= l at the end; lse = m + log l (-inf for a row with no visible key: its output is 0).
void tiled_forward(const Masking& mk, int64_t B, int64_t KV, int64_t D, const Tensor& qf,
                   const Tensor& kf, const Tensor& vf, Tensor& out, Tensor& lse) {
  const int64_t T = mk.T, H = mk.H, group = H / KV, HD = H * D, KVD = KV * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float ninf = -std::numeric_limits<float>::infinity();
  const float *qp = qf.f32(), *kp = kf.f32(), *vp = vf.f32();
  float *op = out.f32(), *lp = lse.f32();
  const bool par = B * H > 1 && B * H * T * T * D >= kParallelWork;
#pragma omp parallel for schedule(dynamic) if (par)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H, g = h / group;
    const Visible vis = mk.at(b, h);
    std::vector<float> s(kTileQ * kTileK), m(kTileQ), l(kTileQ);
    const float* qh = qp + b * T * HD + h * D;
    const float* kg = kp + b * T * KVD + g * D;
    const float* vg = vp + b * T * KVD + g * D;
    float* oh = op + b * T * HD + h * D;
    for (int64_t i0 = 0; i0 < T; i0 += kTileQ) {
      const int64_t ni = std::min(kTileQ, T - i0);
      std::fill(m.begin(), m.end(), ninf);
      std::fill(l.begin(), l.end(), 0.0f);
      int64_t lo, hi;
      vis.key_range(i0, i0 + ni, T, lo, hi);
      for (int64_t j0 = lo; j0 < hi; j0 += kTileK) {
        const int64_t nj = std::min(kTileK, hi - j0);
        // S = scale · q_i k_jᵀ  [ni, nj]
        kernels::gemm_raw(false, true, ni, nj, D, scale, qh + i0 * HD, HD, kg + j0 * KVD, KVD,
                          0.0f, s.data(), kTileK);
        for (int64_t r = 0; r < ni; ++r) {
          float* sr = s.data() + r * kTileK;
          float mx = m[r];
          for (int64_t c = 0; c < nj; ++c) {
            if (!vis(i0 + r, j0 + c)) sr[c] = ninf;
            mx = std::max(mx, sr[c]);
          }
          if (mx == ninf) {  // nothing visible yet: P row is 0, nothing to rescale
            std::fill(sr, sr + nj, 0.0f);
            continue;
          }
          const float alpha = std::exp(m[r] - mx);  // 0 when m was -inf
          float sum = 0.0f;
          for (int64_t c = 0; c < nj; ++c) {
            sr[c] = sr[c] == ninf ? 0.0f : std::exp(sr[c] - mx);
            sum += sr[c];
          }
          l[r] = l[r] * alpha + sum;
          m[r] = mx;
          if (alpha != 1.0f) {
            float* orow = oh + (i0 + r) * HD;
            for (int64_t e = 0; e < D; ++e) orow[e] *= alpha;
          }
        }
        // out_i += P v_j
        kernels::gemm_raw(false, false, ni, D, nj, 1.0f, s.data(), kTileK, vg + j0 * KVD, KVD,
                          1.0f, oh + i0 * HD, HD);
      }
      for (int64_t r = 0; r < ni; ++r) {
        float* orow = oh + (i0 + r) * HD;
        float* lrow = lp + bh * T + i0 + r;
        if (l[r] > 0.0f) {
          const float inv = 1.0f / l[r];
          for (int64_t e = 0; e < D; ++e) orow[e] *= inv;
          *lrow = m[r] + std::log(l[r]);
        } else {
          *lrow = ninf;
        }
      }
    }
  }
}

}  // namespace

Attention::Attention(const AttentionConfig& c) : cfg(c) {
  if (cfg.n_kv_heads == 0) cfg.n_kv_heads = cfg.n_heads;
  lorafit::check(cfg.hidden > 0 && cfg.n_heads > 0 && cfg.n_kv_heads > 0, kOp,
                 "hidden, n_heads and n_kv_heads must be positive (" + cfg_str(cfg) + ")");
  if (cfg.head_dim == 0) {
    lorafit::check(cfg.hidden % cfg.n_heads == 0, kOp,
                   "hidden must be divisible by n_heads when head_dim is 0 (" + cfg_str(cfg) + ")");
    cfg.head_dim = cfg.hidden / cfg.n_heads;
  }
  lorafit::check(cfg.head_dim > 0, kOp, "head_dim must be positive (" + cfg_str(cfg) + ")");
  lorafit::check(cfg.n_heads % cfg.n_kv_heads == 0, kOp,
                 "n_kv_heads must divide n_heads (" + cfg_str(cfg) + ")");
  lorafit::check(!cfg.rope || cfg.head_dim % 2 == 0, kOp,
                 "RoPE needs an even head_dim (" + cfg_str(cfg) + ")");
  lorafit::check(cfg.dropout >= 0.0f && cfg.dropout < 1.0f, kOp,
                 "dropout must be in [0, 1), got " + std::to_string(cfg.dropout));
  lorafit::check(cfg.s2_ratio >= 0.0f && cfg.s2_ratio <= 1.0f, kOp,
                 "s2_ratio must be in [0, 1] (0 = full attention), got " +
                     std::to_string(cfg.s2_ratio));
  const int64_t hd = cfg.n_heads * cfg.head_dim, kvd = cfg.n_kv_heads * cfg.head_dim;
  q = Linear(cfg.hidden, hd, cfg.qkv_bias);
  k = Linear(cfg.hidden, kvd, cfg.qkv_bias);
  v = Linear(cfg.hidden, kvd, cfg.qkv_bias);
  o = Linear(hd, cfg.hidden, cfg.out_bias);
}

const kernels::RopeTable& Attention::rope_table(const Tensor& positions) {
  int64_t max_pos = 0;
  const int32_t* p = positions.i32();
  for (int64_t i = 0; i < positions.numel(); ++i) {
    NN_CHECK(p[i] >= 0, kOp, "RoPE position " + std::to_string(p[i]) + " is negative");
    max_pos = std::max<int64_t>(max_pos, p[i]);
  }
  if (!cfg.rope_cache) cfg.rope_cache = std::make_shared<RopeCache>();
  // transformers' dynamic NTK takes the sequence length as the largest position + 1
  return cfg.rope_cache->table(cfg.rope_theta, cfg.head_dim, cfg.rope_scaling, max_pos + 1);
}

void Attention::parameters(const std::string& prefix, NamedParameters& out) {
  q.parameters(prefix + "q_proj.", out);
  k.parameters(prefix + "k_proj.", out);
  v.parameters(prefix + "v_proj.", out);
  o.parameters(prefix + "o_proj.", out);
}

Tensor Attention::forward(Context& ctx, const Tensor& x, const Tensor& pad_mask,
                          const Tensor& positions) {
  NN_CHECK(cfg.n_heads > 0, kOp, "module was default-constructed; build it from a config");
  NN_CHECK(x.defined() && x.dtype() == DType::F32 && x.ndim() == 3 && x.dim(2) == cfg.hidden, kOp,
           detail::desc("x", x) + ", expected F32[B, T, " + std::to_string(cfg.hidden) + "]");
  const int64_t B = x.dim(0), T = x.dim(1), H = cfg.n_heads, KV = cfg.n_kv_heads, D = cfg.head_dim,
                group = H / KV;
  if (pad_mask.defined())
    NN_CHECK((pad_mask.dtype() == DType::F32 || pad_mask.dtype() == DType::I32) &&
                 (pad_mask.shape() == Shape{B, T}),
             kOp,
             detail::desc("pad_mask", pad_mask) + ", expected F32 or I32[" + std::to_string(B) +
                 ", " + std::to_string(T) + "] for " + detail::desc("x", x));

  // Projections. Linear saves x; the outputs are ours, so RoPE may rotate them in place.
  Tensor qf = q.forward(ctx, x);  // [B, T, H·D]
  Tensor kf = k.forward(ctx, x);  // [B, T, KV·D]
  Tensor vf = v.forward(ctx, x);  // [B, T, KV·D]
  positions_ = Tensor();
  if (cfg.rope) {
    if (positions.defined()) {
      NN_CHECK(positions.dtype() == DType::I32 &&
                   (positions.shape() == Shape{T} || positions.shape() == Shape{B, T}),
               kOp,
               detail::desc("positions", positions) + ", expected I32[" + std::to_string(T) +
                   "] or I32[" + std::to_string(B) + ", " + std::to_string(T) + "]");
      positions_ = positions;
    } else {
      positions_ = ctx.alloc({T}, DType::I32);
      for (int64_t t = 0; t < T; ++t) positions_.i32()[t] = static_cast<int32_t>(t);
    }
    Tensor q4 = qf.view({B, T, H, D});
    Tensor k4 = kf.view({B, T, KV, D});
    const kernels::RopeTable& table = rope_table(positions_);
    kernels::rope_forward(q4, positions_, table, cfg.rope_style);
    kernels::rope_forward(k4, positions_, table, cfg.rope_style);
  }

  const bool pad = pad_mask.defined();
  s2_group_ = s2_group_for(cfg, ctx, T);
  const int64_t hm = s2_group_ > 0 ? 2 : 1;  // S²: the two head halves see different groups
  // Padding as bytes [B, T]: 1 = real key.
  pad_ = Tensor();
  if (pad) {
    pad_ = ctx.alloc({B, T}, DType::I32);
    for (int64_t i = 0; i < B * T; ++i)
      pad_.i32()[i] = (pad_mask.dtype() == DType::F32 ? pad_mask.f32()[i] != 0.0f
                                                      : pad_mask.i32()[i] != 0);
  }
  const Masking masking{cfg.causal, pad ? pad_.i32() : nullptr, T, H, s2_group_};
  drop_ = ctx.training && cfg.dropout > 0.0f;
  // Auto keeps the dense path where dropout on the probabilities is on (the tiled path has none).
  tiled_ = cfg.impl == AttentionConfig::Impl::Tiled ||
           (cfg.impl == AttentionConfig::Impl::Auto && T >= AttentionConfig::kTiledFromT && !drop_);
  NN_CHECK(!(tiled_ && drop_), kOp,
           "the memory-efficient (tiled) attention does not support dropout on the probabilities "
           "(dropout " + std::to_string(cfg.dropout) + ", T " + std::to_string(T) +
               "); use impl Dense");
  q_ = qf;
  k_ = kf;
  v_ = vf;
  b_ = B;
  t_ = T;
  bf16_ = !tiled_ && kernels::compute_dtype() == kernels::ComputeDtype::BF16;
  q16_ = bf16_ ? to_bf16(ctx, qf) : Tensor();
  k16_ = bf16_ ? to_bf16(ctx, kf) : Tensor();
  v16_ = bf16_ ? to_bf16(ctx, vf) : Tensor();
  if (tiled_) {
    att_ = Tensor();
    Tensor out = ctx.zeros({B, T, H * D});
    lse_ = ctx.alloc({B, H, T});
    tiled_forward(masking, B, KV, D, qf, kf, vf, out, lse_);
    out_ = out;
    return o.forward(ctx, out);
  }
  lse_ = Tensor();
  out_ = Tensor();

  // Additive mask [Bm·Hm, T, T] (Bm = B with padding, else 1; Hm = 2 with S², else 1): -inf on
  // keys a query does not see. Undefined when nothing is masked.
  Tensor mask;
  if (pad || cfg.causal || s2_group_ > 0) {
    const int64_t bm = pad ? B : 1;
    mask = ctx.alloc({bm * hm, T, T});
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t b = 0; b < bm; ++b)
      for (int64_t half = 0; half < hm; ++half) {
        const Visible vis = masking.at(b, half == 0 ? 0 : H - 1);
        for (int64_t i = 0; i < T; ++i) {
          float* row = mask.f32() + ((b * hm + half) * T + i) * T;
          for (int64_t j = 0; j < T; ++j) row[j] = vis(i, j) ? 0.0f : ninf;
        }
      }
  }

  if (drop_) {
    drop_seed_ = ctx.seed;
    drop_counter_ = ctx.take_rng(detail::DropoutMask::counters_for(B * H * T * T));
  }
  const detail::DropoutMask dmask(drop_seed_, drop_counter_, cfg.dropout);  // used when drop_
  att_ = ctx.alloc({B, H, T, T});
  Tensor out = ctx.alloc({B, T, H * D});
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float* qp = qf.f32();
  const float* kp = kf.f32();
  const float* vp = vf.f32();
  float* op = out.f32();
  const bool bf16 = bf16_;
  const uint16_t* q16 = bf16 ? q16_.u16() : nullptr;
  const uint16_t* k16 = bf16 ? k16_.u16() : nullptr;
  const uint16_t* v16 = bf16 ? v16_.u16() : nullptr;

  // One task per (b, h); scratch is per task because the arena is not thread-safe. Threads only
  // pay off with enough work per task (waking them costs more than a tiny head's products).
  const bool par = B * H > 1 && B * H * T * T * D >= kParallelWork;
#pragma omp parallel for schedule(dynamic) if (par)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H, g = h / group;
    Tensor s = Tensor::empty({T, T});
    Tensor p = att_.row(b).row(h);                  // [T, T]
    const int64_t qo = b * T * H * D + h * D;       // q_h [T, D], ld H·D
    const int64_t ko = b * T * KV * D + g * D;      // k_g, v_g [T, D], ld KV·D
    // S = scale · q_h k_gᵀ
    if (bf16)
      kernels::gemm_bf16_bits(false, true, T, T, D, scale, q16 + qo, H * D, k16 + ko, KV * D,
                              0.0f, s.f32(), T);
    else
      kernels::gemm_raw(false, true, T, T, D, scale, qp + qo, H * D, kp + ko, KV * D, 0.0f,
                        s.f32(), T);
    const int64_t mrow = (pad ? b : 0) * hm + (hm == 2 && h >= H / 2 ? 1 : 0);
    kernels::softmax_forward(s, mask.defined() ? mask.row(mrow) : Tensor(), p);
    const float* pv = p.f32();
    if (drop_) {  // reuse s for the dropped probabilities
      dmask.apply(s.f32(), p.f32(), bh * T * T, T * T);
      pv = s.f32();
    }
    // out_h = P_h v_g
    if (bf16) {
      uint16_t* p16 = bf16_scratch(0, T * T);
      kernels::f32_to_bf16(pv, p16, T * T);
      kernels::gemm_bf16_bits(false, false, T, D, T, 1.0f, p16, T, v16 + ko, KV * D, 0.0f,
                              op + qo, H * D);
    } else {
      kernels::gemm_raw(false, false, T, D, T, 1.0f, pv, T, vp + ko, KV * D, 0.0f, op + qo,
                        H * D);
    }
  }

  return o.forward(ctx, out);  // [B, T, C]
}

Tensor Attention::backward(Context& ctx, const Tensor& dy, bool need_input_grad) {
  NN_CHECK(att_.defined() || lse_.defined(), kOp, "backward called before forward");
  const int64_t B = b_, T = t_, H = cfg.n_heads, KV = cfg.n_kv_heads, D = cfg.head_dim,
                group = H / KV;
  NN_CHECK(dy.defined() && dy.dtype() == DType::F32 && (dy.shape() == Shape{B, T, cfg.hidden}), kOp,
           detail::desc("dy", dy) + ", expected F32[" + std::to_string(B) + ", " +
               std::to_string(T) + ", " + std::to_string(cfg.hidden) + "]");
  // forward was: y = out Woᵀ
  Tensor dout = o.backward(ctx, dy, true);  // [B, T, H·D]
  if (tiled_) return tiled_backward(ctx, dout, need_input_grad);
  Tensor dq = ctx.alloc({B, T, H * D});
  Tensor dk = ctx.zeros({B, T, KV * D});  // accumulated over the heads of a group
  Tensor dv = ctx.zeros({B, T, KV * D});
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float* qp = q_.f32();
  const float* kp = k_.f32();
  const float* vp = v_.f32();
  const float* dop = dout.f32();
  float *dqp = dq.f32(), *dkp = dk.f32(), *dvp = dv.f32();
  const detail::DropoutMask dmask(drop_seed_, drop_counter_, cfg.dropout);
  const bool bf16 = bf16_;
  Tensor do16 = bf16 ? to_bf16(ctx, dout) : Tensor();
  const uint16_t* q16 = bf16 ? q16_.u16() : nullptr;
  const uint16_t* k16 = bf16 ? k16_.u16() : nullptr;
  const uint16_t* v16 = bf16 ? v16_.u16() : nullptr;
  const uint16_t* dop16 = bf16 ? do16.u16() : nullptr;

  // One task per (b, g): the heads of a group add into the same dk_g, dv_g, so they stay serial.
  const bool par = B * KV > 1 && B * H * T * T * D >= kParallelWork;
#pragma omp parallel for schedule(dynamic) if (par)
  for (int64_t bg = 0; bg < B * KV; ++bg) {
    const int64_t b = bg / KV, g = bg % KV;
    Tensor dp = Tensor::empty({T, T});
    Tensor ds = Tensor::empty({T, T});
    Tensor pd = drop_ ? Tensor::empty({T, T}) : Tensor();
    const int64_t ko = b * T * KV * D + g * D;  // k_g, v_g, dk_g, dv_g [T, D], ld KV·D
    float* dkg = dkp + ko;
    float* dvg = dvp + ko;
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      Tensor p = att_.row(b).row(h);            // [T, T]
      const int64_t qo = b * T * H * D + h * D;  // q_h, dout_h, dq_h [T, D], ld H·D
      float* dqh = dqp + qo;
      const int64_t m0 = (b * H + h) * T * T;  // this head's first mask element
      // forward was: out_h = P'_h v_g, P' = dropout(P)
      if (bf16)
        kernels::gemm_bf16_bits(false, true, T, T, D, 1.0f, dop16 + qo, H * D, v16 + ko, KV * D,
                                0.0f, dp.f32(), T);
      else
        kernels::gemm_raw(false, true, T, T, D, 1.0f, dop + qo, H * D, vp + ko, KV * D, 0.0f,
                          dp.f32(), T);
      const float* pv = p.f32();
      if (drop_) {
        dmask.apply(pd.f32(), p.f32(), m0, T * T);
        dmask.apply(dp.f32(), dp.f32(), m0, T * T);  // dP = dP' · m
        pv = pd.f32();
      }
      if (bf16) {
        uint16_t* p16 = bf16_scratch(0, T * T);
        kernels::f32_to_bf16(pv, p16, T * T);
        kernels::gemm_bf16_bits(true, false, T, D, T, 1.0f, p16, T, dop16 + qo, H * D, 1.0f, dvg,
                                KV * D);
      } else {
        kernels::gemm_raw(true, false, T, D, T, 1.0f, pv, T, dop + qo, H * D, 1.0f, dvg, KV * D);
      }
      // forward was: P = softmax(S + mask); masked entries have P = 0, so dS = 0 there
      kernels::softmax_backward(p, dp, ds);
      // forward was: S = scale · q_h k_gᵀ
      if (bf16) {
        uint16_t* ds16 = bf16_scratch(1, T * T);
        kernels::f32_to_bf16(ds.f32(), ds16, T * T);
        kernels::gemm_bf16_bits(false, false, T, D, T, scale, ds16, T, k16 + ko, KV * D, 0.0f,
                                dqh, H * D);
        kernels::gemm_bf16_bits(true, false, T, D, T, scale, ds16, T, q16 + qo, H * D, 1.0f, dkg,
                                KV * D);
      } else {
        kernels::gemm_raw(false, false, T, D, T, scale, ds.f32(), T, kp + ko, KV * D, 0.0f, dqh,
                          H * D);
        kernels::gemm_raw(true, false, T, D, T, scale, ds.f32(), T, qp + qo, H * D, 1.0f, dkg,
                          KV * D);
      }
    }
  }

  return finish_backward(ctx, dq, dk, dv, need_input_grad);
}

// FlashAttention-2 backward: P = exp(S - lse) is recomputed per tile; with Dᵢ = rowsum(dO ∘ O),
// dS = P ∘ (dP - Dᵢ) is the softmax backward. One task per (b, g) as in the dense path.
Tensor Attention::tiled_backward(Context& ctx, const Tensor& dout, bool need_input_grad) {
  const int64_t B = b_, T = t_, H = cfg.n_heads, KV = cfg.n_kv_heads, D = cfg.head_dim,
                group = H / KV, HD = H * D, KVD = KV * D;
  Tensor dq = ctx.zeros({B, T, HD});
  Tensor dk = ctx.zeros({B, T, KVD});
  Tensor dv = ctx.zeros({B, T, KVD});
  const Masking mk{cfg.causal, pad_.defined() ? pad_.i32() : nullptr, T, H, s2_group_};
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float ninf = -std::numeric_limits<float>::infinity();
  const float *qp = q_.f32(), *kp = k_.f32(), *vp = v_.f32(), *op = out_.f32(),
              *dop = dout.f32(), *lp = lse_.f32();
  float *dqp = dq.f32(), *dkp = dk.f32(), *dvp = dv.f32();
  const bool par = B * KV > 1 && B * H * T * T * D >= kParallelWork;
#pragma omp parallel for schedule(dynamic) if (par)
  for (int64_t bg = 0; bg < B * KV; ++bg) {
    const int64_t b = bg / KV, g = bg % KV;
    std::vector<float> p(kTileQ * kTileK), ds(kTileQ * kTileK), drow(kTileQ);
    const float* kg = kp + b * T * KVD + g * D;
    const float* vg = vp + b * T * KVD + g * D;
    float* dkg = dkp + b * T * KVD + g * D;
    float* dvg = dvp + b * T * KVD + g * D;
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      const Visible vis = mk.at(b, h);
      const float* qh = qp + b * T * HD + h * D;
      const float* oh = op + b * T * HD + h * D;
      const float* doh = dop + b * T * HD + h * D;
      const float* lh = lp + (b * H + h) * T;
      float* dqh = dqp + b * T * HD + h * D;
      for (int64_t i0 = 0; i0 < T; i0 += kTileQ) {
        const int64_t ni = std::min(kTileQ, T - i0);
        for (int64_t r = 0; r < ni; ++r) {
          double acc = 0.0;
          for (int64_t e = 0; e < D; ++e)
            acc += static_cast<double>(doh[(i0 + r) * HD + e]) * oh[(i0 + r) * HD + e];
          drow[r] = static_cast<float>(acc);
        }
        int64_t lo, hi;
        vis.key_range(i0, i0 + ni, T, lo, hi);
        for (int64_t j0 = lo; j0 < hi; j0 += kTileK) {
          const int64_t nj = std::min(kTileK, hi - j0);
          // forward was: P = softmax(S + mask), S = scale · q_i k_jᵀ; P = exp(S - lse)
          kernels::gemm_raw(false, true, ni, nj, D, scale, qh + i0 * HD, HD, kg + j0 * KVD, KVD,
                            0.0f, p.data(), kTileK);
          for (int64_t r = 0; r < ni; ++r) {
            float* pr = p.data() + r * kTileK;
            const float lse = lh[i0 + r];
            for (int64_t c = 0; c < nj; ++c)
              pr[c] = (lse == ninf || !vis(i0 + r, j0 + c)) ? 0.0f : std::exp(pr[c] - lse);
          }
          // forward was: out_i = Σ_j P v_j -> dv_j += Pᵀ dout_i, dP = dout_i v_jᵀ
          kernels::gemm_raw(true, false, nj, D, ni, 1.0f, p.data(), kTileK, doh + i0 * HD, HD,
                            1.0f, dvg + j0 * KVD, KVD);
          kernels::gemm_raw(false, true, ni, nj, D, 1.0f, doh + i0 * HD, HD, vg + j0 * KVD, KVD,
                            0.0f, ds.data(), kTileK);
          for (int64_t r = 0; r < ni; ++r)
            for (int64_t c = 0; c < nj; ++c) {
              const int64_t at = r * kTileK + c;
              ds[at] = p[at] * (ds[at] - drow[r]);
            }
          kernels::gemm_raw(false, false, ni, D, nj, scale, ds.data(), kTileK, kg + j0 * KVD, KVD,
                            1.0f, dqh + i0 * HD, HD);
          kernels::gemm_raw(true, false, nj, D, ni, scale, ds.data(), kTileK, qh + i0 * HD, HD,
                            1.0f, dkg + j0 * KVD, KVD);
        }
      }
    }
  }
  return finish_backward(ctx, dq, dk, dv, need_input_grad);
}

Tensor Attention::finish_backward(Context& ctx, Tensor& dq, Tensor& dk, Tensor& dv,
                                  bool need_input_grad) {
  const int64_t B = b_, T = t_, H = cfg.n_heads, KV = cfg.n_kv_heads, D = cfg.head_dim;
  if (cfg.rope) {
    // forward was: q, k = rope(q), rope(k) in place -> rotate the gradients back
    Tensor dq4 = dq.view({B, T, H, D});
    Tensor dk4 = dk.view({B, T, KV, D});
    const kernels::RopeTable& table = rope_table(positions_);
    kernels::rope_backward(dq4, positions_, table, cfg.rope_style);
    kernels::rope_backward(dk4, positions_, table, cfg.rope_style);
  }
  // forward was: q, k, v = x Wqᵀ, x Wkᵀ, x Wvᵀ -> dx = dq Wq + dk Wk + dv Wv
  Tensor dx = q.backward(ctx, dq, need_input_grad);
  Tensor dxk = k.backward(ctx, dk, need_input_grad);
  Tensor dxv = v.backward(ctx, dv, need_input_grad);
  if (need_input_grad) {
    kernels::add(dx, dxk, dx);
    kernels::add(dx, dxv, dx);
  }
  return dx;
}

}  // namespace lorafit::nn

namespace lorafit::nn {

Attention::KVCache Attention::make_cache(int64_t batch, int64_t max_len) const {
  NN_CHECK(cfg.n_heads > 0 && batch > 0 && max_len > 0, kOp,
           "make_cache needs a built module and positive batch and max_len, got batch " +
               std::to_string(batch) + ", max_len " + std::to_string(max_len));
  KVCache c;
  c.k = Tensor::zeros({batch, max_len, cfg.n_kv_heads, cfg.head_dim});
  c.v = Tensor::zeros({batch, max_len, cfg.n_kv_heads, cfg.head_dim});
  return c;
}

Tensor Attention::forward_cached(Context& ctx, const Tensor& x, KVCache& cache,
                                 const Tensor& pad_mask, const Tensor& positions) {
  NN_CHECK(cfg.n_heads > 0, kOp, "module was default-constructed; build it from a config");
  NN_CHECK(x.defined() && x.dtype() == DType::F32 && x.ndim() == 3 && x.dim(2) == cfg.hidden, kOp,
           detail::desc("x", x) + ", expected F32[B, T, " + std::to_string(cfg.hidden) + "]");
  const int64_t B = x.dim(0), Tn = x.dim(1), H = cfg.n_heads, KV = cfg.n_kv_heads, D = cfg.head_dim,
                group = H / KV, past = cache.len, L = past + Tn;
  NN_CHECK(cache.k.defined() && cache.k.dim(0) == B && cache.k.dim(2) == KV &&
               cache.k.dim(3) == D && cache.v.shape() == cache.k.shape(),
           kOp,
           detail::desc("cache.k", cache.k) + ", expected [" + std::to_string(B) + ", max_len, " +
               std::to_string(KV) + ", " + std::to_string(D) + "] (make_cache)");
  NN_CHECK(L <= cache.capacity(), kOp,
           "cache holds " + std::to_string(past) + " of " + std::to_string(cache.capacity()) +
               " tokens; " + std::to_string(Tn) + " more do not fit");
  if (pad_mask.defined())
    NN_CHECK((pad_mask.dtype() == DType::F32 || pad_mask.dtype() == DType::I32) &&
                 (pad_mask.shape() == Shape{B, L}),
             kOp,
             detail::desc("pad_mask", pad_mask) + ", expected F32 or I32[" + std::to_string(B) +
                 ", " + std::to_string(L) + "] (every cached token)");
  att_ = Tensor();  // the projections' saved inputs change: no backward after this
  lse_ = Tensor();
  bf16_ = false;
  q16_ = k16_ = v16_ = Tensor();

  Tensor qf = q.forward(ctx, x);  // [B, Tn, H·D]
  Tensor kf = k.forward(ctx, x);  // [B, Tn, KV·D]
  Tensor vf = v.forward(ctx, x);
  if (cfg.rope) {
    Tensor pos = positions;
    if (pos.defined()) {
      NN_CHECK(
          pos.dtype() == DType::I32 && (pos.shape() == Shape{Tn} || pos.shape() == Shape{B, Tn}),
          kOp,
          detail::desc("positions", pos) + ", expected I32[" + std::to_string(Tn) + "] or I32[" +
              std::to_string(B) + ", " + std::to_string(Tn) + "]");
    } else {
      pos = ctx.alloc({Tn}, DType::I32);
      for (int64_t t = 0; t < Tn; ++t) pos.i32()[t] = static_cast<int32_t>(past + t);
    }
    Tensor q4 = qf.view({B, Tn, H, D});
    Tensor k4 = kf.view({B, Tn, KV, D});
    const kernels::RopeTable& table = rope_table(pos);
    kernels::rope_forward(q4, pos, table, cfg.rope_style);
    kernels::rope_forward(k4, pos, table, cfg.rope_style);
  }
  // Append: cache[b, past + t] = k[b, t] (rows of KV·D floats).
  const int64_t cap = cache.capacity(), row = KV * D;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      std::copy_n(kf.f32() + (b * Tn + t) * row, row, cache.k.f32() + (b * cap + past + t) * row);
      std::copy_n(vf.f32() + (b * Tn + t) * row, row, cache.v.f32() + (b * cap + past + t) * row);
    }
  cache.len = L;

  // Mask [B, Tn, L]: new query i sits at position past + i.
  const float ninf = -std::numeric_limits<float>::infinity();
  Tensor mask = ctx.alloc({B, Tn, L});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Tn; ++i)
      for (int64_t j = 0; j < L; ++j) {
        bool keep = !(cfg.causal && j > past + i);
        if (pad_mask.defined())
          keep = keep && (pad_mask.dtype() == DType::F32 ? pad_mask.f32()[b * L + j] != 0.0f
                                                         : pad_mask.i32()[b * L + j] != 0);
        mask.f32()[(b * Tn + i) * L + j] = keep ? 0.0f : ninf;
      }
  Tensor out = ctx.alloc({B, Tn, H * D});
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  Tensor s = ctx.alloc({Tn, L}), p = ctx.alloc({Tn, L});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      const float* kg = cache.k.f32() + b * cap * row + g * D;  // [L, D], ld KV·D
      const float* vg = cache.v.f32() + b * cap * row + g * D;
      kernels::gemm_raw(false, true, Tn, L, D, scale, qf.f32() + b * Tn * H * D + h * D, H * D, kg,
                        row, 0.0f, s.f32(), L);
      kernels::softmax_forward(s, mask.row(b), p);
      kernels::gemm_raw(false, false, Tn, D, L, 1.0f, p.f32(), L, vg, row, 0.0f,
                        out.f32() + b * Tn * H * D + h * D, H * D);
    }
  return o.forward(ctx, out);
}

}  // namespace lorafit::nn
