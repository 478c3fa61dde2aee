#pragma once
// Explanations as pictures and the run report: one self-contained HTML page with the
// training curves (drawn with cairo), prototypes, per-class CAM grids and the metrics.

#include "batchcam/data/dataset.h"
#include "batchcam/eval/evaluate.h"
#include "batchcam/models/cam_model.h"

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

namespace batchcam::eval {

/// A metric for JSON: the number, or null when it is not available.
inline nlohmann::json json_metric(double v) { return available(v) ? nlohmann::json(v) : nlohmann::json(); }
/// The evaluation as eval.json holds it.
nlohmann::json to_json(const EvalReport& report);

/// One explained image of a class grid: its explanation_panels for the true class as PNG,
/// and what the model said about it ("true cat, predicted dog 83%").
struct ExplainedImage {
  std::string png;
  std::string caption;
  std::string source;  ///< the file, for streamed datasets; "" otherwise
};

struct ClassGrid {
  std::string class_name;
  std::vector<ExplainedImage> images;
  bool pixelated = true;  ///< small images enlarged (show their pixels); false: large ones, shown smaller
};

/// For each class, up to `per_class` test images of that class (the first ones),
/// explained for the true class with `method`, panels shown at about 84 px (display_zoom).
std::vector<ClassGrid> class_grids(models::CamModel& model, const data::Dataset& dataset,
                                   const data::Normalization& norm, int64_t per_class = 4,
                                   cam::CamMethod method = cam::CamMethod::grad_cam);

struct PlotSeries {
  std::string name;
  std::vector<double> x, y;
};

/// A line plot with axes, ticks, labels and a legend, as SVG (cairo).
std::string line_plot_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                          const std::vector<PlotSeries>& series);

struct ReportInputs {
  std::string title;
  nlohmann::json config;                 ///< the run's config.json
  std::vector<nlohmann::json> history;   ///< metrics.jsonl lines
  nlohmann::json eval;                   ///< to_json(EvalReport)
  std::string prototypes_png;            ///< may be empty
  std::vector<ClassGrid> class_grids;
};

/// The HTML page, with every picture embedded (data: URIs): it needs no network or files.
std::string render_report_html(const ReportInputs& inputs);

/// What a result was computed from and by what, as eval.json and export metadata record it:
/// {"checkpoint": {"path", "epoch"}, "provenance": core::provenance(device)}.
nlohmann::json evaluation_origin(const std::string& checkpoint, int64_t epoch, const torch::Device& device);

/// Evaluates the model (evaluate_full), then writes eval.json and report.html into
/// `run_dir` (atomically). `config` and `history` (one JSON object per epoch, as in
/// metrics.jsonl) are the run's, as the caller holds them (the checkpoint's, not files that
/// may have been edited since). `origin` (an object: the evaluated checkpoint, the
/// provenance) is added to eval.json and shown on the page.
EvalReport write_run_report(const std::string& run_dir, models::CamModel& model, const data::Dataset& test_set,
                            const data::Normalization& norm, const torch::Tensor& prototypes,
                            const nlohmann::json& config, const std::vector<nlohmann::json>& history,
                            const nlohmann::json& origin = nlohmann::json::object(), const EvalOptions& options = {});

}  // namespace batchcam::eval
