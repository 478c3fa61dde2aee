#include "batchcam/data/shapes.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/config.h"
#include "batchcam/train/trainer.h"

#include "support/tensor_asserts.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

using namespace batchcam;
namespace fs = std::filesystem;

namespace {
fs::path fresh_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("batchcam-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

struct FixedBatch {
  data::Dataset dataset = data::generate_shapes(64, 28, 11, data::SpuriousCue::none, 0.05);
  data::Normalization norm = data::Normalization::fit(dataset.images);
  data::Batch batch = data::BatchIterator(dataset, norm, 64, false, 0, false).get(0);
  torch::Tensor protos = losses::image_prototypes(dataset.images, dataset.labels, 10);
};

// A freshly initialised SimpleCNN (seed 0) in training mode.
models::CamModelPtr fresh_simple_cnn() {
  torch::manual_seed(0);
  auto model = models::make_model({"simple-cnn", 1, 10, 28, ""});
  model->train();
  return model;
}

// Loss on the batch before and after a few optimiser steps on it.
std::pair<double, double> loss_before_after(const train::CamLossConfig& config, int steps) {
  FixedBatch f;
  auto model = fresh_simple_cnn();
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  const auto loss = [&] { return train::compute_losses(*model, f.batch, f.protos, 10, config).total; };
  const double before = loss().item<double>();
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    loss().backward();
    opt.step();
  }
  return {before, loss().item<double>()};
}
}  // namespace

TEST(Trainer, TrainingStepsLowerTheLossOnAFixedBatch) {
  const auto [ce_before, ce_after] = loss_before_after({}, 3);
  EXPECT_LT(ce_after, ce_before);
  train::CamLossConfig cam;
  cam.lambda_proto = 1.0;
  cam.lambda_batch = 1.0;
  const auto [cam_before, cam_after] = loss_before_after(cam, 3);
  EXPECT_LT(cam_after, cam_before);
}

TEST(Trainer, CamLossesChangeTheConvolutionGradients) {
  FixedBatch f;
  auto model = fresh_simple_cnn();
  const auto conv = model->named_parameters()["block2.1.weight"];
  const auto grad_of = [&](const train::CamLossConfig& c) {
    return torch::autograd::grad({train::compute_losses(*model, f.batch, f.protos, 10, c).total}, {conv})[0];
  };
  const auto g_ce = grad_of({});
  for (auto d : {losses::Distance::l1, losses::Distance::l2, losses::Distance::ssim}) {
    train::CamLossConfig c;
    c.lambda_proto = 1.0;
    c.lambda_batch = 1.0;
    c.distance_proto = c.distance_batch = d;
    const auto g = grad_of(c);
    // The CAM terms add their own gradient: clearly different from CE alone.
    EXPECT_GT(test_support::max_abs_diff(g, g_ce), 1e-3 * g_ce.abs().max().item<double>()) << losses::to_string(d);
  }
}

TEST(Trainer, ConfigJsonRoundTripAndErrorsNameTheKey) {
  train::TrainConfig c;
  c.epochs = 7;
  c.lambda_proto = 0.5;
  c.distance_batch = "l1";
  c.spurious = true;
  const auto back = train::config_from_json(train::to_json(c));
  EXPECT_EQ(train::to_json(back), train::to_json(c));
  try {
    train::config_from_json({{"epochz", 3}});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("epochz"), std::string::npos);
  }
  EXPECT_THROW(train::config_from_json({{"epochs", "three"}}), std::invalid_argument);
  train::TrainConfig bad;
  bad.distance_proto = "l7";
  try {
    bad.validate();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("distance_proto"), std::string::npos);
  }
}

TEST(Checkpoint, RoundTripGivesTheSameLogitsAndRejectsDamage) {
  const auto dir = fresh_dir("ckpt");
  models::ModelSpec spec;
  spec.name = "simple-cnn";
  auto model = models::make_model(spec);
  {
    torch::NoGradGuard no_grad;
    model->forward(torch::randn({8, 1, 28, 28}));  // move BatchNorm statistics
  }
  model->eval();
  data::Normalization norm{{0.1}, {0.3}};
  const auto protos = torch::rand({10, 28, 28});
  const auto path = (dir / "c.pt").string();
  train::save_checkpoint(path, *model, spec, train::TrainConfig{}, 3, norm, protos);
  const auto ck = train::load_checkpoint(path);
  const auto x = torch::randn({4, 1, 28, 28});
  EXPECT_LE(test_support::max_abs_diff(ck.model->forward(x), model->forward(x)), 0.0);
  EXPECT_EQ(ck.epoch, 3);
  EXPECT_EQ(ck.normalization.std, norm.std);
  EXPECT_TRUE(ck.prototypes.equal(protos));

  // Truncated on disk: rejected with a message that names the file.
  const auto size = fs::file_size(path);
  const auto cut = (dir / "cut.pt").string();
  fs::copy_file(path, cut);
  fs::resize_file(cut, size / 2);
  try {
    train::load_checkpoint(cut);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(cut), std::string::npos) << e.what();
  }
  EXPECT_THROW(train::load_checkpoint((dir / "missing.pt").string()), std::runtime_error);
  std::ofstream((dir / "text.pt").string()) << "not a checkpoint";
  EXPECT_THROW(train::load_checkpoint((dir / "text.pt").string()), std::runtime_error);
  fs::remove_all(dir);
}

TEST(Trainer, ShortRunWritesConfigMetricsAndCheckpoint) {
  const auto dir = fresh_dir("run");
  train::TrainConfig c;
  c.train_size = 256;
  c.test_size = 64;
  c.epochs = 2;
  c.batch_size = 64;
  c.lambda_proto = 0.5;
  c.lambda_batch = 0.5;
  c.cam_warmup_epochs = 1;
  c.out_dir = dir.string();
  c.run_name = "r";
  int steps = 0;
  train::TrainCallbacks cb;
  cb.on_step = [&](const train::StepInfo&) { ++steps; };
  const auto result = train::train(c, cb);
  EXPECT_EQ(steps, 2 * 4);
  ASSERT_EQ(result.history.size(), 2u);
  EXPECT_EQ(result.history[0].lambda_proto, 0.0);  // warm-up
  EXPECT_EQ(result.history[0].train_proto, 0.0);
  EXPECT_EQ(result.history[1].lambda_proto, 0.5);
  EXPECT_GT(result.history[1].train_proto, 0.0);
  std::ifstream metrics(dir / "r" / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("epoch").get<int>(), ++lines);
    EXPECT_TRUE(j.contains("test_accuracy") && j.contains("train_batch") && j.contains("seconds"));
  }
  EXPECT_EQ(lines, 2);
  std::ifstream config_file(dir / "r" / "config.json");
  EXPECT_EQ(train::config_from_json(nlohmann::json::parse(config_file)).epochs, 2);
  const auto ck = train::load_checkpoint(result.checkpoint);
  EXPECT_EQ(ck.epoch, 2);
  // The same run name again is refused rather than mixed with the old run.
  EXPECT_THROW(train::train(c), std::runtime_error);
  fs::remove_all(dir);
}

TEST(Trainer, UnwritableOutputIsReportedBeforeTraining) {
  const auto dir = fresh_dir("ro");
  std::ofstream((dir / "file").string()) << "x";
  train::TrainConfig c;
  c.train_size = 64;
  c.test_size = 16;
  c.out_dir = (dir / "file").string();  // a file, not a directory
  EXPECT_THROW(train::train(c), std::runtime_error);
  fs::remove_all(dir);
}
