#include "ops/conv.h"

#include <torch/library.h>

#include "ops/find_op.h"

namespace convext::ops {

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                  std::optional<bool> channels_last) {
  static const auto op = find_op<decltype(conv2d)>("convext::conv2d");
  return op.call(input, weight, bias, stride, padding, dilation, groups, channels_last);
}

at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, c10::SymIntArrayRef output_padding,
                            int64_t groups, at::IntArrayRef dilation,
                            std::optional<bool> channels_last) {
  static const auto op = find_op<decltype(conv_transpose2d)>("convext::conv_transpose2d");
  return op.call(input, weight, bias, stride, padding, output_padding, groups, dilation,
                 channels_last);
}

at::Tensor conv2d_weight_grad(const at::Tensor& input, const at::Tensor& grad_output,
                              c10::SymIntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              bool channels_last) {
  static const auto op = find_op<decltype(conv2d_weight_grad)>("convext::conv2d_weight_grad");
  return op.call(input, grad_output, kernel_size, stride, padding, dilation, groups,
                 channels_last);
}

at::Tensor conv_bias_grad(const at::Tensor& grad_output) {
  static const auto op = find_op<decltype(conv_bias_grad)>("convext::conv_bias_grad");
  return op.call(grad_output);
}

TORCH_LIBRARY_FRAGMENT(convext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, bool? channels_last=None) -> Tensor",
        tags);
  m.def("conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
        "int[2] padding, SymInt[2] output_padding, int groups, int[2] dilation, "
        "bool? channels_last=None) -> Tensor",
        tags);
  m.def("conv2d_weight_grad(Tensor input, Tensor grad_output, SymInt[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups, bool channels_last) -> Tensor",
        tags);
  m.def("conv_bias_grad(Tensor grad_output) -> Tensor", tags);
}

}  // namespace convext::ops
