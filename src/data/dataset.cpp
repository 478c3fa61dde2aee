#include "batchcam/data/dataset.h"

#include "batchcam/data/rng.h"

#include <torch/torch.h>

#include <future>
#include <numeric>
#include <stdexcept>

namespace batchcam::data {

torch::Tensor Dataset::images_at(const torch::Tensor& index) const {
  if (!files) return images.index_select(0, index);
  const auto i = index.to(torch::kInt64).contiguous();
  return files->load(std::vector<int64_t>(i.data_ptr<int64_t>(), i.data_ptr<int64_t>() + i.numel()));
}

Dataset Dataset::subset(const torch::Tensor& index) const {
  Dataset out = *this;
  const auto pick = [&](const torch::Tensor& t) { return t.defined() ? t.index_select(0, index) : t; };
  if (files) {
    const auto i = index.to(torch::kInt64).contiguous();
    out.files = files->subset(std::vector<int64_t>(i.data_ptr<int64_t>(), i.data_ptr<int64_t>() + i.numel()));
  }
  out.images = pick(images);
  out.labels = pick(labels);
  out.object_masks = pick(object_masks);
  out.decoy_masks = pick(decoy_masks);
  out.decoy_labels = pick(decoy_labels);
  return out;
}

Dataset Dataset::first(int64_t n) const {
  if (n <= 0 || n >= size()) return *this;
  return subset(torch::arange(n, torch::kInt64));
}

std::string Dataset::sample_name(int64_t i) const {
  if (files) return files->name(i);
  return "#" + std::to_string(i);
}

void for_each_chunk(const Dataset& dataset,
                    const std::function<void(const torch::Tensor& images, const torch::Tensor& labels)>& visit,
                    int64_t chunk_bytes) {
  const int64_t n = dataset.size();
  if (n == 0) return;
  const int64_t chunk = std::max<int64_t>(1, chunk_bytes / (dataset.channels() * dataset.height() * dataset.width()));
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const auto index = torch::arange(begin, std::min(begin + chunk, n), torch::kInt64);
    visit(dataset.images_at(index), dataset.labels.defined() ? dataset.labels.index_select(0, index) : torch::Tensor());
  }
}

void ChannelMoments::add(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.scalar_type() == torch::kUInt8,
              "Normalization::fit expects uint8 images [N, C, H, W], got ", images.sizes());
  if (images.size(0) == 0) return;
  // Sums of (x - shift) with shift a first estimate of the mean: E[x^2] - E[x]^2 does not cancel.
  const auto x = images.to(torch::kDouble).div_(255.0);
  if (!shift_.defined()) {
    shift_ = x.mean(torch::IntArrayRef{0, 2, 3});
    sum_ = torch::zeros_like(shift_);
    sum_sq_ = torch::zeros_like(shift_);
  }
  const auto centred = x.sub_(shift_.view({1, -1, 1, 1}));
  sum_ += centred.sum(torch::IntArrayRef{0, 2, 3});
  sum_sq_ += centred.square_().sum(torch::IntArrayRef{0, 2, 3});
  count_ += static_cast<double>(images.numel() / images.size(1));
}

Normalization ChannelMoments::normalization() const {
  TORCH_CHECK(count_ > 0, "Normalization::fit: no images");
  const auto mean_centred = sum_ / count_;
  const auto mean = shift_ + mean_centred;
  const auto stdev = (sum_sq_ / count_ - mean_centred.square()).clamp_min(0).sqrt().clamp_min(1e-6);
  Normalization n;
  for (int64_t c = 0; c < mean.size(0); ++c) {
    n.mean.push_back(mean[c].item<double>());
    n.std.push_back(stdev[c].item<double>());
  }
  return n;
}

Normalization Normalization::fit(const torch::Tensor& images) {
  Dataset d;
  d.images = images;
  return fit(d);
}

Normalization Normalization::fit(const Dataset& dataset) {
  ChannelMoments moments;
  for_each_chunk(dataset, [&](const torch::Tensor& images, const torch::Tensor&) { moments.add(images); });
  return moments.normalization();
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

namespace {
// Checks that x is [B, C, H, W] with the statistics' C; returns the per-channel values
// `v` as [1, C, 1, 1] in x's dtype and on its device.
torch::Tensor per_channel(const std::vector<double>& v, const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == static_cast<int64_t>(v.size()),
              "Normalization expects [B, ", v.size(), ", H, W], got ", x.sizes());
  return torch::tensor(v).to(x.options()).view({1, -1, 1, 1});
}
}  // namespace

torch::Tensor Normalization::to_unit(const torch::Tensor& x) const {
  return (x * per_channel(std, x) + per_channel(mean, x)).clamp(0.0, 1.0);
}

torch::Tensor Normalization::from_unit(const torch::Tensor& unit) const {
  return (unit - per_channel(mean, unit)) / per_channel(std, unit);
}

torch::Tensor Normalization::to_unit_gray(const torch::Tensor& x) const { return to_unit(x).mean(1); }

BatchIterator::BatchIterator(const Dataset& dataset, Normalization norm, int64_t batch_size, bool shuffle,
                             uint64_t seed, bool drop_last)
    : dataset_(&dataset), norm_(std::move(norm)), batch_size_(batch_size), shuffle_(shuffle), seed_(seed),
      drop_last_(drop_last), order_(static_cast<size_t>(dataset.size())) {
  if (batch_size <= 0) throw std::invalid_argument("batch size must be > 0, got " + std::to_string(batch_size));
  std::iota(order_.begin(), order_.end(), 0);
  set_epoch(0);
}

BatchIterator::~BatchIterator() { drop_prefetch(); }

// Waits for a batch decoding in the background (it reads order_) and forgets it.
void BatchIterator::drop_prefetch() {
  if (next_.valid()) next_.wait();
  next_ = {};
  next_index_ = -1;
}

void BatchIterator::set_epoch(int64_t epoch) {
  drop_prefetch();
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

void BatchIterator::set_masks(bool on) {
  if (on && !dataset_->decoy_masks.defined()) {
    throw std::invalid_argument("BatchIterator::set_masks: the dataset has no annotation masks (decoy_masks)");
  }
  if (on && dataset_->streamed()) {
    throw std::invalid_argument("BatchIterator::set_masks: masks of streamed images are not supported");
  }
  drop_prefetch();
  masks_ = on;
}

void BatchIterator::set_shard(int64_t rank, int64_t world) {
  if (world < 1 || rank < 0 || rank >= world) {
    throw std::invalid_argument("BatchIterator::set_shard: rank " + std::to_string(rank) + " of " +
                                std::to_string(world) + "; expected 0 <= rank < world");
  }
  drop_prefetch();
  rank_ = rank;
  world_ = world;
}

namespace {
// The whole batch i: [begin, end) of the epoch's order, and this rank's part of it.
struct BatchRange {
  int64_t begin, end, first, last;  // the batch's positions; this rank's [first, last)
};

BatchRange batch_range(int64_t i, int64_t batch_size, int64_t dataset_size, int64_t rank, int64_t world) {
  const int64_t begin = i * batch_size, end = std::min<int64_t>(begin + batch_size, dataset_size);
  const int64_t n = end - begin;
  return {begin, end, begin + n * rank / world, begin + n * (rank + 1) / world};
}
}  // namespace

std::vector<int64_t> BatchIterator::batch_indices(int64_t i) const {
  const auto r = batch_range(i, batch_size_, dataset_->size(), rank_, world_);
  return {order_.begin() + r.first, order_.begin() + r.last};
}

torch::Tensor BatchIterator::batch_images(int64_t i) const {
  const auto r = batch_range(i, batch_size_, dataset_->size(), rank_, world_);
  const auto index = batch_indices(i);
  const auto n = static_cast<int64_t>(index.size());
  // Every draw depends on (seed, epoch, batch i) and the sample's position in the batch only.
  const uint64_t batch_seed = mix_seed(mix_seed(seed_, static_cast<uint64_t>(epoch_)), 0x5eed0000ULL + static_cast<uint64_t>(i));
  TORCH_CHECK(!augmentation_.crop_jitter || dataset_->streamed(),
              "BatchIterator: the random resized crop is applied while decoding: streamed (folder) datasets only");
  const auto positions = torch::tensor(index, torch::kInt64);
  torch::Tensor images;
  if (dataset_->streamed()) {
    images = dataset_->files->load(index, augmentation_.crop_jitter, mix_seed(batch_seed, 1), r.first - r.begin);
  } else {
    images = dataset_->images.index_select(0, positions);
  }
  if (masks_) {
    // The masks travel as one more channel, so that the shift and the flip move them alike.
    const auto masks = dataset_->decoy_masks.index_select(0, positions);
    images = torch::cat({images, masks.to(torch::kUInt8).unsqueeze(1)}, 1);
  }
  if (augmentation_.max_shift > 0 || augmentation_.flip) {
    // Drawn for the whole batch, in order; this rank keeps its slice's.
    const int64_t s = augmentation_.max_shift, whole = r.end - r.begin;
    Rng rng(batch_seed);
    std::vector<int64_t> dy(whole), dx(whole);
    std::vector<uint8_t> flip(whole);
    for (int64_t k = 0; k < whole; ++k) {
      dy[k] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * s + 1))) - s;
      dx[k] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * s + 1))) - s;
      flip[k] = augmentation_.flip && rng.uniform() < 0.5;
    }
    const int64_t from = r.first - r.begin;
    images = shift_and_flip(images, torch::tensor(dy).narrow(0, from, n), torch::tensor(dx).narrow(0, from, n),
                            torch::from_blob(flip.data() + from, {n}, torch::kUInt8).to(torch::kBool));
  }
  return images;
}

Batch BatchIterator::get(int64_t i) {
  TORCH_CHECK(i >= 0 && i < size(), "batch index ", i, " out of range [0, ", size(), ")");
  torch::Tensor images;
  if (next_.valid() && next_index_ == i) {
    images = next_.get();
    next_index_ = -1;
  } else {
    drop_prefetch();
    images = batch_images(i);
  }
  if (dataset_->streamed() && dataset_->files->workers() > 0 && i + 1 < size()) {
    next_index_ = i + 1;
    next_ = std::async(std::launch::async, [this, i] { return batch_images(i + 1); });
  }
  Batch b;
  if (masks_) {
    const int64_t c = images.size(1) - 1;
    b.masks = images.select(1, c).to(torch::kBool).to(device_);
    images = images.narrow(1, 0, c).contiguous();  // contiguous: pinned and copied below in one piece
  }
  b.index = torch::tensor(batch_indices(i), torch::kInt64);
  b.y = dataset_->labels.index_select(0, b.index);
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
