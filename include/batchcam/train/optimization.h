#pragma once
// The optimiser, the learning-rate schedule and the dynamic loss scaler of fp16 training.

#include "batchcam/train/config.h"

#include <torch/types.h>

#include <memory>
#include <vector>

namespace torch::optim {
class Optimizer;
}
namespace torch::serialize {
class InputArchive;
class OutputArchive;
}  // namespace torch::serialize

namespace batchcam::train {

/// SGD (momentum, Nesterov), Adam or AdamW over `parameters`, as configured.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainConfig& config,
                                                        const std::vector<torch::Tensor>& parameters);

/// The learning rate for `step` (0-based, counted over the whole run) of a run with
/// `steps_per_epoch` steps per epoch: linear warm-up over warmup_epochs, then the schedule.
double learning_rate(const TrainConfig& config, int64_t step, int64_t steps_per_epoch);

/// Sets the learning rate of every parameter group.
void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

struct LossScalerOptions {
  double init_scale = 65536.0;  ///< 2^16, as PyTorch's GradScaler
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;  ///< finite steps in a row before the scale grows
};

/// Dynamic loss scaling for fp16 (PyTorch's GradScaler, whose C++ counterpart LibTorch
/// lacks): the loss is multiplied by the scale before backward, the gradients divided by
/// it before the optimiser step; a step whose gradients hold an Inf or NaN is skipped and
/// halves the scale, and `growth_interval` finite steps in a row double it. The state stays
/// on the device: only the skip decision is read back. On CUDA it runs ATen's fused
/// kernels (_amp_foreach_non_finite_check_and_unscale_, _amp_update_scale_), elsewhere the
/// same arithmetic with tensor operations.
class LossScaler {
 public:
  LossScaler(torch::Device device, LossScalerOptions options = {});
  /// loss * scale.
  torch::Tensor scale(const torch::Tensor& loss) const;
  /// Divides the gradients of `parameters` by the scale in place and returns found_inf, a
  /// [1] float tensor on the device: 1 when any gradient holds an Inf or NaN.
  torch::Tensor unscale(const std::vector<torch::Tensor>& parameters);
  /// Backs off (found_inf = 1) or counts towards growth.
  void update(const torch::Tensor& found_inf);
  double current_scale() const;  ///< reads the scale back (host synchronisation)
  torch::Tensor state() const;   ///< [2] double on the CPU: scale, growth tracker
  void load_state(const torch::Tensor& state);

 private:
  LossScalerOptions options_;
  torch::Tensor scale_;           ///< [1] float
  torch::Tensor growth_tracker_;  ///< [1] int32
};

}  // namespace batchcam::train
