#pragma once
// The CPU convolution kernels' interface. Three primitives cover conv2d and conv_transpose2d,
// forward and backward, all in the terms of a forward convolution (ConvGeometry):
//   forward:     y  = conv(x, w) + bias
//   input_grad:  gx = conv^T(gy, w) + bias     (also conv_transpose2d's forward)
//   weight_grad: gw = sum over n, positions of gy * x-patch
// Each overwrites its output, runs in parallel (at::parallel_for), reads and writes any strides,
// and accumulates half types in float.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/geometry.h"

namespace convext::cpu {

template <typename T>
struct ConvKernels {
  void (*forward)(const ConvGeometry&, View4<const T> x, View4<const T> w, const T* bias,
                  View4<T> y);
  void (*input_grad)(const ConvGeometry&, View4<const T> gy, View4<const T> w, const T* bias,
                     View4<T> gx);
  void (*weight_grad)(const ConvGeometry&, View4<const T> x, View4<const T> gy, View4<T> gw);
};

struct ConvKernelSet {
  ConvKernels<float> f32;
  ConvKernels<double> f64;
  ConvKernels<c10::Half> f16;
  ConvKernels<c10::BFloat16> bf16;
};

// The kernels compiled for the ISA that active_isa() picked.
const ConvKernelSet& conv_kernels();

template <typename T> const ConvKernels<T>& conv_kernels_for();
template <> inline const ConvKernels<float>& conv_kernels_for<float>() { return conv_kernels().f32; }
template <> inline const ConvKernels<double>& conv_kernels_for<double>() { return conv_kernels().f64; }
template <> inline const ConvKernels<c10::Half>& conv_kernels_for<c10::Half>() { return conv_kernels().f16; }
template <> inline const ConvKernels<c10::BFloat16>& conv_kernels_for<c10::BFloat16>() { return conv_kernels().bf16; }

// One definition per ISA translation unit.
namespace generic { ConvKernelSet conv_kernel_set(); }
namespace avx2 { ConvKernelSet conv_kernel_set(); }
namespace avx512 { ConvKernelSet conv_kernel_set(); }
namespace avx512_bf16 { ConvKernelSet conv_kernel_set(); }

}  // namespace convext::cpu
