#include "batchcam/core/runtime.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace batchcam::core {

namespace {
// LibTorch 2.4 names autocast's state by device type; 1.13 has one function per device.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool autocast_enabled(torch::DeviceType t) { return at::autocast::is_autocast_enabled(t); }
void set_autocast_enabled(torch::DeviceType t, bool on) { at::autocast::set_autocast_enabled(t, on); }
torch::ScalarType autocast_dtype(torch::DeviceType t) { return at::autocast::get_autocast_dtype(t); }
void set_autocast_dtype(torch::DeviceType t, torch::ScalarType d) { at::autocast::set_autocast_dtype(t, d); }
#else
bool autocast_enabled(torch::DeviceType t) {
  return t == torch::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
}
void set_autocast_enabled(torch::DeviceType t, bool on) {
  t == torch::kCPU ? at::autocast::set_cpu_enabled(on) : at::autocast::set_enabled(on);
}
torch::ScalarType autocast_dtype(torch::DeviceType t) {
  return t == torch::kCPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
}
void set_autocast_dtype(torch::DeviceType t, torch::ScalarType d) {
  t == torch::kCPU ? at::autocast::set_autocast_cpu_dtype(d) : at::autocast::set_autocast_gpu_dtype(d);
}
#endif

std::string read_first_line(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// CPUs allowed by one cgroup directory's quota, 0 when unlimited or unreadable.
double quota_in(const std::filesystem::path& dir, bool v2) {
  double quota = -1, period = 0;
  if (v2) {
    std::istringstream in(read_first_line(dir / "cpu.max"));
    std::string q;
    if (!(in >> q >> period) || q == "max") return 0;
    quota = std::atof(q.c_str());
  } else {
    quota = std::atof(read_first_line(dir / "cpu.cfs_quota_us").c_str());
    period = std::atof(read_first_line(dir / "cpu.cfs_period_us").c_str());
  }
  return quota > 0 && period > 0 ? quota / period : 0;
}
}  // namespace

torch::Device resolve_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    int64_t index = 0;
    if (name != "cuda") {
      const auto digits = name.substr(5);
      if (digits.empty() || digits.size() > 3 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) {
        throw std::invalid_argument("device '" + name + "' is not a device; expected auto, cpu, cuda or cuda:N");
      }
      index = std::stoll(digits);
    }
    const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
    if (count == 0) {
      throw std::invalid_argument("device '" + name + "': no CUDA device is available (" +
                                  (torch::cuda::is_available() || at::hasCUDA() ? "none found by the driver"
                                                                                : "this LibTorch is built without CUDA") +
                                  "); use --device cpu");
    }
    if (index >= count) {
      throw std::invalid_argument("device '" + name + "': CUDA device " + std::to_string(index) +
                                  " does not exist (this machine has " + std::to_string(count) + ")");
    }
    return {torch::kCUDA, static_cast<torch::DeviceIndex>(index)};
  }
  throw std::invalid_argument("device '" + name + "' is not a device; expected auto, cpu, cuda or cuda:N");
}

std::string device_name(const torch::Device& device) {
  if (device.is_cpu()) return "cpu";
  return device.str().find(':') == std::string::npos ? device.str() + ":0" : device.str();
}

torch::Device module_device(const torch::nn::Module& module) {
  const auto params = module.parameters();
  return params.empty() ? torch::Device(torch::kCPU) : params.front().device();
}

const std::vector<std::string>& precision_names() {
  static const std::vector<std::string> names = {"fp32", "bf16", "fp16"};
  return names;
}

Precision parse_precision(const std::string& name) {
  const auto& names = precision_names();
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) throw std::invalid_argument("precision '" + name + "': expected fp32, bf16 or fp16");
  return static_cast<Precision>(it - names.begin());
}

std::string to_string(Precision p) { return precision_names().at(static_cast<size_t>(p)); }

void require_supported(Precision precision, const torch::Device& device) {
  if (precision == Precision::fp16 && !device.is_cuda()) {
    throw std::invalid_argument("precision fp16 needs a CUDA device (autocast on the CPU computes in bf16); "
                                "use --precision bf16 on the CPU");
  }
}

AutocastScope::AutocastScope(torch::DeviceType device_type, Precision precision)
    : cpu_enabled_(autocast_enabled(torch::kCPU)),
      cuda_enabled_(autocast_enabled(torch::kCUDA)),
      cpu_dtype_(autocast_dtype(torch::kCPU)),
      cuda_dtype_(autocast_dtype(torch::kCUDA)) {
  const bool on = precision != Precision::fp32;
  const auto dtype = precision == Precision::fp16 ? torch::kHalf : torch::kBFloat16;
  set_autocast_enabled(torch::kCPU, on && device_type == torch::kCPU);
  set_autocast_enabled(torch::kCUDA, on && device_type == torch::kCUDA);
  if (on) set_autocast_dtype(device_type, dtype);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  // Python's autocast clears the cache of cast weights when the outermost region ends:
  // cast copies of weights must not outlive an optimiser step.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast_enabled(torch::kCPU, cpu_enabled_);
  set_autocast_enabled(torch::kCUDA, cuda_enabled_);
  set_autocast_dtype(torch::kCPU, cpu_dtype_);
  set_autocast_dtype(torch::kCUDA, cuda_dtype_);
}

int64_t cgroup_cpu_limit(const std::string& cgroup_list, const std::string& root) {
  namespace fs = std::filesystem;
  double limit = 0;
  const auto consider = [&](const fs::path& mount, const std::string& path, bool v2) {
    // The quota of the process's cgroup and of each parent up to the mount point.
    for (fs::path dir = mount / fs::path(path).relative_path();; dir = dir.parent_path()) {
      const double q = quota_in(dir, v2);
      if (q > 0 && (limit == 0 || q < limit)) limit = q;
      if (dir == mount || dir.parent_path() == dir || dir.string().size() <= mount.string().size()) break;
    }
  };
  std::istringstream lines(cgroup_list);
  for (std::string line; std::getline(lines, line);) {
    // "hierarchy-id:controllers:path"; v2 is "0::path".
    const auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const auto controllers = line.substr(first + 1, second - first - 1);
    const auto path = line.substr(second + 1);
    if (controllers.empty()) {
      consider(fs::path(root), path, true);
    } else if (("," + controllers + ",").find(",cpu,") != std::string::npos) {
      for (const auto* mount : {"cpu,cpuacct", "cpu", "cpuacct,cpu"}) consider(fs::path(root) / mount, path, false);
    }
  }
  return limit > 0 ? static_cast<int64_t>(std::ceil(limit - 1e-9)) : 0;
}

int64_t usable_cpu_count() {
  if (const char* omp = std::getenv("OMP_NUM_THREADS"); omp && *omp) {
    // A list such as "4,2" gives the outermost level first.
    const long n = std::strtol(omp, nullptr, 10);
    if (n > 0) return n;
  }
  int64_t count = std::max<int64_t>(1, std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) count = std::min<int64_t>(count, std::max(1, CPU_COUNT(&set)));
  std::ifstream in("/proc/self/cgroup");
  const std::string list((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const int64_t quota = cgroup_cpu_limit(list, "/sys/fs/cgroup");
  if (quota > 0) count = std::min(count, quota);
  return std::max<int64_t>(1, count);
}

std::string thread_start_failure(int64_t count) {
  std::mutex mutex;
  std::condition_variable released;
  bool release = false;
  std::vector<std::thread> threads;
  std::string failure;
  threads.reserve(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (int64_t i = 0; i < count; ++i) {
    try {
      threads.emplace_back([&] {
        std::unique_lock<std::mutex> lock(mutex);
        released.wait(lock, [&] { return release; });
      });
    } catch (const std::system_error& e) {
      failure = "thread " + std::to_string(i + 1) + " of " + std::to_string(count) + " could not start: " + e.code().message();
      break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    release = true;
  }
  released.notify_all();
  for (auto& t : threads) t.join();
  return failure;
}

namespace detail {
torch::Tensor cpu_generator_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_cpu_generator_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

void seed_cpu_generator(uint64_t seed) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
}
}  // namespace detail

GeneratorState generator_state() {
  GeneratorState s;
  s.cpu = detail::cpu_generator_state();
  const auto devices = static_cast<int64_t>(torch::cuda::device_count());
  if (devices > 0) {
    std::vector<torch::Tensor> states;
    for (int64_t d = 0; d < devices; ++d) {
      auto gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, static_cast<torch::DeviceIndex>(d)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      states.push_back(gen.get_state());
    }
    s.cuda = torch::stack(states);
  }
  return s;
}

void set_generator_state(const GeneratorState& state) {
  if (state.cpu.defined()) detail::set_cpu_generator_state(state.cpu);
  const auto devices = static_cast<int64_t>(torch::cuda::device_count());
  if (state.cuda.defined() && state.cuda.size(0) == devices) {
    for (int64_t d = 0; d < devices; ++d) {
      auto gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, static_cast<torch::DeviceIndex>(d)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(state.cuda[d].contiguous());
    }
  }
}

}  // namespace batchcam::core
