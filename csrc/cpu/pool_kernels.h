#pragma once
// The CPU pooling kernels' interface (forward passes, the average's backward and the channels_last
// max pool's; compiled per ISA like the conv kernels).
// Windows come precomputed per output row and column (PoolWindows), so one max kernel serves
// max_pool2d and adaptive_max_pool2d and one average kernel avg_pool2d and adaptive_avg_pool2d.
// `channels_last`: x and the outputs are dense channels_last (channels innermost); otherwise any
// strides, walked one (n, c) plane at a time.
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/geometry.h"

namespace convext::cpu {

template <typename T>
struct PoolKernels {
  // Max over each window, and the flat H*W index of the first maximum (of the last NaN, if any).
  void (*max_pool)(const PoolGeometry&, const PoolWindows&, View4<const T> x, View4<T> y,
                   View4<int64_t> indices, bool channels_last);
  // Sum over each window, divided as PoolDivisor says.
  void (*avg_pool)(const PoolGeometry&, const PoolWindows&, View4<const T> x, View4<T> y,
                   PoolDivisor divisor, bool channels_last);
  // The mean of each whole plane: global average pooling.
  void (*global_avg_pool)(const PoolGeometry&, View4<const T> x, View4<T> y, bool channels_last);
  // avg_pool's input grad (gx written whole).
  void (*avg_pool_backward)(const PoolGeometry&, const PoolWindows&, View4<const T> gy, View4<T> gx,
                            PoolDivisor divisor, bool channels_last);
  // max_pool's input grad from its indices, on dense channels_last gy, indices and gx (written
  // whole); g holds the pooling's kernel, stride, padding and dilation.
  void (*max_pool_backward_channels_last)(const PoolGeometry&, View4<const T> gy,
                                          View4<const int64_t> indices, View4<T> gx);
  // dst[0..n) = acc[0..n) converted to T, as static_cast rounds: a plane accumulated in a buffer,
  // part of an output of `output_bytes` (large ones go around the caches).
  void (*store_accumulated)(T* dst, const at::opmath_type<T>* acc, int64_t n, int64_t output_bytes);
};

struct PoolKernelSet {
  PoolKernels<float> f32;
  PoolKernels<double> f64;
  PoolKernels<c10::Half> f16;
  PoolKernels<c10::BFloat16> bf16;
  PoolKernels<int8_t> i8;
  PoolKernels<uint8_t> u8;
  PoolKernels<int16_t> i16;
  PoolKernels<int32_t> i32;
  PoolKernels<int64_t> i64;
};

// The kernels compiled for the ISA that active_isa() picked.
const PoolKernelSet& pool_kernels();

template <typename T> const PoolKernels<T>& pool_kernels_for();
#define CONVEXT_POOL_KERNELS_FOR(T, member) \
  template <> inline const PoolKernels<T>& pool_kernels_for<T>() { return pool_kernels().member; }
CONVEXT_POOL_KERNELS_FOR(float, f32)
CONVEXT_POOL_KERNELS_FOR(double, f64)
CONVEXT_POOL_KERNELS_FOR(c10::Half, f16)
CONVEXT_POOL_KERNELS_FOR(c10::BFloat16, bf16)
CONVEXT_POOL_KERNELS_FOR(int8_t, i8)
CONVEXT_POOL_KERNELS_FOR(uint8_t, u8)
CONVEXT_POOL_KERNELS_FOR(int16_t, i16)
CONVEXT_POOL_KERNELS_FOR(int32_t, i32)
CONVEXT_POOL_KERNELS_FOR(int64_t, i64)
#undef CONVEXT_POOL_KERNELS_FOR

// One definition per ISA translation unit.
namespace generic { PoolKernelSet pool_kernel_set(); }
namespace avx2 { PoolKernelSet pool_kernel_set(); }
namespace avx512 { PoolKernelSet pool_kernel_set(); }
namespace avx512_bf16 { PoolKernelSet pool_kernel_set(); }

}  // namespace convext::cpu
