#pragma once
// Argument checks (with torch's wording) and shape math for the pooling ops. Every pooling op
// takes a 3-D (C, H, W) or 4-D (N, C, H, W) input, as torch's do; the kernels see 4-D views.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common/geometry.h"

namespace convext {


// torch's pooling_output_shape (with its checks): floor or ceil mode, and in ceil mode no
// window may start in the right padding.
int64_t pool_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dilation,
                         bool ceil_mode);

PoolGeometry check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, bool ceil_mode);

PoolGeometry check_avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                              std::optional<int64_t> divisor_override);

// op_name is "adaptive_avg_pool2d" or "adaptive_max_pool2d": their messages differ.
PoolGeometry check_adaptive_pool2d(const at::Tensor& input, at::IntArrayRef output_size,
                                   const char* op_name);

PoolGeometry check_max_unpool2d(const at::Tensor& input, const at::Tensor& indices,
                                at::IntArrayRef output_size);

// Geometry of a pooling backward: the forward's input sizes (H, W) and grad_output's sizes.
PoolGeometry pool_backward_geometry(const at::Tensor& grad_output, at::IntArrayRef input_size);

// A pooling backward's grad_output must have the pooled size of input_size.
void check_pooled_size(const char* op, const at::Tensor& grad_output, at::IntArrayRef input_size,
                       at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);

// max_pool2d_backward's arguments: grad_output and its int64 indices of one shape, pooled from
// input_size by these windows. Returns the backward's geometry.
PoolGeometry check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                       at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, bool ceil_mode);

// The indexed ops' arguments: values and int64 indices of one shape (scatters), input and int64
// indices of one rank, 3 or 4 (pool_gather).
void check_scatter_args(const char* op, const at::Tensor& values, const at::Tensor& indices);
void check_gather_args(const at::Tensor& input, const at::Tensor& indices);

// The error of an index outside the H x W planes (unpooling and the indexed scatter and gather).
void raise_invalid_max_index(int64_t index, int64_t H, int64_t W);

// torch's rule for pooling outputs and grads: the input's suggested format (4-D inputs only).
bool pool_prefers_channels_last(const at::Tensor& input);

// The 4-D view of a 3-D or 4-D tensor, and the output shape in the input's rank.
at::Tensor as_batched(const at::Tensor& t);
std::vector<int64_t> pool_output_sizes(const at::Tensor& input, int64_t C, int64_t H, int64_t W);

// An uninitialised (C, H, W) or (N, C, H, W) result in `input`'s rank and on its device, dense in
// the given format.
at::Tensor empty_pool_tensor(const at::Tensor& input, int64_t C, int64_t H, int64_t W,
                             bool channels_last, at::ScalarType dtype);

}  // namespace convext
