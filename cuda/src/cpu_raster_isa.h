// Run-time choice of the CPU tile kernels' instruction set (cpu_raster_isa.cpp).
#pragma once

#include <cstdint>

#include "cpu_isa.h"
#include "cpu_raster_tile.h"

namespace recon {
namespace cpu {

template <typename T> struct TileKernels {
  void (*forward)(const PackedSplat<T>* g, const int32_t* ids, int64_t n, const Tile& tile, T* rgb,
                  T* depth_sum, T* alpha, int32_t* n_contrib, TileCounts& counts);
  void (*backward)(const PackedSplat<T>* g, const int32_t* ids, int64_t n, const Tile& tile, const T* alpha,
                   const int32_t* n_contrib, const T* v_rgb, const T* v_depth_sum, const T* v_alpha, T* grads,
                   TileCounts& counts);
};

// The active ISA's kernels for tile_size 8, 16 or 32 (float); double always uses generic.
template <typename T> TileKernels<T> tile_kernels(int tile_size);
template <> TileKernels<float> tile_kernels<float>(int tile_size);
template <> TileKernels<double> tile_kernels<double>(int tile_size);

// Runs `iters` rounds of independent FMA chains with the active ISA's vectors on the calling
// thread; returns the lane-FMAs done (time it to get the peak rate). *sink defeats dead-code
// elimination.
double fma_loop(int64_t iters, double* sink);

}  // namespace cpu
}  // namespace recon
