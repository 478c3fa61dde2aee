// libFuzzer target for the PNG and JPEG decoders (io/image.cpp), header checks included.
// Any input must either decode to as many pixels as its dimensions say, or throw
// std::runtime_error; anything else (a crash, a sanitizer report, another exception,
// memory beyond the limit) is a bug.

#include "batchcam/io/image.h"

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr int64_t kLimit = int64_t{1} << 20;  // 1 Mi pixels: the header check bounds memory
  try {
    const auto image = batchcam::io::decode_image(std::string(reinterpret_cast<const char*>(data), size), "input", kLimit);
    if (image.width * image.height > kLimit) __builtin_trap();
    if (static_cast<int64_t>(image.pixels.size()) != image.width * image.height * image.channels) __builtin_trap();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
