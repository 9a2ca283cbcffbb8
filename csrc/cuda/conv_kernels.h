#pragma once
// The CUDA convolution kernels' interface: a geometry, strided views and a stream in, the
// launch's cudaError_t (cudaGetLastError) out. Torch-free, so conv_kernels.cu compiles fast and
// alone (nvcc -Xptxas -v reports its registers).
//
// The primitives are those of the CPU kernels (cpu/conv_kernels.h), all in the terms of a forward
// convolution (ConvGeometry):
//   conv_forward:     y  = conv(x, w) + bias
//   conv_input_grad:  gx = conv^T(gy, w) + bias     (also conv_transpose2d's forward)
//   conv_weight_grad: gw = sum over n and output positions of gy * x-patch
//   conv_bias_grad:   gb = sum of gy over n, h and w
// Views are element strides (N, C, H, W), so NCHW, NHWC and any other strides work; bias is
// contiguous or null. T is the device storage type: float, double, __half or __nv_bfloat16 (the
// host passes c10::Half / c10::BFloat16 storage as the latter two); half types accumulate in
// float, double in double. tf32: float may be multiplied in TF32 on tensor cores (torch's
// allow_tf32 for convolutions, as cuDNN); otherwise float results are exact float sums.
//
// Every kernel is deterministic: each result is summed by one thread, or by partial sums added
// in a fixed order (per-block sums into a workspace, then one thread per result adds them up in
// order); the split depends on the sizes only, never on the device's SM count. No atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/geometry.h"

namespace convext::cuda {

template <typename T>
cudaError_t conv_forward(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                         View4<T> y, bool tf32, cudaStream_t stream);

template <typename T>
cudaError_t conv_input_grad(const ConvGeometry& g, View4<const T> gy, View4<const T> w,
                            const T* bias, View4<T> gx, bool tf32, cudaStream_t stream);

// Bytes of workspace conv_weight_grad needs for these arguments (its partial sums).
template <typename T>
size_t conv_weight_grad_workspace(const ConvGeometry& g, View4<const T> x, View4<const T> gy);

template <typename T>
cudaError_t conv_weight_grad(const ConvGeometry& g, View4<const T> x, View4<const T> gy,
                             View4<T> gw, void* workspace, bool tf32, cudaStream_t stream);

// gy is (N, C, H, W); gb has C contiguous elements.
template <typename T>
size_t conv_bias_grad_workspace(View4<const T> gy, int64_t N, int64_t C, int64_t H, int64_t W);

template <typename T>
cudaError_t conv_bias_grad(View4<const T> gy, int64_t N, int64_t C, int64_t H, int64_t W, T* gb,
                           void* workspace, cudaStream_t stream);

}  // namespace convext::cuda
