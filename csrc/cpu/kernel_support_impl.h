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
// written, and leave the cache to the inputs. p must be aligned to the ISA's vector, and V a
// whole number of them. After its last one a thread calls stream_fence(), so that they are seen
// before what it stores next. Passes writing kStreamBytes or more use them: at 4 MiB rather than
// 8, the float32 channels_last max pool 3x3 s2 64 forward (6 MiB) took 4% less time, and other
// float32 rows of 4-8 MiB the same.
constexpr int64_t kStreamBytes = 4 * 1024 * 1024;

template <typename V>
inline void store_stream(void* p, const V& v) {
#if defined(__x86_64__) && CONVEXT_VEC_BYTES >= 32
  typedef long long Bits __attribute__((vector_size(CONVEXT_VEC_BYTES), may_alias));
  static_assert(sizeof(V) % sizeof(Bits) == 0);
  for (size_t i = 0; i < sizeof(V) / sizeof(Bits); ++i) {
    Bits bits;
    __builtin_memcpy(&bits, reinterpret_cast<const char*>(&v) + i * sizeof(Bits), sizeof(Bits));
#if CONVEXT_VEC_BYTES == 64
    __builtin_ia32_movntdq512(static_cast<Bits*>(p) + i, bits);
#else
    __builtin_ia32_movntdq256(static_cast<Bits*>(p) + i, bits);
#endif
  }
#else
  __builtin_memcpy(p, &v, sizeof(V));
#endif
}

inline void stream_fence() {
#if defined(__x86_64__)
  __builtin_ia32_sfence();
#endif
}

// Whether p is aligned for store_stream.
inline bool stream_aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % CONVEXT_VEC_BYTES == 0; }

// Copies whole 64-byte lines, both sides 64-byte aligned, with store_stream: for outputs whose
// own vectors do not fall on whole lines (bf16 rows of 144 channels: 288 bytes), computed into
// a small cached buffer first.
inline void stream_lines(void* dst, const void* src, int64_t bytes) {
  struct Line { char b[64]; };
  for (int64_t i = 0; i < bytes; i += 64) {
    Line line;
    __builtin_memcpy(&line, static_cast<const char*>(src) + i, 64);
    store_stream(static_cast<char*>(dst) + i, line);
  }
}

// Passes over rows of work items, each reading a few whole rows of a large input (channels_last:
// thousands of bytes each) a vector of channels at a time across its columns: the hardware
// prefetchers miss that order, and lines came in from memory a few at a time. So each item
// prefetches the rows the next one reads and it does not, a slice per step of its own work.
// Inputs under kPrefetchInputBytes mostly stay in cache, where the prefetches only cost
// (MobileNetV2 dw3x3 960 @7, 1.5 MB, measured slower with them). Rows prefetched into L1 evict
// what the current item reads when there is much of them: `into_l2` keeps them in L2 instead.
constexpr int64_t kPrefetchInputBytes = 2 * 1024 * 1024;

class NextRowsPrefetch {
 public:
  NextRowsPrefetch(int64_t row_bytes, int64_t input_bytes, bool into_l2 = false)
      : row_bytes_(row_bytes), enabled_(input_bytes >= kPrefetchInputBytes), into_l2_(into_l2) {}
  // Starts an item; then add() gives the next item's new rows (kMaxRows at most are kept).
  void start() { count_ = 0, done_ = 0; }
  void add(const void* row) {
    if (enabled_ && count_ < kMaxRows) rows_[count_++] = static_cast<const char*>(row);
  }
  // Prefetches up to part / parts of the rows.
  void upto(int64_t part, int64_t parts) {
    if (count_ == 0) return;
    for (const int64_t to = row_bytes_ * part / parts; done_ < to; done_ += 64) {
      for (int r = 0; r < count_; ++r) {
        if (into_l2_) {
          __builtin_prefetch(rows_[r] + done_, 0, 2);
        } else {
          __builtin_prefetch(rows_[r] + done_);
        }
      }
    }
  }

 private:
  static constexpr int kMaxRows = 16;
  const char* rows_[kMaxRows];
  int count_ = 0;
  int64_t row_bytes_, done_ = 0;
  bool enabled_, into_l2_;
};

// 64-byte aligned scratch memory owned by one chunk of parallel work: from plain malloc, 63
// bytes more, aligned by hand. glibc's aligned_alloc (memalign) leaves a spare chunk beside each
// block that small allocations take, so a large block, freed, no longer fits the next call's
// request, and the calls of a loop took two blocks in turn, each cold when used (the float32
// 3x3 64 NCHW forward's 6.4 MB buffer: 2.56 -> 2.28 ms, in turns with torch). The same happened
// to outputs (ops/cpu/output_memory.cpp).
template <typename A>
class Scratch {
 public:
  explicit Scratch(int64_t n) : block_(std::malloc(round_up(max64(n, 1) * sizeof(A), 64) + 63)) {
    if (block_ == nullptr) throw std::bad_alloc();
    p_ = reinterpret_cast<A*>((reinterpret_cast<uintptr_t>(block_) + 63) & ~static_cast<uintptr_t>(63));
  }
  ~Scratch() { std::free(block_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  A* get() const { return p_; }

 private:
  void* block_;
  A* p_;
};

}  // namespace
}  // namespace convext::cpu::CONVEXT_ISA_NS
