#pragma once
// Batch-CAM: Grad-CAM for a whole batch from one autograd::grad call, differentiable so
// that losses on the maps can train the network (method spec, section 2).

#include "batchcam/cam/method.h"
#include "batchcam/models/cam_model.h"

#include <torch/arg.h>
#include <torch/types.h>

#include <functional>
#include <vector>

namespace batchcam::cam {

struct GradCamOptions {
  TORCH_ARG(CamMethod, method) = CamMethod::grad_cam;
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
  torch::Tensor raw;   ///< [B, h, w] the method's map after ReLU, before upsampling, fp32 or fp64
};

/// The map of options.method() (any but cam) from features A [B, D, h, w] and gradients
/// G [B, D, h, w] of each sample's target score with respect to its features. Differentiable
/// in both when options.create_graph().
CamResult cam_from_gradients(const torch::Tensor& features, const torch::Tensor& gradients,
                             const GradCamOptions& options = {});

/// Closed-form CAM from features A [B, D, h, w] and each sample's classifier row W_t [B, D]
/// (the linear layer after global average pooling): ReLU(sum_d W_td A_d / (h w)).
CamResult class_activation_map(const torch::Tensor& features, const torch::Tensor& class_weights,
                               const GradCamOptions& options = {});

/// Batched Grad-CAM (or options.method(), any but cam).
/// Requires: features A [B, D, h, w] is in the autograd graph of logits [B, K] (gradients
/// enabled), each logits row depends on its own sample only, targets [B] int64 in [0, K).
/// Ensures: maps[i] equals the map of sample i for class targets[i], computed alone;
/// a constant map gives zeros, never NaN. Features and gradients in a lower precision
/// (autocast's bf16 / fp16) are promoted: the maps are computed in fp32, outside autocast.
CamResult grad_cam(const torch::Tensor& features, const torch::Tensor& logits, const torch::Tensor& targets,
                   const GradCamOptions& options = {});

/// Forward pass plus the batched map of options.method() on a CamModel. Targets may be
/// undefined: then the predicted classes are used. Refuses (std::invalid_argument) a model
/// whose head mixes samples in its current mode, and cam for a head that is not global
/// average pooling and one linear layer. Without create_graph, only the head is
/// differentiated (cam: nothing is).
struct ModelCam {
  torch::Tensor logits;   ///< [B, K]
  torch::Tensor targets;  ///< [B] the classes explained
  CamResult cam;
};
ModelCam grad_cam(models::CamModel& model, const torch::Tensor& x, const torch::Tensor& targets,
                  const GradCamOptions& options = {});

/// An explanation of a batch (what a user looks at; no training signal).
struct Explanation {
  torch::Tensor logits;   ///< [B, K], detached
  torch::Tensor targets;  ///< [B] the classes explained
  torch::Tensor maps;     ///< [B, H, W] at the input's resolution, in [0, 1], detached
  torch::Tensor raw;      ///< [B, h, w] detached
};
/// The maps of `method` for x [B, C, H, W] as explanations: the model in eval mode (its
/// mode is restored afterwards, also when this throws), maps at the input's resolution and
/// detached. Targets undefined: the predicted classes. The one entry for evaluation,
/// pictures, the report and `batchcam explain`.
Explanation explain(models::CamModel& model, const torch::Tensor& x, const torch::Tensor& targets = {},
                    CamMethod method = CamMethod::grad_cam);

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
