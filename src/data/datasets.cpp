#include "batchcam/data/datasets.h"

#include "batchcam/data/idx.h"
#include "batchcam/data/rng.h"
#include "batchcam/data/shapes.h"
#include "batchcam/io/image.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>

namespace batchcam::data {

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kDigitNames = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
const std::vector<std::string> kFashionNames = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
const std::vector<std::string> kCifarNames = {"airplane", "automobile", "bird",  "cat",  "deer",
                                              "dog",      "frog",       "horse", "ship", "truck"};

// Published SHA-256 and sizes of the official .gz files (also in shared/data/*/README.md).
const std::vector<DataFile> kMnistFiles = {
    {"train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422},
    {"train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881},
    {"t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877},
    {"t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542}};
const std::vector<DataFile> kFashionFiles = {
    {"train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880},
    {"train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515},
    {"t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102},
    {"t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148}};
const std::vector<std::string> kMnistMirrors = {"https://ossci-datasets.s3.amazonaws.com/mnist/",
                                                "http://yann.lecun.com/exdb/mnist/"};
const std::vector<std::string> kFashionMirrors = {"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"};

[[noreturn]] void fail(const std::string& what, const std::string& problem) {
  throw std::runtime_error(what + ": " + problem);
}

// The file as present in dir: `name`, or `name` without ".gz" (uncompressed); "" if neither.
std::string present_file(const std::string& dir, const std::string& name) {
  const auto gz = fs::path(dir) / name;
  if (fs::is_regular_file(gz)) return gz.string();
  const auto raw = fs::path(dir) / name.substr(0, name.size() - 3);
  if (name.size() > 3 && fs::is_regular_file(raw)) return raw.string();
  return "";
}

struct DownloadSink {
  std::FILE* file;
  int64_t written = 0;
  int64_t limit = 0;  ///< 0 = none
  bool over = false;
};

size_t write_to_file(char* data, size_t size, size_t count, void* sink_ptr) {
  auto* sink = static_cast<DownloadSink*>(sink_ptr);
  const auto bytes = static_cast<int64_t>(size * count);
  if (sink->limit > 0 && sink->written + bytes > sink->limit) {
    sink->over = true;
    return 0;  // libcurl stops the transfer
  }
  sink->written += bytes;
  return std::fwrite(data, size, count, sink->file) * size;
}

// Downloads url to path, at most `limit` bytes (0 = no limit); returns "" on success or the reason.
std::string download(const std::string& url, const std::string& path, int64_t limit) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) return "cannot write " + path;
  CURL* curl = curl_easy_init();
  if (!curl) {
    std::fclose(file);
    return "libcurl could not start";
  }
  char error[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_to_file);
  DownloadSink sink{file, 0, limit};
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 20L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);  // abort below 1 KiB/s ...
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 30L);     // ... for 30 s
  const CURLcode rc = curl_easy_perform(curl);
  curl_easy_cleanup(curl);
  const bool closed = std::fclose(file) == 0;
  if (sink.over) return "more data than the expected " + std::to_string(limit) + " bytes (download stopped)";
  if (rc != CURLE_OK) return error[0] ? error : curl_easy_strerror(rc);
  if (!closed) return "cannot write " + path;
  return "";
}

torch::Tensor bytes_tensor(const std::vector<uint8_t>& values, std::vector<int64_t> shape) {
  return torch::from_blob(const_cast<uint8_t*>(values.data()), shape, torch::kUInt8).clone();
}

Dataset first_n(const Dataset& d, int64_t n) {
  if (n <= 0 || n >= d.size()) return d;
  Dataset out = d;
  out.images = d.images.narrow(0, 0, n).clone();
  out.labels = d.labels.narrow(0, 0, n).clone();
  if (d.object_masks.defined()) out.object_masks = d.object_masks.narrow(0, 0, n).clone();
  if (d.decoy_masks.defined()) out.decoy_masks = d.decoy_masks.narrow(0, 0, n).clone();
  if (d.decoy_labels.defined()) out.decoy_labels = d.decoy_labels.narrow(0, 0, n).clone();
  return out;
}

// The images (bilinear; antialiased when shrinking) and masks (nearest) at size x size.
Dataset resized(const Dataset& d, int64_t size) {
  if (d.size() == 0 || (d.height() == size && d.width() == size)) return d;
  namespace F = torch::nn::functional;
  const bool shrink = size < d.height() || size < d.width();
  Dataset out = d;
  // In chunks, so that the float copy stays small whatever the dataset's size.
  std::vector<torch::Tensor> chunks;
  for (const auto& chunk : d.images.split(1024)) {
    chunks.push_back(F::interpolate(chunk.to(torch::kFloat32), F::InterpolateFuncOptions()
                                                                    .size(std::vector<int64_t>{size, size})
                                                                    .mode(torch::kBilinear)
                                                                    .align_corners(false)
                                                                    .antialias(shrink))
                         .round()
                         .clamp(0, 255)
                         .to(torch::kUInt8));
  }
  out.images = torch::cat(chunks).contiguous();
  const auto mask = [&](const torch::Tensor& m) {
    if (!m.defined()) return m;
    return F::interpolate(m.unsqueeze(1).to(torch::kFloat32),
                          F::InterpolateFuncOptions().size(std::vector<int64_t>{size, size}).mode(torch::kNearest))
        .squeeze(1)
        .gt(0.5)
        .contiguous();
  };
  out.object_masks = mask(d.object_masks);
  out.decoy_masks = mask(d.decoy_masks);
  return out;
}

// A fixed-size dataset at the requested side (0 = as stored).
DatasetSplits at_size(DatasetSplits s, int64_t size) {
  if (size <= 0) return s;
  s.train = resized(s.train, size);
  s.test = resized(s.test, size);
  return s;
}

DatasetSplits mnist_like(const std::string& name, const std::string& dir, const DatasetOptions& o) {
  const bool fashion = name.find("fashion") != std::string::npos;
  const auto& files = fashion ? kFashionFiles : kMnistFiles;
  ensure_files(dir, files, fashion ? kFashionMirrors : kMnistMirrors);
  const auto& names = fashion ? kFashionNames : kDigitNames;
  DatasetSplits s;
  s.name = name;
  s.train = first_n(idx_dataset(present_file(dir, files[0].name), present_file(dir, files[1].name), names),
                    o.train_size);
  s.test = first_n(idx_dataset(present_file(dir, files[2].name), present_file(dir, files[3].name), names),
                   o.test_size);
  if (name.rfind("decoy-", 0) == 0) {
    add_decoy(s.train, /*random_class=*/false, mix_seed(o.seed, 1));
    add_decoy(s.test, /*random_class=*/true, mix_seed(o.seed, 2));
  }
  return s;
}

DatasetSplits cifar10(const std::string& dir, const DatasetOptions& o) {
  fs::path base = dir;
  if (!fs::exists(base / "data_batch_1.bin") && fs::exists(base / "cifar-10-batches-bin")) {
    base /= "cifar-10-batches-bin";
  }
  std::vector<std::string> names = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                    "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"};
  std::string missing;
  for (const auto& n : names) {
    if (!fs::is_regular_file(base / n)) missing += (missing.empty() ? "" : ", ") + n;
  }
  if (!missing.empty()) {
    fail(base.string(), "missing " + missing +
                            "; download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and extract it there");
  }
  std::vector<torch::Tensor> images, labels;
  for (size_t i = 0; i < 5; ++i) {
    const auto batch = cifar10_batch((base / names[i]).string());
    images.push_back(batch.images);
    labels.push_back(batch.labels);
  }
  DatasetSplits s;
  s.name = "cifar10";
  s.train.images = torch::cat(images);
  s.train.labels = torch::cat(labels);
  s.train.class_names = kCifarNames;
  s.train = first_n(s.train, o.train_size);
  s.test = first_n(cifar10_batch((base / names[5]).string()), o.test_size);
  return s;
}

const std::vector<std::string> kImageExtensions = {".png", ".jpg", ".jpeg"};

bool is_image_name(const fs::path& p) {
  auto ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return std::find(kImageExtensions.begin(), kImageExtensions.end(), ext) != kImageExtensions.end();
}

// The class folders of `dir` (sorted) and, per class, its image files (sorted).
std::map<std::string, std::vector<std::string>> list_class_folders(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail(dir.string(), "no such directory");
  std::map<std::string, std::vector<std::string>> classes;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_directory()) continue;
    auto& files = classes[entry.path().filename().string()];
    for (const auto& f : fs::directory_iterator(entry.path())) {
      if (f.is_regular_file() && is_image_name(f.path())) files.push_back(f.path().string());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) fail(entry.path().string(), "empty class folder (no .png, .jpg or .jpeg files)");
  }
  if (classes.size() < 2) fail(dir.string(), "expected one subfolder per class (at least 2), found " +
                                                 std::to_string(classes.size()));
  return classes;
}

struct LoadedImage {
  torch::Tensor pixels;  // [C, S, S] uint8
  int64_t label;
};

LoadedImage load_resized(const std::string& path, int64_t label, int64_t size, int64_t max_pixels) {
  const auto image = io::read_image(path, max_pixels);
  if (image.width < 1 || image.height < 1) fail(path, "image has no pixels");
  auto t = bytes_tensor(image.pixels, {image.height, image.width, image.channels}).permute({2, 0, 1});
  if (image.height != size || image.width != size) {
    namespace F = torch::nn::functional;
    t = F::interpolate(t.unsqueeze(0).to(torch::kFloat32),
                       F::InterpolateFuncOptions().size(std::vector<int64_t>{size, size}).mode(torch::kBilinear)
                           .align_corners(false))
            .squeeze(0)
            .round()
            .clamp(0, 255)
            .to(torch::kUInt8);
  }
  return {t.contiguous(), label};
}

Dataset stack_images(std::vector<LoadedImage> items, const std::vector<std::string>& class_names, bool color) {
  Dataset d;
  std::vector<torch::Tensor> pixels;
  std::vector<int64_t> labels;
  for (auto& item : items) {
    pixels.push_back(color && item.pixels.size(0) == 1 ? item.pixels.expand({3, -1, -1}) : item.pixels);
    labels.push_back(item.label);
  }
  d.images = torch::stack(pixels);
  d.labels = torch::tensor(labels, torch::kInt64);
  d.class_names = class_names;
  return d;
}
}  // namespace

std::vector<std::string> dataset_names() {
  return {"shapes", "mnist", "fashion-mnist", "decoy-mnist", "decoy-fashion", "cifar10", "folder"};
}

std::string default_data_dir(const std::string& name) {
  if (name == "mnist" || name == "decoy-mnist") return "data/mnist";
  if (name == "fashion-mnist" || name == "decoy-fashion") return "data/fashion-mnist";
  if (name == "cifar10") return "data/cifar10";
  return "";
}

DatasetSplits load_dataset(const DatasetOptions& o) {
  const std::string dir = o.dir.empty() ? default_data_dir(o.name) : o.dir;
  if (o.name == "shapes") {
    ShapesOptions s;
    s.train_size = o.train_size > 0 ? o.train_size : s.train_size;
    s.test_size = o.test_size > 0 ? o.test_size : s.test_size;
    s.image_size = o.image_size > 0 ? o.image_size : s.image_size;
    s.seed = o.seed;
    s.spurious = o.spurious;
    return make_shapes(s);
  }
  if (o.name == "mnist" || o.name == "fashion-mnist" || o.name == "decoy-mnist" || o.name == "decoy-fashion") {
    return at_size(mnist_like(o.name, dir, o), o.image_size);
  }
  if (o.name == "cifar10") return at_size(cifar10(dir, o), o.image_size);
  if (o.name == "folder") {
    if (dir.empty()) throw std::invalid_argument("dataset 'folder' needs a data directory (--data-dir)");
    auto s = image_folder(dir, o.image_size > 0 ? o.image_size : kDefaultImageSize, o.seed, o.max_image_pixels);
    s.train = first_n(s.train, o.train_size);
    s.test = first_n(s.test, o.test_size);
    return s;
  }
  std::string names;
  for (const auto& n : dataset_names()) names += (names.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown dataset '" + o.name + "'; expected one of " + names);
}

Dataset idx_dataset(const std::string& images_path, const std::string& labels_path,
                    const std::vector<std::string>& class_names) {
  const auto images = read_idx(images_path);
  const auto labels = read_idx(labels_path);
  if (images.dims.size() != 3) {
    fail(images_path, "expected an image file of 3 dimensions [N, H, W], found " + std::to_string(images.dims.size()));
  }
  if (labels.dims.size() != 1) {
    fail(labels_path, "expected a label file of 1 dimension [N], found " + std::to_string(labels.dims.size()));
  }
  if (images.dims[0] != labels.dims[0]) {
    fail(labels_path, std::to_string(labels.dims[0]) + " labels for the " + std::to_string(images.dims[0]) +
                          " images of " + images_path);
  }
  if (images.dims[0] == 0 || images.dims[1] == 0 || images.dims[2] == 0) fail(images_path, "holds no pixels");
  for (size_t i = 0; i < labels.values.size(); ++i) {
    if (labels.values[i] >= class_names.size()) {
      fail(labels_path, "label " + std::to_string(labels.values[i]) + " at index " + std::to_string(i) +
                            " is out of range [0, " + std::to_string(class_names.size()) + ")");
    }
  }
  Dataset d;
  d.images = bytes_tensor(images.values, {images.dims[0], 1, images.dims[1], images.dims[2]});
  d.labels = bytes_tensor(labels.values, {labels.dims[0]}).to(torch::kInt64);
  d.class_names = class_names;
  return d;
}

namespace {
std::string hex_digest(EVP_MD_CTX* ctx) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex += "0123456789abcdef"[digest[i] >> 4];
    hex += "0123456789abcdef"[digest[i] & 15];
  }
  return hex;
}
}  // namespace

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open for reading");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    EVP_DigestUpdate(ctx, buffer.data(), static_cast<size_t>(in.gcount()));
  }
  return hex_digest(ctx);
}

std::string sha256_bytes(const void* data, size_t size) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  EVP_DigestUpdate(ctx, data, size);
  return hex_digest(ctx);
}

void ensure_files(const std::string& dir, const std::vector<DataFile>& files, std::vector<std::string> mirrors) {
  if (const char* mirror = std::getenv("BATCHCAM_DATA_MIRROR"); mirror && *mirror) mirrors = {mirror};
  std::vector<const DataFile*> missing;
  for (const auto& f : files) {
    if (present_file(dir, f.name).empty()) missing.push_back(&f);
  }
  if (missing.empty()) return;
  std::string names;
  for (const auto* f : missing) names += (names.empty() ? "" : ", ") + f->name;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, "missing " + names + " and cannot create the directory to download them (" + ec.message() + ")");
  for (const auto* f : missing) {
    const auto target = (fs::path(dir) / f->name).string();
    const auto tmp = target + ".tmp." + std::to_string(::getpid());
    std::string reasons;
    bool done = false;
    for (auto base : mirrors) {
      if (!base.empty() && base.back() != '/') base += '/';
      const std::string error = download(base + f->name, tmp, f->size);
      if (error.empty()) {
        const auto sum = sha256_file(tmp);
        if (sum == f->sha256) {
          fs::rename(tmp, target);
          done = true;
          break;
        }
        reasons += "; " + base + f->name + ": SHA-256 " + sum + " is not the published " + f->sha256;
      } else {
        reasons += "; " + base + f->name + ": " + error;
      }
      std::remove(tmp.c_str());
    }
    if (!done) {
      fail(dir, "missing " + names + " and the download failed" + reasons +
                    ". Put the files in this directory by hand (or choose another with --data-dir)");
    }
  }
}

void add_decoy(Dataset& d, bool random_class, uint64_t seed) {
  const int64_t n = d.size(), h = d.height(), w = d.width(), k = d.num_classes();
  const int64_t side = spurious_patch_size(std::min(h, w));
  Rng rng(seed);
  auto images = d.images.accessor<uint8_t, 4>();
  auto labels = d.labels.accessor<int64_t, 1>();
  d.decoy_masks = torch::zeros({n, h, w}, torch::kBool);
  auto masks = d.decoy_masks.accessor<bool, 3>();
  d.decoy_labels = torch::empty({n}, torch::kInt64);
  auto codes = d.decoy_labels.accessor<int64_t, 1>();
  for (int64_t i = 0; i < n; ++i) {
    const auto corner = rng.below(4);
    const int64_t code = random_class ? static_cast<int64_t>(rng.below(static_cast<uint64_t>(k))) : labels[i];
    codes[i] = code;
    const auto shade = static_cast<uint8_t>(spurious_shade(code));
    const int64_t top = corner < 2 ? 0 : h - side, left = corner % 2 == 0 ? 0 : w - side;
    for (int64_t y = top; y < top + side; ++y) {
      for (int64_t x = left; x < left + side; ++x) {
        for (int64_t c = 0; c < d.channels(); ++c) images[i][c][y][x] = shade;
        masks[i][y][x] = true;
      }
    }
  }
}

Dataset cifar10_batch(const std::string& path) {
  constexpr int64_t kRecord = 1 + 3 * 32 * 32;
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open for reading");
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const auto size = static_cast<int64_t>(bytes.size());
  if (size == 0) fail(path, "empty file (expected CIFAR-10 records of 3073 bytes)");
  if (size % kRecord != 0) {
    fail(path, "truncated or not a CIFAR-10 binary batch: " + std::to_string(size) +
                   " bytes is not a whole number of 3073-byte records");
  }
  const int64_t n = size / kRecord;
  auto all = torch::from_blob(const_cast<char*>(bytes.data()), {n, kRecord}, torch::kUInt8);
  Dataset d;
  d.labels = all.select(1, 0).to(torch::kInt64);
  const auto bad = d.labels.ge(10).nonzero();
  if (bad.numel() > 0) {
    const auto i = bad[0].item<int64_t>();
    fail(path, "label " + std::to_string(d.labels[i].item<int64_t>()) + " of record " + std::to_string(i) +
                   " is out of range [0, 10)");
  }
  d.images = all.narrow(1, 1, kRecord - 1).reshape({n, 3, 32, 32}).clone();
  d.class_names = kCifarNames;
  return d;
}

DatasetSplits image_folder(const std::string& dir, int64_t image_size, uint64_t seed, int64_t max_pixels) {
  const fs::path root = dir;
  const bool split = fs::is_directory(root / "train") && fs::is_directory(root / "test");
  const auto train_classes = list_class_folders(split ? root / "train" : root);
  std::vector<std::string> class_names;
  for (const auto& [name, files] : train_classes) class_names.push_back(name);

  std::vector<LoadedImage> train, test;
  bool color = false;
  const auto load = [&](const std::string& file, int64_t label, std::vector<LoadedImage>& into) {
    into.push_back(load_resized(file, label, image_size, max_pixels));
    color = color || into.back().pixels.size(0) == 3;
  };
  if (split) {
    const auto test_classes = list_class_folders(root / "test");
    int64_t label = 0;
    for (const auto& [name, files] : train_classes) {
      const auto it = test_classes.find(name);
      if (it == test_classes.end()) fail((root / "test").string(), "has no folder for class '" + name + "'");
      for (const auto& f : files) load(f, label, train);
      for (const auto& f : it->second) load(f, label, test);
      ++label;
    }
    if (test_classes.size() != train_classes.size()) {
      fail((root / "test").string(), "has classes that train/ does not have");
    }
  } else {
    int64_t label = 0;
    for (const auto& [name, files] : train_classes) {
      std::vector<std::string> order = files;
      Rng rng(mix_seed(seed, static_cast<uint64_t>(label)));
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
      for (size_t i = 0; i < order.size(); ++i) load(order[i], label, i % 5 == 4 ? test : train);
      ++label;
    }
  }
  if (test.empty()) fail(dir, "no test images (each class needs at least 5 images to split, or use train/ and test/)");
  DatasetSplits s;
  s.name = "folder";
  s.train = stack_images(std::move(train), class_names, color);
  s.test = stack_images(std::move(test), class_names, color);
  return s;
}

}  // namespace batchcam::data
