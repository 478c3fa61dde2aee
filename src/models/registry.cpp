#include "batchcam/models/registry.h"

#include "batchcam/models/convnext_v2.h"
#include "batchcam/models/resnet.h"
#include "batchcam/models/simple_cnn.h"
#include "batchcam/models/torchscript.h"

#include <torch/torch.h>

#include <stdexcept>

namespace batchcam::models {

namespace {
const char* const kConvNeXtPrefix = "convnext-v2-";
}  // namespace

std::vector<std::string> model_names() {
  return {"simple-cnn",        "resnet18",         "convnext-v2-atto", "convnext-v2-femto",
          "convnext-v2-pico",  "convnext-v2-nano", "convnext-v2-tiny"};
}

CamModelPtr make_model(const ModelSpec& spec) {
  CamModelPtr model;
  const bool small = spec.image_size <= kSmallInputMax;
  if (is_torchscript(spec.name)) {
    auto scripted = std::make_shared<TorchScriptModel>(torchscript_file(spec.name), spec.in_channels, spec.image_size);
    if (scripted->num_classes() != spec.num_classes) {
      throw std::runtime_error(torchscript_file(spec.name) + ": head(a) gives " + std::to_string(scripted->num_classes()) +
                               " logits, the data has " + std::to_string(spec.num_classes) + " classes");
    }
    model = scripted;
  } else if (spec.name == "simple-cnn") {
    model = SimpleCNN(SimpleCNNOptions(spec.in_channels, spec.num_classes)).ptr();
  } else if (spec.name == "resnet18") {
    model = ResNet18(ResNetOptions(spec.in_channels, spec.num_classes).small_input(small)).ptr();
  } else if (spec.name.rfind(kConvNeXtPrefix, 0) == 0) {
    const auto variant = spec.name.substr(std::string(kConvNeXtPrefix).size());
    model = ConvNeXtV2(convnext_v2_variant(variant, spec.in_channels, spec.num_classes).small_input(small), variant).ptr();
  } else {
    std::string known;
    for (const auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown model '" + spec.name + "'; expected one of: " + known + ", or torchscript:FILE");
  }
  if (!spec.target_layer.empty()) model->set_target_layer(spec.target_layer);
  // Convolution weights in channels-last (NHWC) memory: oneDNN's convolutions then produce
  // NHWC activations, and batch norm, ReLU and max pooling keep them so. LibTorch's CPU max
  // pooling runs several times faster on NHWC than on NCHW (docs/performance.md).
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) {
    if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
  return model;
}

}  // namespace batchcam::models
