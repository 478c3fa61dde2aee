#include "batchcam/losses/distances.h"

#include "support/tensor_asserts.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

using namespace batchcam;
using losses::Distance;

namespace {
struct Golden {
  int64_t h, w, which;
  double ssim;
};
const Golden kGolden[] = {
#include "golden/ssim_golden.inc"
};

// The closed-form maps of golden/make_ssim_golden.py.
std::pair<torch::Tensor, torch::Tensor> ssim_golden_maps(int64_t h, int64_t w, int64_t which) {
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const auto i = torch::arange(h, opts).view({-1, 1});
  const auto j = torch::arange(w, opts).view({1, -1});
  const auto a = 0.5 + 0.5 * torch::sin(0.37 * i + 0.21 * j + static_cast<double>(which % 2));
  torch::Tensor b;
  if (which == 2) {
    b = 0.8 * a + 0.1 + 0.05 * torch::sin(0.1 * i * j);
  } else {
    b = 0.5 + 0.5 * torch::cos(0.19 * i * static_cast<double>(1 + which) - 0.43 * j) *
                  torch::exp(-((i - h / 2.0).square() + (j - w / 2.0).square()) / static_cast<double>(h * w));
  }
  return {a.unsqueeze(0), b.unsqueeze(0)};
}
}  // namespace

TEST(Ssim, MatchesScikitImageGoldenValues) {
  for (const auto& g : kGolden) {
    const auto [a, b] = ssim_golden_maps(g.h, g.w, g.which);
    const double got = losses::ssim(a, b).item<double>();
    EXPECT_NEAR(got, g.ssim, 1e-10) << g.h << "x" << g.w << " case " << g.which;
    // float32 as used in training, with a float tolerance.
    EXPECT_NEAR(losses::ssim(a.to(torch::kFloat), b.to(torch::kFloat)).item<double>(), g.ssim, 1e-4);
  }
}

TEST(Ssim, IdenticalMapsGiveOneAndIsSymmetric) {
  const auto a = torch::rand({3, 28, 28}, torch::kDouble);
  const auto b = torch::rand({3, 28, 28}, torch::kDouble);
  EXPECT_LE((losses::ssim(a, a) - 1.0).abs().max().item<double>(), 1e-12);
  EXPECT_LE(test_support::max_abs_diff(losses::ssim(a, b), losses::ssim(b, a)), 1e-12);
  EXPECT_LT(losses::ssim(a, b).max().item<double>(), 0.5);
  EXPECT_LE(losses::distance(Distance::ssim, a, a).abs().max().item<double>(), 1e-12);
}

TEST(Ssim, WindowShrinksToSmallMaps) {
  const losses::SsimOptions o;
  EXPECT_EQ(losses::ssim_window(28, 28, o, torch::kDouble).sizes(), (std::vector<int64_t>{11, 11}));
  EXPECT_EQ(losses::ssim_window(8, 12, o, torch::kDouble).sizes(), (std::vector<int64_t>{7, 7}));
  EXPECT_NEAR(losses::ssim_window(7, 7, o, torch::kDouble).sum().item<double>(), 1.0, 1e-12);
  EXPECT_THROW(losses::ssim_window(0, 5, o, torch::kDouble), c10::Error);
}

TEST(Distances, L1AndL2OnKnownValues) {
  const auto a = torch::zeros({2, 2, 2});
  auto b = torch::zeros({2, 2, 2});
  b[0].fill_(0.5);
  b[1][0][0] = 1.0;
  EXPECT_TRUE(torch::allclose(losses::distance(Distance::l1, a, b), torch::tensor({0.5f, 0.25f})));
  EXPECT_TRUE(torch::allclose(losses::distance(Distance::l2, a, b), torch::tensor({0.25f, 0.25f})));
  EXPECT_THROW(losses::distance(Distance::l1, a, torch::zeros({2, 2, 3})), c10::Error);
}

TEST(Distances, ParseNamesAndRejectUnknown) {
  EXPECT_EQ(losses::parse_distance("ssim"), Distance::ssim);
  EXPECT_EQ(losses::to_string(losses::parse_distance("l1")), "l1");
  EXPECT_THROW(losses::parse_distance("l3"), std::invalid_argument);
}

TEST(Distances, GradientsMatchFiniteDifferences) {
  torch::manual_seed(3);
  const auto b = torch::rand({2, 12, 12}, torch::kDouble);
  for (auto d : {Distance::l1, Distance::l2, Distance::ssim}) {
    const auto a = torch::rand({2, 12, 12}, torch::kDouble);
    const double err = test_support::gradcheck_relative_error(
        [&](const torch::Tensor& x) { return losses::distance(d, x, b).sum(); }, a);
    EXPECT_LE(err, 1e-4) << losses::to_string(d);
  }
}
