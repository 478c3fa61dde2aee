#pragma once
// SimpleCNN: three conv-BN-ReLU stages, global average pooling, a linear head.

#include "batchcam/models/cam_model.h"

#include <torch/arg.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace batchcam::models {

struct SimpleCNNOptions {
  SimpleCNNOptions(int64_t in_channels, int64_t num_classes)
      : in_channels_(in_channels), num_classes_(num_classes) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, num_classes);
  /// Channels of the first stage; each following stage doubles it.
  TORCH_ARG(int64_t, width) = 16;
};

/// Stages "block1" (H x W), "block2" (H/2 x W/2), "block3" (H/4 x W/4, the default
/// target layer); each is conv3x3-BN-ReLU twice, blocks 2 and 3 start with a 2x2 max-pool.
/// x [B, in_channels, H, W] -> logits [B, num_classes].
class SimpleCNNImpl : public CamModel {
 public:
  explicit SimpleCNNImpl(const SimpleCNNOptions& options);
  std::string name() const override { return "simple-cnn"; }
  int64_t num_classes() const override { return options_.num_classes(); }
  const SimpleCNNOptions& options() const { return options_; }

 protected:
  torch::Tensor classify(const torch::Tensor& a) override;
  NamedModules classifier_modules() const override;
  torch::Tensor gap_linear_classifier_weight() const override { return fc_->weight; }

 private:
  SimpleCNNOptions options_;
  torch::nn::Linear fc_{nullptr};
};
TORCH_MODULE(SimpleCNN);

}  // namespace batchcam::models
