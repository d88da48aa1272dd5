// Model base, weight-reading helpers and the architecture registry (load_model).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "lorafit/quant.h"
#include "models/models_internal.h"

namespace lorafit::models {

namespace fs = std::filesystem;

int64_t Model::num_parameters() {
  int64_t n = 0;
  for (auto& [name, p] : named_parameters()) n += p->value.numel();
  return n;
}

void Model::set_trainable(bool t) {
  for (auto& [name, p] : named_parameters()) p->set_trainable(t);
}

void Model::zero_grad() {
  for (auto& [name, p] : named_parameters()) p->zero_grad();
}

Tensor mean_pool(const Tensor& hidden, const Tensor& mask) {
  detail::check(hidden.defined() && hidden.dtype() == DType::F32 && hidden.ndim() == 3,
                "mean_pool: hidden is " +
                    (hidden.defined() ? hidden.str() : std::string("undefined")) +
                    ", expected F32[B, T, C]");
  const int64_t B = hidden.dim(0), T = hidden.dim(1), C = hidden.dim(2);
  Tensor m = detail::mask_f32(mask, B, T);
  Tensor out = Tensor::zeros({B, C});
  const float* h = hidden.f32();
  const float* mp = m.f32();
  float* o = out.f32();
  for (int64_t b = 0; b < B; ++b) {
    // sum_t h[b,t] m[b,t] / clamp(sum_t m[b,t], 1e-9), as sentence-transformers' Pooling
    double msum = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float w = mp[b * T + t];
      msum += w;
      if (w == 0.0f) continue;
      for (int64_t c = 0; c < C; ++c) o[b * C + c] += w * h[(b * T + t) * C + c];
    }
    const float inv = 1.0f / static_cast<float>(std::max(msum, 1e-9));
    for (int64_t c = 0; c < C; ++c) o[b * C + c] *= inv;
  }
  return out;
}

std::vector<std::string> supported_architectures() {
  return {"bert", "roberta", "distilbert", "llama"};
}

std::string head_module_name(const std::string& path) {
  // Path components, so that "classifier" never matches inside another name.
  size_t a = 0;
  while (a <= path.size()) {
    size_t b = path.find('.', a);
    if (b == std::string::npos) b = path.size();
    const std::string part = path.substr(a, b - a);
    for (const char* h : {"lm_head", "classifier", "pooler", "pre_classifier", "score"})
      if (part == h) return part;
    a = b + 1;
  }
  return "";
}

bool is_head_module(const std::string& path) { return !head_module_name(path).empty(); }

const std::vector<std::string>& quantize_choices() {
  static const std::vector<std::string> v = {"nf4", "nf4-dq", "fp4", "q8_0", "q4_0", "q4_1",
                                             "none"};
  return v;
}

void check_quantize(const std::string& q, const std::string& what) {
  if (q.empty()) return;
  for (const auto& c : quantize_choices())
    if (q == c) return;
  std::string all;
  for (const auto& c : quantize_choices()) all += (all.empty() ? "" : ", ") + c;
  throw Error(what + ": '" + q + "' is not a quantization type (expected one of " + all + ")");
}

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& opts) {
  std::error_code ec;
  detail::check(fs::exists(path, ec), path + ": no such file or folder");
  check_quantize(opts.quantize, "[models] quantize");
  if (!fs::is_directory(path, ec)) {
    detail::check_model_file(path);
    detail::check(opts.quantize.empty() || opts.quantize == "none",
                  path + ": --quantize " + opts.quantize +
                      " applies to a full-precision Hugging Face folder; a GGUF keeps the types "
                      "it stores (use --quantize none)");
    io::GgufFile f = io::GgufFile::open(path);
    std::string arch = f.get_string("general.architecture");
    if (arch == "llama") return detail::load_llama_gguf(f, opts);
    throw Error("[models] " + path + ": general.architecture '" + arch +
                "' is not supported (supported: llama)");
  }
  const std::string cfg_path = (fs::path(path) / "config.json").string();
  detail::check(fs::exists(cfg_path, ec), path +
                                              ": no config.json (a Hugging Face model folder "
                                              "needs config.json and model.safetensors)");
  io::json cfg = io::read_json_file(cfg_path);
  detail::check(cfg.is_object(), cfg_path + ": expected a JSON object");
  std::string type = io::json_string(cfg, "model_type", cfg_path);
  if (type == "bert" || type == "roberta" || type == "distilbert")
    return detail::load_bert_folder(path, cfg, opts);
  if (type == "llama") return detail::load_llama_folder(path, cfg, opts);
  throw Error("[models] " + cfg_path + ": field 'model_type': '" + type +
              "' is not supported (supported: bert, roberta, distilbert, llama)");
}

namespace detail {

void check_model_file(const std::string& path) {
  char magic[4] = {};
  std::ifstream(path, std::ios::binary).read(magic, 4);
  if (std::memcmp(magic, "GGUF", 4) != 0 && !path.ends_with(".gguf"))
    throw Error("[models] " + path +
                ": not a model: expected a .gguf file or a Hugging Face model folder "
                "(config.json + model.safetensors)" +
                (path.ends_with(".safetensors") ? "; give the folder that holds it" : ""));
}

Tensor owned_f32(const Tensor& t) {
  if (t.dtype() == DType::F32) return t.clone();
  if (tensor::dtype_is_quantized(t.dtype())) return tensor::dequantize(t);
  return t.to(DType::F32);
}

Tensor owned_linear_weight(const Tensor& t) {
  switch (t.dtype()) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
      return t.clone();
    case DType::NF4:
      return t;  // immutable, its state owned by the tensor's keepalive
    default:
      break;
  }
  return owned_f32(t);
}

Tensor read_weight(const WeightReader& r, const std::string& name, const Shape& want,
                   bool keep_dtype, Model& m, const std::string& hf_name) {
  check(r.has(name), r.file + ": tensor '" + name + "' is missing");
  Tensor t = r.get(name);
  check(t.shape() == want, r.file + ": tensor '" + name + "' is " + tensor::shape_str(t.shape()) +
                               ", expected " + tensor::shape_str(want) + " from the config");
  m.record_source(hf_name, r.dtype_name(name));
  Tensor out = keep_dtype && !r.dequantize ? owned_linear_weight(t) : owned_f32(t);
  if (r.release && !out.same_storage(t)) r.release(name);
  return out;
}


Tensor quantize_weight(const Tensor& w, const std::string& type) {
  if (type == "nf4" || type == "nf4-dq" || type == "fp4") {
    if (w.dim(-1) % 2 != 0) return w;  // two codes per byte along a row
    Tensor f = w.dtype() == DType::F32 ? w : w.to(DType::F32);
    tensor::Quant4 q = tensor::quantize_4bit(
        f.f32(), f.numel(), type == "fp4" ? tensor::Quant4Type::FP4 : tensor::Quant4Type::NF4,
        type == "nf4-dq");
    return tensor::quant4_tensor(std::move(q), w.shape());
  }
  const DType t = type == "q8_0" ? DType::Q8_0 : type == "q4_0" ? DType::Q4_0 : DType::Q4_1;
  if (w.dim(-1) % tensor::kQK != 0) return w;  // rows must be whole blocks of 32
  return tensor::quantize(w, t);
}

void load_linear(const WeightReader& r, const std::string& name, nn::Linear& lin, Model& m,
                 const std::string& hf_name) {
  const bool quantize = !r.quantize.empty() && r.quantize != "none" && !is_head_module(hf_name);
  if (quantize) {
    const std::string key = name + ".weight";
    check(r.has(key), r.file + ": tensor '" + key + "' is missing");
    Tensor t = r.get(key);
    const Shape want{lin.out_features(), lin.in_features()};
    check(t.shape() == want, r.file + ": tensor '" + key + "' is " +
                                 tensor::shape_str(t.shape()) + ", expected " +
                                 tensor::shape_str(want) + " from the config");
    m.record_source(hf_name + ".weight", r.dtype_name(key));
    const DType st = t.dtype();
    if (st == DType::F32 || st == DType::F16 || st == DType::BF16) {
      Tensor q = quantize_weight(t, r.quantize);
      lin.weight.value = r.dequantize ? owned_f32(q)
                         : q.dtype() == st ? owned_linear_weight(q)
                                           : q;  // freshly made, already owned
    } else {
      lin.weight.value = r.dequantize ? owned_f32(t) : owned_linear_weight(t);
    }
    if (r.release && !lin.weight.value.same_storage(t)) r.release(key);
  } else {
    lin.weight.value = read_weight(r, name + ".weight", {lin.out_features(), lin.in_features()},
                                   true, m, hf_name + ".weight");
  }
  if (lin.has_bias())
    lin.bias.value =
        read_weight(r, name + ".bias", {lin.out_features()}, false, m, hf_name + ".bias");
}

void normal_init(Tensor& t, float std, uint64_t seed, uint64_t stream) {
  float* p = t.f32();
  const int64_t n = t.numel();
  const uint64_t base = stream << 40;
  for (int64_t i = 0; i < n; ++i) {
    double u1 = nn::random_uniform(seed, base + 2 * static_cast<uint64_t>(i));
    double u2 = nn::random_uniform(seed, base + 2 * static_cast<uint64_t>(i) + 1);
    double z = std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(2.0 * M_PI * u2);
    p[i] = static_cast<float>(z * std);
  }
}

Tensor mask_f32(const Tensor& mask, int64_t B, int64_t T) {
  if (!mask.defined()) return Tensor::full({B, T}, 1.0f);
  check(mask.shape() == Shape{B, T} && (mask.dtype() == DType::F32 || mask.dtype() == DType::I32),
        "mask is " + mask.str() + ", expected F32 or I32[" + std::to_string(B) + ", " +
            std::to_string(T) + "]");
  if (mask.dtype() == DType::F32) return mask;
  Tensor m = Tensor::empty({B, T});
  for (int64_t i = 0; i < B * T; ++i) m.f32()[i] = static_cast<float>(mask.i32()[i]);
  return m;
}

void check_claimed_shape(const std::string& where, const std::string& fields,
                         const std::string& file, const std::string& name, const Shape* have,
                         const Shape& want) {
  if (!have)
    throw Error("[models] " + where + ": by " + fields + ", tensor '" + name + "' should be " +
                tensor::shape_str(want) + ", but " + file + " does not hold it");
  if (*have != want)
    throw Error("[models] " + where + ": by " + fields + ", tensor '" + name + "' should be " +
                tensor::shape_str(want) + ", but " + file + " holds it as " +
                tensor::shape_str(*have));
}

void check_claimed_params(const std::string& where, const std::string& fields, double params,
                          uint64_t data_bytes, const std::string& file) {
  const double limit = kMaxParamsPerByte * static_cast<double>(data_bytes);
  if (!(params <= limit)) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4g", params);
    throw Error("[models] " + where + ": " + fields + " imply " + buf +
                " parameters, beyond the limit of " + std::to_string(static_cast<uint64_t>(limit)) +
                " (" + std::to_string(static_cast<int>(kMaxParamsPerByte)) +
                " per byte of the " + std::to_string(data_bytes) + " bytes of tensor data in " +
                file + ")");
  }
}

uint64_t folder_data_bytes(const io::SafetensorsFolder& f) {
  uint64_t n = 0;
  for (const std::string& name : f.names()) {
    const io::SafetensorsEntry& e = f.entry(name);
    n += e.end - e.begin;
  }
  return n;
}

WeightReader folder_reader(const std::shared_ptr<io::SafetensorsFolder>& f,
                           const std::string& dir) {
  WeightReader r;
  r.file = (fs::path(dir) / "model.safetensors").string();
  r.has = [f](const std::string& n) { return f->contains(n); };
  r.release = [f](const std::string& n) { f->release(n); };
  // A bitsandbytes 4-bit weight (a folder transformers saved with load_in_4bit) becomes an NF4
  // tensor of its recorded shape; everything else is read as stored.
  r.get = [f, dir](const std::string& n) {
    return io::is_bnb4_weight(*f, n) ? io::read_bnb4_weight(*f, n, dir) : f->get(n);
  };
  r.dtype_name = [f](const std::string& n) {
    return io::is_bnb4_weight(*f, n) ? io::bnb4_type_name(*f, n) : f->entry(n).dtype_name;
  };
  return r;
}

}  // namespace detail
}  // namespace lorafit::models
