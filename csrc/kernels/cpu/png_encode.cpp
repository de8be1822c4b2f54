// PNG encoding of 8-bit grayscale and RGB images, for the store's writers:
// the image is filtered and deflated with the GIL released, so the write
// pool's threads encode in parallel with each other and with Python.
//
// Each row gets the filter (None, Sub, Up, Average, Paeth) whose output has
// the smallest sum of absolute values read as signed bytes, the heuristic of
// libpng and Pillow; then one zlib stream goes into a single IDAT chunk.
// Without zlib at build time the op is absent and Pillow encodes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "registry.h"

#ifdef RV2_WITH_ZLIB
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace rv2 {
namespace {

void put_u32(std::string& out, uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 8), static_cast<char>(v)};
  out.append(b, 4);
}

void put_chunk(std::string& out, const char* type, const std::string& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.append(type, 4);
  out.append(data);
  const auto* p = reinterpret_cast<const Bytef*>(out.data() + start);
  put_u32(out, static_cast<uint32_t>(crc32(0L, p, static_cast<uInt>(data.size() + 4))));
}

inline uint8_t paeth(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return static_cast<uint8_t>(a);
  return static_cast<uint8_t>(pb <= pc ? b : c);
}

// Sum of |x| over a filtered row, its bytes read as signed.
inline uint64_t cost(const uint8_t* r, int64_t n) {
  uint64_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<uint64_t>(std::abs(static_cast<int8_t>(r[i])));
  return s;
}

// The filtered rows (filter byte + row) of an h x stride image; `adaptive`
// false leaves every row unfiltered (compression level 0).
std::vector<uint8_t> filter_rows(const uint8_t* px, int64_t h, int64_t stride, int bpp, bool adaptive) {
  std::vector<uint8_t> out(static_cast<size_t>((stride + 1) * h));
  std::vector<uint8_t> zero(static_cast<size_t>(stride), 0);
  std::vector<uint8_t> cand(static_cast<size_t>(5 * stride));
  for (int64_t y = 0; y < h; ++y) {
    const uint8_t* cur = px + y * stride;
    const uint8_t* up = y ? cur - stride : zero.data();
    uint8_t* dst = out.data() + y * (stride + 1);
    if (!adaptive) {
      dst[0] = 0;
      std::copy(cur, cur + stride, dst + 1);
      continue;
    }
    uint8_t* f[5];
    for (int k = 0; k < 5; ++k) f[k] = cand.data() + k * stride;
    for (int64_t i = 0; i < stride; ++i) {
      const int a = i >= bpp ? cur[i - bpp] : 0;
      const int b = up[i];
      const int c = i >= bpp ? up[i - bpp] : 0;
      const int x = cur[i];
      f[0][i] = static_cast<uint8_t>(x);
      f[1][i] = static_cast<uint8_t>(x - a);
      f[2][i] = static_cast<uint8_t>(x - b);
      f[3][i] = static_cast<uint8_t>(x - ((a + b) >> 1));
      f[4][i] = static_cast<uint8_t>(x - paeth(a, b, c));
    }
    int best = 0;
    uint64_t best_cost = cost(f[0], stride);
    for (int k = 1; k < 5; ++k) {
      const uint64_t ck = cost(f[k], stride);
      if (ck < best_cost) best = k, best_cost = ck;
    }
    dst[0] = static_cast<uint8_t>(best);
    std::copy(f[best], f[best] + stride, dst + 1);
  }
  return out;
}

std::string deflate_all(const std::vector<uint8_t>& data, int level) {
  z_stream zs{};
  // Z_FILTERED, as libpng uses for filtered rows: 10% smaller than zlib's
  // default strategy on smooth noisy images; on radiographs as small as Pillow
  if (deflateInit2(&zs, level, Z_DEFLATED, 15, 8, Z_FILTERED) != Z_OK)
    throw std::runtime_error("png_encode: zlib deflateInit2 failed");
  std::string out(deflateBound(&zs, static_cast<uLong>(data.size())), '\0');
  zs.next_in = const_cast<Bytef*>(data.data());
  zs.avail_in = static_cast<uInt>(data.size());
  int rc = Z_OK;
  while (rc == Z_OK) {  // the bound is usually enough; grow if it was not
    const size_t used = zs.total_out;
    if (used == out.size()) out.resize(out.size() * 2 + 64);
    zs.next_out = reinterpret_cast<Bytef*>(&out[used]);
    zs.avail_out = static_cast<uInt>(out.size() - used);
    rc = deflate(&zs, Z_FINISH);
  }
  const size_t n = zs.total_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) throw std::runtime_error("png_encode: zlib deflate failed");
  out.resize(n);
  return out;
}

}  // namespace

// PNG file bytes of an h x w x channels (1 or 3) uint8 image.
std::string encode_png(const uint8_t* px, int64_t h, int64_t w, int channels, int level) {
  static const char kSignature[8] = {'\x89', 'P', 'N', 'G', '\r', '\n', '\x1a', '\n'};
  std::string ihdr;
  put_u32(ihdr, static_cast<uint32_t>(w));
  put_u32(ihdr, static_cast<uint32_t>(h));
  const char rest[5] = {8, static_cast<char>(channels == 3 ? 2 : 0), 0, 0, 0};  // depth, colour type, methods
  ihdr.append(rest, 5);
  const std::string idat = deflate_all(filter_rows(px, h, w * channels, channels, level > 0), level);
  std::string out(kSignature, 8);
  put_chunk(out, "IHDR", ihdr);
  put_chunk(out, "IDAT", idat);
  put_chunk(out, "IEND", std::string());
  return out;
}

static py::bytes png_encode(py::array_t<uint8_t, py::array::c_style> img, int level) {
  if (img.ndim() != 2 && !(img.ndim() == 3 && (img.shape(2) == 1 || img.shape(2) == 3)))
    throw py::value_error("png_encode takes H x W (gray) or H x W x 3 (RGB) uint8, got ndim " +
                          std::to_string(img.ndim()));
  if (level < 0 || level > 9) throw py::value_error("png_encode: level must be 0..9");
  const int64_t h = img.shape(0), w = img.shape(1);
  const int c = img.ndim() == 3 ? static_cast<int>(img.shape(2)) : 1;
  if (h < 1 || w < 1 || (w * c + 1) * h > 0x7fffffff)  // zlib counts one buffer in 32 bits
    throw py::value_error("png_encode: image must be at least 1 x 1 and under 2 GB of pixels");
  std::string out;
  {
    py::gil_scoped_release release;
    out = encode_png(img.data(), h, w, c, level);
  }
  return py::bytes(out);
}

void register_png_encode(py::module_& m) {
  m.def("png_encode", &png_encode, py::arg("img"), py::arg("level"),
        "PNG bytes of an H x W (gray) or H x W x 3 (RGB) uint8 image; zlib level 0..9, "
        "adaptive row filters. Releases the GIL.");
}

}  // namespace rv2

#else  // no zlib: the op is absent and Pillow encodes

namespace rv2 {
void register_png_encode(pybind11::module_&) {}
}  // namespace rv2

#endif
