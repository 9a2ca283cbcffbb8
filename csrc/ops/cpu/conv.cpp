// CPU kernels of the convolution ops: argument checks, output allocation in the memory format
// torch returns, then the per-ISA kernels of cpu/conv_kernels.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/conv_shape.h"
#include "cpu/conv_kernels.h"
#include "ops/cpu/output_memory.h"
#include "ops/cpu/views.h"

namespace convext {
namespace {

at::Tensor empty_conv_output(const at::Tensor& like, at::IntArrayRef sizes, bool channels_last) {
  return empty_cpu_output(sizes, like.scalar_type(), conv_memory_format(channels_last));
}

#define CONVEXT_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      std::optional<bool> channels_last) {
  const ConvGeometry g = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const bool cl = channels_last.value_or(conv_prefers_channels_last(input, weight));
  at::Tensor out = empty_conv_output(input, {g.N, g.C_out, g.OH, g.OW}, cl);
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  CONVEXT_DISPATCH_FLOATING(input.scalar_type(), "conv2d", [&] {
    if (out.numel() == 0) return;
    cpu::conv_kernels_for<scalar_t>().forward(g, cview4<scalar_t>(input), cview4<scalar_t>(weight),
                                              b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                                              view4<scalar_t>(out));
  });
  return out;
}

at::Tensor conv_transpose2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef output_padding,
                                int64_t groups, at::IntArrayRef dilation,
                                std::optional<bool> channels_last) {
  const ConvGeometry g = check_conv_transpose2d(input, weight, bias, stride, padding,
                                                output_padding, groups, dilation);
  const bool cl = channels_last.value_or(conv_prefers_channels_last(input, weight));
  at::Tensor out = empty_conv_output(input, {g.N, g.C_in, g.H, g.W}, cl);
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  CONVEXT_DISPATCH_FLOATING(input.scalar_type(), "conv_transpose2d", [&] {
    if (out.numel() == 0) return;
    cpu::conv_kernels_for<scalar_t>().input_grad(
        g, cview4<scalar_t>(input), cview4<scalar_t>(weight),
        b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, view4<scalar_t>(out));
  });
  return out;
}

at::Tensor conv2d_weight_grad_cpu(const at::Tensor& input, const at::Tensor& grad_output,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, bool channels_last) {
  const ConvGeometry g = check_conv2d_weight_grad(input, grad_output, kernel_size, stride, padding,
                                                  dilation, groups);
  at::Tensor out = empty_conv_output(input, {g.C_out, g.C_in / groups, g.KH, g.KW}, channels_last);
  CONVEXT_DISPATCH_FLOATING(input.scalar_type(), "conv2d_weight_grad", [&] {
    if (out.numel() == 0) return;
    cpu::conv_kernels_for<scalar_t>().weight_grad(g, cview4<scalar_t>(input),
                                                  cview4<scalar_t>(grad_output),
                                                  view4<scalar_t>(out));
  });
  return out;
}

// Per channel, the sum of grad_output over images and positions, in double (exact enough for
// every dtype). Positions go in chunks of whole rows fixed by the sizes, each with its own partial
// sums, added in chunk order: the same result for any thread count. On channels_last memory a
// chunk runs along each position's channels (contiguous, vectorised); otherwise along each
// channel's rows with four running sums (one alone is a chain of dependent adds).
at::Tensor conv_bias_grad_cpu(const at::Tensor& grad_output) {
  check_conv_bias_grad(grad_output);
  const int64_t C = grad_output.size(1);
  at::Tensor out = at::empty({C}, grad_output.options());
  CONVEXT_DISPATCH_FLOATING(grad_output.scalar_type(), "conv_bias_grad", [&] {
    const auto go = cview4<scalar_t>(grad_output);
    const int64_t N = grad_output.size(0), H = grad_output.size(2), W = grad_output.size(3);
    const int64_t rows_per_chunk = std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1));
    const int64_t row_chunks = (H + rows_per_chunk - 1) / rows_per_chunk, chunks = N * row_chunks;
    std::vector<double> partial(chunks * C, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t n = chunk / row_chunks, h0 = chunk % row_chunks * rows_per_chunk;
        const int64_t h1 = std::min(H, h0 + rows_per_chunk);
        double* sums = partial.data() + chunk * C;
        if (go.sC == 1) {
          for (int64_t h = h0; h < h1; ++h) {
            for (int64_t w = 0; w < W; ++w) {
              const scalar_t* v = go.data + n * go.sN + h * go.sH + w * go.sW;
              for (int64_t c = 0; c < C; ++c) sums[c] += static_cast<double>(v[c]);
            }
          }
          continue;
        }
        for (int64_t c = 0; c < C; ++c) {
          double s[4] = {0, 0, 0, 0};
          for (int64_t h = h0; h < h1; ++h) {
            const scalar_t* row = go.data + n * go.sN + c * go.sC + h * go.sH;
            int64_t w = 0;
            for (; w + 4 <= W; w += 4) {
              for (int j = 0; j < 4; ++j) s[j] += static_cast<double>(row[(w + j) * go.sW]);
            }
            for (; w < W; ++w) s[0] += static_cast<double>(row[w * go.sW]);
          }
          sums[c] = (s[0] + s[1]) + (s[2] + s[3]);
        }
      }
    });
    scalar_t* dst = out.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * C + c];
      dst[c] = static_cast<scalar_t>(sum);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(convext, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv_transpose2d", &conv_transpose2d_cpu);
  m.impl("conv2d_weight_grad", &conv2d_weight_grad_cpu);
  m.impl("conv_bias_grad", &conv_bias_grad_cpu);
}

}  // namespace convext
