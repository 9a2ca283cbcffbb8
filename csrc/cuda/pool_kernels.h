#pragma once
// The CUDA pooling kernels' interface: plain sizes, strided views and a stream in, the launch's
// cudaError_t out. Torch-free, so pool_kernels.cu compiles fast and alone (nvcc -Xptxas -v).
//
// T is the device storage type: float, double, __half, __nv_bfloat16 or an integer type (the
// host passes c10::Half / c10::BFloat16 storage as __half / __nv_bfloat16). Half types
// accumulate in float (acc_t), as at::opmath_type does on the CPU.
//
// Layouts: with channels_last, every tensor of a launch is dense channels_last; otherwise the
// input-side tensors (x, grad_output, values, indices) may have any strides and the result is
// dense NCHW. Indices are int64 offsets into each H x W plane.
//
// Every kernel is deterministic: each result element is computed by one thread (or, for the
// indexed scatter, by one warp in plane order), with no floating-point atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/geometry.h"

namespace convext::cuda {

template <typename T> struct AccType { using type = T; };
template <> struct AccType<__half> { using type = float; };
template <> struct AccType<__nv_bfloat16> { using type = float; };
template <typename T> using acc_t = typename AccType<T>::type;

// torch's pooling windows along one axis, outputs 0..out-1 over an input of `in`: max windows
// (kernel k, stride s, padding p, dilation d), average windows (count_include_pad decides what
// the divisor counts) or adaptive bins.
struct PoolAxisParams {
  enum Kind : int32_t { kMax, kAvg, kAdaptive };
  Kind kind;
  int64_t in, out;
  int64_t k, s, p, d;
  bool count_include_pad;

  static PoolAxisParams max_pool(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p,
                                 int64_t d) {
    return {kMax, in, out, k, s, p, d, false};
  }
  static PoolAxisParams avg_pool(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p,
                                 bool count_include_pad) {
    return {kAvg, in, out, k, s, p, 1, count_include_pad};
  }
  static PoolAxisParams adaptive(int64_t in, int64_t out) {
    return {kAdaptive, in, out, 0, 1, 0, 1, false};
  }
};

struct PoolParams {
  PoolAxisParams h, w;
  int64_t divisor;  // an average's divisor_override, 0 for the windows' own counts
};

// Max over each window, and the flat H*W index of the first maximum (of the last NaN, if any).
template <typename T>
cudaError_t max_pool2d(const PoolGeometry& g, const PoolParams& params, View4<const T> x,
                       View4<T> y, View4<int64_t> indices, bool channels_last, cudaStream_t stream);

// Sum over each window divided by the divisor or the window's count (a mean per plane for global
// windows).
template <typename T>
cudaError_t avg_pool2d(const PoolGeometry& g, const PoolParams& params, View4<const T> x,
                       View4<T> y, bool channels_last, cudaStream_t stream);

// grad_input of an average: each input element sums grad_output / divisor over the windows that
// hold it, in output order.
template <typename T>
cudaError_t avg_pool2d_backward(const PoolGeometry& g, const PoolParams& params,
                                View4<const T> grad_output, View4<T> grad_input,
                                bool channels_last, cudaStream_t stream);

// grad_input of max_pool2d: each input element sums, in output order, the grads of the windows
// spanning it whose index is its own. The indices must be max_pool2d's for these windows.
template <typename T>
cudaError_t max_pool2d_backward(const PoolGeometry& g, const PoolParams& params,
                                View4<const T> grad_output, View4<const int64_t> indices,
                                View4<T> grad_input, bool channels_last, cudaStream_t stream);

// The small planes (OH x OW) scattered to their indices in zeroed large planes (H x W, `out`,
// dense): added (add) or assigned, the last one in plane order winning, with the same results as
// a sequential loop over each plane. Adding half types needs `scratch`, N*C*H*W floats, else
// null. The largest flat (plane, OH*OW) position of an index outside [0, H*W) is atomicMax'ed
// into *error (set to -1 beforehand); such indices are skipped.
template <typename T>
cudaError_t pool_scatter(const PoolGeometry& g, View4<const T> values, View4<const int64_t> indices,
                         View4<T> out, acc_t<T>* scratch, bool add, int64_t* error,
                         cudaStream_t stream);

// out (small, dense NCHW) = input (large) read at the indices; an invalid index gives 0 and is
// reported in *error as for pool_scatter.
template <typename T>
cudaError_t pool_gather(const PoolGeometry& g, View4<const T> input, View4<const int64_t> indices,
                        View4<T> out, int64_t* error, cudaStream_t stream);

}  // namespace convext::cuda
