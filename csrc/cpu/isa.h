#pragma once
// Run-time choice of the SIMD instruction set for the CPU kernels. Each kernel translation unit
// is compiled once per ISA (see conv_kernels_<isa>.cpp); the best one the CPU supports is used.
// CONVEXT_CPU_ISA=generic|avx2|avx512|avx512_bf16 in the environment caps the choice (for tests).
// avx512_bf16 is the AVX-512 set compiled with AVX512_BF16 too: the bf16 kernels sum with its
// dot products (vdpbf16ps) and round with vcvtneps2bf16.

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONVEXT_X86_DISPATCH 1
#endif

namespace convext::cpu {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3 };

Isa active_isa();               // decided once, on first use
const char* isa_name(Isa isa);  // "generic", "avx2", "avx512", "avx512_bf16"

}  // namespace convext::cpu
