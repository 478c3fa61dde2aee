#pragma once
// Downloading the files a dataset needs (libcurl; a build with BATCHCAM_WITH_DOWNLOAD=OFF
// only finds them). Free of LibTorch.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::io {

/// A file a dataset needs, with its published SHA-256 (of the file as downloaded).
struct DataFile {
  std::string name;
  std::string sha256;
  int64_t size = 0;  ///< bytes; a download is stopped past it (0 = unknown, no cap)
};

/// The file as present in dir: `name`, or `name` without ".gz" (uncompressed); "" if neither.
std::string present_file(const std::string& dir, const std::string& name);

/// Makes sure every file is in `dir` (as name, or uncompressed without ".gz"); missing
/// ones are downloaded from the first mirror that answers (base URLs; the environment
/// variable BATCHCAM_DATA_MIRROR replaces the list), verified and moved into place
/// atomically. A download is stopped as soon as it exceeds the file's known size (a mirror
/// sending endless data cannot fill the disk). Throws std::runtime_error naming the missing
/// files, the mirrors tried and what to do, or a checksum mismatch.
void ensure_files(const std::string& dir, const std::vector<DataFile>& files, std::vector<std::string> mirrors);

}  // namespace batchcam::io
