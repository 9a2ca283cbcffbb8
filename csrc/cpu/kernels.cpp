#include "cpu/conv_kernels.h"
#include "cpu/isa.h"
#include "cpu/pool_kernels.h"

namespace convext::cpu {

// The set built for the ISA that active_isa() picked.
#if defined(CONVEXT_X86_DISPATCH)
#define CONVEXT_KERNEL_SET(factory)                                                    \
  (active_isa() == Isa::avx512_bf16 ? avx512_bf16::factory()                            \
   : active_isa() == Isa::avx512    ? avx512::factory()                                 \
   : active_isa() == Isa::avx2      ? avx2::factory()                                   \
                                    : generic::factory())
#else
#define CONVEXT_KERNEL_SET(factory) generic::factory()
#endif

const ConvKernelSet& conv_kernels() {
  static const ConvKernelSet set = CONVEXT_KERNEL_SET(conv_kernel_set);
  return set;
}

const PoolKernelSet& pool_kernels() {
  static const PoolKernelSet set = CONVEXT_KERNEL_SET(pool_kernel_set);
  return set;
}

}  // namespace convext::cpu
