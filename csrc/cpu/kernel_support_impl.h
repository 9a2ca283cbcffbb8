// Helpers of the per-ISA kernels. Included only by kernels_<isa>.cpp, after its
// `#pragma GCC target`, with CONVEXT_ISA_NS (the namespace), CONVEXT_VEC_BYTES (SIMD register
// width) and CONVEXT_MR (microkernel rows) defined. The *_impl.h files include no header: every
// header is parsed before the pragma, so inline code from other libraries stays portable, and
// everything they define lives in the ISA's own namespace, so the per-ISA copies never meet at
// link time (hence no std:: containers or algorithms here either).

namespace convext::cpu::CONVEXT_ISA_NS {
namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
inline bool inside(int64_t i, int64_t n) { return static_cast<uint64_t>(i) < static_cast<uint64_t>(n); }

template <typename A>
void fill_zero(A* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = A(0);
}

// 64-byte aligned scratch memory owned by one chunk of parallel work.
template <typename A>
class Scratch {
 public:
  explicit Scratch(int64_t n)
      : p_(static_cast<A*>(std::aligned_alloc(64, round_up(max64(n, 1) * sizeof(A), 64)))) {
    if (p_ == nullptr) throw std::bad_alloc();
  }
  ~Scratch() { std::free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  A* get() const { return p_; }

 private:
  A* p_;
};

}  // namespace
}  // namespace convext::cpu::CONVEXT_ISA_NS
