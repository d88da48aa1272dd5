// lorafit report RUN_DIR... [--output FILE.html]: one run's report again, or several runs side by
// side in one page. The page is made by the library (train::report_html); this only parses.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "lorafit/train.h"

namespace {

const char* kReportUsage =
    R"(Usage: lorafit report RUN_DIR... [--output FILE.html] [--title TEXT]

Writes an HTML report of the training runs in the RUN_DIRs (the --output folders of lorafit
train; a log.jsonl file may be given instead of its folder). One run: the same page that
training writes as RUN_DIR/report.html. Several runs: their curves overlaid per metric, their
best evaluations in one table and their configurations side by side, differences marked.
The page is self-contained (inline SVG and CSS, no script): it opens offline.

Options:
  --output FILE.html   where to write the page (default: report.html in the current folder)
  --title TEXT         the page's title (default: from the model and method, or "N runs compared")
  --help, -h           this help
)";

}  // namespace

int cmd_report(int argc, char** argv) {
  std::vector<std::string> runs;
  std::string output = "report.html", title;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kReportUsage, stdout);
      return 0;
    }
    std::string* dst = a == "--output" || a.starts_with("--output=") ? &output
                       : a == "--title" || a.starts_with("--title=") ? &title
                                                                     : nullptr;
    if (dst) {
      if (const auto eq = a.find('='); eq != std::string::npos) {
        *dst = a.substr(eq + 1);
      } else if (i + 1 < argc) {
        *dst = argv[++i];
      } else {
        std::fprintf(stderr, "lorafit report: %s needs a value (see lorafit report --help)\n",
                     a.c_str());
        return 1;
      }
      if (dst == &output && output.empty()) {
        std::fprintf(stderr, "lorafit report: --output needs a file name\n");
        return 1;
      }
      continue;
    }
    if (a.size() > 1 && a[0] == '-') {
      std::fprintf(stderr, "lorafit report: unknown option '%s' (see lorafit report --help)\n",
                   a.c_str());
      return 1;
    }
    runs.push_back(a);
  }
  if (runs.empty()) {
    std::fprintf(stderr, "lorafit report: no RUN_DIR given\n%s", kReportUsage);
    return 1;
  }
  try {
    std::vector<lorafit::train::RunLog> logs;
    for (auto& r : runs) logs.push_back(lorafit::train::read_run_dir(r));
    // Two runs from folders of the same name (a/out, b/out) are named by the paths given.
    for (size_t i = 0; i < logs.size(); ++i)
      for (size_t j = 0; j < logs.size(); ++j)
        if (i != j && logs[i].name == logs[j].name) logs[i].name = runs[i];
    lorafit::train::write_report_html(output, logs, title);
    std::printf("report: %s (%zu run%s)\n", output.c_str(), logs.size(),
                logs.size() == 1 ? "" : "s");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lorafit report: %s\n", e.what());
    return 1;
  }
}
