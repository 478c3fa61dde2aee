#pragma once
// The training engine. A Trainer holds a run's model, prototypes, optimiser, schedule and
// running metrics on one device and advances them one step or one epoch at a time; it
// writes no file. RunDirectory (run_directory.h) is the sink for a run's files, and
// train() / resume() below drive the two together as `batchcam train` does.

#include "batchcam/core/distributed.h"
#include "batchcam/core/runtime.h"
#include "batchcam/data/dataset.h"
#include "batchcam/eval/evaluate.h"
#include "batchcam/models/registry.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/config.h"
#include "batchcam/train/objective.h"
#include "batchcam/train/optimization.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace batchcam::train {

struct StepInfo {
  int64_t epoch = 0, epochs = 0, step = 0, steps = 0;
  /// Running means over the epoch, as of the last read from the device (every
  /// config.log_every steps and at the end of the epoch); `fresh` when read at this step.
  double loss = 0, ce = 0, proto = 0, batch = 0, rrr = 0, proto_rrr = 0, accuracy = 0;
  double lambda_proto = 0, lambda_batch = 0;  ///< the CAM terms' weights in effect (0 = off)
  double lambda_rrr = 0, lambda_proto_rrr = 0;  ///< the input-gradient terms' weights (0 = off)
  bool fresh = false;
  double images_per_second = 0;
  double eta_seconds = 0;  ///< training time left for the whole run at the current speed
  models::CamModel* model = nullptr;  ///< the model in training (e.g. to log weight statistics)
};

struct EpochMetrics {
  int64_t epoch = 0;  ///< 1-based
  double train_loss = 0, train_ce = 0, train_proto = 0, train_batch = 0, train_accuracy = 0;
  double train_rrr = 0, train_proto_rrr = 0;
  double lambda_proto = 0, lambda_batch = 0;  ///< in effect this epoch (0 during warm-up)
  double lambda_rrr = 0, lambda_proto_rrr = 0;
  eval::EvalMetrics test;
  double seconds = 0;  ///< training time of the epoch, evaluation excluded
};
nlohmann::json to_json(const EpochMetrics& m);
/// Throws std::invalid_argument naming the missing or mistyped key.
EpochMetrics epoch_metrics_from_json(const nlohmann::json& j);

/// Loads the dataset named in the config. Throws std::invalid_argument for an unknown one.
data::DatasetSplits load_dataset(const TrainConfig& config);

class Trainer {
 public:
  /// A fresh run: the model is initialised from config.seed on the CPU (the caller's random
  /// state is left as it was) and moved to `device` with the prototypes; the training
  /// labels are validated here, once. `splits` must outlive the trainer. Random draws
  /// during training (ConvNeXt's stochastic depth) come from the default generators, which
  /// the caller seeds (the CLI with config.seed).
  Trainer(const TrainConfig& config, const data::DatasetSplits& splits, torch::Device device);
  /// Continues from a checkpoint saved with training state (`path` is its file): weights,
  /// optimiser, schedule position, prototypes, loss scale, metrics so far; the random
  /// generators are set to the saved state. The trainer trains `checkpoint.model` itself
  /// (moved to `device`). Throws std::runtime_error when it has no training state.
  Trainer(const Checkpoint& checkpoint, const std::string& path, const data::DatasetSplits& splits,
          torch::Device device);
  ~Trainer();

  /// One optimisation step on `batch` (on the trainer's device): forward under autocast,
  /// Grad-CAM and losses, backward, optimiser. No host synchronisation, except fp16's
  /// decision to skip a step with non-finite gradients. Requires step_in_epoch() <
  /// steps_per_epoch(): the epoch's batch count comes from the training split.
  void step(const data::Batch& batch);

  /// Runs the remaining steps of the current epoch, reading the running loss every
  /// config.log_every steps. Returns false when `should_stop` asked to stop after a step
  /// (the epoch is then incomplete; a checkpoint made now continues it exactly).
  bool run_epoch(const std::function<void(const StepInfo&)>& on_step = {},
                 const std::function<bool()>& should_stop = {});

  /// Reads the running sums from the device and throws std::runtime_error naming the
  /// epoch, step and term when a loss was not finite since the last read.
  StepInfo read_progress();

  /// After the epoch's last step: evaluates on the test split, records and returns the
  /// epoch's metrics, and moves to the next epoch.
  EpochMetrics end_epoch();

  bool finished() const { return epoch_ > config_.epochs; }
  int64_t epoch() const { return epoch_; }          ///< the epoch in progress (1-based)
  int64_t step_in_epoch() const { return step_; }   ///< steps done in it
  int64_t steps_per_epoch() const { return steps_; }
  bool last_epoch_was_best() const { return last_best_; }
  const TrainConfig& config() const { return config_; }
  const models::ModelSpec& spec() const { return spec_; }
  models::CamModel& model() { return *model_; }
  const torch::Tensor& prototypes() const { return prototypes_; }
  const data::Normalization& normalization() const { return norm_; }
  const std::vector<EpochMetrics>& history() const { return history_; }
  double train_seconds() const { return train_seconds_; }
  torch::Device device() const { return device_; }
  const data::DatasetSplits& splits() const { return *splits_; }
  /// Trains data-parallel with the other ranks of `group`, each a Trainer made from the same
  /// configuration and data (a fresh run, or the same checkpoint): the weights and buffers
  /// become rank 0's, each rank steps on its slice of every global batch (config.batch_size),
  /// and the gradients are averaged over the global batch before each update, so the weights
  /// stay identical on every rank. cam-ema prototypes move with the class means of the global
  /// batch. Running losses and test metrics are summed over the ranks (each evaluates its
  /// share of the test set); BatchNorm keeps per-rank statistics, averaged over the ranks
  /// before each evaluation and checkpoint. The Batch-CAM Loss compares maps within each rank's slice.
  /// Call before the first step; every rank must then make the same calls: step() and
  /// run_epoch() with the same batches, and read_progress(), training_state(), end_epoch()
  /// and any_rank() (collective) at the same points. A rank whose data, configuration or
  /// place in the run differs from rank 0's is refused (std::invalid_argument, on every rank).
  /// Tensors on a GPU travel through the CPU (Gloo).
  void use_process_group(std::shared_ptr<core::ProcessGroup> group);
  const std::shared_ptr<core::ProcessGroup>& process_group() const { return group_; }
  /// Whether `here` is true on any rank (collective); `here` without a process group.
  bool any_rank(bool here);
  /// The training state for a checkpoint (reads the running sums from the device). Throws
  /// std::runtime_error when a loss or a weight is not finite: no checkpoint of a diverged run.
  TrainingState training_state();
  /// Epochs completed, as a checkpoint records them.
  int64_t epochs_done() const { return epoch_ - 1; }
  /// How --init-weights were adapted to the model (load_initial_weights' notes).
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  void set_up(const data::DatasetSplits& splits);
  void set_training_mode();
  void average_batchnorm_statistics();
  eval::EvalMetrics evaluate_test_set();
  void average_gradients(const std::vector<torch::Tensor>& parameters, double local_samples);
  void begin_epoch();

  TrainConfig config_;
  const data::DatasetSplits* splits_;
  torch::Device device_;
  models::ModelSpec spec_;
  models::CamModelPtr model_;
  data::Normalization norm_;
  torch::Tensor prototypes_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<LossScaler> scaler_;
  std::unique_ptr<data::BatchIterator> batches_;
  std::shared_ptr<core::ProcessGroup> group_;  ///< data-parallel ranks; null: this process alone
  CamLossConfig objective_;
  int64_t epoch_ = 1, step_ = 0, steps_ = 0;
  // On the device: loss, ce, proto, batch (each times the batch size), correct, seen,
  // then the first non-finite step (-1: none) and its term.
  torch::Tensor running_;
  torch::Tensor read_sums_;  ///< running_ as of the last read_progress(), summed over the ranks
  double seconds_before_ = 0;  ///< training seconds of the epoch before this process took it over
  std::chrono::steady_clock::time_point epoch_start_;
  int64_t epoch_first_step_ = 0;
  int64_t skipped_in_a_row_ = 0;
  double best_accuracy_ = -1.0;
  std::vector<std::string> notes_;
  bool last_best_ = false;
  double train_seconds_ = 0;
  std::vector<EpochMetrics> history_;
  StepInfo last_read_;
};

struct TrainCallbacks {
  std::function<void(const std::string& run_dir)> on_start;
  /// After on_start, things worth a line in a log (how initial weights were adapted).
  std::function<void(const std::string& message)> on_notice;
  std::function<void(const StepInfo&)> on_step;
  std::function<void(const EpochMetrics&)> on_epoch;
  /// After the last epoch's checkpoint, before the final evaluation, pictures and report:
  /// from here on nothing is lost by stopping (resume() writes what is missing).
  std::function<void()> on_final_outputs;
  /// Before each part of the final outputs (evaluation, deletion/insertion, randomisation
  /// check, timing, pictures, report), with a short description of it.
  std::function<void(const std::string& what)> on_final_phase;
  /// Polled after every step; returning true saves a mid-epoch checkpoint and returns
  /// with TrainResult::interrupted set (the CLI sets it from SIGINT/SIGTERM).
  std::function<bool()> should_stop;
};

struct TrainResult {
  TrainConfig config;  ///< the run's (for a resumed run: its checkpoint's)
  std::string run_dir;
  std::string checkpoint;       ///< last.pt: the latest state, mid-epoch after an interruption
  std::string best_checkpoint;  ///< best.pt: the epoch with the highest test accuracy
  std::string report;           ///< report.html (with eval.json beside it), written at the end
  std::vector<EpochMetrics> history;
  double train_seconds = 0;  ///< sum of the epochs' training time
  bool interrupted = false;  ///< stopped by should_stop; resume() continues it
  int64_t stopped_epoch = 0, stopped_step = 0;  ///< where an interrupted run stopped
  std::string device;        ///< where it ran, e.g. "cpu" or "cuda:0"
};

/// Trains as configured on config.device, in a new run directory. Throws
/// std::invalid_argument for a bad configuration and std::runtime_error for I/O problems or
/// a non-finite loss (naming the step and term); checkpoints already written stay intact.
/// Sets no process-wide state: the caller chooses the thread count.
/// With `group` (every rank calls train() with the same configuration): data-parallel
/// (Trainer::use_process_group); only rank 0 writes the run directory and gets on_start; the
/// other ranks return without run_dir, checkpoints or report. Stopping (should_stop on any
/// rank) happens on every rank at the same step, after rank 0 has saved the checkpoint.
TrainResult train(const TrainConfig& config, const TrainCallbacks& callbacks = {},
                  std::shared_ptr<core::ProcessGroup> group = nullptr);

/// What may change when a run is continued.
struct ResumeOptions {
  std::string device;  ///< "" = the run's config.device
  /// 0 = the run's; more extends a finished or stopped run to that many epochs (never fewer
  /// than it has done). The learning-rate schedule then runs over the new length from the
  /// step where the run stands: constant and step schedules continue unchanged (the result
  /// equals a run trained that long from the start); cosine and onecycle are recomputed for
  /// the new length, so the rate jumps to the new curve's value at that step.
  int64_t epochs = 0;
  int64_t workers = -1;  ///< folder decoding threads; -1 = the run's (results do not depend on it)
  /// Continue data-parallel on these ranks (as train()); every rank reads the run's last.pt,
  /// so the run directory must be reachable from each (a shared file system). Any number of
  /// ranks may continue a run: the batches stay the same; BatchNorm's per-rank statistics
  /// and the order of float sums change with it.
  std::shared_ptr<core::ProcessGroup> group;
};

/// Continues the run in `run_dir` from its last.pt with its saved configuration. On the CPU
/// with the same thread count the result equals the uninterrupted run. A run whose epochs are
/// done but whose final outputs are not (stopped while they were written) gets them written.
/// An extended run's config.json is rewritten with the new number of epochs.
/// Removes temporary files that stopped writers left behind. Throws like train(), and
/// std::runtime_error when there is nothing to resume or the run is already complete.
TrainResult resume(const std::string& run_dir, const TrainCallbacks& callbacks = {},
                   const ResumeOptions& options = {});

}  // namespace batchcam::train
