// Runs the batchcam executable as a user would and checks exit codes and messages.

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
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
                     "--out-dir " + dir.string() + " --run-name tiny");
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

TEST(Cli, ModelsListsTargetLayers) {
  const auto r = run("models");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("simple-cnn"), std::string::npos);
  EXPECT_NE(r.out.find("block3"), std::string::npos);
}
