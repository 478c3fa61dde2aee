#include "batchcam/eval/evaluate.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/losses/distances.h"

#include <torch/torch.h>

namespace batchcam::eval {

torch::Tensor mass_share(const torch::Tensor& maps, const torch::Tensor& masks) {
  TORCH_CHECK(maps.dim() == 3 && maps.sizes() == masks.sizes(), "mass_share: maps ", maps.sizes(), " and masks ",
              masks.sizes(), " must both be [B, H, W]");
  const auto m = maps.flatten(1);
  const auto inside = (m * masks.flatten(1).to(m.scalar_type())).sum(1);
  return inside / m.sum(1).clamp_min(1e-12);
}

EvalMetrics evaluate(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                     const torch::Tensor& prototypes, int64_t batch_size) {
  const bool was_training = model.is_training();
  model.eval();
  data::BatchIterator batches(dataset, norm, batch_size, /*shuffle=*/false, 0, /*drop_last=*/false);
  EvalMetrics m;
  double loss = 0, correct = 0, l1 = 0, l2 = 0, ssim = 0, object = 0, decoy = 0;
  const auto options = cam::GradCamOptions().output_size({dataset.height(), dataset.width()});
  for (int64_t i = 0; i < batches.size(); ++i) {
    const auto b = batches.get(i);
    torch::Tensor logits;
    if (prototypes.defined()) {
      const auto out = cam::grad_cam(model, b.x, b.y, options);
      logits = out.logits.detach();
      torch::NoGradGuard no_grad;
      const auto maps = out.cam.maps.detach();
      const auto target = prototypes.index_select(0, b.y);
      l1 += losses::distance(losses::Distance::l1, maps, target).sum().item<double>();
      l2 += losses::distance(losses::Distance::l2, maps, target).sum().item<double>();
      ssim += losses::ssim(maps, target).sum().item<double>();
      if (dataset.object_masks.defined()) {
        object += mass_share(maps, dataset.object_masks.index_select(0, b.index)).sum().item<double>();
      }
      if (dataset.decoy_masks.defined()) {
        decoy += mass_share(maps, dataset.decoy_masks.index_select(0, b.index)).sum().item<double>();
      }
    } else {
      torch::NoGradGuard no_grad;
      logits = model.forward(b.x);
    }
    loss += torch::nn::functional::cross_entropy(
                logits, b.y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += logits.argmax(1).eq(b.y).sum().item<double>();
  }
  const double n = static_cast<double>(dataset.size());
  m.count = dataset.size();
  if (n > 0) {
    m.loss = loss / n;
    m.accuracy = correct / n;
    m.proto_l1 = l1 / n;
    m.proto_l2 = l2 / n;
    m.proto_ssim = ssim / n;
    if (prototypes.defined() && dataset.object_masks.defined()) m.object_share = object / n;
    if (prototypes.defined() && dataset.decoy_masks.defined()) m.decoy_share = decoy / n;
  }
  model.train(was_training);
  return m;
}

}  // namespace batchcam::eval
