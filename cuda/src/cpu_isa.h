// Instruction sets the CPU backend compiles its hot loops for, and the run-time choice among
// them (cpu_raster_isa.cpp). The extension is built for its architecture's baseline (no
// -march=native), so one binary runs on every CPU of that architecture; only functions
// marked RECON_TARGET_AVX2 / RECON_TARGET_AVX512 use wider instructions, and they are
// called only where __builtin_cpu_supports says the CPU has them.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define RECON_X86 1
#define RECON_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define RECON_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")))
#else
#define RECON_X86 0
#endif

#if defined(__GNUC__)
#define RECON_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define RECON_ALWAYS_INLINE inline
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

}  // namespace cpu
}  // namespace recon
