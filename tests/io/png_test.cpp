#include "batchcam/eval/pictures.h"
#include "batchcam/data/image_files.h"
#include "batchcam/data/shapes.h"
#include "batchcam/io/image.h"
#include "batchcam/io/png.h"
#include "batchcam/io/sha256.h"
#include "batchcam/models/registry.h"
#include "support/process.h"

#include <gtest/gtest.h>
#include <png.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <sstream>

using namespace batchcam;

namespace {
// Decodes with libpng's simplified API, independently of the encoder's code path.
torch::Tensor decode(const std::string& bytes, bool rgb) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  EXPECT_TRUE(png_image_begin_read_from_memory(&image, bytes.data(), bytes.size()));
  image.format = rgb ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  auto out = rgb ? torch::empty({image.height, image.width, 3}, torch::kUInt8)
                 : torch::empty({image.height, image.width}, torch::kUInt8);
  EXPECT_TRUE(png_image_finish_read(&image, nullptr, out.data_ptr<uint8_t>(), 0, nullptr));
  return out;
}
}  // namespace

TEST(Png, GrayAndRgbRoundTripExactly) {
  const auto gray = torch::randint(0, 256, {5, 7}, torch::kLong).to(torch::kUInt8);
  EXPECT_TRUE(decode(io::encode_png(gray), false).equal(gray));
  const auto rgb = torch::randint(0, 256, {4, 3, 3}, torch::kLong).to(torch::kUInt8);
  EXPECT_TRUE(decode(io::encode_png(rgb), true).equal(rgb));
  EXPECT_THROW(io::encode_png(torch::zeros({4, 4, 2}, torch::kUInt8)), c10::Error);
  EXPECT_THROW(io::encode_png(torch::zeros({4, 4})), c10::Error);
}

TEST(Png, WriteIsAtomicAndReportsThePath) {
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-png-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = (dir / "a.png").string();
  io::write_png(path, torch::zeros({2, 2}, torch::kUInt8));
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_TRUE(decode(ss.str(), false).equal(torch::zeros({2, 2}, torch::kUInt8)));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 1);  // no temporary left
  try {
    io::write_png((dir / "missing" / "b.png").string(), torch::zeros({2, 2}, torch::kUInt8));
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing/b.png"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(HeatColors, RampIsDarkAtZeroBrightAtOneAndMonotoneInBrightness) {
  const auto ramp = eval::heat_colors(torch::linspace(0, 1, 101).view({1, -1})).to(torch::kFloat)[0];
  const auto brightness = ramp.sum(1);
  EXPECT_LT(brightness[0].item<float>(), 20);
  EXPECT_GT(brightness[100].item<float>(), 600);
  EXPECT_TRUE((brightness.slice(0, 1) - brightness.slice(0, 0, -1)).ge(0).all().item<bool>());
}

TEST(Pictures, GridsHaveTheDocumentedSizes) {
  EXPECT_EQ(eval::prototype_strip(torch::rand({10, 28, 28}), 2).sizes(), (std::vector<int64_t>{56, 10 * 58 - 2, 3}));
  const auto d = data::generate_shapes(30, 28, 0, data::SpuriousCue::none, 0.05);
  models::ModelSpec spec;
  spec.name = "simple-cnn";
  auto model = models::make_model(spec);
  const auto grid = eval::cam_examples(*model, d, data::Normalization::fit(d.images), 2);
  EXPECT_EQ(grid.sizes(), (std::vector<int64_t>{10 * 58 - 2, 3 * 58 - 2, 3}));
  EXPECT_TRUE(model->is_training());  // mode restored
}

TEST(Pictures, PanelsShowColourImagesInColour) {
  // A red-green image [3, 2, 2] and a map that is 1 on the left column and 0 on the right.
  auto image = torch::zeros({3, 2, 2});
  image[0].fill_(1.0);
  image[1].fill_(0.5);
  const auto map = torch::tensor({{1.0f, 0.0f}, {1.0f, 0.0f}});
  const auto panels = eval::explanation_panels(image, map, 1);
  ASSERT_EQ(panels.sizes(), (std::vector<int64_t>{2, 4 * (2 + 2) - 2, 3}));
  EXPECT_EQ(panels[0][0][0].item<int>(), 255) << "the image panel keeps red";
  EXPECT_EQ(panels[0][0][1].item<int>(), 128) << "and green";
  EXPECT_EQ(panels[0][0][2].item<int>(), 0);
  const auto reconstruction = panels.slice(1, 12, 14);  // CAM x image
  EXPECT_EQ(reconstruction[0][0][0].item<int>(), 255) << "where the map is 1: the image";
  EXPECT_EQ(reconstruction[0][1].sum().item<int>(), 0) << "where it is 0: black";
  const auto blended = eval::overlay(image, map);
  EXPECT_GT(blended[0][1][0].item<int>(), blended[0][1][2].item<int>() + 60) << "the overlay keeps the image's red";
  // A gray image is drawn in gray; the colour bar runs from dark to bright.
  const auto gray = eval::explanation_panels(torch::full({1, 2, 2}, 0.25), map, 1);
  EXPECT_EQ(gray[0][0][0].item<int>(), gray[0][0][2].item<int>());
  const auto bar = eval::color_bar(64, 4).to(torch::kInt).sum(2);
  EXPECT_LT(bar[0][0].item<int>(), bar[0][63].item<int>());
  EXPECT_EQ(eval::display_zoom(28), 4);
  EXPECT_EQ(eval::display_zoom(224), 1);
}


TEST(Pictures, ExplanationsInBatchesEqualOneByOneAndTheCsvNamesEveryFile) {
  namespace fs = std::filesystem;
  const auto d = data::generate_shapes(5, 28, 3, data::SpuriousCue::none, 0.05);
  const auto norm = data::Normalization::fit(d.images);
  torch::manual_seed(0);
  auto model = models::make_model({"simple-cnn", 1, 10, 28, ""});
  // The test images as files, one with a comma and quotes in its name.
  const auto dir = fs::temp_directory_path() / ("batchcam-explain-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::vector<std::string> paths;
  for (int64_t i = 0; i < d.size(); ++i) {
    paths.push_back((dir / (i == 1 ? "a,\"b\".png" : "img" + std::to_string(i) + ".png")).string());
    io::write_png(paths.back(), d.images[i][0]);
  }
  const auto files = data::unlabelled_images(paths, 28, 1, io::kMaxImagePixels, d.class_names);
  const auto collect = [&](const data::Dataset& inputs, int64_t batch_size) {
    eval::ExplainOptions o;
    o.batch_size = batch_size;
    std::vector<eval::ExplainedSample> samples;
    std::vector<torch::Tensor> panels;
    eval::explain_images(*model, inputs, norm, o, [&](const eval::ExplainedSample& s, const torch::Tensor& p) {
      samples.push_back(s);
      panels.push_back(p);
    });
    return std::make_pair(samples, panels);
  };
  const auto [one, one_panels] = collect(d, 1);
  const auto [batched, batched_panels] = collect(files, 3);
  ASSERT_EQ(one.size(), 5u);
  ASSERT_EQ(batched.size(), 5u);
  EXPECT_TRUE(model->is_training()) << "mode restored";
  const auto logits = [&] {
    torch::NoGradGuard no_grad;
    model->eval();
    const auto out = model->forward(norm.apply(d.images));
    model->train();
    return out;
  }();
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(one[i].source, "test:" + std::to_string(i));
    EXPECT_EQ(batched[i].source, paths[i]);
    EXPECT_EQ(one[i].label, d.labels[static_cast<int64_t>(i)].item<int64_t>());
    EXPECT_EQ(batched[i].label, -1) << "files carry no label";
    EXPECT_EQ(one[i].predicted, logits[static_cast<int64_t>(i)].argmax().item<int64_t>());
    EXPECT_EQ(one[i].target, one[i].predicted) << "no --target: the predicted class";
    EXPECT_NEAR(one[i].target_probability,
                torch::softmax(logits[static_cast<int64_t>(i)], 0)[one[i].target].item<double>(), 1e-5);
    // The same pixels decoded from the files, explained 3 at a time.
    EXPECT_EQ(batched[i].target, one[i].target);
    EXPECT_NEAR(batched[i].target_probability, one[i].target_probability, 1e-5);
    EXPECT_NEAR(batched[i].cam_mean, one[i].cam_mean, 1e-5);
    EXPECT_NEAR(batched[i].top_decile_mass, one[i].top_decile_mass, 1e-5);
    if (one[i].cam_mean > 0) {
      EXPECT_GE(one[i].top_decile_mass, 78.0 / 784 - 1e-9) << "the top 78 of 784 pixels hold at least their share";
    }
    EXPECT_LE((batched_panels[i].to(torch::kInt) - one_panels[i].to(torch::kInt)).abs().max().item<int>(), 1);
  }
  eval::ExplainOptions fixed;
  fixed.target = 2;
  const auto out = dir / "out";
  const auto written = eval::write_explanations(out.string(), *model, files, norm, fixed);
  ASSERT_EQ(written.size(), 5u);
  for (const auto& s : written) EXPECT_EQ(s.target, 2);
  EXPECT_TRUE(fs::exists(out / "images" / "0001-a,\"b\".png"));
  EXPECT_TRUE(fs::exists(out / "class-2.png"));
  EXPECT_FALSE(fs::exists(out / "class-0.png")) << "one explained class, one grid";
  std::ifstream csv(out / "cam_stats.csv");
  std::vector<std::string> lines;
  for (std::string line; std::getline(csv, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[2].rfind("1,\"" + (dir / "a,\"\"b\"\".png").string() + "\",,", 0), 0u) << lines[2];
  EXPECT_NE(lines[2].find("," + d.class_names[2] + ","), std::string::npos) << "the target by name: " << lines[2];
  fs::remove_all(dir);
}

// SHA-256 (src/io/sha256.cpp) against FIPS 180-4's examples and coreutils' sha256sum on
// every length around the 64-byte block and its 56-byte padding limit, and on a file read in
// several buffers.
TEST(Sha256, FipsExamplesAndSha256sumAgree) {
  namespace fs = std::filesystem;
  const auto hash = [](const std::string& s) { return batchcam::io::sha256_bytes(s.data(), s.size()); };
  EXPECT_EQ(hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hash(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

  const auto dir = fs::temp_directory_path() / ("batchcam-sha256-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string bytes;
  for (int n = 0; n <= 130; ++n) {
    const auto file = dir / ("n" + std::to_string(n));
    std::ofstream(file, std::ios::binary) << bytes;
    const auto expected = test_support::run_shell("sha256sum " + file.string() + " | cut -c1-64");
    ASSERT_EQ(expected.code, 0);
    EXPECT_EQ(hash(bytes) + "\n", expected.out) << n << " bytes";
    bytes += static_cast<char>((n * 37 + 11) % 256);
  }
  const auto big = dir / "big";
  std::string large(3 << 20, '\0');
  for (size_t i = 0; i < large.size(); ++i) large[i] = static_cast<char>((i * 2654435761u) >> 13);
  std::ofstream(big, std::ios::binary) << large;
  const auto expected = test_support::run_shell("sha256sum " + big.string() + " | cut -c1-64");
  EXPECT_EQ(batchcam::io::sha256_file(big.string()) + "\n", expected.out);
  EXPECT_THROW(batchcam::io::sha256_file((dir / "missing").string()), std::runtime_error);
  fs::remove_all(dir);
}
