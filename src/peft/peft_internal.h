// Internal helpers of the peft layer.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lorafit/peft.h"
#include "lorafit/tensor.h"
#include "peft/layers.h"

namespace lorafit::peft {

[[noreturn]] inline void fail(const std::string& msg) { throw Error("[peft] " + msg); }

// The adapter layer classes (the op checker's coverage test wants a case for each).
const std::vector<std::string>& adapter_layer_names();

// PEFT's list matching: key == t or key ends with "." + t, for any t.
bool path_matches_any(const std::vector<std::string>& names, const std::string& key);
// True when key or one of its parent module paths (cut at '.') matches one of names.
bool inside_any(const std::vector<std::string>& names, const std::string& key);

// AdaLoRA (adalora.cpp): the SVDLinear for one target (rank init_r, or the kept rank of the
// config's rank_pattern).
std::unique_ptr<SVDLinear> make_svd_layer(const AdapterConfig& cfg, const std::string& path,
                                          const nn::Linear& lin, uint64_t seed);

// config.cpp hooks for the AdaLoRA fields of adapter_config.json.
void adalora_config_from_json(const io::json& j, AdapterConfig& c, const std::string& where);
void adalora_config_to_json(const AdapterConfig& c, io::json& j);
void adalora_validate(const AdapterConfig& c, const std::string& where);

}  // namespace lorafit::peft

namespace lorafit::peft::linalg {

// Dense linear algebra on row-major double matrices, through LAPACK (libopenblas exports the
// Fortran routines; they are column-major, so we hand them the transpose and read back the
// transposed factors).

// Thin SVD a [m, n] = U diag(S) Vt: U [m, k], S [k] (descending), Vt [k, n], k = min(m, n).
void svd(const std::vector<double>& a, int64_t m, int64_t n, std::vector<double>& U,
         std::vector<double>& S, std::vector<double>& Vt);
// Reduced QR a [m, n] = Q R (Householder, LAPACK's signs, as torch.linalg.qr): Q [m, k],
// R [k, n] upper triangular, k = min(m, n).
void qr(const std::vector<double>& a, int64_t m, int64_t n, std::vector<double>& Q,
        std::vector<double>& R);

}  // namespace lorafit::peft::linalg

namespace lorafit::peft {

// PiSSA / OLoRA init of one LoRA layer (init_svd.cpp): fills A and B from the SVD / QR of the F32
// base weight and rewrites it to W − s·B A.
void init_from_weight(LoraLinear& layer, nn::Linear& base, LoraInit how);
// W += s·B A on an F32 weight [out, in] (B [out, r], A [r, in]), each element summed in double
// and rounded once: the same arithmetic as the init's W − s·B A, so adding back the initial
// B₀ A₀ restores W within float rounding.
void add_low_rank(tensor::Tensor& w, const tensor::Tensor& b, const tensor::Tensor& a, double s);

}  // namespace lorafit::peft
