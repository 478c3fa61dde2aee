#pragma once
// Pictures people can read: heat-map colours, class prototypes and per-class CAM examples
// as image grids. Every map is min-max normalised per image (0 = its lowest value, 1 = its
// highest), so colours compare places within one image, not across images.

#include "batchcam/cam/method.h"
#include "batchcam/data/dataset.h"
#include "batchcam/models/cam_model.h"

#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

namespace batchcam::eval {

/// Maps values in [0, 1] ([H, W]) to RGB uint8 [H, W, 3] with a perceptually ordered
/// black-purple-orange-yellow ramp (an approximation of matplotlib's "inferno").
torch::Tensor heat_colors(const torch::Tensor& map);

/// The image (unit [C, H, W], C = 1 or 3, values in [0, 1]) blended with the heat colours
/// of `map` [H, W]: (1 - alpha) * image + alpha * heat. -> [H, W, 3] uint8.
torch::Tensor overlay(const torch::Tensor& image, const torch::Tensor& map, double alpha = 0.5);

/// The ramp of heat_colors from 0 (left) to 1 (right). -> [height, width, 3] uint8.
torch::Tensor color_bar(int64_t width = 256, int64_t height = 12);

/// The zoom that shows an image of `side` pixels at about `target` pixels (at least 1).
int64_t display_zoom(int64_t side, int64_t target = 112);

/// Prototypes [K, H, W] in [0, 1] as one row of heat maps, each scaled up `zoom` times
/// (0 = display_zoom of H), separated by 2 px. -> [zoom*H, K*(zoom*W+2)-2, 3] uint8.
torch::Tensor prototype_strip(const torch::Tensor& prototypes, int64_t zoom = 0);

/// For the first test image of each class (rows): the image, its map (`method`) for the true
/// class as a heat map, and the overlay (columns), each scaled up `zoom` times (0 =
/// display_zoom of the images' side). -> [K*(zoom*H+2)-2, 3*(zoom*W+2)-2, 3] uint8.
torch::Tensor cam_examples(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                           int64_t zoom = 0, cam::CamMethod method = cam::CamMethod::grad_cam);

/// The four panels of one explanation, each scaled up `zoom` times, side by side with
/// 2 px gaps: the image (unit [C, H, W], in colour when C = 3), the CAM map [H, W] in
/// [0, 1] as a heat map, the overlay, and the reconstruction map * image (method spec,
/// section 7). -> [zoom*H, 4*(zoom*W+2)-2, 3] uint8.
torch::Tensor explanation_panels(const torch::Tensor& image, const torch::Tensor& map, int64_t zoom = 4);

/// Stacks rows (each [h, w, 3] uint8 of the same size) with 2 px white gaps.
torch::Tensor stack_rows(const std::vector<torch::Tensor>& rows);

/// What `batchcam explain` says of one image (a line of its cam_stats.csv).
struct ExplainedSample {
  std::string source;  ///< the file for streamed datasets, else "test:<index>"
  int64_t label = -1;  ///< the dataset's label; -1 where unknown
  int64_t predicted = 0, target = 0;  ///< the top class, and the class explained
  double target_probability = 0.0;    ///< softmax probability of `target`
  double cam_mean = 0.0;              ///< mean of the map (in [0, 1])
  int64_t peak_y = 0, peak_x = 0;     ///< the map's maximum (the first in row-major order on ties)
  double top_decile_mass = 0.0;       ///< share of the map's mass in its highest 10% of pixels (0 without mass)
};

struct ExplainOptions {
  cam::CamMethod method = cam::CamMethod::grad_cam;
  int64_t target = -1;      ///< the class explained in every image; -1: each image's predicted class
  int64_t batch_size = 32;  ///< images per cam::explain call
  int64_t zoom = 0;         ///< of the panels; 0 = display_zoom(side, 112)
};

/// Explains every image of `inputs` (cam::explain, in batches, so that any number of files
/// needs memory for one batch) and hands each to `visit` in order: its statistics and its
/// explanation_panels (image | map | overlay | reconstruction). The model's mode is restored.
void explain_images(models::CamModel& model, const data::Dataset& inputs, const data::Normalization& norm,
                    const ExplainOptions& options,
                    const std::function<void(const ExplainedSample& sample, const torch::Tensor& panels)>& visit);

/// The explanations of `inputs` written into `out_dir`, each file atomically: one picture per
/// image (images/NNNN.png, images/NNNN-<file stem>.png for files), per explained class up to 8
/// of them stacked (class-<K>.png, so those panels stay in memory until the end), and
/// cam_stats.csv (a line per image; classes by name where `inputs` has class names).
/// Returns the samples.
std::vector<ExplainedSample> write_explanations(const std::string& out_dir, models::CamModel& model,
                                                const data::Dataset& inputs, const data::Normalization& norm,
                                                const ExplainOptions& options = {});

}  // namespace batchcam::eval
