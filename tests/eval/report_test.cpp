// The evaluation, explanation and report commands as a user runs them, and the report as
// a browser shows it (headless Chromium, when installed: the test command installs it).

#include "batchcam/eval/evaluate.h"
#include "batchcam/eval/report.h"
#include "batchcam/io/image.h"
#include "batchcam/io/png.h"
#include "support/process.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace fs = std::filesystem;

namespace {
using Result = batchcam::test_support::CommandResult;

Result shell(const std::string& cmd) { return batchcam::test_support::run_shell(cmd); }

Result cli(const std::string& args) { return shell(std::string(BATCHCAM_CLI) + " " + args); }

std::string read_text(const fs::path& path) { return batchcam::test_support::read_text(path.string()); }

const fs::path& scratch() {
  static const fs::path root = fs::temp_directory_path() / ("batchcam-report-" + std::to_string(::getpid()));
  return root;
}

// Removes the scratch directory when the test program ends.
struct CleanUp : ::testing::Environment {
  void TearDown() override { fs::remove_all(scratch()); }
};
const auto* const clean_up = ::testing::AddGlobalTestEnvironment(new CleanUp);

// One small trained run shared by the tests of this file (built on first use).
const fs::path& trained_run() {
  static const fs::path dir = [] {
    const auto root = scratch();
    fs::remove_all(root);
    const auto r = cli("train --quiet --spurious --train-size 600 --test-size 100 --epochs 2 --batch-size 50 --out-dir " +
                       root.string() + " --run-name run");
    EXPECT_EQ(r.code, 0) << r.out;
    return root / "run";
  }();
  return dir;
}

std::string chromium() {
  for (const char* c : {"/usr/bin/chromium", "/usr/bin/chromium-browser"}) {
    if (fs::exists(c)) return c;
  }
  return "";
}
}  // namespace

TEST(Plot, LinePlotIsAnSvgWithTextAndLines) {
  const auto svg = batchcam::eval::line_plot_svg("Loss", "epoch", "loss", {{"total", {1, 2, 3}, {1.0, 0.5, 0.25}},
                                                                           {"ce", {1, 2, 3}, {0.8, 0.4, 0.2}}});
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_GT(svg.size(), 2000u) << "axes, ticks, glyphs of the labels and two series";
}

TEST(Report, NotAvailableShowsAsNaAndNegativeValuesAsNumbers) {
  batchcam::eval::EvalReport r;
  r.metrics.count = 2;
  r.class_names = {"a", "b"};
  r.per_class_accuracy = {0.5, 0.5};
  r.confusion = {{1, 1}, {1, 1}};
  r.randomization.push_back({"classifier", 0.25, -0.068});  // a real, negative rank correlation
  batchcam::eval::ReportInputs in;
  in.title = "t";
  in.config = nlohmann::json::object();
  in.eval = batchcam::eval::to_json(r);
  // An epoch whose test metrics were not available: null in metrics.jsonl, a gap in the plot.
  in.history = {{{"epoch", 1}, {"train_loss", 1.0}, {"train_ce", 1.0}, {"train_proto", 0.0}, {"train_batch", 0.0},
                 {"train_accuracy", 0.5}, {"test_accuracy", 0.5}, {"test_proto_ssim", nullptr}, {"test_loss", 1.0}},
                {{"epoch", 2}, {"train_loss", 0.5}, {"train_ce", 0.5}, {"train_proto", 0.0}, {"train_batch", 0.0},
                 {"train_accuracy", 0.7}, {"test_accuracy", 0.6}, {"test_proto_ssim", 0.3}, {"test_loss", 0.8}}};
  const auto html = batchcam::eval::render_report_html(in);
  EXPECT_NE(html.find("-0.068"), std::string::npos) << "the negative correlation is printed";
  EXPECT_NE(html.find("<td>n/a / n/a</td>"), std::string::npos) << "masks absent: n/a";
  EXPECT_EQ(html.find("&ndash;"), std::string::npos);
}

TEST(ReportCli, TrainWritesEvalJsonAndASelfContainedReport) {
  const auto& run = trained_run();
  ASSERT_TRUE(fs::exists(run / "report.html"));
  const auto html = read_text(run / "report.html");
  EXPECT_EQ(html.find("http://"), std::string::npos) << "no network needed";
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_NE(html.find("data:image/svg+xml;base64,"), std::string::npos);
  EXPECT_NE(html.find("Confusion matrix"), std::string::npos);
  const auto eval = nlohmann::json::parse(read_text(run / "eval.json"));
  EXPECT_EQ(eval.at("count").get<int>(), 100);
  EXPECT_GE(eval.at("decoy").at("cam_mass_share").get<double>(), 0.0) << "shapes with the cue has decoy masks";
  // `batchcam report` rewrites it from the checkpoint.
  fs::remove(run / "report.html");
  const auto r = cli("report " + run.string());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(run / "report.html"));
}

TEST(ReportCli, EvalIsStableAndExplainWritesPicturesAndStatistics) {
  const auto& run = trained_run();
  // A run directory means its best.pt: the same numbers as naming the file.
  const auto a = cli("eval " + run.string() + " --faithfulness-count 50 --randomization-count 20 --out " +
                     (run.parent_path() / "a.json").string());
  const auto b = cli("eval " + (run / "best.pt").string() + " --json --faithfulness-count 50 --randomization-count 20");
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  auto ja = nlohmann::json::parse(read_text(run.parent_path() / "a.json")), jb = nlohmann::json::parse(b.out);
  EXPECT_EQ(ja.at("checkpoint"), jb.at("checkpoint")) << "the run directory's best.pt";
  for (const char* key : {"timing", "provenance"}) ja.erase(key), jb.erase(key);
  EXPECT_EQ(ja, jb) << "the same checkpoint gives the same numbers";
  const auto table = cli("eval " + run.string() + " --faithfulness-count 20 --randomization-count 0");
  EXPECT_NE(table.out.find("deletion AUC"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("LeRF: accuracy %"), std::string::npos) << table.out;
  EXPECT_EQ(ja.at("faithfulness").at("road").at("lerf_accuracy").size(), 9u);
  const auto no_road =
      cli("eval " + (run / "best.pt").string() + " --json --faithfulness-count 20 --randomization-count 0 --no-road");
  ASSERT_EQ(no_road.code, 0) << no_road.out;
  const auto without = nlohmann::json::parse(no_road.out);
  EXPECT_TRUE(without.at("faithfulness").at("road").is_null()) << no_road.out;
  EXPECT_FALSE(without.at("faithfulness").at("confidence").at("average_drop").is_null());
  const auto mismatch = cli("eval " + run.string() + " --dataset cifar10 --data-dir /nonexistent");
  EXPECT_EQ(mismatch.code, 1) << mismatch.out;

  const auto out = run.parent_path() / "explained";
  const auto e = cli("explain " + run.string() + " --count 6 --out " + out.string());
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_TRUE(fs::exists(out / "images" / "0005.png"));
  const auto csv = read_text(out / "cam_stats.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7) << csv;
  const auto picture = batchcam::io::read_image((out / "images" / "0000.png").string());
  EXPECT_EQ(picture.height, 4 * 28);
  EXPECT_EQ(picture.width, 4 * (4 * 28 + 2) - 2) << "image, CAM, overlay, reconstruction";
  const auto files = cli("explain " + (run / "last.pt").string() + " --images " + (out / "images" / "0000.png").string() +
                         " --target circle --out " + (out / "files").string());
  EXPECT_EQ(files.code, 0) << files.out;
  const auto bad = cli("explain " + run.string() + " --target nosuchclass --out " + (out / "bad").string());
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("--target 'nosuchclass'"), std::string::npos) << bad.out;
}

TEST(ReportCli, HeadlessChromiumLoadsEveryPictureAndRendersThePage) {
  const auto browser = chromium();
  if (browser.empty()) GTEST_SKIP() << "chromium is not installed (scripts/install-deps.sh --test installs it)";
  const auto& run = trained_run();
  const auto profile = run.parent_path() / "chromium-profile";
  const std::string flags = " --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking "
                            "--disable-component-update --disable-sync --no-default-browser-check --user-data-dir=" +
                            profile.string() + " --virtual-time-budget=10000 ";
  const std::string url = "file://" + (run / "report.html").string();
  const auto dom = shell(browser + flags + "--dump-dom " + url);
  ASSERT_EQ(dom.code, 0) << dom.out.substr(0, 2000);
  // 4 plots (3 training curves, ROAD), the prototypes, the colour bar and 4 explained images per
  // class (10), all decoded; no script error.
  EXPECT_NE(dom.out.find("data-images-loaded=\"46\""), std::string::npos) << dom.out.substr(0, 500);
  EXPECT_NE(dom.out.find("data-images-broken=\"0\""), std::string::npos);
  EXPECT_EQ(dom.out.find("data-error=\""), std::string::npos) << "a script error on the page";
  const auto png = run.parent_path() / "report.png";
  const auto shot = shell(browser + flags + "--window-size=1280,2400 --screenshot=" + png.string() + " " + url);
  ASSERT_TRUE(fs::exists(png)) << shot.out.substr(0, 2000);
  const auto image = batchcam::io::read_image(png.string());
  EXPECT_EQ(image.width, 1280);
  size_t non_white = 0;
  for (const auto v : image.pixels) non_white += v < 200;
  EXPECT_GT(non_white, image.pixels.size() / 50) << "text, plots and pictures are drawn";
}

// The acceptance run of "your images at real size": ResNet-18 fine-tuned on a folder of
// 224 px RGB photographs of three classes (images of several sizes and aspect ratios,
// streamed, with the training crop), from torchvision weights saved by Python where Python's
// torch is installed; class names carried through checkpoint, explain and export; and the
// report laid out within a 1400 px wide window (headless Chromium, where installed).
TEST(ReportCli, AResNet18FineTunedOn224PixelPhotosGivesAReportThatFitsTheWindow) {
  const auto root = scratch() / "photos";
  const auto dir = root / "images";
  torch::manual_seed(0);
  const std::vector<std::string> classes = {"disk", "square", "stripes"};
  for (size_t c = 0; c < classes.size(); ++c) {
    fs::create_directories(dir / classes[c]);
    for (int i = 0; i < 8; ++i) {
      // Noise of a random size around 224 px, with the class's figure at a random place.
      const int64_t h = 200 + 13 * i, w = 330 - 11 * i;
      auto image = torch::randint(60, 140, {h, w, 3}, torch::kUInt8);
      const int64_t top = 30 + (17 * i) % (h - 120), left = 30 + (29 * i) % (w - 120);
      auto figure = image.slice(0, top, top + 80).slice(1, left, left + 80);
      const std::vector<std::vector<int>> colours = {{220, 40, 40}, {40, 200, 60}, {40, 60, 220}};
      for (int k = 0; k < 3; ++k) figure.select(2, k).fill_(colours[c][static_cast<size_t>(k)]);
      if (c == 2) figure.slice(1, 0, 80, 16).fill_(0);  // stripes
      batchcam::io::write_png((dir / classes[c] / ("photo_" + std::to_string(i) + ".png")).string(), image);
    }
  }
  std::string init;
  const std::string python = "/usr/bin/python3";
  if (std::system((python + " -c 'import torch, torchvision' > /dev/null 2>&1").c_str()) == 0) {
    // ImageNet's 1000 classes: the classifier is skipped and said so.
    const auto weights = (root / "resnet18.pt").string();
    const auto cmd = python + " " + BATCHCAM_SOURCE_DIR + "/tests/models/torchvision_weights.py " + weights + " " +
                     (root / "io.pt").string() + " 1000 64";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    init = " --init-weights " + weights;
  } else {
    std::cout << "[   NOTE   ] without python3-torchvision: trained from random weights\n";
  }
  const auto train = cli("train --dataset folder --data-dir " + dir.string() +
                         " --image-size 224 --model resnet18 --epochs 1 --batch-size 6 --lr 0.001 "
                         "--augment crop-jitter-flip --workers 2 --out-dir " + root.string() + " --run-name run" + init);
  ASSERT_EQ(train.code, 0) << train.out;
  if (!init.empty()) {
    EXPECT_NE(train.out.find("classifier"), std::string::npos) << train.out;
  }
  const auto run = root / "run";
  const auto eval = nlohmann::json::parse(read_text(run / "eval.json"));
  EXPECT_EQ(eval.at("class_names"), nlohmann::json(classes));
  EXPECT_EQ(eval.at("count").get<int>(), 6) << "val_split 0.2 of 8 images per class: 2 per class held out";

  // Class names from the checkpoint: explain --target by name, outputs named after the input.
  const auto input = dir / "square" / "photo_3.png";
  const auto explained = cli("explain " + run.string() + " --images " + input.string() + " --target square --out " +
                             (root / "explained").string());
  ASSERT_EQ(explained.code, 0) << explained.out;
  EXPECT_TRUE(fs::exists(root / "explained" / "images" / "0000-photo_3.png"));
  const auto csv = read_text(root / "explained" / "cam_stats.csv");
  EXPECT_NE(csv.find(input.string() + "\",,"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",square,"), std::string::npos) << csv;
  const auto exported = cli("export " + run.string() + " " + (root / "model.pt").string());
  ASSERT_EQ(exported.code, 0) << exported.out;
  EXPECT_EQ(nlohmann::json::parse(read_text(root / "model.json")).at("class_names"), nlohmann::json(classes));

  const auto html = read_text(run / "report.html");
  EXPECT_NE(html.find("min-max normalised per image"), std::string::npos);
  EXPECT_NE(html.find("true square, predicted "), std::string::npos) << "panels say true and predicted class";
  const auto browser = chromium();
  if (browser.empty()) GTEST_SKIP() << "chromium is not installed (scripts/install-deps.sh --test installs it)";
  const std::string flags = " --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking "
                            "--disable-component-update --disable-sync --no-default-browser-check --user-data-dir=" +
                            (root / "profile").string() + " --virtual-time-budget=10000 --window-size=1400,1000 ";
  const auto dom = shell(browser + flags + "--dump-dom file://" + (run / "report.html").string());
  ASSERT_EQ(dom.code, 0) << dom.out.substr(0, 2000);
  size_t pictures = 0;
  for (size_t at = html.find("<img "); at != std::string::npos; at = html.find("<img ", at + 1)) ++pictures;
  EXPECT_NE(dom.out.find("data-images-loaded=\"" + std::to_string(pictures) + "\""), std::string::npos)
      << dom.out.substr(0, 300);
  EXPECT_NE(dom.out.find("data-images-broken=\"0\""), std::string::npos);
  const auto at = dom.out.find("data-page-width=\"");
  ASSERT_NE(at, std::string::npos);
  EXPECT_LE(std::stoi(dom.out.substr(at + 17)), 1400) << "the page is laid out within the window: no sideways scrolling";
}
