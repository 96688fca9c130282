// SIMD lanes for the CPU projection: kLanes floats, one per Gaussian, run through the shared
// math of recon/math.h (its projection helpers are written with the lane_* primitives and
// lane_select, overloaded here). A GCC vector extension type, lowered to the vector width
// of the calling function's target (one zmm on AVX-512, two ymm on AVX2, four xmm on SSE2
// or NEON), so one type serves every ISA variant of cpu_project.cpp.
//
// Every operation is elementwise, so a lane computes what the scalar code computes for its
// Gaussian, except exp (simd_exp below, ~1e-7 relative, where the scalar double path keeps
// std::exp) and where the compiler fuses a multiply and an add (the AVX2 / AVX-512 variants,
// as everywhere in this backend): variants agree to float rounding, each is deterministic.
// log stays the scalar libm call per lane (one per Gaussian and camera). Private to the CPU
// backend.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu_isa.h"

namespace recon {
namespace cpu {

constexpr int kLanes = 16;

// exp(x) for vectorised loops (the blending loops, the projection's lanes). The float version is a
// branch-free range reduction plus a degree-7 polynomial (relative error ~1e-7) so that the pixel loops
// vectorise on every ISA (rounding by the 1.5 * 2^23 trick needs no SSE4.1 round instruction); double keeps
// std::exp so gradient checks in double see a smooth function.
RECON_ALWAYS_INLINE float simd_exp(float x) {
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
RECON_ALWAYS_INLINE double simd_exp(double x) { return std::exp(x); }

using LaneFloats = float __attribute__((vector_size(4 * kLanes)));
using LaneInts = int32_t __attribute__((vector_size(4 * kLanes)));

// A comparison's result: all bits set in the lanes where it holds.
struct LaneMask {
  LaneInts m;
};

// 64-byte aligned: keep lanes on the stack (the heap containers here do not align them).
struct Lanes {
  LaneFloats v;
  Lanes() = default;
  RECON_ALWAYS_INLINE Lanes(LaneFloats x) : v(x) {}
  // A constant in every lane (math.h writes constants as T(c)).
  template <typename S, std::enable_if_t<std::is_arithmetic_v<S>, int> = 0> RECON_ALWAYS_INLINE Lanes(S s) {
    for (int l = 0; l < kLanes; ++l) v[l] = float(s);
  }
};

#define RECON_LANE_BINARY(OP)                                                                         \
  RECON_ALWAYS_INLINE Lanes operator OP(const Lanes& a, const Lanes& b) { return Lanes(a.v OP b.v); } \
  RECON_ALWAYS_INLINE Lanes& operator OP## = (Lanes & a, const Lanes& b) {                            \
    a.v = a.v OP b.v;                                                                                 \
    return a;                                                                                         \
  }
RECON_LANE_BINARY(+)
RECON_LANE_BINARY(-)
RECON_LANE_BINARY(*)
RECON_LANE_BINARY(/)
#undef RECON_LANE_BINARY
RECON_ALWAYS_INLINE Lanes operator-(const Lanes& a) { return Lanes(-a.v); }

#define RECON_LANE_COMPARE(OP) \
  RECON_ALWAYS_INLINE LaneMask operator OP(const Lanes& a, const Lanes& b) { return LaneMask{a.v OP b.v}; }
RECON_LANE_COMPARE(<)
RECON_LANE_COMPARE(<=)
RECON_LANE_COMPARE(>)
RECON_LANE_COMPARE(>=)
RECON_LANE_COMPARE(==)
RECON_LANE_COMPARE(!=)
#undef RECON_LANE_COMPARE
RECON_ALWAYS_INLINE LaneMask operator&(const LaneMask& a, const LaneMask& b) { return LaneMask{a.m & b.m}; }
RECON_ALWAYS_INLINE LaneMask operator|(const LaneMask& a, const LaneMask& b) { return LaneMask{a.m | b.m}; }
RECON_ALWAYS_INLINE LaneMask& operator&=(LaneMask& a, const LaneMask& b) {
  a.m &= b.m;
  return a;
}

RECON_ALWAYS_INLINE Lanes lane_select(const LaneMask& c, const Lanes& a, const Lanes& b) {
  return Lanes(c.m ? a.v : b.v);
}
RECON_ALWAYS_INLINE bool lane_any(const LaneMask& c) {
  int32_t any = 0;
  for (int l = 0; l < kLanes; ++l) any |= c.m[l];
  return any != 0;
}
RECON_ALWAYS_INLINE bool lane_any(bool c) { return c; }
RECON_ALWAYS_INLINE bool lane_at(const LaneMask& c, int l) { return c.m[l] != 0; }
RECON_ALWAYS_INLINE bool lane_at(bool c, int) { return c; }

// fmin / fmax: the other operand where one is NaN.
RECON_ALWAYS_INLINE Lanes lane_min(const Lanes& a, const Lanes& b) {
  return Lanes(((b.v < a.v) | (a.v != a.v)) ? b.v : a.v);
}
RECON_ALWAYS_INLINE Lanes lane_max(const Lanes& a, const Lanes& b) {
  return Lanes(((b.v > a.v) | (a.v != a.v)) ? b.v : a.v);
}
// sqrt and ceil are one instruction per vector where the target has it (needs
// -fno-math-errno); log calls libm per lane.
RECON_ALWAYS_INLINE Lanes lane_sqrt(const Lanes& a) {
  Lanes r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = __builtin_sqrtf(a.v[l]);
  return r;
}
RECON_ALWAYS_INLINE Lanes lane_ceil(const Lanes& a) {
  Lanes r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = __builtin_ceilf(a.v[l]);
  return r;
}
RECON_ALWAYS_INLINE Lanes lane_exp(const Lanes& a) {
  Lanes r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = simd_exp(a.v[l]);
  return r;
}
RECON_ALWAYS_INLINE Lanes lane_log(const Lanes& a) {
  Lanes r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = std::log(a.v[l]);
  return r;
}

// How the projection batches Gaussians of scalar type T: V holds W of them. float uses the
// lanes above; double (gradient checks) one at a time.
template <typename T> struct Batch;

template <> struct Batch<float> {
  using V = Lanes;
  static constexpr int W = kLanes;
  // p[l * stride] in lane l < count; lanes past count repeat the last one (so they compute
  // finite values; their results are never stored).
  static RECON_ALWAYS_INLINE V load(const float* p, int64_t stride, int count) {
    V r;
    if (count ==
        kLanes) {  // full batches (all but a chunk's last): plain strided loads, no per-lane index select
      for (int l = 0; l < kLanes; ++l) r.v[l] = p[l * stride];
      return r;
    }
    for (int l = 0; l < kLanes; ++l) r.v[l] = p[(l < count ? l : count - 1) * stride];
    return r;
  }
  static RECON_ALWAYS_INLINE LaneMask load_positive(const int32_t* p, int64_t stride, int count) {
    LaneMask r;
    for (int l = 0; l < kLanes; ++l) r.m[l] = (l < count && p[l * stride] > 0) ? -1 : 0;
    return r;
  }
  static RECON_ALWAYS_INLINE float at(const V& x, int l) { return x.v[l]; }
  // The lanes' sum, in lane order.
  static RECON_ALWAYS_INLINE float sum(const V& x) {
    float s = 0.0f;
    for (int l = 0; l < kLanes; ++l) s += x.v[l];
    return s;
  }
};

template <> struct Batch<double> {
  using V = double;
  static constexpr int W = 1;
  static RECON_ALWAYS_INLINE V load(const double* p, int64_t, int) { return *p; }
  static RECON_ALWAYS_INLINE bool load_positive(const int32_t* p, int64_t, int) { return *p > 0; }
  static RECON_ALWAYS_INLINE double at(const V& x, int) { return x; }
  static RECON_ALWAYS_INLINE double sum(const V& x) { return x; }
};

}  // namespace cpu
}  // namespace recon
