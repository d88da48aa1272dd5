// Private helpers shared by the models/ sources: weight reading with checked shapes, config
// getters that name the file, small fp32 loops the kernels layer does not have.
#pragma once

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <string>

#include "lorafit/io.h"
#include "lorafit/models.h"

namespace lorafit::models::detail {

// Throws Error("[models] msg") unless cond.
inline void check(bool cond, const std::string& msg) {
  lorafit::check(cond, "models", msg);
}

// A stored tensor by name, as the file holds it (zero-copy view, any dtype), plus the dtype name
// used in `info`. Returns an undefined tensor when absent.
struct WeightReader {
  std::string file;  // for messages
  std::function<bool(const std::string&)> has;
  std::function<Tensor(const std::string&)> get;
  std::function<std::string(const std::string&)> dtype_name;
  // Called with a name once its owned copy is made (MappedFile::release of its bytes), so that a
  // load's resident set is the copies, not the whole file besides; may be empty.
  std::function<void(const std::string&)> release;
  bool dequantize = false;  // LoadOptions::dequantize
  std::string quantize;     // LoadOptions::quantize ("" = as stored)
};

// Copies t into owned memory as F32 (dequantizing/converting as needed).
Tensor owned_f32(const Tensor& t);
// Copies t into owned memory in a dtype nn::Linear / nn::Embedding multiply (F32, F16, BF16,
// Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K and NF4 kept; others dequantized to F32).
Tensor owned_linear_weight(const Tensor& t);

// Reads `name` from r, checks its shape, records its dtype under `hf_name` in model.source_dtypes
// and returns an owned copy (F32 unless keep_dtype and !r.dequantize, where dtypes that nn
// multiplies stay).
Tensor read_weight(const WeightReader& r, const std::string& name, const Shape& want,
                   bool keep_dtype, Model& m, const std::string& hf_name);

// Fills a Linear from "<name>.weight" (and "<name>.bias" when it has a bias).
void load_linear(const WeightReader& r, const std::string& name, nn::Linear& lin, Model& m,
                 const std::string& hf_name);

// N(0, std²) values from a seeded counter stream (Box-Muller), for freshly initialized heads.
void normal_init(Tensor& t, float std, uint64_t seed, uint64_t stream);

// Mask [B, T] (I32 or F32, or undefined = all ones) as F32.
Tensor mask_f32(const Tensor& mask, int64_t B, int64_t T);

// Whether a backward through the module computes a parameter gradient: a trainable parameter
// (parameters()), or an active adapter on one of `linears` (an adapter's own parameters are not
// in parameters(); an active one counts as training, which only ever keeps work, never drops it).
inline bool linear_trains(const nn::Linear& l) {
  if (l.weight.trainable || l.bias.trainable) return true;
  for (const nn::LinearAdapter* a : l.adapters)
    if (a->active()) return true;
  return false;
}
inline bool module_trains(nn::Module& m, std::initializer_list<const nn::Linear*> linears = {}) {
  for (auto& [name, p] : m.named_parameters())
    if (p->trainable) return true;
  for (const nn::Linear* l : linears)
    if (linear_trains(*l)) return true;
  return false;
}
inline bool attention_trains(nn::Attention& a) {
  return module_trains(a, {&a.q, &a.k, &a.v, &a.o});
}
inline bool mlp_trains(nn::MLP& m) { return module_trains(m, {&m.gate, &m.up, &m.down}); }

// Loaders registered in load_model.
std::unique_ptr<Model> load_bert_folder(const std::string& dir, const io::json& cfg,
                                        const LoadOptions& opts);
std::unique_ptr<Model> load_llama_folder(const std::string& dir, const io::json& cfg,
                                         const LoadOptions& opts);
std::unique_ptr<Model> load_llama_gguf(const io::GgufFile& f, const LoadOptions& opts);

// Limits before allocation. A model is built from its config (every parameter allocated) before
// its weights are read, so what the config claims is first checked against the weight file's
// tensor table (no tensor data is read). `where` is the config ("<dir>/config.json" or the GGUF
// file), `fields` the config fields that size the tensor.
//  - check_claimed_shape: tensor `name` of `file` must be there (have != nullptr) with shape
//    `want`, e.g. vocab_size x hidden_size for the embedding, or a tensor of the last layer
//    num_hidden_layers claims.
//  - check_claimed_params: the parameters the config implies (counted in double, so no product
//    overflows) must be at most kMaxParamsPerByte per byte of tensor data in the file: 1 bit a
//    parameter, below any GGUF or bitsandbytes type.
constexpr double kMaxParamsPerByte = 8.0;
void check_claimed_shape(const std::string& where, const std::string& fields,
                         const std::string& file, const std::string& name, const Shape* have,
                         const Shape& want);
void check_claimed_params(const std::string& where, const std::string& fields, double params,
                          uint64_t data_bytes, const std::string& file);
// The bytes of tensor data in a safetensors folder (sum over its tensors).
uint64_t folder_data_bytes(const io::SafetensorsFolder& f);

// A model given as a file must be a GGUF (by its magic or its .gguf name); anything else (a text
// file, a lone model.safetensors) throws "[models] <path>: not a model: ...".
void check_model_file(const std::string& path);

// A safetensors folder as a WeightReader.
WeightReader folder_reader(const std::shared_ptr<io::SafetensorsFolder>& f, const std::string& dir);

// Frees each layer's temporaries as soon as the layer is done: begin() marks the arena, end(t)
// copies the layer's result (the input gradient in backward, the output in a no_grad forward) into
// one of two ping-pong buffers allocated before the loop and releases everything the layer
// allocated. Without an arena (or not enabled) it does nothing. Only the returned tensor may
// outlive end() (parameter gradients live outside the arena).
class LayerScope {
 public:
  LayerScope(nn::Context& ctx, const Shape& shape, bool enabled = true)
      : arena_(enabled ? ctx.arena : nullptr) {
    if (arena_) {
      buf_[0] = arena_->alloc(shape);
      buf_[1] = arena_->alloc(shape);
    }
  }
  void begin() {
    if (arena_) mark_ = arena_->mark();
  }
  Tensor end(const Tensor& dx) {
    if (!arena_) return dx;
    Tensor& dst = buf_[next_];
    next_ ^= 1;
    check(dx.numel() == dst.numel(), "layer result is " + dx.str() + ", expected " + dst.str());
    std::copy(dx.f32(), dx.f32() + dx.numel(), dst.f32());
    arena_->release(mark_);
    return dst.view(dx.shape());
  }

 private:
  tensor::Arena* arena_;
  tensor::Arena::Mark mark_;
  Tensor buf_[2];
  int next_ = 0;
};

}  // namespace lorafit::models::detail
