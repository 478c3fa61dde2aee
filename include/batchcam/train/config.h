#pragma once
// Everything that defines a training run. Saved as config.json in the run directory.

#include "batchcam/cam/method.h"
#include "batchcam/core/runtime.h"
#include "batchcam/io/image.h"
#include "batchcam/losses/distances.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace batchcam::train {

enum class OptimizerKind { sgd, adam, adamw };
enum class Schedule { constant, step, cosine, onecycle };
enum class PrototypeKind { image, cam_ema };  ///< class-average image, or an EMA of class-mean CAMs
enum class BatchTarget { attached, detached };  ///< in-batch prototypes in the graph, or constants
enum class Augment { none, shift, shift_flip, crop_jitter_flip };

/// The names of an option's values in the enum's order: the one list used by config
/// files, validation and the command line. Defined for the enums above, losses::Distance,
/// core::Precision and cam::CamMethod.
template <typename E>
const std::vector<std::string>& names();
template <> const std::vector<std::string>& names<OptimizerKind>();
template <> const std::vector<std::string>& names<Schedule>();
template <> const std::vector<std::string>& names<PrototypeKind>();
template <> const std::vector<std::string>& names<BatchTarget>();
template <> const std::vector<std::string>& names<Augment>();
template <> const std::vector<std::string>& names<losses::Distance>();
template <> const std::vector<std::string>& names<core::Precision>();
template <> const std::vector<std::string>& names<cam::CamMethod>();

template <typename E>
std::string to_string(E value) {
  return names<E>().at(static_cast<size_t>(value));
}

/// The value named `name`; throws std::invalid_argument naming `field` and the choices.
template <typename E>
E parse(const std::string& name, const std::string& field) {
  const auto& all = names<E>();
  std::string list;
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i] == name) return static_cast<E>(i);
    list += (i ? " | " : "") + all[i];
  }
  throw std::invalid_argument("config: '" + field + "' must be " + list + ", got '" + name + "'");
}

struct TrainConfig {
  // Data
  std::string dataset = "shapes";  ///< see data::dataset_names()
  std::string data_dir;            ///< files of the file-based datasets ("" = data/<dataset>)
  /// shapes: images generated (0 = 6000); folder: a stratified random subset (0 = all); the
  /// others: the first N (0 = all).
  int64_t train_size = 0;
  int64_t test_size = 0;  ///< as train_size (shapes: 0 = 1000)
  double val_split = 0.2;  ///< folder without train/ and test/: each class's share held out for testing
  /// Image side: 0 = the dataset's own (MNIST-type 28, CIFAR-10 32; shapes and folder 28);
  /// other sizes are generated (shapes) or resized to (the rest). A run records the size used.
  int64_t image_size = 0;
  bool spurious = false;      ///< shapes only: class-coded corner patch in training
  /// shift: by up to 1/8 of the side; shift-flip: and a horizontal flip; crop-jitter-flip
  /// (folder): random resized crop, colour jitter and flip (data::CropJitter).
  Augment augment = Augment::none;
  int64_t workers = 2;  ///< folder: threads decoding the next batch while a step runs (0 = none)
  /// folder: an image whose header claims more pixels is refused before it is decoded.
  int64_t max_image_pixels = io::kMaxImagePixels;

  // Model
  std::string model = "simple-cnn";
  std::string target_layer;  ///< "" = the model's last stage
  /// A state dict saved by Python's torch.save(dict(model.state_dict())) to start from (transfer
  /// learning; train::load_initial_weights); "" = the seed's random initialisation.
  std::string init_weights;
  /// BatchNorm layers stay in eval mode while training: they normalise with their running
  /// statistics and do not update them (their scale and shift still train). For fine-tuning
  /// with small batches, and for data-parallel runs that match one process exactly.
  bool freeze_batchnorm = false;

  // Optimisation
  int64_t epochs = 4;
  int64_t batch_size = 128;
  OptimizerKind optimizer = OptimizerKind::adam;
  double lr = 3e-3;           ///< peak learning rate
  double momentum = 0.9;      ///< sgd only
  bool nesterov = false;      ///< sgd only
  double weight_decay = 0.0;  ///< L2 for sgd and adam, decoupled for adamw
  Schedule schedule = Schedule::constant;
  int64_t warmup_epochs = 0;  ///< linear learning-rate warm-up from ~0 to lr
  int64_t step_size = 10;     ///< step schedule: epochs between decays
  double gamma = 0.1;         ///< step schedule: decay factor
  double grad_clip = 0.0;     ///< maximum global gradient norm; 0 = off
  double label_smoothing = 0.0;
  uint64_t seed = 0;
  int64_t threads = 0;        ///< CPU threads the CLI sets; 0 = what the process may use

  // Device and precision
  std::string device = "auto";  ///< auto | cpu | cuda | cuda:N (core::resolve_device)
  core::Precision precision = core::Precision::fp32;  ///< autocast type of the forward pass
  /// fp16: consecutive steps with non-finite gradients (skipped by the loss scaler) that stop the run.
  int64_t max_skipped_steps = 20;

  // Batch-CAM
  // Defaults chosen by the study in docs/results.md (section "Defaults"): the Prototype Loss
  // with L1; the Batch-CAM Loss is off unless asked for.
  double lambda_proto = 1.0;
  double lambda_batch = 0.0;
  losses::Distance distance_proto = losses::Distance::l1;
  losses::Distance distance_batch = losses::Distance::l1;
  PrototypeKind prototype = PrototypeKind::image;
  BatchTarget batch_target = BatchTarget::attached;
  int64_t cam_warmup_epochs = 0;
  /// Input-gradient terms against spurious features (docs/method.md), off by default: RRR
  /// (Ross et al. 2017) with the dataset's annotation masks, and Prototype RRR, which weights
  /// the same input gradients by 1 - P_y instead (no annotations). Not delayed by cam_warmup_epochs.
  double lambda_rrr = 0.0;
  double lambda_proto_rrr = 0.0;
  /// The map the CAM losses compare, and by default the one evaluation and explanations show
  /// (cam::CamMethod; cam needs a head of global average pooling and one linear layer, where it
  /// equals grad-cam without a gradient call). LayerCAM by the rule of
  /// docs/results-cam-methods.md; a configuration written by batchcam before there was a
  /// choice (with provenance, without cam_method) means grad-cam (config_from_json).
  cam::CamMethod cam_method = cam::CamMethod::layer_cam;

  // Output
  std::string out_dir = "runs";
  std::string run_name;  ///< "" = <dataset>-<model>-<timestamp>
  /// Steps between reads of the running loss from the device (progress, the non-finite
  /// check); the end of an epoch is always read. Other steps run without host synchronisation.
  int64_t log_every = 10;
  /// After the last epoch: the final evaluation (eval.json), pictures and report.html.
  /// When off, `batchcam report RUN/last.pt` writes them later.
  bool report = true;

  /// Throws std::invalid_argument naming the first field with a value out of range.
  void validate() const;
};

nlohmann::json to_json(const TrainConfig& c);
/// The key of config.json that records what made the run (core::provenance()); it is
/// not a setting, and config_from_json skips it, so a run's config.json repeats the run.
inline constexpr const char* kProvenanceKey = "provenance";
/// Requires every key to be a TrainConfig field of the right type; missing keys keep
/// their defaults. Throws std::invalid_argument naming the key otherwise.
TrainConfig config_from_json(const nlohmann::json& j);

}  // namespace batchcam::train
