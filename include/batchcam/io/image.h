#pragma once
// Reading PNG (libpng) and JPEG (libjpeg-turbo) images, for image-folder datasets and
// `batchcam explain --images`. Free of LibTorch.

#include <cstdint>
#include <string>
#include <vector>

namespace batchcam::io {

/// 8-bit pixels, row-major, channels interleaved (1 = gray, 3 = RGB).
struct Image {
  int64_t width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;
};

/// Decodes a PNG or JPEG file (recognised by its first bytes, not its name) to gray
/// when the file is gray and RGB otherwise; alpha is dropped. Throws std::runtime_error
/// naming the file and the problem.
Image read_image(const std::string& path);

}  // namespace batchcam::io
