// Runs the batchcam executable as a user would and checks exit codes and messages.

#include "batchcam/train/checkpoint.h"
#include "support/process.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
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

using batchcam::test_support::wait_exit;
using batchcam::test_support::wait_for_file;

// Starts the CLI in the background with its output in `log`; returns its pid.
pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  return batchcam::test_support::spawn_process(BATCHCAM_CLI, args, {}, log);
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
           {"--augment", "none"}, {"--log-every", "10"}, {"--max-skipped-steps", "20"},
           {"--lambda-rrr", "0"}, {"--lambda-proto-rrr", "0"}}) {
    const auto line = option_line(help.out, option);
    EXPECT_NE(line, "") << option << " missing from:\n" << help.out;
    // CLI11 writes the default as "=4" (Debian 12's 2.3) or "[4]" (later releases), after the type.
    const auto ends = [&](const std::string& text) {
      const auto at = line.find(text);
      return at != std::string::npos && (at + text.size() == line.size() || line[at + text.size()] == ' ');
    };
    EXPECT_TRUE(ends("=" + default_value) || ends("[" + default_value + "]")) << option << ": " << line;
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
  EXPECT_NE(r.out.find("epochs on cpu."), std::string::npos) << r.out;
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

TEST(Cli, RrrWithTheSpuriousPatchAndPrototypeRrrWithoutMasksTrainAndLogTheirTerms) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-rrr-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const std::string common = " --train-size 256 --test-size 64 --epochs 1 --batch-size 64 --no-report --augment shift"
                             " --out-dir " + dir.string();
  const auto both = run("train --spurious --lambda-rrr 10 --lambda-proto-rrr 1 --run-name both" + common);
  ASSERT_EQ(both.code, 0) << both.out;
  EXPECT_NE(both.out.find(" rrr "), std::string::npos) << "the progress lines show the terms that are on:\n" << both.out;
  EXPECT_NE(both.out.find(" proto-rrr "), std::string::npos) << both.out;
  const auto metrics = nlohmann::json::parse(read_text((dir / "both" / "metrics.jsonl").string()));
  EXPECT_EQ(metrics.at("lambda_rrr").get<double>(), 10.0);
  EXPECT_EQ(metrics.at("lambda_proto_rrr").get<double>(), 1.0);
  EXPECT_GT(metrics.at("train_rrr").get<double>(), 0.0);
  EXPECT_GT(metrics.at("train_proto_rrr").get<double>(), 0.0);
  // Each term in its own place: the loss is CE + 1 x proto (the default) + 10 x rrr + 1 x proto-rrr.
  const double sum = metrics.at("train_ce").get<double>() + metrics.at("train_proto").get<double>() +
                     10 * metrics.at("train_rrr").get<double>() + metrics.at("train_proto_rrr").get<double>();
  EXPECT_NEAR(metrics.at("train_loss").get<double>(), sum, 1e-5 * sum);
  // Prototype RRR needs no annotation: shapes without the patch have none.
  const auto proto_rrr = run("train --quiet --lambda-proto-rrr 1 --run-name proto" + common);
  EXPECT_EQ(proto_rrr.code, 0) << proto_rrr.out;
  // RRR on data without annotation masks: one line naming the option and what has masks.
  const auto refused = run("train --lambda-rrr 1 --run-name refused" + common);
  EXPECT_EQ(refused.code, 2) << refused.out;
  EXPECT_EQ(count_lines(refused.out), 1) << refused.out;
  EXPECT_NE(refused.out.find("'lambda_rrr'"), std::string::npos) << refused.out;
  EXPECT_NE(refused.out.find("decoy-mnist"), std::string::npos) << refused.out;
  EXPECT_FALSE(std::filesystem::exists(dir / "refused"));
  std::filesystem::remove_all(dir);
}

TEST(Cli, CamMethodTrainsAndEvalExplainAndReportTakeAnother) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-methods-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const auto r = run("train --quiet --no-report --train-size 128 --test-size 32 --epochs 1 --batch-size 32 "
                     "--cam-method cam --out-dir " + dir.string() + " --run-name m");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(read_text((dir / "m" / "config.json").string()).find("\"cam_method\": \"cam\""), std::string::npos);
  const auto run_dir = (dir / "m").string();
  const auto json_file = (dir / "eval.json").string();
  const auto eval_run = run("eval " + run_dir + " --faithfulness-count 8 --randomization-count 8 --out " + json_file);
  ASSERT_EQ(eval_run.code, 0) << eval_run.out;
  EXPECT_EQ(nlohmann::json::parse(read_text(json_file)).at("cam_method"), "cam") << "the run's method by default";
  const auto eval_other = run("eval " + run_dir + " --method layercam --faithfulness-count 8 --randomization-count 8");
  ASSERT_EQ(eval_other.code, 0) << eval_other.out;
  EXPECT_NE(eval_other.out.find("(CAM method: layercam)"), std::string::npos) << eval_other.out;
  const auto explained = run("explain " + run_dir + " --method grad-cam++ --count 3 --out " + (dir / "x").string());
  ASSERT_EQ(explained.code, 0) << explained.out;
  EXPECT_NE(explained.out.find("wrote 3 explanations (grad-cam++:"), std::string::npos) << explained.out;
  const auto bad = run("explain " + run_dir + " --method gradcam");
  EXPECT_EQ(bad.code, 2) << bad.out;
  const auto reported = run("report " + run_dir + " --method hirescam");
  ASSERT_EQ(reported.code, 0) << reported.out;
  EXPECT_EQ(nlohmann::json::parse(read_text(run_dir + "/eval.json")).at("cam_method"), "hirescam");
  EXPECT_NE(read_text(run_dir + "/report.html").find("CAM method: hirescam"), std::string::npos);
  // The closed form needs a pooling-and-linear head: ConvNeXt's has a LayerNorm.
  const auto convnext = run("train --quiet --model convnext-v2-atto --cam-method cam --train-size 32 --test-size 8 "
                            "--out-dir " + dir.string());
  EXPECT_EQ(convnext.code, 2) << convnext.out;
  EXPECT_NE(convnext.out.find("batchcam: error: config: 'cam_method' cam needs a head of global average pooling"),
            std::string::npos)
      << convnext.out;
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
  // Alone the steps take 0; beside other tests under ctest -j2 a median of 391 was seen once
  // (CI at 21b1a25), hence a bound of 1,000: still a tenth of glibc's defaults.
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-faults-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto json_path = (dir / "bench.json").string();
  const auto r = run("bench --models simple-cnn --repetitions 3 --warmup 2 --no-memory --no-per-sample --epoch-images 0 "
                     "--folder-images 0 --no-cam-methods --no-input-gradients --threads 2 --json " + json_path);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto bench = nlohmann::json::parse(read_text(json_path));
  for (const char* step : {"ce", "batchcam"}) {
    EXPECT_LT(bench.at("models").at("simple-cnn").at(step).at("median_page_faults").get<double>(), 1000.0) << step;
  }
  EXPECT_FALSE(bench.contains("input_gradients"));
  std::filesystem::remove_all(dir);
}

TEST(Cli, BenchTimesTheInputGradientTermsAgainstCeOnly) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-bench-rrr-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto json_path = (dir / "bench.json").string();
  const auto r = run("bench --models simple-cnn --repetitions 2 --warmup 1 --no-memory --no-per-sample "
                     "--epoch-images 0 --folder-images 0 --no-cam-methods --threads 2 --json " + json_path);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("Prototype RRR"), std::string::npos) << r.out;
  const auto bench = nlohmann::json::parse(read_text(json_path)).at("input_gradients").at("simple-cnn");
  const auto& steps = bench.at("step_ms");
  for (const char* variant : {"ce", "rrr", "proto_rrr"}) {
    EXPECT_EQ(steps.at(variant).at("ms").size(), 2u) << variant;  // one time per repetition
    EXPECT_GT(steps.at(variant).at("median_ms").get<double>(), 0.0) << variant;
  }
  const double ce = steps.at("ce").at("median_ms").get<double>();
  EXPECT_DOUBLE_EQ(bench.at("rrr_over_ce").get<double>(), steps.at("rrr").at("median_ms").get<double>() / ce);
  EXPECT_DOUBLE_EQ(bench.at("proto_rrr_over_ce").get<double>(),
                   steps.at("proto_rrr").at("median_ms").get<double>() / ce);
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
  const auto bad = run("train --resume " + (dir / "killed").string() + " --lr 0.5");
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("--lr cannot be combined"), std::string::npos) << bad.out;
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
    reached = read_text(log).find("final outputs: ") != std::string::npos;
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

// Issue 16: what a new user trips over.

namespace {
// Runs the CLI on a pseudo-terminal `columns` wide; everything it wrote there, or nothing
// when no pseudo-terminal can be opened (a chroot without /dev/pts).
std::optional<std::string> run_on_terminal(const std::vector<std::string>& args, int columns) {
  winsize size{};
  size.ws_row = 24;
  size.ws_col = static_cast<unsigned short>(columns);
  int terminal = -1;
  const pid_t pid = ::forkpty(&terminal, nullptr, nullptr, &size);
  if (pid < 0) return std::nullopt;
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(BATCHCAM_CLI)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(BATCHCAM_CLI, argv.data());
    ::_exit(127);
  }
  std::string out;
  std::array<char, 4096> buf{};
  for (;;) {
    const ssize_t n = ::read(terminal, buf.data(), buf.size());
    if (n > 0) {
      out.append(buf.data(), static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;  // EIO once the program has exited and closed the terminal
    }
  }
  ::close(terminal);
  EXPECT_EQ(wait_exit(pid), 0) << out;
  return out;
}

// The text a terminal shows for each '\r'- or '\n'-separated piece, escape sequences removed.
std::vector<std::string> terminal_pieces(const std::string& out) {
  std::vector<std::string> pieces(1);
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == '\033' && i + 1 < out.size() && out[i + 1] == '[') {
      i += 2;
      while (i < out.size() && !std::isalpha(static_cast<unsigned char>(out[i]))) ++i;
    } else if (out[i] == '\r' || out[i] == '\n') {
      if (!pieces.back().empty()) pieces.emplace_back();
    } else {
      pieces.back() += out[i];
    }
  }
  return pieces;
}

std::filesystem::path temp_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}
}  // namespace

TEST(NewUser, TheProgressLineFitsAn80ColumnTerminalUpdatesInPlaceAndShowsOnlyTermsThatAreOn) {
  const auto dir = temp_dir("tty");
  const auto terminal = run_on_terminal({"train", "--train-size", "320", "--test-size", "32", "--batch-size", "32",
                                         "--epochs", "1", "--log-every", "1", "--out-dir", dir.string()},
                                        80);
  if (!terminal) GTEST_SKIP() << "no pseudo-terminal can be opened here: " << std::strerror(errno);
  const auto& out = *terminal;
  int progress = 0;
  for (const auto& piece : terminal_pieces(out)) {
    if (piece.rfind("epoch 1/1 [", 0) != 0) continue;
    ++progress;
    EXPECT_LE(piece.size(), 79u) << "wraps at 80 columns: '" << piece << "'";
    EXPECT_NE(piece.find("ETA "), std::string::npos) << piece;
    EXPECT_NE(piece.find("proto "), std::string::npos) << "the Prototype Loss is on by default: " << piece;
    EXPECT_EQ(piece.find("batch "), std::string::npos) << "the Batch-CAM Loss is off by default: " << piece;
  }
  EXPECT_EQ(progress, 10) << "one in-place update per step:\n" << out;
  // A wider terminal has room for the speed too.
  const auto wide = run_on_terminal({"train", "--train-size", "64", "--test-size", "16", "--batch-size", "32", "--epochs",
                                     "1", "--no-report", "--out-dir", dir.string()},
                                    120);
  ASSERT_TRUE(wide.has_value());
  EXPECT_NE(wide->find(" img/s ETA "), std::string::npos) << *wide;
  // Redrawn in place: no newline between the first and the last drawing of the line.
  const auto first = out.find("epoch 1/1 ["), last = out.rfind("epoch 1/1 [");
  ASSERT_NE(first, std::string::npos) << out;
  EXPECT_EQ(out.substr(first, last - first).find('\n'), std::string::npos) << out;
  EXPECT_NE(out.find("final outputs: evaluation of 32 test images"), std::string::npos) << out;
  EXPECT_NE(out.find("final outputs: report.html"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
}

TEST(NewUser, APipeGetsProgressLinesForTheFinalOutputsAndTheSummaryGivesBothTimes) {
  const auto dir = temp_dir("pipe");
  const auto r = run("train --train-size 128 --test-size 32 --batch-size 32 --epochs 1 --out-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* part : {"final outputs: evaluation of 32 test images", "final outputs: deletion and insertion",
                           "final outputs: parameter randomisation check", "final outputs: report.html",
                           "training time", "total time"}) {
    EXPECT_NE(r.out.find(part), std::string::npos) << part << " missing from:\n" << r.out;
  }
  EXPECT_EQ(r.out.find("batch 0.0000"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

TEST(NewUser, NoReportSkipsTheFinalOutputsAndSaysHowToWriteThem) {
  const auto dir = temp_dir("noreport");
  const auto r = run("train --quiet --no-report --train-size 64 --test-size 16 --batch-size 32 --epochs 1 --out-dir " +
                     dir.string() + " --run-name n");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(std::filesystem::exists(dir / "n" / "report.html"));
  EXPECT_FALSE(std::filesystem::exists(dir / "n" / "eval.json"));
  EXPECT_NE(r.out.find("batchcam report " + (dir / "n" / "last.pt").string()), std::string::npos) << r.out;
  const auto again = run("train --quiet --resume " + (dir / "n").string());
  EXPECT_EQ(again.code, 1) << again.out;
  EXPECT_NE(again.out.find("already complete"), std::string::npos) << again.out;
  const auto report = run("report " + (dir / "n" / "last.pt").string());
  ASSERT_EQ(report.code, 0) << report.out;
  for (const char* file : {"report.html", "eval.json", "prototypes.png", "samples.png"}) {
    EXPECT_TRUE(std::filesystem::exists(dir / "n" / file)) << file;
  }
  const auto eval_json = nlohmann::json::parse(read_text((dir / "n" / "eval.json").string()));
  EXPECT_EQ(eval_json.at("checkpoint").at("path").get<std::string>(), (dir / "n" / "last.pt").string());
  std::filesystem::remove_all(dir);
}

TEST(NewUser, AFailedStartLeavesNoRunDirectory) {
  const auto dir = temp_dir("failed");
  for (const std::string args : {"--target-layer nope", "--dataset folder --data-dir /nonexistent/images",
                                 "--dataset cifar10 --data-dir /nonexistent/cifar"}) {
    const auto r = run("train --quiet " + args + " --out-dir " + dir.string());
    EXPECT_NE(r.code, 0) << args << ": " << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << args << ": " << r.out;
    EXPECT_FALSE(std::filesystem::exists(dir)) << args << ": left " << dir;
  }
}

TEST(NewUser, ResumeWithMoreEpochsContinuesAndEndsWithTheWeightsOfTheLongerRun) {
  const auto dir = temp_dir("extend");
  const std::string common = "train --quiet --device cpu --threads 2 --train-size 128 --test-size 32 --batch-size 32 "
                             "--schedule step --step-size 1 --gamma 0.5 --out-dir " + dir.string();
  ASSERT_EQ(run(common + " --epochs 3 --run-name long").code, 0);
  const auto short_run = run(common + " --epochs 1 --run-name short");
  ASSERT_EQ(short_run.code, 0) << short_run.out;
  const auto extended = run("train --quiet --resume " + (dir / "short").string() + " --epochs 3");
  ASSERT_EQ(extended.code, 0) << extended.out;
  expect_same_weights((dir / "long" / "last.pt").string(), (dir / "short" / "last.pt").string());
  // The same metrics, epoch by epoch (the times aside).
  const auto metrics = [&](const std::string& run_name) {
    std::vector<nlohmann::json> lines;
    std::istringstream in(read_text((dir / run_name / "metrics.jsonl").string()));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("seconds");
      lines.push_back(j);
    }
    return lines;
  };
  ASSERT_EQ(metrics("short").size(), 3u);
  EXPECT_EQ(nlohmann::json(metrics("short")).dump(), nlohmann::json(metrics("long")).dump());
  const auto config = nlohmann::json::parse(read_text((dir / "short" / "config.json").string()));
  EXPECT_EQ(config.at("epochs").get<int>(), 3) << "config.json follows the extension";
  // Fewer epochs than done: refused, naming what is possible.
  const auto fewer = run("train --quiet --resume " + (dir / "short").string() + " --epochs 2");
  EXPECT_EQ(fewer.code, 2) << fewer.out;
  EXPECT_NE(fewer.out.find("can only be extended (--epochs >= 3)"), std::string::npos) << fewer.out;
  std::filesystem::remove_all(dir);
}

TEST(NewUser, MessagesSayWhatIsExpectedAndSuggestTheNearestName) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train --lr -1", "--lr: must be > 0, got -1"},
      {"train --epochs=abc", "--epochs: must be an integer, got 'abc'"},
      {"train --epochs 0", "--epochs: must be in [1, 100000], got 0"},
      {"train --gamma 2", "--gamma: must be in (0, 1], got 2"},
      {"trian", "did you mean 'train'?"},
      {"train --epoch 3", "did you mean '--epochs'?"},
      {"eval " + std::filesystem::temp_directory_path().string() + " --randomisation-count",
       "did you mean '--randomization-count'?"},
      {"train --epochs 0 --quite", "--epochs: must be in [1, 100000], got 0 (see"}};  // no suggestion for a value
  for (const auto& [args, expected] : cases) {
    const auto r = run(args);
    EXPECT_EQ(r.code, 2) << args << ": " << r.out;
    EXPECT_EQ(count_lines(r.out), 1) << args << ": " << r.out;
    EXPECT_NE(r.out.find(expected), std::string::npos) << args << ": " << r.out;
    EXPECT_EQ(r.out.find("1.79769"), std::string::npos) << args << ": " << r.out;
  }
  // No arguments: the usage, exit code 2.
  const auto none = run("");
  EXPECT_EQ(none.code, 2) << none.out;
  EXPECT_NE(none.out.find("Usage:"), std::string::npos) << none.out;
  // A repeated option: the last one wins.
  const auto dir = temp_dir("repeat");
  const auto r = run("train --quiet --no-report --train-size 64 --test-size 16 --batch-size 32 --epochs 3 --epochs 02 "
                     "--out-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("for 2 epochs"), std::string::npos) << "the last value, read as decimal: " << r.out;
  std::filesystem::remove_all(dir);
}

TEST(NewUser, ARunRecordsItsProvenanceAndEvalSaysWhichCheckpointItEvaluated) {
  const auto dir = temp_dir("provenance");
  ASSERT_EQ(run("train --quiet --device cpu --train-size 64 --test-size 16 --batch-size 32 --epochs 1 --out-dir " +
                dir.string() + " --run-name p").code, 0);
  const auto config = nlohmann::json::parse(read_text((dir / "p" / "config.json").string()));
  const auto& p = config.at("provenance");
  EXPECT_EQ(p.at("batchcam").get<std::string>(), "0.2.0");
  EXPECT_TRUE(p.contains("git_commit"));
  EXPECT_EQ(p.at("libtorch").get<std::string>(), TORCH_VERSION);
  EXPECT_FALSE(p.at("host").get<std::string>().empty());
  EXPECT_EQ(p.at("device").get<std::string>(), "cpu");
  EXPECT_GE(p.at("threads").get<int>(), 1);
  EXPECT_EQ(config.at("image_size").get<int>(), 28) << "the size used is recorded, not 0";
  const auto eval_json = nlohmann::json::parse(read_text((dir / "p" / "eval.json").string()));
  EXPECT_EQ(eval_json.at("checkpoint").at("path").get<std::string>(), (dir / "p" / "last.pt").string());
  EXPECT_EQ(eval_json.at("provenance").at("libtorch").get<std::string>(), TORCH_VERSION);
  // eval, explain, report and export take RUN_OR_CHECKPOINT: a run means its best.pt, said on stderr.
  const auto e = run("eval " + (dir / "p").string() + " --json --faithfulness-count 8 --randomization-count 0 --out " +
                     (dir / "e.json").string());
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_NE(e.out.find("using " + (dir / "p" / "best.pt").string()), std::string::npos) << e.out;
  const auto evaluated = nlohmann::json::parse(read_text((dir / "e.json").string()));
  EXPECT_EQ(evaluated.at("checkpoint").at("path").get<std::string>(), (dir / "p" / "best.pt").string());
  EXPECT_EQ(evaluated.at("checkpoint").at("epoch").get<int>(), 1);
  const auto x = run("export " + (dir / "p").string() + " " + (dir / "w.pt").string());
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_NE(x.out.find("best.pt"), std::string::npos) << x.out;
  // The run's config.json still repeats the run: the provenance is not a setting.
  const auto again = run("train --quiet --no-report --config " + (dir / "p" / "config.json").string() + " --run-name q");
  EXPECT_EQ(again.code, 0) << again.out;
  std::filesystem::remove_all(dir);
}

TEST(NewUser, ScriptsDevPrintsItsUsage) {
  const std::string dev = std::string(BATCHCAM_SOURCE_DIR) + "/scripts/dev";
  const auto help = batchcam::test_support::run_shell(dev + " --help");
  EXPECT_EQ(help.code, 0) << help.out;
  EXPECT_EQ(help.out.rfind("Usage: scripts/dev COMMAND", 0), 0u) << help.out;
  EXPECT_EQ(help.out.find("set -euo"), std::string::npos) << help.out;
  const auto unknown = batchcam::test_support::run_shell(dev + " frobnicate");
  EXPECT_EQ(unknown.code, 2) << unknown.out;
  EXPECT_NE(unknown.out.find("Usage: scripts/dev"), std::string::npos) << unknown.out;
}
