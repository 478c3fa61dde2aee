#pragma once
// Batch-CAM: Grad-CAM for a whole batch from one autograd::grad call, differentiable so
// that losses on the maps can train the network (method spec, section 2).

#include "batchcam/models/cam_model.h"

#include <torch/arg.h>
#include <torch/types.h>

#include <functional>
#include <vector>

namespace batchcam::cam {

/// The class activation maps batchcam computes, each from the features A [B, D, h, w] and
/// the gradient G = dz_t/dA of each sample's target score (one gradient call for the batch),
/// then ReLU, upsampling and per-sample min-max normalisation. Sums run over the channels d
/// and, for weights, over the positions (x, y):
/// - grad_cam (Selvaraju et al. 2017): ReLU(sum_d mean_xy(G_d) A_d)
/// - grad_cam_pp (Chattopadhay et al. 2018): ReLU(sum_d w_d A_d), w_d = sum_xy a_dxy ReLU(G_dxy),
///   a_dxy = G^2 / (2 G^2 + sum_xy(A_d) G^3) (0 where that denominator is 0)
/// - xgrad_cam (Fu et al. 2020): ReLU(sum_d w_d A_d), w_d = sum_xy(G_d A_d) / sum_xy(A_d)
///   (0 where sum_xy(A_d) is 0)
/// - hires_cam (Draelos and Carin 2020): ReLU(sum_d G_d * A_d)
/// - layer_cam (Jiang et al. 2021): ReLU(sum_d ReLU(G_d) * A_d)
/// - cam (Zhou et al. 2016), for heads that are global average pooling and one linear layer:
///   ReLU(sum_d W_td A_d / (h w)) in closed form, no gradient call; on such heads G_d = W_td /
///   (h w) everywhere, so it equals Grad-CAM (the 1 / (h w) keeps Grad-CAM's scale).
enum class CamMethod { grad_cam, grad_cam_pp, xgrad_cam, hires_cam, layer_cam, cam };
/// "grad-cam", "grad-cam++", "xgrad-cam", "hirescam", "layercam", "cam", in enum order.
const std::vector<std::string>& cam_method_names();
const std::string& to_string(CamMethod method);
/// Throws std::invalid_argument naming the value and the choices.
CamMethod parse_cam_method(const std::string& name);

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
