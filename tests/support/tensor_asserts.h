#pragma once
// Tensor assertions with stated tolerances and a finite-difference gradient check.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>

namespace batchcam::test_support {

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

/// Largest relative error between the autograd gradient of scalar f at x and central
/// finite differences (double precision), over every element of x.
/// The error is scaled by the largest gradient magnitude, so that near-zero components
/// do not dominate.
inline double gradcheck_relative_error(const std::function<torch::Tensor(const torch::Tensor&)>& f, torch::Tensor x,
                                       double step = 1e-6) {
  x = x.to(torch::kDouble).detach().clone().requires_grad_(true);
  const auto analytic = torch::autograd::grad({f(x)}, {x})[0].detach().flatten();
  auto numeric = torch::zeros_like(analytic);
  torch::NoGradGuard no_grad;
  auto flat = x.view({-1});
  for (int64_t k = 0; k < flat.numel(); ++k) {
    const double orig = flat[k].item<double>();
    flat[k] = orig + step;
    const double up = f(x).item<double>();
    flat[k] = orig - step;
    const double down = f(x).item<double>();
    flat[k] = orig;
    numeric[k] = (up - down) / (2 * step);
  }
  const double scale = std::max(analytic.abs().max().item<double>(), 1e-12);
  return (analytic - numeric).abs().max().item<double>() / scale;
}

}  // namespace batchcam::test_support
