// The CPU convolution and pooling kernels for AVX2 + FMA CPUs.
#include "cpu/kernels_prelude.h"

#if defined(CONVEXT_X86_DISPATCH)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
#define CONVEXT_ISA_NS avx2
#define CONVEXT_VEC_BYTES 32
#define CONVEXT_MR 6
#include "cpu/kernel_support_impl.h"
#include "cpu/conv_kernels_impl.h"
#include "cpu/pool_kernels_impl.h"
#endif
