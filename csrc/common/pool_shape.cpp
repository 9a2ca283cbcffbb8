#include "common/pool_shape.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <string>

namespace convext {

int64_t pool_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dilation,
                    bool ceil_mode) {
  TORCH_CHECK(stride != 0, "stride should not be zero");
  TORCH_CHECK(pad >= 0, "pad must be non-negative, but got pad: ", pad);
  TORCH_CHECK(pad <= ((k - 1) * dilation + 1) / 2,
              "pad should be at most half of effective kernel size, but got pad=", pad,
              ", kernel_size=", k, " and dilation=", dilation);
  const int64_t numerator = in + 2 * pad - dilation * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // Floor division (numerator may be negative).
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

namespace {

void check_int_pairs(const char* op, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding) {
  TORCH_CHECK(kernel_size.size() == 2, op, ": kernel_size must either be a single int, or a tuple of two ints");
  TORCH_CHECK(stride.size() == 2, op, ": stride must either be omitted, a single int, or a tuple of two ints");
  TORCH_CHECK(padding.size() == 2, op, ": padding must either be a single int, or a tuple of two ints");
}

// torch's pool2d_shape_check, after the output size is known.
void pool2d_shape_check(const at::Tensor& input, const PoolGeometry& g) {
  TORCH_CHECK(g.kW > 0 && g.kH > 0, "kernel size should be greater than zero, but got kH: ", g.kH,
              " kW: ", g.kW);
  TORCH_CHECK(g.sW > 0 && g.sH > 0, "stride should be greater than zero, but got dH: ", g.sH,
              " dW: ", g.sW);
  TORCH_CHECK(g.dH > 0 && g.dW > 0, "dilation should be greater than zero, but got dilationH: ",
              g.dH, " dilationW: ", g.dW);
  const int64_t ndim = input.dim();
  const bool valid_dims = input.size(1) != 0 && input.size(2) != 0;
  if (pool_prefers_channels_last(input)) {
    TORCH_CHECK(ndim == 4 && valid_dims && input.size(3) != 0,
                "Expected 4D (batch mode) tensor expected for input with channels_last layout "
                "with optional 0 dim batch size for input, but got: ",
                input.sizes());
  } else {
    TORCH_CHECK((ndim == 3 && input.size(0) != 0 && valid_dims) ||
                    (ndim == 4 && valid_dims && input.size(3) != 0),
                "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, "
                "but got:",
                input.sizes());
  }
  TORCH_CHECK(g.kW / 2 >= g.pW && g.kH / 2 >= g.pH,
              "pad should be smaller than or equal to half of kernel size, but got padW = ", g.pW,
              ", padH = ", g.pH, ", kW = ", g.kW, ", kH = ", g.kH);
  TORCH_CHECK(g.OW >= 1 && g.OH >= 1, "Given input size: (", g.C, "x", g.H, "x", g.W,
              "). Calculated output size: (", g.C, "x", g.OH, "x", g.OW,
              "). Output size is too small");
}

PoolGeometry window_geometry(const at::Tensor& input, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, bool ceil_mode) {
  PoolGeometry g{};
  const int64_t d = input.dim();
  g.N = d == 4 ? input.size(0) : 1;
  g.C = input.size(-3), g.H = input.size(-2), g.W = input.size(-1);
  g.kH = kernel_size[0], g.kW = kernel_size[1];
  g.sH = stride[0], g.sW = stride[1];
  g.pH = padding[0], g.pW = padding[1];
  g.dH = dilation[0], g.dW = dilation[1];
  g.OH = pool_output_size(g.H, g.kH, g.pH, g.sH, g.dH, ceil_mode);
  g.OW = pool_output_size(g.W, g.kW, g.pW, g.sW, g.dW, ceil_mode);
  pool2d_shape_check(input, g);
  return g;
}

}  // namespace

PoolGeometry check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, bool ceil_mode) {
  check_int_pairs("max_pool2d", kernel_size, stride, padding);
  TORCH_CHECK(dilation.size() == 2, "max_pool2d: dilation must be either a single int, or a tuple of two ints");
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4,
              "non-empty 3D or 4D (batch mode) tensor expected for input");
  return window_geometry(input, kernel_size, stride, padding, dilation, ceil_mode);
}

PoolGeometry check_avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                              std::optional<int64_t> divisor_override) {
  check_int_pairs("avg_pool2d", kernel_size, stride, padding);
  TORCH_CHECK(!divisor_override || *divisor_override != 0, "divisor must be not zero");
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4,
              "non-empty 3D or 4D (batch mode) tensor expected for input");
  const int64_t one[2] = {1, 1};
  return window_geometry(input, kernel_size, stride, padding, one, ceil_mode);
}

PoolGeometry check_adaptive_pool2d(const at::Tensor& input, at::IntArrayRef output_size,
                                   const char* op_name) {
  const bool is_avg = std::string(op_name) == "adaptive_avg_pool2d";
  if (is_avg) {
    TORCH_CHECK(output_size.size() == 2, "adaptive_avg_pool2d: output_size must be 2");
    TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0,
                "adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 "
                "but received {", output_size[0], ", ", output_size[1], "}");
    TORCH_CHECK(input.dim() == 3 || input.dim() == 4,
                "adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got ", input.sizes());
  } else {
    TORCH_CHECK(input.dim() == 3 || input.dim() == 4,
                "adaptive_max_pool2d(): Expected 3D or 4D tensor, but got: ", input.sizes());
    TORCH_CHECK(output_size.size() == 2,
                "adaptive_max_pool2d(): internal error: output_size.size() must be 2");
  }
  for (int64_t i = input.dim() - 2; i < input.dim(); ++i) {
    TORCH_CHECK(input.size(i) > 0, op_name,
                "(): Expected input to have non-zero size for non-batch dimensions, but input "
                "has sizes ", input.sizes(), " with dimension ", i, " being empty");
  }
  PoolGeometry g{};
  g.N = input.dim() == 4 ? input.size(0) : 1;
  g.C = input.size(-3), g.H = input.size(-2), g.W = input.size(-1);
  g.OH = output_size[0], g.OW = output_size[1];
  if (!is_avg) {
    TORCH_CHECK(g.OH >= 0 && g.OW >= 0, "Trying to create tensor with negative dimension ",
                g.OH < 0 ? g.OH : g.OW, ": ", at::IntArrayRef(pool_output_sizes(input, g.C, g.OH, g.OW)));
  }
  return g;
}

PoolGeometry check_max_unpool2d(const at::Tensor& input, const at::Tensor& indices,
                                at::IntArrayRef output_size) {
  TORCH_CHECK(indices.scalar_type() == at::kLong,
              "elements in indices should be type int64 but got: ", indices.scalar_type());
  TORCH_CHECK(output_size.size() == 2,
              "There should be exactly two elements (height, width) in output_size, but got ",
              output_size.size(), " elements.");
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4,
              "Input to max_unpooling2d should be a 3d or 4d Tensor, but got a tensor with ",
              input.dim(), " dimensions.");
  TORCH_CHECK(input.sizes() == indices.sizes(),
              "Expected shape of indices to be same as that of the input tensor (", input.sizes(),
              ") but got indices tensor with shape: ", indices.sizes());
  for (int64_t i = 1; i < input.dim(); ++i) {
    TORCH_CHECK(input.size(i) > 0,
                "max_unpooling2d_forward_out_cpu(): Expected input to have non-zero size for "
                "non-batch dimensions, but got ", input.sizes(), " with dimension ", i,
                " being empty.");
  }
  PoolGeometry g{};
  g.N = input.dim() == 4 ? input.size(0) : 1;
  g.C = input.size(-3);
  // Unpooling scatters the small (pooled) input into the large output: in pooling terms the
  // output is the "input" plane of size H x W and the input is the pooled OH x OW.
  g.OH = input.size(-2), g.OW = input.size(-1);
  g.H = output_size[0], g.W = output_size[1];
  return g;
}

PoolGeometry pool_backward_geometry(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  TORCH_CHECK(grad_output.dim() == 3 || grad_output.dim() == 4,
              "pooling backward: expected a 3-D or 4-D grad_output, got ", grad_output.sizes());
  TORCH_CHECK(input_size.size() == 2, "pooling backward: input_size must have 2 elements");
  PoolGeometry g{};
  g.N = grad_output.dim() == 4 ? grad_output.size(0) : 1;
  g.C = grad_output.size(-3);
  g.OH = grad_output.size(-2), g.OW = grad_output.size(-1);
  g.H = input_size[0], g.W = input_size[1];
  return g;
}

void check_pooled_size(const char* op, const at::Tensor& grad_output, at::IntArrayRef input_size,
                       at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(grad_output.size(-2 + i) == pool_output_size(input_size[i], kernel_size[i],
                                                              padding[i], stride[i], dilation[i],
                                                              ceil_mode),
                op, ": grad_output of size ", grad_output.sizes(),
                " does not match the pooled size of an input of ", input_size);
  }
}

void check_scatter_args(const char* op, const at::Tensor& values, const at::Tensor& indices) {
  TORCH_CHECK(values.sizes() == indices.sizes() && indices.scalar_type() == at::kLong, op,
              ": values and int64 indices must have the same shape");
}

void check_gather_args(const at::Tensor& input, const at::Tensor& indices) {
  TORCH_CHECK(input.dim() == indices.dim() && (input.dim() == 3 || input.dim() == 4) &&
                  indices.scalar_type() == at::kLong,
              "pool_gather: expected input and int64 indices of the same rank, 3 or 4");
  TORCH_CHECK(input.sizes().slice(0, input.dim() - 2) == indices.sizes().slice(0, input.dim() - 2),
              "pool_gather: input of size ", input.sizes(), " and indices of size ",
              indices.sizes(), " differ outside the last two dimensions");
}

PoolGeometry check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                       at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, bool ceil_mode) {
  check_scatter_args("max_pool2d_backward", grad_output, indices);
  const PoolGeometry g = pool_backward_geometry(grad_output, input_size);
  check_pooled_size("max_pool2d_backward", grad_output, input_size, kernel_size, stride, padding,
                    dilation, ceil_mode);
  return g;
}

void raise_invalid_max_index(int64_t index, int64_t H, int64_t W) {
  TORCH_CHECK(false, "Found an invalid max index: ", index, " (output volumes are of size ", H,
              "x", W, ")");
}

bool pool_prefers_channels_last(const at::Tensor& input) {
  return input.dim() == 4 && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::Tensor as_batched(const at::Tensor& t) { return t.dim() == 3 ? t.unsqueeze(0) : t; }

std::vector<int64_t> pool_output_sizes(const at::Tensor& input, int64_t C, int64_t H, int64_t W) {
  if (input.dim() == 3) return {C, H, W};
  return {input.size(0), C, H, W};
}

at::Tensor empty_pool_tensor(const at::Tensor& input, int64_t C, int64_t H, int64_t W,
                             bool channels_last, at::ScalarType dtype) {
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty(pool_output_sizes(input, C, H, W),
                   input.options().dtype(dtype).memory_format(format));
}

}  // namespace convext
