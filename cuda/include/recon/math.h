// Gaussian splatting math shared by the CUDA kernels and the CPU backend.
//
// Every forward helper sits next to its `_vjp` twin (vector-Jacobian product): given the
// gradient of the loss w.r.t. the helper's outputs (named v_<output>), it ADDS the gradient
// w.r.t. the inputs into v_<input> (callers zero them). Templated on the scalar type so the
// CPU backend can run in double for gradient checks; the CUDA kernels use float.
// The projection helpers (quaternion to rotation up to project_vjp) also run on the CPU
// backend's SIMD lanes, several Gaussians at once (cuda/src/cpu_lanes.h): they use the
// lane_* primitives below instead of std:: functions, and lane_select instead of a branch
// on a value; comparisons are combined with & and | (on lanes they are masks).
// Conventions (recon/types.py): OpenCV camera axes, T_cam_world row-major [4, 4],
// quaternions (w, x, y, z), pixel centres at +0.5.
#pragma once

#include <cmath>

#include "recon/constants.h"

namespace recon {

// Elementwise primitives for scalars; cpu_lanes.h overloads each for its lane type (found by
// argument-dependent lookup). lane_min / lane_max are std::fmin / std::fmax.
template <typename T> RECON_HD T lane_sqrt(T x) { return std::sqrt(x); }
template <typename T> RECON_HD T lane_exp(T x) { return std::exp(x); }
template <typename T> RECON_HD T lane_log(T x) { return std::log(x); }
template <typename T> RECON_HD T lane_ceil(T x) { return std::ceil(x); }
template <typename T> RECON_HD T lane_min(T a, T b) { return std::fmin(a, b); }
template <typename T> RECON_HD T lane_max(T a, T b) { return std::fmax(a, b); }
// c ? a : b (both evaluated)
template <typename T> RECON_HD T lane_select(bool c, T a, T b) { return c ? a : b; }

template <typename T> struct Vec2 {
  T x, y;
};
template <typename T> struct Vec3 {
  T x, y, z;
};
// Row-major 3x3 matrix: m[row][col].
template <typename T> struct Mat3 {
  T m[3][3];
};
// Symmetric 2x2 matrix [[a, b], [b, c]].
template <typename T> struct Sym2 {
  T a, b, c;
};

template <typename T> RECON_HD Mat3<T> mat3_zero() {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = T(0);
  return r;
}

template <typename T> RECON_HD Mat3<T> matmul(const Mat3<T>& a, const Mat3<T>& b) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      T s = T(0);
      for (int k = 0; k < 3; ++k) s += a.m[i][k] * b.m[k][j];
      r.m[i][j] = s;
    }
  return r;
}

template <typename T> RECON_HD Mat3<T> transpose(const Mat3<T>& a) {
  Mat3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[j][i];
  return r;
}

template <typename T> RECON_HD Vec3<T> matvec(const Mat3<T>& a, const Vec3<T>& v) {
  return {a.m[0][0] * v.x + a.m[0][1] * v.y + a.m[0][2] * v.z,
          a.m[1][0] * v.x + a.m[1][1] * v.y + a.m[1][2] * v.z,
          a.m[2][0] * v.x + a.m[2][1] * v.y + a.m[2][2] * v.z};
}

// a^T v
template <typename T> RECON_HD Vec3<T> matTvec(const Mat3<T>& a, const Vec3<T>& v) {
  return {a.m[0][0] * v.x + a.m[1][0] * v.y + a.m[2][0] * v.z,
          a.m[0][1] * v.x + a.m[1][1] * v.y + a.m[2][1] * v.z,
          a.m[0][2] * v.x + a.m[1][2] * v.y + a.m[2][2] * v.z};
}

// ---------------------------------------------------------------------------------------
// Quaternion (w, x, y, z), any non-zero norm -> rotation matrix.
template <typename T> RECON_HD Mat3<T> quat_to_rotmat(const T q[4]) {
  const T inv = T(1) / lane_sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const T w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
  Mat3<T> R;
  R.m[0][0] = T(1) - T(2) * (y * y + z * z);
  R.m[0][1] = T(2) * (x * y - w * z);
  R.m[0][2] = T(2) * (x * z + w * y);
  R.m[1][0] = T(2) * (x * y + w * z);
  R.m[1][1] = T(1) - T(2) * (x * x + z * z);
  R.m[1][2] = T(2) * (y * z - w * x);
  R.m[2][0] = T(2) * (x * z - w * y);
  R.m[2][1] = T(2) * (y * z + w * x);
  R.m[2][2] = T(1) - T(2) * (x * x + y * y);
  return R;
}

template <typename T>
RECON_HD void quat_to_rotmat_vjp(const T q[4], const Mat3<T>& v_R, T v_q[4]) {
  const T inv = T(1) / lane_sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const T w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
  const auto& v = v_R.m;
  // Gradient w.r.t. the normalised quaternion n.
  const T vw = T(2) * (-z * v[0][1] + y * v[0][2] + z * v[1][0] - x * v[1][2] - y * v[2][0] + x * v[2][1]);
  const T vx = T(2) * (y * v[0][1] + z * v[0][2] + y * v[1][0] - T(2) * x * v[1][1] - w * v[1][2] +
                       z * v[2][0] + w * v[2][1] - T(2) * x * v[2][2]);
  const T vy = T(2) * (-T(2) * y * v[0][0] + x * v[0][1] + w * v[0][2] + x * v[1][0] + z * v[1][2] -
                       w * v[2][0] + z * v[2][1] - T(2) * y * v[2][2]);
  const T vz = T(2) * (-T(2) * z * v[0][0] - w * v[0][1] + x * v[0][2] + w * v[1][0] - T(2) * z * v[1][1] +
                       y * v[1][2] + x * v[2][0] + y * v[2][1]);
  // Through the normalisation n = q / |q|: (I - n n^T) v_n / |q|.
  const T dot = w * vw + x * vx + y * vy + z * vz;
  v_q[0] += (vw - w * dot) * inv;
  v_q[1] += (vx - x * dot) * inv;
  v_q[2] += (vy - y * dot) * inv;
  v_q[3] += (vz - z * dot) * inv;
}

// ---------------------------------------------------------------------------------------
// World covariance Sigma = M M^T with M = R diag(exp(log_scale)).
template <typename T>
RECON_HD Mat3<T> covariance(const Mat3<T>& R, const T log_scale[3]) {
  Mat3<T> M;
  for (int j = 0; j < 3; ++j) {
    const T s = lane_exp(log_scale[j]);
    for (int i = 0; i < 3; ++i) M.m[i][j] = R.m[i][j] * s;
  }
  return matmul(M, transpose(M));
}

template <typename T>
RECON_HD void covariance_vjp(const Mat3<T>& R, const T log_scale[3], const Mat3<T>& v_cov, Mat3<T>& v_R,
                             T v_log_scale[3]) {
  Mat3<T> M, S;
  T scale[3];  // exp(log_scale), once per axis
  for (int j = 0; j < 3; ++j) {
    scale[j] = lane_exp(log_scale[j]);
    for (int i = 0; i < 3; ++i) M.m[i][j] = R.m[i][j] * scale[j];
  }
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) S.m[i][j] = v_cov.m[i][j] + v_cov.m[j][i];
  const Mat3<T> v_M = matmul(S, M);  // d(M M^T) -> (V + V^T) M
  for (int j = 0; j < 3; ++j) {
    const T s = scale[j];
    T acc = T(0);
    for (int i = 0; i < 3; ++i) {
      v_R.m[i][j] += v_M.m[i][j] * s;
      acc += v_M.m[i][j] * R.m[i][j];
    }
    v_log_scale[j] += acc * s;  // d s / d log s = s
  }
}

// ---------------------------------------------------------------------------------------
// World -> camera: p_c = R p + t, Sigma_c = R Sigma R^T (R, t from T_cam_world).
template <typename T>
RECON_HD void world_to_cam(const Mat3<T>& R, const Vec3<T>& t, const Vec3<T>& p, const Mat3<T>& cov,
                           Vec3<T>& p_c, Mat3<T>& cov_c) {
  const Vec3<T> r = matvec(R, p);
  p_c = {r.x + t.x, r.y + t.y, r.z + t.z};
  cov_c = matmul(matmul(R, cov), transpose(R));
}

template <typename T>
RECON_HD void world_to_cam_vjp(const Mat3<T>& R, const Vec3<T>& p, const Mat3<T>& cov, const Vec3<T>& v_p_c,
                               const Mat3<T>& v_cov_c, Vec3<T>& v_p, Mat3<T>& v_cov, Mat3<T>& v_R,
                               Vec3<T>& v_t) {
  const Vec3<T> vp = matTvec(R, v_p_c);
  v_p.x += vp.x;
  v_p.y += vp.y;
  v_p.z += vp.z;
  v_t.x += v_p_c.x;
  v_t.y += v_p_c.y;
  v_t.z += v_p_c.z;
  const T pc[3] = {p.x, p.y, p.z};
  const T vpc[3] = {v_p_c.x, v_p_c.y, v_p_c.z};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) v_R.m[i][j] += vpc[i] * pc[j];
  const Mat3<T> vc = matmul(matmul(transpose(R), v_cov_c), R);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) v_cov.m[i][j] += vc.m[i][j];
  // d(R S R^T) -> V R S^T + V^T R S
  const Mat3<T> a = matmul(matmul(v_cov_c, R), transpose(cov));
  const Mat3<T> b = matmul(matmul(transpose(v_cov_c), R), cov);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) v_R.m[i][j] += a.m[i][j] + b.m[i][j];
}

// ---------------------------------------------------------------------------------------
// Pinhole EWA projection of a camera-space Gaussian to pixels. The Jacobian is evaluated
// at x/z, y/z clamped to the view widened by kFrustumSlack (see constants.h).
template <typename T> struct Intrinsics {
  T fx, fy, cx, cy;
};

template <typename T>
RECON_HD void persp_proj(const Vec3<T>& p, const Mat3<T>& cov, const Intrinsics<T>& K, int width, int height,
                         Vec2<T>& mean2d, Sym2<T>& cov2d) {
  const T rz = T(1) / p.z, rz2 = rz * rz;
  const T tanx = T(0.5) * T(width) / K.fx, tany = T(0.5) * T(height) / K.fy;
  const T limx_pos = (T(width) - K.cx) / K.fx + T(kFrustumSlack) * tanx;
  const T limx_neg = K.cx / K.fx + T(kFrustumSlack) * tanx;
  const T limy_pos = (T(height) - K.cy) / K.fy + T(kFrustumSlack) * tany;
  const T limy_neg = K.cy / K.fy + T(kFrustumSlack) * tany;
  const T tx = p.z * lane_min(limx_pos, lane_max(-limx_neg, p.x * rz));
  const T ty = p.z * lane_min(limy_pos, lane_max(-limy_neg, p.y * rz));
  // J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]
  const T j00 = K.fx * rz, j02 = -K.fx * tx * rz2, j11 = K.fy * rz, j12 = -K.fy * ty * rz2;
  const auto& c = cov.m;
  // J cov: rows [j00 c0 + j02 c2], [j11 c1 + j12 c2]
  const T a0 = j00 * c[0][0] + j02 * c[2][0], a1 = j00 * c[0][1] + j02 * c[2][1],
          a2 = j00 * c[0][2] + j02 * c[2][2];
  const T b0 = j11 * c[1][0] + j12 * c[2][0], b1 = j11 * c[1][1] + j12 * c[2][1],
          b2 = j11 * c[1][2] + j12 * c[2][2];
  cov2d.a = a0 * j00 + a2 * j02;
  cov2d.b = a1 * j11 + a2 * j12;
  cov2d.c = b1 * j11 + b2 * j12;
  mean2d = {K.fx * p.x * rz + K.cx, K.fy * p.y * rz + K.cy};
}

// v_cov2d holds the gradient of each of a, b, c as a scalar (b counted once).
template <typename T>
RECON_HD void persp_proj_vjp(const Vec3<T>& p, const Mat3<T>& cov, const Intrinsics<T>& K, int width,
                             int height, const Vec2<T>& v_mean2d, const Sym2<T>& v_cov2d, Vec3<T>& v_p,
                             Mat3<T>& v_cov) {
  const T rz = T(1) / p.z, rz2 = rz * rz, rz3 = rz2 * rz;
  const T tanx = T(0.5) * T(width) / K.fx, tany = T(0.5) * T(height) / K.fy;
  const T limx_pos = (T(width) - K.cx) / K.fx + T(kFrustumSlack) * tanx;
  const T limx_neg = K.cx / K.fx + T(kFrustumSlack) * tanx;
  const T limy_pos = (T(height) - K.cy) / K.fy + T(kFrustumSlack) * tany;
  const T limy_neg = K.cy / K.fy + T(kFrustumSlack) * tany;
  const T ux = p.x * rz, uy = p.y * rz;
  const auto clx = (ux < -limx_neg) | (ux > limx_pos), cly = (uy < -limy_neg) | (uy > limy_pos);
  const T tx = p.z * lane_min(limx_pos, lane_max(-limx_neg, ux));
  const T ty = p.z * lane_min(limy_pos, lane_max(-limy_neg, uy));
  T J[2][3] = {{K.fx * rz, T(0), -K.fx * tx * rz2}, {T(0), K.fy * rz, -K.fy * ty * rz2}};
  // Full 2x2 gradient matrix of cov2d (symmetric; off-diagonal gets half of v_b each).
  const T V[2][2] = {{v_cov2d.a, T(0.5) * v_cov2d.b}, {T(0.5) * v_cov2d.b, v_cov2d.c}};
  // v_cov += J^T V J
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      T s = T(0);
      for (int k = 0; k < 2; ++k)
        for (int l = 0; l < 2; ++l) s += J[k][i] * V[k][l] * J[l][j];
      v_cov.m[i][j] += s;
    }
  // v_J = (V + V^T) J cov = 2 V J cov
  T JC[2][3];
  for (int k = 0; k < 2; ++k)
    for (int j = 0; j < 3; ++j)
      JC[k][j] = J[k][0] * cov.m[0][j] + J[k][1] * cov.m[1][j] + J[k][2] * cov.m[2][j];
  T vJ[2][3];
  for (int k = 0; k < 2; ++k)
    for (int j = 0; j < 3; ++j) vJ[k][j] = T(2) * (V[k][0] * JC[0][j] + V[k][1] * JC[1][j]);
  // Mean.
  v_p.x += K.fx * rz * v_mean2d.x;
  v_p.y += K.fy * rz * v_mean2d.y;
  v_p.z -= (K.fx * p.x * v_mean2d.x + K.fy * p.y * v_mean2d.y) * rz2;
  // Jacobian entries.
  v_p.z -= (K.fx * vJ[0][0] + K.fy * vJ[1][1]) * rz2;
  // Where x/z was clamped, tx = p.z * limit: no gradient to p.x, half of it to p.z.
  v_p.x = lane_select(clx, v_p.x, v_p.x - K.fx * rz2 * vJ[0][2]);
  v_p.z = lane_select(clx, v_p.z + K.fx * tx * rz3 * vJ[0][2], v_p.z + T(2) * K.fx * tx * rz3 * vJ[0][2]);
  v_p.y = lane_select(cly, v_p.y, v_p.y - K.fy * rz2 * vJ[1][2]);
  v_p.z = lane_select(cly, v_p.z + K.fy * ty * rz3 * vJ[1][2], v_p.z + T(2) * K.fy * ty * rz3 * vJ[1][2]);
}

// ---------------------------------------------------------------------------------------
// Dilation by kDilation, conic (inverse of the dilated covariance) and the antialiasing
// compensation sqrt(det(cov) / det(cov + dilation)) that keeps a small Gaussian's total
// contribution unchanged (gsplat's "antialiased" mode). Returns false when invalid (a bool,
// or a lane mask).
template <typename T>
RECON_HD auto conic_from_cov2d(const Sym2<T>& cov2d, Sym2<T>& conic, T& compensation, T& det) {
  const T det_orig = cov2d.a * cov2d.c - cov2d.b * cov2d.b;
  const T a = cov2d.a + T(kDilation), c = cov2d.c + T(kDilation);
  det = a * c - cov2d.b * cov2d.b;
  const T det_c = lane_max(det, T(kMinDet));
  conic = {c / det_c, -cov2d.b / det_c, a / det_c};
  compensation = lane_sqrt(lane_max(det_orig / det_c, T(0)));
  return det > T(0);
}

template <typename T>
RECON_HD void conic_from_cov2d_vjp(const Sym2<T>& cov2d, const Sym2<T>& v_conic, T v_compensation,
                                   Sym2<T>& v_cov2d) {
  const T a = cov2d.a + T(kDilation), b = cov2d.b, c = cov2d.c + T(kDilation);
  const T det = lane_max(a * c - b * b, T(kMinDet));
  const T ia = c / det, ib = -b / det, ic = a / det;  // inverse [[ia, ib], [ib, ic]]
  // d(X^-1) = -X^-1 dX X^-1, G is the gradient matrix of the conic (b counted once).
  const T g00 = v_conic.a, g01 = T(0.5) * v_conic.b, g11 = v_conic.c;
  // W = X^-1 G X^-1
  const T m00 = ia * g00 + ib * g01, m01 = ia * g01 + ib * g11;
  const T m10 = ib * g00 + ic * g01, m11 = ib * g01 + ic * g11;
  const T w00 = m00 * ia + m01 * ib, w01 = m00 * ib + m01 * ic, w11 = m10 * ib + m11 * ic;
  v_cov2d.a -= w00;
  v_cov2d.b -= T(2) * w01;
  v_cov2d.c -= w11;
  const T det_orig = cov2d.a * cov2d.c - b * b;
  // Only where the compensation is live (v_compensation != 0, det_orig > 0).
  const auto live = (v_compensation != T(0)) & (det_orig > T(0));
  const T comp = lane_sqrt(det_orig / det);
  const T k = v_compensation / (T(2) * comp);
  // d(det_orig / det) w.r.t. a, b, c
  v_cov2d.a = lane_select(live, v_cov2d.a + k * (cov2d.c / det - det_orig * c / (det * det)), v_cov2d.a);
  v_cov2d.b =
      lane_select(live, v_cov2d.b + k * (-T(2) * b / det + det_orig * T(2) * b / (det * det)), v_cov2d.b);
  v_cov2d.c = lane_select(live, v_cov2d.c + k * (cov2d.a / det - det_orig * a / (det * det)), v_cov2d.c);
}

// Screen-space half extents (pixels) beyond which alpha < kAlphaThreshold.
template <typename T>
RECON_HD Vec2<T> screen_radius(const Sym2<T>& cov2d, T opacity) {
  const T ratio = lane_max(opacity / T(kAlphaThreshold), T(1));
  const T extend = lane_min(T(kMaxExtend), lane_sqrt(T(2) * lane_log(ratio)));
  return {lane_ceil(extend * lane_sqrt(lane_max(cov2d.a + T(kDilation), T(0)))),
          lane_ceil(extend * lane_sqrt(lane_max(cov2d.c + T(kDilation), T(0))))};
}

template <typename T> RECON_HD T sigmoid(T x) { return T(1) / (T(1) + lane_exp(-x)); }

// ---------------------------------------------------------------------------------------
// Spherical harmonics (degree 0-3, real basis in the 3DGS/gsplat ordering) of the view
// direction `dir` (any length), colour = sum_k basis_k coeffs[k] + 0.5, clamped at 0.
// coeffs: [K, 3] with K >= (degree + 1)^2.
template <typename T>
RECON_HD void sh_basis(int degree, T x, T y, T z, T b[16]) {
  b[0] = T(0.2820947917738781);
  if (degree < 1) return;
  const T A = T(0.48860251190292);
  b[1] = -A * y;
  b[2] = A * z;
  b[3] = -A * x;
  if (degree < 2) return;
  const T z2 = z * z, fB = T(-1.092548430592079) * z, fA = T(0.5462742152960395);
  const T fC1 = x * x - y * y, fS1 = T(2) * x * y;
  b[4] = fA * fS1;
  b[5] = fB * y;
  b[6] = T(0.9461746957575601) * z2 - T(0.3153915652525201);
  b[7] = fB * x;
  b[8] = fA * fC1;
  if (degree < 3) return;
  const T fC = T(-2.285228997322329) * z2 + T(0.4570457994644658);
  const T fB3 = T(1.445305721320277) * z, fA3 = T(-0.5900435899266435);
  const T fC2 = x * fC1 - y * fS1, fS2 = x * fS1 + y * fC1;
  b[9] = fA3 * fS2;
  b[10] = fB3 * fS1;
  b[11] = fC * y;
  b[12] = z * (T(1.865881662950577) * z2 - T(1.119528997770346));
  b[13] = fC * x;
  b[14] = fB3 * fC1;
  b[15] = fA3 * fC2;
}

// Gradient of each basis function w.r.t. the unit direction (x, y, z): db[k] = (dx, dy, dz).
template <typename T>
RECON_HD void sh_basis_grad(int degree, T x, T y, T z, Vec3<T> db[16]) {
  db[0] = {T(0), T(0), T(0)};
  if (degree < 1) return;
  const T A = T(0.48860251190292);
  db[1] = {T(0), -A, T(0)};
  db[2] = {T(0), T(0), A};
  db[3] = {-A, T(0), T(0)};
  if (degree < 2) return;
  const T B = T(-1.092548430592079), fA = T(0.5462742152960395);
  db[4] = {T(2) * fA * y, T(2) * fA * x, T(0)};
  db[5] = {T(0), B * z, B * y};
  db[6] = {T(0), T(0), T(2) * T(0.9461746957575601) * z};
  db[7] = {B * z, T(0), B * x};
  db[8] = {T(2) * fA * x, -T(2) * fA * y, T(0)};
  if (degree < 3) return;
  const T fC = T(-2.285228997322329) * z * z + T(0.4570457994644658);
  const T dC = T(-2) * T(2.285228997322329) * z;
  const T B3 = T(1.445305721320277), fA3 = T(-0.5900435899266435);
  db[9] = {fA3 * T(6) * x * y, fA3 * (T(3) * x * x - T(3) * y * y), T(0)};
  db[10] = {B3 * z * T(2) * y, B3 * z * T(2) * x, B3 * T(2) * x * y};
  db[11] = {T(0), fC, dC * y};
  db[12] = {T(0), T(0), T(3) * T(1.865881662950577) * z * z - T(1.119528997770346)};
  db[13] = {fC, T(0), dC * x};
  db[14] = {B3 * z * T(2) * x, -B3 * z * T(2) * y, B3 * (x * x - y * y)};
  db[15] = {fA3 * (T(3) * x * x - T(3) * y * y), -fA3 * T(6) * x * y, T(0)};
}

template <typename T>
RECON_HD Vec3<T> sh_color(int degree, const Vec3<T>& dir, const T* coeffs) {
  const T inv = T(1) / lane_sqrt(dir.x * dir.x + dir.y * dir.y + dir.z * dir.z);
  T b[16];
  sh_basis(degree, dir.x * inv, dir.y * inv, dir.z * inv, b);
  const int n = (degree + 1) * (degree + 1);
  T r = T(0.5), g = T(0.5), bl = T(0.5);
  for (int k = 0; k < n; ++k) {
    r += b[k] * coeffs[3 * k];
    g += b[k] * coeffs[3 * k + 1];
    bl += b[k] * coeffs[3 * k + 2];
  }
  return {lane_max(r, T(0)), lane_max(g, T(0)), lane_max(bl, T(0))};
}

// v_coeffs: [K, 3] accumulated; v_dir accumulated (zero-length directions get none).
template <typename T>
RECON_HD void sh_color_vjp(int degree, const Vec3<T>& dir, const T* coeffs, const Vec3<T>& v_color_in,
                           T* v_coeffs, Vec3<T>& v_dir) {
  const T inv = T(1) / lane_sqrt(dir.x * dir.x + dir.y * dir.y + dir.z * dir.z);
  const T x = dir.x * inv, y = dir.y * inv, z = dir.z * inv;
  T b[16];
  sh_basis(degree, x, y, z, b);
  const int n = (degree + 1) * (degree + 1);
  T raw[3] = {T(0.5), T(0.5), T(0.5)};
  for (int k = 0; k < n; ++k)
    for (int ch = 0; ch < 3; ++ch) raw[ch] += b[k] * coeffs[3 * k + ch];
  // The clamp at 0 passes gradient only where the colour was not clamped.
  const T v[3] = {lane_select(raw[0] >= T(0), v_color_in.x, T(0)),
                  lane_select(raw[1] >= T(0), v_color_in.y, T(0)),
                  lane_select(raw[2] >= T(0), v_color_in.z, T(0))};
  for (int k = 0; k < n; ++k)
    for (int ch = 0; ch < 3; ++ch) v_coeffs[3 * k + ch] += b[k] * v[ch];
  if (degree < 1) return;
  Vec3<T> db[16];
  sh_basis_grad(degree, x, y, z, db);
  Vec3<T> vn = {T(0), T(0), T(0)};
  for (int k = 1; k < n; ++k) {
    const T s = v[0] * coeffs[3 * k] + v[1] * coeffs[3 * k + 1] + v[2] * coeffs[3 * k + 2];
    vn.x += s * db[k].x;
    vn.y += s * db[k].y;
    vn.z += s * db[k].z;
  }
  const T dot = vn.x * x + vn.y * y + vn.z * z;
  v_dir.x += (vn.x - x * dot) * inv;
  v_dir.y += (vn.y - y * dot) * inv;
  v_dir.z += (vn.z - z * dot) * inv;
}

// ---------------------------------------------------------------------------------------
// Per-pixel Gaussian falloff. d = mean2d - pixel centre.
// sigma = 0.5 (a dx^2 + c dy^2) + b dx dy; alpha = min(kAlphaCap, opacity exp(-sigma)).
template <typename T>
RECON_HD T gaussian_sigma(const Sym2<T>& conic, T dx, T dy) {
  return T(0.5) * (conic.a * dx * dx + conic.c * dy * dy) + conic.b * dx * dy;
}

// Alpha of one Gaussian at one pixel, 0 when below kAlphaThreshold or sigma < 0.
template <typename T>
RECON_HD T gaussian_alpha(const Sym2<T>& conic, T opacity, T dx, T dy) {
  const T sigma = gaussian_sigma(conic, dx, dy);
  if (sigma < T(0)) return T(0);
  const T alpha = std::fmin(T(kAlphaCap), opacity * std::exp(-sigma));
  return alpha < T(kAlphaThreshold) ? T(0) : alpha;
}

// Gradient of alpha (given v_alpha) w.r.t. conic, opacity and d (= mean2d - pixel).
// Zero where alpha was capped (the cap is flat).
template <typename T>
RECON_HD void gaussian_alpha_vjp(const Sym2<T>& conic, T opacity, T dx, T dy, T v_alpha, Sym2<T>& v_conic,
                                 T& v_opacity, Vec2<T>& v_d) {
  const T sigma = gaussian_sigma(conic, dx, dy);
  const T g = std::exp(-sigma);
  if (opacity * g > T(kAlphaCap)) return;
  v_opacity += g * v_alpha;
  const T v_sigma = -opacity * g * v_alpha;
  v_conic.a += T(0.5) * dx * dx * v_sigma;
  v_conic.b += dx * dy * v_sigma;
  v_conic.c += T(0.5) * dy * dy * v_sigma;
  v_d.x += (conic.a * dx + conic.b * dy) * v_sigma;
  v_d.y += (conic.b * dx + conic.c * dy) * v_sigma;
}

// Camera centre in world coordinates from T_cam_world = [R | t]: -R^T t.
template <typename T>
RECON_HD Vec3<T> camera_centre(const Mat3<T>& R, const Vec3<T>& t) {
  const Vec3<T> c = matTvec(R, t);
  return {-c.x, -c.y, -c.z};
}

template <typename T>
RECON_HD void camera_centre_vjp(const Mat3<T>& R, const Vec3<T>& t, const Vec3<T>& v_c, Mat3<T>& v_R,
                                Vec3<T>& v_t) {
  const T tt[3] = {t.x, t.y, t.z}, vc[3] = {v_c.x, v_c.y, v_c.z};
  for (int j = 0; j < 3; ++j)
    for (int i = 0; i < 3; ++i) v_R.m[j][i] -= tt[j] * vc[i];  // c_i = -sum_j R_ji t_j
  const Vec3<T> vt = matvec(R, v_c);
  v_t.x -= vt.x;
  v_t.y -= vt.y;
  v_t.z -= vt.z;
}

// ---------------------------------------------------------------------------------------
// One camera as the projection uses it: T_cam_world = [R | t], intrinsics, and the centre
// -R^T t in world coordinates (for the SH viewing direction).
template <typename T> struct CameraView {
  Mat3<T> R;
  Vec3<T> t;
  Intrinsics<T> K;
  Vec3<T> centre;
};

// viewmat [4, 4] row-major T_cam_world, Kmat [3, 3].
template <typename T> RECON_HD CameraView<T> load_camera(const T* viewmat, const T* Kmat) {
  CameraView<T> c;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) c.R.m[i][j] = viewmat[4 * i + j];
  c.t = {viewmat[3], viewmat[7], viewmat[11]};
  c.K = {Kmat[0], Kmat[4], Kmat[2], Kmat[5]};
  c.centre = camera_centre(c.R, c.t);
  return c;
}

// Vector-Jacobian product of the whole projection of one visible Gaussian into one camera
// (world_to_cam -> persp_proj -> conic_from_cov2d [-> compensation] and sh_color along
// mean - centre): the one call chain both backends run, so they cannot diverge.
// Upstream: v_mean2d, v_conic, v_color, v_opacity, v_depth of this (camera, Gaussian).
// Accumulates v_mean, v_cov (world covariance), v_opacity_raw (w.r.t. sigmoid(logit)),
// v_sh [K, 3], and the pose gradient v_R, v_t of this camera.
template <typename T>
RECON_HD void project_vjp(const CameraView<T>& cam, int width, int height, bool antialiased, int sh_degree,
                          const Vec3<T>& mean, const Mat3<T>& cov, T opacity_raw, const T* sh,
                          const Vec2<T>& v_mean2d, const Sym2<T>& v_conic, const Vec3<T>& v_color,
                          T v_opacity, T v_depth, Vec3<T>& v_mean, Mat3<T>& v_cov, T& v_opacity_raw, T* v_sh,
                          Mat3<T>& v_R, Vec3<T>& v_t) {
  Vec3<T> pc;
  Mat3<T> cov_c;
  world_to_cam(cam.R, cam.t, mean, cov, pc, cov_c);
  Vec2<T> m2;
  Sym2<T> cov2d, conic;
  T comp, det;
  persp_proj(pc, cov_c, cam.K, width, height, m2, cov2d);
  conic_from_cov2d(cov2d, conic, comp, det);
  // Opacity: o = sigmoid(logit) [* compensation].
  T v_comp = T(0);
  if (antialiased) {
    v_opacity_raw += v_opacity * comp;
    v_comp = v_opacity * opacity_raw;
  } else {
    v_opacity_raw += v_opacity;
  }
  Sym2<T> v_cov2d = {T(0), T(0), T(0)};
  conic_from_cov2d_vjp(cov2d, v_conic, v_comp, v_cov2d);
  Vec3<T> v_pc = {T(0), T(0), v_depth};
  Mat3<T> v_cov_c = mat3_zero<T>();
  persp_proj_vjp(pc, cov_c, cam.K, width, height, v_mean2d, v_cov2d, v_pc, v_cov_c);
  world_to_cam_vjp(cam.R, mean, cov, v_pc, v_cov_c, v_mean, v_cov, v_R, v_t);
  // Colour from SH along the viewing direction mean - camera centre.
  const Vec3<T> dir = {mean.x - cam.centre.x, mean.y - cam.centre.y, mean.z - cam.centre.z};
  Vec3<T> v_dir = {T(0), T(0), T(0)};
  sh_color_vjp(sh_degree, dir, sh, v_color, v_sh, v_dir);
  v_mean.x += v_dir.x;
  v_mean.y += v_dir.y;
  v_mean.z += v_dir.z;
  const Vec3<T> v_centre = {-v_dir.x, -v_dir.y, -v_dir.z};
  camera_centre_vjp(cam.R, cam.t, v_centre, v_R, v_t);
}

// ---------------------------------------------------------------- tile binning
// One formula for both backends: count_tiles and bin_and_sort (CPU and CUDA) must agree
// exactly on which tiles a Gaussian touches, or lists and counts would disagree.

RECON_HD int tiles_along(int pixels, int tile_size) { return (pixels + tile_size - 1) / tile_size; }

struct TileRange {
  int x0, x1, y0, y1;
};  // [x0, x1) x [y0, y1) in tiles

RECON_HD int clamp_tile(int v, int hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

// Tiles touched by the bounding box of a Gaussian at (mx, my) with pixel half extents (rx, ry).
template <typename T>
RECON_HD TileRange tile_range(T mx, T my, int rx, int ry, int tile_size, int tiles_x, int tiles_y) {
  const T ts = T(tile_size);
  return {clamp_tile(int(std::floor((mx - T(rx)) / ts)), tiles_x),
          clamp_tile(int(std::ceil((mx + T(rx)) / ts)), tiles_x),
          clamp_tile(int(std::floor((my - T(ry)) / ts)), tiles_y),
          clamp_tile(int(std::ceil((my + T(ry)) / ts)), tiles_y)};
}

}  // namespace recon
