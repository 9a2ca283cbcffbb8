#pragma once
// The convolution family's dispatcher ops (schemas in conv.cpp), callable from C++.
//   conv2d              forward convolution
//   conv_transpose2d    transposed convolution (also conv2d's input gradient)
//   conv2d_weight_grad  weight gradient of conv2d (and, with roles swapped, of conv_transpose2d)
//   conv_bias_grad      bias gradient of both
// `channels_last` fixes the memory format of the result; left empty, it follows torch's rule
// (channels_last when input or weight suggests it). Backward passes set it from the forward's
// input and weight, which is what torch does for grads.
#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>

#include <optional>

namespace convext::ops {

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                  std::optional<bool> channels_last);

at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, c10::SymIntArrayRef output_padding,
                            int64_t groups, at::IntArrayRef dilation,
                            std::optional<bool> channels_last);

at::Tensor conv2d_weight_grad(const at::Tensor& input, const at::Tensor& grad_output,
                              c10::SymIntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              bool channels_last);

at::Tensor conv_bias_grad(const at::Tensor& grad_output);

}  // namespace convext::ops
