// libFuzzer target for the checkpoint reader (train/checkpoint.cpp). Any file must either
// load, with every weight of the shape the model expects, or be refused with
// std::runtime_error; anything else (a crash, a sanitizer report, another exception) is a
// bug. What it reaches: the format-3 header, the size and SHA-256 checks, and (for the
// unchanged seed and mutations of the header that keep it valid) the archive, configuration,
// weights and optimiser state behind them. A mutated payload never matches its checksum, so
// the archive's own parser is not fuzzed here: it is LibTorch's, and it crashes on damaged
// bytes (the first campaign found a segfault in its TorchScript type parser), which is why
// format 3 verifies the bytes first. Inputs without the format-3 header are skipped for the
// same reason: batchcam 0.1's formats go to that parser unverified.
// Built with -DBATCHCAM_FUZZ=ON by fuzz/campaign.sh; its seed comes from checkpoint_seeds.

#include "batchcam/train/checkpoint.h"
#include "batchcam/train/optimization.h"

#include <torch/torch.h>

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string magic = "batchcam-checkpoint\n";
  if (size < magic.size() || std::memcmp(data, magic.data(), magic.size()) != 0) return 0;
  // The reader takes a path: the input goes to a file of this process (memory-backed where /dev/shm exists).
  static const std::string path =
      std::string(::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") + "/batchcam-fuzz-" + std::to_string(::getpid()) + ".pt";
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data),
                                                                 static_cast<std::streamsize>(size));
  try {
    const auto ck = batchcam::train::load_checkpoint(path);
    const auto fresh = batchcam::models::make_model(ck.spec);
    const auto loaded = ck.model->named_parameters();
    for (const auto& p : fresh->named_parameters()) {
      if (!loaded.contains(p.key()) || loaded[p.key()].sizes() != p.value().sizes()) __builtin_trap();
    }
    if (ck.has_optimizer) {
      auto optimizer = batchcam::train::make_optimizer(ck.config, ck.model->parameters());
      batchcam::train::restore_optimizer(path, *optimizer);
    }
  } catch (const std::runtime_error&) {
  }
  return 0;
}
