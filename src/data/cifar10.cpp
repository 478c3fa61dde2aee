#include "batchcam/data/cifar10.h"

#include "batchcam/io/file.h"

#include <torch/torch.h>

#include <filesystem>
#include <stdexcept>

namespace batchcam::data {

namespace fs = std::filesystem;

namespace {
const std::vector<std::string> kCifarNames = {"airplane", "automobile", "bird",  "cat",  "deer",
                                              "dog",      "frog",       "horse", "ship", "truck"};

[[noreturn]] void fail(const std::string& what, const std::string& problem) {
  throw std::runtime_error(what + ": " + problem);
}
}  // namespace

DatasetSplits cifar10_dataset(const std::string& dir, int64_t train_size, int64_t test_size) {
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
  s.train = s.train.first(train_size);
  s.test = cifar10_batch((base / names[5]).string()).first(test_size);
  return s;
}

Dataset cifar10_batch(const std::string& path) {
  constexpr int64_t kRecord = 1 + 3 * 32 * 32;
  const std::string bytes = io::read_file(path);
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

}  // namespace batchcam::data
