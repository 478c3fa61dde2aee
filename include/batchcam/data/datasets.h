#pragma once
// Every dataset `batchcam train --dataset` knows, by name: the embedded shapes, MNIST and
// Fashion-MNIST (IDX files, downloaded and verified when missing), their decoy variants,
// CIFAR-10 (binary batches) and image folders (streamed). Each lives in a file of its own.

#include "batchcam/data/cifar10.h"
#include "batchcam/data/dataset.h"
#include "batchcam/data/folder.h"
#include "batchcam/data/image_files.h"
#include "batchcam/data/mnist.h"
#include "batchcam/io/image.h"

#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::data {

/// The side of shapes and folder images when no size is asked for.
inline constexpr int64_t kDefaultImageSize = 28;

struct DatasetOptions {
  std::string name = "shapes";  ///< one of dataset_names()
  std::string dir;              ///< the files' directory; "" = default_data_dir(name)
  /// shapes: images generated (0 = 6000); folder: a stratified random subset (0 = all);
  /// the others: the first N (0 = all; their files are in random order already).
  int64_t train_size = 0;
  int64_t test_size = 0;  ///< as train_size (shapes: 0 = 1000)
  /// Image side: 0 = the dataset's own (MNIST-type 28, CIFAR-10 32; shapes and folder
  /// kDefaultImageSize); otherwise generated at it (shapes) or resized to it (the rest:
  /// images bilinear, antialiased when shrinking; masks nearest; folder images keep their
  /// aspect ratio, see load_image()).
  int64_t image_size = 0;
  bool spurious = false;        ///< shapes only
  uint64_t seed = 0;            ///< shapes' drawing, decoy corners and shades, folder split and subsets
  double val_split = 0.2;       ///< folder without train/ and test/: each class's share held out
  int64_t max_image_pixels = io::kMaxImagePixels;  ///< folder: larger images are refused before decoding
  int64_t workers = 0;          ///< folder: decoding threads (0 = the caller's)
};

std::vector<std::string> dataset_names();

/// data/mnist for mnist and decoy-mnist, data/fashion-mnist for the Fashion pair,
/// data/cifar10, and "" for shapes and folder (a folder has no default).
std::string default_data_dir(const std::string& name);

/// Loads (and for MNIST-type data downloads when missing) the named dataset. Throws
/// std::invalid_argument for an unknown name and std::runtime_error naming the file
/// and the problem for anything wrong with the data.
DatasetSplits load_dataset(const DatasetOptions& options);

}  // namespace batchcam::data
