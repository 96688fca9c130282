// Instruction sets the CPU backend compiles its hot loops for, and the run-time choice among
// them (cpu_raster_isa.cpp). The extension is built for its architecture's baseline (no
// -march=native), so one binary runs on every CPU of that architecture; only functions
// marked RECON_TARGET_AVX2 / RECON_TARGET_AVX512 use wider instructions, and they are
// called only where __builtin_cpu_supports says the CPU has them.
//
// The pattern every hot loop follows: an always-inline body, wrapped once per ISA by
//   #define MY_WRAPPERS(NS, TARGET) namespace NS { TARGET void run(...) { body(...); } }
//   RECON_FOR_EACH_ISA(MY_WRAPPERS)
// and called through cpu::pick(&generic::run, &avx2::run, &avx512::run).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define RECON_X86 1
#define RECON_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define RECON_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")))
#else
#define RECON_X86 0
#endif

// Expands WRAP(NS, TARGET) for each ISA this architecture compiles: generic always (the
// baseline, no target attribute), avx2 and avx512 on x86-64. Elsewhere avx2 and avx512 name
// the generic namespace, so cpu::pick call sites read the same on every architecture.
#define RECON_NO_TARGET
#if RECON_X86
#define RECON_FOR_EACH_ISA(WRAP) \
  WRAP(generic, RECON_NO_TARGET) \
  WRAP(avx2, RECON_TARGET_AVX2)  \
  WRAP(avx512, RECON_TARGET_AVX512)
#else
#define RECON_FOR_EACH_ISA(WRAP) \
  WRAP(generic, RECON_NO_TARGET) \
  namespace avx2 = generic;      \
  namespace avx512 = generic;
#endif

#if defined(__GNUC__)
#define RECON_ALWAYS_INLINE inline __attribute__((always_inline))
// inline every call in the function's body, recursively (where the callee's code is visible)
#define RECON_FLATTEN __attribute__((flatten))
#else
#define RECON_ALWAYS_INLINE inline
#define RECON_FLATTEN
#endif

namespace recon {
namespace cpu {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);
// The variant in use: the widest this CPU supports, or RECON_CPU_ISA=generic|avx2|avx512
// (read once; an unknown or unsupported value throws).
Isa active_isa();
// float lanes per vector of that ISA
int isa_float_lanes(Isa isa);

// The variant compiled for the active ISA among one per ISA (function pointers, or tables
// of them). Call it once per stage, outside the parallel loops.
template <typename F> F pick(F generic, F avx2, F avx512) {
  switch (active_isa()) {
    case Isa::kAvx512:
      return avx512;
    case Isa::kAvx2:
      return avx2;
    default:
      return generic;
  }
}

}  // namespace cpu
}  // namespace recon
