#pragma once
// ResNet-18 (He et al. 2016; BasicBlock, [2, 2, 2, 2]) with torchvision's parameter and
// buffer names (conv1, bn1, layer1.0.conv1, ..., fc), so state dicts move between the two.

#include "batchcam/models/cam_model.h"

#include <torch/arg.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace batchcam::models {

struct ResNetOptions {
  ResNetOptions(int64_t in_channels, int64_t num_classes) : in_channels_(in_channels), num_classes_(num_classes) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, num_classes);
  /// true: 3x3 stride-1 conv1 and no max-pool, for images up to 64 px (28 px -> 4x4 at
  /// layer4); false: the standard 7x7 stride-2 conv1 and 3x3 stride-2 max-pool.
  TORCH_ARG(bool, small_input) = false;
};

/// Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN "downsample") shortcut.
class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(BasicBlock);

/// Stages "layer1" .. "layer4" (default target layer: layer4).
/// x [B, in_channels, H, W] -> logits [B, num_classes].
class ResNet18Impl : public CamModel {
 public:
  explicit ResNet18Impl(const ResNetOptions& options);
  std::string name() const override { return "resnet18"; }
  int64_t num_classes() const override { return options_.num_classes(); }

 protected:
  torch::Tensor classify(const torch::Tensor& a) override;
  NamedModules classifier_modules() const override;
  torch::Tensor gap_linear_classifier_weight() const override { return fc_->weight; }

 private:
  ResNetOptions options_;
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr};
  torch::nn::Linear fc_{nullptr};
};
TORCH_MODULE(ResNet18);

}  // namespace batchcam::models
