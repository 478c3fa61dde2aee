// The batchcam command line: parse -> configuration -> library call. Exit codes live here:
// 0 success, 1 runtime failure (files, training), 2 bad usage (flags, config values).

#include "bench.h"
#include "malloc_settings.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/core/runtime.h"
#include "batchcam/data/datasets.h"
#include "batchcam/data/shapes.h"
#include "batchcam/eval/evaluate.h"
#include "batchcam/eval/pictures.h"
#include "batchcam/eval/report.h"
#include "batchcam/io/image.h"
#include "batchcam/io/png.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/config.h"
#include "batchcam/train/trainer.h"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <iostream>
#include <string>

namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

// True while a progress bar line is on the terminal without its newline.
bool progress_line_open = false;

// An option whose values are an enum's names (one list, shared with config files).
template <typename E>
CLI::Option* add_enum_option(CLI::App& cmd, const std::string& flag, E& value, const std::string& help) {
  const std::string field = flag.substr(2);
  return cmd
      .add_option_function<std::string>(
          flag, [&value, field](const std::string& v) { value = batchcam::train::parse<E>(v, field); }, help)
      ->check(CLI::IsMember(batchcam::train::names<E>()))
      ->default_str(batchcam::train::to_string(value));
}

const std::string kDeviceHelp = "Device: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N";

void add_train_options(CLI::App& cmd, batchcam::train::TrainConfig& c) {
  using namespace batchcam::train;
  cmd.add_option("--dataset", c.dataset, "Dataset")->check(CLI::IsMember(batchcam::data::dataset_names()))->group("Data");
  cmd.add_option("--data-dir", c.data_dir,
                 "Directory of the dataset's files (default: data/<dataset>; MNIST-type files are downloaded there when missing)")
      ->group("Data");
  cmd.add_option("--train-size", c.train_size, "Training images (shapes: generated, 0 = 6000; others: the first N, 0 = all)")
      ->check(CLI::Range(0, 10000000))->group("Data");
  cmd.add_option("--test-size", c.test_size, "Test images (shapes: generated, 0 = 1000; others: the first N, 0 = all)")
      ->check(CLI::Range(0, 10000000))->group("Data");
  cmd.add_option("--image-size", c.image_size, "Image side in pixels (shapes: generated; folder: resized to)")
      ->check(CLI::Range(16, 512))->group("Data");
  cmd.add_flag("--spurious,!--no-spurious", c.spurious, "Add a class-coded corner patch in training (shapes)")->group("Data");
  cmd.add_option("--max-image-pixels", c.max_image_pixels,
                 "folder: refuse images whose header claims more pixels (before decoding them)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 36))->group("Data");
  add_enum_option(cmd, "--augment", c.augment, "Training augmentation: none, shift (random shift), shift-flip (+ horizontal flip)")
      ->group("Data");

  cmd.add_option("--model", c.model, "Model (see 'batchcam models')")->check(CLI::IsMember(batchcam::models::model_names()))->group("Model");
  cmd.add_option("--target-layer", c.target_layer, "Stage whose output feeds Grad-CAM (default: the last)")->group("Model");

  cmd.add_option("--epochs", c.epochs, "Training epochs")->check(CLI::Range(1, 100000))->group("Optimisation");
  cmd.add_option("--batch-size", c.batch_size, "Images per batch")->check(CLI::Range(2, 1000000))->group("Optimisation");
  add_enum_option(cmd, "--optimizer", c.optimizer, "Optimiser")->group("Optimisation");
  cmd.add_option("--lr", c.lr, "Peak learning rate")->check(CLI::PositiveNumber)->group("Optimisation");
  cmd.add_option("--momentum", c.momentum, "SGD momentum")->check(CLI::Range(0.0, 0.999999))->group("Optimisation");
  cmd.add_flag("--nesterov,!--no-nesterov", c.nesterov, "Nesterov momentum (sgd)")->group("Optimisation");
  cmd.add_option("--weight-decay", c.weight_decay, "Weight decay (decoupled for adamw)")->check(CLI::Range(0.0, 1.0))->group("Optimisation");
  add_enum_option(cmd, "--schedule", c.schedule, "Learning-rate schedule: constant, step, cosine or onecycle")
      ->group("Optimisation");
  cmd.add_option("--warmup-epochs", c.warmup_epochs, "Epochs of linear learning-rate warm-up")
      ->check(CLI::Range(0, 100000))->group("Optimisation");
  cmd.add_option("--step-size", c.step_size, "Step schedule: epochs between decays")->check(CLI::Range(1, 100000))->group("Optimisation");
  cmd.add_option("--gamma", c.gamma, "Step schedule: decay factor")->check(CLI::Range(1e-12, 1.0))->group("Optimisation");
  cmd.add_option("--grad-clip", c.grad_clip, "Clip the global gradient norm to this (0 = off)")
      ->check(CLI::NonNegativeNumber)->group("Optimisation");
  cmd.add_option("--label-smoothing", c.label_smoothing, "Label smoothing of the cross-entropy")
      ->check(CLI::Range(0.0, 0.999))->group("Optimisation");
  // Read as text: CLI11 would wrap "-1" and clamp a too large number into uint64 silently.
  cmd.add_option_function<std::string>(
         "--seed", [&c](const std::string& s) { c.seed = std::stoull(s); }, "Random seed (data, initialisation, order)")
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            errno = 0;
            const bool digits = !s.empty() && s.size() <= 20 && s.find_first_not_of("0123456789") == std::string::npos;
            if (digits) (void)std::strtoull(s.c_str(), nullptr, 10);
            return digits && errno == 0 ? "" : "must be an integer in [0, 18446744073709551615], got '" + s + "'";
          },
          "UINT"))
      ->default_str("0")
      ->group("Optimisation");
  cmd.add_option("--threads", c.threads,
                 "CPU threads, 0 = what the process may use (OMP_NUM_THREADS, else the CPU affinity and cgroup quota)")
      ->check(CLI::Range(0, 1024))->group("Device");
  cmd.add_option("--device", c.device, kDeviceHelp)->group("Device");
  add_enum_option(cmd, "--precision", c.precision,
                  "Forward pass precision: fp32, bf16 (autocast; CPU or CUDA) or fp16 (autocast with loss scaling; CUDA)")
      ->group("Device");
  cmd.add_option("--max-skipped-steps", c.max_skipped_steps,
                 "fp16: steps in a row with non-finite gradients (skipped) that stop the run")
      ->check(CLI::Range(1, 1000000))->group("Device");

  cmd.add_option("--lambda-proto", c.lambda_proto, "Weight of the Prototype Loss")->check(CLI::NonNegativeNumber)->group("Batch-CAM");
  cmd.add_option("--lambda-batch", c.lambda_batch, "Weight of the Batch-CAM Loss")->check(CLI::NonNegativeNumber)->group("Batch-CAM");
  auto* both = cmd.add_option_function<std::string>(
      "--distance",
      [&c](const std::string& d) { c.distance_proto = c.distance_batch = parse<batchcam::losses::Distance>(d, "distance"); },
      "Distance for both losses: l1, l2 or ssim (sets the two options below; default: their defaults)");
  both->check(CLI::IsMember(names<batchcam::losses::Distance>()))->group("Batch-CAM");
  add_enum_option(cmd, "--distance-proto", c.distance_proto, "Distance of the Prototype Loss")->group("Batch-CAM");
  add_enum_option(cmd, "--distance-batch", c.distance_batch, "Distance of the Batch-CAM Loss")->group("Batch-CAM");
  add_enum_option(cmd, "--prototype", c.prototype, "Class prototypes: image (class-average image) or cam-ema")
      ->group("Batch-CAM");
  add_enum_option(cmd, "--batch-target", c.batch_target, "In-batch prototypes: attached (in the graph) or detached")
      ->group("Batch-CAM");
  cmd.add_option("--cam-warmup-epochs", c.cam_warmup_epochs, "Epochs of CE only before the CAM losses start")
      ->check(CLI::Range(0, 100000))->group("Batch-CAM");

  cmd.add_option("--out-dir", c.out_dir, "Directory for run directories")->group("Output");
  cmd.add_option("--run-name", c.run_name, "Run directory name (default: <dataset>-<model>-<time>)")->group("Output");
  cmd.add_option("--log-every", c.log_every,
                 "Steps between reads of the running loss from the device (progress and the non-finite check)")
      ->check(CLI::Range(1, 1000000))->group("Output");
}

// The CLI owns the process's thread count: --threads, or what the process may use.
// LibTorch starts two pools of threads - 1 workers (OpenMP's and pthreadpool's) and hangs
// when the system refuses one, so the CLI first checks that they can start.
int64_t set_threads(int64_t requested) {
  const int64_t threads = requested > 0 ? requested : batchcam::core::usable_cpu_count();
  if (const auto failure = batchcam::core::thread_start_failure(2 * (threads - 1)); !failure.empty()) {
    throw std::runtime_error(fmt::format(
        "{} CPU threads need {} more threads, but {} (a process limit such as ulimit -u, or a cgroup's pids.max, "
        "is lower); ask for fewer with --threads or OMP_NUM_THREADS",
        threads, 2 * (threads - 1), failure));
  }
  torch::set_num_threads(static_cast<int>(threads));
  return threads;
}

std::string clock_text(double seconds) {
  const auto s = static_cast<long long>(std::max(0.0, seconds));
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

struct Progress {
  bool quiet = false;
  bool tty = ::isatty(STDERR_FILENO) != 0;

  void step(const batchcam::train::StepInfo& s) const {
    if (quiet) return;
    const bool last = s.step == s.steps;
    if (tty) {
      const int width = 24;
      const int filled = static_cast<int>(width * s.step / std::max<int64_t>(s.steps, 1));
      std::fprintf(stderr, "\r\033[Kepoch %lld/%lld [%s%s] %lld/%lld loss %.4f (ce %.4f proto %.4f batch %.4f) %.0f img/s ETA %s",
                   static_cast<long long>(s.epoch), static_cast<long long>(s.epochs),
                   std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                   static_cast<long long>(s.step), static_cast<long long>(s.steps), s.loss, s.ce, s.proto, s.batch,
                   s.images_per_second, clock_text(s.eta_seconds).c_str());
      if (last) std::fprintf(stderr, "\n");
      progress_line_open = !last;
    } else if (!last && s.step % std::max<int64_t>(s.steps / 4, 1) == 0) {
      // Not a terminal (a log file, CI): a plain line each quarter of an epoch.
      spdlog::info("epoch {}/{} step {}/{}: loss {:.4f} (ce {:.4f} proto {:.4f} batch {:.4f}), {:.0f} img/s, ETA {}",
                   s.epoch, s.epochs, s.step, s.steps, s.loss, s.ce, s.proto, s.batch, s.images_per_second,
                   clock_text(s.eta_seconds));
    }
  }
};

// The configuration of a run: the --config file if given, then every flag given on the
// command line on top of it. Keys are the long option names with '_' for '-'.
batchcam::train::TrainConfig resolve_config(const CLI::App& cmd, const batchcam::train::TrainConfig& flags,
                                            const std::string& config_file) {
  if (config_file.empty()) return flags;
  std::ifstream in(config_file);
  if (!in) throw std::runtime_error(config_file + ": cannot read (" + std::strerror(errno) + ")");
  nlohmann::json merged;
  try {
    merged = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(config_file + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  const auto given = batchcam::train::to_json(flags);
  for (const auto* opt : cmd.get_options()) {
    if (opt->count() == 0 || opt->get_lnames().empty()) continue;
    std::string key = opt->get_lnames().front();
    std::replace(key.begin(), key.end(), '-', '_');
    if (key == "distance") {
      merged["distance_proto"] = given["distance_proto"];
      merged["distance_batch"] = given["distance_batch"];
    } else if (given.contains(key)) {
      merged[key] = given[key];
    }
  }
  try {
    auto resolved = batchcam::train::config_from_json(merged);
    resolved.validate();
    return resolved;
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(config_file + ": " + e.what());
  }
}

// SIGINT/SIGTERM ask the trainer to save a checkpoint and stop; a second signal kills.
volatile std::sig_atomic_t stop_signal = 0;
extern "C" void on_stop_signal(int sig) { stop_signal = sig; }

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

// Runs a fresh training (`resume_dir` empty) or continues the run in `resume_dir`, on
// `device` ("" = the run's own for a resumed run).
int run_train(batchcam::train::TrainConfig config, const std::string& resume_dir, const std::string& device,
              bool quiet) {
  const int64_t threads = set_threads(config.threads);
  if (resume_dir.empty()) {
    // The process-wide choices are the CLI's: the thread count, recorded so that --resume
    // uses it again (a CPU run continues bit-exactly only with the same count), and the seed
    // of the default generators (random draws during training; a resumed run restores them).
    config.threads = threads;
    torch::manual_seed(config.seed);
  }
  Progress progress{quiet};
  batchcam::train::TrainCallbacks callbacks;
  std::string run_dir;
  callbacks.on_start = [&](const std::string& dir) {
    run_dir = dir;
    if (!quiet) spdlog::info("run directory: {} ({} CPU thread{})", dir, threads, threads == 1 ? "" : "s");
  };
  callbacks.on_step = [&](const batchcam::train::StepInfo& s) { progress.step(s); };
  callbacks.on_epoch = [&](const batchcam::train::EpochMetrics& m) {
    if (quiet) return;
    spdlog::info("epoch {}: train loss {:.4f} acc {:.2f}% | test loss {:.4f} acc {:.2f}% | CAM-prototype SSIM {:.3f} | {:.1f}s",
                 m.epoch, m.train_loss, 100 * m.train_accuracy, m.test.loss, 100 * m.test.accuracy,
                 m.test.proto_ssim, m.seconds);
  };
  callbacks.should_stop = [] { return stop_signal != 0; };
  callbacks.on_final_outputs = [&] {
    // Every epoch is saved: from here a signal stops at once, and --resume writes the rest.
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (stop_signal != 0) {
      if (progress_line_open) std::cerr << "\n";
      std::cerr << "batchcam: stopped before the final evaluation and report; write them with: batchcam train "
                   "--resume "
                << run_dir << "\n";
      std::raise(static_cast<int>(stop_signal));
    }
    if (!quiet) spdlog::info("training done; writing the final evaluation, pictures and report.html");
  };
  install_stop_handlers();
  const auto result = resume_dir.empty() ? batchcam::train::train(config, callbacks)
                                         : batchcam::train::resume(resume_dir, callbacks, {device});
  if (result.interrupted) {
    if (progress_line_open) std::cerr << "\n";
    std::cerr << fmt::format("batchcam: {} at epoch {}, step {}: saved {}; continue with: batchcam train --resume {}\n",
                             stop_signal == SIGTERM ? "terminated" : "interrupted", result.stopped_epoch,
                             result.stopped_step, result.checkpoint, result.run_dir);
    return 128 + static_cast<int>(stop_signal);
  }
  const auto& last = result.history.back();
  std::cout << "\nTrained " << result.config.model << " on " << result.config.dataset << " for " << last.epoch
            << " epochs in "
            << fmt::format("{:.1f}", result.train_seconds) << " s on " << result.device << ".\n"
            << "  test accuracy          " << fmt::format("{:.2f}%", 100 * last.test.accuracy) << "\n"
            << "  CAM-prototype SSIM     " << fmt::format("{:.3f}", last.test.proto_ssim) << "\n"
            << "  run directory          " << result.run_dir << "\n"
            << "  checkpoints            " << result.checkpoint << ", " << result.best_checkpoint << "\n"
            << "  report                 " << result.report << "\n";
  return 0;
}

int64_t parameter_count(batchcam::models::CamModel& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

int run_models() {
  std::cout << fmt::format("{:<18} {:>14} {:>16}  {}\n", "model", "params 1x28x28", "params 3x224x224",
                           "target layers (* = default at 28 px)");
  for (const auto& name : batchcam::models::model_names()) {
    batchcam::models::ModelSpec small{name, 1, 10, 28, ""};
    batchcam::models::ModelSpec large{name, 3, 1000, 224, ""};
    const auto model = batchcam::models::make_model(small);
    const auto reference = batchcam::models::make_model(large);
    std::string layers;
    for (const auto& l : model->target_layers()) {
      layers += (layers.empty() ? "" : ", ") + l + (l == model->target_layer() ? "*" : "");
    }
    std::cout << fmt::format("{:<18} {:>14} {:>16}  {}\n", name, parameter_count(*model), parameter_count(*reference),
                             layers);
  }
  std::cout << "(28 px: 10 classes and the small-input stems; 224 px: 1000 classes and the reference stems)\n";
  return 0;
}

// A checkpoint and the test split it is evaluated on: `target` is a run directory (its
// last.pt) or a checkpoint file; the dataset is the run's unless overridden.
struct Evaluated {
  batchcam::train::Checkpoint ck;
  batchcam::data::DatasetSplits splits;
  std::string run_dir;  ///< "" when `target` was a checkpoint file
};

Evaluated load_evaluated(const std::string& target, const std::string& dataset, const std::string& data_dir,
                         int64_t test_size, const torch::Device& device) {
  Evaluated e;
  const bool is_dir = std::filesystem::is_directory(target);
  e.run_dir = is_dir ? target : "";
  e.ck = batchcam::train::load_checkpoint(is_dir ? (std::filesystem::path(target) / "last.pt").string() : target,
                                          device);
  auto config = e.ck.config;
  if (!dataset.empty() && dataset != config.dataset) {
    config.dataset = dataset;
    config.data_dir = "";
  }
  if (!data_dir.empty()) config.data_dir = data_dir;
  if (test_size > 0) config.test_size = test_size;  // else the run's own test set
  e.splits = batchcam::train::load_dataset(config);
  const auto& test = e.splits.test;
  const auto& spec = e.ck.spec;
  if (test.channels() != spec.in_channels || test.num_classes() != spec.num_classes || test.height() != spec.image_size) {
    throw std::runtime_error(fmt::format(
        "{}: the model takes {}x{}x{} images of {} classes, dataset '{}' has {}x{}x{} images of {} classes", target,
        spec.in_channels, spec.image_size, spec.image_size, spec.num_classes, config.dataset, test.channels(),
        test.height(), test.width(), test.num_classes()));
  }
  if (!e.ck.prototypes.defined()) {
    e.ck.prototypes = batchcam::losses::image_prototypes(e.splits.train.images, e.splits.train.labels, spec.num_classes);
  }
  return e;
}

struct EvalArgs {
  std::string target, dataset, data_dir, out, device = "auto";
  int64_t test_size = 0, faithfulness_count = 1000, randomization_count = 256;
  bool json = false;
};

int run_eval(const EvalArgs& a) {
  auto e = load_evaluated(a.target, a.dataset, a.data_dir, a.test_size, batchcam::core::resolve_device(a.device));
  batchcam::eval::EvalOptions options;
  options.faithfulness_count = a.faithfulness_count;
  options.randomization_count = a.randomization_count;
  const auto report = batchcam::eval::evaluate_full(*e.ck.model, e.splits.test, e.ck.normalization, e.ck.prototypes,
                                                    options);
  const auto json = batchcam::eval::to_json(report).dump(2) + "\n";
  if (!a.out.empty()) batchcam::train::write_file_atomic(a.out, json);
  std::cout << (a.json ? json : batchcam::eval::format_report(report));
  return 0;
}

struct ExplainArgs {
  std::string checkpoint, dataset, data_dir, out = "explanations", target, device = "auto";
  std::vector<std::string> images;
  int64_t count = 16;
};

int run_explain(const ExplainArgs& a) {
  namespace fs = std::filesystem;
  using batchcam::data::Dataset;
  Evaluated e;
  Dataset inputs;
  std::vector<std::string> sources;
  const auto device = batchcam::core::resolve_device(a.device);
  if (!a.images.empty()) {
    e.ck = batchcam::train::load_checkpoint(a.checkpoint, device);
    const auto& spec = e.ck.spec;
    std::vector<torch::Tensor> pixels;
    for (const auto& file : a.images) {
      const auto image = batchcam::io::read_image(file);
      auto t = torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), {image.height, image.width, image.channels},
                                torch::kUInt8).permute({2, 0, 1}).to(torch::kFloat32).unsqueeze(0);
      if (t.size(1) != spec.in_channels) t = spec.in_channels == 1 ? t.mean(1, true) : t.expand({-1, 3, -1, -1});
      namespace F = torch::nn::functional;
      t = F::interpolate(t, F::InterpolateFuncOptions().size(std::vector<int64_t>{spec.image_size, spec.image_size})
                                .mode(torch::kBilinear).align_corners(false));
      pixels.push_back(t.round().clamp(0, 255).to(torch::kUInt8).squeeze(0));
      sources.push_back(file);
    }
    inputs.images = torch::stack(pixels);
    inputs.labels = torch::full({inputs.images.size(0)}, -1, torch::kInt64);
    inputs.class_names = e.ck.config.dataset == "shapes" ? batchcam::data::shapes_class_names()
                                                         : std::vector<std::string>();
  } else {
    e = load_evaluated(a.checkpoint, a.dataset, a.data_dir, 0, device);
    const int64_t n = std::min<int64_t>(a.count, e.splits.test.size());
    inputs = e.splits.test;
    inputs.images = inputs.images.narrow(0, 0, n);
    inputs.labels = inputs.labels.narrow(0, 0, n);
    for (int64_t i = 0; i < n; ++i) sources.push_back("test:" + std::to_string(i));
  }
  auto& model = *e.ck.model;
  const auto& norm = e.ck.normalization;
  const int64_t k = e.ck.spec.num_classes;
  const auto class_name = [&](int64_t c) {
    return c >= 0 && c < static_cast<int64_t>(inputs.class_names.size()) ? inputs.class_names[static_cast<size_t>(c)]
                                                                         : std::to_string(c);
  };
  // --target: a class index or name; default: the predicted class.
  int64_t fixed_target = -1;
  if (!a.target.empty()) {
    for (int64_t c = 0; c < k; ++c) {
      if (a.target == std::to_string(c) || a.target == class_name(c)) fixed_target = c;
    }
    if (fixed_target < 0) {
      throw std::invalid_argument("--target '" + a.target + "' is not a class of this model (0.." +
                                  std::to_string(k - 1) + " or a class name)");
    }
  }
  model.eval();
  const auto x = norm.apply(inputs.images.to(device));
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    logits = model.forward(x);
  }
  const auto predicted_on_device = logits.argmax(1);
  const auto targets_on_device =
      fixed_target >= 0 ? torch::full_like(predicted_on_device, fixed_target) : predicted_on_device;
  const auto maps = batchcam::cam::grad_cam(model, x, targets_on_device,
                                            batchcam::cam::GradCamOptions().output_size({x.size(2), x.size(3)}))
                        .cam.maps.detach()
                        .cpu();
  const auto probabilities = torch::softmax(logits, 1).cpu();
  const auto predicted = predicted_on_device.cpu();
  const auto targets = targets_on_device.cpu();
  const auto gray = norm.to_unit_gray(x).cpu();
  fs::create_directories(fs::path(a.out) / "images");
  std::string csv = "index,source,label,predicted,target,target_probability,cam_mean,cam_peak_y,cam_peak_x,"
                    "cam_mass_top_decile\n";
  std::map<int64_t, std::vector<torch::Tensor>> by_class;
  for (int64_t i = 0; i < x.size(0); ++i) {
    const auto panels = batchcam::eval::explanation_panels(gray[i], maps[i], 4);
    batchcam::io::write_png((fs::path(a.out) / "images" / fmt::format("{:04d}.png", i)).string(), panels);
    const int64_t t = targets[i].item<int64_t>();
    if (by_class[t].size() < 8) by_class[t].push_back(panels);
    const auto flat = maps[i].flatten();
    const int64_t peak = flat.argmax().item<int64_t>();
    const auto top = std::get<0>(flat.topk(std::max<int64_t>(1, flat.numel() / 10)));
    const double mass = flat.sum().item<double>();
    const int64_t label = inputs.labels[i].item<int64_t>();
    csv += fmt::format("{},\"{}\",{},{},{},{:.6f},{:.6f},{},{},{:.6f}\n", i, sources[static_cast<size_t>(i)],
                       label >= 0 ? class_name(label) : "", class_name(predicted[i].item<int64_t>()), class_name(t),
                       probabilities[i][t].item<double>(), flat.mean().item<double>(), peak / maps.size(2),
                       peak % maps.size(2), mass > 0 ? top.sum().item<double>() / mass : 0.0);
  }
  for (const auto& [c, rows] : by_class) {
    batchcam::io::write_png((fs::path(a.out) / fmt::format("class-{}.png", c)).string(),
                            batchcam::eval::stack_rows(rows));
  }
  batchcam::train::write_file_atomic((fs::path(a.out) / "cam_stats.csv").string(), csv);
  std::cout << "wrote " << x.size(0) << " explanations (image | CAM | overlay | reconstruction) to " << a.out
            << "/images, " << by_class.size() << " class grids and cam_stats.csv\n";
  return 0;
}

int run_report(const std::string& run_dir, const std::string& device) {
  auto e = load_evaluated(run_dir, "", "", 0, batchcam::core::resolve_device(device));
  // The run's configuration and metrics as its checkpoint holds them.
  std::vector<nlohmann::json> history;
  if (!e.ck.progress.empty()) {
    try {
      const auto progress = nlohmann::json::parse(e.ck.progress);
      for (const auto& line : progress.at("history")) history.push_back(line);
    } catch (const nlohmann::json::exception& err) {
      throw std::runtime_error(e.run_dir + "/last.pt: invalid training progress (" + std::string(err.what()) + ")");
    }
  }
  batchcam::eval::write_run_report(run_dir, *e.ck.model, e.splits.test, e.ck.normalization, e.ck.prototypes,
                                   batchcam::train::to_json(e.ck.config), history);
  std::cout << "wrote " << (std::filesystem::path(run_dir) / "report.html").string() << " and eval.json\n";
  return 0;
}

int run_export(const std::string& checkpoint, const std::string& format, const std::string& out) {
  const auto ck = batchcam::train::load_checkpoint(checkpoint);
  if (format == "state-dict") batchcam::train::export_state_dict(*ck.model, out);
  std::cout << "wrote " << out << " (" << format << " of " << ck.spec.name << ")\n";
  return 0;
}

}  // namespace

// What `batchcam env` prints: the runtime a bug report needs.
int run_env() {
  std::cout << fmt::format("batchcam    0.1.0\nLibTorch    {}\nCUDA        {}\nCPU threads {} (what this process may use: "
                           "OMP_NUM_THREADS, else the CPU affinity and the cgroup quota)\n",
                           TORCH_VERSION,
                           torch::cuda::is_available()
                               ? fmt::format("{} device(s)", torch::cuda::device_count())
                               : std::string("not available"),
                           batchcam::core::usable_cpu_count());
  return 0;
}

int main(int argc, char** argv) {
  keep_freed_memory_in_process();
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG and is reported like a
  // full disk, instead of the signal killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"batchcam: train convolutional networks that look at the right evidence (Batch-CAM)", "batchcam"};
  app.option_defaults()->always_capture_default();
  app.set_version_flag("--version", "batchcam 0.1.0");
  app.require_subcommand(0, 1);

  batchcam::train::TrainConfig config;
  auto* train = app.add_subcommand("train", "Train a model (default: SimpleCNN on shapes) and write a run directory");
  std::string config_file;
  train->add_option("--config", config_file,
                    "JSON file of options (the config.json of a run directory repeats that run); flags override it")
      ->check(CLI::ExistingFile);
  std::string resume_dir;
  train->add_option("--resume", resume_dir,
                    "Continue the run in this run directory from its last.pt, with its saved configuration")
      ->check(CLI::ExistingDirectory);
  add_train_options(*train, config);
  bool quiet = false;
  train->add_flag("-q,--quiet", quiet, "Print only the final summary and errors")->group("Output");
  auto* env = app.add_subcommand("env", "Print the versions, CUDA devices and the CPU threads this process may use");
  auto* models = app.add_subcommand("models", "List models, parameter counts and target layers");
  auto* exporter = app.add_subcommand("export", "Export a checkpoint's weights for other tools");
  std::string export_checkpoint, export_format = "state-dict", export_out;
  exporter->add_option("checkpoint", export_checkpoint, "Checkpoint file (a run directory's last.pt or best.pt)")
      ->required()->check(CLI::ExistingFile);
  exporter->add_option("out", export_out, "Output file")->required();
  exporter->add_option("--format", export_format, "state-dict: a dict name -> tensor that Python's torch.load reads")
      ->check(CLI::IsMember({"state-dict"}));

  auto* evaluator = app.add_subcommand("eval", "Evaluate a run or checkpoint: accuracy, reconstruction, faithfulness, sanity check");
  EvalArgs eval_args;
  evaluator->add_option("target", eval_args.target, "Run directory (its last.pt) or checkpoint file")->required()
      ->check(CLI::ExistingPath);
  evaluator->add_option("--dataset", eval_args.dataset, "Evaluate on this dataset instead of the run's (e.g. decoy-mnist)")
      ->check(CLI::IsMember(batchcam::data::dataset_names()));
  evaluator->add_option("--data-dir", eval_args.data_dir, "Directory of the dataset's files");
  evaluator->add_option("--test-size", eval_args.test_size, "First N test images (0 = the run's test set)")
      ->check(CLI::Range(0, 10000000));
  evaluator->add_option("--faithfulness-count", eval_args.faithfulness_count, "Images for deletion/insertion AUC (0 = skip)")
      ->check(CLI::Range(0, 10000000));
  evaluator->add_option("--randomization-count", eval_args.randomization_count,
                        "Images for the parameter-randomisation check (0 = skip)")->check(CLI::Range(0, 100000));
  evaluator->add_flag("--json", eval_args.json, "Print JSON instead of the table");
  evaluator->add_option("--out", eval_args.out, "Also write the JSON to this file");
  evaluator->add_option("--device", eval_args.device, kDeviceHelp);

  auto* explainer = app.add_subcommand("explain", "Write CAM pictures (image, CAM, overlay, reconstruction) and CAM statistics");
  ExplainArgs explain_args;
  explainer->add_option("checkpoint", explain_args.checkpoint, "Run directory (its last.pt) or checkpoint file")
      ->required()->check(CLI::ExistingPath);
  auto* images_opt = explainer->add_option("--images", explain_args.images, "PNG or JPEG files to explain")
      ->check(CLI::ExistingFile);
  explainer->add_option("--dataset", explain_args.dataset, "Explain test images of this dataset (default: the run's)")
      ->excludes(images_opt)
      ->check(CLI::IsMember(batchcam::data::dataset_names()));
  explainer->add_option("--data-dir", explain_args.data_dir, "Directory of the dataset's files")->excludes(images_opt);
  explainer->add_option("--count", explain_args.count, "Number of test images")->check(CLI::Range(1, 100000));
  explainer->add_option("--target", explain_args.target, "Class to explain, index or name (default: the predicted class)");
  explainer->add_option("--out", explain_args.out, "Output directory");
  explainer->add_option("--device", explain_args.device, kDeviceHelp);

  auto* reporter = app.add_subcommand("report", "Evaluate a run and write its report.html (train does this at the end)");
  std::string report_dir;
  reporter->add_option("run_dir", report_dir, "Run directory")->required()->check(CLI::ExistingDirectory);
  std::string report_device = "auto";
  reporter->add_option("--device", report_device, kDeviceHelp);

  auto* bencher = app.add_subcommand("bench", "Measure step overhead, Grad-CAM speed, memory and the data pipeline");
  BenchArgs bench_args;
  bench_args.python_script = std::string(BATCHCAM_SOURCE_DIR) + "/bench/python_step.py";
  bencher->add_option("--models", bench_args.models, "Models to measure")
      ->check(CLI::IsMember(batchcam::models::model_names()));
  bencher->add_option("--repetitions", bench_args.repetitions, "Timed repetitions (interleaved)")->check(CLI::Range(1, 10000));
  bencher->add_option("--warmup", bench_args.warmup, "Untimed repetitions first")->check(CLI::Range(0, 10000));
  bencher->add_option("--threads", bench_args.threads, "CPU threads, 0 = what the process may use")
      ->check(CLI::Range(0, 1024));
  bencher->add_option("--device", bench_args.device, kDeviceHelp);
  bencher->add_option("--precision", bench_args.precision, "Precision of the training steps: fp32, bf16 or fp16")
      ->check(CLI::IsMember(batchcam::core::precision_names()));
  bencher->add_option("--epoch-images", bench_args.epoch_images,
                      "Training images of the epoch timed against its steps (the training loop's own cost)")
      ->check(CLI::Range(0, 10000000));
  bencher->add_flag("--per-sample,!--no-per-sample", bench_args.per_sample, "Also time per-sample Grad-CAM");
  bencher->add_flag("--memory,!--no-memory", bench_args.memory, "Measure peak memory per step (child processes)");
  bencher->add_flag("--compare-python", bench_args.compare_python, "Run the same work in PyTorch (Python) and print the ratios");
  bencher->add_option("--python", bench_args.python, "Python interpreter with torch");
  bencher->add_option("--python-script", bench_args.python_script, "The Python side")->check(CLI::ExistingFile);
  bencher->add_option("--mnist-dir", bench_args.mnist_dir, "Also time one MNIST epoch of SimpleCNN from these IDX files");
  bencher->add_option("--json", bench_args.json_out, "Also write the results as JSON to this file");
  bencher->add_option("--memory-probe", bench_args.probe, "(internal) MODEL ce|batchcam: one step's memory")
      ->expected(2)->group("");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "batchcam: error: " << e.what() << " (see 'batchcam --help')\n";
    return kExitUsage;
  }

  try {
    if (train->parsed() && !resume_dir.empty()) {
      for (const auto* opt : train->get_options()) {
        const auto name = opt->get_name();
        if (opt->count() > 0 && name != "--resume" && name != "--quiet" && name != "--threads" && name != "--device") {
          throw std::invalid_argument("--resume continues a run with its saved configuration; " + name +
                                      " cannot be combined with it (only --threads, --device and --quiet can)");
        }
      }
      const bool device_given = train->get_option("--device")->count() > 0;
      if (train->get_option("--threads")->count() == 0) {
        // The run's own thread count, so that a resumed CPU run ends with the same weights.
        const auto last = (std::filesystem::path(resume_dir) / "last.pt").string();
        if (std::filesystem::exists(last)) config.threads = batchcam::train::load_checkpoint(last).config.threads;
      }
      return run_train(config, resume_dir, device_given ? config.device : "", quiet);
    }
    if (train->parsed()) return run_train(resolve_config(*train, config, config_file), "", "", quiet);
    if (env->parsed()) return run_env();
    if (models->parsed()) return run_models();
    if (evaluator->parsed()) {
      set_threads(0);
      return run_eval(eval_args);
    }
    if (explainer->parsed()) {
      set_threads(0);
      if (std::filesystem::is_directory(explain_args.checkpoint) && !explain_args.images.empty()) {
        explain_args.checkpoint = (std::filesystem::path(explain_args.checkpoint) / "last.pt").string();
      }
      return run_explain(explain_args);
    }
    if (reporter->parsed()) {
      set_threads(0);
      return run_report(report_dir, report_device);
    }
    if (bencher->parsed()) {
      bench_args.threads = set_threads(bench_args.threads);
      return run_bench(bench_args, std::filesystem::read_symlink("/proc/self/exe").string());
    }
    if (exporter->parsed()) return run_export(export_checkpoint, export_format, export_out);
    std::cout << app.help();
    return 0;
  } catch (const std::invalid_argument& e) {
    std::cerr << "batchcam: error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (progress_line_open) std::cerr << "\n";
    std::cerr << "batchcam: error: " << msg.substr(0, msg.find('\n')) << "\n";
    return kExitFailure;
  }
}
