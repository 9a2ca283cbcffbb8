#include "ops/pool.h"

#include <torch/library.h>

#include "ops/find_op.h"

namespace convext::ops {

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(const at::Tensor& input,
                                                           at::IntArrayRef kernel_size,
                                                           at::IntArrayRef stride,
                                                           at::IntArrayRef padding,
                                                           at::IntArrayRef dilation, bool ceil_mode) {
  static const auto op =
      find_op<decltype(max_pool2d_with_indices)>("convext::max_pool2d_with_indices");
  return op.call(input, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  static const auto op = find_op<decltype(max_pool2d)>("convext::max_pool2d");
  return op.call(input, kernel_size, stride, padding, dilation, ceil_mode);
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d(const at::Tensor& input,
                                                       c10::SymIntArrayRef output_size) {
  static const auto op = find_op<decltype(adaptive_max_pool2d)>("convext::adaptive_max_pool2d");
  return op.call(input, output_size);
}

at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      std::optional<int64_t> divisor_override) {
  static const auto op = find_op<decltype(avg_pool2d)>("convext::avg_pool2d");
  return op.call(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override);
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, c10::SymIntArrayRef input_size,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override, bool channels_last) {
  static const auto op = find_op<decltype(avg_pool2d_backward)>("convext::avg_pool2d_backward");
  return op.call(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                 count_include_pad, divisor_override, channels_last);
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, c10::SymIntArrayRef output_size) {
  static const auto op = find_op<decltype(adaptive_avg_pool2d)>("convext::adaptive_avg_pool2d");
  return op.call(input, output_size);
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output,
                                        c10::SymIntArrayRef input_size, bool channels_last) {
  static const auto op =
      find_op<decltype(adaptive_avg_pool2d_backward)>("convext::adaptive_avg_pool2d_backward");
  return op.call(grad_output, input_size, channels_last);
}

at::Tensor max_unpool2d(const at::Tensor& input, const at::Tensor& indices,
                        c10::SymIntArrayRef output_size) {
  static const auto op = find_op<decltype(max_unpool2d)>("convext::max_unpool2d");
  return op.call(input, indices, output_size);
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                               c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode, bool channels_last) {
  static const auto op = find_op<decltype(max_pool2d_backward)>("convext::max_pool2d_backward");
  return op.call(grad_output, indices, input_size, kernel_size, stride, padding, dilation,
                 ceil_mode, channels_last);
}

at::Tensor pool_scatter_add(const at::Tensor& values, const at::Tensor& indices,
                            c10::SymIntArrayRef size, bool channels_last) {
  static const auto op = find_op<decltype(pool_scatter_add)>("convext::pool_scatter_add");
  return op.call(values, indices, size, channels_last);
}

at::Tensor pool_gather(const at::Tensor& input, const at::Tensor& indices) {
  static const auto op = find_op<decltype(pool_gather)>("convext::pool_gather");
  return op.call(input, indices);
}

// Window arguments are int[] (not int[2]) so that a list of another length reaches the kernel's
// check and gets torch's message.
TORCH_LIBRARY_FRAGMENT(convext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("max_pool2d_with_indices(Tensor input, int[] kernel_size, int[] stride, int[] padding, "
        "int[] dilation, bool ceil_mode) -> (Tensor, Tensor)",
        tags);
  m.def("max_pool2d(Tensor input, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
        "bool ceil_mode) -> Tensor",
        tags);
  m.def("adaptive_max_pool2d(Tensor input, SymInt[] output_size) -> (Tensor, Tensor)", tags);
  m.def("avg_pool2d(Tensor input, int[] kernel_size, int[] stride, int[] padding, bool ceil_mode, "
        "bool count_include_pad, int? divisor_override) -> Tensor",
        tags);
  m.def("avg_pool2d_backward(Tensor grad_output, SymInt[2] input_size, int[2] kernel_size, "
        "int[2] stride, int[2] padding, bool ceil_mode, bool count_include_pad, "
        "int? divisor_override, bool channels_last) -> Tensor",
        tags);
  m.def("adaptive_avg_pool2d(Tensor input, SymInt[] output_size) -> Tensor", tags);
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, SymInt[2] input_size, "
        "bool channels_last) -> Tensor",
        tags);
  m.def("max_unpool2d(Tensor input, Tensor indices, SymInt[] output_size) -> Tensor", tags);
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[2] input_size, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode, "
        "bool channels_last) -> Tensor",
        tags);
  m.def("pool_scatter_add(Tensor values, Tensor indices, SymInt[2] size, bool channels_last) -> Tensor",
        tags);
  m.def("pool_gather(Tensor input, Tensor indices) -> Tensor", tags);
}

}  // namespace convext::ops
