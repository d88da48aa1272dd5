#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "lorafit/tensor.h"

using namespace lorafit::tensor;

namespace {
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Slow reference: the f16 value nearest to x, ties to even mantissa, found by searching all
// 65536 codes ordered by value. Independent of the bit-twiddling in tensor.cpp.
uint16_t f16_nearest_ref(float x) {
  double best_err = INFINITY;
  uint16_t best = 0;
  uint32_t sign = std::signbit(x) ? 0x8000u : 0u;  // round the magnitude; the sign is kept
  for (uint32_t m = 0; m < 0x7c00; ++m) {
    uint16_t h = static_cast<uint16_t>(sign | m);
    double err = std::fabs(static_cast<double>(f16_to_f32(h)) - x);
    if (err < best_err || (err == best_err && (m & 1) == 0)) {
      best_err = err;
      best = h;
    }
  }
  return best;
}
}  // namespace

TEST(Tensor, ShapeViewsAndRows) {
  Tensor t = Tensor::from_vector({2, 3}, {0, 1, 2, 3, 4, 5});
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.dim(-1), 3);
  Tensor v = t.view({3, -1});
  EXPECT_EQ(v.shape(), (Shape{3, 2}));
  EXPECT_TRUE(v.same_storage(t));
  Tensor r = t.row(1);
  EXPECT_EQ(r.shape(), (Shape{3}));
  EXPECT_EQ(r.f32()[0], 3.0f);
  r.f32()[0] = 42.0f;  // views share storage
  EXPECT_EQ(t.f32()[3], 42.0f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(Tensor::empty({7}).raw()) % 64, 0u);
}

TEST(Tensor, BadInputNamesOperationAndShape) {
  Tensor t = Tensor::zeros({2, 3});
  try {
    t.view({4, 2});
    FAIL() << "expected an error";
  } catch (const lorafit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("Tensor::view"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos);
  }
  EXPECT_THROW(t.rows(1, 3), lorafit::Error);
  EXPECT_THROW(t.i32(), lorafit::Error);
  EXPECT_THROW(t.dim(2), lorafit::Error);
  EXPECT_THROW(t.view({-1, -1}), lorafit::Error);
}

TEST(Tensor, F16RoundTripAllCodes) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << "code " << h;
  }
}

TEST(Tensor, F16RoundsToNearestEven) {
  // Halfway between 1.0 (0x3c00) and the next f16 (0x3c01): ties to even -> 0x3c00.
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 2048.0f), 0x3c00);
  // Halfway between 0x3c01 and 0x3c02 -> 0x3c02 (even).
  EXPECT_EQ(f32_to_f16(1.0f + 3.0f / 2048.0f), 0x3c02);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds up to inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  // Sampled values against an exhaustive nearest-value search (includes subnormals).
  uint32_t seed = 12345;
  for (int i = 0; i < 300; ++i) {
    seed = seed * 1664525u + 1013904223u;
    float x = from_bits((seed & 0x807fffffu) | ((100u + (seed >> 24) % 42u) << 23));
    ASSERT_EQ(f32_to_f16(x), f16_nearest_ref(x)) << x;
  }
}

TEST(Tensor, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);  // above tie
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_bf16(f), h);
    }
  }
  EXPECT_EQ(bits(bf16_to_f32(0x3f80)), 0x3f800000u);
}

TEST(Tensor, ConvertTensors) {
  Tensor t = Tensor::from_vector({4}, {1.0f, -2.5f, 0.333333f, 1e-3f});
  Tensor h = t.to(DType::F16);
  EXPECT_EQ(h.dtype(), DType::F16);
  Tensor back = h.to(DType::F32);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(back.f32()[i], t.f32()[i], 1e-3 * std::fabs(t.f32()[i]));
  Tensor b = t.to(DType::BF16).to(DType::F32);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(b.f32()[i], t.f32()[i], 8e-3 * std::fabs(t.f32()[i]));
  EXPECT_THROW(t.to(DType::Q4_0), lorafit::Error);
}

TEST(Arena, AllocResetAndGrow) {
  Arena a(256);
  Tensor x = a.alloc({10});
  Tensor y = a.alloc({100});  // does not fit the first chunk: a second chunk is added
  EXPECT_EQ(reinterpret_cast<uintptr_t>(y.raw()) % 64, 0u);
  x.fill(1.0f);
  y.fill(2.0f);
  EXPECT_EQ(x.f32()[9], 1.0f);
  size_t peak = a.peak();
  EXPECT_GE(peak, 440u);
  const size_t cap = a.capacity();
  EXPECT_GE(cap, peak);
  a.reset();
  EXPECT_EQ(a.used(), 0u);
  // The same step again reuses the same memory, in the same places: no growth.
  for (int step = 0; step < 3; ++step) {
    Tensor x2 = a.alloc({10});
    Tensor z = a.zeros({100});
    EXPECT_EQ(x2.raw(), x.raw());
    EXPECT_EQ(z.raw(), y.raw());
    EXPECT_EQ(z.f32()[99], 0.0f);
    EXPECT_EQ(a.capacity(), cap);
    a.reset();
  }
  // A bigger step grows once, then is served from the same chunks.
  Tensor big = a.alloc({1000});
  const size_t cap2 = a.capacity();
  EXPECT_GT(cap2, cap);
  a.reset();
  Tensor big2 = a.alloc({1000});
  EXPECT_EQ(big2.raw(), big.raw());
  EXPECT_EQ(a.capacity(), cap2);
}
