#include "batchcam/io/png.h"

#include "batchcam/io/file.h"

#include <png.h>
#include <torch/torch.h>

#include <stdexcept>
#include <vector>

namespace batchcam::io {

namespace {
void append_bytes(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), length);
}

}  // namespace

std::string encode_png(const torch::Tensor& image) {
  TORCH_CHECK(image.scalar_type() == torch::kUInt8 && (image.dim() == 2 || (image.dim() == 3 && image.size(2) == 3)),
              "encode_png expects uint8 [H, W] or [H, W, 3], got ", image.sizes(), " ", image.scalar_type());
  const auto img = image.contiguous().cpu();
  const auto h = static_cast<png_uint_32>(img.size(0)), w = static_cast<png_uint_32>(img.size(1));
  // volatile: read after setjmp below (GCC's -Wclobbered cannot tell that it never changes).
  const volatile int channels = img.dim() == 2 ? 1 : 3;
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    throw std::runtime_error("encode_png: libpng could not start");
  }
  std::vector<png_bytep> rows(h);
  if (setjmp(png_jmpbuf(png))) {  // libpng reports errors by longjmp
    png_destroy_write_struct(&png, &info);
    throw std::runtime_error("encode_png: libpng failed");
  }
  png_set_write_fn(png, &out, append_bytes, nullptr);
  png_set_IHDR(png, info, w, h, 8, channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  auto* base = img.data_ptr<uint8_t>();
  for (png_uint_32 r = 0; r < h; ++r) rows[r] = base + static_cast<size_t>(r) * w * channels;
  png_set_rows(png, info, rows.data());
  png_write_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

void write_png(const std::string& path, const torch::Tensor& image) {
  io::write_file_atomic(path, encode_png(image));
}

}  // namespace batchcam::io
