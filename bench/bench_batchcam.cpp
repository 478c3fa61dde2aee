// Google Benchmark targets. Ratios (Batch-CAM step over CE step, batched over per-sample
// Grad-CAM) are read from one run: compare the rows of the same invocation.
//   build/bench/batchcam_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include "batchcam/cam/grad_cam.h"
#include "batchcam/data/shapes.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/trainer.h"

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <thread>

using namespace batchcam;

namespace {
constexpr int64_t kBatch = 128;

struct Fixture {
  data::Dataset dataset = data::generate_shapes(kBatch, 28, 1, data::SpuriousCue::none, 0.08);
  data::Normalization norm = data::Normalization::fit(dataset.images);
  data::Batch batch = data::BatchIterator(dataset, norm, kBatch, false, 0, false).get(0);
  torch::Tensor protos = losses::image_prototypes(dataset.images, dataset.labels, 10);
};

const Fixture& fixture() {
  static const Fixture f;
  return f;
}

models::CamModelPtr make(const std::string& name) {
  torch::manual_seed(0);
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  models::ModelSpec spec;
  spec.name = name;
  return models::make_model(spec);
}

// One optimiser step: forward, losses, backward, update. range(0): 0 = CE only, 1 = Batch-CAM.
void BM_TrainStep(benchmark::State& state, const std::string& model_name) {
  auto model = make(model_name);
  model->train();
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  train::CamLossConfig config;
  if (state.range(0) == 1) config.lambda_proto = config.lambda_batch = 1.0;
  const auto& f = fixture();
  for (auto _ : state) {
    opt.zero_grad();
    auto l = train::compute_losses(*model, f.batch, f.protos, 10, config);
    l.total.backward();
    opt.step();
    benchmark::DoNotOptimize(l.total.item<float>());
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.SetLabel(state.range(0) == 1 ? "ce+batch-cam" : "ce");
}

// Forward and backward of the cross-entropy for a batch of 128 at 28x28 (no optimiser).
void BM_ForwardBackward(benchmark::State& state, const std::string& model_name) {
  auto model = make(model_name);
  model->train();
  const auto& f = fixture();
  for (auto _ : state) {
    model->zero_grad();
    torch::nn::functional::cross_entropy(model->forward(f.batch.x), f.batch.y).backward();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}

// Grad-CAM for 128 images: one gradient call (range 0 = 1) or one backward per image (0).
void BM_GradCam(benchmark::State& state, const std::string& model_name) {
  auto model = make(model_name);
  model->eval();
  const auto& f = fixture();
  const auto options = cam::GradCamOptions().output_size({28, 28});
  for (auto _ : state) {
    if (state.range(0) == 1) {
      benchmark::DoNotOptimize(cam::grad_cam(*model, f.batch.x, f.batch.y, options).cam.maps);
    } else {
      benchmark::DoNotOptimize(cam::grad_cam_per_sample(*model, f.batch.x, f.batch.y, options).maps);
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.SetLabel(state.range(0) == 1 ? "batched" : "per-sample");
}

// Making normalised batches of 128 from an in-memory uint8 dataset.
void BM_BatchPipeline(benchmark::State& state) {
  static const auto dataset = data::generate_shapes(4096, 28, 2, data::SpuriousCue::none, 0.08);
  data::BatchIterator it(dataset, data::Normalization::fit(dataset.images), kBatch, true, 0, true);
  int64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(it.get(i).x);
    i = (i + 1) % it.size();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
// The MNIST batch pipeline (issue 5's goal: >= 50,000 images/s at batch 128): gather,
// normalise and, with arg 1, random shift by up to 3 px, on a dataset of MNIST's shape
// (the cost does not depend on the pixel values).
void BM_MnistPipeline(benchmark::State& state) {
  static const data::Dataset dataset = [] {
    data::Dataset d;
    torch::manual_seed(0);
    d.images = torch::randint(0, 256, {60000, 1, 28, 28}, torch::kUInt8);
    d.labels = torch::randint(0, 10, {60000}, torch::kInt64);
    d.class_names.assign(10, "c");
    return d;
  }();
  data::BatchIterator it(dataset, data::Normalization::fit(dataset.images.narrow(0, 0, 1000)), kBatch, true, 0, true);
  if (state.range(0) == 1) it.set_augmentation({3, false});
  int64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(it.get(i).x);
    i = (i + 1) % it.size();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}
}  // namespace

BENCHMARK_CAPTURE(BM_TrainStep, simple_cnn, std::string("simple-cnn"))->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_GradCam, simple_cnn, std::string("simple-cnn"))->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ForwardBackward, simple_cnn, std::string("simple-cnn"))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ForwardBackward, resnet18, std::string("resnet18"))->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_ForwardBackward, convnext_v2_atto, std::string("convnext-v2-atto"))->Unit(benchmark::kMillisecond)->UseRealTime();
// The wider ConvNeXt-V2 variants take seconds per batch on 2 cores: one iteration each.
BENCHMARK_CAPTURE(BM_ForwardBackward, convnext_v2_femto, std::string("convnext-v2-femto"))->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK_CAPTURE(BM_ForwardBackward, convnext_v2_pico, std::string("convnext-v2-pico"))->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK_CAPTURE(BM_ForwardBackward, convnext_v2_nano, std::string("convnext-v2-nano"))->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK_CAPTURE(BM_ForwardBackward, convnext_v2_tiny, std::string("convnext-v2-tiny"))->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);
BENCHMARK(BM_BatchPipeline)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_MnistPipeline)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();

BENCHMARK_MAIN();
