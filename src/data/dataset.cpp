#include "batchcam/data/dataset.h"

#include "batchcam/data/rng.h"

#include <torch/torch.h>

#include <numeric>
#include <stdexcept>

namespace batchcam::data {

Normalization Normalization::fit(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.scalar_type() == torch::kUInt8,
              "Normalization::fit expects uint8 images [N, C, H, W], got ", images.sizes());
  Normalization n;
  const auto x = images.to(torch::kDouble).div_(255.0).transpose(0, 1).flatten(1);  // [C, N*H*W]
  const auto mean = x.mean(1);
  const auto stdev = x.std(1, /*unbiased=*/false).clamp_min(1e-6);
  for (int64_t c = 0; c < x.size(0); ++c) {
    n.mean.push_back(mean[c].item<double>());
    n.std.push_back(stdev[c].item<double>());
  }
  return n;
}

torch::Tensor Normalization::apply(const torch::Tensor& images) const {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == static_cast<int64_t>(mean.size()),
              "Normalization::apply expects [B, ", mean.size(), ", H, W], got ", images.sizes());
  // Per channel with scalars, so that images on any device need no copy of the statistics.
  auto x = images.to(torch::kFloat32).div_(255.0);
  for (size_t c = 0; c < mean.size(); ++c) {
    x.select(1, static_cast<int64_t>(c)).sub_(static_cast<float>(mean[c])).div_(static_cast<float>(std[c]));
  }
  return x;
}

torch::Tensor Normalization::to_unit_gray(const torch::Tensor& x) const {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == static_cast<int64_t>(mean.size()),
              "to_unit_gray expects [B, ", mean.size(), ", H, W], got ", x.sizes());
  const auto opts = x.options();
  const auto m = torch::tensor(std::vector<double>(mean)).to(opts).view({1, -1, 1, 1});
  const auto s = torch::tensor(std::vector<double>(std)).to(opts).view({1, -1, 1, 1});
  return (x * s + m).clamp(0.0, 1.0).mean(1);
}

BatchIterator::BatchIterator(const Dataset& dataset, Normalization norm, int64_t batch_size, bool shuffle,
                             uint64_t seed, bool drop_last)
    : dataset_(&dataset), norm_(std::move(norm)), batch_size_(batch_size), shuffle_(shuffle), seed_(seed),
      drop_last_(drop_last), order_(static_cast<size_t>(dataset.size())) {
  if (batch_size <= 0) throw std::invalid_argument("batch size must be > 0, got " + std::to_string(batch_size));
  std::iota(order_.begin(), order_.end(), 0);
  set_epoch(0);
}

void BatchIterator::set_epoch(int64_t epoch) {
  epoch_ = epoch;
  if (!shuffle_) return;
  std::iota(order_.begin(), order_.end(), 0);
  Rng rng(mix_seed(seed_, static_cast<uint64_t>(epoch)));
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
}

int64_t BatchIterator::size() const {
  const int64_t n = dataset_->size();
  return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

Batch BatchIterator::get(int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "batch index ", i, " out of range [0, ", size(), ")");
  const int64_t begin = i * batch_size_;
  const int64_t end = std::min<int64_t>(begin + batch_size_, dataset_->size());
  auto index = torch::from_blob(const_cast<int64_t*>(order_.data() + begin), {end - begin}, torch::kInt64).clone();
  Batch b;
  b.index = index;
  auto images = dataset_->images.index_select(0, index);
  if (augmentation_.max_shift > 0 || augmentation_.flip) {
    const int64_t n = end - begin, s = augmentation_.max_shift;
    Rng rng(mix_seed(mix_seed(seed_, static_cast<uint64_t>(epoch_)), 0x5eed0000ULL + static_cast<uint64_t>(i)));
    std::vector<int64_t> dy(n), dx(n);
    std::vector<uint8_t> flip(n);
    for (int64_t k = 0; k < n; ++k) {
      dy[k] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * s + 1))) - s;
      dx[k] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * s + 1))) - s;
      flip[k] = augmentation_.flip && rng.uniform() < 0.5;
    }
    images = shift_and_flip(images, torch::tensor(dy), torch::tensor(dx),
                            torch::from_blob(flip.data(), {n}, torch::kUInt8).to(torch::kBool));
  }
  b.y = dataset_->labels.index_select(0, index);
  if (device_.is_cuda()) {
    // Page-locked memory lets the copies run asynchronously, overlapping the previous step.
    images = images.pin_memory().to(device_, /*non_blocking=*/true);
    b.y = b.y.pin_memory().to(device_, /*non_blocking=*/true);
  } else if (!device_.is_cpu()) {
    images = images.to(device_);
    b.y = b.y.to(device_);
  }
  b.x = norm_.apply(images);
  return b;
}

torch::Tensor shift_and_flip(const torch::Tensor& images, const torch::Tensor& dy, const torch::Tensor& dx,
                             const torch::Tensor& flip) {
  const int64_t b = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  const int64_t s = std::max(dy.abs().max().item<int64_t>(), dx.abs().max().item<int64_t>());
  auto out = images;
  if (s > 0) {
    // Pad by s, then pick for each image the rows and columns its shift selects.
    const auto padded = torch::constant_pad_nd(images, {s, s, s, s}, 0);
    const auto rows = (torch::arange(h).unsqueeze(0) + s - dy.unsqueeze(1)).view({b, 1, h, 1});
    const auto cols = (torch::arange(w).unsqueeze(0) + s - dx.unsqueeze(1)).view({b, 1, 1, w});
    out = padded.gather(2, rows.expand({b, c, h, w + 2 * s})).gather(3, cols.expand({b, c, h, w}));
  }
  if (flip.any().item<bool>()) out = torch::where(flip.view({b, 1, 1, 1}), out.flip({3}), out);
  return out.contiguous();
}

}  // namespace batchcam::data
