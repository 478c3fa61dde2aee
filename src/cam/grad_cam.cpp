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

// From features A [B, D, h, w] and their gradient G: weights, weighted sum, ReLU,
// upsampling, normalisation (spec section 2).
CamResult cam_from_gradients(const torch::Tensor& a, const torch::Tensor& g, const GradCamOptions& options) {
  // Without create_graph the maps are explanations, constants for any optimiser.
  torch::AutoGradMode grad_mode(options.create_graph());
  // The maps are at least fp32 whatever precision the forward pass ran in (bf16 and fp16
  // features are promoted; fp32 and fp64 stay as they are).
  core::AutocastScope no_autocast(a.device().type(), core::Precision::fp32);
  const auto dtype = torch::promote_types(a.scalar_type(), torch::kFloat32);
  const auto alpha = g.to(dtype).mean({2, 3}, /*keepdim=*/true);  // [B, D, 1, 1]
  auto raw = torch::relu((alpha * a.to(dtype)).sum(1));           // [B, h, w]
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
  out.cam = grad_cam(a, out.logits, out.targets, options);
  return out;
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
