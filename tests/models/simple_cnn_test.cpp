#include "batchcam/models/registry.h"
#include "batchcam/models/simple_cnn.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

using namespace batchcam::models;

TEST(SimpleCNN, OutputShapesInTrainAndEvalMode) {
  for (auto [c, s] : {std::pair<int64_t, int64_t>{1, 28}, {3, 32}}) {
    SimpleCNN model(SimpleCNNOptions(c, 10));
    const auto x = torch::randn({4, c, s, s});
    for (bool training : {true, false}) {
      model->train(training);
      EXPECT_EQ(model->forward(x).sizes(), (std::vector<int64_t>{4, 10}));
      EXPECT_EQ(model->features(x).sizes(), (std::vector<int64_t>{4, 64, s / 4, s / 4}));
    }
  }
}

TEST(SimpleCNN, TargetLayersSplitTheSameFunction) {
  SimpleCNN model(SimpleCNNOptions(1, 10));
  model->eval();
  const auto x = torch::randn({3, 1, 28, 28});
  const auto reference = model->forward(x);
  EXPECT_EQ(model->target_layers(), (std::vector<std::string>{"block1", "block2", "block3"}));
  const std::vector<std::vector<int64_t>> shapes = {{3, 16, 28, 28}, {3, 32, 14, 14}, {3, 64, 7, 7}};
  for (size_t i = 0; i < 3; ++i) {
    model->set_target_layer(model->target_layers()[i]);
    const auto a = model->features(x);
    EXPECT_EQ(a.sizes(), shapes[i]);
    EXPECT_TRUE(torch::allclose(model->head(a), reference, 1e-5, 1e-6));
  }
  EXPECT_THROW(model->set_target_layer("nope"), std::invalid_argument);
}

TEST(SimpleCNN, ReportsBatchNormAfterTheTargetLayerInTraining) {
  SimpleCNN model(SimpleCNNOptions(1, 10));
  model->train();
  EXPECT_EQ(model->head_sample_mixing_module(), "");
  model->set_target_layer("block2");
  EXPECT_EQ(model->head_sample_mixing_module(), "block3.2");
  model->eval();
  EXPECT_EQ(model->head_sample_mixing_module(), "");
}

TEST(SimpleCNN, ForwardAndBackwardReachEveryParameter) {
  SimpleCNN model(SimpleCNNOptions(1, 10));
  model->forward(torch::randn({4, 1, 28, 28})).pow(2).sum().backward();
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

TEST(Registry, BuildsByNameAndRejectsUnknownNames) {
  ModelSpec spec;
  spec.name = "simple-cnn";
  spec.target_layer = "block2";
  const auto model = make_model(spec);
  EXPECT_EQ(model->name(), "simple-cnn");
  EXPECT_EQ(model->target_layer(), "block2");
  EXPECT_EQ(model->num_classes(), 10);
  spec.name = "resnet-1000";
  EXPECT_THROW(make_model(spec), std::invalid_argument);
}
