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

namespace {
// A small smooth model in float64 (tanh, so that central differences are accurate): a 3 x 3
// convolution of 2 input channels into 3, average pooling, a linear layer to 4 classes.
struct SmoothNet {
  torch::nn::Conv2d conv{torch::nn::Conv2dOptions(2, 3, 3).padding(1)};
  torch::nn::Linear fc{3 * 4 * 4, 4};
  SmoothNet() {
    torch::manual_seed(3);
    conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 3, 3).padding(1));
    fc = torch::nn::Linear(3 * 4 * 4, 4);
    conv->to(torch::kDouble);
    fc->to(torch::kDouble);
  }
  torch::Tensor operator()(const torch::Tensor& x) {
    return fc(torch::avg_pool2d(torch::tanh(conv(x)), 2).flatten(1));
  }
  std::vector<torch::Tensor> parameters() { return {conv->weight, conv->bias, fc->weight, fc->bias}; }
};

// The RRR term of SmoothNet on x with these weights per pixel.
torch::Tensor penalty_of(SmoothNet& net, const torch::Tensor& x, const torch::Tensor& weights, bool create_graph) {
  const auto input = x.detach().requires_grad_(true);
  const auto g = losses::log_probability_input_gradients(input, net(input), create_graph);
  return losses::input_gradient_penalty(g, weights);
}
}  // namespace

TEST(Rrr, InputGradientsAreThoseOfTheSummedLogProbabilities) {
  SmoothNet net;
  torch::manual_seed(4);
  const auto x = torch::randn({3, 2, 8, 8}, torch::kDouble);
  const auto input = x.clone().requires_grad_(true);
  const auto g = losses::log_probability_input_gradients(input, net(input), /*create_graph=*/false);
  ASSERT_EQ(g.sizes(), x.sizes());
  // Central differences of sum_i sum_k log p_ik at a few input pixels (float64, step 1e-6).
  const auto objective = [&](const torch::Tensor& at) { return torch::log_softmax(net(at), 1).sum().item<double>(); };
  for (const auto& [i, c, u, v] : std::vector<std::array<int64_t, 4>>{{0, 0, 0, 0}, {1, 1, 3, 4}, {2, 0, 7, 2}}) {
    const double h = 1e-6;
    auto plus = x.clone(), minus = x.clone();
    plus[i][c][u][v] += h;
    minus[i][c][u][v] -= h;
    const double numeric = (objective(plus) - objective(minus)) / (2 * h);
    EXPECT_NEAR(g[i][c][u][v].item<double>(), numeric, 1e-7 * std::max(1.0, std::abs(numeric)));
  }
}

TEST(Rrr, IsZeroWithEmptyMasksAndTheMaskedSquaredGradientOtherwise) {
  SmoothNet net;
  torch::manual_seed(5);
  const auto x = torch::randn({3, 2, 8, 8}, torch::kDouble);
  const auto empty = torch::zeros({3, 8, 8}, torch::kBool);
  const auto none = penalty_of(net, x, empty, /*create_graph=*/true);
  EXPECT_EQ(none.item<double>(), 0.0);
  // ... and nothing flows back from it.
  const auto grads = torch::autograd::grad({none}, net.parameters(), {}, false, false, /*allow_unused=*/true);
  for (const auto& g : grads) {
    if (g.defined()) {
      EXPECT_EQ(g.abs().max().item<double>(), 0.0);
    }
  }
  // A mask of the top-left 3 x 3 corner of image 1: the sum of that corner's squared
  // gradients over both channels, divided by the batch size.
  auto corner = empty.clone();
  corner[1].slice(0, 0, 3).slice(1, 0, 3).fill_(true);
  const auto input = x.clone().requires_grad_(true);
  const auto g = losses::log_probability_input_gradients(input, net(input), false);
  const double expected = g[1].slice(1, 0, 3).slice(2, 0, 3).square().sum().item<double>() / 3;
  EXPECT_NEAR(losses::rrr_loss(g, corner).item<double>(), expected, 1e-12 * expected);
  EXPECT_GT(expected, 0.0);
  EXPECT_THROW(losses::rrr_loss(g, torch::zeros({3, 7, 8}, torch::kBool)), c10::Error);
}

TEST(Rrr, GradientWithRespectToTheWeightsMatchesFiniteDifferences) {
  SmoothNet net;
  torch::manual_seed(6);
  const auto x = torch::randn({2, 2, 8, 8}, torch::kDouble);
  auto masks = torch::zeros({2, 8, 8}, torch::kBool);
  masks.slice(1, 5, 8).slice(2, 0, 4).fill_(true);
  const auto params = net.parameters();
  const auto analytic = torch::autograd::grad({penalty_of(net, x, masks, /*create_graph=*/true)}, params);
  // Central differences (float64, step 1e-6) on a spread of entries of every parameter:
  // the double backward through the input gradient is what trains with RRR.
  const double h = 1e-6;
  double worst = 0.0;
  for (size_t p = 0; p < params.size(); ++p) {
    auto flat = params[p].detach().view({-1});
    const auto grad = analytic[p].reshape({-1});
    for (int64_t j = 0; j < flat.numel(); j += std::max<int64_t>(1, flat.numel() / 7)) {
      const double keep = flat[j].item<double>();
      flat[j] = keep + h;
      const double plus = penalty_of(net, x, masks, false).item<double>();
      flat[j] = keep - h;
      const double minus = penalty_of(net, x, masks, false).item<double>();
      flat[j] = keep;
      const double numeric = (plus - minus) / (2 * h);
      const double error = std::abs(grad[j].item<double>() - numeric) / std::max(1e-3, std::abs(numeric));
      worst = std::max(worst, error);
    }
  }
  EXPECT_LT(worst, 1e-5) << "relative error of the RRR term's gradient against central differences";
}

TEST(PrototypeRrr, WeightsTheGradientsByOneMinusTheTrueClassesPrototypeWithoutAMask) {
  torch::manual_seed(7);
  const auto g = torch::randn({3, 2, 4, 4}, torch::kDouble);
  const auto prototypes = torch::rand({5, 4, 4});
  const auto targets = torch::tensor({4, 0, 4}, torch::kLong);
  double expected = 0.0;
  for (int64_t i = 0; i < 3; ++i) {
    const auto weight = 1 - prototypes[targets[i].item<int64_t>()].to(torch::kDouble);
    expected += (weight.unsqueeze(0) * g[i].square()).sum().item<double>();
  }
  expected /= 3;
  EXPECT_NEAR(losses::prototype_rrr_loss(g, targets, prototypes).item<double>(), expected, 1e-6 * expected);
  // A prototype of ones (evidence everywhere) penalises nothing; one of zeros everything.
  EXPECT_EQ(losses::prototype_rrr_loss(g, targets, torch::ones({5, 4, 4})).item<double>(), 0.0);
  EXPECT_NEAR(losses::prototype_rrr_loss(g, targets, torch::zeros({5, 4, 4})).item<double>(),
              g.square().sum().item<double>() / 3, 1e-9);
  EXPECT_THROW(losses::prototype_rrr_loss(g, torch::tensor({0, 5, 1}, torch::kLong), prototypes), c10::Error);
  EXPECT_THROW(losses::prototype_rrr_loss(g, targets, torch::rand({5, 3, 4})), c10::Error);
}
