#pragma once
// Builds models by their command-line name.

#include "batchcam/models/cam_model.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace batchcam::models {

struct ModelSpec {
  ModelSpec(std::string name = "", int64_t in_channels = 1, int64_t num_classes = 10, int64_t image_size = 28,
            std::string target_layer = "")
      : name(std::move(name)),
        in_channels(in_channels),
        num_classes(num_classes),
        image_size(image_size),
        target_layer(std::move(target_layer)) {}

  std::string name;         ///< e.g. "simple-cnn"
  int64_t in_channels = 1;  ///< image channels
  int64_t num_classes = 10;
  int64_t image_size = 28;  ///< input height = width, used to pick stems
  std::string target_layer; ///< "" keeps the model's default (its last stage)
  /// For "torchscript:FILE": the SHA-256 of FILE when the run started ("" = not recorded).
  std::string script_sha256;
  /// The name of each output class ("" entries or an empty list when unknown).
  std::vector<std::string> class_names;
};

/// Inputs up to this side get the small-input stems (ResNet: 3x3 stride-1 conv1 and no
/// max-pool; ConvNeXt-V2: a 3x3 stride-1 stem); larger ones the reference stems.
inline constexpr int64_t kSmallInputMax = 64;

/// Requires: spec.name is one of model_names() or "torchscript:FILE" (models/torchscript.h).
/// Throws std::invalid_argument for another name, std::runtime_error for a TorchScript file
/// that cannot be used (naming it) or whose class count is not spec.num_classes.
CamModelPtr make_model(const ModelSpec& spec);

/// Every model name make_model() accepts.
std::vector<std::string> model_names();

}  // namespace batchcam::models
