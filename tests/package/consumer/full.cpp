// A program of a batchcam user linking the full library (batchcam::batchcam): a training
// configuration as JSON, a map as PNG, a checksum. Its private dependencies (libpng, zlib,
// and libjpeg, libcurl and cairo as built) come from the installed package.
#include <batchcam/io/png.h>
#include <batchcam/io/sha256.h>
#include <batchcam/train/config.h>

#include <torch/torch.h>

#include <iostream>

int main() {
  const auto config = batchcam::train::to_json(batchcam::train::TrainConfig{});
  const auto png = batchcam::io::encode_png(torch::randint(0, 256, {8, 8}, torch::kUInt8));
  const auto sum = batchcam::io::sha256_bytes(png.data(), png.size());
  const bool ok = config.contains("model") && png.compare(1, 3, "PNG") == 0 && sum.size() == 64;
  std::cout << "batchcam full-library consumer: config keys " << config.size() << ", PNG " << png.size()
            << " bytes" << (ok ? ", ok" : ", WRONG") << "\n";
  return ok ? 0 : 1;
}
