// Internals of the train layer shared by its .cpp files.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

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

// What the run's summary record holds besides the log's own records (see RunSummary).
struct ReportInfo {
  std::string title, config_json;
  double seconds = 0, tokens_per_second = 0;
  int64_t peak_rss = 0, steps = 0, total_steps = 0, trainable = 0, total_params = 0;
  bool lm = false;
  bool interrupted = false;
  io::json best;
  int64_t best_step = 0;
};

// The JSONL run log (one object per step / eval / summary) and the console display: a progress bar
// on a TTY, plain lines every log_every steps otherwise.
class Logger {
 public:
  Logger(const std::string& path, bool append, const TrainOptions& opt, int64_t total);
  ~Logger();
  void step(int64_t step, double loss, float lr, double gnorm, int64_t tokens, double tps,
            double elapsed, double eta, int64_t epoch);
  void eval(int64_t step, const io::json& metrics);
  // The closing "summary" record (sizes, time, memory, best evaluation, configuration).
  void summary(const ReportInfo& info);
  void note(const std::string& s);
  void clear_line();

 private:
  std::FILE* f_ = nullptr;
  bool tty_ = false, quiet_ = false, bar_shown_ = false;
  int64_t log_every_ = 10, total_ = 0;
  double loss_avg_ = 0;
  int64_t loss_n_ = 0;
};

// report.html of a run folder, from its log.jsonl (the summary record included).
void write_report(const std::string& path, const std::string& log_path);

// Current resident memory of this process (/proc/self/statm), bytes; -1 where unknown.
int64_t current_rss_bytes();

// Round axis ticks: a step of 1, 2 or 5 x 10^k and the multiples of it that cover [lo, hi] with
// at most `max_intervals` intervals; the axis runs from the first tick to the last. A single
// value (lo == hi) gets a span around it; non-finite bounds give [0, 1].
struct AxisTicks {
  double lo = 0, hi = 1, step = 1;
  std::vector<double> values;
  std::vector<std::string> labels;  // "0.25", "40", "1e12", "2.5e-7": exact, shortest
};
AxisTicks nice_ticks(double lo, double hi, int max_intervals = 5);

}  // namespace lorafit::train
