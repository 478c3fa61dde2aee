#include "batchcam/models/cam_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>

namespace batchcam::models {

namespace {
std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// BatchNorm in training mode normalises with batch statistics: sample i's output then
// depends on every other sample, which breaks the one-gradient-call Grad-CAM.
bool mixes_samples(const torch::nn::Module& m) {
  if (!m.is_training()) return false;
  const auto n = m.name();
  return n.find("BatchNorm") != std::string::npos;
}
}  // namespace

torch::Tensor CamModel::gap_linear_weight() const {
  if (stages_.empty() || target_ + 1 != stages_.size()) return {};  // later stages would come first
  return gap_linear_classifier_weight();
}

void CamModel::freeze_batchnorm() {
  for (const auto& m : modules(/*include_self=*/false)) {
    if (m->name().find("BatchNorm") != std::string::npos) m->eval();
  }
}

void CamModel::add_stage(const std::string& name, std::function<torch::Tensor(const torch::Tensor&)> forward,
                         NamedModules modules) {
  stages_.push_back({name, std::move(forward), std::move(modules)});
  target_ = stages_.size() - 1;
}

void CamModel::add_stage(const std::string& name, torch::nn::Sequential stage) {
  auto registered = register_module(name, std::move(stage));
  add_stage(
      name, [registered](const torch::Tensor& x) { return registered->forward(x); }, {{name, registered}});
}

torch::Tensor CamModel::features(const torch::Tensor& x) {
  TORCH_CHECK(!stages_.empty(), name(), ": model has no stages");
  auto h = x;
  for (size_t i = 0; i <= target_; ++i) h = stages_[i].forward(h);
  return h;
}

torch::Tensor CamModel::head(const torch::Tensor& a) {
  auto h = a;
  for (size_t i = target_ + 1; i < stages_.size(); ++i) h = stages_[i].forward(h);
  return classify(h);
}

std::vector<std::string> CamModel::target_layers() const {
  std::vector<std::string> names;
  for (const auto& s : stages_) names.push_back(s.name);
  return names;
}

void CamModel::set_target_layer(const std::string& layer) {
  auto it = std::find_if(stages_.begin(), stages_.end(), [&](const Stage& s) { return s.name == layer; });
  if (it == stages_.end()) {
    throw std::invalid_argument("unknown target layer '" + layer + "' for model " + name() +
                                "; expected one of: " + join(target_layers()));
  }
  target_ = static_cast<size_t>(it - stages_.begin());
}

std::string CamModel::head_sample_mixing_module() const {
  NamedModules head_modules;
  for (size_t i = target_ + 1; i < stages_.size(); ++i) {
    head_modules.insert(head_modules.end(), stages_[i].modules.begin(), stages_[i].modules.end());
  }
  const auto classifier = classifier_modules();
  head_modules.insert(head_modules.end(), classifier.begin(), classifier.end());
  for (const auto& [prefix, module] : head_modules) {
    for (const auto& item : module->named_modules(prefix)) {
      if (mixes_samples(*item.value())) return item.key();
    }
  }
  return "";
}

std::vector<std::pair<std::string, std::vector<torch::Tensor>>> CamModel::parameters_top_down() const {
  const auto collect = [](const NamedModules& modules) {
    std::vector<torch::Tensor> params;
    for (const auto& named : modules) {
      for (const auto& p : named.second->parameters()) params.push_back(p);
    }
    return params;
  };
  std::vector<std::pair<std::string, std::vector<torch::Tensor>>> groups;
  groups.emplace_back("classifier", collect(classifier_modules()));
  for (auto it = stages_.rbegin(); it != stages_.rend(); ++it) groups.emplace_back(it->name, collect(it->modules));
  return groups;
}

}  // namespace batchcam::models
