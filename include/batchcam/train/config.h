#pragma once
// Everything that defines a training run. Saved as config.json in the run directory.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace batchcam::train {

struct TrainConfig {
  // Data
  std::string dataset = "shapes";  ///< see data::dataset_names()
  std::string data_dir;            ///< files of the file-based datasets ("" = data/<dataset>)
  int64_t train_size = 0;  ///< shapes: images generated (0 = 6000); others: the first N (0 = all)
  int64_t test_size = 0;   ///< shapes: images generated (0 = 1000); others: the first N (0 = all)
  int64_t image_size = 28;    ///< shapes: side generated; folder: side images are resized to
  bool spurious = false;      ///< shapes only: class-coded corner patch in training
  std::string augment = "none";  ///< none | shift | shift-flip (random shift by up to 2 px at 28 px)

  // Model
  std::string model = "simple-cnn";
  std::string target_layer;  ///< "" = the model's last stage

  // Optimisation
  int64_t epochs = 4;
  int64_t batch_size = 128;
  std::string optimizer = "adam";  ///< sgd | adam | adamw
  double lr = 3e-3;           ///< peak learning rate
  double momentum = 0.9;      ///< sgd only
  bool nesterov = false;      ///< sgd only
  double weight_decay = 0.0;  ///< L2 for sgd and adam, decoupled for adamw
  std::string schedule = "constant";  ///< constant | step | cosine | onecycle
  int64_t warmup_epochs = 0;  ///< linear learning-rate warm-up from ~0 to lr
  int64_t step_size = 10;     ///< step schedule: epochs between decays
  double gamma = 0.1;         ///< step schedule: decay factor
  double grad_clip = 0.0;     ///< maximum global gradient norm; 0 = off
  double label_smoothing = 0.0;
  uint64_t seed = 0;
  int64_t threads = 0;        ///< 0 = every core

  // Batch-CAM
  // Defaults chosen by the study in docs/results.md (section "Defaults"): the Prototype Loss
  // with L1; the Batch-CAM Loss is off unless asked for.
  double lambda_proto = 1.0;
  double lambda_batch = 0.0;
  std::string distance_proto = "l1";  ///< l1 | l2 | ssim
  std::string distance_batch = "l1";
  std::string prototype = "image";      ///< image | cam-ema
  std::string batch_target = "attached";  ///< attached | detached
  int64_t cam_warmup_epochs = 0;

  // Output
  std::string out_dir = "runs";
  std::string run_name;  ///< "" = <dataset>-<model>-<timestamp>

  /// Throws std::invalid_argument naming the first field with a value out of range.
  void validate() const;
};

nlohmann::json to_json(const TrainConfig& c);
/// Requires every key to be a TrainConfig field of the right type; missing keys keep
/// their defaults. Throws std::invalid_argument naming the key otherwise.
TrainConfig config_from_json(const nlohmann::json& j);

}  // namespace batchcam::train
