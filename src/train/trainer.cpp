// The training loop: micro-batches, accumulation, clipping, AdamW, schedule, evaluation,
// checkpoints (atomic folders), SIGINT, the JSONL log and the progress display.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "lorafit/io.h"
#include "lorafit/train.h"
#include "comm.h"
#include "train_internal.h"

namespace lorafit::train {

namespace fs = std::filesystem;

namespace {

std::atomic<int> g_sigint{0};

void on_sigint(int) {
  if (g_sigint.fetch_add(1) >= 1) _exit(130);  // second Ctrl-C: leave now
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

io::json eval_json(const EvalResult& e, bool lm) {
  io::json j = {{"loss", e.loss}};
  if (lm) j["perplexity"] = e.perplexity;
  else j.update({{"accuracy", e.cls.accuracy}, {"f1", e.cls.f1}, {"mcc", e.cls.mcc}, {"n", e.cls.n}});
  return j;
}

// Higher is better: accuracy for classification, -loss for LM.
double score_of(const EvalResult& e, bool lm) { return lm ? -e.loss : e.cls.accuracy; }

// This rank's contiguous part of a global batch: rank r of n takes [r*B/n, (r+1)*B/n), so the
// union over ranks is the batch one process would take, whatever n is.
std::vector<size_t> shard_of(const std::vector<size_t>& idx, int rank, int n) {
  const size_t B = idx.size(), lo = B * static_cast<size_t>(rank) / static_cast<size_t>(n),
               hi = B * static_cast<size_t>(rank + 1) / static_cast<size_t>(n);
  return {idx.begin() + static_cast<std::ptrdiff_t>(lo), idx.begin() + static_cast<std::ptrdiff_t>(hi)};
}

}  // namespace

void install_sigint_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  // mpirun ends the job on Ctrl-C but forwards SIGUSR1 to every rank: `kill -USR1 <mpirun>`
  // saves and stops a multi-process run (the flag is all-reduced, so all stop at the same step).
  if (process_count() > 1) sigaction(SIGUSR1, &sa, nullptr);
}

int64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

void save_parameters(const std::string& path, const nn::NamedParameters& params) {
  std::vector<std::pair<std::string, Tensor>> ts;
  for (auto& [n, p] : params) ts.emplace_back(n, p->value);
  io::write_safetensors(path, ts, {{"format", "pt"}});
}

void load_parameters(const std::string& path, const nn::NamedParameters& params) {
  auto f = io::SafetensorsFile::open(path);
  for (auto& [n, p] : params) {
    if (!f.contains(n)) throw Error("[train] " + path + ": no tensor '" + n + "'");
    Tensor t = f.get_f32(n);
    if (t.shape() != p->value.shape())
      throw Error("[train] " + path + ": '" + n + "' is " + tensor::shape_str(t.shape()) +
                  ", the model expects " + tensor::shape_str(p->value.shape()));
    if (p->value.dtype() == tensor::DType::F32) p->value.copy_from(t);
    else p->value.copy_from(t.to(p->value.dtype()));
  }
}

float Task::forward_backward(nn::Context& ctx, const Batch& b, float dloss,
                             std::vector<float>* probs_out) {
  check(model->is_causal_lm() == lm, "train",
        std::string(lm ? "causal LM needs a Llama-family model, got "
                       : "classification needs a BERT-family model, got ") +
            model->config().arch);
  // No one here reads the gradient w.r.t. the input embeddings: the backward may stop at the
  // lowest layer that trains (Model::input_grad), restored on the way out.
  struct InputGradOff {
    models::Model& m;
    bool was;
    explicit InputGradOff(models::Model& mm) : m(mm), was(mm.input_grad) { m.input_grad = false; }
    ~InputGradOff() { m.input_grad = was; }
  } input_grad_off(*model);
  // LM: the head and its loss over chunks of tokens (about 32 MiB of logits each), never the
  // whole [B·T, V] logits and their gradient.
  if (lm && !probs_out) {
    const int64_t V = model->config().vocab;
    const int64_t rows = std::max<int64_t>(16, (int64_t{8} << 20) / std::max<int64_t>(V, 1));
    if (auto loss = model->lm_loss_chunked(ctx, b.ids, b.mask, b.targets, -100, dloss, rows))
      return *loss;
  }
  // Classification: logits [B, L] against labels [B]; LM: [B, T, V] against next tokens [B, T].
  Tensor logits = model->logits(ctx, b.ids, b.mask, b.type_ids);
  const int64_t V = logits.dim(-1), N = logits.numel() / V;
  Tensor flat = logits.view({N, V});
  Tensor tg = b.targets.view({N});
  Tensor probs = ctx.alloc({N, V});
  float loss = kernels::cross_entropy_forward(flat, tg, -100, probs);
  if (probs_out) probs_out->assign(probs.f32(), probs.f32() + probs.numel());
  if (dloss != 0.0f) {
    Tensor dlogits = ctx.alloc({N, V});
    kernels::cross_entropy_backward(probs, tg, -100, dloss, dlogits);
    model->logits_backward(ctx, dlogits.view(logits.shape()));
  }
  return loss;
}

EvalResult evaluate(Task& task, const std::vector<Sample>& samples, size_t batch_size,
                    int32_t pad_id, int64_t max_batches, std::vector<std::vector<float>>* probs,
                    tensor::Arena* shared_arena) {
  tensor::Arena own_arena;
  tensor::Arena& arena = shared_arena ? *shared_arena : own_arena;
  arena.reset();
  nn::Context ctx;
  ctx.arena = &arena;
  ctx.training = false;
  ctx.no_grad = true;  // no backward: layers' activations are freed as the forward goes
  EvalResult r;
  double loss_sum = 0;
  int64_t counted = 0;
  std::vector<int32_t> pred, gold;
  // Batches of similar lengths (less padding: an evaluation is forward only and as fast per
  // token as the padding allows): the evaluated samples (the first max_batches · batch_size in
  // file order when limited) sorted by length, stable; predictions go back to file order below.
  size_t n_eval = samples.size();
  if (max_batches > 0)
    n_eval = std::min(n_eval, static_cast<size_t>(max_batches) * batch_size);
  std::vector<size_t> order(n_eval);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    return samples[x].ids.size() < samples[y].ids.size();
  });
  std::vector<std::vector<size_t>> batches;
  for (size_t i = 0; i < n_eval; i += batch_size)
    batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(i),
                         order.begin() + static_cast<std::ptrdiff_t>(std::min(n_eval, i + batch_size)));
  std::vector<std::vector<float>> probs_by_sample(probs ? n_eval : 0);
  // Several processes: batch i is evaluated by rank i mod n and the sums are all-reduced. The
  // probabilities (predict) stay with one process.
  Communicator& comm = world();
  const int nr = probs ? 1 : comm.size(), me = probs ? 0 : comm.rank();
  size_t n_rows = 0;
  for (auto& idx : batches) n_rows += idx.size();
  // Per row in batch order: predicted label + 1 and gold label + 1 (0: no gold), for the reduce.
  std::vector<float> rows(nr > 1 && !task.lm ? 2 * n_rows : 0, 0.0f);
  size_t row0 = 0;
  const double t_forward = now_seconds();  // the batches only: no tokenizing or loading
  for (size_t bi = 0; bi < batches.size(); row0 += batches[bi].size(), ++bi) {
    const auto& idx = batches[bi];
    if (static_cast<int>(bi % static_cast<size_t>(nr)) != me) continue;
    Batch b = make_batch(samples, idx, pad_id, task.lm);
    std::vector<float> pr;
    float loss = task.forward_backward(ctx, b, 0.0f, task.lm ? nullptr : &pr);
    loss_sum += static_cast<double>(loss) * static_cast<double>(b.counted);
    counted += b.counted;
    r.tokens += b.tokens;
    if (!task.lm) {
      const size_t L = pr.size() / idx.size();
      for (size_t i = 0; i < idx.size(); ++i) {
        auto* row = pr.data() + i * L;
        const auto pr_label = static_cast<int32_t>(std::max_element(row, row + L) - row);
        if (!rows.empty()) {
          rows[2 * (row0 + i)] = static_cast<float>(pr_label + 1);
          rows[2 * (row0 + i) + 1] = static_cast<float>(std::max(samples[idx[i]].label, -1) + 1);
          continue;
        }
        pred.push_back(pr_label);
        if (samples[idx[i]].label >= 0) gold.push_back(samples[idx[i]].label);
        if (probs) probs_by_sample[idx[i]].assign(row, row + L);
      }
    }
    arena.reset();
  }
  if (nr > 1) {
    rows.push_back(static_cast<float>(loss_sum));
    rows.push_back(static_cast<float>(counted));
    rows.push_back(static_cast<float>(r.tokens));
    comm.allreduce_sum(rows.data(), rows.size(), "the evaluation all-reduce");
    r.tokens = static_cast<int64_t>(rows.back());
    counted = static_cast<int64_t>(rows[rows.size() - 2]);
    loss_sum = rows[rows.size() - 3];
    for (size_t i = 0; !task.lm && i < n_rows; ++i) {
      pred.push_back(static_cast<int32_t>(rows[2 * i]) - 1);
      if (rows[2 * i + 1] > 0) gold.push_back(static_cast<int32_t>(rows[2 * i + 1]) - 1);
    }
  }
  r.seconds = now_seconds() - t_forward;
  if (probs)  // file order
    for (auto& p : probs_by_sample) probs->push_back(std::move(p));
  r.loss = counted ? loss_sum / static_cast<double>(counted) : 0.0;
  r.perplexity = std::exp(r.loss);
  if (!task.lm && gold.size() == pred.size()) {
    const auto L = static_cast<int64_t>(task.model->config().num_labels);
    r.cls = classification_metrics(pred, gold, std::max<int64_t>(L, 2));
  }
  return r;
}

int64_t total_optimizer_steps(size_t n_train, const TrainOptions& opt) {
  const auto n_batches = static_cast<int64_t>((n_train + opt.batch_size - 1) / opt.batch_size);
  const int64_t steps_per_epoch = std::max<int64_t>(1, n_batches / std::max<int64_t>(1, opt.grad_accum));
  return opt.max_steps > 0 ? opt.max_steps : opt.epochs * steps_per_epoch;
}

TrainSummary run_training(Task& task, const nn::NamedParameters& params,
                          const std::vector<Sample>& train_set, const std::vector<Sample>& val_set,
                          int32_t pad_id, const TrainOptions& opt, const std::string& resume) {
  check(!train_set.empty(), "train", "the training set is empty");
  check(!params.empty(), "train", "no trainable parameters");
  check(opt.grad_accum >= 1, "train", "grad_accum must be >= 1");
  const std::string out = opt.output_dir;
  {
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) throw Error("[train] output folder " + out + ": cannot create: " + ec.message());
  }

  // Parameter groups by the role the owner gave each parameter: no weight decay on biases and
  // norms (as transformers' Trainer); LoRA+ (Hayou et al. 2024) trains lora_B with a larger
  // learning rate.
  std::vector<ParamGroup> groups;
  for (auto& [name, p] : params) {
    ParamGroup g{name, p, 1.0f, opt.weight_decay};
    if (p->role == nn::ParamRole::Bias || p->role == nn::ParamRole::Norm) g.weight_decay = 0.0f;
    if (p->role == nn::ParamRole::LowRankB) g.lr_mult = opt.loraplus_ratio;
    groups.push_back(g);
  }
  AdamW adam(groups, opt.adam);
  // Data parallel: each rank runs its part of every micro-batch; one all-reduce per optimizer
  // step sums the trainable gradients (one bucket), this rank's loss share and its Ctrl-C flag.
  Communicator& comm = world();
  const int n_ranks = comm.size(), rank = comm.rank();
  const bool root = comm.is_root();
  size_t n_grad = 0;
  for (auto& g : groups) n_grad += static_cast<size_t>(g.param->grad.numel());
  std::vector<float> bucket(n_ranks > 1 ? n_grad + 2 : 0);

  const int64_t total = total_optimizer_steps(train_set.size(), opt);
  const int64_t warmup = opt.warmup_steps >= 0
                             ? opt.warmup_steps
                             : static_cast<int64_t>(std::ceil(opt.warmup_ratio * static_cast<double>(total)));

  RunState st;
  st.total_steps = total;
  st.warmup_steps = warmup;
  if (!resume.empty()) {
    load_checkpoint(resume, params, adam, st);
    check(st.total_steps == total, "train",
          resume + ": the checkpoint was for " + std::to_string(st.total_steps) +
              " steps, this run has " + std::to_string(total) + "; resume with the same options");
  }
  TrainOptions log_opt = opt;
  if (!root) log_opt.quiet = true;  // rank 0 alone logs and prints
  Logger log(root ? out + "/log.jsonl" : "/dev/null", !resume.empty(), log_opt, total);

  tensor::Arena arena;
  nn::Context ctx;
  ctx.arena = &arena;
  ctx.seed = opt.seed;
  if (n_ranks > 1) {
    char b[200];
    std::snprintf(b, sizeof b,
                  "data parallel: %d processes x %d threads; %zu gradient values (%.3f MB) "
                  "all-reduced per optimizer step",
                  n_ranks, kernels::num_threads(), n_grad, 4e-6 * static_cast<double>(n_grad));
    log.note(b);
  }
  auto batches = epoch_batches(train_set, opt.batch_size, opt.seed, st.epoch, true);

  auto save_ckpt = [&](const std::string& dir) {
    io::write_folder_atomic(dir, [&](const std::string& tmp) {
      if (opt.save_weights) opt.save_weights(tmp);
      save_parameters(tmp + "/trainable.safetensors", params);
      auto sd = adam.state();
      io::write_safetensors(tmp + "/optimizer.safetensors", sd);
      io::json j = st.to_json();
      j["config"] = opt.config_json.empty() ? io::json::object() : io::json::parse(opt.config_json);
      io::write_json_file(tmp + "/trainer_state.json", j);
    });
  };
  auto run_eval = [&]() {
    EvalResult e =
        evaluate(task, val_set, opt.batch_size * 2, pad_id, opt.eval_batches, nullptr, &arena);
    io::json j = eval_json(e, task.lm);
    log.eval(st.step, j);
    const double s = score_of(e, task.lm);
    if (!st.has_best || s > st.best_score) {
      st.has_best = true;
      st.best_score = s;
      st.best_step = st.step;
      st.best_eval = j;
      if (root)
        io::write_folder_atomic(out + "/best", [&](const std::string& tmp) {
        if (opt.save_weights) opt.save_weights(tmp);
        save_parameters(tmp + "/trainable.safetensors", params);
        io::write_json_file(tmp + "/eval.json", io::json{{"step", st.step}, {"eval", j}});
      });
    }
    return e;
  };

  TrainSummary sum;
  const double t0 = now_seconds();
  const double prior_seconds = st.seconds;
  const int64_t prior_tokens = st.tokens;
  const int64_t start_step = st.step;
  g_sigint = 0;
  bool stop_asked = false;
  while (st.step < total) {
    // Gather the micro-batches of this step first: each one's loss is weighted by its share of
    // the counted rows, so k micro-batches give exactly the gradient of one batch k x larger.
    std::vector<Batch> micro;
    int64_t counted = 0, tokens = 0;
    for (int64_t a = 0; a < opt.grad_accum; ++a) {
      if (st.batch_pos >= static_cast<int64_t>(batches.size())) {
        ++st.epoch;
        st.batch_pos = 0;
        batches = epoch_batches(train_set, opt.batch_size, opt.seed, st.epoch, true);
      }
      const auto& idx = batches[static_cast<size_t>(st.batch_pos++)];
      Batch whole = make_batch(train_set, idx, pad_id, task.lm);
      counted += whole.counted;  // global counts: every rank knows the whole batch
      tokens += whole.tokens;
      if (n_ranks == 1) {
        micro.push_back(std::move(whole));
      } else {
        auto mine = shard_of(idx, rank, n_ranks);
        micro.push_back(mine.empty() ? Batch{} : make_batch(train_set, mine, pad_id, task.lm));
      }
    }
    double loss = 0;
    for (size_t a = 0; a < micro.size(); ++a) {
      const Batch& b = micro[a];
      if (b.index.empty()) continue;  // more ranks than rows in this micro-batch
      ctx.training = true;
      // Dropout stream position from the micro-batch number (and the rank): a resumed run draws
      // the same masks.
      const auto mb = static_cast<uint64_t>(st.step * opt.grad_accum + static_cast<int64_t>(a));
      ctx.rng_counter = (mb * static_cast<uint64_t>(n_ranks) + static_cast<uint64_t>(rank)) << 32;
      const double w = counted ? static_cast<double>(b.counted) / static_cast<double>(counted) : 0.0;
      loss += w * task.forward_backward(ctx, b, static_cast<float>(w));
      arena.reset();
    }
    bool sigint_now = g_sigint.load() > 0;
    if (n_ranks > 1) {
      size_t o = 0;
      for (auto& g : groups) {
        const float* gr = g.param->grad.f32();
        std::copy(gr, gr + g.param->grad.numel(), bucket.data() + o);
        o += static_cast<size_t>(g.param->grad.numel());
      }
      bucket[o] = static_cast<float>(loss);
      bucket[o + 1] = sigint_now ? 1.0f : 0.0f;
      comm.allreduce_sum(bucket.data(), bucket.size(),
                         "the gradient all-reduce of step " + std::to_string(st.step + 1));
      o = 0;
      for (auto& g : groups) {
        std::copy(bucket.data() + o, bucket.data() + o + g.param->grad.numel(), g.param->grad.f32());
        o += static_cast<size_t>(g.param->grad.numel());
      }
      loss = bucket[o];
      sigint_now = bucket[o + 1] > 0;
    }
    stop_asked = stop_asked || sigint_now;
    // After the reduce: a function of the (identical) parameters, added once on every rank.
    if (opt.after_backward) loss += opt.after_backward();
    const double gnorm = clip_grad_norm(adam.groups(), opt.max_grad_norm);
    const float lr = opt.lr * lr_multiplier(opt.schedule, st.step, warmup, total);
    adam.step(lr);
    if (opt.after_step) opt.after_step(st.step + 1);
    adam.zero_grad();
    ++st.step;
    st.tokens += tokens;
    st.seconds = prior_seconds + (now_seconds() - t0);
    const double tps = static_cast<double>(st.tokens - prior_tokens) / std::max(1e-9, now_seconds() - t0);
    const double eta = static_cast<double>(total - st.step) *
                       (now_seconds() - t0) / static_cast<double>(st.step - start_step);
    log.step(st.step, loss, lr, gnorm, tokens, tps, st.seconds, eta, st.epoch);

    const bool last = st.step == total;
    if (!last && opt.eval_every > 0 && st.step % opt.eval_every == 0 && !val_set.empty()) {
      log.clear_line();
      run_eval();
    }
    const bool stop = stop_asked || (opt.stop_after > 0 && st.step - start_step >= opt.stop_after);
    if (stop || last || (opt.save_every > 0 && st.step % opt.save_every == 0)) {
      log.clear_line();
      if (root) save_ckpt(out + "/checkpoint");
    }
    if (stop && !last) {
      sum.interrupted = true;
      log.note("stopped at step " + std::to_string(st.step) + "; checkpoint saved in " + out +
               "/checkpoint (continue with --resume " + out + "/checkpoint)");
      break;
    }
  }
  log.clear_line();
  sum.steps = st.step;
  sum.seconds = st.seconds;
  sum.tokens_per_second = static_cast<double>(st.tokens - prior_tokens) / std::max(1e-9, now_seconds() - t0);
  if (!sum.interrupted) {
    if (!val_set.empty()) {
      sum.final_eval = run_eval();
      sum.best_step = st.best_step;
    }
    if (root) {
      io::write_folder_atomic(out + "/final", [&](const std::string& tmp) {
        if (opt.save_weights) opt.save_weights(tmp);
        save_parameters(tmp + "/trainable.safetensors", params);
      });
      save_ckpt(out + "/checkpoint");  // carries the best-eval record for a later report
    }
  }
  sum.peak_rss_bytes = peak_rss_bytes();
  ReportInfo ri;
  ri.title = sum.interrupted ? "lorafit training run (interrupted)" : "lorafit training run";
  ri.config_json = opt.config_json;
  ri.seconds = st.seconds;
  ri.tokens_per_second = sum.tokens_per_second;
  ri.peak_rss = sum.peak_rss_bytes;
  ri.steps = st.step;
  ri.total_steps = total;
  ri.lm = task.lm;
  int64_t n_train = 0;
  for (auto& [n, p] : params) n_train += p->value.numel();
  ri.trainable = n_train;
  ri.total_params = opt.total_params > 0 ? opt.total_params : task.model->num_parameters();
  if (st.has_best) ri.best = st.best_eval, ri.best_step = st.best_step;
  ri.interrupted = sum.interrupted;
  sum.report_path = out + "/report.html";
  if (root) {
    log.summary(ri);
    write_report(sum.report_path, out + "/log.jsonl");
  }
  // Every rank returns once rank 0's files are complete (a caller may read them at once).
  comm.barrier("the end-of-training barrier");
  return sum;
}

}  // namespace lorafit::train
