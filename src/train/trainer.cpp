#include "batchcam/train/trainer.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/data/datasets.h"
#include "batchcam/eval/pictures.h"
#include "batchcam/eval/report.h"
#include "batchcam/io/png.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/checkpoint.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
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
    throw std::runtime_error(dir.string() + ": run directory already holds a run; choose another run name, or continue it with --resume");
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
        model.parameters(),
        torch::optim::SGDOptions(c.lr).momentum(c.momentum).nesterov(c.nesterov).weight_decay(c.weight_decay));
  }
  if (c.optimizer == "adamw") {
    return std::make_unique<torch::optim::AdamW>(model.parameters(),
                                                 torch::optim::AdamWOptions(c.lr).weight_decay(c.weight_decay));
  }
  return std::make_unique<torch::optim::Adam>(model.parameters(),
                                              torch::optim::AdamOptions(c.lr).weight_decay(c.weight_decay));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

torch::Tensor cpu_rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_cpu_rng_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Running sums of one epoch; saved in mid-epoch checkpoints so a resumed epoch reports
// the same means as an uninterrupted one.
struct EpochSums {
  double loss = 0, ce = 0, proto = 0, batch = 0, correct = 0, seen = 0, seconds = 0;
};

nlohmann::json sums_json(const EpochSums& s) {
  return {{"loss", s.loss}, {"ce", s.ce}, {"proto", s.proto}, {"batch", s.batch},
          {"correct", s.correct}, {"seen", s.seen}, {"seconds", s.seconds}};
}

EpochSums sums_from_json(const nlohmann::json& j) {
  EpochSums s;
  s.loss = j.at("loss");
  s.ce = j.at("ce");
  s.proto = j.at("proto");
  s.batch = j.at("batch");
  s.correct = j.at("correct");
  s.seen = j.at("seen");
  s.seconds = j.at("seconds");
  return s;
}

EpochMetrics epoch_metrics_from_json(const nlohmann::json& j) {
  EpochMetrics m;
  m.epoch = j.at("epoch");
  m.train_loss = j.at("train_loss");
  m.train_ce = j.at("train_ce");
  m.train_proto = j.at("train_proto");
  m.train_batch = j.at("train_batch");
  m.train_accuracy = j.at("train_accuracy");
  m.lambda_proto = j.at("lambda_proto");
  m.lambda_batch = j.at("lambda_batch");
  m.test.loss = j.at("test_loss");
  m.test.accuracy = j.at("test_accuracy");
  m.test.proto_l1 = j.at("test_proto_l1");
  m.test.proto_l2 = j.at("test_proto_l2");
  m.test.proto_ssim = j.at("test_proto_ssim");
  m.test.object_share = j.at("test_object_share");
  m.test.decoy_share = j.at("test_decoy_share");
  m.seconds = j.at("seconds");
  return m;
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

torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, double label_smoothing) {
  namespace F = torch::nn::functional;
  return F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().label_smoothing(label_smoothing));
}

}  // namespace

StepLosses compute_losses(models::CamModel& model, const data::Batch& batch, const torch::Tensor& prototypes,
                          int64_t num_classes, const CamLossConfig& config) {
  StepLosses out;
  const auto zero = torch::zeros({}, batch.x.options());
  if (!config.active()) {
    out.logits = model.forward(batch.x);
    out.ce = cross_entropy(out.logits, batch.y, config.label_smoothing);
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
  out.ce = cross_entropy(out.logits, batch.y, config.label_smoothing);
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
  data::DatasetOptions o;
  o.name = c.dataset;
  o.dir = c.data_dir;
  o.train_size = c.train_size;
  o.test_size = c.test_size;
  o.image_size = c.image_size;
  o.spurious = c.spurious;
  o.seed = c.seed;
  return data::load_dataset(o);
}

double learning_rate(const TrainConfig& c, int64_t step, int64_t steps_per_epoch) {
  constexpr double pi = 3.14159265358979323846;
  const double t = static_cast<double>(step);
  const double total = static_cast<double>(c.epochs * steps_per_epoch);
  const double warm = static_cast<double>(c.warmup_epochs * steps_per_epoch);
  const auto cosine = [&](double from, double to, double progress) {
    return to + (from - to) * 0.5 * (1.0 + std::cos(pi * std::clamp(progress, 0.0, 1.0)));
  };
  if (c.schedule == "onecycle") {
    // Rise from lr/25 to lr (over the warm-up, or the first 30% without one), then
    // anneal to lr/25e4, both along a half cosine.
    const double rise = warm > 0 ? warm : std::max(1.0, 0.3 * total);
    const double start = c.lr / 25.0;
    if (t < rise) return cosine(c.lr, start, 1.0 - t / rise);
    return cosine(c.lr, start / 1e4, (t - rise) / std::max(1.0, total - rise));
  }
  if (t < warm) return c.lr * (t + 1.0) / warm;
  if (c.schedule == "step") return c.lr * std::pow(c.gamma, static_cast<double>((step / steps_per_epoch) / c.step_size));
  if (c.schedule == "cosine") return cosine(c.lr, 0.0, (t - warm) / std::max(1.0, total - warm));
  return c.lr;
}

namespace {

// One training run from its start or from a checkpoint `from` (read from `from_path`).
TrainResult run_training(const TrainConfig& config, const TrainCallbacks& callbacks, const std::string& run_dir,
                         const Checkpoint* from, const std::string& from_path) {
  // LibTorch's OpenMP pool may start with one thread; 0 means every core.
  const auto cores = static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(static_cast<int>(config.threads > 0 ? config.threads : cores));
  torch::manual_seed(config.seed);

  const auto splits = load_dataset(config);
  const auto& train_set = splits.train;
  const int64_t num_classes = train_set.num_classes();
  models::ModelSpec spec{config.model, train_set.channels(), num_classes, train_set.height(), config.target_layer};
  auto model = from ? from->model : models::make_model(spec);
  model->train();
  cam::require_per_sample_head(*model);

  CamLossConfig cam_config;
  cam_config.distance_proto = losses::parse_distance(config.distance_proto);
  cam_config.distance_batch = losses::parse_distance(config.distance_batch);
  cam_config.detach_batch_target = config.batch_target == "detached";
  cam_config.label_smoothing = config.label_smoothing;

  TrainResult result;
  result.run_dir = run_dir;
  result.checkpoint = (fs::path(run_dir) / "last.pt").string();
  result.best_checkpoint = (fs::path(run_dir) / "best.pt").string();
  if (callbacks.on_start) callbacks.on_start(run_dir);

  const auto norm = from ? from->normalization : data::Normalization::fit(train_set.images);
  auto prototypes = from && from->prototypes.defined()
                        ? from->prototypes
                        : losses::image_prototypes(train_set.images, train_set.labels, num_classes);
  auto optimizer = make_optimizer(config, *model);
  data::BatchIterator batches(train_set, norm, config.batch_size, /*shuffle=*/true, config.seed, /*drop_last=*/true);
  if (config.augment != "none") {
    batches.set_augmentation({std::max<int64_t>(1, train_set.height() / 8), config.augment == "shift-flip"});
  }
  const int64_t steps = batches.size();
  if (steps == 0) {
    throw std::invalid_argument("config: 'batch_size' (" + std::to_string(config.batch_size) +
                                ") is larger than the training set (" + std::to_string(train_set.size()) + ")");
  }

  int64_t start_epoch = 1, start_step = 0;
  EpochSums sums;
  double best_accuracy = -1.0;
  if (from) {
    if (from->has_optimizer) restore_optimizer(from_path, *optimizer);
    if (from->rng_state.defined()) set_cpu_rng_state(from->rng_state);
    start_epoch = from->epoch + 1;
    start_step = from->step;
    const auto progress = nlohmann::json::parse(from->progress);
    for (const auto& line : progress.at("history")) result.history.push_back(epoch_metrics_from_json(line));
    sums = sums_from_json(progress.at("sums"));
    best_accuracy = progress.at("best_accuracy");
    result.train_seconds = progress.at("train_seconds");
  }

  // Saves last.pt (and best.pt when asked) with everything needed to continue.
  const auto save = [&](const std::string& path, int64_t epoch_done, int64_t step_done) {
    nlohmann::json history = nlohmann::json::array();
    for (const auto& m : result.history) history.push_back(to_json(m));
    const nlohmann::json progress = {{"history", history}, {"sums", sums_json(sums)},
                                     {"best_accuracy", best_accuracy}, {"train_seconds", result.train_seconds}};
    TrainingState state{step_done, progress.dump(), optimizer.get(), cpu_rng_state()};
    save_checkpoint(path, *model, spec, config, epoch_done, norm, prototypes, state);
  };
  const auto metrics_path = (fs::path(run_dir) / "metrics.jsonl").string();
  const auto write_metrics = [&] {
    std::string lines;
    for (const auto& m : result.history) lines += to_json(m).dump() + "\n";
    write_file_atomic(metrics_path, lines);
  };
  const auto stop_requested = [&] { return callbacks.should_stop && callbacks.should_stop(); };

  for (int64_t epoch = start_epoch; epoch <= config.epochs; ++epoch) {
    const bool cam_on = epoch > config.cam_warmup_epochs;
    cam_config.lambda_proto = cam_on ? config.lambda_proto : 0.0;
    cam_config.lambda_batch = cam_on ? config.lambda_batch : 0.0;
    batches.set_epoch(epoch);
    model->train();

    const int64_t first_step = epoch == start_epoch ? start_step : 0;
    if (first_step == 0) sums = {};
    const double earlier_seconds = sums.seconds;
    const auto start = Clock::now();
    // The next batch is assembled on another thread while this one trains; batches
    // depend only on (seed, epoch, index), so this changes no result.
    auto next = std::async(std::launch::async, [&batches, first_step] { return batches.get(first_step); });
    for (int64_t step = first_step; step < steps; ++step) {
      const auto batch = next.get();
      if (step + 1 < steps) next = std::async(std::launch::async, [&batches, step] { return batches.get(step + 1); });
      set_learning_rate(*optimizer, learning_rate(config, (epoch - 1) * steps + step, steps));
      optimizer->zero_grad();
      auto losses_now = compute_losses(*model, batch, prototypes, num_classes, cam_config);
      const double ce = require_finite(losses_now.ce, "cross-entropy", epoch, step + 1);
      const double proto = require_finite(losses_now.proto, "prototype", epoch, step + 1);
      const double batch_term = require_finite(losses_now.batch, "batch-cam", epoch, step + 1);
      const double total = require_finite(losses_now.total, "total", epoch, step + 1);
      losses_now.total.backward();
      if (config.grad_clip > 0.0) torch::nn::utils::clip_grad_norm_(model->parameters(), config.grad_clip);
      optimizer->step();
      if (config.prototype == "cam-ema" && losses_now.maps.defined()) {
        prototypes = losses::ema_prototypes(prototypes, losses_now.maps, batch.y);
      }

      const double n = static_cast<double>(batch.y.size(0));
      sums.seen += n;
      sums.loss += total * n;
      sums.ce += ce * n;
      sums.proto += proto * n;
      sums.batch += batch_term * n;
      sums.correct += losses_now.logits.argmax(1).eq(batch.y).sum().item<double>();
      sums.seconds = earlier_seconds + seconds_since(start);
      if (callbacks.on_step) {
        StepInfo info;
        info.epoch = epoch;
        info.epochs = config.epochs;
        info.step = step + 1;
        info.steps = steps;
        info.loss = sums.loss / sums.seen;
        info.ce = sums.ce / sums.seen;
        info.proto = sums.proto / sums.seen;
        info.batch = sums.batch / sums.seen;
        const double seconds_per_step = seconds_since(start) / static_cast<double>(step + 1 - first_step);
        info.images_per_second = n / std::max(seconds_per_step, 1e-9);
        info.model = model.get();
        info.eta_seconds = seconds_per_step * static_cast<double>((config.epochs - epoch) * steps + steps - step - 1);
        callbacks.on_step(info);
      }
      if (step + 1 < steps && stop_requested()) {
        next.wait();
        save(result.checkpoint, epoch - 1, step + 1);
        result.interrupted = true;
        result.stopped_epoch = epoch;
        result.stopped_step = step + 1;
        return result;
      }
    }

    EpochMetrics m;
    m.epoch = epoch;
    m.lambda_proto = cam_config.lambda_proto;
    m.lambda_batch = cam_config.lambda_batch;
    m.seconds = sums.seconds;
    m.train_loss = sums.loss / sums.seen;
    m.train_ce = sums.ce / sums.seen;
    m.train_proto = sums.proto / sums.seen;
    m.train_batch = sums.batch / sums.seen;
    m.train_accuracy = sums.correct / sums.seen;
    m.test = eval::evaluate(*model, splits.test, norm, prototypes);
    result.train_seconds += m.seconds;
    result.history.push_back(m);
    sums = {};

    const bool best = m.test.accuracy > best_accuracy;
    if (best) best_accuracy = m.test.accuracy;
    save(result.checkpoint, epoch, 0);
    if (best) save(result.best_checkpoint, epoch, 0);
    write_metrics();
    if (callbacks.on_epoch) callbacks.on_epoch(m);
    if (epoch < config.epochs && stop_requested()) {
      result.interrupted = true;
      result.stopped_epoch = epoch + 1;
      return result;
    }
  }
  io::write_png((fs::path(run_dir) / "prototypes.png").string(), eval::prototype_strip(prototypes));
  io::write_png((fs::path(run_dir) / "samples.png").string(), eval::cam_examples(*model, splits.test, norm));
  eval::write_run_report(run_dir, *model, splits.test, norm, prototypes);
  result.report = (fs::path(run_dir) / "report.html").string();
  return result;
}

}  // namespace

TrainResult train(const TrainConfig& config, const TrainCallbacks& callbacks) {
  config.validate();
  const auto run_dir = prepare_run_dir(config);
  write_file_atomic((fs::path(run_dir) / "config.json").string(), to_json(config).dump(2) + "\n");
  return run_training(config, callbacks, run_dir, nullptr, "");
}

TrainResult resume(const std::string& run_dir, const TrainCallbacks& callbacks, int64_t threads) {
  const auto path = (fs::path(run_dir) / "last.pt").string();
  if (!fs::is_directory(run_dir)) throw std::runtime_error(run_dir + ": no such run directory");
  if (!fs::exists(path)) {
    throw std::runtime_error(run_dir + ": no last.pt to resume from (the run stopped before its first checkpoint)");
  }
  const auto ck = load_checkpoint(path);
  TrainConfig config = ck.config;
  if (threads > 0) config.threads = threads;
  config.validate();
  if (ck.epoch >= config.epochs) {
    throw std::runtime_error(run_dir + ": the run is already complete (" + std::to_string(ck.epoch) + " of " +
                             std::to_string(config.epochs) + " epochs)");
  }
  if (ck.progress.empty() || !ck.rng_state.defined() || !ck.has_optimizer) {
    throw std::runtime_error(path + ": checkpoint has no training state to resume from");
  }
  return run_training(config, callbacks, run_dir, &ck, path);
}

}  // namespace batchcam::train
