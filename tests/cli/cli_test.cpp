// Runs the batchcam executable as a user would and checks exit codes and messages.

#include "batchcam/train/checkpoint.h"
#include "support/process.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {
using Result = batchcam::test_support::CommandResult;
using batchcam::test_support::read_text;

// Runs the CLI with `args`, with `env` ("NAME=value ...") set for it.
Result run(const std::string& args, const std::string& env = "") {
  return batchcam::test_support::run_shell(env + (env.empty() ? "" : " ") + std::string(BATCHCAM_CLI) + " " + args);
}

void write_text(const std::string& path, const std::string& content) { std::ofstream(path) << content; }

// Starts the CLI in the background with its output in `log`; returns its pid.
pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(BATCHCAM_CLI)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (!std::freopen(log.c_str(), "w", stdout) || !std::freopen(log.c_str(), "a", stderr)) ::_exit(127);
    ::execv(BATCHCAM_CLI, argv.data());
    ::_exit(127);
  }
  return pid;
}

// Waits for the process; its exit code, or 128 + signal when a signal ended it.
int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Polls (up to two minutes) until `path` exists.
bool wait_for_file(const std::filesystem::path& path) {
  for (int i = 0; i < 1200 && !std::filesystem::exists(path); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return std::filesystem::exists(path);
}

void expect_same_weights(const std::string& a, const std::string& b) {
  const auto x = batchcam::train::load_checkpoint(a);
  const auto y = batchcam::train::load_checkpoint(b);
  EXPECT_EQ(x.epoch, y.epoch);
  const auto px = x.model->named_parameters();
  const auto py = y.model->named_parameters();
  ASSERT_EQ(px.size(), py.size());
  for (size_t i = 0; i < px.size(); ++i) EXPECT_TRUE(torch::equal(px[i].value(), py[i].value())) << px[i].key();
}

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}
}  // namespace

// The line of `help` that introduces `option` ("" when there is none).
std::string option_line(const std::string& help, const std::string& option) {
  std::istringstream lines(help);
  for (std::string line; std::getline(lines, line);) {
    const auto at = line.find(option);
    if (at == std::string::npos) continue;
    const char after = at + option.size() < line.size() ? line[at + option.size()] : ' ';
    if (line.find_first_not_of(' ') == at && (after == ' ' || after == ',')) return line;
  }
  return "";
}

TEST(Cli, HelpListsEveryTrainOptionWithItsDefault) {
  const auto top = run("--help");
  EXPECT_EQ(top.code, 0);
  EXPECT_NE(top.out.find("train"), std::string::npos);
  const auto help = run("train --help");
  EXPECT_EQ(help.code, 0);
  // Each option on a line of its own with its default, whatever CLI11's layout of that line.
  for (const auto& [option, default_value] : std::vector<std::pair<std::string, std::string>>{
           {"--dataset", "shapes"}, {"--epochs", "4"}, {"--lr", "0.003"}, {"--seed", "0"},
           {"--optimizer", "adam"}, {"--schedule", "constant"}, {"--device", "auto"}, {"--precision", "fp32"},
           {"--distance-proto", "l1"}, {"--prototype", "image"}, {"--batch-target", "attached"},
           {"--augment", "none"}, {"--log-every", "10"}, {"--max-skipped-steps", "20"}}) {
    const auto line = option_line(help.out, option);
    EXPECT_NE(line, "") << option << " missing from:\n" << help.out;
    EXPECT_NE(line.find(default_value), std::string::npos) << option << ": " << line;
  }
  for (const char* opt : {"--resume", "--warmup-epochs", "--grad-clip", "--label-smoothing", "--nesterov",
                          "--data-dir", "--lambda-proto", "--lambda-batch", "--distance-batch",
                          "--cam-warmup-epochs", "--target-layer", "--model", "--threads"}) {
    EXPECT_NE(option_line(help.out, opt), "") << opt;
  }
}

TEST(Cli, EnvReportsTheThreadsTheProcessMayUse) {
  const auto plain = run("env", "env -u OMP_NUM_THREADS");
  ASSERT_EQ(plain.code, 0) << plain.out;
  EXPECT_NE(plain.out.find("LibTorch"), std::string::npos) << plain.out;
  const auto omp = run("env", "OMP_NUM_THREADS=1");
  EXPECT_NE(omp.out.find("CPU threads 1 "), std::string::npos) << omp.out;
  // One CPU in the affinity mask gives one thread, not one per host core.
  const auto pinned = run("env", "env -u OMP_NUM_THREADS taskset -c 0");
  ASSERT_EQ(pinned.code, 0) << pinned.out;
  EXPECT_NE(pinned.out.find("CPU threads 1 "), std::string::npos) << pinned.out;
  // A training run starts with that many threads and says so.
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-threads-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto r = run("train --device cpu --train-size 64 --test-size 16 --batch-size 32 --epochs 1 --out-dir " +
                         dir.string(),
                     "env -u OMP_NUM_THREADS taskset -c 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("(1 CPU thread)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("s on cpu."), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

TEST(Cli, CudaWithoutADeviceAndFp16OnTheCpuAreOneLineErrors) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is present";
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-nocuda-" + std::to_string(::getpid()));
  const std::string out = " --out-dir " + dir.string();
  for (const auto& args : {"train --device cuda" + out, "train --device cpu --precision fp16" + out,
                           std::string("bench --device cuda:0"), "eval --device cuda " + std::filesystem::temp_directory_path().string()}) {
    const auto r = run(args);
    EXPECT_EQ(r.code, 2) << args << ": " << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << args << ": " << r.out;
    EXPECT_FALSE(std::filesystem::exists(dir)) << args << ": no run directory for a refused start";
  }
}

TEST(Cli, UnknownOptionOrBadValueIsOneLineAndExitCode2) {
  for (const char* args : {"train --bogus", "train --epochs abc", "train --distance l7", "train --model resnet-1000",
                           "frobnicate", "train --seed -1", "train --seed 99999999999999999999999",
                           "train --weight-decay 1e308"}) {
    const auto r = run(args);
    EXPECT_EQ(r.code, 2) << args << ": " << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << args << ": " << r.out;
    EXPECT_EQ(r.out.rfind("batchcam: error: ", 0), 0u) << r.out;
  }
}

TEST(Cli, TrainsATinyRunAndPrintsASummary) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-cli-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto r = run("train --quiet --train-size 128 --test-size 32 --epochs 1 --batch-size 32 --lambda-proto 0.5 "
                     "--prototype cam-ema --batch-target detached --distance ssim --out-dir " + dir.string() +
                     " --run-name tiny");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("test accuracy"), std::string::npos) << r.out;
  EXPECT_TRUE(std::filesystem::exists(dir / "tiny" / "last.pt"));
  EXPECT_TRUE(std::filesystem::exists(dir / "tiny" / "metrics.jsonl"));
  // An unusable output directory: one clear line, exit code 1.
  const auto bad = run("train --quiet --train-size 64 --test-size 16 --batch-size 32 --out-dir /proc/batchcam-nope");
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("/proc/batchcam-nope"), std::string::npos) << bad.out;
  std::filesystem::remove_all(dir);
}

TEST(Cli, ConfigFileSetsOptionsAndFlagsOverrideIt) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-cfg-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto config = (dir / "run.json").string();
  write_text(config, R"({"train_size": 96, "test_size": 16, "epochs": 2, "batch_size": 32, "lambda_batch": 0.25})");
  const auto r = run("train --quiet --config " + config + " --epochs 1 --out-dir " + dir.string() + " --run-name c");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto json = read_text((dir / "c" / "config.json").string());
  ASSERT_FALSE(json.empty());
  EXPECT_NE(json.find("\"epochs\": 1"), std::string::npos) << json;        // the flag wins
  EXPECT_NE(json.find("\"train_size\": 96"), std::string::npos) << json;   // from the file
  EXPECT_NE(json.find("\"lambda_batch\": 0.25"), std::string::npos) << json;
  // The saved config.json repeats the run (here under another name).
  const auto again = run("train --quiet --config " + (dir / "c" / "config.json").string() + " --run-name c2");
  ASSERT_EQ(again.code, 0) << again.out;
  // Unknown key, wrong type, out-of-range value: one line naming the key, exit code 2.
  for (const char* content : {R"({"epochz": 3})", R"({"epochs": "three"})", R"({"lr": -1.0})", "{not json"}) {
    write_text(config, content);
    const auto e = run("train --quiet --config " + config);
    EXPECT_EQ(e.code, 2) << content << ": " << e.out;
    EXPECT_EQ(count_lines(e.out), 1) << e.out;
    EXPECT_NE(e.out.find("run.json"), std::string::npos) << e.out;
  }
  std::filesystem::remove_all(dir);
}

TEST(Cli, WithoutATerminalProgressIsPlainLinesAndQuietSilencesThem) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-log-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const std::string args = "train --train-size 256 --test-size 32 --batch-size 32 --epochs 1 --out-dir " + dir.string();
  const auto r = run(args + " --run-name a");  // popen: stderr is a pipe, not a terminal
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("epoch 1/1 step 2/8: loss"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("epoch 1/1 step 6/8: loss"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("\r"), std::string::npos) << "no terminal control characters in a log";
  const auto q = run(args + " --run-name b --quiet");
  ASSERT_EQ(q.code, 0) << q.out;
  EXPECT_EQ(q.out.find("step"), std::string::npos) << q.out;
  std::filesystem::remove_all(dir);
}

TEST(Cli, NonFiniteLossStopsWithTheStepAndTheTerm) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-nan-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  // An absurd learning rate makes the logits overflow within a few steps.
  const auto r = run("train --quiet --train-size 256 --test-size 32 --batch-size 32 --epochs 2 --optimizer sgd "
                     "--lr 1e30 --lambda-proto 0 --lambda-batch 0 --out-dir " + dir.string() + " --run-name n");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(count_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("non-finite cross-entropy loss"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("epoch 1, step"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

TEST(Cli, TrainingStepsReuseFreedMemoryWithoutPageFaults) {
#if defined(__SANITIZE_ADDRESS__) || !defined(__GLIBC__)
  GTEST_SKIP() << "a property of glibc's malloc, which AddressSanitizer (or another libc) replaces";
#endif
  // main.cpp keeps freed blocks in the process, so after warm-up a step of batch 128 faults
  // in almost no fresh page. With glibc's defaults a SimpleCNN step takes about 11,000 minor
  // page faults (the same step in PyTorch from Python: bench/python_step.py reports them).
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-faults-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto json_path = (dir / "bench.json").string();
  const auto r = run("bench --models simple-cnn --repetitions 3 --warmup 2 --no-memory --no-per-sample --epoch-images 0 --threads 2 "
                     "--json " + json_path);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto bench = nlohmann::json::parse(read_text(json_path));
  for (const char* step : {"ce", "batchcam"}) {
    EXPECT_LT(bench.at("models").at("simple-cnn").at(step).at("median_page_faults").get<double>(), 200.0) << step;
  }
  std::filesystem::remove_all(dir);
}

TEST(Cli, ModelsListsTargetLayers) {
  const auto r = run("models");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("simple-cnn"), std::string::npos);
  EXPECT_NE(r.out.find("block3*"), std::string::npos);
  EXPECT_NE(r.out.find("11689512"), std::string::npos);  // resnet18 at 3x224x224, 1000 classes
  EXPECT_NE(r.out.find("stages.2*"), std::string::npos);
}

TEST(Cli, ExportWritesAStateDictAndRejectsBadCheckpoints) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-exp-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  ASSERT_EQ(run("train --quiet --train-size 64 --test-size 16 --epochs 1 --batch-size 32 --out-dir " + dir.string() +
                " --run-name e").code, 0);
  const auto out = (dir / "weights.pt").string();
  const auto r = run("export " + (dir / "e" / "last.pt").string() + " " + out);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(std::filesystem::file_size(out) > 1000);
  const auto junk = (dir / "junk.pt").string();
  write_text(junk, "junk");
  const auto bad = run("export " + junk + " " + out);
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_EQ(count_lines(bad.out), 1) << bad.out;
  EXPECT_NE(bad.out.find("junk.pt"), std::string::npos) << bad.out;
  std::filesystem::remove_all(dir);
}

namespace {
// A run that takes a few seconds per epoch on two busy cores.
std::vector<std::string> resumable_run(const std::filesystem::path& dir, const std::string& name) {
  return {"train", "--quiet", "--train-size", "3000", "--test-size", "64", "--epochs", "3", "--batch-size", "50",
          "--threads", "1", "--device", "cpu", "--schedule", "cosine", "--optimizer", "sgd", "--nesterov", "--lr", "0.05",
          "--out-dir", dir.string(), "--run-name", name};
}
}  // namespace

TEST(Cli, RunKilledMidEpochAndResumedEndsWithTheSameWeights) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-kill-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto log = (dir / "log.txt").string();
  ASSERT_EQ(wait_exit(spawn(resumable_run(dir, "full"), log)), 0) << read_text(log);

  const pid_t pid = spawn(resumable_run(dir, "killed"), log);
  ASSERT_TRUE(wait_for_file(dir / "killed" / "last.pt")) << read_text(log);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // into epoch 2
  ::kill(pid, SIGKILL);
  ASSERT_EQ(wait_exit(pid), 128 + SIGKILL);
  const auto killed_at = batchcam::train::load_checkpoint((dir / "killed" / "last.pt").string());
  ASSERT_LT(killed_at.epoch, 3) << "the run finished before it was killed; the test needs a longer run";

  const auto r = run("train --quiet --resume " + (dir / "killed").string());
  ASSERT_EQ(r.code, 0) << r.out;
  expect_same_weights((dir / "full" / "last.pt").string(), (dir / "killed" / "last.pt").string());
  // --resume takes the saved configuration: other flags are refused.
  const auto bad = run("train --resume " + (dir / "killed").string() + " --epochs 9");
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("--epochs"), std::string::npos) << bad.out;
  std::filesystem::remove_all(dir);
}

TEST(Cli, SigtermSavesAMidEpochCheckpointThatResumes) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-term-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto log = (dir / "log.txt").string();
  auto args = resumable_run(dir, "t");
  args[7] = "2";  // epochs
  const pid_t pid = spawn(args, log);
  ASSERT_TRUE(wait_for_file(dir / "t" / "config.json")) << read_text(log);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // inside epoch 1
  ::kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 128 + SIGTERM) << read_text(log);
  const auto out = read_text(log);
  EXPECT_NE(out.find("batchcam: terminated at epoch"), std::string::npos) << out;
  EXPECT_NE(out.find("--resume"), std::string::npos) << out;
  const auto saved = batchcam::train::load_checkpoint((dir / "t" / "last.pt").string());
  EXPECT_TRUE(saved.epoch == 1 || saved.step > 0) << "a checkpoint of the work done so far";
  const auto r = run("train --quiet --resume " + (dir / "t").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(batchcam::train::load_checkpoint((dir / "t" / "last.pt").string()).epoch, 2);
  std::filesystem::remove_all(dir);
}

TEST(Cli, MnistTrainsFromItsDirectoryAndMissingFilesWithoutNetworkFailClearly) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-mnist-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "empty");
  // Port 9 on the loopback answers nothing: the same failure as a machine without network.
  const auto offline = run("train --quiet --dataset mnist --data-dir " + (dir / "empty").string() +
                           " --out-dir " + dir.string(), "BATCHCAM_DATA_MIRROR=http://127.0.0.1:9/");
  EXPECT_EQ(offline.code, 1) << offline.out;
  EXPECT_EQ(count_lines(offline.out), 1) << offline.out;
  EXPECT_NE(offline.out.find("missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                             "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz and the download failed"),
            std::string::npos) << offline.out;
  EXPECT_NE(offline.out.find("Put the files in this directory"), std::string::npos) << offline.out;

  const auto mnist = std::filesystem::path(BATCHCAM_SOURCE_DIR) / ".." / "shared" / "data" / "mnist";
  if (!std::filesystem::exists(mnist / "train-images-idx3-ubyte.gz")) GTEST_SKIP() << mnist << " is absent";
  const auto r = run("train --quiet --dataset mnist --data-dir " + mnist.string() +
                     " --train-size 512 --test-size 256 --epochs 1 --batch-size 64 --augment shift --out-dir " +
                     dir.string() + " --run-name m");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("on mnist"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

TEST(Cli, ThreeChannelDatasetsTrainEndToEnd) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("batchcam-rgb-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "cifar");
  // CIFAR-10 binary batches of 40 records each: label byte, then 3 x 32 x 32 pixels.
  for (const char* name : {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                           "data_batch_5.bin", "test_batch.bin"}) {
    std::string bytes;
    for (int r = 0; r < 40; ++r) {
      bytes += static_cast<char>(r % 10);
      for (int i = 0; i < 3072; ++i) bytes += static_cast<char>((i * 7 + r * 13) % 256);
    }
    std::ofstream(dir / "cifar" / name, std::ios::binary) << bytes;
  }
  const auto cifar = run("train --quiet --dataset cifar10 --data-dir " + (dir / "cifar").string() +
                         " --epochs 1 --batch-size 20 --augment shift-flip --out-dir " + dir.string() + " --run-name c");
  ASSERT_EQ(cifar.code, 0) << cifar.out;
  EXPECT_EQ(batchcam::train::load_checkpoint((dir / "c" / "last.pt").string()).spec.in_channels, 3);
  const auto digits_flip = run("train --dataset mnist --augment shift-flip");
  EXPECT_EQ(digits_flip.code, 2) << digits_flip.out;
  EXPECT_NE(digits_flip.out.find("'augment'"), std::string::npos) << digits_flip.out;
  fs::remove_all(dir);
}

TEST(Cli, AFileSizeLimitWhileWritingACheckpointIsOneErrorAndLeavesNoTemporaryFile) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("batchcam-fsize-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  // ulimit -f 300: writes past 300 KiB fail (EFBIG), as on a full disk; a SimpleCNN checkpoint is ~1 MB.
  const auto r = batchcam::test_support::run_shell(
      "bash -c 'ulimit -f 300; exec " + std::string(BATCHCAM_CLI) +
      " train --quiet --device cpu --train-size 64 --test-size 16 --batch-size 32 --epochs 1 --out-dir " +
      dir.string() + " --run-name f'");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(count_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("last.pt: cannot write (File too large)"), std::string::npos) << r.out;
  for (const auto& entry : fs::directory_iterator(dir / "f")) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
  }
  fs::remove_all(dir);
}

TEST(Cli, ThreadsTheSystemRefusesAreOneErrorNotAHang) {
  // RLIMIT_NPROC counts the threads of a user and is not enforced for root, so the CLI runs
  // as `nobody` with a limit of 20; LibTorch's pthreadpool waited forever for a thread it
  // could not start. `timeout` turns a regression into a failure instead of a hung test.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the CLI as another user under a process limit";
  const std::string as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups prlimit --nproc=20 ";
  const auto probe = batchcam::test_support::run_shell(as_nobody + BATCHCAM_CLI + " --version");
  if (probe.code != 0) GTEST_SKIP() << "cannot run the CLI as nobody here: " << probe.out;
  const auto r = batchcam::test_support::run_shell(
      "timeout 120 " + as_nobody + BATCHCAM_CLI +
      " train --quiet --device cpu --threads 64 --train-size 64 --test-size 16 --epochs 1 --out-dir /nonexistent");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(count_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("64 CPU threads need 126 more threads, but thread "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("could not start: Resource temporarily unavailable"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ask for fewer with --threads"), std::string::npos) << r.out;
}

TEST(Cli, ASignalWhileTheFinalReportIsWrittenStopsAtOnceAndResumeFinishesIt) {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("batchcam-window-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto log = (dir / "log.txt").string();
  // Not quiet: the line that opens the final phase is the event the test waits for.
  const pid_t pid = spawn({"train", "--device", "cpu", "--train-size", "128", "--test-size", "1000", "--batch-size",
                           "64", "--epochs", "1", "--out-dir", dir.string(), "--run-name", "w"},
                          log);
  bool reached = false;
  for (int i = 0; i < 1200 && !reached; ++i) {
    reached = read_text(log).find("writing the final evaluation") != std::string::npos;
    if (!reached) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(reached) << read_text(log);
  ::kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 128 + SIGTERM) << "a signal in the final phase stops the process at once\n"
                                           << read_text(log);
  ASSERT_TRUE(fs::exists(dir / "w" / "last.pt"));
  EXPECT_FALSE(fs::exists(dir / "w" / "report.html"));
  const auto r = run("train --quiet --resume " + (dir / "w").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir / "w" / "report.html"));
  EXPECT_TRUE(fs::exists(dir / "w" / "eval.json"));
  const auto again = run("train --resume " + (dir / "w").string());
  EXPECT_EQ(again.code, 1) << again.out;
  EXPECT_NE(again.out.find("already complete"), std::string::npos) << again.out;
  fs::remove_all(dir);
}
