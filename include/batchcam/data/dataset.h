#pragma once
// In-memory image classification datasets and the batch iterator over them.

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::data {

/// A whole dataset held in memory. Images stay uint8 until a batch is made.
struct Dataset {
  torch::Tensor images;        ///< [N, C, H, W] uint8
  torch::Tensor labels;        ///< [N] int64 in [0, num_classes)
  torch::Tensor object_masks;  ///< [N, H, W] bool, the figure; undefined when unknown
  torch::Tensor decoy_masks;   ///< [N, H, W] bool, the spurious cue; undefined when none
  torch::Tensor decoy_labels;  ///< [N] int64, the class the cue's shade encodes; undefined when none
  std::vector<std::string> class_names;

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
  int64_t channels() const { return images.size(1); }
  int64_t height() const { return images.size(2); }
  int64_t width() const { return images.size(3); }
};

struct DatasetSplits {
  std::string name;
  Dataset train;
  Dataset test;
};

/// Per-channel affine normalisation: x = (pixel / 255 - mean) / std.
struct Normalization {
  std::vector<double> mean;
  std::vector<double> std;

  /// Mean and standard deviation per channel of `images` [N, C, H, W] uint8.
  static Normalization fit(const torch::Tensor& images);
  /// uint8 [B, C, H, W] -> normalised float [B, C, H, W], on the images' device.
  torch::Tensor apply(const torch::Tensor& images) const;
  /// The reference image of the method: x [B, C, H, W] mapped back to [0, 1] and
  /// averaged over channels -> [B, H, W].
  torch::Tensor to_unit_gray(const torch::Tensor& x) const;
};

struct Batch {
  torch::Tensor x;      ///< [B, C, H, W] float, normalised (on the iterator's device)
  torch::Tensor y;      ///< [B] int64 (on the iterator's device)
  torch::Tensor index;  ///< [B] int64, positions in the dataset (on the CPU)
};

/// Random training augmentation, applied to whole batches at once.
struct Augmentation {
  int64_t max_shift = 0;  ///< each image moves by up to this many pixels in x and y (zero fill)
  bool flip = false;      ///< each image is mirrored left-right with probability 1/2
};

/// Iterates a dataset in batches; with shuffling, each epoch has its own order derived
/// from (seed, epoch), so an epoch's batches can be recomputed after a restart.
class BatchIterator {
 public:
  /// Requires batch_size > 0. With drop_last, a final incomplete batch is skipped.
  BatchIterator(const Dataset& dataset, Normalization norm, int64_t batch_size, bool shuffle,
                uint64_t seed, bool drop_last);
  /// Fixes the order for `epoch` (a no-op when not shuffling) and the augmentation's draws.
  void set_epoch(int64_t epoch);
  /// Augments every batch from now on; the draws depend only on (seed, epoch, batch index).
  void set_augmentation(Augmentation augmentation) { augmentation_ = augmentation; }
  /// Batches are assembled as uint8 on the CPU and sent to `device` (from pinned memory,
  /// without blocking, for CUDA), where they are normalised. Default: the CPU.
  void set_device(torch::Device device) { device_ = device; }
  /// Number of batches per epoch.
  int64_t size() const;
  /// Batch i of the current epoch. Requires 0 <= i < size().
  Batch get(int64_t i) const;

 private:
  const Dataset* dataset_;
  Normalization norm_;
  int64_t batch_size_;
  bool shuffle_;
  uint64_t seed_;
  bool drop_last_;
  int64_t epoch_ = 0;
  Augmentation augmentation_;
  torch::Device device_ = torch::kCPU;
  std::vector<int64_t> order_;
};

/// Shifts each image of `images` [B, C, H, W] by (dy[b], dx[b]) pixels (|d| <= the
/// padding it implies), filling with 0, and mirrors those with flip[b] left-right. Any dtype.
torch::Tensor shift_and_flip(const torch::Tensor& images, const torch::Tensor& dy, const torch::Tensor& dx,
                             const torch::Tensor& flip);

}  // namespace batchcam::data
