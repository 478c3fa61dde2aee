// TorchScript models (--model torchscript:FILE): a module scripted in Python trains, saves,
// resumes and exports like a built-in one. Needs /usr/bin/python3 with torch (Debian's
// python3-torch); skipped otherwise.

#include "batchcam/core/runtime.h"
#include "batchcam/models/registry.h"
#include "batchcam/models/torchscript.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/trainer.h"
#include "support/process.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace batchcam;
namespace fs = std::filesystem;

namespace {
const std::string kPython = "/usr/bin/python3";

bool python_has_torch() {
  return test_support::run_shell(kPython + " -c 'import torch'").code == 0;
}

fs::path fresh_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("batchcam-ts-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Scripts tests/models/scripted_cnn.py's module into `out`.
void script(const fs::path& out, const std::string& args = "") {
  const auto r = test_support::run_shell(kPython + " " + BATCHCAM_SOURCE_DIR + "/tests/models/scripted_cnn.py " +
                                         out.string() + " " + args);
  ASSERT_EQ(r.code, 0) << r.out;
}

train::TrainConfig small_run(const fs::path& dir) {
  train::TrainConfig c;
  c.dataset = "shapes";
  c.train_size = 1920;
  c.test_size = 500;
  c.batch_size = 32;  // 60 steps
  c.epochs = 1;
  c.spurious = true;  // a harder task than plain shapes, so that accuracy is below 100%
  c.seed = 3;
  c.device = "cpu";
  c.log_every = 1;
  c.out_dir = dir.string();
  return c;
}

// Trains in memory; the loss after each step (the running mean of the epoch) and the last
// epoch's test accuracy.
std::pair<std::vector<double>, double> train_steps(const train::TrainConfig& c, const data::DatasetSplits& splits) {
  train::Trainer trainer(c, splits, torch::kCPU);
  std::vector<double> losses;
  double accuracy = 0;
  while (!trainer.finished()) {
    trainer.run_epoch([&](const train::StepInfo& s) { losses.push_back(s.loss); }, nullptr);
    accuracy = trainer.end_epoch().test.accuracy;
  }
  return {losses, accuracy};
}

// A fixed input, the same as the Python side's.
torch::Tensor probe() { return torch::arange(2 * 28 * 28, torch::kFloat).reshape({2, 1, 28, 28}).mul(0.01).sin(); }
}  // namespace

TEST(TorchScript, AScriptedSimpleCnnTrainsLikeTheBuiltInFromTheSameWeights) {
  if (!python_has_torch()) GTEST_SKIP() << kPython << " has no torch (Debian's python3-torch)";
  const auto dir = fresh_dir("same");
  auto c = small_run(dir);
  const auto splits = train::load_dataset(c);
  // The built-in model's initial weights, as the trainer draws them from the seed.
  const auto builtin = core::with_cpu_seed(c.seed, [] { return models::make_model({"simple-cnn", 1, 10, 28, ""}); });
  train::export_state_dict(*builtin, (dir / "init.pt").string());
  script(dir / "model.pt", "--weights " + (dir / "init.pt").string());

  const auto [builtin_losses, builtin_accuracy] = train_steps(c, splits);
  c.model = "torchscript:" + (dir / "model.pt").string();
  const auto [scripted_losses, scripted_accuracy] = train_steps(c, splits);
  ASSERT_EQ(scripted_losses.size(), 60u) << "60 steps";
  ASSERT_EQ(builtin_losses.size(), scripted_losses.size());
  for (size_t i = 0; i < 5; ++i) EXPECT_NEAR(scripted_losses[i], builtin_losses[i], 1e-4) << "step " << i + 1;
  EXPECT_TRUE(std::isfinite(scripted_losses.back()));
  EXPECT_LT(scripted_losses.back(), scripted_losses.front()) << "it learns";
  EXPECT_NEAR(scripted_accuracy, builtin_accuracy, 0.02) << "test accuracy within 2 points";
  RecordProperty("builtin_accuracy", std::to_string(builtin_accuracy));
  RecordProperty("scripted_accuracy", std::to_string(scripted_accuracy));
  RecordProperty("largest_difference_of_the_first_5_losses", [&] {
    double d = 0;
    for (size_t i = 0; i < 5; ++i) d = std::max(d, std::abs(scripted_losses[i] - builtin_losses[i]));
    std::ostringstream text;
    text << d;
    return text.str();
  }());
  fs::remove_all(dir);
}

TEST(TorchScript, CheckpointsNameTheFileRefuseAChangedOneAndExportTheTrainedModule) {
  if (!python_has_torch()) GTEST_SKIP() << kPython << " has no torch (Debian's python3-torch)";
  const auto dir = fresh_dir("ckpt");
  script(dir / "model.pt");
  auto c = small_run(dir);
  c.train_size = 256;
  c.test_size = 64;
  c.epochs = 1;
  c.run_name = "r";
  c.report = false;
  c.model = "torchscript:" + (dir / "model.pt").string();
  const auto r = train::train(c);
  const auto ck = train::load_checkpoint(r.checkpoint);
  EXPECT_EQ(ck.spec.name, c.model);
  EXPECT_EQ(ck.spec.script_sha256.size(), 64u);
  EXPECT_EQ(ck.model->target_layer(), "features");

  // Exported with its trained weights, the module gives batchcam's logits in Python.
  const auto exported = (dir / "trained.pt").string();
  const auto e = test_support::run_shell(std::string(BATCHCAM_CLI) + " export " + r.run_dir + " --format torchscript " +
                                         exported);
  ASSERT_EQ(e.code, 0) << e.out;
  const auto py = test_support::run_shell(
      kPython + " -c \"import torch, json; m = torch.jit.load('" + exported +
      "').eval(); x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28).mul(0.01).sin(); "
      "print(json.dumps(m(x).tolist()))\"");
  ASSERT_EQ(py.code, 0) << py.out;
  const auto python_logits = nlohmann::json::parse(py.out);
  torch::NoGradGuard no_grad;
  ck.model->eval();
  const auto logits = ck.model->forward(probe());
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t k = 0; k < 10; ++k) {
      EXPECT_NEAR(python_logits[i][k].get<double>(), logits[i][k].item<double>(), 1e-4) << i << ", " << k;
    }
  }

  // Another module in the same file: the checkpoint's weights are refused for it.
  script(dir / "model.pt", "--classes 10 --batchnorm-head");
  try {
    (void)train::load_checkpoint(r.checkpoint);
    FAIL() << "a changed TorchScript file must be refused";
  } catch (const std::runtime_error& err) {
    EXPECT_NE(std::string(err.what()).find("has changed since"), std::string::npos) << err.what();
    EXPECT_NE(std::string(err.what()).find((dir / "model.pt").string()), std::string::npos) << err.what();
  }
  fs::remove_all(dir);
}

TEST(TorchScript, AHeadThatMixesSamplesAndABrokenContractAreRefusedBeforeTraining) {
  if (!python_has_torch()) GTEST_SKIP() << kPython << " has no torch (Debian's python3-torch)";
  const auto dir = fresh_dir("mixing");
  script(dir / "bn.pt", "--batchnorm-head");
  auto c = small_run(dir);
  c.model = "torchscript:" + (dir / "bn.pt").string();
  c.run_name = "never";
  try {
    (void)train::train(c);
    FAIL() << "BatchNorm after the target layer mixes samples in training mode";
  } catch (const std::invalid_argument& err) {
    EXPECT_NE(std::string(err.what()).find("mixes samples"), std::string::npos) << err.what();
  }
  EXPECT_FALSE(fs::exists(dir / "never")) << "no run directory for a refused start";
  // In eval mode the same head is per-sample: explanations work.
  models::TorchScriptModel scripted((dir / "bn.pt").string(), 1, 28);
  scripted.eval();
  EXPECT_EQ(scripted.head_sample_mixing_module(), "");
  scripted.train();
  EXPECT_NE(scripted.head_sample_mixing_module(), "");
  // Dropout is random but per-sample: accepted in training mode, and the caller's random
  // state is untouched by the check.
  script(dir / "dropout.pt", "--dropout-head");
  models::TorchScriptModel dropout((dir / "dropout.pt").string(), 1, 28);
  dropout.train();
  torch::manual_seed(5);
  const auto expected = torch::rand({4});
  torch::manual_seed(5);
  EXPECT_EQ(dropout.head_sample_mixing_module(), "");
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected)) << "the generator's state is restored";
  // Wrong class count, wrong file.
  script(dir / "five.pt", "--classes 5");
  c.model = "torchscript:" + (dir / "five.pt").string();
  try {
    (void)train::train(c);
    FAIL() << "5 logits for 10 classes";
  } catch (const std::runtime_error& err) {
    EXPECT_NE(std::string(err.what()).find("gives 5 logits, the data has 10 classes"), std::string::npos) << err.what();
  }
  std::ofstream(dir / "junk.pt") << "not a module";
  try {
    models::TorchScriptModel junk((dir / "junk.pt").string(), 1, 28);
    FAIL() << "junk loaded";
  } catch (const std::runtime_error& err) {
    EXPECT_NE(std::string(err.what()).find("junk.pt: not a loadable TorchScript module"), std::string::npos)
        << err.what();
  }
  fs::remove_all(dir);
}

// Without Python: a module defined in TorchScript from C++ (so that this path also runs
// where Python's torch is absent, e.g. against LibTorch 2.x) trains with the Prototype Loss
// and survives a checkpoint.
TEST(TorchScript, AModuleDefinedInCxxTrainsAndSurvivesACheckpoint) {
  const auto dir = fresh_dir("cxx");
  torch::jit::Module net("Net");
  torch::manual_seed(0);
  // (name, tensor, is_buffer): trainable parameters, as nn.Parameter makes them in Python.
  net.register_parameter("conv_weight", torch::randn({8, 1, 3, 3}).mul(0.3).requires_grad_(), false);
  net.register_parameter("fc_weight", torch::randn({10, 8}).mul(0.3).requires_grad_(), false);
  net.register_parameter("fc_bias", torch::zeros({10}).requires_grad_(), false);
  net.define(R"(
def features(self, x):
    return torch.relu(torch.conv2d(x, self.conv_weight, None, [1, 1], [1, 1]))

def head(self, a):
    return a.mean([2, 3]).matmul(self.fc_weight.t()) + self.fc_bias
)");
  const auto file = (dir / "net.pt").string();
  net.save(file);
  auto c = small_run(dir);
  c.train_size = 640;
  c.test_size = 128;
  c.run_name = "r";
  c.report = false;
  c.model = "torchscript:" + file;
  const auto r = train::train(c);
  ASSERT_EQ(r.history.size(), 1u);
  EXPECT_TRUE(std::isfinite(r.history.back().train_loss));
  EXPECT_GT(r.history.back().train_proto, 0.0) << "the Prototype Loss was on";
  const auto ck = train::load_checkpoint(r.checkpoint);
  const auto* scripted = dynamic_cast<const models::TorchScriptModel*>(ck.model.get());
  ASSERT_NE(scripted, nullptr);
  // The trained weights, not the file's: they changed, and the checkpoint holds them.
  torch::NoGradGuard no_grad;
  const auto fresh = models::make_model(ck.spec);
  fresh->eval();
  ck.model->eval();
  EXPECT_FALSE(torch::equal(fresh->forward(probe()), ck.model->forward(probe())));
  fs::remove_all(dir);
}
