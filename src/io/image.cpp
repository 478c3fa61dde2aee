#include "batchcam/io/image.h"

#include "batchcam/io/file.h"

#ifdef BATCHCAM_WITH_JPEG
#include <jpeglib.h>
#endif
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>

namespace batchcam::io {

namespace {
[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw std::runtime_error(path + ": " + problem);
}

void check_size(const std::string& path, int64_t width, int64_t height, int64_t max_pixels) {
  if (width * height > max_pixels) {
    fail(path, "image of " + std::to_string(width) + " x " + std::to_string(height) + " pixels exceeds the limit of " +
                   std::to_string(max_pixels) + " pixels (max_image_pixels)");
  }
}

Image decode_png(const std::string& path, const std::string& bytes, int64_t max_pixels, bool header_only) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, bytes.data(), bytes.size())) {
    fail(path, std::string("unreadable PNG (") + image.message + ")");
  }
  if (static_cast<int64_t>(image.width) * image.height > max_pixels) {
    png_image_free(&image);
    check_size(path, image.width, image.height, max_pixels);
  }
  const bool color = (image.format & PNG_FORMAT_FLAG_COLOR) != 0;
  image.format = color ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  Image out;
  out.width = image.width;
  out.height = image.height;
  out.channels = color ? 3 : 1;
  if (header_only) {
    png_image_free(&image);
    return out;
  }
  out.pixels.resize(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, out.pixels.data(), 0, nullptr)) {
    const std::string message = image.message;
    png_image_free(&image);
    fail(path, "unreadable PNG (" + message + ")");
  }
  return out;
}

#ifdef BATCHCAM_WITH_JPEG
struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_jpeg_error(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, error->message);
  std::longjmp(error->jump, 1);
}

// libjpeg reports truncated or corrupt data as warnings (level -1) and fills the missing
// rows with gray; a warning is an error here, as libpng's are for PNG.
void on_jpeg_message(j_common_ptr info, int level) {
  if (level < 0) on_jpeg_error(info);
}

// Decodes into `out` (in the caller's frame, so longjmp leaves it intact); returns false
// with libjpeg's message on an error, or with `too_large` set (and no pixels allocated)
// when the header claims more than max_pixels.
bool decode_jpeg_into(const std::string& bytes, int64_t max_pixels, bool header_only, Image& out, JpegError& error,
                      bool& too_large) {
  jpeg_decompress_struct info{};
  info.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = on_jpeg_error;
  error.manager.emit_message = on_jpeg_message;
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&info);
    return false;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_read_header(&info, TRUE);
  if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
    // libjpeg converts these to gray or RGB only approximately (or not at all): refused as
    // soon as the header is read, so that a folder's check finds them before training.
    std::snprintf(error.message, sizeof error.message, "CMYK colour is not supported; save it as RGB");
    jpeg_destroy_decompress(&info);
    return false;
  }
  out.width = info.image_width;
  out.height = info.image_height;
  if (out.width * out.height > max_pixels) {
    too_large = true;
    jpeg_destroy_decompress(&info);
    return false;
  }
  info.out_color_space = info.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  if (header_only) {
    out.channels = info.num_components == 1 ? 1 : 3;
    jpeg_destroy_decompress(&info);
    return true;
  }
  jpeg_start_decompress(&info);
  out.width = info.output_width;
  out.height = info.output_height;
  out.channels = info.output_components;
  out.pixels.resize(static_cast<size_t>(out.width * out.height * out.channels));
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = out.pixels.data() + static_cast<size_t>(info.output_scanline) * out.width * out.channels;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return true;
}

Image decode_jpeg(const std::string& path, const std::string& bytes, int64_t max_pixels, bool header_only) {
  Image out;
  JpegError error{};
  bool too_large = false;
  if (!decode_jpeg_into(bytes, max_pixels, header_only, out, error, too_large)) {
    if (too_large) check_size(path, out.width, out.height, max_pixels);
    fail(path, std::string("unreadable JPEG (") + error.message + ")");
  }
  return out;
}
#else
Image decode_jpeg(const std::string& path, const std::string&, int64_t, bool) {
  fail(path, "a JPEG image, and this batchcam was built without JPEG support (BATCHCAM_WITH_JPEG=OFF)");
}
#endif

Image decode(const std::string& bytes, const std::string& path, int64_t max_pixels, bool header_only) {
  const auto starts_with = [&](std::initializer_list<unsigned char> magic) {
    size_t i = 0;
    for (const unsigned char b : magic) {
      if (i >= bytes.size() || static_cast<unsigned char>(bytes[i++]) != b) return false;
    }
    return true;
  };
  if (starts_with({0x89, 'P', 'N', 'G'})) return decode_png(path, bytes, max_pixels, header_only);
  if (starts_with({0xFF, 0xD8, 0xFF})) return decode_jpeg(path, bytes, max_pixels, header_only);
  fail(path, "not a PNG or JPEG image");
}
}  // namespace

Image read_image(const std::string& path, int64_t max_pixels) {
  return decode(read_file(path), path, max_pixels, /*header_only=*/false);
}

Image decode_image(const std::string& bytes, const std::string& path, int64_t max_pixels) {
  return decode(bytes, path, max_pixels, /*header_only=*/false);
}

Image read_image_info(const std::string& path, int64_t max_pixels) {
  // The header lies in the first bytes (a JPEG's after its metadata segments, each at most
  // 64 KiB): read a prefix, and the whole file only when the prefix does not hold it.
  constexpr std::streamsize kPrefix = 64 << 10;
  std::ifstream in(path, std::ios::binary);
  if (!in) (void)read_file(path);  // its error: no such file, or why it cannot be read
  if (!in) fail(path, "cannot open for reading");
  std::string prefix(static_cast<size_t>(kPrefix), '\0');
  in.read(prefix.data(), kPrefix);
  prefix.resize(static_cast<size_t>(in.gcount()));
  if (in.gcount() < kPrefix) return decode(prefix, path, max_pixels, /*header_only=*/true);
  try {
    return decode(prefix, path, max_pixels, /*header_only=*/true);
  } catch (const std::runtime_error&) {
    return decode(read_file(path), path, max_pixels, /*header_only=*/true);
  }
}

}  // namespace batchcam::io
