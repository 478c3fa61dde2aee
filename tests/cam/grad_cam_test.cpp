#include "batchcam/cam/grad_cam.h"
#include "batchcam/models/registry.h"
#include "batchcam/models/simple_cnn.h"

#include "support/tensor_asserts.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <fstream>

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

// The CAM family on the one-gradient-call path.
namespace {
const std::vector<cam::CamMethod> kGradientMethods = {cam::CamMethod::grad_cam, cam::CamMethod::grad_cam_pp,
                                                      cam::CamMethod::xgrad_cam, cam::CamMethod::hires_cam,
                                                      cam::CamMethod::layer_cam};
}  // namespace

TEST(CamMethods, NamesRoundTripAndAnUnknownOneIsRefused) {
  for (const auto& name : cam::cam_method_names()) EXPECT_EQ(cam::to_string(cam::parse_cam_method(name)), name);
  try {
    cam::parse_cam_method("gradcam");
    FAIL() << "an unknown method was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "CAM method must be grad-cam | grad-cam++ | xgrad-cam | hirescam | layercam | cam, got 'gradcam'");
  }
}

TEST(CamMethods, EveryMethodBatchedEqualsPerSampleOnEveryModel) {
  // In float64: a map whose values barely differ (ConvNeXt's HiResCAM of some samples) is
  // stretched to [0, 1] by the normalisation, and with it float32's rounding of the batch.
  for (const auto& name : {"simple-cnn", "resnet18", "convnext-v2-atto"}) {
    auto model = trained_looking_model(name);
    model->to(torch::kDouble);
    const auto x = torch::randn({8, 1, 28, 28}, torch::kDouble);
    const auto targets = torch::randint(0, 10, {8}, torch::kLong);
    for (const auto method : kGradientMethods) {
      const auto options = cam::GradCamOptions().method(method).output_size({28, 28});
      const auto batched = cam::grad_cam(*model, x, targets, options);
      const auto single = cam::grad_cam_per_sample(*model, x, targets, options);
      EXPECT_LE(test_support::max_abs_diff(batched.cam.maps, single.maps), 1e-5) << name << " " << cam::to_string(method);
      EXPECT_LE(test_support::max_abs_diff(batched.cam.raw, single.raw), 1e-5 * (1 + single.raw.abs().max().item<double>()))
          << name << " " << cam::to_string(method);
      EXPECT_GT(batched.cam.maps.max().item<double>(), 0.5) << name << " " << cam::to_string(method) << ": all zero";
    }
  }
}

TEST(CamMethods, ClosedFormCamEqualsGradCamOnGlobalAveragePoolingAndLinearHeads) {
  for (const auto& name : {"simple-cnn", "resnet18"}) {
    auto model = trained_looking_model(name);
    model->to(torch::kDouble);
    const auto x = torch::randn({8, 1, 28, 28}, torch::kDouble);
    const auto targets = torch::randint(0, 10, {8}, torch::kLong);
    const auto options = cam::GradCamOptions().output_size({28, 28});
    const auto closed_form = cam::GradCamOptions().output_size({28, 28}).method(cam::CamMethod::cam);
    const auto grad = cam::grad_cam(*model, x, targets, options);
    const auto closed = cam::grad_cam(*model, x, targets, closed_form);
    EXPECT_LE(test_support::max_abs_diff(closed.cam.raw, grad.cam.raw), 1e-6) << name;
    EXPECT_LE(test_support::max_abs_diff(closed.cam.maps, grad.cam.maps), 1e-6) << name;
    EXPECT_GT(grad.cam.raw.max().item<double>(), 0.0) << name;
    // Not at an earlier layer: the later stages are not linear.
    model->set_target_layer(model->target_layers().front());
    EXPECT_THROW(cam::grad_cam(*model, x, targets, closed_form), std::invalid_argument);
  }
  auto convnext = trained_looking_model("convnext-v2-atto");  // pooling, LayerNorm, linear
  try {
    cam::grad_cam(*convnext, torch::randn({2, 1, 28, 28}), {}, cam::GradCamOptions().method(cam::CamMethod::cam));
    FAIL() << "closed-form CAM on a head with LayerNorm";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("needs a head of global average pooling and one linear layer"),
              std::string::npos)
        << e.what();
  }
}

// Each map's gradient with respect to the features, through the gradient call
// (create_graph), against central differences, in float64. The head makes the gradient
// depend on the features (tanh), so that its own derivative is tested too.
TEST(CamMethods, XGradCamAndHiResCamEqualGradCamWhereOnlyPoolingFollowsTheLayer) {
  // After global average pooling each channel's gradient is the same at every position, so
  // both weightings reduce to Grad-CAM's; at an earlier layer they do not. (ConvNeXt-V2 on
  // 28 px images explains its third stage, which a fourth follows: there they differ too.)
  for (const auto& name : {"simple-cnn", "resnet18", "convnext-v2-atto"}) {
    const bool pooled = std::string(name) != "convnext-v2-atto";
    auto model = trained_looking_model(name);
    model->to(torch::kDouble);
    const auto x = torch::randn({4, 1, 28, 28}, torch::kDouble);
    const auto targets = torch::randint(0, 10, {4}, torch::kLong);
    const auto maps = [&](cam::CamMethod method) {
      return cam::grad_cam(*model, x, targets, cam::GradCamOptions().method(method).output_size({28, 28})).cam.maps;
    };
    const auto grad = maps(cam::CamMethod::grad_cam);
    if (!pooled) {
      EXPECT_GT(test_support::max_abs_diff(maps(cam::CamMethod::hires_cam), grad), 1e-3) << name;
      continue;
    }
    EXPECT_LE(test_support::max_abs_diff(maps(cam::CamMethod::xgrad_cam), grad), 1e-6) << name;
    EXPECT_LE(test_support::max_abs_diff(maps(cam::CamMethod::hires_cam), grad), 1e-6) << name;
    model->set_target_layer(model->target_layers().front());
    const auto early = maps(cam::CamMethod::grad_cam);
    EXPECT_GT(test_support::max_abs_diff(maps(cam::CamMethod::hires_cam), early), 1e-3) << name << ", first stage";
  }
}

TEST(CamMethods, FiniteDifferencesMatchEachMapsGradientWithRespectToTheFeatures) {
  torch::manual_seed(3);
  const auto features = (torch::rand({2, 4, 5, 5}, torch::kDouble) + 0.1).requires_grad_(true);
  const auto classifier = torch::randn({3, 4}, torch::kDouble);
  const auto targets = torch::tensor({2, 0}, torch::kLong);
  const auto projection = torch::rand({2, 5, 5}, torch::kDouble);  // the scalar checked: sum(R * maps)
  for (const auto method : kGradientMethods) {
    const auto options = cam::GradCamOptions().method(method).create_graph(true);
    const auto value = [&](const torch::Tensor& a) {
      const auto logits = torch::tanh(a).mean({2, 3}).matmul(classifier.t());
      return (cam::grad_cam(a, logits, targets, options).maps * projection).sum();
    };
    const auto analytic = torch::autograd::grad({value(features)}, {features})[0];
    const double h = 1e-6;
    double worst = 0;
    for (int64_t k = 0; k < features.numel(); k += 7) {
      torch::Tensor plus, minus;
      {
        torch::NoGradGuard no_grad;
        plus = features.detach().clone();
        minus = features.detach().clone();
        plus.view(-1)[k] += h;
        minus.view(-1)[k] -= h;
      }
      const double numeric =
          (value(plus.requires_grad_(true)).item<double>() - value(minus.requires_grad_(true)).item<double>()) / (2 * h);
      worst = std::max(worst, std::abs(numeric - analytic.view(-1)[k].item<double>()));
    }
    EXPECT_LT(worst, 1e-6) << cam::to_string(method);
    EXPECT_GT(analytic.abs().max().item<double>(), 1e-3) << cam::to_string(method) << ": a gradient to check";
  }
}

// The maps of tests/cam/cam_methods_golden.py, written with NumPy from the papers' formulas.
TEST(CamMethods, MatchTheIndependentNumpyImplementation) {
  std::ifstream in(std::string(BATCHCAM_SOURCE_DIR) + "/tests/cam/golden/cam_methods.json");
  ASSERT_TRUE(in) << "tests/cam/golden/cam_methods.json";
  const auto golden = nlohmann::json::parse(in);
  const auto shape = golden.at("shape").get<std::vector<int64_t>>();
  const auto tensor = [](const nlohmann::json& values, std::vector<int64_t> sizes) {
    return torch::tensor(values.get<std::vector<double>>(), torch::kDouble).view(sizes);
  };
  const auto a = tensor(golden.at("features"), shape), g = tensor(golden.at("gradients"), shape);
  for (const auto& [name, expected] : golden.at("methods").items()) {
    const auto result = cam::cam_from_gradients(a, g, cam::GradCamOptions().method(cam::parse_cam_method(name)));
    EXPECT_LE(test_support::max_abs_diff(result.raw, tensor(expected.at("raw"), {shape[0], shape[2], shape[3]})), 1e-12)
        << name;
    EXPECT_LE(test_support::max_abs_diff(result.maps, tensor(expected.at("maps"), {shape[0], shape[2], shape[3]})), 1e-12)
        << name;
  }
  EXPECT_EQ(golden.at("methods").size(), 5u);
}
