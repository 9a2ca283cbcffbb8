#pragma once
// Argument checks (with torch's wording) and shape math for conv2d and conv_transpose2d.
#include <ATen/core/Tensor.h>

#include <optional>

#include "common/geometry.h"

namespace convext {

// The parts of a geometry that the arguments give; the caller fills in the spatial sizes.
ConvGeometry conv_geometry(int64_t N, int64_t C_in, int64_t C_out, int64_t groups, int64_t KH,
                           int64_t KW, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation);

ConvGeometry check_conv2d(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// Geometry of the forward convolution whose input gradient this transposed convolution is.
ConvGeometry check_conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef output_padding,
                                    int64_t groups, at::IntArrayRef dilation);

// Checks of the weight-gradient op (conv2d_weight_grad, an internal op: its own wording) and its
// geometry, in forward terms.
ConvGeometry check_conv2d_weight_grad(const at::Tensor& input, const at::Tensor& grad_output,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                      int64_t groups);

void check_conv_bias_grad(const at::Tensor& grad_output);

// torch's rule for conv outputs and grads: channels_last when input or weight suggests it.
bool conv_prefers_channels_last(const at::Tensor& input, const at::Tensor& weight);

at::MemoryFormat conv_memory_format(bool channels_last);

}  // namespace convext
