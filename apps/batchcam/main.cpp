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
#include "batchcam/io/file.h"
#include "batchcam/io/image.h"
#include "batchcam/io/png.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/models/torchscript.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/config.h"
#include "batchcam/train/trainer.h"

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <iostream>
#include <string>

namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

// True while a progress bar line is on the terminal without its newline.
bool progress_line_open = false;

// Number checks whose messages say what is expected ("must be > 0, got -1", "must be an
// integer, got 'abc'"): CLI11's own print DBL_MAX in full and call a word "not in range".
CLI::Validator integer_in(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0' || errno != 0) return "must be an integer, got '" + s + "'";
        if (v < lo || v > hi) return fmt::format("must be in [{}, {}], got {}", lo, hi, s);
        s = std::to_string(v);  // decimal for CLI11, which would read "010" as octal
        return "";
      },
      fmt::format("INT in [{}, {}]", lo, hi));
}

CLI::Validator number_check(std::function<bool(double)> ok, const std::string& expected) {
  return CLI::Validator(
      [ok, expected](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0' || !std::isfinite(v)) return "must be a number, got '" + s + "'";
        return ok(v) ? "" : "must be " + expected + ", got " + s;
      },
      "NUMBER " + expected);
}

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
  cmd.add_option("--train-size", c.train_size,
                 "Training images (shapes: generated, 0 = 6000; folder: a stratified random subset, 0 = all; others: "
                 "the first N, 0 = all)")
      ->check(integer_in(0, 10000000))->group("Data");
  cmd.add_option("--test-size", c.test_size, "Test images, as --train-size (shapes: 0 = 1000)")
      ->check(integer_in(0, 10000000))->group("Data");
  cmd.add_option("--val-split", c.val_split,
                 "folder without train/ and test/: the share of each class held out for testing")
      ->check(number_check([](double v) { return v > 0 && v < 1; }, "in (0, 1)"))->group("Data");
  cmd.add_option("--image-size", c.image_size,
                 "Image side in pixels: 0 = the dataset's own (MNIST-type 28, CIFAR-10 32, shapes and folder 28); "
                 "shapes are drawn at it, other images resized to it")
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            const auto error = integer_in(16, 512)(s);
            return s == "0" || error.empty() ? "" : error + " (or 0 for the dataset's own size)";
          },
          "0 or INT in [16, 512]"))
      ->group("Data");
  cmd.add_flag("--spurious,!--no-spurious", c.spurious, "Add a class-coded corner patch in training (shapes)")->group("Data");
  cmd.add_option("--max-image-pixels", c.max_image_pixels,
                 "folder: refuse images whose header claims more pixels (before decoding them)")
      ->check(integer_in(1, int64_t{1} << 36))->group("Data");
  add_enum_option(cmd, "--augment", c.augment,
                  "Training augmentation: none, shift (random shift), shift-flip (+ horizontal flip), crop-jitter-flip "
                  "(folder: random resized crop, colour jitter, horizontal flip)")
      ->group("Data");
  cmd.add_option("--workers", c.workers,
                 "folder: threads decoding the next batch while a step runs (0 = decode in the step's thread)")
      ->check(integer_in(0, 64))->group("Data");

  cmd.add_option("--model", c.model,
                 "Model: a built-in (see 'batchcam models') or torchscript:FILE, a module scripted in Python that "
                 "exports features(x) and head(a) (README)")
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            const auto known = batchcam::models::model_names();
            if (std::find(known.begin(), known.end(), s) != known.end()) return "";
            if (batchcam::models::is_torchscript(s)) {
              const auto file = batchcam::models::torchscript_file(s);
              return std::filesystem::is_regular_file(file) ? "" : "no such TorchScript file: '" + file + "'";
            }
            std::string list;
            for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
            return "must be one of " + list + " or torchscript:FILE, got '" + s + "'";
          },
          "MODEL"))
      ->group("Model");
  cmd.add_option("--target-layer", c.target_layer, "Stage whose output feeds Grad-CAM (default: the last)")->group("Model");
  cmd.add_option("--init-weights", c.init_weights,
                 "Start from a state dict saved by Python's torch.save(dict(model.state_dict())) (torchvision's names for "
                 "resnet18; the classifier is skipped for another class count, RGB conv1 summed for 1 channel)")
      ->check(CLI::ExistingFile)
      ->group("Model");
  cmd.add_flag("--freeze-batchnorm,!--no-freeze-batchnorm", c.freeze_batchnorm,
               "Keep BatchNorm layers in eval mode while training (running statistics fixed; scale and shift train): "
               "fine-tuning with small batches, or data-parallel ranks that match one process exactly")
      ->group("Model");

  cmd.add_option("--epochs", c.epochs, "Training epochs")->check(integer_in(1, 100000))->group("Optimisation");
  cmd.add_option("--batch-size", c.batch_size, "Images per batch (under torchrun: the global batch, split across the ranks)")->check(integer_in(2, 1000000))->group("Optimisation");
  add_enum_option(cmd, "--optimizer", c.optimizer, "Optimiser")->group("Optimisation");
  cmd.add_option("--lr", c.lr, "Peak learning rate")->check(number_check([](double v) { return v > 0; }, "> 0"))->group("Optimisation");
  cmd.add_option("--momentum", c.momentum, "SGD momentum")->check(number_check([](double v) { return v >= 0 && v < 1; }, "in [0, 1)"))->group("Optimisation");
  cmd.add_flag("--nesterov,!--no-nesterov", c.nesterov, "Nesterov momentum (sgd)")->group("Optimisation");
  cmd.add_option("--weight-decay", c.weight_decay, "Weight decay (decoupled for adamw)")->check(number_check([](double v) { return v >= 0 && v <= 1; }, "in [0, 1]"))->group("Optimisation");
  add_enum_option(cmd, "--schedule", c.schedule, "Learning-rate schedule: constant, step, cosine or onecycle")
      ->group("Optimisation");
  cmd.add_option("--warmup-epochs", c.warmup_epochs, "Epochs of linear learning-rate warm-up")
      ->check(integer_in(0, 100000))->group("Optimisation");
  cmd.add_option("--step-size", c.step_size, "Step schedule: epochs between decays")->check(integer_in(1, 100000))->group("Optimisation");
  cmd.add_option("--gamma", c.gamma, "Step schedule: decay factor")->check(number_check([](double v) { return v > 0 && v <= 1; }, "in (0, 1]"))->group("Optimisation");
  cmd.add_option("--grad-clip", c.grad_clip, "Clip the global gradient norm to this (0 = off)")
      ->check(number_check([](double v) { return v >= 0; }, ">= 0"))->group("Optimisation");
  cmd.add_option("--label-smoothing", c.label_smoothing, "Label smoothing of the cross-entropy")
      ->check(number_check([](double v) { return v >= 0 && v < 1; }, "in [0, 1)"))->group("Optimisation");
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
      ->check(integer_in(0, 1024))->group("Device");
  cmd.add_option("--device", c.device, kDeviceHelp)->group("Device");
  add_enum_option(cmd, "--precision", c.precision,
                  "Forward pass precision: fp32, bf16 (autocast; CPU or CUDA) or fp16 (autocast with loss scaling; CUDA)")
      ->group("Device");
  cmd.add_option("--max-skipped-steps", c.max_skipped_steps,
                 "fp16: steps in a row with non-finite gradients (skipped) that stop the run")
      ->check(integer_in(1, 1000000))->group("Device");

  cmd.add_option("--lambda-proto", c.lambda_proto, "Weight of the Prototype Loss")->check(number_check([](double v) { return v >= 0; }, ">= 0"))->group("Batch-CAM");
  cmd.add_option("--lambda-batch", c.lambda_batch, "Weight of the Batch-CAM Loss")->check(number_check([](double v) { return v >= 0; }, ">= 0"))->group("Batch-CAM");
  cmd.add_option("--lambda-rrr", c.lambda_rrr,
                 "Weight of RRR: squared input gradients of the log-probabilities inside the dataset's annotation "
                 "masks (decoy-mnist, decoy-fashion, shapes --spurious)")
      ->check(number_check([](double v) { return v >= 0; }, ">= 0"))->group("Spurious features");
  cmd.add_option("--lambda-proto-rrr", c.lambda_proto_rrr,
                 "Weight of Prototype RRR: the same input gradients weighted by 1 - the class prototype; no annotations")
      ->check(number_check([](double v) { return v >= 0; }, ">= 0"))->group("Spurious features");
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
  add_enum_option(cmd, "--cam-method", c.cam_method,
                  "The maps the CAM losses compare and evaluation shows: grad-cam (the paper's; the presets in "
                  "configs/ keep it), grad-cam++, xgrad-cam, hirescam, layercam (the default: "
                  "docs/results-cam-methods.md), or cam (closed form, no gradient call; heads of global average "
                  "pooling and one linear layer, where it equals grad-cam)")
      ->group("Batch-CAM");
  cmd.add_option("--cam-warmup-epochs", c.cam_warmup_epochs, "Epochs of CE only before the CAM losses start")
      ->check(integer_in(0, 100000))->group("Batch-CAM");

  cmd.add_option("--out-dir", c.out_dir, "Directory for run directories")->group("Output");
  cmd.add_option("--run-name", c.run_name, "Run directory name (default: <dataset>-<model>-<time>)")->group("Output");
  cmd.add_option("--log-every", c.log_every,
                 "Steps between reads of the running loss from the device (progress and the non-finite check)")
      ->check(integer_in(1, 1000000))->group("Output");
  cmd.add_flag("--report,!--no-report", c.report,
               "After the last epoch, evaluate fully and write eval.json, pictures and report.html "
               "(--no-report: later with 'batchcam report RUN')")
      ->group("Output");
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

// The terminal's width in columns: asked of the terminal, else COLUMNS, else 80.
int terminal_columns() {
  winsize size{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  if (const char* columns = std::getenv("COLUMNS")) {
    const int n = std::atoi(columns);
    if (n > 0) return n;
  }
  return 80;
}

// "loss 0.4321 (ce 0.401 proto 0.031)": the loss and the terms that are on.
std::string loss_text(const batchcam::train::StepInfo& s) {
  if (s.lambda_proto <= 0 && s.lambda_batch <= 0 && s.lambda_rrr <= 0 && s.lambda_proto_rrr <= 0) {
    return fmt::format("loss {:.4f}", s.loss);
  }
  std::string terms = fmt::format("ce {:.3f}", s.ce);
  if (s.lambda_proto > 0) terms += fmt::format(" proto {:.3f}", s.proto);
  if (s.lambda_batch > 0) terms += fmt::format(" batch {:.3f}", s.batch);
  if (s.lambda_rrr > 0) terms += fmt::format(" rrr {:.3g}", s.rrr);
  if (s.lambda_proto_rrr > 0) terms += fmt::format(" proto-rrr {:.3g}", s.proto_rrr);
  return fmt::format("loss {:.4f} ({})", s.loss, terms);
}

// One progress line shorter than `columns`, so that it never wraps: the bar shrinks to fit,
// and what still does not fit is left out: the speed first, then the loss terms.
std::string progress_line(const batchcam::train::StepInfo& s, int columns) {
  const std::string head = fmt::format("epoch {}/{}", s.epoch, s.epochs);
  const std::string count = fmt::format("{}/{}", s.step, s.steps);
  const std::string speed = fmt::format(" {:.0f} img/s", s.images_per_second);
  const std::string eta = " ETA " + clock_text(s.eta_seconds);
  const std::string loss_short = fmt::format("loss {:.4f}", s.loss);
  const int room = columns - 1;
  for (const auto& tail : {" " + loss_text(s) + speed + eta, " " + loss_text(s) + eta, " " + loss_short + eta}) {
    const int bar = std::min<int>(30, room - static_cast<int>(head.size() + count.size() + tail.size()) - 4);
    if (bar >= 8) {
      const int filled = static_cast<int>(bar * s.step / std::max<int64_t>(s.steps, 1));
      return head + " [" + std::string(filled, '#') + std::string(bar - filled, '.') + "] " + count + tail;
    }
  }
  return (head + " " + count + " " + loss_short + eta).substr(0, static_cast<size_t>(std::max(room, 1)));
}

struct Progress {
  bool quiet = false;
  bool tty = ::isatty(STDERR_FILENO) != 0;

  void step(const batchcam::train::StepInfo& s) const {
    if (quiet) return;
    const bool last = s.step == s.steps;
    if (tty) {
      // In place: back to the line's start and clear it, then a line that fits.
      std::fprintf(stderr, "\r\033[K%s", progress_line(s, terminal_columns()).c_str());
      if (last) std::fprintf(stderr, "\n");
      std::fflush(stderr);
      progress_line_open = !last;
    } else if (!last && s.step % std::max<int64_t>(s.steps / 4, 1) == 0) {
      // Not a terminal (a log file, CI): a plain line each quarter of an epoch.
      spdlog::info("epoch {}/{} step {}/{}: {}, {:.0f} img/s, ETA {}", s.epoch, s.epochs, s.step, s.steps,
                   loss_text(s), s.images_per_second, clock_text(s.eta_seconds));
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

// SIGINT/SIGTERM ask the trainer to save a checkpoint and stop; a second signal kills, except
// under torchrun: Ctrl-C reaches every rank and torchrun, which passes the signal on to each
// rank again and kills them 30 s later; the ranks use that time to stop together and save.
volatile std::sig_atomic_t stop_signal = 0;
extern "C" void on_stop_signal(int sig) {
  if (stop_signal == 0) stop_signal = sig;
}

void install_stop_handlers(bool second_signal_kills) {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  action.sa_flags = second_signal_kills ? SA_RESETHAND : 0;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

// How `batchcam train` joins the other processes of a torchrun launch.
struct LaunchArgs {
  std::string backend = "auto";
  int64_t timeout_seconds = 300;
};

// Under torchrun: this process's rank, named in its errors (so that each line says whose it is).
int64_t error_rank = -1;

std::string error_text(const std::string& message) {
  if (error_rank < 0 || message.find("rank " + std::to_string(error_rank)) != std::string::npos) return message;
  return fmt::format("rank {}: {}", error_rank, message);
}

// Under torchrun each process trains on the GPU of its LOCAL_RANK: "auto" (with CUDA),
// "cuda" and "cuda:N" (a resumed run records rank 0's) name it.
std::string per_rank_device(const std::string& device, int64_t local_rank) {
  const bool cuda = device.rfind("cuda", 0) == 0 || (device == "auto" && torch::cuda::is_available());
  if (cuda) return "cuda:" + std::to_string(local_rank);
  return device == "auto" ? "cpu" : device;
}

// Runs a fresh training (`resume_dir` empty) or continues the run in `resume_dir` with
// `resume_options` (another device, more epochs). Under torchrun (WORLD_SIZE > 1 in the
// environment) the process joins the others first, and only rank 0 logs and writes.
int run_train(batchcam::train::TrainConfig config, const std::string& resume_dir,
              batchcam::train::ResumeOptions resume_options, bool quiet, const LaunchArgs& launch_args) {
  const auto started = std::chrono::steady_clock::now();
  const auto seconds_since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  const auto launch = batchcam::core::launch_info([](const char* name) { return std::getenv(name); });
  std::shared_ptr<batchcam::core::ProcessGroup> group;
  if (launch.distributed()) {
    error_rank = launch.rank;
    if (launch_args.backend == "nccl") {
      throw std::invalid_argument(
          "--backend nccl: this batchcam has no NCCL process group yet; use gloo (tensors on a GPU are reduced "
          "through the CPU)");
    }
    if (!batchcam::core::distributed_available()) {
      throw std::runtime_error("WORLD_SIZE=" + std::to_string(launch.world_size) +
                               ": this batchcam was built without c10d's Gloo (install libgloo-dev and rebuild)");
    }
    if (resume_dir.empty()) {
      config.device = per_rank_device(config.device, launch.local_rank);
    } else {
      const auto saved = resume_options.device.empty()
                             ? batchcam::train::load_checkpoint((std::filesystem::path(resume_dir) / "last.pt").string())
                                   .config.device
                             : resume_options.device;
      resume_options.device = per_rank_device(saved, launch.local_rank);
    }
    group = std::make_shared<batchcam::core::ProcessGroup>(launch, std::chrono::seconds(launch_args.timeout_seconds));
    if (launch.rank != 0) quiet = true;  // rank 0 speaks for the run
    resume_options.group = group;
  }
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
    if (quiet) return;
    spdlog::info("run directory: {} ({} CPU thread{}{})", dir, threads, threads == 1 ? "" : "s",
                 group ? fmt::format(" per process, {} processes over Gloo", group->size()) : "");
  };
  callbacks.on_notice = [&](const std::string& message) {
    if (!quiet) spdlog::info("{}", message);
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
      if (!group || group->rank() == 0) {
        std::cerr << "batchcam: stopped before the final evaluation and report; write them with: batchcam train "
                     "--resume "
                  << run_dir << "\n";
      }
      std::raise(static_cast<int>(stop_signal));
    }
  };
  callbacks.on_final_phase = [&](const std::string& what) {
    if (!quiet) spdlog::info("final outputs: {} ...", what);
  };
  install_stop_handlers(/*second_signal_kills=*/std::getenv("TORCHELASTIC_RUN_ID") == nullptr);
  const auto result = resume_dir.empty() ? batchcam::train::train(config, callbacks, group)
                                         : batchcam::train::resume(resume_dir, callbacks, resume_options);
  const bool writer = !group || group->rank() == 0;
  if (result.interrupted) {
    // A rank that was not signalled stopped because another was: it exits as if terminated.
    const int signal = stop_signal != 0 ? static_cast<int>(stop_signal) : SIGTERM;
    if (!writer) return 128 + signal;
    if (progress_line_open) std::cerr << "\n";
    const std::string why = stop_signal == 0         ? "stopped (another rank was interrupted)"
                            : stop_signal == SIGTERM ? "terminated"
                                                     : "interrupted";
    std::cerr << fmt::format("batchcam: {} at epoch {}, step {}: saved {}; continue with: batchcam train --resume {}{}\n",
                             why, result.stopped_epoch, result.stopped_step, result.checkpoint, result.run_dir,
                             group ? " (under torchrun, on any number of processes)" : "");
    return 128 + signal;
  }
  if (!writer) return 0;
  const auto& last = result.history.back();
  std::cout << "\nTrained " << result.config.model << " on " << result.config.dataset << " for " << last.epoch
            << " epochs on " << result.device << ".\n"
            << "  training time          " << fmt::format("{:.1f} s", result.train_seconds)
            << (resume_dir.empty() ? "" : " (all epochs of the run)") << "\n"
            << "  total time             " << fmt::format("{:.1f} s", seconds_since_start())
            << (resume_dir.empty() ? " (data, training, evaluation, report)" : " (this command)") << "\n"
            << "  test accuracy          " << fmt::format("{:.2f}%", 100 * last.test.accuracy) << "\n"
            << "  CAM-prototype SSIM     " << fmt::format("{:.3f}", last.test.proto_ssim) << "\n"
            << "  run directory          " << result.run_dir << "\n"
            << "  checkpoints            " << result.checkpoint << ", " << result.best_checkpoint << "\n"
            << "  report                 "
            << (result.report.empty() ? "not written (--no-report); write it with: batchcam report " + result.checkpoint
                                      : result.report)
            << "\n";
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

// The checkpoint that eval, explain, report and export use for RUN_OR_CHECKPOINT: a file
// as it is; for a run directory its best.pt (last.pt while it has none), said on stderr.
std::string checkpoint_of(const std::string& run_or_checkpoint) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(run_or_checkpoint)) return run_or_checkpoint;
  const auto best = (fs::path(run_or_checkpoint) / "best.pt").string();
  const auto last = (fs::path(run_or_checkpoint) / "last.pt").string();
  if (fs::exists(best)) {
    spdlog::info("using {} (the epoch with the best test accuracy; name last.pt for the latest)", best);
    return best;
  }
  if (fs::exists(last)) {
    spdlog::info("using {} (the run has no best.pt yet)", last);
    return last;
  }
  throw std::runtime_error(run_or_checkpoint + ": neither best.pt nor last.pt in this directory (not a run directory?)");
}

// A checkpoint and the test split it is evaluated on: `target` is a run directory or a
// checkpoint file (checkpoint_of); the dataset is the run's unless overridden.
struct Evaluated {
  std::string checkpoint;  ///< the file loaded
  batchcam::train::Checkpoint ck;
  batchcam::data::DatasetSplits splits;
};

Evaluated load_evaluated(const std::string& target, const std::string& dataset, const std::string& data_dir,
                         int64_t test_size, const torch::Device& device) {
  Evaluated e;
  e.checkpoint = checkpoint_of(target);
  e.ck = batchcam::train::load_checkpoint(e.checkpoint, device);
  auto config = e.ck.config;
  if (!dataset.empty() && dataset != config.dataset) {
    config.dataset = dataset;
    config.data_dir = "";
  }
  if (!data_dir.empty()) config.data_dir = data_dir;
  if (test_size > 0) config.test_size = test_size;  // else the run's own test set
  e.splits = batchcam::train::load_dataset(config);
  const auto& spec = e.ck.spec;
  for (auto* split : {&e.splits.train, &e.splits.test}) {
    // A folder's images are decoded with the model's channel count (a subset of gray files
    // of a colour folder would otherwise look like another kind of data).
    const auto* f = dynamic_cast<const batchcam::data::ImageFiles*>(split->files.get());
    if (f && f->channels() != spec.in_channels) {
      split->files = std::make_shared<const batchcam::data::ImageFiles>(f->paths(), f->side(), spec.in_channels,
                                                                        config.max_image_pixels, f->workers());
    }
  }
  const auto& test = e.splits.test;
  if (test.channels() != spec.in_channels || test.num_classes() != spec.num_classes || test.height() != spec.image_size) {
    throw std::runtime_error(fmt::format(
        "{}: the model takes {}x{}x{} images of {} classes, dataset '{}' has {}x{}x{} images of {} classes", target,
        spec.in_channels, spec.image_size, spec.image_size, spec.num_classes, config.dataset, test.channels(),
        test.height(), test.width(), test.num_classes()));
  }
  if (!e.ck.prototypes.defined()) {
    e.ck.prototypes = batchcam::losses::image_prototypes(e.splits.train);
  }
  return e;
}

struct EvalArgs {
  std::string target, dataset, data_dir, out, device = "auto", method;  ///< method "": the run's
  int64_t test_size = 0, faithfulness_count = 1000, randomization_count = 256;
  bool json = false, no_road = false;
};

int run_eval(const EvalArgs& a) {
  const auto device = batchcam::core::resolve_device(a.device);
  auto e = load_evaluated(a.target, a.dataset, a.data_dir, a.test_size, device);
  batchcam::eval::EvalOptions options;
  options.method = a.method.empty() ? e.ck.config.cam_method : batchcam::cam::parse_cam_method(a.method);
  options.faithfulness_count = a.faithfulness_count;
  options.randomization_count = a.randomization_count;
  if (a.no_road) options.road_fractions.clear();
  const auto report = batchcam::eval::evaluate_full(*e.ck.model, e.splits.test, e.ck.normalization, e.ck.prototypes,
                                                    options);
  auto j = batchcam::eval::to_json(report);
  const auto origin = batchcam::eval::evaluation_origin(e.checkpoint, e.ck.epoch, device);
  for (const auto& [key, value] : origin.items()) j[key] = value;
  const auto json = j.dump(2) + "\n";
  if (!a.out.empty()) batchcam::io::write_file_atomic(a.out, json);
  if (a.json) {
    std::cout << json;
  } else {
    std::cout << "Checkpoint " << e.checkpoint << " (epoch " << e.ck.epoch << ")\n"
              << batchcam::eval::format_report(report);
  }
  return 0;
}

struct ExplainArgs {
  std::string checkpoint, dataset, data_dir, out = "explanations", target, device = "auto", method;  ///< "": the run's
  std::vector<std::string> images;
  int64_t count = 16;
};

int run_explain(const ExplainArgs& a) {
  Evaluated e;
  batchcam::data::Dataset inputs;
  const auto device = batchcam::core::resolve_device(a.device);
  if (!a.images.empty()) {
    e.checkpoint = checkpoint_of(a.checkpoint);
    e.ck = batchcam::train::load_checkpoint(e.checkpoint, device);
    const auto& spec = e.ck.spec;
    // The checkpoint's class names (runs of batchcam 0.1 have none: shapes' are known).
    auto names = !spec.class_names.empty()             ? spec.class_names
                 : e.ck.config.dataset == "shapes" ? batchcam::data::shapes_class_names()
                                                   : std::vector<std::string>();
    inputs = batchcam::data::unlabelled_images(a.images, spec.image_size, spec.in_channels,
                                               e.ck.config.max_image_pixels, std::move(names));
  } else {
    e = load_evaluated(a.checkpoint, a.dataset, a.data_dir, 0, device);
    inputs = e.splits.test.first(a.count);
  }
  batchcam::eval::ExplainOptions options;
  options.method = a.method.empty() ? e.ck.config.cam_method : batchcam::cam::parse_cam_method(a.method);
  // --target: a class index or name; default: the predicted class.
  const int64_t k = e.ck.spec.num_classes;
  if (!a.target.empty()) {
    for (int64_t c = 0; c < k; ++c) {
      const bool named = c < inputs.num_classes() && inputs.class_names[static_cast<size_t>(c)] == a.target;
      if (a.target == std::to_string(c) || named) options.target = c;
    }
    if (options.target < 0) {
      throw std::invalid_argument("--target '" + a.target + "' is not a class of this model (0.." +
                                  std::to_string(k - 1) + " or a class name)");
    }
  }
  const auto samples = batchcam::eval::write_explanations(a.out, *e.ck.model, inputs, e.ck.normalization, options);
  std::set<int64_t> classes;
  for (const auto& s : samples) classes.insert(s.target);
  std::cout << "wrote " << samples.size() << " explanations (" << batchcam::cam::to_string(options.method)
            << ": image | CAM | overlay | reconstruction) to " << a.out << "/images, " << classes.size()
            << " class grids and cam_stats.csv\n";
  return 0;
}

// report.html, eval.json, prototypes.png and samples.png for a run directory (its best.pt)
// or one of its checkpoints, written into the run directory, with the maps of `method_name`
// ("": the run's); the training curves come from the run's last.pt.
int run_report(const std::string& run_or_checkpoint, const std::string& device_name, const std::string& method_name) {
  namespace fs = std::filesystem;
  const auto device = batchcam::core::resolve_device(device_name);
  auto e = load_evaluated(run_or_checkpoint, "", "", 0, device);
  const auto method = method_name.empty() ? e.ck.config.cam_method : batchcam::cam::parse_cam_method(method_name);
  const auto run_dir = fs::path(e.checkpoint).parent_path().string();
  const auto last = (fs::path(run_dir) / "last.pt").string();
  const auto progress_source = fs::exists(last) && e.checkpoint != last ? last : e.checkpoint;
  const auto progress_text =
      progress_source == e.checkpoint ? e.ck.progress : batchcam::train::load_checkpoint(progress_source).progress;
  std::vector<nlohmann::json> history;
  if (!progress_text.empty()) {
    try {
      const auto progress = nlohmann::json::parse(progress_text);
      for (const auto& line : progress.at("history")) history.push_back(line);
    } catch (const nlohmann::json::exception& err) {
      throw std::runtime_error(progress_source + ": invalid training progress (" + std::string(err.what()) + ")");
    }
  }
  const auto out_dir = fs::path(run_dir.empty() ? "." : run_dir);
  spdlog::info("pictures (prototypes.png, samples.png) ...");
  batchcam::io::write_png((out_dir / "prototypes.png").string(), batchcam::eval::prototype_strip(e.ck.prototypes.cpu()));
  batchcam::io::write_png((out_dir / "samples.png").string(),
                          batchcam::eval::cam_examples(*e.ck.model, e.splits.test, e.ck.normalization, 0, method));
  batchcam::eval::EvalOptions options;
  options.method = method;
  options.on_phase = [](const std::string& what) { spdlog::info("{} ...", what); };
  batchcam::eval::write_run_report(out_dir.string(), *e.ck.model, e.splits.test, e.ck.normalization,
                                   e.ck.prototypes, batchcam::train::to_json(e.ck.config), history,
                                   batchcam::eval::evaluation_origin(e.checkpoint, e.ck.epoch, device), options);
  std::cout << "wrote " << (out_dir / "report.html").string() << ", eval.json and the pictures of " << e.checkpoint
            << "\n";
  return 0;
}

// What a program needs besides the weights to use an exported model: architecture, input
// size and normalisation, class names, where it came from.
nlohmann::json export_metadata(const batchcam::train::Checkpoint& ck, const std::string& checkpoint,
                               const std::string& format) {
  const auto& spec = ck.spec;
  auto j = batchcam::eval::evaluation_origin(checkpoint, ck.epoch, torch::kCPU);
  j.update(nlohmann::json{{"format", format},
          {"model", spec.name},
          {"in_channels", spec.in_channels},
          {"image_size", spec.image_size},
          {"small_input_stem", spec.image_size <= batchcam::models::kSmallInputMax},
          {"num_classes", spec.num_classes},
          {"class_names", spec.class_names},
          {"target_layer", ck.model->target_layer()},
          {"normalization",
           {{"mean", ck.normalization.mean},
            {"std", ck.normalization.std},
            {"input", "x = (pixel / 255 - mean) / std, per channel, on [C, image_size, image_size] images"}}}});
  return j;
}

int run_export(const std::string& run_or_checkpoint, const std::string& format, const std::string& out) {
  if (std::filesystem::path(out).extension() == ".json") {
    throw std::invalid_argument("export: OUT must not end in .json (the metadata goes beside it, as OUT with .json)");
  }
  const auto checkpoint = checkpoint_of(run_or_checkpoint);
  const auto ck = batchcam::train::load_checkpoint(checkpoint);
  const auto* scripted = dynamic_cast<const batchcam::models::TorchScriptModel*>(ck.model.get());
  if (format == "state-dict" && scripted != nullptr) {
    throw std::invalid_argument("--format state-dict: " + checkpoint + " holds a TorchScript model; export it with "
                                "--format torchscript (its parameter names are the module's own there)");
  }
  if (format == "state-dict") batchcam::train::export_state_dict(*ck.model, out);
  if (format == "torchscript") {
    if (scripted == nullptr) {
      throw std::invalid_argument("--format torchscript: " + checkpoint + " holds the built-in model " + ck.spec.name +
                                  ", which LibTorch cannot script; export it as state-dict");
    }
    batchcam::io::write_file_atomic(out, scripted->save_bytes());
  }
  const auto metadata = std::filesystem::path(out).replace_extension(".json").string();
  batchcam::io::write_file_atomic(metadata, export_metadata(ck, checkpoint, format).dump(2) + "\n");
  std::cout << "wrote " << out << " (" << format << " of " << ck.spec.name << ", " << checkpoint << ") and "
            << metadata << " (input size, normalisation, class names)\n";
  return 0;
}

}  // namespace

// "0.2.0 (commit 1234abcd5678)" or "0.2.0" when not built from a git checkout.
std::string version_text() {
  const auto commit = batchcam::core::git_commit();
  return batchcam::core::version() + (commit.empty() ? "" : " (commit " + commit + ")");
}

// What `batchcam env` prints: the runtime a bug report needs.
int run_env() {
  std::cout << fmt::format("batchcam    {}\nLibTorch    {}\nCUDA        {}\nCPU threads {} (what this process may use: "
                           "OMP_NUM_THREADS, else the CPU affinity and the cgroup quota)\n",
                           version_text(), TORCH_VERSION,
                           torch::cuda::is_available()
                               ? fmt::format("{} device(s)", torch::cuda::device_count())
                               : std::string("not available"),
                           batchcam::core::usable_cpu_count());
  return 0;
}

// Edit distance of two words (insertions, deletions, substitutions), for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The closest of `known` to `word` when it is close enough to be a typo, else "".
std::string closest(const std::string& word, const std::vector<std::string>& known) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& k : known) {
    const size_t d = edit_distance(word, k);
    if (d < best_distance) best = k, best_distance = d;
  }
  return best;
}

// " (did you mean 'train'?)" for the first word of the command line that is neither a
// subcommand nor an option of the subcommand it follows; "" when none is close.
std::string suggestion(CLI::App& app, int argc, char** argv) {
  std::vector<std::string> commands;
  for (const auto* sub : app.get_subcommands({})) commands.push_back(sub->get_name());
  CLI::App* current = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (current == nullptr && arg.rfind("-", 0) != 0) {
      if (std::find(commands.begin(), commands.end(), arg) != commands.end()) {
        current = app.get_subcommand(arg);
        continue;
      }
      const auto guess = closest(arg, commands);
      return guess.empty() ? "" : " (did you mean '" + guess + "'?)";
    }
    if (arg.rfind("--", 0) != 0 || arg.size() < 3) continue;
    const auto name = arg.substr(2, arg.find('=') == std::string::npos ? std::string::npos : arg.find('=') - 2);
    std::vector<std::string> options;
    for (const auto* opt : (current ? current : &app)->get_options()) {
      for (const auto& l : opt->get_lnames()) options.push_back(l);
      for (const auto& f : opt->get_fnames()) options.push_back(f);
    }
    if (std::find(options.begin(), options.end(), name) != options.end()) continue;
    const auto guess = closest(name, options);
    return guess.empty() ? "" : " (did you mean '--" + guess + "'?)";
  }
  return "";
}

int main(int argc, char** argv) {
  keep_freed_memory_in_process();
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG and is reported like a
  // full disk, instead of the signal killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  // Logs and progress go to stderr; stdout holds the results (summaries, tables, JSON).
  spdlog::set_default_logger(
      std::make_shared<spdlog::logger>("", std::make_shared<spdlog::sinks::stderr_color_sink_mt>()));
  CLI::App app{"batchcam: train convolutional networks that look at the right evidence (Batch-CAM)", "batchcam"};
  app.option_defaults()->always_capture_default();
  // A repeated option: the last one given wins (as in most command-line tools).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", "batchcam " + version_text());
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
  LaunchArgs launch_args;
  train->add_option("--backend", launch_args.backend,
                    "Under torchrun: the c10d backend (auto = gloo; nccl is not built yet)")
      ->check(CLI::IsMember({"auto", "gloo", "nccl"}))
      ->group("Distributed (torchrun)");
  train->add_option("--dist-timeout", launch_args.timeout_seconds,
                    "Under torchrun: seconds a collective waits for the other ranks before every rank stops with "
                    "an error (a rank that died or hangs)")
      ->check(integer_in(1, 86400))
      ->group("Distributed (torchrun)");
  auto* env = app.add_subcommand("env", "Print the versions, CUDA devices and the CPU threads this process may use");
  auto* models = app.add_subcommand("models", "List models, parameter counts and target layers");
  const std::string run_or_checkpoint_help =
      "Run directory (its best.pt, or last.pt while it has none) or checkpoint file";
  auto* exporter = app.add_subcommand("export", "Export a checkpoint's weights for other tools");
  std::string export_checkpoint, export_format = "state-dict", export_out;
  exporter->add_option("RUN_OR_CHECKPOINT", export_checkpoint, run_or_checkpoint_help)
      ->required()->check(CLI::ExistingPath);
  exporter->add_option("out", export_out, "Output file")->required();
  exporter->add_option("--format", export_format,
                       "state-dict: a dict name -> tensor that Python's torch.load reads; torchscript (a "
                       "torchscript:FILE model): the trained module, for Python's torch.jit.load")
      ->check(CLI::IsMember({"state-dict", "torchscript"}));

  auto* evaluator = app.add_subcommand("eval", "Evaluate a run or checkpoint: accuracy, reconstruction, faithfulness, sanity check");
  EvalArgs eval_args;
  evaluator->add_option("RUN_OR_CHECKPOINT", eval_args.target, run_or_checkpoint_help)->required()
      ->check(CLI::ExistingPath);
  evaluator->add_option("--dataset", eval_args.dataset, "Evaluate on this dataset instead of the run's (e.g. decoy-mnist)")
      ->check(CLI::IsMember(batchcam::data::dataset_names()));
  evaluator->add_option("--data-dir", eval_args.data_dir, "Directory of the dataset's files");
  evaluator->add_option("--test-size", eval_args.test_size, "First N test images (0 = the run's test set)")
      ->check(integer_in(0, 10000000));
  evaluator->add_option("--faithfulness-count", eval_args.faithfulness_count,
                        "Images for deletion/insertion, ROAD and the confidence change (0 = skip)")
      ->check(integer_in(0, 10000000));
  evaluator->add_flag("--no-road", eval_args.no_road, "Skip ROAD (18 imputations and forward passes per image)");
  evaluator->add_option("--randomization-count", eval_args.randomization_count,
                        "Images for the parameter-randomisation check (0 = skip)")->check(integer_in(0, 100000));
  evaluator->add_flag("--json", eval_args.json, "Print JSON instead of the table");
  evaluator->add_option("--out", eval_args.out, "Also write the JSON to this file");
  evaluator->add_option("--device", eval_args.device, kDeviceHelp);
  evaluator->add_option("--method", eval_args.method, "CAM method of every CAM metric (default: the run's --cam-method)")
      ->check(CLI::IsMember(batchcam::cam::cam_method_names()));

  auto* explainer = app.add_subcommand("explain", "Write CAM pictures (image, CAM, overlay, reconstruction) and CAM statistics");
  ExplainArgs explain_args;
  explainer->add_option("RUN_OR_CHECKPOINT", explain_args.checkpoint, run_or_checkpoint_help)
      ->required()->check(CLI::ExistingPath);
  auto* images_opt = explainer->add_option("--images", explain_args.images, "PNG or JPEG files to explain")
      ->check(CLI::ExistingFile)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  explainer->add_option("--dataset", explain_args.dataset, "Explain test images of this dataset (default: the run's)")
      ->excludes(images_opt)
      ->check(CLI::IsMember(batchcam::data::dataset_names()));
  explainer->add_option("--data-dir", explain_args.data_dir, "Directory of the dataset's files")->excludes(images_opt);
  explainer->add_option("--count", explain_args.count, "Number of test images")->check(integer_in(1, 100000));
  explainer->add_option("--target", explain_args.target, "Class to explain, index or name (default: the predicted class)");
  explainer->add_option("--out", explain_args.out, "Output directory");
  explainer->add_option("--device", explain_args.device, kDeviceHelp);
  explainer->add_option("--method", explain_args.method, "CAM method (default: the run's --cam-method)")
      ->check(CLI::IsMember(batchcam::cam::cam_method_names()));

  auto* reporter = app.add_subcommand("report", "Evaluate a run and write its report.html (train does this at the end)");
  std::string report_dir;
  reporter->add_option("RUN_OR_CHECKPOINT", report_dir,
                       run_or_checkpoint_help + "; eval.json and report.html go to its run directory")
      ->required()->check(CLI::ExistingPath);
  std::string report_device = "auto", report_method;
  reporter->add_option("--device", report_device, kDeviceHelp);
  reporter->add_option("--method", report_method, "CAM method of the metrics and pictures (default: the run's --cam-method)")
      ->check(CLI::IsMember(batchcam::cam::cam_method_names()));

  auto* bencher = app.add_subcommand("bench", "Measure step overhead, Grad-CAM speed, memory and the data pipeline");
  BenchArgs bench_args;
  bench_args.python_script = std::string(BATCHCAM_SOURCE_DIR) + "/bench/python_step.py";
  bencher->add_option("--models", bench_args.models, "Models to measure")
      ->check(CLI::IsMember(batchcam::models::model_names()))->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  bencher->add_option("--repetitions", bench_args.repetitions, "Timed repetitions (interleaved)")->check(integer_in(1, 10000));
  bencher->add_option("--warmup", bench_args.warmup, "Untimed repetitions first")->check(integer_in(0, 10000));
  bencher->add_option("--threads", bench_args.threads, "CPU threads, 0 = what the process may use")
      ->check(integer_in(0, 1024));
  bencher->add_option("--device", bench_args.device, kDeviceHelp);
  bencher->add_option("--precision", bench_args.precision, "Precision of the training steps: fp32, bf16 or fp16")
      ->check(CLI::IsMember(batchcam::core::precision_names()));
  bencher->add_option("--epoch-images", bench_args.epoch_images,
                      "Training images of the epoch timed against its steps (the training loop's own cost)")
      ->check(integer_in(0, 10000000));
  bencher->add_option("--folder-images", bench_args.folder_images,
                      "PNG files of the image-folder pipeline at 224 px (0 = skip)")
      ->check(integer_in(0, 1000000));
  bencher->add_flag("--per-sample,!--no-per-sample", bench_args.per_sample, "Also time per-sample Grad-CAM");
  bencher->add_flag("--memory,!--no-memory", bench_args.memory, "Measure peak memory per step (child processes)");
  bencher->add_flag("--compare-python", bench_args.compare_python, "Run the same work in PyTorch (Python) and print the ratios");
  bencher->add_option("--python", bench_args.python, "Python interpreter with torch");
  bencher->add_option("--python-script", bench_args.python_script, "The Python side")->check(CLI::ExistingFile);
  bencher->add_option("--mnist-dir", bench_args.mnist_dir, "Also time one MNIST epoch of SimpleCNN from these IDX files");
  bencher->add_option("--json", bench_args.json_out, "Also write the results as JSON to this file");
  bencher->add_flag("--cam-methods,!--no-cam-methods", bench_args.cam_methods,
                    "Time each CAM method's maps and the closed-form CAM's training step");
  bencher->add_flag("--input-gradients,!--no-input-gradients", bench_args.input_gradients,
                    "Time a training step with RRR and with Prototype RRR against CE only");
  bencher->add_option("--distributed-steps", bench_args.distributed_steps,
                      "Steps timed with 2 ranks (Gloo, loopback, 1 thread each) against 1 process (0 = skip; docs/performance.md uses 20)")
      ->check(integer_in(0, 100000));
  bencher->add_option("--distributed-probe", bench_args.distributed_probe, "(internal) MODEL STEPS: one rank's steps")
      ->expected(2)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->group("");
  bencher->add_option("--memory-probe", bench_args.probe, "(internal) MODEL ce|batchcam: one step's memory; folder DIR N: streaming's")
      ->expected(2, 3)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->group("");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // An unknown word gets the nearest command or option; other errors are about values.
    const bool unknown_word = dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr;
    std::cerr << "batchcam: error: " << e.what() << (unknown_word ? suggestion(app, argc, argv) : "")
              << " (see 'batchcam --help')\n";
    return kExitUsage;
  }

  try {
    if (train->parsed() && !resume_dir.empty()) {
      for (const auto* opt : train->get_options()) {
        const auto name = opt->get_name();
        if (opt->count() > 0 && name != "--resume" && name != "--quiet" && name != "--threads" && name != "--device" &&
            name != "--epochs" && name != "--workers" && name != "--backend" && name != "--dist-timeout") {
          throw std::invalid_argument("--resume continues a run with its saved configuration; " + name +
                                      " cannot be combined with it (only --epochs, --threads, --device, --workers, "
                                      "--backend, --dist-timeout and --quiet can)");
        }
      }
      batchcam::train::ResumeOptions resume;
      if (train->get_option("--device")->count() > 0) resume.device = config.device;
      if (train->get_option("--epochs")->count() > 0) resume.epochs = config.epochs;
      if (train->get_option("--workers")->count() > 0) resume.workers = config.workers;
      if (train->get_option("--threads")->count() == 0) {
        // The run's own thread count, so that a resumed CPU run ends with the same weights.
        const auto last = (std::filesystem::path(resume_dir) / "last.pt").string();
        if (std::filesystem::exists(last)) config.threads = batchcam::train::load_checkpoint(last).config.threads;
      }
      return run_train(config, resume_dir, resume, quiet, launch_args);
    }
    if (train->parsed()) return run_train(resolve_config(*train, config, config_file), "", {}, quiet, launch_args);
    if (env->parsed()) return run_env();
    if (models->parsed()) return run_models();
    if (evaluator->parsed()) {
      set_threads(0);
      return run_eval(eval_args);
    }
    if (explainer->parsed()) {
      set_threads(0);
      return run_explain(explain_args);
    }
    if (reporter->parsed()) {
      set_threads(0);
      return run_report(report_dir, report_device, report_method);
    }
    if (bencher->parsed()) {
      bench_args.threads = set_threads(bench_args.threads);
      return run_bench(bench_args, std::filesystem::read_symlink("/proc/self/exe").string());
    }
    if (exporter->parsed()) return run_export(export_checkpoint, export_format, export_out);
    // No command: the usage, and a usage error's exit code (nothing was done).
    std::cerr << app.help();
    return kExitUsage;
  } catch (const std::invalid_argument& e) {
    std::cerr << "batchcam: error: " << error_text(e.what()) << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (progress_line_open) std::cerr << "\n";
    std::cerr << "batchcam: error: " << error_text(msg.substr(0, msg.find('\n'))) << "\n";
    return kExitFailure;
  }
}
