#pragma once
// The kernels' plain strided view of a 4-D tensor.
#include <ATen/core/Tensor.h>

#include "common/geometry.h"

namespace convext {

template <typename T>
View4<T> view4(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename T>
View4<const T> cview4(const at::Tensor& t) {
  return {static_cast<const T*>(t.const_data_ptr()), t.stride(0), t.stride(1), t.stride(2),
          t.stride(3)};
}

}  // namespace convext
