#pragma once
// PNG output (libpng) and the colour maps used for heat maps.

#include <torch/types.h>

#include <string>

namespace batchcam::io {

/// Encodes image [H, W] (gray) or [H, W, 3] (RGB), uint8, as PNG bytes.
std::string encode_png(const torch::Tensor& image);

/// Writes the PNG atomically. Throws std::runtime_error naming the path on failure.
void write_png(const std::string& path, const torch::Tensor& image);

}  // namespace batchcam::io
