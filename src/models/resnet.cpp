#include "batchcam/models/resnet.h"

#include <torch/torch.h>

namespace batchcam::models {

namespace nn = torch::nn;

namespace {
nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(false));
}
}  // namespace

BasicBlockImpl::BasicBlockImpl(int64_t in, int64_t out, int64_t stride) {
  conv1 = register_module("conv1", conv(in, out, 3, stride, 1));
  bn1 = register_module("bn1", nn::BatchNorm2d(out));
  conv2 = register_module("conv2", conv(out, out, 3, 1, 1));
  bn2 = register_module("bn2", nn::BatchNorm2d(out));
  if (stride != 1 || in != out) {
    downsample = register_module("downsample", nn::Sequential(conv(in, out, 1, stride, 0), nn::BatchNorm2d(out)));
  }
  // torchvision initialisation: Kaiming normal (fan_out) for convolutions.
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* c = m->as<nn::Conv2d>()) nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
  }
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  auto out = torch::relu(bn1(conv1(x)));
  out = bn2(conv2(out));
  const auto identity = downsample ? downsample->forward(x) : x;
  return torch::relu(out + identity);
}

ResNet18Impl::ResNet18Impl(const ResNetOptions& options) : options_(options) {
  TORCH_CHECK(options.in_channels() > 0 && options.num_classes() > 1, "ResNet18 needs in_channels > 0 and num_classes > 1");
  const bool small = options.small_input();
  conv1_ = register_module("conv1", small ? conv(options.in_channels(), 64, 3, 1, 1) : conv(options.in_channels(), 64, 7, 2, 3));
  nn::init::kaiming_normal_(conv1_->weight, 0.0, torch::kFanOut, torch::kReLU);
  bn1_ = register_module("bn1", nn::BatchNorm2d(64));

  const int64_t widths[] = {64, 128, 256, 512};
  std::vector<nn::Sequential> layers;
  for (int i = 0; i < 4; ++i) {
    const int64_t in = i == 0 ? 64 : widths[i - 1];
    layers.push_back(nn::Sequential(BasicBlock(in, widths[i], i == 0 ? 1 : 2), BasicBlock(widths[i], widths[i], 1)));
  }
  // The stem (conv1, bn1, ReLU, max-pool) runs in front of layer1, keeping torchvision's names.
  auto stem = [this, small](const torch::Tensor& x) {
    auto h = torch::relu(bn1_(conv1_(x)));
    return small ? h : torch::max_pool2d(h, 3, 2, 1);
  };
  auto layer1 = register_module("layer1", layers[0]);
  add_stage(
      "layer1", [stem, layer1](const torch::Tensor& x) { return layer1->forward(stem(x)); },
      {{"conv1", conv1_.ptr()}, {"bn1", bn1_.ptr()}, {"layer1", layer1}});
  for (int i = 1; i < 4; ++i) add_stage("layer" + std::to_string(i + 1), layers[i]);
  fc_ = register_module("fc", nn::Linear(512, options.num_classes()));
}

torch::Tensor ResNet18Impl::classify(const torch::Tensor& a) { return fc_->forward(a.mean({2, 3})); }

CamModel::NamedModules ResNet18Impl::classifier_modules() const { return {{"fc", fc_.ptr()}}; }

}  // namespace batchcam::models
