#pragma once
// The model contract of batchcam: f(x) = head(features(x)), split at a named target layer.

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace batchcam::models {

/// A classifier made of named stages followed by a classifier (pooling + linear).
/// The target layer is the stage whose output A feeds Grad-CAM; `features` runs the
/// stages up to and including it, `head` runs the rest and the classifier.
class CamModel : public torch::nn::Module {
 public:
  /// Runs the whole model. x [B, C, H, W] -> logits [B, num_classes].
  torch::Tensor forward(const torch::Tensor& x) { return head(features(x)); }

  /// Stages up to and including the target layer. x [B, C, H, W] -> A [B, D, h, w].
  torch::Tensor features(const torch::Tensor& x);

  /// Remaining stages and the classifier. A [B, D, h, w] -> logits [B, num_classes].
  torch::Tensor head(const torch::Tensor& a);

  /// Names of the stages that can serve as target layer, input to output.
  std::vector<std::string> target_layers() const;

  /// Requires: `name` is one of target_layers(). Ensures: features() ends there.
  void set_target_layer(const std::string& name);
  const std::string& target_layer() const { return stages_.at(target_).name; }

  /// The classifier's weight [K, D] when everything after the target layer is global average
  /// pooling and one linear layer (the closed-form CAM's case); an undefined tensor otherwise.
  torch::Tensor gap_linear_weight() const;

  /// Puts every BatchNorm layer in eval mode (running statistics, not updated), whatever
  /// train() set; call it after train(). Not for TorchScript models (their layers are not
  /// C++ modules).
  void freeze_batchnorm();

  /// Names the first module after the target layer that mixes samples in the current
  /// mode (BatchNorm in training mode), or returns "" when the head is per-sample.
  virtual std::string head_sample_mixing_module() const;

  /// The trainable parameters by layer from the output down: {"classifier", ...} then
  /// each stage from the last to the first (for cascading randomisation checks).
  virtual std::vector<std::pair<std::string, std::vector<torch::Tensor>>> parameters_top_down() const;

  /// Short model name as used on the command line, e.g. "simple-cnn".
  virtual std::string name() const = 0;
  virtual int64_t num_classes() const = 0;

 protected:
  using NamedModules = std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>;
  /// A stage computed by `forward` from modules the subclass registered itself (listed in
  /// `modules` under their registered names, for the sample-mixing check). Lets models keep
  /// reference parameter names, e.g. torchvision's top-level conv1/bn1 stem.
  void add_stage(const std::string& name, std::function<torch::Tensor(const torch::Tensor&)> forward,
                 NamedModules modules);
  /// Registers `stage` as submodule `name` and adds it as a stage.
  void add_stage(const std::string& name, torch::nn::Sequential stage);
  /// Pooling and linear layer(s) after the last stage. A_last [B, D, h, w] -> [B, K].
  virtual torch::Tensor classify(const torch::Tensor& a) = 0;
  /// Modules used by classify(), checked by head_sample_mixing_module().
  virtual NamedModules classifier_modules() const = 0;
  /// The linear layer of a classify() that is global average pooling and that layer alone;
  /// an undefined tensor (the default) for other classifiers.
  virtual torch::Tensor gap_linear_classifier_weight() const { return {}; }

 private:
  struct Stage {
    std::string name;
    std::function<torch::Tensor(const torch::Tensor&)> forward;
    NamedModules modules;
  };
  std::vector<Stage> stages_;
  size_t target_ = 0;
};

using CamModelPtr = std::shared_ptr<CamModel>;

}  // namespace batchcam::models
