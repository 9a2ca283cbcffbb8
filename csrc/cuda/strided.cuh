#pragma once
// A 4-D strided view (N, C, H, W) in a kernel's index type I (int32 where every offset fits):
// shared by the CUDA kernel files.
#include "common/geometry.h"

namespace convext::cuda {

template <typename T, typename I>
struct Strided {
  T* data;
  I sN, sC, sH, sW;
  __device__ __forceinline__ T& at(I n, I c, I h, I w) const {
    return data[n * sN + c * sC + h * sH + w * sW];
  }
};

template <typename I, typename T>
Strided<T, I> strided(View4<T> v) {
  return {v.data, I(v.sN), I(v.sC), I(v.sH), I(v.sW)};
}

}  // namespace convext::cuda
