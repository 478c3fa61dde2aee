#pragma once
// Whole-file reading and atomic writing: every file batchcam reads or writes goes through
// these two. Free of LibTorch.

#include <string>

namespace batchcam::io {

/// The whole file as bytes. Throws std::runtime_error "PATH: no such file" or
/// "PATH: cannot read (reason)".
std::string read_file(const std::string& path);

/// Writes `content` to `path` atomically (temporary file in the same directory, fsync, rename).
/// A symbolic link is followed (its target is replaced); a FIFO or device is written directly.
/// Throws std::runtime_error "PATH: cannot write (reason)".
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace batchcam::io
