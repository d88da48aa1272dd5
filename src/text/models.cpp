// The two models that cut a pre-token into ids: WordPiece (BERT) and BPE (GPT-2 style), as
// `tokenizers` models/wordpiece and models/bpe do it.
#include <mutex>

#include "text/text_internal.h"

namespace lorafit::text {

namespace {

// Heterogeneous lookup so that a string_view finds a std::string key without a copy.
struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using VocabMap = std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>>;

// Both models keep id -> token and token -> id; ids may have holes (then id_to_token is empty).
// Unused ids a vocabulary may skip (HF vocabularies are dense; a few have small holes).
constexpr int64_t kMaxIdHoles = int64_t{1} << 20;

struct Vocab {
  VocabMap map;
  std::vector<std::string> tokens;
  std::vector<uint8_t> present;

  Vocab(const std::vector<std::pair<std::string, int32_t>>& v, const std::string& where) {
    map.reserve(v.size());
    int32_t max_id = -1;
    for (const auto& [tok, id] : v) {
      if (id < 0) fail(where + ": token '" + tok + "' has a negative id " + std::to_string(id));
      if (!map.emplace(tok, id).second) fail(where + ": token '" + tok + "' appears twice");
      max_id = std::max(max_id, id);
    }
    // id -> token is a table of max_id + 1 entries: a file's ids may leave holes, but not claim a
    // table far larger than the vocabulary it lists (one id 2^31 - 1 would allocate 64 GiB).
    const int64_t limit = static_cast<int64_t>(v.size()) + kMaxIdHoles;
    if (max_id >= limit)
      fail(where + ": model.vocab: id " + std::to_string(max_id) + " is beyond the limit of " +
           std::to_string(limit) + " for a vocabulary of " + std::to_string(v.size()) +
           " tokens (ids may leave at most " + std::to_string(kMaxIdHoles) + " unused)");
    tokens.resize(static_cast<size_t>(max_id + 1));
    present.assign(tokens.size(), 0);
    for (const auto& [tok, id] : v) {
      if (present[id]) fail(where + ": id " + std::to_string(id) + " is given to two tokens");
      tokens[id] = tok;
      present[id] = 1;
    }
  }
  std::optional<int32_t> find(std::string_view t) const {
    auto it = map.find(t);
    if (it == map.end()) return std::nullopt;
    return it->second;
  }
  const std::string* at(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= tokens.size() || !present[id]) return nullptr;
    return &tokens[id];
  }
};

// Byte offsets of the characters of valid UTF-8 s, plus s.size() at the end.
std::vector<size_t> char_offsets(std::string_view s) {
  std::vector<size_t> off;
  off.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size();) {
    off.push_back(i);
    const auto b0 = static_cast<uint8_t>(s[i]);
    i += b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
  }
  off.push_back(s.size());
  return off;
}

class WordPiece final : public Model {
 public:
  WordPiece(WordPieceParams p, const std::string& where)
      : vocab_(p.vocab, where),
        unk_(std::move(p.unk_token)),
        prefix_(std::move(p.continuing_subword_prefix)),
        max_chars_(p.max_input_chars_per_word),
        where_(where) {}

  void tokenize(const std::string& piece, std::vector<int32_t>& out) const override {
    const std::vector<size_t> off = char_offsets(piece);
    const size_t n = off.size() - 1;
    if (n > max_chars_) {
      out.push_back(unk_id());
      return;
    }
    // Greedy longest-match-first; pieces after the first carry the "##" prefix.
    std::vector<int32_t> sub;
    std::string key;
    for (size_t start = 0; start < n;) {
      std::optional<int32_t> found;
      size_t end = n;
      for (; end > start; --end) {
        key.clear();
        if (start > 0) key = prefix_;
        key.append(piece, off[start], off[end] - off[start]);
        if ((found = vocab_.find(key))) break;
      }
      if (!found) {
        out.push_back(unk_id());
        return;
      }
      sub.push_back(*found);
      start = end;
    }
    out.insert(out.end(), sub.begin(), sub.end());
  }

  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(int32_t id) const override { return vocab_.at(id); }
  size_t vocab_size() const override { return vocab_.tokens.size(); }

 private:
  int32_t unk_id() const {
    auto id = vocab_.find(unk_);
    if (!id) fail(where_ + ": field 'model.unk_token': '" + unk_ + "' is not in the vocabulary");
    return *id;
  }

  Vocab vocab_;
  std::string unk_, prefix_;
  size_t max_chars_;
  std::string where_;
};

class Bpe final : public Model {
 public:
  Bpe(BpeParams p, const std::string& where)
      : vocab_(p.vocab, where), unk_(std::move(p.unk_token)), fuse_unk_(p.fuse_unk),
        ignore_merges_(p.ignore_merges), where_(where) {
    merges_.reserve(p.merges.size());
    for (size_t r = 0; r < p.merges.size(); ++r) {
      const auto& [a, b] = p.merges[r];
      auto ia = vocab_.find(a), ib = vocab_.find(b), ic = vocab_.find(a + b);
      const std::string what = where + ": merge " + std::to_string(r) + " '" + a + " " + b + "': ";
      if (!ia) fail(what + "token '" + a + "' is not in the vocabulary");
      if (!ib) fail(what + "token '" + b + "' is not in the vocabulary");
      if (!ic) fail(what + "token '" + a + b + "' is not in the vocabulary");
      // A repeated pair keeps its first (best) rank.
      merges_.emplace(key(*ia, *ib), std::pair<int32_t, int32_t>{static_cast<int32_t>(r), *ic});
    }
  }

  void tokenize(const std::string& piece, std::vector<int32_t>& out) const override {
    if (ignore_merges_) {
      if (auto id = vocab_.find(piece)) {
        out.push_back(*id);
        return;
      }
    }
    {
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(piece);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> sym = merge_word(piece);
    out.insert(out.end(), sym.begin(), sym.end());
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(piece, std::move(sym));
  }

  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(int32_t id) const override { return vocab_.at(id); }
  size_t vocab_size() const override { return vocab_.tokens.size(); }

 private:
  static constexpr size_t kCacheCapacity = 10000;  // as `tokenizers`' BPE cache
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  std::vector<int32_t> merge_word(const std::string& w) const {
    std::vector<int32_t> sym;
    const std::vector<size_t> off = char_offsets(w);
    bool prev_unk = false;
    for (size_t i = 0; i + 1 < off.size(); ++i) {
      auto id = vocab_.find(std::string_view(w).substr(off[i], off[i + 1] - off[i]));
      if (id) {
        sym.push_back(*id);
        prev_unk = false;
      } else if (!unk_.empty()) {
        auto u = vocab_.find(unk_);
        if (!u) fail(where_ + ": field 'model.unk_token': '" + unk_ + "' is not in the vocabulary");
        if (!(fuse_unk_ && prev_unk)) sym.push_back(*u);
        prev_unk = true;
      }  // no unk token: the character is dropped, as `tokenizers` does
    }
    // Repeatedly merge the best-ranked adjacent pair (leftmost on ties): the order in which
    // `tokenizers`' priority queue applies merges.
    while (sym.size() > 1) {
      int32_t best_rank = INT32_MAX, best_id = -1;
      size_t best_pos = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merges_.find(key(sym[i], sym[i + 1]));
        if (it != merges_.end() && it->second.first < best_rank) {
          best_rank = it->second.first;
          best_id = it->second.second;
          best_pos = i;
        }
      }
      if (best_id < 0) break;
      sym[best_pos] = best_id;
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
    }
    return sym;
  }

  Vocab vocab_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // pair -> (rank, new id)
  std::string unk_;
  bool fuse_unk_, ignore_merges_;
  std::string where_;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Model> make_wordpiece(WordPieceParams p, const std::string& where) {
  return std::make_unique<WordPiece>(std::move(p), where);
}

std::unique_ptr<Model> make_bpe(BpeParams p, const std::string& where) {
  return std::make_unique<Bpe>(std::move(p), where);
}

}  // namespace lorafit::text
