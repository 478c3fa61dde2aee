#include "batchcam/data/idx.h"

#include "batchcam/io/file.h"

#include <zlib.h>

#include <fstream>
#include <iterator>
#include <stdexcept>

namespace batchcam::data {

namespace {
[[noreturn]] void fail(const std::string& name, const std::string& problem) {
  throw std::runtime_error(name + ": " + problem);
}

uint32_t big_endian_u32(const std::string& bytes, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(bytes[at + i]);
  return v;
}

bool is_gzip(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0x1f && static_cast<uint8_t>(bytes[1]) == 0x8b;
}
}  // namespace

std::string gunzip(const std::string& bytes, const std::string& name, size_t max_bytes) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) fail(name, "cannot initialise zlib");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  std::string out;
  char buffer[1 << 16];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buffer);
    zs.avail_out = sizeof buffer;
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buffer, sizeof buffer - zs.avail_out);
    if (out.size() > max_bytes) rc = Z_MEM_ERROR;
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) break;  // input ended before the stream did
  }
  const std::string message = zs.msg ? zs.msg : "";
  inflateEnd(&zs);
  if (rc == Z_STREAM_END) return out;
  if (rc == Z_BUF_ERROR) fail(name, "truncated gzip stream (the file ends before the compressed data does)");
  if (rc == Z_MEM_ERROR) fail(name, "gzip data expands beyond " + std::to_string(max_bytes) + " bytes");
  fail(name, "corrupt gzip data (" + (message.empty() ? "zlib error " + std::to_string(rc) : message) + ")");
}

IdxArray parse_idx(const std::string& raw, const std::string& name) {
  const std::string bytes = is_gzip(raw) ? gunzip(raw, name) : raw;
  if (bytes.size() < 4) fail(name, "too short for an IDX header (" + std::to_string(bytes.size()) + " bytes)");
  if (bytes[0] != 0 || bytes[1] != 0) fail(name, "wrong magic number (not an IDX file: the first two bytes must be 0)");
  const auto type = static_cast<uint8_t>(bytes[2]);
  if (type != 0x08) {
    fail(name, "unsupported IDX element type 0x" + std::string(1, "0123456789ABCDEF"[type >> 4]) +
                   "0123456789ABCDEF"[type & 15] + " (expected 0x08, unsigned bytes)");
  }
  const auto rank = static_cast<size_t>(static_cast<uint8_t>(bytes[3]));
  if (rank == 0) fail(name, "IDX header has 0 dimensions");
  const size_t header = 4 + 4 * rank;
  if (bytes.size() < header) fail(name, "truncated IDX header (" + std::to_string(rank) + " dimensions announced)");
  IdxArray array;
  uint64_t count = 1;
  const uint64_t available = bytes.size() - header;
  for (size_t d = 0; d < rank; ++d) {
    const uint32_t n = big_endian_u32(bytes, 4 + 4 * d);
    array.dims.push_back(n);
    // Stop multiplying once the count exceeds the data present, so it cannot overflow.
    if (count <= available) count *= n;
  }
  if (count > available) {
    fail(name, "truncated: the header announces more values than the " + std::to_string(available) +
                   " bytes of data present");
  }
  if (count < available) {
    fail(name, std::to_string(available - count) + " bytes after the " + std::to_string(count) +
                   " values the header announces");
  }
  array.values.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return array;
}

IdxArray read_idx(const std::string& path) {
  return parse_idx(io::read_file(path), path);
}

}  // namespace batchcam::data
