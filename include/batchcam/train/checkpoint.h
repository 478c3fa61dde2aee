#pragma once
// Checkpoints: model weights, prototypes, normalisation and the run's configuration in
// one LibTorch archive, written atomically (temporary file, fsync, rename).

#include "batchcam/core/runtime.h"
#include "batchcam/data/dataset.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/config.h"

#include <torch/types.h>

namespace torch::optim {
class Optimizer;
}

#include <string>
#include <vector>

namespace batchcam::train {

/// What a training run needs besides the weights to continue exactly where it stopped.
struct TrainingState {
  int64_t step = 0;  ///< steps done in epoch `epoch + 1` (0 = at the end of `epoch`)
  std::string progress;  ///< the trainer's bookkeeping (metrics so far), JSON
  const torch::optim::Optimizer* optimizer = nullptr;
  core::GeneratorState rng;   ///< the default generators' state (CPU, and CUDA when present)
  torch::Tensor scaler_state;  ///< LossScaler::state() of fp16 training; undefined otherwise
};

struct Checkpoint {
  TrainConfig config;
  models::ModelSpec spec;
  int64_t epoch = 0;  ///< epochs completed
  int64_t step = 0;   ///< steps done in the next epoch (a mid-epoch checkpoint when > 0)
  std::string progress;  ///< TrainingState::progress; "" when saved without one
  core::GeneratorState rng;  ///< undefined tensors when saved without a TrainingState
  torch::Tensor scaler_state;  ///< undefined unless saved by fp16 training
  bool has_optimizer = false;
  data::Normalization normalization;
  torch::Tensor prototypes;  ///< [K, H, W] on the CPU; undefined when the run had none
  models::CamModelPtr model;  ///< rebuilt from spec, weights loaded, in eval mode, on the load device
};

/// Writes `path` atomically: on any failure the previous file at `path` is untouched.
/// Throws std::runtime_error naming the path and the cause.
void save_checkpoint(const std::string& path, models::CamModel& model, const models::ModelSpec& spec,
                     const TrainConfig& config, int64_t epoch, const data::Normalization& normalization,
                     const torch::Tensor& prototypes, const TrainingState& state = {});

/// Loads the optimiser state saved with the checkpoint at `path` into `optimizer`, which
/// must have been built for the same model and configuration, with its state on `device`.
void restore_optimizer(const std::string& path, torch::optim::Optimizer& optimizer,
                       torch::Device device = torch::kCPU);

/// Loads a checkpoint (saved from any device: it holds CPU tensors) with the model on
/// `device`. Throws std::runtime_error naming the path and what is wrong (missing,
/// truncated, not a batchcam checkpoint, weights that do not fit the model).
Checkpoint load_checkpoint(const std::string& path, torch::Device device = torch::kCPU);

/// Writes the model's parameters and buffers as a plain dict name -> tensor that Python's
/// torch.load reads (torch::pickle_save format), atomically. Names follow the model's
/// reference implementation (torchvision for resnet18).
void export_state_dict(models::CamModel& model, const std::string& path);

/// Loads a state dict saved by Python's torch.save(dict(model.state_dict())) into `model`
/// (LibTorch 1.13 cannot read the OrderedDict itself; the error says so):
/// torchvision's names for resnet18, the reference implementation's for ConvNeXt-V2 (the
/// names `batchcam export` writes). Strict: every parameter and buffer of the model must be
/// in the file with its shape, and nothing else, with two differences bridged: the
/// classifier (the model's last two parameters) keeps its initialisation when the file has
/// another class count, and the first convolution's RGB weights are summed for a 1-channel
/// model. Returns one note per bridged difference. Throws std::runtime_error naming the file
/// and listing the missing, unexpected and mis-shaped keys.
std::vector<std::string> load_initial_weights(models::CamModel& model, const std::string& path);

}  // namespace batchcam::train
