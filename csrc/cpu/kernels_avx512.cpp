// The CPU convolution and pooling kernels for AVX-512 CPUs.
#include "cpu/kernels_prelude.h"

#if defined(CONVEXT_X86_DISPATCH)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,bmi,bmi2")
#define CONVEXT_ISA_NS avx512
#define CONVEXT_VEC_BYTES 64
#define CONVEXT_MR 8
#include "cpu/kernel_support_impl.h"
#include "cpu/conv_kernels_impl.h"
#include "cpu/pool_kernels_impl.h"
#endif
