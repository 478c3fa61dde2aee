#pragma once
// Running commands from tests: the shell command's exit code and its output.

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

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

}  // namespace batchcam::test_support
