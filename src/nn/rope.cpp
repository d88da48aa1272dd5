// RoPE scaling: the inverse frequencies of transformers' rope_type variants
// (modeling_rope_utils.py: default, linear, dynamic, llama3, yarn) in double, and the cos/sin
// table shared by the layers of a model.
#include <cmath>
#include <numbers>

#include "nn/nn_internal.h"

namespace lorafit::nn {

namespace {
constexpr const char* kOp = "rope";

[[noreturn]] void bad(const std::string& msg) { lorafit::check(false, kOp, msg); __builtin_unreachable(); }

// YaRN's magnitude correction: 0.1·mscale·ln(scale) + 1 for scale > 1.
double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// Dimension (of D) whose wavelength makes num_rotations turns over max_pos positions.
double yarn_correction_dim(double num_rotations, int64_t d, double base, double max_pos) {
  return (static_cast<double>(d) * std::log(max_pos / (num_rotations * 2.0 * std::numbers::pi))) /
         (2.0 * std::log(base));
}
}  // namespace

const char* rope_type_name(RopeScaling::Type t) {
  switch (t) {
    case RopeScaling::Type::None: return "default";
    case RopeScaling::Type::Linear: return "linear";
    case RopeScaling::Type::Dynamic: return "dynamic";
    case RopeScaling::Type::Llama3: return "llama3";
    case RopeScaling::Type::Yarn: return "yarn";
  }
  return "?";
}

RopeScaling::Type rope_type_from_name(const std::string& name, const std::string& where) {
  for (auto t : {RopeScaling::Type::None, RopeScaling::Type::Linear, RopeScaling::Type::Dynamic,
                 RopeScaling::Type::Llama3, RopeScaling::Type::Yarn})
    if (name == rope_type_name(t)) return t;
  throw Error(where + ": RoPE scaling type '" + name +
              "' is not supported (default, linear, dynamic, llama3, yarn)");
}

RopeFrequencies rope_frequencies(double theta, int64_t d, const RopeScaling& s, int64_t seq_len) {
  using T = RopeScaling::Type;
  if (!(theta > 0.0) || d <= 0 || d % 2 != 0)
    bad("theta must be positive and the head size even, got theta " + std::to_string(theta) +
        ", D " + std::to_string(d));
  const int64_t half = d / 2;
  const char* name = rope_type_name(s.type);
  if (s.type != T::None && !(std::isfinite(s.factor) && s.factor >= 1.0))
    bad(std::string(name) + ": factor must be >= 1, got " + std::to_string(s.factor));
  if ((s.type == T::Dynamic || s.type == T::Llama3 || s.type == T::Yarn) &&
      s.original_max_positions <= 0)
    bad(std::string(name) + ": original_max_position_embeddings must be positive, got " +
        std::to_string(s.original_max_positions));
  double base = theta;
  if (s.type == T::Dynamic && seq_len > s.original_max_positions) {
    const double L = static_cast<double>(seq_len), orig = static_cast<double>(s.original_max_positions);
    base = theta * std::pow(s.factor * L / orig - (s.factor - 1.0),
                            static_cast<double>(d) / static_cast<double>(d - 2));
  }
  RopeFrequencies out;
  out.inv_freq.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    out.inv_freq[static_cast<size_t>(i)] =
        1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(d));
  auto& f = out.inv_freq;
  switch (s.type) {
    case T::None:
    case T::Dynamic: break;
    case T::Linear:
      for (double& x : f) x /= s.factor;
      break;
    case T::Llama3: {
      if (!(s.low_freq_factor > 0.0 && s.high_freq_factor > s.low_freq_factor))
        bad("llama3: need 0 < low_freq_factor < high_freq_factor, got " +
            std::to_string(s.low_freq_factor) + ", " + std::to_string(s.high_freq_factor));
      const double orig = static_cast<double>(s.original_max_positions);
      const double low_wl = orig / s.low_freq_factor, high_wl = orig / s.high_freq_factor;
      for (double& x : f) {
        const double wl = 2.0 * std::numbers::pi / x;
        if (wl > low_wl) {
          x /= s.factor;
        } else if (wl >= high_wl) {  // medium: blend
          const double smooth =
              (orig / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          x = (1.0 - smooth) * x / s.factor + smooth * x;
        }
      }
      break;
    }
    case T::Yarn: {
      if (!(s.beta_fast > 0.0 && s.beta_slow > 0.0))
        bad("yarn: beta_fast and beta_slow must be positive, got " + std::to_string(s.beta_fast) +
            ", " + std::to_string(s.beta_slow));
      if (s.attention_factor > 0.0) {
        out.factor = s.attention_factor;
      } else if (s.mscale != 0.0 && s.mscale_all_dim != 0.0) {
        out.factor = yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim);
      } else {
        out.factor = yarn_mscale(s.factor, 1.0);
      }
      const double orig = static_cast<double>(s.original_max_positions);
      double low = yarn_correction_dim(s.beta_fast, d, theta, orig);
      double high = yarn_correction_dim(s.beta_slow, d, theta, orig);
      if (s.truncate) low = std::floor(low), high = std::ceil(high);
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(d - 1));
      if (low == high) high += 0.001;
      for (int64_t i = 0; i < half; ++i) {
        const double ramp =
            std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrapolation = 1.0 - ramp;  // weight of the unscaled frequency
        double& x = f[static_cast<size_t>(i)];
        x = (x / s.factor) * (1.0 - extrapolation) + x * extrapolation;
      }
      break;
    }
  }
  if (!s.freq_factors.empty()) {
    if (static_cast<int64_t>(s.freq_factors.size()) != half)
      bad("freq_factors has " + std::to_string(s.freq_factors.size()) + " values, expected D/2 = " +
          std::to_string(half));
    for (int64_t i = 0; i < half; ++i) {
      const double ff = s.freq_factors[static_cast<size_t>(i)];
      if (!(std::isfinite(ff) && ff > 0.0))
        bad("freq_factors[" + std::to_string(i) + "] must be positive, got " + std::to_string(ff));
      f[static_cast<size_t>(i)] /= ff;
    }
  }
  return out;
}

const kernels::RopeTable& RopeCache::table(double theta, int64_t d, const RopeScaling& s,
                                           int64_t seq_len) {
  // Only Dynamic's frequencies depend on the length, and only beyond the original one.
  const int64_t key = s.type == RopeScaling::Type::Dynamic && seq_len > s.original_max_positions
                          ? seq_len
                          : 0;
  auto same = [](const RopeScaling& a, const RopeScaling& b) {
    return a.type == b.type && a.factor == b.factor &&
           a.original_max_positions == b.original_max_positions &&
           a.low_freq_factor == b.low_freq_factor && a.high_freq_factor == b.high_freq_factor &&
           a.beta_fast == b.beta_fast && a.beta_slow == b.beta_slow &&
           a.attention_factor == b.attention_factor && a.mscale == b.mscale &&
           a.mscale_all_dim == b.mscale_all_dim && a.truncate == b.truncate &&
           a.freq_factors == b.freq_factors;
  };
  if (!built_ || theta != theta_ || d != d_ || key != key_len_ || !same(s, scaling_)) {
    RopeFrequencies fr = rope_frequencies(theta, d, s, seq_len);
    table_ = kernels::RopeTable(std::move(fr.inv_freq), fr.factor);
    built_ = true;
    theta_ = theta;
    d_ = d;
    key_len_ = key;
    scaling_ = s;
  }
  table_.ensure(seq_len);
  return table_;
}

}  // namespace lorafit::nn
