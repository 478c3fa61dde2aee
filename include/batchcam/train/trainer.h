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
  double label_smoothing = 0.0;  ///< of the cross-entropy term
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
  double eta_seconds = 0;  ///< training time left for the whole run at the current speed
  models::CamModel* model = nullptr;  ///< the model in training (e.g. to log weight statistics)
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
  /// Polled after every step; returning true saves a mid-epoch checkpoint and returns
  /// with TrainResult::interrupted set (the CLI sets it from SIGINT/SIGTERM).
  std::function<bool()> should_stop;
};

struct TrainResult {
  std::string run_dir;
  std::string checkpoint;       ///< last.pt: the latest state, mid-epoch after an interruption
  std::string best_checkpoint;  ///< best.pt: the epoch with the highest test accuracy
  std::string report;           ///< report.html (with eval.json beside it), written at the end
  std::vector<EpochMetrics> history;
  double train_seconds = 0;  ///< sum of the epochs' training time
  bool interrupted = false;  ///< stopped by should_stop; resume() continues it
  int64_t stopped_epoch = 0, stopped_step = 0;  ///< where an interrupted run stopped
};

/// The learning rate for `step` (0-based, counted over the whole run) of a run with
/// `steps_per_epoch` steps per epoch: linear warm-up over warmup_epochs, then the schedule.
double learning_rate(const TrainConfig& config, int64_t step, int64_t steps_per_epoch);

/// Loads the dataset named in the config. Throws std::invalid_argument for an unknown one.
data::DatasetSplits load_dataset(const TrainConfig& config);

/// Trains as configured. Throws std::invalid_argument for a bad configuration and
/// std::runtime_error for I/O problems or a non-finite loss (naming the step and term);
/// checkpoints already written stay intact.
TrainResult train(const TrainConfig& config, const TrainCallbacks& callbacks = {});

/// Continues the run in `run_dir` from its last.pt (model, optimiser, schedule position,
/// prototypes, random state, epoch and step), with its saved configuration; `threads` > 0
/// overrides the thread count. On CPU with the same thread count the result equals the
/// uninterrupted run. Throws like train(), and std::runtime_error when there is nothing
/// to resume or the run is already complete.
TrainResult resume(const std::string& run_dir, const TrainCallbacks& callbacks = {}, int64_t threads = 0);

}  // namespace batchcam::train
