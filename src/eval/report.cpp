#include "batchcam/eval/report.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/core/provenance.h"
#include "batchcam/core/runtime.h"
#include "batchcam/eval/pictures.h"
#include "batchcam/io/file.h"
#include "batchcam/io/png.h"

#ifdef BATCHCAM_WITH_PLOTS
#include <cairo-svg.h>
#include <cairo.h>
#endif

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <limits>
#include <map>
#include <sstream>

namespace batchcam::eval {

namespace fs = std::filesystem;

namespace {
// RFC 4648 base64, for the data: URIs of the pictures.
std::string base64(const std::string& bytes) {
  static const char kDigits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve(4 * ((bytes.size() + 2) / 3));
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const size_t n = std::min<size_t>(3, bytes.size() - i);
    uint32_t group = 0;
    for (size_t k = 0; k < 3; ++k) group = group << 8 | (k < n ? static_cast<unsigned char>(bytes[i + k]) : 0u);
    for (size_t k = 0; k < 4; ++k) out += k <= n ? kDigits[(group >> (18 - 6 * k)) & 63] : '=';
  }
  return out;
}

std::string escape_html(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// A number with `digits` decimals; "n/a" for a metric that is not available (NaN, null in eval.json).
std::string fixed(double v, int digits) {
  if (std::isnan(v)) return "n/a";
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

// A metric of eval.json or metrics.jsonl: null (not available) reads as NaN.
double number(const nlohmann::json& v) {
  return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
}

#ifdef BATCHCAM_WITH_PLOTS
// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `count` ticks.
double nice_step(double range, int count) {
  const double raw = range / count;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double m : {1.0, 2.0, 5.0}) {
    if (raw <= m * magnitude) return m * magnitude;
  }
  return 10.0 * magnitude;
}

std::string tick_label(double v, double step) {
  std::ostringstream s;
  const int digits = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step)));
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

cairo_status_t append_to_string(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

// Colour-blind-safe palette (Okabe-Ito).
const double kPalette[][3] = {{0.00, 0.45, 0.70}, {0.90, 0.62, 0.00}, {0.00, 0.62, 0.45},
                              {0.80, 0.47, 0.65}, {0.34, 0.71, 0.91}, {0.84, 0.37, 0.00}};
#endif
}  // namespace

std::vector<ClassGrid> class_grids(models::CamModel& model, const data::Dataset& dataset,
                                   const data::Normalization& norm, int64_t per_class, cam::CamMethod method) {
  const auto device = core::module_device(model);
  const auto name = [&](int64_t c) { return dataset.class_names.at(static_cast<size_t>(c)); };
  std::vector<ClassGrid> grids;
  for (int64_t k = 0; k < dataset.num_classes(); ++k) {
    const auto where = dataset.labels.eq(k).nonzero().flatten();
    if (where.numel() == 0) continue;
    const auto index = where.narrow(0, 0, std::min<int64_t>(per_class, where.numel()));
    const auto x = norm.apply(dataset.images_at(index).to(device));
    const auto explained = cam::explain(model, x, dataset.labels.index_select(0, index).to(device), method);
    const auto maps = explained.maps.cpu();
    const auto probabilities = torch::softmax(explained.logits.to(torch::kFloat32), 1).cpu();
    const auto images = norm.to_unit(x).cpu();
    const int64_t zoom = display_zoom(dataset.height(), 84);
    ClassGrid grid{name(k), {}, zoom > 1};
    for (int64_t i = 0; i < index.numel(); ++i) {
      const int64_t predicted = probabilities[i].argmax().item<int64_t>();
      const int64_t sample = index[i].item<int64_t>();
      grid.images.push_back(
          {io::encode_png(explanation_panels(images[i], maps[i], zoom)),
           "true " + name(k) + ", predicted " + name(predicted) + " " +
               fixed(100.0 * probabilities[i][predicted].item<double>(), 0) + "%",
           dataset.streamed() ? std::filesystem::path(dataset.sample_name(sample)).filename().string() : ""});
    }
    grids.push_back(std::move(grid));
  }
  return grids;
}

std::string line_plot_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                          const std::vector<PlotSeries>& series) {
  const double width = 540, height = 300;
#ifndef BATCHCAM_WITH_PLOTS
  // Built without cairo: the plot's place says so (the numbers are in metrics.jsonl and eval.json).
  (void)x_label, (void)y_label, (void)series;
  std::ostringstream note;
  note << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height / 3
       << "\"><text x=\"10\" y=\"30\" font-family=\"sans-serif\" font-size=\"13\">" << escape_html(title)
       << ": not drawn (this batchcam was built without cairo, BATCHCAM_WITH_PLOTS=OFF)</text></svg>";
  return note.str();
#else
  const double left = 62, right = 150, top = 34, bottom = 48;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
    }
  }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 - x0 < 1e-12) x0 -= 0.5, x1 += 0.5;
  if (y1 - y0 < 1e-12) y0 -= 0.5, y1 += 0.5;
  const double y_step = nice_step(y1 - y0, 5);
  y0 = std::floor(y0 / y_step) * y_step;
  y1 = std::ceil(y1 / y_step) * y_step;
  const double x_step = std::max(1.0, nice_step(x1 - x0, 6));
  const auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * plot_w; };
  const auto py = [&](double y) { return top + (1.0 - (y - y0) / (y1 - y0)) * plot_h; };

  std::string svg;
  cairo_surface_t* surface = cairo_svg_surface_create_for_stream(append_to_string, &svg, width, height);
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  const auto text = [&](const std::string& s, double x, double y, double align_x, double size) {
    cairo_set_font_size(cr, size);
    cairo_text_extents_t e;
    cairo_text_extents(cr, s.c_str(), &e);
    cairo_move_to(cr, x - align_x * e.width - e.x_bearing, y);
    cairo_show_text(cr, s.c_str());
  };
  // Grid and ticks.
  cairo_set_line_width(cr, 1);
  for (double y = y0; y <= y1 + 1e-9 * y_step; y += y_step) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, left, py(y));
    cairo_line_to(cr, left + plot_w, py(y));
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    text(tick_label(y, y_step), left - 6, py(y) + 4, 1.0, 11);
  }
  for (double x = std::ceil(x0 / x_step) * x_step; x <= x1 + 1e-9; x += x_step) {
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    cairo_move_to(cr, px(x), top + plot_h);
    cairo_line_to(cr, px(x), top + plot_h + 4);
    cairo_stroke(cr);
    text(tick_label(x, x_step), px(x), top + plot_h + 17, 0.5, 11);
  }
  // Axes, title and labels.
  cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
  cairo_rectangle(cr, left, top, plot_w, plot_h);
  cairo_stroke(cr);
  text(title, left + plot_w / 2, 20, 0.5, 14);
  text(x_label, left + plot_w / 2, height - 10, 0.5, 12);
  cairo_save(cr);
  cairo_translate(cr, 16, top + plot_h / 2);
  cairo_rotate(cr, -M_PI / 2);
  text(y_label, 0, 0, 0.5, 12);
  cairo_restore(cr);
  // Series, then the legend in the top-right corner.
  for (size_t s = 0; s < series.size(); ++s) {
    const auto* c = kPalette[s % 6];
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    cairo_set_line_width(cr, 2);
    // A value that is not available (NaN) leaves a gap in the line.
    const auto shown = [&](size_t i) { return std::isfinite(series[s].x[i]) && std::isfinite(series[s].y[i]); };
    for (size_t i = 0; i < series[s].x.size(); ++i) {
      if (!shown(i)) continue;
      const double x = px(series[s].x[i]), y = py(series[s].y[i]);
      i == 0 || !shown(i - 1) ? cairo_move_to(cr, x, y) : cairo_line_to(cr, x, y);
    }
    cairo_stroke(cr);
    for (size_t i = 0; i < series[s].x.size(); ++i) {
      if (!shown(i)) continue;
      cairo_arc(cr, px(series[s].x[i]), py(series[s].y[i]), 3, 0, 2 * M_PI);
      cairo_fill(cr);
    }
  }
  const double legend_x = left + plot_w + 6, legend_y = top;
  for (size_t s = 0; s < series.size(); ++s) {
    const auto* c = kPalette[s % 6];
    const double y = legend_y + 14 + 16.0 * static_cast<double>(s);
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    cairo_set_line_width(cr, 2);
    cairo_move_to(cr, legend_x + 6, y - 4);
    cairo_line_to(cr, legend_x + 24, y - 4);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    text(series[s].name, legend_x + 30, y, 0.0, 11);
  }
  cairo_destroy(cr);
  cairo_surface_finish(surface);
  cairo_surface_destroy(surface);
  return svg;
#endif
}

nlohmann::json to_json(const EvalReport& r) {
  nlohmann::json randomization = nlohmann::json::array();
  for (const auto& s : r.randomization) {
    randomization.push_back({{"layer", s.layer}, {"ssim", s.ssim}, {"rank_correlation", s.rank_correlation}});
  }
  nlohmann::json per_class = nlohmann::json::object();
  for (size_t k = 0; k < r.per_class_accuracy.size(); ++k) per_class[r.class_names.at(k)] = r.per_class_accuracy[k];
  nlohmann::json road;  // null when skipped
  if (!r.road_fractions.empty()) {
    road = {{"fractions", r.road_fractions},
            {"morf_probability", r.road_morf},
            {"lerf_probability", r.road_lerf},
            {"morf_accuracy", r.road_morf_accuracy},
            {"lerf_accuracy", r.road_lerf_accuracy},
            {"morf", json_metric(r.road_morf_mean)},
            {"lerf", json_metric(r.road_lerf_mean)},
            {"combined", json_metric(r.road_combined)},
            {"imputation", "noisy linear (8 neighbours, weights 1/6 and 1/12)"},
            {"noise", r.road_noise}};
  }
  auto bands = nlohmann::json::array();
  for (const auto& band : r.localisation_by_distance) {
    bands.push_back({{"from", band.from},
                     {"to", std::isfinite(band.to) ? nlohmann::json(band.to) : nlohmann::json(nullptr)},
                     {"count", band.count},
                     {"cam_mass_share", json_metric(band.object_share)},
                     {"pointing_game", json_metric(band.object_pointing)}});
  }
  const auto& m = r.metrics;
  return {{"cam_method", cam::to_string(r.method)},
          {"count", m.count},
          {"loss", m.loss},
          {"accuracy", m.accuracy},
          {"per_class_accuracy", per_class},
          {"class_names", r.class_names},
          {"confusion", r.confusion},
          {"prototype_reconstruction", {{"l1", m.proto_l1}, {"l2", m.proto_l2}, {"ssim", m.proto_ssim}}},
          {"input_reconstruction", {{"l1", r.input_l1}, {"l2", r.input_l2}, {"ssim", r.input_ssim}}},
          {"object",
           {{"cam_mass_share", json_metric(m.object_share)},
            {"pointing_game", json_metric(r.object_pointing)},
            // Distance of the object's centroid from the image centre, in half image sides
            // (to: null = no upper bound); empty without object masks.
            {"by_distance_from_centre", bands}}},
          {"decoy",
           {{"cam_mass_share", json_metric(m.decoy_share)},
            {"pointing_game", json_metric(r.decoy_pointing)},
            {"predicted_class_cam_mass_share", json_metric(r.decoy_share_predicted)},
            {"predicted_class_pointing_game", json_metric(r.decoy_pointing_predicted)},
            {"follows_decoy", json_metric(r.decoy_following)}}},
          {"faithfulness",
           {{"deletion_auc", json_metric(r.deletion_auc)},
            {"insertion_auc", json_metric(r.insertion_auc)},
            {"images", r.faithfulness_count},
            {"steps", r.faithfulness_steps},
            {"baseline", r.faithfulness_baseline},
            {"road", road},
            {"confidence",
             {{"average_drop", json_metric(r.average_drop)},
              {"increase", json_metric(r.increase_in_confidence)},
              {"explained_image", "image x map (pixel values), black where the map is 0"}}}}},
          {"randomization", randomization},
          {"timing",
           {{"ms_per_image", json_metric(r.ms_per_image)}, {"ms_per_image_with_cam", json_metric(r.ms_per_image_with_cam)}}}};
}

std::string render_report_html(const ReportInputs& in) {
  std::ostringstream h;
  const auto img = [&](const std::string& mime, const std::string& bytes, const std::string& alt) {
    h << "<img alt=\"" << escape_html(alt) << "\" src=\"data:" << mime << ";base64," << base64(bytes) << "\">";
  };
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << escape_html(in.title)
    << "</title>\n<style>body{font-family:'DejaVu Sans',sans-serif;margin:24px;color:#222;max-width:1240px}"
       "h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}"
       "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}"
       "th{background:#f4f4f4}td.l,th.l{text-align:left}.plots img{margin:4px;max-width:100%}"
       ".grid{display:inline-block;margin:6px 16px 6px 0;vertical-align:top;max-width:100%}"
       ".grid .cls{font-size:14px;font-weight:bold;margin-bottom:2px}"
       ".grid figure{margin:0 0 6px 0}.grid img{display:block;width:100%;max-width:400px;height:auto}"
       "figcaption{font-size:12px;color:#333}.src{color:#777}.bar{display:flex;align-items:center;gap:6px;"
       "font-size:12px;margin:4px 0 8px}.bar img{width:256px;height:12px}"
       "pre{white-space:pre-wrap;overflow-wrap:anywhere}img{image-rendering:pixelated;max-width:100%}.smooth img{image-rendering:auto}.note{color:#555;font-size:13px}</style></head><body>\n";
  h << "<h1>" << escape_html(in.title) << "</h1>\n";
  const auto& c = in.config;
  h << "<p class=\"note\">" << escape_html(c.value("model", "")) << " on " << escape_html(c.value("dataset", ""))
    << ", " << c.value("epochs", 0) << " epochs, " << escape_html(c.value("optimizer", "")) << " lr "
    << c.value("lr", 0.0) << ", &lambda;<sub>proto</sub> " << c.value("lambda_proto", 0.0) << " ("
    << escape_html(c.value("distance_proto", "")) << "), &lambda;<sub>batch</sub> " << c.value("lambda_batch", 0.0)
    << " (" << escape_html(c.value("distance_batch", "")) << ")";
  if (c.value("lambda_rrr", 0.0) > 0) h << ", &lambda;<sub>rrr</sub> " << c.value("lambda_rrr", 0.0);
  if (c.value("lambda_proto_rrr", 0.0) > 0) h << ", &lambda;<sub>proto-rrr</sub> " << c.value("lambda_proto_rrr", 0.0);
  h << ", seed " << c.value("seed", 0) << "</p>\n";

  // What was evaluated, by what.
  if (in.eval.contains("checkpoint") || in.eval.contains("provenance")) {
    h << "<p class=\"note\">";
    if (in.eval.contains("checkpoint")) {
      const auto& ck = in.eval.at("checkpoint");
      h << "Evaluated " << escape_html(ck.value("path", "")) << " (epoch " << ck.value("epoch", 0) << ")";
    }
    if (in.eval.contains("provenance")) {
      const auto& p = in.eval.at("provenance");
      const auto commit = p.value("git_commit", "");
      h << " with batchcam " << escape_html(p.value("batchcam", "")) << (commit.empty() ? "" : " (" + escape_html(commit) + ")")
        << ", LibTorch " << escape_html(p.value("libtorch", "")) << ", on " << escape_html(p.value("host", "")) << ", "
        << escape_html(p.value("device", "")) << ", " << p.value("threads", 0) << " CPU threads, "
        << escape_html(p.value("time", ""));
    }
    h << ".</p>\n";
  }

  // Metrics.
  const auto& e = in.eval;
  const auto get = [&](const char* a, const char* b = nullptr) {
    const auto& v = b ? e.at(a).at(b) : e.at(a);
    return number(v);
  };
  // The CAM method of the maps below (eval.json written before there was a choice has none: Grad-CAM).
  const auto method_name = e.contains("cam_method") ? e.at("cam_method").get<std::string>() : std::string("grad-cam");
  h << "<h2>Test metrics</h2>\n<p class=\"note\">CAM method: " << escape_html(method_name) << "</p>\n<table>\n";
  const auto row = [&](const std::string& name, const std::string& value) {
    h << "<tr><td class=\"l\">" << name << "</td><td>" << value << "</td></tr>\n";
  };
  row("images", std::to_string(e.at("count").get<int64_t>()));
  row("accuracy", fixed(100 * get("accuracy"), 2) + " %");
  row("cross-entropy", fixed(get("loss"), 4));
  row("CAM vs prototype: L1 / L2 / SSIM", fixed(get("prototype_reconstruction", "l1"), 4) + " / " +
                                              fixed(get("prototype_reconstruction", "l2"), 4) + " / " +
                                              fixed(get("prototype_reconstruction", "ssim"), 4));
  row("CAM vs input: L1 / L2 / SSIM", fixed(get("input_reconstruction", "l1"), 4) + " / " +
                                          fixed(get("input_reconstruction", "l2"), 4) + " / " +
                                          fixed(get("input_reconstruction", "ssim"), 4));
  row("object: CAM mass share / pointing game",
      fixed(get("object", "cam_mass_share"), 4) + " / " + fixed(get("object", "pointing_game"), 4));
  row("decoy: CAM mass share / pointing game",
      fixed(get("decoy", "cam_mass_share"), 4) + " / " + fixed(get("decoy", "pointing_game"), 4));
  const auto& decoy = e.at("decoy");  // the predicted-class keys are absent from older eval.json
  row("decoy, CAM of the predicted class: mass share / pointing game",
      fixed(number(decoy.value("predicted_class_cam_mass_share", nlohmann::json())), 4) + " / " +
          fixed(number(decoy.value("predicted_class_pointing_game", nlohmann::json())), 4));
  row("decoy decides: predicted as the decoy's class where it misleads",
      fixed(number(decoy.value("follows_decoy", nlohmann::json())), 4));
  const auto& f = e.at("faithfulness");
  row("deletion AUC (lower is better)", fixed(number(f.at("deletion_auc")), 4));
  row("insertion AUC (higher is better)", fixed(number(f.at("insertion_auc")), 4));
  const auto& road = f.value("road", nlohmann::json());  // absent from older eval.json, null when skipped
  const auto& confidence = f.value("confidence", nlohmann::json());
  if (road.is_object()) {
    row("ROAD, mean P(true class): MoRF (lower is better) / LeRF (higher is better)",
        fixed(number(road.at("morf")), 4) + " / " + fixed(number(road.at("lerf")), 4));
    row("ROAD: (LeRF &minus; MoRF) / 2 (higher is better)", fixed(number(road.at("combined")), 4));
  }
  if (confidence.is_object()) {
    row("average drop in confidence (lower is better)", fixed(100 * number(confidence.at("average_drop")), 2) + " %");
    row("increase in confidence (higher is better)", fixed(100 * number(confidence.at("increase")), 2) + " %");
  }
  row("inference ms/image: without / with CAM",
      fixed(get("timing", "ms_per_image"), 3) + " / " + fixed(get("timing", "ms_per_image_with_cam"), 3));
  h << "</table>\n<p class=\"note\">Deletion/insertion: " << f.at("images").get<int64_t>() << " images, "
    << f.at("steps").get<int64_t>() << " steps, pixels replaced by a " << escape_html(f.at("baseline").get<std::string>())
    << ". ROAD (Rong et al. 2022): the most (MoRF) or least (LeRF) relevant pixels removed and imputed from "
       "their neighbours with noise. Confidence change (Chattopadhay et al. 2018): the image multiplied by its map. "
       "Mass share and pointing game need ground-truth masks (n/a where the dataset has none).</p>\n";
  if (road.is_object()) {
    std::vector<double> removed;
    for (const auto& x : road.at("fractions")) removed.push_back(100 * x.get<double>());
    const auto series = [&](const char* key) {
      std::vector<double> y;
      for (const auto& x : road.at(key)) y.push_back(number(x));
      return y;
    };
    h << "<div class=\"plots\">";
    img("image/svg+xml",
        line_plot_svg("ROAD (" + method_name + ")", "pixels removed (%)", "P(true class)",
                      {{"MoRF", removed, series("morf_probability")},
                       {"LeRF", removed, series("lerf_probability")}}),
        "ROAD curves");
    h << "</div>\n";
  }

  // Training curves.
  if (!in.history.empty()) {
    std::vector<double> epochs;
    std::map<std::string, std::vector<double>> v;
    for (const auto& m : in.history) {
      epochs.push_back(m.at("epoch").get<double>());
      for (const char* key : {"train_loss", "train_ce", "train_proto", "train_batch", "train_accuracy", "test_accuracy",
                              "test_proto_ssim", "test_loss"}) {
        v[key].push_back(number(m.at(key)));
      }
      // The input-gradient terms (runs before them have none).
      for (const char* key : {"train_rrr", "train_proto_rrr"}) v[key].push_back(m.contains(key) ? number(m.at(key)) : 0.0);
    }
    std::vector<PlotSeries> losses = {{"total", epochs, v["train_loss"]}, {"cross-entropy", epochs, v["train_ce"]},
                                  {"prototype", epochs, v["train_proto"]}, {"batch-cam", epochs, v["train_batch"]}};
    if (in.config.value("lambda_rrr", 0.0) > 0) losses.push_back({"rrr", epochs, v["train_rrr"]});
    if (in.config.value("lambda_proto_rrr", 0.0) > 0) losses.push_back({"prototype-rrr", epochs, v["train_proto_rrr"]});
    losses.push_back({"test cross-entropy", epochs, v["test_loss"]});
    const auto percent = [](std::vector<double> xs) {
      for (auto& x : xs) x *= 100;
      return xs;
    };
    h << "<h2>Training</h2>\n<div class=\"plots\">";
    img("image/svg+xml",
        line_plot_svg("Loss", "epoch", "loss", losses),
        "loss curves");
    img("image/svg+xml",
        line_plot_svg("Accuracy", "epoch", "accuracy (%)",
                      {{"train", epochs, percent(v["train_accuracy"])}, {"test", epochs, percent(v["test_accuracy"])}}),
        "accuracy curves");
    img("image/svg+xml",
        line_plot_svg("CAM vs prototype (test)", "epoch", "SSIM", {{"SSIM", epochs, v["test_proto_ssim"]}}),
        "CAM-prototype SSIM curve");
    h << "</div>\n";
  }
  if (!in.prototypes_png.empty()) {
    h << "<h2>Class prototypes</h2>\n";
    img("image/png", in.prototypes_png, "class prototypes");
    h << "\n";
  }
  if (!in.class_grids.empty()) {
    h << "<h2>Explanations per class</h2>\n<p class=\"note\">Each row: image, " << escape_html(method_name) << " map of the true class, overlay, "
         "reconstruction (CAM &times; image). Each map is min-max normalised per image: its lowest value is 0, its "
         "highest 1, so colours compare places within an image, not across images.</p>\n<div class=\"bar\"><span>0"
         "</span>";
    img("image/png", io::encode_png(color_bar()), "colour bar from 0 (lowest) to 1 (highest)");
    h << "<span>1</span></div>\n";
    for (const auto& grid : in.class_grids) {
      // Enlarged small images keep their pixels sharp; large ones are scaled down smoothly.
      h << "<div class=\"grid" << (grid.pixelated ? "" : " smooth") << "\"><div class=\"cls\">" << escape_html(grid.class_name) << "</div>";
      for (const auto& image : grid.images) {
        h << "<figure>";
        img("image/png", image.png, image.caption);
        h << "<figcaption>" << escape_html(image.caption)
          << (image.source.empty() ? "" : " <span class=\"src\">" + escape_html(image.source) + "</span>")
          << "</figcaption></figure>";
      }
      h << "</div>";
    }
    h << "\n";
  }
  // Confusion matrix, shaded by row share.
  const auto names = e.at("class_names").get<std::vector<std::string>>();
  const auto confusion = e.at("confusion").get<std::vector<std::vector<int64_t>>>();
  h << "<h2>Confusion matrix</h2>\n<table><tr><th class=\"l\">true \\ predicted</th>";
  for (const auto& n : names) h << "<th>" << escape_html(n) << "</th>";
  h << "<th>accuracy</th></tr>\n";
  for (size_t t = 0; t < confusion.size(); ++t) {
    int64_t total = 0;
    for (const auto x : confusion[t]) total += x;
    h << "<tr><th class=\"l\">" << escape_html(names[t]) << "</th>";
    for (const auto x : confusion[t]) {
      const double share = total > 0 ? static_cast<double>(x) / static_cast<double>(total) : 0.0;
      h << "<td style=\"background:rgba(0,114,178," << fixed(0.75 * share, 3) << ")\">" << x << "</td>";
    }
    h << "<td>" << fixed(100 * e.at("per_class_accuracy").at(names[t]).get<double>(), 2) << " %</td></tr>\n";
  }
  h << "</table>\n";
  if (!e.at("randomization").empty()) {
    h << "<h2>Sanity check: cascading parameter randomisation</h2>\n<p class=\"note\">Layers re-initialised from the "
         "output down (Adebayo et al. 2018); similarity of the CAMs to the trained model's. An explanation that "
         "depends on the model must change: lower is better.</p>\n<table><tr><th class=\"l\">re-initialised down "
         "to</th><th>SSIM</th><th>Spearman</th></tr>\n";
    for (const auto& s : e.at("randomization")) {
      h << "<tr><td class=\"l\">" << escape_html(s.at("layer").get<std::string>()) << "</td><td>"
        << fixed(s.at("ssim").get<double>(), 3) << "</td><td>" << fixed(s.at("rank_correlation").get<double>(), 3)
        << "</td></tr>\n";
    }
    h << "</table>\n";
  }
  h << "<h2>Configuration</h2>\n<pre>" << escape_html(in.config.dump(2)) << "</pre>\n";
  // Lets a headless browser (and the tests) confirm that every picture decoded and how wide
  // the page is laid out (wider than the window: it scrolls sideways).
  h << "<script>window.addEventListener('error',function(e){document.body.setAttribute('data-error',String(e.message));});"
       "window.addEventListener('load',function(){var ok=0,bad=0;for(var i=0;i<document.images.length;i++){"
       "var m=document.images[i];if(m.complete&&m.naturalWidth>0)ok++;else bad++;}"
       "document.body.setAttribute('data-images-loaded',ok);document.body.setAttribute('data-images-broken',bad);"
       "document.body.setAttribute('data-page-width',document.documentElement.scrollWidth);});"
       "</script>\n</body></html>\n";
  return h.str();
}

nlohmann::json evaluation_origin(const std::string& checkpoint, int64_t epoch, const torch::Device& device) {
  return {{"checkpoint", {{"path", checkpoint}, {"epoch", epoch}}}, {"provenance", core::provenance(device)}};
}

EvalReport write_run_report(const std::string& run_dir, models::CamModel& model, const data::Dataset& test_set,
                            const data::Normalization& norm, const torch::Tensor& prototypes,
                            const nlohmann::json& config, const std::vector<nlohmann::json>& history,
                            const nlohmann::json& origin, const EvalOptions& options) {
  const auto report = evaluate_full(model, test_set, norm, prototypes, options);
  auto eval_json = to_json(report);
  for (const auto& [key, value] : origin.items()) eval_json[key] = value;
  io::write_file_atomic((fs::path(run_dir) / "eval.json").string(), eval_json.dump(2) + "\n");
  ReportInputs in;
  in.title = "batchcam run " + fs::path(run_dir).filename().string();
  in.config = config;
  in.history = history;
  in.eval = eval_json;
  in.prototypes_png = io::encode_png(prototype_strip(prototypes.cpu()));
  if (options.on_phase) options.on_phase("report.html");
  in.class_grids = class_grids(model, test_set, norm, 4, options.method);
  io::write_file_atomic((fs::path(run_dir) / "report.html").string(), render_report_html(in));
  return report;
}

}  // namespace batchcam::eval
