#include "batchcam/io/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace batchcam::io {

namespace fs = std::filesystem;

namespace {
void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Moves a finished temporary file over `path` and makes the rename durable.
void commit_temp(const std::string& tmp, const std::string& path) {
  fsync_path(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write (" + err + ")");
  }
  const auto dir = fs::path(path).parent_path();
  fsync_path(dir.empty() ? "." : dir.string());
}

// The file a path names: symbolic links followed (even to a target that does not exist yet).
std::string resolve_links(const std::string& requested) {
  fs::path path = requested;
  for (int hops = 0; hops < 40 && fs::is_symlink(fs::symlink_status(path)); ++hops) {
    const auto target = fs::read_symlink(path);
    path = target.is_absolute() ? target : path.parent_path() / target;
  }
  return path.string();
}
}  // namespace

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw std::runtime_error(path + ": no such file");
  if (fs::is_directory(path, ec)) throw std::runtime_error(path + ": cannot read (is a directory)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot read (" + std::strerror(errno) + ")");
  std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw std::runtime_error(path + ": cannot read (read error)");
  return bytes;
}

void write_file_atomic(const std::string& requested, const std::string& content) {
  // A link keeps pointing where it did: its target is replaced. A FIFO or a device is
  // written directly: renaming a file over it would replace the node itself.
  const auto path = resolve_links(requested);
  const auto status = fs::status(path);
  if (fs::exists(status) && !fs::is_regular_file(status)) {
    std::ofstream out(path, std::ios::binary);
    out << content;
    out.close();
    if (!out) throw std::runtime_error(requested + ": cannot write (" + std::strerror(errno) + ")");
    return;
  }
  const auto tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    out.close();
    if (!out) {
      const std::string err = std::strerror(errno);
      std::remove(tmp.c_str());
      throw std::runtime_error(path + ": cannot write (" + err + ")");
    }
  }
  commit_temp(tmp, path);
}

}  // namespace batchcam::io
