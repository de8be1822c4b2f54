// The only PYBIND11_MODULE of rv2. Python reaches it through rv2/_native.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common/parallel.h"
#include "registry.h"
#include "rv2_build_config.h"

namespace py = pybind11;

static py::dict build_info() {
  py::dict info;
#ifdef RV2_WITH_CUDA
  info["target"] = "cuda";
  info["cuda_archs"] = std::string(RV2_CUDA_ARCHS_STR);
  info["cuda_version"] = std::string(RV2_CUDA_VERSION_STR);
#else
  info["target"] = "cpu";
  info["cuda_archs"] = std::string("");
  info["cuda_version"] = std::string("");
#endif
  info["compiler"] = std::string(RV2_CXX_COMPILER);
  info["cplusplus"] = static_cast<long>(__cplusplus);
  info["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                     std::to_string(PYBIND11_VERSION_MINOR) + "." +
                     std::to_string(PYBIND11_VERSION_PATCH);
  info["num_threads"] = rv2::num_threads();
  return info;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "rv2 native ops (see csrc/README.md)";
  m.def("build_info", &build_info,
        "Target, compiler and CUDA architectures this module was built for.");
  m.def("num_threads", &rv2::num_threads, "Threads used by native kernels.");
  m.def("set_num_threads", &rv2::set_num_threads, py::arg("n"),
        "Set the threads used by native kernels (0 = default).");
  rv2::register_kernels(m);
  rv2::register_stats(m);
  rv2::register_scheduler(m);
  rv2::register_guided_update(m);
  rv2::register_copy_finite(m);
  rv2::register_png_encode(m);
}
