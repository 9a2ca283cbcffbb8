#include "cpu/conv_kernels.h"

#include "cpu/isa.h"

namespace convext::cpu {

const ConvKernelSet& conv_kernels() {
  static const ConvKernelSet set = [] {
    switch (active_isa()) {
#if defined(CONVEXT_X86_DISPATCH)
      case Isa::avx512: return avx512::conv_kernel_set();
      case Isa::avx2: return avx2::conv_kernel_set();
#endif
      default: return generic::conv_kernel_set();
    }
  }();
  return set;
}

}  // namespace convext::cpu
