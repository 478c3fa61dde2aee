#include "batchcam/data/folder.h"

#include "batchcam/data/image_files.h"
#include "batchcam/data/rng.h"
#include "batchcam/io/image.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <stdexcept>

namespace batchcam::data {

namespace fs = std::filesystem;

namespace {
[[noreturn]] void fail(const std::string& what, const std::string& problem) {
  throw std::runtime_error(what + ": " + problem);
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

struct Samples {
  std::vector<std::string> paths;
  std::vector<int64_t> labels;

  void add(const std::string& path, int64_t label) {
    paths.push_back(path);
    labels.push_back(label);
  }
  Samples subset(const std::vector<int64_t>& index) const {
    Samples out;
    for (const auto i : index) out.add(paths[static_cast<size_t>(i)], labels[static_cast<size_t>(i)]);
    return out;
  }
};

Dataset streamed_split(const Samples& samples, const std::vector<std::string>& class_names, int64_t channels,
                       const FolderOptions& o) {
  Dataset d;
  d.files = std::make_shared<const ImageFiles>(samples.paths, o.image_size, channels, o.max_pixels, o.workers);
  d.labels = torch::tensor(samples.labels, torch::kInt64);
  d.class_names = class_names;
  return d;
}
}  // namespace

std::vector<int64_t> stratified_subset(const std::vector<int64_t>& labels, int64_t num_classes, int64_t n,
                                       uint64_t seed) {
  const auto total = static_cast<int64_t>(labels.size());
  std::vector<int64_t> all(labels.size());
  std::iota(all.begin(), all.end(), 0);
  if (n <= 0 || n >= total) return all;
  std::vector<std::vector<int64_t>> members(static_cast<size_t>(num_classes));
  for (int64_t i = 0; i < total; ++i) members.at(static_cast<size_t>(labels[static_cast<size_t>(i)])).push_back(i);
  // Each class's share of n, rounded down; the rest to the largest remainders (ties: lower class).
  std::vector<int64_t> quota(members.size());
  std::vector<std::pair<double, size_t>> remainders;
  int64_t given = 0;
  for (size_t c = 0; c < members.size(); ++c) {
    const double exact = static_cast<double>(n) * static_cast<double>(members[c].size()) / static_cast<double>(total);
    quota[c] = static_cast<int64_t>(std::floor(exact));
    given += quota[c];
    remainders.push_back({-(exact - static_cast<double>(quota[c])), c});
  }
  std::sort(remainders.begin(), remainders.end());
  for (size_t r = 0; given < n; r = (r + 1) % remainders.size()) {
    const size_t c = remainders[r].second;
    if (quota[c] < static_cast<int64_t>(members[c].size())) {
      ++quota[c];
      ++given;
    }
  }
  // Every class present keeps one image, taken from the class with the most.
  for (size_t c = 0; c < members.size(); ++c) {
    if (quota[c] > 0 || members[c].empty()) continue;
    const auto richest = static_cast<size_t>(std::max_element(quota.begin(), quota.end()) - quota.begin());
    if (quota[richest] <= 1) break;  // n is smaller than the number of classes
    --quota[richest];
    quota[c] = 1;
  }
  std::vector<int64_t> chosen;
  for (size_t c = 0; c < members.size(); ++c) {
    auto order = members[c];
    Rng rng(mix_seed(seed, c));
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
    chosen.insert(chosen.end(), order.begin(), order.begin() + quota[c]);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

DatasetSplits image_folder(const std::string& dir, const FolderOptions& o) {
  if (!(o.val_split > 0.0 && o.val_split < 1.0)) {
    throw std::invalid_argument("val_split must be in (0, 1), got " + std::to_string(o.val_split));
  }
  const fs::path root = dir;
  const bool split = fs::is_directory(root / "train") && fs::is_directory(root / "test");
  const auto train_classes = list_class_folders(split ? root / "train" : root);
  std::vector<std::string> class_names;
  for (const auto& [name, files] : train_classes) class_names.push_back(name);

  Samples train, test;
  if (split) {
    const auto test_classes = list_class_folders(root / "test");
    int64_t label = 0;
    for (const auto& [name, files] : train_classes) {
      const auto it = test_classes.find(name);
      if (it == test_classes.end()) fail((root / "test").string(), "has no folder for class '" + name + "'");
      for (const auto& f : files) train.add(f, label);
      for (const auto& f : it->second) test.add(f, label);
      ++label;
    }
    if (test_classes.size() != train_classes.size()) {
      fail((root / "test").string(), "has classes that train/ does not have");
    }
  } else {
    int64_t label = 0;
    for (const auto& [name, files] : train_classes) {
      if (files.size() < 2) fail((root / name).string(), "needs at least 2 images (one to train, one to test)");
      std::vector<std::string> order = files;
      Rng rng(mix_seed(o.seed, static_cast<uint64_t>(label)));
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
      const auto held_out = std::clamp<int64_t>(std::llround(o.val_split * static_cast<double>(order.size())), 1,
                                                static_cast<int64_t>(order.size()) - 1);
      for (size_t i = 0; i < order.size(); ++i) (static_cast<int64_t>(i) < held_out ? test : train).add(order[i], label);
      ++label;
    }
  }
  const auto k = static_cast<int64_t>(class_names.size());
  train = train.subset(stratified_subset(train.labels, k, o.train_size, mix_seed(o.seed, 1000)));
  test = test.subset(stratified_subset(test.labels, k, o.test_size, mix_seed(o.seed, 2000)));
  // Headers only: every chosen file readable and within max_pixels, and whether any is in colour.
  std::vector<std::string> chosen = train.paths;
  chosen.insert(chosen.end(), test.paths.begin(), test.paths.end());
  const int64_t channels = ImageFiles::channels_of(chosen, o.max_pixels, o.workers);
  DatasetSplits s;
  s.name = "folder";
  s.train = streamed_split(train, class_names, channels, o);
  s.test = streamed_split(test, class_names, channels, o);
  return s;
}

}  // namespace batchcam::data
