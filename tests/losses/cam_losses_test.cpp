#include "batchcam/losses/cam_losses.h"

#include "support/tensor_asserts.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

using namespace batchcam;
using losses::Distance;

TEST(Prototypes, ImagePrototypeIsTheNormalisedClassMean) {
  // Class 0: two images, pixel values {0, 100} and {0, 200} -> mean {0, 150} -> {0, 1}.
  auto images = torch::zeros({3, 1, 1, 2}, torch::kUInt8);
  images[0][0][0][1] = 100;
  images[1][0][0][1] = 200;
  images[2][0][0][0] = 50;  // class 1: {50, 0} -> {1, 0}
  const auto protos = losses::image_prototypes(images, torch::tensor({0, 0, 1}, torch::kLong), 3);
  EXPECT_EQ(protos.sizes(), (std::vector<int64_t>{3, 1, 2}));
  EXPECT_LE(test_support::max_abs_diff(protos[0], torch::tensor({{0.0, 1.0}})), 1e-6);
  EXPECT_LE(test_support::max_abs_diff(protos[1], torch::tensor({{1.0, 0.0}})), 1e-6);
  EXPECT_EQ(protos[2].abs().max().item<double>(), 0.0);  // no samples: zeros
}

TEST(Prototypes, BatchPrototypesAreClassMeans) {
  const auto maps = torch::stack({torch::full({2, 2}, 0.2), torch::full({2, 2}, 0.6), torch::full({2, 2}, 0.9)});
  const auto [q, counts] = losses::batch_prototypes(maps, torch::tensor({1, 1, 2}, torch::kLong), 3);
  EXPECT_TRUE(counts.equal(torch::tensor({0, 2, 1}, torch::kLong)));
  EXPECT_NEAR(q[1][0][0].item<double>(), 0.4, 1e-6);
  EXPECT_NEAR(q[2][1][1].item<double>(), 0.9, 1e-6);
  EXPECT_EQ(q[0].abs().max().item<double>(), 0.0);
}

TEST(Prototypes, EmaMovesPresentClassesOnly) {
  const auto protos = torch::zeros({2, 2, 2});
  const auto maps = torch::ones({3, 2, 2});
  const auto updated = losses::ema_prototypes(protos, maps, torch::tensor({1, 1, 1}, torch::kLong), 0.9);
  EXPECT_NEAR(updated[1][0][0].item<double>(), 0.1, 1e-6);
  EXPECT_EQ(updated[0].abs().max().item<double>(), 0.0);
}

TEST(Prototypes, EmaFromSummedHalvesEqualsEmaOfTheWholeBatch) {
  // Two ranks' class sums and counts, added, update the prototypes as the whole batch does.
  const auto protos = torch::rand({3, 4, 4});
  const auto maps = torch::rand({6, 4, 4});
  const auto labels = torch::tensor({0, 2, 2, 0, 2, 2}, torch::kLong);
  auto sums = torch::zeros({3, 4, 4}), counts = torch::zeros({3});
  for (const int64_t begin : {0, 3}) {
    const auto [q, n] = losses::batch_prototypes(maps.slice(0, begin, begin + 3), labels.slice(0, begin, begin + 3), 3);
    sums += q * n.to(torch::kFloat).view({-1, 1, 1});
    counts += n.to(torch::kFloat);
  }
  const auto whole = losses::ema_prototypes(protos, maps, labels, 0.9);
  const auto from_sums = losses::ema_prototypes_from_sums(protos, sums, counts, 0.9);
  EXPECT_LT((whole - from_sums).abs().max().item<double>(), 1e-6);
  EXPECT_TRUE(torch::equal(from_sums[1], protos[1])) << "class 1 is absent: unchanged";
  EXPECT_GT((from_sums[0] - protos[0]).abs().max().item<double>(), 1e-3);
}

TEST(PrototypeLoss, IsTheMeanDistanceToTheTargetPrototype) {
  const auto protos = torch::stack({torch::zeros({4, 4}), torch::ones({4, 4})});
  const auto maps = torch::full({2, 4, 4}, 0.25);
  const auto t = torch::tensor({0, 1}, torch::kLong);
  EXPECT_NEAR(losses::prototype_loss(maps, t, protos, Distance::l1).item<double>(), (0.25 + 0.75) / 2, 1e-6);
  EXPECT_NEAR(losses::prototype_loss(maps, t, protos, Distance::l2).item<double>(), (0.0625 + 0.5625) / 2, 1e-6);
  EXPECT_NEAR(losses::prototype_loss(protos, t, protos, Distance::ssim).item<double>(), 0.0, 1e-6);
}

TEST(BatchCamLoss, SingletonsAddNothingAndTheMeanIsOverTheWholeBatch) {
  // Class 0: maps 0 and 1 -> Q = 0.5, each at L1 distance 0.5; class 1: a singleton.
  const auto maps = torch::stack({torch::zeros({3, 3}), torch::ones({3, 3}), torch::full({3, 3}, 0.3)});
  const auto t = torch::tensor({0, 0, 1}, torch::kLong);
  EXPECT_NEAR(losses::batch_cam_loss(maps, t, 2, Distance::l1).item<double>(), (0.5 + 0.5) / 3, 1e-6);
  EXPECT_EQ(losses::batch_cam_loss(maps, torch::tensor({0, 1, 2}, torch::kLong), 3, Distance::l2).item<double>(), 0.0);
}

TEST(BatchCamLoss, DetachedTargetChangesTheGradient) {
  torch::manual_seed(4);
  const auto maps = torch::rand({6, 5, 5}, torch::kDouble).requires_grad_(true);
  const auto t = torch::tensor({0, 0, 0, 1, 1, 2}, torch::kLong);
  const auto g_attached = torch::autograd::grad({losses::batch_cam_loss(maps, t, 3, Distance::l2, false)}, {maps})[0];
  const auto g_detached = torch::autograd::grad({losses::batch_cam_loss(maps, t, 3, Distance::l2, true)}, {maps})[0];
  // For L2 and a class of n maps, d/dM_i of sum_j |M_j - Q|^2 is 2 (M_i - Q) either way (the
  // deviations from the mean sum to zero), so compare L1, where the terms differ.
  EXPECT_LE(test_support::max_abs_diff(g_attached, g_detached), 1e-12);
  const auto g1_attached = torch::autograd::grad({losses::batch_cam_loss(maps, t, 3, Distance::l1, false)}, {maps})[0];
  const auto g1_detached = torch::autograd::grad({losses::batch_cam_loss(maps, t, 3, Distance::l1, true)}, {maps})[0];
  EXPECT_GT(test_support::max_abs_diff(g1_attached, g1_detached), 1e-6);
  // The singleton (sample 5) gets no gradient.
  EXPECT_EQ(g1_attached[5].abs().max().item<double>(), 0.0);
}

TEST(CamLosses, GradientsMatchFiniteDifferencesForEveryDistance) {
  torch::manual_seed(5);
  const auto protos = torch::rand({3, 11, 11}, torch::kDouble);
  const auto t = torch::tensor({0, 0, 1, 2, 2}, torch::kLong);
  const auto maps = torch::rand({5, 11, 11}, torch::kDouble);
  for (auto d : {Distance::l1, Distance::l2, Distance::ssim}) {
    const double proto_err = test_support::gradcheck_relative_error(
        [&](const torch::Tensor& m) { return losses::prototype_loss(m, t, protos, d); }, maps);
    EXPECT_LE(proto_err, 1e-4) << "prototype loss, " << losses::to_string(d);
    const double batch_err = test_support::gradcheck_relative_error(
        [&](const torch::Tensor& m) { return losses::batch_cam_loss(m, t, 3, d); }, maps);
    EXPECT_LE(batch_err, 1e-4) << "batch loss, " << losses::to_string(d);
  }
}

TEST(BatchCamLoss, DetachedTargetActsAsAFixedPrototype) {
  // Without singletons, the detached Batch-CAM loss has the gradient of the Prototype
  // Loss against the in-batch prototypes frozen at their current value.
  torch::manual_seed(6);
  const auto t = torch::tensor({0, 0, 1, 1, 2, 2}, torch::kLong);
  const auto maps = torch::rand({6, 11, 11}, torch::kDouble).requires_grad_(true);
  const auto frozen = losses::batch_prototypes(maps.detach(), t, 3).first;
  for (auto d : {Distance::l1, Distance::l2, Distance::ssim}) {
    const auto g = torch::autograd::grad({losses::batch_cam_loss(maps, t, 3, d, true)}, {maps})[0];
    const auto expected = torch::autograd::grad({losses::prototype_loss(maps, t, frozen, d)}, {maps})[0];
    EXPECT_LE(test_support::max_abs_diff(g, expected), 1e-12) << losses::to_string(d);
  }
}
