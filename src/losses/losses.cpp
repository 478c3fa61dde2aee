#include "batchcam/losses/cam_losses.h"
#include "batchcam/losses/distances.h"

#include "batchcam/cam/grad_cam.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace batchcam::losses {

namespace {
void check_pair(const torch::Tensor& a, const torch::Tensor& b, const char* what) {
  TORCH_CHECK(a.dim() == 3 && a.sizes() == b.sizes(), what, ": maps must both be [B, H, W], got ", a.sizes(), " and ",
              b.sizes());
}

void check_maps_targets(const torch::Tensor& maps, const torch::Tensor& targets, int64_t num_classes, const char* what,
                        bool check_range) {
  TORCH_CHECK(maps.dim() == 3, what, ": maps must be [B, H, W], got ", maps.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == maps.size(0) && targets.scalar_type() == torch::kLong, what,
              ": need one int64 target per map, got ", targets.sizes());
  if (check_range && targets.numel() > 0) {
    TORCH_CHECK(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < num_classes, what,
                ": targets must lie in [0, ", num_classes, ")");
  }
}
}  // namespace

Distance parse_distance(const std::string& name) {
  if (name == "l1") return Distance::l1;
  if (name == "l2") return Distance::l2;
  if (name == "ssim") return Distance::ssim;
  throw std::invalid_argument("unknown distance '" + name + "'; expected l1, l2 or ssim");
}

std::string to_string(Distance d) {
  switch (d) {
    case Distance::l1: return "l1";
    case Distance::l2: return "l2";
    case Distance::ssim: return "ssim";
  }
  return "?";
}

torch::Tensor ssim_window(int64_t h, int64_t w, const SsimOptions& o, torch::ScalarType dtype, torch::Device device) {
  int64_t side = std::min({o.window, h, w});
  if (side % 2 == 0) side -= 1;
  TORCH_CHECK(side >= 1, "ssim: maps of ", h, "x", w, " are too small");
  const double sigma = o.sigma * static_cast<double>(side) / static_cast<double>(o.window);
  auto x = torch::arange(side, torch::TensorOptions().dtype(torch::kDouble).device(device)) - static_cast<double>(side / 2);
  auto g = torch::exp(-(x * x) / (2.0 * sigma * sigma));
  g = g / g.sum();
  return torch::outer(g, g).to(dtype);
}

torch::Tensor ssim(const torch::Tensor& a, const torch::Tensor& b, const SsimOptions& o) {
  check_pair(a, b, "ssim");
  const auto win = ssim_window(a.size(1), a.size(2), o, a.scalar_type(), a.device()).unsqueeze(0).unsqueeze(0);
  const auto filter = [&](const torch::Tensor& t) { return torch::conv2d(t.unsqueeze(1), win); };  // valid windows
  const auto mu_a = filter(a), mu_b = filter(b);
  const auto var_a = filter(a * a) - mu_a * mu_a;
  const auto var_b = filter(b * b) - mu_b * mu_b;
  const auto cov = filter(a * b) - mu_a * mu_b;
  const double c1 = std::pow(o.k1 * o.data_range, 2), c2 = std::pow(o.k2 * o.data_range, 2);
  const auto map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2));
  return map.flatten(1).mean(1);
}

torch::Tensor distance(Distance d, const torch::Tensor& a, const torch::Tensor& b) {
  check_pair(a, b, "distance");
  switch (d) {
    case Distance::l1: return (a - b).abs().flatten(1).mean(1);
    case Distance::l2: return (a - b).square().flatten(1).mean(1);
    case Distance::ssim: return 1.0 - ssim(a, b);
  }
  throw std::logic_error("distance: unhandled kind");
}

PrototypeSums::PrototypeSums(int64_t num_classes, int64_t height, int64_t width)
    : num_classes_(num_classes), height_(height), width_(width),
      sums_(torch::zeros({num_classes, height * width}, torch::kDouble)),
      counts_(torch::zeros({num_classes}, torch::kDouble)) {}

void PrototypeSums::add(const torch::Tensor& images, const torch::Tensor& labels) {
  TORCH_CHECK(images.dim() == 4 && (images.scalar_type() == torch::kUInt8 || images.is_floating_point()),
              "image_prototypes: images must be uint8 or floating point [N, C, H, W], got ", images.scalar_type(), " ",
              images.sizes());
  TORCH_CHECK(images.size(2) == height_ && images.size(3) == width_, "image_prototypes: images must be ", height_,
              " x ", width_, ", got ", images.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == images.size(0) && labels.scalar_type() == torch::kLong,
              "image_prototypes: need one int64 label per image, got ", labels.scalar_type(), " ", labels.sizes(),
              " for ", images.size(0), " images");
  const auto cpu_labels = labels.to(torch::kCPU);
  if (cpu_labels.numel() > 0) {
    const auto lo = cpu_labels.min().item<int64_t>(), hi = cpu_labels.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < num_classes_, "image_prototypes: labels must lie in [0, ", num_classes_, "), got ",
                lo < 0 ? lo : hi);
  }
  auto gray = images.to(torch::kCPU, torch::kDouble);
  if (images.scalar_type() == torch::kUInt8) gray.div_(255.0);
  gray = gray.mean(1).flatten(1);  // [n, HW]
  sums_.index_add_(0, cpu_labels, gray);
  counts_.index_add_(0, cpu_labels, torch::ones({cpu_labels.size(0)}, torch::kDouble));
}

torch::Tensor PrototypeSums::prototypes() const {
  const auto mean = (sums_ / counts_.clamp_min(1.0).unsqueeze(1)).view({num_classes_, height_, width_});
  return cam::normalize_maps(mean).to(torch::kFloat32);
}

torch::Tensor image_prototypes(const torch::Tensor& images, const torch::Tensor& labels, int64_t num_classes) {
  TORCH_CHECK(images.dim() == 4, "image_prototypes: images must be [N, C, H, W], got ", images.sizes());
  PrototypeSums sums(num_classes, images.size(2), images.size(3));
  constexpr int64_t kChunk = 4096;  // bounds the float copy for large datasets
  for (int64_t begin = 0; begin < images.size(0); begin += kChunk) {
    const int64_t end = std::min(begin + kChunk, images.size(0));
    sums.add(images.slice(0, begin, end), labels.slice(0, begin, end));
  }
  return sums.prototypes();
}

torch::Tensor image_prototypes(const data::Dataset& dataset) {
  PrototypeSums sums(dataset.num_classes(), dataset.height(), dataset.width());
  data::for_each_chunk(dataset, [&](const torch::Tensor& images, const torch::Tensor& labels) { sums.add(images, labels); });
  return sums.prototypes();
}

std::pair<torch::Tensor, torch::Tensor> class_sums(const torch::Tensor& maps, const torch::Tensor& labels,
                                                   int64_t num_classes, bool check_targets) {
  check_maps_targets(maps, labels, num_classes, "class_sums", check_targets);
  const auto onehot = torch::one_hot(labels, num_classes).to(maps.scalar_type());  // [B, K]
  const auto sums = onehot.t().matmul(maps.flatten(1));                             // [K, HW]
  return {sums.view({num_classes, maps.size(1), maps.size(2)}), onehot.sum(0)};
}

std::pair<torch::Tensor, torch::Tensor> batch_prototypes(const torch::Tensor& maps, const torch::Tensor& labels,
                                                         int64_t num_classes, bool check_targets) {
  const auto [sums, counts] = class_sums(maps, labels, num_classes, check_targets);
  return {sums / counts.clamp_min(1.0).view({-1, 1, 1}), counts.to(torch::kLong)};
}

torch::Tensor ema_prototypes(const torch::Tensor& prototypes, const torch::Tensor& maps, const torch::Tensor& labels,
                             double momentum, bool check_targets) {
  torch::NoGradGuard no_grad;
  const auto [sums, counts] =
      class_sums(maps.detach().to(prototypes.scalar_type()), labels, prototypes.size(0), check_targets);
  return ema_prototypes_from_sums(prototypes, sums, counts, momentum);
}

torch::Tensor ema_prototypes_from_sums(const torch::Tensor& prototypes, const torch::Tensor& sums,
                                       const torch::Tensor& counts, double momentum) {
  TORCH_CHECK(momentum >= 0.0 && momentum <= 1.0, "ema_prototypes: momentum must be in [0, 1], got ", momentum);
  TORCH_CHECK(sums.sizes() == prototypes.sizes() && counts.dim() == 1 && counts.size(0) == prototypes.size(0),
              "ema_prototypes_from_sums: sums ", sums.sizes(), " and counts ", counts.sizes(), " must match prototypes ",
              prototypes.sizes());
  torch::NoGradGuard no_grad;
  const auto n = counts.to(prototypes.scalar_type()).view({-1, 1, 1});
  const auto q = sums.to(prototypes.scalar_type()) / n.clamp_min(1.0);
  return torch::where(n > 0, momentum * prototypes + (1.0 - momentum) * q, prototypes);
}

torch::Tensor prototype_loss(const torch::Tensor& maps, const torch::Tensor& targets, const torch::Tensor& prototypes,
                             Distance d, bool check_targets) {
  check_maps_targets(maps, targets, prototypes.size(0), "prototype_loss", check_targets);
  TORCH_CHECK(prototypes.dim() == 3 && prototypes.size(1) == maps.size(1) && prototypes.size(2) == maps.size(2),
              "prototype_loss: prototypes must be [K, ", maps.size(1), ", ", maps.size(2), "], got ", prototypes.sizes());
  const auto target_maps = prototypes.to(maps.options()).index_select(0, targets);
  return distance(d, maps, target_maps).mean();
}

torch::Tensor batch_cam_loss(const torch::Tensor& maps, const torch::Tensor& targets, int64_t num_classes, Distance d,
                             bool detach_target, bool check_targets) {
  auto [q, counts] = batch_prototypes(maps, targets, num_classes, check_targets);
  if (detach_target) q = q.detach();
  const auto per_sample = distance(d, maps, q.index_select(0, targets));  // [B]
  const auto counted = (counts.index_select(0, targets) > 1).to(maps.scalar_type());
  return (per_sample * counted).sum() / static_cast<double>(std::max<int64_t>(maps.size(0), 1));
}

torch::Tensor log_probability_input_gradients(const torch::Tensor& x, const torch::Tensor& logits, bool create_graph) {
  TORCH_CHECK(x.dim() == 4, "log_probability_input_gradients: x must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == x.size(0), "log_probability_input_gradients: logits must be [",
              x.size(0), ", K], got ", logits.sizes());
  TORCH_CHECK(x.requires_grad() && logits.requires_grad(),
              "log_probability_input_gradients: x must require grad and the logits depend on it");
  const auto summed = torch::log_softmax(logits, 1).sum();
  return torch::autograd::grad({summed}, {x}, {}, /*retain_graph=*/true, create_graph)[0];
}

torch::Tensor input_gradient_penalty(const torch::Tensor& gradients, const torch::Tensor& weights) {
  TORCH_CHECK(gradients.dim() == 4 && weights.dim() == 3 && weights.size(0) == gradients.size(0) &&
                  weights.size(1) == gradients.size(2) && weights.size(2) == gradients.size(3),
              "input_gradient_penalty: gradients ", gradients.sizes(), " must be [B, C, H, W] and weights ",
              weights.sizes(), " [B, H, W]");
  const auto b = std::max<int64_t>(gradients.size(0), 1);
  const auto w = weights.to(gradients.scalar_type()).unsqueeze(1);
  return (w * gradients.square()).sum() / static_cast<double>(b);
}

torch::Tensor rrr_loss(const torch::Tensor& gradients, const torch::Tensor& masks) {
  return input_gradient_penalty(gradients, masks);
}

torch::Tensor prototype_rrr_loss(const torch::Tensor& gradients, const torch::Tensor& targets,
                                 const torch::Tensor& prototypes, bool check_targets) {
  TORCH_CHECK(prototypes.dim() == 3 && gradients.dim() == 4 && prototypes.size(1) == gradients.size(2) &&
                  prototypes.size(2) == gradients.size(3),
              "prototype_rrr_loss: prototypes ", prototypes.sizes(), " must be [K, H, W] with the gradients' H and W ",
              gradients.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == gradients.size(0) && targets.scalar_type() == torch::kLong,
              "prototype_rrr_loss: need one int64 target per sample, got ", targets.sizes());
  if (check_targets && targets.numel() > 0) {
    TORCH_CHECK(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < prototypes.size(0),
                "prototype_rrr_loss: targets must lie in [0, ", prototypes.size(0), ")");
  }
  const auto p = prototypes.to(gradients.device(), gradients.scalar_type()).detach().index_select(0, targets);
  return input_gradient_penalty(gradients, 1 - p);
}

}  // namespace batchcam::losses
