#pragma once
// The IDX file format of MNIST and Fashion-MNIST, raw or gzip'd. Free of LibTorch so the
// parser can be fuzzed on its own (fuzz/idx_fuzzer.cpp).

#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::data {

/// An IDX array of unsigned bytes (element type 0x08), row-major.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> values;
};

/// Decompresses a gzip stream held in memory. Throws std::runtime_error naming `name`
/// for corrupt or truncated data, or output beyond `max_bytes`.
std::string gunzip(const std::string& bytes, const std::string& name, size_t max_bytes = size_t{1} << 30);

/// Parses IDX bytes (gzip'd when they start with the gzip magic). Throws
/// std::runtime_error naming `name` and the problem: wrong magic, unsupported element
/// type, truncated data or trailing bytes.
IdxArray parse_idx(const std::string& bytes, const std::string& name);

/// Reads and parses an IDX file, raw or gzip'd.
IdxArray read_idx(const std::string& path);

}  // namespace batchcam::data
