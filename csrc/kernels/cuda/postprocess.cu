// CUDA twin of kernels/cpu/postprocess.cpp: float32 in [0, 1] -> uint8.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace rv2 {

__global__ void to_uint8_kernel(const float* __restrict__ src, uint8_t* __restrict__ dst,
                                int64_t n) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (; i < n; i += stride) {
    float v = src[i];
    uint8_t out;
    if (!(v > 0.0f)) out = 0;
    else if (v >= 1.0f) out = 255;
    else out = static_cast<uint8_t>(__float2int_rn(v * 255.0f));  // half to even
    dst[i] = out;
  }
}

void to_uint8_cuda(uintptr_t src, uintptr_t dst, int64_t n, uintptr_t stream) {
  if (n <= 0) return;
  const int threads = 256;
  const int64_t blocks64 = (n + threads - 1) / threads;
  const int blocks = static_cast<int>(blocks64 < 65535 ? blocks64 : 65535);
  to_uint8_kernel<<<blocks, threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const float*>(src), reinterpret_cast<uint8_t*>(dst), n);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("to_uint8_cuda launch failed: ") +
                             cudaGetErrorString(err));
}

}  // namespace rv2
