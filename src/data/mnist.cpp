#include "batchcam/data/mnist.h"

#include "batchcam/data/idx.h"
#include "batchcam/data/rng.h"
#include "batchcam/data/shapes.h"
#include "batchcam/io/download.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>

namespace batchcam::data {

namespace {
const std::vector<std::string> kDigitNames = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
const std::vector<std::string> kFashionNames = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
// Published SHA-256 and sizes of the official .gz files (also in shared/data/*/README.md).
const std::vector<io::DataFile> kMnistFiles = {
    {"train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422},
    {"train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881},
    {"t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877},
    {"t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542}};
const std::vector<io::DataFile> kFashionFiles = {
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

torch::Tensor bytes_tensor(const std::vector<uint8_t>& values, std::vector<int64_t> shape) {
  return torch::from_blob(const_cast<uint8_t*>(values.data()), shape, torch::kUInt8).clone();
}

}  // namespace

DatasetSplits mnist_dataset(const std::string& name, const std::string& dir, int64_t train_size, int64_t test_size,
                            uint64_t seed) {
  const bool fashion = name.find("fashion") != std::string::npos;
  const auto& files = fashion ? kFashionFiles : kMnistFiles;
  io::ensure_files(dir, files, fashion ? kFashionMirrors : kMnistMirrors);
  const auto& names = fashion ? kFashionNames : kDigitNames;
  DatasetSplits s;
  s.name = name;
  s.train = idx_dataset(io::present_file(dir, files[0].name), io::present_file(dir, files[1].name), names).first(train_size);
  s.test = idx_dataset(io::present_file(dir, files[2].name), io::present_file(dir, files[3].name), names).first(test_size);
  if (name.rfind("decoy-", 0) == 0) {
    add_decoy(s.train, /*random_class=*/false, mix_seed(seed, 1));
    add_decoy(s.test, /*random_class=*/true, mix_seed(seed, 2));
  }
  return s;
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

}  // namespace batchcam::data
