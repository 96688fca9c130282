// CUDA projection stage (forward and backward): Gaussians x cameras -> screen-space
// Gaussians, and its vector-Jacobian product back to the Gaussian parameters and the
// camera poses. Every formula comes from recon/math.h, which the CPU backend
// (cpu_project.cpp) also uses, so the two backends agree to float rounding.
#include <cuda_runtime.h>

#include "recon/api.h"
#include "recon/cuda_common.cuh"
#include "recon/math.h"

namespace recon {
namespace {

using cuda::kThreadsPerBlock;

// One thread per (camera, Gaussian), i = c * N + n. Culled entries get all-zero outputs.
__global__ void project_forward_kernel(ProjectParams p, const float* __restrict__ means,
                                       const float* __restrict__ log_scales, const float* __restrict__ quats,
                                       const float* __restrict__ opacity_logits, const float* __restrict__ sh,
                                       const float* __restrict__ viewmats, const float* __restrict__ Ks,
                                       float* __restrict__ means2d, float* __restrict__ conics,
                                       float* __restrict__ colors, float* __restrict__ opacities,
                                       float* __restrict__ depths, int32_t* __restrict__ radii) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(p.C) * p.N) return;
  const int c = int(i / p.N);
  const int64_t n = i - int64_t(c) * p.N;
  const CameraView<float> cam = load_camera(viewmats + 16 * c, Ks + 9 * c);
  const Vec3<float> mean = {means[3 * n], means[3 * n + 1], means[3 * n + 2]};

  Vec3<float> pc = matvec(cam.R, mean);
  pc = {pc.x + cam.t.x, pc.y + cam.t.y, pc.z + cam.t.z};
  // Cull on depth before the (more expensive) covariance.
  bool ok = pc.z > p.near_plane && pc.z < p.far_plane;
  Vec2<float> m2 = {0.f, 0.f};
  Sym2<float> cov2d, conic = {0.f, 0.f, 0.f};
  float comp = 1.f, det = 0.f, opacity = 0.f;
  Vec2<float> rad = {0.f, 0.f};
  if (ok) {
    const Mat3<float> Rg = quat_to_rotmat(quats + 4 * n);
    const Mat3<float> cov = covariance(Rg, log_scales + 3 * n);
    Mat3<float> cov_c;
    world_to_cam(cam.R, cam.t, mean, cov, pc, cov_c);
    persp_proj(pc, cov_c, cam.K, p.width, p.height, m2, cov2d);
    ok = conic_from_cov2d(cov2d, conic, comp, det);
  }
  if (ok) {
    const float opacity_raw = sigmoid(opacity_logits[n]);
    opacity = p.antialiased ? opacity_raw * comp : opacity_raw;
    ok = opacity >= kAlphaThreshold;
  }
  if (ok) {
    rad = screen_radius(cov2d, opacity);
    ok = rad.x > 0.f && rad.y > 0.f && m2.x + rad.x > 0.f && m2.x - rad.x < float(p.width) &&
         m2.y + rad.y > 0.f && m2.y - rad.y < float(p.height);
  }
  Vec3<float> col = {0.f, 0.f, 0.f};
  if (ok) {
    const Vec3<float> dir = {mean.x - cam.centre.x, mean.y - cam.centre.y, mean.z - cam.centre.z};
    col = sh_color(p.sh_degree, dir, sh + int64_t(3) * p.K * n);
  } else {
    m2 = {0.f, 0.f};
    conic = {0.f, 0.f, 0.f};
    opacity = 0.f;
    pc.z = 0.f;
    rad = {0.f, 0.f};
  }
  means2d[2 * i] = m2.x;
  means2d[2 * i + 1] = m2.y;
  conics[3 * i] = conic.a;
  conics[3 * i + 1] = conic.b;
  conics[3 * i + 2] = conic.c;
  colors[3 * i] = col.x;
  colors[3 * i + 1] = col.y;
  colors[3 * i + 2] = col.z;
  opacities[i] = opacity;
  depths[i] = pc.z;
  radii[2 * i] = int32_t(rad.x);
  radii[2 * i + 1] = int32_t(rad.y);
}

// Pose gradient of one camera summed over the block's Gaussians: warp shuffles, then the
// warps' partial sums through shared memory, then 12 atomics per block (not per thread:
// every Gaussian adds to the same 12 floats, so per-thread atomics would serialise).
__device__ __forceinline__ void block_add_pose(float (&g)[12], float (*scratch)[12],
                                               float* __restrict__ v_viewmat) {
  cuda::warp_sum(g);
  const int lane = threadIdx.x % cuda::kWarpSize, warp = threadIdx.x / cuda::kWarpSize;
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < 12; ++k) scratch[warp][k] = g[k];
  }
  __syncthreads();
  if (threadIdx.x < 12) {
    float s = 0.f;
    for (int w = 0; w < kThreadsPerBlock / cuda::kWarpSize; ++w) s += scratch[w][threadIdx.x];
    // rows 0..2 of the [4, 4] pose: entry k of the 3x4 block sits at 4 * (k / 4) + k % 4 = k
    if (s != 0.f) atomicAdd(v_viewmat + threadIdx.x, s);
  }
  __syncthreads();  // scratch is reused for the next camera
}

// One thread per Gaussian, looping over the cameras: the Gaussian's own gradients (means,
// scales, quaternion, opacity, SH) are then owned by one thread and need no atomics; only
// the pose gradients are shared, and those are reduced per block.
__global__ void __launch_bounds__(kThreadsPerBlock)
    project_backward_kernel(ProjectParams p, const float* __restrict__ means,
                            const float* __restrict__ log_scales, const float* __restrict__ quats,
                            const float* __restrict__ opacity_logits, const float* __restrict__ sh,
                            const float* __restrict__ viewmats, const float* __restrict__ Ks,
                            const int32_t* __restrict__ radii, const float* __restrict__ v_means2d,
                            const float* __restrict__ v_conics, const float* __restrict__ v_colors,
                            const float* __restrict__ v_opacities, const float* __restrict__ v_depths,
                            float* __restrict__ v_means, float* __restrict__ v_log_scales,
                            float* __restrict__ v_quats, float* __restrict__ v_opacity_logits,
                            float* __restrict__ v_sh, float* __restrict__ v_viewmats) {
  __shared__ float scratch[kThreadsPerBlock / cuda::kWarpSize][12];
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  // Threads past N stay alive: the pose reduction needs every thread of the block.
  const bool in_range = n < p.N;
  Mat3<float> Rg, cov;
  Vec3<float> mean = {0.f, 0.f, 0.f};
  float opacity_raw = 0.f;
  bool loaded = false;
  Vec3<float> v_mean = {0.f, 0.f, 0.f};
  Mat3<float> v_cov = mat3_zero<float>();
  float v_op_raw = 0.f;
  for (int c = 0; c < p.C; ++c) {
    const int64_t i = int64_t(c) * p.N + n;
    const bool visible = in_range && radii[2 * i] > 0 && radii[2 * i + 1] > 0;
    float g[12] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (visible) {
      if (!loaded) {
        Rg = quat_to_rotmat(quats + 4 * n);
        cov = covariance(Rg, log_scales + 3 * n);
        mean = {means[3 * n], means[3 * n + 1], means[3 * n + 2]};
        opacity_raw = sigmoid(opacity_logits[n]);
        loaded = true;
      }
      const CameraView<float> cam = load_camera(viewmats + 16 * c, Ks + 9 * c);
      Mat3<float> v_R = mat3_zero<float>();
      Vec3<float> v_t = {0.f, 0.f, 0.f};
      project_vjp(cam, p.width, p.height, p.antialiased, p.sh_degree, mean, cov, opacity_raw,
                  sh + int64_t(3) * p.K * n, Vec2<float>{v_means2d[2 * i], v_means2d[2 * i + 1]},
                  Sym2<float>{v_conics[3 * i], v_conics[3 * i + 1], v_conics[3 * i + 2]},
                  Vec3<float>{v_colors[3 * i], v_colors[3 * i + 1], v_colors[3 * i + 2]}, v_opacities[i],
                  v_depths[i], v_mean, v_cov, v_op_raw, v_sh + int64_t(3) * p.K * n, v_R, v_t);
#pragma unroll
      for (int r = 0; r < 3; ++r) {
#pragma unroll
        for (int k = 0; k < 3; ++k) g[4 * r + k] = v_R.m[r][k];
      }
      g[3] = v_t.x;
      g[7] = v_t.y;
      g[11] = v_t.z;
    }
    // Block-uniform condition: every thread reaches the barriers inside or none does.
    if (v_viewmats != nullptr && __syncthreads_or(visible)) {
      block_add_pose(g, scratch, v_viewmats + 16 * c);
    }
  }
  if (!loaded) return;  // culled in every camera: no gradient at all
  v_opacity_logits[n] += v_op_raw * opacity_raw * (1.f - opacity_raw);
  Mat3<float> v_Rg = mat3_zero<float>();
  covariance_vjp(Rg, log_scales + 3 * n, v_cov, v_Rg, v_log_scales + 3 * n);
  quat_to_rotmat_vjp(quats + 4 * n, v_Rg, v_quats + 4 * n);
  v_means[3 * n] += v_mean.x;
  v_means[3 * n + 1] += v_mean.y;
  v_means[3 * n + 2] += v_mean.z;
}

}  // namespace

void cuda_project_forward(const ProjectParams& p, const float* means, const float* log_scales,
                          const float* quats, const float* opacity_logits, const float* sh,
                          const float* viewmats, const float* Ks, float* means2d, float* conics,
                          float* colors, float* opacities, float* depths, int32_t* radii,
                          cudaStream_t stream) {
  const int64_t total = int64_t(p.C) * p.N;
  if (total == 0) return;
  project_forward_kernel<<<cuda::blocks_for(total), kThreadsPerBlock, 0, stream>>>(
      p, means, log_scales, quats, opacity_logits, sh, viewmats, Ks, means2d, conics, colors, opacities,
      depths, radii);
  cuda::check_launch("project_forward_kernel");
}

void cuda_project_backward(const ProjectParams& p, const float* means, const float* log_scales,
                           const float* quats, const float* opacity_logits, const float* sh,
                           const float* viewmats, const float* Ks, const int32_t* radii,
                           const float* v_means2d, const float* v_conics, const float* v_colors,
                           const float* v_opacities, const float* v_depths, float* v_means,
                           float* v_log_scales, float* v_quats, float* v_opacity_logits, float* v_sh,
                           float* v_viewmats, cudaStream_t stream) {
  if (p.N == 0 || p.C == 0) return;
  project_backward_kernel<<<cuda::blocks_for(p.N), kThreadsPerBlock, 0, stream>>>(
      p, means, log_scales, quats, opacity_logits, sh, viewmats, Ks, radii, v_means2d, v_conics, v_colors,
      v_opacities, v_depths, v_means, v_log_scales, v_quats, v_opacity_logits, v_sh, v_viewmats);
  cuda::check_launch("project_backward_kernel");
}

}  // namespace recon
