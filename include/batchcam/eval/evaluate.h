#pragma once
// Test-set evaluation: accuracy, cross-entropy, and how close the CAMs are to the class
// prototypes (method spec, section 7).

#include "batchcam/data/dataset.h"
#include "batchcam/models/cam_model.h"

#include <torch/types.h>

namespace batchcam::eval {

struct EvalMetrics {
  int64_t count = 0;
  double loss = 0.0;      ///< mean cross-entropy
  double accuracy = 0.0;  ///< fraction in [0, 1]
  // CAM (for the true class) against the prototype of the true class; set when
  // prototypes are given. SSIM is a similarity (higher is better), L1/L2 distances.
  double proto_l1 = 0.0, proto_l2 = 0.0, proto_ssim = 0.0;
  // Share of CAM mass on the ground-truth object and on the spurious decoy (mean over
  // samples of sum(M * mask) / sum(M)); -1 where the dataset has no such masks or no
  // prototypes were given (no CAMs computed).
  double object_share = -1.0, decoy_share = -1.0;
};

/// Per-sample share of CAM mass inside a mask: maps [B, H, W] >= 0, masks [B, H, W] bool
/// -> [B]. A map with no mass gives 0.
torch::Tensor mass_share(const torch::Tensor& maps, const torch::Tensor& masks);

/// Evaluates `model` in eval mode on the whole dataset (the model's mode is restored).
/// prototypes [K, H, W] may be undefined: then the CAM metrics are skipped.
EvalMetrics evaluate(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                     const torch::Tensor& prototypes, int64_t batch_size = 256);

}  // namespace batchcam::eval
