// A program of a batchcam user linking the full library (batchcam::batchcam): a training
// configuration as JSON, a map as PNG, a checksum, a plot. Its private dependencies (libpng,
// zlib, and libjpeg, libcurl and cairo as built) come from the package. Built with
// BATCHCAM_MINIMAL (tests/package/subdirectory), it checks that the features turned off say so.
#include <batchcam/eval/report.h>
#include <batchcam/io/download.h>
#include <batchcam/io/image.h>
#include <batchcam/io/png.h>
#include <batchcam/io/sha256.h>
#include <batchcam/train/config.h>

#include <torch/torch.h>

#include <iostream>
#include <stdexcept>
#include <string>

namespace {
// The message of what `f` throws ("" when it does not throw).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
}  // namespace

int main() {
  const auto config = batchcam::train::to_json(batchcam::train::TrainConfig{});
  const auto png = batchcam::io::encode_png(torch::randint(0, 256, {8, 8}, torch::kUInt8));
  const auto sum = batchcam::io::sha256_bytes(png.data(), png.size());
  const auto plot = batchcam::eval::line_plot_svg("loss", "epoch", "loss", {{"train", {1, 2}, {0.5, 0.25}}});
  bool ok = config.contains("model") && png.compare(1, 3, "PNG") == 0 && sum.size() == 64 &&
            plot.find("<svg") != std::string::npos;
#ifdef BATCHCAM_MINIMAL
  const auto jpeg = error_of([] { batchcam::io::decode_image(std::string("\xFF\xD8\xFF\xE0", 4), "photo.jpg"); });
  const auto download = error_of([] { batchcam::io::ensure_files("no-such-dir", {{"train.gz", "", 0}}, {"file:///"}); });
  std::cout << "JPEG: " << jpeg << "\ndownload: " << download << "\n";
  ok = ok && jpeg.find("photo.jpg") == 0 && jpeg.find("BATCHCAM_WITH_JPEG=OFF") != std::string::npos &&
       download.find("train.gz") != std::string::npos &&
       download.find("BATCHCAM_WITH_DOWNLOAD=OFF") != std::string::npos &&
       plot.find("BATCHCAM_WITH_PLOTS=OFF") != std::string::npos;
#else
  ok = ok && plot.find("not drawn") == std::string::npos;
#endif
  std::cout << "batchcam full-library consumer: config keys " << config.size() << ", PNG " << png.size()
            << " bytes, plot " << plot.size() << " bytes" << (ok ? ", ok" : ", WRONG") << "\n";
  return ok ? 0 : 1;
}
