// `batchcam bench`: interleaved repetitions after a warm-up, median and range reported;
// every ratio is formed from numbers of the same run.

#include "bench.h"
#include "malloc_settings.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/core/distributed.h"
#include "batchcam/core/runtime.h"
#include "batchcam/data/datasets.h"
#include "batchcam/data/shapes.h"
#include "batchcam/io/file.h"
#include "batchcam/io/png.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/trainer.h"

#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <nlohmann/json.hpp>
#include <spdlog/fmt/fmt.h>
#include <torch/torch.h>

#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

namespace {

constexpr int64_t kBatch = 128;
using Clock = std::chrono::steady_clock;

long minor_page_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

struct Stats {
  std::vector<double> ms;
  std::vector<double> page_faults;  ///< minor page faults of each repetition (the kernel zero-fills fresh pages)
  double median() const { return median_of(ms); }
  double min() const { return *std::min_element(ms.begin(), ms.end()); }
  double max() const { return *std::max_element(ms.begin(), ms.end()); }
  double median_page_faults() const { return median_of(page_faults); }
  nlohmann::json json() const {
    return {{"median_ms", median()}, {"min_ms", min()},          {"max_ms", max()},
            {"ms", ms},              {"page_faults", page_faults}, {"median_page_faults", median_page_faults()}};
  }
  std::string text() const { return fmt::format("{:.1f} [{:.1f}-{:.1f}]", median(), min(), max()); }
};

// The bench's work runs as `batchcam train` runs it: a Trainer's steps on batches of 128
// shapes images at 28 px (`steps` of them), with the run's defaults except the losses of `variant`:
// "ce" (CE only), "batchcam" (the default: Prototype Loss, L1, lambda 1), "batchcam_cam" (the
// same with the closed-form CAM), "batchcam_both" (both losses, L1, lambda 1; the variant
// bench/python_step.py runs), or on shapes with the spurious patch (RRR needs its masks):
// "ce_spurious" (CE only), "rrr" (CE + RRR with masks, lambda 1) or "proto_rrr" (CE +
// Prototype RRR, lambda 0.1; the weights docs/results-spurious.md chose).
struct StepTrainer {
  batchcam::data::DatasetSplits splits;
  std::unique_ptr<batchcam::train::Trainer> trainer;
  std::unique_ptr<batchcam::data::BatchIterator> batches;
  batchcam::data::Batch batch;  ///< the first batch, for the Grad-CAM timings

  StepTrainer(const std::string& model, const std::string& variant, const BenchArgs& a, torch::Device device,
              int64_t steps) {
    batchcam::train::TrainConfig c;
    c.model = model;
    c.train_size = kBatch * steps;
    c.test_size = 16;
    c.batch_size = kBatch;
    c.epochs = 1;
    c.precision = batchcam::core::parse_precision(a.precision);
    const bool input_gradients = variant == "rrr" || variant == "proto_rrr";
    c.lambda_proto = variant == "ce" || variant == "ce_spurious" || input_gradients ? 0.0 : 1.0;
    c.lambda_batch = variant == "batchcam_both" ? 1.0 : 0.0;
    c.spurious = input_gradients || variant == "ce_spurious";
    c.lambda_rrr = variant == "rrr" ? 1.0 : 0.0;
    c.lambda_proto_rrr = variant == "proto_rrr" ? 0.1 : 0.0;
    if (variant == "batchcam_cam") c.cam_method = batchcam::cam::CamMethod::cam;
    splits = batchcam::train::load_dataset(c);
    trainer = std::make_unique<batchcam::train::Trainer>(c, splits, device);
    batches = std::make_unique<batchcam::data::BatchIterator>(splits.train, trainer->normalization(), kBatch, false, 0,
                                                              false);
    batches->set_device(device);
    batches->set_masks(c.lambda_rrr > 0.0);
    batch = batches->get(0);
  }
  // The next step, then a read of the running loss: the timing includes the device's work.
  void step() {
    trainer->step(batches->get(trainer->step_in_epoch()));
    (void)trainer->read_progress();
  }
};

long peak_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

// Live tensor bytes as LibTorch's CPU allocator reports them to a memory profiler (the hook
// behind torch.profiler's profile_memory), and their peak. Only blocks allocated while the
// meter is installed are counted, so the peak is the step's own, above what lived before.
struct TensorMemoryMeter final : c10::MemoryReportingInfoBase {
  int64_t live = 0, peak = 0;
  void add(int64_t bytes) {
    live += bytes;
    peak = std::max(peak, live);
  }
  // LibTorch 1.13 passes the totals as int64_t, later versions as size_t: one of these
  // overrides the hook, whichever matches.
  void reportMemoryUsage(void*, int64_t bytes, int64_t, int64_t, c10::Device) { add(bytes); }
  void reportMemoryUsage(void*, int64_t bytes, size_t, size_t, c10::Device) { add(bytes); }
  bool memoryProfilingEnabled() const override { return true; }
};

// Peak bytes of tensors that `f` allocates and holds at once (deterministic for a fixed step).
int64_t peak_tensor_bytes(const std::function<void()>& f) {
  auto meter = std::make_shared<TensorMemoryMeter>();
  {
    c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, meter);
    f();
  }
  return meter->peak;
}

// In a fresh process: build everything, note the peak RSS, run 3 steps, report the growth.
int memory_probe(const BenchArgs& a, const std::string& model_name, const std::string& variant) {
  StepTrainer t(model_name, variant, a, batchcam::core::resolve_device(a.device), 3);
  const long before = peak_rss_kib();
  for (int i = 0; i < 3; ++i) t.step();
  std::cout << (peak_rss_kib() - before) << "\n";
  return 0;
}

std::string run_capture(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run: " + command);
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), buffer.size(), pipe)) out += buffer.data();
  const int status = ::pclose(pipe);
  if (status != 0) throw std::runtime_error("failed (status " + std::to_string(status) + "): " + command);
  return out;
}

// Runs each named piece of work `warmup` times, then `repetitions` rounds of all of them.
std::map<std::string, Stats> interleaved(const std::vector<std::pair<std::string, std::function<void()>>>& work,
                                         int64_t warmup, int64_t repetitions) {
  for (int64_t i = 0; i < warmup; ++i) {
    for (const auto& w : work) w.second();
  }
  std::map<std::string, Stats> stats;
  for (int64_t r = 0; r < repetitions; ++r) {
    for (const auto& [name, f] : work) {
      const long faults = minor_page_faults();
      const auto start = Clock::now();
      f();
      stats[name].ms.push_back(1e3 * std::chrono::duration<double>(Clock::now() - start).count());
      stats[name].page_faults.push_back(static_cast<double>(minor_page_faults() - faults));
    }
  }
  return stats;
}

// The training loop's own cost: one epoch of the loop that `batchcam train` runs (data,
// running loss reads, callbacks) against the same steps on the same batches timed alone.
// Fresh trainers from the same seed each time; the two are alternated `rounds` times.
nlohmann::json loop_cost(const BenchArgs& a, torch::Device device) {
  batchcam::train::TrainConfig c;
  c.train_size = a.epoch_images;
  c.test_size = 16;
  c.epochs = 1;
  c.precision = batchcam::core::parse_precision(a.precision);
  const auto splits = batchcam::train::load_dataset(c);
  const int64_t rounds = std::clamp<int64_t>(a.repetitions, 1, 3);
  std::vector<double> alone, loop;
  int64_t steps = 0;
  for (int64_t r = 0; r < rounds; ++r) {
    {
      batchcam::train::Trainer t(c, splits, device);
      batchcam::data::BatchIterator batches(splits.train, t.normalization(), c.batch_size, true, c.seed, true);
      batches.set_epoch(1);
      batches.set_device(device);
      std::vector<batchcam::data::Batch> all;
      for (int64_t i = 0; i < batches.size(); ++i) all.push_back(batches.get(i));
      steps = static_cast<int64_t>(all.size());
      const auto start = Clock::now();
      for (const auto& b : all) t.step(b);
      (void)t.read_progress();
      alone.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
    {
      batchcam::train::Trainer t(c, splits, device);
      const auto start = Clock::now();
      t.run_epoch();
      loop.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
  }
  const double ratio = median_of(loop) / median_of(alone);
  std::cout << fmt::format("\ntraining loop: one epoch of {} images ({} steps, SimpleCNN, default Batch-CAM): loop {:.2f} s, "
                           "the same steps alone {:.2f} s (medians of {}); loop / steps {:.3f}\n",
                           a.epoch_images, steps, median_of(loop), median_of(alone), rounds, ratio);
  return {{"images", a.epoch_images}, {"steps", steps}, {"loop_seconds", loop}, {"steps_alone_seconds", alone},
          {"ratio", ratio}};
}

// `count` PNG files in three class folders: smooth shading with a figure and mild noise (so
// that they compress as photographs do, not as noise), of sizes between 256 x 200 and
// 384 x 288 (several aspect ratios).
void write_photo_folder(const std::filesystem::path& dir, int64_t count) {
  torch::manual_seed(0);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t c = i % 3, h = 200 + (i * 37) % 89, w = 256 + (i * 53) % 129;
    const auto rows = torch::linspace(0, 1, h).view({h, 1, 1}), cols = torch::linspace(0, 1, w).view({1, w, 1});
    auto image = 60 + 80 * rows + 60 * cols * torch::tensor({1.0f, 0.6f, 0.3f}).view({1, 1, 3});
    image = image + 6 * torch::randn({h, w, 3});
    const int64_t top = (i * 29) % (h - 80), left = (i * 31) % (w - 80);
    image.slice(0, top, top + 80).slice(1, left, left + 80).select(2, c).fill_(230);
    const auto folder = dir / ("class" + std::to_string(c));
    std::filesystem::create_directories(folder);
    batchcam::io::write_png((folder / fmt::format("{:05d}.png", i)).string(),
                            image.round().clamp(0, 255).to(torch::kUInt8));
  }
}

batchcam::data::DatasetOptions folder_options(const std::string& dir, int64_t workers, int64_t train_size) {
  batchcam::data::DatasetOptions o;
  o.name = "folder";
  o.dir = dir;
  o.image_size = 224;
  o.workers = workers;
  o.train_size = train_size;
  return o;
}

// In a fresh process: open the folder (a stratified subset of `count` of its training
// images), note the peak RSS, stream one epoch of them at 224 px (2 workers, the training
// crop), report the growth (KiB) and the number of images streamed.
int folder_memory_probe(const std::string& dir, int64_t count) {
  const auto splits = batchcam::data::load_dataset(folder_options(dir, 2, count));
  const batchcam::data::Normalization norm{{0.5, 0.5, 0.5}, {0.25, 0.25, 0.25}};
  batchcam::data::BatchIterator batches(splits.train, norm, 32, true, 0, false);
  batches.set_augmentation({0, true, true});
  const long before = peak_rss_kib();
  for (int64_t i = 0; i < batches.size(); ++i) (void)batches.get(i);
  std::cout << (peak_rss_kib() - before) << " " << splits.train.size() << "\n";
  return 0;
}

// The image-folder pipeline at 224 px: decoding speed with 0, 1 and 2 workers against the
// ResNet-18 training step it feeds, the step loop with and without read-ahead, and the peak
// memory of streaming a quarter of the folder and all of it.
nlohmann::json folder_pipeline(const BenchArgs& a, torch::Device device, const std::string& self_path) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-bench-folder-" + std::to_string(::getpid()));
  write_photo_folder(dir, a.folder_images);
  nlohmann::json r = {{"images", a.folder_images}, {"size", 224}};
  constexpr int64_t kFolderBatch = 16;
  std::cout << fmt::format("\nimage folder: {} PNG files of 256-384 x 200-288 px, decoded to 3x224x224 with the training "
                           "crop (random resized crop, colour jitter, flip), batch {}\n",
                           a.folder_images, kFolderBatch);
  for (const int64_t workers : {0, 1, 2}) {
    const auto splits = batchcam::data::load_dataset(folder_options(dir.string(), workers, 0));
    batchcam::data::BatchIterator batches(splits.train, batchcam::data::Normalization{{0.5, 0.5, 0.5}, {0.25, 0.25, 0.25}},
                                          kFolderBatch, true, 0, true);
    batches.set_augmentation({0, true, true});
    const auto start = Clock::now();
    for (int64_t i = 0; i < batches.size(); ++i) (void)batches.get(i);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double ips = static_cast<double>(batches.size() * kFolderBatch) / seconds;
    r["pipeline_images_per_s"][std::to_string(workers)] = ips;
    std::cout << fmt::format("  pipeline alone, {} worker{}: {:.0f} images/s\n", workers, workers == 1 ? "" : "s", ips);
  }
  // The step it feeds, and the loop of both: read-ahead hides the decoding behind the step.
  batchcam::train::TrainConfig c;
  c.dataset = "folder";
  c.data_dir = dir.string();
  c.image_size = 224;
  c.model = "resnet18";
  c.batch_size = kFolderBatch;
  c.augment = batchcam::train::Augment::crop_jitter_flip;
  c.train_size = kFolderBatch * std::clamp<int64_t>(a.repetitions, 2, 6);
  c.test_size = 4;
  c.precision = batchcam::core::parse_precision(a.precision);
  // Batches of this trainer's epoch, decoded with `workers` threads of read-ahead.
  const auto epoch_batches = [&](const batchcam::data::DatasetSplits& splits, const batchcam::train::Trainer& t) {
    auto batches = std::make_unique<batchcam::data::BatchIterator>(splits.train, t.normalization(), c.batch_size, true,
                                                                   c.seed, true);
    batches->set_augmentation({0, true, true});
    batches->set_device(device);
    return batches;
  };
  {
    c.workers = 0;
    const auto splits = batchcam::train::load_dataset(c);
    batchcam::train::Trainer t(c, splits, device);
    auto batches = epoch_batches(splits, t);
    std::vector<batchcam::data::Batch> all;
    for (int64_t i = 0; i < batches->size(); ++i) all.push_back(batches->get(i));
    const auto start = Clock::now();
    for (const auto& b : all) t.step(b);
    (void)t.read_progress();
    const double per_step = std::chrono::duration<double>(Clock::now() - start).count() / static_cast<double>(all.size());
    r["resnet18_step_images_per_s"] = kFolderBatch / per_step;
    std::cout << fmt::format("  ResNet-18 Batch-CAM step alone: {:.0f} images/s ({:.2f} s per step of {})\n",
                             kFolderBatch / per_step, per_step, kFolderBatch);
  }
  for (const int64_t workers : {0, 2}) {
    c.workers = workers;
    const auto splits = batchcam::train::load_dataset(c);
    batchcam::train::Trainer t(c, splits, device);
    auto batches = epoch_batches(splits, t);
    const auto start = Clock::now();
    for (int64_t i = 0; i < batches->size(); ++i) t.step(batches->get(i));
    (void)t.read_progress();
    r["loop_seconds"][std::to_string(workers)] = std::chrono::duration<double>(Clock::now() - start).count();
  }
  const double overlap = r["loop_seconds"]["2"].get<double>() / r["loop_seconds"]["0"].get<double>();
  r["loop_ratio_2_workers_over_0"] = overlap;
  std::cout << fmt::format("  decoding + steps, {} steps: {:.2f} s with 2 workers, {:.2f} s decoding in the step's "
                           "thread; ratio {:.3f}\n",
                           c.train_size / kFolderBatch, r["loop_seconds"]["2"].get<double>(),
                           r["loop_seconds"]["0"].get<double>(), overlap);
  if (a.memory) {
    // {growth in KiB, images streamed} of one epoch over a quarter of the training images and all.
    const auto probe = [&](int64_t count) {
      std::istringstream out(run_capture(fmt::format("'{}' bench --threads {} --memory-probe folder '{}' {}", self_path,
                                                     a.threads, dir.string(), count)));
      std::pair<double, int64_t> growth_images;
      out >> growth_images.first >> growth_images.second;
      return growth_images;
    };
    const auto small = probe(std::max<int64_t>(kFolderBatch, a.folder_images / 4)), all = probe(0);
    r["streaming_peak_rss_growth_kib"] = {{std::to_string(small.second), small.first},
                                          {std::to_string(all.second), all.first}};
    std::cout << fmt::format("  peak memory growth while streaming one epoch: {:.0f} MiB for {} images, {:.0f} MiB for "
                             "{} (held in memory at 224 px, those would take {:.0f} MiB)\n",
                             small.first / 1024, small.second, all.first / 1024, all.second,
                             all.second * 3.0 * 224 * 224 / (1 << 20));
  }
  std::filesystem::remove_all(dir);
  return r;
}

}  // namespace

// The CAM methods as explanations (maps per second, batched, eval mode), and, where the
// head is pooling and one linear layer, a training step with the closed-form CAM against
// the same step with Grad-CAM's gradient call.
nlohmann::json cam_method_costs(const BenchArgs& a, torch::Device device) {
  nlohmann::json out = nlohmann::json::object();
  std::cout << fmt::format("\nCAM methods (batch {} at 1x28x28, eval mode): maps per second\n", kBatch);
  const auto wait = [](const torch::Tensor& t) { (void)t.sum().item<double>(); };
  for (const auto& name : a.models) {
    auto explainer = batchcam::core::with_cpu_seed(0, [&] { return batchcam::models::make_model({name, 1, 10, 28, ""}); });
    explainer->to(device);
    explainer->eval();
    const bool closed_form = explainer->gap_linear_weight().defined();
    const auto x = batchcam::core::with_cpu_seed(1, [] { return torch::randn({kBatch, 1, 28, 28}); }).to(device);
    const auto y = batchcam::core::with_cpu_seed(2, [] { return torch::randint(0, 10, {kBatch}, torch::kLong); }).to(device);
    std::vector<std::pair<std::string, std::function<void()>>> work;
    for (const auto& method : batchcam::cam::cam_method_names()) {
      const auto m = batchcam::cam::parse_cam_method(method);
      if (m == batchcam::cam::CamMethod::cam && !closed_form) continue;
      work.emplace_back(method, [&, m] { wait(batchcam::cam::explain(*explainer, x, y, m).maps); });
    }
    const auto stats = interleaved(work, a.warmup, a.repetitions);
    nlohmann::json r;
    std::string line;
    for (const auto& [method, st] : stats) {
      const double per_second = 1e3 * kBatch / st.median();
      r["maps_per_second"][method] = per_second;
      line += fmt::format(" {} {:.0f},", method, per_second);
    }
    line.pop_back();
    std::cout << fmt::format("{:<18}{}\n", name, line);
    if (closed_form) {
      const int64_t steps = a.warmup + a.repetitions;
      StepTrainer gradient(name, "batchcam", a, device, steps), closed(name, "batchcam_cam", a, device, steps);
      auto step_stats = interleaved({{"grad-cam", [&] { gradient.step(); }}, {"cam", [&] { closed.step(); }}},
                                    a.warmup, a.repetitions);
      const double ratio = step_stats["cam"].median() / step_stats["grad-cam"].median();
      r["training_step_ms"] = {{"grad-cam", step_stats["grad-cam"].json()}, {"cam", step_stats["cam"].json()}};
      r["closed_form_over_gradient_call"] = ratio;
      std::cout << fmt::format("{:<18} training step (Prototype Loss): grad-cam {} ms, closed-form cam {} ms; ratio "
                               "{:.3f}\n",
                               "", step_stats["grad-cam"].text(), step_stats["cam"].text(), ratio);
    }
    out[name] = r;
  }
  return out;
}

// The input-gradient terms against spurious features (docs/method.md): a training step with
// RRR with masks and one with Prototype RRR, against CE only; each differentiates the input
// gradients, a second backward pass through the model.
nlohmann::json input_gradient_costs(const BenchArgs& a, torch::Device device) {
  nlohmann::json out = nlohmann::json::object();
  std::cout << fmt::format("\ninput-gradient terms (batch {} at 1x28x28, shapes with the spurious patch): training "
                           "step, CE only, RRR with masks (lambda 1), Prototype RRR (lambda 0.1); ratios over CE\n",
                           kBatch);
  for (const auto& name : a.models) {
    const int64_t steps = a.warmup + a.repetitions;
    StepTrainer ce(name, "ce_spurious", a, device, steps), rrr(name, "rrr", a, device, steps),
        proto_rrr(name, "proto_rrr", a, device, steps);
    auto stats = interleaved(
        {{"ce", [&] { ce.step(); }}, {"rrr", [&] { rrr.step(); }}, {"proto_rrr", [&] { proto_rrr.step(); }}},
        a.warmup, a.repetitions);
    nlohmann::json r;
    for (const auto& [variant, st] : stats) r["step_ms"][variant] = st.json();
    r["rrr_over_ce"] = stats["rrr"].median() / stats["ce"].median();
    r["proto_rrr_over_ce"] = stats["proto_rrr"].median() / stats["ce"].median();
    std::cout << fmt::format("{:<18} CE {} ms, RRR {} ms ({:.2f}x), Prototype RRR {} ms ({:.2f}x)\n", name,
                             stats["ce"].text(), stats["rrr"].text(), r["rrr_over_ce"].get<double>(),
                             stats["proto_rrr"].text(), r["proto_rrr_over_ce"].get<double>());
    out[name] = r;
  }
  return out;
}

// One rank's part of the data-parallel measurement (or one process alone, without
// WORLD_SIZE): `steps` training steps on global batches of kBatch with the default
// Batch-CAM, timed one by one after `warmup`, and the gradient all-reduce alone. Rank 0
// prints one JSON line.
int distributed_probe(const BenchArgs& a, const std::string& model, int64_t steps) {
  const auto launch = batchcam::core::launch_info([](const char* name) { return std::getenv(name); });
  std::shared_ptr<batchcam::core::ProcessGroup> group;
  if (launch.distributed()) group = std::make_shared<batchcam::core::ProcessGroup>(launch, std::chrono::seconds(120));
  batchcam::train::TrainConfig c;
  c.model = model;
  c.train_size = kBatch * (a.warmup + steps);
  c.test_size = 16;
  c.batch_size = kBatch;
  c.epochs = 1;
  c.log_every = 1000000;  // no reads of the running loss but the epoch's last
  const auto splits = batchcam::train::load_dataset(c);
  batchcam::train::Trainer trainer(c, splits, torch::kCPU);
  trainer.use_process_group(group);
  std::vector<double> step_ms;
  auto last = Clock::now();
  trainer.run_epoch([&](const batchcam::train::StepInfo& s) {
    const auto now = Clock::now();
    if (s.step > a.warmup) step_ms.push_back(1e3 * std::chrono::duration<double>(now - last).count());
    last = now;
  });
  nlohmann::json r = {{"ranks", group ? group->size() : 1}, {"threads", a.threads}, {"step_ms", median_of(step_ms)}};
  if (group) {
    // The all-reduce of one step's gradients (bucketed as in training), timed alone.
    std::vector<torch::Tensor> gradients;
    int64_t bytes = 0;
    for (const auto& p : trainer.model().parameters()) {
      gradients.push_back(torch::ones_like(p));
      bytes += p.numel() * static_cast<int64_t>(p.element_size());
    }
    std::vector<double> reduce_ms;
    for (int64_t i = 0; i < a.warmup + std::max<int64_t>(steps, 5); ++i) {
      const auto start = Clock::now();
      group->all_reduce_sum(gradients);
      if (i >= a.warmup) reduce_ms.push_back(1e3 * std::chrono::duration<double>(Clock::now() - start).count());
    }
    r["allreduce_ms"] = median_of(reduce_ms);
    r["allreduce_bytes"] = bytes;
  }
  if (!group || group->rank() == 0) std::cout << r.dump() << std::endl;
  return 0;
}

// A TCP port that was free a moment ago, for the ranks' rendezvous.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof addr;
  const bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) == 0;
  if (fd >= 0) ::close(fd);
  if (!ok) throw std::runtime_error("bench: no free TCP port on 127.0.0.1 for the ranks' rendezvous");
  return ntohs(addr.sin_port);
}

// Data-parallel training on this machine: per model, two ranks with 1 thread each against
// one process with 1 and with 2 threads, on the same global batches; each run in its own
// processes, one after the other.
nlohmann::json distributed_costs(const BenchArgs& a, const std::string& self_path) {
  nlohmann::json out = nlohmann::json::object();
  std::cout << fmt::format("\ndata-parallel steps (global batch {}, default Batch-CAM, Gloo on loopback, median of {} "
                           "steps after {}):\n",
                           kBatch, a.distributed_steps, a.warmup);
  for (const auto& model : a.models) {
    const auto probe = [&](const std::string& environment, int threads) {
      return fmt::format("{}'{}' bench --threads {} --warmup {} --distributed-probe {} {}", environment, self_path,
                         threads, a.warmup, model, a.distributed_steps);
    };
    const auto alone = [&](int threads) { return nlohmann::json::parse(run_capture(probe("", threads))); };
    const int port = free_port();
    const auto rank = [&](int r) {
      return fmt::format("WORLD_SIZE=2 RANK={} LOCAL_RANK={} MASTER_ADDR=127.0.0.1 MASTER_PORT={} ", r, r, port);
    };
    const auto two = nlohmann::json::parse(run_capture(probe(rank(1), 1) + " > /dev/null & " + probe(rank(0), 1) +
                                                       "; status=$?; wait $! && exit $status"));
    const auto one_1 = alone(1), one_2 = alone(2);
    const double two_ms = two.at("step_ms"), one_1_ms = one_1.at("step_ms"), one_2_ms = one_2.at("step_ms");
    const double reduce_ms = two.at("allreduce_ms"), bytes = two.at("allreduce_bytes");
    out[model] = {{"two_ranks", two}, {"one_process_1_thread", one_1}, {"one_process_2_threads", one_2},
                  {"two_ranks_over_one_process_1_thread", two_ms / one_1_ms},
                  {"two_ranks_over_one_process_2_threads", two_ms / one_2_ms},
                  {"allreduce_share_of_step", reduce_ms / two_ms}};
    std::cout << fmt::format("{:<18} step: 2 ranks x 1 thread {:.1f} ms, 1 process x 1 thread {:.1f} ms (ratio {:.2f}), "
                             "x 2 threads {:.1f} ms (ratio {:.2f}); all-reduce {:.2f} MiB in {:.2f} ms ({:.0f}% of the "
                             "step)\n",
                             model, two_ms, one_1_ms, two_ms / one_1_ms, one_2_ms, two_ms / one_2_ms, bytes / 1048576.0,
                             reduce_ms, 100 * reduce_ms / two_ms);
  }
  return out;
}

int run_bench(const BenchArgs& a, const std::string& self_path) {
  const auto device = batchcam::core::resolve_device(a.device);
  batchcam::core::require_supported(batchcam::core::parse_precision(a.precision), device);
  const int64_t threads = a.threads;
  if (a.probe.size() == 3 && a.probe[0] == "folder") return folder_memory_probe(a.probe[1], std::stoll(a.probe[2]));
  if (a.probe.size() == 2) return memory_probe(a, a.probe[0], a.probe[1]);
  if (a.distributed_probe.size() == 2) return distributed_probe(a, a.distributed_probe[0], std::stoll(a.distributed_probe[1]));

  nlohmann::json results = {{"threads", threads}, {"batch", kBatch}, {"image", "1x28x28"},
                            {"device", batchcam::core::device_name(device)}, {"precision", a.precision},
                            {"repetitions", a.repetitions}, {"warmup", a.warmup}, {"models", nlohmann::json::object()}};
  std::cout << fmt::format("batchcam bench: batch {} at 1x28x28 on {} ({}), {} CPU threads, {} interleaved repetitions "
                           "after {} warm-up; median [min-max] ms per batch\n"
                           "step: a training step with the default Batch-CAM (Prototype Loss, L1) or CE only\n\n",
                           kBatch, batchcam::core::device_name(device), a.precision, threads, a.repetitions, a.warmup);
  std::cout << fmt::format("{:<18} {:>22} {:>22} {:>7} {:>8} {:>14} {:>14} {:>8} {:>14} {:>8}\n", "model",
                           "CE step", "CE+Batch-CAM step", "ratio", "tensors", "batched CAM", "per-sample CAM",
                           "speedup", "per-image CAM", "speedup");
  for (const auto& name : a.models) {
    // Enough batches for the warm-up, the repetitions and the memory meter's step.
    const int64_t steps = a.warmup + a.repetitions + 1;
    StepTrainer ce(name, "ce", a, device, steps), cam(name, "batchcam", a, device, steps);
    std::unique_ptr<StepTrainer> both;
    if (a.compare_python) both = std::make_unique<StepTrainer>(name, "batchcam_both", a, device, steps);
    // An explainer in eval mode with the same initial weights.
    auto explainer = batchcam::core::with_cpu_seed(0, [&] {
      return batchcam::models::make_model({name, 1, 10, 28, ""});
    });
    explainer->to(device);
    explainer->eval();
    const auto& batch = cam.batch;
    const auto options = batchcam::cam::GradCamOptions().output_size({28, 28});
    const auto wait = [](const torch::Tensor& t) { (void)t.sum().item<double>(); };
    std::vector<std::pair<std::string, std::function<void()>>> work = {
        {"ce", [&] { ce.step(); }},
        {"batchcam", [&] { cam.step(); }},
        {"gradcam_batched", [&] { wait(batchcam::cam::grad_cam(*explainer, batch.x, batch.y, options).cam.maps); }}};
    if (both) work.emplace_back("batchcam_both", [&] { both->step(); });
    if (a.per_sample) {
      // The old method two ways: one backward per image after a shared batched forward, and
      // the plain loop of an explanation library (forward and backward of each image alone).
      work.emplace_back("gradcam_per_sample",
                        [&] { wait(batchcam::cam::grad_cam_per_sample(*explainer, batch.x, batch.y, options).maps); });
      work.emplace_back("gradcam_per_image", [&] {
        torch::Tensor last;
        for (int64_t i = 0; i < kBatch; ++i) {
          last = batchcam::cam::grad_cam(*explainer, batch.x.slice(0, i, i + 1), batch.y.slice(0, i, i + 1), options)
                     .cam.maps;
        }
        wait(last);
      });
    }
    auto stats = interleaved(work, a.warmup, a.repetitions);
    nlohmann::json r;
    for (const auto& [key, st] : stats) r[key] = st.json();
    const double ratio = stats["batchcam"].median() / stats["ce"].median();
    r["step_ratio"] = ratio;
    r["step_ms"] = {{"ce", stats["ce"].median()}, {"batchcam", stats["batchcam"].median()}};
    // After the warm-up (the optimiser's state exists), so both peaks are of a steady step.
    const double ce_bytes = static_cast<double>(peak_tensor_bytes(work[0].second));
    const double cam_bytes = static_cast<double>(peak_tensor_bytes(work[1].second));
    r["tensor_memory"] = {{"ce_step_peak_bytes", ce_bytes}, {"batchcam_step_peak_bytes", cam_bytes},
                          {"ratio", cam_bytes / std::max(ce_bytes, 1.0)}};
    std::string memory = "-";
    if (a.memory) {
      const auto probe = [&](const char* variant) {
        return std::stod(run_capture(fmt::format("'{}' bench --threads {} --device {} --precision {} --memory-probe {} {}",
                                                 self_path, threads, a.device, a.precision, name, variant)));
      };
      const double ce_kib = probe("ce"), cam_kib = probe("batchcam");
      r["memory"] = {{"ce_step_peak_growth_kib", ce_kib}, {"batchcam_step_peak_growth_kib", cam_kib},
                     {"ratio", cam_kib / std::max(ce_kib, 1.0)}};
      memory = fmt::format("{:.2f}", cam_kib / std::max(ce_kib, 1.0));
    }
    const double batched_ips = 1e3 * kBatch / stats["gradcam_batched"].median();
    r["gradcam_batched_images_per_s"] = batched_ips;
    std::string per_sample = "-", speedup = "-", per_image = "-", image_speedup = "-";
    if (a.per_sample) {
      const double ips = 1e3 * kBatch / stats["gradcam_per_sample"].median();
      r["gradcam_per_sample_images_per_s"] = ips;
      r["gradcam_speedup"] = batched_ips / ips;
      per_sample = fmt::format("{:.0f} img/s", ips);
      speedup = fmt::format("{:.1f}x", batched_ips / ips);
      const double image_ips = 1e3 * kBatch / stats["gradcam_per_image"].median();
      r["gradcam_per_image_images_per_s"] = image_ips;
      r["gradcam_speedup_per_image"] = batched_ips / image_ips;
      per_image = fmt::format("{:.0f} img/s", image_ips);
      image_speedup = fmt::format("{:.1f}x", batched_ips / image_ips);
    }
    std::cout << fmt::format("{:<18} {:>22} {:>22} {:>7.3f} {:>8.2f} {:>14} {:>14} {:>8} {:>14} {:>8}\n", name,
                             stats["ce"].text(), stats["batchcam"].text(), ratio, cam_bytes / std::max(ce_bytes, 1.0),
                             fmt::format("{:.0f} img/s", batched_ips), per_sample, speedup, per_image, image_speedup);
    std::cout << fmt::format("{:<18} peak tensor memory per step: CE {:.1f} MiB, CE+Batch-CAM {:.1f} MiB; peak RSS "
                             "growth ratio {}; minor page faults per step (median): CE {:.0f}, CE+Batch-CAM {:.0f}\n",
                             "", ce_bytes / 1048576.0, cam_bytes / 1048576.0, memory, stats["ce"].median_page_faults(),
                             stats["batchcam"].median_page_faults());
    if (a.compare_python) {
      // Twice: as a PyTorch user runs it, and with the settings of the batchcam executable
      // (freed memory kept in the process, channels-last activations), so that only the front
      // ends differ.
      const auto python_run = [&](const std::string& environment, const std::string& flags) {
        return nlohmann::json::parse(run_capture(fmt::format(
            "{}'{}' '{}' --model {} --threads {} --repetitions {} --warmup {}{}", environment, a.python,
            a.python_script, name, threads, a.repetitions, a.warmup, flags)));
      };
      const auto ratios = [&](const nlohmann::json& py) {
        const auto& m = py.at("median_ms");
        return nlohmann::json{{"ce", stats["ce"].median() / m.at("ce").get<double>()},
                              {"batchcam", stats["batchcam_both"].median() / m.at("batchcam").get<double>()},
                              {"gradcam", stats["gradcam_batched"].median() / m.at("gradcam").get<double>()}};
      };
      const auto py = python_run("", "");
      const auto py_same = python_run(fmt::format("MALLOC_MMAP_THRESHOLD_={} MALLOC_TRIM_THRESHOLD_={} ",
                                                  kMmapThresholdBytes, kTrimThresholdBytes),
                                      " --channels-last");
      r["python"] = py;
      r["python_same_settings"] = py_same;
      r["cpp_over_python"] = ratios(py);
      r["cpp_over_python_same_settings"] = ratios(py_same);
      const auto print_python = [&](const std::string& label, const nlohmann::json& p, const nlohmann::json& q) {
        const auto& m = p.at("median_ms");
        std::cout << fmt::format("{:<18} {}: CE {:.1f} ms, CE+Batch-CAM {:.1f} ms, Grad-CAM {:.1f} ms; "
                                 "C++/Python: {:.3f}, {:.3f}, {:.3f}\n",
                                 "", label, m.at("ce").get<double>(), m.at("batchcam").get<double>(),
                                 m.at("gradcam").get<double>(), q.at("ce").get<double>(),
                                 q.at("batchcam").get<double>(), q.at("gradcam").get<double>());
      };
      print_python("Python (torch " + py.at("torch").get<std::string>() + ")", py, r["cpp_over_python"]);
      print_python("Python, batchcam's settings", py_same, r["cpp_over_python_same_settings"]);
    }
    results["models"][name] = r;
  }

  // The data pipeline on a dataset of MNIST's shape.
  {
    batchcam::data::Dataset d;
    torch::manual_seed(0);
    d.images = torch::randint(0, 256, {60000, 1, 28, 28}, torch::kUInt8);
    d.labels = torch::randint(0, 10, {60000}, torch::kInt64);
    d.class_names.assign(10, "c");
    const auto norm = batchcam::data::Normalization::fit(d.images.narrow(0, 0, 1000));
    batchcam::data::BatchIterator plain(d, norm, kBatch, true, 0, true);
    batchcam::data::BatchIterator shifted(d, norm, kBatch, true, 0, true);
    shifted.set_augmentation({3, false, false});
    int64_t i = 0;
    auto stats = interleaved({{"plain", [&] { (void)plain.get(i++ % plain.size()); }},
                              {"shift", [&] { (void)shifted.get(i++ % shifted.size()); }}},
                             a.warmup * 10, a.repetitions * 20);
    const double plain_ips = 1e3 * kBatch / stats["plain"].median(), shift_ips = 1e3 * kBatch / stats["shift"].median();
    results["pipeline_images_per_s"] = {{"plain", plain_ips}, {"shift", shift_ips}};
    std::cout << fmt::format("\npipeline (60000 x 1x28x28 uint8, batch {}): {:.0f} images/s, {:.0f} with random shift\n",
                             kBatch, plain_ips, shift_ips);
  }

  if (a.epoch_images > 0) results["training_loop"] = loop_cost(a, device);
  if (a.folder_images > 0) results["folder"] = folder_pipeline(a, device, self_path);
  if (a.cam_methods) results["cam_methods"] = cam_method_costs(a, device);
  if (a.input_gradients) results["input_gradients"] = input_gradient_costs(a, device);
  if (a.distributed_steps > 0 && batchcam::core::distributed_available()) {
    results["distributed"] = distributed_costs(a, self_path);
  }

  if (!a.mnist_dir.empty()) {
    for (const bool cam : {false, true}) {
      batchcam::train::TrainConfig c;
      c.dataset = "mnist";
      c.data_dir = a.mnist_dir;
      c.epochs = 1;
      c.threads = threads;
      c.device = a.device;
      c.precision = batchcam::core::parse_precision(a.precision);
      c.out_dir = (std::filesystem::temp_directory_path() / "batchcam-bench").string();
      c.run_name = fmt::format("epoch-{}-{}", cam ? "batchcam" : "ce", ::getpid());
      if (!cam) c.lambda_proto = c.lambda_batch = 0.0;
      const auto result = batchcam::train::train(c);
      std::filesystem::remove_all(result.run_dir);
      results["mnist_epoch_seconds"][cam ? "batchcam" : "ce"] = result.train_seconds;
      std::cout << fmt::format("MNIST epoch, SimpleCNN, {}: {:.1f} s (60000 images, training only)\n",
                               cam ? "CE + Batch-CAM" : "CE only", result.train_seconds);
    }
  }
  if (!a.json_out.empty()) batchcam::io::write_file_atomic(a.json_out, results.dump(2) + "\n");
  return 0;
}
