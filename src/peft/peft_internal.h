// Internal helpers of the peft layer.
#pragma once

#include <string>
#include <vector>

#include "lorafit/tensor.h"

namespace lorafit::peft {

[[noreturn]] inline void fail(const std::string& msg) { throw Error("[peft] " + msg); }

// PEFT's list matching: key == t or key ends with "." + t, for any t.
bool path_matches_any(const std::vector<std::string>& names, const std::string& key);
// True when key or one of its parent module paths (cut at '.') matches one of names.
bool inside_any(const std::vector<std::string>& names, const std::string& key);

}  // namespace lorafit::peft
