#pragma once
#include <cstdint>

namespace convext {

// Plain-data descriptions of the ops' geometry: the CPU kernels see no ATen types.

// A 2-D convolution in the terms of its forward pass: `input` (N, C_in, H, W) is convolved with
// a weight (C_out, C_in / groups, KH, KW) into `output` (N, C_out, OH, OW). A transposed
// convolution is this convolution's input gradient, so it is described by the same geometry with
// the roles of input and output swapped.
struct ConvGeometry {
  int64_t N, C_in, C_out, groups;
  int64_t H, W, OH, OW, KH, KW;
  int64_t sH, sW, pH, pW, dH, dW;

  int64_t C_in_g() const { return C_in / groups; }
  int64_t C_out_g() const { return C_out / groups; }
  // Length of one im2col column: the reduction length of the forward GEMM.
  int64_t patch() const { return C_in_g() * KH * KW; }
};

// Sizes of a pooling op: input planes H x W, output planes OH x OW, N x C of each, and the window
// parameters (zero for adaptive pooling, whose windows are bins).
struct PoolGeometry {
  int64_t N, C, H, W, OH, OW;
  int64_t kH, kW, sH, sW, pH, pW, dH, dW;
};

// Pooling windows along one axis, per output index o: input range [lo[o], hi[o]) in steps of
// `step`, and the size `count[o]` an average divides by.
struct PoolAxis {
  const int64_t* lo;
  const int64_t* hi;
  const int64_t* count;
  int64_t step;
};

struct PoolWindows {
  PoolAxis h, w;
};

// What an average divides each window's sum (and each output's grad) by: `divisor` (avg_pool2d's
// divisor_override) or, where that is 0, the window's count; but channels from `twice_from` on
// divide by the window's height and then by its width, as torch's adaptive_avg_pool2d does
// (sum / kh / kw, in each rounding step).
struct PoolDivisor {
  int64_t divisor;
  int64_t twice_from;
};

// A strided 4-D view (N, C, H, W) of a tensor in any memory format.
template <typename T>
struct View4 {
  T* data;
  int64_t sN, sC, sH, sW;
};

}  // namespace convext
