// CUDA entry points of the pooling ops: the checks shared with the CPU (common/pool_shape.h,
// torch's wording), results in the memory format torch returns, and the kernels of
// cuda/pool_kernels.h on the current stream of the tensors' device. Every kernel is
// deterministic (no order-dependent atomics), so torch.use_deterministic_algorithms(True) has
// nothing to flag. As on the CPU, a channels_last input is read as dense channels_last (copied
// if it is not) and any other input with its own strides.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/geometry.h"
#include "common/pool_shape.h"
#include "cuda/pool_kernels.h"

namespace convext {
namespace {

using cuda::PoolAxisParams;
using cuda::PoolParams;

// c10's half types hold the same bits as CUDA's.
template <typename T> struct DeviceType { using type = T; };
template <> struct DeviceType<c10::Half> { using type = __half; };
template <> struct DeviceType<c10::BFloat16> { using type = __nv_bfloat16; };
template <typename T> using device_t = typename DeviceType<T>::type;
static_assert(sizeof(c10::Half) == sizeof(__half));
static_assert(sizeof(c10::BFloat16) == sizeof(__nv_bfloat16));

// The kernels' strided views of a 4-D tensor.
template <typename T>
View4<device_t<T>> view4(const at::Tensor& t) {
  return {static_cast<device_t<T>*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2),
          t.stride(3)};
}

template <typename T>
View4<const device_t<T>> cview4(const at::Tensor& t) {
  return {static_cast<const device_t<T>*>(t.const_data_ptr()), t.stride(0), t.stride(1),
          t.stride(2), t.stride(3)};
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

const auto kChannelsLast = at::MemoryFormat::ChannelsLast;

// The pooled tensor's layout as the kernels take it: dense channels_last, or any strides.
at::Tensor kernel_layout(const at::Tensor& t, bool channels_last) {
  return channels_last ? t.contiguous(kChannelsLast) : as_batched(t);
}

// A kernel must not read one tensor's memory as another device's.
void check_same_device(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(),
              "Expected all tensors to be on the same device, but found at least two devices, ",
              a.device(), " and ", b.device(), "!");
}

// Where the indexed kernels report an index outside the planes: the largest flat (plane,
// position) of one, or -1.
class IndexErrors {
 public:
  explicit IndexErrors(const at::Tensor& like)
      : flag_(at::empty({1}, like.options().dtype(at::kLong))) {
    C10_CUDA_CHECK(cudaMemsetAsync(flag_.data_ptr(), 0xff, sizeof(int64_t), current_stream()));
  }

  int64_t* get() { return flag_.data_ptr<int64_t>(); }

  // torch's error for the last invalid index in plane order, as the CPU reports it. Reading the
  // flag waits for the stream; while a CUDA graph is being captured nothing may wait, so there
  // invalid indices are only skipped.
  void raise_if_any(const at::Tensor& indices4, const PoolGeometry& g) const {
    using c10::cuda::CaptureStatus;
    if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != CaptureStatus::None) return;
    const int64_t position = flag_.item<int64_t>();
    if (position < 0) return;
    const int64_t OW = indices4.size(3), plane = position / (indices4.size(2) * OW);
    const int64_t p = position % (indices4.size(2) * OW);
    raise_invalid_max_index(indices4[plane / g.C][plane % g.C][p / OW][p % OW].item<int64_t>(),
                            g.H, g.W);
  }

 private:
  at::Tensor flag_;
};

PoolParams max_params(const PoolGeometry& g, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  return {PoolAxisParams::max_pool(g.H, g.OH, kernel_size[0], stride[0], padding[0], dilation[0]),
          PoolAxisParams::max_pool(g.W, g.OW, kernel_size[1], stride[1], padding[1], dilation[1]),
          0};
}

PoolParams avg_params(const PoolGeometry& g, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool count_include_pad,
                      std::optional<int64_t> divisor_override) {
  const bool cip = count_include_pad;
  return {PoolAxisParams::avg_pool(g.H, g.OH, kernel_size[0], stride[0], padding[0], cip),
          PoolAxisParams::avg_pool(g.W, g.OW, kernel_size[1], stride[1], padding[1], cip),
          divisor_override.value_or(0)};
}

PoolParams adaptive_params(const PoolGeometry& g) {
  return {PoolAxisParams::adaptive(g.H, g.OH), PoolAxisParams::adaptive(g.W, g.OW), 0};
}

// A forward pooling call: the output (and for max pooling the indices) in torch's memory format,
// and the input in the kernels' layout.
struct Pooled {
  Pooled(const at::Tensor& input, const PoolGeometry& geometry, bool with_indices)
      : g(geometry), channels_last(pool_prefers_channels_last(input)) {
    out = empty_pool_tensor(input, g.C, g.OH, g.OW, channels_last, input.scalar_type());
    if (with_indices) indices = empty_pool_tensor(input, g.C, g.OH, g.OW, channels_last, at::kLong);
    x = kernel_layout(input, channels_last);
  }

  template <typename T>
  void max_pool(const PoolParams& params) const {
    if (out.numel() == 0) return;
    C10_CUDA_CHECK(cuda::max_pool2d(g, params, cview4<T>(x), view4<T>(as_batched(out)),
                                    view4<int64_t>(as_batched(indices)), channels_last,
                                    current_stream()));
  }

  template <typename T>
  void avg_pool(const PoolParams& params) const {
    if (out.numel() == 0) return;
    C10_CUDA_CHECK(cuda::avg_pool2d(g, params, cview4<T>(x), view4<T>(as_batched(out)),
                                    channels_last, current_stream()));
  }

  PoolGeometry g;
  bool channels_last;
  at::Tensor x, out, indices;
};

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_cuda(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const PoolGeometry g = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  const c10::cuda::CUDAGuard guard(input.device());
  const Pooled pooled(input, g, /*with_indices=*/true);
  const PoolParams params = max_params(g, kernel_size, stride, padding, dilation);
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d",
                             [&] { pooled.max_pool<scalar_t>(params); });
  return {pooled.out, pooled.indices};
}

// The kernel always writes indices; inference drops them.
at::Tensor max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(
      max_pool2d_with_indices_cuda(input, kernel_size, stride, padding, dilation, ceil_mode));
}

// Adaptive pooling takes floating types only: the dispatch gives torch's error for the others.
std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cuda(const at::Tensor& input,
                                                            at::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d(input, output_size, "adaptive_max_pool2d");
  const c10::cuda::CUDAGuard guard(input.device());
  const Pooled pooled(input, g, /*with_indices=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "adaptive_max_pool2d",
                                  [&] { pooled.max_pool<scalar_t>(adaptive_params(g)); });
  return {pooled.out, pooled.indices};
}

// torch averages int64 too (with integer division); other integer types are not implemented.
at::Tensor avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                           bool count_include_pad, std::optional<int64_t> divisor_override) {
  const PoolGeometry g = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
                                          divisor_override);
  const c10::cuda::CUDAGuard guard(input.device());
  const Pooled pooled(input, g, /*with_indices=*/false);
  const PoolParams params =
      avg_params(g, kernel_size, stride, padding, count_include_pad, divisor_override);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kLong, input.scalar_type(),
                                  "avg_pool2d", [&] { pooled.avg_pool<scalar_t>(params); });
  return pooled.out;
}

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d(input, output_size, "adaptive_avg_pool2d");
  const c10::cuda::CUDAGuard guard(input.device());
  const Pooled pooled(input, g, /*with_indices=*/false);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "adaptive_avg_pool2d",
                                  [&] { pooled.avg_pool<scalar_t>(adaptive_params(g)); });
  return pooled.out;
}

// Op names for the dtype dispatch's error message (template arguments: it needs constants).
constexpr char kAvgPool2dBackward[] = "avg_pool2d_backward";
constexpr char kAdaptiveAvgPool2dBackward[] = "adaptive_avg_pool2d_backward";

template <const char* name>
at::Tensor avg_pool_backward(const at::Tensor& grad_output, const PoolGeometry& g,
                             const PoolParams& params, bool channels_last) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor gx = empty_pool_tensor(grad_output, g.C, g.H, g.W, channels_last,
                                    grad_output.scalar_type());
  const bool cl = channels_last && grad_output.dim() == 4;
  const at::Tensor gy = kernel_layout(grad_output, cl);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), name, [&] {
    if (gx.numel() == 0) return;
    C10_CUDA_CHECK(cuda::avg_pool2d_backward(g, params, cview4<scalar_t>(gy),
                                             view4<scalar_t>(as_batched(gx)), cl,
                                             current_stream()));
  });
  return gx;
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, bool ceil_mode,
                                    bool count_include_pad,
                                    std::optional<int64_t> divisor_override, bool channels_last) {
  const PoolGeometry g = pool_backward_geometry(grad_output, input_size);
  const int64_t no_dilation[2] = {1, 1};
  check_pooled_size("avg_pool2d_backward", grad_output, input_size, kernel_size, stride, padding,
                    no_dilation, ceil_mode);
  return avg_pool_backward<kAvgPool2dBackward>(
      grad_output, g,
      avg_params(g, kernel_size, stride, padding, count_include_pad, divisor_override),
      channels_last);
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output,
                                             at::IntArrayRef input_size, bool channels_last) {
  const PoolGeometry g = pool_backward_geometry(grad_output, input_size);
  return avg_pool_backward<kAdaptiveAvgPool2dBackward>(grad_output, g, adaptive_params(g),
                                                       channels_last);
}

// A gather over the windows holding each input element (see cuda::max_pool2d_backward).
at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                    at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, bool ceil_mode,
                                    bool channels_last) {
  const PoolGeometry g = check_max_pool2d_backward(grad_output, indices, input_size, kernel_size,
                                                   stride, padding, dilation, ceil_mode);
  check_same_device(grad_output, indices);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor gx = empty_pool_tensor(grad_output, g.C, g.H, g.W, channels_last,
                                    grad_output.scalar_type());
  const bool cl = channels_last && grad_output.dim() == 4;
  const at::Tensor gy = kernel_layout(grad_output, cl), ind = kernel_layout(indices, cl);
  const PoolParams params = max_params(g, kernel_size, stride, padding, dilation);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "max_pool2d_backward", [&] {
    if (gx.numel() == 0) return;
    C10_CUDA_CHECK(cuda::max_pool2d_backward(g, params, cview4<scalar_t>(gy),
                                             cview4<int64_t>(ind), view4<scalar_t>(as_batched(gx)),
                                             cl, current_stream()));
  });
  return gx;
}

// The indexed scatter, added (pool_scatter_add) or assigned (max_unpool2d), into `out`; half
// types add in a float buffer.
template <typename T>
void scatter(const PoolGeometry& g, const at::Tensor& values, const at::Tensor& indices,
             const at::Tensor& out, bool add) {
  if (out.numel() == 0) return;
  using A = cuda::acc_t<device_t<T>>;
  at::Tensor scratch;
  if (add && !std::is_same_v<device_t<T>, A>) {
    scratch = at::empty({g.N * g.C * g.H * g.W},
                        values.options().dtype(c10::CppTypeToScalarType<A>::value));
  }
  const at::Tensor indices4 = as_batched(indices);
  IndexErrors errors(values);
  C10_CUDA_CHECK(cuda::pool_scatter(g, cview4<T>(as_batched(values)), cview4<int64_t>(indices4),
                                    view4<T>(as_batched(out)),
                                    scratch.defined() ? scratch.data_ptr<A>() : nullptr, add,
                                    errors.get(), current_stream()));
  errors.raise_if_any(indices4, g);
}

at::Tensor max_unpool2d_cuda(const at::Tensor& input, const at::Tensor& indices,
                             at::IntArrayRef output_size) {
  const PoolGeometry g = check_max_unpool2d(input, indices, output_size);
  check_same_device(input, indices);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor out = empty_pool_tensor(input, g.C, g.H, g.W, pool_prefers_channels_last(input),
                                           input.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "max_unpool2d",
      [&] { scatter<scalar_t>(g, input, indices, out, /*add=*/false); });
  return out;
}

// values and indices are read with their own strides: the kernel walks each (n, c) plane.
at::Tensor pool_scatter_add_cuda(const at::Tensor& values, const at::Tensor& indices,
                                 at::IntArrayRef size, bool channels_last) {
  check_scatter_args("pool_scatter_add", values, indices);
  const PoolGeometry g = pool_backward_geometry(values, size);
  check_same_device(values, indices);
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor out =
      empty_pool_tensor(values, g.C, g.H, g.W, channels_last, values.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, values.scalar_type(), "pool_scatter_add",
      [&] { scatter<scalar_t>(g, values, indices, out, /*add=*/true); });
  return out;
}

// out = input read at the indices (0 and torch's error for an invalid one).
template <typename T>
void gather(const PoolGeometry& g, const at::Tensor& input, const at::Tensor& indices,
            const at::Tensor& out) {
  if (out.numel() == 0) return;
  const at::Tensor indices4 = as_batched(indices);
  IndexErrors errors(indices);
  C10_CUDA_CHECK(cuda::pool_gather(g, cview4<T>(as_batched(input)), cview4<int64_t>(indices4),
                                   view4<T>(as_batched(out)), errors.get(), current_stream()));
  errors.raise_if_any(indices4, g);
}

at::Tensor pool_gather_cuda(const at::Tensor& input, const at::Tensor& indices) {
  check_gather_args(input, indices);
  const PoolGeometry g = pool_backward_geometry(indices, {input.size(-2), input.size(-1)});
  check_same_device(input, indices);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor out = empty_pool_tensor(indices, g.C, g.OH, g.OW, false, input.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pool_gather",
                                  [&] { gather<scalar_t>(g, input, indices, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(convext, CUDA, m) {
  m.impl("max_pool2d", &max_pool2d_cuda);
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices_cuda);
  m.impl("adaptive_max_pool2d", &adaptive_max_pool2d_cuda);
  m.impl("avg_pool2d", &avg_pool2d_cuda);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cuda);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cuda);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
  m.impl("max_unpool2d", &max_unpool2d_cuda);
  m.impl("pool_scatter_add", &pool_scatter_add_cuda);
  m.impl("pool_gather", &pool_gather_cuda);
}

}  // namespace convext
