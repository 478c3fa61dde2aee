#include "batchcam/data/shapes.h"

#include "batchcam/data/rng.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace batchcam::data {

namespace {

constexpr double kPi = 3.14159265358979323846;

struct Vec2 {
  double x, y;
};

// Signed distance to an axis-aligned box of half-size (bx, by) centred at (cx, cy);
// negative inside. Units: figure radii.
double box(Vec2 p, double cx, double cy, double bx, double by) {
  const double qx = std::abs(p.x - cx) - bx;
  const double qy = std::abs(p.y - cy) - by;
  const double outside = std::hypot(std::max(qx, 0.0), std::max(qy, 0.0));
  return outside + std::min(std::max(qx, qy), 0.0);
}

Vec2 rotate(Vec2 p, double angle) {
  const double c = std::cos(angle), s = std::sin(angle);
  return {c * p.x - s * p.y, s * p.x + c * p.y};
}

// Signed distance of figure `label` at point p, in units of the figure radius
// (the figure fits in the unit disc). y points down, as in images.
double figure_distance(int64_t label, Vec2 p) {
  switch (label) {
    case 0:  // circle
      return std::hypot(p.x, p.y) - 0.9;
    case 1:  // ring
      return std::abs(std::hypot(p.x, p.y) - 0.7) - 0.2;
    case 2:  // square
      return box(p, 0, 0, 0.72, 0.72);
    case 3:  // frame: a hollow square
      return std::abs(box(p, 0, 0, 0.6, 0.6)) - 0.14;
    case 4: {  // triangle, apex up: intersection of three half-planes, inradius 0.45
      double d = -1e9;
      for (double a : {-kPi / 2, kPi / 6, 5 * kPi / 6}) d = std::max(d, p.x * std::cos(a) + p.y * std::sin(a));
      return d - 0.45;
    }
    case 5:  // plus
      return std::min(box(p, 0, 0, 0.9, 0.2), box(p, 0, 0, 0.2, 0.9));
    case 6: {  // x: the plus turned by 45 degrees
      const Vec2 q = rotate(p, kPi / 4);
      return std::min(box(q, 0, 0, 0.9, 0.2), box(q, 0, 0, 0.2, 0.9));
    }
    case 7:  // diamond
      return (std::abs(p.x) + std::abs(p.y)) / std::sqrt(2.0) - 0.6;
    case 8:  // bars: two horizontal bars
      return std::min(box(p, 0, -0.45, 0.85, 0.18), box(p, 0, 0.45, 0.85, 0.18));
    case 9:  // l-shape
      return std::min(box(p, -0.5, 0, 0.2, 0.85), box(p, 0.05, 0.65, 0.75, 0.2));
    default:
      throw std::logic_error("shapes: no figure for label " + std::to_string(label));
  }
}

}  // namespace

const std::vector<std::string>& shapes_class_names() {
  static const std::vector<std::string> names = {"circle", "ring",    "square",  "frame", "triangle",
                                                  "plus",   "x",       "diamond", "bars",  "l-shape"};
  return names;
}

Dataset generate_shapes(int64_t count, int64_t image_size, uint64_t seed, SpuriousCue cue, double noise) {
  if (count < 0) throw std::invalid_argument("shapes: count must be >= 0, got " + std::to_string(count));
  if (image_size < 16) throw std::invalid_argument("shapes: image size must be >= 16, got " + std::to_string(image_size));
  if (!(noise >= 0.0 && noise <= 1.0)) throw std::invalid_argument("shapes: noise must be in [0, 1]");

  const int64_t n_classes = static_cast<int64_t>(shapes_class_names().size());
  const int64_t s = image_size;
  auto images = torch::empty({count, 1, s, s}, torch::kUInt8);
  auto labels = torch::empty({count}, torch::kInt64);
  auto objects = torch::zeros({count, s, s}, torch::kBool);
  auto decoys = torch::zeros({count, s, s}, torch::kBool);
  auto decoy_labels = torch::zeros({count}, torch::kInt64);
  auto img = images.accessor<uint8_t, 4>();
  auto lab = labels.accessor<int64_t, 1>();
  auto obj = objects.accessor<bool, 3>();
  auto dec = decoys.accessor<bool, 3>();
  auto dec_label = decoy_labels.accessor<int64_t, 1>();

  Rng rng(seed);
  const double max_angle = 15.0 * kPi / 180.0;  // small enough to keep plus/x and square/diamond apart
  std::vector<double> value(static_cast<size_t>(s * s));
  for (int64_t n = 0; n < count; ++n) {
    const int64_t label = n % n_classes;  // balanced classes; iterators shuffle
    const double radius = rng.uniform(0.22, 0.36) * static_cast<double>(s);
    const double cx = rng.uniform(radius + 0.5, static_cast<double>(s) - radius - 0.5);
    const double cy = rng.uniform(radius + 0.5, static_cast<double>(s) - radius - 0.5);
    const double angle = rng.uniform(-max_angle, max_angle);
    const double intensity = rng.uniform(0.65, 1.0);
    const double background = rng.uniform(0.0, 0.15);
    lab[n] = label;
    for (int64_t i = 0; i < s; ++i) {
      for (int64_t j = 0; j < s; ++j) {
        // Pixel centres at +0.5; coverage from the signed distance in pixels gives anti-aliasing.
        const Vec2 p = rotate({(j + 0.5 - cx) / radius, (i + 0.5 - cy) / radius}, -angle);
        const double coverage = std::clamp(0.5 - figure_distance(label, p) * radius, 0.0, 1.0);
        obj[n][i][j] = coverage >= 0.5;
        const double v = background + coverage * (intensity - background) + noise * rng.normal();
        img[n][0][i][j] = static_cast<uint8_t>(std::lround(255.0 * std::clamp(v, 0.0, 1.0)));
      }
    }
    if (cue != SpuriousCue::none) {
      const int64_t code = cue == SpuriousCue::class_coded ? label : static_cast<int64_t>(rng.below(n_classes));
      dec_label[n] = code;
      const int64_t k = spurious_patch_size(s);
      const uint64_t corner = rng.below(4);
      const int64_t top = (corner & 1U) ? s - k : 0;
      const int64_t left = (corner & 2U) ? s - k : 0;
      for (int64_t i = top; i < top + k; ++i) {
        for (int64_t j = left; j < left + k; ++j) {
          img[n][0][i][j] = static_cast<uint8_t>(spurious_shade(code));
          dec[n][i][j] = true;
          obj[n][i][j] = false;
        }
      }
    }
  }
  Dataset d;
  d.images = images;
  d.labels = labels;
  d.object_masks = objects;
  if (cue != SpuriousCue::none) {
    d.decoy_masks = decoys;
    d.decoy_labels = decoy_labels;
  }
  d.class_names = shapes_class_names();
  return d;
}

DatasetSplits make_shapes(const ShapesOptions& o) {
  if (o.train_size < 1 || o.test_size < 1) throw std::invalid_argument("shapes: train and test sizes must be >= 1");
  DatasetSplits splits;
  splits.name = "shapes";
  splits.train = generate_shapes(o.train_size, o.image_size, mix_seed(o.seed, 0),
                                 o.spurious ? SpuriousCue::class_coded : SpuriousCue::none, o.noise);
  splits.test = generate_shapes(o.test_size, o.image_size, mix_seed(o.seed, 1),
                                o.spurious ? SpuriousCue::random_class : SpuriousCue::none, o.noise);
  return splits;
}

}  // namespace batchcam::data
