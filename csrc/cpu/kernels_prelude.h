#pragma once
// Headers the per-ISA kernel files need, parsed before their `#pragma GCC target` so that the
// inline code in them is compiled for the baseline ISA.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#include "cpu/conv_kernels.h"
#include "cpu/isa.h"
#include "cpu/pool_kernels.h"

#if defined(CONVEXT_X86_DISPATCH)
#include <immintrin.h>  // the bfloat16 dot products (conv_kernels_impl.h)
#endif
