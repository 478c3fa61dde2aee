#pragma once
// Pictures people can read: heat-map colours, class prototypes and per-class CAM examples
// as image grids. Every map is min-max normalised per image (0 = its lowest value, 1 = its
// highest), so colours compare places within one image, not across images.

#include "batchcam/cam/method.h"
#include "batchcam/data/dataset.h"
#include "batchcam/models/cam_model.h"

#include <torch/types.h>

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

}  // namespace batchcam::eval
