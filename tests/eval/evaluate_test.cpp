#include "batchcam/eval/evaluate.h"
#include "batchcam/data/shapes.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

using namespace batchcam;

TEST(MassShare, KnownCases) {
  auto masks = torch::zeros({3, 4, 4}, torch::kBool);
  masks.slice(1, 0, 2).fill_(true);  // top half
  const auto equal_to_mask = masks.to(torch::kFloat);
  const auto uniform = torch::ones({3, 4, 4});
  const auto outside = masks.logical_not().to(torch::kFloat);
  EXPECT_NEAR(eval::mass_share(equal_to_mask, masks)[0].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(eval::mass_share(uniform, masks)[1].item<double>(), 0.5, 1e-6);
  EXPECT_NEAR(eval::mass_share(outside, masks)[2].item<double>(), 0.0, 1e-6);
  EXPECT_EQ(eval::mass_share(torch::zeros({3, 4, 4}), masks).abs().max().item<double>(), 0.0);
}

TEST(Evaluate, IsStableAndReportsEveryMetricInRange) {
  const auto d = data::generate_shapes(64, 28, 9, data::SpuriousCue::random_class, 0.08);
  const auto norm = data::Normalization::fit(d.images);
  const auto protos = losses::image_prototypes(d.images, d.labels, 10);
  torch::manual_seed(0);
  auto model = models::make_model({"simple-cnn", 1, 10, 28, ""});
  const auto a = eval::evaluate(*model, d, norm, protos, 32);
  const auto b = eval::evaluate(*model, d, norm, protos, 16);  // batch size must not matter
  EXPECT_EQ(a.count, 64);
  EXPECT_NEAR(a.accuracy, b.accuracy, 1e-12);
  EXPECT_NEAR(a.loss, b.loss, 1e-5);
  EXPECT_NEAR(a.proto_ssim, b.proto_ssim, 1e-5);
  EXPECT_NEAR(a.object_share, b.object_share, 1e-5);
  EXPECT_GE(a.object_share, 0.0);
  EXPECT_LE(a.object_share, 1.0);
  EXPECT_GE(a.decoy_share, 0.0);
  EXPECT_LE(a.decoy_share, 1.0);
  EXPECT_TRUE(model->is_training());  // mode restored
  const auto no_cam = eval::evaluate(*model, d, norm, torch::Tensor());
  EXPECT_EQ(no_cam.object_share, -1.0);
  EXPECT_NEAR(no_cam.accuracy, a.accuracy, 1e-12);
}
