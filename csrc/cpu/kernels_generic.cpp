// The CPU convolution and pooling kernels for any CPU (baseline ISA of the build).
#include "cpu/kernels_prelude.h"

#define CONVEXT_ISA_NS generic
#define CONVEXT_VEC_BYTES 16
#define CONVEXT_MR 4
#include "cpu/kernel_support_impl.h"
#include "cpu/conv_kernels_impl.h"
#include "cpu/pool_kernels_impl.h"
