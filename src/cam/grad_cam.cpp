#include "batchcam/cam/grad_cam.h"

#include "batchcam/core/runtime.h"

#include <torch/torch.h>

#include <stdexcept>

namespace batchcam::cam {

namespace {

void check_targets(const torch::Tensor& targets, int64_t batch, int64_t classes, bool check_range = true) {
  TORCH_CHECK(targets.defined() && targets.dim() == 1 && targets.size(0) == batch,
              "grad_cam: need one target per sample, shape [", batch, "], got ",
              targets.defined() ? targets.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(targets.scalar_type() == torch::kLong, "grad_cam: targets must be int64, got ", targets.scalar_type());
  if (check_range && batch > 0) {
    TORCH_CHECK(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < classes,
                "grad_cam: targets must lie in [0, ", classes, ")");
  }
}

// x / d where d != 0, else 0 (without NaN in either branch's gradient).
torch::Tensor divide_or_zero(const torch::Tensor& x, const torch::Tensor& d) {
  const auto nonzero = d != 0;
  return torch::where(nonzero, x / torch::where(nonzero, d, torch::ones_like(d)), torch::zeros_like(x));
}

// The method's map before ReLU, [B, h, w], from A and G [B, D, h, w] (promoted dtype).
torch::Tensor weighted_sum(CamMethod method, const torch::Tensor& a, const torch::Tensor& g) {
  const auto channel_weighted = [&](const torch::Tensor& w) { return (w * a).sum(1); };  // w [B, D, 1, 1]
  switch (method) {
    case CamMethod::grad_cam:
      return channel_weighted(g.mean({2, 3}, /*keepdim=*/true));
    case CamMethod::grad_cam_pp: {
      const auto g2 = g.pow(2), g3 = g.pow(3);
      const auto alpha = divide_or_zero(g2, 2 * g2 + a.sum({2, 3}, /*keepdim=*/true) * g3);
      return channel_weighted((alpha * torch::relu(g)).sum({2, 3}, /*keepdim=*/true));
    }
    case CamMethod::xgrad_cam:
      return channel_weighted(divide_or_zero((g * a).sum({2, 3}, true), a.sum({2, 3}, true)));
    case CamMethod::hires_cam:
      return (g * a).sum(1);
    case CamMethod::layer_cam:
      return (torch::relu(g) * a).sum(1);
    case CamMethod::cam:
      break;
  }
  throw std::invalid_argument("cam_from_gradients: the closed-form CAM needs the classifier's weights, not gradients "
                              "(class_activation_map)");
}

// ReLU, upsampling and normalisation of a method's map [B, h, w] (spec section 2).
CamResult finish(const torch::Tensor& sum, const GradCamOptions& options) {
  auto raw = torch::relu(sum);  // [B, h, w]
  auto up = raw;
  if (!options.output_size().empty()) {
    TORCH_CHECK(options.output_size().size() == 2, "grad_cam: output_size must be {H, W}");
    namespace F = torch::nn::functional;
    up = F::interpolate(raw.unsqueeze(1), F::InterpolateFuncOptions()
                                              .size(options.output_size())
                                              .mode(torch::kBilinear)
                                              .align_corners(false))
             .squeeze(1);
  }
  return {normalize_maps(up, options.eps()), raw};
}

}  // namespace

const std::vector<std::string>& cam_method_names() {
  static const std::vector<std::string> names = {"grad-cam", "grad-cam++", "xgrad-cam", "hirescam", "layercam", "cam"};
  return names;
}

const std::string& to_string(CamMethod method) { return cam_method_names().at(static_cast<size_t>(method)); }

CamMethod parse_cam_method(const std::string& name) {
  const auto& names = cam_method_names();
  std::string list;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return static_cast<CamMethod>(i);
    list += (i ? " | " : "") + names[i];
  }
  throw std::invalid_argument("CAM method must be " + list + ", got '" + name + "'");
}

CamResult cam_from_gradients(const torch::Tensor& features, const torch::Tensor& gradients,
                             const GradCamOptions& options) {
  TORCH_CHECK(features.dim() == 4 && gradients.sizes() == features.sizes(), "cam_from_gradients: features ",
              features.sizes(), " and gradients ", gradients.sizes(), " must both be [B, D, h, w]");
  // Without create_graph the maps are explanations, constants for any optimiser.
  torch::AutoGradMode grad_mode(options.create_graph());
  // The maps are at least fp32 whatever precision the forward pass ran in (bf16 and fp16
  // features are promoted; fp32 and fp64 stay as they are).
  core::AutocastScope no_autocast(features.device().type(), core::Precision::fp32);
  const auto dtype = torch::promote_types(features.scalar_type(), torch::kFloat32);
  return finish(weighted_sum(options.method(), features.to(dtype), gradients.to(dtype)), options);
}

CamResult class_activation_map(const torch::Tensor& features, const torch::Tensor& class_weights,
                               const GradCamOptions& options) {
  TORCH_CHECK(features.dim() == 4 && class_weights.dim() == 2 && class_weights.size(0) == features.size(0) &&
                  class_weights.size(1) == features.size(1),
              "class_activation_map: features ", features.sizes(), " [B, D, h, w] need class weights [B, D], got ",
              class_weights.sizes());
  torch::AutoGradMode grad_mode(options.create_graph());
  core::AutocastScope no_autocast(features.device().type(), core::Precision::fp32);
  const auto dtype = torch::promote_types(features.scalar_type(), torch::kFloat32);
  const double positions = static_cast<double>(features.size(2) * features.size(3));
  const auto w = class_weights.to(dtype).unsqueeze(2).unsqueeze(3) / positions;  // [B, D, 1, 1]
  return finish((w * features.to(dtype)).sum(1), options);
}

torch::Tensor normalize_maps(const torch::Tensor& maps, double eps) {
  TORCH_CHECK(maps.dim() == 3, "normalize_maps expects [B, H, W], got ", maps.sizes());
  const auto flat = maps.flatten(1);
  const auto lo = std::get<0>(flat.min(1, true)).unsqueeze(2);  // [B, 1, 1]
  const auto hi = std::get<0>(flat.max(1, true)).unsqueeze(2);
  return (maps - lo) / (hi - lo + eps);
}

CamResult grad_cam(const torch::Tensor& features, const torch::Tensor& logits, const torch::Tensor& targets,
                   const GradCamOptions& options) {
  TORCH_CHECK(features.dim() == 4, "grad_cam: features must be [B, D, h, w], got ", features.sizes());
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == features.size(0),
              "grad_cam: logits must be [B, K] with B = ", features.size(0), ", got ", logits.sizes());
  TORCH_CHECK(features.requires_grad() && logits.requires_grad(),
              "grad_cam: features and logits must be in the autograd graph (compute them with gradients "
              "enabled, outside NoGradGuard)");
  check_targets(targets, logits.size(0), logits.size(1), options.check_targets());
  // s = sum_i z[i, t_i]; because z[i] depends on A[i] only, dS/dA[i] = dz[i, t_i]/dA[i].
  const auto score = logits.gather(1, targets.unsqueeze(1)).sum();
  TORCH_CHECK(options.method() != CamMethod::cam,
              "grad_cam: the closed-form CAM needs the classifier's weights (class_activation_map, or grad_cam on a "
              "CamModel)");
  const auto grads = torch::autograd::grad({score}, {features}, /*grad_outputs=*/{},
                                           /*retain_graph=*/true, /*create_graph=*/options.create_graph());
  return cam_from_gradients(features, grads[0], options);
}

void require_per_sample_head(const models::CamModel& model) {
  const auto module = model.head_sample_mixing_module();
  if (!module.empty()) {
    throw std::invalid_argument("model " + model.name() + ": module '" + module + "' after target layer '" +
                                model.target_layer() +
                                "' mixes samples (e.g. BatchNorm in training mode); choose a later target layer or "
                                "put the model in eval mode");
  }
}

ModelCam grad_cam(models::CamModel& model, const torch::Tensor& x, const torch::Tensor& targets,
                  const GradCamOptions& options) {
  require_per_sample_head(model);
  torch::AutoGradMode enable(true);
  auto a = model.features(x);
  if (!options.create_graph()) {
    // Explanations only need dz/dA: cut the graph at A so the backward stops there.
    a = a.detach().requires_grad_(true);
  }
  ModelCam out;
  out.logits = model.head(a);
  out.targets = targets.defined() ? targets : out.logits.argmax(1);
  if (options.method() == CamMethod::cam) {
    const auto weight = model.gap_linear_weight();
    if (!weight.defined()) {
      throw std::invalid_argument("CAM method 'cam' needs a head of global average pooling and one linear layer; model " +
                                  model.name() + " with target layer '" + model.target_layer() +
                                  "' has another (use grad-cam, which equals it where it applies)");
    }
    check_targets(out.targets, out.logits.size(0), out.logits.size(1), options.check_targets());
    out.cam = class_activation_map(a, weight.index_select(0, out.targets), options);
    return out;
  }
  out.cam = grad_cam(a, out.logits, out.targets, options);
  return out;
}

Explanation explain(models::CamModel& model, const torch::Tensor& x, const torch::Tensor& targets, CamMethod method) {
  TORCH_CHECK(x.dim() == 4, "explain: x must be [B, C, H, W], got ", x.sizes());
  // Eval mode for the explanation, the caller's mode afterwards, whatever happens between.
  struct ModeGuard {
    models::CamModel& model;
    bool was_training;
    ~ModeGuard() { model.train(was_training); }
  } guard{model, model.is_training()};
  model.eval();
  const auto out = grad_cam(model, x, targets, GradCamOptions().method(method).output_size({x.size(2), x.size(3)}));
  return {out.logits.detach(), out.targets, out.cam.maps.detach(), out.cam.raw.detach()};
}

CamResult grad_cam_per_sample(models::CamModel& model, const torch::Tensor& x, const torch::Tensor& targets,
                              const GradCamOptions& options) {
  TORCH_CHECK(x.dim() == 4, "grad_cam_per_sample: x must be [B, C, H, W], got ", x.sizes());
  torch::AutoGradMode enable(true);
  auto a = model.features(x);
  if (!a.requires_grad()) a = a.detach().requires_grad_(true);
  const auto z = model.head(a);
  check_targets(targets, z.size(0), z.size(1));
  // One backward per image: the gradient of sample i's score, kept for sample i only.
  std::vector<torch::Tensor> grads;
  for (int64_t i = 0; i < x.size(0); ++i) {
    const auto g = torch::autograd::grad({z[i][targets[i].item<int64_t>()]}, {a}, {}, /*retain_graph=*/true,
                                         options.create_graph());
    grads.push_back(g[0][i]);
  }
  return cam_from_gradients(a, torch::stack(grads), options);
}

bool head_is_per_sample(const std::function<torch::Tensor(const torch::Tensor&)>& head, const torch::Tensor& features,
                        double tolerance) {
  TORCH_CHECK(features.dim() >= 2 && features.size(0) >= 2, "head_is_per_sample needs a batch of at least 2");
  torch::NoGradGuard no_grad;
  const auto base = head(features);
  auto changed = features.clone();
  changed[0].add_(torch::randn_like(changed[0]).mul_(features.std().item<double>() + 1.0));
  const auto other = head(changed);
  return (other.slice(0, 1) - base.slice(0, 1)).abs().max().item<double>() <= tolerance;
}

}  // namespace batchcam::cam
