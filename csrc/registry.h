// Each group of native ops registers itself on the module through one
// function declared here and called from bindings.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace rv2 {
void register_kernels(pybind11::module_& m);
void register_stats(pybind11::module_& m);  // stats/ranking.cpp
void register_scheduler(pybind11::module_& m);  // scheduler/pipeline.cpp
void register_guided_update(pybind11::module_& m);  // kernels/cpu/guided_update.cpp
void register_copy_finite(pybind11::module_& m);  // kernels/cpu/copy_finite.cpp
void register_png_encode(pybind11::module_& m);  // kernels/cpu/png_encode.cpp (needs zlib)
}  // namespace rv2
