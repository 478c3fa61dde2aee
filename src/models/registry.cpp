#include "batchcam/models/registry.h"

#include "batchcam/models/simple_cnn.h"

#include <torch/torch.h>

#include <stdexcept>

namespace batchcam::models {

std::vector<std::string> model_names() { return {"simple-cnn"}; }

CamModelPtr make_model(const ModelSpec& spec) {
  CamModelPtr model;
  if (spec.name == "simple-cnn") {
    model = SimpleCNN(SimpleCNNOptions(spec.in_channels, spec.num_classes)).ptr();
  } else {
    std::string known;
    for (const auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown model '" + spec.name + "'; expected one of: " + known);
  }
  if (!spec.target_layer.empty()) model->set_target_layer(spec.target_layer);
  return model;
}

}  // namespace batchcam::models
