// Image post-processing: decoded float images in [0, 1] to 8-bit pixels.
// Rounds half to even (as numpy's round does), so the Python twin
// np.round(np.clip(x, 0, 1) * 255) gives the same bytes; NaN maps to 0.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace rv2 {

// Branch-free, so the loop vectorises (std::nearbyint does not). Adding and then
// subtracting 1.5 * 2^23 rounds a float in [0, 255] to the nearest integer, ties to
// even, in the default rounding mode; it is exact there and kept without -ffast-math.
static inline uint8_t unit_to_u8(float v) {
  v = v > 0.0f ? v : 0.0f;  // also NaN -> 0
  v = v < 1.0f ? v : 1.0f;
  const float magic = 12582912.0f;
  return static_cast<uint8_t>(static_cast<int32_t>((v * 255.0f + magic) - magic));
}

// Restrict-qualified pointers of its own: in the chunk lambda the compiler cannot tell
// the stores from the captured pointers and keeps the loop scalar.
static void to_u8_range(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = unit_to_u8(src[i]);
}

static py::array_t<uint8_t> to_uint8(
    py::array_t<float, py::array::c_style | py::array::forcecast> x) {
  py::buffer_info in = x.request();
  py::array_t<uint8_t> out(in.shape);
  const float* src = static_cast<const float*>(in.ptr);
  uint8_t* dst = static_cast<uint8_t*>(out.request().ptr);
  const int64_t n = static_cast<int64_t>(in.size);
  {
    py::gil_scoped_release release;
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
      to_u8_range(src + b, dst + b, e - b);
    });
  }
  return out;
}

#ifdef RV2_WITH_CUDA
// Defined in kernels/cuda/postprocess.cu: raw device pointers, so callers
// can pass tensor.data_ptr() without rv2 linking torch.
void to_uint8_cuda(uintptr_t src, uintptr_t dst, int64_t n, uintptr_t stream);
#endif

void register_kernels(py::module_& m) {
  m.def("to_uint8", &to_uint8, py::arg("x"),
        "float32 image(s) in [0, 1] -> uint8, clamped, half-to-even rounding, NaN -> 0");
#ifdef RV2_WITH_CUDA
  m.def("to_uint8_cuda", &to_uint8_cuda, py::arg("src_ptr"), py::arg("dst_ptr"),
        py::arg("n"), py::arg("stream") = 0,
        "Device version of to_uint8 on raw CUDA pointers (float32 -> uint8).");
#endif
}

}  // namespace rv2
