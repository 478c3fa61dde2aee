#include "batchcam/eval/pictures.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/core/runtime.h"
#include "batchcam/io/file.h"
#include "batchcam/io/png.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <locale>
#include <map>
#include <sstream>

namespace batchcam::eval {

namespace {
constexpr int64_t kGap = 2;

// Anchor colours of the ramp, from black to pale yellow.
const float kRamp[][3] = {{0.00f, 0.00f, 0.02f}, {0.26f, 0.04f, 0.41f}, {0.58f, 0.15f, 0.40f},
                          {0.87f, 0.32f, 0.23f}, {0.99f, 0.65f, 0.04f}, {0.99f, 1.00f, 0.64f}};
constexpr int kAnchors = 6;

torch::Tensor zoomed(const torch::Tensor& rgb, int64_t zoom) {
  return rgb.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1);
}

// A unit image [C, H, W] (C = 1 or 3) as float RGB [H, W, 3] in [0, 1].
torch::Tensor unit_rgb(const torch::Tensor& image) {
  TORCH_CHECK(image.dim() == 3 && (image.size(0) == 1 || image.size(0) == 3),
              "expected a unit image [C, H, W] with 1 or 3 channels, got ", image.sizes());
  return image.detach().cpu().to(torch::kFloat32).clamp(0.0, 1.0).expand({3, -1, -1}).permute({1, 2, 0});
}

torch::Tensor to_bytes(const torch::Tensor& rgb) { return (rgb * 255).round().clamp(0, 255).to(torch::kUInt8); }

// Lays tiles [h, w, 3] out on a white canvas, rows x cols, with gaps.
torch::Tensor grid(const std::vector<std::vector<torch::Tensor>>& tiles) {
  const int64_t rows = static_cast<int64_t>(tiles.size()), cols = static_cast<int64_t>(tiles.at(0).size());
  const int64_t h = tiles[0][0].size(0), w = tiles[0][0].size(1);
  auto canvas = torch::full({rows * (h + kGap) - kGap, cols * (w + kGap) - kGap, 3}, 255, torch::kUInt8);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      canvas.slice(0, r * (h + kGap), r * (h + kGap) + h).slice(1, c * (w + kGap), c * (w + kGap) + w).copy_(tiles[r][c]);
    }
  }
  return canvas;
}
}  // namespace

torch::Tensor heat_colors(const torch::Tensor& map) {
  TORCH_CHECK(map.dim() == 2, "heat_colors expects [H, W], got ", map.sizes());
  const auto ramp = torch::from_blob(const_cast<float*>(&kRamp[0][0]), {kAnchors, 3}, torch::kFloat).clone();
  const auto t = map.detach().to(torch::kFloat).cpu().clamp(0.0, 1.0) * (kAnchors - 1);
  const auto lo = t.floor().clamp_max(kAnchors - 2).to(torch::kLong);
  const auto frac = (t - lo.to(torch::kFloat)).unsqueeze(-1);
  const auto rgb = ramp.index({lo}) * (1 - frac) + ramp.index({lo + 1}) * frac;  // [H, W, 3]
  return (rgb * 255).round().to(torch::kUInt8);
}

torch::Tensor overlay(const torch::Tensor& image, const torch::Tensor& map, double alpha) {
  const auto rgb = unit_rgb(image);
  TORCH_CHECK(rgb.size(0) == map.size(0) && rgb.size(1) == map.size(1), "overlay: image ", image.sizes(), " and map ",
              map.sizes(), " differ");
  const auto heat = heat_colors(map).to(torch::kFloat) / 255;
  return to_bytes((1 - alpha) * rgb + alpha * heat);
}

torch::Tensor color_bar(int64_t width, int64_t height) {
  return heat_colors(torch::linspace(0, 1, width).view({1, -1}).expand({height, width}));
}

int64_t display_zoom(int64_t side, int64_t target) { return std::max<int64_t>(1, target / std::max<int64_t>(1, side)); }

torch::Tensor prototype_strip(const torch::Tensor& prototypes, int64_t zoom) {
  TORCH_CHECK(prototypes.dim() == 3, "prototype_strip expects [K, H, W], got ", prototypes.sizes());
  if (zoom <= 0) zoom = display_zoom(prototypes.size(1));
  std::vector<torch::Tensor> row;
  for (int64_t k = 0; k < prototypes.size(0); ++k) row.push_back(zoomed(heat_colors(prototypes[k]), zoom));
  return grid({row});
}

torch::Tensor explanation_panels(const torch::Tensor& image, const torch::Tensor& map, int64_t zoom) {
  const auto rgb = unit_rgb(image), m = map.detach().cpu().to(torch::kFloat32);
  return grid({{zoomed(to_bytes(rgb), zoom), zoomed(heat_colors(m), zoom), zoomed(overlay(image, m), zoom),
                zoomed(to_bytes(rgb * m.unsqueeze(-1)), zoom)}});
}

torch::Tensor stack_rows(const std::vector<torch::Tensor>& rows) {
  TORCH_CHECK(!rows.empty(), "stack_rows: no rows");
  std::vector<std::vector<torch::Tensor>> tiles;
  for (const auto& row : rows) tiles.push_back({row});
  return grid(tiles);
}

torch::Tensor cam_examples(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                           int64_t zoom, cam::CamMethod method) {
  std::vector<int64_t> picks;
  for (int64_t k = 0; k < dataset.num_classes(); ++k) {
    const auto where = dataset.labels.eq(k).nonzero();
    if (where.size(0) > 0) picks.push_back(where[0][0].item<int64_t>());
  }
  TORCH_CHECK(!picks.empty(), "cam_examples: the dataset is empty");
  const auto index = torch::tensor(picks, torch::kLong);
  const auto device = core::module_device(model);
  const auto x = norm.apply(dataset.images_at(index).to(device));
  const auto maps = cam::explain(model, x, dataset.labels.index_select(0, index).to(device), method).maps.cpu();
  const auto images = norm.to_unit(x).cpu();
  if (zoom <= 0) zoom = display_zoom(dataset.height());
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t i = 0; i < index.size(0); ++i) {
    const auto map = maps[i];
    rows.push_back({zoomed(to_bytes(unit_rgb(images[i])), zoom), zoomed(heat_colors(map), zoom),
                    zoomed(overlay(images[i], map), zoom)});
  }
  return grid(rows);
}

void explain_images(models::CamModel& model, const data::Dataset& inputs, const data::Normalization& norm,
                    const ExplainOptions& options,
                    const std::function<void(const ExplainedSample& sample, const torch::Tensor& panels)>& visit) {
  TORCH_CHECK(options.batch_size > 0, "explain_images: batch_size must be > 0, got ", options.batch_size);
  const auto device = core::module_device(model);
  const int64_t zoom = options.zoom > 0 ? options.zoom : display_zoom(inputs.height(), 112);
  for (int64_t begin = 0; begin < inputs.size(); begin += options.batch_size) {
    const auto index = torch::arange(begin, std::min(inputs.size(), begin + options.batch_size), torch::kInt64);
    const auto x = norm.apply(inputs.images_at(index).to(device));
    const auto targets =
        options.target >= 0 ? torch::full({x.size(0)}, options.target, torch::kLong).to(device) : torch::Tensor();
    const auto explained = cam::explain(model, x, targets, options.method);
    const auto maps = explained.maps.cpu().to(torch::kDouble);
    const auto probabilities = torch::softmax(explained.logits.to(torch::kDouble), 1).cpu();
    const auto predicted = explained.logits.argmax(1).cpu();
    const auto explained_targets = explained.targets.cpu();
    const auto images = norm.to_unit(x).cpu();
    for (int64_t j = 0; j < x.size(0); ++j) {
      const int64_t i = begin + j;
      ExplainedSample s;
      s.source = inputs.streamed() ? inputs.sample_name(i) : "test:" + std::to_string(i);
      s.label = inputs.labels.defined() ? inputs.labels[i].item<int64_t>() : -1;
      s.predicted = predicted[j].item<int64_t>();
      s.target = explained_targets[j].item<int64_t>();
      s.target_probability = probabilities[j][s.target].item<double>();
      const auto flat = maps[j].flatten();
      s.cam_mean = flat.mean().item<double>();
      const int64_t peak = flat.argmax().item<int64_t>();
      s.peak_y = peak / maps.size(2);
      s.peak_x = peak % maps.size(2);
      const double mass = flat.sum().item<double>();
      const auto top = std::get<0>(flat.topk(std::max<int64_t>(1, flat.numel() / 10)));
      s.top_decile_mass = mass > 0 ? top.sum().item<double>() / mass : 0.0;
      visit(s, explanation_panels(images[j], maps[j], zoom));
    }
  }
}

namespace {
// A CSV field in double quotes, quotes inside doubled (RFC 4180).
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// A CSV field, quoted only where it has to be (a comma, quote or line break in it).
std::string field(const std::string& text) {
  return text.find_first_of(",\"\r\n") == std::string::npos ? text : quoted(text);
}

// v with 6 decimals, a point for the decimal separator whatever the caller's locale.
std::string number(double v) {
  std::ostringstream out;
  out.imbue(std::locale::classic());
  out << std::fixed << std::setprecision(6) << v;
  return out.str();
}
}  // namespace

std::vector<ExplainedSample> write_explanations(const std::string& out_dir, models::CamModel& model,
                                                const data::Dataset& inputs, const data::Normalization& norm,
                                                const ExplainOptions& options) {
  namespace fs = std::filesystem;
  const auto class_name = [&](int64_t c) {
    return c >= 0 && c < inputs.num_classes() ? inputs.class_names[static_cast<size_t>(c)] : std::to_string(c);
  };
  fs::create_directories(fs::path(out_dir) / "images");
  std::vector<ExplainedSample> samples;
  std::map<int64_t, std::vector<torch::Tensor>> by_class;  // up to 8 panels per explained class
  std::string csv = "index,source,label,predicted,target,target_probability,cam_mean,cam_peak_y,cam_peak_x,"
                    "cam_mass_top_decile\n";
  explain_images(model, inputs, norm, options, [&](const ExplainedSample& s, const torch::Tensor& panels) {
    const auto i = static_cast<int64_t>(samples.size());
    char index[32];
    std::snprintf(index, sizeof index, "%04lld", static_cast<long long>(i));
    // Named after the input file where there is one: images/0003-cat_12.png.
    const auto name = inputs.streamed() ? std::string(index) + "-" + fs::path(s.source).stem().string() + ".png"
                                        : std::string(index) + ".png";
    io::write_png((fs::path(out_dir) / "images" / name).string(), panels);
    auto& examples = by_class[s.target];
    if (examples.size() < 8) examples.push_back(panels);
    csv += std::to_string(i) + "," + quoted(s.source) + "," + (s.label >= 0 ? field(class_name(s.label)) : "") +
           "," + field(class_name(s.predicted)) + "," + field(class_name(s.target)) + "," +
           number(s.target_probability) + "," + number(s.cam_mean) + "," + std::to_string(s.peak_y) +
           "," + std::to_string(s.peak_x) + "," + number(s.top_decile_mass) + "\n";
    samples.push_back(s);
  });
  for (const auto& [c, rows] : by_class) {
    io::write_png((fs::path(out_dir) / ("class-" + std::to_string(c) + ".png")).string(), stack_rows(rows));
  }
  io::write_file_atomic((fs::path(out_dir) / "cam_stats.csv").string(), csv);
  return samples;
}

}  // namespace batchcam::eval
