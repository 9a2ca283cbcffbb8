// The CPU convolution and pooling kernels for AVX-512 CPUs with AVX512_BF16 (Zen 4, Cooper Lake,
// Sapphire Rapids and later): the AVX-512 set compiled with vdpbf16ps and vcvtneps2bf16 too.
#include "cpu/kernels_prelude.h"

#if defined(CONVEXT_X86_DISPATCH)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,bmi,bmi2,avx512bf16")
#define CONVEXT_ISA_NS avx512_bf16
#define CONVEXT_BF16 1  // (GCC defines no __AVX512BF16__ for C++ under the pragma)
#define CONVEXT_VEC_BYTES 64
#define CONVEXT_MR 8
#include "cpu/kernel_support_impl.h"
#include "cpu/conv_kernels_impl.h"
#include "cpu/pool_kernels_impl.h"
#endif
