// QLoRA: quantize on load (models::LoadOptions::quantize), adapters (LoRA, DoRA, AdaLoRA) on a
// quantized base against the same adapters on the dequantized values in F32, the bitsandbytes
// 4-bit folder layout written by save_merged_hf / lorafit quantize and read back, and the CLI
// (train --quantize against an fp32 base, quantize, info, merge).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include <unistd.h>

#include "lorafit/io.h"
#include "lorafit/kernels.h"
#include "lorafit/models.h"
#include "lorafit/peft.h"
#include "lorafit/quant.h"
#include "peft_test_util.h"

namespace fs = std::filesystem;
namespace models = lorafit::models;
namespace peft = lorafit::peft;
namespace io = lorafit::io;
namespace nn = lorafit::nn;
namespace ts = lorafit::tensor;
using lorafit::Error;
using ts::DType;
using ts::Tensor;

namespace {

const std::string kFix = std::string(LORAFIT_FIXTURES) + "/models";

std::unique_ptr<models::LlamaModel> llama(const std::string& q, bool dequantize = false,
                                          const std::string& dir = kFix + "/tiny_llama") {
  models::LoadOptions lo;
  lo.quantize = q;
  lo.dequantize = dequantize;
  auto m = models::load_model(dir, lo);
  auto* p = dynamic_cast<models::LlamaModel*>(m.get());
  EXPECT_NE(p, nullptr);
  m.release();
  return std::unique_ptr<models::LlamaModel>(p);
}

Tensor ids_of() {
  Tensor ids = Tensor::empty({2, 7}, DType::I32);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.i32()[i] = static_cast<int32_t>((i * 37 + 5) % 100);
  return ids;
}

// Mean cross-entropy of next-token logits, and its gradient, so adapters get gradients.
Tensor lm_grad(const Tensor& logits, const Tensor& ids) {
  const int64_t B = logits.dim(0), T = logits.dim(1), V = logits.dim(2);
  Tensor targets = Tensor::empty({B * T}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      targets.i32()[b * T + t] = t + 1 < T ? ids.i32()[b * T + t + 1] : -100;
  Tensor probs = Tensor::empty({B * T, V});
  lorafit::kernels::cross_entropy_forward(logits.view({B * T, V}), targets, -100, probs);
  Tensor d = Tensor::empty({B * T, V});
  lorafit::kernels::cross_entropy_backward(probs, targets, -100, 1.0f, d);
  return d.view({B, T, V});
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("lorafit_qlora_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// f must throw lorafit::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const lorafit::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    return;
  }
  ADD_FAILURE() << "did not throw; expected an error containing '" << parts.at(0) << "'";
}

std::pair<int, std::string> run_out(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}

}  // namespace

TEST(QuantizeOnLoad, LayerLinearsQuantizedAsBitsandbytesHeadsKept) {
  auto f = llama("none");
  auto q = llama("nf4-dq");
  ASSERT_EQ(q->layers.size(), f->layers.size());
  for (size_t i = 0; i < q->layers.size(); ++i) {
    for (auto [lq, lf] : {std::pair{&q->layers[i].attn.q, &f->layers[i].attn.q},
                          {&q->layers[i].mlp.down, &f->layers[i].mlp.down}}) {
      ASSERT_EQ(lq->weight.value.dtype(), DType::NF4);
      const ts::Quant4& st = ts::quant4_state(lq->weight.value);
      ts::Quant4 want = ts::quantize_4bit(lf->weight.value.f32(), lf->weight.value.numel(),
                                          ts::Quant4Type::NF4, true);
      EXPECT_TRUE(st.double_quant);
      EXPECT_EQ(st.packed, want.packed);
      EXPECT_EQ(st.absmax_q, want.absmax_q);
      EXPECT_EQ(st.nested_absmax, want.nested_absmax);
    }
  }
  EXPECT_EQ(q->lm_head.weight.value.dtype(), DType::F32);
  EXPECT_EQ(q->embed.weight.value.dtype(), DType::F32);
  EXPECT_EQ(q->source_dtypes().at("model.layers.0.self_attn.q_proj.weight"), "F32");
  // Logits move by the 4-bit rounding (about 9% of each weight here; the random 2-layer model
  // amplifies it into its small logits, so only a loose bound: the bitwise checks are above and
  // in QuantizedBase, the quality check is the training test).
  nn::Context c1, c2;
  Tensor ids = ids_of();
  Tensor lf = f->forward(c2, ids);
  const double d = peft_test::max_abs_diff(q->forward(c1, ids), lf);
  const double scale = peft_test::max_abs(lf);
  std::printf("nf4-dq vs f32 tiny llama logits max abs diff %.3g (logits up to %.3g)\n", d, scale);
  EXPECT_GT(d, 0.0);
  EXPECT_LT(d, 0.5 * scale);
  // ggml blocks of 32: rows of 48 (down_proj) stay as stored.
  auto g = llama("q8_0");
  EXPECT_EQ(g->layers[0].attn.q.weight.value.dtype(), DType::Q8_0);
  EXPECT_EQ(g->layers[0].mlp.down.weight.value.dtype(), DType::F32);
  EXPECT_EQ(llama("fp4")->layers[1].mlp.up.weight.value.dtype(), DType::NF4);
  EXPECT_EQ(ts::quant4_state(llama("fp4")->layers[1].mlp.up.weight.value).type,
            ts::Quant4Type::FP4);
}

TEST(QuantizeOnLoad, BadTypeAndGgufRefusedByName) {
  expect_error([] { llama("nf5"); },
                          {"'nf5' is not a quantization type", "nf4-dq", "q4_1"});
  expect_error([] { llama("nf4", false, kFix + "/tiny_llama.gguf"); },
                          {"tiny_llama.gguf", "--quantize nf4", "a GGUF keeps the types"});
  EXPECT_NO_THROW(llama("none", false, kFix + "/tiny_llama.gguf"));
}

// LoRA (random A and B), DoRA and AdaLoRA (non-zero E) on an NF4 / FP4 / Q4_1 base give the
// logits and adapter gradients of the same adapter on an F32 base holding the dequantized values.
TEST(QuantizedBase, AdaptersEqualTheirDequantizedBase) {
  Tensor ids = ids_of();
  for (const char* qt : {"nf4-dq", "nf4", "fp4", "q4_1"}) {
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE(std::string(qt) + (kind == 0 ? " lora" : kind == 1 ? " dora" : " adalora"));
      auto q = llama(qt);
      auto d = llama(qt, true);
      EXPECT_EQ(d->layers[0].attn.v.weight.value.dtype(), DType::F32);
      peft::AdapterConfig cfg;
      cfg.target_modules = {"all-linear"};
      cfg.r = 4;
      cfg.lora_alpha = 8;
      cfg.init_lora_weights = peft::LoraInit::Random;
      if (kind == 1) cfg.use_dora = true;
      if (kind == 2) {
        cfg.peft_type = "ADALORA";
        cfg.init_r = 4;
        cfg.target_r = 2;
        cfg.total_step = 10;
        cfg.init_lora_weights = peft::LoraInit::Default;
      }
      peft::PeftModel pq(*q, cfg, 7), pd(*d, cfg, 7);
      auto tq = pq.trainable_parameters(), td = pd.trainable_parameters();
      ASSERT_EQ(tq.size(), td.size());
      for (size_t i = 0; i < tq.size(); ++i) {
        if (kind == 2 && tq[i].first.find("lora_E") != std::string::npos)
          for (int64_t j = 0; j < tq[i].second->value.numel(); ++j)
            tq[i].second->value.f32()[j] = td[i].second->value.f32()[j] =
                0.3f * std::sin(static_cast<float>(j + i));
        EXPECT_EQ(peft_test::max_abs_diff(tq[i].second->value, td[i].second->value), 0.0)
            << tq[i].first;
      }
      nn::Context cq, cd;
      Tensor lq = q->forward(cq, ids), ld = d->forward(cd, ids);
      EXPECT_LT(peft_test::max_abs_diff(lq, ld), 2e-5);
      pq.zero_grad();
      pd.zero_grad();
      q->backward(cq, lm_grad(lq, ids));
      d->backward(cd, lm_grad(ld, ids));
      for (size_t i = 0; i < tq.size(); ++i) {
        const double scale = std::max(1e-3, peft_test::max_abs(td[i].second->grad));
        EXPECT_LT(peft_test::max_abs_diff(tq[i].second->grad, td[i].second->grad) / scale, 1e-4)
            << tq[i].first;
      }
      if (kind == 1) {
        // DoRA's row norms from dequantized tiles: the norms of the dequantized weight.
        auto lora = pq.lora_layers();
        ASSERT_FALSE(lora.empty());
        auto* dl = dynamic_cast<peft::DoraLinear*>(lora[0].second);
        ASSERT_NE(dl, nullptr);
        nn::Linear* base = q->linears()[0].second;
        Tensor fast = dl->weight_norm(*base, peft::DoraNorm::Fast);
        Tensor ref = dl->weight_norm(*base, peft::DoraNorm::Reference);
        EXPECT_LT(peft_test::max_abs_diff(fast, ref) / peft_test::max_abs(ref), 1e-5);
        auto* dd = dynamic_cast<peft::DoraLinear*>(pd.lora_layers()[0].second);
        Tensor on_f32 = dd->weight_norm(*d->linears()[0].second, peft::DoraNorm::Reference);
        EXPECT_LT(peft_test::max_abs_diff(fast, on_f32) / peft_test::max_abs(ref), 1e-5);
      }
    }
  }
}

// save_merged_hf in the bitsandbytes layout, read back: the same NF4 bytes and logits.
TEST(Bnb4Folder, WrittenLayoutReadsBackBitExact) {
  auto dir = temp_dir("bnb4");
  for (const char* qt : {"nf4-dq", "nf4", "fp4"}) {
    SCOPED_TRACE(qt);
    auto q = llama(qt);
    const fs::path out = dir / qt;
    peft::save_merged_hf(*q, kFix + "/tiny_llama", out.string(), {}, qt, true);
    auto cfg = io::read_json_file((out / "config.json").string());
    ASSERT_TRUE(cfg.contains("quantization_config"));
    const auto& qc = cfg["quantization_config"];
    EXPECT_EQ(qc["quant_method"], "bitsandbytes");
    EXPECT_EQ(qc["load_in_4bit"], true);
    EXPECT_EQ(qc["bnb_4bit_quant_type"], std::string(qt) == "fp4" ? "fp4" : "nf4");
    EXPECT_EQ(qc["bnb_4bit_use_double_quant"], std::string(qt) == "nf4-dq");
    EXPECT_EQ(qc["llm_int8_skip_modules"], io::json::array({"lm_head"}));
    auto st = io::SafetensorsFile::open((out / "model.safetensors").string());
    const std::string w = "model.layers.0.mlp.down_proj.weight";
    EXPECT_EQ(st.entry(w).dtype_name, "U8");
    EXPECT_EQ(st.entry(w).shape, (ts::Shape{48 * 32 / 2, 1}));
    EXPECT_EQ(st.entry(w + ".absmax").dtype_name, std::string(qt) == "nf4-dq" ? "U8" : "F32");
    EXPECT_EQ(st.contains(w + ".nested_absmax"), std::string(qt) == "nf4-dq");
    const std::string sk = w + ".quant_state.bitsandbytes__" + (std::string(qt) == "fp4" ? "fp4" : "nf4");
    ASSERT_TRUE(st.contains(sk));
    auto js = st.bytes(sk);
    const std::string json(js.begin(), js.end());
    EXPECT_NE(json.find("\"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [32, 48]"),
              std::string::npos)
        << json;
    EXPECT_EQ(st.entry("lm_head.weight").dtype_name, "F32");
    // Read back: NF4 in memory, same codes and statistics, same logits.
    auto r = llama("none", false, out.string());
    const auto& a = ts::quant4_state(r->layers[0].mlp.down.weight.value);
    const auto& b = ts::quant4_state(q->layers[0].mlp.down.weight.value);
    EXPECT_EQ(a.packed, b.packed);
    EXPECT_EQ(a.absmax, b.absmax);
    EXPECT_EQ(a.absmax_q, b.absmax_q);
    EXPECT_EQ(a.offset, b.offset);
    EXPECT_EQ(a.nested_absmax, b.nested_absmax);
    EXPECT_NE(r->source_dtypes().at("model.layers.0.mlp.down_proj.weight").find("bitsandbytes"),
              std::string::npos);
    nn::Context c1, c2;
    Tensor ids = ids_of();
    EXPECT_EQ(peft_test::max_abs_diff(r->forward(c1, ids), q->forward(c2, ids)), 0.0);
    // Dequantized on request (merge): F32 holding the 4-bit values.
    auto f = llama("none", true, out.string());
    EXPECT_EQ(f->layers[0].mlp.down.weight.value.dtype(), DType::F32);
  }
  fs::remove_all(dir);
}

TEST(Bnb4Folder, BadStateNamesTensorAndField) {
  auto dir = temp_dir("bnb4_bad");
  auto q = llama("nf4-dq");
  peft::save_merged_hf(*q, kFix + "/tiny_llama", (dir / "ok").string(), {}, "nf4-dq", true);
  // Rewrite one quant_state with blocksize 128.
  auto st = io::SafetensorsFile::open((dir / "ok/model.safetensors").string());
  std::vector<io::SafetensorsBlob> blobs;
  const std::string sk = "model.layers.1.self_attn.k_proj.weight.quant_state.bitsandbytes__nf4";
  for (const auto& n : st.names()) {
    io::SafetensorsBlob b{n, st.entry(n).dtype_name, st.entry(n).shape, st.bytes(n)};
    if (n == sk) {
      std::string j(b.bytes.begin(), b.bytes.end());
      j.replace(j.find("\"blocksize\": 64"), 15, "\"blocksize\": 128");
      b.bytes.assign(j.begin(), j.end());
      b.shape = {static_cast<int64_t>(j.size())};
    }
    blobs.push_back(std::move(b));
  }
  fs::create_directories(dir / "bad");
  fs::copy_file(dir / "ok/config.json", dir / "bad/config.json");
  io::write_safetensors_blobs((dir / "bad/model.safetensors").string(), blobs);
  expect_error([&] { llama("none", false, (dir / "bad").string()); },
                          {"[bnb4]", "k_proj.weight.quant_state.bitsandbytes__nf4",
                           "field 'blocksize': 128 is not supported (64)"});
  fs::remove_all(dir);
}

// lorafit quantize and info through the CLI, and its refusals by name.
TEST(Cli, QuantizeWritesA4BitFolderThatInfoDescribes) {
  auto dir = temp_dir("cli_quantize");
  const std::string bin = LORAFIT_BINARY, src = kFix + "/tiny_llama";
  auto [rc, out] = run_out(bin + " quantize " + src + " --type nf4-dq --output " + (dir / "q").string());
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("quantized 14 Linear weights"), std::string::npos) << out;
  EXPECT_NE(out.find("relative rounding error"), std::string::npos) << out;
  auto q = llama("none", false, (dir / "q").string());
  auto want = llama("nf4-dq");
  EXPECT_EQ(ts::quant4_state(q->layers[1].mlp.up.weight.value).packed,
            ts::quant4_state(want->layers[1].mlp.up.weight.value).packed);
  auto [rc2, info] = run_out(bin + " info " + (dir / "q").string());
  ASSERT_EQ(rc2, 0) << info;
  EXPECT_NE(info.find("NF4-DQ (bitsandbytes) x 14"), std::string::npos) << info;
  EXPECT_NE(info.find("[32 -> 48] NF4"), std::string::npos) << info;
  // Refusals name what is wrong.
  auto [rc3, e3] = run_out(bin + " quantize " + src + " --type q4_k --output " + (dir / "x").string());
  EXPECT_EQ(rc3, 1);
  EXPECT_NE(e3.find("--type 'q4_k': expected nf4-dq, nf4 or fp4"), std::string::npos) << e3;
  auto [rc4, e4] = run_out(bin + " quantize " + src + " --output " + (dir / "q").string());
  EXPECT_EQ(rc4, 1);
  EXPECT_NE(e4.find("exists (pass --overwrite to replace it)"), std::string::npos) << e4;
  auto [rc5, e5] = run_out(bin + " quantize " + kFix + "/tiny_llama.gguf --output " + (dir / "g").string());
  EXPECT_EQ(rc5, 1);
  EXPECT_NE(e5.find("a GGUF keeps its own types"), std::string::npos) << e5;
  fs::remove_all(dir);
}

// adapter merge onto a quantized base: the F32 export equals the adapter on the quantized base;
// --type nf4-dq prints the rounding it adds and refuses it when it swamps the adapter.
TEST(Cli, MergeOntoQuantizedBaseAndRequantize) {
  auto dir = temp_dir("cli_merge");
  const std::string bin = LORAFIT_BINARY, src = kFix + "/tiny_llama";
  auto q = llama("nf4-dq");
  peft::AdapterConfig cfg;
  cfg.target_modules = {"q_proj", "v_proj", "down_proj"};
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.init_lora_weights = peft::LoraInit::Random;
  Tensor ids = ids_of(), want;
  {
    peft::PeftModel pm(*q, cfg, 3);
    pm.save_pretrained((dir / "ad").string());
    nn::Context c;
    want = q->forward(c, ids).clone();
  }
  auto [rc, out] = run_out(bin + " adapter merge " + (dir / "ad").string() + " --base " + src +
                           " --quantize nf4-dq --out " + (dir / "m").string());
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("(quantized nf4-dq)"), std::string::npos) << out;
  auto m = llama("none", false, (dir / "m").string());
  EXPECT_EQ(m->layers[0].attn.q.weight.value.dtype(), DType::F32);
  nn::Context c;
  EXPECT_LT(peft_test::max_abs_diff(m->forward(c, ids), want), 2e-5);
  // Without --quantize the adapter lands on the fp32 weights: another model.
  auto [rc1, o1] = run_out(bin + " adapter merge " + (dir / "ad").string() + " --base " + src +
                           " --out " + (dir / "m32").string());
  ASSERT_EQ(rc1, 0) << o1;
  nn::Context c1;
  EXPECT_GT(peft_test::max_abs_diff(llama("none", false, (dir / "m32").string())->forward(c1, ids), want),
            1e-4);
  // Re-quantized: the rounding measure is printed; forced, the 4-bit folder loads.
  auto [rc2, o2] = run_out(bin + " adapter merge " + (dir / "ad").string() + " --base " + src +
                           " --quantize nf4-dq --type nf4-dq --force --out " + (dir / "m4").string());
  ASSERT_EQ(rc2, 0) << o2;
  EXPECT_NE(o2.find("rounding to nf4-dq moves the merged weights by up to"), std::string::npos) << o2;
  auto m4 = llama("none", false, (dir / "m4").string());
  EXPECT_EQ(m4->layers[0].attn.q.weight.value.dtype(), DType::NF4);
  nn::Context c4;
  const double d4 = peft_test::max_abs_diff(m4->forward(c4, ids), want);
  std::printf("re-quantized merge vs adapter on the NF4 base: max abs diff %.3g (logits up to %.3g)\n",
              d4, peft_test::max_abs(want));
  EXPECT_GT(d4, 0.0);
  EXPECT_LT(d4, 0.5 * peft_test::max_abs(want));
  auto [rc3, o3] = run_out(bin + " adapter merge " + (dir / "ad").string() + " --base " + src +
                           " --type q4_k --out " + (dir / "x").string());
  EXPECT_EQ(rc3, 1);
  EXPECT_NE(o3.find("'q4_k' is not one of f32, nf4-dq, nf4, fp4 for a model folder base"),
            std::string::npos)
      << o3;
  fs::remove_all(dir);
}

// Interop fixture (tools/ref_qlora.py, transformers 5.23 + bitsandbytes 0.50.2 + PEFT 0.21 on the
// CPU): a 4-bit folder saved by transformers loads with PyTorch's logits; our quantization of the
// same F32 model is byte for byte the folder's; a PEFT adapter trained with bitsandbytes QLoRA
// gives PEFT's logits on our NF4 base.
TEST(Bnb4Folder, TransformersFolderAndPeftQloraAdapterGivePytorchLogits) {
  const std::string dir = std::string(LORAFIT_FIXTURES) + "/qlora";
  auto ref = io::SafetensorsFile::open(dir + "/ref.safetensors");
  Tensor ids = ref.get("input_ids").clone();
  auto theirs = llama("none", false, dir + "/tiny_llama_bnb4");
  EXPECT_EQ(theirs->layers[0].attn.q.weight.value.dtype(), DType::NF4);
  EXPECT_EQ(theirs->source_dtypes().at("model.layers.0.mlp.down_proj.weight"), "NF4-DQ (bitsandbytes)");
  nn::Context c;
  const double d = peft_test::max_abs_diff(theirs->forward(c, ids), ref.get_f32("base_logits"));
  std::printf("transformers' 4-bit folder: max |logits lorafit - torch| = %.3g\n", d);
  EXPECT_LT(d, 2e-5);
  auto ours = llama("nf4-dq", false, dir + "/tiny_llama64");
  for (size_t i = 0; i < ours->layers.size(); ++i)
    for (auto [a, b] : {std::pair{&ours->layers[i].attn.k, &theirs->layers[i].attn.k},
                        {&ours->layers[i].mlp.down, &theirs->layers[i].mlp.down}}) {
      const auto& qa = ts::quant4_state(a->weight.value);
      const auto& qb = ts::quant4_state(b->weight.value);
      EXPECT_EQ(qa.packed, qb.packed);
      EXPECT_EQ(qa.absmax_q, qb.absmax_q);
      EXPECT_EQ(qa.offset, qb.offset);
      EXPECT_EQ(qa.nested_absmax, qb.nested_absmax);
    }
  auto pm = peft::PeftModel::from_pretrained(*theirs, dir + "/qlora_adapter");
  nn::Context c2;
  const double da = peft_test::max_abs_diff(theirs->forward(c2, ids), ref.get_f32("adapter_logits"));
  std::printf("PEFT QLoRA adapter on our NF4 base: max |logits lorafit - PEFT| = %.3g\n", da);
  EXPECT_LT(da, 2e-5);
}
