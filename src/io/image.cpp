#include "batchcam/io/image.h"

#include <jpeglib.h>
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

Image decode_png(const std::string& path, const std::string& bytes) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, bytes.data(), bytes.size())) {
    fail(path, std::string("unreadable PNG (") + image.message + ")");
  }
  const bool color = (image.format & PNG_FORMAT_FLAG_COLOR) != 0;
  image.format = color ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  Image out;
  out.width = image.width;
  out.height = image.height;
  out.channels = color ? 3 : 1;
  out.pixels.resize(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, out.pixels.data(), 0, nullptr)) {
    const std::string message = image.message;
    png_image_free(&image);
    fail(path, "unreadable PNG (" + message + ")");
  }
  return out;
}

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

void ignore_jpeg_message(j_common_ptr) {}

// Decodes into `out` (in the caller's frame, so longjmp leaves it intact); returns false
// with libjpeg's message on an error.
bool decode_jpeg_into(const std::string& bytes, Image& out, JpegError& error) {
  jpeg_decompress_struct info{};
  info.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = on_jpeg_error;
  error.manager.output_message = ignore_jpeg_message;
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&info);
    return false;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_read_header(&info, TRUE);
  info.out_color_space = info.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
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

Image decode_jpeg(const std::string& path, const std::string& bytes) {
  Image out;
  JpegError error{};
  if (!decode_jpeg_into(bytes, out, error)) fail(path, std::string("unreadable JPEG (") + error.message + ")");
  return out;
}
}  // namespace

Image read_image(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open for reading");
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const auto starts_with = [&](std::initializer_list<unsigned char> magic) {
    size_t i = 0;
    for (const unsigned char b : magic) {
      if (i >= bytes.size() || static_cast<unsigned char>(bytes[i++]) != b) return false;
    }
    return true;
  };
  if (starts_with({0x89, 'P', 'N', 'G'})) return decode_png(path, bytes);
  if (starts_with({0xFF, 0xD8, 0xFF})) return decode_jpeg(path, bytes);
  fail(path, "not a PNG or JPEG image");
}

}  // namespace batchcam::io
