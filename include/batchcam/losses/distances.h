#pragma once
// Distances between [0, 1] maps (method spec, section 5). Each returns one value per
// sample, averaged over pixels, and is differentiable in both arguments.

#include <torch/types.h>

#include <string>

namespace batchcam::losses {

enum class Distance { l1, l2, ssim };

/// "l1" | "l2" | "ssim"; throws std::invalid_argument naming the value otherwise.
Distance parse_distance(const std::string& name);
std::string to_string(Distance d);

struct SsimOptions {
  int64_t window = 11;  ///< Gaussian window side; shrunk (odd) to fit smaller maps
  double sigma = 1.5;   ///< scaled by the same factor when the window shrinks
  double k1 = 0.01;
  double k2 = 0.03;
  double data_range = 1.0;
};

/// The normalised separable Gaussian window actually used for maps of size h x w:
/// side = largest odd number <= min(window, h, w), sigma scaled by side / window.
/// Returns [side, side] in `dtype`, computed on `device` (no host-to-device copy per call).
torch::Tensor ssim_window(int64_t h, int64_t w, const SsimOptions& options, torch::ScalarType dtype,
                          torch::Device device = torch::kCPU);

/// SSIM of Wang et al. 2004 with "valid" windows only, mean of the SSIM map.
/// a, b [B, H, W] -> [B]. Equals 1 for identical maps.
torch::Tensor ssim(const torch::Tensor& a, const torch::Tensor& b, const SsimOptions& options = {});

/// l1: mean |a - b|; l2: mean (a - b)^2; ssim: 1 - SSIM(a, b). a, b [B, H, W] -> [B].
torch::Tensor distance(Distance d, const torch::Tensor& a, const torch::Tensor& b);

}  // namespace batchcam::losses
