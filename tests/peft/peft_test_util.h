// Comparison helpers for the peft tests: the shared NaN-propagating ones (tests/test_util.h).
#pragma once

#include "peft/layers.h"  // the adapter layer classes (internal to peft)
#include "test_util.h"

namespace peft_test {

using test_util::max_abs;
using test_util::max_abs_diff;
using test_util::nan_max;

}  // namespace peft_test
