#pragma once
// Run-time choice of the SIMD instruction set for the CPU kernels. Each kernel translation unit
// is compiled once per ISA (see conv_kernels_<isa>.cpp); the best one the CPU supports is used.
// CONVEXT_CPU_ISA=generic|avx2|avx512 in the environment caps the choice (for tests).

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONVEXT_X86_DISPATCH 1
#endif

namespace convext::cpu {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

Isa active_isa();               // decided once, on first use
const char* isa_name(Isa isa);  // "generic", "avx2", "avx512"

}  // namespace convext::cpu
