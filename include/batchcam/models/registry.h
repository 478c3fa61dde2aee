#pragma once
// Builds models by their command-line name.

#include "batchcam/models/cam_model.h"

#include <string>
#include <vector>

namespace batchcam::models {

struct ModelSpec {
  std::string name;         ///< e.g. "simple-cnn"
  int64_t in_channels = 1;  ///< image channels
  int64_t num_classes = 10;
  int64_t image_size = 28;  ///< input height = width, used to pick stems
  std::string target_layer; ///< "" keeps the model's default (its last stage)
};

/// Requires: spec.name is one of model_names(). Throws std::invalid_argument otherwise.
CamModelPtr make_model(const ModelSpec& spec);

/// Every model name make_model() accepts.
std::vector<std::string> model_names();

}  // namespace batchcam::models
