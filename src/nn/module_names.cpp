#include "lorafit/nn.h"

namespace lorafit::nn {

const std::vector<std::string>& module_names() {
  static const std::vector<std::string> names = {"Linear",  "Embedding", "LayerNorm", "RMSNorm",
                                                 "Dropout", "MLP",       "Attention"};
  return names;
}

}  // namespace lorafit::nn
