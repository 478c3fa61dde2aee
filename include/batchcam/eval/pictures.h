#pragma once
// Pictures people can read: class prototypes and per-class CAM examples as image grids.

#include "batchcam/data/dataset.h"
#include "batchcam/models/cam_model.h"

#include <torch/types.h>

namespace batchcam::eval {

/// Prototypes [K, H, W] in [0, 1] as one row of heat maps, each scaled up `zoom` times,
/// separated by 2 px. -> [zoom*H, K*(zoom*W+2)-2, 3] uint8.
torch::Tensor prototype_strip(const torch::Tensor& prototypes, int64_t zoom = 4);

/// For the first test image of each class (rows): the image, its Grad-CAM for the true
/// class as a heat map, and the overlay (columns), each scaled up `zoom` times.
/// -> [K*(zoom*H+2)-2, 3*(zoom*W+2)-2, 3] uint8.
torch::Tensor cam_examples(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                           int64_t zoom = 4);

}  // namespace batchcam::eval
