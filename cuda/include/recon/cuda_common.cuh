// CUDA-only helpers for the rasteriser kernels (cuda/src/*.cu): error checks, launch
// sizes and warp-level reductions. The math itself lives in the shared RECON_HD header
// so that the CPU backend computes exactly the same numbers; nothing here is math.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cmath>
#include <stdexcept>
#include <string>

namespace recon {
namespace cuda {

// Threads per block of the per-Gaussian kernels (projection and its backward, binning).
constexpr int kThreadsPerBlock = 256;
constexpr unsigned kFullWarpMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Throws with the failing step's name: the binding turns C++ exceptions into Python errors.
inline void check(cudaError_t status, const char *what) {
    if (status != cudaSuccess) {
        throw std::runtime_error(std::string("recon CUDA rasteriser: ") + what + " failed: " +
                                 cudaGetErrorString(status));
    }
}

// Checks that the last kernel launch was accepted (bad configuration, no device, ...).
inline void check_launch(const char *kernel) { check(cudaGetLastError(), kernel); }

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

// TileParams::tiles_x()/tiles_y() are host-only (api.h is plain C++): the device twin.
__host__ __device__ __forceinline__ int tiles_along(int pixels, int tile_size) {
    return (pixels + tile_size - 1) / tile_size;
}

// Tiles [x0, x1) x [y0, y1) touched by the bounding box of a Gaussian at (mx, my) with
// pixel half extents (rx, ry). The same formula as the CPU backend's tile_range (cpu_raster.cpp),
// so both backends bin identically; count_tiles and bin_and_sort must agree exactly.
struct TileRect {
    int x0, x1, y0, y1;
};

__device__ __forceinline__ TileRect tile_rect(float mx, float my, int rx, int ry, int tile_size,
                                              int tiles_x, int tiles_y) {
    const float ts = float(tile_size);
    auto clampi = [](int v, int hi) { return min(max(v, 0), hi); };
    return {clampi(int(floorf((mx - float(rx)) / ts)), tiles_x),
            clampi(int(ceilf((mx + float(rx)) / ts)), tiles_x),
            clampi(int(floorf((my - float(ry)) / ts)), tiles_y),
            clampi(int(ceilf((my + float(ry)) / ts)), tiles_y)};
}

}  // namespace cuda
}  // namespace recon
