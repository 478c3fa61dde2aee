// File-based datasets: fixtures are written by the tests themselves; the real MNIST and
// Fashion-MNIST files in ../shared/data are checked when present.

#include "batchcam/data/datasets.h"
#include "batchcam/data/idx.h"
#include "batchcam/data/shapes.h"
#include "batchcam/io/download.h"
#include "batchcam/io/sha256.h"
#include "batchcam/io/image.h"
#include "batchcam/io/png.h"

#include <gtest/gtest.h>
#include <jpeglib.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

using namespace batchcam;
namespace fs = std::filesystem;

namespace {
fs::path fresh_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("batchcam-data-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string idx_bytes(std::vector<uint32_t> dims, const std::vector<uint8_t>& values, uint8_t type = 0x08) {
  std::string out = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (const uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((d >> shift) & 0xFF);
  }
  out.append(values.begin(), values.end());
  return out;
}

std::string gzip_bytes(const std::string& raw) {
  z_stream zs{};
  deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, raw.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// The message of the std::runtime_error that `f` throws ("" when it does not throw).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

std::vector<uint8_t> iota_bytes(size_t n, uint8_t start = 0) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(start + i);
  return v;
}

// 2 images of 3 x 4 and their labels, as IDX files (gzip'd when asked).
void write_tiny_mnist(const fs::path& dir, bool gz) {
  const auto images = idx_bytes({2, 3, 4}, iota_bytes(24, 10));
  const auto labels = idx_bytes({2}, {7, 2});
  write_bytes(dir / (gz ? "images.gz" : "images"), gz ? gzip_bytes(images) : images);
  write_bytes(dir / (gz ? "labels.gz" : "labels"), gz ? gzip_bytes(labels) : labels);
}

const std::vector<std::string> kTen = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};

void write_jpeg(const fs::path& path, int width, int height, uint8_t gray, bool cmyk = false) {
  jpeg_compress_struct info{};
  jpeg_error_mgr error{};
  info.err = jpeg_std_error(&error);
  jpeg_create_compress(&info);
  std::FILE* file = std::fopen(path.c_str(), "wb");
  jpeg_stdio_dest(&info, file);
  info.image_width = width;
  info.image_height = height;
  info.input_components = cmyk ? 4 : 3;
  info.in_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, 95, TRUE);
  jpeg_start_compress(&info, TRUE);
  std::vector<uint8_t> row(static_cast<size_t>(width) * info.input_components, gray);
  while (info.next_scanline < info.image_height) {
    JSAMPROW r = row.data();
    jpeg_write_scanlines(&info, &r, 1);
  }
  jpeg_finish_compress(&info);
  std::fclose(file);
  jpeg_destroy_compress(&info);
}

fs::path shared_data(const std::string& name) { return fs::path(BATCHCAM_SOURCE_DIR) / ".." / "shared" / "data" / name; }
}  // namespace

TEST(Idx, RawAndGzipFilesDecodeToTheExactPixelsAndLabels) {
  const auto dir = fresh_dir("idx");
  for (const bool gz : {false, true}) {
    write_tiny_mnist(dir, gz);
    const auto d = data::idx_dataset((dir / (gz ? "images.gz" : "images")).string(),
                                     (dir / (gz ? "labels.gz" : "labels")).string(), kTen);
    ASSERT_EQ(d.images.sizes(), (torch::IntArrayRef{2, 1, 3, 4}));
    EXPECT_EQ(d.images.scalar_type(), torch::kUInt8);
    EXPECT_TRUE(torch::equal(d.images.flatten(), torch::arange(10, 34).to(torch::kUInt8))) << gz;
    EXPECT_TRUE(torch::equal(d.labels, torch::tensor({7, 2}, torch::kInt64)));
  }
  fs::remove_all(dir);
}

TEST(Idx, EveryKindOfBadFileGetsAMessageNamingTheFileAndTheProblem) {
  const auto good = idx_bytes({2, 3, 4}, iota_bytes(24));
  const auto check = [](const std::string& bytes, const std::string& problem) {
    const auto message = error_of([&] { data::parse_idx(bytes, "some/file.idx"); });
    EXPECT_EQ(message.rfind("some/file.idx: ", 0), 0u) << message;
    EXPECT_NE(message.find(problem), std::string::npos) << "expected '" << problem << "' in: " << message;
  };
  check(std::string("\x01\x02\x08\x03", 4) + good.substr(4), "wrong magic number");
  check(idx_bytes({2}, {1, 2}, 0x0D), "unsupported IDX element type 0x0D");
  check(good.substr(0, good.size() - 5), "truncated");
  check(good.substr(0, 9), "truncated IDX header");
  check(good + "xyz", "3 bytes after the 24 values");
  check(idx_bytes({0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, {1}), "truncated");  // no overflow to a small count
  check("", "too short");
  const auto gz = gzip_bytes(good);
  check(gz.substr(0, gz.size() / 2), "truncated gzip stream");
  std::string corrupt = gz;
  for (size_t i = 12; i < corrupt.size() - 8; ++i) corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5A);
  check(corrupt, "corrupt gzip data");

  // Dataset-level checks: rank, count and label range, naming the file at fault.
  const auto dir = fresh_dir("idx-bad");
  write_bytes(dir / "images", good);
  write_bytes(dir / "labels3", idx_bytes({3}, {1, 2, 3}));
  write_bytes(dir / "labels-bad", idx_bytes({2}, {1, 10}));
  write_bytes(dir / "labels-2d", idx_bytes({2, 1}, {1, 2}));
  const auto load = [&](const std::string& images, const std::string& labels) {
    return error_of([&] { data::idx_dataset((dir / images).string(), (dir / labels).string(), kTen); });
  };
  EXPECT_NE(load("images", "labels3").find("labels3: 3 labels for the 2 images"), std::string::npos);
  EXPECT_NE(load("images", "labels-bad").find("labels-bad: label 10 at index 1 is out of range [0, 10)"),
            std::string::npos);
  EXPECT_NE(load("images", "labels-2d").find("expected a label file of 1 dimension"), std::string::npos);
  EXPECT_NE(load("labels3", "labels3").find("expected an image file of 3 dimensions"), std::string::npos);
  EXPECT_NE(load("missing", "labels3").find("missing: no such file"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Decoy, SwatchShadeAndCornerFollowTheRule) {
  data::Dataset d;
  d.images = torch::zeros({400, 1, 28, 28}, torch::kUInt8);
  d.labels = torch::arange(400, torch::kInt64).remainder(10);
  d.class_names = kTen;
  auto test = d;
  test.images = d.images.clone();
  data::add_decoy(d, /*random_class=*/false, 1);
  data::add_decoy(test, /*random_class=*/true, 2);
  std::set<int> corners;
  int test_shade_differs = 0;
  for (int64_t i = 0; i < 400; ++i) {
    const auto mask = d.decoy_masks[i];
    ASSERT_EQ(mask.sum().item<int64_t>(), 16) << "a 4 x 4 swatch";
    const auto ys = mask.nonzero().select(1, 0), xs = mask.nonzero().select(1, 1);
    const int64_t top = ys.min().item<int64_t>(), left = xs.min().item<int64_t>();
    ASSERT_TRUE((top == 0 || top == 24) && (left == 0 || left == 24)) << "in a corner";
    EXPECT_EQ(ys.max().item<int64_t>() - top, 3);
    corners.insert(static_cast<int>(top * 100 + left));
    const int64_t y = d.labels[i].item<int64_t>();
    EXPECT_TRUE(torch::equal(d.images[i][0].masked_select(mask),
                             torch::full({16}, 255 - 25 * y, torch::kUInt8)));
    EXPECT_EQ(d.images[i][0].masked_select(mask.logical_not()).sum().item<int64_t>(), 0) << "nothing else drawn";
    const auto test_shade = test.images[i][0].masked_select(test.decoy_masks[i]);
    EXPECT_EQ((255 - test_shade[0].item<int64_t>()) % 25, 0) << "a class shade";
    EXPECT_EQ(test_shade[0].item<int64_t>(), 255 - 25 * test.decoy_labels[i].item<int64_t>()) << "decoy_labels";
    EXPECT_EQ(d.decoy_labels[i].item<int64_t>(), y) << "training decoys encode the label";
    test_shade_differs += test_shade[0].item<int64_t>() != 255 - 25 * y;
  }
  EXPECT_EQ(corners.size(), 4u) << "all four corners are used";
  EXPECT_GT(test_shade_differs, 300) << "test shades are drawn at random (about 90% differ)";
}

TEST(Cifar10, BinaryBatchDecodesChannelPlanarRecords) {
  const auto dir = fresh_dir("cifar");
  std::string bytes;
  for (int r = 0; r < 3; ++r) {
    bytes += static_cast<char>(r * 4);  // labels 0, 4, 8
    for (int i = 0; i < 3072; ++i) bytes += static_cast<char>((i + r) % 251);
  }
  write_bytes(dir / "b.bin", bytes);
  const auto d = data::cifar10_batch((dir / "b.bin").string());
  ASSERT_EQ(d.images.sizes(), (torch::IntArrayRef{3, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(d.labels, torch::tensor({0, 4, 8}, torch::kInt64)));
  EXPECT_EQ(d.images[1][0][0][0].item<int>(), 1);            // record 1, red, first pixel
  EXPECT_EQ(d.images[2][1][0][0].item<int>(), (1024 + 2) % 251);  // record 2, green plane
  EXPECT_EQ(d.images[0][2][31][31].item<int>(), 3071 % 251);
  EXPECT_EQ(d.class_names.at(4), "deer");

  write_bytes(dir / "short.bin", bytes.substr(0, 5000));
  EXPECT_NE(error_of([&] { data::cifar10_batch((dir / "short.bin").string()); })
                .find("short.bin: truncated or not a CIFAR-10 binary batch"),
            std::string::npos);
  bytes[3073] = 10;
  write_bytes(dir / "label.bin", bytes);
  EXPECT_NE(error_of([&] { data::cifar10_batch((dir / "label.bin").string()); })
                .find("label 10 of record 1 is out of range"),
            std::string::npos);
  data::DatasetOptions o;
  o.name = "cifar10";
  o.dir = dir.string();
  EXPECT_NE(error_of([&] { data::load_dataset(o); }).find("missing data_batch_1.bin"), std::string::npos);
  fs::remove_all(dir);
}

data::FolderOptions folder_options(int64_t image_size, uint64_t seed) {
  data::FolderOptions o;
  o.image_size = image_size;
  o.seed = seed;
  return o;
}

torch::Tensor all_images(const data::Dataset& d) { return d.images_at(torch::arange(d.size(), torch::kInt64)); }

TEST(ImageFolder, PngAndJpegClassesAreStreamedAndLabelledBySortedFolderName) {
  const auto dir = fresh_dir("folder");
  for (const char* split : {"train", "test"}) {
    fs::create_directories(dir / split / "cat");
    fs::create_directories(dir / split / "ant");
    // ant: an 8 x 8 gray PNG of value 40; cat: a 16 x 8 RGB JPEG of value 200.
    io::write_png((dir / split / "ant" / "a.png").string(), torch::full({8, 8}, 40, torch::kUInt8));
    write_jpeg(dir / split / "cat" / "c.JPG", 16, 8, 200);
  }
  const auto s = data::image_folder(dir.string(), folder_options(8, 0));
  EXPECT_EQ(s.train.class_names, (std::vector<std::string>{"ant", "cat"}));
  ASSERT_TRUE(s.train.streamed()) << "folder images stay on disk until a batch asks for them";
  EXPECT_FALSE(s.train.images.defined());
  EXPECT_EQ(s.train.sample_name(1), (dir / "train" / "cat" / "c.JPG").string());
  const auto images = all_images(s.train);
  ASSERT_EQ(images.sizes(), (torch::IntArrayRef{2, 3, 8, 8})) << "RGB because one image is in colour";
  EXPECT_TRUE(torch::equal(s.train.labels, torch::tensor({0, 1}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(images[0], torch::full({3, 8, 8}, 40, torch::kUInt8))) << "gray replicated";
  EXPECT_LE((images[1].to(torch::kInt) - 200).abs().max().item<int>(), 2) << "JPEG, centre 8 x 8 of 16 x 8";
  EXPECT_EQ(s.test.size(), 2);

  // Without train/ and test/, a random fifth of each class (val_split 0.2) is the test split.
  const auto flat = fresh_dir("folder-flat");
  for (const char* cls : {"x", "y"}) {
    fs::create_directories(flat / cls);
    for (int i = 0; i < 10; ++i) {
      io::write_png((flat / cls / (std::to_string(i) + ".png")).string(), torch::full({4, 4}, i, torch::kUInt8));
    }
  }
  const auto f = data::image_folder(flat.string(), folder_options(4, 3));
  EXPECT_EQ(f.train.size(), 16);
  EXPECT_EQ(f.test.size(), 4);
  EXPECT_EQ(f.train.channels(), 1) << "gray when every image is gray";
  auto held_out = folder_options(4, 3);
  held_out.val_split = 0.3;
  const auto g = data::image_folder(flat.string(), held_out);
  EXPECT_EQ(g.test.size(), 6);
  EXPECT_EQ(g.test.labels.eq(0).sum().item<int64_t>(), 3) << "the share is taken from each class";
  // Train and test never share a file.
  std::set<std::string> train_files;
  for (int64_t i = 0; i < g.train.size(); ++i) train_files.insert(g.train.files->name(i));
  for (int64_t i = 0; i < g.test.size(); ++i) EXPECT_EQ(train_files.count(g.test.files->name(i)), 0u) << i;

  // Bad input, found when the folder is opened (headers are read then): unreadable image,
  // empty class folder, a single class, an oversized image.
  write_bytes(flat / "x" / "broken.png", "\x89PNG not really");
  EXPECT_NE(error_of([&] { data::image_folder(flat.string(), folder_options(4, 3)); }).find("broken.png: unreadable PNG"),
            std::string::npos);
  fs::remove(flat / "x" / "broken.png");
  write_bytes(flat / "x" / "text.jpg", "hello");
  EXPECT_NE(error_of([&] { data::image_folder(flat.string(), folder_options(4, 3)); })
                .find("text.jpg: not a PNG or JPEG image"),
            std::string::npos);
  fs::remove(flat / "x" / "text.jpg");
  write_jpeg(flat / "x" / "print.jpg", 4, 4, 100, /*cmyk=*/true);
  EXPECT_NE(error_of([&] { data::image_folder(flat.string(), folder_options(4, 3)); })
                .find("print.jpg: unreadable JPEG (CMYK colour is not supported; save it as RGB)"),
            std::string::npos);
  fs::remove(flat / "x" / "print.jpg");
  auto small_limit = folder_options(4, 3);
  small_limit.max_pixels = 15;
  EXPECT_NE(error_of([&] { data::image_folder(flat.string(), small_limit); }).find("exceeds the limit of 15 pixels"),
            std::string::npos);
  fs::create_directories(flat / "z");
  EXPECT_NE(error_of([&] { data::image_folder(flat.string(), folder_options(4, 3)); }).find("z: empty class folder"),
            std::string::npos);
  fs::remove_all(flat / "z");
  fs::remove_all(flat / "y");
  EXPECT_NE(error_of([&] { data::image_folder(flat.string(), folder_options(4, 3)); })
                .find("expected one subfolder per class"),
            std::string::npos);
  fs::remove_all(dir);
  fs::remove_all(flat);
}

TEST(ImageFolder, ImagesKeepTheirAspectRatioAndTheCentreIsKept) {
  // A 30 x 10 RGB image in three vertical bands (0 | 200 | 90): scaled to 6 px it is
  // 18 x 6 and its centre 6 x 6 is the middle band; squashing it would mix all three.
  const auto dir = fresh_dir("aspect");
  auto pixels = torch::zeros({10, 30, 3}, torch::kUInt8);
  pixels.narrow(1, 10, 10).fill_(200);
  pixels.narrow(1, 20, 10).fill_(90);
  io::write_png((dir / "wide.png").string(), pixels);
  const auto x = data::load_image((dir / "wide.png").string(), 6, 3);
  ASSERT_EQ(x.sizes(), (torch::IntArrayRef{3, 6, 6}));
  EXPECT_LE((x.to(torch::kInt) - 200).abs().max().item<int>(), 1) << x;
  // Tall images the same way; gray output averages RGB with the luminance weights.
  io::write_png((dir / "tall.png").string(), pixels.transpose(0, 1).contiguous());
  const auto gray = data::load_image((dir / "tall.png").string(), 5, 1);
  ASSERT_EQ(gray.sizes(), (torch::IntArrayRef{1, 5, 5}));
  EXPECT_LE((gray.to(torch::kInt) - 200).abs().max().item<int>(), 1);
  // The training crop: each draw a region of the image, in range, reproducible from its seed.
  const data::CropJitter crop;
  data::Rng a(7), b(7), c(8);
  const auto first = data::load_image((dir / "wide.png").string(), 6, 3, io::kMaxImagePixels, &crop, &a);
  EXPECT_TRUE(torch::equal(first, data::load_image((dir / "wide.png").string(), 6, 3, io::kMaxImagePixels, &crop, &b)));
  bool differs = false;
  for (int i = 0; i < 5 && !differs; ++i) {
    differs = !torch::equal(first, data::load_image((dir / "wide.png").string(), 6, 3, io::kMaxImagePixels, &crop, &c));
  }
  EXPECT_TRUE(differs) << "another seed, another crop";
  fs::remove_all(dir);
}

TEST(ImageFolder, ResizingMatchesLibTorchsAntialiasedBilinearInterpolation) {
  // The decoding threads resample with plain loops; LibTorch's interpolate(antialias=True)
  // (PIL's filter) is the reference, shrinking and enlarging, to within rounding.
  const auto dir = fresh_dir("resample");
  torch::manual_seed(3);
  const auto pixels = torch::randint(0, 256, {30, 40, 3}, torch::kUInt8);
  io::write_png((dir / "noise.png").string(), pixels);
  const auto centre = pixels.slice(1, 5, 35).permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32);  // 30 x 30
  namespace F = torch::nn::functional;
  for (const int64_t side : {12, 30, 50}) {
    const auto expected = F::interpolate(centre, F::InterpolateFuncOptions()
                                                     .size(std::vector<int64_t>{side, side})
                                                     .mode(torch::kBilinear)
                                                     .align_corners(false)
                                                     .antialias(true))
                              .squeeze(0);
    const auto got = data::load_image((dir / "noise.png").string(), side, 3).to(torch::kFloat32);
    EXPECT_LE((got - expected).abs().max().item<float>(), 0.51f) << "side " << side;
  }
  fs::remove_all(dir);
}

TEST(ImageFolder, SubsetsAreStratifiedAndRandom) {
  // 60 samples of classes 0, 1, 2 in proportion 1 : 2 : 3, sorted by class as a folder is.
  std::vector<int64_t> labels;
  for (int64_t c = 0; c < 3; ++c) labels.insert(labels.end(), static_cast<size_t>(10 * (c + 1)), c);
  const auto count = [&](const std::vector<int64_t>& picked, int64_t c) {
    return std::count_if(picked.begin(), picked.end(), [&](int64_t i) { return labels[static_cast<size_t>(i)] == c; });
  };
  const auto twelve = data::stratified_subset(labels, 3, 12, 0);
  ASSERT_EQ(twelve.size(), 12u);
  EXPECT_EQ(count(twelve, 0), 2);
  EXPECT_EQ(count(twelve, 1), 4);
  EXPECT_EQ(count(twelve, 2), 6);
  EXPECT_EQ(std::set<int64_t>(twelve.begin(), twelve.end()).size(), 12u) << "no sample twice";
  // Tiny subsets still hold every class; the draw depends on the seed and only on it.
  const auto four = data::stratified_subset(labels, 3, 4, 0);
  for (int64_t c = 0; c < 3; ++c) EXPECT_GE(count(four, c), 1) << "class " << c;
  EXPECT_EQ(data::stratified_subset(labels, 3, 12, 0), twelve);
  EXPECT_NE(data::stratified_subset(labels, 3, 12, 1), twelve);
  EXPECT_EQ(data::stratified_subset(labels, 3, 0, 0).size(), 60u) << "0 = all";

  // Through a folder: --train-size 12 --test-size 4 on two sorted classes keeps both.
  const auto dir = fresh_dir("stratified");
  for (const char* cls : {"a", "b"}) {
    fs::create_directories(dir / cls);
    for (int i = 0; i < 10; ++i) {
      io::write_png((dir / cls / (std::to_string(i) + ".png")).string(), torch::full({4, 4}, i, torch::kUInt8));
    }
  }
  auto o = folder_options(4, 0);
  o.train_size = 12;
  o.test_size = 2;
  const auto s = data::image_folder(dir.string(), o);
  EXPECT_EQ(s.train.size(), 12);
  EXPECT_EQ(s.train.labels.eq(0).sum().item<int64_t>(), 6);
  EXPECT_EQ(s.test.size(), 2);
  EXPECT_EQ(s.test.labels.eq(1).sum().item<int64_t>(), 1);
  fs::remove_all(dir);
}

TEST(ImageFolder, BatchesDoNotDependOnWorkersOrOnTheOrderTheyAreAskedFor) {
  const auto dir = fresh_dir("workers");
  for (int c = 0; c < 3; ++c) {
    fs::create_directories(dir / std::to_string(c));
    for (int i = 0; i < 8; ++i) {
      auto pixels = torch::randint(0, 256, {12 + i, 20 - i, 3}, torch::kUInt8);
      io::write_png((dir / std::to_string(c) / (std::to_string(i) + ".png")).string(), pixels);
    }
  }
  const auto batches = [&](int64_t workers, bool crop, bool backwards) {
    auto o = folder_options(10, 0);
    o.workers = workers;
    const auto s = data::image_folder(dir.string(), o);
    data::BatchIterator it(s.train, data::Normalization::fit(s.train), 4, true, 5, true);
    it.set_augmentation({0, crop, crop});
    it.set_epoch(2);
    std::vector<torch::Tensor> out(static_cast<size_t>(it.size()));
    for (int64_t k = 0; k < it.size(); ++k) {
      const int64_t i = backwards ? it.size() - 1 - k : k;
      out[static_cast<size_t>(i)] = it.get(i).x;
    }
    return torch::cat(out);
  };
  for (const bool crop : {false, true}) {
    const auto reference = batches(0, crop, false);
    EXPECT_TRUE(torch::equal(reference, batches(2, crop, false))) << "2 workers, crop " << crop;
    EXPECT_TRUE(torch::equal(reference, batches(3, crop, true))) << "3 workers, backwards, crop " << crop;
  }
  EXPECT_FALSE(torch::equal(batches(0, false, false), batches(0, true, false))) << "the crop changes the images";
  // A file that breaks after the folder was opened: the batch that needs it names it.
  auto o = folder_options(10, 0);
  o.workers = 2;
  const auto s = data::image_folder(dir.string(), o);
  for (int64_t i = 0; i < s.train.size(); ++i) write_bytes(s.train.files->name(i), "\x89PNG gone");
  data::BatchIterator it(s.train, data::Normalization{{0, 0, 0}, {1, 1, 1}}, 4, false, 0, false);
  EXPECT_NE(error_of([&] { it.get(0); }).find(": unreadable PNG"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Augmentation, ShiftMovesPixelsWithZeroFillAndFlipMirrors) {
  auto images = torch::zeros({2, 1, 5, 5}, torch::kUInt8);
  images[0][0][2][2] = 9;
  images[1][0][0][4] = 7;
  const auto out = data::shift_and_flip(images, torch::tensor({1, 0}), torch::tensor({-2, 0}),
                                        torch::tensor({false, true}));
  EXPECT_EQ(out[0][0][3][0].item<int>(), 9) << "down 1, left 2";
  EXPECT_EQ(out[0].sum().item<int>(), 9);
  EXPECT_EQ(out[1][0][0][0].item<int>(), 7) << "mirrored";
  const auto off = data::shift_and_flip(images, torch::tensor({0, 0}), torch::tensor({3, 0}),
                                        torch::tensor({false, false}));
  EXPECT_EQ(off[0].sum().item<int>(), 0) << "shifted out of the frame, zero filled";

  // In the iterator the draws depend only on (seed, epoch, batch): repeatable, and new each epoch.
  const auto d = data::generate_shapes(64, 28, 1, data::SpuriousCue::none, 0.05);
  data::BatchIterator it(d, data::Normalization::fit(d.images), 32, true, 5, true);
  it.set_augmentation({3, true});
  it.set_epoch(1);
  const auto a = it.get(0).x, b = it.get(0).x;
  EXPECT_TRUE(torch::equal(a, b));
  data::BatchIterator plain(d, data::Normalization::fit(d.images), 32, true, 5, true);
  plain.set_epoch(1);
  EXPECT_FALSE(torch::equal(a, plain.get(0).x)) << "augmented";
}

TEST(MnistFiles, RealFilesLoadWithTheOfficialCountsAndHistograms) {
  const std::map<std::string, std::vector<int64_t>> train_histograms = {
      {"mnist", {5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949}},
      {"fashion-mnist", std::vector<int64_t>(10, 6000)}};
  for (const auto& [name, histogram] : train_histograms) {
    const auto dir = shared_data(name);
    if (!fs::exists(dir / "train-images-idx3-ubyte.gz")) GTEST_SKIP() << dir << " is absent";
    data::DatasetOptions o;
    o.name = name;
    o.dir = dir.string();
    const auto s = data::load_dataset(o);
    EXPECT_EQ(s.train.size(), 60000) << name;
    EXPECT_EQ(s.test.size(), 10000) << name;
    EXPECT_EQ(s.train.images.sizes(), (torch::IntArrayRef{60000, 1, 28, 28}));
    EXPECT_TRUE(torch::equal(torch::bincount(s.train.labels), torch::tensor(histogram))) << name;
    if (name == "mnist") {
      EXPECT_TRUE(torch::equal(torch::bincount(s.test.labels),
                               torch::tensor({980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009}, torch::kInt64)));
    } else {
      EXPECT_TRUE(torch::equal(torch::bincount(s.test.labels), torch::full({10}, 1000, torch::kInt64)));
    }
  }
}

TEST(MnistFiles, DownloadVerifiesTheChecksumAndPlacesTheFiles) {
  const auto source = shared_data("mnist");
  if (!fs::exists(source / "train-labels-idx1-ubyte.gz")) GTEST_SKIP() << source << " is absent";
  const auto dir = fresh_dir("download");
  // libcurl reads file:// URLs the same way as http(s)://, so the shared copy acts as a mirror.
  const std::string mirror = "file://" + fs::canonical(source).string() + "/";
  const std::vector<io::DataFile> labels = {
      {"train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"}};
  io::ensure_files((dir / "ok").string(), labels, {"file:///nonexistent/", mirror});
  EXPECT_EQ(io::sha256_file((dir / "ok" / "train-labels-idx1-ubyte.gz").string()), labels[0].sha256);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "ok"), fs::directory_iterator()), 1) << "no temporary left";

  // A mirror serving other bytes: refused, nothing placed.
  fs::create_directories(dir / "evil");
  write_bytes(dir / "evil" / "train-labels-idx1-ubyte.gz", "not the file");
  const auto message = error_of(
      [&] { io::ensure_files((dir / "bad").string(), labels, {"file://" + (dir / "evil").string()}); });
  EXPECT_NE(message.find("is not the published 3552534a"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(dir / "bad" / "train-labels-idx1-ubyte.gz"));
  // A mirror sending more than the file's known size is stopped there, nothing placed.
  write_bytes(dir / "evil" / "train-labels-idx1-ubyte.gz", std::string(200000, 'x'));
  auto sized = labels;
  sized[0].size = 28881;
  const auto endless = error_of(
      [&] { io::ensure_files((dir / "big").string(), sized, {"file://" + (dir / "evil").string()}); });
  EXPECT_NE(endless.find("more data than the expected 28881 bytes"), std::string::npos) << endless;
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "big"), fs::directory_iterator()), 0) << "no partial file";
  fs::remove_all(dir);
}

namespace {
std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A PNG chunk: length, type, data, CRC-32 of type and data.
std::string png_chunk(const std::string& type, const std::string& data) {
  const auto be32 = [](uint32_t v) {
    return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                       static_cast<char>(v)};
  };
  const std::string body = type + data;
  return be32(static_cast<uint32_t>(data.size())) + body +
         be32(static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
}
}  // namespace

TEST(Images, HeadersClaimingHugeImagesAreRefusedBeforeDecoding) {
  const auto dir = fs::temp_directory_path() / ("batchcam-bomb-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  // A ~100-byte PNG that claims 65535 x 65535 gray pixels (4.3 GB once decoded).
  std::string ihdr = {0, 0, static_cast<char>(0xFF), static_cast<char>(0xFF), 0, 0, static_cast<char>(0xFF),
                      static_cast<char>(0xFF), 8, 0, 0, 0, 0};
  std::string packed(64, '\0');
  uLongf packed_size = packed.size();
  const std::string row(16, '\0');
  compress(reinterpret_cast<Bytef*>(packed.data()), &packed_size, reinterpret_cast<const Bytef*>(row.data()), row.size());
  packed.resize(packed_size);
  write_bytes(dir / "bomb.png", std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", ihdr) +
                                    png_chunk("IDAT", packed) + png_chunk("IEND", ""));
  EXPECT_LT(fs::file_size(dir / "bomb.png"), 120u);
  try {
    io::read_image((dir / "bomb.png").string());
    FAIL() << "a decompression bomb must be refused";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("65535 x 65535 pixels exceeds the limit"), std::string::npos) << e.what();
  }
  // A JPEG whose header is made to claim 30000 x 30000.
  write_jpeg(dir / "real.jpg", 64, 48, 128);
  auto jpeg = read_bytes(dir / "real.jpg");
  const auto sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  for (const size_t at : {sof + 5, sof + 7}) {  // height, then width, big-endian
    jpeg[at] = static_cast<char>(30000 >> 8);
    jpeg[at + 1] = static_cast<char>(30000 & 0xFF);
  }
  write_bytes(dir / "big.jpg", jpeg);
  EXPECT_THROW(
      {
        try {
          io::read_image((dir / "big.jpg").string());
        } catch (const std::runtime_error& e) {
          EXPECT_NE(std::string(e.what()).find("30000 x 30000 pixels exceeds"), std::string::npos) << e.what();
          throw;
        }
      },
      std::runtime_error);
  // The limit is the caller's: the real image passes the default and fails a smaller one.
  EXPECT_EQ(io::read_image((dir / "real.jpg").string()).width, 64);
  EXPECT_THROW(io::read_image((dir / "real.jpg").string(), 64 * 47), std::runtime_error);
  fs::remove_all(dir);
}

TEST(Images, TruncatedJpegsAreRejectedLikeTruncatedPngs) {
  const auto dir = fs::temp_directory_path() / ("batchcam-cut-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_jpeg(dir / "whole.jpg", 64, 64, 90);
  const auto bytes = read_bytes(dir / "whole.jpg");
  write_bytes(dir / "cut.jpg", bytes.substr(0, bytes.size() * 2 / 3));
  try {
    io::read_image((dir / "cut.jpg").string());
    FAIL() << "a truncated JPEG must not be filled with gray and accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.jpg: unreadable JPEG"), std::string::npos) << e.what();
  }
  EXPECT_EQ(io::read_image((dir / "whole.jpg").string()).height, 64);
  fs::remove_all(dir);
}

TEST(ImageSize, FixedSizeDatasetsKeepTheirSizeByDefaultAndAreResizedWhenAsked) {
  // Decoy-MNIST from small IDX files of 28 x 28 digits (all pixels 100): the images and the
  // swatch masks follow --image-size; 0 keeps 28.
  const auto dir = fresh_dir("imagesize");
  const int n = 20;
  std::vector<uint8_t> pixels(static_cast<size_t>(n) * 28 * 28, 100), labels(n);
  for (int i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = static_cast<uint8_t>(i % 10);
  for (const char* split : {"train", "t10k"}) {
    write_bytes(dir / (std::string(split) + "-images-idx3-ubyte"), idx_bytes({n, 28, 28}, pixels));
    write_bytes(dir / (std::string(split) + "-labels-idx1-ubyte"), idx_bytes({n}, labels));
  }
  data::DatasetOptions o;
  o.name = "decoy-mnist";
  o.dir = dir.string();
  const auto native = data::load_dataset(o);
  EXPECT_EQ(native.train.images.sizes(), (torch::IntArrayRef{n, 1, 28, 28}));
  o.image_size = 56;
  const auto large = data::load_dataset(o);
  ASSERT_EQ(large.train.images.sizes(), (torch::IntArrayRef{n, 1, 56, 56}));
  ASSERT_EQ(large.test.decoy_masks.sizes(), (torch::IntArrayRef{n, 56, 56}));
  // Doubling: each 4 x 4 swatch becomes 8 x 8 in the same corner, and the digit area keeps its value.
  EXPECT_EQ(large.train.decoy_masks.sum(torch::IntArrayRef{1, 2}).min().item<int64_t>(), 64);
  EXPECT_EQ(large.train.decoy_masks.sum(torch::IntArrayRef{1, 2}).max().item<int64_t>(), 64);
  EXPECT_EQ(large.train.images[0][0][28][28].item<int>(), 100);
  o.image_size = 14;
  const auto small = data::load_dataset(o);
  EXPECT_EQ(small.test.images.sizes(), (torch::IntArrayRef{n, 1, 14, 14}));
  EXPECT_EQ(small.test.decoy_masks.sum(torch::IntArrayRef{1, 2}).min().item<int64_t>(), 4);
  fs::remove_all(dir);
}
