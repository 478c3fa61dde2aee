#pragma once
// Image folders: one subfolder per class, PNG and JPEG files of any size, streamed from
// disk (see image_files.h) instead of decoded into memory.

#include "batchcam/data/dataset.h"
#include "batchcam/io/image.h"

#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::data {

struct FolderOptions {
  int64_t image_size = 28;  ///< side of the square images the model sees
  int64_t train_size = 0;   ///< a stratified random subset of this many training images (0 = all)
  int64_t test_size = 0;    ///< the same for the test images
  double val_split = 0.2;   ///< without train/ and test/: each class's share held out for testing
  uint64_t seed = 0;        ///< the held-out images and the subsets
  int64_t max_pixels = io::kMaxImagePixels;  ///< larger images are refused before decoding
  int64_t workers = 0;      ///< decoding threads (0: the caller's thread, no read-ahead)
};

/// An image folder: `dir/train/<class>/` and `dir/test/<class>/`, or only `dir/<class>/`
/// (then a random share val_split of each class, at least one image, is the test split).
/// Class names are the folder names, sorted. Every chosen file's header is read here (so
/// that an unreadable or oversized file is reported before training); the images are
/// decoded when a batch asks for them, in colour when any image is, else gray. Throws
/// std::runtime_error naming the directory or file and the problem.
DatasetSplits image_folder(const std::string& dir, const FolderOptions& options);

/// n indices of `labels` (values in [0, num_classes)) drawn at random (by `seed`) so that
/// each class keeps its share, rounded by largest remainder, and every class present keeps
/// at least one when n allows; sorted. All indices when n <= 0 or n >= labels.size().
std::vector<int64_t> stratified_subset(const std::vector<int64_t>& labels, int64_t num_classes, int64_t n,
                                       uint64_t seed);

}  // namespace batchcam::data
