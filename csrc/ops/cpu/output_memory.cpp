// The CPU ops' outputs take their memory from plain malloc, 63 bytes more than they need so that
// the data can start on a 64-byte line, rather than from torch's CPU allocator (posix_memalign).
//
// Why: glibc serves posix_memalign(64, n) from a free block about 100 bytes larger than n and
// frees the spare end as a small chunk next to the data. When the next small allocation takes
// that chunk and keeps it (as torch's storage object made right after the data did, on
// convext's call path), the output's block, freed, cannot merge back into one as large as the
// next posix_memalign asks for. So a loop of calls alternated its outputs between two blocks,
// and each call wrote memory that was no longer cached: bf16 channels_last dw3x3 144 @56,
// batch 8, forward 0.33 ms against 0.29 with one block. A freed malloc block is an exact fit
// for the next malloc of the same size, whatever was allocated next to it. torch's memory
// profiler still sees these blocks.
#include "ops/cpu/output_memory.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

namespace convext {
namespace {

constexpr uintptr_t kAlignment = 64;

void* aligned_within(void* block) {
  return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(block) + kAlignment - 1) & ~(kAlignment - 1));
}

void free_output(void* block) {
  c10::profiledCPUMemoryReporter().Delete(aligned_within(block));
  std::free(block);
}

struct OutputAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, c10::Device(c10::DeviceType::CPU)};
    void* block = std::malloc(n + kAlignment - 1);
    if (block == nullptr) throw std::bad_alloc();
    void* data = aligned_within(block);
    c10::profiledCPUMemoryReporter().New(data, n);
    return {data, block, &free_output, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

}  // namespace

at::Tensor empty_cpu_output(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format) {
  static OutputAllocator allocator;
  return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype, format);
}

}  // namespace convext
