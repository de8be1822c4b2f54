// Serving's batch assembly: copy a request's float32 tensor into the batch and
// check that every value is finite, in one pass. The tensor is usually a view
// of a request body that just arrived, so it is read from memory once here,
// where numpy's isfinite().all() and a copy would read it twice and allocate
// a boolean array as large as a quarter of it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "registry.h"

namespace py = pybind11;

namespace rv2 {

// The exponent bits of a float32: all ones for infinities and NaNs only.
static constexpr uint32_t kExponent = 0x7f800000u;

static bool all_finite_bits(const uint32_t* __restrict s, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>((s[i] & kExponent) == kExponent);
  return bad == 0;
}

static bool copy_finite(py::array src, py::object dst_obj) {
  const auto f32 = py::dtype::of<float>();
  if (!src.dtype().is(f32)) throw py::type_error("copy_finite takes float32 arrays");
  if (!(src.flags() & py::array::c_style))
    throw py::value_error("copy_finite takes C-contiguous arrays");
  const auto* s = static_cast<const uint32_t*>(src.data());
  const int64_t n = static_cast<int64_t>(src.size());
  if (dst_obj.is_none()) {  // check only
    py::gil_scoped_release release;
    return all_finite_bits(s, n);
  }
  auto dst = py::cast<py::array>(dst_obj);
  if (!dst.dtype().is(f32)) throw py::type_error("copy_finite takes float32 arrays");
  if (!(dst.flags() & py::array::c_style))
    throw py::value_error("copy_finite takes C-contiguous arrays");
  if (!dst.writeable()) throw py::value_error("copy_finite: the destination is read-only");
  if (src.size() != dst.size())
    throw py::value_error("copy_finite: source has " + std::to_string(src.size()) +
                          " values, destination " + std::to_string(dst.size()));
  const uint32_t* __restrict from = s;
  uint32_t* __restrict to = static_cast<uint32_t*>(dst.mutable_data());
  uint32_t bad = 0;
  {
    py::gil_scoped_release release;
    // a bitwise copy (a float copy may quiet a signalling NaN) and an OR of
    // exponent-all-ones flags: compare-equal and OR vectorise with SSE2 alone
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t v = from[i];
      to[i] = v;
      bad |= static_cast<uint32_t>((v & kExponent) == kExponent);
    }
  }
  return bad == 0;
}

void register_copy_finite(py::module_& m) {
  m.def("copy_finite", &copy_finite, py::arg("src"), py::arg("dst"),
        "Copy float32 src into dst (same size, C-contiguous; None: only check); False if "
        "src holds a NaN or an infinity. Releases the GIL.");
}

}  // namespace rv2
