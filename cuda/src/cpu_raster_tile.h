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
#include "cpu_lanes.h"

#define RECON_TILE_INLINE RECON_ALWAYS_INLINE

namespace recon {
namespace cpu {

// Gradient slots per tile-list entry: means2d 2, conic 3, colour 3, opacity, depth.
constexpr int kGradSlots = 10;

// Entries ahead in a tile's list whose Gaussian record is prefetched: the list visits
// Gaussians in depth order, i.e. at random addresses, and each visit is short.
constexpr int kPrefetchAhead = 8;

// Entries of a tile's list between two recounts of its still-blending pixels (forward_tile).
constexpr int kLiveRecount = 16;

// One screen-space Gaussian as the tile loops read it, built once per call (pack_splat):
// gathering an entry of a tile's list then touches one 64-byte record (for float) instead of
// six arrays at a random index.
template <typename T> struct alignas(16 * sizeof(T)) PackedSplat {
  T mx, my;
  Sym2<T> conic;
  T opacity, depth;
  T col[3];
  T sigma_max;  // alpha can pass kAlphaThreshold only where sigma <= sigma_max; < 0: nowhere
  T inv_a;      // 1 / conic.a
  // Image pixel box of that ellipse, padded by a pixel (inclusive-exclusive, clamped to +-kBoxLimit):
  // gather() clips it to a tile with integer operations.
  int32_t bx0, bx1, by0, by1;
};

// Box coordinates are clamped to +-2^24 before the integer conversion (finite for any input, exact in
// float and double): a box edge that far out clips to the same tile edge as the unclamped one.
constexpr int32_t kBoxLimit = 1 << 24;

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

// One Gaussian gathered for a tile, with its pixel bounding box clipped to the tile (local
// pixel coordinates, inclusive-exclusive) and the sigma below which it is visible. The box
// is padded by one pixel so that rounding at its edge can never drop a pixel the dense
// reference would blend.
template <typename T> struct Splat {
  T mx, my, opacity, depth, sigma_max, inv_a;
  Sym2<T> conic;
  T col[3];
  int px0, px1, py0, py1;
};

// Per (camera, Gaussian), once before the tiles: its fields, the sigma below which alpha can
// pass kAlphaThreshold (sigma <= ln(opacity / kAlphaThreshold)) and the half extents of that
// ellipse, sqrt(2 sigma_max cov_xx) and sqrt(2 sigma_max cov_yy) with cov = conic^-1.
template <typename T>
RECON_TILE_INLINE void pack_splat(const T* mean, const T* conic, const T* color, T opacity, T depth,
                                  PackedSplat<T>& s) {
  s.mx = mean[0];
  s.my = mean[1];
  s.conic = {conic[0], conic[1], conic[2]};
  s.opacity = opacity;
  s.depth = depth;
  for (int k = 0; k < 3; ++k) s.col[k] = color[k];
  const T ratio = opacity / T(kAlphaThreshold);
  const T det = conic[0] * conic[2] - conic[1] * conic[1];
  if (!(ratio > T(1)) || !(det > T(0)) || !(conic[0] > T(0))) {
    s.sigma_max = T(-1);
    s.inv_a = T(0);
    s.bx0 = s.bx1 = s.by0 = s.by1 = 0;
    return;
  }
  s.sigma_max = std::log(ratio);
  const T rx = std::sqrt(T(2) * s.sigma_max * conic[2] / det);
  const T ry = std::sqrt(T(2) * s.sigma_max * conic[0] / det);
  s.inv_a = T(1) / conic[0];
  // The box of gather(): [floor(m - r - 0.5) - 1, ceil(m + r - 0.5) + 2) in each axis. Within the limit
  // every value is an integer the type holds exactly, so clipping it to a tile in int gives what the
  // same arithmetic in T gives.
  auto edge = [](T v) {  // clamped as comparisons, so a NaN edge becomes -kBoxLimit (an empty box), not UB
    const T lo = v > T(-kBoxLimit) ? v : T(-kBoxLimit);
    return int32_t(lo < T(kBoxLimit) ? lo : T(kBoxLimit));
  };
  s.bx0 = edge(std::floor(s.mx - rx - T(0.5)) - T(1));
  s.bx1 = edge(std::ceil(s.mx + rx - T(0.5)) + T(2));
  s.by0 = edge(std::floor(s.my - ry - T(0.5)) - T(1));
  s.by1 = edge(std::ceil(s.my + ry - T(0.5)) + T(2));
}

template <typename T>
RECON_TILE_INLINE bool gather(const PackedSplat<T>* g, int32_t i, const Tile& tile, Splat<T>& s) {
  const PackedSplat<T>& e = g[i];
  if (!(e.sigma_max >= T(0))) return false;
  auto clip = [](int32_t v, int base, int n) { return std::min(std::max(v - base, 0), n); };
  s.px0 = clip(e.bx0, tile.x0, tile.w);
  s.px1 = clip(e.bx1, tile.x0, tile.w);
  s.py0 = clip(e.by0, tile.y0, tile.h);
  s.py1 = clip(e.by1, tile.y0, tile.h);
  if (!(s.px0 < s.px1 && s.py0 < s.py1)) return false;
  s.mx = e.mx;
  s.my = e.my;
  s.sigma_max = e.sigma_max;
  s.inv_a = e.inv_a;
  s.conic = e.conic;
  s.opacity = e.opacity;
  s.depth = e.depth;
  for (int k = 0; k < 3; ++k) s.col[k] = e.col[k];
  return true;
}

// 1 << y for y < 32, as a table: a per-lane variable shift has no SSE2 instruction, so a
// loop that shifts does not vectorise on the baseline ISA; one that loads does.
struct RowBits {
  int32_t bit[32];
  constexpr RowBits() : bit() {
    for (int y = 0; y < 32; ++y) bit[y] = int32_t(1u << y);
  }
};
inline constexpr RowBits kRowBits{};

// The rows y of the splat's box [py0, py1) on which the ellipse sigma <= sigma_max crosses
// the tile's columns [0, w), as bits 1 << y, for all TS rows at once (one vector
// computation per entry instead of a scalar test and branch per row). Tighter than the box
// for tilted or off-tile Gaussians; padded by a pixel and a relative margin, like the box,
// so it never skips a row the exact test would blend on.
template <typename T, int TS>
RECON_TILE_INLINE uint32_t crossing_rows(const Splat<T>& s, const Tile& tile, T x0_centre) {
  static_assert(TS <= 32, "one bit per row");
  // 0.5 a dx^2 + b dy dx + 0.5 c dy^2 - sigma_max <= 0, a quadratic in dx = mx - px, holds
  // on dx in [(-b dy - root) / a, (-b dy + root) / a] with root = sqrt(disc). Lane x has
  // dx = mx - (x0_centre + x), so the visible lanes are [u - r, u + r] with
  // u = mx - x0_centre + b dy / a and r = root / a; they meet [-1, w] iff
  // r >= m = max(-1 - u, u - w), compared squared (no square root).
  const T a = s.conic.a, b = s.conic.b, c = s.conic.c, inv_a = s.inv_a, mx = s.mx, my = s.my;
  const T two_sigma = T(2) * s.sigma_max * T(1.001), w = T(tile.w);
  const T py0 = T(s.py0), py1 = T(s.py1);
  // Bits per row as int32 lanes, OR-ed after the loop (a loop that both tests floats and
  // builds the mask does not vectorise with GCC).
  alignas(64) int32_t bit[TS];
#pragma omp simd
  for (int y = 0; y < TS; ++y) {
    const T dy = my - (T(tile.y0 + y) + T(0.5));
    const T disc = b * b * dy * dy - a * (c * dy * dy - two_sigma) + T(1e-6);
    const T u = mx - x0_centre + b * dy * inv_a;
    const T lo = T(-1) - u, hi = u - w;
    const T m = lo > hi ? lo : hi;
    const T m2 = m > T(0) ? m * m : T(0);
    const T crosses = (disc >= T(0) ? T(1) : T(0)) * (disc * inv_a * inv_a >= m2 ? T(1) : T(0)) *
                      (T(y) >= py0 ? T(1) : T(0)) * (T(y) < py1 ? T(1) : T(0));
    bit[y] = crosses > T(0) ? kRowBits.bit[y] : 0;
  }
  uint32_t rows = 0;
#pragma omp simd reduction(| : rows)
  for (int y = 0; y < TS; ++y) rows |= uint32_t(bit[y]);
  return rows;
}

// Bits 1 << y of the rows y < TS with v[y] > bound.
template <typename T, int TS> RECON_TILE_INLINE uint32_t rows_above(const T* v, T bound) {
  alignas(64) int32_t bit[TS];
#pragma omp simd
  for (int y = 0; y < TS; ++y) bit[y] = v[y] > bound ? kRowBits.bit[y] : 0;
  uint32_t rows = 0;
#pragma omp simd reduction(| : rows)
  for (int y = 0; y < TS; ++y) rows |= uint32_t(bit[y]);
  return rows;
}

// Front-to-back blending of one tile's list (ids [n], nearest first). Writes rgb [3 per
// pixel], depth_sum, alpha and n_contrib for the tile's pixels, starting at the given
// pointers (the tile's top-left pixel, rows `tile.stride` pixels apart).
template <typename T, int TS>
RECON_TILE_INLINE void forward_tile(const PackedSplat<T>* g, const int32_t* ids, int64_t n, const Tile& tile,
                                    T* rgb, T* depth_sum, T* alpha, int32_t* n_contrib, TileCounts& counts) {
  constexpr int P = TS * TS;
  // Per pixel of the tile (structure of arrays so the loops vectorise): transmittance,
  // accumulated r, g, b, depth, still-blending flag, entries visited (as T so every lane
  // has one width).
  alignas(64) T Tr[P], ar[P], ag[P], ab[P], ad[P], live[P], last[P];
  alignas(64) T lane_blended[TS] = {};  // blended pairs per lane position (summed at the end)
  for (int q = 0; q < P; ++q) {
    Tr[q] = T(1);
    live[q] = (q % TS < tile.w && q / TS < tile.h) ? T(1) : T(0);
    ar[q] = ag[q] = ab[q] = ad[q] = T(0);
    last[q] = T(n);
  }
  // Rows with a still-blending pixel (a row with none is skipped) and the count of such pixels (the tile
  // stops at 0), recounted from `live` every kLiveRecount entries rather than per row: a horizontal sum
  // per row cost more than a tenth of the row's work, and a stale count only blends nothing a few times.
  uint32_t live_rows = tile.h >= 32 ? ~0u : (1u << tile.h) - 1u;
  int n_live = tile.w * tile.h;
  auto recount = [&]() {
    uint32_t rows = 0;
    int count = 0;
    for (uint32_t r = live_rows; r != 0; r &= r - 1) {
      const int y = __builtin_ctz(r);
      const T* __restrict lv = live + y * TS;
      int c = 0;
#pragma omp simd reduction(+ : c)
      for (int x = 0; x < TS; ++x) c += lv[x] > T(0) ? 1 : 0;
      rows |= c > 0 ? 1u << y : 0u;
      count += c;
    }
    live_rows = rows;
    n_live = count;
  };
  int64_t lanes = 0;
  const T x0 = T(tile.x0) + T(0.5);
  for (int64_t k = 0; k < n && n_live > 0; ++k) {
    if (k % kLiveRecount == kLiveRecount - 1) recount();
    if (k + kPrefetchAhead < n) __builtin_prefetch(g + ids[k + kPrefetchAhead]);
    Splat<T> s;
    if (!gather(g, ids[k], tile, s)) continue;
    const T kk = T(k);
    // Locals (not struct fields) so the compiler keeps them in registers and vectorises.
    const T mx = s.mx, my = s.my, ca = s.conic.a, cb = s.conic.b, cc = s.conic.c;
    const T op = s.opacity, c0 = s.col[0], c1 = s.col[1], c2 = s.col[2], dep = s.depth;
    // the rows to blend, in increasing y: one loop trip per row, no per-row branch to predict
    const uint32_t blend_rows = crossing_rows<T, TS>(s, tile, x0) & live_rows;
    // First every row's alpha (0 where it does not pass the threshold), then the blending: the rows'
    // exp chains are independent, so written apart they overlap instead of each row's blend waiting
    // on its own exp. The same operations on the same values as one loop: the same results.
    alignas(64) T alpha_rows[TS][TS];
    for (uint32_t rows = blend_rows; rows != 0; rows &= rows - 1) {
      const int y = __builtin_ctz(rows);
      const T dy = my - (T(tile.y0 + y) + T(0.5));
      const T hcdy2 = T(0.5) * cc * dy * dy, bdy = cb * dy;
      T* __restrict al = alpha_rows[y];
#pragma omp simd
      for (int x = 0; x < TS; ++x) {
        const T dx = mx - (x0 + T(x));
        // = gaussian_sigma(conic, dx, dy) of recon/math.h, with the dy terms hoisted
        const T sigma = T(0.5) * ca * dx * dx + bdy * dx + hcdy2;
        const T raw = op * simd_exp(-sigma);
        const T a = raw < T(kAlphaCap) ? raw : T(kAlphaCap);
        // Masks as 0/1 values: boolean logic here stops GCC from vectorising.
        const T okf = (sigma >= T(0) ? T(1) : T(0)) * (a >= T(kAlphaThreshold) ? T(1) : T(0));
        al[x] = okf > T(0) ? a : T(0);  // a passing the threshold is > 0
      }
    }
    for (uint32_t rows = blend_rows; rows != 0; rows &= rows - 1) {
      const int y = __builtin_ctz(rows);
      lanes += TS;
      const T* __restrict al = alpha_rows[y];
      T* __restrict tr = Tr + y * TS;
      T* __restrict r0 = ar + y * TS;
      T* __restrict r1 = ag + y * TS;
      T* __restrict r2 = ab + y * TS;
      T* __restrict rd = ad + y * TS;
      T* __restrict lv = live + y * TS;
      T* __restrict ls = last + y * TS;
      T* __restrict nb = lane_blended;
#pragma omp simd
      for (int x = 0; x < TS; ++x) {
        const T a = al[x];
        const T okf = (a > T(0) ? T(1) : T(0)) * lv[x];
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
        // kk where it stopped, as arithmetic on the 0/1 flag (exact: both values are finite):
        // written as a select, GCC does not vectorise this loop for SSE2 (the generic build).
        ls[x] = termf * kk + (T(1) - termf) * ls[x];
        nb[x] += blendf;
      }
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
  T blended = T(0);
  for (int x = 0; x < TS; ++x) blended += lane_blended[x];
  counts.lanes += lanes;
  counts.blended += int64_t(blended);
}

// out[j] = the sum of the TS values of acc[j], for each of the G rows (destroys acc), as a
// fixed pairwise tree (lanes x and x + H added, H = TS / 2, TS / 4, ..., 1) so the result
// does not depend on the vector width. H is a template argument so every step compiles to
// whole vector adds, with no loop over the steps.
template <typename T, int TS, int G, int H = TS / 2>
RECON_TILE_INLINE void lane_sums(T (&acc)[G][TS], T* out) {
  if constexpr (H == 0) {
    for (int j = 0; j < G; ++j) out[j] = acc[j][0];
  } else {
    for (int j = 0; j < G; ++j) {
#pragma omp simd
      for (int x = 0; x < H; ++x) acc[j][x] += acc[j][x + H];
    }
    lane_sums<T, TS, G, H / 2>(acc, out);
  }
}

// The per-pixel state of one tile's backward walk (backward_tile fills it, backward_walk reads it).
template <typename T, int TS> struct BackwardState {
  static constexpr int P = TS * TS;
  // Per pixel: transmittance (walking back to front), final transmittance, colour and depth
  // already accumulated behind, upstream gradients, entries blended in forward.
  alignas(64) T Tr[P], Tf[P], br[P], bg[P], bb[P], bd[P], vr[P], vg[P], vb[P], vd[P], va[P], last[P];
  T row_last[TS];  // largest entry count of the row: entries at or past it blend nowhere there
};

// The back-to-front walk of backward_tile over entries [0, n_walk). kColour / kDepth false: the tile's
// colour / depth upstream gradients are all zero, and the terms they multiply are left out. Each left-out
// term is a finite value times +-0, so what remains is the same arithmetic on the same values: the slots
// come out bit-identical to the full walk's (up to the sign of a zero). A pseudo view supervises only
// depth, the binocular shifted render only colour: their backward skips a quarter / a tenth of the work.
template <typename T, int TS, bool kColour, bool kDepth>
RECON_TILE_INLINE void backward_walk(const PackedSplat<T>* g, const int32_t* ids, int64_t n_walk,
                                     const Tile& tile, BackwardState<T, TS>& st, uint32_t grad_rows, T* grads,
                                     int64_t& lanes) {
  constexpr int G = kGradSlots;
  T* Tr = st.Tr;
  T *br = st.br, *bg = st.bg, *bb = st.bb, *bd = st.bd;
  const T *Tf = st.Tf, *vr = st.vr, *vg = st.vg, *vb = st.vb, *vd = st.vd, *va = st.va, *last = st.last;
  const T* row_last = st.row_last;
  const T x0 = T(tile.x0) + T(0.5);
  // Per-lane partial sums of one entry's gradient over its rows, reduced once per entry
  // (lane_sums): a horizontal reduction per row and slot cost more than the row itself.
  alignas(64) T acc[G][TS];
  for (int64_t k = n_walk - 1; k >= 0; --k) {
    if (k >= kPrefetchAhead) __builtin_prefetch(g + ids[k - kPrefetchAhead]);
    Splat<T> s;
    if (!gather(g, ids[k], tile, s)) continue;
    const T kf = T(k);
    // Locals (not struct fields) so the compiler keeps them in registers and vectorises.
    const T mx = s.mx, my = s.my, ca = s.conic.a, cb = s.conic.b, cc = s.conic.c;
    const T op = s.opacity, c0 = s.col[0], c1 = s.col[1], c2 = s.col[2], dep = s.depth;
    // the rows where the entry blended somewhere in forward (k < n_contrib), it crosses, and a gradient
    // arrives
    uint32_t rows = crossing_rows<T, TS>(s, tile, x0) & rows_above<T, TS>(row_last, kf) & grad_rows;
    if (rows == 0) continue;  // its slot keeps the tile's zeros
    for (int j = 0; j < G; ++j)
      for (int x = 0; x < TS; ++x) acc[j][x] = T(0);
    // First every row's Gaussian value and raw alpha (0 where sigma < 0 or alpha below the threshold:
    // those lanes take no part below), then the walk: the rows' exp chains overlap (see forward_tile).
    alignas(64) T gs_rows[TS][TS], raw_rows[TS][TS];
    for (uint32_t r = rows; r != 0; r &= r - 1) {
      const int y = __builtin_ctz(r);
      const T dy = my - (T(tile.y0 + y) + T(0.5));
      const T hcdy2 = T(0.5) * cc * dy * dy, bdy = cb * dy;
      T* __restrict gr = gs_rows[y];
      T* __restrict rr = raw_rows[y];
#pragma omp simd
      for (int x = 0; x < TS; ++x) {
        const T dx = mx - (x0 + T(x));
        // = gaussian_sigma(conic, dx, dy) of recon/math.h, with the dy terms hoisted
        const T sigma = T(0.5) * ca * dx * dx + bdy * dx + hcdy2;
        const T gs = simd_exp(-sigma);
        const T raw = op * gs;
        const T a = raw < T(kAlphaCap) ? raw : T(kAlphaCap);
        const T okf = (sigma >= T(0) ? T(1) : T(0)) * (a >= T(kAlphaThreshold) ? T(1) : T(0));
        gr[x] = gs;
        rr[x] = okf > T(0) ? raw : T(0);  // a raw alpha passing the threshold is > 0
      }
    }
    for (; rows != 0; rows &= rows - 1) {
      const int y = __builtin_ctz(rows);
      const T dy = my - (T(tile.y0 + y) + T(0.5));
      lanes += TS;
      const T bdy = cb * dy, hdy2 = T(0.5) * dy * dy;
      const T* __restrict gr = gs_rows[y];
      const T* __restrict rr = raw_rows[y];
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
      T* __restrict a_mx = acc[0];
      T* __restrict a_my = acc[1];
      T* __restrict a_ca = acc[2];
      T* __restrict a_cb = acc[3];
      T* __restrict a_cc = acc[4];
      T* __restrict a_r = acc[5];
      T* __restrict a_g = acc[6];
      T* __restrict a_b = acc[7];
      T* __restrict a_op = acc[8];
      T* __restrict a_dep = acc[9];
#pragma omp simd
      for (int x = 0; x < TS; ++x) {
        const T dx = mx - (x0 + T(x));
        const T gs = gr[x], raw = rr[x];
        const T a = raw < T(kAlphaCap) ? raw : T(kAlphaCap);
        // Blended in forward: the same test, on the entries before the pixel stopped.
        const T okf = (raw > T(0) ? T(1) : T(0)) * (kf < ls[x] ? T(1) : T(0));
        const T inv1m = T(1) / (T(1) - a);
        const T Ti = tr[x] * inv1m;
        const T w = okf > T(0) ? a * Ti : T(0);
        // The sums in the full walk's order, c0 u0 + c1 u1 + c2 u2 + dep ud (and the q's likewise),
        // with the zero terms of a skipped channel left out.
        T front, behind;
        if constexpr (kColour) {
          a_r[x] += w * u0[x];
          a_g[x] += w * u1[x];
          a_b[x] += w * u2[x];
          front = c0 * u0[x] + c1 * u1[x] + c2 * u2[x];
          behind = q0[x] * u0[x] + q1[x] * u1[x] + q2[x] * u2[x];
          if constexpr (kDepth) {
            front = front + dep * ud[x];
            behind = behind + qd[x] * ud[x];
          }
        } else {
          front = dep * ud[x];
          behind = qd[x] * ud[x];
        }
        if constexpr (kDepth) a_dep[x] += w * ud[x];
        const T v_a = Ti * front - behind * inv1m + ua[x] * tf[x] * inv1m;
        if constexpr (kColour) {
          q0[x] += w * c0;
          q1[x] += w * c1;
          q2[x] += w * c2;
        }
        if constexpr (kDepth) qd[x] += w * dep;
        tr[x] = okf > T(0) ? Ti : tr[x];
        // The alpha cap is flat: no gradient flows through a capped alpha.
        const T livef = raw <= T(kAlphaCap) ? okf : T(0);
        const T v_sigma = livef > T(0) ? -raw * v_a : T(0);
        a_op[x] += livef > T(0) ? gs * v_a : T(0);
        a_ca[x] += T(0.5) * dx * dx * v_sigma;
        a_cb[x] += dx * dy * v_sigma;
        a_cc[x] += hdy2 * v_sigma;
        a_mx[x] += (ca * dx + bdy) * v_sigma;
        a_my[x] += (cb * dx + cc * dy) * v_sigma;
      }
    }
    lane_sums<T, TS, G>(acc, grads + k * G);
  }
}

// Back-to-front walk of one tile's list, recovering each pixel's transmittance from the
// forward's final one. Inputs start at the tile's top-left pixel (rows tile.stride apart).
// Writes the gradient contribution of this tile to every entry k < n of its list into
// grads[k * kGradSlots ...] (zeros for entries that blended nowhere in the tile), so the
// caller can sum them per Gaussian in a fixed order.
template <typename T, int TS>
RECON_TILE_INLINE void backward_tile(const PackedSplat<T>* g, const int32_t* ids, int64_t n, const Tile& tile,
                                     const T* alpha, const int32_t* n_contrib, const T* v_rgb,
                                     const T* v_depth_sum, const T* v_alpha, T* grads, TileCounts& counts) {
  constexpr int P = TS * TS;
  constexpr int G = kGradSlots;
  BackwardState<T, TS> st;
  for (int q = 0; q < P; ++q) {  // padding pixels: nothing blended, no gradient
    st.Tf[q] = st.Tr[q] = T(1);
    st.br[q] = st.bg[q] = st.bb[q] = st.bd[q] = st.vr[q] = st.vg[q] = st.vb[q] = st.vd[q] = st.va[q] = T(0);
    st.last[q] = T(0);
  }
  for (int y = 0; y < TS; ++y) st.row_last[y] = T(0);
  int32_t max_last = 0;
  // Rows with a nonzero upstream gradient somewhere. A row without one adds exactly zero to every slot
  // (each term is a finite value times a zero gradient), and its pixels' state is read only by its own
  // terms, so it is skipped: a sparse loss (the pseudo views' depth prior) leaves many such rows.
  uint32_t grad_rows = 0;
  bool any_colour = false, any_depth = false;
  for (int y = 0; y < tile.h; ++y) {
    bool colour = false, depth = false, other = false;
    for (int x = 0; x < tile.w; ++x) {
      const int q = y * TS + x;
      const int64_t pix = int64_t(y) * tile.stride + x;
      st.Tf[q] = st.Tr[q] = T(1) - alpha[pix];
      st.vr[q] = v_rgb[3 * pix];
      st.vg[q] = v_rgb[3 * pix + 1];
      st.vb[q] = v_rgb[3 * pix + 2];
      st.vd[q] = v_depth_sum[pix];
      st.va[q] = v_alpha[pix];
      colour = colour | (st.vr[q] != T(0)) | (st.vg[q] != T(0)) | (st.vb[q] != T(0));
      depth = depth | (st.vd[q] != T(0));
      other = other | (st.va[q] != T(0));
      st.last[q] = T(n_contrib[pix]);
      st.row_last[y] = std::max(st.row_last[y], st.last[q]);
      max_last = std::max(max_last, n_contrib[pix]);
    }
    grad_rows |= (colour | depth | other) ? 1u << y : 0u;
    any_colour = any_colour | colour;
    any_depth = any_depth | depth;
  }
  const int64_t n_walk = grad_rows == 0 ? 0 : std::min<int64_t>(max_last, n);
  std::memset(grads, 0, sizeof(T) * size_t(n) * G);  // entries that blend nowhere here stay 0
  int64_t lanes = 0;
  if (any_colour && any_depth)
    backward_walk<T, TS, true, true>(g, ids, n_walk, tile, st, grad_rows, grads, lanes);
  else if (any_colour)
    backward_walk<T, TS, true, false>(g, ids, n_walk, tile, st, grad_rows, grads, lanes);
  else  // no colour gradient (and perhaps no depth gradient: its terms are then zeros)
    backward_walk<T, TS, false, true>(g, ids, n_walk, tile, st, grad_rows, grads, lanes);
  counts.lanes += lanes;
}

}  // namespace cpu
}  // namespace recon
