#include "batchcam/train/config.h"

#include "batchcam/data/datasets.h"
#include "batchcam/models/torchscript.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <stdexcept>

namespace batchcam::train {

template <> const std::vector<std::string>& names<OptimizerKind>() {
  static const std::vector<std::string> n = {"sgd", "adam", "adamw"};
  return n;
}
template <> const std::vector<std::string>& names<Schedule>() {
  static const std::vector<std::string> n = {"constant", "step", "cosine", "onecycle"};
  return n;
}
template <> const std::vector<std::string>& names<PrototypeKind>() {
  static const std::vector<std::string> n = {"image", "cam-ema"};
  return n;
}
template <> const std::vector<std::string>& names<BatchTarget>() {
  static const std::vector<std::string> n = {"attached", "detached"};
  return n;
}
template <> const std::vector<std::string>& names<Augment>() {
  static const std::vector<std::string> n = {"none", "shift", "shift-flip", "crop-jitter-flip"};
  return n;
}
template <> const std::vector<std::string>& names<losses::Distance>() {
  static const std::vector<std::string> n = {"l1", "l2", "ssim"};
  return n;
}
template <> const std::vector<std::string>& names<core::Precision>() { return core::precision_names(); }
template <> const std::vector<std::string>& names<cam::CamMethod>() { return cam::cam_method_names(); }

namespace {
// One table drives serialisation both ways, so a new field cannot be forgotten in one of them.
template <typename F>
void for_each_field(TrainConfig& c, F&& f) {
  f("dataset", c.dataset);
  f("data_dir", c.data_dir);
  f("train_size", c.train_size);
  f("test_size", c.test_size);
  f("val_split", c.val_split);
  f("image_size", c.image_size);
  f("spurious", c.spurious);
  f("augment", c.augment);
  f("workers", c.workers);
  f("max_image_pixels", c.max_image_pixels);
  f("model", c.model);
  f("target_layer", c.target_layer);
  f("init_weights", c.init_weights);
  f("freeze_batchnorm", c.freeze_batchnorm);
  f("epochs", c.epochs);
  f("batch_size", c.batch_size);
  f("optimizer", c.optimizer);
  f("lr", c.lr);
  f("momentum", c.momentum);
  f("nesterov", c.nesterov);
  f("weight_decay", c.weight_decay);
  f("schedule", c.schedule);
  f("warmup_epochs", c.warmup_epochs);
  f("step_size", c.step_size);
  f("gamma", c.gamma);
  f("grad_clip", c.grad_clip);
  f("label_smoothing", c.label_smoothing);
  f("seed", c.seed);
  f("threads", c.threads);
  f("device", c.device);
  f("precision", c.precision);
  f("max_skipped_steps", c.max_skipped_steps);
  f("lambda_proto", c.lambda_proto);
  f("lambda_batch", c.lambda_batch);
  f("lambda_rrr", c.lambda_rrr);
  f("lambda_proto_rrr", c.lambda_proto_rrr);
  f("distance_proto", c.distance_proto);
  f("distance_batch", c.distance_batch);
  f("prototype", c.prototype);
  f("batch_target", c.batch_target);
  f("cam_warmup_epochs", c.cam_warmup_epochs);
  f("cam_method", c.cam_method);
  f("out_dir", c.out_dir);
  f("run_name", c.run_name);
  f("log_every", c.log_every);
  f("report", c.report);
}

void require(bool ok, const std::string& field, const std::string& expected) {
  if (!ok) throw std::invalid_argument("config: '" + field + "' must be " + expected);
}
}  // namespace

void TrainConfig::validate() const {
  const auto datasets = data::dataset_names();
  std::string list;
  for (const auto& d : datasets) list += (list.empty() ? "" : " | ") + d;
  require(std::find(datasets.begin(), datasets.end(), dataset) != datasets.end(), "dataset",
          list + ", got '" + dataset + "'");
  // Every number has both bounds, the command line's: a config file passes the same checks.
  require(train_size >= 0 && train_size <= 10000000, "train_size", "in [0, 10000000] (0 = the dataset's default)");
  require(test_size >= 0 && test_size <= 10000000, "test_size", "in [0, 10000000] (0 = the dataset's default)");
  require(dataset != "folder" || !data_dir.empty(), "data_dir", "set for dataset 'folder' (its directory)");
  require(val_split > 0.0 && val_split < 1.0, "val_split", "in (0, 1)");
  require(workers >= 0 && workers <= 64, "workers", "in [0, 64]");
  require(augment != Augment::crop_jitter_flip || dataset == "folder", "augment",
          "none, shift or shift-flip for dataset '" + dataset + "' (crop-jitter-flip is for folder images)");
  const bool digits = dataset == "mnist" || dataset == "decoy-mnist";
  require(!(digits && augment == Augment::shift_flip), "augment",
          "none or shift for digits (a flipped digit is another glyph)");
  require(image_size == 0 || (image_size >= 16 && image_size <= 512), "image_size",
          "0 (the dataset's own size) or in [16, 512]");
  require(max_image_pixels >= 1 && max_image_pixels <= (int64_t{1} << 36), "max_image_pixels", "in [1, 2^36]");
  require(epochs >= 1 && epochs <= 100000, "epochs", "in [1, 100000]");
  require(batch_size >= 2 && batch_size <= 1000000, "batch_size", "in [2, 1000000]");
  require(lr > 0.0 && std::isfinite(lr), "lr", "> 0 and finite");
  require(momentum >= 0.0 && momentum < 1.0, "momentum", "in [0, 1)");
  require(!(nesterov && (optimizer != OptimizerKind::sgd || momentum <= 0.0)), "nesterov",
          "false unless optimizer is sgd with momentum > 0");
  require(weight_decay >= 0.0 && weight_decay <= 1.0, "weight_decay", "in [0, 1]");
  require(warmup_epochs >= 0 && warmup_epochs < epochs, "warmup_epochs", ">= 0 and < epochs");
  require(step_size >= 1 && step_size <= 100000, "step_size", "in [1, 100000]");
  require(gamma > 0.0 && gamma <= 1.0, "gamma", "in (0, 1]");
  require(grad_clip >= 0.0 && std::isfinite(grad_clip), "grad_clip", ">= 0 and finite (0 = off)");
  require(label_smoothing >= 0.0 && label_smoothing < 1.0, "label_smoothing", "in [0, 1)");
  require(threads >= 0 && threads <= 1024, "threads", "in [0, 1024] (0 = what the process may use)");
  require(device == "auto" || device == "cpu" || device == "cuda" || device.rfind("cuda:", 0) == 0, "device",
          "auto | cpu | cuda | cuda:N, got '" + device + "'");
  require(max_skipped_steps >= 1 && max_skipped_steps <= 1000000, "max_skipped_steps", "in [1, 1000000]");
  require(lambda_proto >= 0.0 && std::isfinite(lambda_proto), "lambda_proto", ">= 0 and finite");
  require(lambda_batch >= 0.0 && std::isfinite(lambda_batch), "lambda_batch", ">= 0 and finite");
  require(lambda_rrr >= 0.0 && std::isfinite(lambda_rrr), "lambda_rrr", ">= 0 and finite");
  require(lambda_proto_rrr >= 0.0 && std::isfinite(lambda_proto_rrr), "lambda_proto_rrr", ">= 0 and finite");
  const bool annotated = dataset == "decoy-mnist" || dataset == "decoy-fashion" || (dataset == "shapes" && spurious);
  require(lambda_rrr == 0.0 || annotated, "lambda_rrr",
          "0 for dataset '" + dataset + "': RRR needs annotation masks, which decoy-mnist, decoy-fashion and shapes "
          "with spurious have (--lambda-proto-rrr needs none)");
  require(cam_warmup_epochs >= 0 && cam_warmup_epochs <= 100000, "cam_warmup_epochs", "in [0, 100000]");
  require(!out_dir.empty(), "out_dir", "a directory path");
  require(run_name.find('/') == std::string::npos && run_name != "." && run_name != "..", "run_name",
          "a plain directory name inside out_dir (no '/'), got '" + run_name + "'");
  require(!spurious || dataset == "shapes", "spurious",
          "false unless dataset is shapes (the decoy datasets carry their own cue), got dataset '" + dataset + "'");
  require(cam_warmup_epochs < epochs || (lambda_proto == 0.0 && lambda_batch == 0.0), "cam_warmup_epochs",
          "< epochs while a CAM loss is on (otherwise the CAM losses never start)");
  require(log_every >= 1 && log_every <= 1000000, "log_every", "in [1, 1000000]");
  require(!freeze_batchnorm || !models::is_torchscript(model), "freeze_batchnorm",
          "false for a TorchScript model (only built-in models' BatchNorm layers can be frozen)");
  require(init_weights.empty() || !models::is_torchscript(model), "init_weights",
          "empty for a TorchScript model (its file carries its weights)");
}

nlohmann::json to_json(const TrainConfig& config) {
  nlohmann::json j = nlohmann::json::object();
  TrainConfig c = config;
  for_each_field(c, [&](const char* key, auto& value) {
    using T = std::decay_t<decltype(value)>;
    if constexpr (std::is_enum_v<T>) {
      j[key] = to_string(value);
    } else {
      j[key] = value;
    }
  });
  return j;
}

TrainConfig config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw std::invalid_argument("config: expected a JSON object");
  TrainConfig c;
  std::map<std::string, std::function<void(const nlohmann::json&)>> setters;
  for_each_field(c, [&](const char* key, auto& value) {
    setters[key] = [&value, key](const nlohmann::json& v) {
      using T = std::decay_t<decltype(value)>;
      const bool ok = std::is_same_v<T, bool>                             ? v.is_boolean()
                      : std::is_same_v<T, std::string> || std::is_enum_v<T> ? v.is_string()
                      : std::is_floating_point_v<T>                       ? v.is_number()
                      : std::is_unsigned_v<T>                             ? v.is_number_unsigned()
                                                                          : v.is_number_integer();
      if (!ok) throw std::invalid_argument(std::string("config: '") + key + "' has the wrong type: " + v.dump());
      if constexpr (std::is_enum_v<T>) {
        value = parse<T>(v.get<std::string>(), key);
      } else {
        value = v.get<T>();
      }
    };
  });
  for (const auto& [key, value] : j.items()) {
    if (key == kProvenanceKey) continue;  // written with the configuration, not part of it
    auto it = setters.find(key);
    if (it == setters.end()) throw std::invalid_argument("config: unknown key '" + key + "'");
    it->second(value);
  }
  // Written by batchcam before the CAM method could be chosen: those runs used Grad-CAM.
  if (j.contains(kProvenanceKey) && !j.contains("cam_method")) c.cam_method = cam::CamMethod::grad_cam;
  return c;
}

}  // namespace batchcam::train
