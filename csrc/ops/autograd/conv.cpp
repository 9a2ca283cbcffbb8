// Autograd of the convolution ops. Every backward is written with the convext ops themselves,
// called through the dispatcher, so each backward is differentiable again (double backward and
// beyond) and torch.compile traces it. Sizes are SymInts so dynamic shapes trace too.
//
// With y = conv(x, w) + b (forward geometry), the three linear maps and their adjoints:
//   dx = conv_transpose(gy, w)     dw = weight_grad(x, gy)     db = bias_grad(gy)
// conv_transpose2d is conv2d's input gradient, so its backward is the same set with roles swapped.
#include <torch/autograd.h>
#include <torch/library.h>

#include "common/conv_shape.h"
#include "ops/autograd/needs_autograd.h"
#include "ops/conv.h"

namespace convext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ConvParams {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
  bool channels_last;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["channels_last"] = channels_last;
  }

  // What conv2d's and conv_transpose2d's backwards need; the format of the grads is decided here,
  // from the forward's input and weight, as torch does.
  static ConvParams save_forward(AutogradContext* ctx, const at::Tensor& input,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups,
                                 std::optional<bool> channels_last) {
    const ConvParams p{stride.vec(), padding.vec(), dilation.vec(), groups,
                       channels_last.value_or(conv_prefers_channels_last(input, weight))};
    p.save(ctx);
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->save_for_backward({input, weight});
    return p;
  }

  static ConvParams load(AutogradContext* ctx) {
    return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt(),
            ctx->saved_data["channels_last"].toBool()};
  }

  // The output_padding that makes conv_transpose2d(gy, ...) come back to x's spatial size.
  std::vector<c10::SymInt> output_padding(const at::Tensor& x, const at::Tensor& gy,
                                          const std::vector<c10::SymInt>& kernel) const {
    std::vector<c10::SymInt> out;
    for (int i = 0; i < 2; ++i) {
      out.push_back(x.sym_size(2 + i) - ((gy.sym_size(2 + i) - 1) * stride[i] - 2 * padding[i] +
                                         dilation[i] * (kernel[i] - 1) + 1));
    }
    return out;
  }
};

// needs_input_grad counts the tensor arguments that were passed, so an absent bias has no slot.
bool bias_needs_grad(AutogradContext* ctx) {
  return ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
}

std::vector<c10::SymInt> kernel_size_of(const at::Tensor& weight) {
  return {weight.sym_size(2), weight.sym_size(3)};
}

// conv2d(x, w) as the adjoint of a transposed convolution whose output_padding reached past a
// stride: the conv then yields extra rows/cols, which correspond to nothing and are cut off.
at::Tensor conv2d_to_size(const at::Tensor& x, const at::Tensor& w, const ConvParams& p,
                          const at::Tensor& like) {
  at::Tensor y = ops::conv2d(x, w, std::nullopt, p.stride, p.padding, p.dilation, p.groups,
                             p.channels_last);
  if (y.sym_size(2) == like.sym_size(2) && y.sym_size(3) == like.sym_size(3)) return y;
  return y.narrow_symint(2, 0, like.sym_size(2))
      .narrow_symint(3, 0, like.sym_size(3))
      .contiguous(conv_memory_format(p.channels_last));
}

class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups,
                            std::optional<bool> channels_last) {
    const ConvParams p = ConvParams::save_forward(ctx, input, weight, bias, stride, padding,
                                                  dilation, groups, channels_last);
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::conv2d(input, weight, bias, stride, padding, dilation, groups, p.channels_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const ConvParams p = ConvParams::load(ctx);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &gy = grads[0];
    const auto kernel = kernel_size_of(w);
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      gx = ops::conv_transpose2d(gy, w, std::nullopt, p.stride, p.padding,
                                 p.output_padding(x, gy, kernel), p.groups, p.dilation,
                                 p.channels_last);
    }
    if (ctx->needs_input_grad(1)) {
      gw = ops::conv2d_weight_grad(x, gy, kernel, p.stride, p.padding, p.dilation, p.groups,
                                   p.channels_last);
    }
    if (bias_needs_grad(ctx)) gb = ops::conv_bias_grad(gy);
    return {gx, gw, gb, {}, {}, {}, {}, {}};
  }
};

class ConvTranspose2dFunction : public torch::autograd::Function<ConvTranspose2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            c10::SymIntArrayRef output_padding, int64_t groups,
                            at::IntArrayRef dilation, std::optional<bool> channels_last) {
    const ConvParams p = ConvParams::save_forward(ctx, input, weight, bias, stride, padding,
                                                  dilation, groups, channels_last);
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                                 dilation, p.channels_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const ConvParams p = ConvParams::load(ctx);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &gy = grads[0];
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) gx = conv2d_to_size(gy, w, p, x);
    if (ctx->needs_input_grad(1)) {
      gw = ops::conv2d_weight_grad(gy, x, kernel_size_of(w), p.stride, p.padding, p.dilation,
                                   p.groups, p.channels_last);
    }
    if (bias_needs_grad(ctx)) gb = ops::conv_bias_grad(gy);
    return {gx, gw, gb, {}, {}, {}, {}, {}, {}};
  }
};

// weight_grad(x, gy) is bilinear; its adjoints are a transposed conv (for x) and a conv (for gy).
class Conv2dWeightGradFunction : public torch::autograd::Function<Conv2dWeightGradFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& grad_output, c10::SymIntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups, bool channels_last) {
    const ConvParams p{stride.vec(), padding.vec(), dilation.vec(), groups, channels_last};
    p.save(ctx);
    ctx->save_for_backward({input, grad_output});
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::conv2d_weight_grad(input, grad_output, kernel_size, stride, padding, dilation,
                                   groups, channels_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const ConvParams p = ConvParams::load(ctx);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &gy = saved[1], &ggw = grads[0];
    at::Tensor gx, ggy;
    if (ctx->needs_input_grad(0)) {
      gx = ops::conv_transpose2d(gy, ggw, std::nullopt, p.stride, p.padding,
                                 p.output_padding(x, gy, kernel_size_of(ggw)), p.groups,
                                 p.dilation, p.channels_last);
    }
    if (ctx->needs_input_grad(1)) ggy = conv2d_to_size(x, ggw, p, gy);
    return {gx, ggy, {}, {}, {}, {}, {}, {}};
  }
};

class ConvBiasGradFunction : public torch::autograd::Function<ConvBiasGradFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output) {
    for (int d = 0; d < 4; ++d) ctx->saved_data["size" + std::to_string(d)] = grad_output.sym_size(d);
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::conv_bias_grad(grad_output);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    std::vector<c10::SymInt> sizes;
    for (int d = 0; d < 4; ++d) sizes.push_back(ctx->saved_data["size" + std::to_string(d)].toSymInt());
    return {grads[0].reshape({1, -1, 1, 1}).expand_symint(sizes)};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           std::optional<bool> channels_last) {
  if (!any_needs_autograd(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::conv2d(input, weight, bias, stride, padding, dilation, groups, channels_last);
  }
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups,
                               channels_last);
}

at::Tensor conv_transpose2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     c10::SymIntArrayRef output_padding, int64_t groups,
                                     at::IntArrayRef dilation,
                                     std::optional<bool> channels_last) {
  if (!any_needs_autograd(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                                 dilation, channels_last);
  }
  return ConvTranspose2dFunction::apply(input, weight, bias, stride, padding, output_padding,
                                        groups, dilation, channels_last);
}

at::Tensor conv2d_weight_grad_autograd(const at::Tensor& input, const at::Tensor& grad_output,
                                       c10::SymIntArrayRef kernel_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups, bool channels_last) {
  if (!any_needs_autograd(input, grad_output)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::conv2d_weight_grad(input, grad_output, kernel_size, stride, padding, dilation,
                                   groups, channels_last);
  }
  return Conv2dWeightGradFunction::apply(input, grad_output, kernel_size, stride, padding,
                                         dilation, groups, channels_last);
}

at::Tensor conv_bias_grad_autograd(const at::Tensor& grad_output) {
  if (!any_needs_autograd(grad_output)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::conv_bias_grad(grad_output);
  }
  return ConvBiasGradFunction::apply(grad_output);
}

}  // namespace

TORCH_LIBRARY_IMPL(convext, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv_transpose2d", &conv_transpose2d_autograd);
  m.impl("conv2d_weight_grad", &conv2d_weight_grad_autograd);
  m.impl("conv_bias_grad", &conv_bias_grad_autograd);
}

}  // namespace convext
