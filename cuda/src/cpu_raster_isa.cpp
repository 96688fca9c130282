// The CPU tile kernels (cpu_raster_tile.h) compiled once per instruction set (see
// cpu_isa.h), the run-time choice among them, and the FMA peak the benchmark compares with.
// RECON_CPU_ISA=generic|avx2|avx512 forces a variant (tests compare them); unset or "auto"
// picks the widest the CPU supports.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_raster_isa.h"

#if RECON_X86
#include <immintrin.h>
#endif

namespace recon {
namespace cpu {
namespace {

// One wrapper per (ISA, scalar type, tile size): the always-inline kernels are inlined
// here, so they vectorise with the wrapper's target.
#define RECON_TILE_WRAPPERS(NS, TARGET)                                                                  \
  namespace NS {                                                                                         \
  template <typename T, int TS>                                                                          \
  TARGET void forward(const PackedSplat<T>* g, const int32_t* ids, int64_t n, const Tile& tile, T* rgb,  \
                      T* depth_sum, T* alpha, int32_t* n_contrib, TileCounts& counts) {                  \
    forward_tile<T, TS>(g, ids, n, tile, rgb, depth_sum, alpha, n_contrib, counts);                      \
  }                                                                                                      \
  template <typename T, int TS>                                                                          \
  TARGET void backward(const PackedSplat<T>* g, const int32_t* ids, int64_t n, const Tile& tile,         \
                       const T* alpha, const int32_t* n_contrib, const T* v_rgb, const T* v_depth_sum,   \
                       const T* v_alpha, T* grads, TileCounts& counts) {                                 \
    backward_tile<T, TS>(g, ids, n, tile, alpha, n_contrib, v_rgb, v_depth_sum, v_alpha, grads, counts); \
  }                                                                                                      \
  }

RECON_FOR_EACH_ISA(RECON_TILE_WRAPPERS)
#undef RECON_TILE_WRAPPERS

// Kernels of one ISA for one scalar type, by tile size.
#define RECON_KERNELS(NS, T, TS) \
  TileKernels<T> { &NS::forward<T, TS>, &NS::backward<T, TS> }
#define RECON_PICK_SIZE(NS, T)                  \
  (tile_size == 8    ? RECON_KERNELS(NS, T, 8)  \
   : tile_size == 32 ? RECON_KERNELS(NS, T, 32) \
                     : RECON_KERNELS(NS, T, 16))

Isa detect() {
#if RECON_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

Isa choose() {
  const Isa best = detect();
  const char* env = std::getenv("RECON_CPU_ISA");
  const std::string want = env ? env : "auto";
  if (want.empty() || want == "auto") return best;
  Isa asked;
  if (want == "generic")
    asked = Isa::kGeneric;
  else if (want == "avx2")
    asked = Isa::kAvx2;
  else if (want == "avx512")
    asked = Isa::kAvx512;
  else
    throw std::invalid_argument("RECON_CPU_ISA=" + want + " is unknown; use auto, generic, avx2 or avx512");
  if (int(asked) > int(best))
    throw std::invalid_argument("RECON_CPU_ISA=" + want + " but this CPU supports at most " + isa_name(best));
  return asked;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "generic";
  }
}

Isa active_isa() {
  static const Isa isa = choose();
  return isa;
}

int isa_float_lanes(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return 16;
    case Isa::kAvx2:
      return 8;
    default:
      return 4;  // SSE2 on x86-64; NEON on arm64
  }
}

template <>
TileKernels<float> tile_kernels<float>(int tile_size) {
  return pick(RECON_PICK_SIZE(generic, float), RECON_PICK_SIZE(avx2, float), RECON_PICK_SIZE(avx512, float));
}

// double is for gradient checks, not speed: the baseline build only.
template <>
TileKernels<double> tile_kernels<double>(int tile_size) {
  return RECON_PICK_SIZE(generic, double);
}

#undef RECON_PICK_SIZE
#undef RECON_KERNELS

// ---------------------------------------------------------------------------------------
// Peak fused multiply-add rate of one thread with the active ISA's vectors: 12 independent
// accumulator chains (enough to cover the FMA latency on current x86 cores), counted as
// lane-FMAs per second.
namespace {

constexpr int kChains = 12;

#if RECON_X86
namespace avx512 {
RECON_TARGET_AVX512 double fma_loop(int64_t iters) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(1.0f + 1e-3f * float(i));
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, c);
  float sink = 0.0f;
  for (int i = 0; i < kChains; ++i) sink += _mm512_reduce_add_ps(acc[i]);
  return double(sink);
}
}  // namespace avx512

namespace avx2 {
RECON_TARGET_AVX2 double fma_loop(int64_t iters) {
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(1.0f + 1e-3f * float(i));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, c);
  alignas(32) float out[8];
  float sink = 0.0f;
  for (int i = 0; i < kChains; ++i) {
    _mm256_store_ps(out, acc[i]);
    for (float v : out) sink += v;
  }
  return double(sink);
}
}  // namespace avx2
#endif

// Baseline: 4-wide multiply + add (SSE2 has no FMA), written as plain loops.
namespace generic {
double fma_loop(int64_t iters) {
  float acc[kChains][4];
  for (int i = 0; i < kChains; ++i)
    for (int l = 0; l < 4; ++l) acc[i][l] = 1.0f + 1e-3f * float(i + l);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i)
      for (int l = 0; l < 4; ++l) acc[i][l] = acc[i][l] * 0.999999f + 1e-7f;
  float sink = 0.0f;
  for (int i = 0; i < kChains; ++i)
    for (int l = 0; l < 4; ++l) sink += acc[i][l];
  return double(sink);
}
}  // namespace generic

}  // namespace

double fma_loop(int64_t iters, double* sink) {
  const double s = pick(&generic::fma_loop, &avx2::fma_loop, &avx512::fma_loop)(iters);
  if (sink) *sink = s;
  return double(iters) * kChains * isa_float_lanes(active_isa());
}

}  // namespace cpu
}  // namespace recon
