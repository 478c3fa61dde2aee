// Runs the batchcam executable as a user would and checks exit codes and messages.

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace {
struct Result {
  int code;
  std::string out;  // stdout and stderr together
};

Result run(const std::string& args) {
  const std::string cmd = std::string(BATCHCAM_CLI) + " " + args + " 2>&1";
  Result r{-1, ""};
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), pipe)) r.out += buf.data();
  const int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void write_text(const std::string& path, const std::string& content) { std::ofstream(path) << content; }

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}
}  // namespace

TEST(Cli, HelpListsEveryTrainOptionWithItsDefault) {
  const auto top = run("--help");
  EXPECT_EQ(top.code, 0);
  EXPECT_NE(top.out.find("train"), std::string::npos);
  const auto help = run("train --help");
  EXPECT_EQ(help.code, 0);
  for (const char* opt : {"--dataset TEXT:{shapes}=shapes", "--epochs INT:INT in [1 - 100000]=4", "--lr FLOAT:POSITIVE=0.003",
                          "--lambda-proto", "--lambda-batch", "--distance-proto", "--distance-batch", "--prototype",
                          "--batch-target", "--cam-warmup-epochs", "--target-layer", "--model", "--seed UINT=0"}) {
    EXPECT_NE(help.out.find(opt), std::string::npos) << opt;
  }
}

TEST(Cli, UnknownOptionOrBadValueIsOneLineAndExitCode2) {
  for (const char* args : {"train --bogus", "train --epochs abc", "train --distance l7", "train --model resnet-1000",
                           "frobnicate"}) {
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
  EXPECT_TRUE(std::filesystem::exists(dir / "tiny" / "checkpoint.pt"));
  EXPECT_TRUE(std::filesystem::exists(dir / "tiny" / "metrics.jsonl"));
  // An unusable output directory: one clear line, exit code 1.
  const auto bad = run("train --quiet --train-size 64 --test-size 16 --out-dir /proc/batchcam-nope");
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
  const auto r = run("export " + (dir / "e" / "checkpoint.pt").string() + " " + out);
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
