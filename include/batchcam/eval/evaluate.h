#pragma once
// Test-set evaluation: accuracy, cross-entropy, and how close the CAMs are to the class
// prototypes (method spec, section 7).

#include "batchcam/cam/method.h"
#include "batchcam/data/dataset.h"
#include "batchcam/models/cam_model.h"

#include <torch/types.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace batchcam::eval {

/// A metric that could not be computed (no masks, no decoys, skipped): NaN, written as
/// null in JSON and "n/a" in text and on the report page.
inline constexpr double kNotAvailable = std::numeric_limits<double>::quiet_NaN();
inline bool available(double v) { return !std::isnan(v); }

struct EvalMetrics {
  int64_t count = 0;
  double loss = 0.0;      ///< mean cross-entropy
  double accuracy = 0.0;  ///< fraction in [0, 1]
  // CAM (for the true class) against the prototype of the true class; set when
  // prototypes are given. SSIM is a similarity (higher is better), L1/L2 distances.
  double proto_l1 = 0.0, proto_l2 = 0.0, proto_ssim = 0.0;
  // Share of CAM mass on the ground-truth object and on the spurious decoy (mean over
  // samples of sum(M * mask) / sum(M)); not available where the dataset has no such masks
  // or no prototypes were given (no CAMs computed).
  double object_share = kNotAvailable, decoy_share = kNotAvailable;
};

/// Per-sample share of CAM mass inside a mask: maps [B, H, W] >= 0, masks [B, H, W] bool
/// -> [B]. A map with no mass gives 0.
torch::Tensor mass_share(const torch::Tensor& maps, const torch::Tensor& masks);

/// Per-sample distance of a mask's centroid from the image centre, in units of half the
/// image's shorter side (0: centred; 1: the middle of an edge). masks [B, H, W] bool -> [B]
/// float32; NaN for an empty mask.
torch::Tensor centre_distance(const torch::Tensor& masks);

/// Localisation of the objects in one band of centre_distance(), for the true class's maps.
struct LocalisationBand {
  double from = 0.0, to = 0.0;  ///< the band [from, to) of the object's distance from the centre
  int64_t count = 0;            ///< test images whose object lies in it
  double object_share = kNotAvailable, object_pointing = kNotAvailable;  ///< means; n/a when empty
};

/// The bands of evaluate_full's localisation_by_distance: [0, 0.2), [0.2, 0.4), [0.4, inf).
std::vector<LocalisationBand> localisation_bands();

/// Evaluates `model` in eval mode on the whole dataset (the model's mode is restored).
/// prototypes [K, H, W] may be undefined: then the CAM metrics are skipped. The CAM metrics
/// use the maps of `method`.
EvalMetrics evaluate(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                     const torch::Tensor& prototypes, int64_t batch_size = 256,
                     cam::CamMethod method = cam::CamMethod::grad_cam);

/// Per-sample pointing game: whether the map's maximum (first in row-major order on ties)
/// lies inside the mask. maps [B, H, W], masks [B, H, W] bool -> [B] bool.
torch::Tensor pointing_game(const torch::Tensor& maps, const torch::Tensor& masks);

/// How often the decoy decides: among samples whose decoy encodes another class than their
/// label (decoy_labels != labels), the share predicted as the decoy's class. A model that
/// ignores the decoy scores about its error rate / (K - 1); one that only reads it scores 1.
/// kNotAvailable when no sample's decoy disagrees with its label.
double decoy_following(const torch::Tensor& predicted, const torch::Tensor& labels, const torch::Tensor& decoy_labels);

/// Deletion and insertion curves (Petsiuk et al. 2018). Pixels are ranked by `maps`
/// [B, H, W] (highest first, ties in row-major order); at step k of `steps`, the first
/// k/steps of them are replaced by `baseline` [B, C, H, W] (deletion) or taken from `x`
/// over the baseline (insertion). Each curve holds the softmax probability of `targets`
/// from `forward` at steps 0..steps -> {deletion [B, steps+1], insertion [B, steps+1]}.
std::pair<torch::Tensor, torch::Tensor> deletion_insertion_curves(
    const std::function<torch::Tensor(const torch::Tensor&)>& forward, const torch::Tensor& x,
    const torch::Tensor& targets, const torch::Tensor& maps, const torch::Tensor& baseline, int64_t steps);

/// Area under curves [B, S+1] sampled evenly on [0, 1] (trapezoid rule) -> [B].
torch::Tensor curve_auc(const torch::Tensor& curves);

/// Noisy linear imputation (ROAD, Rong et al. 2022): every pixel where `removed` [B, H, W]
/// (bool) is true takes the weighted mean of its 8 neighbours inside the image (1/6 for the
/// 4 direct ones, 1/12 for the diagonal ones), solved for all removed pixels of an image
/// at once (a sparse symmetric positive definite system, by preconditioned conjugate
/// gradients to a relative residual of 1e-5 in float32, 1e-10 in float64, at most
/// 10 (H + W) + 100 iterations), channel by channel; then Gaussian noise of standard
/// deviation `noise` is added to them, image i's drawn on the CPU from a generator seeded
/// with seed + i. Kept pixels are returned unchanged. x [B, C, H, W] float -> [B, C, H, W].
/// An image with every pixel removed has no solution: refused.
torch::Tensor noisy_linear_imputation(const torch::Tensor& x, const torch::Tensor& removed, double noise,
                                      uint64_t seed);

/// ROAD, RemOve And Debias (Rong et al. 2022): for each fraction f, the f most relevant
/// pixels by `maps` [B, H, W] (MoRF) or the f least relevant ones (LeRF) are replaced by
/// noisy_linear_imputation(noise), and the model is asked again about `targets` [B]. Equal
/// map values are ranked in a random order. Image i's random numbers (order of equal values,
/// noise at each fraction) come from seeds derived from seed + i, so that an image gets the
/// same numbers in any batch (pass its position in the evaluated set).
struct RoadCurves {
  torch::Tensor morf, lerf;                  ///< [B, F] softmax probability of the target
  torch::Tensor morf_correct, lerf_correct;  ///< [B, F] bool: the target is still the top class
};
RoadCurves road_curves(const std::function<torch::Tensor(const torch::Tensor&)>& forward, const torch::Tensor& x,
                       const torch::Tensor& targets, const torch::Tensor& maps, const std::vector<double>& fractions,
                       double noise, uint64_t seed);

/// Average drop and increase in confidence (Chattopadhay et al. 2018): the softmax
/// probability p of `targets` on `x` against o on `explained`, the image multiplied by its
/// map. -> {drop [B] = max(0, p - o) / p, increase [B] bool = o > p}.
std::pair<torch::Tensor, torch::Tensor> confidence_change(
    const std::function<torch::Tensor(const torch::Tensor&)>& forward, const torch::Tensor& x,
    const torch::Tensor& explained, const torch::Tensor& targets);

struct EvalOptions {
  int64_t batch_size = 256;
  /// First N test images for deletion/insertion, ROAD and the confidence change (0 = skip).
  int64_t faithfulness_count = 1000;
  int64_t faithfulness_steps = 16;
  /// ROAD's removed fractions (empty = skip ROAD) and the imputation's noise (on the model input).
  std::vector<double> road_fractions{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
  double road_noise = 0.01;
  int64_t randomization_count = 256;  ///< first N test images for the sanity check (0 = skip)
  bool timing = true;                 ///< measure inference time per image
  cam::CamMethod method = cam::CamMethod::grad_cam;  ///< the maps every CAM metric and picture uses
  /// Told before each part of evaluate_full (for progress output); may be empty.
  std::function<void(const std::string& what)> on_phase;
};

/// One step of the cascading parameter randomisation (Adebayo et al. 2018): the layers
/// from the output down to `layer` re-initialised; similarity of the new CAMs to the
/// trained model's (a CAM that explains the model must change: low is good).
struct RandomizationStep {
  std::string layer;
  double ssim = 0.0;
  double rank_correlation = 0.0;  ///< Spearman, mean over images
};

/// Everything `batchcam eval` reports (method spec, section 7).
struct EvalReport {
  cam::CamMethod method = cam::CamMethod::grad_cam;  ///< the maps evaluated
  EvalMetrics metrics;  ///< accuracy, loss, CAM vs prototype, mass shares
  std::vector<std::string> class_names;
  std::vector<double> per_class_accuracy;
  std::vector<std::vector<int64_t>> confusion;  ///< [true class][predicted class]
  double input_l1 = 0.0, input_l2 = 0.0, input_ssim = 0.0;  ///< CAM vs the input (unit gray)
  double object_pointing = kNotAvailable, decoy_pointing = kNotAvailable;  ///< without masks: not available
  /// The decoy seen from the decision: CAM mass share and pointing game of the Grad-CAM for
  /// the predicted class, and decoy_following(); not available without decoys.
  double decoy_share_predicted = kNotAvailable, decoy_pointing_predicted = kNotAvailable,
         decoy_following = kNotAvailable;
  int64_t faithfulness_count = 0, faithfulness_steps = 0;
  double deletion_auc = kNotAvailable, insertion_auc = kNotAvailable;  ///< not available when skipped
  std::string faithfulness_baseline = "black image (pixel value 0)";
  /// ROAD on the faithfulness images, per fraction: mean probability of the true class and
  /// accuracy after removing the most (MoRF) or least (LeRF) relevant pixels; empty when skipped.
  std::vector<double> road_fractions, road_morf, road_lerf, road_morf_accuracy, road_lerf_accuracy;
  double road_noise = 0.0;
  /// Means over the fractions: MoRF (lower is better), LeRF (higher is better) and
  /// (LeRF - MoRF) / 2 (higher is better; pytorch-grad-cam's ROADCombined).
  double road_morf_mean = kNotAvailable, road_lerf_mean = kNotAvailable, road_combined = kNotAvailable;
  /// On the faithfulness images, as fractions: the mean of confidence_change's drop (lower
  /// is better) and the share of images whose confidence rose (higher is better).
  double average_drop = kNotAvailable, increase_in_confidence = kNotAvailable;
  std::vector<RandomizationStep> randomization;
  /// With object masks: the CAM mass on the object and the pointing game in bands of the
  /// object's distance from the image centre (localisation_bands()), so that maps pulled
  /// towards the centre show as a drop in the outer bands. Empty without object masks.
  std::vector<LocalisationBand> localisation_by_distance;
  double ms_per_image = kNotAvailable, ms_per_image_with_cam = kNotAvailable;  ///< not available when not timed
};

/// The full evaluation of `model` on `dataset` with CAMs for the true class. The model's
/// weights and mode are left as they were. prototypes [K, H, W] are required.
EvalReport evaluate_full(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                         const torch::Tensor& prototypes, const EvalOptions& options = {});

/// The report as aligned text tables for a terminal.
std::string format_report(const EvalReport& report);

}  // namespace batchcam::eval
