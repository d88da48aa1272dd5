// Internals of the train layer shared by its .cpp files.
#pragma once

#include <cstdio>
#include <string>

#include "lorafit/io.h"
#include "lorafit/train.h"

namespace lorafit::train {

// Where a run stands: saved in trainer_state.json so that --resume continues exactly.
struct RunState {
  int64_t step = 0, epoch = 0, batch_pos = 0;  // data position: batch_pos-th batch of epoch
  int64_t total_steps = 0, warmup_steps = 0;
  int64_t tokens = 0;
  double seconds = 0;
  bool has_best = false;
  double best_score = 0;
  int64_t best_step = 0;
  io::json best_eval;

  io::json to_json() const;
  void from_json(const io::json& j, const std::string& origin);
};

void load_checkpoint(const std::string& dir, const nn::NamedParameters& params, AdamW& adam,
                     RunState& st);

// The JSONL run log (one object per step / eval) and the console display: a progress bar on a
// TTY, plain lines every log_every steps otherwise.
class Logger {
 public:
  Logger(const std::string& path, bool append, const TrainOptions& opt, int64_t total);
  ~Logger();
  void step(int64_t step, double loss, float lr, double gnorm, int64_t tokens, double tps,
            double elapsed, double eta, int64_t epoch);
  void eval(int64_t step, const io::json& metrics);
  void note(const std::string& s);
  void clear_line();

 private:
  std::FILE* f_ = nullptr;
  bool tty_ = false, quiet_ = false, bar_shown_ = false;
  int64_t log_every_ = 10, total_ = 0;
  double loss_avg_ = 0;
  int64_t loss_n_ = 0;
};

struct ReportInfo {
  std::string title, config_json;
  double seconds = 0, tokens_per_second = 0;
  int64_t peak_rss = 0, steps = 0, total_steps = 0, trainable = 0, total_params = 0;
  bool lm = false;
  io::json best;
  int64_t best_step = 0;
};

// A self-contained HTML page: loss / metric curves as inline SVG, the configuration, sizes and
// speed. Reads the run's log.jsonl.
void write_report(const std::string& path, const std::string& log_path, const ReportInfo& info);

}  // namespace lorafit::train
