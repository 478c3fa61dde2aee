// libFuzzer target for the IDX parser (and the gzip path in front of it). Any input must
// either parse or throw std::runtime_error; anything else (a crash, a sanitizer report,
// another exception) is a bug. Build and run: see fuzz/CMakeLists.txt.

#include "batchcam/data/idx.h"

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto array = batchcam::data::parse_idx(std::string(reinterpret_cast<const char*>(data), size), "input");
    size_t count = 1;
    for (const auto d : array.dims) count *= static_cast<size_t>(d);
    if (count != array.values.size()) __builtin_trap();  // the parser's own promise
  } catch (const std::runtime_error&) {
  }
  return 0;
}
