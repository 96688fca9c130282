// CPU projection stage (forward and backward). All the math lives in recon/math.h, shared
// with the CUDA kernels (the backward's per-camera chain is project_vjp there).
//
// Gaussians are processed in fixed chunks of kChunk, handed out dynamically (a descheduled
// thread delays only its chunk); the chunk loops are compiled per instruction set
// (cpu_isa.h) and chosen at run time. Within a chunk, float runs cpu::kLanes Gaussians at
// once, one per SIMD lane (cpu_lanes.h), through the same math. Pose gradients are summed
// per chunk and the chunks reduced in order, so they are bit-identical for any thread count.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_isa.h"
#include "cpu_lanes.h"
#include "recon/api.h"
#include "recon/math.h"

namespace recon {
namespace {

constexpr int64_t kChunk = 1024;

using cpu::lane_any;
using cpu::lane_at;
template <typename T> using Batch = cpu::Batch<T>;
template <typename T> using V = typename Batch<T>::V;

// The inputs both directions read: parameters, cameras and the world-space Gaussians.
template <typename T> struct GaussianArgs {
  const ProjectParams* p;
  const CameraView<T>* cams;  // [C]
  const T *means, *log_scales, *quats, *opacity_logits, *sh;
};

// SH coefficients a Gaussian's colour reads: (degree + 1)^2 RGB triples.
inline int sh_floats(const ProjectParams& p) { return 3 * (p.sh_degree + 1) * (p.sh_degree + 1); }

// The Gaussians [n, n + count) in world space (count <= Batch<T>::W, one per lane), as
// both directions start from them.
template <typename T> struct WorldGaussians {
  V<T> quat[4], log_scale[3];
  Mat3<V<T>> R, cov;  // rotation (from the quaternion) and covariance
  Vec3<V<T>> mean;
  V<T> opacity;  // sigmoid of the logit, before antialiasing

  RECON_ALWAYS_INLINE WorldGaussians(const GaussianArgs<T>& a, int64_t n, int count) {
    using B = Batch<T>;
    for (int k = 0; k < 4; ++k) quat[k] = B::load(a.quats + 4 * n + k, 4, count);
    for (int k = 0; k < 3; ++k) log_scale[k] = B::load(a.log_scales + 3 * n + k, 3, count);
    mean = {B::load(a.means + 3 * n, 3, count), B::load(a.means + 3 * n + 1, 3, count),
            B::load(a.means + 3 * n + 2, 3, count)};
    opacity = sigmoid(B::load(a.opacity_logits + n, 1, count));
    R = quat_to_rotmat(quat);
    cov = covariance(R, log_scale);
  }
};

// sh [sh_floats] of the Gaussians [n, n + count), one per lane.
template <typename T>
RECON_ALWAYS_INLINE void load_sh(const ProjectParams& p, const T* sh, int64_t n, int count, V<T>* out) {
  const int64_t stride = int64_t(3) * p.K;
  for (int j = 0; j < sh_floats(p); ++j) out[j] = Batch<T>::load(sh + stride * n + j, stride, count);
}

// The camera in every lane (on the stack: lane types are 64-byte aligned).
template <typename T> RECON_ALWAYS_INLINE CameraView<V<T>> lane_camera(const CameraView<T>& c) {
  CameraView<V<T>> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.R.m[i][j] = V<T>(c.R.m[i][j]);
  r.t = {V<T>(c.t.x), V<T>(c.t.y), V<T>(c.t.z)};
  r.K = {V<T>(c.K.fx), V<T>(c.K.fy), V<T>(c.K.cx), V<T>(c.K.cy)};
  r.centre = {V<T>(c.centre.x), V<T>(c.centre.y), V<T>(c.centre.z)};
  return r;
}

template <typename T> struct ForwardArgs : GaussianArgs<T> {
  T *means2d, *conics, *colors, *opacities, *depths;
  int32_t* radii;
};

template <typename T>
RECON_ALWAYS_INLINE void forward_chunk(const ForwardArgs<T>& a, int64_t n0, int64_t n1) {
  using B = Batch<T>;
  using L = V<T>;
  const ProjectParams& p = *a.p;
  L sh[48];
  for (int64_t n = n0; n < n1; n += B::W) {
    const int count = int(std::min<int64_t>(B::W, n1 - n));
    const WorldGaussians<T> wg(a, n, count);
    bool sh_loaded = false;
    for (int c = 0; c < p.C; ++c) {
      const CameraView<L> cam = lane_camera(a.cams[c]);
      Vec3<L> pc;
      Mat3<L> cov_c;
      world_to_cam(cam.R, cam.t, wg.mean, wg.cov, pc, cov_c);
      // Every step runs on every lane; `ok` says which lanes are visible.
      auto ok = (pc.z > L(p.near_plane)) & (pc.z < L(p.far_plane));
      Vec2<L> m2;
      Sym2<L> cov2d, conic;
      L comp, det;
      persp_proj(pc, cov_c, cam.K, p.width, p.height, m2, cov2d);
      ok &= conic_from_cov2d(cov2d, conic, comp, det);
      const L opacity = p.antialiased ? wg.opacity * comp : wg.opacity;
      ok &= opacity >= L(kAlphaThreshold);
      const Vec2<L> rad = screen_radius(cov2d, opacity);
      ok &= (rad.x > L(0)) & (rad.y > L(0)) & (m2.x + rad.x > L(0)) & (m2.x - rad.x < L(p.width)) &
            (m2.y + rad.y > L(0)) & (m2.y - rad.y < L(p.height));
      Vec3<L> col = {L(0), L(0), L(0)};
      if (lane_any(ok)) {  // colour only where some lane is visible
        if (!sh_loaded) load_sh(p, a.sh, n, count, sh);
        sh_loaded = true;
        const Vec3<L> dir = {wg.mean.x - cam.centre.x, wg.mean.y - cam.centre.y, wg.mean.z - cam.centre.z};
        col = sh_color(p.sh_degree, dir, sh);
      }
      for (int l = 0; l < count; ++l) {
        const int64_t i = int64_t(c) * p.N + n + l;
        if (!lane_at(ok, l)) {
          std::fill(a.means2d + 2 * i, a.means2d + 2 * i + 2, T(0));
          std::fill(a.conics + 3 * i, a.conics + 3 * i + 3, T(0));
          std::fill(a.colors + 3 * i, a.colors + 3 * i + 3, T(0));
          a.opacities[i] = T(0);
          a.depths[i] = T(0);
          a.radii[2 * i] = a.radii[2 * i + 1] = 0;
          continue;
        }
        a.means2d[2 * i] = B::at(m2.x, l);
        a.means2d[2 * i + 1] = B::at(m2.y, l);
        a.conics[3 * i] = B::at(conic.a, l);
        a.conics[3 * i + 1] = B::at(conic.b, l);
        a.conics[3 * i + 2] = B::at(conic.c, l);
        a.colors[3 * i] = B::at(col.x, l);
        a.colors[3 * i + 1] = B::at(col.y, l);
        a.colors[3 * i + 2] = B::at(col.z, l);
        a.opacities[i] = B::at(opacity, l);
        a.depths[i] = B::at(pc.z, l);
        a.radii[2 * i] = int32_t(B::at(rad.x, l));
        a.radii[2 * i + 1] = int32_t(B::at(rad.y, l));
      }
    }
  }
}

template <typename T> struct BackwardArgs : GaussianArgs<T> {
  const int32_t* radii;
  const T *v_means2d, *v_conics, *v_colors, *v_opacities, *v_depths;
  T *v_means, *v_log_scales, *v_quats, *v_opacity_logits, *v_sh;
};

// out[l * stride] += x's lane l, for l < count.
template <typename T>
RECON_ALWAYS_INLINE void add_lanes(const V<T>& x, T* out, int64_t stride, int count) {
  for (int l = 0; l < count; ++l) out[l * stride] += Batch<T>::at(x, l);
}

// pose [C, 12]: this chunk's pose gradient (rows 0..2 of each [4, 4]), accumulated.
template <typename T>
RECON_ALWAYS_INLINE void backward_chunk(const BackwardArgs<T>& a, int64_t n0, int64_t n1, T* pose) {
  using B = Batch<T>;
  using L = V<T>;
  const ProjectParams& p = *a.p;
  const int n_sh = sh_floats(p);
  const L zero(0);
  L sh[48], v_sh[48], v_sh_cam[48];
  for (int64_t n = n0; n < n1; n += B::W) {
    const int count = int(std::min<int64_t>(B::W, n1 - n));
    const WorldGaussians<T> wg(a, n, count);
    Vec3<L> v_mean = {zero, zero, zero};
    Mat3<L> v_cov = mat3_zero<L>();
    L v_op_raw = zero;
    bool sh_loaded = false;
    for (int c = 0; c < p.C; ++c) {
      const int64_t i = int64_t(c) * p.N + n;
      // the lanes this camera sees (radii > 0); the others must not contribute
      const auto seen =
          B::load_positive(a.radii + 2 * i, 2, count) & B::load_positive(a.radii + 2 * i + 1, 2, count);
      if (!lane_any(seen)) continue;
      if (!sh_loaded) {
        load_sh(p, a.sh, n, count, sh);
        for (int j = 0; j < n_sh; ++j) v_sh[j] = zero;
        sh_loaded = true;
      }
      // This camera's share, in lanes, kept only where seen.
      Mat3<L> v_R = mat3_zero<L>(), v_cov_cam = mat3_zero<L>();
      Vec3<L> v_t = {zero, zero, zero}, v_mean_cam = {zero, zero, zero};
      L v_op_cam = zero;
      for (int j = 0; j < n_sh; ++j) v_sh_cam[j] = zero;
      project_vjp(lane_camera(a.cams[c]), p.width, p.height, p.antialiased, p.sh_degree, wg.mean, wg.cov,
                  wg.opacity, sh,
                  Vec2<L>{B::load(a.v_means2d + 2 * i, 2, count), B::load(a.v_means2d + 2 * i + 1, 2, count)},
                  Sym2<L>{B::load(a.v_conics + 3 * i, 3, count), B::load(a.v_conics + 3 * i + 1, 3, count),
                          B::load(a.v_conics + 3 * i + 2, 3, count)},
                  Vec3<L>{B::load(a.v_colors + 3 * i, 3, count), B::load(a.v_colors + 3 * i + 1, 3, count),
                          B::load(a.v_colors + 3 * i + 2, 3, count)},
                  B::load(a.v_opacities + i, 1, count), B::load(a.v_depths + i, 1, count), v_mean_cam,
                  v_cov_cam, v_op_cam, v_sh_cam, v_R, v_t);
      v_mean.x += lane_select(seen, v_mean_cam.x, zero);
      v_mean.y += lane_select(seen, v_mean_cam.y, zero);
      v_mean.z += lane_select(seen, v_mean_cam.z, zero);
      for (int r = 0; r < 3; ++r)
        for (int k = 0; k < 3; ++k) v_cov.m[r][k] += lane_select(seen, v_cov_cam.m[r][k], zero);
      v_op_raw += lane_select(seen, v_op_cam, zero);
      for (int j = 0; j < n_sh; ++j) v_sh[j] += lane_select(seen, v_sh_cam[j], zero);
      T* acc = pose + 12 * c;
      for (int r = 0; r < 3; ++r)
        for (int k = 0; k < 3; ++k) acc[4 * r + k] += B::sum(lane_select(seen, v_R.m[r][k], zero));
      acc[3] += B::sum(lane_select(seen, v_t.x, zero));
      acc[7] += B::sum(lane_select(seen, v_t.y, zero));
      acc[11] += B::sum(lane_select(seen, v_t.z, zero));
    }
    if (!sh_loaded) continue;  // seen by no camera: every gradient of these Gaussians is 0
    add_lanes<T>(v_op_raw * wg.opacity * (L(1) - wg.opacity), a.v_opacity_logits + n, 1, count);
    Mat3<L> v_Rg = mat3_zero<L>();
    L v_log_scale[3] = {zero, zero, zero}, v_quat[4] = {zero, zero, zero, zero};
    covariance_vjp(wg.R, wg.log_scale, v_cov, v_Rg, v_log_scale);
    quat_to_rotmat_vjp(wg.quat, v_Rg, v_quat);
    for (int k = 0; k < 3; ++k) add_lanes<T>(v_log_scale[k], a.v_log_scales + 3 * n + k, 3, count);
    for (int k = 0; k < 4; ++k) add_lanes<T>(v_quat[k], a.v_quats + 4 * n + k, 4, count);
    add_lanes<T>(v_mean.x, a.v_means + 3 * n, 3, count);
    add_lanes<T>(v_mean.y, a.v_means + 3 * n + 1, 3, count);
    add_lanes<T>(v_mean.z, a.v_means + 3 * n + 2, 3, count);
    const int64_t stride = int64_t(3) * p.K;
    for (int j = 0; j < n_sh; ++j) add_lanes<T>(v_sh[j], a.v_sh + stride * n + j, stride, count);
  }
}

// Per-ISA copies of the chunk loops. flatten inlines the whole call tree (the math.h
// helpers included) into each copy, so all of it is compiled for that copy's target.
#define RECON_PROJECT_WRAPPERS(NS, TARGET)                                                                   \
  namespace NS {                                                                                             \
  template <typename T> TARGET RECON_FLATTEN void forward(const ForwardArgs<T>& a, int64_t n0, int64_t n1) { \
    forward_chunk(a, n0, n1);                                                                                \
  }                                                                                                          \
  template <typename T>                                                                                      \
  TARGET RECON_FLATTEN void backward(const BackwardArgs<T>& a, int64_t n0, int64_t n1, T* pose) {            \
    backward_chunk(a, n0, n1, pose);                                                                         \
  }                                                                                                          \
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
