// CPU tile binning, depth sorting and front-to-back blending (forward and backward).
// OpenMP over (camera, tile) jobs; the backward pass accumulates per-thread gradient
// buffers that are reduced at the end, so no two threads ever write the same memory.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "recon/api.h"
#include "recon/math.h"

namespace recon {
namespace {

template <typename T>
TileRange tile_range(const TileParams& p, T mx, T my, int rx, int ry) {
  return recon::tile_range(mx, my, rx, ry, p.tile_size, p.tiles_x(), p.tiles_y());
}

// exp(x) for the blending loops. The float version is a branch-free range reduction plus
// a degree-7 polynomial (relative error ~1e-7) so that the pixel loops vectorise; double
// keeps std::exp so gradient checks in double see a smooth function.
inline float blend_exp(float x) {
  x = x < -87.0f ? -87.0f : x;  // (ternaries vectorise; fminf does not without -ffast-math)
  x = x > 88.0f ? 88.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
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
inline double blend_exp(double x) { return std::exp(x); }

// One Gaussian gathered for a tile, with its pixel bounding box clipped to the tile
// (local pixel coordinates, inclusive-exclusive). The box is padded by one pixel so that
// rounding at its edge can never drop a pixel the dense reference would blend.
template <typename T> struct Splat {
  T mx, my, opacity, depth;
  Sym2<T> conic;
  T col[3];
  int px0, px1, py0, py1;
};

template <typename T>
bool gather(int64_t i, int tx0, int ty0, int tw, int th, const T* means2d, const T* conics,
            const T* colors, const T* opacities, const T* depths, Splat<T>& s) {
  s.mx = means2d[2 * i];
  s.my = means2d[2 * i + 1];
  s.conic = {conics[3 * i], conics[3 * i + 1], conics[3 * i + 2]};
  s.opacity = opacities[i];
  s.depth = depths[i];
  for (int k = 0; k < 3; ++k) s.col[k] = colors[3 * i + k];
  // alpha >= kAlphaThreshold needs sigma <= ln(opacity / kAlphaThreshold): an ellipse whose
  // half extents are sqrt(2 ln(..) * cov_xx) and sqrt(2 ln(..) * cov_yy), cov = conic^-1.
  const T ratio = s.opacity / T(kAlphaThreshold);
  const T det = s.conic.a * s.conic.c - s.conic.b * s.conic.b;
  if (!(ratio > T(1)) || !(det > T(0))) return false;
  const T lim = T(2) * std::log(ratio);
  const T rx = std::sqrt(lim * s.conic.c / det), ry = std::sqrt(lim * s.conic.a / det);
  auto lo = [](T v, int base, int n) {
    return int(std::min(std::max(std::floor(v) - T(1) - T(base), T(0)), T(n)));
  };
  auto hi = [](T v, int base, int n) {
    return int(std::min(std::max(std::ceil(v) + T(2) - T(base), T(0)), T(n)));
  };
  s.px0 = lo(s.mx - rx - T(0.5), tx0, tw);
  s.px1 = hi(s.mx + rx - T(0.5), tx0, tw);
  s.py0 = lo(s.my - ry - T(0.5), ty0, th);
  s.py1 = hi(s.my + ry - T(0.5), ty0, th);
  return s.px0 < s.px1 && s.py0 < s.py1;
}

}  // namespace

template <typename T>
void cpu_count_tiles(const TileParams& p, const T* means2d, const int32_t* radii,
                     int32_t* tiles_per_gaussian) {
  const int64_t total = int64_t(p.C) * p.N;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    const int rx = radii[2 * i], ry = radii[2 * i + 1];
    if (rx <= 0 || ry <= 0) {
      tiles_per_gaussian[i] = 0;
      continue;
    }
    const TileRange r = tile_range(p, means2d[2 * i], means2d[2 * i + 1], rx, ry);
    tiles_per_gaussian[i] = (r.x1 - r.x0) * (r.y1 - r.y0);
  }
}

template <typename T>
void cpu_bin_and_sort(const TileParams& p, const T* means2d, const int32_t* radii, const T* depths,
                      const int64_t* isect_offsets, int64_t n_isect, int64_t* tile_offsets,
                      int32_t* flat_ids) {
  (void)isect_offsets;
  const int64_t n_tiles = int64_t(p.tiles_x()) * p.tiles_y();
  const int64_t total_tiles = n_tiles * p.C;
  // Counting sort by (camera, tile); Gaussians enter in index order, so the per-tile
  // depth sort below can break ties by index with a stable sort.
  std::vector<int64_t> counts(total_tiles + 1, 0);
  for (int64_t i = 0; i < int64_t(p.C) * p.N; ++i) {
    if (radii[2 * i] <= 0 || radii[2 * i + 1] <= 0) continue;
    const int64_t c = i / p.N;
    const TileRange r = tile_range(p, means2d[2 * i], means2d[2 * i + 1], radii[2 * i], radii[2 * i + 1]);
    for (int ty = r.y0; ty < r.y1; ++ty)
      for (int tx = r.x0; tx < r.x1; ++tx) ++counts[c * n_tiles + int64_t(ty) * p.tiles_x() + tx + 1];
  }
  for (int64_t t = 0; t < total_tiles; ++t) counts[t + 1] += counts[t];
  std::copy(counts.begin(), counts.end(), tile_offsets);
  std::vector<int64_t> cursor(counts.begin(), counts.end() - 1);
  for (int64_t i = 0; i < int64_t(p.C) * p.N; ++i) {
    if (radii[2 * i] <= 0 || radii[2 * i + 1] <= 0) continue;
    const int64_t c = i / p.N;
    const TileRange r = tile_range(p, means2d[2 * i], means2d[2 * i + 1], radii[2 * i], radii[2 * i + 1]);
    for (int ty = r.y0; ty < r.y1; ++ty)
      for (int tx = r.x0; tx < r.x1; ++tx)
        flat_ids[cursor[c * n_tiles + int64_t(ty) * p.tiles_x() + tx]++] = int32_t(i - c * p.N);
  }
  (void)n_isect;
#pragma omp parallel
  {
    std::vector<std::pair<T, int32_t>> buf;
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < total_tiles; ++t) {
      const int64_t a = tile_offsets[t], b = tile_offsets[t + 1];
      const T* dep = depths + (t / n_tiles) * p.N;
      buf.clear();
      for (int64_t k = a; k < b; ++k) buf.emplace_back(dep[flat_ids[k]], flat_ids[k]);
      std::sort(buf.begin(), buf.end());  // by depth, then index
      for (int64_t k = a; k < b; ++k) flat_ids[k] = buf[k - a].second;
    }
  }
}

namespace {

// Tiles are processed as TS x TS blocks with a compile-time row length, so each row is one
// or two full SIMD operations; pixels past the image edge are masked out.
template <typename T, int TS>
void raster_forward_tiles(const TileParams& p, const T* means2d, const T* conics, const T* colors,
                          const T* opacities, const T* depths, const int64_t* tile_offsets,
                          const int32_t* flat_ids, T* rgb, T* depth_sum, T* alpha, int32_t* n_contrib) {
  const int TX = p.tiles_x(), TY = p.tiles_y(), ts = TS;
  const int64_t n_tiles = int64_t(TX) * TY, jobs = n_tiles * p.C;
#pragma omp parallel
  {
    const int P = ts * ts;
    // Per pixel of the tile (structure of arrays so the loops vectorise): transmittance,
    // accumulated r, g, b, depth, still-blending flag, entries visited.
    std::vector<T> Tr_v(P), ar_v(P), ag_v(P), ab_v(P), ad_v(P), live_v(P), last_v(P);
    T* __restrict Tr = Tr_v.data();
    T* __restrict ar = ar_v.data();
    T* __restrict ag = ag_v.data();
    T* __restrict ab = ab_v.data();
    T* __restrict ad = ad_v.data();
    T* __restrict live = live_v.data();
    T* __restrict last = last_v.data();  // entries visited, as T so every lane is one width
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t c = job / n_tiles, t = job % n_tiles;
      const int tx0 = int(t % TX) * ts, ty0 = int(t / TX) * ts;
      const int tw = std::min(ts, p.width - tx0), th = std::min(ts, p.height - ty0);
      const int64_t start = tile_offsets[job], end = tile_offsets[job + 1];
      const int n_px = TS * TS;
      for (int q = 0; q < n_px; ++q) {
        Tr[q] = T(1);
        live[q] = (q % TS < tw && q / TS < th) ? T(1) : T(0);
        ar[q] = ag[q] = ab[q] = ad[q] = T(0);
        last[q] = T(end - start);
      }
      int n_done = n_px - tw * th;  // padding pixels count as done
      for (int64_t k = start; k < end && n_done < n_px; ++k) {
        const int64_t gi = c * p.N + flat_ids[k];
        Splat<T> s;
        if (!gather(gi, tx0, ty0, tw, th, means2d, conics, colors, opacities, depths, s)) continue;
        const T kk = T(k - start);
        // Locals (not struct fields) so the compiler keeps them in registers and vectorises.
        const T mx = s.mx, my = s.my, ca = s.conic.a, cb = s.conic.b, cc = s.conic.c;
        const T op = s.opacity, c0 = s.col[0], c1 = s.col[1], c2 = s.col[2], dep = s.depth;
        const T x0 = T(tx0) + T(0.5);
        for (int y = s.py0; y < s.py1; ++y) {
          const T dy = my - (T(ty0 + y) + T(0.5));
          const T hcdy2 = T(0.5) * cc * dy * dy, bdy = cb * dy;
          T* __restrict tr = Tr + y * TS;
          T* __restrict r0 = ar + y * TS;
          T* __restrict r1 = ag + y * TS;
          T* __restrict r2 = ab + y * TS;
          T* __restrict rd = ad + y * TS;
          T* __restrict lv = live + y * TS;
          T* __restrict ls = last + y * TS;
          T newly_done = T(0);
#pragma omp simd reduction(+ : newly_done)
          for (int x = 0; x < TS; ++x) {
            const T dx = mx - (x0 + T(x));
            // = gaussian_sigma(conic, dx, dy) of recon/math.h, with the dy terms hoisted
            const T sigma = T(0.5) * ca * dx * dx + bdy * dx + hcdy2;
            const T raw = op * blend_exp(-sigma);
            const T a = raw < T(kAlphaCap) ? raw : T(kAlphaCap);
            // Masks as 0/1 floats: boolean logic here stops GCC from vectorising.
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
          }
          n_done += int(newly_done);
        }
      }
      for (int y = 0; y < th; ++y)
        for (int x = 0; x < tw; ++x) {
          const int q = y * TS + x;
          const int64_t pix = (c * p.height + ty0 + y) * p.width + tx0 + x;
          rgb[3 * pix] = ar[q];
          rgb[3 * pix + 1] = ag[q];
          rgb[3 * pix + 2] = ab[q];
          depth_sum[pix] = ad[q];
          alpha[pix] = T(1) - Tr[q];
          n_contrib[pix] = int32_t(last[q]);
        }
    }
  }
}

}  // namespace

template <typename T>
void cpu_raster_forward(const TileParams& p, const T* means2d, const T* conics, const T* colors,
                        const T* opacities, const T* depths, const int64_t* tile_offsets,
                        const int32_t* flat_ids, T* rgb, T* depth_sum, T* alpha, int32_t* n_contrib) {
  auto run = [&](auto ts) {
    raster_forward_tiles<T, decltype(ts)::value>(p, means2d, conics, colors, opacities, depths,
                                                 tile_offsets, flat_ids, rgb, depth_sum, alpha, n_contrib);
  };
  if (p.tile_size == 8) run(std::integral_constant<int, 8>{});
  else if (p.tile_size == 32) run(std::integral_constant<int, 32>{});
  else run(std::integral_constant<int, 16>{});
}

namespace {

template <typename T, int TS>
void raster_backward_tiles(const TileParams& p, const T* means2d, const T* conics, const T* colors,
                           const T* opacities, const T* depths, const int64_t* tile_offsets,
                           const int32_t* flat_ids, const T* alpha, const int32_t* n_contrib,
                           const T* v_rgb, const T* v_depth_sum, const T* v_alpha, T* v_means2d,
                           T* v_conics, T* v_colors, T* v_opacities, T* v_depths) {
  const int TX = p.tiles_x(), TY = p.tiles_y(), ts = TS;
  const int64_t n_tiles = int64_t(TX) * TY, jobs = n_tiles * p.C, CN = int64_t(p.C) * p.N;
  constexpr int G = 10;  // per-Gaussian gradient slots: means2d 2, conic 3, colour 3, opacity, depth
  const int n_threads = omp_get_max_threads();
  std::vector<T> grads(size_t(n_threads) * CN * G, T(0));  // [threads, C*N, G]
#pragma omp parallel
  {
    T* mine = grads.data() + size_t(omp_get_thread_num()) * CN * G;
    const int P = ts * ts;
    // Per pixel: transmittance (walking back to front), final transmittance, colour and
    // depth already accumulated behind, upstream gradients, entries blended in forward.
    std::vector<T> buf(size_t(12) * P);
    T* __restrict Tr = buf.data();
    T* __restrict Tf = Tr + P;
    T* __restrict br = Tf + P;
    T* __restrict bg = br + P;
    T* __restrict bb = bg + P;
    T* __restrict bd = bb + P;
    T* __restrict vr = bd + P;
    T* __restrict vg = vr + P;
    T* __restrict vb = vg + P;
    T* __restrict vd = vb + P;
    T* __restrict va = vd + P;
    T* __restrict last = va + P;  // entries blended in forward, as T (one lane width)
    // Static round-robin, not dynamic: which thread sums which tile must not depend on
    // timing, or the per-thread partial sums (and so the gradients) would differ from run
    // to run and the same seed would not give the same fit.
#pragma omp for schedule(static, 1)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t c = job / n_tiles, t = job % n_tiles;
      const int tx0 = int(t % TX) * ts, ty0 = int(t / TX) * ts;
      const int tw = std::min(ts, p.width - tx0), th = std::min(ts, p.height - ty0);
      const int64_t start = tile_offsets[job];
      int32_t max_last = 0;
      for (int q = 0; q < TS * TS; ++q) {  // padding pixels: nothing blended, no gradient
        Tf[q] = Tr[q] = T(1);
        br[q] = bg[q] = bb[q] = bd[q] = vr[q] = vg[q] = vb[q] = vd[q] = va[q] = T(0);
        last[q] = T(0);
      }
      for (int y = 0; y < th; ++y)
        for (int x = 0; x < tw; ++x) {
          const int q = y * TS + x;
          const int64_t pix = (c * p.height + ty0 + y) * p.width + tx0 + x;
          Tf[q] = Tr[q] = T(1) - alpha[pix];
          br[q] = bg[q] = bb[q] = bd[q] = T(0);
          vr[q] = v_rgb[3 * pix];
          vg[q] = v_rgb[3 * pix + 1];
          vb[q] = v_rgb[3 * pix + 2];
          vd[q] = v_depth_sum[pix];
          va[q] = v_alpha[pix];
          last[q] = T(n_contrib[pix]);
          max_last = std::max(max_last, n_contrib[pix]);
        }
      for (int32_t k = max_last - 1; k >= 0; --k) {
        const int64_t gi = c * p.N + flat_ids[start + k];
        Splat<T> s;
        if (!gather(gi, tx0, ty0, tw, th, means2d, conics, colors, opacities, depths, s)) continue;
        const T kf = T(k);
        // Locals (not struct fields) so the compiler keeps them in registers and vectorises.
        const T mx = s.mx, my = s.my, ca = s.conic.a, cb = s.conic.b, cc = s.conic.c;
        const T op = s.opacity, c0 = s.col[0], c1 = s.col[1], c2 = s.col[2], dep = s.depth;
        const T x0 = T(tx0) + T(0.5);
        T s_mx = T(0), s_my = T(0), s_ca = T(0), s_cb = T(0), s_cc = T(0);
        T s_r = T(0), s_g = T(0), s_b = T(0), s_op = T(0), s_dep = T(0);
        for (int y = s.py0; y < s.py1; ++y) {
          const T dy = my - (T(ty0 + y) + T(0.5));
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
        T* out = mine + gi * G;
        out[0] += s_mx; out[1] += s_my;
        out[2] += s_ca; out[3] += s_cb; out[4] += s_cc;
        out[5] += s_r; out[6] += s_g; out[7] += s_b;
        out[8] += s_op; out[9] += s_dep;
      }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < CN; ++i) {
      T sum[G] = {};
      for (int th = 0; th < n_threads; ++th)
        for (int j = 0; j < G; ++j) sum[j] += grads[(size_t(th) * CN + i) * G + j];
      v_means2d[2 * i] += sum[0]; v_means2d[2 * i + 1] += sum[1];
      v_conics[3 * i] += sum[2]; v_conics[3 * i + 1] += sum[3]; v_conics[3 * i + 2] += sum[4];
      v_colors[3 * i] += sum[5]; v_colors[3 * i + 1] += sum[6]; v_colors[3 * i + 2] += sum[7];
      v_opacities[i] += sum[8]; v_depths[i] += sum[9];
    }
  }
}

}  // namespace

template <typename T>
void cpu_raster_backward(const TileParams& p, const T* means2d, const T* conics, const T* colors,
                         const T* opacities, const T* depths, const int64_t* tile_offsets,
                         const int32_t* flat_ids, const T* alpha, const int32_t* n_contrib,
                         const T* v_rgb, const T* v_depth_sum, const T* v_alpha, T* v_means2d,
                         T* v_conics, T* v_colors, T* v_opacities, T* v_depths) {
  auto run = [&](auto ts) {
    raster_backward_tiles<T, decltype(ts)::value>(
        p, means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, alpha, n_contrib,
        v_rgb, v_depth_sum, v_alpha, v_means2d, v_conics, v_colors, v_opacities, v_depths);
  };
  if (p.tile_size == 8) run(std::integral_constant<int, 8>{});
  else if (p.tile_size == 32) run(std::integral_constant<int, 32>{});
  else run(std::integral_constant<int, 16>{});
}

#define RECON_INSTANTIATE(T)                                                                       \
  template void cpu_count_tiles<T>(const TileParams&, const T*, const int32_t*, int32_t*);          \
  template void cpu_bin_and_sort<T>(const TileParams&, const T*, const int32_t*, const T*,        \
                                    const int64_t*, int64_t, int64_t*, int32_t*);                 \
  template void cpu_raster_forward<T>(const TileParams&, const T*, const T*, const T*, const T*,  \
                                      const T*, const int64_t*, const int32_t*, T*, T*, T*,       \
                                      int32_t*);                                                   \
  template void cpu_raster_backward<T>(const TileParams&, const T*, const T*, const T*, const T*, \
                                       const T*, const int64_t*, const int32_t*, const T*,        \
                                       const int32_t*, const T*, const T*, const T*, T*, T*, T*,  \
                                       T*, T*);
RECON_INSTANTIATE(float)
RECON_INSTANTIATE(double)
#undef RECON_INSTANTIATE

}  // namespace recon
