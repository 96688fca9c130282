// Per-tile blending of the CPU backend (forward and backward), written once and compiled
// for several instruction sets by cpu_raster_isa.cpp: these are always-inline templates,
// inlined there into wrappers that carry a target attribute, so the pixel loops vectorise
// with that ISA's vector width while the binary still runs on any x86-64 CPU.
//
// A tile is processed as TS x TS pixels with a compile-time row length, so each row is one
// or two full SIMD operations; pixels past the image edge are masked out. Private to the
// CPU backend (not a RECON_HD header: nvcc never sees it).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "recon/constants.h"
#include "recon/math.h"

#include "cpu_isa.h"

#define RECON_TILE_INLINE RECON_ALWAYS_INLINE

namespace recon {
namespace cpu {

// Gradient slots per tile-list entry: means2d 2, conic 3, colour 3, opacity, depth.
constexpr int kGradSlots = 10;

// Screen-space Gaussians of one camera (pointers already offset to that camera).
template <typename T> struct Splats {
  const T* means2d;    // [N, 2]
  const T* conics;     // [N, 3]
  const T* colors;     // [N, 3]
  const T* opacities;  // [N]
  const T* depths;     // [N]
  const T* extents;    // [N, 3] from splat_extent
};

// One tile: top-left pixel, size clipped to the image, row stride of the image in pixels.
struct Tile {
  int x0, y0, w, h, stride;
};

// Work done by one tile, for the benchmark's throughput figures: pixel lanes evaluated
// (rows x TS for each entry visited) and Gaussian-pixel pairs actually blended.
struct TileCounts {
  int64_t lanes = 0;
  int64_t blended = 0;
};

// exp(x) for the blending loops. The float version is a branch-free range reduction plus a
// degree-7 polynomial (relative error ~1e-7) so that the pixel loops vectorise on every ISA
// (rounding by the 1.5 * 2^23 trick needs no SSE4.1 round instruction); double keeps
// std::exp so gradient checks in double see a smooth function.
RECON_TILE_INLINE float blend_exp(float x) {
  x = x < -87.0f ? -87.0f : x;  // (ternaries vectorise; fminf does not without -ffast-math)
  x = x > 88.0f ? 88.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}
RECON_TILE_INLINE double blend_exp(double x) { return std::exp(x); }

// One Gaussian gathered for a tile, with its pixel bounding box clipped to the tile (local
// pixel coordinates, inclusive-exclusive) and the sigma below which it is visible. The box
// is padded by one pixel so that rounding at its edge can never drop a pixel the dense
// reference would blend.
template <typename T> struct Splat {
  T mx, my, opacity, depth, sigma_max;
  Sym2<T> conic;
  T col[3];
  int px0, px1, py0, py1;
};

// Per (camera, Gaussian), once before the tiles: the sigma below which alpha can pass
// kAlphaThreshold (sigma <= ln(opacity / kAlphaThreshold)) and the half extents of that
// ellipse, sqrt(2 sigma_max cov_xx) and sqrt(2 sigma_max cov_yy) with cov = conic^-1.
// extent[0] < 0 marks a Gaussian that is visible nowhere.
template <typename T>
RECON_TILE_INLINE void splat_extent(const T* conic, T opacity, T* extent) {
  const T ratio = opacity / T(kAlphaThreshold);
  const T det = conic[0] * conic[2] - conic[1] * conic[1];
  if (!(ratio > T(1)) || !(det > T(0)) || !(conic[0] > T(0))) {
    extent[0] = T(-1);
    extent[1] = extent[2] = T(0);
    return;
  }
  extent[0] = std::log(ratio);
  extent[1] = std::sqrt(T(2) * extent[0] * conic[2] / det);
  extent[2] = std::sqrt(T(2) * extent[0] * conic[0] / det);
}

template <typename T>
RECON_TILE_INLINE bool gather(const Splats<T>& g, int32_t i, const Tile& tile, Splat<T>& s) {
  const T* e = g.extents + 3 * i;
  if (!(e[0] >= T(0))) return false;
  s.mx = g.means2d[2 * i];
  s.my = g.means2d[2 * i + 1];
  const T rx = e[1], ry = e[2];
  auto lo = [](T v, int base, int n) {
    return int(std::min(std::max(std::floor(v) - T(1) - T(base), T(0)), T(n)));
  };
  auto hi = [](T v, int base, int n) {
    return int(std::min(std::max(std::ceil(v) + T(2) - T(base), T(0)), T(n)));
  };
  s.px0 = lo(s.mx - rx - T(0.5), tile.x0, tile.w);
  s.px1 = hi(s.mx + rx - T(0.5), tile.x0, tile.w);
  s.py0 = lo(s.my - ry - T(0.5), tile.y0, tile.h);
  s.py1 = hi(s.my + ry - T(0.5), tile.y0, tile.h);
  if (!(s.px0 < s.px1 && s.py0 < s.py1)) return false;
  s.sigma_max = e[0];
  s.conic = {g.conics[3 * i], g.conics[3 * i + 1], g.conics[3 * i + 2]};
  s.opacity = g.opacities[i];
  s.depth = g.depths[i];
  for (int k = 0; k < 3; ++k) s.col[k] = g.colors[3 * i + k];
  return true;
}

// Whether the ellipse sigma <= sigma_max crosses the tile's columns [0, w) on the row at
// vertical offset dy (= my - pixel centre y). Tighter than the bounding box for tilted or
// off-tile Gaussians; padded by a pixel and a relative margin, like the box, so it never
// skips a row the exact test would blend on.
template <typename T>
RECON_TILE_INLINE bool row_crosses(const Splat<T>& s, T dy, T x0_centre, int w) {
  // 0.5 a dx^2 + b dy dx + 0.5 c dy^2 - sigma_max <= 0, a quadratic in dx = mx - px.
  const T a = s.conic.a, b = s.conic.b, c = s.conic.c;
  const T disc = b * b * dy * dy - a * (c * dy * dy - T(2) * s.sigma_max * T(1.001)) + T(1e-6);
  if (disc < T(0)) return false;
  const T root = std::sqrt(disc);
  const T dx_lo = (-b * dy - root) / a, dx_hi = (-b * dy + root) / a;
  // lane x has dx = mx - (x0_centre + x): visible lanes x in [mx - dx_hi - x0c, mx - dx_lo - x0c]
  const T x_lo = s.mx - dx_hi - x0_centre, x_hi = s.mx - dx_lo - x0_centre;
  return x_hi >= T(-1) && x_lo <= T(w);
}

// Front-to-back blending of one tile's list (ids [n], nearest first). Writes rgb [3 per
// pixel], depth_sum, alpha and n_contrib for the tile's pixels, starting at the given
// pointers (the tile's top-left pixel, rows `tile.stride` pixels apart).
template <typename T, int TS>
RECON_TILE_INLINE void forward_tile(const Splats<T>& g, const int32_t* ids, int64_t n, const Tile& tile,
                                    T* rgb, T* depth_sum, T* alpha, int32_t* n_contrib, TileCounts& counts) {
  constexpr int P = TS * TS;
  // Per pixel of the tile (structure of arrays so the loops vectorise): transmittance,
  // accumulated r, g, b, depth, still-blending flag, entries visited (as T so every lane
  // has one width).
  alignas(64) T Tr[P], ar[P], ag[P], ab[P], ad[P], live[P], last[P];
  int row_live[TS];  // still-blending pixels per row: a row with none is skipped
  for (int q = 0; q < P; ++q) {
    Tr[q] = T(1);
    live[q] = (q % TS < tile.w && q / TS < tile.h) ? T(1) : T(0);
    ar[q] = ag[q] = ab[q] = ad[q] = T(0);
    last[q] = T(n);
  }
  for (int y = 0; y < TS; ++y) row_live[y] = y < tile.h ? tile.w : 0;
  int n_live = tile.w * tile.h;
  int64_t lanes = 0;
  T blended = T(0);
  const T x0 = T(tile.x0) + T(0.5);
  for (int64_t k = 0; k < n && n_live > 0; ++k) {
    Splat<T> s;
    if (!gather(g, ids[k], tile, s)) continue;
    const T kk = T(k);
    // Locals (not struct fields) so the compiler keeps them in registers and vectorises.
    const T mx = s.mx, my = s.my, ca = s.conic.a, cb = s.conic.b, cc = s.conic.c;
    const T op = s.opacity, c0 = s.col[0], c1 = s.col[1], c2 = s.col[2], dep = s.depth;
    for (int y = s.py0; y < s.py1; ++y) {
      if (row_live[y] == 0) continue;
      const T dy = my - (T(tile.y0 + y) + T(0.5));
      if (!row_crosses(s, dy, x0, tile.w)) continue;
      lanes += TS;
      const T hcdy2 = T(0.5) * cc * dy * dy, bdy = cb * dy;
      T* __restrict tr = Tr + y * TS;
      T* __restrict r0 = ar + y * TS;
      T* __restrict r1 = ag + y * TS;
      T* __restrict r2 = ab + y * TS;
      T* __restrict rd = ad + y * TS;
      T* __restrict lv = live + y * TS;
      T* __restrict ls = last + y * TS;
      T newly_done = T(0), row_blended = T(0);
#pragma omp simd reduction(+ : newly_done, row_blended)
      for (int x = 0; x < TS; ++x) {
        const T dx = mx - (x0 + T(x));
        // = gaussian_sigma(conic, dx, dy) of recon/math.h, with the dy terms hoisted
        const T sigma = T(0.5) * ca * dx * dx + bdy * dx + hcdy2;
        const T raw = op * blend_exp(-sigma);
        const T a = raw < T(kAlphaCap) ? raw : T(kAlphaCap);
        // Masks as 0/1 values: boolean logic here stops GCC from vectorising.
        const T okf = (sigma >= T(0) ? T(1) : T(0)) * (a >= T(kAlphaThreshold) ? T(1) : T(0)) * lv[x];
        const T next = tr[x] * (T(1) - a);
        const T termf = next <= T(kTransmittanceMin) ? okf : T(0);
        const T blendf = okf - termf;
        const T w = blendf > T(0) ? a * tr[x] : T(0);
        r0[x] += w * c0;
        r1[x] += w * c1;
        r2[x] += w * c2;
        rd[x] += w * dep;
        tr[x] = blendf > T(0) ? next : tr[x];
        lv[x] = termf > T(0) ? T(0) : lv[x];
        ls[x] = termf > T(0) ? kk : ls[x];
        newly_done += termf;
        row_blended += blendf;
      }
      row_live[y] -= int(newly_done);
      n_live -= int(newly_done);
      blended += row_blended;
    }
  }
  for (int y = 0; y < tile.h; ++y)
    for (int x = 0; x < tile.w; ++x) {
      const int q = y * TS + x;
      const int64_t pix = int64_t(y) * tile.stride + x;
      rgb[3 * pix] = ar[q];
      rgb[3 * pix + 1] = ag[q];
      rgb[3 * pix + 2] = ab[q];
      depth_sum[pix] = ad[q];
      alpha[pix] = T(1) - Tr[q];
      n_contrib[pix] = int32_t(last[q]);
    }
  counts.lanes += lanes;
  counts.blended += int64_t(blended);
}

// Back-to-front walk of one tile's list, recovering each pixel's transmittance from the
// forward's final one. Inputs start at the tile's top-left pixel (rows tile.stride apart).
// Writes the gradient contribution of this tile to every entry k < n of its list into
// grads[k * kGradSlots ...] (zeros for entries that blended nowhere in the tile), so the
// caller can sum them per Gaussian in a fixed order.
template <typename T, int TS>
RECON_TILE_INLINE void backward_tile(const Splats<T>& g, const int32_t* ids, int64_t n, const Tile& tile,
                                     const T* alpha, const int32_t* n_contrib, const T* v_rgb,
                                     const T* v_depth_sum, const T* v_alpha, T* grads, TileCounts& counts) {
  constexpr int P = TS * TS;
  constexpr int G = kGradSlots;
  // Per pixel: transmittance (walking back to front), final transmittance, colour and depth
  // already accumulated behind, upstream gradients, entries blended in forward.
  alignas(64) T Tr[P], Tf[P], br[P], bg[P], bb[P], bd[P], vr[P], vg[P], vb[P], vd[P], va[P], last[P];
  T row_last[TS];  // largest entry count of the row: entries at or past it blend nowhere there
  int32_t max_last = 0;
  for (int q = 0; q < P; ++q) {  // padding pixels: nothing blended, no gradient
    Tf[q] = Tr[q] = T(1);
    br[q] = bg[q] = bb[q] = bd[q] = vr[q] = vg[q] = vb[q] = vd[q] = va[q] = T(0);
    last[q] = T(0);
  }
  for (int y = 0; y < TS; ++y) row_last[y] = T(0);
  for (int y = 0; y < tile.h; ++y)
    for (int x = 0; x < tile.w; ++x) {
      const int q = y * TS + x;
      const int64_t pix = int64_t(y) * tile.stride + x;
      Tf[q] = Tr[q] = T(1) - alpha[pix];
      vr[q] = v_rgb[3 * pix];
      vg[q] = v_rgb[3 * pix + 1];
      vb[q] = v_rgb[3 * pix + 2];
      vd[q] = v_depth_sum[pix];
      va[q] = v_alpha[pix];
      last[q] = T(n_contrib[pix]);
      row_last[y] = std::max(row_last[y], last[q]);
      max_last = std::max(max_last, n_contrib[pix]);
    }
  const int64_t n_walk = std::min<int64_t>(max_last, n);
  std::memset(grads + n_walk * G, 0, sizeof(T) * size_t(n - n_walk) * G);
  int64_t lanes = 0;
  const T x0 = T(tile.x0) + T(0.5);
  for (int64_t k = n_walk - 1; k >= 0; --k) {
    T* out = grads + k * G;
    for (int j = 0; j < G; ++j) out[j] = T(0);
    Splat<T> s;
    if (!gather(g, ids[k], tile, s)) continue;
    const T kf = T(k);
    // Locals (not struct fields) so the compiler keeps them in registers and vectorises.
    const T mx = s.mx, my = s.my, ca = s.conic.a, cb = s.conic.b, cc = s.conic.c;
    const T op = s.opacity, c0 = s.col[0], c1 = s.col[1], c2 = s.col[2], dep = s.depth;
    T s_mx = T(0), s_my = T(0), s_ca = T(0), s_cb = T(0), s_cc = T(0);
    T s_r = T(0), s_g = T(0), s_b = T(0), s_op = T(0), s_dep = T(0);
    for (int y = s.py0; y < s.py1; ++y) {
      if (!(kf < row_last[y])) continue;
      const T dy = my - (T(tile.y0 + y) + T(0.5));
      if (!row_crosses(s, dy, x0, tile.w)) continue;
      lanes += TS;
      const T hcdy2 = T(0.5) * cc * dy * dy, bdy = cb * dy;
      const int row = y * TS;
      T* __restrict tr = Tr + row;
      T* __restrict q0 = br + row;
      T* __restrict q1 = bg + row;
      T* __restrict q2 = bb + row;
      T* __restrict qd = bd + row;
      const T* __restrict u0 = vr + row;
      const T* __restrict u1 = vg + row;
      const T* __restrict u2 = vb + row;
      const T* __restrict ud = vd + row;
      const T* __restrict ua = va + row;
      const T* __restrict tf = Tf + row;
      const T* __restrict ls = last + row;
      T r_sig = T(0);  // sum of v_sigma over the row (for conic.c)
#pragma omp simd reduction(+ : s_mx, s_my, s_ca, s_cb, r_sig, s_r, s_g, s_b, s_op, s_dep)
      for (int x = 0; x < TS; ++x) {
        const T dx = mx - (x0 + T(x));
        // = gaussian_sigma(conic, dx, dy) of recon/math.h, with the dy terms hoisted
        const T sigma = T(0.5) * ca * dx * dx + bdy * dx + hcdy2;
        const T gs = blend_exp(-sigma);
        const T raw = op * gs;
        const T a = raw < T(kAlphaCap) ? raw : T(kAlphaCap);
        // Blended in forward: the same test, on the entries before the pixel stopped.
        const T okf = (sigma >= T(0) ? T(1) : T(0)) * (a >= T(kAlphaThreshold) ? T(1) : T(0)) *
                      (kf < ls[x] ? T(1) : T(0));
        const T inv1m = T(1) / (T(1) - a);
        const T Ti = tr[x] * inv1m;
        const T w = okf > T(0) ? a * Ti : T(0);
        s_r += w * u0[x];
        s_g += w * u1[x];
        s_b += w * u2[x];
        s_dep += w * ud[x];
        const T v_a = Ti * (c0 * u0[x] + c1 * u1[x] + c2 * u2[x] + dep * ud[x]) -
                      (q0[x] * u0[x] + q1[x] * u1[x] + q2[x] * u2[x] + qd[x] * ud[x]) * inv1m +
                      ua[x] * tf[x] * inv1m;
        q0[x] += w * c0;
        q1[x] += w * c1;
        q2[x] += w * c2;
        qd[x] += w * dep;
        tr[x] = okf > T(0) ? Ti : tr[x];
        // The alpha cap is flat: no gradient flows through a capped alpha.
        const T livef = raw <= T(kAlphaCap) ? okf : T(0);
        const T v_sigma = livef > T(0) ? -raw * v_a : T(0);
        s_op += livef > T(0) ? gs * v_a : T(0);
        s_ca += T(0.5) * dx * dx * v_sigma;
        s_cb += dx * dy * v_sigma;
        r_sig += v_sigma;
        s_mx += (ca * dx + bdy) * v_sigma;
        s_my += (cb * dx + cc * dy) * v_sigma;
      }
      s_cc += T(0.5) * dy * dy * r_sig;
    }
    out[0] = s_mx;
    out[1] = s_my;
    out[2] = s_ca;
    out[3] = s_cb;
    out[4] = s_cc;
    out[5] = s_r;
    out[6] = s_g;
    out[7] = s_b;
    out[8] = s_op;
    out[9] = s_dep;
  }
  counts.lanes += lanes;
}

}  // namespace cpu
}  // namespace recon
