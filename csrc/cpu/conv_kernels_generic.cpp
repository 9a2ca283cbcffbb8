// The CPU convolution kernels for any CPU (baseline ISA of the build).
#include "cpu/conv_kernels_prelude.h"

#define CONVEXT_ISA_NS generic
#define CONVEXT_VEC_BYTES 16
#define CONVEXT_MR 4
#include "cpu/conv_kernels_impl.h"
