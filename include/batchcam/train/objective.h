#pragma once
// The training objective: CE + lambda_p * Prototype Loss + lambda_b * Batch-CAM Loss
// (method spec, section 6) + lambda_rrr * RRR + lambda_proto_rrr * Prototype RRR (the
// input-gradient terms, docs/method.md), with the forward pass under autocast and the CAM in fp32.

#include "batchcam/cam/method.h"
#include "batchcam/core/runtime.h"
#include "batchcam/data/dataset.h"
#include "batchcam/losses/distances.h"
#include "batchcam/models/cam_model.h"

#include <torch/types.h>

namespace batchcam::train {

struct CamLossConfig {
  double lambda_proto = 0.0;
  double lambda_batch = 0.0;
  /// RRR with the batch's annotation masks (data::Batch::masks, required when > 0).
  double lambda_rrr = 0.0;
  /// Prototype RRR: the input gradients weighted by 1 - P_t, no annotation.
  double lambda_proto_rrr = 0.0;
  losses::Distance distance_proto = losses::Distance::ssim;
  losses::Distance distance_batch = losses::Distance::ssim;
  bool detach_batch_target = false;
  double label_smoothing = 0.0;  ///< of the cross-entropy term
  /// The maps compared (the paper's Grad-CAM here; batchcam train defaults to LayerCAM, TrainConfig):
  /// cam (closed form) needs model.gap_linear_weight().
  cam::CamMethod method = cam::CamMethod::grad_cam;
  /// Autocast type of the forward pass; Grad-CAM maps and distances stay in fp32.
  core::Precision precision = core::Precision::fp32;
  /// Check on every call that the labels lie in [0, K). Reading them back synchronises an
  /// accelerator with the host, so the trainer checks each dataset once and turns this off.
  bool check_targets = true;
  /// Whether a CAM term is on (the maps are computed).
  bool active() const { return lambda_proto > 0.0 || lambda_batch > 0.0; }
  /// Whether an input-gradient term is on (the input gradients are computed).
  bool input_gradients() const { return lambda_rrr > 0.0 || lambda_proto_rrr > 0.0; }
};

struct StepLosses {
  torch::Tensor total;   ///< CE + the weighted terms below (scalar, fp32)
  torch::Tensor ce, proto, batch, rrr, proto_rrr;  ///< the terms (fp32); 0 when off
  torch::Tensor logits;  ///< [B, K], in the autocast type
  torch::Tensor maps;    ///< [B, H, W] Batch-CAM maps (fp32); undefined when inactive
};

/// The training objective of one batch, differentiable with respect to the model's
/// parameters. Requires the batch on the model's device and prototypes [K, H, W] when
/// lambda_proto > 0 or lambda_proto_rrr > 0 (moved to the device when they are elsewhere),
/// and batch.masks when lambda_rrr > 0.
StepLosses compute_losses(models::CamModel& model, const data::Batch& batch, const torch::Tensor& prototypes,
                          int64_t num_classes, const CamLossConfig& config);

}  // namespace batchcam::train
