#pragma once
// Pictures people can read: class prototypes and per-class CAM examples as image grids.

#include "batchcam/data/dataset.h"
#include "batchcam/models/cam_model.h"

#include <torch/types.h>

#include <vector>

namespace batchcam::eval {

/// Prototypes [K, H, W] in [0, 1] as one row of heat maps, each scaled up `zoom` times,
/// separated by 2 px. -> [zoom*H, K*(zoom*W+2)-2, 3] uint8.
torch::Tensor prototype_strip(const torch::Tensor& prototypes, int64_t zoom = 4);

/// For the first test image of each class (rows): the image, its Grad-CAM for the true
/// class as a heat map, and the overlay (columns), each scaled up `zoom` times.
/// -> [K*(zoom*H+2)-2, 3*(zoom*W+2)-2, 3] uint8.
torch::Tensor cam_examples(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                           int64_t zoom = 4);

/// The four panels of one explanation, each scaled up `zoom` times, side by side with
/// 2 px gaps: the image (unit gray [H, W]), the CAM map [H, W] in [0, 1] as a heat map,
/// the overlay, and the reconstruction map * image (method spec, section 7).
/// -> [zoom*H, 4*(zoom*W+2)-2, 3] uint8.
torch::Tensor explanation_panels(const torch::Tensor& gray, const torch::Tensor& map, int64_t zoom = 4);

/// Stacks rows (each [h, w, 3] uint8 of the same size) with 2 px white gaps.
torch::Tensor stack_rows(const std::vector<torch::Tensor>& rows);

}  // namespace batchcam::eval
