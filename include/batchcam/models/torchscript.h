#pragma once
// Models written in Python: a TorchScript module that exports features(x) and head(a).
//
// The contract (a module scripted with torch.jit.script and saved with .save(FILE)):
//   @torch.jit.export
//   def features(self, x: Tensor) -> Tensor   # x [B, C, H, W] -> A [B, D, h, w], the target layer
//   @torch.jit.export
//   def head(self, a: Tensor) -> Tensor       # A -> logits [B, K]
// head must treat samples independently (no BatchNorm over the batch after the target
// layer in training mode); batchcam checks this by running it. The module's parameters and
// buffers are trained and saved; other tensor attributes are not (they stay on the CPU).

#include "batchcam/models/cam_model.h"

#include <torch/script.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace batchcam::models {

/// A model name "torchscript:FILE" names a TorchScript file.
inline constexpr const char* kTorchScriptPrefix = "torchscript:";
bool is_torchscript(const std::string& model_name);
/// The FILE of "torchscript:FILE".
std::string torchscript_file(const std::string& model_name);

/// A TorchScript module as a CamModel. Its parameters and buffers are registered as this
/// module's (the same tensors; '.' in their names written as "__"), so optimisers,
/// checkpoints, devices and train/eval mode treat it like a built-in model. Its methods run
/// with the graph executor's optimisations off for the calling thread (a scoped, thread-local
/// setting), a precaution against the double-backward trouble of LibTorch 1.13's optimised
/// graphs (PyTorch issue 49764).
class TorchScriptModel : public CamModel {
 public:
  /// Loads `file` and checks the contract on a [2, in_channels, image_size, image_size]
  /// input. Throws std::runtime_error naming the file and what is wrong.
  TorchScriptModel(const std::string& file, int64_t in_channels, int64_t image_size);

  std::string name() const override { return kTorchScriptPrefix + file_; }
  int64_t num_classes() const override { return num_classes_; }
  void train(bool on = true) override;

  /// Checked by running head() on features whose first sample is changed (once per mode).
  std::string head_sample_mixing_module() const override;
  /// The module's children from the last to the first (the root's own parameters first).
  std::vector<std::pair<std::string, std::vector<torch::Tensor>>> parameters_top_down() const override;

  /// The module as torch.jit.save writes it, with the current weights (Python's
  /// torch.jit.load reads it).
  std::string save_bytes() const;

 protected:
  torch::Tensor classify(const torch::Tensor& a) override;
  NamedModules classifier_modules() const override { return {}; }

 private:
  torch::Tensor run(const char* method, const torch::Tensor& input);

  std::string file_;
  mutable torch::jit::Module module_;
  int64_t in_channels_, image_size_, num_classes_ = 0;
  mutable std::map<bool, std::string> mixing_;  ///< head_sample_mixing_module() per mode
};

}  // namespace batchcam::models
