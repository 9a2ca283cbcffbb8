#pragma once
// The pooling family's dispatcher ops (schemas in pool.cpp), callable from C++. Inputs are 3-D
// (C, H, W) or 4-D (N, C, H, W); indices are int64 offsets into each (n, c) plane of H x W.
//   max_pool2d_with_indices, adaptive_max_pool2d -> (output, indices)
//   max_pool2d                             -> output (no indices are made when no grad needs them)
//   avg_pool2d, adaptive_avg_pool2d        -> output (adaptive 1x1 is global average pooling)
//   avg_pool2d_backward, adaptive_avg_pool2d_backward
//   max_unpool2d                           values written to their indices in a zero plane
//   max_pool2d_backward                    max_pool2d's input grad (from its own indices)
//   pool_scatter_add                       values added at their indices (adaptive max pooling's
//                                          backward)
//   pool_gather                            input read at indices (the adjoint of the three above)
// `channels_last` fixes the memory format of a backward's result (torch's grads follow the
// forward input).
#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>

#include <optional>
#include <tuple>

namespace convext::ops {

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(const at::Tensor& input,
                                                           at::IntArrayRef kernel_size,
                                                           at::IntArrayRef stride,
                                                           at::IntArrayRef padding,
                                                           at::IntArrayRef dilation, bool ceil_mode);
at::Tensor max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);
std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d(const at::Tensor& input,
                                                       c10::SymIntArrayRef output_size);
at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      std::optional<int64_t> divisor_override);
at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, c10::SymIntArrayRef input_size,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override, bool channels_last);
at::Tensor adaptive_avg_pool2d(const at::Tensor& input, c10::SymIntArrayRef output_size);
at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output,
                                        c10::SymIntArrayRef input_size, bool channels_last);
at::Tensor max_unpool2d(const at::Tensor& input, const at::Tensor& indices,
                        c10::SymIntArrayRef output_size);
at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                               c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode, bool channels_last);
at::Tensor pool_scatter_add(const at::Tensor& values, const at::Tensor& indices,
                            c10::SymIntArrayRef size, bool channels_last);
at::Tensor pool_gather(const at::Tensor& input, const at::Tensor& indices);

}  // namespace convext::ops
