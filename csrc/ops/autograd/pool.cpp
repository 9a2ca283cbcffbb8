// Autograd of the pooling ops. As for convolution, every backward is written with convext ops
// called through the dispatcher, so it is differentiable again. The pairs of adjoints:
//   max_pool2d                -> max_pool2d_backward of the grad at the indices  <-> pool_gather
//   adaptive_max_pool2d       -> pool_scatter_add of the grad at the indices     <-> pool_gather
//   max_unpool2d              -> pool_gather of the grad at the indices
//   avg pooling (both kinds)  -> its *_backward op, whose own adjoint is the forward op again
// Every backward kernel is deterministic (no order-dependent atomics, on the CPU or CUDA), so
// torch.use_deterministic_algorithms(True) has nothing to flag here.
#include <torch/autograd.h>
#include <torch/library.h>

#include "common/pool_shape.h"
#include "ops/autograd/needs_autograd.h"
#include "ops/pool.h"

namespace convext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save_plane_size(AutogradContext* ctx, const char* key, const at::Tensor& t) {
  ctx->saved_data[std::string(key) + "_h"] = t.sym_size(-2);
  ctx->saved_data[std::string(key) + "_w"] = t.sym_size(-1);
}

std::vector<c10::SymInt> load_plane_size(AutogradContext* ctx, const char* key) {
  return {ctx->saved_data[std::string(key) + "_h"].toSymInt(),
          ctx->saved_data[std::string(key) + "_w"].toSymInt()};
}

// Shared by max_pool2d and adaptive_max_pool2d: the grad goes to the argmax of each window.
struct MaxPoolBackward {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               std::tuple<at::Tensor, at::Tensor> result) {
    auto& [out, indices] = result;
    ctx->mark_non_differentiable({indices});
    // Else autograd hands backward a zero-filled grad for the indices as well (12.8 MB of
    // int64 zeros for max pool 3x3 s2 64 @112, N = 8: a quarter of its backward's time).
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({indices});
    save_plane_size(ctx, "input", input);
    ctx->saved_data["channels_last"] = pool_prefers_channels_last(input);
    return {out, indices};
  }
};

// Its backward has the windows too, so a device can gather each input element's grads (CUDA)
// rather than scatter them.
class MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    at::AutoDispatchBelowADInplaceOrView guard;
    return MaxPoolBackward::forward(
        ctx, input,
        ops::max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(6);
    const auto& saved = ctx->saved_data;
    return {ops::max_pool2d_backward(grads[0], ctx->get_saved_variables()[0],
                                     load_plane_size(ctx, "input"),
                                     saved.at("kernel_size").toIntVector(),
                                     saved.at("stride").toIntVector(),
                                     saved.at("padding").toIntVector(),
                                     saved.at("dilation").toIntVector(),
                                     saved.at("ceil_mode").toBool(),
                                     saved.at("channels_last").toBool()),
            {}, {}, {}, {}, {}};
  }
};

class AdaptiveMaxPool2dFunction : public torch::autograd::Function<AdaptiveMaxPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               c10::SymIntArrayRef output_size) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return MaxPoolBackward::forward(ctx, input, ops::adaptive_max_pool2d(input, output_size));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(2);
    return {ops::pool_scatter_add(grads[0], ctx->get_saved_variables()[0],
                                  load_plane_size(ctx, "input"),
                                  ctx->saved_data["channels_last"].toBool()),
            {}};
  }
};

// Linear in grad_output; its adjoint reads the grad at the indices.
class MaxPool2dBackwardFunction : public torch::autograd::Function<MaxPool2dBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output,
                            const at::Tensor& indices, c10::SymIntArrayRef input_size,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                            bool channels_last) {
    ctx->save_for_backward({indices});
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride,
                                    padding, dilation, ceil_mode, channels_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ops::pool_gather(grads[0], ctx->get_saved_variables()[0]),
            {}, {}, {}, {}, {}, {}, {}, {}};
  }
};

struct AvgPoolParams {
  std::vector<int64_t> kernel_size, stride, padding;
  bool ceil_mode, count_include_pad;
  std::optional<int64_t> divisor_override;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
  }

  static AvgPoolParams load(AutogradContext* ctx) {
    const auto& divisor = ctx->saved_data["divisor_override"];
    return {ctx->saved_data["kernel_size"].toIntVector(), ctx->saved_data["stride"].toIntVector(),
            ctx->saved_data["padding"].toIntVector(), ctx->saved_data["ceil_mode"].toBool(),
            ctx->saved_data["count_include_pad"].toBool(),
            divisor.isNone() ? std::nullopt : std::optional<int64_t>(divisor.toInt())};
  }
};

// The backward op needs the window arguments as pairs; the forward op also takes other lengths
// (to give torch's error), which fail in the forward before any backward runs.
class AvgPool2dFunction : public torch::autograd::Function<AvgPool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                            std::optional<int64_t> divisor_override) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = ops::avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override);
    }
    AvgPoolParams{kernel_size.vec(), stride.vec(), padding.vec(), ceil_mode, count_include_pad,
                  divisor_override}
        .save(ctx);
    save_plane_size(ctx, "input", input);
    ctx->saved_data["channels_last"] = pool_prefers_channels_last(input);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const AvgPoolParams p = AvgPoolParams::load(ctx);
    return {ops::avg_pool2d_backward(grads[0], load_plane_size(ctx, "input"), p.kernel_size,
                                     p.stride, p.padding, p.ceil_mode, p.count_include_pad,
                                     p.divisor_override, ctx->saved_data["channels_last"].toBool()),
            {}, {}, {}, {}, {}, {}};
  }
};

class AvgPool2dBackwardFunction : public torch::autograd::Function<AvgPool2dBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output,
                            c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                            bool count_include_pad, std::optional<int64_t> divisor_override,
                            bool channels_last) {
    AvgPoolParams{kernel_size.vec(), stride.vec(), padding.vec(), ceil_mode, count_include_pad,
                  divisor_override}
        .save(ctx);
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding,
                                    ceil_mode, count_include_pad, divisor_override, channels_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const AvgPoolParams p = AvgPoolParams::load(ctx);
    return {ops::avg_pool2d(grads[0], p.kernel_size, p.stride, p.padding, p.ceil_mode,
                            p.count_include_pad, p.divisor_override),
            {}, {}, {}, {}, {}, {}, {}, {}};
  }
};

class AdaptiveAvgPool2dFunction : public torch::autograd::Function<AdaptiveAvgPool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            c10::SymIntArrayRef output_size) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = ops::adaptive_avg_pool2d(input, output_size);
    }
    save_plane_size(ctx, "input", input);
    // torch computes a 1x1 output as a mean, whose grad comes back contiguous.
    const bool global = out.sym_size(-1) == 1 && out.sym_size(-2) == 1;
    ctx->saved_data["channels_last"] = pool_prefers_channels_last(input) && !global;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ops::adaptive_avg_pool2d_backward(grads[0], load_plane_size(ctx, "input"),
                                              ctx->saved_data["channels_last"].toBool()),
            {}};
  }
};

class AdaptiveAvgPool2dBackwardFunction
    : public torch::autograd::Function<AdaptiveAvgPool2dBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output,
                            c10::SymIntArrayRef input_size, bool channels_last) {
    save_plane_size(ctx, "grad_output", grad_output);
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::adaptive_avg_pool2d_backward(grad_output, input_size, channels_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ops::adaptive_avg_pool2d(grads[0], load_plane_size(ctx, "grad_output")), {}, {}};
  }
};

// Both of these take values and indices; the grad flows to the values only.
class MaxUnpool2dFunction : public torch::autograd::Function<MaxUnpool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& indices, c10::SymIntArrayRef output_size) {
    ctx->save_for_backward({indices});
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::max_unpool2d(input, indices, output_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ops::pool_gather(grads[0], ctx->get_saved_variables()[0]), {}, {}};
  }
};

class PoolScatterAddFunction : public torch::autograd::Function<PoolScatterAddFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& values,
                            const at::Tensor& indices, c10::SymIntArrayRef size,
                            bool channels_last) {
    ctx->save_for_backward({indices});
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::pool_scatter_add(values, indices, size, channels_last);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ops::pool_gather(grads[0], ctx->get_saved_variables()[0]), {}, {}, {}};
  }
};

class PoolGatherFunction : public torch::autograd::Function<PoolGatherFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& indices) {
    ctx->save_for_backward({indices});
    save_plane_size(ctx, "input", input);
    ctx->saved_data["channels_last"] = pool_prefers_channels_last(input);
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::pool_gather(input, indices);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ops::pool_scatter_add(grads[0], ctx->get_saved_variables()[0],
                                  load_plane_size(ctx, "input"),
                                  ctx->saved_data["channels_last"].toBool()),
            {}};
  }
};

std::tuple<at::Tensor, at::Tensor> as_pair(const variable_list& v) { return {v[0], v[1]}; }

TORCH_LIBRARY_IMPL(convext, Autograd, m) {
  m.impl("max_pool2d_with_indices", [](const at::Tensor& input, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, bool ceil_mode) {
    if (!any_needs_autograd(input)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return ops::max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode);
    }
    return as_pair(MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode));
  });
  // Indices are made only when a grad will need them: inference reads x and writes y alone.
  m.impl("max_pool2d", [](const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool ceil_mode) {
    if (any_needs_autograd(input)) {
      return MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode)[0];
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  });
  m.impl("adaptive_max_pool2d", [](const at::Tensor& input, c10::SymIntArrayRef output_size) {
    if (!any_needs_autograd(input)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return ops::adaptive_max_pool2d(input, output_size);
    }
    return as_pair(AdaptiveMaxPool2dFunction::apply(input, output_size));
  });
  m.impl("avg_pool2d", [](const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                          bool count_include_pad, std::optional<int64_t> divisor_override) {
    if (!any_needs_autograd(input)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return ops::avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
    }
    return AvgPool2dFunction::apply(input, kernel_size, stride, padding, ceil_mode,
                                    count_include_pad, divisor_override);
  });
  m.impl("avg_pool2d_backward",
         [](const at::Tensor& grad_output, c10::SymIntArrayRef input_size,
            at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
            bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
            bool channels_last) {
           if (!any_needs_autograd(grad_output)) {
             at::AutoDispatchBelowADInplaceOrView guard;
             return ops::avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                                             count_include_pad, divisor_override, channels_last);
           }
           return AvgPool2dBackwardFunction::apply(grad_output, input_size, kernel_size, stride,
                                                   padding, ceil_mode, count_include_pad,
                                                   divisor_override, channels_last);
         });
  m.impl("adaptive_avg_pool2d", [](const at::Tensor& input, c10::SymIntArrayRef output_size) {
    if (!any_needs_autograd(input)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return ops::adaptive_avg_pool2d(input, output_size);
    }
    return AdaptiveAvgPool2dFunction::apply(input, output_size);
  });
  m.impl("adaptive_avg_pool2d_backward", [](const at::Tensor& grad_output,
                                            c10::SymIntArrayRef input_size, bool channels_last) {
    if (!any_needs_autograd(grad_output)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return ops::adaptive_avg_pool2d_backward(grad_output, input_size, channels_last);
    }
    return AdaptiveAvgPool2dBackwardFunction::apply(grad_output, input_size, channels_last);
  });
  m.impl("max_unpool2d", [](const at::Tensor& input, const at::Tensor& indices,
                            c10::SymIntArrayRef output_size) {
    if (!any_needs_autograd(input, indices)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return ops::max_unpool2d(input, indices, output_size);
    }
    return MaxUnpool2dFunction::apply(input, indices, output_size);
  });
  m.impl("max_pool2d_backward",
         [](const at::Tensor& grad_output, const at::Tensor& indices,
            c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
            at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
            bool channels_last) {
           if (!any_needs_autograd(grad_output, indices)) {
             at::AutoDispatchBelowADInplaceOrView guard;
             return ops::max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding,
                                             dilation, ceil_mode, channels_last);
           }
           return MaxPool2dBackwardFunction::apply(grad_output, indices, input_size, kernel_size,
                                                   stride, padding, dilation, ceil_mode,
                                                   channels_last);
         });
  m.impl("pool_scatter_add", [](const at::Tensor& values, const at::Tensor& indices,
                                c10::SymIntArrayRef size, bool channels_last) {
    if (!any_needs_autograd(values, indices)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return ops::pool_scatter_add(values, indices, size, channels_last);
    }
    return PoolScatterAddFunction::apply(values, indices, size, channels_last);
  });
  m.impl("pool_gather", [](const at::Tensor& input, const at::Tensor& indices) {
    if (!any_needs_autograd(input, indices)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return ops::pool_gather(input, indices);
    }
    return PoolGatherFunction::apply(input, indices);
  });
}

}  // namespace
}  // namespace convext
