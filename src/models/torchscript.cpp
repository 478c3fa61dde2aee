#include "batchcam/models/torchscript.h"

#include "batchcam/core/runtime.h"

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace batchcam::models {

namespace {
// nn::Module names may not contain '.'; "layer1.0.conv1.weight" is kept as "layer1__0__conv1__weight".
std::string escaped(std::string name) {
  for (size_t at = name.find('.'); at != std::string::npos; at = name.find('.', at + 2)) name.replace(at, 1, "__");
  return name;
}

// A fixed input without random numbers (the caller's generator stays untouched).
torch::Tensor probe_input(int64_t batch, int64_t channels, int64_t size, const torch::Device& device) {
  return torch::arange(batch * channels * size * size, torch::TensorOptions(torch::kFloat).device(device))
      .reshape({batch, channels, size, size})
      .mul(0.37)
      .sin();
}
}  // namespace

bool is_torchscript(const std::string& model_name) { return model_name.rfind(kTorchScriptPrefix, 0) == 0; }

std::string torchscript_file(const std::string& model_name) {
  return is_torchscript(model_name) ? model_name.substr(std::string(kTorchScriptPrefix).size()) : "";
}

TorchScriptModel::TorchScriptModel(const std::string& file, int64_t in_channels, int64_t image_size)
    : file_(file), in_channels_(in_channels), image_size_(image_size) {
  try {
    module_ = torch::jit::load(file, torch::Device(torch::kCPU));
  } catch (const std::exception& e) {
    const std::string what = e.what();
    throw std::runtime_error(file + ": not a loadable TorchScript module (" + what.substr(0, what.find('\n')) + ")");
  }
  for (const char* method : {"features", "head"}) {
    if (!module_.find_method(method)) {
      throw std::runtime_error(file + ": the TorchScript module has no method '" + method +
                               "' (export features(x) and head(a) with @torch.jit.export; see the README)");
    }
  }
  for (const auto& p : module_.named_parameters()) register_parameter(escaped(p.name), p.value, p.value.requires_grad());
  for (const auto& b : module_.named_buffers()) register_buffer(escaped(b.name), b.value);
  add_stage("features", [this](const torch::Tensor& x) { return run("features", x); }, {});
  // The contract, on a small input in eval mode (no batch statistics change).
  torch::NoGradGuard no_grad;
  module_.eval();
  torch::Tensor a, logits;
  try {
    a = run("features", probe_input(2, in_channels, image_size, torch::kCPU));
    logits = a.dim() == 4 ? run("head", a) : torch::Tensor();
  } catch (const std::exception& e) {
    const std::string what = e.what();
    throw std::runtime_error(file + ": features/head fail on a [2, " + std::to_string(in_channels) + ", " +
                             std::to_string(image_size) + ", " + std::to_string(image_size) + "] input (" +
                             what.substr(0, what.find('\n')) + ")");
  }
  module_.train(is_training());  // the mode of this module, whatever the file was saved in
  if (a.dim() != 4) {
    throw std::runtime_error(file + ": features(x) must return [B, D, h, w], got " + std::to_string(a.dim()) +
                             " dimensions");
  }
  if (logits.dim() != 2 || logits.size(0) != 2) {
    throw std::runtime_error(file + ": head(a) must return logits [B, K], got " + std::to_string(logits.dim()) +
                             " dimensions");
  }
  num_classes_ = logits.size(1);
}

torch::Tensor TorchScriptModel::run(const char* method, const torch::Tensor& input) {
  // Thread-local and restored on return: a precaution against the double-backward trouble
  // of LibTorch 1.13's optimised graphs (PyTorch issue 49764).
  torch::jit::GraphOptimizerEnabledGuard unoptimised(false);
  return module_.get_method(method)({input}).toTensor();
}

torch::Tensor TorchScriptModel::classify(const torch::Tensor& a) { return run("head", a); }

void TorchScriptModel::train(bool on) {
  CamModel::train(on);
  module_.train(on);
}

std::string TorchScriptModel::head_sample_mixing_module() const {
  const bool training = is_training();
  if (const auto it = mixing_.find(training); it != mixing_.end()) return it->second;
  auto& self = const_cast<TorchScriptModel&>(*this);
  torch::NoGradGuard no_grad;
  // In training mode the probe would move BatchNorm statistics: they are put back after it.
  std::vector<torch::Tensor> saved;
  for (const auto& b : self.buffers()) saved.push_back(b.clone());
  const auto parameters = self.parameters();
  const auto device = parameters.empty() ? torch::Device(torch::kCPU) : parameters.front().device();
  // Random layers (Dropout) draw the same numbers in both runs, and the caller's generators
  // are left as they were.
  const auto generators = core::generator_state();
  const auto a = self.run("features", probe_input(4, in_channels_, image_size_, device));
  auto changed = a.clone();
  changed[0].mul_(-2.0).add_(1.0);
  core::set_generator_state(generators);
  const auto before = self.run("head", a);
  core::set_generator_state(generators);
  const auto after = self.run("head", changed);
  core::set_generator_state(generators);
  const auto buffers = self.buffers();
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(saved[i]);
  const bool mixes = !torch::allclose(before.slice(0, 1), after.slice(0, 1), 1e-5, 1e-6);
  return mixing_[training] = mixes ? "head (changing one sample's features changed the others' logits)" : "";
}

std::vector<std::pair<std::string, std::vector<torch::Tensor>>> TorchScriptModel::parameters_top_down() const {
  std::vector<std::pair<std::string, std::vector<torch::Tensor>>> groups;
  std::vector<torch::Tensor> own;
  for (const auto& p : module_.named_parameters(/*recurse=*/false)) own.push_back(p.value);
  if (!own.empty()) groups.emplace_back("(top level)", own);
  std::vector<std::pair<std::string, std::vector<torch::Tensor>>> children;
  for (const auto& child : module_.named_children()) {
    std::vector<torch::Tensor> params;
    for (const auto& p : child.value.parameters()) params.push_back(p);
    if (!params.empty()) children.emplace_back(child.name, params);
  }
  groups.insert(groups.end(), children.rbegin(), children.rend());
  return groups;
}

std::string TorchScriptModel::save_bytes() const {
  std::ostringstream out;
  module_.save(out);
  return out.str();
}

}  // namespace batchcam::models
