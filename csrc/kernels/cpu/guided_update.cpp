// Classifier-free guidance combine + per-row scheduler update, fused (CPU twin of
// kernels/cuda/guided_update.cu; numpy twin: rv2._native.guided_update_py).
//
// For row r of n, element i of m:
//   e   = eu + g * (ec - eu)                        guided noise prediction
//   mo  = W[r,0] e + W[r,1] h0 + W[r,2] h1 + W[r,3] h2   multistep combination (PNDM's ets)
//   out = A[r] * x + B[r] * mo
// and e is written to e_out (the history of the next step). With W = (1, 0, 0, 0)
// this is one DDIM or Euler step; rv2.generate.slot_samplers gives A, B, W per slot.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace rv2 {

using farr = py::array_t<float, py::array::c_style | py::array::forcecast>;

static void check_shape(const farr& a, const char* name, py::ssize_t n, py::ssize_t m) {
  if (a.ndim() < 1 || a.shape(0) != n || a.size() != n * m)
    throw py::value_error(std::string("guided_update: ") + name + " must hold n x m = " +
                          std::to_string(n) + " x " + std::to_string(m) + " floats");
}

static py::tuple guided_update(farr eu, farr ec, float g, farr x, farr hist, farr A, farr B,
                               farr W) {
  const py::ssize_t n = x.ndim() ? x.shape(0) : 0;
  const py::ssize_t m = n ? x.size() / n : 0;
  check_shape(eu, "eu", n, m);
  check_shape(ec, "ec", n, m);
  check_shape(hist, "hist", n, 3 * m);
  if (A.size() != n || B.size() != n || W.size() != 4 * n)
    throw py::value_error("guided_update: A and B need n values, W n x 4");
  farr out(x.request().shape), e_out(x.request().shape);
  const float *pu = eu.data(), *pc = ec.data(), *px = x.data(), *ph = hist.data();
  const float *pa = A.data(), *pb = B.data(), *pw = W.data();
  float *po = out.mutable_data(), *pe = e_out.mutable_data();
  {
    py::gil_scoped_release release;
    parallel_for(n * m, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const int64_t r = k / m, i = k % m;
        const float ev = pu[k] + g * (pc[k] - pu[k]);
        const float* h = ph + r * 3 * m + i;
        const float* w = pw + 4 * r;
        const float mo = w[0] * ev + w[1] * h[0] + w[2] * h[m] + w[3] * h[2 * m];
        po[k] = pa[r] * px[k] + pb[r] * mo;
        pe[k] = ev;
      }
    });
  }
  return py::make_tuple(out, e_out);
}

#ifdef RV2_WITH_CUDA
// kernels/cuda/guided_update.cu: raw device pointers (float32, contiguous).
void guided_update_cuda(uintptr_t eu, uintptr_t ec, float g, uintptr_t x, uintptr_t hist,
                        uintptr_t A, uintptr_t B, uintptr_t W, uintptr_t out, uintptr_t e_out,
                        int64_t n, int64_t m, uintptr_t stream);
#endif

void register_guided_update(py::module_& m) {
  m.def("guided_update", &guided_update, py::arg("eu"), py::arg("ec"), py::arg("guidance"),
        py::arg("x"), py::arg("hist"), py::arg("A"), py::arg("B"), py::arg("W"),
        "CFG combine + per-row scheduler update in one pass: (x_next, guided eps).");
#ifdef RV2_WITH_CUDA
  m.def("guided_update_cuda", &guided_update_cuda, py::arg("eu_ptr"), py::arg("ec_ptr"),
        py::arg("guidance"), py::arg("x_ptr"), py::arg("hist_ptr"), py::arg("A_ptr"),
        py::arg("B_ptr"), py::arg("W_ptr"), py::arg("out_ptr"), py::arg("e_out_ptr"),
        py::arg("n"), py::arg("m"), py::arg("stream") = 0,
        "Device guided_update on raw CUDA pointers (float32, contiguous).");
#endif
}

}  // namespace rv2
