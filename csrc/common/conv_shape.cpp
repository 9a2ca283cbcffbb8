#include "common/conv_shape.h"

#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace convext {
namespace {

// The legacy type name torch prints in conv dtype errors, e.g. "torch.FloatTensor".
std::string legacy_type_name(const at::Tensor& t) {
  return std::string("torch.") + (t.is_cuda() ? "cuda." : "") + c10::toString(t.scalar_type()) +
         "Tensor";
}

bool any_of(at::IntArrayRef v, bool (*pred)(int64_t)) {
  for (auto x : v) {
    if (pred(x)) return true;
  }
  return false;
}

void check_pairs(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "stride, padding and dilation must have 2 elements each");
  TORCH_CHECK(!any_of(padding, [](int64_t x) { return x < 0; }),
              "negative padding is not supported");
  TORCH_CHECK(!any_of(stride, [](int64_t x) { return x <= 0; }),
              "non-positive stride is not supported");
  TORCH_CHECK(!any_of(dilation, [](int64_t x) { return x < 0; }),
              "dilation should be greater than zero");
  TORCH_CHECK(!any_of(dilation, [](int64_t x) { return x == 0; }),
              "non-positive dilation is not supported");
}

void check_weight(const at::Tensor& input, const at::Tensor& weight, int64_t groups) {
  TORCH_CHECK(groups > 0, "non-positive groups is not supported");
  TORCH_CHECK(weight.dim() == input.dim(), "Expected ", weight.dim(), "-dimensional input for ",
              weight.dim(), "-dimensional weight ", weight.sizes(), ", but got ", input.dim(),
              "-dimensional input of size ", input.sizes(), " instead");
  TORCH_CHECK(input.dim() == 4, "Expected 4D (batched) input to convext conv ops, but got input of size: ",
              input.sizes());
  TORCH_CHECK(weight.size(0) >= groups, "Given groups=", groups,
              ", expected weight to be at least ", groups,
              " at dimension 0, but got weight of size ", weight.sizes(), " instead");
  TORCH_CHECK(weight.size(0) % groups == 0, "Given groups=", groups,
              ", expected weight to be divisible by ", groups,
              " at dimension 0, but got weight of size [", weight.sizes(), "] instead");
}

void check_same_device(const at::Tensor& input, const at::Tensor& other, const char* what) {
  TORCH_CHECK(input.device() == other.device(), "Input and ", what,
              " should be on the same device, but got ", input.device(), " and ",
              other.device());
}

}  // namespace

ConvGeometry conv_geometry(int64_t N, int64_t C_in, int64_t C_out, int64_t groups, int64_t KH,
                           int64_t KW, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation) {
  ConvGeometry g{};
  g.N = N, g.C_in = C_in, g.C_out = C_out, g.groups = groups;
  g.KH = KH, g.KW = KW;
  g.sH = stride[0], g.sW = stride[1];
  g.pH = padding[0], g.pW = padding[1];
  g.dH = dilation[0], g.dW = dilation[1];
  return g;
}

ConvGeometry check_conv2d(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "Input type (",
              legacy_type_name(input), ") and weight type (", legacy_type_name(weight),
              ") should be the same or input should be a MKLDNN tensor and weight is a dense tensor");
  check_same_device(input, weight, "weight");
  if (bias) {
    TORCH_CHECK(input.scalar_type() == bias->scalar_type(), "Input type (", input.dtype().name(),
                ") and bias type (", bias->dtype().name(), ") should be the same");
    check_same_device(input, *bias, "bias");
  }
  check_pairs(stride, padding, dilation);
  check_weight(input, weight, groups);
  TORCH_CHECK(input.size(1) == weight.size(1) * groups, "Given groups=", groups,
              ", weight of size ", weight.sizes(), ", expected input", input.sizes(), " to have ",
              weight.size(1) * groups, " channels, but got ", input.size(1),
              " channels instead");
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(0)),
              "Given weight of size ", weight.sizes(), ", expected bias to be 1-dimensional with ",
              weight.size(0), " elements, but got bias of size ", bias ? bias->sizes() : at::IntArrayRef(),
              " instead");

  ConvGeometry g = conv_geometry(input.size(0), input.size(1), weight.size(0), groups,
                                 weight.size(2), weight.size(3), stride, padding, dilation);
  g.H = input.size(2), g.W = input.size(3);
  const int64_t padded_h = g.H + 2 * g.pH, padded_w = g.W + 2 * g.pW;
  const int64_t extent_h = g.dH * (g.KH - 1) + 1, extent_w = g.dW * (g.KW - 1) + 1;
  if (padded_h < extent_h || padded_w < extent_w) {
    std::ostringstream msg;
    msg << "Calculated padded input size per channel: (" << padded_h << " x " << padded_w
        << "). Kernel size: (" << extent_h << " x " << extent_w
        << "). Kernel size can't be greater than actual input size";
    TORCH_CHECK(false, msg.str());
  }
  g.OH = (padded_h - extent_h) / g.sH + 1;
  g.OW = (padded_w - extent_w) / g.sW + 1;
  return g;
}

ConvGeometry check_conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef output_padding,
                                    int64_t groups, at::IntArrayRef dilation) {
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "expected scalar type ",
              input.scalar_type(), " but found ", weight.scalar_type());
  check_same_device(input, weight, "weight");
  if (bias) {
    TORCH_CHECK(input.scalar_type() == bias->scalar_type(), "expected scalar type ",
                input.scalar_type(), " but found ", bias->scalar_type());
    check_same_device(input, *bias, "bias");
  }
  check_pairs(stride, padding, dilation);
  TORCH_CHECK(output_padding.size() == 2, "output_padding must have 2 elements");
  TORCH_CHECK(output_padding[0] >= 0 && output_padding[1] >= 0,
              "negative output_padding is not supported");
  check_weight(input, weight, groups);
  TORCH_CHECK(input.size(1) == weight.size(0), "Given transposed=1, weight of size ",
              weight.sizes(), ", expected input", input.sizes(), " to have ", weight.size(0),
              " channels, but got ", input.size(1), " channels instead");
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == weight.size(1) * groups),
              "Given transposed=1, weight of size ", weight.sizes(),
              ", expected bias to be 1-dimensional with ", weight.size(1) * groups,
              " elements, but got bias of size ", bias ? bias->sizes() : at::IntArrayRef(),
              " instead");
  TORCH_CHECK((output_padding[0] < stride[0] || output_padding[0] < dilation[0]) &&
                  (output_padding[1] < stride[1] || output_padding[1] < dilation[1]),
              "output padding must be smaller than either stride or dilation, but got "
              "output_padding_height: ",
              output_padding[0], " output_padding_width: ", output_padding[1],
              " stride_height: ", stride[0], " stride_width: ", stride[1],
              " dilation_height: ", dilation[0], " dilation_width: ", dilation[1]);

  // The forward conv's output is this op's input.
  ConvGeometry g = conv_geometry(input.size(0), weight.size(1) * groups, input.size(1), groups,
                                 weight.size(2), weight.size(3), stride, padding, dilation);
  g.OH = input.size(2), g.OW = input.size(3);
  g.H = (g.OH - 1) * g.sH - 2 * g.pH + g.dH * (g.KH - 1) + output_padding[0] + 1;
  g.W = (g.OW - 1) * g.sW - 2 * g.pW + g.dW * (g.KW - 1) + output_padding[1] + 1;
  TORCH_CHECK(g.H > 0 && g.W > 0, "Given input size per channel: (", g.OH, " x ", g.OW,
              "). Calculated output size per channel: (", g.H, " x ", g.W,
              "). Output size is too small");
  return g;
}

ConvGeometry check_conv2d_weight_grad(const at::Tensor& input, const at::Tensor& grad_output,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                      int64_t groups) {
  TORCH_CHECK(input.dim() == 4 && grad_output.dim() == 4,
              "conv2d_weight_grad: expected 4-D input and grad_output, got ", input.sizes(),
              " and ", grad_output.sizes());
  TORCH_CHECK(input.scalar_type() == grad_output.scalar_type(),
              "conv2d_weight_grad: input and grad_output must have the same dtype");
  TORCH_CHECK(input.device() == grad_output.device(),
              "conv2d_weight_grad: input and grad_output must be on the same device, got ",
              input.device(), " and ", grad_output.device());
  TORCH_CHECK(input.size(0) == grad_output.size(0),
              "conv2d_weight_grad: input and grad_output have different batch sizes");
  TORCH_CHECK(kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0,
              "conv2d_weight_grad: kernel_size must be two positive ints, got ", kernel_size);
  TORCH_CHECK(groups > 0 && input.size(1) % groups == 0 && grad_output.size(1) % groups == 0,
              "conv2d_weight_grad: groups=", groups, " must divide the ", input.size(1),
              " input and ", grad_output.size(1), " output channels");
  ConvGeometry g = conv_geometry(input.size(0), input.size(1), grad_output.size(1), groups,
                                 kernel_size[0], kernel_size[1], stride, padding, dilation);
  g.H = input.size(2), g.W = input.size(3);
  g.OH = grad_output.size(2), g.OW = grad_output.size(3);
  return g;
}

void check_conv_bias_grad(const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.dim() == 4, "conv_bias_grad: expected a 4-D grad_output, got ",
              grad_output.sizes());
}

bool conv_prefers_channels_last(const at::Tensor& input, const at::Tensor& weight) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
         weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::MemoryFormat conv_memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace convext
