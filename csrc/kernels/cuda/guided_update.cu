// CUDA twin of kernels/cpu/guided_update.cpp: CFG combine + per-row scheduler
// update in one pass over the slot batch (one read of eu, ec, x and the history,
// one write of x_next and the guided eps).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace rv2 {

__global__ void guided_update_kernel(const float* __restrict__ eu, const float* __restrict__ ec,
                                     float g, const float* __restrict__ x,
                                     const float* __restrict__ hist, const float* __restrict__ A,
                                     const float* __restrict__ B, const float* __restrict__ W,
                                     float* __restrict__ out, float* __restrict__ e_out,
                                     int64_t n, int64_t m) {
  const int64_t total = n * m;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += stride) {
    const int64_t r = k / m, i = k % m;
    // Same operation order as the CPU twin; no FMA contraction, for parity.
    const float ev = __fadd_rn(eu[k], __fmul_rn(g, __fsub_rn(ec[k], eu[k])));
    const float* h = hist + r * 3 * m + i;
    const float* w = W + 4 * r;
    float mo = __fmul_rn(w[0], ev);
    mo = __fadd_rn(mo, __fmul_rn(w[1], h[0]));
    mo = __fadd_rn(mo, __fmul_rn(w[2], h[m]));
    mo = __fadd_rn(mo, __fmul_rn(w[3], h[2 * m]));
    out[k] = __fadd_rn(__fmul_rn(A[r], x[k]), __fmul_rn(B[r], mo));
    e_out[k] = ev;
  }
}

void guided_update_cuda(uintptr_t eu, uintptr_t ec, float g, uintptr_t x, uintptr_t hist,
                        uintptr_t A, uintptr_t B, uintptr_t W, uintptr_t out, uintptr_t e_out,
                        int64_t n, int64_t m, uintptr_t stream) {
  if (n <= 0 || m <= 0) return;
  const int threads = 256;
  const int64_t blocks64 = (n * m + threads - 1) / threads;
  const int blocks = static_cast<int>(blocks64 < 65535 ? blocks64 : 65535);
  guided_update_kernel<<<blocks, threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const float*>(eu), reinterpret_cast<const float*>(ec), g,
      reinterpret_cast<const float*>(x), reinterpret_cast<const float*>(hist),
      reinterpret_cast<const float*>(A), reinterpret_cast<const float*>(B),
      reinterpret_cast<const float*>(W), reinterpret_cast<float*>(out),
      reinterpret_cast<float*>(e_out), n, m);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("guided_update_cuda launch failed: ") +
                             cudaGetErrorString(err));
}

}  // namespace rv2
