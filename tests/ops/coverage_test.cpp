// Fails when a kernel op or an nn module has no case in the op checker.
#include <gtest/gtest.h>

#include "lorafit/kernels.h"
#include "lorafit/nn.h"
#include "ops/op_check.h"

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
