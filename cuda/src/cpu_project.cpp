// CPU projection stage (forward and backward). All the math lives in recon/math.h, shared
// with the CUDA kernels (the backward's per-camera chain is project_vjp there).
//
// Gaussians are processed in fixed chunks of kChunk, handed out dynamically (a descheduled
// thread delays only its chunk); the chunk loops are compiled per instruction set
// (cpu_isa.h) and chosen at run time. Pose gradients are summed per chunk and the chunks
// reduced in order, so they are bit-identical for any thread count.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_isa.h"
#include "recon/api.h"
#include "recon/math.h"

namespace recon {
namespace {

constexpr int64_t kChunk = 1024;

// The inputs both directions read: parameters, cameras and the world-space Gaussians.
template <typename T> struct GaussianArgs {
  const ProjectParams* p;
  const CameraView<T>* cams;  // [C]
  const T *means, *log_scales, *quats, *opacity_logits, *sh;
};

// Gaussian n in world space, as both directions start from it.
template <typename T> struct WorldGaussian {
  Mat3<T> R, cov;  // rotation (from the quaternion) and covariance
  Vec3<T> mean;
  T opacity;  // sigmoid of the logit, before antialiasing

  RECON_ALWAYS_INLINE WorldGaussian(const GaussianArgs<T>& a, int64_t n)
      : R(quat_to_rotmat(a.quats + 4 * n)),
        cov(covariance(R, a.log_scales + 3 * n)),
        mean{a.means[3 * n], a.means[3 * n + 1], a.means[3 * n + 2]},
        opacity(sigmoid(a.opacity_logits[n])) {}
};

template <typename T> struct ForwardArgs : GaussianArgs<T> {
  T *means2d, *conics, *colors, *opacities, *depths;
  int32_t* radii;
};

template <typename T>
RECON_ALWAYS_INLINE void forward_chunk(const ForwardArgs<T>& a, int64_t n0, int64_t n1) {
  const ProjectParams& p = *a.p;
  for (int64_t n = n0; n < n1; ++n) {
    const WorldGaussian<T> wg(a, n);
    const Mat3<T>& cov = wg.cov;
    const Vec3<T>& mean = wg.mean;
    const T opacity_raw = wg.opacity;
    for (int c = 0; c < p.C; ++c) {
      const int64_t i = int64_t(c) * p.N + n;
      const CameraView<T>& cam = a.cams[c];
      Vec3<T> pc;
      Mat3<T> cov_c;
      world_to_cam(cam.R, cam.t, mean, cov, pc, cov_c);
      bool ok = pc.z > T(p.near_plane) && pc.z < T(p.far_plane);
      Vec2<T> m2;
      Sym2<T> cov2d, conic;
      T comp = T(1), det = T(0), opacity = T(0);
      Vec2<T> rad = {T(0), T(0)};
      if (ok) {
        persp_proj(pc, cov_c, cam.K, p.width, p.height, m2, cov2d);
        ok = conic_from_cov2d(cov2d, conic, comp, det);
      }
      if (ok) {
        opacity = p.antialiased ? opacity_raw * comp : opacity_raw;
        ok = opacity >= T(kAlphaThreshold);
      }
      if (ok) {
        rad = screen_radius(cov2d, opacity);
        ok = rad.x > T(0) && rad.y > T(0) && m2.x + rad.x > T(0) && m2.x - rad.x < T(p.width) &&
             m2.y + rad.y > T(0) && m2.y - rad.y < T(p.height);
      }
      if (!ok) {
        std::fill(a.means2d + 2 * i, a.means2d + 2 * i + 2, T(0));
        std::fill(a.conics + 3 * i, a.conics + 3 * i + 3, T(0));
        std::fill(a.colors + 3 * i, a.colors + 3 * i + 3, T(0));
        a.opacities[i] = T(0);
        a.depths[i] = T(0);
        a.radii[2 * i] = a.radii[2 * i + 1] = 0;
        continue;
      }
      a.means2d[2 * i] = m2.x;
      a.means2d[2 * i + 1] = m2.y;
      a.conics[3 * i] = conic.a;
      a.conics[3 * i + 1] = conic.b;
      a.conics[3 * i + 2] = conic.c;
      const Vec3<T> dir = {mean.x - cam.centre.x, mean.y - cam.centre.y, mean.z - cam.centre.z};
      const Vec3<T> col = sh_color(p.sh_degree, dir, a.sh + int64_t(3) * p.K * n);
      a.colors[3 * i] = col.x;
      a.colors[3 * i + 1] = col.y;
      a.colors[3 * i + 2] = col.z;
      a.opacities[i] = opacity;
      a.depths[i] = pc.z;
      a.radii[2 * i] = int32_t(rad.x);
      a.radii[2 * i + 1] = int32_t(rad.y);
    }
  }
}

template <typename T> struct BackwardArgs : GaussianArgs<T> {
  const int32_t* radii;
  const T *v_means2d, *v_conics, *v_colors, *v_opacities, *v_depths;
  T *v_means, *v_log_scales, *v_quats, *v_opacity_logits, *v_sh;
};

// pose [C, 12]: this chunk's pose gradient (rows 0..2 of each [4, 4]), accumulated.
template <typename T>
RECON_ALWAYS_INLINE void backward_chunk(const BackwardArgs<T>& a, int64_t n0, int64_t n1, T* pose) {
  const ProjectParams& p = *a.p;
  for (int64_t n = n0; n < n1; ++n) {
    const WorldGaussian<T> wg(a, n);
    const Mat3<T>& Rg = wg.R;
    const Mat3<T>& cov = wg.cov;
    const Vec3<T>& mean = wg.mean;
    const T opacity_raw = wg.opacity;
    Vec3<T> v_mean = {T(0), T(0), T(0)};
    Mat3<T> v_cov = mat3_zero<T>();
    T v_op_raw = T(0);
    for (int c = 0; c < p.C; ++c) {
      const int64_t i = int64_t(c) * p.N + n;
      if (a.radii[2 * i] <= 0 || a.radii[2 * i + 1] <= 0) continue;
      Mat3<T> v_R = mat3_zero<T>();
      Vec3<T> v_t = {T(0), T(0), T(0)};
      project_vjp(a.cams[c], p.width, p.height, p.antialiased, p.sh_degree, mean, cov, opacity_raw,
                  a.sh + int64_t(3) * p.K * n, Vec2<T>{a.v_means2d[2 * i], a.v_means2d[2 * i + 1]},
                  Sym2<T>{a.v_conics[3 * i], a.v_conics[3 * i + 1], a.v_conics[3 * i + 2]},
                  Vec3<T>{a.v_colors[3 * i], a.v_colors[3 * i + 1], a.v_colors[3 * i + 2]}, a.v_opacities[i],
                  a.v_depths[i], v_mean, v_cov, v_op_raw, a.v_sh + int64_t(3) * p.K * n, v_R, v_t);
      T* acc = pose + 12 * c;
      for (int r = 0; r < 3; ++r)
        for (int k = 0; k < 3; ++k) acc[4 * r + k] += v_R.m[r][k];
      acc[3] += v_t.x;
      acc[7] += v_t.y;
      acc[11] += v_t.z;
    }
    a.v_opacity_logits[n] += v_op_raw * opacity_raw * (T(1) - opacity_raw);
    Mat3<T> v_Rg = mat3_zero<T>();
    covariance_vjp(Rg, a.log_scales + 3 * n, v_cov, v_Rg, a.v_log_scales + 3 * n);
    quat_to_rotmat_vjp(a.quats + 4 * n, v_Rg, a.v_quats + 4 * n);
    a.v_means[3 * n] += v_mean.x;
    a.v_means[3 * n + 1] += v_mean.y;
    a.v_means[3 * n + 2] += v_mean.z;
  }
}

// Per-ISA copies of the chunk loops (the always-inline bodies vectorise/fuse per target).
#define RECON_PROJECT_WRAPPERS(NS, TARGET)                                                                \
  namespace NS {                                                                                          \
  template <typename T> TARGET void forward(const ForwardArgs<T>& a, int64_t n0, int64_t n1) {            \
    forward_chunk(a, n0, n1);                                                                             \
  }                                                                                                       \
  template <typename T> TARGET void backward(const BackwardArgs<T>& a, int64_t n0, int64_t n1, T* pose) { \
    backward_chunk(a, n0, n1, pose);                                                                      \
  }                                                                                                       \
  }
RECON_FOR_EACH_ISA(RECON_PROJECT_WRAPPERS)
#undef RECON_PROJECT_WRAPPERS

template <typename T> struct Kernels {
  void (*forward)(const ForwardArgs<T>&, int64_t, int64_t);
  void (*backward)(const BackwardArgs<T>&, int64_t, int64_t, T*);
};

template <typename T> Kernels<T> kernels() {
  const Kernels<T> generic_kernels{&generic::forward<T>, &generic::backward<T>};
  if (sizeof(T) != sizeof(float)) return generic_kernels;  // double is for gradient checks: baseline only
  return cpu::pick(generic_kernels, Kernels<T>{&avx2::forward<T>, &avx2::backward<T>},
                   Kernels<T>{&avx512::forward<T>, &avx512::backward<T>});
}

// f(chunk, n0, n1) for the chunks [n0, n1) of kChunk Gaussians of [0, N), handed out dynamically.
template <typename F> void for_chunks(int64_t N, const F& f) {
  const int64_t chunks = (N + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ch = 0; ch < chunks; ++ch) f(ch, ch * kChunk, std::min<int64_t>(N, (ch + 1) * kChunk));
}

template <typename T> std::vector<CameraView<T>> load_cameras(int C, const T* viewmats, const T* Ks) {
  std::vector<CameraView<T>> cams(C);
  for (int c = 0; c < C; ++c) cams[c] = load_camera(viewmats + 16 * c, Ks + 9 * c);
  return cams;
}

}  // namespace

template <typename T>
void cpu_project_forward(const ProjectParams& p, const T* means, const T* log_scales, const T* quats,
                         const T* opacity_logits, const T* sh, const T* viewmats, const T* Ks, T* means2d,
                         T* conics, T* colors, T* opacities, T* depths, int32_t* radii) {
  const std::vector<CameraView<T>> cams = load_cameras(p.C, viewmats, Ks);
  const ForwardArgs<T> a{{&p, cams.data(), means, log_scales, quats, opacity_logits, sh},
                         means2d,
                         conics,
                         colors,
                         opacities,
                         depths,
                         radii};
  const auto run = kernels<T>().forward;
  for_chunks(p.N, [&](int64_t, int64_t n0, int64_t n1) { run(a, n0, n1); });
}

template <typename T>
void cpu_project_backward(const ProjectParams& p, const T* means, const T* log_scales, const T* quats,
                          const T* opacity_logits, const T* sh, const T* viewmats, const T* Ks,
                          const int32_t* radii, const T* v_means2d, const T* v_conics, const T* v_colors,
                          const T* v_opacities, const T* v_depths, T* v_means, T* v_log_scales, T* v_quats,
                          T* v_opacity_logits, T* v_sh, T* v_viewmats) {
  const std::vector<CameraView<T>> cams = load_cameras(p.C, viewmats, Ks);
  const BackwardArgs<T> a{{&p, cams.data(), means, log_scales, quats, opacity_logits, sh},
                          radii,
                          v_means2d,
                          v_conics,
                          v_colors,
                          v_opacities,
                          v_depths,
                          v_means,
                          v_log_scales,
                          v_quats,
                          v_opacity_logits,
                          v_sh};
  const auto run = kernels<T>().backward;
  const int64_t chunks = (int64_t(p.N) + kChunk - 1) / kChunk;
  std::vector<T> pose(size_t(chunks) * p.C * 12, T(0));  // [chunks, C, 12]
  for_chunks(
      p.N, [&](int64_t ch, int64_t n0, int64_t n1) { run(a, n0, n1, pose.data() + size_t(ch) * p.C * 12); });
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int c = 0; c < p.C; ++c)
      for (int k = 0; k < 12; ++k) v_viewmats[16 * c + k] += pose[(size_t(ch) * p.C + c) * 12 + k];
}

#define RECON_INSTANTIATE(T)                                                                              \
  template void cpu_project_forward<T>(const ProjectParams&, const T*, const T*, const T*, const T*,      \
                                       const T*, const T*, const T*, T*, T*, T*, T*, T*, int32_t*);       \
  template void cpu_project_backward<T>(const ProjectParams&, const T*, const T*, const T*, const T*,     \
                                        const T*, const T*, const T*, const int32_t*, const T*, const T*, \
                                        const T*, const T*, const T*, T*, T*, T*, T*, T*, T*);
RECON_INSTANTIATE(float)
RECON_INSTANTIATE(double)
#undef RECON_INSTANTIATE

}  // namespace recon
