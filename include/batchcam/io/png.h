#pragma once
// PNG output (libpng) and the colour maps used for heat maps.

#include <torch/types.h>

#include <string>

namespace batchcam::io {

/// Encodes image [H, W] (gray) or [H, W, 3] (RGB), uint8, as PNG bytes.
std::string encode_png(const torch::Tensor& image);

/// Writes the PNG atomically. Throws std::runtime_error naming the path on failure.
void write_png(const std::string& path, const torch::Tensor& image);

/// Maps values in [0, 1] ([H, W]) to RGB uint8 [H, W, 3] with a perceptually ordered
/// black-purple-orange-yellow ramp (an approximation of matplotlib's "inferno").
torch::Tensor heat_colors(const torch::Tensor& map);

/// Gray image [H, W] in [0, 1] blended with the heat colours of `map` [H, W]:
/// (1 - alpha) * gray + alpha * heat. -> [H, W, 3] uint8.
torch::Tensor overlay(const torch::Tensor& gray, const torch::Tensor& map, double alpha = 0.5);

}  // namespace batchcam::io
