#include "batchcam/data/image_files.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <functional>
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

// Pixels as planar floats [c][h][w] in [0, 255]. The decoding path works on these with
// plain loops, not LibTorch operations: LibTorch would parallelise each operation on its
// own thread pool from every worker thread at once, and measured slower than one thread.
struct Planar {
  int64_t c = 0, h = 0, w = 0;
  std::vector<float> v;
  float* plane(int64_t k) { return v.data() + k * h * w; }
  const float* plane(int64_t k) const { return v.data() + k * h * w; }
};

Planar crop(const io::Image& image, const Box& box) {
  Planar out{image.channels, box.height, box.width, {}};
  out.v.resize(static_cast<size_t>(out.c * out.h * out.w));
  for (int64_t k = 0; k < out.c; ++k) {
    float* dst = out.plane(k);
    for (int64_t y = 0; y < out.h; ++y) {
      const uint8_t* row = image.pixels.data() + ((box.top + y) * image.width + box.left) * image.channels + k;
      for (int64_t x = 0; x < out.w; ++x) dst[y * out.w + x] = row[x * image.channels];
    }
  }
  return out;
}

// The weights of a resampling from `in` to `out` samples along one axis: the triangle
// (bilinear) filter, widened by the scale when shrinking (antialiasing), as PIL's resize
// and LibTorch's interpolate(antialias=True) compute them. For output i: its first input
// index and the weights of the inputs from there.
struct AxisWeights {
  std::vector<int64_t> first;
  std::vector<std::vector<float>> weights;
};

AxisWeights axis_weights(int64_t in, int64_t out) {
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  const double support = std::max(scale, 1.0);
  AxisWeights a;
  for (int64_t i = 0; i < out; ++i) {
    const double center = scale * (static_cast<double>(i) + 0.5);
    const auto lo = std::max<int64_t>(0, static_cast<int64_t>(center - support + 0.5));
    const auto hi = std::min<int64_t>(in, static_cast<int64_t>(center + support + 0.5));
    std::vector<float> w;
    double total = 0;
    for (int64_t j = lo; j < hi; ++j) {
      const double t = std::max(0.0, 1.0 - std::abs((static_cast<double>(j) - center + 0.5) / support));
      w.push_back(static_cast<float>(t));
      total += t;
    }
    for (auto& x : w) x = static_cast<float>(x / total);
    a.first.push_back(lo);
    a.weights.push_back(std::move(w));
  }
  return a;
}

// Separable resampling to h x w: rows first, then columns.
Planar resize(const Planar& in, int64_t h, int64_t w) {
  if (in.h == h && in.w == w) return in;
  const auto across = axis_weights(in.w, w), down = axis_weights(in.h, h);
  Planar wide{in.c, in.h, w, std::vector<float>(static_cast<size_t>(in.c * in.h * w))};
  for (int64_t k = 0; k < in.c; ++k) {
    for (int64_t y = 0; y < in.h; ++y) {
      const float* src = in.plane(k) + y * in.w;
      float* dst = wide.plane(k) + y * w;
      for (int64_t x = 0; x < w; ++x) {
        const auto& wx = across.weights[static_cast<size_t>(x)];
        const float* s = src + across.first[static_cast<size_t>(x)];
        float sum = 0;
        for (size_t j = 0; j < wx.size(); ++j) sum += wx[j] * s[j];
        dst[x] = sum;
      }
    }
  }
  Planar out{in.c, h, w, std::vector<float>(static_cast<size_t>(in.c * h * w))};
  for (int64_t k = 0; k < in.c; ++k) {
    for (int64_t y = 0; y < h; ++y) {
      const auto& wy = down.weights[static_cast<size_t>(y)];
      float* dst = out.plane(k) + y * w;
      for (size_t j = 0; j < wy.size(); ++j) {
        const float* src = wide.plane(k) + (down.first[static_cast<size_t>(y)] + static_cast<int64_t>(j)) * w;
        for (int64_t x = 0; x < w; ++x) dst[x] += wy[j] * src[x];
      }
    }
  }
  return out;
}

// The luminance of each pixel (ITU-R 601, as torchvision's rgb_to_grayscale).
std::vector<float> luminance(const Planar& p) {
  const size_t n = static_cast<size_t>(p.h * p.w);
  if (p.c == 1) return {p.v.begin(), p.v.begin() + static_cast<std::ptrdiff_t>(n)};
  std::vector<float> gray(n);
  const float *r = p.plane(0), *g = p.plane(1), *b = p.plane(2);
  for (size_t i = 0; i < n; ++i) gray[i] = 0.299f * r[i] + 0.587f * g[i] + 0.114f * b[i];
  return gray;
}

float clamp255(float x) { return std::min(255.0f, std::max(0.0f, x)); }

// torchvision's ColorJitter without hue, in a fixed order (brightness, contrast,
// saturation), on pixels in [0, 255]. Every factor is drawn, also for gray images, so that
// the draws do not depend on the content.
void jitter(Planar& p, const CropJitter& c, Rng& rng) {
  const auto brightness = static_cast<float>(rng.uniform(1.0 - c.brightness, 1.0 + c.brightness));
  const auto contrast = static_cast<float>(rng.uniform(1.0 - c.contrast, 1.0 + c.contrast));
  const auto saturation = static_cast<float>(rng.uniform(1.0 - c.saturation, 1.0 + c.saturation));
  for (auto& x : p.v) x = clamp255(x * brightness);
  const auto gray = luminance(p);
  double total = 0;
  for (const float g : gray) total += g;
  const auto mean = static_cast<float>(total / static_cast<double>(gray.size()));
  for (auto& x : p.v) x = clamp255((x - mean) * contrast + mean);
  if (p.c == 3) {
    const auto g = luminance(p);
    for (int64_t k = 0; k < 3; ++k) {
      float* plane = p.plane(k);
      for (size_t i = 0; i < g.size(); ++i) plane[i] = clamp255((plane[i] - g[i]) * saturation + g[i]);
    }
  }
}

// Decodes, crops, resizes (and with `crop`, jitters) one file into dst [channels, side, side].
void decode_into(uint8_t* dst, const std::string& path, int64_t side, int64_t channels, int64_t max_pixels,
                 const CropJitter* crop, Rng* rng) {
  const auto image = io::read_image(path, max_pixels);
  const int64_t h = image.height, w = image.width;
  if (h < 1 || w < 1) throw std::runtime_error(path + ": image has no pixels");
  // Evaluation: the centre square scaled to side x side (scaling the shorter side to `side`
  // and cutting out the centre gives the same up to the edge pixels).
  const int64_t square = std::min(h, w);
  const Box box = crop ? random_resized_box(h, w, *crop, *rng) : Box{(h - square) / 2, (w - square) / 2, square, square};
  auto p = resize(batchcam::data::crop(image, box), side, side);
  if (crop) jitter(p, *crop, *rng);
  const size_t n = static_cast<size_t>(side * side);
  const auto put = [&](int64_t k, const float* values) {
    for (size_t i = 0; i < n; ++i) dst[static_cast<size_t>(k) * n + i] = static_cast<uint8_t>(std::lround(clamp255(values[i])));
  };
  if (channels == p.c) {
    for (int64_t k = 0; k < channels; ++k) put(k, p.plane(k));
  } else if (channels == 1) {
    put(0, luminance(p).data());  // colour file, gray model
  } else {
    for (int64_t k = 0; k < 3; ++k) put(k, p.plane(0));  // gray file, colour model
  }
}
// Calls f(k) for k in [0, n) on `workers` threads (thread t takes t, t + threads, ...; 0 or 1
// worker: the caller's thread) and rethrows the first exception; after one, the others stop.
void for_each_on_threads(int64_t n, int64_t workers, const std::function<void(int64_t)>& f) {
  std::mutex mutex;
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  const auto run = [&](int64_t first, int64_t stride) {
    for (int64_t k = first; k < n && !failed; k += stride) {
      try {
        f(k);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  const int64_t threads = std::min(workers, n);
  if (threads <= 1) {
    run(0, 1);
  } else {
    std::vector<std::thread> pool;
    for (int64_t t = 0; t < threads; ++t) pool.emplace_back(run, t, threads);
    for (auto& thread : pool) thread.join();
  }
  if (error) std::rethrow_exception(error);
}
}  // namespace

torch::Tensor load_image(const std::string& path, int64_t side, int64_t channels, int64_t max_pixels,
                         const CropJitter* crop, Rng* rng) {
  TORCH_CHECK(side > 0 && (channels == 1 || channels == 3), "load_image: side > 0 and 1 or 3 channels");
  TORCH_CHECK(!crop || rng, "load_image: a random crop needs a random source");
  auto out = torch::empty({channels, side, side}, torch::kUInt8);
  decode_into(out.data_ptr<uint8_t>(), path, side, channels, max_pixels, crop, rng);
  return out;
}

ImageFiles::ImageFiles(std::vector<std::string> paths, int64_t side, int64_t channels, int64_t max_pixels,
                       int64_t workers)
    : paths_(std::move(paths)), side_(side), channels_(channels), max_pixels_(max_pixels), workers_(workers) {
  if (side <= 0 || (channels != 1 && channels != 3) || workers < 0) {
    throw std::invalid_argument("ImageFiles: needs side > 0, 1 or 3 channels and workers >= 0");
  }
}

torch::Tensor ImageFiles::load(const std::vector<int64_t>& index, bool augment, uint64_t seed, int64_t first) const {
  const CropJitter jitter;
  const CropJitter* crop = augment ? &jitter : nullptr;
  const auto n = static_cast<int64_t>(index.size());
  auto out = torch::empty({n, channels_, side_, side_}, torch::kUInt8);
  // Each image is decoded into its own rows of `out`, from its own random source.
  for_each_on_threads(n, workers_, [&](int64_t k) {
    const auto i = index[static_cast<size_t>(k)];
    TORCH_CHECK(i >= 0 && i < size(), "ImageFiles::load: index ", i, " out of range [0, ", size(), ")");
    Rng rng(mix_seed(seed, static_cast<uint64_t>(first + k)));
    decode_into(out.data_ptr<uint8_t>() + k * channels_ * side_ * side_, paths_[static_cast<size_t>(i)], side_,
                channels_, max_pixels_, crop, &rng);
  });
  return out;
}

std::shared_ptr<const ImageSource> ImageFiles::subset(const std::vector<int64_t>& index) const {
  std::vector<std::string> paths;
  paths.reserve(index.size());
  for (const auto i : index) paths.push_back(paths_.at(static_cast<size_t>(i)));
  return std::make_shared<const ImageFiles>(std::move(paths), side_, channels_, max_pixels_, workers_);
}

int64_t ImageFiles::channels_of(const std::vector<std::string>& paths, int64_t max_pixels, int64_t workers) {
  std::atomic<bool> color{false};
  for_each_on_threads(static_cast<int64_t>(paths.size()), workers, [&](int64_t k) {
    if (io::read_image_info(paths[static_cast<size_t>(k)], max_pixels).channels == 3) color = true;
  });
  return color ? 3 : 1;
}

Dataset unlabelled_images(std::vector<std::string> paths, int64_t side, int64_t channels, int64_t max_pixels,
                          std::vector<std::string> class_names) {
  Dataset d;
  d.labels = torch::full({static_cast<int64_t>(paths.size())}, -1, torch::kInt64);
  d.files = std::make_shared<const ImageFiles>(std::move(paths), side, channels, max_pixels, 0);
  d.class_names = std::move(class_names);
  return d;
}

}  // namespace batchcam::data
