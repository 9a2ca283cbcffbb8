// CUDA entry points of the convolution ops, as the CPU ones (ops/cpu/conv.cpp): the shared checks
// with torch's wording and the geometry (common/conv_shape.h), results in the memory format torch
// returns, then the kernels of cuda/conv_kernels.h on the current stream of the tensors' device.
//
// torch.use_deterministic_algorithms(True) has nothing to flag here: every kernel sums in a fixed
// order (no atomics; the weight and bias gradients' partial sums are added in order), so each op
// gives bitwise the same result on every run.
//
// float32 follows torch's policy for convolutions: TF32 tensor cores where
// torch.backends.cudnn.allow_tf32 is true (torch's default, as its cuDNN convolutions), exact
// float32 otherwise.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <type_traits>

#include "common/conv_shape.h"
#include "cuda/conv_kernels.h"
#include "ops/cpu/views.h"

namespace convext {
namespace {

// c10's half types hold the same bits as CUDA's.
template <typename T> struct DeviceType { using type = T; };
template <> struct DeviceType<c10::Half> { using type = __half; };
template <> struct DeviceType<c10::BFloat16> { using type = __nv_bfloat16; };
template <typename T> using device_t = typename DeviceType<T>::type;
static_assert(sizeof(c10::Half) == sizeof(__half) && sizeof(c10::BFloat16) == sizeof(__nv_bfloat16));

#define CONVEXT_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// Whether float32 convolutions may use TF32: torch.backends.cudnn.allow_tf32, or, in torch
// versions with per-op precision, the convolutions' own (torch.backends.cudnn.conv.fp32_precision;
// asked without an op, those versions raise where conv and RNN differ). Told apart by
// allowTF32CuDNN's parameter: none, the op's name, or an at::Float32Op (optional or not).
template <typename F> struct Tf32Flag;
template <typename C> struct Tf32Flag<bool (C::*)() const> {
  static bool get(const C& c) { return c.allowTF32CuDNN(); }
};
template <typename C, typename Op> struct Tf32Flag<bool (C::*)(Op) const> {
  static bool get(const C& c) {
    using O = std::decay_t<Op>;
    if constexpr (std::is_same_v<O, std::string>) {
      return c.allowTF32CuDNN("conv");
    } else if constexpr (std::is_enum_v<O>) {
      return c.allowTF32CuDNN(O::CONV);
    } else {
      return c.allowTF32CuDNN(O::value_type::CONV);
    }
  }
};

bool allow_tf32() {
  return Tf32Flag<decltype(&at::Context::allowTF32CuDNN)>::get(at::globalContext());
}

at::Tensor empty_conv_output(const at::Tensor& like, at::IntArrayRef sizes, bool channels_last) {
  return at::empty(sizes, like.options().memory_format(conv_memory_format(channels_last)));
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.const_data_ptr()) : nullptr;
}

// Scratch for a two-stage reduction's partial sums.
at::Tensor workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       std::optional<bool> channels_last) {
  const ConvGeometry g = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const bool cl = channels_last.value_or(conv_prefers_channels_last(input, weight));
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = empty_conv_output(input, {g.N, g.C_out, g.OH, g.OW}, cl);
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  CONVEXT_DISPATCH_FLOATING(input.scalar_type(), "conv2d", [&] {
    using T = device_t<scalar_t>;
    if (out.numel() == 0) return;
    C10_CUDA_CHECK(cuda::conv_forward<T>(g, cview4<T>(input), cview4<T>(weight), data_or_null<T>(b),
                                         view4<T>(out), allow_tf32(), current_stream()));
  });
  return out;
}

at::Tensor conv_transpose2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                 int64_t groups, at::IntArrayRef dilation,
                                 std::optional<bool> channels_last) {
  const ConvGeometry g = check_conv_transpose2d(input, weight, bias, stride, padding,
                                                output_padding, groups, dilation);
  const bool cl = channels_last.value_or(conv_prefers_channels_last(input, weight));
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = empty_conv_output(input, {g.N, g.C_in, g.H, g.W}, cl);
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  CONVEXT_DISPATCH_FLOATING(input.scalar_type(), "conv_transpose2d", [&] {
    using T = device_t<scalar_t>;
    if (out.numel() == 0) return;
    C10_CUDA_CHECK(cuda::conv_input_grad<T>(g, cview4<T>(input), cview4<T>(weight),
                                            data_or_null<T>(b), view4<T>(out), allow_tf32(),
                                            current_stream()));
  });
  return out;
}

at::Tensor conv2d_weight_grad_cuda(const at::Tensor& input, const at::Tensor& grad_output,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups, bool channels_last) {
  const ConvGeometry g = check_conv2d_weight_grad(input, grad_output, kernel_size, stride, padding,
                                                  dilation, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = empty_conv_output(input, {g.C_out, g.C_in_g(), g.KH, g.KW}, channels_last);
  CONVEXT_DISPATCH_FLOATING(input.scalar_type(), "conv2d_weight_grad", [&] {
    using T = device_t<scalar_t>;
    if (out.numel() == 0) return;
    const auto x = cview4<T>(input);
    const auto gy = cview4<T>(grad_output);
    at::Tensor scratch = workspace(input, cuda::conv_weight_grad_workspace<T>(g, x, gy));
    C10_CUDA_CHECK(cuda::conv_weight_grad<T>(g, x, gy, view4<T>(out), scratch.data_ptr(),
                                             allow_tf32(), current_stream()));
  });
  return out;
}

at::Tensor conv_bias_grad_cuda(const at::Tensor& grad_output) {
  check_conv_bias_grad(grad_output);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t N = grad_output.size(0), C = grad_output.size(1);
  const int64_t H = grad_output.size(2), W = grad_output.size(3);
  at::Tensor out = at::empty({C}, grad_output.options());
  CONVEXT_DISPATCH_FLOATING(grad_output.scalar_type(), "conv_bias_grad", [&] {
    using T = device_t<scalar_t>;
    if (out.numel() == 0) return;
    const auto gy = cview4<T>(grad_output);
    at::Tensor scratch = workspace(grad_output, cuda::conv_bias_grad_workspace<T>(gy, N, C, H, W));
    C10_CUDA_CHECK(cuda::conv_bias_grad<T>(gy, N, C, H, W, static_cast<T*>(out.data_ptr()),
                                           scratch.data_ptr(), current_stream()));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(convext, CUDA, m) {
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv_transpose2d", &conv_transpose2d_cuda);
  m.impl("conv2d_weight_grad", &conv2d_weight_grad_cuda);
  m.impl("conv_bias_grad", &conv_bias_grad_cuda);
}

}  // namespace convext
