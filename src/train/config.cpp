#include "batchcam/train/config.h"

#include <functional>
#include <map>
#include <stdexcept>

namespace batchcam::train {

namespace {
// One table drives serialisation both ways, so a new field cannot be forgotten in one of them.
template <typename F>
void for_each_field(TrainConfig& c, F&& f) {
  f("dataset", c.dataset);
  f("data_dir", c.data_dir);
  f("train_size", c.train_size);
  f("test_size", c.test_size);
  f("image_size", c.image_size);
  f("spurious", c.spurious);
  f("augment", c.augment);
  f("model", c.model);
  f("target_layer", c.target_layer);
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
  f("lambda_proto", c.lambda_proto);
  f("lambda_batch", c.lambda_batch);
  f("distance_proto", c.distance_proto);
  f("distance_batch", c.distance_batch);
  f("prototype", c.prototype);
  f("batch_target", c.batch_target);
  f("cam_warmup_epochs", c.cam_warmup_epochs);
  f("out_dir", c.out_dir);
  f("run_name", c.run_name);
}

void require(bool ok, const std::string& field, const std::string& expected) {
  if (!ok) throw std::invalid_argument("config: '" + field + "' must be " + expected);
}

void require_one_of(const std::string& value, const std::string& field, std::initializer_list<const char*> options) {
  std::string list;
  for (const char* o : options) {
    if (value == o) return;
    list += (list.empty() ? "" : " | ") + std::string(o);
  }
  throw std::invalid_argument("config: '" + field + "' must be " + list + ", got '" + value + "'");
}
}  // namespace

void TrainConfig::validate() const {
  require_one_of(dataset, "dataset",
                 {"shapes", "mnist", "fashion-mnist", "decoy-mnist", "decoy-fashion", "cifar10", "folder"});
  require(train_size >= 0, "train_size", ">= 0 (0 = the dataset's default)");
  require(test_size >= 0, "test_size", ">= 0 (0 = the dataset's default)");
  require(dataset != "folder" || !data_dir.empty(), "data_dir", "set for dataset 'folder' (its directory)");
  require_one_of(augment, "augment", {"none", "shift", "shift-flip"});
  const bool digits = dataset == "mnist" || dataset == "decoy-mnist";
  require(!(digits && augment == "shift-flip"), "augment", "none or shift for digits (a flipped digit is another glyph)");
  require(image_size >= 16 && image_size <= 512, "image_size", "in [16, 512]");
  require(epochs >= 1, "epochs", ">= 1");
  require(batch_size >= 2, "batch_size", ">= 2");
  require_one_of(optimizer, "optimizer", {"sgd", "adam", "adamw"});
  require(lr > 0.0, "lr", "> 0");
  require(momentum >= 0.0 && momentum < 1.0, "momentum", "in [0, 1)");
  require(!(nesterov && (optimizer != "sgd" || momentum <= 0.0)), "nesterov", "false unless optimizer is sgd with momentum > 0");
  require(weight_decay >= 0.0, "weight_decay", ">= 0");
  require_one_of(schedule, "schedule", {"constant", "step", "cosine", "onecycle"});
  require(warmup_epochs >= 0 && warmup_epochs < epochs, "warmup_epochs", ">= 0 and < epochs");
  require(step_size >= 1, "step_size", ">= 1");
  require(gamma > 0.0 && gamma <= 1.0, "gamma", "in (0, 1]");
  require(grad_clip >= 0.0, "grad_clip", ">= 0 (0 = off)");
  require(label_smoothing >= 0.0 && label_smoothing < 1.0, "label_smoothing", "in [0, 1)");
  require(threads >= 0, "threads", ">= 0");
  require(lambda_proto >= 0.0, "lambda_proto", ">= 0");
  require(lambda_batch >= 0.0, "lambda_batch", ">= 0");
  require_one_of(distance_proto, "distance_proto", {"l1", "l2", "ssim"});
  require_one_of(distance_batch, "distance_batch", {"l1", "l2", "ssim"});
  require_one_of(prototype, "prototype", {"image", "cam-ema"});
  require_one_of(batch_target, "batch_target", {"attached", "detached"});
  require(cam_warmup_epochs >= 0, "cam_warmup_epochs", ">= 0");
  require(!out_dir.empty(), "out_dir", "a directory path");
}

nlohmann::json to_json(const TrainConfig& config) {
  nlohmann::json j = nlohmann::json::object();
  TrainConfig c = config;
  for_each_field(c, [&](const char* key, auto& value) { j[key] = value; });
  return j;
}

TrainConfig config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw std::invalid_argument("config: expected a JSON object");
  TrainConfig c;
  std::map<std::string, std::function<void(const nlohmann::json&)>> setters;
  for_each_field(c, [&](const char* key, auto& value) {
    setters[key] = [&value, key](const nlohmann::json& v) {
      using T = std::decay_t<decltype(value)>;
      const bool ok = std::is_same_v<T, bool>          ? v.is_boolean()
                      : std::is_same_v<T, std::string> ? v.is_string()
                      : std::is_floating_point_v<T>    ? v.is_number()
                      : std::is_unsigned_v<T>          ? v.is_number_unsigned()
                                                       : v.is_number_integer();
      if (!ok) throw std::invalid_argument(std::string("config: '") + key + "' has the wrong type: " + v.dump());
      value = v.get<T>();
    };
  });
  for (const auto& [key, value] : j.items()) {
    auto it = setters.find(key);
    if (it == setters.end()) throw std::invalid_argument("config: unknown key '" + key + "'");
    it->second(value);
  }
  return c;
}

}  // namespace batchcam::train
