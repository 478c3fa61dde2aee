#include "batchcam/train/optimization.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace batchcam::train {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& c,
                                                        const std::vector<torch::Tensor>& parameters) {
  switch (c.optimizer) {
    case OptimizerKind::sgd:
      return std::make_unique<torch::optim::SGD>(
          parameters,
          torch::optim::SGDOptions(c.lr).momentum(c.momentum).nesterov(c.nesterov).weight_decay(c.weight_decay));
    case OptimizerKind::adamw:
      return std::make_unique<torch::optim::AdamW>(parameters,
                                                   torch::optim::AdamWOptions(c.lr).weight_decay(c.weight_decay));
    case OptimizerKind::adam:
      break;
  }
  return std::make_unique<torch::optim::Adam>(parameters, torch::optim::AdamOptions(c.lr).weight_decay(c.weight_decay));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

double learning_rate(const TrainConfig& c, int64_t step, int64_t steps_per_epoch) {
  constexpr double pi = 3.14159265358979323846;
  const double t = static_cast<double>(step);
  const double total = static_cast<double>(c.epochs) * static_cast<double>(steps_per_epoch);
  const double warm = static_cast<double>(c.warmup_epochs) * static_cast<double>(steps_per_epoch);
  const auto cosine = [&](double from, double to, double progress) {
    return to + (from - to) * 0.5 * (1.0 + std::cos(pi * std::clamp(progress, 0.0, 1.0)));
  };
  if (c.schedule == Schedule::onecycle) {
    // Rise from lr/25 to lr (over the warm-up, or the first 30% without one), then
    // anneal to lr/25e4, both along a half cosine.
    const double rise = warm > 0 ? warm : std::max(1.0, 0.3 * total);
    const double start = c.lr / 25.0;
    if (t < rise) return cosine(c.lr, start, 1.0 - t / rise);
    return cosine(c.lr, start / 1e4, (t - rise) / std::max(1.0, total - rise));
  }
  if (t < warm) return c.lr * (t + 1.0) / warm;
  if (c.schedule == Schedule::step) {
    return c.lr * std::pow(c.gamma, static_cast<double>((step / steps_per_epoch) / c.step_size));
  }
  if (c.schedule == Schedule::cosine) return cosine(c.lr, 0.0, (t - warm) / std::max(1.0, total - warm));
  return c.lr;
}

LossScaler::LossScaler(torch::Device device, LossScalerOptions options)
    : options_(options),
      scale_(torch::full({1}, options.init_scale, torch::TensorOptions().dtype(torch::kFloat32).device(device))),
      growth_tracker_(torch::zeros({1}, torch::TensorOptions().dtype(torch::kInt32).device(device))) {}

torch::Tensor LossScaler::scale(const torch::Tensor& loss) const { return loss * scale_.to(loss.scalar_type()); }

torch::Tensor LossScaler::unscale(const std::vector<torch::Tensor>& parameters) {
  auto found_inf = torch::zeros({1}, scale_.options());
  const auto inv_scale = scale_.to(torch::kDouble).reciprocal().to(torch::kFloat32);
  std::vector<torch::Tensor> grads;
  for (const auto& p : parameters) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (scale_.is_cuda()) {
    torch::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
    return found_inf;
  }
  // The same contract as the fused kernel: found_inf is set when any element is not finite.
  torch::NoGradGuard no_grad;
  for (auto& g : grads) {
    found_inf = torch::maximum(found_inf, torch::isfinite(g).logical_not().any().to(torch::kFloat32).view({1}));
    g.mul_(inv_scale);
  }
  return found_inf;
}

void LossScaler::update(const torch::Tensor& found_inf) {
  if (scale_.is_cuda()) {
    torch::_amp_update_scale_(scale_, growth_tracker_, found_inf, options_.growth_factor, options_.backoff_factor,
                              options_.growth_interval);
    return;
  }
  // _amp_update_scale_'s rule: back off and reset the tracker on Inf/NaN; otherwise count,
  // and grow (when the grown scale is finite) once the count reaches the interval.
  const auto skipped = found_inf > 0;
  const auto tracker = torch::where(skipped, torch::zeros_like(growth_tracker_), growth_tracker_ + 1);
  const auto grow = tracker >= options_.growth_interval;
  const auto grown = scale_ * options_.growth_factor;
  auto scale = torch::where(skipped, scale_ * options_.backoff_factor,
                            torch::where(grow & torch::isfinite(grown), grown, scale_));
  scale_.copy_(scale);
  growth_tracker_.copy_(torch::where(grow, torch::zeros_like(tracker), tracker));
}

double LossScaler::current_scale() const { return scale_.item<double>(); }

torch::Tensor LossScaler::state() const {
  return torch::cat({scale_.to(torch::kCPU, torch::kDouble), growth_tracker_.to(torch::kCPU, torch::kDouble)});
}

void LossScaler::load_state(const torch::Tensor& state) {
  TORCH_CHECK(state.numel() == 2, "LossScaler::load_state expects [scale, growth tracker], got ", state.sizes());
  const auto s = state.to(torch::kDouble).contiguous();
  scale_.fill_(s[0].item<double>());
  growth_tracker_.fill_(s[1].item<int64_t>());
}

}  // namespace batchcam::train
