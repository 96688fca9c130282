// CUDA-only helpers for the rasteriser kernels (cuda/src/*.cu): error checks, launch
// sizes and warp-level reductions. The math itself lives in the shared RECON_HD header
// so that the CPU backend computes exactly the same numbers; nothing here is math.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace recon {
namespace cuda {

// Threads per block of the per-Gaussian kernels (projection and its backward, binning).
constexpr int kThreadsPerBlock = 256;
constexpr unsigned kFullWarpMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Throws with the failing step's name: the binding turns C++ exceptions into Python errors.
inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("recon CUDA rasteriser: ") + what +
                             " failed: " + cudaGetErrorString(status));
  }
}

// Checks that the last kernel launch was accepted (bad configuration, no device, ...).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline unsigned blocks_for(int64_t n_items, int threads = kThreadsPerBlock) {
  return static_cast<unsigned>((n_items + threads - 1) / threads);
}

// Number of bits needed to store values in [0, n): the sort only looks at key bits in use.
inline int bits_for(int64_t n) {
  int bits = 0;
  while ((int64_t(1) << bits) < n) ++bits;
  return bits;
}

// Sum of `value` over the 32 lanes of a warp, every lane gets the total. All lanes of the
// warp must call it (the backward kernels keep idle lanes alive for exactly this reason).
__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(kFullWarpMask, value, offset);
  }
  return value;
}

template <int N> __device__ __forceinline__ void warp_sum(float (&values)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) values[i] = warp_sum(values[i]);
}

__device__ __forceinline__ int warp_max(int value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = max(value, __shfl_xor_sync(kFullWarpMask, value, offset));
  }
  return value;
}

// Loads Gaussian g's blending inputs into one shared-memory slot: the forward and backward
// raster kernels stage batches of the same three packed values.
__device__ __forceinline__ void stage_gaussian(int64_t g, const float* __restrict__ means2d,
                                               const float* __restrict__ conics,
                                               const float* __restrict__ colors,
                                               const float* __restrict__ opacities,
                                               const float* __restrict__ depths, float2& xy,
                                               float4& conic_opacity, float4& color_depth) {
  xy = make_float2(means2d[2 * g], means2d[2 * g + 1]);
  conic_opacity = make_float4(conics[3 * g], conics[3 * g + 1], conics[3 * g + 2], opacities[g]);
  color_depth = make_float4(colors[3 * g], colors[3 * g + 1], colors[3 * g + 2], depths[g]);
}

// tiles_along and tile_range (shared with the CPU backend) live in recon/math.h.

}  // namespace cuda
}  // namespace recon
