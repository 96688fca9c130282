// Torch-free stage functions implemented by both backends: cpu_* (src/cpu_*.cpp, C++17 +
// OpenMP, float or double) and cuda_* (src/*.cu, float, device pointers, launched on
// `stream`). src/binding.cpp checks shapes, allocates every buffer and calls them.
//
// Shapes are written next to each pointer. C cameras, N Gaussians, K SH coefficients per
// Gaussian (K >= (sh_degree + 1)^2), H x W image, TX x TY tiles of tile_size pixels,
// n_isect (camera, tile, Gaussian) intersections. All arrays are dense, row-major and
// contiguous. Output buffers are written in full unless said otherwise; gradient outputs
// (v_*) must be zeroed by the caller and are accumulated into.
//
// Stages (the order render() calls them):
//   1. project_forward        Gaussians x cameras -> screen-space Gaussians
//   2. count_tiles            tiles touched by each (camera, Gaussian)
//   3. bin_and_sort           per-tile lists of Gaussian ids, nearest first
//   4. raster_forward         front-to-back blending per pixel
//   5. raster_backward        gradients of screen-space Gaussians
//   6. project_backward       gradients of Gaussians and camera poses
#pragma once

#include <cstddef>
#include <cstdint>

namespace recon {

struct ProjectParams {
  int C = 0;                 // cameras
  int N = 0;                 // Gaussians
  int K = 1;                 // SH coefficients per Gaussian in `sh`
  int sh_degree = 0;         // bands used, 0..3, (sh_degree + 1)^2 <= K
  int width = 0;             // image width in pixels
  int height = 0;            // image height in pixels
  float near_plane = 0.01f;  // Gaussians with camera z <= near_plane are culled
  float far_plane = 1e10f;   // ... or z >= far_plane
  bool antialiased = false;  // multiply opacity by the compensation (gsplat "antialiased")
};

struct TileParams {
  int C = 0;
  int N = 0;
  int width = 0;
  int height = 0;
  int tile_size = 16;  // 8, 16 or 32
  int tiles_x() const { return (width + tile_size - 1) / tile_size; }
  int tiles_y() const { return (height + tile_size - 1) / tile_size; }
};

// ---------------------------------------------------------------------------------------
// CPU backend. T is float or double.

// means [N,3], log_scales [N,3], quats [N,4] (wxyz, any norm), opacity_logits [N],
// sh [N,K,3], viewmats [C,4,4] (T_cam_world), Ks [C,3,3]
// -> means2d [C,N,2] pixels, conics [C,N,3] (a, b, c of the inverse dilated 2D covariance),
//    colors [C,N,3] (SH + 0.5 clamped at 0), opacities [C,N] (sigmoid x compensation),
//    depths [C,N] camera z, radii [C,N,2] int32 pixel half-extents (0, 0 = culled).
// Culled entries have every output set to 0.
template <typename T>
void cpu_project_forward(const ProjectParams& p, const T* means, const T* log_scales, const T* quats,
                         const T* opacity_logits, const T* sh, const T* viewmats, const T* Ks, T* means2d,
                         T* conics, T* colors, T* opacities, T* depths, int32_t* radii);

// Inputs as cpu_project_forward plus radii [C,N,2] from it and the upstream gradients
// v_means2d [C,N,2], v_conics [C,N,3], v_colors [C,N,3], v_opacities [C,N], v_depths [C,N].
// Accumulates v_means [N,3], v_log_scales [N,3], v_quats [N,4], v_opacity_logits [N],
// v_sh [N,K,3], v_viewmats [C,4,4] (row 3 stays 0). Culled entries contribute nothing.
template <typename T>
void cpu_project_backward(const ProjectParams& p, const T* means, const T* log_scales, const T* quats,
                          const T* opacity_logits, const T* sh, const T* viewmats, const T* Ks,
                          const int32_t* radii, const T* v_means2d, const T* v_conics, const T* v_colors,
                          const T* v_opacities, const T* v_depths, T* v_means, T* v_log_scales, T* v_quats,
                          T* v_opacity_logits, T* v_sh, T* v_viewmats);

// means2d [C,N,2], radii [C,N,2] -> tiles_per_gaussian [C,N] int32: how many tiles the
// bounding box of each (camera, Gaussian) touches (0 for culled ones).
template <typename T>
void cpu_count_tiles(const TileParams& p, const T* means2d, const int32_t* radii,
                     int32_t* tiles_per_gaussian);

// isect_offsets [C,N] int64: exclusive prefix sum of tiles_per_gaussian; n_isect its total.
// -> tile_offsets [C*TY*TX + 1] int64: the entries of tile t (row-major, t = ty*TX + tx)
//    of camera c are flat_ids[tile_offsets[c*TY*TX + t] : tile_offsets[c*TY*TX + t + 1]];
//    flat_ids [n_isect] int32: Gaussian index in [0, N), sorted by depth (nearest first;
//    the CPU breaks ties by index, CUDA may not) within each tile.
// temp / temp_bytes: scratch, unused on the CPU (kept so both backends share one signature).
template <typename T>
void cpu_bin_and_sort(const TileParams& p, const T* means2d, const int32_t* radii, const T* depths,
                      const int64_t* isect_offsets, int64_t n_isect, int64_t* tile_offsets, int32_t* flat_ids,
                      void* temp, size_t temp_bytes);

// Screen-space Gaussians [C,N,*] as produced by project_forward, tile lists from
// bin_and_sort -> rgb [C,H,W,3] (no background), depth_sum [C,H,W] (sum of weight x z,
// not normalised), alpha [C,H,W] (1 - final transmittance), n_contrib [C,H,W] int32 (how
// many entries of the pixel's tile list were visited; the backward pass starts there).
template <typename T>
void cpu_raster_forward(const TileParams& p, const T* means2d, const T* conics, const T* colors,
                        const T* opacities, const T* depths, const int64_t* tile_offsets,
                        const int32_t* flat_ids, T* rgb, T* depth_sum, T* alpha, int32_t* n_contrib);

// Forward inputs and outputs (alpha, n_contrib) plus v_rgb [C,H,W,3], v_depth_sum [C,H,W],
// v_alpha [C,H,W] -> accumulates v_means2d [C,N,2], v_conics [C,N,3], v_colors [C,N,3],
// v_opacities [C,N], v_depths [C,N]. Race-free and bit-identical for any thread count:
// one slot per tile-list entry, summed per Gaussian in tile order.
template <typename T>
void cpu_raster_backward(const TileParams& p, const T* means2d, const T* conics, const T* colors,
                         const T* opacities, const T* depths, const int64_t* tile_offsets,
                         const int32_t* flat_ids, const T* alpha, const int32_t* n_contrib, const T* v_rgb,
                         const T* v_depth_sum, const T* v_alpha, T* v_means2d, T* v_conics, T* v_colors,
                         T* v_opacities, T* v_depths);

// Work counted by the last cpu_raster_forward / cpu_raster_backward call (any dtype), for
// the benchmark's throughput figures: pixel lanes evaluated (TS per tile row visited per
// entry), Gaussian-pixel pairs blended in forward, and tile-list entries.
struct CpuRasterStats {
  int64_t forward_lanes = 0;
  int64_t forward_blended = 0;
  int64_t backward_lanes = 0;
  int64_t n_isect = 0;
};
CpuRasterStats cpu_last_raster_stats();
// Instruction set of the CPU blending kernels in use ("avx512", "avx2", "generic"), chosen
// at run time, and its float lanes per vector.
const char* cpu_isa();
int cpu_isa_float_lanes();
// Measured lane-FMAs per second of `threads` threads running `iters` rounds of independent
// FMA chains with that instruction set (the machine's peak for the blending kernels).
double cpu_fma_rate(int64_t iters, int threads);

// ---------------------------------------------------------------------------------------
// CUDA backend: the same contracts with float device pointers. count_tiles and
// bin_and_sort may use `temp` scratch: call cuda_bin_and_sort_temp_bytes first.
#ifdef RECON_WITH_CUDA
}  // namespace recon
#include <cuda_runtime.h>
namespace recon {

void cuda_project_forward(const ProjectParams& p, const float* means, const float* log_scales,
                          const float* quats, const float* opacity_logits, const float* sh,
                          const float* viewmats, const float* Ks, float* means2d, float* conics,
                          float* colors, float* opacities, float* depths, int32_t* radii,
                          cudaStream_t stream);

void cuda_project_backward(const ProjectParams& p, const float* means, const float* log_scales,
                           const float* quats, const float* opacity_logits, const float* sh,
                           const float* viewmats, const float* Ks, const int32_t* radii,
                           const float* v_means2d, const float* v_conics, const float* v_colors,
                           const float* v_opacities, const float* v_depths, float* v_means,
                           float* v_log_scales, float* v_quats, float* v_opacity_logits, float* v_sh,
                           float* v_viewmats, cudaStream_t stream);

void cuda_count_tiles(const TileParams& p, const float* means2d, const int32_t* radii,
                      int32_t* tiles_per_gaussian, cudaStream_t stream);

// Scratch bytes cuda_bin_and_sort needs for n_isect intersections.
size_t cuda_bin_and_sort_temp_bytes(const TileParams& p, int64_t n_isect);

void cuda_bin_and_sort(const TileParams& p, const float* means2d, const int32_t* radii, const float* depths,
                       const int64_t* isect_offsets, int64_t n_isect, int64_t* tile_offsets,
                       int32_t* flat_ids, void* temp, size_t temp_bytes, cudaStream_t stream);

void cuda_raster_forward(const TileParams& p, const float* means2d, const float* conics, const float* colors,
                         const float* opacities, const float* depths, const int64_t* tile_offsets,
                         const int32_t* flat_ids, float* rgb, float* depth_sum, float* alpha,
                         int32_t* n_contrib, cudaStream_t stream);

void cuda_raster_backward(const TileParams& p, const float* means2d, const float* conics, const float* colors,
                          const float* opacities, const float* depths, const int64_t* tile_offsets,
                          const int32_t* flat_ids, const float* alpha, const int32_t* n_contrib,
                          const float* v_rgb, const float* v_depth_sum, const float* v_alpha,
                          float* v_means2d, float* v_conics, float* v_colors, float* v_opacities,
                          float* v_depths, cudaStream_t stream);
#endif

}  // namespace recon
