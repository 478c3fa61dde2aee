#pragma once
// MNIST and Fashion-MNIST from their IDX files (downloaded and verified when missing), and
// their decoy variants (DecoyMNIST, Ross et al. 2017).

#include "batchcam/data/dataset.h"

#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::data {

/// `name` is mnist, fashion-mnist, decoy-mnist or decoy-fashion; the four files are looked
/// for in `dir` (.gz or uncompressed) and downloaded when missing. train_size/test_size keep
/// the first N (0 = all; the files' order is already random). `seed` places the decoys.
DatasetSplits mnist_dataset(const std::string& name, const std::string& dir, int64_t train_size, int64_t test_size,
                            uint64_t seed);

/// One IDX image file [N, H, W] and its label file [N] as a dataset; counts, ranks and
/// labels (< class_names.size()) are checked.
Dataset idx_dataset(const std::string& images_path, const std::string& labels_path,
                    const std::vector<std::string>& class_names);

/// The DecoyMNIST construction (Ross et al. 2017): a square swatch of side
/// spurious_patch_size (4 at 28 px) in a random corner, of shade 255 - 25 * y, or with
/// `random_class` the shade of a random class (the test set's rule). Sets decoy_masks and
/// decoy_labels.
void add_decoy(Dataset& dataset, bool random_class, uint64_t seed);

}  // namespace batchcam::data
