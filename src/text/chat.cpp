// Chat templates recognised by their markers and rendered without a Jinja engine (see text.h).
// The rendering is checked against transformers' apply_chat_template in tests/text.
#include <cctype>
#include <string>
#include <vector>

#include "lorafit/text.h"

namespace lorafit::text {

namespace {

constexpr const char* kImStart = "<|im_start|>";
constexpr const char* kImEnd = "<|im_end|>";
constexpr const char* kHeaderStart = "<|start_header_id|>";
constexpr const char* kHeaderEnd = "<|end_header_id|>";
constexpr const char* kEot = "<|eot_id|>";

// Jinja's `| trim` (Python str.strip on the usual whitespace).
std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// A Jinja string literal's escapes (\n, \t, \\, \', \").
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The default system message of a ChatML template: a literal "<|im_start|>system\n TEXT <|im_end|>"
// (newline written or escaped) whose TEXT is plain (no quote: not an expression).
std::string chatml_default_system(const std::string& src) {
  const std::string key = std::string(kImStart) + "system";
  for (size_t p = src.find(key); p != std::string::npos; p = src.find(key, p + 1)) {
    size_t q = p + key.size();
    if (src.compare(q, 1, "\n") == 0) q += 1;
    else if (src.compare(q, 2, "\\n") == 0) q += 2;
    else continue;
    const size_t e = src.find(kImEnd, q);
    if (e == std::string::npos) continue;
    const std::string text = src.substr(q, e - q);
    if (text.find('\'') != std::string::npos || text.find('"') != std::string::npos ||
        text.find("{{") != std::string::npos || text.find("{%") != std::string::npos)
      continue;
    return unescape(text);
  }
  return "";
}

void push(std::vector<ChatSegment>& out, std::string text, bool trained) {
  if (text.empty()) return;
  if (!out.empty() && out.back().trained == trained) {
    out.back().text += text;  // one piece per run: fewer tokenizer boundaries
  } else {
    out.push_back({std::move(text), trained});
  }
}

}  // namespace

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Llama3: return "llama3";
    case ChatFormat::Plain: return "plain";
  }
  return "?";
}

ChatTemplate ChatTemplate::detect(const std::string& jinja, const std::string& origin) {
  ChatTemplate t;
  if (jinja.empty()) return t;  // Plain
  if (jinja.find(kImStart) != std::string::npos) {
    t.format_ = ChatFormat::ChatML;
    t.default_system_ = chatml_default_system(jinja);
    return t;
  }
  if (jinja.find(kHeaderStart) != std::string::npos && jinja.find(kEot) != std::string::npos) {
    t.format_ = ChatFormat::Llama3;
    return t;
  }
  throw Error("[text] " + origin + ": chat template not recognised (lorafit renders ChatML and Llama 3 "
              "templates itself); choose one with --chat-template chatml|llama3|plain");
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tok, const std::string& choice) {
  ChatTemplate t;
  if (choice == "auto") {
    t = detect(tok.chat_template(), "the model's chat template");
  } else if (choice == "chatml") {
    t.format_ = ChatFormat::ChatML;
    t.default_system_ = chatml_default_system(tok.chat_template());
  } else if (choice == "llama3") {
    t.format_ = ChatFormat::Llama3;
  } else if (choice != "plain") {
    throw Error("[text] chat template '" + choice + "': expected auto, chatml, llama3 or plain");
  }
  const auto& sp = tok.special_ids();
  if (sp.bos >= 0) t.bos_text = tok.id_to_token(sp.bos).value_or("");
  if (sp.eos >= 0) t.eos_text = tok.id_to_token(sp.eos).value_or("");
  return t;
}

std::vector<ChatSegment> ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt) const {
  std::vector<ChatSegment> out;
  switch (format_) {
    case ChatFormat::ChatML: {
      if (!default_system_.empty() && (messages.empty() || messages[0].role != "system"))
        push(out, std::string(kImStart) + "system\n" + default_system_ + kImEnd + "\n", false);
      for (const auto& m : messages) {
        const bool a = m.role == "assistant";
        push(out, kImStart + m.role + "\n", false);
        push(out, m.content + kImEnd, a);
        push(out, "\n", false);
      }
      if (add_generation_prompt) push(out, std::string(kImStart) + "assistant\n", false);
      break;
    }
    case ChatFormat::Llama3: {
      push(out, bos_text, false);
      for (const auto& m : messages) {
        push(out, kHeaderStart + m.role + kHeaderEnd + "\n\n", false);
        push(out, trim(m.content) + kEot, m.role == "assistant");
      }
      if (add_generation_prompt) push(out, std::string(kHeaderStart) + "assistant" + kHeaderEnd + "\n\n", false);
      break;
    }
    case ChatFormat::Plain: {
      for (const auto& m : messages) {
        std::string role = m.role;
        if (!role.empty()) role[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(role[0])));
        push(out, "### " + role + ":\n", false);
        if (m.role == "assistant") {
          push(out, m.content + eos_text, true);
          push(out, "\n\n", false);
        } else {
          push(out, m.content + "\n\n", false);
        }
      }
      if (add_generation_prompt) push(out, "### Assistant:\n", false);
      break;
    }
  }
  return out;
}

std::string ChatTemplate::render_text(const std::vector<ChatMessage>& messages,
                                      bool add_generation_prompt) const {
  std::string s;
  for (const auto& seg : render(messages, add_generation_prompt)) s += seg.text;
  return s;
}

}  // namespace lorafit::text
