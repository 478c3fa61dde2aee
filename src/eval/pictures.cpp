#include "batchcam/eval/pictures.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/io/png.h"

#include "batchcam/core/runtime.h"

#include <torch/torch.h>

namespace batchcam::eval {

namespace {
constexpr int64_t kGap = 2;

torch::Tensor zoomed(const torch::Tensor& rgb, int64_t zoom) {
  return rgb.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1);
}

torch::Tensor gray_rgb(const torch::Tensor& gray) {
  return (gray.clamp(0.0, 1.0) * 255).round().to(torch::kUInt8).unsqueeze(-1).expand({-1, -1, 3});
}

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

torch::Tensor prototype_strip(const torch::Tensor& prototypes, int64_t zoom) {
  TORCH_CHECK(prototypes.dim() == 3, "prototype_strip expects [K, H, W], got ", prototypes.sizes());
  std::vector<torch::Tensor> row;
  for (int64_t k = 0; k < prototypes.size(0); ++k) row.push_back(zoomed(io::heat_colors(prototypes[k]), zoom));
  return grid({row});
}

torch::Tensor explanation_panels(const torch::Tensor& gray, const torch::Tensor& map, int64_t zoom) {
  const auto g = gray.detach().cpu().to(torch::kFloat32), m = map.detach().cpu().to(torch::kFloat32);
  return grid({{zoomed(gray_rgb(g), zoom), zoomed(io::heat_colors(m), zoom), zoomed(io::overlay(g, m), zoom),
                zoomed(gray_rgb(m * g), zoom)}});
}

torch::Tensor stack_rows(const std::vector<torch::Tensor>& rows) {
  TORCH_CHECK(!rows.empty(), "stack_rows: no rows");
  std::vector<std::vector<torch::Tensor>> tiles;
  for (const auto& row : rows) tiles.push_back({row});
  return grid(tiles);
}

torch::Tensor cam_examples(models::CamModel& model, const data::Dataset& dataset, const data::Normalization& norm,
                           int64_t zoom) {
  std::vector<int64_t> picks;
  for (int64_t k = 0; k < dataset.num_classes(); ++k) {
    const auto where = dataset.labels.eq(k).nonzero();
    if (where.size(0) > 0) picks.push_back(where[0][0].item<int64_t>());
  }
  TORCH_CHECK(!picks.empty(), "cam_examples: the dataset is empty");
  const auto index = torch::tensor(picks, torch::kLong);
  const auto device = core::module_device(model);
  const auto x = norm.apply(dataset.images_at(index).to(device));
  const bool was_training = model.is_training();
  model.eval();
  const auto out = cam::grad_cam(model, x, dataset.labels.index_select(0, index).to(device),
                                 cam::GradCamOptions().output_size({x.size(2), x.size(3)}));
  model.train(was_training);
  const auto gray = norm.to_unit_gray(x).cpu();
  const auto maps = out.cam.maps.detach().cpu();
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t i = 0; i < index.size(0); ++i) {
    const auto map = maps[i];
    rows.push_back({zoomed(gray_rgb(gray[i]), zoom), zoomed(io::heat_colors(map), zoom),
                    zoomed(io::overlay(gray[i], map), zoom)});
  }
  return grid(rows);
}

}  // namespace batchcam::eval
