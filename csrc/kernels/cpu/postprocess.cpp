// Image post-processing: decoded float images in [0, 1] to 8-bit pixels.
// Rounds half to even (as numpy's round does), so the Python twin
// np.round(np.clip(x, 0, 1) * 255) gives the same bytes; NaN maps to 0.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>

#include "common/parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace rv2 {

static inline uint8_t unit_to_u8(float v) {
  if (!(v > 0.0f)) return 0;  // also catches NaN
  if (v >= 1.0f) return 255;
  return static_cast<uint8_t>(std::nearbyint(v * 255.0f));
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
      for (int64_t i = b; i < e; ++i) dst[i] = unit_to_u8(src[i]);
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
