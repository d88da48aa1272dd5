// Data: classification files (TSV/CSV/JSONL), plain text for causal LM, batching.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <set>

#include "lorafit/io.h"
#include "lorafit/train.h"

namespace lorafit::train {

namespace {

constexpr const char* kOp = "data";

[[noreturn]] void fail_at(const std::string& path, int64_t line, const std::string& what) {
  throw Error(std::string("[") + kOp + "] " + path + ":" + std::to_string(line) + ": " + what);
}

// Returns the byte offset of the first invalid UTF-8 sequence, or npos.
size_t utf8_invalid_at(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return i;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 2) return i;
      cp = (cp << 6) | (d & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid too.
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += n;
  }
  return std::string::npos;
}

std::string lower_ext(const std::string& path) {
  auto dot = path.find_last_of('.');
  if (dot == std::string::npos) return "";
  std::string e = path.substr(dot + 1);
  for (auto& ch : e) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return e;
}

// One CSV record from a line: fields separated by `sep`, double quotes around a field allow the
// separator inside it, "" is a literal quote (RFC 4180, without fields spanning lines).
std::vector<std::string> split_record(const std::string& line, char sep, bool quoted) {
  std::vector<std::string> out(1);
  bool in_q = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (quoted && c == '"') {
      if (in_q && i + 1 < line.size() && line[i + 1] == '"') {
        out.back() += '"';
        ++i;
      } else {
        in_q = !in_q;
      }
    } else if (c == sep && !in_q) {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

int find_column(const std::vector<std::string>& header, const std::string& wanted,
                std::initializer_list<const char*> candidates) {
  auto idx = [&](const std::string& n) -> int {
    for (size_t i = 0; i < header.size(); ++i)
      if (header[i] == n) return static_cast<int>(i);
    return -1;
  };
  if (!wanted.empty()) return idx(wanted);
  for (const char* c : candidates)
    if (int i = idx(c); i >= 0) return i;
  return -1;
}

const std::initializer_list<const char*> kTextCols = {"sentence", "content", "text", "sentence1",
                                                      "question", "question1", "premise",
                                                      "review", "prompt"};
const std::initializer_list<const char*> kPairCols = {"sentence2", "question2", "hypothesis",
                                                      "passage"};
const std::initializer_list<const char*> kLabelCols = {"label", "labels", "class", "target"};

std::string join_names(std::initializer_list<const char*> l) {
  std::string s;
  for (const char* c : l) s += (s.empty() ? "" : ", ") + std::string(c);
  return s;
}

bool is_int(const std::string& s) {
  if (s.empty() || s.size() > 9) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A data file for reading; a folder (which opens as an empty stream) or a missing file is named.
std::ifstream open_data(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw Error(std::string("[") + kOp + "] " + path + ": is a folder, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(std::string("[") + kOp + "] " + path + ": cannot open: " + std::strerror(errno));
  return in;
}

struct RawRow {
  std::string text, pair, label;
  int64_t line;
};

}  // namespace

ClassificationData read_classification(const std::string& path, const ColumnOptions& cols,
                                       const std::vector<std::string>& label_names,
                                       bool require_label) {
  std::ifstream in = open_data(path);
  const std::string ext = lower_ext(path);
  const bool jsonl = ext == "jsonl" || ext == "json";
  const char sep = ext == "csv" ? ',' : '\t';
  if (!jsonl && ext != "tsv" && ext != "csv" && ext != "txt")
    throw Error(std::string("[") + kOp + "] " + path +
                ": unknown extension; expected .tsv, .csv or .jsonl");

  std::vector<RawRow> rows;
  std::string line;
  int64_t lineno = 0;
  int ti = -1, pi = -1, li = -1;
  std::vector<std::string> header;
  std::string text_key, pair_key, label_key;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > cols.max_line_bytes)
      fail_at(path, lineno, "line is " + std::to_string(line.size()) + " bytes, longer than " +
                                std::to_string(cols.max_line_bytes));
    if (auto bad = utf8_invalid_at(line); bad != std::string::npos)
      fail_at(path, lineno, "invalid UTF-8 at byte " + std::to_string(bad + 1) + " of the line");
    if (lineno == 1 && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0)
      line.erase(0, 3);  // BOM
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (jsonl) {
      io::json obj;
      try {
        obj = io::json::parse(line);
      } catch (const std::exception& e) {
        fail_at(path, lineno, std::string("not valid JSON: ") + e.what());
      }
      if (!obj.is_object()) fail_at(path, lineno, "expected a JSON object per line");
      if (text_key.empty()) {  // columns from the first object
        std::vector<std::string> keys;
        for (auto it = obj.begin(); it != obj.end(); ++it) keys.push_back(it.key());
        int a = find_column(keys, cols.text, kTextCols);
        int b = find_column(keys, cols.text_pair, kPairCols);
        int c = find_column(keys, cols.label, kLabelCols);
        if (a < 0)
          fail_at(path, lineno,
                  cols.text.empty() ? "no text field (looked for " + join_names(kTextCols) +
                                          "; name it with --text-column)"
                                    : "no field '" + cols.text + "'");
        text_key = keys[a];
        if (b >= 0) pair_key = keys[b];
        else if (!cols.text_pair.empty()) fail_at(path, lineno, "no field '" + cols.text_pair + "'");
        if (c >= 0) label_key = keys[c];
        else if (require_label)
          fail_at(path, lineno, cols.label.empty() ? "no label field (looked for " +
                                                         join_names(kLabelCols) + ")"
                                                   : "no field '" + cols.label + "'");
      }
      RawRow r{"", "", "", lineno};
      auto get = [&](const std::string& k, bool need) -> std::string {
        if (!obj.contains(k) || obj[k].is_null()) {
          if (need) fail_at(path, lineno, "field '" + k + "' is missing");
          return "";
        }
        const auto& v = obj[k];
        if (v.is_string()) return v.get<std::string>();
        if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
        if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
        fail_at(path, lineno, "field '" + k + "': expected a string or integer, got " +
                                  io::json_type_name(v));
      };
      r.text = get(text_key, true);
      if (!pair_key.empty()) r.pair = get(pair_key, true);
      if (!label_key.empty()) r.label = get(label_key, require_label);
      rows.push_back(std::move(r));
      continue;
    }
    auto fields = split_record(line, sep, sep == ',');
    if (header.empty()) {
      header = fields;
      ti = find_column(header, cols.text, kTextCols);
      pi = find_column(header, cols.text_pair, kPairCols);
      li = find_column(header, cols.label, kLabelCols);
      std::string have;
      for (auto& h : header) have += (have.empty() ? "" : ", ") + h;
      if (ti < 0)
        fail_at(path, lineno,
                (cols.text.empty() ? "no text column (looked for " + join_names(kTextCols) + ")"
                                   : "no column '" + cols.text + "'") +
                    " in the header [" + have + "]; name it with --text-column");
      if (pi < 0 && !cols.text_pair.empty())
        fail_at(path, lineno, "no column '" + cols.text_pair + "' in the header [" + have + "]");
      if (li < 0 && require_label)
        fail_at(path, lineno,
                (cols.label.empty() ? "no label column (looked for " + join_names(kLabelCols) + ")"
                                    : "no column '" + cols.label + "'") +
                    " in the header [" + have + "]; name it with --label-column");
      continue;
    }
    if (fields.size() != header.size())
      fail_at(path, lineno, "expected " + std::to_string(header.size()) + " fields, got " +
                                std::to_string(fields.size()));
    RawRow r{fields[ti], pi >= 0 ? fields[pi] : "", li >= 0 ? fields[li] : "", lineno};
    rows.push_back(std::move(r));
  }
  if (rows.empty())
    throw Error(std::string("[") + kOp + "] " + path + ": no examples (empty file" +
                (jsonl ? ")" : " or only a header)"));

  ClassificationData d;
  d.path = path;
  d.label_names = label_names;
  const bool have_labels = std::any_of(rows.begin(), rows.end(),
                                       [](const RawRow& r) { return !r.label.empty(); });
  if (d.label_names.empty() && have_labels) {
    bool all_int = std::all_of(rows.begin(), rows.end(), [](const RawRow& r) { return is_int(r.label); });
    if (all_int) {
      int64_t mx = 0;
      for (auto& r : rows) mx = std::max<int64_t>(mx, std::stoll(r.label));
      if (mx > 1000) throw Error(std::string("[") + kOp + "] " + path + ": integer labels up to " +
                                 std::to_string(mx) + "; expected 0..n-1 with n <= 1001");
      for (int64_t i = 0; i <= std::max<int64_t>(mx, 1); ++i) d.label_names.push_back(std::to_string(i));
    } else {
      std::set<std::string> names;
      for (auto& r : rows)
        if (!r.label.empty()) names.insert(r.label);
      d.label_names.assign(names.begin(), names.end());
    }
  }
  std::map<std::string, int32_t> id_of;
  for (size_t i = 0; i < d.label_names.size(); ++i) id_of[d.label_names[i]] = static_cast<int32_t>(i);
  for (auto& r : rows) {
    ClassificationExample e;
    e.text = std::move(r.text);
    e.text_pair = std::move(r.pair);
    e.line = r.line;
    if (!r.label.empty() || require_label) {
      auto it = id_of.find(r.label);
      if (it == id_of.end()) {
        std::string known;
        for (auto& n : d.label_names) known += (known.empty() ? "" : ", ") + n;
        fail_at(path, r.line, "unknown label '" + r.label + "'; expected one of [" + known + "]");
      }
      e.label = it->second;
    }
    d.examples.push_back(std::move(e));
  }
  return d;
}

std::vector<Sample> tokenize_classification(const ClassificationData& data,
                                            const text::Tokenizer& tok, size_t max_length) {
  std::vector<Sample> out;
  out.reserve(data.examples.size());
  for (const auto& e : data.examples) {
    text::Encoding enc;
    try {
      enc = e.text_pair.empty() ? tok.encode(e.text, true, max_length)
                                : tok.encode_pair(e.text, e.text_pair, true, max_length);
    } catch (const Error& err) {
      fail_at(data.path, e.line, err.what());
    }
    Sample s;
    s.ids = std::move(enc.ids);
    s.type_ids = std::move(enc.type_ids);
    s.label = e.label;
    out.push_back(std::move(s));
  }
  return out;
}

int64_t text_split_offset(const std::string& path, double fraction) {
  std::string all = io::read_file(path);
  auto off = static_cast<size_t>(static_cast<double>(all.size()) * fraction);
  if (off >= all.size()) return static_cast<int64_t>(all.size());
  auto nl = all.find('\n', off);
  return nl == std::string::npos ? static_cast<int64_t>(all.size()) : static_cast<int64_t>(nl + 1);
}

std::vector<Sample> read_lm_text(const std::string& path, const text::Tokenizer& tok,
                                 size_t block_size, int64_t begin_byte, int64_t end_byte,
                                 size_t stride) {
  check(block_size >= 2, kOp, "block_size must be at least 2");
  check(stride <= block_size, kOp,
        "stride " + std::to_string(stride) + " must be at most the block size " +
            std::to_string(block_size));
  std::string all = io::read_file(path);
  if (end_byte < 0 || end_byte > static_cast<int64_t>(all.size())) end_byte = static_cast<int64_t>(all.size());
  check(begin_byte >= 0 && begin_byte <= end_byte, kOp, path + ": bad byte range");
  std::string_view text(all.data() + begin_byte, static_cast<size_t>(end_byte - begin_byte));
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos)
    throw Error(std::string("[") + kOp + "] " + path + ": no text (empty file or range)");
  // Tokenize line by line: errors can name the line and long files need no huge pattern runs.
  int64_t lineno = std::count(all.data(), all.data() + begin_byte, '\n') + 1;
  std::vector<int32_t> ids;
  const auto& sp = tok.special_ids();
  if (sp.bos >= 0) ids.push_back(sp.bos);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl + 1;
    std::string_view line = text.substr(pos, end - pos);
    if (auto bad = utf8_invalid_at(line); bad != std::string::npos)
      fail_at(path, lineno, "invalid UTF-8 at byte " + std::to_string(bad + 1) + " of the line");
    auto enc = tok.encode(line, false);
    ids.insert(ids.end(), enc.ids.begin(), enc.ids.end());
    pos = end;
    ++lineno;
  }
  std::vector<Sample> out;
  if (stride > 0 && stride < block_size && ids.size() >= 2) {
    // Sliding windows (transformers' perplexity guide): window w starts at w·stride and holds up
    // to block_size inputs; only the targets no earlier window scored count, so every token is
    // scored once, with up to block_size - stride tokens of context before the new ones.
    const size_t last = ids.size() - 1;  // targets are ids[1..last]
    size_t scored = 0;                   // targets ids[1..scored] done
    for (size_t b = 0; scored < last; b += stride) {
      const size_t e = std::min(b + block_size, last);  // inputs ids[b, e), targets ids[b+1, e+1)
      Sample s;
      s.ids.assign(ids.begin() + b, ids.begin() + e);
      s.targets.assign(ids.begin() + b + 1, ids.begin() + e + 1);
      for (size_t j = 0; j < s.targets.size() && b + 1 + j <= scored; ++j) s.targets[j] = -100;
      scored = e;
      out.push_back(std::move(s));
    }
    return out;
  }
  // Block i covers ids[i*bs, (i+1)*bs] (bs + 1 ids: the inputs and the shifted targets).
  size_t n_blocks = ids.size() > block_size ? (ids.size() - 1) / block_size : 0;
  if (n_blocks == 0 && ids.size() >= 2) {
    Sample s;
    s.ids.assign(ids.begin(), ids.end() - 1);
    s.targets.assign(ids.begin() + 1, ids.end());
    out.push_back(std::move(s));
    return out;
  }
  for (size_t b = 0; b < n_blocks; ++b) {
    Sample s;
    s.ids.assign(ids.begin() + b * block_size, ids.begin() + (b + 1) * block_size);
    s.targets.assign(ids.begin() + b * block_size + 1, ids.begin() + (b + 1) * block_size + 1);
    out.push_back(std::move(s));
  }
  return out;
}

std::pair<std::vector<Sample>, std::vector<Sample>> split_samples(std::vector<Sample> all,
                                                                  double fraction, uint64_t seed) {
  check(fraction > 0 && fraction < 1, kOp, "validation fraction must be in (0, 1)");
  std::vector<size_t> idx(all.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::mt19937_64 rng(seed ^ 0x5DEECE66Dull);
  std::shuffle(idx.begin(), idx.end(), rng);
  size_t n_val = std::max<size_t>(1, static_cast<size_t>(static_cast<double>(all.size()) * fraction));
  check(all.size() > n_val, kOp, "too few examples to split off a validation set");
  std::vector<Sample> tr, va;
  for (size_t i = 0; i < idx.size(); ++i)
    (i + n_val >= idx.size() ? va : tr).push_back(std::move(all[idx[i]]));
  return {std::move(tr), std::move(va)};
}

Batch make_batch(const std::vector<Sample>& samples, const std::vector<size_t>& index,
                 int32_t pad_id, bool lm) {
  check(!index.empty(), kOp, "empty batch");
  size_t t = 0;
  for (size_t i : index) t = std::max(t, samples.at(i).ids.size());
  const auto bsz = static_cast<int64_t>(index.size());
  const auto tt = static_cast<int64_t>(t);
  Batch b;
  b.index = index;
  std::vector<int32_t> ids(index.size() * t, pad_id), mask(index.size() * t, 0),
      types(index.size() * t, 0), targets(lm ? index.size() * t : index.size(), -100);
  for (size_t r = 0; r < index.size(); ++r) {
    const Sample& s = samples[index[r]];
    for (size_t j = 0; j < s.ids.size(); ++j) {
      ids[r * t + j] = s.ids[j];
      mask[r * t + j] = 1;
      if (j < s.type_ids.size()) types[r * t + j] = s.type_ids[j];
      if (lm && j < s.targets.size()) {
        targets[r * t + j] = s.targets[j];
        if (s.targets[j] != -100) ++b.counted;
      }
    }
    b.tokens += static_cast<int64_t>(s.ids.size());
    if (!lm) {
      targets[r] = s.label >= 0 ? s.label : -100;  // unlabeled rows carry no loss
      if (s.label < 0) --b.counted;
      ++b.counted;
    }
  }
  b.ids = Tensor::from_ints({bsz, tt}, ids);
  b.mask = Tensor::from_ints({bsz, tt}, mask);
  b.type_ids = Tensor::from_ints({bsz, tt}, types);
  b.targets = lm ? Tensor::from_ints({bsz, tt}, targets) : Tensor::from_ints({bsz}, targets);
  return b;
}

std::vector<std::vector<size_t>> epoch_batches(const std::vector<Sample>& samples,
                                               size_t batch_size, uint64_t seed, int64_t epoch,
                                               bool shuffle) {
  check(batch_size > 0, kOp, "batch_size must be positive");
  std::vector<size_t> idx(samples.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::vector<std::vector<size_t>> out;
  if (!shuffle) {
    for (size_t i = 0; i < idx.size(); i += batch_size)
      out.emplace_back(idx.begin() + i, idx.begin() + std::min(idx.size(), i + batch_size));
    return out;
  }
  std::mt19937_64 rng(seed * 1000003ull + static_cast<uint64_t>(epoch));
  std::shuffle(idx.begin(), idx.end(), rng);
  // Sort within windows of 50 batches: similar lengths share a batch (less padding) while the
  // order across windows stays random.
  const size_t window = batch_size * 50;
  for (size_t w = 0; w < idx.size(); w += window) {
    auto b = idx.begin() + w, e = idx.begin() + std::min(idx.size(), w + window);
    std::stable_sort(b, e, [&](size_t x, size_t y) { return samples[x].ids.size() < samples[y].ids.size(); });
  }
  for (size_t i = 0; i < idx.size(); i += batch_size)
    out.emplace_back(idx.begin() + i, idx.begin() + std::min(idx.size(), i + batch_size));
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

}  // namespace lorafit::train

// ---- instruction / chat data ------------------------------------------------------------------

namespace lorafit::train {

namespace {

std::string field_string(const io::json& obj, const char* key, const std::string& path, int64_t line) {
  const auto& v = obj[key];
  if (!v.is_string()) fail_at(path, line, std::string("field '") + key + "' must be a string");
  return v.get<std::string>();
}

// The conversation of one JSONL object: "messages", or prompt/response (also "completion"), or
// Alpaca's instruction [+ input] + output; "system" optional with the last two.
std::vector<text::ChatMessage> conversation_of(const io::json& obj, const std::string& path, int64_t line) {
  std::vector<text::ChatMessage> msgs;
  if (obj.contains("messages")) {
    const auto& m = obj["messages"];
    if (!m.is_array() || m.empty()) fail_at(path, line, "field 'messages' must be a non-empty list of {\"role\", \"content\"}");
    for (size_t i = 0; i < m.size(); ++i) {
      if (!m[i].is_object() || !m[i].contains("role") || !m[i].contains("content") ||
          !m[i]["role"].is_string() || !m[i]["content"].is_string())
        fail_at(path, line, "messages[" + std::to_string(i) + "] must be {\"role\": string, \"content\": string}");
      msgs.push_back({m[i]["role"].get<std::string>(), m[i]["content"].get<std::string>()});
    }
    return msgs;
  }
  std::string prompt, response;
  if (obj.contains("prompt")) {
    prompt = field_string(obj, "prompt", path, line);
    if (obj.contains("response")) response = field_string(obj, "response", path, line);
    else if (obj.contains("completion")) response = field_string(obj, "completion", path, line);
    else fail_at(path, line, "field 'prompt' without 'response' (or 'completion')");
  } else if (obj.contains("instruction")) {
    prompt = field_string(obj, "instruction", path, line);
    if (obj.contains("input") && !obj["input"].is_null()) {
      std::string in = field_string(obj, "input", path, line);
      if (!in.empty()) prompt += "\n\n" + in;
    }
    if (!obj.contains("output")) fail_at(path, line, "field 'instruction' without 'output'");
    response = field_string(obj, "output", path, line);
  } else {
    fail_at(path, line, "expected 'messages' (chat), 'prompt' + 'response', or 'instruction' + 'output'");
  }
  if (obj.contains("system")) msgs.push_back({"system", field_string(obj, "system", path, line)});
  msgs.push_back({"user", prompt});
  msgs.push_back({"assistant", response});
  return msgs;
}

}  // namespace

std::vector<Sample> read_instruction_data(const std::string& path, const text::Tokenizer& tok,
                                          const text::ChatTemplate& tpl, size_t max_length,
                                          InstructionStats* stats, size_t max_line_bytes) {
  check(max_length >= 2, kOp, "max_length must be at least 2");
  std::ifstream in = open_data(path);
  InstructionStats st;
  std::vector<Sample> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > max_line_bytes)
      fail_at(path, lineno, "line is " + std::to_string(line.size()) + " bytes, longer than " +
                                std::to_string(max_line_bytes));
    if (auto bad = utf8_invalid_at(line); bad != std::string::npos)
      fail_at(path, lineno, "invalid UTF-8 at byte " + std::to_string(bad + 1) + " of the line");
    if (lineno == 1 && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    io::json obj;
    try {
      obj = io::json::parse(line);
    } catch (const std::exception& e) {
      fail_at(path, lineno, std::string("not valid JSON: ") + e.what());
    }
    if (!obj.is_object()) fail_at(path, lineno, "expected a JSON object per line");
    const auto msgs = conversation_of(obj, path, lineno);
    bool has_reply = false;
    for (auto& m : msgs) has_reply = has_reply || m.role == "assistant";
    if (!has_reply) fail_at(path, lineno, "no assistant message: nothing to learn from this example");
    // Token by token: which ids are trained (assistant replies + their end-of-turn token).
    std::vector<int32_t> ids;
    std::vector<uint8_t> trained;
    for (const auto& seg : tpl.render(msgs, false)) {
      auto e = tok.encode(seg.text, false);
      ids.insert(ids.end(), e.ids.begin(), e.ids.end());
      trained.insert(trained.end(), e.ids.size(), seg.trained ? 1 : 0);
    }
    if (ids.size() > max_length) {
      ids.resize(max_length);
      trained.resize(max_length);
      ++st.truncated;
    }
    Sample s;
    s.ids = ids;
    s.targets.assign(ids.size(), -100);
    bool any = false;
    for (size_t t = 0; t + 1 < ids.size(); ++t)
      if (trained[t + 1]) s.targets[t] = ids[t + 1], any = true;
    if (!any) {
      ++st.skipped;  // the reply starts after max_length tokens
      continue;
    }
    out.push_back(std::move(s));
  }
  if (out.empty())
    throw Error(std::string("[") + kOp + "] " + path + ": no usable example" +
                (st.skipped ? " (" + std::to_string(st.skipped) +
                                  " had their reply beyond the length limit; raise --block-size)"
                            : " (empty file)"));
  if (stats) *stats = st;
  return out;
}

}  // namespace lorafit::train
