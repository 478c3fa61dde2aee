#pragma once
// Image classification datasets (in memory, or streamed from files) and the batch
// iterator over them.

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

namespace batchcam::data {

/// Images that are not held in memory but made when a batch asks for them: image files
/// decoded on demand (data::ImageFiles, in the full library), or a source of the caller's.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  virtual int64_t size() const = 0;
  virtual int64_t side() const = 0;      ///< images are side x side
  virtual int64_t channels() const = 0;  ///< 1 or 3
  /// Threads load() uses; with any, a BatchIterator prepares the next batch in the background.
  virtual int64_t workers() const = 0;
  /// The images at `index`, uint8 [B, channels, side, side]. With `augment`, each image
  /// is randomly augmented while it is made (ImageFiles: a random resized crop and colour
  /// jitter); image k's draws depend on (seed, first + k) only (`first`: the position of
  /// image 0 in its whole batch, for a rank's slice of it).
  virtual torch::Tensor load(const std::vector<int64_t>& index, bool augment = false, uint64_t seed = 0,
                             int64_t first = 0) const = 0;
  /// The images at `index`, in that order.
  virtual std::shared_ptr<const ImageSource> subset(const std::vector<int64_t>& index) const = 0;
  /// What names image i in pictures (for files: its path).
  virtual std::string name(int64_t i) const = 0;
};

/// A dataset: its images held in memory, or streamed (`files`: made when a batch asks for
/// them). Images stay uint8 until a batch is made.
struct Dataset {
  torch::Tensor images;        ///< [N, C, H, W] uint8 in memory; undefined when `files` streams them
  std::shared_ptr<const ImageSource> files;  ///< the streamed images; null when in memory
  torch::Tensor labels;        ///< [N] int64 in [0, num_classes); -1 where unknown (unlabelled_images)
  torch::Tensor object_masks;  ///< [N, H, W] bool, the figure; undefined when unknown
  torch::Tensor decoy_masks;   ///< [N, H, W] bool, the spurious cue; undefined when none
  torch::Tensor decoy_labels;  ///< [N] int64, the class the cue's shade encodes; undefined when none
  std::vector<std::string> class_names;

  int64_t size() const { return labels.defined() ? labels.size(0) : images.defined() ? images.size(0) : 0; }
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
  int64_t channels() const { return files ? files->channels() : images.size(1); }
  int64_t height() const { return files ? files->side() : images.size(2); }
  int64_t width() const { return files ? files->side() : images.size(3); }
  bool streamed() const { return files != nullptr; }

  /// The images at `index` (int64 [B] on the CPU) as uint8 [B, C, H, W]; streamed ones
  /// are decoded with the evaluation transform (see load_image()).
  torch::Tensor images_at(const torch::Tensor& index) const;
  /// The samples at `index` (int64 [B] on the CPU), in that order.
  Dataset subset(const torch::Tensor& index) const;
  /// The first n samples (all of them when n <= 0 or n >= size()).
  Dataset first(int64_t n) const;
  /// What names sample i in pictures: its file name, or "#i" when in memory.
  std::string sample_name(int64_t i) const;
};

/// Calls visit(images, labels) on consecutive chunks of the dataset (uint8 [n, C, H, W] and
/// int64 [n] on the CPU; labels undefined when the dataset has none), each at most
/// `chunk_bytes` of pixels (at least one image); streamed images are decoded chunk by chunk,
/// on the dataset's workers, so a pass over a folder holds one chunk in memory.
void for_each_chunk(const Dataset& dataset,
                    const std::function<void(const torch::Tensor& images, const torch::Tensor& labels)>& visit,
                    int64_t chunk_bytes = int64_t{8} << 20);

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
  /// The same over a whole dataset, in chunks (one decoding pass when streamed).
  static Normalization fit(const Dataset& dataset);
  /// uint8 [B, C, H, W] -> normalised float [B, C, H, W], on the images' device.
  torch::Tensor apply(const torch::Tensor& images) const;
  /// The reference image of the method: x [B, C, H, W] mapped back to [0, 1] and
  /// averaged over channels -> [B, H, W].
  torch::Tensor to_unit_gray(const torch::Tensor& x) const;
  /// x [B, C, H, W] mapped back to [0, 1], channels kept (for pictures) -> [B, C, H, W].
  torch::Tensor to_unit(const torch::Tensor& x) const;
  /// The inverse of to_unit: pixel values in [0, 1] [B, C, H, W] (float) -> the model's input.
  torch::Tensor from_unit(const torch::Tensor& unit) const;
};

/// Per-channel sums of images added chunk by chunk: the statistics of Normalization::fit
/// for data that is not in memory at once.
class ChannelMoments {
 public:
  /// images: uint8 [n, C, H, W], C the same for every call.
  void add(const torch::Tensor& images);
  /// Mean and (population) standard deviation per channel of everything added. Requires an add().
  Normalization normalization() const;

 private:
  torch::Tensor shift_, sum_, sum_sq_;  ///< [C] double; sums of (x - shift), shift = the first chunk's mean
  double count_ = 0;                    ///< values per channel
};

struct Batch {
  torch::Tensor x;      ///< [B, C, H, W] float, normalised (on the iterator's device)
  torch::Tensor y;      ///< [B] int64 (on the iterator's device)
  torch::Tensor index;  ///< [B] int64, positions in the dataset (on the CPU)
  /// [B, H, W] bool, the annotated region that must not matter (Dataset::decoy_masks),
  /// augmented with the images (on the iterator's device); undefined unless
  /// BatchIterator::set_masks asked for them.
  torch::Tensor masks;
};

/// Random training augmentation; the shift and the flip are applied to whole batches.
struct Augmentation {
  int64_t max_shift = 0;  ///< each image moves by up to this many pixels in x and y (zero fill)
  bool flip = false;      ///< each image is mirrored left-right with probability 1/2
  bool crop_jitter = false;  ///< streamed images: their source's augmentation (ImageFiles: random resized crop and colour jitter)
};

/// Iterates a dataset in batches; with shuffling, each epoch has its own order derived
/// from (seed, epoch), so an epoch's batches can be recomputed after a restart. For a
/// streamed dataset with workers, get(i) starts decoding batch i + 1 in the background
/// (one batch ahead: memory for two batches, whatever the dataset's size).
class BatchIterator {
 public:
  /// Requires batch_size > 0. With drop_last, a final incomplete batch is skipped.
  BatchIterator(const Dataset& dataset, Normalization norm, int64_t batch_size, bool shuffle,
                uint64_t seed, bool drop_last);
  ~BatchIterator();
  BatchIterator(const BatchIterator&) = delete;  // the background decoding refers to this object
  BatchIterator& operator=(const BatchIterator&) = delete;
  /// Fixes the order for `epoch` (a no-op when not shuffling) and the augmentation's draws.
  void set_epoch(int64_t epoch);
  /// Augments every batch from now on; the draws depend only on (seed, epoch, batch index).
  void set_augmentation(Augmentation augmentation) {
    drop_prefetch();
    augmentation_ = augmentation;
  }
  /// Rank `rank` of `world` data-parallel processes takes its slice of every batch: the
  /// positions [n * rank / world, n * (rank + 1) / world) of the batch's n samples (slices
  /// differ by at most one sample). The random draws of the augmentation are those of the
  /// whole batch, so a sample is augmented alike whatever the number of ranks.
  void set_shard(int64_t rank, int64_t world);
  /// Every batch also carries its samples' annotation masks (Batch::masks), shifted and
  /// flipped with the images. Throws std::invalid_argument when the dataset has none, or
  /// streams its images (the crop of streamed images is not applied to masks).
  void set_masks(bool on);
  /// Batches are assembled as uint8 on the CPU and sent to `device` (from pinned memory,
  /// without blocking, for CUDA), where they are normalised. Default: the CPU.
  void set_device(torch::Device device) { device_ = device; }
  /// Number of batches per epoch.
  int64_t size() const;
  /// Batch i of the current epoch. Requires 0 <= i < size(). The images do not depend on
  /// the order in which batches are asked for, nor on the number of workers.
  Batch get(int64_t i);

 private:
  std::vector<int64_t> batch_indices(int64_t i) const;
  torch::Tensor batch_images(int64_t i) const;  // uint8, augmented; with masks_, they are one channel more
  void drop_prefetch();

  const Dataset* dataset_;
  Normalization norm_;
  int64_t batch_size_;
  bool shuffle_;
  uint64_t seed_;
  bool drop_last_;
  int64_t epoch_ = 0;
  Augmentation augmentation_;
  bool masks_ = false;
  torch::Device device_ = torch::kCPU;
  std::vector<int64_t> order_;
  std::future<torch::Tensor> next_;  ///< batch_images(next_index_), decoding in the background
  int64_t next_index_ = -1;
  int64_t rank_ = 0, world_ = 1;
};

/// Shifts each image of `images` [B, C, H, W] by (dy[b], dx[b]) pixels (|d| <= the
/// padding it implies), filling with 0, and mirrors those with flip[b] left-right. Any dtype.
torch::Tensor shift_and_flip(const torch::Tensor& images, const torch::Tensor& dy, const torch::Tensor& dx,
                             const torch::Tensor& flip);

}  // namespace batchcam::data
