// CUDA forward blending: one thread block per (camera, tile), one thread per pixel. The
// block walks its tile's depth-sorted Gaussian list in batches staged in shared memory
// (one Gaussian loaded per thread per batch, then every thread blends the whole batch),
// front to back, and stops once every pixel of the tile is saturated. Per-pixel math is
// recon/math.h's gaussian_alpha, as in the CPU backend (cpu_raster.cpp).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "recon/api.h"
#include "recon/cuda_common.cuh"
#include "recon/math.h"

namespace recon {
namespace {

template <int TS>
__global__ void __launch_bounds__(TS* TS)
    raster_forward_kernel(TileParams p, const float* __restrict__ means2d, const float* __restrict__ conics,
                          const float* __restrict__ colors, const float* __restrict__ opacities,
                          const float* __restrict__ depths, const int64_t* __restrict__ tile_offsets,
                          const int32_t* __restrict__ flat_ids, float* __restrict__ rgb,
                          float* __restrict__ depth_sum, float* __restrict__ alpha,
                          int32_t* __restrict__ n_contrib) {
  constexpr int kBatch = TS * TS;  // one staged Gaussian per thread
  __shared__ float2 s_xy[kBatch];
  __shared__ float4 s_conic_opacity[kBatch];  // conic a, b, c and opacity
  __shared__ float4 s_color_depth[kBatch];    // r, g, b and camera z

  const int c = blockIdx.z;
  const int tiles_x = gridDim.x;
  const int64_t job = (int64_t(c) * gridDim.y + blockIdx.y) * tiles_x + blockIdx.x;
  const int px = blockIdx.x * TS + threadIdx.x, py = blockIdx.y * TS + threadIdx.y;
  const int tid = threadIdx.y * TS + threadIdx.x;
  const bool inside = px < p.width && py < p.height;
  const float cx = float(px) + 0.5f, cy = float(py) + 0.5f;  // pixel centre
  const int64_t start = tile_offsets[job], end = tile_offsets[job + 1];
  const int64_t base = int64_t(c) * p.N;

  float transmittance = 1.f;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};     // rgb and depth, weighted
  int32_t visited = int32_t(end - start);  // entries before early termination
  // Threads past the image edge still stage Gaussians for the others, they blend nothing.
  bool done = !inside;

  for (int64_t batch = start; batch < end; batch += kBatch) {
    // Doubles as the barrier that protects the shared batch from being overwritten.
    if (__syncthreads_count(done) == kBatch) break;
    const int64_t k = batch + tid;
    if (k < end) {
      const int64_t g = base + flat_ids[k];
      cuda::stage_gaussian(g, means2d, conics, colors, opacities, depths, s_xy[tid], s_conic_opacity[tid],
                           s_color_depth[tid]);
    }
    __syncthreads();
    const int count = int(min(int64_t(kBatch), end - batch));
    for (int j = 0; !done && j < count; ++j) {
      const float4 co = s_conic_opacity[j];
      const float2 xy = s_xy[j];
      const Sym2<float> conic = {co.x, co.y, co.z};
      const float a = gaussian_alpha(conic, co.w, xy.x - cx, xy.y - cy);
      if (a == 0.f) continue;
      const float next = transmittance * (1.f - a);
      if (next <= kTransmittanceMin) {
        // this entry is not blended; the backward pass starts just before it
        done = true;
        visited = int32_t(batch + j - start);
        break;
      }
      const float w = a * transmittance;
      const float4 cd = s_color_depth[j];
      acc[0] += w * cd.x;
      acc[1] += w * cd.y;
      acc[2] += w * cd.z;
      acc[3] += w * cd.w;
      transmittance = next;
    }
  }
  if (!inside) return;
  const int64_t pix = (int64_t(c) * p.height + py) * p.width + px;
  rgb[3 * pix] = acc[0];
  rgb[3 * pix + 1] = acc[1];
  rgb[3 * pix + 2] = acc[2];
  depth_sum[pix] = acc[3];
  alpha[pix] = 1.f - transmittance;
  n_contrib[pix] = visited;
}

template <int TS>
void launch(const TileParams& p, const float* means2d, const float* conics, const float* colors,
            const float* opacities, const float* depths, const int64_t* tile_offsets, const int32_t* flat_ids,
            float* rgb, float* depth_sum, float* alpha, int32_t* n_contrib, cudaStream_t stream) {
  const dim3 grid(tiles_along(p.width, TS), tiles_along(p.height, TS), p.C);
  raster_forward_kernel<TS><<<grid, dim3(TS, TS), 0, stream>>>(p, means2d, conics, colors, opacities, depths,
                                                               tile_offsets, flat_ids, rgb, depth_sum, alpha,
                                                               n_contrib);
  cuda::check_launch("raster_forward_kernel");
}

}  // namespace

void cuda_raster_forward(const TileParams& p, const float* means2d, const float* conics, const float* colors,
                         const float* opacities, const float* depths, const int64_t* tile_offsets,
                         const int32_t* flat_ids, float* rgb, float* depth_sum, float* alpha,
                         int32_t* n_contrib, cudaStream_t stream) {
  if (p.C == 0 || p.width <= 0 || p.height <= 0) return;
  switch (p.tile_size) {
    case 8:
      return launch<8>(p, means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, rgb, depth_sum,
                       alpha, n_contrib, stream);
    case 16:
      return launch<16>(p, means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, rgb, depth_sum,
                        alpha, n_contrib, stream);
    case 32:
      return launch<32>(p, means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, rgb, depth_sum,
                        alpha, n_contrib, stream);
    default:
      throw std::runtime_error("recon CUDA rasteriser: tile_size must be 8, 16 or 32, got " +
                               std::to_string(p.tile_size));
  }
}

}  // namespace recon
