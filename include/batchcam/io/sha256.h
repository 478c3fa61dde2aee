#pragma once
// SHA-256 (FIPS 180-4) checksums: of downloaded files, of checkpoints' payloads and of the
// TorchScript files a checkpoint refers to. Free of LibTorch and of other libraries, so that
// a build without OpenSSL reads and writes the same checkpoints.

#include <cstddef>
#include <string>

namespace batchcam::io {

/// SHA-256 of a file as lower-case hex. Throws std::runtime_error naming an unreadable file.
std::string sha256_file(const std::string& path);
/// SHA-256 of bytes in memory as lower-case hex.
std::string sha256_bytes(const void* data, size_t size);

}  // namespace batchcam::io
