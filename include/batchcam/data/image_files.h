#pragma once
// Images streamed from files: a list of PNG/JPEG paths decoded when a batch asks for
// them, so that a folder of any size needs memory for a batch, not for the folder.

#include "batchcam/data/dataset.h"
#include "batchcam/data/rng.h"
#include "batchcam/io/image.h"

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::data {

/// Training augmentation drawn per image while it is decoded, as torchvision's
/// RandomResizedCrop (defaults) followed by ColorJitter(0.4, 0.4, 0.4) (brightness,
/// contrast, saturation in this order; no hue). Horizontal flips are the batch's (Augmentation).
struct CropJitter {
  double min_scale = 0.08, max_scale = 1.0;        ///< share of the image's area the crop covers
  double min_ratio = 3.0 / 4.0, max_ratio = 4.0 / 3.0;  ///< the crop's width / height
  double brightness = 0.4, contrast = 0.4, saturation = 0.4;  ///< factors drawn from [1 - v, 1 + v]
};

/// Decodes one file and brings it to side x side with `channels` (1 or 3; gray files are
/// repeated to RGB, RGB files reduced to their luminance): the evaluation transform keeps the
/// centre square and scales it to `side` (as scaling the shorter side to `side`, preserving the
/// aspect ratio, and cutting out the centre would, up to the edge pixels; PIL's antialiased
/// bilinear filter); with `crop` (and its random source `rng`) a random resized crop
/// and colour jitter instead. Returns uint8 [channels, side, side]. Throws std::runtime_error
/// naming the file for an unreadable image or one over max_pixels.
torch::Tensor load_image(const std::string& path, int64_t side, int64_t channels,
                         int64_t max_pixels = io::kMaxImagePixels, const CropJitter* crop = nullptr,
                         Rng* rng = nullptr);

/// A dataset's images as files, decoded on demand by load_image().
class ImageFiles : public ImageSource {
 public:
  /// Requires side > 0, channels 1 or 3, workers >= 0.
  ImageFiles(std::vector<std::string> paths, int64_t side, int64_t channels, int64_t max_pixels, int64_t workers);

  int64_t size() const override { return static_cast<int64_t>(paths_.size()); }
  int64_t side() const override { return side_; }
  int64_t channels() const override { return channels_; }
  int64_t workers() const override { return workers_; }
  std::string name(int64_t i) const override { return paths_.at(static_cast<size_t>(i)); }
  const std::vector<std::string>& paths() const { return paths_; }

  /// The images at `index`, uint8 [B, channels, side, side], decoded on `workers` threads
  /// (0: on the caller's). With `augment`, a random resized crop and colour jitter
  /// (CropJitter's defaults): image k draws from Rng(mix_seed(seed, first + k)), so the result
  /// does not depend on the number of workers (`first`: the position of image 0 in its whole
  /// batch, for a rank's slice of it).
  torch::Tensor load(const std::vector<int64_t>& index, bool augment = false, uint64_t seed = 0,
                     int64_t first = 0) const override;
  /// The files at `index`, in that order.
  std::shared_ptr<const ImageSource> subset(const std::vector<int64_t>& index) const override;

  /// 3 when any of `paths` is in colour, else 1, from the files' headers (read on `workers`
  /// threads); throws as read_image_info() for an unreadable file or one over max_pixels.
  static int64_t channels_of(const std::vector<std::string>& paths, int64_t max_pixels, int64_t workers);

 private:
  std::vector<std::string> paths_;
  int64_t side_, channels_, max_pixels_, workers_;
};

/// Image files to explain or classify, decoded as a folder's test images are (load_image:
/// the centre square scaled to side x side, `channels` 1 or 3); labels -1 (unknown), the
/// given class names. Throws for a bad side or channel count; the files are read when used.
Dataset unlabelled_images(std::vector<std::string> paths, int64_t side, int64_t channels, int64_t max_pixels,
                          std::vector<std::string> class_names = {});

}  // namespace batchcam::data
