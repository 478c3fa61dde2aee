#pragma once
// Prototypes and the two Batch-CAM regularisers (method spec, sections 4 and 6), and the
// input-gradient terms against spurious features: RRR with annotation masks (Ross et al.
// 2017) and Prototype RRR, which takes the class prototype as its mask (docs/method.md).

#include "batchcam/data/dataset.h"
#include "batchcam/losses/distances.h"

#include <torch/types.h>

namespace batchcam::losses {

/// Global class prototypes from images: P_c = mean over the samples of class c of the
/// channel-averaged [0, 1] image, then min-max normalised to [0, 1].
/// images [N, C, H, W] uint8 (0..255) or floating point (in [0, 1]), on any device;
/// labels [N] int64 in [0, K) -> [K, H, W] float32 on the CPU. A class without samples gets a zero map.
torch::Tensor image_prototypes(const torch::Tensor& images, const torch::Tensor& labels, int64_t num_classes);
/// The same over a dataset's images and classes, in chunks (one decoding pass when streamed).
torch::Tensor image_prototypes(const data::Dataset& dataset);

/// The class sums behind image_prototypes, added chunk by chunk (for a pass over data that
/// is not in memory at once, shared with other statistics).
class PrototypeSums {
 public:
  PrototypeSums(int64_t num_classes, int64_t height, int64_t width);
  /// images uint8 [n, C, H, W] (or floating point in [0, 1]), labels int64 [n] in [0, num_classes).
  void add(const torch::Tensor& images, const torch::Tensor& labels);
  /// As image_prototypes: [K, H, W] float32.
  torch::Tensor prototypes() const;

 private:
  int64_t num_classes_, height_, width_;
  torch::Tensor sums_, counts_;
};

/// In-batch class sums of the maps. maps [B, H, W], labels [B] ->
/// {sums [K, H, W] (zero for absent classes), counts [K] in the maps' dtype}.
std::pair<torch::Tensor, torch::Tensor> class_sums(const torch::Tensor& maps, const torch::Tensor& labels,
                                                   int64_t num_classes, bool check_targets = true);

/// In-batch class means of the maps. maps [B, H, W], labels [B] ->
/// {Q [K, H, W] (zero for absent classes), counts [K] int64}.
/// check_targets: verify that labels lie in [0, K) (a host synchronisation on an
/// accelerator; callers that validated their labels once pass false), here and below.
std::pair<torch::Tensor, torch::Tensor> batch_prototypes(const torch::Tensor& maps, const torch::Tensor& labels,
                                                         int64_t num_classes, bool check_targets = true);

/// The cam-ema prototype update: for each class c present in the batch,
/// P_c <- momentum * P_c + (1 - momentum) * Q_c, with Q detached. Returns the new [K, H, W].
torch::Tensor ema_prototypes(const torch::Tensor& prototypes, const torch::Tensor& maps, const torch::Tensor& labels,
                             double momentum = 0.99, bool check_targets = true);

/// The same update from class sums [K, H, W] and counts [K] of the maps (class_sums), e.g.
/// summed over the ranks of a data-parallel run: Q_c = sums_c / counts_c where counts_c > 0.
torch::Tensor ema_prototypes_from_sums(const torch::Tensor& prototypes, const torch::Tensor& sums,
                                       const torch::Tensor& counts, double momentum = 0.99);

/// L_proto = (1/B) sum_i D(maps_i, P_{t_i}). maps [B, H, W], targets [B], prototypes [K, H, W].
torch::Tensor prototype_loss(const torch::Tensor& maps, const torch::Tensor& targets, const torch::Tensor& prototypes,
                             Distance d, bool check_targets = true);

/// L_batch = (1/B) sum_i D(maps_i, Q_{t_i}) over samples whose class has at least two
/// members in the batch (a singleton adds nothing). With detach_target the in-batch
/// prototypes are constants; otherwise the term pulls a class's maps together.
torch::Tensor batch_cam_loss(const torch::Tensor& maps, const torch::Tensor& targets, int64_t num_classes, Distance d,
                             bool detach_target = false, bool check_targets = true);

/// The input gradients that RRR penalises: g = d/dx sum_i sum_k log softmax(logits)_ik,
/// [B, C, H, W] like x (Ross et al. 2017). x must require grad and logits [B, K]
/// depend on it. With create_graph a penalty of g trains the model (a double backward).
/// Where the model treats samples independently (no BatchNorm in training mode), g_i is the
/// gradient of sample i's own summed log-probabilities.
torch::Tensor log_probability_input_gradients(const torch::Tensor& x, const torch::Tensor& logits,
                                              bool create_graph = true);

/// (1/B) sum_i sum_{c,u,v} weights_i(u,v) g_icuv^2: gradients [B, C, H, W], weights [B, H, W]
/// (>= 0; bool or floating point), the same for every channel.
torch::Tensor input_gradient_penalty(const torch::Tensor& gradients, const torch::Tensor& weights);

/// RRR's "right reasons" term with annotation masks [B, H, W] (true where the region must
/// not matter, e.g. a decoy): input_gradient_penalty(gradients, masks). Zero for empty masks.
torch::Tensor rrr_loss(const torch::Tensor& gradients, const torch::Tensor& masks);

/// Prototype RRR, without annotations: input_gradient_penalty with weights 1 - P_{t_i}, the
/// class prototype [K, H, W] in [0, 1] read as "where class t has no evidence".
torch::Tensor prototype_rrr_loss(const torch::Tensor& gradients, const torch::Tensor& targets,
                                 const torch::Tensor& prototypes, bool check_targets = true);

}  // namespace batchcam::losses
