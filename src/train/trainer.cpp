#include "batchcam/train/trainer.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/data/shapes.h"
#include "batchcam/eval/pictures.h"
#include "batchcam/io/png.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/checkpoint.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <thread>

namespace batchcam::train {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string default_run_name(const TrainConfig& c) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return c.dataset + "-" + c.model + "-" + stamp;
}

// Creates the run directory and proves it is writable before any training time is spent.
std::string prepare_run_dir(const TrainConfig& c) {
  std::string name = c.run_name.empty() ? default_run_name(c) : c.run_name;
  fs::path dir = fs::path(c.out_dir) / name;
  if (c.run_name.empty()) {
    for (int k = 2; fs::exists(dir); ++k) dir = fs::path(c.out_dir) / (name + "-" + std::to_string(k));
  } else if (fs::exists(dir / "metrics.jsonl")) {
    throw std::runtime_error(dir.string() + ": run directory already holds a run; choose another run name");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir.string() + ": cannot create run directory (" + ec.message() + ")");
  const auto probe = dir / ".write-test";
  {
    std::ofstream out(probe);
    out << std::string(4096, '\0');
    out.flush();
    if (!out) throw std::runtime_error(dir.string() + ": run directory is not writable (or the disk is full)");
  }
  fs::remove(probe, ec);
  return dir.string();
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& c, models::CamModel& model) {
  if (c.optimizer == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        model.parameters(), torch::optim::SGDOptions(c.lr).momentum(c.momentum).weight_decay(c.weight_decay));
  }
  return std::make_unique<torch::optim::Adam>(model.parameters(),
                                              torch::optim::AdamOptions(c.lr).weight_decay(c.weight_decay));
}

// Returns the scalar loss term's value, or throws naming the term and the step.
double require_finite(const torch::Tensor& t, const char* term, int64_t epoch, int64_t step) {
  const double v = t.item<double>();
  if (!std::isfinite(v)) {
    throw std::runtime_error("non-finite " + std::string(term) + " loss (" + std::to_string(v) + ") at epoch " +
                             std::to_string(epoch) + ", step " + std::to_string(step) +
                             "; the last good checkpoint is kept");
  }
  return v;
}

}  // namespace

StepLosses compute_losses(models::CamModel& model, const data::Batch& batch, const torch::Tensor& prototypes,
                          int64_t num_classes, const CamLossConfig& config) {
  StepLosses out;
  const auto zero = torch::zeros({}, batch.x.options());
  if (!config.active()) {
    out.logits = model.forward(batch.x);
    out.ce = torch::nn::functional::cross_entropy(out.logits, batch.y);
    out.proto = zero;
    out.batch = zero;
    out.total = out.ce;
    return out;
  }
  const auto cam_options =
      cam::GradCamOptions().create_graph(true).output_size({batch.x.size(2), batch.x.size(3)});
  auto result = cam::grad_cam(model, batch.x, batch.y, cam_options);
  out.logits = result.logits;
  out.maps = result.cam.maps;
  out.ce = torch::nn::functional::cross_entropy(out.logits, batch.y);
  out.proto = zero;
  out.batch = zero;
  if (config.lambda_proto > 0.0) {
    TORCH_CHECK(prototypes.defined(), "compute_losses: lambda_proto > 0 needs prototypes");
    out.proto = losses::prototype_loss(out.maps, batch.y, prototypes, config.distance_proto);
  }
  if (config.lambda_batch > 0.0) {
    out.batch = losses::batch_cam_loss(out.maps, batch.y, num_classes, config.distance_batch,
                                       config.detach_batch_target);
  }
  out.total = out.ce + config.lambda_proto * out.proto + config.lambda_batch * out.batch;
  return out;
}

nlohmann::json to_json(const EpochMetrics& m) {
  return {{"epoch", m.epoch},
          {"train_loss", m.train_loss},
          {"train_ce", m.train_ce},
          {"train_proto", m.train_proto},
          {"train_batch", m.train_batch},
          {"train_accuracy", m.train_accuracy},
          {"lambda_proto", m.lambda_proto},
          {"lambda_batch", m.lambda_batch},
          {"test_loss", m.test.loss},
          {"test_accuracy", m.test.accuracy},
          {"test_proto_l1", m.test.proto_l1},
          {"test_proto_l2", m.test.proto_l2},
          {"test_proto_ssim", m.test.proto_ssim},
          {"test_object_share", m.test.object_share},
          {"test_decoy_share", m.test.decoy_share},
          {"seconds", m.seconds}};
}

data::DatasetSplits load_dataset(const TrainConfig& c) {
  if (c.dataset == "shapes") {
    data::ShapesOptions o;
    o.train_size = c.train_size;
    o.test_size = c.test_size;
    o.image_size = c.image_size;
    o.seed = c.seed;
    o.spurious = c.spurious;
    return data::make_shapes(o);
  }
  throw std::invalid_argument("unknown dataset '" + c.dataset + "'; expected shapes");
}

TrainResult train(const TrainConfig& config, const TrainCallbacks& callbacks) {
  config.validate();
  // LibTorch's OpenMP pool may start with one thread; 0 means every core.
  const auto cores = static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(static_cast<int>(config.threads > 0 ? config.threads : cores));
  torch::manual_seed(config.seed);

  const auto splits = load_dataset(config);
  const auto& train_set = splits.train;
  const int64_t num_classes = train_set.num_classes();
  models::ModelSpec spec{config.model, train_set.channels(), num_classes, train_set.height(), config.target_layer};
  auto model = models::make_model(spec);
  model->train();
  cam::require_per_sample_head(*model);

  CamLossConfig cam_config;
  cam_config.distance_proto = losses::parse_distance(config.distance_proto);
  cam_config.distance_batch = losses::parse_distance(config.distance_batch);
  cam_config.detach_batch_target = config.batch_target == "detached";

  TrainResult result;
  result.run_dir = prepare_run_dir(config);
  write_file_atomic((fs::path(result.run_dir) / "config.json").string(), to_json(config).dump(2) + "\n");
  if (callbacks.on_start) callbacks.on_start(result.run_dir);

  const auto norm = data::Normalization::fit(train_set.images);
  auto prototypes = losses::image_prototypes(train_set.images, train_set.labels, num_classes);
  auto optimizer = make_optimizer(config, *model);
  data::BatchIterator batches(train_set, norm, config.batch_size, /*shuffle=*/true, config.seed, /*drop_last=*/true);
  if (batches.size() == 0) {
    throw std::invalid_argument("config: 'batch_size' (" + std::to_string(config.batch_size) +
                                ") is larger than the training set (" + std::to_string(train_set.size()) + ")");
  }

  const auto metrics_path = (fs::path(result.run_dir) / "metrics.jsonl").string();
  std::ofstream metrics_file(metrics_path, std::ios::app);
  if (!metrics_file) throw std::runtime_error(metrics_path + ": cannot open for writing");
  result.checkpoint = (fs::path(result.run_dir) / "checkpoint.pt").string();

  for (int64_t epoch = 1; epoch <= config.epochs; ++epoch) {
    const bool cam_on = epoch > config.cam_warmup_epochs;
    cam_config.lambda_proto = cam_on ? config.lambda_proto : 0.0;
    cam_config.lambda_batch = cam_on ? config.lambda_batch : 0.0;
    batches.set_epoch(epoch);
    model->train();

    EpochMetrics m;
    m.epoch = epoch;
    m.lambda_proto = cam_config.lambda_proto;
    m.lambda_batch = cam_config.lambda_batch;
    double sum_loss = 0, sum_ce = 0, sum_proto = 0, sum_batch = 0, correct = 0, seen = 0;
    const auto start = Clock::now();
    for (int64_t step = 0; step < batches.size(); ++step) {
      const auto batch = batches.get(step);
      optimizer->zero_grad();
      auto losses_now = compute_losses(*model, batch, prototypes, num_classes, cam_config);
      const double ce = require_finite(losses_now.ce, "cross-entropy", epoch, step + 1);
      const double proto = require_finite(losses_now.proto, "prototype", epoch, step + 1);
      const double batch_term = require_finite(losses_now.batch, "batch-cam", epoch, step + 1);
      losses_now.total.backward();
      optimizer->step();
      if (config.prototype == "cam-ema" && losses_now.maps.defined()) {
        prototypes = losses::ema_prototypes(prototypes, losses_now.maps, batch.y);
      }

      const double n = static_cast<double>(batch.y.size(0));
      seen += n;
      sum_loss += losses_now.total.item<double>() * n;
      sum_ce += ce * n;
      sum_proto += proto * n;
      sum_batch += batch_term * n;
      correct += losses_now.logits.argmax(1).eq(batch.y).sum().item<double>();
      if (callbacks.on_step) {
        StepInfo info;
        info.epoch = epoch;
        info.epochs = config.epochs;
        info.step = step + 1;
        info.steps = batches.size();
        info.loss = sum_loss / seen;
        info.ce = sum_ce / seen;
        info.proto = sum_proto / seen;
        info.batch = sum_batch / seen;
        info.images_per_second = seen / std::max(seconds_since(start), 1e-9);
        callbacks.on_step(info);
      }
    }
    m.seconds = seconds_since(start);
    m.train_loss = sum_loss / seen;
    m.train_ce = sum_ce / seen;
    m.train_proto = sum_proto / seen;
    m.train_batch = sum_batch / seen;
    m.train_accuracy = correct / seen;
    m.test = eval::evaluate(*model, splits.test, norm, prototypes);
    result.train_seconds += m.seconds;

    save_checkpoint(result.checkpoint, *model, spec, config, epoch, norm, prototypes);
    metrics_file << to_json(m).dump() << "\n";
    metrics_file.flush();
    result.history.push_back(m);
    if (callbacks.on_epoch) callbacks.on_epoch(m);
  }
  io::write_png((fs::path(result.run_dir) / "prototypes.png").string(), eval::prototype_strip(prototypes));
  io::write_png((fs::path(result.run_dir) / "samples.png").string(), eval::cam_examples(*model, splits.test, norm));
  return result;
}

}  // namespace batchcam::train
