#include "batchcam/cam/grad_cam.h"
#include "batchcam/models/registry.h"
#include "batchcam/models/simple_cnn.h"

#include "support/tensor_asserts.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

using namespace batchcam;

namespace {
models::CamModelPtr trained_looking_model(const std::string& name) {
  torch::manual_seed(0);
  models::ModelSpec spec;
  spec.name = name;
  auto model = models::make_model(spec);
  // Random BatchNorm statistics, so that eval mode is not the identity.
  model->train();
  {
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 3; ++i) model->forward(torch::randn({16, 1, 28, 28}));
  }
  model->eval();
  return model;
}
}  // namespace

// The central claim: one gradient call for the batch equals one backward per image.
void expect_batched_equals_per_sample(const std::string& name, int64_t batch, bool every_layer) {
  auto model = trained_looking_model(name);
  const auto x = torch::randn({batch, 1, 28, 28});
  const auto targets = torch::randint(0, 10, {batch}, torch::kLong);
  const auto layers = every_layer ? model->target_layers() : std::vector<std::string>{model->target_layer()};
  for (const auto& layer : layers) {
    model->set_target_layer(layer);
    const auto options = cam::GradCamOptions().output_size({28, 28});
    const auto batched = cam::grad_cam(*model, x, targets, options);
    const auto single = cam::grad_cam_per_sample(*model, x, targets, options);
    EXPECT_LE(test_support::max_abs_diff(batched.cam.maps, single.maps), 1e-5) << name << " " << layer;
    EXPECT_LE(test_support::max_abs_diff(batched.cam.raw, single.raw), 1e-5) << name << " " << layer;
    EXPECT_EQ(batched.cam.maps.sizes(), (std::vector<int64_t>{batch, 28, 28}));
    EXPECT_GT(batched.cam.maps.max().item<double>(), 0.5) << "maps should not be all zero";
  }
}

// The network itself is per-sample in eval mode: a batch's logits equal each image's alone.
TEST(GradCam, EvalForwardOfABatchEqualsForwardPerImage) {
  for (const auto& name : {"simple-cnn", "resnet18", "convnext-v2-atto"}) {
    auto model = trained_looking_model(name);
    model->to(torch::kDouble);
    const auto x = torch::randn({6, 1, 28, 28}, torch::kDouble);
    const auto batched = model->forward(x);
    for (int64_t i = 0; i < 6; ++i) {
      EXPECT_LE(test_support::max_abs_diff(batched[i], model->forward(x.slice(0, i, i + 1))[0]), 1e-10) << name;
    }
  }
}

// The acceptance check: a batch of 64 at the default target layer of every model (one
// ctest entry per model, so they run in parallel).
class BatchedEqualsPerSample : public ::testing::TestWithParam<std::string> {};
TEST_P(BatchedEqualsPerSample, OnABatchOf64) { expect_batched_equals_per_sample(GetParam(), 64, false); }
INSTANTIATE_TEST_SUITE_P(EveryModel, BatchedEqualsPerSample, ::testing::ValuesIn(models::model_names()),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (auto& ch : name) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
                           return name;
                         });

// Every target layer, on a smaller batch: the per-sample reference costs B head backwards.
TEST(GradCam, BatchedEqualsPerSampleAtEveryTargetLayer) {
  for (const auto& name : {"simple-cnn", "resnet18", "convnext-v2-atto"}) expect_batched_equals_per_sample(name, 8, true);
}

TEST(GradCam, MatchesTheClosedFormForALinearHead) {
  // head = global average pooling + linear W: dS/dA[i,d,u,v] = W[t_i, d] / (h w),
  // so alpha[i, d] = W[t_i, d] / (h w) and M_i = ReLU(sum_d alpha[i,d] A[i,d]).
  torch::manual_seed(1);
  const auto a = torch::randn({5, 6, 4, 4}, torch::kDouble).requires_grad_(true);
  const auto w = torch::randn({3, 6}, torch::kDouble);
  const auto logits = a.mean({2, 3}).matmul(w.t());
  const auto t = torch::tensor({0, 2, 1, 1, 0}, torch::kLong);
  const auto result = cam::grad_cam(a, logits, t);
  const auto alpha = w.index_select(0, t) / 16.0;
  const auto expected_raw = torch::relu((alpha.view({5, 6, 1, 1}) * a.detach()).sum(1));
  EXPECT_LE(test_support::max_abs_diff(result.raw, expected_raw), 1e-12);
  EXPECT_LE(test_support::max_abs_diff(result.maps, cam::normalize_maps(expected_raw)), 1e-12);
  EXPECT_GE(result.maps.min().item<double>(), 0.0);
  EXPECT_LE(result.maps.max().item<double>(), 1.0);
}

TEST(GradCam, ConstantMapGivesZerosNotNaN) {
  const auto maps = torch::cat({torch::zeros({1, 7, 7}), torch::full({1, 7, 7}, 3.0)});
  const auto out = cam::normalize_maps(maps);
  EXPECT_FALSE(out.isnan().any().item<bool>());
  EXPECT_EQ(out.abs().max().item<double>(), 0.0);
  // A target whose gradient is all zero (dead class) gives a zero map as well.
  const auto a = torch::rand({2, 3, 5, 5}).requires_grad_(true);
  const auto logits = torch::stack({a.sum({1, 2, 3}), a.sum({1, 2, 3}) * 0.0}, 1);
  const auto result = cam::grad_cam(a, logits, torch::tensor({1, 1}, torch::kLong));
  EXPECT_FALSE(result.maps.isnan().any().item<bool>());
  EXPECT_EQ(result.maps.abs().max().item<double>(), 0.0);
}

TEST(GradCam, RefusesBadTargetsAndDetachedFeatures) {
  const auto a = torch::rand({4, 3, 5, 5}).requires_grad_(true);
  const auto logits = a.mean({2, 3});
  EXPECT_THROW(cam::grad_cam(a, logits, torch::tensor({0}, torch::kLong)), c10::Error);            // one target only
  EXPECT_THROW(cam::grad_cam(a, logits, torch::tensor({0, 1, 2, 3}, torch::kLong)), c10::Error);   // 3 out of range
  EXPECT_THROW(cam::grad_cam(a, logits, torch::tensor({0.f, 1.f, 2.f, 0.f})), c10::Error);         // not int64
  const auto detached = torch::rand({4, 3, 5, 5});
  EXPECT_THROW(cam::grad_cam(detached, detached.mean({2, 3}), torch::zeros({4}, torch::kLong)), c10::Error);
}

TEST(GradCam, RefusesAHeadThatMixesSamples) {
  auto model = trained_looking_model("simple-cnn");
  model->set_target_layer("block2");
  model->train();
  const auto x = torch::randn({4, 1, 28, 28});
  try {
    cam::grad_cam(*model, x, torch::zeros({4}, torch::kLong));
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("block3.2"), std::string::npos) << e.what();
  }
  model->eval();
  EXPECT_NO_THROW(cam::grad_cam(*model, x, torch::zeros({4}, torch::kLong)));
}

TEST(GradCam, EmpiricalHeadCheckSeesBatchNorm) {
  torch::nn::BatchNorm1d bn(6);
  torch::nn::Linear fc(6, 3);
  const auto a = torch::randn({8, 6, 3, 3});
  bn->train();
  EXPECT_FALSE(cam::head_is_per_sample([&](const torch::Tensor& t) { return fc(bn(t.mean({2, 3}))); }, a));
  EXPECT_TRUE(cam::head_is_per_sample([&](const torch::Tensor& t) { return fc(t.mean({2, 3})); }, a));
}

TEST(GradCam, PredictedClassIsUsedWhenNoTargetIsGiven) {
  auto model = trained_looking_model("simple-cnn");
  const auto x = torch::randn({6, 1, 28, 28});
  const auto out = cam::grad_cam(*model, x, torch::Tensor());
  EXPECT_TRUE(out.targets.equal(out.logits.argmax(1)));
}

TEST(GradCam, WithCreateGraphTheMapsTrainTheConvolutions) {
  auto model = trained_looking_model("simple-cnn");
  model->train();
  const auto x = torch::randn({8, 1, 28, 28});
  const auto y = torch::randint(0, 10, {8}, torch::kLong);
  const auto out = cam::grad_cam(*model, x, y, cam::GradCamOptions().create_graph(true).output_size({28, 28}));
  const auto first_conv = model->named_parameters()["block1.0.weight"];
  const auto g = torch::autograd::grad({out.cam.maps.square().mean()}, {first_conv}, {}, true)[0];
  EXPECT_GT(g.abs().sum().item<double>(), 0.0);
  // Without create_graph the maps are constants for the optimiser.
  const auto plain = cam::grad_cam(*model, x, y, cam::GradCamOptions().output_size({28, 28}));
  EXPECT_FALSE(plain.cam.maps.requires_grad());
}
