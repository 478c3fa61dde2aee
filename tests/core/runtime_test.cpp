#include "batchcam/core/runtime.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace batchcam;
namespace fs = std::filesystem;

TEST(Device, NamesResolveAndCudaWithoutADeviceIsOneClearError) {
  EXPECT_TRUE(core::resolve_device("cpu").is_cpu());
  EXPECT_EQ(core::device_name(core::resolve_device("cpu")), "cpu");
  EXPECT_EQ(core::resolve_device("auto").is_cuda(), torch::cuda::is_available());
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"}) {
    EXPECT_THROW(core::resolve_device(bad), std::invalid_argument) << bad;
  }
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is present; the no-CUDA message is not shown here";
  try {
    core::resolve_device("cuda:1");
    FAIL() << "CUDA without a device must be refused";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device is available"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos) << e.what();
  }
}

TEST(Precision, NamesAndWhereEachRuns) {
  for (const auto& name : core::precision_names()) EXPECT_EQ(core::to_string(core::parse_precision(name)), name);
  EXPECT_THROW(core::parse_precision("fp8"), std::invalid_argument);
  EXPECT_NO_THROW(core::require_supported(core::Precision::bf16, torch::kCPU));
  EXPECT_THROW(core::require_supported(core::Precision::fp16, torch::kCPU), std::invalid_argument);
}

TEST(Precision, AutocastScopeComputesInBf16AndRestoresTheThreadsState) {
  torch::nn::Linear linear(4, 3);
  const auto x = torch::randn({2, 4});
  {
    core::AutocastScope bf16(torch::kCPU, core::Precision::bf16);
    EXPECT_EQ(linear(x).scalar_type(), torch::kBFloat16);
    {
      core::AutocastScope off(torch::kCPU, core::Precision::fp32);
      EXPECT_EQ(linear(x).scalar_type(), torch::kFloat32);
    }
    EXPECT_EQ(linear(x).scalar_type(), torch::kBFloat16);  // the outer scope again
  }
  EXPECT_EQ(linear(x).scalar_type(), torch::kFloat32);
  // The cache of cast weights was cleared: a changed weight is seen by the next scope.
  {
    torch::NoGradGuard no_grad;
    linear->weight.fill_(1.0);
    linear->bias.fill_(0.0);
  }
  core::AutocastScope bf16(torch::kCPU, core::Precision::bf16);
  EXPECT_NEAR(linear(torch::ones({1, 4}))[0][0].item<float>(), 4.0, 1e-6);
}

TEST(Threads, OmpNumThreadsDecidesWhenSet) {
  const char* old = std::getenv("OMP_NUM_THREADS");
  const std::string saved = old ? old : "";
  ::setenv("OMP_NUM_THREADS", "3", 1);
  EXPECT_EQ(core::usable_cpu_count(), 3);
  ::setenv("OMP_NUM_THREADS", "1,1", 1);
  EXPECT_EQ(core::usable_cpu_count(), 1);
  ::unsetenv("OMP_NUM_THREADS");
  const int64_t unset = core::usable_cpu_count();
  EXPECT_GE(unset, 1);
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(::sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_LE(unset, CPU_COUNT(&set)) << "never more than the affinity mask allows";
  if (old) ::setenv("OMP_NUM_THREADS", saved.c_str(), 1);
}

TEST(Threads, CgroupQuotaOfTheProcessAndItsParents) {
  const auto root = fs::temp_directory_path() / ("batchcam-cgroup-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "user.slice" / "job");
  const auto write = [](const fs::path& p, const std::string& text) { std::ofstream(p) << text; };
  // v2: 1.5 CPUs on the parent, unlimited on the process's own group -> 2.
  write(root / "user.slice" / "cpu.max", "150000 100000\n");
  write(root / "user.slice" / "job" / "cpu.max", "max 100000\n");
  EXPECT_EQ(core::cgroup_cpu_limit("0::/user.slice/job\n", root.string()), 2);
  // No quota anywhere -> 0.
  write(root / "user.slice" / "cpu.max", "max 100000\n");
  EXPECT_EQ(core::cgroup_cpu_limit("0::/user.slice/job\n", root.string()), 0);
  // v1: cpu,cpuacct controller with a quota of 1 CPU.
  fs::create_directories(root / "cpu,cpuacct" / "docker" / "abc");
  write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "100000\n");
  write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(core::cgroup_cpu_limit("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n", root.string()), 1);
  fs::remove_all(root);
}

TEST(Generators, WithCpuSeedIsRepeatableAndLeavesTheCallersStateAlone) {
  torch::manual_seed(123);
  const auto before = core::generator_state();
  const auto a = core::with_cpu_seed(7, [] { return torch::rand({5}); });
  const auto b = core::with_cpu_seed(7, [] { return torch::rand({5}); });
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_TRUE(torch::equal(core::generator_state().cpu, before.cpu));
  const auto next = torch::rand({3});
  core::set_generator_state(before);
  EXPECT_TRUE(torch::equal(torch::rand({3}), next));
}
