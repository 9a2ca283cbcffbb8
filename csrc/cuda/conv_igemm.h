#pragma once
// Implicit-GEMM convolutions for dense and grouped forms (conv_igemm.cu), used by the entry points
// of conv_kernels.cu. Each returns false, launching nothing, where its form does not take it (the
// caller then runs its general kernels): a device older than sm_80, offsets past int32, too few
// channels per group for a tile to pay.
//
// The forward convolution is the GEMM y[m][n] = sum over k of x-patch[m][k] * w[n][k], with m the
// output positions (n, oh, ow), n the output channels of a group and k = (kh, kw, c) its taps and
// input channels (channels fastest, so NHWC patches are contiguous in k). Patches are gathered from
// x as the tiles are loaded: no im2col buffer.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/geometry.h"

namespace convext::cuda {

// y = conv(x, w) + bias. tf32: float32 may run on TF32 tensor cores (torch's allow_tf32 for
// convolutions); otherwise float32 is exact (FMA in float32).
template <typename T>
bool igemm_forward(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                   View4<T> y, bool tf32, cudaStream_t stream);

// gx = conv^T(gy, w) + bias at stride 1, as the forward convolution of gy with the flipped
// kernel, per group transposed (its taps and channels are w's read through a view).
template <typename T>
bool igemm_input_grad(const ConvGeometry& g, View4<const T> gy, View4<const T> w, const T* bias,
                      View4<T> gx, bool tf32, cudaStream_t stream);

// The weight gradient's split of the reduction over N x OH x OW: the number of partial sums it
// leaves per weight element, or 0 where it does not take the form.
template <typename T>
int64_t igemm_weight_grad_chunks(const ConvGeometry& g, View4<const T> x, View4<const T> gy);

// Stage one of the weight gradient: partial[chunk][co][ci][kh][kw] (float, double for double),
// `chunks` as igemm_weight_grad_chunks gave; the caller sums the chunks in order.
template <typename T>
void igemm_weight_grad(const ConvGeometry& g, View4<const T> x, View4<const T> gy, int64_t chunks,
                       void* partial, bool tf32, cudaStream_t stream);

}  // namespace convext::cuda
