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

/// The default limit of read_image: 64 Mi pixels (a 8192 x 8192 image, 192 MiB as RGB).
constexpr int64_t kMaxImagePixels = int64_t{64} << 20;

/// Decodes a PNG or JPEG file (recognised by its first bytes, not its name) to gray
/// when the file is gray and RGB otherwise; alpha is dropped. The dimensions in the header
/// are checked against `max_pixels` before any pixel memory is allocated (a small file
/// can claim an image of gigabytes). Truncated or corrupt data is an error for both
/// formats (libjpeg's warnings included). Throws std::runtime_error naming the file and
/// the problem.
Image read_image(const std::string& path, int64_t max_pixels = kMaxImagePixels);

/// read_image() on bytes in memory; `name` names them in errors.
Image decode_image(const std::string& bytes, const std::string& name, int64_t max_pixels = kMaxImagePixels);

/// The width, height and channels (1 or 3) that read_image() would return, from the header
/// alone (no pixels decoded; `pixels` stays empty); the same errors for a file that is not a
/// PNG or JPEG, an unreadable header or more than `max_pixels` pixels.
Image read_image_info(const std::string& path, int64_t max_pixels = kMaxImagePixels);

}  // namespace batchcam::io
