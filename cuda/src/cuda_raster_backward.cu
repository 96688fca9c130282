// CUDA backward blending: one thread block per (camera, tile), one thread per pixel,
// walking the tile's list back to front (from the furthest entry any pixel visited in the
// forward pass) in shared-memory batches. Each pixel recovers the transmittance before
// every Gaussian by dividing by (1 - alpha) (alpha is capped below 1 for this), so no
// per-pixel history is stored. Per-Gaussian gradients are summed over the 32 pixels of a
// warp with shuffles first, then one lane adds them with atomics: 32x fewer atomics, and
// no two lanes of a warp ever contend for the same address.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "recon/api.h"
#include "recon/cuda_common.cuh"
#include "recon/math.h"

namespace recon {
namespace {

// Gradient slots per (camera, Gaussian): means2d x, y; conic a, b, c; colour r, g, b;
// opacity; depth.
constexpr int kGradSlots = 10;

struct PixelState {
  float transmittance;  // before the Gaussian being processed (walking backwards)
  float t_final;        // after the last blended Gaussian (1 - alpha)
  float behind[4];      // rgb and depth blended behind the current Gaussian
  float v_in[5];        // upstream gradients: rgb, depth_sum, alpha
  int32_t visited;      // entries [0, visited) of the tile list reached this pixel
};

// The gradients one pixel gives one Gaussian (zero when the Gaussian does not touch it),
// the CUDA twin of the inner loop of cpu_raster_backward.
__device__ __forceinline__ void pixel_grads(PixelState& s, const Sym2<float>& conic, float opacity,
                                            const float4& color_depth, float dx, float dy, float a,
                                            float (&grad)[kGradSlots]) {
  const float inv1m = 1.f / (1.f - a);
  const float t_i = s.transmittance * inv1m;  // transmittance in front of this Gaussian
  const float w = a * t_i;
  const float col[4] = {color_depth.x, color_depth.y, color_depth.z, color_depth.w};
  float front = 0.f, back = 0.f;  // d(pixel)/d(this Gaussian's weight), and what lies behind
#pragma unroll
  for (int ch = 0; ch < 4; ++ch) {
    front += col[ch] * s.v_in[ch];
    back += s.behind[ch] * s.v_in[ch];
  }
  grad[5] = w * s.v_in[0];
  grad[6] = w * s.v_in[1];
  grad[7] = w * s.v_in[2];
  grad[9] = w * s.v_in[3];  // depth
  const float v_alpha = t_i * front - back * inv1m + s.v_in[4] * s.t_final * inv1m;
#pragma unroll
  for (int ch = 0; ch < 4; ++ch) s.behind[ch] += w * col[ch];
  s.transmittance = t_i;
  Sym2<float> v_conic = {0.f, 0.f, 0.f};
  Vec2<float> v_mean = {0.f, 0.f};
  float v_opacity = 0.f;
  gaussian_alpha_vjp(conic, opacity, dx, dy, v_alpha, v_conic, v_opacity, v_mean);
  grad[0] = v_mean.x;
  grad[1] = v_mean.y;
  grad[2] = v_conic.a;
  grad[3] = v_conic.b;
  grad[4] = v_conic.c;
  grad[8] = v_opacity;
}

template <int TS>
__global__ void __launch_bounds__(TS* TS)
    raster_backward_kernel(TileParams p, const float* __restrict__ means2d, const float* __restrict__ conics,
                           const float* __restrict__ colors, const float* __restrict__ opacities,
                           const float* __restrict__ depths, const int64_t* __restrict__ tile_offsets,
                           const int32_t* __restrict__ flat_ids, const float* __restrict__ alpha,
                           const int32_t* __restrict__ n_contrib, const float* __restrict__ v_rgb,
                           const float* __restrict__ v_depth_sum, const float* __restrict__ v_alpha,
                           float* __restrict__ v_means2d, float* __restrict__ v_conics,
                           float* __restrict__ v_colors, float* __restrict__ v_opacities,
                           float* __restrict__ v_depths) {
  constexpr int kBatch = TS * TS;
  __shared__ int32_t s_id[kBatch];
  __shared__ float2 s_xy[kBatch];
  __shared__ float4 s_conic_opacity[kBatch];
  __shared__ float4 s_color_depth[kBatch];
  __shared__ int s_block_visited;

  const int c = blockIdx.z;
  const int64_t job = (int64_t(c) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int px = blockIdx.x * TS + threadIdx.x, py = blockIdx.y * TS + threadIdx.y;
  const int tid = threadIdx.y * TS + threadIdx.x;
  const bool inside = px < p.width && py < p.height;
  const float cx = float(px) + 0.5f, cy = float(py) + 0.5f;
  const int64_t start = tile_offsets[job];
  const int64_t base = int64_t(c) * p.N;

  PixelState s = {1.f, 1.f, {0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f, 0.f}, 0};
  if (inside) {
    const int64_t pix = (int64_t(c) * p.height + py) * p.width + px;
    s.t_final = s.transmittance = 1.f - alpha[pix];
    s.v_in[0] = v_rgb[3 * pix];
    s.v_in[1] = v_rgb[3 * pix + 1];
    s.v_in[2] = v_rgb[3 * pix + 2];
    s.v_in[3] = v_depth_sum[pix];
    s.v_in[4] = v_alpha[pix];
    s.visited = n_contrib[pix];
  }
  // Only entries some pixel of the block (warp) visited need to be walked.
  if (tid == 0) s_block_visited = 0;
  __syncthreads();
  const int warp_visited = cuda::warp_max(s.visited);
  if ((tid % cuda::kWarpSize) == 0) atomicMax(&s_block_visited, warp_visited);
  __syncthreads();
  const int block_visited = s_block_visited;

  for (int64_t batch_end = start + block_visited; batch_end > start; batch_end -= kBatch) {
    __syncthreads();  // the previous batch is no longer read
    const int64_t batch_begin = max(start, batch_end - kBatch);
    const int count = int(batch_end - batch_begin);
    // Slot j holds entry batch_end - 1 - j: slot 0 is the furthest of the batch.
    const int64_t k = batch_end - 1 - tid;
    if (k >= batch_begin) {
      const int32_t n = flat_ids[k];
      const int64_t g = base + n;
      s_id[tid] = n;
      cuda::stage_gaussian(g, means2d, conics, colors, opacities, depths, s_xy[tid], s_conic_opacity[tid],
                           s_color_depth[tid]);
    }
    __syncthreads();
    // Skip the slots behind everything this warp visited (warp-uniform bound).
    const int first = int(max(int64_t(0), batch_end - start - warp_visited));
    for (int j = first; j < count; ++j) {
      const int32_t local = int32_t(batch_end - 1 - j - start);
      const float4 co = s_conic_opacity[j];
      const float2 xy = s_xy[j];
      const Sym2<float> conic = {co.x, co.y, co.z};
      const float dx = xy.x - cx, dy = xy.y - cy;
      float a = 0.f;
      if (inside && local < s.visited) a = gaussian_alpha(conic, co.w, dx, dy);
      const bool valid = a != 0.f;
      if (!__any_sync(cuda::kFullWarpMask, valid)) continue;
      float grad[kGradSlots] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (valid) pixel_grads(s, conic, co.w, s_color_depth[j], dx, dy, a, grad);
      cuda::warp_sum(grad);
      if ((tid % cuda::kWarpSize) == 0) {
        const int64_t g = base + s_id[j];
        atomicAdd(v_means2d + 2 * g, grad[0]);
        atomicAdd(v_means2d + 2 * g + 1, grad[1]);
        atomicAdd(v_conics + 3 * g, grad[2]);
        atomicAdd(v_conics + 3 * g + 1, grad[3]);
        atomicAdd(v_conics + 3 * g + 2, grad[4]);
        atomicAdd(v_colors + 3 * g, grad[5]);
        atomicAdd(v_colors + 3 * g + 1, grad[6]);
        atomicAdd(v_colors + 3 * g + 2, grad[7]);
        atomicAdd(v_opacities + g, grad[8]);
        atomicAdd(v_depths + g, grad[9]);
      }
    }
  }
}

template <int TS>
void launch(const TileParams& p, const float* means2d, const float* conics, const float* colors,
            const float* opacities, const float* depths, const int64_t* tile_offsets, const int32_t* flat_ids,
            const float* alpha, const int32_t* n_contrib, const float* v_rgb, const float* v_depth_sum,
            const float* v_alpha, float* v_means2d, float* v_conics, float* v_colors, float* v_opacities,
            float* v_depths, cudaStream_t stream) {
  const dim3 grid(tiles_along(p.width, TS), tiles_along(p.height, TS), p.C);
  raster_backward_kernel<TS><<<grid, dim3(TS, TS), 0, stream>>>(
      p, means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, alpha, n_contrib, v_rgb,
      v_depth_sum, v_alpha, v_means2d, v_conics, v_colors, v_opacities, v_depths);
  cuda::check_launch("raster_backward_kernel");
}

}  // namespace

void cuda_raster_backward(const TileParams& p, const float* means2d, const float* conics, const float* colors,
                          const float* opacities, const float* depths, const int64_t* tile_offsets,
                          const int32_t* flat_ids, const float* alpha, const int32_t* n_contrib,
                          const float* v_rgb, const float* v_depth_sum, const float* v_alpha,
                          float* v_means2d, float* v_conics, float* v_colors, float* v_opacities,
                          float* v_depths, cudaStream_t stream) {
  if (p.C == 0 || p.N == 0 || p.width <= 0 || p.height <= 0) return;
  switch (p.tile_size) {
    case 8:
      return launch<8>(p, means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, alpha,
                       n_contrib, v_rgb, v_depth_sum, v_alpha, v_means2d, v_conics, v_colors, v_opacities,
                       v_depths, stream);
    case 16:
      return launch<16>(p, means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, alpha,
                        n_contrib, v_rgb, v_depth_sum, v_alpha, v_means2d, v_conics, v_colors, v_opacities,
                        v_depths, stream);
    case 32:
      return launch<32>(p, means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, alpha,
                        n_contrib, v_rgb, v_depth_sum, v_alpha, v_means2d, v_conics, v_colors, v_opacities,
                        v_depths, stream);
    default:
      throw std::runtime_error("recon CUDA rasteriser: tile_size must be 8, 16 or 32, got " +
                               std::to_string(p.tile_size));
  }
}

}  // namespace recon
