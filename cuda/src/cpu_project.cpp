// CPU projection stage (forward and backward), OpenMP over Gaussians.
// All the math lives in recon/math.h, shared with the CUDA kernels.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "recon/api.h"
#include "recon/math.h"

namespace recon {
namespace {

template <typename T> struct Cam {
  Mat3<T> R;
  Vec3<T> t;
  Intrinsics<T> K;
  Vec3<T> centre;
};

template <typename T> Cam<T> load_camera(const T* viewmat, const T* Kmat) {
  Cam<T> c;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) c.R.m[i][j] = viewmat[4 * i + j];
  c.t = {viewmat[3], viewmat[7], viewmat[11]};
  c.K = {Kmat[0], Kmat[4], Kmat[2], Kmat[5]};
  c.centre = camera_centre(c.R, c.t);
  return c;
}

}  // namespace

template <typename T>
void cpu_project_forward(const ProjectParams& p, const T* means, const T* log_scales, const T* quats,
                         const T* opacity_logits, const T* sh, const T* viewmats, const T* Ks,
                         T* means2d, T* conics, T* colors, T* opacities, T* depths, int32_t* radii) {
  std::vector<Cam<T>> cams(p.C);
  for (int c = 0; c < p.C; ++c) cams[c] = load_camera(viewmats + 16 * c, Ks + 9 * c);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < p.N; ++n) {
    const Mat3<T> Rg = quat_to_rotmat(quats + 4 * n);
    const Mat3<T> cov = covariance(Rg, log_scales + 3 * n);
    const Vec3<T> mean = {means[3 * n], means[3 * n + 1], means[3 * n + 2]};
    const T opacity_raw = sigmoid(opacity_logits[n]);
    for (int c = 0; c < p.C; ++c) {
      const int64_t i = int64_t(c) * p.N + n;
      const Cam<T>& cam = cams[c];
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
        std::fill(means2d + 2 * i, means2d + 2 * i + 2, T(0));
        std::fill(conics + 3 * i, conics + 3 * i + 3, T(0));
        std::fill(colors + 3 * i, colors + 3 * i + 3, T(0));
        opacities[i] = T(0);
        depths[i] = T(0);
        radii[2 * i] = radii[2 * i + 1] = 0;
        continue;
      }
      means2d[2 * i] = m2.x;
      means2d[2 * i + 1] = m2.y;
      conics[3 * i] = conic.a;
      conics[3 * i + 1] = conic.b;
      conics[3 * i + 2] = conic.c;
      const Vec3<T> dir = {mean.x - cam.centre.x, mean.y - cam.centre.y, mean.z - cam.centre.z};
      const Vec3<T> col = sh_color(p.sh_degree, dir, sh + int64_t(3) * p.K * n);
      colors[3 * i] = col.x;
      colors[3 * i + 1] = col.y;
      colors[3 * i + 2] = col.z;
      opacities[i] = opacity;
      depths[i] = pc.z;
      radii[2 * i] = int32_t(rad.x);
      radii[2 * i + 1] = int32_t(rad.y);
    }
  }
}

template <typename T>
void cpu_project_backward(const ProjectParams& p, const T* means, const T* log_scales, const T* quats,
                          const T* opacity_logits, const T* sh, const T* viewmats, const T* Ks,
                          const int32_t* radii, const T* v_means2d, const T* v_conics,
                          const T* v_colors, const T* v_opacities, const T* v_depths, T* v_means,
                          T* v_log_scales, T* v_quats, T* v_opacity_logits, T* v_sh, T* v_viewmats) {
  std::vector<Cam<T>> cams(p.C);
  for (int c = 0; c < p.C; ++c) cams[c] = load_camera(viewmats + 16 * c, Ks + 9 * c);
  // Pose gradients sum over all Gaussians: one buffer per thread, reduced at the end.
  const int n_threads = omp_get_max_threads();
  std::vector<T> pose_acc(size_t(n_threads) * p.C * 12, T(0));  // [threads, C, 3, 4]
#pragma omp parallel
  {
    T* my_pose = pose_acc.data() + size_t(omp_get_thread_num()) * p.C * 12;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < p.N; ++n) {
      const Mat3<T> Rg = quat_to_rotmat(quats + 4 * n);
      const Mat3<T> cov = covariance(Rg, log_scales + 3 * n);
      const Vec3<T> mean = {means[3 * n], means[3 * n + 1], means[3 * n + 2]};
      const T opacity_raw = sigmoid(opacity_logits[n]);
      Vec3<T> v_mean = {T(0), T(0), T(0)};
      Mat3<T> v_cov = mat3_zero<T>();
      T v_op_raw = T(0);
      for (int c = 0; c < p.C; ++c) {
        const int64_t i = int64_t(c) * p.N + n;
        if (radii[2 * i] <= 0 || radii[2 * i + 1] <= 0) continue;
        const Cam<T>& cam = cams[c];
        Vec3<T> pc;
        Mat3<T> cov_c;
        world_to_cam(cam.R, cam.t, mean, cov, pc, cov_c);
        Vec2<T> m2;
        Sym2<T> cov2d, conic;
        T comp, det;
        persp_proj(pc, cov_c, cam.K, p.width, p.height, m2, cov2d);
        conic_from_cov2d(cov2d, conic, comp, det);
        // Opacity: o = sigmoid(logit) [* compensation].
        T v_comp = T(0);
        if (p.antialiased) {
          v_op_raw += v_opacities[i] * comp;
          v_comp = v_opacities[i] * opacity_raw;
        } else {
          v_op_raw += v_opacities[i];
        }
        Sym2<T> v_cov2d = {T(0), T(0), T(0)};
        const Sym2<T> v_conic = {v_conics[3 * i], v_conics[3 * i + 1], v_conics[3 * i + 2]};
        conic_from_cov2d_vjp(cov2d, v_conic, v_comp, v_cov2d);
        Vec3<T> v_pc = {T(0), T(0), v_depths[i]};
        Mat3<T> v_cov_c = mat3_zero<T>();
        const Vec2<T> v_m2 = {v_means2d[2 * i], v_means2d[2 * i + 1]};
        persp_proj_vjp(pc, cov_c, cam.K, p.width, p.height, v_m2, v_cov2d, v_pc, v_cov_c);
        Mat3<T> v_R = mat3_zero<T>();
        Vec3<T> v_t = {T(0), T(0), T(0)};
        world_to_cam_vjp(cam.R, mean, cov, v_pc, v_cov_c, v_mean, v_cov, v_R, v_t);
        // Colour from SH along the viewing direction mean - camera centre.
        const Vec3<T> dir = {mean.x - cam.centre.x, mean.y - cam.centre.y, mean.z - cam.centre.z};
        const Vec3<T> v_col = {v_colors[3 * i], v_colors[3 * i + 1], v_colors[3 * i + 2]};
        Vec3<T> v_dir = {T(0), T(0), T(0)};
        sh_color_vjp(p.sh_degree, dir, sh + int64_t(3) * p.K * n, v_col,
                     v_sh + int64_t(3) * p.K * n, v_dir);
        v_mean.x += v_dir.x; v_mean.y += v_dir.y; v_mean.z += v_dir.z;
        const Vec3<T> v_centre = {-v_dir.x, -v_dir.y, -v_dir.z};
        camera_centre_vjp(cam.R, cam.t, v_centre, v_R, v_t);
        T* acc = my_pose + 12 * c;
        for (int r = 0; r < 3; ++r) {
          for (int k = 0; k < 3; ++k) acc[4 * r + k] += v_R.m[r][k];
        }
        acc[3] += v_t.x; acc[7] += v_t.y; acc[11] += v_t.z;
      }
      v_opacity_logits[n] += v_op_raw * opacity_raw * (T(1) - opacity_raw);
      Mat3<T> v_Rg = mat3_zero<T>();
      covariance_vjp(Rg, log_scales + 3 * n, v_cov, v_Rg, v_log_scales + 3 * n);
      quat_to_rotmat_vjp(quats + 4 * n, v_Rg, v_quats + 4 * n);
      v_means[3 * n] += v_mean.x;
      v_means[3 * n + 1] += v_mean.y;
      v_means[3 * n + 2] += v_mean.z;
    }
  }
  for (int th = 0; th < n_threads; ++th)
    for (int c = 0; c < p.C; ++c)
      for (int k = 0; k < 12; ++k) v_viewmats[16 * c + k] += pose_acc[(size_t(th) * p.C + c) * 12 + k];
}

#define RECON_INSTANTIATE(T)                                                                        \
  template void cpu_project_forward<T>(const ProjectParams&, const T*, const T*, const T*, const T*, \
                                       const T*, const T*, const T*, T*, T*, T*, T*, T*, int32_t*);   \
  template void cpu_project_backward<T>(const ProjectParams&, const T*, const T*, const T*,         \
                                        const T*, const T*, const T*, const T*, const int32_t*,     \
                                        const T*, const T*, const T*, const T*, const T*, T*, T*,   \
                                        T*, T*, T*, T*);
RECON_INSTANTIATE(float)
RECON_INSTANTIATE(double)
#undef RECON_INSTANTIATE

}  // namespace recon
