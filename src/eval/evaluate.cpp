#include "batchcam/eval/evaluate.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/core/runtime.h"
#include "batchcam/losses/distances.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <iomanip>
#include <sstream>

namespace batchcam::eval {

torch::Tensor mass_share(const torch::Tensor& maps, const torch::Tensor& masks) {
  TORCH_CHECK(maps.dim() == 3 && maps.sizes() == masks.sizes(), "mass_share: maps ", maps.sizes(), " and masks ",
              masks.sizes(), " must both be [B, H, W]");
  const auto m = maps.flatten(1);
  const auto inside = (m * masks.flatten(1).to(m.scalar_type())).sum(1);
  return inside / m.sum(1).clamp_min(1e-12);
}

namespace {

using Clock = std::chrono::steady_clock;

// The softmax probability of each sample's target: logits [B, K], targets [B] -> [B].
torch::Tensor target_probability(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::softmax(logits, 1).gather(1, targets.view({-1, 1})).squeeze(1);
}

// Spearman rank correlation per row of a [B, N] and b [B, N] (0 where a row is constant).
torch::Tensor rank_correlation(const torch::Tensor& a, const torch::Tensor& b) {
  const auto ranks = [](const torch::Tensor& t) { return t.argsort(int64_t{1}).argsort(int64_t{1}).to(torch::kDouble); };
  auto ra = ranks(a);
  auto rb = ranks(b);
  ra = ra - ra.mean(1, true);
  rb = rb - rb.mean(1, true);
  const auto denominator = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt();
  return torch::where(denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-12), torch::zeros_like(denominator));
}

// The test-set pass shared by evaluate() (per epoch) and evaluate_full(): one forward and
// one Grad-CAM per batch; `full` additionally receives the confusion matrix, input
// reconstruction and pointing game.
EvalMetrics evaluation_pass(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                            const torch::Tensor& prototypes, int64_t batch_size, EvalReport* full,
                            cam::CamMethod method) {
  auto bands = localisation_bands();
  std::vector<double> band_share(bands.size()), band_hits(bands.size());
  const bool was_training = model.is_training();
  model.eval();
  const auto device = core::module_device(model);
  data::BatchIterator batches(dataset, norm, batch_size, /*shuffle=*/false, 0, /*drop_last=*/false);
  batches.set_device(device);
  const auto protos = prototypes.defined() ? prototypes.to(device) : prototypes;
  EvalMetrics m;
  double loss = 0, correct = 0, l1 = 0, l2 = 0, ssim = 0, object = 0, decoy = 0;
  double in_l1 = 0, in_l2 = 0, in_ssim = 0, object_hits = 0, decoy_hits = 0;
  double decoy_predicted = 0, decoy_predicted_hits = 0;
  std::vector<torch::Tensor> all_predicted;
  const int64_t k = dataset.num_classes();
  auto confusion = torch::zeros({k * k}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  for (int64_t i = 0; i < batches.size(); ++i) {
    const auto b = batches.get(i);
    torch::Tensor logits;
    if (protos.defined()) {
      const auto out = cam::explain(model, b.x, b.y, method);
      logits = out.logits;
      torch::NoGradGuard no_grad;
      const auto& maps = out.maps;
      const auto target = protos.index_select(0, b.y);
      l1 += losses::distance(losses::Distance::l1, maps, target).sum().item<double>();
      l2 += losses::distance(losses::Distance::l2, maps, target).sum().item<double>();
      ssim += losses::ssim(maps, target).sum().item<double>();
      if (dataset.object_masks.defined()) {
        const auto masks = dataset.object_masks.index_select(0, b.index).to(device);
        const auto share = mass_share(maps, masks);
        const auto hits = pointing_game(maps, masks).to(share.scalar_type());
        object += share.sum().item<double>();
        object_hits += hits.sum().item<double>();
        if (full) {
          const auto distance = centre_distance(masks);
          for (size_t j = 0; j < bands.size(); ++j) {
            const auto in = (distance >= bands[j].from).logical_and(distance < bands[j].to);
            bands[j].count += in.sum().item<int64_t>();
            band_share[j] += share.masked_select(in).sum().item<double>();
            band_hits[j] += hits.masked_select(in).sum().item<double>();
          }
        }
      }
      if (dataset.decoy_masks.defined()) {
        const auto masks = dataset.decoy_masks.index_select(0, b.index).to(device);
        decoy += mass_share(maps, masks).sum().item<double>();
        decoy_hits += pointing_game(maps, masks).sum().item<double>();
      }
      if (full) {
        const auto gray = norm.to_unit_gray(b.x);
        in_l1 += losses::distance(losses::Distance::l1, maps, gray).sum().item<double>();
        in_l2 += losses::distance(losses::Distance::l2, maps, gray).sum().item<double>();
        in_ssim += losses::ssim(maps, gray).sum().item<double>();
      }
    } else {
      torch::NoGradGuard no_grad;
      logits = model.forward(b.x);
    }
    loss += torch::nn::functional::cross_entropy(
                logits, b.y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    const auto predicted = logits.argmax(1);
    correct += predicted.eq(b.y).sum().item<double>();
    if (full && dataset.decoy_masks.defined()) {
      // Where the model looked for the class it chose (the true class's CAM above hides a
      // decoy that decided against the label).
      const auto maps = cam::explain(model, b.x, predicted, method).maps;
      const auto masks = dataset.decoy_masks.index_select(0, b.index).to(device);
      decoy_predicted += mass_share(maps, masks).sum().item<double>();
      decoy_predicted_hits += pointing_game(maps, masks).sum().item<double>();
      all_predicted.push_back(predicted.cpu());
    }
    confusion.index_add_(0, b.y * k + predicted, torch::ones_like(predicted));
  }
  const double n = static_cast<double>(dataset.size());
  m.count = dataset.size();
  if (n > 0) {
    m.loss = loss / n;
    m.accuracy = correct / n;
    m.proto_l1 = l1 / n;
    m.proto_l2 = l2 / n;
    m.proto_ssim = ssim / n;
    if (prototypes.defined() && dataset.object_masks.defined()) m.object_share = object / n;
    if (prototypes.defined() && dataset.decoy_masks.defined()) m.decoy_share = decoy / n;
  }
  if (full && n > 0) {
    full->metrics = m;
    full->class_names = dataset.class_names;
    full->input_l1 = in_l1 / n;
    full->input_l2 = in_l2 / n;
    full->input_ssim = in_ssim / n;
    if (dataset.object_masks.defined()) full->object_pointing = object_hits / n;
    if (prototypes.defined() && dataset.object_masks.defined()) {
      for (size_t j = 0; j < bands.size(); ++j) {
        if (bands[j].count == 0) continue;
        bands[j].object_share = band_share[j] / static_cast<double>(bands[j].count);
        bands[j].object_pointing = band_hits[j] / static_cast<double>(bands[j].count);
      }
      full->localisation_by_distance = bands;
    }
    if (dataset.decoy_masks.defined()) {
      full->decoy_pointing = decoy_hits / n;
      full->decoy_share_predicted = decoy_predicted / n;
      full->decoy_pointing_predicted = decoy_predicted_hits / n;
    }
    if (dataset.decoy_labels.defined() && !all_predicted.empty()) {
      full->decoy_following = decoy_following(torch::cat(all_predicted), dataset.labels, dataset.decoy_labels);
    }
    const auto c = confusion.view({k, k}).cpu();
    full->confusion.assign(static_cast<size_t>(k), std::vector<int64_t>(static_cast<size_t>(k)));
    for (int64_t t = 0; t < k; ++t) {
      const auto row_total = c[t].sum().item<int64_t>();
      for (int64_t p = 0; p < k; ++p) full->confusion[t][p] = c[t][p].item<int64_t>();
      full->per_class_accuracy.push_back(row_total > 0 ? static_cast<double>(full->confusion[t][t]) / row_total : 0.0);
    }
  }
  model.train(was_training);
  return m;
}

}  // namespace

torch::Tensor centre_distance(const torch::Tensor& masks) {
  TORCH_CHECK(masks.dim() == 3, "centre_distance: masks must be [B, H, W], got ", masks.sizes());
  const int64_t h = masks.size(1), w = masks.size(2);
  const auto m = masks.to(torch::kFloat32);
  const auto opts = m.options();
  // Pixel centres: row r lies at r + 0.5, and the image centre at (h / 2, w / 2).
  const auto rows = torch::arange(h, opts).add_(0.5 - h / 2.0).view({1, h, 1});
  const auto cols = torch::arange(w, opts).add_(0.5 - w / 2.0).view({1, 1, w});
  const auto n = m.sum({1, 2});
  const auto dy = (m * rows).sum({1, 2}) / n;
  const auto dx = (m * cols).sum({1, 2}) / n;  // NaN where the mask is empty (0 / 0)
  return (dy.square() + dx.square()).sqrt() / (static_cast<double>(std::min(h, w)) / 2.0);
}

std::vector<LocalisationBand> localisation_bands() {
  const double inf = std::numeric_limits<double>::infinity();
  // On shapes (28 px) a quarter of the figures lie nearer than 0.2, a quarter beyond 0.4
  // (quartiles 0.20 and 0.38 of 1,000 test figures), none beyond 0.71.
  return {{0.0, 0.2}, {0.2, 0.4}, {0.4, inf}};
}

namespace {

data::Dataset first_images(const data::Dataset& d, int64_t n) {
  data::Dataset out = d.first(n);
  out.object_masks = torch::Tensor();
  out.decoy_masks = torch::Tensor();
  out.decoy_labels = torch::Tensor();
  return out;
}

torch::Tensor cams_for(models::CamModel& model, const torch::Tensor& x, const torch::Tensor& y, cam::CamMethod method) {
  return cam::explain(model, x, y, method).maps;
}
}  // namespace

EvalMetrics evaluate(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                     const torch::Tensor& prototypes, int64_t batch_size, cam::CamMethod method) {
  return evaluation_pass(model, dataset, norm, prototypes, batch_size, nullptr, method);
}

torch::Tensor pointing_game(const torch::Tensor& maps, const torch::Tensor& masks) {
  TORCH_CHECK(maps.dim() == 3 && maps.sizes() == masks.sizes(), "pointing_game: maps ", maps.sizes(), " and masks ",
              masks.sizes(), " must both be [B, H, W]");
  const auto peak = maps.flatten(1).argmax(1, true);
  return masks.flatten(1).gather(1, peak).squeeze(1);
}

double decoy_following(const torch::Tensor& predicted, const torch::Tensor& labels, const torch::Tensor& decoy_labels) {
  TORCH_CHECK(predicted.sizes() == labels.sizes() && labels.sizes() == decoy_labels.sizes(),
              "decoy_following: predicted ", predicted.sizes(), ", labels ", labels.sizes(), " and decoy labels ",
              decoy_labels.sizes(), " must match");
  const auto misleading = decoy_labels.ne(labels);
  const auto count = misleading.sum().item<int64_t>();
  if (count == 0) return kNotAvailable;
  return static_cast<double>(predicted.eq(decoy_labels).logical_and(misleading).sum().item<int64_t>()) /
         static_cast<double>(count);
}

std::pair<torch::Tensor, torch::Tensor> deletion_insertion_curves(
    const std::function<torch::Tensor(const torch::Tensor&)>& forward, const torch::Tensor& x,
    const torch::Tensor& targets, const torch::Tensor& maps, const torch::Tensor& baseline, int64_t steps) {
  TORCH_CHECK(steps >= 1, "deletion_insertion_curves: steps must be >= 1");
  torch::NoGradGuard no_grad;
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3), pixels = h * w;
  // rank[i, p] = position of pixel p in image i's order (0 = highest CAM value).
  const auto order = std::get<1>(maps.reshape({b, pixels}).sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  const auto rank = order.argsort(int64_t{1}).view({b, 1, h, w});
  std::vector<torch::Tensor> deletion, insertion;
  for (int64_t k = 0; k <= steps; ++k) {
    const int64_t changed = (pixels * k + steps / 2) / steps;  // rounded k/steps of the pixels
    const auto first = rank < changed;
    const auto probability = [&](const torch::Tensor& input) {
      return target_probability(forward(input), targets);
    };
    deletion.push_back(probability(torch::where(first, baseline, x)));
    insertion.push_back(probability(torch::where(first, x, baseline)));
  }
  return {torch::stack(deletion, 1), torch::stack(insertion, 1)};
}

namespace {
constexpr uint64_t kTieStream = uint64_t{1} << 62;  // road_curves' seeds for ranking equal map values

// Image i's draws [B, sizes...] (float64, on the CPU) from a generator of its own seeded with
// seed + i: normal or uniform on [0, 1). An image gets the same numbers in any batch.
torch::Tensor per_image_draws(int64_t b, std::vector<int64_t> sizes, uint64_t seed, bool normal) {
  std::vector<torch::Tensor> draws;
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  for (int64_t i = 0; i < b; ++i) {
    auto gen = at::detail::createCPUGenerator(seed + static_cast<uint64_t>(i));
    draws.push_back(normal ? torch::randn(sizes, gen, opts) : torch::rand(sizes, gen, opts));
  }
  sizes.insert(sizes.begin(), b);
  return b > 0 ? torch::stack(draws) : torch::empty(sizes, opts);
}
}  // namespace

torch::Tensor noisy_linear_imputation(const torch::Tensor& x, const torch::Tensor& removed, double noise,
                                      uint64_t seed) {
  TORCH_CHECK(x.dim() == 4 && removed.dim() == 3 && removed.size(0) == x.size(0) && removed.size(1) == x.size(2) &&
                  removed.size(2) == x.size(3),
              "noisy_linear_imputation: x ", x.sizes(), " must be [B, C, H, W] and removed ", removed.sizes(),
              " [B, H, W]");
  torch::NoGradGuard no_grad;
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const auto opts = x.options();
  // One system per image and channel: [B*C, 1, H, W], unknowns where u = 1.
  const auto u = removed.to(opts).unsqueeze(1).expand({b, c, h, w}).reshape({b * c, 1, h, w});
  TORCH_CHECK(!removed.flatten(1).all(1).any().item<bool>(),
              "noisy_linear_imputation: an image with every pixel removed has nothing to impute from");
  // Weighted sum of each pixel's neighbours inside the image (outside counts as 0), with the
  // weights [1 2 1; 2 0 2; 1 2 1] / 12: the separable [1 2 1] x [1 2 1] less four times the pixel.
  // Shifted sums, not conv2d: a one-channel 3 x 3 convolution is about 17 times slower on the CPU
  // (22 ms against 1.3 ms for 18 planes of 224 x 224 here), and the solver applies it every step.
  const auto neighbours = [](const torch::Tensor& v) {
    const auto padded = torch::constant_pad_nd(v, {1, 1, 1, 1});
    const auto rows = padded.slice(2, 0, -2) + padded.slice(2, 2) + 2 * padded.slice(2, 1, -1);
    const auto both = rows.slice(3, 0, -2) + rows.slice(3, 2) + 2 * rows.slice(3, 1, -1);
    return (both - 4 * v) / 12;
  };
  const auto known = x.reshape({b * c, 1, h, w}) * (1 - u);
  // Each removed pixel: d * v - (its removed neighbours' weighted sum) = its kept neighbours'
  // weighted sum, d = the weight of its neighbours inside the image (1 away from the border).
  const auto d = neighbours(torch::ones_like(u)).clamp_min(1e-12);  // 0 only in a 1 x 1 image
  const auto apply = [&](const torch::Tensor& v) { return u * (d * v - neighbours(v)); };
  const auto rhs = u * neighbours(known);
  // Conjugate gradients with the diagonal as preconditioner, all systems at once (the matrix
  // is symmetric, and positive definite wherever an image keeps a pixel).
  const auto dot = [](const torch::Tensor& p, const torch::Tensor& q) { return (p * q).sum({1, 2, 3}, true); };
  auto v = torch::zeros_like(rhs);
  auto r = rhs.clone();
  auto z = r / d;
  auto p = z.clone();
  auto rz = dot(r, z);
  const double tolerance = x.scalar_type() == torch::kDouble ? 1e-10 : 1e-5;
  const auto goal = tolerance * rhs.flatten(1).norm(2, 1).clamp_min(1e-12);
  const int64_t max_iterations = 10 * (h + w) + 100;
  for (int64_t i = 0; i < max_iterations; ++i) {
    const auto ap = apply(p);
    const auto pap = dot(p, ap);
    const auto alpha = torch::where(pap > 0, rz / pap.clamp_min(1e-30), torch::zeros_like(pap));
    v.add_(alpha * p);
    r.sub_(alpha * ap);
    if (i % 8 == 7 && (r.flatten(1).norm(2, 1) <= goal).all().item<bool>()) break;
    z = r / d;
    const auto rz_next = dot(r, z);
    const auto beta = torch::where(rz > 0, rz_next / rz.clamp_min(1e-30), torch::zeros_like(rz));
    p = z + beta * p;
    rz = rz_next;
  }
  const auto jitter = per_image_draws(b, {c, h, w}, seed, /*normal=*/true).to(opts).view({b * c, 1, h, w});
  return (known + u * (v + noise * jitter)).view({b, c, h, w});
}

RoadCurves road_curves(const std::function<torch::Tensor(const torch::Tensor&)>& forward, const torch::Tensor& x,
                       const torch::Tensor& targets, const torch::Tensor& maps, const std::vector<double>& fractions,
                       double noise, uint64_t seed) {
  TORCH_CHECK(x.dim() == 4 && maps.dim() == 3 && maps.size(0) == x.size(0) && maps.size(1) == x.size(2) &&
                  maps.size(2) == x.size(3) && targets.dim() == 1 && targets.size(0) == x.size(0),
              "road_curves: x ", x.sizes(), " must be [B, C, H, W], maps ", maps.sizes(), " [B, H, W] and targets ",
              targets.sizes(), " [B]");
  torch::NoGradGuard no_grad;
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3), pixels = h * w;
  // Rank by the map, equal values in a random order of the image's own (a map's zeros would
  // otherwise leave from one corner first).
  const auto keys = per_image_draws(b, {pixels}, seed + kTieStream, /*normal=*/false);
  const auto shuffle = keys.argsort(int64_t{1}).to(maps.device());
  const auto shuffled = maps.reshape({b, pixels}).gather(1, shuffle);
  const auto by_value = std::get<1>(shuffled.sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));
  const auto rank = shuffle.gather(1, by_value).argsort(int64_t{1}).view({b, h, w});
  std::vector<torch::Tensor> morf, lerf, morf_correct, lerf_correct;
  const auto ask = [&](const torch::Tensor& removed, uint64_t stream, std::vector<torch::Tensor>& probability,
                       std::vector<torch::Tensor>& correct) {
    const auto logits = forward(noisy_linear_imputation(x, removed, noise, seed + stream));
    probability.push_back(target_probability(logits, targets));
    correct.push_back(logits.argmax(1).eq(targets));
  };
  for (size_t k = 0; k < fractions.size(); ++k) {
    const double f = fractions[k];
    TORCH_CHECK(f > 0 && f < 1, "road_curves: fractions must lie in (0, 1), got ", f);
    const auto removed = static_cast<int64_t>(std::llround(f * static_cast<double>(pixels)));
    ask(rank < removed, (2 * k + 1) << 32, morf, morf_correct);
    ask(rank >= pixels - removed, (2 * k + 2) << 32, lerf, lerf_correct);
  }
  return {torch::stack(morf, 1), torch::stack(lerf, 1), torch::stack(morf_correct, 1), torch::stack(lerf_correct, 1)};
}

std::pair<torch::Tensor, torch::Tensor> confidence_change(
    const std::function<torch::Tensor(const torch::Tensor&)>& forward, const torch::Tensor& x,
    const torch::Tensor& explained, const torch::Tensor& targets) {
  TORCH_CHECK(x.sizes() == explained.sizes() && targets.dim() == 1 && targets.size(0) == x.size(0),
              "confidence_change: x ", x.sizes(), " and explained ", explained.sizes(),
              " must match, targets ", targets.sizes(), " must be [B]");
  torch::NoGradGuard no_grad;
  const auto probability = [&](const torch::Tensor& input) {
    return target_probability(forward(input), targets);
  };
  const auto p = probability(x);
  const auto o = probability(explained);
  return {(p - o).clamp_min(0) / p.clamp_min(1e-30), o > p};
}

torch::Tensor curve_auc(const torch::Tensor& curves) {
  const int64_t s = curves.size(1) - 1;
  TORCH_CHECK(s >= 1, "curve_auc needs at least two points per curve");
  return (curves.sum(1) - 0.5 * (curves.select(1, 0) + curves.select(1, s))) / static_cast<double>(s);
}

EvalReport evaluate_full(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                         const torch::Tensor& prototypes, const EvalOptions& options) {
  TORCH_CHECK(prototypes.defined(), "evaluate_full needs the class prototypes");
  EvalReport r;
  const auto phase = [&](const std::string& what) {
    if (options.on_phase) options.on_phase(what);
  };
  phase("evaluation of " + std::to_string(dataset.size()) + " test images (accuracy, CAM metrics)");
  r.method = options.method;
  evaluation_pass(model, dataset, norm, prototypes, options.batch_size, &r, options.method);
  const bool was_training = model.is_training();
  model.eval();
  const auto forward = [&](const torch::Tensor& input) { return model.forward(input); };
  const auto device = core::module_device(model);

  if (options.faithfulness_count > 0) {
    const auto subset = first_images(dataset, options.faithfulness_count);
    phase("deletion and insertion curves, ROAD and confidence change on " + std::to_string(subset.size()) +
          " images");
    data::BatchIterator batches(subset, norm, options.batch_size, false, 0, false);
    batches.set_device(device);
    double deletion = 0, insertion = 0, drops = 0, increases = 0;
    torch::Tensor morf, lerf, morf_correct, lerf_correct;  // [F] sums over images
    for (int64_t i = 0; i < batches.size(); ++i) {
      const auto b = batches.get(i);
      const auto maps = cams_for(model, b.x, b.y, options.method);
      const auto baseline = norm.apply(torch::zeros({1, subset.channels(), subset.height(), subset.width()}, torch::kUInt8).to(device)).expand_as(b.x);
      const auto [del, ins] =
          deletion_insertion_curves(forward, b.x, b.y, maps, baseline, options.faithfulness_steps);
      deletion += curve_auc(del).sum().item<double>();
      insertion += curve_auc(ins).sum().item<double>();
      const auto explained = norm.from_unit(norm.to_unit(b.x) * maps.unsqueeze(1));
      const auto [drop, increase] = confidence_change(forward, b.x, explained, b.y);
      drops += drop.sum().item<double>();
      increases += increase.sum().item<double>();
      if (!options.road_fractions.empty()) {
        // Seeded by the images' positions: the same numbers for any batch size.
        const auto road = road_curves(forward, b.x, b.y, maps, options.road_fractions, options.road_noise,
                                      static_cast<uint64_t>(b.index[0].item<int64_t>()));
        const auto add = [](torch::Tensor& total, const torch::Tensor& part) {
          const auto s = part.to(torch::kDouble).sum(0).cpu();
          total = total.defined() ? total + s : s;
        };
        add(morf, road.morf);
        add(lerf, road.lerf);
        add(morf_correct, road.morf_correct);
        add(lerf_correct, road.lerf_correct);
      }
    }
    const double n = static_cast<double>(subset.size());
    r.faithfulness_count = subset.size();
    r.faithfulness_steps = options.faithfulness_steps;
    r.deletion_auc = deletion / n;
    r.insertion_auc = insertion / n;
    r.average_drop = drops / n;
    r.increase_in_confidence = increases / n;
    if (morf.defined()) {
      const auto means = [&](const torch::Tensor& total) {
        const auto m = (total / n).contiguous();
        return std::vector<double>(m.data_ptr<double>(), m.data_ptr<double>() + m.numel());
      };
      r.road_fractions = options.road_fractions;
      r.road_noise = options.road_noise;
      r.road_morf = means(morf);
      r.road_lerf = means(lerf);
      r.road_morf_accuracy = means(morf_correct);
      r.road_lerf_accuracy = means(lerf_correct);
      r.road_morf_mean = (morf / n).mean().item<double>();
      r.road_lerf_mean = (lerf / n).mean().item<double>();
      r.road_combined = (r.road_lerf_mean - r.road_morf_mean) / 2;
    }
  }

  if (options.randomization_count > 0) {
    const auto subset = first_images(dataset, options.randomization_count);
    phase("parameter randomisation check on " + std::to_string(subset.size()) + " images");
    data::BatchIterator whole(subset, norm, subset.size(), false, 0, false);
    whole.set_device(device);
    const auto all = whole.get(0);
    const auto trained = cams_for(model, all.x, all.y, options.method);
    // Re-initialise from the output down (cascading), drawn on the CPU from a fixed seed so
    // the report is repeatable on every device; the weights and the caller's random state are
    // restored afterwards.
    std::vector<torch::Tensor> saved;
    for (const auto& p : model.parameters()) saved.push_back(p.detach().clone());
    core::with_cpu_seed(0, [&] {
      for (const auto& [layer, params] : model.parameters_top_down()) {
        {
          torch::NoGradGuard no_grad;
          for (auto p : params) {
            if (p.dim() < 2) continue;
            auto w = torch::empty(p.sizes());
            torch::nn::init::kaiming_uniform_(w, std::sqrt(5.0));  // LibTorch's default init
            p.copy_(w);
          }
        }
        const auto randomized = cams_for(model, all.x, all.y, options.method);
        RandomizationStep step;
        step.layer = layer;
        step.ssim = losses::ssim(randomized, trained).mean().item<double>();
        step.rank_correlation = rank_correlation(randomized.flatten(1), trained.flatten(1)).mean().item<double>();
        r.randomization.push_back(step);
      }
      return 0;
    });
    {
      torch::NoGradGuard no_grad;
      const auto params = model.parameters();
      for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
    }
  }

  if (options.timing) {
    const auto subset = first_images(dataset, 512);
    phase("inference timing on " + std::to_string(subset.size()) + " images");
    data::BatchIterator batches(subset, norm, std::min<int64_t>(options.batch_size, 128), false, 0, false);
    batches.set_device(device);
    // Assembled (for folders: decoded) before the clock starts: the model's time, not the data's.
    std::vector<data::Batch> all;
    for (int64_t i = 0; i < batches.size(); ++i) all.push_back(batches.get(i));
    const auto time_per_image = [&](const std::function<torch::Tensor(const data::Batch&)>& work) {
      work(all.front());  // warm-up
      const auto start = Clock::now();
      torch::Tensor last;
      for (const auto& b : all) last = work(b);
      (void)last.sum().item<double>();  // waits for an accelerator to finish
      return 1e3 * std::chrono::duration<double>(Clock::now() - start).count() / static_cast<double>(subset.size());
    };
    r.ms_per_image = time_per_image([&](const data::Batch& b) {
      torch::NoGradGuard no_grad;
      return model.forward(b.x);
    });
    r.ms_per_image_with_cam = time_per_image([&](const data::Batch& b) { return cams_for(model, b.x, b.y, options.method); });
  }
  model.train(was_training);
  return r;
}

std::string format_report(const EvalReport& r) {
  std::ostringstream out;
  const auto& m = r.metrics;
  const auto row = [&](const std::string& name, const std::string& value) {
    out << "  " << std::left << std::setw(42) << name << value << "\n";
  };
  const auto num = [](double v, int digits = 4) {
    if (!available(v)) return std::string("n/a");
    std::ostringstream s;
    s << std::fixed << std::setprecision(digits) << v;
    return s.str();
  };
  out << "Evaluation on " << m.count << " test images (CAM method: " << cam::to_string(r.method) << ")\n";
  row("accuracy", num(100 * m.accuracy, 2) + " %");
  row("cross-entropy", num(m.loss));
  row("CAM vs prototype  L1 / L2 / SSIM", num(m.proto_l1) + " / " + num(m.proto_l2) + " / " + num(m.proto_ssim));
  row("CAM vs input      L1 / L2 / SSIM", num(r.input_l1) + " / " + num(r.input_l2) + " / " + num(r.input_ssim));
  if (available(m.object_share)) row("object: CAM mass share / pointing", num(m.object_share) + " / " + num(r.object_pointing));
  for (const auto& band : r.localisation_by_distance) {
    const auto to = std::isfinite(band.to) ? num(band.to, 2) : std::string("");
    row("  object " + num(band.from, 2) + "-" + to + " from centre (" + std::to_string(band.count) + ")",
        num(band.object_share) + " / " + num(band.object_pointing));
  }
  if (available(m.decoy_share)) row("decoy:  CAM mass share / pointing", num(m.decoy_share) + " / " + num(r.decoy_pointing));
  if (available(r.decoy_share_predicted)) {
    row("decoy, predicted class: share / pointing", num(r.decoy_share_predicted) + " / " + num(r.decoy_pointing_predicted));
  }
  if (available(r.decoy_following)) row("decoy decides (pred. = decoy's class)", num(r.decoy_following));
  if (available(r.deletion_auc)) {
    row("deletion AUC (lower is better)", num(r.deletion_auc));
    row("insertion AUC (higher is better)", num(r.insertion_auc));
    row("  on", std::to_string(r.faithfulness_count) + " images, " + std::to_string(r.faithfulness_steps) +
                    " steps, baseline " + r.faithfulness_baseline);
  }
  if (available(r.road_combined)) {
    row("ROAD MoRF / LeRF (mean probability)", num(r.road_morf_mean) + " / " + num(r.road_lerf_mean));
    row("ROAD (LeRF - MoRF) / 2 (higher is better)", num(r.road_combined));
  }
  if (available(r.average_drop)) {
    row("average drop in confidence (lower)", num(100 * r.average_drop, 2) + " %");
    row("increase in confidence (higher)", num(100 * r.increase_in_confidence, 2) + " %");
  }
  if (available(r.ms_per_image)) {
    row("inference ms/image, without / with CAM", num(r.ms_per_image, 3) + " / " + num(r.ms_per_image_with_cam, 3));
  }
  if (!r.road_fractions.empty()) {
    out << "\nROAD on " << r.faithfulness_count << " images (removed pixels imputed from their neighbours, noise "
        << r.road_noise << ")\n";
    const auto line = [&](const std::string& name, const std::vector<double>& values, double scale, int digits) {
      out << "  " << std::left << std::setw(26) << name << std::right;
      for (const auto v : values) out << std::setw(7) << num(scale * v, digits);
      out << "\n";
    };
    line("removed %", r.road_fractions, 100, 0);
    line("MoRF: P(true class)", r.road_morf, 1, 3);
    line("LeRF: P(true class)", r.road_lerf, 1, 3);
    line("MoRF: accuracy %", r.road_morf_accuracy, 100, 1);
    line("LeRF: accuracy %", r.road_lerf_accuracy, 100, 1);
  }
  if (!r.randomization.empty()) {
    out << "\nParameter randomisation (cascading from the output; similarity to the trained CAMs, low = faithful)\n";
    out << "  " << std::left << std::setw(26) << "re-initialised down to" << std::setw(10) << "SSIM" << "Spearman\n";
    for (const auto& s : r.randomization) {
      out << "  " << std::left << std::setw(26) << s.layer << std::setw(10) << num(s.ssim, 3) << num(s.rank_correlation, 3)
          << "\n";
    }
  }
  out << "\nPer class (accuracy %, then the confusion matrix row: true class -> predicted counts)\n";
  for (size_t t = 0; t < r.confusion.size(); ++t) {
    out << "  " << std::left << std::setw(14) << r.class_names[t].substr(0, 13) << std::right << std::setw(7)
        << num(100 * r.per_class_accuracy[t], 2) << " |";
    for (const auto c : r.confusion[t]) out << std::setw(6) << c;
    out << "\n";
  }
  return out.str();
}

}  // namespace batchcam::eval
