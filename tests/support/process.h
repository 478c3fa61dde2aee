#pragma once
// Running commands from tests: the shell command's exit code and its output.

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

namespace batchcam::test_support {

struct CommandResult {
  int code;         ///< exit code, -1 when the command did not exit normally
  std::string out;  ///< stdout and stderr together
};

/// Runs `command` with /bin/sh, stderr merged into stdout.
inline CommandResult run_shell(const std::string& command) {
  CommandResult r{-1, ""};
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  while (std::fgets(buf.data(), buf.size(), pipe)) r.out += buf.data();
  const int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Starts `program` with `args` in the background, with `env` ("NAME=value" each) added to
/// its environment and its stdout and stderr in `log`; returns its pid.
inline pid_t spawn_process(const std::string& program, const std::vector<std::string>& args,
                           const std::vector<std::string>& env, const std::string& log) {
  // What the parent has buffered would otherwise be written again by the child.
  std::cout.flush();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv{const_cast<char*>(program.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (!std::freopen(log.c_str(), "w", stdout) || !std::freopen(log.c_str(), "a", stderr)) ::_exit(127);
    ::execv(program.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

/// Waits for the process; its exit code, or 128 + signal when a signal ended it.
inline int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/// Polls (up to two minutes) until `path` exists.
inline bool wait_for_file(const std::filesystem::path& path) {
  for (int i = 0; i < 1200 && !std::filesystem::exists(path); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return std::filesystem::exists(path);
}

}  // namespace batchcam::test_support
