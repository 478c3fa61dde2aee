#include "batchcam/train/objective.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/losses/cam_losses.h"

#include <torch/torch.h>

namespace batchcam::train {

namespace {
torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, double label_smoothing) {
  namespace F = torch::nn::functional;
  return F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().label_smoothing(label_smoothing));
}
}  // namespace

StepLosses compute_losses(models::CamModel& model, const data::Batch& batch, const torch::Tensor& prototypes,
                          int64_t num_classes, const CamLossConfig& config) {
  StepLosses out;
  const auto zero = torch::zeros({}, batch.x.options().dtype(torch::kFloat32));
  out.proto = out.batch = out.rrr = out.proto_rrr = zero;
  const auto device_type = batch.x.device().type();
  // The input-gradient terms differentiate with respect to the input: a leaf of its own.
  const auto x = config.input_gradients() ? batch.x.detach().requires_grad_(true) : batch.x;
  if (config.active()) cam::require_per_sample_head(model);
  torch::Tensor features;
  {
    // Only the forward pass runs under autocast (as in PyTorch's recipe); the gradients
    // that Grad-CAM and RRR take, and the maps, run outside it.
    core::AutocastScope autocast(device_type, config.precision);
    if (config.active()) {
      features = model.features(x);
      out.logits = model.head(features);
    } else {
      out.logits = model.forward(x);
    }
  }
  const auto logits = out.logits.to(torch::kFloat32);
  out.ce = cross_entropy(logits, batch.y, config.label_smoothing);
  if (config.active()) {
    const auto cam_options = cam::GradCamOptions()
                                 .create_graph(true)
                                 .output_size({batch.x.size(2), batch.x.size(3)})
                                 .check_targets(config.check_targets)
                                 .method(config.method);
    if (config.method == cam::CamMethod::cam) {
      // Closed form: no gradient call (the trainer checked that the head allows it).
      const auto weight = model.gap_linear_weight();
      TORCH_CHECK(weight.defined(), "compute_losses: cam needs a head of global average pooling and one linear layer");
      out.maps = cam::class_activation_map(features, weight.index_select(0, batch.y), cam_options).maps;
    } else {
      out.maps = cam::grad_cam(features, logits, batch.y, cam_options).maps;
    }
    if (config.lambda_proto > 0.0) {
      TORCH_CHECK(prototypes.defined(), "compute_losses: lambda_proto > 0 needs prototypes");
      out.proto = losses::prototype_loss(out.maps, batch.y, prototypes.to(out.maps.device()), config.distance_proto,
                                         config.check_targets);
    }
    if (config.lambda_batch > 0.0) {
      out.batch = losses::batch_cam_loss(out.maps, batch.y, num_classes, config.distance_batch,
                                         config.detach_batch_target, config.check_targets);
    }
  }
  if (config.input_gradients()) {
    // One gradient call serves both terms: they weight the same gradients differently.
    const auto gradients = losses::log_probability_input_gradients(x, logits, /*create_graph=*/true).to(torch::kFloat32);
    if (config.lambda_rrr > 0.0) {
      TORCH_CHECK(batch.masks.defined(),
                  "compute_losses: lambda_rrr > 0 needs the batch's annotation masks (data::BatchIterator::set_masks)");
      out.rrr = losses::rrr_loss(gradients, batch.masks.to(gradients.device()));
    }
    if (config.lambda_proto_rrr > 0.0) {
      TORCH_CHECK(prototypes.defined(), "compute_losses: lambda_proto_rrr > 0 needs prototypes");
      out.proto_rrr = losses::prototype_rrr_loss(gradients, batch.y, prototypes, config.check_targets);
    }
  }
  out.total = out.ce + config.lambda_proto * out.proto + config.lambda_batch * out.batch +
              config.lambda_rrr * out.rrr + config.lambda_proto_rrr * out.proto_rrr;
  return out;
}

}  // namespace batchcam::train
