#pragma once
// Where and how tensors are computed: the device, the precision (autocast), the CPU
// threads a process may use, and the random generators' state. Nothing here changes
// process-wide state except where a function says so; the CLI decides the thread count.

#include <torch/nn/module.h>
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::core {

/// Resolves a device name: "auto" (CUDA device 0 when one is available, else the CPU),
/// "cpu", "cuda" (device 0) or "cuda:N". Throws std::invalid_argument for another name, or
/// when CUDA is asked for and this build or machine has none.
torch::Device resolve_device(const std::string& name);

/// "cpu" or "cuda:N": the canonical name of a device (for logs and config files).
std::string device_name(const torch::Device& device);

/// The device of a module's first parameter (the CPU for a module without parameters).
torch::Device module_device(const torch::nn::Module& module);

/// The arithmetic of the forward pass: fp32, or bf16 / fp16 through autocast.
enum class Precision { fp32, bf16, fp16 };
const std::vector<std::string>& precision_names();  ///< in the enum's order
Precision parse_precision(const std::string& name);  ///< throws std::invalid_argument
std::string to_string(Precision p);

/// Throws std::invalid_argument when `precision` cannot run on `device` (fp16 autocast
/// needs CUDA: LibTorch's CPU autocast computes in bf16).
void require_supported(Precision precision, const torch::Device& device);

/// Autocast for the current thread while in scope (like Python's torch.autocast): the
/// previous state is restored at the end and the cache of cast weights is cleared, so the
/// next step sees the updated weights. fp32 disables autocast for the scope.
class AutocastScope {
 public:
  AutocastScope(torch::DeviceType device_type, Precision precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool cpu_enabled_, cuda_enabled_;
  torch::ScalarType cpu_dtype_, cuda_dtype_;
};

/// The CPU threads this process may use: OMP_NUM_THREADS when set to a positive integer,
/// otherwise the CPUs of its affinity mask, lowered to the cgroup CPU quota (rounded up)
/// when one is set; never more than the host has. At least 1.
int64_t usable_cpu_count();

/// Checks that `count` more threads can run at once in this process by starting them
/// (each waits until all have started, then all end). Returns "" when they could, else the
/// system's reason for refusing one (for example a process limit, ulimit -u, or a cgroup's
/// pids.max). LibTorch's thread pools do not survive such a refusal: pthreadpool waits
/// forever for the thread it could not start, so a program checks before it asks for them.
std::string thread_start_failure(int64_t count);

/// The CPU limit of a cgroup quota: `cgroup_list` is the text of /proc/self/cgroup and
/// `root` the cgroup mount (normally /sys/fs/cgroup). Reads cpu.max (v2) or
/// cpu.cfs_quota_us / cpu.cfs_period_us (v1) of the process's cgroup and its parents and
/// returns the smallest quota in CPUs, rounded up; 0 when there is none.
int64_t cgroup_cpu_limit(const std::string& cgroup_list, const std::string& root);

/// batchcam's version, and the git commit it was built from ("" when not built from a
/// git checkout; "-dirty" appended when the checkout had uncommitted changes).
std::string version();
std::string git_commit();


/// The state of the default random generators: the CPU's and, when CUDA is available, each
/// CUDA device's (a [D, n] uint8 tensor; undefined without CUDA).
struct GeneratorState {
  torch::Tensor cpu;
  torch::Tensor cuda;
};
GeneratorState generator_state();
/// Restores a state from generator_state(). The CUDA part is restored when present and the
/// device count matches; otherwise the CUDA generators keep their state.
void set_generator_state(const GeneratorState& state);

/// Runs `build` with the CPU generator seeded with `seed`, then puts the generator back as
/// it was: module initialisation becomes repeatable without changing the caller's state.
template <typename F>
auto with_cpu_seed(uint64_t seed, F&& build);

namespace detail {
torch::Tensor cpu_generator_state();
void set_cpu_generator_state(const torch::Tensor& state);
void seed_cpu_generator(uint64_t seed);
}  // namespace detail

template <typename F>
auto with_cpu_seed(uint64_t seed, F&& build) {
  const auto saved = detail::cpu_generator_state();
  struct Restore {
    const torch::Tensor& state;
    ~Restore() { detail::set_cpu_generator_state(state); }
  } restore{saved};
  detail::seed_cpu_generator(seed);
  return build();
}

}  // namespace batchcam::core
