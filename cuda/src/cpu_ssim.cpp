// Fused SSIM forward and analytic backward on the CPU (see cpu_ssim.h). The torch version
// blurs five statistics with two grouped convolutions and differentiates through them with
// autograd (transposed convolutions); here both passes of the separable window run over
// rows that stay in cache, and the backward applies the window's adjoint to three
// coefficient maps the forward already computed.
//
// SSIM of one element, with A = 2 mx my + c1, B = 2 sxy + c2, C = mx^2 + my^2 + c1,
// D = sxx + syy + c2 (sxx = E[x^2] - mx^2, sxy = E[xy] - mx my) and s = A B / (C D):
//   ds/dmx = 2 (my (B - A) - mx s (D - C)) / (C D),  ds/dE[x^2] = -s / D,  ds/dE[xy] = 2 A / (C D)
// (only C D is divided by: it is >= c1 c2 > 0 for any image, A and B may vanish). Then
//   d(sum s)/dx = W^T(ds/dmx) + 2 x W^T(ds/dE[x^2]) + y W^T(ds/dE[xy]),  W = the valid blur.
//
// The hot loops are compiled once per instruction set (cpu_isa.h) and picked at run time.
#include "cpu_ssim.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_isa.h"

// No multiply-add contraction in this file: SSIM subtracts products from blurred products
// (sigma^2 = E[x^2] - mu^2), and fusing some of those products but not others makes SSIM(x, x)
// differ from 1 by ~1e-5 (the variances' rounding next to C2). Without it every element is
// computed with the same roundings as the torch path, and every instruction set gives the
// same bits.
#pragma GCC optimize("fp-contract=off")

namespace recon {
namespace {

// Output rows per forward work item: the horizontal pass of S - 1 rows is repeated at each
// item's start, so larger items waste less; several items per image keep threads balanced.
constexpr int64_t kRowsPerItem = 64;
// Input rows per backward work item (rows are independent there).
constexpr int64_t kBackwardRowsPerItem = 16;
// Map statistics per element: mu_x, mu_y, E[x^2], E[y^2], E[xy].
constexpr int64_t kStats = 5;
// Elements per register block: one 512-bit vector (two AVX2, four SSE). Every element is
// summed in the same order in a block and in the scalar tail (N = 1), so blocking does not
// change results.
constexpr int kBlock = 16;

// Horizontal pass of elements [j, j + N) of one input row into out [5, L].
template <int N>
RECON_ALWAYS_INLINE void horizontal_block(const float* __restrict x, const float* __restrict y,
                                          const float* __restrict g, int64_t S, int64_t C, int64_t L,
                                          int64_t j, float* __restrict out) {
  float hx[N] = {}, hy[N] = {}, hxx[N] = {}, hyy[N] = {}, hxy[N] = {};
  for (int64_t k = 0; k < S; ++k) {
    const float gk = g[k];
    const float* __restrict xr = x + C * k + j;
    const float* __restrict yr = y + C * k + j;
    for (int q = 0; q < N; ++q) {
      const float a = xr[q], b = yr[q];
      hx[q] += gk * a;
      hy[q] += gk * b;
      hxx[q] += gk * (a * a);
      hyy[q] += gk * (b * b);
      hxy[q] += gk * (a * b);
    }
  }
  for (int q = 0; q < N; ++q) {
    out[j + q] = hx[q];
    out[L + j + q] = hy[q];
    out[2 * L + j + q] = hxx[q];
    out[3 * L + j + q] = hyy[q];
    out[4 * L + j + q] = hxy[q];
  }
}

RECON_ALWAYS_INLINE void horizontal(const SsimShape& s, const float* x, const float* y, const float* g,
                                    float* out) {
  const int64_t L = s.L();
  int64_t j = 0;
  for (; j + kBlock <= L; j += kBlock) horizontal_block<kBlock>(x, y, g, s.S, s.C, L, j, out);
  for (; j < L; ++j) horizontal_block<1>(x, y, g, s.S, s.C, L, j, out);
}

// Vertical pass over the S horizontal rows `rows` and the SSIM of map elements [j, j + N):
// adds each element's SSIM to sums[q] and writes its coefficients when coef is not null.
template <int N>
RECON_ALWAYS_INLINE void ssim_block(const float* const* rows, const float* __restrict g, int64_t S, int64_t L,
                                    int64_t j, float c1, float c2, float* __restrict coef,
                                    float* __restrict sums) {
  float m[kStats][N] = {};
  for (int64_t k = 0; k < S; ++k) {
    const float gk = g[k];
    const float* __restrict h = rows[k] + j;
    for (int st = 0; st < kStats; ++st)
      for (int q = 0; q < N; ++q) m[st][q] += gk * h[st * L + q];
  }
  for (int q = 0; q < N; ++q) {
    const float mx = m[0][q], my = m[1][q];
    const float A = 2.0f * mx * my + c1;
    const float Bv = 2.0f * (m[4][q] - mx * my) + c2;
    const float Cv = mx * mx + my * my + c1;
    const float D = (m[2][q] - mx * mx) + (m[3][q] - my * my) + c2;
    const float inv = 1.0f / (Cv * D);
    const float sj = A * Bv * inv;
    sums[q] += sj;
    if (coef != nullptr) {
      coef[j + q] = 2.0f * (my * (Bv - A) - mx * sj * (D - Cv)) * inv;
      coef[L + j + q] = -sj * Cv * inv;
      coef[2 * L + j + q] = 2.0f * A * inv;
    }
  }
}

// Output rows [r0, r1) of one image: each row's SSIM sum in row_sums[r - r0] and, when coef
// is not null, its coefficient rows (coef points at the image's [Ho, 3, L] block).
RECON_ALWAYS_INLINE void forward_rows(const SsimShape& s, const float* x, const float* y, const float* g,
                                      float c1, float c2, int64_t r0, int64_t r1, double* row_sums,
                                      float* coef) {
  const int64_t L = s.L(), S = s.S, row = s.W * s.C, slot = kStats * L;
  // Ring of the last S horizontal rows: input row i lives in slot i % S.
  std::vector<float> ring(static_cast<size_t>(S * slot));
  std::vector<const float*> rows(static_cast<size_t>(S));
  for (int64_t i = r0; i < r0 + S - 1; ++i)
    horizontal(s, x + i * row, y + i * row, g, ring.data() + (i % S) * slot);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t last = r + S - 1;
    horizontal(s, x + last * row, y + last * row, g, ring.data() + (last % S) * slot);
    for (int64_t k = 0; k < S; ++k) rows[k] = ring.data() + ((r + k) % S) * slot;
    float* coef_row = coef == nullptr ? nullptr : coef + r * 3 * L;
    float sums[kBlock] = {}, tail[1] = {0.0f};
    int64_t j = 0;
    for (; j + kBlock <= L; j += kBlock) ssim_block<kBlock>(rows.data(), g, S, L, j, c1, c2, coef_row, sums);
    for (; j < L; ++j) ssim_block<1>(rows.data(), g, S, L, j, c1, c2, coef_row, tail);
    double total = tail[0];
    for (int q = 0; q < kBlock; ++q) total += double(sums[q]);
    row_sums[r - r0] = total;
  }
}

// Vertical adjoint of map elements [j, j + N) (of the 3 L of a coefficient row) for input
// row i: the map rows r = i - k for taps k in [k0, k1] saw it.
template <int N>
RECON_ALWAYS_INLINE void vertical_adjoint_block(const float* __restrict coef, const float* __restrict g,
                                                int64_t i, int64_t k0, int64_t k1, int64_t L, int64_t j,
                                                float* __restrict t) {
  float acc[N] = {};
  for (int64_t k = k0; k <= k1; ++k) {
    const float gk = g[k];
    const float* __restrict c = coef + (i - k) * 3 * L + j;
    for (int q = 0; q < N; ++q) acc[q] += gk * c[q];
  }
  for (int q = 0; q < N; ++q) t[j + q] = acc[q];
}

// Horizontal adjoint of the three vertical adjoints t [3, L] at input elements [p, p + N)
// of the row, then dx there. kChecked: some taps fall outside the map (near the row's ends).
template <int N, bool kChecked>
RECON_ALWAYS_INLINE void dx_block(const float* __restrict t, const float* __restrict g, int64_t S, int64_t C,
                                  int64_t L, int64_t p, const float* __restrict x, const float* __restrict y,
                                  float scale, float* __restrict dx) {
  float um[N] = {}, uxx[N] = {}, uxy[N] = {};
  for (int64_t k = 0; k < S; ++k) {
    const float gk = g[k];
    const int64_t base = p - C * k;  // map element that saw input p through tap k
    for (int q = 0; q < N; ++q) {
      if (kChecked && (base + q < 0 || base + q >= L)) continue;
      um[q] += gk * t[base + q];
      uxx[q] += gk * t[L + base + q];
      uxy[q] += gk * t[2 * L + base + q];
    }
  }
  for (int q = 0; q < N; ++q) dx[p + q] = scale * (um[q] + 2.0f * x[p + q] * uxx[q] + y[p + q] * uxy[q]);
}

// Input rows [i0, i1) of one image: dx rows from the image's coefficient maps [Ho, 3, L].
RECON_ALWAYS_INLINE void backward_rows(const SsimShape& s, const float* x, const float* y, const float* g,
                                       const float* coef, float scale, int64_t i0, int64_t i1, float* dx) {
  const int64_t L = s.L(), C = s.C, S = s.S, Ho = s.Ho(), row = s.W * s.C;
  // Inputs [C (S - 1), L) see every tap inside the map.
  const int64_t lo = C * (S - 1), hi = L;
  std::vector<float> t(static_cast<size_t>(3 * L));
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t k0 = std::max<int64_t>(0, i - Ho + 1), k1 = std::min<int64_t>(S - 1, i);
    int64_t j = 0;
    for (; j + kBlock <= 3 * L; j += kBlock)
      vertical_adjoint_block<kBlock>(coef, g, i, k0, k1, L, j, t.data());
    for (; j < 3 * L; ++j) vertical_adjoint_block<1>(coef, g, i, k0, k1, L, j, t.data());
    const float* xr = x + i * row;
    const float* yr = y + i * row;
    float* out = dx + i * row;
    int64_t p = 0;
    for (; p < std::min(lo, row); ++p) dx_block<1, true>(t.data(), g, S, C, L, p, xr, yr, scale, out);
    for (; p + kBlock <= hi; p += kBlock)
      dx_block<kBlock, false>(t.data(), g, S, C, L, p, xr, yr, scale, out);
    for (; p < row; ++p) dx_block<1, true>(t.data(), g, S, C, L, p, xr, yr, scale, out);
  }
}

using ForwardFn = void (*)(const SsimShape&, const float*, const float*, const float*, float, float, int64_t,
                           int64_t, double*, float*);
using BackwardFn = void (*)(const SsimShape&, const float*, const float*, const float*, const float*, float,
                            int64_t, int64_t, float*);

#define RECON_SSIM_WRAPPERS(NS, TARGET)                                                             \
  namespace NS {                                                                                    \
  TARGET void forward(const SsimShape& s, const float* x, const float* y, const float* g, float c1, \
                      float c2, int64_t r0, int64_t r1, double* row_sums, float* coef) {            \
    forward_rows(s, x, y, g, c1, c2, r0, r1, row_sums, coef);                                       \
  }                                                                                                 \
  TARGET void backward(const SsimShape& s, const float* x, const float* y, const float* g,          \
                       const float* coef, float scale, int64_t i0, int64_t i1, float* dx) {         \
    backward_rows(s, x, y, g, coef, scale, i0, i1, dx);                                             \
  }                                                                                                 \
  }

RECON_FOR_EACH_ISA(RECON_SSIM_WRAPPERS)
#undef RECON_SSIM_WRAPPERS

ForwardFn forward_kernel() { return cpu::pick(&generic::forward, &avx2::forward, &avx512::forward); }

BackwardFn backward_kernel() { return cpu::pick(&generic::backward, &avx2::backward, &avx512::backward); }

}  // namespace

double cpu_ssim_forward(const SsimShape& s, const float* x, const float* y, const float* g, float c1,
                        float c2, float* coef) {
  const int64_t Ho = s.Ho(), L = s.L(), image = s.H * s.W * s.C;
  const int64_t per_image = (Ho + kRowsPerItem - 1) / kRowsPerItem, items = s.B * per_image;
  std::vector<double> row_sums(size_t(s.B * Ho));
  const ForwardFn kernel = forward_kernel();
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / per_image, r0 = (item % per_image) * kRowsPerItem;
    const int64_t r1 = std::min(Ho, r0 + kRowsPerItem);
    kernel(s, x + b * image, y + b * image, g, c1, c2, r0, r1, row_sums.data() + b * Ho + r0,
           coef == nullptr ? nullptr : coef + b * Ho * 3 * L);
  }
  double total = 0.0;  // in row order: the same sum for any thread count
  for (double v : row_sums) total += v;
  return total;
}

void cpu_ssim_backward(const SsimShape& s, const float* x, const float* y, const float* g, const float* coef,
                       float scale, float* dx) {
  const int64_t Ho = s.Ho(), L = s.L(), image = s.H * s.W * s.C;
  const int64_t per_image = (s.H + kBackwardRowsPerItem - 1) / kBackwardRowsPerItem;
  const int64_t items = s.B * per_image;
  const BackwardFn kernel = backward_kernel();
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / per_image, i0 = (item % per_image) * kBackwardRowsPerItem;
    const int64_t i1 = std::min(s.H, i0 + kBackwardRowsPerItem);
    kernel(s, x + b * image, y + b * image, g, coef + b * Ho * 3 * L, scale, i0, i1, dx + b * image);
  }
}

}  // namespace recon
