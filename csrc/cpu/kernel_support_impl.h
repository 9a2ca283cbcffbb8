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

// Stores of whole vectors that go around the caches (non-temporal, write-combined into whole
// lines): for outputs too large to stay cached they save reading each line in before it is
// written, and leave the cache to the inputs. p must be aligned to the vector. After the last
// one a thread calls stream_fence(), so that they are seen before what it stores next.
constexpr int64_t kStreamBytes = 8 * 1024 * 1024;  // outputs this large go around the caches

template <typename V>
inline void store_stream(void* p, const V& v) {
#if defined(__x86_64__) && CONVEXT_VEC_BYTES >= 32
  using E = std::remove_cv_t<std::remove_reference_t<decltype(v[0])>>;
  if constexpr (sizeof(V) == 64 && std::is_same_v<E, float>) {
    return __builtin_ia32_movntps512(static_cast<float*>(p), v);
  } else if constexpr (sizeof(V) == 64 && std::is_same_v<E, double>) {
    return __builtin_ia32_movntpd512(static_cast<double*>(p), v);
  } else if constexpr (sizeof(V) == 32 && std::is_same_v<E, float>) {
    return __builtin_ia32_movntps256(static_cast<float*>(p), v);
  } else if constexpr (sizeof(V) == 32 && std::is_same_v<E, double>) {
    return __builtin_ia32_movntpd256(static_cast<double*>(p), v);
  }
#endif
  __builtin_memcpy(p, &v, sizeof(V));
}

inline void stream_fence() {
#if defined(__x86_64__)
  __builtin_ia32_sfence();
#endif
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
