// Tests that need a CUDA device (label `cuda`); each skips with a message where there is
// none. scripts/gpu-check.sh builds against a PyTorch wheel's LibTorch and runs them.

#include "batchcam/cam/grad_cam.h"
#include "batchcam/core/runtime.h"
#include "batchcam/data/shapes.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/optimization.h"
#include "batchcam/train/trainer.h"

#include "support/tensor_asserts.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <limits>

using namespace batchcam;
namespace fs = std::filesystem;

namespace {
#define REQUIRE_CUDA()                                                                      \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: this test needs one"

const torch::Device kCuda(torch::kCUDA, 0);

struct ShapesBatch {
  data::Dataset dataset = data::generate_shapes(32, 28, 5, data::SpuriousCue::none, 0.05);
  data::Normalization norm = data::Normalization::fit(dataset.images);
  data::Batch batch = data::BatchIterator(dataset, norm, 32, false, 0, false).get(0);
};

models::CamModelPtr model_on(const std::string& name, torch::Device device) {
  auto model = core::with_cpu_seed(0, [&] { return models::make_model({name, 1, 10, 28, ""}); });
  model->to(device);
  model->eval();
  return model;
}

fs::path fresh_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("batchcam-cuda-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  return dir;
}

train::TrainConfig small_config(const fs::path& dir, const std::string& name) {
  train::TrainConfig c;
  c.train_size = 512;
  c.test_size = 64;
  c.batch_size = 64;
  c.epochs = 3;
  c.device = "cuda";
  c.out_dir = dir.string();
  c.run_name = name;
  return c;
}
}  // namespace

TEST(Cuda, BatchedGradCamEqualsPerSampleOnTheGpu) {
  REQUIRE_CUDA();
  ShapesBatch s;
  for (const char* name : {"simple-cnn", "resnet18"}) {
    auto model = model_on(name, kCuda);
    const auto x = s.batch.x.to(kCuda), y = s.batch.y.to(kCuda);
    const auto options = cam::GradCamOptions().output_size({28, 28});
    const auto batched = cam::grad_cam(*model, x, y, options).cam.maps;
    const auto per_sample = cam::grad_cam_per_sample(*model, x, y, options).maps;
    EXPECT_TRUE(batched.is_cuda());
    EXPECT_LE(test_support::max_abs_diff(batched.cpu(), per_sample.cpu()), 1e-5) << name;
  }
}

TEST(Cuda, CpuAndCudaMapsOfTheSameWeightsAgree) {
  REQUIRE_CUDA();
  ShapesBatch s;
  for (const char* name : {"simple-cnn", "resnet18", "convnext-v2-atto"}) {
    auto cpu = model_on(name, torch::kCPU);
    auto gpu = model_on(name, kCuda);
    const auto options = cam::GradCamOptions().output_size({28, 28});
    const auto a = cam::grad_cam(*cpu, s.batch.x, s.batch.y, options).cam.maps;
    const auto b = cam::grad_cam(*gpu, s.batch.x.to(kCuda), s.batch.y.to(kCuda), options).cam.maps.cpu();
    EXPECT_LE(test_support::max_abs_diff(a, b), 1e-4) << name;
  }
}

TEST(Cuda, CheckpointMovesBetweenDevices) {
  REQUIRE_CUDA();
  const auto dir = fresh_dir("move");
  // Epoch 1 on CUDA, interrupted; epoch 2 and 3 on the CPU from its checkpoint.
  bool epoch_done = false;
  train::TrainCallbacks stop_after_epoch_1;
  stop_after_epoch_1.on_epoch = [&](const train::EpochMetrics&) { epoch_done = true; };
  stop_after_epoch_1.should_stop = [&] { return epoch_done; };
  auto c = small_config(dir, "m");
  const auto part = train::train(c, stop_after_epoch_1);
  ASSERT_TRUE(part.interrupted);
  EXPECT_EQ(part.device, "cuda:0");
  train::ResumeOptions to_cpu;
  to_cpu.device = "cpu";
  const auto on_cpu = train::resume(part.run_dir, {}, to_cpu);
  ASSERT_FALSE(on_cpu.interrupted);
  EXPECT_EQ(on_cpu.device, "cpu");
  ASSERT_EQ(on_cpu.history.size(), 3u);
  // And back: the CPU-trained weights on CUDA give the CPU's logits.
  const auto cpu_ck = train::load_checkpoint(on_cpu.checkpoint, torch::kCPU);
  const auto gpu_ck = train::load_checkpoint(on_cpu.checkpoint, kCuda);
  ShapesBatch s;
  torch::NoGradGuard no_grad;
  const auto a = cpu_ck.model->forward(s.batch.x);
  const auto b = gpu_ck.model->forward(s.batch.x.to(kCuda)).cpu();
  EXPECT_LE(test_support::max_abs_diff(a, b), 1e-4);
  fs::remove_all(dir);
}

TEST(Cuda, LossScalerSkipsAStepWithAnInjectedInfLikeTheCpuRule) {
  REQUIRE_CUDA();
  train::LossScalerOptions o;
  o.init_scale = 1024.0;
  o.growth_interval = 2;
  train::LossScaler gpu(kCuda, o), cpu(torch::kCPU, o);
  auto model = model_on("simple-cnn", kCuda);
  model->train();
  ShapesBatch s;
  const auto loss = torch::nn::functional::cross_entropy(model->forward(s.batch.x.to(kCuda)), s.batch.y.to(kCuda));
  gpu.scale(loss).backward();
  const auto params = model->parameters();
  {
    torch::NoGradGuard no_grad;
    params.front().grad().view(-1)[0] = std::numeric_limits<float>::infinity();
  }
  const auto found = gpu.unscale(params);
  EXPECT_EQ(found.item<float>(), 1.0f) << "ATen's fused check found the Inf";
  gpu.update(found);
  cpu.update(found.cpu());
  EXPECT_EQ(gpu.current_scale(), 512.0);
  for (int i = 0; i < 2; ++i) {
    gpu.update(torch::zeros({1}, torch::TensorOptions().device(kCuda)));
    cpu.update(torch::zeros({1}));
  }
  EXPECT_EQ(gpu.current_scale(), 1024.0);
  EXPECT_TRUE(torch::equal(gpu.state(), cpu.state())) << "ATen's kernels and the CPU rule agree";
}

TEST(Cuda, Bf16AndFp16TrainingLowerTheLoss) {
  REQUIRE_CUDA();
  const auto dir = fresh_dir("amp");
  for (const auto precision : {core::Precision::bf16, core::Precision::fp16}) {
    auto c = small_config(dir, core::to_string(precision));
    c.precision = precision;
    const auto r = train::train(c);
    ASSERT_EQ(r.history.size(), 3u);
    EXPECT_LT(r.history.back().train_loss, r.history.front().train_loss) << core::to_string(precision);
    EXPECT_GT(r.history.back().test.accuracy, 0.3) << core::to_string(precision);
    for (const auto& p : train::load_checkpoint(r.checkpoint).model->parameters()) {
      EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
    }
  }
  fs::remove_all(dir);
}
