#pragma once
// Memory for the CPU ops' outputs.
#include <ATen/core/Tensor.h>

namespace convext {

// An uninitialised CPU tensor, as at::empty makes, whose memory comes from plain malloc, 64-byte
// aligned (output_memory.cpp says why).
at::Tensor empty_cpu_output(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format);

}  // namespace convext
