#pragma once
// The training loop: CE plus the Batch-CAM regularisers, evaluation each epoch, and a run
// directory with config.json, metrics.jsonl and checkpoints.

#include "batchcam/data/dataset.h"
#include "batchcam/eval/evaluate.h"
#include "batchcam/losses/distances.h"
#include "batchcam/models/cam_model.h"
#include "batchcam/train/config.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

namespace batchcam::train {

struct CamLossConfig {
  double lambda_proto = 0.0;
  double lambda_batch = 0.0;
  losses::Distance distance_proto = losses::Distance::ssim;
  losses::Distance distance_batch = losses::Distance::ssim;
  bool detach_batch_target = false;
  bool active() const { return lambda_proto > 0.0 || lambda_batch > 0.0; }
};

struct StepLosses {
  torch::Tensor total;   ///< CE + lambda_p * proto + lambda_b * batch (scalar)
  torch::Tensor ce, proto, batch;  ///< the terms; proto and batch are 0 when inactive
  torch::Tensor logits;  ///< [B, K]
  torch::Tensor maps;    ///< [B, H, W] Batch-CAM maps; undefined when inactive
};

/// The training objective of one batch (method spec, section 6), differentiable with
/// respect to the model's parameters. Requires prototypes [K, H, W] when lambda_proto > 0.
StepLosses compute_losses(models::CamModel& model, const data::Batch& batch, const torch::Tensor& prototypes,
                          int64_t num_classes, const CamLossConfig& config);

struct StepInfo {
  int64_t epoch = 0, epochs = 0, step = 0, steps = 0;
  double loss = 0, ce = 0, proto = 0, batch = 0;  ///< running means over the epoch so far
  double images_per_second = 0;
};

struct EpochMetrics {
  int64_t epoch = 0;  ///< 1-based
  double train_loss = 0, train_ce = 0, train_proto = 0, train_batch = 0, train_accuracy = 0;
  double lambda_proto = 0, lambda_batch = 0;  ///< in effect this epoch (0 during warm-up)
  eval::EvalMetrics test;
  double seconds = 0;  ///< training time of the epoch, evaluation excluded
};
nlohmann::json to_json(const EpochMetrics& m);

struct TrainCallbacks {
  std::function<void(const std::string& run_dir)> on_start;
  std::function<void(const StepInfo&)> on_step;
  std::function<void(const EpochMetrics&)> on_epoch;
};

struct TrainResult {
  std::string run_dir;
  std::string checkpoint;  ///< path of the final checkpoint
  std::vector<EpochMetrics> history;
  double train_seconds = 0;  ///< sum of the epochs' training time
};

/// Loads the dataset named in the config. Throws std::invalid_argument for an unknown one.
data::DatasetSplits load_dataset(const TrainConfig& config);

/// Trains as configured. Throws std::invalid_argument for a bad configuration and
/// std::runtime_error for I/O problems or a non-finite loss (naming the step and term);
/// checkpoints already written stay intact.
TrainResult train(const TrainConfig& config, const TrainCallbacks& callbacks = {});

}  // namespace batchcam::train
