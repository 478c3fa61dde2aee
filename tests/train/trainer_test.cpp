#include "batchcam/core/runtime.h"
#include "batchcam/data/datasets.h"
#include "batchcam/data/shapes.h"
#include "batchcam/io/sha256.h"
#include "batchcam/io/file.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/config.h"
#include "batchcam/train/optimization.h"
#include "batchcam/train/trainer.h"

#include "support/process.h"
#include "support/tensor_asserts.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>

using namespace batchcam;
namespace fs = std::filesystem;

namespace {
fs::path fresh_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("batchcam-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A checkpoint of an untrained SimpleCNN at `epoch`, without training state.
void save_untrained_checkpoint(const std::string& path, int64_t epoch) {
  models::ModelSpec spec;
  spec.name = "simple-cnn";
  auto model = models::make_model(spec);
  train::save_checkpoint(path, *model, spec, train::TrainConfig{}, epoch, data::Normalization{{0.1}, {0.3}},
                         torch::rand({10, 28, 28}));
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

TEST(Trainer, EveryCamMethodTrainsTheConvolutionsAndClosedFormCamHasGradCamsGradient) {
  FixedBatch f;
  auto model = fresh_simple_cnn();
  const auto parameters = model->parameters();
  const auto conv = model->named_parameters()["block2.1.weight"];
  const auto gradients = [&](const train::CamLossConfig& c) {
    return torch::autograd::grad({train::compute_losses(*model, f.batch, f.protos, 10, c).total}, parameters);
  };
  const auto g_ce = gradients({});
  std::map<cam::CamMethod, std::vector<torch::Tensor>> by_method;
  for (const auto& name : cam::cam_method_names()) {
    train::CamLossConfig c;
    c.lambda_proto = 1.0;
    c.distance_proto = losses::Distance::l1;
    c.method = cam::parse_cam_method(name);
    const auto g = gradients(c);
    size_t i = 0;
    while (i < parameters.size() && !parameters[i].is_same(conv)) ++i;
    EXPECT_GT(test_support::max_abs_diff(g[i], g_ce[i]), 1e-3 * g_ce[i].abs().max().item<double>()) << name;
    by_method[c.method] = g;
  }
  // On SimpleCNN's head (pooling, linear) the closed form is Grad-CAM without the gradient
  // call: the same maps, so the same gradient (float32, untrained maps of small range).
  double worst = 0;
  for (size_t i = 0; i < parameters.size(); ++i) {
    const auto& a = by_method[cam::CamMethod::cam][i];
    const auto& b = by_method[cam::CamMethod::grad_cam][i];
    worst = std::max(worst, test_support::max_abs_diff(a, b) / (b.abs().max().item<double>() + 1e-12));
  }
  EXPECT_LT(worst, 1e-3);

  train::TrainConfig config;
  config.model = "convnext-v2-atto";
  config.cam_method = cam::CamMethod::cam;
  config.train_size = 32;
  config.test_size = 8;
  const auto splits = train::load_dataset(config);
  try {
    train::Trainer trainer(config, splits, torch::kCPU);
    FAIL() << "closed-form CAM accepted for ConvNeXt's head";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("config: 'cam_method' cam needs a head of global average pooling"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(train::config_from_json(train::to_json(config)).cam_method, cam::CamMethod::cam);
}

TEST(Trainer, TheDefaultCamMethodIsLayerCamAndConfigsWrittenBeforeTheChoiceReadAsGradCam) {
  EXPECT_EQ(train::TrainConfig{}.cam_method, cam::CamMethod::layer_cam) << "docs/results-cam-methods.md";
  EXPECT_EQ(train::config_from_json({{"epochs", 2}}).cam_method, cam::CamMethod::layer_cam) << "a hand-written file";
  // A config.json batchcam wrote names what made it; without cam_method it predates the choice.
  const nlohmann::json provenance = {{"batchcam", "0.2.0"}};
  EXPECT_EQ(train::config_from_json({{"epochs", 2}, {"provenance", provenance}}).cam_method,
            cam::CamMethod::grad_cam);
  EXPECT_EQ(train::config_from_json({{"cam_method", "hirescam"}, {"provenance", provenance}}).cam_method,
            cam::CamMethod::hires_cam);
  for (const auto& preset : fs::directory_iterator(fs::path(BATCHCAM_SOURCE_DIR) / "configs")) {
    if (preset.path().extension() != ".json") continue;
    const auto j = nlohmann::json::parse(test_support::read_text(preset.path().string()));
    EXPECT_EQ(train::config_from_json(j).cam_method, cam::CamMethod::grad_cam) << preset.path() << ": the paper's";
  }
}

TEST(Trainer, ConfigJsonRoundTripAndErrorsNameTheKey) {
  train::TrainConfig c;
  c.epochs = 7;
  c.lambda_proto = 0.5;
  c.distance_batch = losses::Distance::l1;
  c.optimizer = train::OptimizerKind::adamw;
  c.precision = core::Precision::bf16;
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
  // Enum fields are written and read by name, from the one list per option.
  EXPECT_EQ(train::to_json(c).at("optimizer"), "adamw");
  EXPECT_EQ(train::to_json(c).at("precision"), "bf16");
  EXPECT_EQ(train::config_from_json({{"prototype", "cam-ema"}}).prototype, train::PrototypeKind::cam_ema);
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"distance_proto", "l7"}, {"schedule", "linear"}, {"augment", "rotate"}, {"precision", "fp8"}}) {
    try {
      train::config_from_json({{key, value}});
      FAIL() << key;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("'" + key + "'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(value), std::string::npos) << e.what();
    }
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
  c.batch_size = 32;
  c.out_dir = (dir / "file").string();  // a file, not a directory
  EXPECT_THROW(train::train(c), std::runtime_error);
  // A start that fails on the model or the data leaves no run directory behind.
  c.out_dir = dir.string();
  c.run_name = "bad";
  c.target_layer = "no-such-layer";
  EXPECT_ANY_THROW(train::train(c));
  EXPECT_FALSE(fs::exists(dir / "bad"));
  fs::remove_all(dir);
}

namespace {
train::TrainConfig small_run_config(const fs::path& dir, const std::string& name) {
  train::TrainConfig c;
  c.train_size = 384;
  c.test_size = 64;
  c.epochs = 3;
  c.batch_size = 64;
  c.threads = 1;
  c.prototype = train::PrototypeKind::cam_ema;  // prototypes change during training, so they must be restored too
  c.optimizer = train::OptimizerKind::adamw;
  c.schedule = train::Schedule::cosine;
  c.warmup_epochs = 1;
  c.grad_clip = 5.0;
  c.label_smoothing = 0.1;
  c.device = "cpu";  // bit-exact resume is a CPU property
  c.out_dir = dir.string();
  c.run_name = name;
  return c;
}

void expect_same_weights(const std::string& a, const std::string& b) {
  const auto x = train::load_checkpoint(a);
  const auto y = train::load_checkpoint(b);
  const auto px = x.model->named_parameters();
  const auto py = y.model->named_parameters();
  ASSERT_EQ(px.size(), py.size());
  for (size_t i = 0; i < px.size(); ++i) {
    EXPECT_TRUE(torch::equal(px[i].value(), py[i].value())) << px[i].key();
  }
  EXPECT_TRUE(torch::equal(x.prototypes, y.prototypes));
}
}  // namespace

TEST(Schedule, WarmUpThenStepCosineAndOneCycle) {
  train::TrainConfig c;
  c.lr = 0.1;
  c.epochs = 10;
  c.warmup_epochs = 2;
  const int64_t steps = 5;  // per epoch
  EXPECT_DOUBLE_EQ(train::learning_rate(c, 0, steps), 0.1 / 10);  // (0 + 1) / 10 warm-up steps
  EXPECT_DOUBLE_EQ(train::learning_rate(c, 9, steps), 0.1);
  EXPECT_DOUBLE_EQ(train::learning_rate(c, 49, steps), 0.1);  // constant after the warm-up
  c.schedule = train::Schedule::step;
  c.step_size = 3;
  c.gamma = 0.5;
  EXPECT_DOUBLE_EQ(train::learning_rate(c, 14, steps), 0.1);        // epoch 2 (0-based)
  EXPECT_DOUBLE_EQ(train::learning_rate(c, 15, steps), 0.05);       // epoch 3
  EXPECT_DOUBLE_EQ(train::learning_rate(c, 49, steps), 0.1 / 8);    // epoch 9
  c.schedule = train::Schedule::cosine;
  EXPECT_DOUBLE_EQ(train::learning_rate(c, 10, steps), 0.1);         // start of the cosine
  EXPECT_NEAR(train::learning_rate(c, 30, steps), 0.05, 1e-12);      // half way through 40 steps
  EXPECT_NEAR(train::learning_rate(c, 49, steps), 0.1 * 0.5 * (1 + std::cos(M_PI * 39 / 40)), 1e-12);
  c.schedule = train::Schedule::onecycle;
  EXPECT_NEAR(train::learning_rate(c, 0, steps), 0.1 / 25, 1e-12);  // rises over the 10 warm-up steps
  EXPECT_NEAR(train::learning_rate(c, 10, steps), 0.1, 1e-12);
  EXPECT_NEAR(train::learning_rate(c, 50, steps), 0.1 / 25 / 1e4, 1e-15);  // the end of the anneal
  EXPECT_LT(train::learning_rate(c, 49, steps), train::learning_rate(c, 40, steps));
  c.warmup_epochs = 0;  // without a warm-up the rise takes 30% of the run
  EXPECT_NEAR(train::learning_rate(c, 15, steps), 0.1, 1e-12);
}

TEST(Schedule, OptimisationOptionsAreValidatedByName) {
  const auto message = [](train::TrainConfig c) {
    try {
      c.validate();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  train::TrainConfig c;
  c.nesterov = true;  // adam has no Nesterov momentum
  EXPECT_NE(message(c).find("'nesterov'"), std::string::npos);
  c.optimizer = train::OptimizerKind::sgd;
  EXPECT_EQ(message(c), "");
  c = {};
  c.warmup_epochs = c.epochs;
  EXPECT_NE(message(c).find("'warmup_epochs'"), std::string::npos);
  c = {};
  c.label_smoothing = 1.0;
  EXPECT_NE(message(c).find("'label_smoothing'"), std::string::npos);
  c = {};
  c.log_every = 0;
  EXPECT_NE(message(c).find("'log_every'"), std::string::npos);
  c = {};
  c.device = "gpu";
  EXPECT_NE(message(c).find("'device'"), std::string::npos);
}

TEST(Trainer, InterruptedAndResumedRunEqualsAnUninterruptedOne) {
  const auto dir = fresh_dir("resume");
  const auto full = train::train(small_run_config(dir, "full"));
  ASSERT_FALSE(full.interrupted);

  // Stop in the middle of epoch 2, as SIGINT does through the CLI.
  train::TrainCallbacks stop_mid_epoch;
  int64_t seen_epoch = 0, seen_step = 0;
  stop_mid_epoch.on_step = [&](const train::StepInfo& s) { seen_epoch = s.epoch, seen_step = s.step; };
  stop_mid_epoch.should_stop = [&] { return seen_epoch == 2 && seen_step == 3; };
  const auto part = train::train(small_run_config(dir, "part"), stop_mid_epoch);
  ASSERT_TRUE(part.interrupted);
  EXPECT_EQ(part.stopped_epoch, 2);
  EXPECT_EQ(part.stopped_step, 3);
  const auto mid = train::load_checkpoint(part.checkpoint);
  EXPECT_EQ(mid.epoch, 1);
  EXPECT_EQ(mid.step, 3);
  {
    // Continuing sets the default generators to the saved state (what stochastic depth draws from).
    const auto splits = train::load_dataset(mid.config);
    torch::manual_seed(999);
    train::Trainer restored(mid, part.checkpoint, splits, torch::kCPU);
    EXPECT_TRUE(torch::equal(core::generator_state().cpu, mid.rng.cpu));
    EXPECT_EQ(restored.epoch(), 2);
    EXPECT_EQ(restored.step_in_epoch(), 3);
  }

  const auto resumed = train::resume(part.run_dir);
  EXPECT_FALSE(resumed.interrupted);
  ASSERT_EQ(resumed.history.size(), 3u);
  expect_same_weights(full.checkpoint, resumed.checkpoint);
  // The epoch metrics agree too (the interrupted epoch's running sums were saved).
  for (size_t e = 0; e < 3; ++e) {
    EXPECT_DOUBLE_EQ(full.history[e].train_loss, resumed.history[e].train_loss) << e;
    EXPECT_DOUBLE_EQ(full.history[e].test.accuracy, resumed.history[e].test.accuracy) << e;
  }
  std::ifstream metrics(dir / "part" / "metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_EQ(lines, 3);
  EXPECT_TRUE(fs::exists(dir / "part" / "best.pt"));
  // A finished run cannot be resumed.
  EXPECT_THROW(train::resume(part.run_dir), std::runtime_error);
  fs::remove_all(dir);
}

TEST(Trainer, ForcedNanStopsTheRunAndKeepsTheLastGoodCheckpoint) {
  const auto dir = fresh_dir("nan");
  train::TrainCallbacks poison;
  // After step 2 of epoch 2 a weight becomes NaN, as after a diverging update.
  poison.on_step = [](const train::StepInfo& s) {
    if (s.epoch != 2 || s.step != 2) return;
    torch::NoGradGuard no_grad;
    s.model->parameters().front().fill_(std::numeric_limits<float>::quiet_NaN());
  };
  try {
    train::train(small_run_config(dir, "n"), poison);
    FAIL() << "a NaN loss must stop the run";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite cross-entropy loss"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("epoch 2, step 3"), std::string::npos) << e.what();
  }
  const auto ck = train::load_checkpoint((dir / "n" / "last.pt").string());
  EXPECT_EQ(ck.epoch, 1);
  EXPECT_EQ(ck.step, 0);
  for (const auto& p : ck.model->parameters()) EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
  fs::remove_all(dir);
}

TEST(Presets, EveryConfigInConfigsIsValidAndNamesItsRun) {
  int presets = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(BATCHCAM_SOURCE_DIR) / "configs")) {
    if (entry.path().extension() != ".json") continue;
    ++presets;
    std::ifstream in(entry.path());
    const auto c = train::config_from_json(nlohmann::json::parse(in));
    EXPECT_NO_THROW(c.validate()) << entry.path();
    EXPECT_EQ(c.run_name, entry.path().stem().string());
    const bool batchcam = entry.path().stem().string().find("-batchcam") != std::string::npos;
    EXPECT_EQ(c.lambda_proto > 0 || c.lambda_batch > 0, batchcam) << entry.path();
  }
  EXPECT_EQ(presets, 12) << "2 datasets x 3 models x {CE only, Batch-CAM}";
}

namespace {
train::TrainConfig engine_config() {
  train::TrainConfig c;
  c.train_size = 256;
  c.test_size = 32;
  c.batch_size = 32;
  c.epochs = 2;
  c.device = "cpu";
  return c;
}
}  // namespace

TEST(Engine, TrainerKeepsModelAndPrototypesOnItsDeviceAndCanBeDrivenStepByStep) {
  const auto c = engine_config();
  const auto splits = train::load_dataset(c);
  // Driven by hand: its own batches, one step at a time.
  train::Trainer by_hand(c, splits, torch::kCPU);
  for (const auto& p : by_hand.model().parameters()) EXPECT_TRUE(p.device().is_cpu());
  EXPECT_TRUE(by_hand.prototypes().device().is_cpu());
  ASSERT_EQ(by_hand.steps_per_epoch(), 8);
  data::BatchIterator batches(splits.train, by_hand.normalization(), c.batch_size, true, c.seed, true);
  batches.set_epoch(1);
  for (int64_t i = 0; i < batches.size(); ++i) by_hand.step(batches.get(i));
  const auto m = by_hand.end_epoch();
  EXPECT_EQ(m.epoch, 1);
  EXPECT_EQ(by_hand.epoch(), 2);
  // The epoch loop: the same steps on the same batches give the same weights.
  train::Trainer loop(c, splits, torch::kCPU);
  ASSERT_TRUE(loop.run_epoch());
  const auto m2 = loop.end_epoch();
  const auto a = by_hand.model().parameters(), b = loop.model().parameters();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << i;
  EXPECT_DOUBLE_EQ(m.train_loss, m2.train_loss);
  EXPECT_DOUBLE_EQ(m.test.accuracy, m2.test.accuracy);
}

TEST(Engine, RunningLossIsReadFromTheDeviceOnlyAtTheLoggingInterval) {
  auto c = engine_config();
  c.log_every = 3;
  const auto splits = train::load_dataset(c);
  train::Trainer t(c, splits, torch::kCPU);
  std::vector<int64_t> fresh;
  double last_loss = 0;
  ASSERT_TRUE(t.run_epoch([&](const train::StepInfo& s) {
    if (s.fresh) fresh.push_back(s.step);
    if (!s.fresh) {
      EXPECT_EQ(s.loss, last_loss) << "between reads the last read values stay";
    }
    last_loss = s.loss;
  }));
  // The epoch's first step, every 3 steps and the epoch's end.
  EXPECT_EQ(fresh, (std::vector<int64_t>{1, 3, 6, 8}));
}

TEST(Engine, TrainingDoesNotChangeTheCallersRandomStateOrThreadCount) {
  torch::set_num_threads(1);
  torch::manual_seed(42);
  const auto expected = torch::rand({4});
  torch::manual_seed(42);
  auto c = engine_config();
  c.epochs = 1;
  c.threads = 2;  // recorded for the CLI; the library does not apply it
  const auto splits = train::load_dataset(c);
  train::Trainer t(c, splits, torch::kCPU);
  EXPECT_EQ(torch::get_num_threads(), 1);
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected)) << "model initialisation used its own seed";
}

TEST(Precision, Bf16OnCpuKeepsMapsCloseToFp32AndLowersTheLoss) {
  FixedBatch f;
  auto model = fresh_simple_cnn();
  train::CamLossConfig fp32;
  fp32.lambda_proto = 1.0;
  fp32.distance_proto = losses::Distance::l1;
  auto bf16 = fp32;
  bf16.precision = core::Precision::bf16;
  const auto a = train::compute_losses(*model, f.batch, f.protos, 10, fp32);
  const auto b = train::compute_losses(*model, f.batch, f.protos, 10, bf16);
  EXPECT_EQ(b.logits.scalar_type(), torch::kBFloat16) << "the forward pass ran under autocast";
  EXPECT_EQ(b.maps.scalar_type(), torch::kFloat32) << "the maps are computed in fp32";
  EXPECT_EQ(b.total.scalar_type(), torch::kFloat32);
  // bf16 keeps 8 bits of the features' mantissa: per pixel the maps differ by 2.4e-3 on
  // average (3.3e-2 at most, measured on this batch), where a pixel's range is [0, 1].
  EXPECT_LE((b.maps - a.maps).abs().mean().item<double>(), 2e-2);
  EXPECT_LE(test_support::max_abs_diff(b.maps, a.maps), 6e-2);
  EXPECT_NEAR(b.proto.item<double>(), a.proto.item<double>(), 2e-2);
  const auto [before, after] = loss_before_after(bf16, 5);
  EXPECT_LT(after, before);
}

TEST(Precision, Bf16RunTrainsAndFp16OnCpuIsRefusedBeforeTraining) {
  const auto dir = fresh_dir("bf16");
  auto c = engine_config();
  c.epochs = 3;
  c.precision = core::Precision::bf16;
  c.out_dir = dir.string();
  c.run_name = "b";
  const auto r = train::train(c);
  ASSERT_EQ(r.history.size(), 3u);
  EXPECT_LT(r.history.back().train_loss, r.history.front().train_loss);
  EXPECT_EQ(train::load_checkpoint(r.checkpoint).config.precision, core::Precision::bf16);
  c.precision = core::Precision::fp16;
  c.device = "cpu";
  c.run_name = "h";
  EXPECT_THROW(train::train(c), std::invalid_argument);
  EXPECT_FALSE(fs::exists(dir / "h")) << "refused before the run directory was made";
  fs::remove_all(dir);
}

TEST(LossScaler, SkipsNonFiniteStepsBacksOffAndGrows) {
  train::LossScalerOptions o;
  o.init_scale = 1024.0;
  o.growth_interval = 3;
  train::LossScaler scaler(torch::kCPU, o);
  auto w = torch::ones({3}, torch::requires_grad());
  scaler.scale((w * 2.0).sum()).backward();
  EXPECT_TRUE(torch::allclose(w.grad(), torch::full({3}, 2048.0)));
  auto found = scaler.unscale({w});
  EXPECT_EQ(found.item<float>(), 0.0f);
  EXPECT_TRUE(torch::allclose(w.grad(), torch::full({3}, 2.0))) << "gradients divided by the scale";
  scaler.update(found);
  EXPECT_EQ(scaler.current_scale(), 1024.0);
  // An Inf in a gradient: found, and the scale backs off.
  {
    torch::NoGradGuard no_grad;
    w.grad()[1] = std::numeric_limits<float>::infinity();
  }
  found = scaler.unscale({w});
  EXPECT_EQ(found.item<float>(), 1.0f);
  scaler.update(found);
  EXPECT_EQ(scaler.current_scale(), 512.0);
  // growth_interval finite steps in a row double it; a NaN resets the count.
  const auto finite = torch::zeros({1});
  scaler.update(finite);
  scaler.update(finite);
  EXPECT_EQ(scaler.current_scale(), 512.0);
  scaler.update(finite);
  EXPECT_EQ(scaler.current_scale(), 1024.0);
  scaler.update(finite);
  scaler.update(torch::ones({1}));
  scaler.update(finite);
  scaler.update(finite);
  EXPECT_EQ(scaler.current_scale(), 512.0) << "the count restarted after the skipped step";
  // Its state travels with a checkpoint.
  train::LossScaler restored(torch::kCPU, o);
  restored.load_state(scaler.state());
  EXPECT_EQ(restored.current_scale(), 512.0);
  restored.update(finite);
  EXPECT_EQ(restored.current_scale(), 1024.0) << "the growth count was restored too";
}

TEST(Checkpoint, HoldsCpuTensorsAndLoadsOntoTheRequestedDevice) {
  const auto dir = fresh_dir("ckdev");
  auto c = engine_config();
  c.epochs = 1;
  c.out_dir = dir.string();
  c.run_name = "d";
  const auto r = train::train(c);
  const auto ck = train::load_checkpoint(r.checkpoint, torch::kCPU);
  // The file is a text header with the SHA-256 of the archive that follows it; inside,
  // tensors keep the device they were saved from, which must be the CPU.
  const auto file = test_support::read_text(r.checkpoint);
  ASSERT_EQ(file.rfind("batchcam-checkpoint\nformat 3\nsha256 ", 0), 0u) << file.substr(0, 40);
  const auto payload = file.substr(file.find("\n\n") + 2);
  torch::serialize::InputArchive archive;
  archive.load_from(payload.data(), payload.size());
  for (const auto& p : ck.model->named_parameters()) {
    torch::Tensor saved;
    archive.read("model." + p.key(), saved);
    EXPECT_TRUE(saved.device().is_cpu()) << p.key();
  }
  for (const auto& p : ck.model->parameters()) EXPECT_TRUE(p.device().is_cpu());
  EXPECT_TRUE(ck.rng.cpu.defined());
  EXPECT_EQ(ck.rng.cuda.defined(), torch::cuda::is_available());
  // Between the CPU and a GPU: tests/cuda (Cuda.CheckpointMovesBetweenDevices).
  fs::remove_all(dir);
}

TEST(Checkpoint, FilesOfBatchcam01StillLoad) {
  const auto dir = fresh_dir("ckold");
  const auto path = (dir / "new.pt").string();
  save_untrained_checkpoint(path, 3);
  const auto file = test_support::read_text(path);
  const auto payload = file.substr(file.find("\n\n") + 2);
  // Format 1: the bare archive. Format 2: an archive holding it and its SHA-256.
  const auto v1 = (dir / "v1.pt").string(), v2 = (dir / "v2.pt").string();
  std::ofstream(v1, std::ios::binary) << payload;
  torch::serialize::OutputArchive sealed;
  sealed.write("format", c10::IValue(std::string("batchcam-checkpoint-v2")));
  sealed.write("sha256", c10::IValue(io::sha256_bytes(payload.data(), payload.size())));
  sealed.write("payload", torch::from_blob(const_cast<char*>(payload.data()), {static_cast<int64_t>(payload.size())},
                                           torch::kUInt8));
  sealed.save_to(v2);
  const auto reference = train::load_checkpoint(path);
  for (const auto& old : {v1, v2}) {
    const auto ck = train::load_checkpoint(old);
    EXPECT_EQ(ck.epoch, 3) << old;
    const auto a = ck.model->parameters(), b = reference.model->parameters();
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << old;
  }
  fs::remove_all(dir);
}

// Issue 22: faults an outside reliability test found.

TEST(Reliability, ConfigFilesAreBoundedLikeTheCommandLine) {
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"epochs", int64_t{1} << 62}, {"threads", 5000}, {"weight_decay", 1e308}, {"batch_size", 10000000},
           {"train_size", int64_t{1} << 40}, {"cam_warmup_epochs", int64_t{1} << 40},
           // Values that used to be ignored or to escape: now refused by name.
           {"run_name", "../../x"}, {"cam_warmup_epochs", 4}}) {
    try {
      train::config_from_json({{key, value}}).validate();
      FAIL() << key << " = " << value.dump() << " passed validation";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("'" + key + "'"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(train::config_from_json({{"dataset", "mnist"}, {"spurious", true}}).validate(), std::invalid_argument);
  EXPECT_NO_THROW(train::config_from_json({{"cam_warmup_epochs", 4}, {"lambda_proto", 0.0}}).validate())
      << "a warm-up longer than the run is harmless when no CAM loss is on";
}

TEST(Reliability, AnEpochWhoseLastUpdateDivergesLeavesTheLastGoodCheckpoint) {
  const auto dir = fresh_dir("lastnan");
  train::TrainCallbacks poison;
  // After the last step of epoch 2 a weight is NaN, as after a diverging last update: its
  // loss was still finite.
  poison.on_step = [](const train::StepInfo& s) {
    if (s.epoch != 2 || s.step != s.steps) return;
    torch::NoGradGuard no_grad;
    s.model->parameters().front().fill_(std::numeric_limits<float>::quiet_NaN());
  };
  try {
    train::train(small_run_config(dir, "n"), poison);
    FAIL() << "a diverged update must stop the run";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite weights at the end of epoch 2"), std::string::npos) << e.what();
  }
  const auto ck = train::load_checkpoint((dir / "n" / "last.pt").string());
  EXPECT_EQ(ck.epoch, 1);
  for (const auto& p : ck.model->parameters()) EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
  // A metrics line with a NaN (written by JSON as null) still loads.
  auto line = train::to_json(train::EpochMetrics{});
  line["test_loss"] = nullptr;
  EXPECT_TRUE(std::isnan(train::epoch_metrics_from_json(line).test.loss));
  fs::remove_all(dir);
}

TEST(Reliability, AFreshRunRefusesADirectoryHoldingACheckpoint) {
  const auto dir = fresh_dir("occupied");
  fs::create_directories(dir / "r");
  std::ofstream((dir / "r" / "last.pt").string()) << "a run cut in its first epoch";
  auto c = engine_config();
  c.out_dir = dir.string();
  c.run_name = "r";
  try {
    train::train(c);
    FAIL() << "the interrupted run must not be overwritten";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
  }
  EXPECT_EQ(test_support::read_text((dir / "r" / "last.pt").string()), "a run cut in its first epoch");
  fs::remove_all(dir);
}

TEST(Reliability, ResumeRepairsAStaleBestCheckpointAndRemovesStaleTemporaryFiles) {
  const auto dir = fresh_dir("stalebest");
  const auto run = dir / "b";
  int64_t epochs_done = 0;
  train::TrainCallbacks two_epochs;
  two_epochs.on_epoch = [&](const train::EpochMetrics& m) {
    epochs_done = m.epoch;
    if (m.epoch == 1) fs::copy_file(run / "best.pt", dir / "best-epoch-1.pt");
  };
  two_epochs.should_stop = [&] { return epochs_done == 2; };
  auto c = engine_config();
  c.train_size = 512;
  c.epochs = 3;
  c.out_dir = dir.string();
  c.run_name = "b";
  const auto part = train::train(c, two_epochs);
  ASSERT_TRUE(part.interrupted);
  ASSERT_GT(part.history[1].test.accuracy, part.history[0].test.accuracy) << "the test needs epoch 2 to be the best";
  // As after a kill between the last.pt and best.pt commits of epoch 2, with writers'
  // temporary files left behind: one of a process that is gone, one of this live process.
  fs::copy_file(dir / "best-epoch-1.pt", run / "best.pt", fs::copy_options::overwrite_existing);
  std::ifstream pid_max_file("/proc/sys/kernel/pid_max");
  int64_t pid_max = 4194304;
  pid_max_file >> pid_max;
  const auto stale = run / ("last.pt.tmp." + std::to_string(pid_max + 1));
  const auto live = run / ("notes.txt.tmp." + std::to_string(::getpid()));
  std::ofstream(stale.string()) << "partial";
  std::ofstream(live.string()) << "being written";
  train::TrainCallbacks stop_at_once;
  stop_at_once.should_stop = [] { return true; };
  const auto resumed = train::resume(run.string(), stop_at_once);
  EXPECT_TRUE(resumed.interrupted);
  EXPECT_EQ(train::load_checkpoint((run / "best.pt").string()).epoch, 2);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live)) << "a running writer's file is left alone";
  fs::remove_all(dir);
}

TEST(Reliability, ResumeWritesTheFinalOutputsOfARunStoppedBeforeThem) {
  const auto dir = fresh_dir("window");
  auto c = engine_config();
  c.out_dir = dir.string();
  c.run_name = "w";
  const auto full = train::train(c);
  // As after a kill once the last checkpoint was written, before the evaluation and report.
  fs::remove(dir / "w" / "report.html");
  fs::remove(dir / "w" / "eval.json");
  const auto finished = train::resume((dir / "w").string());
  EXPECT_FALSE(finished.interrupted);
  EXPECT_TRUE(fs::exists(dir / "w" / "report.html"));
  EXPECT_TRUE(fs::exists(dir / "w" / "eval.json"));
  ASSERT_EQ(finished.history.size(), full.history.size());
  EXPECT_DOUBLE_EQ(finished.history.back().test.accuracy, full.history.back().test.accuracy);
  try {
    train::resume((dir / "w").string());
    FAIL() << "a complete run has nothing to resume";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("already complete"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--resume " + (dir / "w").string() + " --epochs N (N > 2)"),
              std::string::npos)
        << "names the way out: " << e.what();
  }
  fs::remove_all(dir);
}

TEST(Reliability, AtomicWritesFollowLinksAndLeaveSpecialFilesInPlace) {
  const auto dir = fresh_dir("links");
  std::ofstream((dir / "target.json").string()) << "old";
  fs::create_symlink("target.json", dir / "link.json");
  io::write_file_atomic((dir / "link.json").string(), "new");
  EXPECT_TRUE(fs::is_symlink(dir / "link.json")) << "the link stays a link";
  EXPECT_EQ(test_support::read_text((dir / "target.json").string()), "new");
  // A dangling link: the file it names is created.
  fs::create_symlink("later.json", dir / "dangling.json");
  io::write_file_atomic((dir / "dangling.json").string(), "made");
  EXPECT_TRUE(fs::is_symlink(dir / "dangling.json"));
  EXPECT_EQ(test_support::read_text((dir / "later.json").string()), "made");
  // A FIFO (like a device such as /dev/full) is written, not replaced by a regular file.
  const auto fifo = dir / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  io::write_file_atomic(fifo.string(), "through");
  EXPECT_TRUE(fs::is_fifo(fifo));
  char buffer[16] = {};
  EXPECT_EQ(::read(reader, buffer, sizeof buffer), 7);
  EXPECT_EQ(std::string(buffer), "through");
  ::close(reader);
  fs::remove_all(dir);
}

TEST(Reliability, ResumeUsesTheCheckpointsConfigurationNotAnEditedConfigJson) {
  const auto dir = fresh_dir("edited");
  auto c = engine_config();
  c.out_dir = dir.string();
  c.run_name = "e";
  bool epoch_done = false;
  train::TrainCallbacks one_epoch;
  one_epoch.on_epoch = [&](const train::EpochMetrics&) { epoch_done = true; };
  one_epoch.should_stop = [&] { return epoch_done; };
  ASSERT_TRUE(train::train(c, one_epoch).interrupted);
  std::ofstream((dir / "e" / "config.json").string()) << "{not json";
  const auto r = train::resume((dir / "e").string());
  EXPECT_FALSE(r.interrupted);
  const auto html = test_support::read_text((dir / "e" / "report.html").string());
  EXPECT_NE(html.find("&quot;batch_size&quot;: 32"), std::string::npos) << "the report shows the checkpoint's configuration";
  fs::remove_all(dir);
}

TEST(Reliability, ABitFlipInACheckpointIsRefusedNeverLoadedAsOtherWeights) {
  const auto dir = fresh_dir("flips");
  const auto path = (dir / "c.pt").string();
  save_untrained_checkpoint(path, 1);
  ASSERT_NO_THROW((void)train::load_checkpoint(path));
  const auto bytes = test_support::read_text(path);
  std::mt19937_64 rng(7);
  int refused = 0;
  for (int trial = 0; trial < 40; ++trial) {
    auto damaged = bytes;
    const size_t at = rng() % damaged.size();
    damaged[at] = static_cast<char>(damaged[at] ^ (1 << (rng() % 8)));
    const auto copy = (dir / ("flip" + std::to_string(trial) + ".pt")).string();
    std::ofstream(copy, std::ios::binary) << damaged;
    try {
      (void)train::load_checkpoint(copy);
      ADD_FAILURE() << "a flip at byte " << at << " loaded";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(copy), std::string::npos) << e.what();
      ++refused;
    }
  }
  EXPECT_EQ(refused, 40) << "every byte lies in the header or under the checksum";
  // A truncated file says so.
  const auto cut = (dir / "cut.pt").string();
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  try {
    (void)train::load_checkpoint(cut);
    ADD_FAILURE() << "a truncated checkpoint loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated?"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Reliability, TrainAndTestImagesOfDifferentSizesAreRefusedBeforeTraining) {
  auto c = engine_config();
  auto splits = train::load_dataset(c);
  splits.test.images = torch::zeros({8, 1, 32, 32}, torch::kUInt8);
  splits.test.labels = torch::zeros({8}, torch::kInt64);
  try {
    train::Trainer t(c, splits, torch::kCPU);
    FAIL() << "mismatched splits must be refused";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("test images are 1x32x32"), std::string::npos) << e.what();
  }
}

TEST(SpuriousFeatures, BothInputGradientTermsAreOffByDefault) {
  const train::TrainConfig c;
  EXPECT_EQ(c.lambda_rrr, 0.0);
  EXPECT_EQ(c.lambda_proto_rrr, 0.0);
  const train::CamLossConfig objective;
  EXPECT_FALSE(objective.input_gradients());
  FixedBatch f;
  auto model = fresh_simple_cnn();
  const auto out = train::compute_losses(*model, f.batch, f.protos, 10, objective);
  EXPECT_EQ(out.rrr.item<double>(), 0.0);
  EXPECT_EQ(out.proto_rrr.item<double>(), 0.0);
  EXPECT_FALSE(f.batch.x.requires_grad()) << "no input gradient is taken";
  EXPECT_TRUE(torch::equal(out.total, out.ce)) << "the default objective is the cross-entropy alone";
  // Configurations written before the terms existed read as off.
  auto j = train::to_json(c);
  j.erase("lambda_rrr");
  j.erase("lambda_proto_rrr");
  const auto old = train::config_from_json(j);
  EXPECT_EQ(old.lambda_rrr, 0.0);
  EXPECT_EQ(old.lambda_proto_rrr, 0.0);
}

TEST(SpuriousFeatures, PrototypeRrrNeedsNoMaskAndRrrRefusesABatchWithout) {
  FixedBatch f;  // shapes without a spurious cue: no annotation masks anywhere
  ASSERT_FALSE(f.dataset.decoy_masks.defined());
  ASSERT_FALSE(f.batch.masks.defined());
  auto model = fresh_simple_cnn();
  train::CamLossConfig c;
  c.lambda_proto_rrr = 2.0;
  const auto out = train::compute_losses(*model, f.batch, f.protos, 10, c);
  EXPECT_GT(out.proto_rrr.item<double>(), 0.0);
  EXPECT_NEAR(out.total.item<double>(), out.ce.item<double>() + 2.0 * out.proto_rrr.item<double>(), 1e-5);
  // It trains the convolutions (through the double backward), differently from CE alone.
  const auto conv = model->named_parameters()["block1.0.weight"];
  const auto g = torch::autograd::grad({out.total}, {conv})[0];
  const auto g_ce = torch::autograd::grad({train::compute_losses(*model, f.batch, f.protos, 10, {}).total}, {conv})[0];
  EXPECT_GT(test_support::max_abs_diff(g, g_ce), 1e-3 * g_ce.abs().max().item<double>());
  train::CamLossConfig rrr;
  rrr.lambda_rrr = 1.0;
  try {
    train::compute_losses(*model, f.batch, f.protos, 10, rrr);
    ADD_FAILURE() << "RRR without masks was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("annotation masks"), std::string::npos);
  }
}

TEST(SpuriousFeatures, MasksAreShiftedWithTheirImagesAndSlicedWithTheRanks) {
  // Images that are their own masks: after the shift, the mask must still be where the image is bright.
  data::Dataset d = data::generate_shapes(40, 28, 3, data::SpuriousCue::class_coded, 0.0);
  ASSERT_TRUE(d.decoy_masks.defined());
  d.images = d.decoy_masks.unsqueeze(1).to(torch::kUInt8) * 255;
  const data::Normalization norm{{0.5}, {0.5}};
  data::BatchIterator batches(d, norm, 16, /*shuffle=*/true, 9, /*drop_last=*/true);
  batches.set_augmentation({3, true, false});
  batches.set_masks(true);
  batches.set_epoch(2);
  for (int64_t i = 0; i < batches.size(); ++i) {
    const auto b = batches.get(i);
    ASSERT_TRUE(b.masks.defined());
    EXPECT_EQ(b.masks.scalar_type(), torch::kBool);
    EXPECT_TRUE(b.masks.equal(norm.to_unit_gray(b.x) > 0.5)) << "batch " << i;
    EXPECT_FALSE(b.masks.equal(d.decoy_masks.index_select(0, b.index))) << "the shift moved them";
  }
  // Rank 1 of 2 gets the masks of its half of the batch.
  batches.set_shard(1, 2);
  const auto half = batches.get(0);
  EXPECT_EQ(half.masks.size(0), 8);
  EXPECT_TRUE(half.masks.equal(norm.to_unit_gray(half.x) > 0.5));
  data::Dataset plain = data::generate_shapes(8, 28, 3, data::SpuriousCue::none, 0.0);
  data::BatchIterator no_masks(plain, norm, 4, false, 0, false);
  EXPECT_THROW(no_masks.set_masks(true), std::invalid_argument);
}

TEST(SpuriousFeatures, RrrTrainingTakesTheGradientOutOfTheSpuriousPatch) {
  // Spurious shapes: the class-coded patch is the easy way. 30 Adam steps on one batch with
  // CE alone, and with CE + 10 x RRR on the patch masks; then the RRR term of each model.
  data::Dataset d = data::generate_shapes(64, 28, 11, data::SpuriousCue::class_coded, 0.05);
  const auto norm = data::Normalization::fit(d.images);
  data::BatchIterator batches(d, norm, 64, false, 0, false);
  batches.set_masks(true);
  const auto batch = batches.get(0);
  const auto protos = losses::image_prototypes(d.images, d.labels, 10);
  train::CamLossConfig with_rrr;
  with_rrr.lambda_rrr = 10.0;
  train::CamLossConfig measure;
  measure.lambda_rrr = 1e-12;  // computes the term without training on it
  const auto rrr_after = [&](const train::CamLossConfig& c) {
    auto model = fresh_simple_cnn();
    torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(3e-3));
    for (int i = 0; i < 30; ++i) {
      opt.zero_grad();
      train::compute_losses(*model, batch, protos, 10, c).total.backward();
      opt.step();
    }
    const auto out = train::compute_losses(*model, batch, protos, 10, measure);
    return std::make_pair(out.rrr.item<double>(), out.ce.item<double>());
  };
  const auto [rrr_ce_only, ce_ce_only] = rrr_after({});
  const auto [rrr_rrr, ce_rrr] = rrr_after(with_rrr);
  EXPECT_LT(rrr_rrr, 0.2 * rrr_ce_only) << "CE only " << rrr_ce_only << ", with RRR " << rrr_rrr;
  EXPECT_LT(ce_rrr, 1.0) << "and it still fits the batch (CE only: " << ce_ce_only << ")";
}
