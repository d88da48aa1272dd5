// Fails when a kernel op, an nn module or a peft adapter layer has no case in the op checker.
#include <gtest/gtest.h>

#include "lorafit/kernels.h"
#include "lorafit/nn.h"
#include "ops/op_check.h"
#include "peft/peft_internal.h"

TEST(OpCheckerCoverage, EveryKernelOpHasACase) {
  ASSERT_FALSE(lorafit::kernels::op_names().empty());
  for (const std::string& op : lorafit::kernels::op_names())
    EXPECT_TRUE(opcheck::covered().count(op)) << "kernel op '" << op << "' has no op-checker case";
}

TEST(OpCheckerCoverage, EveryModuleHasACase) {
  ASSERT_FALSE(lorafit::nn::module_names().empty());
  for (const std::string& m : lorafit::nn::module_names())
    EXPECT_TRUE(opcheck::covered().count(m)) << "nn module '" << m << "' has no op-checker case";
}

TEST(OpCheckerCoverage, EveryAdapterLayerHasACase) {
  ASSERT_FALSE(lorafit::peft::adapter_layer_names().empty());
  for (const std::string& l : lorafit::peft::adapter_layer_names())
    EXPECT_TRUE(opcheck::covered().count(l)) << "peft layer '" << l << "' has no op-checker case";
}
