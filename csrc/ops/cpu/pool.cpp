// CPU kernels of the pooling ops: argument checks, windows, outputs in the memory format torch
// returns; the forward passes, the average's backward and the channels_last max pool's run the
// per-ISA kernels of cpu/pool_kernels.h. The other backward passes (here) scatter into a per-plane (or per-image)
// accumulator in the accumulation type (float for half types), so each plane is owned by one
// thread and results are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "common/geometry.h"
#include "common/pool_shape.h"
#include "cpu/pool_kernels.h"
#include "ops/cpu/output_memory.h"
#include "ops/cpu/views.h"

namespace convext {
namespace {

template <typename T>
using acc_t = at::opmath_type<T>;

// The windows along one axis, per output index: input range [lo, hi) in steps of `step`, and the
// window size `count` that an average divides by (see each constructor).
struct Axis {
  std::vector<int64_t> lo, hi, count;
  int64_t step = 1;

  // Max pooling: dilated windows clipped to the input (torch's start/end rule).
  static Axis max_pool(int64_t out, int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
    Axis a;
    a.step = d;
    for (int64_t o = 0; o < out; ++o) {
      int64_t start = o * s - p;
      const int64_t end = std::min(start + (k - 1) * d + 1, in);
      while (start < 0) start += d;
      a.lo.push_back(start), a.hi.push_back(end), a.count.push_back(0);
    }
    return a;
  }

  // Average pooling: `count` includes padding but not the ceil-mode overhang past it.
  static Axis avg_pool(int64_t out, int64_t in, int64_t k, int64_t s, int64_t p,
                       bool count_include_pad) {
    Axis a;
    for (int64_t o = 0; o < out; ++o) {
      const int64_t start = o * s - p, end = std::min(start + k, in + p);
      const int64_t lo = std::max<int64_t>(start, 0), hi = std::min(end, in);
      a.lo.push_back(lo), a.hi.push_back(hi);
      a.count.push_back(count_include_pad ? end - start : std::max<int64_t>(hi - lo, 0));
    }
    return a;
  }

  // Adaptive pooling: bin o spans [floor(o*in/out), ceil((o+1)*in/out)).
  static Axis adaptive(int64_t out, int64_t in) {
    Axis a;
    for (int64_t o = 0; o < out; ++o) {
      const int64_t lo = (o * in) / out, hi = ((o + 1) * in + out - 1) / out;
      a.lo.push_back(lo), a.hi.push_back(hi), a.count.push_back(hi - lo);
    }
    return a;
  }


  PoolAxis view() const { return {lo.data(), hi.data(), count.data(), step}; }
};

struct Windows {
  Axis h, w;
  PoolWindows view() const { return {h.view(), w.view()}; }
};

// An output of `input`'s rank (3-D or 4-D) in the given format, and its 4-D view.
std::pair<at::Tensor, at::Tensor> empty_pool_output(const at::Tensor& input, int64_t C, int64_t H,
                                                    int64_t W, bool channels_last,
                                                    at::ScalarType dtype) {
  at::Tensor out = empty_cpu_output(pool_output_sizes(input, C, H, W), dtype,
                                    channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  return {out, as_batched(out)};
}

// --- backward kernels ----------------------------------------------------------------------

// Per-image accumulator of a channels_last backward: the output image itself when T is its own
// accumulation type, else a buffer that finish() converts into it.
template <typename T>
class ImageAccumulator {
 public:
  using A = acc_t<T>;
  explicit ImageAccumulator(int64_t size) : size_(size) {
    if constexpr (!std::is_same_v<T, A>) buffer_.resize(size);
  }
  // Not zeroed: the caller zeroes it as it goes.
  A* start(T* image) {
    image_ = image;
    A* acc;
    if constexpr (std::is_same_v<T, A>) {
      acc = image;
    } else {
      acc = buffer_.data();
    }
    return acc;
  }
  void finish() {
    if constexpr (!std::is_same_v<T, A>) {
      for (int64_t i = 0; i < size_; ++i) image_[i] = static_cast<T>(buffer_[i]);
    }
  }

 private:
  int64_t size_;
  std::vector<A> buffer_;
  T* image_ = nullptr;
};

// Global average pooling's backward: every element of a plane gets the plane's grad / (H*W) (as
// torch writes them: a mean's backward, -0 stays -0). gx
// is dense, channels_last or contiguous (empty_pool_output): a copy of the channels' values per
// position, or a fill per plane (16-bit types as their bits, so that it vectorises: element by
// element through the strides, float 8 x 2048 x 7 x 7 took 0.2 ms with its forward, 0.13 so).
template <typename T>
void global_avg_pool_backward(View4<const T> gy, View4<T> gx, const PoolGeometry& g) {
  using A = acc_t<T>;
  const int64_t HW = g.H * g.W;
  const bool channels_last = gx.sC == 1 && gx.sW == g.C;
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> v(g.C);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t c = 0; c < g.C; ++c) v[c] = static_cast<T>(static_cast<A>(gy.data[n * gy.sN + c * gy.sC]) / A(HW));
      T* out = gx.data + n * gx.sN;
      if (channels_last) {
        for (int64_t p = 0; p < HW; ++p) std::copy(v.begin(), v.end(), out + p * g.C);
        continue;
      }
      for (int64_t c = 0; c < g.C; ++c) {
        if constexpr (sizeof(T) == 2) {
          uint16_t bits;
          std::memcpy(&bits, &v[c], 2);
          std::fill_n(reinterpret_cast<uint16_t*>(out + c * gx.sC), HW, bits);
        } else {
          std::fill_n(out + c * gx.sC, HW, v[c]);
        }
      }
    }
  });
}

// --- indexed scatter and gather (max pooling's backward, unpooling) --------------------------

// Large planes (H x W) and small ones (OH x OW) of the same N x C; indices index the large plane.
// An index out of range is reported after the loop, the last one in plane order (as torch's
// sequential loop would), so the message does not depend on the threads.
class IndexErrors {
 public:
  explicit IndexErrors(const PoolGeometry& g) : last_(g.N * g.C), seen_(g.N * g.C, 0), g_(g) {}

  bool ok(int64_t plane, int64_t index) {
    if (index >= 0 && index < g_.H * g_.W) return true;
    last_[plane] = index, seen_[plane] = 1;
    return false;
  }

  void raise_if_any() const {
    for (int64_t plane = static_cast<int64_t>(seen_.size()) - 1; plane >= 0; --plane) {
      if (seen_[plane]) raise_invalid_max_index(last_[plane], g_.H, g_.W);
    }
  }

 private:
  std::vector<int64_t> last_;
  std::vector<char> seen_;  // one byte per plane: each written by the plane's one thread
  const PoolGeometry& g_;
};

// Large plane = small values scattered to their indices: added (add) or assigned, the last write
// winning, as torch's unpooling does. Each plane is accumulated in a buffer (a few dozen KB, in
// cache) and then stored whole.
template <typename T>
void scatter_planes(View4<const T> small, View4<const int64_t> ind, View4<T> large,
                    const PoolGeometry& g, bool add) {
  using A = acc_t<T>;
  IndexErrors errors(g);
  const bool dense_planes = large.sW == 1 && large.sH == g.W, unit_rows = small.sW == 1 && ind.sW == 1;
  const auto store_accumulated = cpu::pool_kernels_for<T>().store_accumulated;
  const int64_t output_bytes = g.N * g.C * g.H * g.W * static_cast<int64_t>(sizeof(T));
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> buffer(g.H * g.W);
    A* acc = buffer.data();
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      std::fill(acc, acc + g.H * g.W, A(0));
      const T* src = small.data + n * small.sN + c * small.sC;
      const int64_t* idx = ind.data + n * ind.sN + c * ind.sC;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const int64_t* idx_row = idx + oh * ind.sH;
        const T* src_row = src + oh * small.sH;
        // Rows whose indices are all in range go through a loop free of branches.
        bool valid = true;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          valid &= static_cast<uint64_t>(idx_row[ow * ind.sW]) < static_cast<uint64_t>(g.H * g.W);
        }
        if (valid && unit_rows) {  // strides as constants: float max pool 3x3 s2 64 @112 grads 1.95 -> 1.7 ms
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const A v = static_cast<A>(src_row[ow]);
            acc[idx_row[ow]] = add ? acc[idx_row[ow]] + v : v;
          }
          continue;
        }
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t i = idx_row[ow * ind.sW];
          if (!valid && !errors.ok(plane, i)) continue;
          const A v = static_cast<A>(src_row[ow * small.sW]);
          acc[i] = add ? acc[i] + v : v;
        }
      }
      T* dst = large.data + n * large.sN + c * large.sC;
      if (dense_planes) {
        store_accumulated(dst, acc, g.H * g.W, output_bytes);
        continue;
      }
      for (int64_t h = 0; h < g.H; ++h) {
        for (int64_t w = 0; w < g.W; ++w) dst[h * large.sH + w * large.sW] = static_cast<T>(acc[h * g.W + w]);
      }
    }
  });
  errors.raise_if_any();
}

// scatter_planes for dense channels_last small, ind and large: one image per work item. An
// image's rows are zeroed just before the first index into them: a max pool's indices come in
// row order, give or take a window's height, so the zeros and the sums meet in cache and each
// line of the image goes to memory once (zeroed whole first, a 3.2 MB image went there and back).
template <typename T>
void scatter_channels_last(View4<const T> small, View4<const int64_t> ind, View4<T> large,
                           const PoolGeometry& g, bool add) {
  using A = acc_t<T>;
  IndexErrors errors(g);
  const int64_t HW = g.H * g.W;
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    ImageAccumulator<T> image(HW * g.C);
    for (int64_t n = begin; n < end; ++n) {
      A* acc = image.start(large.data + n * large.sN);
      int64_t zeroed = 0;  // positions [0, zeroed) of acc hold zeros or sums
      const auto zero_until = [&](int64_t upto) {
        std::fill(acc + zeroed * g.C, acc + upto * g.C, A(0));
        zeroed = upto;
      };
      const T* src = small.data + n * small.sN;
      const int64_t* idx = ind.data + n * ind.sN;
      for (int64_t p = 0; p < g.OH * g.OW; ++p) {
        for (int64_t c = 0; c < g.C; ++c) {
          const int64_t i = idx[p * g.C + c];
          if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(zeroed)) {  // out of range, or a new row
            if (!errors.ok(n * g.C + c, i)) continue;
            zero_until((i / g.W + 1) * g.W);
          }
          const A v = static_cast<A>(src[p * g.C + c]);
          A& dst = acc[i * g.C + c];
          dst = add ? dst + v : v;
        }
      }
      zero_until(HW);
      image.finish();
    }
  });
  errors.raise_if_any();
}

template <typename T>
void gather_planes(View4<const T> large, View4<const int64_t> ind, View4<T> small,
                   const PoolGeometry& g) {
  IndexErrors errors(g);
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      const T* src = large.data + n * large.sN + c * large.sC;
      const int64_t* idx = ind.data + n * ind.sN + c * ind.sC;
      T* dst = small.data + n * small.sN + c * small.sC;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t i = idx[oh * ind.sH + ow * ind.sW];
          dst[oh * small.sH + ow * small.sW] =
              errors.ok(plane, i) ? src[(i / g.W) * large.sH + (i % g.W) * large.sW] : T(0);
        }
      }
    }
  });
  errors.raise_if_any();
}

// --- op entry points ------------------------------------------------------------------------

// Op names for the dtype dispatch's error message (template arguments: it needs constants).
constexpr char kMaxPool2d[] = "max_pool2d";
constexpr char kAdaptiveMaxPool2d[] = "adaptive_max_pool2d";
constexpr char kAvgPool2d[] = "avg_pool2d";
constexpr char kAdaptiveAvgPool2d[] = "adaptive_avg_pool2d";
constexpr char kAvgPool2dBackward[] = "avg_pool2d_backward";
constexpr char kAdaptiveAvgPool2dBackward[] = "adaptive_avg_pool2d_backward";

// Adaptive pooling takes floating types only (the shared kernels take more).
void check_floating(const at::Tensor& input, const char* name) {
  TORCH_CHECK_NOT_IMPLEMENTED(at::isFloatingType(input.scalar_type()), "\"", name,
                              "\" not implemented for '", c10::toString(input.scalar_type()), "'");
}

// Without indices (inference's max_pool2d), `indices` comes back undefined.
template <const char* name>
std::tuple<at::Tensor, at::Tensor> max_pool_impl(const at::Tensor& input, const PoolGeometry& g,
                                                 const Windows& win, bool with_indices = true) {
  const bool cl = pool_prefers_channels_last(input);
  auto [out, out4] = empty_pool_output(input, g.C, g.OH, g.OW, cl, input.scalar_type());
  at::Tensor ind, ind4;
  if (with_indices) std::tie(ind, ind4) = empty_pool_output(input, g.C, g.OH, g.OW, cl, at::kLong);
  const at::Tensor x4 = cl ? input.contiguous(at::MemoryFormat::ChannelsLast) : as_batched(input);
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), name, [&] {
    if (out.numel() == 0) return;
    const View4<int64_t> ind_view = with_indices ? view4<int64_t>(ind4) : View4<int64_t>{};
    cpu::pool_kernels_for<scalar_t>().max_pool(g, win.view(), cview4<scalar_t>(x4),
                                               view4<scalar_t>(out4), ind_view, cl);
  });
  return {out, ind};
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu_impl(const at::Tensor& input,
                                                       at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride,
                                                       at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode,
                                                       bool with_indices) {
  const PoolGeometry g = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  const Windows win{Axis::max_pool(g.OH, g.H, g.kH, g.sH, g.pH, g.dH),
                    Axis::max_pool(g.OW, g.W, g.kW, g.sW, g.pW, g.dW)};
  return max_pool_impl<kMaxPool2d>(input, g, win, with_indices);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices_cpu(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  return max_pool2d_cpu_impl(input, kernel_size, stride, padding, dilation, ceil_mode, true);
}

at::Tensor max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool ceil_mode) {
  return std::get<0>(
      max_pool2d_cpu_impl(input, kernel_size, stride, padding, dilation, ceil_mode, false));
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cpu(const at::Tensor& input,
                                                           at::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d(input, output_size, kAdaptiveMaxPool2d);
  check_floating(input, kAdaptiveMaxPool2d);
  return max_pool_impl<kAdaptiveMaxPool2d>(input, g,
                                           {Axis::adaptive(g.OH, g.H), Axis::adaptive(g.OW, g.W)});
}

#define CONVEXT_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// adaptive_avg_pool2d to 1 x 1 is a mean, as in torch: summed in its own order, its grads written
// (-0 stays -0). avg_pool2d over a whole plane keeps the window kernels, as torch sums each window
// in order from zero and adds the grads into zeros (-0 becomes +0): as a mean, its sums differed
// from torch's in the last bit and its -0 grads stayed -0.
template <const char* name>
bool is_global_mean(const PoolGeometry& g) {
  return (name == kAdaptiveAvgPool2d || name == kAdaptiveAvgPool2dBackward) && g.OH == 1 && g.OW == 1;
}

// How `name` divides its window sums (and grads): avg_pool2d once, by `divisor` (0: the window's
// count); adaptive_avg_pool2d as torch, by each window's height and then its width, but where
// torch's channels_last kernel holds channels in whole 256-bit vectors, at once by their product.
template <const char* name, typename T>
PoolDivisor pool_divisor(int64_t divisor, bool channels_last, int64_t C) {
  if (name == kAvgPool2d || name == kAvgPool2dBackward) return {divisor, std::numeric_limits<int64_t>::max()};
  constexpr int64_t torch_lanes = 32 / sizeof(T);
  return {0, channels_last ? C - C % torch_lanes : 0};
}

// divisor: 0 for the windows' own counts.
template <const char* name>
at::Tensor avg_pool_impl(const at::Tensor& input, const PoolGeometry& g, const Windows& win,
                         int64_t divisor) {
  const bool cl = pool_prefers_channels_last(input);
  auto [out, out4] = empty_pool_output(input, g.C, g.OH, g.OW, cl, input.scalar_type());
  const at::Tensor x4 = cl ? input.contiguous(at::MemoryFormat::ChannelsLast) : as_batched(input);
  // torch averages int64 too (with integer division); other integer types are not implemented.
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kLong, input.scalar_type(), name, [&] {
    if (out.numel() == 0) return;
    const auto& kernels = cpu::pool_kernels_for<scalar_t>();
    if (is_global_mean<name>(g)) {
      kernels.global_avg_pool(g, cview4<scalar_t>(x4), view4<scalar_t>(out4), cl);
    } else {
      kernels.avg_pool(g, win.view(), cview4<scalar_t>(x4), view4<scalar_t>(out4),
                       pool_divisor<name, scalar_t>(divisor, cl, g.C), cl);
    }
  });
  return out;
}

at::Tensor avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                          bool count_include_pad, std::optional<int64_t> divisor_override) {
  const PoolGeometry g = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
                                          divisor_override);
  const Windows win{Axis::avg_pool(g.OH, g.H, g.kH, g.sH, g.pH, count_include_pad),
                    Axis::avg_pool(g.OW, g.W, g.kW, g.sW, g.pW, count_include_pad)};
  return avg_pool_impl<kAvgPool2d>(input, g, win, divisor_override.value_or(0));
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  const PoolGeometry g = check_adaptive_pool2d(input, output_size, kAdaptiveAvgPool2d);
  check_floating(input, kAdaptiveAvgPool2d);
  return avg_pool_impl<kAdaptiveAvgPool2d>(
      input, g, {Axis::adaptive(g.OH, g.H), Axis::adaptive(g.OW, g.W)}, 0);
}

template <const char* name>
at::Tensor avg_pool_backward_impl(const at::Tensor& grad_output, const PoolGeometry& g,
                                  const Windows& win, int64_t divisor, bool channels_last) {
  auto [gx, gx4] = empty_pool_output(grad_output, g.C, g.H, g.W, channels_last,
                                     grad_output.scalar_type());
  const bool cl = channels_last && grad_output.dim() == 4;
  const at::Tensor gy4 = cl ? grad_output.contiguous(at::MemoryFormat::ChannelsLast)
                            : as_batched(grad_output);
  // torch divides as its kernel for gy's memory format does, whatever gx's.
  const bool gy_channels_last = pool_prefers_channels_last(grad_output);
  CONVEXT_DISPATCH_FLOATING(grad_output.scalar_type(), name, [&] {
    if (gx.numel() == 0) return;
    if (is_global_mean<name>(g)) {
      global_avg_pool_backward(cview4<scalar_t>(gy4), view4<scalar_t>(gx4), g);
    } else {
      cpu::pool_kernels_for<scalar_t>().avg_pool_backward(g, win.view(), cview4<scalar_t>(gy4), view4<scalar_t>(gx4),
                                                          pool_divisor<name, scalar_t>(divisor, gy_channels_last, g.C), cl);
    }
  });
  return gx;
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override, bool channels_last) {
  PoolGeometry g = pool_backward_geometry(grad_output, input_size);
  check_pooled_size("avg_pool2d_backward", grad_output, input_size, kernel_size, stride, padding,
                    {1, 1}, ceil_mode);
  g.kH = kernel_size[0], g.kW = kernel_size[1], g.sH = stride[0], g.sW = stride[1];
  g.pH = padding[0], g.pW = padding[1], g.dH = g.dW = 1;
  const Windows win{Axis::avg_pool(g.OH, g.H, kernel_size[0], stride[0], padding[0], count_include_pad),
                    Axis::avg_pool(g.OW, g.W, kernel_size[1], stride[1], padding[1], count_include_pad)};
  return avg_pool_backward_impl<kAvgPool2dBackward>(grad_output, g, win,
                                                    divisor_override.value_or(0), channels_last);
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output,
                                            at::IntArrayRef input_size, bool channels_last) {
  const PoolGeometry g = pool_backward_geometry(grad_output, input_size);
  return avg_pool_backward_impl<kAdaptiveAvgPool2dBackward>(
      grad_output, g, {Axis::adaptive(g.OH, g.H), Axis::adaptive(g.OW, g.W)}, 0, channels_last);
}

at::Tensor max_unpool2d_cpu(const at::Tensor& input, const at::Tensor& indices,
                            at::IntArrayRef output_size) {
  const PoolGeometry g = check_max_unpool2d(input, indices, output_size);
  auto [out, out4] = empty_pool_output(input, g.C, g.H, g.W, pool_prefers_channels_last(input),
                                       input.scalar_type());
  CONVEXT_DISPATCH_FLOATING(input.scalar_type(), "max_unpool2d", [&] {
    if (out.numel() == 0) return;
    scatter_planes(cview4<scalar_t>(as_batched(input)), cview4<int64_t>(as_batched(indices)),
                   view4<scalar_t>(out4), g, /*add=*/false);
  });
  return out;
}

at::Tensor pool_scatter_add_cpu(const at::Tensor& values, const at::Tensor& indices,
                                at::IntArrayRef size, bool channels_last) {
  check_scatter_args("pool_scatter_add", values, indices);
  const PoolGeometry g = pool_backward_geometry(values, size);
  auto [out, out4] = empty_pool_output(values, g.C, g.H, g.W, channels_last, values.scalar_type());
  const bool cl = channels_last && values.dim() == 4;
  CONVEXT_DISPATCH_FLOATING(values.scalar_type(), "pool_scatter_add", [&] {
    if (out.numel() == 0) return;
    if (cl) {
      const auto fmt = at::MemoryFormat::ChannelsLast;
      scatter_channels_last(cview4<scalar_t>(values.contiguous(fmt)),
                            cview4<int64_t>(indices.contiguous(fmt)), view4<scalar_t>(out4), g,
                            /*add=*/true);
    } else {
      scatter_planes(cview4<scalar_t>(as_batched(values)), cview4<int64_t>(as_batched(indices)),
                     view4<scalar_t>(out4), g, /*add=*/true);
    }
  });
  return out;
}

// max_pool2d's input grad from its own indices: gathered on dense channels_last float, double and
// bfloat16 tensors (see the kernel), else the grads added at their indices as pool_scatter_add does.
at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, bool ceil_mode, bool channels_last) {
  PoolGeometry g = check_max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride,
                                             padding, dilation, ceil_mode);
  const auto type = grad_output.scalar_type();
  const bool gathered = type == at::kFloat || type == at::kDouble || type == at::kBFloat16;
  if (!channels_last || grad_output.dim() != 4 || !gathered ||
      g.H * g.W > INT32_MAX) {  // the float kernel compares indices as int32
    return pool_scatter_add_cpu(grad_output, indices, input_size, channels_last);
  }
  g.kH = kernel_size[0], g.kW = kernel_size[1], g.sH = stride[0], g.sW = stride[1];
  g.pH = padding[0], g.pW = padding[1], g.dH = dilation[0], g.dW = dilation[1];
  auto [gx, gx4] = empty_pool_output(grad_output, g.C, g.H, g.W, true, type);
  const auto fmt = at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, type, "max_pool2d_backward", [&] {
    if (gx.numel() == 0) return;
    cpu::pool_kernels_for<scalar_t>().max_pool_backward_channels_last(
        g, cview4<scalar_t>(grad_output.contiguous(fmt)), cview4<int64_t>(indices.contiguous(fmt)),
        view4<scalar_t>(gx4));
  });
  return gx;
}

at::Tensor pool_gather_cpu(const at::Tensor& input, const at::Tensor& indices) {
  check_gather_args(input, indices);
  const PoolGeometry g = pool_backward_geometry(indices, {input.size(-2), input.size(-1)});
  auto [out, out4] = empty_pool_output(indices, g.C, g.OH, g.OW, false, input.scalar_type());
  CONVEXT_DISPATCH_FLOATING(input.scalar_type(), "pool_gather", [&] {
    if (out.numel() == 0) return;
    gather_planes(cview4<scalar_t>(as_batched(input)), cview4<int64_t>(as_batched(indices)),
                  view4<scalar_t>(out4), g);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(convext, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices_cpu);
  m.impl("adaptive_max_pool2d", &adaptive_max_pool2d_cpu);
  m.impl("avg_pool2d", &avg_pool2d_cpu);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cpu);
  m.impl("max_unpool2d", &max_unpool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("pool_scatter_add", &pool_scatter_add_cpu);
  m.impl("pool_gather", &pool_gather_cpu);
}

}  // namespace convext
