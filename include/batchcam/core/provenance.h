#pragma once
// What produced a result (JSON: part of the full library, not of batchcam::core).

#include <nlohmann/json.hpp>
#include <torch/types.h>

namespace batchcam::core {

/// What produced a result, for config.json and eval.json: batchcam's version and commit,
/// LibTorch's version, the host, the device ("cpu" or "cuda:N"), the CPU threads
/// in use (at::get_num_threads) and the time (UTC, ISO 8601).
nlohmann::json provenance(const torch::Device& device);

}  // namespace batchcam::core
