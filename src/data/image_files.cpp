#include "batchcam/data/image_files.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace batchcam::data {

namespace {
struct Box {
  int64_t top, left, height, width;
};

// torchvision's RandomResizedCrop.get_params: ten tries at a box of random area and
// aspect ratio inside the image, else the largest centred box within the ratio range.
Box random_resized_box(int64_t h, int64_t w, const CropJitter& c, Rng& rng) {
  const double area = static_cast<double>(h * w);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * rng.uniform(c.min_scale, c.max_scale);
    const double ratio = std::exp(rng.uniform(std::log(c.min_ratio), std::log(c.max_ratio)));
    const auto cw = static_cast<int64_t>(std::lround(std::sqrt(target * ratio)));
    const auto ch = static_cast<int64_t>(std::lround(std::sqrt(target / ratio)));
    if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
      const auto top = static_cast<int64_t>(rng.below(static_cast<uint64_t>(h - ch + 1)));
      const auto left = static_cast<int64_t>(rng.below(static_cast<uint64_t>(w - cw + 1)));
      return {top, left, ch, cw};
    }
  }
  const double ratio = static_cast<double>(w) / static_cast<double>(h);
  int64_t cw = w, ch = h;
  if (ratio < c.min_ratio) ch = std::max<int64_t>(1, std::lround(static_cast<double>(w) / c.min_ratio));
  if (ratio > c.max_ratio) cw = std::max<int64_t>(1, std::lround(static_cast<double>(h) * c.max_ratio));
  return {(h - ch) / 2, (w - cw) / 2, ch, cw};
}

// The luminance of [C, H, W] float pixels (ITU-R 601, as torchvision's rgb_to_grayscale) -> [1, H, W].
torch::Tensor luminance(const torch::Tensor& x) {
  if (x.size(0) == 1) return x;
  return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0);
}

// torchvision's ColorJitter without hue, on [C, H, W] float pixels in [0, 255]. Every
// factor is drawn, also for gray images, so that the draws do not depend on the content.
void jitter(torch::Tensor& x, const CropJitter& c, Rng& rng) {
  const double brightness = rng.uniform(1.0 - c.brightness, 1.0 + c.brightness);
  const double contrast = rng.uniform(1.0 - c.contrast, 1.0 + c.contrast);
  const double saturation = rng.uniform(1.0 - c.saturation, 1.0 + c.saturation);
  x.mul_(brightness).clamp_(0, 255);
  const auto mean = luminance(x).mean();
  x.sub_(mean).mul_(contrast).add_(mean).clamp_(0, 255);
  if (x.size(0) == 3) {
    const auto gray = luminance(x);
    x.sub_(gray).mul_(saturation).add_(gray).clamp_(0, 255);
  }
}
}  // namespace

torch::Tensor load_image(const std::string& path, int64_t side, int64_t channels, int64_t max_pixels,
                         const CropJitter* crop, Rng* rng) {
  TORCH_CHECK(side > 0 && (channels == 1 || channels == 3), "load_image: side > 0 and 1 or 3 channels");
  TORCH_CHECK(!crop || rng, "load_image: a random crop needs a random source");
  const auto image = io::read_image(path, max_pixels);
  const int64_t h = image.height, w = image.width;
  if (h < 1 || w < 1) throw std::runtime_error(path + ": image has no pixels");
  const auto pixels = torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), {h, w, image.channels}, torch::kUInt8)
                          .permute({2, 0, 1});
  // Evaluation: the centre square, whose scaling to side x side equals scaling the shorter
  // side to `side` and cutting out the centre.
  const int64_t square = std::min(h, w);
  const Box box = crop ? random_resized_box(h, w, *crop, *rng) : Box{(h - square) / 2, (w - square) / 2, square, square};
  auto x = pixels.slice(1, box.top, box.top + box.height).slice(2, box.left, box.left + box.width).to(torch::kFloat32);
  if (box.height != side || box.width != side) {
    namespace F = torch::nn::functional;
    x = F::interpolate(x.unsqueeze(0), F::InterpolateFuncOptions()
                                           .size(std::vector<int64_t>{side, side})
                                           .mode(torch::kBilinear)
                                           .align_corners(false)
                                           .antialias(box.height > side || box.width > side))
            .squeeze(0);
  }
  if (crop) jitter(x, *crop, *rng);
  if (x.size(0) != channels) x = channels == 1 ? luminance(x) : x.expand({3, side, side});
  return x.round().clamp(0, 255).to(torch::kUInt8).contiguous();
}

ImageFiles::ImageFiles(std::vector<std::string> paths, int64_t side, int64_t channels, int64_t max_pixels,
                       int64_t workers)
    : paths_(std::move(paths)), side_(side), channels_(channels), max_pixels_(max_pixels), workers_(workers) {
  if (side <= 0 || (channels != 1 && channels != 3) || workers < 0) {
    throw std::invalid_argument("ImageFiles: needs side > 0, 1 or 3 channels and workers >= 0");
  }
}

torch::Tensor ImageFiles::load(const std::vector<int64_t>& index, const CropJitter* crop, uint64_t seed) const {
  const auto n = static_cast<int64_t>(index.size());
  auto out = torch::empty({n, channels_, side_, side_}, torch::kUInt8);
  std::mutex mutex;
  std::exception_ptr error;
  // Worker t decodes images t, t + threads, ...: each writes its own rows of `out`.
  const auto decode = [&](int64_t first, int64_t stride) {
    for (int64_t k = first; k < n; k += stride) {
      try {
        const auto i = index[static_cast<size_t>(k)];
        TORCH_CHECK(i >= 0 && i < size(), "ImageFiles::load: index ", i, " out of range [0, ", size(), ")");
        Rng rng(mix_seed(seed, static_cast<uint64_t>(k)));
        out[k].copy_(load_image(paths_[static_cast<size_t>(i)], side_, channels_, max_pixels_, crop, &rng));
      } catch (...) {
        const std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        return;
      }
    }
  };
  const int64_t threads = std::min(workers_, n);
  if (threads <= 1) {
    decode(0, 1);
  } else {
    std::vector<std::thread> pool;
    for (int64_t t = 0; t < threads; ++t) pool.emplace_back(decode, t, threads);
    for (auto& thread : pool) thread.join();
  }
  if (error) std::rethrow_exception(error);
  return out;
}

ImageFiles ImageFiles::subset(const std::vector<int64_t>& index) const {
  std::vector<std::string> paths;
  paths.reserve(index.size());
  for (const auto i : index) paths.push_back(paths_.at(static_cast<size_t>(i)));
  return ImageFiles(std::move(paths), side_, channels_, max_pixels_, workers_);
}

}  // namespace batchcam::data
