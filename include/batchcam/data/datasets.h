#pragma once
// Every dataset `batchcam train --dataset` knows: the embedded shapes, MNIST and
// Fashion-MNIST (IDX files, downloaded and verified when missing), their decoy variants,
// CIFAR-10 (binary batches) and image folders.

#include "batchcam/data/dataset.h"
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
  int64_t train_size = 0;       ///< shapes: images generated (0 = 6000); others: first N (0 = all)
  int64_t test_size = 0;        ///< shapes: images generated (0 = 1000); others: first N (0 = all)
  /// Image side: 0 = the dataset's own (MNIST-type 28, CIFAR-10 32; shapes and folder
  /// kDefaultImageSize); otherwise generated at it (shapes) or resized to it (the rest:
  /// images bilinear, antialiased when shrinking; masks nearest).
  int64_t image_size = 0;
  bool spurious = false;        ///< shapes only
  uint64_t seed = 0;            ///< shapes' drawing, decoy corners and shades, folder split
  int64_t max_image_pixels = io::kMaxImagePixels;  ///< folder: larger images are refused before decoding
};

std::vector<std::string> dataset_names();

/// data/mnist for mnist and decoy-mnist, data/fashion-mnist for the Fashion pair,
/// data/cifar10, and "" for shapes and folder (a folder has no default).
std::string default_data_dir(const std::string& name);

/// Loads (and for MNIST-type data downloads when missing) the named dataset. Throws
/// std::invalid_argument for an unknown name and std::runtime_error naming the file
/// and the problem for anything wrong with the data.
DatasetSplits load_dataset(const DatasetOptions& options);

/// One IDX image file [N, H, W] and its label file [N] as a dataset; counts, ranks and
/// labels (< class_names.size()) are checked.
Dataset idx_dataset(const std::string& images_path, const std::string& labels_path,
                    const std::vector<std::string>& class_names);

/// A file the MNIST-type loaders need, with its published SHA-256 (of the .gz file).
struct DataFile {
  std::string name;
  std::string sha256;
  int64_t size = 0;  ///< bytes; a download is stopped past it (0 = unknown, no cap)
};

/// Makes sure every file is in `dir` (as name, or uncompressed without ".gz"); missing
/// ones are downloaded from the first mirror that answers (base URLs; the environment
/// variable BATCHCAM_DATA_MIRROR replaces the list), verified and moved into place
/// atomically. A download is stopped as soon as it exceeds the file's known size (a mirror
/// sending endless data cannot fill the disk). Throws std::runtime_error naming the missing
/// files, the mirrors tried and what to do, or a checksum mismatch.
void ensure_files(const std::string& dir, const std::vector<DataFile>& files, std::vector<std::string> mirrors);

/// SHA-256 of a file as lower-case hex.
std::string sha256_file(const std::string& path);
/// SHA-256 of bytes in memory as lower-case hex.
std::string sha256_bytes(const void* data, size_t size);

/// The DecoyMNIST construction (Ross et al. 2017): a square swatch of side
/// spurious_patch_size (4 at 28 px) in a random corner, of shade 255 - 25 * y, or with
/// `random_class` the shade of a random class (the test set's rule). Sets decoy_masks and
/// decoy_labels.
void add_decoy(Dataset& dataset, bool random_class, uint64_t seed);

/// One CIFAR-10 binary batch file (records of 1 label byte + 3 x 32 x 32 pixels).
Dataset cifar10_batch(const std::string& path);

/// An image folder: `dir/train/<class>/` and `dir/test/<class>/`, or only `dir/<class>/`
/// (then every fifth image, in an order shuffled by `seed`, goes to the test split).
/// PNG and JPEG, resized to image_size x image_size; gray when every image is gray.
/// A file whose header claims more than max_pixels pixels is refused before decoding.
DatasetSplits image_folder(const std::string& dir, int64_t image_size, uint64_t seed,
                           int64_t max_pixels = io::kMaxImagePixels);

}  // namespace batchcam::data
