#pragma once
// ConvNeXt-V2 (Woo et al. 2023) with the reference implementation's names
// (downsample_layers, stages, norm, head): depthwise 7x7 conv, LayerNorm, 4x pointwise
// MLP with GELU and Global Response Normalization, DropPath. V2 has no layer scale.

#include "batchcam/models/cam_model.h"

#include <torch/arg.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

namespace batchcam::models {

struct ConvNeXtV2Options {
  ConvNeXtV2Options(int64_t in_channels, int64_t num_classes) : in_channels_(in_channels), num_classes_(num_classes) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, num_classes);
  TORCH_ARG(std::vector<int64_t>, depths) = std::vector<int64_t>{2, 2, 6, 2};  // atto
  TORCH_ARG(std::vector<int64_t>, dims) = std::vector<int64_t>{40, 80, 160, 320};
  TORCH_ARG(double, drop_path_rate) = 0.0;
  /// true: a 3x3 stride-1 stem instead of 4x4 stride 4, and "stages.2" as the default
  /// target layer, so 28x28 inputs give 7x7 maps there (28, 14, 7, 3 per stage).
  TORCH_ARG(bool, small_input) = false;
};

/// Reference depths and widths: atto, femto, pico, nano, tiny. Throws std::invalid_argument.
ConvNeXtV2Options convnext_v2_variant(const std::string& variant, int64_t in_channels, int64_t num_classes);

/// LayerNorm over channels of [B, C, H, W] ("channels_first" in the reference).
class ChannelsFirstLayerNormImpl : public torch::nn::Module {
 public:
  explicit ChannelsFirstLayerNormImpl(int64_t channels, double eps = 1e-6);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;

 private:
  double eps_;
};
TORCH_MODULE(ChannelsFirstLayerNorm);

/// Global Response Normalization on channels-last [B, H, W, C].
class GRNImpl : public torch::nn::Module {
 public:
  explicit GRNImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor gamma, beta;
};
TORCH_MODULE(GRN);

class ConvNeXtV2BlockImpl : public torch::nn::Module {
 public:
  ConvNeXtV2BlockImpl(int64_t dim, double drop_path);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d dwconv{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear pwconv1{nullptr}, pwconv2{nullptr};
  GRN grn{nullptr};
  double drop_path_;
};
TORCH_MODULE(ConvNeXtV2Block);

/// Stages "stages.0" .. "stages.3", each preceded by its downsample layer.
/// x [B, in_channels, H, W] -> logits [B, num_classes].
class ConvNeXtV2Impl : public CamModel {
 public:
  ConvNeXtV2Impl(const ConvNeXtV2Options& options, std::string variant = "custom");
  std::string name() const override { return "convnext-v2-" + variant_; }
  int64_t num_classes() const override { return options_.num_classes(); }

 protected:
  torch::Tensor classify(const torch::Tensor& a) override;
  NamedModules classifier_modules() const override;

 private:
  ConvNeXtV2Options options_;
  std::string variant_;
  torch::nn::LayerNorm norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(ConvNeXtV2);

}  // namespace batchcam::models
