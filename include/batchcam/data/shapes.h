#pragma once
// `shapes`: the embedded synthetic dataset. Ten classes of simple figures drawn with
// anti-aliasing at random position, scale and rotation over background noise, each with
// the mask of its figure; optionally a spurious class-coded patch in a random corner.

#include "batchcam/data/dataset.h"

#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::data {

/// How the spurious corner patch relates to the label.
enum class SpuriousCue { none, class_coded, random_class };

struct ShapesOptions {
  int64_t train_size = 6000;
  int64_t test_size = 1000;
  int64_t image_size = 28;  ///< height = width, at least 16
  uint64_t seed = 0;
  bool spurious = false;    ///< class-coded patch in training, random class code in test
  double noise = 0.08;      ///< standard deviation of the pixel noise, in [0, 1] units
};

/// The ten class names, in label order.
const std::vector<std::string>& shapes_class_names();

/// Shade in [0, 255] of the spurious patch for a class code: 255 - 25 * code.
inline int64_t spurious_shade(int64_t code) { return 255 - 25 * code; }

/// Side in pixels of the spurious patch for an image size (4 at 28 px).
inline int64_t spurious_patch_size(int64_t image_size) { return image_size / 7 < 2 ? 2 : image_size / 7; }

/// Generates `count` images. Deterministic for (seed, count, image_size, cue, noise).
Dataset generate_shapes(int64_t count, int64_t image_size, uint64_t seed, SpuriousCue cue, double noise);

/// Train and test splits with independent random streams derived from options.seed.
DatasetSplits make_shapes(const ShapesOptions& options);

}  // namespace batchcam::data
