#pragma once
// Batch-CAM: Grad-CAM for a whole batch from one autograd::grad call, differentiable so
// that losses on the maps can train the network (method spec, section 2).

#include "batchcam/models/cam_model.h"

#include <torch/arg.h>
#include <torch/types.h>

#include <functional>
#include <vector>

namespace batchcam::cam {

struct GradCamOptions {
  /// Keep the graph of the gradient so that a loss on the maps reaches the weights.
  /// true while training, false for explanations.
  TORCH_ARG(bool, create_graph) = false;
  /// Maps are upsampled (bilinear, align_corners = false) to {H, W}; empty keeps h x w.
  TORCH_ARG(std::vector<int64_t>, output_size) = {};
  /// Added to the denominator of the min-max normalisation.
  TORCH_ARG(double, eps) = 1e-7;
  /// Check that the targets lie in [0, K). Reading them back synchronises an accelerator
  /// with the host: a training loop that validated its labels once turns this off.
  TORCH_ARG(bool, check_targets) = true;
};

struct CamResult {
  torch::Tensor maps;  ///< [B, H, W] per-sample min-max normalised to [0, 1], fp32 or fp64
  torch::Tensor raw;   ///< [B, h, w] ReLU(sum_d alpha * A), before upsampling, fp32 or fp64
};

/// Batched Grad-CAM.
/// Requires: features A [B, D, h, w] is in the autograd graph of logits [B, K] (gradients
/// enabled), each logits row depends on its own sample only, targets [B] int64 in [0, K).
/// Ensures: maps[i] equals the Grad-CAM of sample i for class targets[i], computed alone;
/// a constant map gives zeros, never NaN. Features and gradients in a lower precision
/// (autocast's bf16 / fp16) are promoted: the maps are computed in fp32, outside autocast.
CamResult grad_cam(const torch::Tensor& features, const torch::Tensor& logits, const torch::Tensor& targets,
                   const GradCamOptions& options = {});

/// Forward pass plus batched Grad-CAM on a CamModel. Targets may be undefined: then the
/// predicted classes are used. Refuses (std::invalid_argument) a model whose head mixes
/// samples in its current mode. Without create_graph, only the head is differentiated.
struct ModelCam {
  torch::Tensor logits;   ///< [B, K]
  torch::Tensor targets;  ///< [B] the classes explained
  CamResult cam;
};
ModelCam grad_cam(models::CamModel& model, const torch::Tensor& x, const torch::Tensor& targets,
                  const GradCamOptions& options = {});

/// The method Batch-CAM replaces: one forward pass of the batch, then one backward pass
/// per image (B gradient calls, each for one sample's score). Same maths otherwise; kept
/// for tests and the speed benchmark.
CamResult grad_cam_per_sample(models::CamModel& model, const torch::Tensor& x, const torch::Tensor& targets,
                              const GradCamOptions& options = {});

/// Per-sample min-max normalisation: m [B, H, W] -> (m - min) / (max - min + eps).
torch::Tensor normalize_maps(const torch::Tensor& maps, double eps = 1e-7);

/// Throws std::invalid_argument naming the module when the model's head mixes samples.
void require_per_sample_head(const models::CamModel& model);

/// Empirical check for any head function: perturbs sample 0 of `features` [B, D, h, w]
/// (B >= 2) and reports whether the logits of the other samples stay unchanged
/// (within tolerance). Works for heads that are not CamModels.
bool head_is_per_sample(const std::function<torch::Tensor(const torch::Tensor&)>& head,
                        const torch::Tensor& features, double tolerance = 1e-6);

}  // namespace batchcam::cam
