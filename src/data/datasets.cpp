#include "batchcam/data/datasets.h"

#include "batchcam/data/shapes.h"

#include <torch/torch.h>

#include <stdexcept>

namespace batchcam::data {

namespace {
// The images (bilinear; antialiased when shrinking) and masks (nearest) at size x size.
Dataset resized(const Dataset& d, int64_t size) {
  if (d.size() == 0 || (d.height() == size && d.width() == size)) return d;
  namespace F = torch::nn::functional;
  const bool shrink = size < d.height() || size < d.width();
  Dataset out = d;
  // In chunks, so that the float copy stays small whatever the dataset's size.
  std::vector<torch::Tensor> chunks;
  for (const auto& chunk : d.images.split(1024)) {
    chunks.push_back(F::interpolate(chunk.to(torch::kFloat32), F::InterpolateFuncOptions()
                                                                    .size(std::vector<int64_t>{size, size})
                                                                    .mode(torch::kBilinear)
                                                                    .align_corners(false)
                                                                    .antialias(shrink))
                         .round()
                         .clamp(0, 255)
                         .to(torch::kUInt8));
  }
  out.images = torch::cat(chunks).contiguous();
  const auto mask = [&](const torch::Tensor& m) {
    if (!m.defined()) return m;
    return F::interpolate(m.unsqueeze(1).to(torch::kFloat32),
                          F::InterpolateFuncOptions().size(std::vector<int64_t>{size, size}).mode(torch::kNearest))
        .squeeze(1)
        .gt(0.5)
        .contiguous();
  };
  out.object_masks = mask(d.object_masks);
  out.decoy_masks = mask(d.decoy_masks);
  return out;
}

// A fixed-size dataset at the requested side (0 = as stored).
DatasetSplits at_size(DatasetSplits s, int64_t size) {
  if (size <= 0) return s;
  s.train = resized(s.train, size);
  s.test = resized(s.test, size);
  return s;
}

}  // namespace

std::vector<std::string> dataset_names() {
  return {"shapes", "mnist", "fashion-mnist", "decoy-mnist", "decoy-fashion", "cifar10", "folder"};
}

std::string default_data_dir(const std::string& name) {
  if (name == "mnist" || name == "decoy-mnist") return "data/mnist";
  if (name == "fashion-mnist" || name == "decoy-fashion") return "data/fashion-mnist";
  if (name == "cifar10") return "data/cifar10";
  return "";
}

DatasetSplits load_dataset(const DatasetOptions& o) {
  const std::string dir = o.dir.empty() ? default_data_dir(o.name) : o.dir;
  if (o.name == "shapes") {
    ShapesOptions s;
    s.train_size = o.train_size > 0 ? o.train_size : s.train_size;
    s.test_size = o.test_size > 0 ? o.test_size : s.test_size;
    s.image_size = o.image_size > 0 ? o.image_size : s.image_size;
    s.seed = o.seed;
    s.spurious = o.spurious;
    return make_shapes(s);
  }
  if (o.name == "mnist" || o.name == "fashion-mnist" || o.name == "decoy-mnist" || o.name == "decoy-fashion") {
    return at_size(mnist_dataset(o.name, dir, o.train_size, o.test_size, o.seed), o.image_size);
  }
  if (o.name == "cifar10") return at_size(cifar10_dataset(dir, o.train_size, o.test_size), o.image_size);
  if (o.name == "folder") {
    if (dir.empty()) throw std::invalid_argument("dataset 'folder' needs a data directory (--data-dir)");
    FolderOptions f;
    f.image_size = o.image_size > 0 ? o.image_size : kDefaultImageSize;
    f.train_size = o.train_size;
    f.test_size = o.test_size;
    f.val_split = o.val_split;
    f.seed = o.seed;
    f.max_pixels = o.max_image_pixels;
    f.workers = o.workers;
    return image_folder(dir, f);
  }
  std::string names;
  for (const auto& n : dataset_names()) names += (names.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown dataset '" + o.name + "'; expected one of " + names);
}

}  // namespace batchcam::data
