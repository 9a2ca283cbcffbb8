// The CPU convolution kernels, compiled once per SIMD instruction set.
//
// Included only by kernels_<isa>.cpp (see there), after kernel_support_impl.h.
//
// Method: each pass is a GEMM over im2col panels built on the fly, one tile of output positions
// at a time (never a whole im2col buffer), fed to a register-blocked MR x NR microkernel written
// with GCC vector extensions, which the pragma lowers to that ISA's registers.
//   forward:     y[oc, p]  = sum_k  w[oc, k] * patch[k, p]     (k = input channel, kernel row, col)
//   input_grad:  col[k, p] = sum_oc w[oc, k] * gy[oc, p], then col is scattered into gx
//   weight_grad: gw[oc, k] = sum_p  gy[oc, p] * patch[k, p]

namespace convext::cpu::CONVEXT_ISA_NS {
namespace {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

constexpr int kMR = CONVEXT_MR;
template <typename A> constexpr int kVL = CONVEXT_VEC_BYTES / sizeof(A);
template <typename A> constexpr int kNR = 2 * kVL<A>;  // microkernel columns: two registers

// Bytes of packed operands a tile aims for: about half of a core's L2.
constexpr int64_t kTileBytes = 256 * 1024;
// Reduction block of the blocked GEMMs: a KC x NR panel of 32-bit values (32 KB) fits L1.
constexpr int64_t kKC = 256;

// Tiles of at most t (a multiple of `align`) along a dimension of `total`, evened out: their
// count rounded up so that `outer_items` x tiles work items make whole rounds of the threads.
// (13 tiles of 128 positions on 2 threads, the last 32 long, kept one thread busy a tile longer
// than the other: 1x1 1024->256 @14, N = 8.)
int64_t even_tile_length(int64_t t, int64_t total, int64_t align, int64_t outer_items) {
  const int64_t threads = at::get_num_threads();
  int64_t tiles = ceil_div(total, t);
  while (outer_items * tiles % threads != 0 && tiles < ceil_div(total, align)) ++tiles;
  return round_up(ceil_div(total, tiles), align);
}

// Length of a tile along a dimension of `total`, a multiple of `align`: as long as kTileBytes
// allows, then halved until `outer_items` x tiles gives every thread several work items, then
// evened out.
int64_t tile_length(int64_t bytes_per_unit, int64_t total, int64_t align, int64_t outer_items) {
  int64_t t = max64(align, kTileBytes / max64(bytes_per_unit, 1) / align * align);
  t = min64(t, round_up(max64(total, 1), align));
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  while (t > align && outer_items * ceil_div(total, t) < want) t = round_up(t / 2, align);
  return even_tile_length(t, total, align, outer_items);
}

template <typename A>
struct Vec {
  typedef A type __attribute__((vector_size(CONVEXT_VEC_BYTES), may_alias));
};

// 8 lanes of A (the grouped kernels' 8 channels), and a vector of indices for shuffling V.
template <typename A>
struct Vec8 {
  typedef A type __attribute__((vector_size(8 * sizeof(A)), may_alias));
};
template <typename V> struct IndexVec;
template <> struct IndexVec<Vec8<float>::type> {
  typedef int32_t type __attribute__((vector_size(32)));
};
template <> struct IndexVec<Vec8<double>::type> {
  typedef int64_t type __attribute__((vector_size(64)));
};
template <> struct IndexVec<Vec8<uint16_t>::type> {
  typedef int16_t type __attribute__((vector_size(16)));
};

// The type SIMD code moves values of T as: T, or the bits of the 16-bit float types (copies and
// transposes only).
template <typename T> using Lanes = std::conditional_t<std::is_floating_point_v<T>, T, uint16_t>;

// An unaligned load, returned by value: a memcpy into an array element keeps the array in
// memory, so every use reloads it from the stack.
template <typename V, typename A>
inline V loadu(const A* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

// Broadcast: GCC folds the subtraction of +0 (exact for every value) and keeps the broadcast.
template <typename V, typename A>
inline V splat(A s) {
  return s - V{};
}

template <typename V> using LaneIndex = decltype(V{} < V{});  // signed integers as wide as A

template <int Bytes> struct Bits16 { typedef uint16_t type __attribute__((vector_size(Bytes))); };
template <int Bytes> struct Bits32 { typedef uint32_t type __attribute__((vector_size(Bytes))); };

// A vector of float loaded from bf16 storage (exact: the bits move up 16 places), and stored
// back rounded to nearest even, NaN to 0x7FC0, as c10::BFloat16 converts; other types as they
// are. So kernels summing in A read and write S = A or bf16: those where kWidenedVectors<S>.
template <typename T>
constexpr bool kWidenedVectors = std::is_same_v<T, typename AccOf<T>::type> || std::is_same_v<T, c10::BFloat16>;

template <typename V, typename S>
inline V load_widened(const S* p) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    using FloatBits = typename Bits32<sizeof(V)>::type;
    using HalfBits = typename Bits16<sizeof(V) / 2>::type;
    FloatBits bits;
#if defined(CONVEXT_X86_DISPATCH) && CONVEXT_VEC_BYTES == 64
    if constexpr (sizeof(V) == 64) {
      // One vpmovzxwd: GCC 12 lowers the generic conversion below to two 256-bit halves, an
      // extract and an insert (channels_last dw3x3 144 @56 bf16 forward: 0.81 -> 0.65 ms).
      bits = reinterpret_cast<FloatBits>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))) << 16;
    } else
#endif
    {
      bits = __builtin_convertvector(loadu<HalfBits>(reinterpret_cast<const uint16_t*>(p)), FloatBits) << 16;
    }
    V v;
    __builtin_memcpy(&v, &bits, sizeof(V));
    return v;
  } else {
    return loadu<V>(p);
  }
}

// The bf16 bits of a vector of float, rounded as store_narrowed stores them.
template <typename V>
inline typename Bits16<sizeof(V) / 2>::type bf16_bits(const V& v) {
  using HalfBits = typename Bits16<sizeof(V) / 2>::type;
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
  // vcvtneps2bf16 rounds to nearest even in one instruction where the formula below takes about
  // nine, but flushes denormals to zero and keeps NaNs' payloads: vectors holding either (one
  // vfpclassps finds them) take the formula.
  if constexpr (sizeof(V) == 64) {
    if (__builtin_expect(!_mm512_fpclass_ps_mask((__m512)v, 0xA1), 1)) {  // 0xA1: quiet NaN, signalling NaN, denormal
      const __m256bh half = _mm512_cvtneps_pbh((__m512)v);
      return (HalfBits)half;
    }
  } else if constexpr (sizeof(V) == 32) {
    if (__builtin_expect(!_mm256_fpclass_ps_mask((__m256)v, 0xA1), 1)) {
      const __m128bh half = _mm256_cvtneps_pbh((__m256)v);
      return (HalfBits)half;
    }
  }
#endif
  using FloatBits = typename Bits32<sizeof(V)>::type;
  FloatBits bits;
  __builtin_memcpy(&bits, &v, sizeof(V));
  const FloatBits nan = reinterpret_cast<FloatBits>(v != v);
  bits = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & ~nan) | (nan & 0x7FC0);
  return __builtin_convertvector(bits, HalfBits);
}

template <typename V, typename S>
inline void store_narrowed(S* p, const V& v) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    const auto half = bf16_bits(v);
    __builtin_memcpy(p, &half, sizeof(half));
  } else {
    __builtin_memcpy(p, &v, sizeof(V));
  }
}

// A value the compiler must hold as computed: it does not merge the selects before and after
// into one (see max_pool_fixed_rows).
template <typename V>
inline void keep_in_register(V& v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+v"(v));
#endif
}

// Lane l is p[l * S]: at S = 2, the even lanes of two loads.
template <typename V, int S, typename A>
inline V load_every(const A* p) {
  if constexpr (S == 1) {
    return loadu<V>(p);
  } else {
    LaneIndex<V> even;
    for (int l = 0; l < kVL<A>; ++l) even[l] = 2 * l;
    return __builtin_shuffle(loadu<V>(p), loadu<V>(p + kVL<A>), even);
  }
}

// Where the vector of outputs i, i + 1, ... of a row of n starts: where whole vectors fit, the
// last one moves back to overlap the one before (a few outputs computed twice), so that its
// stores are whole (lane by lane, the tail stores took a sixth of max pooling's time).
template <typename A>
inline int64_t whole_vector_start(int64_t i, int64_t n) {
  return n >= kVL<A> ? min64(i, n - kVL<A>) : i;
}

template <typename V> constexpr int64_t kLanes = sizeof(V) / sizeof(V{}[0]);

// Stores the first `count` lanes of v (all of them at most), as S (see store_narrowed).
template <typename V, typename S>
inline void store_lanes(S* p, const V& v, int64_t count) {
  if (count >= kLanes<V>) {
    store_narrowed(p, v);
  } else {
    for (int64_t l = 0; l < count; ++l) p[l] = static_cast<S>(v[l]);
  }
}

// store_lanes for values already exact in S (maxima of S inputs): bf16 keeps their top halves,
// with no rounding to pay for, except that every NaN becomes 0x7FC0, as rounding makes it (torch's
// bf16 max pooling converts its float maxima back, so a NaN's sign and payload are lost there).
template <typename V, typename S>
inline void store_exact_lanes(S* p, const V& v, int64_t count) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    using FloatBits = typename Bits32<sizeof(V)>::type;
    FloatBits bits;
    __builtin_memcpy(&bits, &v, sizeof(V));
    const FloatBits nan = reinterpret_cast<FloatBits>(v != v);
    bits = ((bits >> 16) & ~nan) | (nan & 0x7FC0);
    const auto half = __builtin_convertvector(bits, typename Bits16<sizeof(V) / 2>::type);
    if (count >= kLanes<V>) {
      __builtin_memcpy(p, &half, sizeof(half));
    } else {
      __builtin_memcpy(p, &half, count * sizeof(S));
    }
  } else {
    store_lanes(p, v, count);
  }
}

// The first `count` lanes from p (all of them at most), zeros past them (see load_widened).
template <typename V, typename S>
inline V load_lanes(const S* p, int64_t count) {
  if (count >= kLanes<V>) return load_widened<V>(p);
  V v{};
  for (int64_t l = 0; l < count; ++l) v[l] = static_cast<std::remove_reference_t<decltype(v[0])>>(p[l]);
  return v;
}

// dst[0..n) = src[0..n) converted to A, inline: the plain loop became a call to memmove, whose
// cost swamps copies of a few dozen values (the NCHW GEMMs' panels are made of them). bf16 to
// float and back go in vectors too (widened exactly, rounded as store_narrowed rounds): value by
// value, the bf16 NCHW pooling passes ran at a quarter of their float speed.
template <typename A, typename T>
inline void copy_run(A* __restrict dst, const T* __restrict src, int64_t n) {
  constexpr bool same = std::is_same_v<A, T> && sizeof(Lanes<A>) == sizeof(A);  // (not integers)
  constexpr bool widen = std::is_same_v<T, c10::BFloat16> && std::is_same_v<A, float>;
  constexpr bool narrow = std::is_same_v<T, float> && std::is_same_v<A, c10::BFloat16>;
  if constexpr (same || widen || narrow) {
    using V = typename Vec<Lanes<std::conditional_t<same, A, float>>>::type;
    constexpr int64_t VL = kLanes<V>;
    if (n >= VL) {  // whole vectors, the last one overlapping its neighbour
      for (int64_t r = 0; r < n; r += VL) {
        const int64_t at = min64(r, n - VL);
        if constexpr (same) {
          V v;
          __builtin_memcpy(&v, src + at, sizeof(V));
          __builtin_memcpy(dst + at, &v, sizeof(V));
        } else {
          store_narrowed(dst + at, load_widened<V>(src + at));
        }
      }
      return;
    }
  }
  for (int64_t r = 0; r < n; ++r) dst[r] = static_cast<A>(src[r]);
}

// c[MR][NR] (+)= sum over k of a[k][0..MR) (outer product) b[k][0..NR), accumulated in
// registers; rows of c are ldc apart, rows of b ldb apart. With Accumulate, c's values are the
// starting sums. a is 64-byte aligned; b and c need not be. With Half, only c's and b's first
// vector of columns (a last panel of at most that many columns: half the FMAs). With row_bias,
// row m's sums get row_bias[m] added before they are stored; with Stream, rows are stored around
// the caches (store_stream: c's rows must be whole aligned vectors).
template <typename A, bool Accumulate = false, bool Half = false, bool Stream = false>
inline void microkernel(int64_t K, const A* __restrict a, const A* __restrict b, A* __restrict c,
                        int64_t ldc, int64_t ldb = kNR<A>, const A* row_bias = nullptr) {
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  V acc0[kMR], acc1[kMR];
#pragma GCC unroll 16
  for (int m = 0; m < kMR; ++m) {
    if constexpr (Accumulate) {
      __builtin_memcpy(&acc0[m], c + m * ldc, sizeof(V));
      if constexpr (!Half) __builtin_memcpy(&acc1[m], c + m * ldc + VL, sizeof(V));
    } else {
      acc0[m] = acc1[m] = V{};
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = loadu<V>(b);
    const V b1 = Half ? V{} : loadu<V>(b + VL);
#pragma GCC unroll 16
    for (int m = 0; m < kMR; ++m) {
      const V am = splat<V>(a[m]);
      acc0[m] += am * b0;
      if constexpr (!Half) acc1[m] += am * b1;
    }
    a += kMR;
    b += ldb;
  }
#pragma GCC unroll 16
  for (int m = 0; m < kMR; ++m) {
    if (row_bias) {
      acc0[m] += splat<V>(row_bias[m]);
      acc1[m] += splat<V>(row_bias[m]);
    }
    if constexpr (Stream) {
      store_stream(c + m * ldc, acc0[m]);
      if constexpr (!Half) store_stream(c + m * ldc + VL, acc1[m]);
    } else {
      __builtin_memcpy(c + m * ldc, &acc0[m], sizeof(V));
      if constexpr (!Half) __builtin_memcpy(c + m * ldc + VL, &acc1[m], sizeof(V));
    }
  }
}

// Offset of each patch row k = (channel, kernel row, kernel col) in a tensor with these
// channel/row/col strides: computed once, so packing loops need no divisions per element.
template <typename T>
void patch_offsets(const ConvGeometry& g, const View4<T>& t, int64_t* out) {
  int64_t k = 0;
  for (int64_t c = 0; c < g.C_in_g(); ++c) {
    for (int64_t ki = 0; ki < g.KH; ++ki) {
      for (int64_t kj = 0; kj < g.KW; ++kj) out[k++] = c * t.sC + ki * t.sH + kj * t.sW;
    }
  }
}

// Where each output position of a tile reads its patch: top-left input row/col and its offset in
// the output-shaped tensor `o`.
struct TilePositions {
  int64_t* ih0;
  int64_t* iw0;
  int64_t* out_offset;

  template <typename T>
  void fill(const ConvGeometry& g, const View4<T>& o, int64_t p0, int64_t count) {
    for (int64_t t = 0; t < count; ++t) {
      const int64_t oh = (p0 + t) / g.OW, ow = (p0 + t) % g.OW;
      ih0[t] = oh * g.sH - g.pH;
      iw0[t] = ow * g.sW - g.pW;
      out_offset[t] = oh * o.sH + ow * o.sW;
    }
  }
};

// Calls f(t0, t1) for each run [t0, t1) of the tile's positions in [begin, end) that lie in
// one output row: along a run the input column advances by the stride.
template <typename F>
inline void for_each_row_run(const ConvGeometry& g, const TilePositions& pos, int64_t begin,
                             int64_t end, F f) {
  for (int64_t t0 = begin; t0 < end;) {
    const int64_t ow0 = (pos.iw0[t0] + g.pW) / g.sW;
    const int64_t t1 = min64(end, t0 + g.OW - ow0);
    f(t0, t1);
    t0 = t1;
  }
}

// The part [lo, hi) of a run of `len` positions, starting at input row ih and column iw, that
// reads inside the input (empty when the row is outside).
inline void run_inside(const ConvGeometry& g, int64_t ih, int64_t iw, int64_t len, int64_t& lo,
                       int64_t& hi) {
  lo = hi = len;
  if (!inside(ih, g.H)) return;
  lo = iw >= 0 ? 0 : min64(len, ceil_div(-iw, g.sW));
  hi = max64(lo, iw < g.W ? min64(len, (g.W - 1 - iw) / g.sW + 1) : 0);
}

// Gathers patch values (zero outside the input, past `valid` positions, or past patch row K)
// for patch rows [k0, k0 + k_count) and positions [0, positions) of image n, group grp, into
// out[at(k - k0, t)], where `at` is affine in t within each aligned group of `align` positions.
// Each row run is then a bounds-free strided copy between two zero fills.
template <typename T, typename A, typename At>
void pack_patches(const ConvGeometry& g, const View4<const T>& x, int64_t n, int64_t grp,
                  const TilePositions& pos, int64_t valid, int64_t positions, int64_t k0,
                  int64_t k_count, int64_t align, At at, A* out) {
  const int64_t KHW = g.KH * g.KW, K = g.patch();
  for (int64_t kr = 0; kr < k_count; ++kr) {
    const int64_t k = k0 + kr;
    if (k >= K) {
      for (int64_t t = 0; t < positions; ++t) out[at(kr, t)] = A(0);
      continue;
    }
    const int64_t ic = k / KHW, ki = (k % KHW) / g.KW, kj = k % g.KW;
    const T* plane = x.data + n * x.sN + (grp * g.C_in_g() + ic) * x.sC;
    const int64_t dy = ki * g.dH, dx = kj * g.dW, src_step = g.sW * x.sW;
    for (int64_t b = 0; b < valid; b += align) {
      for_each_row_run(g, pos, b, min64(valid, b + align), [&](int64_t t0, int64_t t1) {
        const int64_t len = t1 - t0, ih = pos.ih0[t0] + dy, iw = pos.iw0[t0] + dx;
        A* dst = out + at(kr, t0);
        const int64_t dst_step = len > 1 ? at(kr, t0 + 1) - at(kr, t0) : 0;
        int64_t lo, hi;
        run_inside(g, ih, iw, len, lo, hi);
        const T* src = plane + ih * x.sH + iw * x.sW;
        for (int64_t r = 0; r < lo; ++r) dst[r * dst_step] = A(0);
        if (dst_step == 1 && src_step == 1) {
          copy_run(dst + lo, src + lo, hi - lo);
          // The next tile's run in this plane, which is read only after every other patch row:
          // asked for now, it comes from memory while this tile computes, not when it is needed.
          for (int64_t r = lo; r < hi; r += 64 / sizeof(T)) __builtin_prefetch(src + r + positions, 0, 2);
        } else {
          for (int64_t r = lo; r < hi; ++r) dst[r * dst_step] = static_cast<A>(src[r * src_step]);
        }
        for (int64_t r = hi; r < len; ++r) dst[r * dst_step] = A(0);
      });
    }
    for (int64_t t = valid; t < positions; ++t) out[at(kr, t)] = A(0);
  }
}

// Depthwise convolution (one input channel per group, a few output channels each) as direct
// row-wise loops: a GEMM would be MR times wasteful there. Each input plane is first staged,
// zero-padded and in the accumulation type, so the inner loops need no bounds checks and
// vectorise along the row.
bool use_depthwise(const ConvGeometry& g) { return g.C_in_g() == 1 && g.C_out_g() <= 4; }

// A zero-padded plane. With `split`, its rows are split into the sW phases of the stride: padded
// column c is at phase c % sW, offset c / sW, so that the columns one tap reads for consecutive
// outputs are consecutive in memory and the loops over a row vectorise (at stride 1, or without
// `split`, the plain padded row).
struct PaddedPlane {
  int64_t rows, cols, stride, phase_cols, row_len;  // cols: padded width; row_len: a row's span
  // At least min_rows x min_cols: vector loops read whole blocks past the outputs' reach.
  explicit PaddedPlane(const ConvGeometry& g, bool split = true, int64_t min_cols = 0, int64_t min_rows = 0)
      : rows(max64(max64(g.H + 2 * g.pH, (g.OH - 1) * g.sH + (g.KH - 1) * g.dH + 1), min_rows)),
        cols(max64(max64(g.W + 2 * g.pW, (g.OW - 1) * g.sW + (g.KW - 1) * g.dW + 1), min_cols)),
        stride(split ? g.sW : 1), phase_cols(ceil_div(cols, stride)), row_len(stride * phase_cols) {}
  int64_t size() const { return rows * row_len; }
  // Where padded column c of a row is.
  int64_t at(int64_t c) const { return (c % stride) * phase_cols + c / stride; }

  // Zeros only where no input lands (zeroed whole first, the plane was written twice: 6% of
  // MobileNetV2's dw3x3 s2 96 NCHW forward), and only by the first load into dst (`borders`):
  // every load writes the same places. Rewritten for each plane, in calls to memset (116 for a
  // plane of 56 rows), they held MobileNetV2's dw3x3 144 NCHW forward at 1.28 ms (now 1.05).
  template <typename T, typename A>
  void load(const ConvGeometry& g, const T* plane, int64_t sH, int64_t sW, A* dst, bool borders) const {
    if (borders) {
      fill_zero(dst, g.pH * row_len);
      fill_zero(dst + (g.pH + g.H) * row_len, (rows - g.pH - g.H) * row_len);
    }
    for (int64_t h = 0; h < g.H; ++h) {
      A* row = dst + (h + g.pH) * row_len;
      const T* src = plane + h * sH;
      if (stride == 1) {
        if (borders) {
          fill_zero(row, g.pW);
          fill_zero(row + g.pW + g.W, row_len - g.pW - g.W);
        }
        if (sW == 1) {
          copy_run(row + g.pW, src, g.W);
        } else {
          for (int64_t w = 0; w < g.W; ++w) row[g.pW + w] = static_cast<A>(src[w * sW]);
        }
        continue;
      }
      if (borders) fill_zero(row, row_len);  // the phases interleave the padding columns
      int64_t w0 = 0;
      if constexpr (kWidenedVectors<T>) {
        // 16 columns into 8 even and 8 odd, through registers (bf16 value by value took over half
        // of the NCHW dw3x3 s2 96 @112 weight grad).
        if (stride == 2 && sW == 1) {
          using V8 = typename Vec8<A>::type;
          using I = typename IndexVec<V8>::type;
          A* even = row + at(g.pW);
          A* odd = row + at(g.pW + 1);
          for (; w0 + 16 <= g.W; w0 += 16) {
            const V8 a = load_widened<V8>(src + w0), b = load_widened<V8>(src + w0 + 8);
            const V8 e = __builtin_shuffle(a, b, I{0, 2, 4, 6, 8, 10, 12, 14});
            const V8 o = __builtin_shuffle(a, b, I{1, 3, 5, 7, 9, 11, 13, 15});
            __builtin_memcpy(even + w0 / 2, &e, sizeof(V8));
            __builtin_memcpy(odd + w0 / 2, &o, sizeof(V8));
          }
        }
      }
      for (int64_t p = 0; p < stride; ++p) {  // input columns w = p, p + stride, ...: one phase each
        A* out = row + at(g.pW + p);
        for (int64_t j = w0 / stride; p + j * stride < g.W; ++j) out[j] = static_cast<A>(src[(p + j * stride) * sW]);
      }
    }
  }
};

// Passes over NCHW planes of x, an item (n, c) at a time, each copied first into a PaddedPlane:
// the next item's plane (where planes are contiguous) is prefetched while this one is summed, a
// slice per output row, so that the copy finds it in cache instead of waiting on memory
// (MobileNetV2 dw3x3 144 NCHW forward, 2 threads: 1.72 -> 1.37 ms).
template <typename T>
class NextPlanePrefetch {
 public:
  NextPlanePrefetch(const ConvGeometry& g, const View4<const T>& x)
      : x_(x), C_(g.C_in), contiguous_(x.sW == 1 && x.sH == g.W),
        rows_(g.H * g.W * static_cast<int64_t>(sizeof(T)), g.N * x.sN * static_cast<int64_t>(sizeof(T))) {}
  void start(int64_t item, int64_t end) {
    rows_.start();
    if (contiguous_ && item + 1 < end) rows_.add(x_.data + (item + 1) / C_ * x_.sN + (item + 1) % C_ * x_.sC);
  }
  void upto(int64_t part, int64_t parts) { rows_.upto(part, parts); }

 private:
  View4<const T> x_;
  int64_t C_;
  bool contiguous_;
  NextRowsPrefetch rows_;
};

// Whether a depthwise conv's weights are all finite: kernels that read padding as zeros skip it
// only then (an infinite weight against a zero makes NaN).
template <typename T>
bool finite_depthwise_weights(const ConvGeometry& g, View4<const T> w) {
  using F = std::conditional_t<std::is_same_v<T, double>, double, float>;
  // A flag or-ed in a loop without branches or divisions (a test and division per weight took a
  // third of the channels_last dw3x3 960 @7 forward, 0.06 ms).
  bool finite = true;
  const auto check = [&](const T* p, int64_t n) {
    for (int64_t i = 0; i < n; ++i) finite &= std::fabs(static_cast<F>(p[i])) <= std::numeric_limits<F>::max();
  };
  if (w.sW == 1 && w.sH == g.KW && w.sN == g.KH * g.KW) {
    check(w.data, g.C_out * g.KH * g.KW);  // one run (NCHW and channels_last depthwise weights)
  } else {
    for (int64_t c = 0; c < g.C_out; ++c) {
      for (int64_t ki = 0; ki < g.KH; ++ki) {
        for (int64_t kj = 0; kj < g.KW; ++kj) check(w.data + c * w.sN + ki * w.sH + kj * w.sW, 1);
      }
    }
  }
  return finite;
}

// Depthwise convolution with one output channel per input channel on dense channels_last tensors:
// channels are innermost in memory and in the loops, so every inner loop is a contiguous,
// vectorised run over channels. Weights are first transposed to [kernel row, col][channel].
template <typename T>
bool dense_channels_last(const View4<T>& t, int64_t C) {
  return t.sC == 1 && t.sW == C;
}

template <typename T, typename A>
void pack_depthwise_weights(const ConvGeometry& g, View4<const T> w, A* out) {
  for (int64_t ki = 0; ki < g.KH; ++ki) {
    for (int64_t kj = 0; kj < g.KW; ++kj) {
      A* dst = out + (ki * g.KW + kj) * g.C_in;
      for (int64_t c = 0; c < g.C_in; ++c) dst[c] = static_cast<A>(w.data[c * w.sN + ki * w.sH + kj * w.sW]);
    }
  }
}

// kDepthwiseCols destination columns (out_step apart) x CV vectors of channels from c0 of a
// channels_last depthwise pass, the sums in registers across the taps: out[q][c] = bias[c] + sum
// over taps t of wt[t][c] * src[t][q][c], where src[t][q] points at the source row of channels
// (or at zeros).
constexpr int kDepthwiseCols = 4;

template <typename A, typename S, int CV>
inline void depthwise_cl_block(int64_t taps, const S* const* src, const A* const* wt, int64_t c0,
                               const A* bias, S* out, int64_t out_step, int64_t cols, bool stream) {
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  V acc[kDepthwiseCols][CV];
  for (int v = 0; v < CV; ++v) {
    V b;
    __builtin_memcpy(&b, bias + c0 + v * VL, sizeof(V));
    for (int q = 0; q < kDepthwiseCols; ++q) acc[q][v] = b;
  }
  for (int64_t t = 0; t < taps; ++t) {
    V wv[CV];
    for (int v = 0; v < CV; ++v) __builtin_memcpy(&wv[v], wt[t] + c0 + v * VL, sizeof(V));
#pragma GCC unroll 4
    for (int q = 0; q < kDepthwiseCols; ++q) {
      const S* p = src[t * kDepthwiseCols + q] + c0;
      for (int v = 0; v < CV; ++v) acc[q][v] += wv[v] * load_widened<V>(p + v * VL);
    }
  }
  // A constant trip count with a test, not a loop to `cols`: indexed at run time, acc would
  // live in memory (spilled across the taps' loop).
#pragma GCC unroll 4
  for (int q = 0; q < kDepthwiseCols; ++q) {
    if (q >= cols) break;
    for (int v = 0; v < CV; ++v) {
      if (std::is_same_v<S, A> && stream) {
        store_stream(out + q * out_step + c0 + v * VL, acc[q][v]);
      } else {
        store_narrowed(out + q * out_step + c0 + v * VL, acc[q][v]);
      }
    }
  }
}

// kSlideCols destination columns x one vector of channels of a depthwise pass whose taps along
// a row read consecutive source columns (dilation 1, stride 1 or 2): a sliding window. Each
// source vector is loaded once and meets every tap that reads it, the weights of a kernel row
// stay in registers, so loads are a few per KW FMAs instead of over one per FMA. Source vector e
// is column first + e of the row rows[ki] starts (null where the kernel row reads padding); only
// e in [e_lo, e_hi) are inside the source. DIR = 1 or 2: column q's tap kj reads vector
// q * DIR + kj (the forward at stride DIR); DIR = -1: q + KW - 1 - kj (the transposed pass at
// stride 1). (Two vectors of channels a block spilled registers at KW = 7.)
constexpr int kSlideCols = CONVEXT_VEC_BYTES == 64 ? 8 : 4;

struct SlideBlock {
  int dir;  // 0: the block's taps do not slide
  int64_t first, e_lo, e_hi;
};

// The source vectors a sliding block reads (e < slide_vectors), which one column q's tap kk
// reads, and which tap of column q reads vector e (outside [0, KW) for none).
constexpr int slide_vectors(int dir, int KW) { return (kSlideCols - 1) * (dir < 0 ? -dir : dir) + KW; }
constexpr int slide_vector(int dir, int KW, int q, int kk) { return dir > 0 ? q * dir + kk : q + KW - 1 - kk; }
constexpr int slide_tap(int dir, int KW, int q, int e) { return dir > 0 ? e - q * dir : KW - 1 - (e - q); }

template <typename A, typename S, int KW, int DIR, bool Clipped>
void depthwise_cl_slide(int64_t KH, const S* const* rows, const SlideBlock& blk, int64_t src_sW,
                        const A* wt, int64_t C, int64_t c_begin, int64_t c_end, const A* bias, S* out,
                        bool stream) {
  using V = typename Vec<A>::type;
  constexpr int kVectors = slide_vectors(DIR, KW);
  const int e_lo = static_cast<int>(blk.e_lo), e_hi = static_cast<int>(blk.e_hi);
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kVL<A>) {
    V acc[kSlideCols];
    const V b = loadu<V>(bias + c0);
#pragma GCC unroll 16
    for (int q = 0; q < kSlideCols; ++q) acc[q] = b;
    for (int64_t ki = 0; ki < KH; ++ki) {
      if (!rows[ki]) continue;
      const S* src = rows[ki] + blk.first * src_sW + c0;
      V wv[KW];
#pragma GCC unroll 16
      for (int kj = 0; kj < KW; ++kj) wv[kj] = loadu<V>(wt + (ki * KW + kj) * C + c0);
#pragma GCC unroll 32
      for (int e = 0; e < kVectors; ++e) {
        if (Clipped && (e < e_lo || e >= e_hi)) continue;
        const V xv = load_widened<V>(src + e * src_sW);
#pragma GCC unroll 16
        for (int q = 0; q < kSlideCols; ++q) {
          const int kk = slide_tap(DIR, KW, q, e);
          if (kk >= 0 && kk < KW) acc[q] += wv[kk] * xv;
        }
      }
    }
#pragma GCC unroll 16
    for (int q = 0; q < kSlideCols; ++q) {
      if (std::is_same_v<S, A> && stream) {
        store_stream(out + q * C + c0, acc[q]);
      } else {
        store_narrowed(out + q * C + c0, acc[q]);
      }
    }
  }
}

// Whether the kSlideCols columns whose source columns (per column and tap, -1 outside) start at
// cols_of slide, and how: some first and dir make every tap inside read column first + e, and
// every tap outside have e beyond the inside ones.
inline SlideBlock slide_block(const int64_t* cols_of, int KW) {
  for (const int dir : {1, -1, 2}) {
    SlideBlock b{dir, 0, slide_vectors(dir, KW), -1};
    bool ok = true;
    for (int i = 0; ok && i < kSlideCols * KW; ++i) {
      const int q = i / KW, k = i % KW, e = slide_vector(dir, KW, q, k);
      if (cols_of[i] < 0) continue;
      if (b.e_hi < 0) b.first = cols_of[i] - e;
      ok = cols_of[i] - e == b.first;
      b.e_lo = min64(b.e_lo, e);
      b.e_hi = max64(b.e_hi, e + 1);
    }
    for (int i = 0; ok && b.e_hi > 0 && i < kSlideCols * KW; ++i) {
      const int q = i / KW, k = i % KW, e = slide_vector(dir, KW, q, k);
      ok = (cols_of[i] >= 0) == (e >= b.e_lo && e < b.e_hi);
    }
    if (ok && b.e_hi > 0) return b;
  }
  return {0, 0, 0, 0};
}

#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
// bf16 channels_last depthwise passes with vdpbf16ps, which sums the products of two taps for
// each of 16 channels: kernel rows go in pairs (an odd KH's last row with zeros). vpunpck{l,h}wd
// interleave two rows' vectors of 32 channels within 128-bit lanes, so the "lo" sums hold
// channels 8j..8j+3 of each group j of 8 and the "hi" sums 8j+4..8j+7 (dot_channel); weights and
// bias are packed in that order and store_dot puts the channels back. Per 32 channels, a pair of
// taps takes 2 unpacks and 2 vdpbf16ps where the float sums took 4 widening loads (2 ops each)
// and 4 FMAs. Products of bf16 values are exact in float; vdpbf16ps flushes denormals, as
// oneDNN's bf16 kernels do.
constexpr int64_t kDotChannels = 32;

inline int64_t dot_channel(int64_t lane, int64_t hi) { return 8 * (lane / 4) + 4 * hi + lane % 4; }

// [row pair][kernel column][channel][32 bits]: the weights of rows 2p and 2p + 1 (zero past KH)
// as the low and high halves of 32 bits; bias as float in the same order. Blocks of 32 channels
// ([0, c_dot)) hold theirs as [lo, hi][lane], and channels [c_dot, c_pack) (16 or none) in order.
template <typename T>
void pack_depthwise_dot(const ConvGeometry& g, View4<const T> w, const T* bias, int64_t c_dot, int64_t c_pack,
                        uint32_t* wt, float* bias_dot) {
  const auto bits = [&](int64_t c, int64_t ki, int64_t kj) -> uint32_t {
    return ki < g.KH ? w.data[c * w.sN + ki * w.sH + kj * w.sW].x : 0;
  };
  const auto channel = [&](int64_t i) {
    return i < c_dot ? i / kDotChannels * kDotChannels + dot_channel(i % 16, i % kDotChannels / 16) : i;
  };
  for (int64_t p = 0; 2 * p < g.KH; ++p) {
    for (int64_t kj = 0; kj < g.KW; ++kj) {
      uint32_t* dst = wt + (p * g.KW + kj) * c_pack;
      for (int64_t i = 0; i < c_pack; ++i) dst[i] = bits(channel(i), 2 * p, kj) | bits(channel(i), 2 * p + 1, kj) << 16;
    }
  }
  for (int64_t i = 0; i < c_pack; ++i) bias_dot[i] = bias ? static_cast<float>(bias[channel(i)]) : 0.0f;
}

// The weights of a pair of rows, with the halves of missing rows (padding) zeroed: their zero
// inputs then meet zero weights, as if skipped (an infinite weight would make a NaN).
inline __m512bh dot_weights(const uint32_t* p, __m512i keep) {
  return (__m512bh)_mm512_and_si512(_mm512_loadu_si512(p), keep);
}

inline __m512i dot_keep(bool row0, bool row1) {
  return _mm512_set1_epi32((row0 ? 0xFFFF : 0) | (row1 ? static_cast<int>(0xFFFF0000u) : 0));
}

// What a missing row (padding) reads, at every column: zeros.
alignas(64) inline constexpr uint16_t kZeroChannels[kDotChannels] = {};

inline void store_dot(c10::BFloat16* out, __m512 lo, __m512 hi) {
  const __m512i l = _mm512_castsi256_si512((__m256i)bf16_bits(static_cast<Vec<float>::type>(lo)));
  const __m512i h = _mm512_castsi256_si512((__m256i)bf16_bits(static_cast<Vec<float>::type>(hi)));
  _mm512_storeu_si512(out, _mm512_permutex2var_epi64(l, _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0), h));
}

// depthwise_cl_slide's channels [c0, c0 + 16 * V) by pairs of rows: V = 2, a block of 32 as
// above; V = 1, 16 channels (C = 144's last ones), whose two rows' 32-byte halves one vpermt2w
// interleaves in channel order. Those took the float kernel, at 2 loads that widen and 3 FMAs
// a row per source vector where this takes 2 loads and a permute, then 1 vdpbf16ps per tap
// pair: the float channels took as long as two blocks of 32.
template <int KW, int DIR, bool Clipped, int V>
inline void depthwise_cl_slide_dot_block(int64_t KH, const c10::BFloat16* const* rows, const SlideBlock& blk,
                                         int64_t src_sW, const uint32_t* wt, int64_t c_pack, int64_t c0,
                                         const float* bias, int64_t C, c10::BFloat16* out) {
  constexpr int kVectors = slide_vectors(DIR, KW);
  const int e_lo = static_cast<int>(blk.e_lo), e_hi = static_cast<int>(blk.e_hi);
  __m512 acc[kSlideCols][V];
#pragma GCC unroll 16
  for (int q = 0; q < kSlideCols; ++q) {
    for (int v = 0; v < V; ++v) acc[q][v] = _mm512_loadu_ps(bias + c0 + 16 * v);
  }
  // Word i of the result: word i / 2 of a (even i) or of b (odd i).
  const __m512i pairs = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38,
                                         6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  for (int64_t p = 0; 2 * p < KH; ++p) {
    const c10::BFloat16* r0 = rows[2 * p];
    const c10::BFloat16* r1 = 2 * p + 1 < KH ? rows[2 * p + 1] : nullptr;
    if (!r0 && !r1) continue;
    const __m512i keep = dot_keep(r0, r1);
    const int64_t at = blk.first * src_sW + c0;
    const void* s0 = r0 ? static_cast<const void*>(r0 + at) : kZeroChannels;
    const void* s1 = r1 ? static_cast<const void*>(r1 + at) : kZeroChannels;
    const int64_t step0 = r0 ? src_sW * 2 : 0, step1 = r1 ? src_sW * 2 : 0;  // bytes
    __m512bh w[KW][V];
#pragma GCC unroll 16
    for (int kj = 0; kj < KW; ++kj) {
      for (int v = 0; v < V; ++v) w[kj][v] = dot_weights(wt + (p * KW + kj) * c_pack + c0 + 16 * v, keep);
    }
#pragma GCC unroll 32
    for (int e = 0; e < kVectors; ++e) {
      if (Clipped && (e < e_lo || e >= e_hi)) continue;
      const char* a_at = static_cast<const char*>(s0) + e * step0;
      const char* b_at = static_cast<const char*>(s1) + e * step1;
      __m512bh x[V];
      if constexpr (V == 2) {
        const __m512i a = _mm512_loadu_si512(a_at), b = _mm512_loadu_si512(b_at);
        x[0] = (__m512bh)_mm512_unpacklo_epi16(a, b);
        x[1] = (__m512bh)_mm512_unpackhi_epi16(a, b);
      } else {
        const __m512i a = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a_at)));
        const __m512i b = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b_at)));
        x[0] = (__m512bh)_mm512_permutex2var_epi16(a, pairs, b);
      }
#pragma GCC unroll 16
      for (int q = 0; q < kSlideCols; ++q) {
        const int kk = slide_tap(DIR, KW, q, e);
        if (kk < 0 || kk >= KW) continue;
        for (int v = 0; v < V; ++v) acc[q][v] = _mm512_dpbf16_ps(acc[q][v], x[v], w[kk][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < kSlideCols; ++q) {
    if constexpr (V == 2) {
      store_dot(out + q * C + c0, acc[q][0], acc[q][1]);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + q * C + c0),
                          (__m256i)bf16_bits(static_cast<Vec<float>::type>(acc[q][0])));
    }
  }
}

// depthwise_cl_slide's channels [0, c_slide): blocks of 32, then 16 if c_slide % 32 is.
template <int KW, int DIR, bool Clipped>
void depthwise_cl_slide_dot(int64_t KH, const c10::BFloat16* const* rows, const SlideBlock& blk,
                            int64_t src_sW, const uint32_t* wt, int64_t c_pack, int64_t c_slide,
                            const float* bias, int64_t C, c10::BFloat16* out) {
  int64_t c0 = 0;
  for (; c0 + kDotChannels <= c_slide; c0 += kDotChannels) {
    depthwise_cl_slide_dot_block<KW, DIR, Clipped, 2>(KH, rows, blk, src_sW, wt, c_pack, c0, bias, C, out);
  }
  if (c0 < c_slide) depthwise_cl_slide_dot_block<KW, DIR, Clipped, 1>(KH, rows, blk, src_sW, wt, c_pack, c0, bias, C, out);
}

// depthwise_cl_block's channels by pairs of rows: src[(t * 2 + r) * kDepthwiseCols + q] is where
// column q reads row r of pair t (zeros where it reads padding), wt[t] its weights and keep[t]
// which of its rows exist; CB blocks of 32 channels from c0.
template <int CB>
inline void depthwise_cl_block_dot(int64_t pairs, const c10::BFloat16* const* src, const uint32_t* const* wt,
                                   const __m512i* keep, int64_t c0, const float* bias, c10::BFloat16* out,
                                   int64_t out_step, int64_t cols) {
  __m512 lo[kDepthwiseCols][CB], hi[kDepthwiseCols][CB];
  for (int b = 0; b < CB; ++b) {
    const __m512 blo = _mm512_loadu_ps(bias + c0 + b * kDotChannels);
    const __m512 bhi = _mm512_loadu_ps(bias + c0 + b * kDotChannels + 16);
    for (int q = 0; q < kDepthwiseCols; ++q) {
      lo[q][b] = blo;
      hi[q][b] = bhi;
    }
  }
  for (int64_t t = 0; t < pairs; ++t) {
    __m512bh wl[CB], wh[CB];
    for (int b = 0; b < CB; ++b) {
      wl[b] = dot_weights(wt[t] + c0 + b * kDotChannels, keep[t]);
      wh[b] = dot_weights(wt[t] + c0 + b * kDotChannels + 16, keep[t]);
    }
#pragma GCC unroll 4
    for (int q = 0; q < kDepthwiseCols; ++q) {
      const c10::BFloat16* p0 = src[(2 * t) * kDepthwiseCols + q] + c0;
      const c10::BFloat16* p1 = src[(2 * t + 1) * kDepthwiseCols + q] + c0;
      for (int b = 0; b < CB; ++b) {
        const __m512i x0 = _mm512_loadu_si512(p0 + b * kDotChannels), x1 = _mm512_loadu_si512(p1 + b * kDotChannels);
        lo[q][b] = _mm512_dpbf16_ps(lo[q][b], (__m512bh)_mm512_unpacklo_epi16(x0, x1), wl[b]);
        hi[q][b] = _mm512_dpbf16_ps(hi[q][b], (__m512bh)_mm512_unpackhi_epi16(x0, x1), wh[b]);
      }
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < kDepthwiseCols; ++q) {
    if (q >= cols) break;
    for (int b = 0; b < CB; ++b) store_dot(out + q * out_step + c0 + b * kDotChannels, lo[q][b], hi[q][b]);
  }
}

// bf16 3x3 stride-1 depthwise forwards, two output rows at a time: rows o and o + 1 read input
// rows t = 0..3 (from o - pH); both read t = 1, 2, interleaved once as a pair (vpermt2w of two
// 16-channel halves), with weights (w1, w2) for row o and (w0, w1) for row o + 1. Row o's t = 0
// and row o + 1's t = 3 go alone, zero-extended (vpmovzxwd from memory) against (w0, 0) and
// (w2, 0): no weight is zero against a value, so an infinite value meets only its own taps. Per
// row, that is one load and one unpack a source vector where the pairs of kernel rows
// (depthwise_cl_slide_dot_block) took two and two, and 16 channels a vector keep every load
// inside a line (144 channels put every other position of 32 at 32 bytes past one: those
// blocks of 32 took a fifth longer than at 128 or 160 channels). The sums of a block go tap by
// tap over all its columns, 12 independent chains (vdpbf16ps's latency is 6 cycles, 2 a cycle
// issue): by source vector, 6 at a time were in flight. 144 channels @56, 8 images: 0.285 ->
// 0.240-0.248 ms (112: 0.216 -> 0.192, 208: 0.41 -> 0.37).
constexpr int kRowPairCols = 6;
constexpr int kRowPairVectors = kRowPairCols + 2;

// [group][tap column][channel] of 32 bits, group 0: (w1, w2) for row o; 1: (w0, w1) for row
// o + 1; 2: (w0, 0); 3: (w2, 0).
template <typename T>
void pack_depthwise_row_pairs(View4<const T> w, int64_t C, uint32_t* wt) {
  const int rows_lo[4] = {1, 0, 0, 2}, rows_hi[4] = {2, 1, -1, -1};
  for (int grp = 0; grp < 4; ++grp) {
    for (int64_t kj = 0; kj < 3; ++kj) {
      for (int64_t c = 0; c < C; ++c) {
        const auto bits = [&](int ki) -> uint32_t { return ki < 0 ? 0 : w.data[c * w.sN + ki * w.sH + kj * w.sW].x; };
        wt[(grp * 3 + kj) * C + c] = bits(rows_lo[grp]) | bits(rows_hi[grp]) << 16;
      }
    }
  }
}

// Output rows o and o + 1 (out[1] null: o alone), columns [col0, col0 + cols) (cols <= 6), 16
// channels from c0. Input row t's source vector e is in[t] + (first + e) * step[t] + c0 (a
// padding row: zeros, step 0), inside the row for e in [e_lo, e_hi) (Clipped: not all are;
// the others read as zeros). No branches: where the sums went through branches, they went
// through the stack.
template <bool Clipped>
inline void depthwise_cl_row_pairs_block(const c10::BFloat16* const* in, const int64_t* step, int64_t first,
                                         int e_lo, int e_hi, int64_t C, const uint32_t* wt, const float* bias,
                                         int64_t c0, c10::BFloat16* const* out, int cols) {
  __m512 acc[2][kRowPairCols];
  const __m512 b = _mm512_loadu_ps(bias + c0);
  for (int r = 0; r < 2; ++r) {
    for (int q = 0; q < kRowPairCols; ++q) acc[r][q] = b;
  }
  const auto load = [&](int t, int e) {
    const auto* p = reinterpret_cast<const __m256i*>(in[t] + (first + e) * step[t] + c0);
    if constexpr (Clipped) return _mm256_maskz_loadu_epi16(e >= e_lo && e < e_hi ? 0xFFFF : 0, p);
    return _mm256_loadu_si256(p);
  };
  const auto weights = [&](int grp, int kj) { return (__m512bh)_mm512_loadu_si512(wt + (grp * 3 + kj) * C + c0); };
  {  // the shared pair
    // Word i of the result: word i / 2 of a (even i) or of b (odd i).
    const __m512i pairs = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38,
                                           6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    __m512bh x[kRowPairVectors];
#pragma GCC unroll 8
    for (int e = 0; e < kRowPairVectors; ++e) {
      x[e] = (__m512bh)_mm512_permutex2var_epi16(_mm512_castsi256_si512(load(1, e)), pairs,
                                                 _mm512_castsi256_si512(load(2, e)));
    }
#pragma GCC unroll 3
    for (int kj = 0; kj < 3; ++kj) {
      const __m512bh w0 = weights(0, kj), w1 = weights(1, kj);
#pragma GCC unroll 6
      for (int q = 0; q < kRowPairCols; ++q) {
        acc[0][q] = _mm512_dpbf16_ps(acc[0][q], x[q + kj], w0);
        acc[1][q] = _mm512_dpbf16_ps(acc[1][q], x[q + kj], w1);
      }
    }
  }
  {  // the rows read alone: t = 0 for row o, t = 3 for row o + 1
    __m512bh x[2][kRowPairVectors];
#pragma GCC unroll 8
    for (int e = 0; e < kRowPairVectors; ++e) {
      x[0][e] = (__m512bh)_mm512_cvtepu16_epi32(load(0, e));
      x[1][e] = (__m512bh)_mm512_cvtepu16_epi32(load(3, e));
    }
#pragma GCC unroll 3
    for (int kj = 0; kj < 3; ++kj) {
      const __m512bh w0 = weights(2, kj), w1 = weights(3, kj);
#pragma GCC unroll 6
      for (int q = 0; q < kRowPairCols; ++q) {
        acc[0][q] = _mm512_dpbf16_ps(acc[0][q], x[0][q + kj], w0);
        acc[1][q] = _mm512_dpbf16_ps(acc[1][q], x[1][q + kj], w1);
      }
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < 2; ++r) {
#pragma GCC unroll 6
    for (int q = 0; q < kRowPairCols; ++q) {
      if (out[r] && q < cols) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[r] + q * C + c0),
                            (__m256i)bf16_bits(static_cast<Vec<float>::type>(acc[r][q])));
      }
    }
  }
}

// Whether depthwise_forward_cl goes by pairs of output rows: bf16 3x3, stride and dilation 1,
// an odd number of vectors of 16 channels (a position is not whole lines), and finite weights
// (padding is read as zeros, and a zero against an infinite weight would make a NaN where the
// other pass skips it). At multiples of 32 channels the blocks of 32 take as long or less with
// 8 images (160 channels 0.26 against 0.27 ms, 192 0.31 against 0.32), their loads whole lines.
template <typename T>
bool use_depthwise_row_pairs(const ConvGeometry& g, View4<const T> w) {
  return g.KH == 3 && g.KW == 3 && g.sH == 1 && g.sW == 1 && g.dH == 1 && g.dW == 1 && g.C_in % 32 == 16 &&
         finite_depthwise_weights(g, w);
}

void depthwise_forward_cl_row_pairs(const ConvGeometry& g, View4<const c10::BFloat16> x,
                                    View4<const c10::BFloat16> w, const c10::BFloat16* bias,
                                    View4<c10::BFloat16> y) {
  const int64_t C = g.C_in, row_pairs = ceil_div(g.OH, 2);
  Scratch<uint32_t> wt(4 * 3 * C);
  Scratch<float> bias_f(C);
  Scratch<c10::BFloat16> zeros(C);
  pack_depthwise_row_pairs(w, C, wt.get());
  for (int64_t c = 0; c < C; ++c) bias_f.get()[c] = bias ? static_cast<float>(bias[c]) : 0.0f;
  fill_zero(zeros.get(), C);
  // Large outputs go around the caches, a block's columns of both rows at a time (whole lines:
  // 6 columns of 16k channels are 192k bytes), computed into a cached buffer first. Written in
  // place, 12.8 MB of output at 256 channels (bf16 3x3 @56, 8 images) took 1.17 ms, against 0.5.
  const int64_t row_bytes = y.sH * static_cast<int64_t>(sizeof(c10::BFloat16));
  const bool stage = g.N * g.OH * row_bytes >= kStreamBytes && y.sH == g.OW * C && row_bytes % 64 == 0 &&
                     reinterpret_cast<uintptr_t>(y.data) % 64 == 0;
  at::parallel_for(0, g.N * row_pairs, 1, [&](int64_t begin, int64_t end) {
    Scratch<c10::BFloat16> staging(stage ? 2 * kRowPairCols * C : 0);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / row_pairs, o = item % row_pairs * 2;
      const c10::BFloat16* in[4];
      int64_t step[4];
      for (int t = 0; t < 4; ++t) {
        const int64_t ih = o - g.pH + t;
        const bool row = inside(ih, g.H);
        in[t] = row ? x.data + n * x.sN + ih * x.sH : zeros.get();
        step[t] = row ? x.sW : 0;
      }
      c10::BFloat16* const out[2] = {y.data + n * y.sN + o * y.sH, o + 1 < g.OH ? y.data + n * y.sN + (o + 1) * y.sH : nullptr};
      for (int64_t col0 = 0; col0 < g.OW; col0 += kRowPairCols) {
        const int64_t first = col0 - g.pW;
        const int e_lo = static_cast<int>(max64(0, -first)), e_hi = static_cast<int>(min64(kRowPairVectors, g.W - first));
        const int cols = static_cast<int>(min64(kRowPairCols, g.OW - col0));
        c10::BFloat16* const block_out[2] = {stage ? staging.get() : out[0] + col0 * y.sW,
                                             !out[1] ? nullptr : stage ? staging.get() + kRowPairCols * C : out[1] + col0 * y.sW};
        for (int64_t c0 = 0; c0 < C; c0 += 16) {
          if (e_lo > 0 || e_hi < kRowPairVectors) {
            depthwise_cl_row_pairs_block<true>(in, step, first, e_lo, e_hi, C, wt.get(), bias_f.get(), c0, block_out, cols);
          } else {
            depthwise_cl_row_pairs_block<false>(in, step, first, e_lo, e_hi, C, wt.get(), bias_f.get(), c0, block_out, cols);
          }
        }
        for (int r = 0; stage && r < 2; ++r) {
          if (out[r]) stream_lines(out[r] + col0 * C, block_out[r], cols * C * static_cast<int64_t>(sizeof(c10::BFloat16)));
        }
      }
    }
    if (stage) stream_fence();
  });
}
#endif

// One dense channels_last depthwise pass: each destination position (N x rows x cols) sums,
// over the kernel taps, weight[tap][c] * src[tap's source position][c], plus bias[c].
// src_index(d, k, is_row) gives the source row (col) that tap row (col) k reads for destination
// row (col) d, or -1 when it reads none; it is tabulated once per pass (it may divide). The
// forward pass reads the input; the input gradient (the transposed pass) gathers from the
// outputs whose windows cover each input position, so neither needs atomics. Where source and
// destination hold the accumulation type, whole vectors of channels go through
// depthwise_cl_block, kDepthwiseCols columns col_step apart at a time: columns of one phase of
// the stride read the same taps (the transposed pass at stride 2 reads 1, 2 or 4 of 9, by
// phase; per position, with the sums in memory, its 3x3 s2 96 @112 input grad took twice
// torch's time). A block skips the taps that none of its columns reads, and the others read a
// row of zeros where they fall past the border. Other channels go per position, and so do all
// of them where the weights are not all finite: per position the taps past the border are
// skipped, as torch's float and bf16 convs skip them (an infinite weight against those zeros
// made NaN).
template <typename T, typename SrcIndex>
void depthwise_cl_pass(const ConvGeometry& g, View4<const T> src, View4<const T> w,
                       const T* bias, View4<T> dst, int64_t rows, int64_t cols, int64_t col_step,
                       SrcIndex src_index) {
  using A = typename AccOf<T>::type;
  constexpr int VL = kVL<A>;
  const int64_t C = g.C_in, KHW = g.KH * g.KW;
  const bool finite = finite_depthwise_weights(g, w);
  const int64_t c_blocked = kWidenedVectors<T> && finite ? C / VL * VL : 0;
  Scratch<A> wt(KHW * C), bias_a(C);
  Scratch<T> zeros(C);
  pack_depthwise_weights(g, w, wt.get());
  for (int64_t c = 0; c < C; ++c) bias_a.get()[c] = bias ? static_cast<A>(bias[c]) : A(0);
  fill_zero(zeros.get(), C);
  // bf16 channels [0, c_dot), whole blocks of 32, go by pairs of kernel rows (vdpbf16ps). Not
  // in the transposed pass at stride 2, whose rows of a phase read 1 or 2 kernel rows of 3: half
  // the pairs' products would be zeros (its input grad took 3.9 -> 4.1-4.5 ms with them).
  // Sliding blocks also take the next 16 channels, if there are as many (c_slide).
  int64_t c_dot = 0, c_slide = 0;
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
  const int64_t row_pairs = (g.KH + 1) / 2;
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    c_dot = col_step == 1 && finite ? C / kDotChannels * kDotChannels : 0;
    c_slide = col_step == 1 && finite && C - c_dot >= 16 ? c_dot + 16 : c_dot;
  }
  Scratch<uint32_t> wt_dot(row_pairs * g.KW * c_slide);
  Scratch<float> bias_dot(c_slide);
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    pack_depthwise_dot(g, w, bias, c_dot, c_slide, wt_dot.get(), bias_dot.get());
  }
#endif
  Scratch<int64_t> src_rows(rows * g.KH), src_cols(cols * g.KW);
  for (int64_t r = 0; r < rows * g.KH; ++r) src_rows.get()[r] = src_index(r / g.KH, r % g.KH, true);
  for (int64_t c = 0; c < cols * g.KW; ++c) src_cols.get()[c] = src_index(c / g.KW, c % g.KW, false);
  // Blocks of kSlideCols columns whose taps read the source one column further per tap and one
  // or two per column (or one back per tap) go through the sliding-window kernel.
  const bool slide_kernel = (g.KW == 3 || g.KW == 5 || g.KW == 7) && g.KH <= 64 && col_step == 1;
  std::vector<SlideBlock> slides(cols / kSlideCols, SlideBlock{0, 0, 0, 0});
  for (int64_t i = 0; slide_kernel && i < cols / kSlideCols; ++i) {
    slides[i] = slide_block(src_cols.get() + i * kSlideCols * g.KW, static_cast<int>(g.KW));
  }
  // The other columns go in blocks of kDepthwiseCols, col_step apart (phase by phase), each with
  // the kernel columns that some column of the block reads, and where each column reads them
  // (source column, -1 for none): the same for every row, so tabulated once.
  struct ColumnBlock { int64_t col0, cols, first, count; };  // entries [first, first + count)
  std::vector<ColumnBlock> blocks;
  std::vector<int64_t> block_kj, block_sw;  // per entry: kernel column; kDepthwiseCols sources
  for (int64_t phase = 0; c_blocked > 0 && phase < col_step; ++phase) {
    for (int64_t col0 = phase; col0 < cols;) {
      if (col_step == 1 && col0 % kSlideCols == 0 && col0 + kSlideCols <= cols &&
          slides[col0 / kSlideCols].dir != 0) {
        blocks.push_back({col0, kSlideCols, 0, -1});  // count -1: a sliding block
        col0 += kSlideCols;
        continue;
      }
      ColumnBlock b{col0, min64(kDepthwiseCols, ceil_div(cols - col0, col_step)),
                    static_cast<int64_t>(block_kj.size()), 0};
      for (int64_t kj = 0; kj < g.KW; ++kj) {
        bool reads = false;
        for (int64_t q = 0; q < kDepthwiseCols; ++q) {
          const int64_t col = col0 + q * col_step;
          reads |= q < b.cols && src_cols.get()[col * g.KW + kj] >= 0;
        }
        if (!reads) continue;
        block_kj.push_back(kj);
        for (int64_t q = 0; q < kDepthwiseCols; ++q) {
          block_sw.push_back(q < b.cols ? src_cols.get()[(col0 + q * col_step) * g.KW + kj] : -1);
        }
        ++b.count;
      }
      blocks.push_back(b);
      col0 += kDepthwiseCols * col_step;
    }
  }
  // Large outputs of whole vectors go around the caches (aligned rows of channels). bf16 ones
  // do too, a sliding block at a time (kSlideCols columns of C channels: whole 64-byte lines,
  // where a column's own vectors need not be: 144 channels take 288 bytes), computed into a
  // cached buffer and then copied out (bf16 dw3x3 s2 96 @112 forward: 0.47 -> 0.30 ms).
  const int64_t row_bytes = dst.sH * static_cast<int64_t>(sizeof(T));
  const bool large = dst.sH == cols * C && g.N * rows * row_bytes >= kStreamBytes;
  const bool stream = std::is_same_v<T, A> && large && c_blocked == C && stream_aligned(dst.data) &&
                      C * sizeof(A) % CONVEXT_VEC_BYTES == 0;
  const bool stage = !std::is_same_v<T, A> && CONVEXT_VEC_BYTES >= 32 && large && c_blocked == C && slide_kernel &&
                     reinterpret_cast<uintptr_t>(dst.data) % 64 == 0 && row_bytes % 64 == 0 &&
                     kSlideCols * C * static_cast<int64_t>(sizeof(T)) % 64 == 0;
  at::parallel_for(0, g.N * rows, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> acc_mem(C);
    A* __restrict acc = acc_mem.get();
    Scratch<T> staging(stage ? kSlideCols * C : 0);
    Scratch<const T*> ptr(c_blocked > 0 ? KHW * kDepthwiseCols : 0);  // [tap][column of the block]
    Scratch<const A*> tap_wt(c_blocked > 0 ? KHW : 0);  // the block's taps' weights
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
    // The block's pairs of rows: [pair][row][column of the block], weights, rows present.
    Scratch<const T*> pair_ptr(c_dot > 0 ? row_pairs * g.KW * 2 * kDepthwiseCols : 0);
    Scratch<const uint32_t*> pair_wt(c_dot > 0 ? row_pairs * g.KW : 0);
    Scratch<__m512i> pair_keep(c_dot > 0 ? row_pairs * g.KW : 0);
#endif
    // Into L2: prefetched into L1, the next row's two new input rows at stride 2 (86 KB for
    // MobileNetV2's dw3x3 s2 96 @112) evicted this row's, and the forward took twice as long.
    NextRowsPrefetch next_rows(src.sH * static_cast<int64_t>(sizeof(T)), g.N * src.sN * static_cast<int64_t>(sizeof(T)),
                               /*into_l2=*/true);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / rows, row = item % rows;
      T* dst_row = dst.data + n * dst.sN + row * dst.sH;
      // Not in stride-1 passes, whose next item reads one new row: it follows the rows read now
      // in memory, the hardware prefetchers fetch it in time, and the prefetches only cost
      // (float32 dw3x3 144 and dw7x7 96 forwards 7-9% slower with them). At stride 2 they pay:
      // the forward's two new rows (dw3x3 s2 96 18% faster), and the transposed pass's phases
      // of columns (its forward and backward 13% faster).
      next_rows.start();
      if (item + 1 < end) {
        const int64_t next_n = (item + 1) / rows, next_row = (item + 1) % rows;
        int64_t fresh[64], count = 0;
        for (int64_t ki = 0; ki < g.KH && count < 64; ++ki) {
          const int64_t sh = src_rows.get()[next_row * g.KH + ki];
          bool read_now = false;
          for (int64_t kj = 0; next_n == n && kj < g.KH; ++kj) read_now |= src_rows.get()[row * g.KH + kj] == sh;
          if (sh >= 0 && !read_now) fresh[count++] = sh;
        }
        for (int64_t i = 0; (count >= 2 || col_step > 1) && i < count; ++i) next_rows.add(src.data + next_n * src.sN + fresh[i] * src.sH);
      }
      int64_t block_index = 0;
      for (const ColumnBlock& blk : blocks) {
        next_rows.upto(++block_index, static_cast<int64_t>(blocks.size()));
        T* out = dst_row + blk.col0 * C;
        if (blk.count < 0) {
          T* const block_out = stage ? staging.get() : out;
          const SlideBlock& slide_blk = slides[blk.col0 / kSlideCols];
          const T* slide_rows[64];
          for (int64_t ki = 0; ki < g.KH; ++ki) {
            const int64_t sh = src_rows.get()[row * g.KH + ki];
            slide_rows[ki] = sh < 0 ? nullptr : src.data + n * src.sN + sh * src.sH;
          }
          // Blocks reading all their source columns (most) go without the range checks.
          const bool clipped = slide_blk.e_lo > 0 || slide_blk.e_hi < slide_vectors(slide_blk.dir, static_cast<int>(g.KW));
          const auto slide = [&](auto kw, auto dir) {
            constexpr int KW = decltype(kw)::value, DIR = decltype(dir)::value;
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
            if constexpr (std::is_same_v<T, c10::BFloat16>) {
              const auto dot = clipped ? depthwise_cl_slide_dot<KW, DIR, true> : depthwise_cl_slide_dot<KW, DIR, false>;
              dot(g.KH, slide_rows, slide_blk, src.sW, wt_dot.get(), c_slide, c_slide, bias_dot.get(), C, block_out);
            }
#endif
            const auto kernel = clipped ? depthwise_cl_slide<A, T, KW, DIR, true> : depthwise_cl_slide<A, T, KW, DIR, false>;
            kernel(g.KH, slide_rows, slide_blk, src.sW, wt.get(), C, c_slide, c_blocked, bias_a.get(), block_out, stream);
          };
          const auto slide_kw = [&](auto kw) {
            switch (slide_blk.dir) {
              case 1: slide(kw, std::integral_constant<int, 1>{}); break;
              case -1: slide(kw, std::integral_constant<int, -1>{}); break;
              case 2: slide(kw, std::integral_constant<int, 2>{}); break;
            }
          };
          switch (g.KW) {
            case 3: slide_kw(std::integral_constant<int, 3>{}); break;
            case 5: slide_kw(std::integral_constant<int, 5>{}); break;
            case 7: slide_kw(std::integral_constant<int, 7>{}); break;
          }
          if (stage) stream_lines(out, block_out, kSlideCols * C * static_cast<int64_t>(sizeof(T)));
          continue;
        }
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
        if constexpr (std::is_same_v<T, c10::BFloat16>) {
          int64_t pairs = 0;
          for (int64_t p = 0; c_dot > 0 && p < row_pairs; ++p) {
            const int64_t sh[2] = {src_rows.get()[row * g.KH + 2 * p],
                                   2 * p + 1 < g.KH ? src_rows.get()[row * g.KH + 2 * p + 1] : -1};
            if (sh[0] < 0 && sh[1] < 0) continue;
            for (int64_t e = blk.first; e < blk.first + blk.count; ++e) {
              for (int r = 0; r < 2; ++r) {
                for (int q = 0; q < kDepthwiseCols; ++q) {
                  const int64_t sw = block_sw[e * kDepthwiseCols + q];
                  pair_ptr.get()[(2 * pairs + r) * kDepthwiseCols + q] =
                      sh[r] < 0 || sw < 0 ? zeros.get() : src.data + n * src.sN + sh[r] * src.sH + sw * src.sW;
                }
              }
              pair_wt.get()[pairs] = wt_dot.get() + (p * g.KW + block_kj[e]) * c_slide;
              pair_keep.get()[pairs++] = dot_keep(sh[0] >= 0, sh[1] >= 0);
            }
          }
          int64_t c0 = 0;
          for (; c0 + 2 * kDotChannels <= c_dot; c0 += 2 * kDotChannels) {
            depthwise_cl_block_dot<2>(pairs, pair_ptr.get(), pair_wt.get(), pair_keep.get(), c0, bias_dot.get(),
                                      out, col_step * C, blk.cols);
          }
          if (c0 < c_dot) {
            depthwise_cl_block_dot<1>(pairs, pair_ptr.get(), pair_wt.get(), pair_keep.get(), c0, bias_dot.get(),
                                      out, col_step * C, blk.cols);
          }
        }
#endif
        if (c_dot == c_blocked) continue;
        int64_t taps = 0;
        for (int64_t ki = 0; ki < g.KH; ++ki) {
          const int64_t sh = src_rows.get()[row * g.KH + ki];
          if (sh < 0) continue;
          const T* src_row = src.data + n * src.sN + sh * src.sH;
          for (int64_t e = blk.first; e < blk.first + blk.count; ++e) {
            for (int q = 0; q < kDepthwiseCols; ++q) {
              const int64_t sw = block_sw[e * kDepthwiseCols + q];
              ptr.get()[taps * kDepthwiseCols + q] = sw < 0 ? zeros.get() : src_row + sw * src.sW;
            }
            tap_wt.get()[taps++] = wt.get() + (ki * g.KW + block_kj[e]) * C;
          }
        }
        const auto block = [&](auto cv, int64_t c0) {
          depthwise_cl_block<A, T, decltype(cv)::value>(taps, ptr.get(), tap_wt.get(), c0, bias_a.get(), out,
                                                     col_step * C, blk.cols, stream);
        };
        int64_t c0 = c_dot;
        for (; c0 + 4 * VL <= c_blocked; c0 += 4 * VL) block(std::integral_constant<int, 4>{}, c0);
        switch ((c_blocked - c0) / VL) {  // the last 1-3 vectors in one block
          case 3: block(std::integral_constant<int, 3>{}, c0); break;
          case 2: block(std::integral_constant<int, 2>{}, c0); break;
          case 1: block(std::integral_constant<int, 1>{}, c0); break;
        }
      }
      if (c_blocked == C) continue;
      for (int64_t col = 0; col < cols; ++col) {
        for (int64_t c = c_blocked; c < C; ++c) acc[c] = bias_a.get()[c];
        for (int64_t ki = 0; ki < g.KH; ++ki) {
          const int64_t sh = src_rows.get()[row * g.KH + ki];
          if (sh < 0) continue;
          for (int64_t kj = 0; kj < g.KW; ++kj) {
            const int64_t sw = src_cols.get()[col * g.KW + kj];
            if (sw < 0) continue;
            const T* __restrict in = src.data + n * src.sN + sh * src.sH + sw * src.sW;
            const A* __restrict wk = wt.get() + (ki * g.KW + kj) * C;
            for (int64_t c = c_blocked; c < C; ++c) acc[c] += wk[c] * static_cast<A>(in[c]);
          }
        }
        T* out = dst_row + col * dst.sW;
        for (int64_t c = c_blocked; c < C; ++c) out[c] = static_cast<T>(acc[c]);
      }
    }
    if (stream || stage) stream_fence();
  });
}

template <typename T>
void depthwise_forward_cl(const ConvGeometry& g, View4<const T> x, View4<const T> w,
                          const T* bias, View4<T> y) {
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (use_depthwise_row_pairs(g, w)) return depthwise_forward_cl_row_pairs(g, x, w, bias, y);
  }
#endif
  depthwise_cl_pass(g, x, w, bias, y, g.OH, g.OW, 1, [&](int64_t o, int64_t k, bool is_row) {
    const int64_t i = is_row ? o * g.sH - g.pH + k * g.dH : o * g.sW - g.pW + k * g.dW;
    return inside(i, is_row ? g.H : g.W) ? i : -1;
  });
}

template <typename T>
void depthwise_input_grad_cl(const ConvGeometry& g, View4<const T> gy, View4<const T> w,
                             const T* bias, View4<T> gx) {
  depthwise_cl_pass(g, gy, w, bias, gx, g.H, g.W, g.sW, [&](int64_t i, int64_t k, bool is_row) {
    const int64_t s = is_row ? g.sH : g.sW;
    const int64_t t = is_row ? i + g.pH - k * g.dH : i + g.pW - k * g.dW;
    return t >= 0 && t % s == 0 && t / s < (is_row ? g.OH : g.OW) ? t / s : int64_t(-1);
  });
}

// sums[r * row_ld + t * C + c] += sum over columns i < cols of gy[i * gy_step + c] *
// x[r * row_step + t * tap_step + i * x_step + c], for TR kernel rows of TW taps and channels c <
// `channels` (whole vectors): blocks of VECS vectors of channels sum all the taps at once in
// registers, so each vector of gy loaded meets all of them.
template <int TR, int TW, int VECS, typename A, typename S>
inline void depthwise_weight_grad_block(int64_t cols, const S* x, int64_t row_step, int64_t tap_step,
                                        int64_t x_step, const S* gy, int64_t gy_step, A* sums,
                                        int64_t row_ld, int64_t C) {
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  V acc[TR][TW][VECS] = {};
  for (int64_t i = 0; i < cols; ++i, x += x_step, gy += gy_step) {
    V gv[VECS];
#pragma GCC unroll 4
    for (int v = 0; v < VECS; ++v) gv[v] = load_widened<V>(gy + v * VL);
#pragma GCC unroll 4
    for (int r = 0; r < TR; ++r) {
#pragma GCC unroll 16
      for (int t = 0; t < TW; ++t) {
#pragma GCC unroll 4
        for (int v = 0; v < VECS; ++v) {
          acc[r][t][v] += load_widened<V>(x + r * row_step + t * tap_step + v * VL) * gv[v];
        }
      }
    }
  }
  for (int r = 0; r < TR; ++r) {
    for (int t = 0; t < TW; ++t) {
      for (int v = 0; v < VECS; ++v) {
        A* out = sums + r * row_ld + t * C + v * VL;
        const V sum = loadu<V>(out) + acc[r][t][v];
        __builtin_memcpy(out, &sum, sizeof(V));
      }
    }
  }
}

template <int TR, int TW, typename A, typename S>
void depthwise_weight_grad_taps(int64_t channels, int64_t cols, const S* x, int64_t row_step,
                                int64_t tap_step, int64_t x_step, const S* gy, int64_t gy_step,
                                A* sums, int64_t row_ld, int64_t C) {
  constexpr int VL = kVL<A>;
  int64_t c0 = 0;
  for (; c0 + 2 * VL <= channels; c0 += 2 * VL) {
    depthwise_weight_grad_block<TR, TW, 2>(cols, x + c0, row_step, tap_step, x_step, gy + c0,
                                           gy_step, sums + c0, row_ld, C);
  }
  if (c0 < channels) {
    depthwise_weight_grad_block<TR, TW, 1>(cols, x + c0, row_step, tap_step, x_step, gy + c0,
                                           gy_step, sums + c0, row_ld, C);
  }
}

// The same for one kernel row of tw (<= kWeightGradTaps) taps, tw chosen at run time.
constexpr int kWeightGradTaps = 8;
template <typename A, typename S>
void depthwise_weight_grad_taps(int tw, int64_t channels, int64_t cols, const S* x, int64_t tap_step,
                                int64_t x_step, const S* gy, int64_t gy_step, A* sums, int64_t C) {
  const auto f = [&](auto taps) {
    depthwise_weight_grad_taps<1, decltype(taps)::value>(channels, cols, x, 0, tap_step, x_step, gy,
                                                         gy_step, sums, 0, C);
  };
  switch (tw) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, kWeightGradTaps>{});
  }
}

#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
// depthwise_weight_grad_block's whole 3 x 3 kernel for blocks of 32 bf16 channels at stride and
// dilation 1, with vdpbf16ps: pairs of columns (i, i + 1) sum x[i + t] gy[i] + x[i + 1 + t]
// gy[i + 1] per channel and tap t, each pair's two vectors interleaved as in the depthwise
// passes (dot_channel order, put back as the sums are added). cols is even; x and gy point at
// the run's first column, step apart.
inline void depthwise_weight_grad_3x3_dot(int64_t cols, const c10::BFloat16* x, int64_t row_step, int64_t step,
                                          const c10::BFloat16* gy, int64_t gy_step, float* sums, int64_t row_ld,
                                          int64_t C, int64_t c_dot) {
  for (int64_t c0 = 0; c0 < c_dot; c0 += kDotChannels) {
    __m512 lo[3][3], hi[3][3];
    for (int r = 0; r < 3; ++r) {
      for (int t = 0; t < 3; ++t) lo[r][t] = hi[r][t] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < cols; i += 2) {
      const __m512i g0 = _mm512_loadu_si512(gy + i * gy_step + c0), g1 = _mm512_loadu_si512(gy + (i + 1) * gy_step + c0);
      const __m512bh gl = (__m512bh)_mm512_unpacklo_epi16(g0, g1), gh = (__m512bh)_mm512_unpackhi_epi16(g0, g1);
#pragma GCC unroll 3
      for (int r = 0; r < 3; ++r) {
        const c10::BFloat16* xr = x + r * row_step + i * step + c0;
        __m512i xv[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) xv[j] = _mm512_loadu_si512(xr + j * step);
#pragma GCC unroll 3
        for (int t = 0; t < 3; ++t) {
          lo[r][t] = _mm512_dpbf16_ps(lo[r][t], (__m512bh)_mm512_unpacklo_epi16(xv[t], xv[t + 1]), gl);
          hi[r][t] = _mm512_dpbf16_ps(hi[r][t], (__m512bh)_mm512_unpackhi_epi16(xv[t], xv[t + 1]), gh);
        }
      }
    }
    // Channels back in order: 4 of lo, 4 of hi, and so on.
    const __m512i first = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i second = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
    for (int r = 0; r < 3; ++r) {
      for (int t = 0; t < 3; ++t) {
        float* out = sums + r * row_ld + t * C + c0;
        _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), _mm512_permutex2var_ps(lo[r][t], first, hi[r][t])));
        _mm512_storeu_ps(out + 16, _mm512_add_ps(_mm512_loadu_ps(out + 16), _mm512_permutex2var_ps(lo[r][t], second, hi[r][t])));
      }
    }
  }
}
#endif

// Work items are chunks of output rows of one image (a size-fixed split), each with its own
// partial sums [tap][channel]; the chunks' sums are then added in chunk order, so the result is
// the same for any thread count. Along an output row, blocks of channel vectors sum the taps of
// a kernel row at once (of the whole kernel for 3 x 3 where all its rows read inside x), over the
// columns where all of them read inside x (the few others tap by tap), so x and gy come from L1
// (tap by tap, every tap streamed the row's x and gy from L2 again: dw3x3 144 @56 channels_last,
// 2 threads, 1.2-1.5 -> 0.83-0.86 ms). Channels past the last whole vector (all of them for
// float16) go one at a time.
template <typename T>
void depthwise_weight_grad_cl(const ConvGeometry& g, View4<const T> x, View4<const T> gy,
                              View4<T> gw) {
  using A = typename AccOf<T>::type;
  constexpr int VL = kVL<A>;
  const int64_t C = g.C_in, KHW = g.KH * g.KW;
  const int64_t c_blocked = kWidenedVectors<T> ? C / VL * VL : 0;
  constexpr int64_t kChunkRows = 8;
  const int64_t chunks_per_image = ceil_div(g.OH, kChunkRows), chunks = g.N * chunks_per_image;
  const int64_t x_step = g.sW * x.sW, tap_step = g.dW * x.sW, row_step = g.dH * x.sH;
  Scratch<A> partial(chunks * KHW * C);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch<int64_t> bounds(2 * g.KW);  // output columns [lo, hi) of tap kj read inside x
    int64_t* lo = bounds.get();
    int64_t* hi = lo + g.KW;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / chunks_per_image, oh0 = (item % chunks_per_image) * kChunkRows;
      A* sums = partial.get() + item * KHW * C;
      fill_zero(sums, KHW * C);
      for (int64_t oh = oh0; oh < min64(g.OH, oh0 + kChunkRows); ++oh) {
        const T* go_row = gy.data + n * gy.sN + oh * gy.sH;
        const T* gp = go_row;
        const int64_t ih0 = oh * g.sH - g.pH;
        // x's row of kernel row ki, at output column 0 of tap kj (may point outside x).
        auto x_at = [&](int64_t ki, int64_t kj) {
          return x.data + n * x.sN + (ih0 + ki * g.dH) * x.sH + (kj * g.dW - g.pW) * x.sW;
        };
        for (int64_t kj = 0; kj < g.KW; ++kj) run_inside(g, 0, kj * g.dW - g.pW, g.OW, lo[kj], hi[kj]);  // any row inside
        int64_t all_lo = 0, all_hi = g.OW;  // the columns where every tap of a row reads inside
        for (int64_t kj = 0; kj < g.KW; ++kj) all_lo = max64(all_lo, lo[kj]), all_hi = min64(all_hi, hi[kj]);
        all_hi = max64(all_lo, all_hi);
        const bool whole_3x3 = g.KH == 3 && g.KW == 3 && inside(ih0, g.H) && inside(ih0 + 2 * g.dH, g.H);
        for (int64_t ki = 0; ki < g.KH; ++ki) {
          if (!inside(ih0 + ki * g.dH, g.H)) continue;
          A* row_sums = sums + ki * g.KW * C;
          const auto xp = [&](int64_t kj, int64_t ow) {
            return x_at(ki, kj) + ow * x_step;
          };
          if (whole_3x3) {
            if (ki == 0 && all_lo < all_hi) {
              // bf16 blocks of 32 channels by pairs of columns; the float sums take the rest.
              int64_t c_dot = 0, pair_cols = 0;
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
              if constexpr (std::is_same_v<T, c10::BFloat16>) {
                if (tap_step == x_step) {
                  c_dot = C / kDotChannels * kDotChannels;
                  pair_cols = (all_hi - all_lo) / 2 * 2;
                  depthwise_weight_grad_3x3_dot(pair_cols, xp(0, all_lo), row_step, x_step, gp + all_lo * gy.sW,
                                                gy.sW, sums, g.KW * C, C, c_dot);
                }
              }
#endif
              const auto float_sums = [&](int64_t c_from, int64_t c_to, int64_t col_from) {
                if (c_from >= c_to || col_from >= all_hi) return;
                depthwise_weight_grad_taps<3, 3>(c_to - c_from, all_hi - col_from, xp(0, col_from) + c_from, row_step,
                                                 tap_step, x_step, gp + col_from * gy.sW + c_from, gy.sW, sums + c_from,
                                                 g.KW * C, C);
              };
              float_sums(0, c_dot, all_lo + pair_cols);  // an odd run's last column
              float_sums(c_dot, c_blocked, all_lo);
            }
          } else {
            for (int64_t kj0 = 0; kj0 < g.KW && all_lo < all_hi; kj0 += kWeightGradTaps) {
              depthwise_weight_grad_taps<A>(static_cast<int>(min64(kWeightGradTaps, g.KW - kj0)), c_blocked,
                                            all_hi - all_lo, xp(kj0, all_lo), tap_step, x_step,
                                            gp + all_lo * gy.sW, gy.sW, row_sums + kj0 * C, C);
            }
          }
          for (int64_t kj = 0; kj < g.KW; ++kj) {
            // The columns where some taps read outside, tap by tap.
            for (const auto [from, to] : {std::pair{lo[kj], min64(hi[kj], all_lo)},
                                          std::pair{max64(lo[kj], all_hi), hi[kj]}}) {
              if (from >= to) continue;
              depthwise_weight_grad_taps<A>(1, c_blocked, to - from, xp(kj, from), 0, x_step,
                                            gp + from * gy.sW, gy.sW, row_sums + kj * C, C);
            }
            const T* x_tap = x_at(ki, kj);
            A* tap_sums = row_sums + kj * C;
            for (int64_t c = c_blocked; c < C; ++c) {
              A acc = A(0);
              for (int64_t ow = lo[kj]; ow < hi[kj]; ++ow) {
                acc += static_cast<A>(go_row[ow * gy.sW + c]) * static_cast<A>(x_tap[ow * x_step + c]);
              }
              tap_sums[c] += acc;
            }
          }
        }
      }
    }
  });
  at::parallel_for(0, C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t t = 0; t < KHW; ++t) {
        A sum = partial.get()[t * C + c];
        for (int64_t k = 1; k < chunks; ++k) sum += partial.get()[(k * KHW + t) * C + c];
        gw.data[c * gw.sN + (t / g.KW) * gw.sH + (t % g.KW) * gw.sW] = static_cast<T>(sum);
      }
    }
  });
}

// 8 x 8 transposition in registers: r[i][j] -> r[j][i], three rounds of two-vector shuffles.
template <typename V>
inline void transpose8(V r[8]) {
  using I = typename IndexVec<V>::type;
  V a[8], b[8];
  for (int i = 0; i < 8; i += 2) {
    a[i] = __builtin_shuffle(r[i], r[i + 1], I{0, 8, 2, 10, 4, 12, 6, 14});
    a[i + 1] = __builtin_shuffle(r[i], r[i + 1], I{1, 9, 3, 11, 5, 13, 7, 15});
  }
  for (int i = 0; i < 8; i += 4) {
    for (int j = 0; j < 2; ++j) {
      b[i + j] = __builtin_shuffle(a[i + j], a[i + j + 2], I{0, 1, 8, 9, 4, 5, 12, 13});
      b[i + j + 2] = __builtin_shuffle(a[i + j], a[i + j + 2], I{2, 3, 10, 11, 6, 7, 14, 15});
    }
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = __builtin_shuffle(b[j], b[j + 4], I{0, 1, 2, 3, 8, 9, 10, 11});
    r[j + 4] = __builtin_shuffle(b[j], b[j + 4], I{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// dst[t * stride + m] = rows[m][t] for 8 rows of len values each, 8 x 8 blocks at a time through
// registers: the GEMMs' operand packing, done value by value, took longer than the GEMM it fed
// (1x1 64->256 NCHW weight grad).
template <typename T, typename A>
void interleave8(const T* const rows[8], int64_t len, A* dst, int64_t stride) {
  int64_t t = 0;
  if constexpr (std::is_same_v<T, A>) {
    using L = Lanes<A>;
    using V = typename Vec8<L>::type;
    for (; t + 8 <= len; t += 8) {
      V r[8];
      for (int m = 0; m < 8; ++m) r[m] = loadu<V>(reinterpret_cast<const L*>(rows[m] + t));
      transpose8(r);
      for (int j = 0; j < 8; ++j) __builtin_memcpy(dst + (t + j) * stride, &r[j], sizeof(V));
    }
  }
  for (; t < len; ++t) {
    for (int m = 0; m < 8; ++m) dst[t * stride + m] = static_cast<A>(rows[m][t]);
  }
}

// Two rows of 32 bf16 values as pairs: dst[2 r + e] = (e ? b : a)[r] (b null: zeros).
inline void interleave_pairs(const c10::BFloat16* a, const c10::BFloat16* b, c10::BFloat16* dst) {
  typedef uint16_t Row __attribute__((vector_size(64)));
  typedef int16_t Index __attribute__((vector_size(64)));
  Index lo, hi;
  for (int l = 0; l < 32; ++l) lo[l] = l / 2 + (l % 2) * 32, hi[l] = lo[l] + 16;
  const Row ra = loadu<Row>(reinterpret_cast<const uint16_t*>(a));
  const Row rb = b ? loadu<Row>(reinterpret_cast<const uint16_t*>(b)) : Row{};
  // Two stores from registers: copied as an array, the pair also went to the stack, and those
  // stores, as far as 4 KB aliasing goes, held up the next loads in some processes and not
  // others (3x3 512 @7 bf16 NCHW forward: 6.0-6.2 ms in about half the processes, 4.7-4.9 in
  // the rest; now 4.7-5.0 in 18 of 18).
  const Row first = __builtin_shuffle(ra, rb, lo), second = __builtin_shuffle(ra, rb, hi);
  __builtin_memcpy(dst, &first, sizeof(Row));
  __builtin_memcpy(dst + 32, &second, sizeof(Row));
}

// Channels [c0, c0 + count) of image n of src (H x W) as planes: channel c's (h, w) to
// dst[c * plane + h * cols + w]. From channels_last memory 8 channels x 8 columns at a time go
// through registers (bf16 into float widened after the transpose): element by element, the
// scattered reads and writes cost more than the convolutions they feed. Columns are the outer
// loop and channels the inner one, so the pieces of a position's channels meet in time: with
// channels outer, a channels_last side of 1024 bf16 channels took 16-byte pieces 2 KB apart, all
// in two sets of L1, evicted before their lines were whole (bf16 1x1 1024->256 @14 NCHW forward:
// 1.40 -> 0.98 ms, 2 threads).
template <typename T, typename A>
void gather_planes(const View4<const T>& src, int64_t n, int64_t c0, int64_t count, int64_t H,
                   int64_t W, A* dst, int64_t plane, int64_t cols) {
  int64_t c8 = 0;
  constexpr bool widen = std::is_same_v<T, c10::BFloat16> && std::is_same_v<A, float>;
  if constexpr (std::is_same_v<T, A> || widen) {
    using L = Lanes<T>;
    using V = typename Vec8<L>::type;
    const int64_t c8_end = src.sC == 1 ? count / 8 * 8 : 0;
    for (int64_t h = 0; c8_end > 0 && h < H; ++h) {
      const T* in_row = src.data + n * src.sN + c0 + h * src.sH;
      A* out_row = dst + h * cols;
      int64_t w0 = 0;
      for (; w0 + 8 <= W; w0 += 8) {
        for (c8 = 0; c8 < c8_end; c8 += 8) {
          V r[8];
          for (int l = 0; l < 8; ++l) r[l] = loadu<V>(reinterpret_cast<const L*>(in_row + c8 + (w0 + l) * src.sW));
          transpose8(r);
          A* out = out_row + c8 * plane + w0;
          for (int l = 0; l < 8; ++l) {
            if constexpr (widen) {
              using FloatBits = typename Vec8<uint32_t>::type;
              const FloatBits bits = __builtin_convertvector(r[l], FloatBits) << 16;
              __builtin_memcpy(out + l * plane, &bits, sizeof(bits));
            } else {
              __builtin_memcpy(out + l * plane, &r[l], sizeof(V));
            }
          }
        }
      }
      for (; w0 < W; ++w0) {
        for (int64_t c = 0; c < c8_end; ++c) out_row[c * plane + w0] = in_row[w0 * src.sW + c];
      }
    }
    c8 = c8_end;
  }
  for (int64_t c = c8; c < count; ++c) {
    const T* in = src.data + n * src.sN + (c0 + c) * src.sC;
    for (int64_t h = 0; h < H; ++h) {
      A* row = dst + c * plane + h * cols;
      if (src.sW == 1) {
        copy_run(row, in + h * src.sH, W);
      } else {
        for (int64_t w = 0; w < W; ++w) row[w] = static_cast<A>(in[h * src.sH + w * src.sW]);
      }
    }
  }
}

// The reverse: planes (as laid out above) into channels [c0, c0 + count) of image n of dst.
template <typename T, typename A>
void scatter_planes(const A* src, int64_t plane, int64_t cols, const View4<T>& dst, int64_t n,
                    int64_t c0, int64_t count, int64_t H, int64_t W) {
  int64_t c8 = 0;
  if constexpr (std::is_same_v<T, A>) {
    using L = Lanes<A>;
    using V = typename Vec8<L>::type;
    const int64_t c8_end = dst.sC == 1 ? count / 8 * 8 : 0;
    for (int64_t h = 0; c8_end > 0 && h < H; ++h) {
      const A* in_row = src + h * cols;
      T* out_row = dst.data + n * dst.sN + c0 + h * dst.sH;
      int64_t w0 = 0;
      for (; w0 + 8 <= W; w0 += 8) {
        for (c8 = 0; c8 < c8_end; c8 += 8) {
          V r[8];
          for (int l = 0; l < 8; ++l) r[l] = loadu<V>(reinterpret_cast<const L*>(in_row + (c8 + l) * plane + w0));
          transpose8(r);
          for (int l = 0; l < 8; ++l) __builtin_memcpy(out_row + c8 + (w0 + l) * dst.sW, &r[l], sizeof(V));
        }
      }
      for (; w0 < W; ++w0) {
        for (int64_t c = 0; c < c8_end; ++c) out_row[w0 * dst.sW + c] = in_row[c * plane + w0];
      }
    }
    c8 = c8_end;
  }
  for (int64_t c = c8; c < count; ++c) {
    T* out = dst.data + n * dst.sN + (c0 + c) * dst.sC;
    for (int64_t h = 0; h < H; ++h) {
      const A* row = src + c * plane + h * cols;
      if (dst.sW == 1) {
        copy_run(out + h * dst.sH, row, W);
      } else {
        for (int64_t w = 0; w < W; ++w) out[h * dst.sH + w * dst.sW] = static_cast<T>(row[w]);
      }
    }
  }
}

// Stride-1 convolution over NCHW-style planes, flat: on a zero-padded input plane `cols` wide,
// output (oh, ow) reads flat index oh * cols + ow plus a per-tap offset, so a plane of outputs is
// one run of OH * cols (the cols - OW past each row's end are computed and dropped). Register
// blocks of OB output channels x VB vectors of positions are summed over the group's input
// channels and taps. Depthwise convs take OB = 1 (an output channel reads one plane); grouped
// convs with 8 or 16 channels a group take OB = 8, so each vector of x loaded meets 8 weights
// and the FMAs use whole registers (channels in the lanes would fill half of one).
struct FlatPlanes {
  int64_t cols, span, plane;  // padded row length, outputs per plane (rounded), plane size
  Scratch<int64_t> offset;    // per tap, in the padded plane

  FlatPlanes(const ConvGeometry& g, int64_t block) : offset(g.KH * g.KW) {
    const PaddedPlane padded(g);
    cols = padded.cols;
    span = round_up(g.OH * cols, block);
    plane = max64(padded.size(), span + (g.KH - 1) * g.dH * cols + (g.KW - 1) * g.dW);
    for (int64_t t = 0; t < g.KH * g.KW; ++t) offset.get()[t] = (t / g.KW) * g.dH * cols + (t % g.KW) * g.dW;
  }

  // Input channels [c0, c0 + count) of image n into `dst`, one padded plane each. Only the
  // inside is written: the caller zeroes `dst` once and the borders stay zero.
  template <typename T, typename A>
  void load(const ConvGeometry& g, const View4<const T>& x, int64_t n, int64_t c0, int64_t count, A* dst) const {
    gather_planes(x, n, c0, count, g.H, g.W, dst + g.pH * cols + g.pW, plane, cols);
  }
};

// The flat kernels' register block: acc[o][v] += sum over channels c and taps t of
// w[c * w_step + t * OB + o] * src[c * plane + offset[t] + v * VL ...], each vector of src loaded
// meeting OB weights.
template <typename A, int OB, int VB>
inline void flat_block(typename Vec<A>::type (&acc)[OB][VB], int64_t channels, int64_t taps, const A* src,
                       int64_t plane, const int64_t* offset, const A* w, int64_t w_step) {
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  for (int64_t c = 0; c < channels; ++c) {
    const A* base = src + c * plane;
    const A* wk = w + c * w_step;
    for (int64_t t = 0; t < taps; ++t) {
      V wv[OB];
#pragma GCC unroll 8
      for (int o = 0; o < OB; ++o) wv[o] = splat<V>(wk[t * OB + o]);
#pragma GCC unroll 8
      for (int v = 0; v < VB; ++v) {
        const V xv = loadu<V>(base + offset[t] + v * VL);
#pragma GCC unroll 8
        for (int o = 0; o < OB; ++o) acc[o][v] += wv[o] * xv;
      }
    }
  }
}

template <typename T, int OB, int VB>
void forward_flat(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                  View4<T> y) {
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  const FlatPlanes flat(g, VB * VL);
  const int64_t Cg = g.C_in_g(), Mg = g.C_out_g(), KHW = g.KH * g.KW, o_blocks = Mg / OB;
  // Weights as [block of OB output channels][ic][tap][OB].
  Scratch<A> wp(g.C_out * Cg * KHW);
  for (int64_t oc = 0; oc < g.C_out; ++oc) {
    for (int64_t ic = 0; ic < Cg; ++ic) {
      for (int64_t t = 0; t < KHW; ++t) {
        wp.get()[(((oc / OB) * Cg + ic) * KHW + t) * OB + oc % OB] =
            static_cast<A>(w.data[oc * w.sN + ic * w.sC + (t / g.KW) * w.sH + (t % g.KW) * w.sW]);
      }
    }
  }
  at::parallel_for(0, g.N * g.groups, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> xp(Cg * flat.plane), out(OB * flat.span);
    fill_zero(xp.get(), Cg * flat.plane);
    const int64_t* offset = flat.offset.get();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.groups, grp = item % g.groups;
      flat.load(g, x, n, grp * Cg, Cg, xp.get());
      for (int64_t ob = 0; ob < o_blocks; ++ob) {
        const int64_t oc0 = grp * Mg + ob * OB;
        const A* wb = wp.get() + oc0 * Cg * KHW;
        V b[OB];
        for (int o = 0; o < OB; ++o) b[o] = splat<V>(bias ? static_cast<A>(bias[oc0 + o]) : A(0));
        for (int64_t i0 = 0; i0 < flat.span; i0 += VB * VL) {
          V acc[OB][VB];
          for (int o = 0; o < OB; ++o) {
            for (int v = 0; v < VB; ++v) acc[o][v] = b[o];
          }
          flat_block<A, OB, VB>(acc, Cg, KHW, xp.get() + i0, flat.plane, offset, wb, KHW * OB);
          for (int o = 0; o < OB; ++o) {
            for (int v = 0; v < VB; ++v) *reinterpret_cast<V*>(out.get() + o * flat.span + i0 + v * VL) = acc[o][v];
          }
        }
        scatter_planes(out.get(), flat.span, flat.cols, y, n, oc0, OB, g.OH, g.OW);
      }
    }
  });
}

// Lane l of the result is the sum of v[l]'s lanes, for as many vectors as lanes (v is
// overwritten): a tree of pairs, each level folding halves of two vectors' segments into one,
// lanes - 1 adds in all. Lane by lane, the sums took as long as the FMAs that fed them where
// those ran over a few hundred positions (ResNeXt's grouped weight grad at 14 x 14).
template <typename V>
inline V lane_sums(V* v) {
  constexpr int VL = static_cast<int>(kLanes<V>);
#pragma GCC unroll 8
  for (int size = VL, count = VL; size > 1; size /= 2, count /= 2) {  // segments of `size` lanes
    const int half = size / 2, segments = VL / size;
    LaneIndex<V> lo, hi;  // out: a's folded segments, then b's
#pragma GCC unroll 16
    for (int l = 0; l < VL; ++l) {
      const int q = l / half, from_b = q / segments, segment = q % segments;
      lo[l] = from_b * VL + segment * size + l % half;
      hi[l] = lo[l] + half;
    }
#pragma GCC unroll 8
    for (int i = 0; i < count / 2; ++i) {
      v[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], lo) + __builtin_shuffle(v[2 * i], v[2 * i + 1], hi);
    }
  }
  return v[0];
}

// Whether p[0, n) are all finite, in vectors (x * 0 is 0 for finite x, else NaN): ResNeXt's
// weight grad checks 150 thousand partial sums.
template <typename A>
bool all_finite(const A* p, int64_t n) {
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  V vectors{};
  A rest = A(0);
  int64_t k = 0;
  for (; k + VL <= n; k += VL) vectors += loadu<V>(p + k) * V{};
  for (; k < n; ++k) rest += p[k] * A(0);
  for (int l = 0; l < VL; ++l) rest += vectors[l];
  return rest == A(0);
}

// Its weight gradient, also flat (OB = 1 for depthwise convs, 8 for grouped ones): gw[oc][ic][tap] = sum over flat positions i
// of gy[oc][i] * x_padded[ic][i + offset[tap]], gy staged on the same flat grid with zeros past
// each row's end. Register blocks: OB output channels x up to 3 taps of a kernel row, each a
// vector of partial sums reduced across lanes at the end, into the block's own run of partial
// sums (whole vectors: added lane by lane into gw's order, they took a tenth of the time). Work
// items are (chunk of images, group), with chunks fixed by the sizes and their sums added in
// order: the same result for any thread count.
template <typename T, int OB>
void grouped_weight_grad_flat(const ConvGeometry& g, View4<const T> x, View4<const T> gy, View4<T> gw) {
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>, TB = 3, KP = (OB * TB + VL - 1) / VL * VL;  // a block's sums, padded
  const FlatPlanes flat(g, VL);
  const int64_t Cg = g.C_in_g(), Mg = g.C_out_g(), KHW = g.KH * g.KW, tap_blocks = ceil_div(KHW, TB);
  const int64_t chunks = min64(g.N, 16), per_chunk = ceil_div(g.N, chunks);
  const int64_t group_sums = Mg / OB * Cg * tap_blocks * KP;  // [block of OB][ic][block of TB taps][KP]
  const int64_t slab = g.groups * group_sums;                 // one chunk's partial sums
  Scratch<A> partial(chunks * slab);
  // The flat positions past each output row (and past the last) hold zeros of gy, which meet x's
  // values at the row's end: an infinity there gives 0 * inf, NaN in sums that never read it.
  // Any such NaN shows in the sums, so only then are they summed again with those positions' x
  // read as zeros (masked, slower; inputs that are all finite never pay for it).
  const auto sum_chunks = [&](auto masked) {
    at::parallel_for(0, chunks * g.groups, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> xp(Cg * flat.plane), gp(Mg * flat.span);
      fill_zero(xp.get(), Cg * flat.plane);
      fill_zero(gp.get(), Mg * flat.span);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t chunk = item / g.groups, grp = item % g.groups;
        A* sums = partial.get() + chunk * slab + grp * group_sums;
        fill_zero(sums, group_sums);
        for (int64_t n = chunk * per_chunk; n < min64(g.N, (chunk + 1) * per_chunk); ++n) {
          flat.load(g, x, n, grp * Cg, Cg, xp.get());
          gather_planes(gy, n, grp * Mg, Mg, g.OH, g.OW, gp.get(), flat.span, flat.cols);
          for (int64_t ob = 0; ob < Mg / OB; ++ob) {
            const A* go = gp.get() + ob * OB * flat.span;
            for (int64_t ic = 0; ic < Cg; ++ic) {
              for (int64_t t0 = 0; t0 < KHW; t0 += TB) {
                const int taps = static_cast<int>(min64(TB, KHW - t0));
                const A* src[TB];
                for (int j = 0; j < TB; ++j) src[j] = xp.get() + ic * flat.plane + flat.offset.get()[t0 + (j < taps ? j : 0)];
                V acc[OB][TB];
                for (int o = 0; o < OB; ++o) {
                  for (int j = 0; j < TB; ++j) acc[o][j] = V{};
                }
                for (int64_t i = 0; i < flat.span; i += VL) {
                  V xv[TB];
  #pragma GCC unroll 4
                  for (int j = 0; j < TB; ++j) xv[j] = loadu<V>(src[j] + i);
                  if constexpr (decltype(masked)::value) {
                    LaneIndex<V> output;
                    for (int l = 0; l < VL; ++l) output[l] = i + l < g.OH * flat.cols && (i + l) % flat.cols < g.OW ? -1 : 0;
                    for (int j = 0; j < TB; ++j) xv[j] = output ? xv[j] : V{};
                  }
  #pragma GCC unroll 8
                  for (int o = 0; o < OB; ++o) {
                    const V gv = *reinterpret_cast<const V*>(go + o * flat.span + i);
  #pragma GCC unroll 4
                    for (int j = 0; j < TB; ++j) acc[o][j] += gv * xv[j];
                  }
                }
                // VL of the block's sums at a time, k = o * TB + j, unrolled so that acc stays in
                // registers (indexed at run time, it went through memory: a quarter of the time).
                A* block_sums = sums + ((ob * Cg + ic) * tap_blocks + t0 / TB) * KP;
#pragma GCC unroll 4
                for (int k0 = 0; k0 < KP; k0 += VL) {
                  V part[VL];
#pragma GCC unroll 16
                  for (int k = 0; k < VL; ++k) part[k] = k0 + k < OB * TB ? acc[(k0 + k) / TB][(k0 + k) % TB] : V{};
                  const V sum = loadu<V>(block_sums + k0) + lane_sums(part);
                  __builtin_memcpy(block_sums + k0, &sum, sizeof(V));
                }
              }
            }
          }
        }
      }
    });
  };
  sum_chunks(std::false_type{});
  if (!all_finite(partial.get(), chunks * slab)) sum_chunks(std::true_type{});
  at::parallel_for(0, g.C_out, 1, [&](int64_t begin, int64_t end) {
    for (int64_t oc = begin; oc < end; ++oc) {
      const int64_t o = oc % Mg;
      const A* oc_sums = partial.get() + oc / Mg * group_sums + o / OB * Cg * tap_blocks * KP + o % OB * TB;
      for (int64_t k = 0; k < Cg * KHW; ++k) {
        const int64_t tap = k % KHW;
        const A* first = oc_sums + (k / KHW * tap_blocks + tap / TB) * KP + tap % TB;
        A sum = first[0];
        for (int64_t c = 1; c < chunks; ++c) sum += first[c * slab];
        gw.data[oc * gw.sN + (k / KHW) * gw.sC + (k % KHW / g.KW) * gw.sH + (k % g.KW) * gw.sW] = static_cast<T>(sum);
      }
    }
  });
}

// Depthwise convs with small dense NCHW output planes (MobileNetV2's 7 x 7, at stride 1 or 2)
// run the channels_last kernels on transposed copies: the NCHW kernels' setup per plane
// outweighs a few dozen outputs (2 threads, forward+backward: dw3x3 960 @7 1.8 -> 1.2-1.4 ms, dw3x3
// s2 160 @14 0.93 -> 0.5 ms; at 14 x 14 outputs the copies lost, 2.4 -> 3.1 ms).
template <typename T>
bool dense_nchw(const View4<T>& t, int64_t C, int64_t H, int64_t W) {
  return t.sW == 1 && t.sH == W && t.sC == H * W && t.sN == C * H * W;
}

template <typename T, typename U>
bool use_depthwise_via_channels_last(const ConvGeometry& g, const View4<T>& input_side, const View4<U>& output_side) {
  return g.C_out_g() == 1 && g.OH * g.OW <= 64 && g.H * g.W <= 256 && dense_nchw(input_side, g.C_in, g.H, g.W) &&
         dense_nchw(output_side, g.C_out, g.OH, g.OW);
}

// So do the forwards and input grads of float and bf16 ones with weights that are not all
// finite: the NCHW kernels read padding as zeros, and an infinite weight makes NaN of them where
// torch's float and bf16 depthwise convs (and the channels_last kernels) skip the padding.
// (torch's double ones multiply it, as the NCHW kernels do.)
template <typename T, typename U, typename W>
bool use_depthwise_via_channels_last(const ConvGeometry& g, const View4<T>& input_side, const View4<U>& output_side,
                                     const View4<W>& w) {
  return use_depthwise_via_channels_last(g, input_side, output_side) ||
         (!std::is_same_v<W, const double> && g.C_out_g() == 1 && dense_nchw(input_side, g.C_in, g.H, g.W) &&
          dense_nchw(output_side, g.C_out, g.OH, g.OW) && !finite_depthwise_weights(g, w));
}

// Dense NCHW images as [C][P] matrices (P = H x W) to channels_last [P][C] and back, 8 x 8
// blocks through registers.
template <typename T>
View4<const T> to_channels_last(const View4<const T>& t, int64_t N, int64_t C, int64_t H, int64_t W,
                                Scratch<T>& copy) {
  const int64_t P = H * W;
  const View4<T> flat{copy.get(), P * C, 1, 0, C};
  constexpr int64_t kChunk = 64;
  const int64_t chunks = ceil_div(C, kChunk);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / chunks, c0 = item % chunks * kChunk;
      scatter_planes(t.data + n * t.sN + c0 * P, P, P, flat, n, c0, min64(kChunk, C - c0), 1, P);
    }
  });
  return {copy.get(), P * C, 1, W * C, C};
}

template <typename T>
void from_channels_last(const T* src, int64_t N, int64_t C, int64_t H, int64_t W, const View4<T>& t) {
  const int64_t P = H * W;
  const View4<const T> flat{src, P * C, 1, 0, C};
  constexpr int64_t kChunk = 64;
  const int64_t chunks = ceil_div(C, kChunk);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / chunks, c0 = item % chunks * kChunk;
      gather_planes(flat, n, c0, min64(kChunk, C - c0), 1, P, t.data + n * t.sN + c0 * P, P, P);
    }
  });
}

// kernel(src, dst) on channels_last copies of dense NCHW src (C planes of H x W) and dst (D
// planes of OH x OW), dst's copied back.
template <typename T, typename Kernel>
void via_channels_last(const View4<const T>& src, int64_t N, int64_t C, int64_t H, int64_t W,
                       const View4<T>& dst, int64_t D, int64_t OH, int64_t OW, Kernel kernel) {
  Scratch<T> src_copy(N * C * H * W), dst_copy(N * D * OH * OW);
  kernel(to_channels_last(src, N, C, H, W, src_copy), View4<T>{dst_copy.get(), OH * OW * D, 1, OW * D, D});
  from_channels_last(dst_copy.get(), N, D, OH, OW, dst);
}

// Depthwise K x K convolution at stride 1 (rows undilated) on planes: blocks of kRows output
// rows x kVectors vectors of columns sum in registers. Each vector loaded from an input row meets
// every output row of the block whose window covers that row, so loads are about one per two
// FMAs, against over one per FMA for a block along one row (forward_flat: ConvNeXt dw7x7 96 NCHW
// forward 2.5 ms, 2 threads, at about a third of the FMA rate).
constexpr int kDepthwiseRows = 4;
constexpr int kDepthwiseVectors = CONVEXT_VEC_BYTES == 64 ? 4 : 2;  // 16 or 8 sums: the registers

bool use_depthwise_rows(const ConvGeometry& g) {
  return g.C_in_g() == 1 && g.sH == 1 && g.sW == 1 && g.dH == 1 && g.KH == g.KW &&
         (g.KH == 3 || g.KH == 5 || g.KH == 7);
}

template <typename T, int K>
void depthwise_rows(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                    View4<T> y) {
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>, R = kDepthwiseRows, VB = kDepthwiseVectors;
  const PaddedPlane padded(g, /*split=*/false, round_up(g.OW, VB * VL) + (K - 1) * g.dW,
                           round_up(g.OH, R) + K - 1);
  const int64_t Mg = g.C_out_g(), len = padded.row_len;
  at::parallel_for(0, g.N * g.C_in, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> xp(padded.size());
    alignas(64) A wt[K * K];
    NextPlanePrefetch<T> next_plane(g, x);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.C_in, c = item % g.C_in;
      padded.load(g, x.data + n * x.sN + c * x.sC, x.sH, x.sW, xp.get(), item == begin);
      next_plane.start(item, end);
      for (int64_t m = 0; m < Mg; ++m) {
        const int64_t oc = c * Mg + m;
        for (int t = 0; t < K * K; ++t) wt[t] = static_cast<A>(w.data[oc * w.sN + t / K * w.sH + t % K * w.sW]);
        const V b = splat<V>(bias ? static_cast<A>(bias[oc]) : A(0));
        T* out = y.data + n * y.sN + oc * y.sC;
        for (int64_t oh0 = 0; oh0 < g.OH; oh0 += R) {
          next_plane.upto(m * g.OH + oh0 + R, Mg * g.OH);
          for (int64_t ow0 = 0; ow0 < g.OW; ow0 += VB * VL) {
            V acc[R][VB];
#pragma GCC unroll 16
            for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
              for (int v = 0; v < VB; ++v) acc[r][v] = b;
            }
            const A* src = xp.get() + oh0 * len + ow0;
#pragma GCC unroll 1
            for (int64_t kj = 0; kj < K; ++kj) {
#pragma GCC unroll 16
              for (int rr = 0; rr < R + K - 1; ++rr) {  // input rows oh0 + rr
                V xv[VB];
#pragma GCC unroll 4
                for (int v = 0; v < VB; ++v) {
                  xv[v] = loadu<V>(src + rr * len + kj * g.dW + v * VL);
                  // Held in a register: folded into each FMA instead, the load (split across
                  // cache lines at most taps) was repeated per output row and bound the loop.
                  asm("" : "+v"(xv[v]));
                }
#pragma GCC unroll 16
                for (int r = 0; r < R; ++r) {
                  if (rr - r < 0 || rr - r >= K) continue;  // kernel row rr - r of output row r
                  const V wv = splat<V>(wt[(rr - r) * K + kj]);
#pragma GCC unroll 4
                  for (int v = 0; v < VB; ++v) acc[r][v] += wv * xv[v];
                }
              }
            }
            for (int r = 0; r < R && oh0 + r < g.OH; ++r) {
              for (int v = 0; v < VB && ow0 + v * VL < g.OW; ++v) {
                T* dst = out + (oh0 + r) * y.sH + (ow0 + v * VL) * y.sW;
                const int64_t count = g.OW - ow0 - v * VL;
                if constexpr (kWidenedVectors<T>) {
                  if (y.sW == 1) {
                    store_lanes(dst, acc[r][v], count);
                    continue;
                  }
                }
                for (int64_t l = 0; l < min64(VL, count); ++l) dst[l * y.sW] = static_cast<T>(acc[r][v][l]);
              }
            }
          }
        }
      }
    }
  });
}

template <typename T>
void depthwise_forward(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                       View4<T> y) {
  if (g.C_out_g() == 1 && dense_channels_last(x, g.C_in) && dense_channels_last(y, g.C_out)) {
    return depthwise_forward_cl(g, x, w, bias, y);
  }
  if constexpr (kWidenedVectors<T>) {  // the kernels' whole vectors
    if (use_depthwise_via_channels_last(g, x, y, w)) {
      return via_channels_last(x, g.N, g.C_in, g.H, g.W, y, g.C_out, g.OH, g.OW,
                               [&](View4<const T> x_cl, View4<T> y_cl) { depthwise_forward_cl(g, x_cl, w, bias, y_cl); });
    }
  }
  if (use_depthwise_rows(g)) {
    if (g.KH == 3) return depthwise_rows<T, 3>(g, x, w, bias, y);
    if (g.KH == 5) return depthwise_rows<T, 5>(g, x, w, bias, y);
    return depthwise_rows<T, 7>(g, x, w, bias, y);
  }
  if (g.sH == 1 && g.sW == 1) return forward_flat<T, 1, 4>(g, x, w, bias, y);
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  // Rows not split into phases: split, this pass measured slower at stride 2 (MobileNetV2 dw s2
  // 96 NCHW, 2 threads: 4.2-4.8 -> 5.0-5.3 ms), unlike its weight and input grads. At column
  // stride 2 a vector of adjacent outputs sums in registers across the taps, each tap the even
  // lanes of two loads, so rows reach past the last vector's taps (the loop below, through a
  // row of sums in memory, measured 4.0-4.2 ms there).
  const bool vectors = g.sW == 2 && y.sW == 1;
  const PaddedPlane padded(g, /*split=*/false, vectors ? round_up(g.OW, VL) * 2 + (g.KW - 1) * g.dW : 0);
  const int64_t Mg = g.C_out_g();
  at::parallel_for(0, g.N * g.C_in, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> xp(padded.size());
    Scratch<A> acc(g.OW);
    Scratch<A> taps(g.KH * g.KW);
    NextPlanePrefetch<T> next_plane(g, x);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.C_in, c = item % g.C_in;
      padded.load(g, x.data + n * x.sN + c * x.sC, x.sH, x.sW, xp.get(), item == begin);
      next_plane.start(item, end);
      for (int64_t m = 0; m < Mg; ++m) {
        const int64_t oc = c * Mg + m;
        const T* wk = w.data + oc * w.sN;
        const A b = bias ? static_cast<A>(bias[oc]) : A(0);
        T* out = y.data + n * y.sN + oc * y.sC;
        if (vectors) {
          for (int64_t t = 0; t < g.KH * g.KW; ++t) taps.get()[t] = static_cast<A>(wk[t / g.KW * w.sH + t % g.KW * w.sW]);
          // kVecs vectors of a row at once, each its own chain of FMAs: one at a time, the chain
          // of KH x KW dependent FMAs was latency-bound (dw3x3 s2 96 @112: 0.8 of 2.4 ms). Past
          // the row's last vector, the last one is computed again and not stored.
          constexpr int kVecs = 4;
          const int64_t last = (ceil_div(g.OW, VL) - 1) * VL;
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            next_plane.upto(m * g.OH + oh + 1, Mg * g.OH);
            for (int64_t i = 0; i < g.OW; i += kVecs * VL) {
              int64_t ow0[kVecs];
              V sum[kVecs];
              for (int v = 0; v < kVecs; ++v) {
                ow0[v] = whole_vector_start<A>(min64(i + v * VL, last), g.OW);
                sum[v] = splat<V>(b);
              }
              for (int64_t ki = 0; ki < g.KH; ++ki) {
                const A* src = xp.get() + (oh * g.sH + ki * g.dH) * padded.row_len;
                for (int64_t kj = 0; kj < g.KW; ++kj) {
                  const V wv = splat<V>(taps.get()[ki * g.KW + kj]);
#pragma GCC unroll 4
                  for (int v = 0; v < kVecs; ++v) sum[v] += wv * load_every<V, 2>(src + ow0[v] * 2 + kj * g.dW);
                }
              }
#pragma GCC unroll 4
              for (int v = 0; v < kVecs; ++v) {
                if (v > 0 && ow0[v] == ow0[v - 1]) break;
                T* dst = out + oh * y.sH + ow0[v];
                if constexpr (kWidenedVectors<T>) {
                  store_lanes(dst, sum[v], g.OW - ow0[v]);
                } else {
                  for (int64_t l = 0; l < min64(VL, g.OW - ow0[v]); ++l) dst[l] = static_cast<T>(sum[v][l]);
                }
              }
            }
          }
          continue;
        }
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          next_plane.upto(m * g.OH + oh + 1, Mg * g.OH);
          A* a = acc.get();
          for (int64_t ow = 0; ow < g.OW; ++ow) a[ow] = b;
          for (int64_t ki = 0; ki < g.KH; ++ki) {
            for (int64_t kj = 0; kj < g.KW; ++kj) {
              const A wv = static_cast<A>(wk[ki * w.sH + kj * w.sW]);
              const A* src = xp.get() + (oh * g.sH + ki * g.dH) * padded.row_len + kj * g.dW;
              for (int64_t ow = 0; ow < g.OW; ++ow) a[ow] += wv * src[ow * g.sW];
            }
          }
          for (int64_t ow = 0; ow < g.OW; ++ow) out[oh * y.sH + ow * y.sW] = static_cast<T>(a[ow]);
        }
      }
    }
  });
}

// Depthwise input grad (one output channel per group) at column stride 2 on planes with
// contiguous rows, gathered: a gx row is two phases of columns, even and odd, and along a phase
// consecutive outputs read consecutive gy columns, so a vector of outputs sums its taps (the
// phase's kernel columns on the gy rows that the gx row's kernel rows reach) in registers, and
// the two phases' vectors interleave into 2 x VL columns of gx. gy's rows are first copied
// between zero columns. (Scattered tap by tap into a padded plane of gx, dw3x3 s2 96 @112 NCHW
// took 4.3 ms, torch 3.5 ms.) bf16 sums in float, its rows copied as float.
template <typename T>
void depthwise_input_grad_stride2_cols(const ConvGeometry& g, View4<const T> gy, View4<const T> w,
                                       const T* bias, View4<T> gx) {
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  // Phase p (gx columns 2j + p) and kernel column kj meet where p + pW - kj dW is even: output j
  // then reads gy column j + (p + pW - kj dW) / 2, at j + left + that in a copied row.
  const int64_t per_phase = round_up(ceil_div(g.W, 2), VL);
  const int64_t left = max64(0, ceil_div((g.KW - 1) * g.dW - g.pW, 2)) + 1;
  const int64_t row_len = left + max64(g.OW, per_phase + (1 + g.pW) / 2 + 1);
  LaneIndex<V> low, high;
  for (int l = 0; l < VL; ++l) low[l] = l % 2 * VL + l / 2, high[l] = l % 2 * VL + VL / 2 + l / 2;
  at::parallel_for(0, g.N * g.C_in, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> rows_mem(g.OH * row_len);
    A* rows = rows_mem.get();
    fill_zero(rows, g.OH * row_len);  // the columns outside gy's stay zero
    std::vector<const A*> reach(g.KH);
    std::vector<int64_t> reach_ki(g.KH);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.C_in, c = item % g.C_in;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        copy_run(rows + oh * row_len + left, gy.data + n * gy.sN + c * gy.sC + oh * gy.sH, g.OW);
      }
      const T* wk = w.data + c * w.sN;
      const V b = splat<V>(bias ? static_cast<A>(bias[c]) : A(0));
      T* out = gx.data + n * gx.sN + c * gx.sC;
      for (int64_t h = 0; h < g.H; ++h) {
        int64_t count = 0;  // the gy rows this gx row's kernel rows reach
        for (int64_t ki = 0; ki < g.KH; ++ki) {
          const int64_t t = h + g.pH - ki * g.dH;
          if (t < 0 || t % g.sH != 0 || t / g.sH >= g.OH) continue;
          reach[count] = rows + t / g.sH * row_len + left, reach_ki[count++] = ki;
        }
        T* dst = out + h * gx.sH;
        for (int64_t j0 = 0; 2 * j0 < g.W; j0 += VL) {
          V even = b, odd = b;
          for (int64_t r = 0; r < count; ++r) {
            for (int64_t kj = 0; kj < g.KW; ++kj) {
              const A wv = static_cast<A>(wk[reach_ki[r] * w.sH + kj * w.sW]);
              const int64_t shift = g.pW - kj * g.dW;  // phase 0 reads shift / 2, phase 1 (shift + 1) / 2
              if (shift % 2 == 0) {
                even += splat<V>(wv) * loadu<V>(reach[r] + j0 + shift / 2);
              } else {
                odd += splat<V>(wv) * loadu<V>(reach[r] + j0 + (shift + 1) / 2);
              }
            }
          }
          const int64_t cols = g.W - 2 * j0;
          store_lanes(dst + 2 * j0, __builtin_shuffle(even, odd, low), cols);
          if (cols > VL) store_lanes(dst + 2 * j0 + VL, __builtin_shuffle(even, odd, high), cols - VL);
        }
      }
    }
  });
}

template <typename T>
void depthwise_input_grad(const ConvGeometry& g, View4<const T> gy, View4<const T> w,
                          const T* bias, View4<T> gx) {
  if (g.C_out_g() == 1 && dense_channels_last(gy, g.C_out) && dense_channels_last(gx, g.C_in)) {
    return depthwise_input_grad_cl(g, gy, w, bias, gx);
  }
  if constexpr (kWidenedVectors<T>) {  // the kernels' whole vectors
    if (use_depthwise_via_channels_last(g, gx, gy, w)) {
      return via_channels_last(gy, g.N, g.C_out, g.OH, g.OW, gx, g.C_in, g.H, g.W,
                               [&](View4<const T> gy_cl, View4<T> gx_cl) { depthwise_input_grad_cl(g, gy_cl, w, bias, gx_cl); });
    }
  }
  if (g.C_out_g() == 1 && g.sH == 1 && g.sW == 1 && g.pH <= g.dH * (g.KH - 1) &&
      g.pW <= g.dW * (g.KW - 1)) {
    // At stride 1 the transposed pass is the forward pass over gy, padded by d (k - 1) - p, with
    // the kernel flipped (read through negative strides), by the forward's own kernels (the
    // flat one where the rows kernel applies took twice as long: ConvNeXt's dw7x7 96 @56 NCHW
    // input grad 1.6 ms, its forward 0.8).
    ConvGeometry t = g;
    t.H = g.OH, t.W = g.OW, t.OH = g.H, t.OW = g.W;
    t.pH = g.dH * (g.KH - 1) - g.pH, t.pW = g.dW * (g.KW - 1) - g.pW;
    const View4<const T> flipped{w.data + (g.KH - 1) * w.sH + (g.KW - 1) * w.sW, w.sN, w.sC,
                                 -w.sH, -w.sW};
    return depthwise_forward(t, gy, flipped, bias, gx);
  }
  using A = typename AccOf<T>::type;
  if constexpr (kWidenedVectors<T>) {
    if (g.C_out_g() == 1 && g.sW == 2 && gy.sW == 1 && gx.sW == 1) {
      return depthwise_input_grad_stride2_cols(g, gy, w, bias, gx);
    }
  }
  const PaddedPlane padded(g);
  const int64_t Mg = g.C_out_g();
  at::parallel_for(0, g.N * g.C_in, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> gp(padded.size());
    Scratch<A> row(g.OW);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.C_in, c = item % g.C_in;
      fill_zero(gp.get(), padded.size());
      for (int64_t m = 0; m < Mg; ++m) {
        const int64_t oc = c * Mg + m;
        const T* wk = w.data + oc * w.sN;
        const T* src = gy.data + n * gy.sN + oc * gy.sC;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          A* r = row.get();
          for (int64_t ow = 0; ow < g.OW; ++ow) r[ow] = static_cast<A>(src[oh * gy.sH + ow * gy.sW]);
          for (int64_t ki = 0; ki < g.KH; ++ki) {
            for (int64_t kj = 0; kj < g.KW; ++kj) {
              const A wv = static_cast<A>(wk[ki * w.sH + kj * w.sW]);
              A* dst = gp.get() + (oh * g.sH + ki * g.dH) * padded.row_len + padded.at(kj * g.dW);
              for (int64_t ow = 0; ow < g.OW; ++ow) dst[ow] += wv * r[ow];
            }
          }
        }
      }
      const A b = bias ? static_cast<A>(bias[c]) : A(0);
      T* out = gx.data + n * gx.sN + c * gx.sC;
      for (int64_t h = 0; h < g.H; ++h) {
        const A* src = gp.get() + (h + g.pH) * padded.row_len;
        T* row = out + h * gx.sH;
        int64_t w0 = 0;
        if constexpr (std::is_same_v<T, A>) {
          if (g.sW == 2 && gx.sW == 1) {  // 8 even and 8 odd columns back into 16, through registers
            using V8 = typename Vec8<A>::type;
            using I = typename IndexVec<V8>::type;
            const A* even = src + padded.at(g.pW);
            const A* odd = src + padded.at(g.pW + 1);
            const V8 bv = splat<V8>(b);
            for (; w0 + 16 <= g.W; w0 += 16) {
              const V8 e = loadu<V8>(even + w0 / 2) + bv, o = loadu<V8>(odd + w0 / 2) + bv;
              const V8 lo = __builtin_shuffle(e, o, I{0, 8, 1, 9, 2, 10, 3, 11});
              const V8 hi = __builtin_shuffle(e, o, I{4, 12, 5, 13, 6, 14, 7, 15});
              __builtin_memcpy(row + w0, &lo, sizeof(V8));
              __builtin_memcpy(row + w0 + 8, &hi, sizeof(V8));
            }
          }
        }
        for (int64_t p = 0; p < g.sW; ++p) {  // gx columns p, p + sW, ...: one phase each
          const A* in = src + padded.at(g.pW + p);
          for (int64_t j = w0 / g.sW; p + j * g.sW < g.W; ++j) {
            row[(p + j * g.sW) * gx.sW] = static_cast<T>(in[j] + b);
          }
        }
      }
    }
  });
}

// sum[r] += the products of row r of g and of x (r < R, rows g_step and x_step apart) over
// `width` columns, whole vectors: four rows' sums at once, as four chains of adds. x's lanes of
// the last vector that keep_last clears read as zeros.
template <int R, typename V, typename A>
inline void dot_rows(V (&sum)[4], const A* g, int64_t g_step, const A* x, int64_t x_step, int64_t width,
                     const LaneIndex<V>& keep_last) {
  constexpr int64_t VL = kLanes<V>;
  int64_t v = 0;
  for (; v + VL < width; v += VL) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) sum[r] += loadu<V>(g + r * g_step + v) * loadu<V>(x + r * x_step + v);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) sum[r] += loadu<V>(g + r * g_step + v) * (keep_last ? loadu<V>(x + r * x_step + v) : V{});
}

template <typename T>
void depthwise_weight_grad(const ConvGeometry& g, View4<const T> x, View4<const T> gy,
                           View4<T> gw) {
  if (g.C_out_g() == 1 && dense_channels_last(x, g.C_in) && dense_channels_last(gy, g.C_out)) {
    return depthwise_weight_grad_cl(g, x, gy, gw);
  }
  if constexpr (kWidenedVectors<T>) {  // the kernels' whole vectors
    if (use_depthwise_via_channels_last(g, x, gy)) {
      Scratch<T> x_copy(g.N * g.C_in * g.H * g.W), gy_copy(g.N * g.C_out * g.OH * g.OW);
      return depthwise_weight_grad_cl(g, to_channels_last(x, g.N, g.C_in, g.H, g.W, x_copy),
                                      to_channels_last(gy, g.N, g.C_out, g.OH, g.OW, gy_copy), gw);
    }
  }
  if (g.sH == 1 && g.sW == 1) return grouped_weight_grad_flat<T, 1>(g, x, gy, gw);
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  // A tap's sum runs down the plane's rows in vectors of output columns and is reduced across
  // lanes once a plane (reduced once a row, 9 taps x 56 rows of 56, the float dw3x3 s2 96 @112
  // weight grad took 2.8 ms, 3.5 times its channels_last one). Rows of gy are padded with zeros
  // to whole vectors, and the padded planes are wide enough for whole vectors at every tap.
  const int64_t OWv = round_up(g.OW, VL);
  const PaddedPlane padded(g, true, g.sW * ((g.KW - 1) * g.dW / g.sW + OWv));
  const int64_t Mg = g.C_out_g(), KHW = g.KH * g.KW;
  // x's columns past a tap's last output can be any value, inf too: lanes past OW read zeros.
  LaneIndex<V> keep_last;
  for (int l = 0; l < VL; ++l) keep_last[l] = OWv - VL + l < g.OW ? -1 : 0;
  // One output channel per item: each owns its gw slice and sums in a fixed order.
  at::parallel_for(0, g.C_out, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> xp(padded.size());
    Scratch<A> gyp(g.OH * OWv);
    fill_zero(gyp.get(), g.OH * OWv);
    Scratch<A> acc(KHW);
    NextRowsPrefetch next_plane(g.H * g.W * static_cast<int64_t>(sizeof(T)), g.N * x.sN * static_cast<int64_t>(sizeof(T)));
    NextRowsPrefetch next_gy(g.OH * g.OW * static_cast<int64_t>(sizeof(T)), g.N * x.sN * static_cast<int64_t>(sizeof(T)));
    const bool planes = x.sW == 1 && x.sH == g.W, gy_planes = gy.sW == 1 && gy.sH == g.OW;
    for (int64_t oc = begin; oc < end; ++oc) {
      const int64_t c = oc / Mg;
      fill_zero(acc.get(), KHW);
      for (int64_t n = 0; n < g.N; ++n) {
        padded.load(g, x.data + n * x.sN + c * x.sC, x.sH, x.sW, xp.get(), oc == begin && n == 0);
        // The next planes of x and gy this item or the next loads (images are far apart for the
        // prefetchers; gy's planes came from memory a line at a time, a third of the float weight
        // grad): x's while gy's rows are copied, gy's while the taps are summed (x's there too
        // lost 18%).
        next_plane.start();
        next_gy.start();
        if (n + 1 < g.N) {
          if (planes) next_plane.add(x.data + (n + 1) * x.sN + c * x.sC);
          if (gy_planes) next_gy.add(gy.data + (n + 1) * gy.sN + oc * gy.sC);
        } else if (oc + 1 < end) {
          if (planes && (oc + 1) / Mg != c) next_plane.add(x.data + (oc + 1) / Mg * x.sC);
          if (gy_planes) next_gy.add(gy.data + (oc + 1) * gy.sC);
        }
        const T* src = gy.data + n * gy.sN + oc * gy.sC;
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          next_plane.upto(oh + 1, g.OH);
          A* r = gyp.get() + oh * OWv;
          if (gy.sW == 1) {
            copy_run(r, src + oh * gy.sH, g.OW);
          } else {
            for (int64_t ow = 0; ow < g.OW; ++ow) r[ow] = static_cast<A>(src[oh * gy.sH + ow * gy.sW]);
          }
        }
        for (int64_t tap = 0; tap < KHW; ++tap) {
          next_gy.upto(tap + 1, KHW);
          const A* in = xp.get() + (tap / g.KW) * g.dH * padded.row_len + padded.at(tap % g.KW * g.dW);
          const int64_t x_step = g.sH * padded.row_len;
          V sum[4] = {};
          int64_t oh = 0;
          for (; oh + 4 <= g.OH; oh += 4) dot_rows<4>(sum, gyp.get() + oh * OWv, OWv, in + oh * x_step, x_step, OWv, keep_last);
          for (; oh < g.OH; ++oh) dot_rows<1>(sum, gyp.get() + oh * OWv, OWv, in + oh * x_step, x_step, OWv, keep_last);
          const V lanes = (sum[0] + sum[1]) + (sum[2] + sum[3]);
          A total = A(0);
          for (int l = 0; l < VL; ++l) total += lanes[l];
          acc.get()[tap] += total;
        }
      }
      T* dst = gw.data + oc * gw.sN;
      for (int64_t ki = 0; ki < g.KH; ++ki) {
        for (int64_t kj = 0; kj < g.KW; ++kj) dst[ki * gw.sH + kj * gw.sW] = static_cast<T>(acc.get()[ki * g.KW + kj]);
      }
    }
  });
}

// x as a dense channels_last tensor of element type D: x itself when it already is one (and no
// padding is asked for), else a copy in dst, whose rows have `pad` zero columns on each side
// (the view starts at column 0, so reads may reach `pad` columns past either end) and whose
// positions hold Cp >= C channels, those past C zero. Dense NCHW
// floats are copied through 8 x 8 transposes (whole planes as one row where nothing is padded):
// element by element, the copies took a quarter of the NCHW weight grad of 3x3 s2 128 @56
// (17.6 -> 12.3 ms, 2 threads) and a tenth of its forward.
template <typename D, typename T>
int64_t channels_last_copy_size(const View4<const T>& x, int64_t N, int64_t C, int64_t H, int64_t W,
                                int64_t pad = 0, int64_t Cp = 0) {
  Cp = max64(C, Cp);
  return std::is_same_v<D, T> && pad == 0 && Cp == C && dense_channels_last(x, C) ? 0 : N * Cp * H * (W + 2 * pad);
}

template <typename D, typename T>
View4<const D> channels_last_view(const View4<const T>& x, int64_t N, int64_t C, int64_t H,
                                  int64_t W, Scratch<D>& dst, int64_t pad = 0, int64_t Cp = 0) {
  Cp = max64(C, Cp);
  if constexpr (std::is_same_v<D, T>) {
    if (pad == 0 && Cp == C && dense_channels_last(x, C)) return x;
    if (pad == 0 && Cp == C && dense_nchw(x, C, H, W)) return to_channels_last(x, N, C, H, W, dst);
  }
  const int64_t row_len = (W + 2 * pad) * Cp;
  D* out = dst.get() + pad * Cp;
  const View4<D> view{out, H * row_len, 1, row_len, Cp};
  const bool planes = std::is_same_v<D, T> && dense_nchw(x, C, H, W);
  // Work items are (image, 16 channels): each reads its 16 planes front to back (16 streams the
  // prefetchers follow; items of image rows left them reading 16 short runs per row, latency
  // bound at ~2 ns an element) and writes 64-byte runs of channels.
  constexpr int64_t kChunk = 16;
  const int64_t chunks = ceil_div(Cp, kChunk);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      // Channels [c0, cx) come from x, [cx, c1) are zero.
      const int64_t n = item / chunks, c0 = (item % chunks) * kChunk, c1 = min64(Cp, c0 + kChunk);
      const int64_t cx = min64(C, c1);
      const T* src = x.data + n * x.sN;
      for (int64_t h = 0; h < H; ++h) {
        D* row = out + (n * H + h) * row_len;
        for (int64_t w = -pad; w < 0; ++w) fill_zero(row + w * Cp + c0, c1 - c0);
        for (int64_t w = W; w < W + pad; ++w) fill_zero(row + w * Cp + c0, c1 - c0);
        for (int64_t w = 0; w < W && cx < c1; ++w) fill_zero(row + w * Cp + cx, c1 - cx);
      }
      if constexpr (std::is_same_v<D, T>) {
        if (planes) {
          scatter_planes(src + c0 * H * W, H * W, W, view, n, c0, cx - c0, H, W);
          continue;
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        D* row = out + (n * H + h) * row_len;
        if constexpr (std::is_same_v<D, T>) {
          if (x.sC == 1 && x.sW == C && c0 == 0 && c1 == C) {  // a dense channels_last row, padded
            std::memcpy(row, src + h * x.sH, W * C * sizeof(D));
            continue;
          }
        }
        for (int64_t w = 0; w < W; ++w) {
          for (int64_t c = c0; c < cx; ++c) row[w * Cp + c] = static_cast<D>(src[c * x.sC + h * x.sH + w * x.sW]);
        }
      }
    }
  });
  return {out, H * row_len, 1, row_len, Cp};
}

// The forward pass as indirect convolution (Dukhan 2019), in NHWC order:
//   y[position][oc] = sum over taps and channels c of x[tap's input position][c] * w[tap][c][oc]
// Positions go MR at a time through a table of row pointers, one per position and tap (a row of
// zeros where the tap reads padding), so the microkernel broadcasts x's values straight from
// channels_last memory (x is copied there first when it is not) and no patch is ever packed.
// Weights are packed once as [group][oc panel][tap][c][NR]. The reduction goes in steps of
// taps (or of channels, when one tap's are many) sized to a cache level (see below); partial
// sums wait in y (channels_last) or a per-tile buffer between steps.
template <typename T>
bool use_forward_indirect(const ConvGeometry& g, const View4<const T>& x, const View4<T>& y) {
  if (dense_channels_last(x, g.C_in)) return true;
  return g.KH * g.KW > 1 && (g.C_in_g() >= 16 || (g.groups == 1 && g.dW == 1));
}

// acc[MR][NR] = (c_in rows, or zero) + sum over taps t < taps and channels i < channels of
// rows[t * MR + m][c0 + i] * b[t * channels + i][0..NR), + bias[0..NR) when given; stored to
// c_out. Taps with padding[t] set read only zeros and are skipped. Rows of c_in / c_out are
// ld_in / ld_out apart and need no alignment; b is 64-byte aligned. With out_rows, row m of both
// is out_rows[m] instead (c_in then only says whether to start from it).
template <typename A>
inline void indirect_microkernel(int64_t taps, int64_t channels, const A* const* rows,
                                 const bool* padding, int64_t c0, const A* __restrict b,
                                 const A* c_in, int64_t ld_in,
                                 const A* bias, A* c_out, int64_t ld_out, A* const* out_rows = nullptr,
                                 bool stream = false) {
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  V acc0[kMR], acc1[kMR];
#pragma GCC unroll 16
  for (int m = 0; m < kMR; ++m) {
    if (c_in) {
      const A* in = out_rows ? out_rows[m] : c_in + m * ld_in;
      __builtin_memcpy(&acc0[m], in, sizeof(V));
      __builtin_memcpy(&acc1[m], in + VL, sizeof(V));
    } else {
      acc0[m] = acc1[m] = V{};
    }
  }
  for (int64_t t = 0; t < taps; ++t) {
    if (padding[t]) {
      b += channels * 2 * VL;
      continue;
    }
    const A* r[kMR];
#pragma GCC unroll 16
    for (int m = 0; m < kMR; ++m) r[m] = rows[t * kMR + m] + c0;
    for (int64_t i = 0; i < channels; ++i) {
      const V b0 = *reinterpret_cast<const V*>(b);
      const V b1 = *reinterpret_cast<const V*>(b + VL);
      // 16 steps ahead: where a step's weights stream from L2 (thousands of channels a tap),
      // their loads otherwise wait on its latency.
      __builtin_prefetch(b + 32 * VL);
      __builtin_prefetch(b + 33 * VL);
#pragma GCC unroll 16
      for (int m = 0; m < kMR; ++m) {
        const V am = splat<V>(r[m][i]);
        acc0[m] += am * b0;
        acc1[m] += am * b1;
      }
      b += 2 * VL;
    }
  }
  if (bias) {
    const V b0 = *reinterpret_cast<const V*>(bias);
    const V b1 = *reinterpret_cast<const V*>(bias + VL);
#pragma GCC unroll 16
    for (int m = 0; m < kMR; ++m) {
      acc0[m] += b0;
      acc1[m] += b1;
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < kMR; ++m) {
    A* out = out_rows ? out_rows[m] : c_out + m * ld_out;
    if (stream) {
      store_stream(out, acc0[m]);
      store_stream(out + VL, acc1[m]);
    } else {
      __builtin_memcpy(out, &acc0[m], sizeof(V));
      __builtin_memcpy(out + VL, &acc1[m], sizeof(V));
    }
  }
}

// bfloat16 convolutions on AVX-512 CPUs with vdpbf16ps (AVX512_BF16: Zen 4, Cooper Lake, Sapphire
// Rapids and later): each instruction sums products of 16 pairs of bf16 values into 16 floats,
// twice the multiply-adds of a float FMA at the same rate (measured on Zen 4: 232 against 117
// GFLOP/s a core). Products of bf16 values are exact in float, so the sums differ from the
// float kernels' only in order (and in flushing denormals, as oneDNN's bf16 kernels do).
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
constexpr bool kBf16DotBuilt = true;

// indirect_microkernel with bf16 rows and weights and float sums: weights packed in pairs of
// channels, [channel pair][NR][2], and each row's pair of channels broadcast as one 32-bit value.
// `channels` and c0 are even. With out_bf16, row m goes to out_bf16[m] as bf16 (rounded as
// store_narrowed rounds; c_out unused), with stream as one non-temporal store of its 64-byte
// line (see store_stream).
// With panels > 1 (out_bf16 only), the rows meet that many panels of weights, panel_stride apart,
// each into the next NR columns of c_in, bias and the out rows: one call per block of positions
// instead of one per panel (see conv_forward_indirect's panels_inner).
void indirect_microkernel_bf16(int64_t taps, int64_t channels, const c10::BFloat16* const* rows,
                               const bool* padding, int64_t c0, const c10::BFloat16* __restrict b_first,
                               const float* c_in, int64_t ld_in, const float* bias, float* c_out,
                               int64_t ld_out, c10::BFloat16* const* out_bf16 = nullptr, bool stream = false,
                               int64_t panels = 1, int64_t panel_stride = 0) {
  static_assert(kMR == 8 && kNR<float> == 32);
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t col = panel * 32;
    const c10::BFloat16* __restrict b = b_first + panel * panel_stride;
    __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 16
    for (int m = 0; m < kMR; ++m) {
      acc0[m] = c_in ? _mm512_loadu_ps(c_in + m * ld_in + col) : _mm512_setzero_ps();
      acc1[m] = c_in ? _mm512_loadu_ps(c_in + m * ld_in + col + 16) : _mm512_setzero_ps();
    }
    for (int64_t t = 0; t < taps; ++t) {
      if (padding[t]) {
        b += channels * 32;
        continue;
      }
      const c10::BFloat16* r[kMR];
#pragma GCC unroll 16
      for (int m = 0; m < kMR; ++m) r[m] = rows[t * kMR + m] + c0;
      for (int64_t i = 0; i < channels; i += 2) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 32);
        __builtin_prefetch(b + 16 * 64);  // 16 steps ahead, as in indirect_microkernel
        __builtin_prefetch(b + 16 * 64 + 32);
#pragma GCC unroll 16
        for (int m = 0; m < kMR; ++m) {
          int32_t pair;
          __builtin_memcpy(&pair, r[m] + i, sizeof(pair));
          const __m512bh am = (__m512bh)_mm512_set1_epi32(pair);
          acc0[m] = _mm512_dpbf16_ps(acc0[m], am, b0);
          acc1[m] = _mm512_dpbf16_ps(acc1[m], am, b1);
        }
        b += 64;
      }
    }
    if (bias) {
      const __m512 b0 = _mm512_loadu_ps(bias + col), b1 = _mm512_loadu_ps(bias + col + 16);
#pragma GCC unroll 16
      for (int m = 0; m < kMR; ++m) {
        acc0[m] = _mm512_add_ps(acc0[m], b0);
        acc1[m] = _mm512_add_ps(acc1[m], b1);
      }
    }
    if (out_bf16) {
      // Where no sum is a NaN or denormal (one check for the block), a row is one vcvtne2ps2bf16
      // and one 64-byte store; otherwise its halves go through store_narrowed (plain stores).
      __mmask16 special = 0;
#pragma GCC unroll 16
      for (int m = 0; m < kMR; ++m) special |= _mm512_fpclass_ps_mask(acc0[m], 0xA1) | _mm512_fpclass_ps_mask(acc1[m], 0xA1);
      if (__builtin_expect(special == 0, 1)) {
#pragma GCC unroll 16
        for (int m = 0; m < kMR; ++m) {
          const __m512i row = (__m512i)_mm512_cvtne2ps_pbh(acc1[m], acc0[m]);
          if (stream) {
            _mm512_stream_si512(reinterpret_cast<__m512i*>(out_bf16[m] + col), row);
          } else {
            _mm512_storeu_si512(out_bf16[m] + col, row);
          }
        }
        continue;
      }
    }
#pragma GCC unroll 16
    for (int m = 0; m < kMR; ++m) {
      if (out_bf16) {
        store_narrowed(out_bf16[m] + col, static_cast<Vec<float>::type>(acc0[m]));
        store_narrowed(out_bf16[m] + col + 16, static_cast<Vec<float>::type>(acc1[m]));
      } else {
        _mm512_storeu_ps(c_out + m * ld_out, acc0[m]);
        _mm512_storeu_ps(c_out + m * ld_out + 16, acc1[m]);
      }
    }
  }
}

// Each of `slots` positions' patches from its row table ([block of MR][tap][MR], taps rows of
// row_ch values) into one row of `len` (zeros past taps x row_ch), and table[slot] at it. Each row
// moves as one masked load and store: value by value, 21 values a row would cost a third as much
// as the dot products they feed.
void gather_flat_patches(const c10::BFloat16* const* rows, int64_t slots, int64_t taps, int64_t row_ch,
                         int64_t len, c10::BFloat16* out, const c10::BFloat16** table) {
  for (int64_t t = 0; t < slots; ++t) {
    c10::BFloat16* dst = out + t * len;
    const c10::BFloat16* const* src = rows + (t / kMR) * taps * kMR + t % kMR;
    for (int64_t tap = 0; tap < taps; ++tap) {
      for (int64_t i = 0; i < row_ch; i += 32) {
        const __mmask32 m = _cvtu32_mask32(row_ch - i >= 32 ? ~0u : (1u << (row_ch - i)) - 1);
        _mm512_mask_storeu_epi16(dst + tap * row_ch + i, m, _mm512_maskz_loadu_epi16(m, src[tap * kMR] + i));
      }
    }
    fill_zero(dst + taps * row_ch, len - taps * row_ch);
    table[t] = dst;
  }
}
#else
constexpr bool kBf16DotBuilt = false;
#endif

// A tile's row table ([block of MR positions][tap][MR]) regrouped so that positions reading the
// same taps inside x share blocks: a block skips a tap only where all its MR positions read
// padding, and in tile order ASPP's dilation 12 on 33 x 33 outputs computed 19% more taps than
// its positions need. Regroups only where that saves over 5%; then order[t] is the tile position
// in slot t and out the table in slot order (zero rows past pt).
template <typename A>
bool regroup_tile(const A* const* rows, int64_t pt, int64_t taps, const A* zero_row, int64_t* order,
                  uint64_t* inside_taps, const A** out) {
  const int64_t blocks = ceil_div(pt, kMR);
  const auto slot = [&](int64_t t, int64_t tap) { return (t / kMR) * taps * kMR + tap * kMR + t % kMR; };
  int64_t needed = 0;
  for (int64_t t = 0; t < pt; ++t) {
    uint64_t mask = 0;
    for (int64_t tap = 0; tap < taps; ++tap) mask |= static_cast<uint64_t>(rows[slot(t, tap)] != zero_row) << tap;
    inside_taps[t] = mask;
    needed += __builtin_popcountll(mask) * kMR;
  }
  const auto computed = [&](const auto& mask_of) {  // taps blocks compute, times MR
    int64_t total = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      uint64_t any = 0;
      for (int64_t t = b * kMR; t < min64(pt, (b + 1) * kMR); ++t) any |= mask_of(t);
      total += __builtin_popcountll(any) * kMR * kMR;
    }
    return total;
  };
  const int64_t in_order = computed([&](int64_t t) { return inside_taps[t]; });
  if (in_order * 20 <= needed * 21) return false;
  for (int64_t t = 0; t < pt; ++t) order[t] = t;
  std::stable_sort(order, order + pt, [&](int64_t a, int64_t b) { return inside_taps[a] < inside_taps[b]; });
  if (computed([&](int64_t t) { return inside_taps[order[t]]; }) * 20 > in_order * 19) return false;
  for (int64_t t = 0; t < blocks * kMR; ++t) {
    for (int64_t tap = 0; tap < taps; ++tap) out[slot(t, tap)] = t < pt ? rows[slot(order[t], tap)] : zero_row;
  }
  return true;
}

// Bytes of packed weights the indirect forward keeps in L2 (all of them, or an output-channel
// share), of one panel's weights it keeps in L2 for a reduction step, and of one tile's partial sums.
constexpr int64_t kWeightBlockBytes = 1024 * 1024;
constexpr int64_t kPanelBytes = 512 * 1024;
constexpr int64_t kTileRowsBytes = 1024 * 1024;
constexpr int64_t kAccBytes = 512 * 1024;
constexpr int64_t kItemPanels = 16;
constexpr int64_t kPanelsInnerBytes = 256 * 1024;
// Longest patch (values) the bf16 forward gathers whole rather than pad its odd taps (see flat).
constexpr int64_t kFlatPatchValues = 256;

// D is the type of the x rows and packed weights the microkernel reads: the accumulation type A,
// or bf16 itself for indirect_microkernel_bf16 (its weights in pairs of channels).
template <typename T, typename D = typename AccOf<T>::type>
void conv_forward_indirect(const ConvGeometry& g, View4<const T> x_any, View4<const T> w,
                           const T* bias, View4<T> y) {
  using A = typename AccOf<T>::type;
  constexpr bool pairs = !std::is_same_v<D, A>;
  constexpr int NR = kNR<A>;
  const int64_t Cg = g.C_in_g(), Mg = g.C_out_g(), KHW = g.KH * g.KW;
  const int64_t P = g.OH * g.OW, oc_panels = ceil_div(Mg, NR), Mp = oc_panels * NR;
  // Where x is copied anyway, or has too few channels to amortise a tap's row pointers, the
  // copy's rows get zero columns on both sides so that, with undilated columns, the taps of a
  // kernel row are one run of KW * Cg values: the microkernel then sees KH taps of KW * Cg
  // channels (the ResNet stem: 7 taps of 21 rather than 49 of 3).
  // Unless, with bf16 pairs, positions are to be regrouped (below) so that blocks skip the taps
  // that read padding: merged rows compute their zero columns (3x3 512 @7 NCHW: 4.6 -> 4.1 ms).
  const auto inner = [](int64_t out, int64_t s, int64_t p, int64_t d, int64_t k, int64_t in) {
    int64_t count = 0;  // outputs whose window lies inside the input along this axis
    for (int64_t o = 0; o < out; ++o) count += o * s - p >= 0 && o * s - p + (k - 1) * d < in;
    return count;
  };
  const bool padded_windows =
      4 * inner(g.OH, g.sH, g.pH, g.dH, g.KH, g.H) * inner(g.OW, g.sW, g.pW, g.dW, g.KW, g.W) <= 3 * P;
  const bool copied = channels_last_copy_size<D>(x_any, g.N, g.C_in, g.H, g.W) > 0;
  const bool merge_rows = g.dW == 1 && g.groups == 1 && g.KW > 1 && (Cg < 16 || (copied && !(pairs && padded_windows)));
  const int64_t pad =
      merge_rows ? max64(0, max64(g.pW, (g.OW - 1) * g.sW - g.pW + g.KW - 1 - (g.W - 1))) : 0;
  // Pairs of channels need taps of even length. Where merged rows would be odd (the stem's 7 x 3)
  // and patches are short, each position's whole patch is gathered into one row, a zero after
  // it: the stem's 147 values in 74 pairs. Otherwise odd taps get x copied with a zero channel at
  // each position (the stem's rows as 7 x 4: 98 pairs, and 3.5 -> 2.7-2.9 ms channels_last at 2
  // threads with the gathered patches).
  const bool flat = pairs && merge_rows && g.KW * Cg % 2 != 0 && KHW * Cg <= kFlatPatchValues;
  const int64_t Cp = !flat && pairs && g.groups == 1 && (merge_rows ? g.KW * Cg : Cg) % 2 != 0 ? Cg + 1 : Cg;
  // The row table's taps, and values read from each of its rows.
  const int64_t row_taps = merge_rows ? g.KH : KHW, row_ch = merge_rows ? g.KW * Cp : Cp;
  const int64_t taps = flat ? 1 : row_taps, tap_ch = flat ? round_up(KHW * Cg, 2) : row_ch, K = taps * tap_ch;
  if constexpr (pairs) {
    if (tap_ch % 2 != 0) return conv_forward_indirect<T, A>(g, x_any, w, bias, y);
  }
  Scratch<D> x_copy(channels_last_copy_size<D>(x_any, g.N, g.C_in, g.H, g.W, pad, Cp));
  const View4<const D> x = channels_last_view(x_any, g.N, g.C_in, g.H, g.W, x_copy, pad, Cp);
  Scratch<D> zeros(tap_ch);
  fill_zero(zeros.get(), tap_ch);
  // Each tap's input row and column from a window's origin, and its offset in x.
  Scratch<int64_t> tap_row(row_taps), tap_col(row_taps), tap_offset(row_taps);
  for (int64_t tap = 0; tap < row_taps; ++tap) {
    tap_row.get()[tap] = (merge_rows ? tap : tap / g.KW) * g.dH;
    tap_col.get()[tap] = merge_rows ? 0 : tap % g.KW * g.dW;
    tap_offset.get()[tap] = tap_row.get()[tap] * x.sH + tap_col.get()[tap] * x.sW;
  }
  const int64_t last_tap_col = (g.KW - 1) * g.dW;

  // Weights as [group][oc panel][k = (tap, ic)][NR], output channels past Mg zero (with pairs,
  // [k / 2][NR][k % 2]: a panel as [k][NR] first, its rows then interleaved two by two); bias
  // likewise.
  Scratch<D> wpack(g.groups * oc_panels * K * NR);
  at::parallel_for(0, g.groups * oc_panels, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> panel(pairs ? K * NR : 0);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t grp = idx / oc_panels, jb = idx % oc_panels;
      D* dst = wpack.get() + idx * K * NR;
      const T* wp = w.data + (grp * Mg + jb * NR) * w.sN;
      const int64_t cols = min64(NR, Mg - jb * NR);
      const bool ic_runs = w.sC == 1, tap_runs = w.sW == 1 && w.sH == g.KW;
      const bool transposed_runs = (ic_runs || tap_runs) && Cp == Cg && !flat;
      // The panel as out[k][NR] (of A, or T for pairs; no zero channel), or with ic_major (tap
      // runs, for pairs) as out[ic][tap][NR], so that each 8 x 8 block's rows go to consecutive
      // lines, not lines Cg apart (3x3 512 NCHW bf16: 0.48 -> 0.40 ms). Groups of 8 output
      // channels go through 8 x 8 transposes along whichever of channels (each tap's) or taps
      // (each channel's) is contiguous; value by value, packing DCGAN's 512 x 4096 weights took
      // 15% of its 4x4 s2 forward (and 3x3 512's in bf16 pairs 0.55 ms, against 0.3 ms so). The
      // rest read each weight row in memory order (channels innermost on channels_last weights)
      // and fill whole NR-runs.
      const auto pack_panel = [&](auto* out, bool ic_major) {
        using U = std::remove_pointer_t<decltype(out)>;
        const bool ic_inner = w.sC < w.sW;
        const int64_t cols8 = transposed_runs ? cols / 8 * 8 : 0;
        const auto transpose_block = [&](int64_t run, int64_t r0) {
          const T* rows[8];
          for (int m = 0; m < 8; ++m) {
            rows[m] = wp + (r0 + m) * w.sN + (ic_runs ? (run / g.KW) * w.sH + (run % g.KW) * w.sW : run * w.sC);
          }
          if (ic_runs) {
            interleave8(rows, Cg, out + run * Cg * NR + r0, NR);
          } else if (ic_major) {
            interleave8(rows, KHW, out + run * KHW * NR + r0, NR);
          } else {
            interleave8(rows, KHW, out + run * NR + r0, Cg * NR);
          }
        };
        // Measured (3x3 512, bf16 and float): channel runs outer, so that a run's blocks fill
        // whole lines of out (float 0.68 -> 0.52 ms); tap runs inner, so that each block reads
        // on along its 8 rows (0.67 ms, against 1.0 ms the other way).
        const int64_t runs = ic_runs ? KHW : Cg;
        for (int64_t i = 0; i < runs * (cols8 / 8); ++i) {
          if (ic_runs) {
            transpose_block(i / (cols8 / 8), i % (cols8 / 8) * 8);
          } else {
            transpose_block(i % runs, i / runs * 8);
          }
        }
        const int64_t run_len = ic_inner ? Cg : KHW;
        for (int64_t outer = 0; cols8 < NR && outer < K; outer += run_len) {
          for (int64_t inner = 0; inner < run_len; ++inner) {
            const int64_t k = ic_inner ? outer + inner : inner * Cg + outer / KHW;
            const int64_t tap = k / Cg, ic = k % Cg;
            const T* src = wp + ic * w.sC + (tap / g.KW) * w.sH + (tap % g.KW) * w.sW;
            U* row = out + (ic_major ? ic * KHW + tap : k) * NR;
            for (int64_t r = cols8; r < cols; ++r) row[r] = static_cast<U>(src[r * w.sN]);
            fill_zero(row + cols, NR - cols);
          }
        }
      };
      if constexpr (pairs) {
        if (transposed_runs) {
          pack_panel(panel.get(), tap_runs);
          const auto row = [&](int64_t k) { return panel.get() + (tap_runs ? k % Cg * KHW + k / Cg : k) * NR; };
          for (int64_t k = 0; k < K; k += 2) interleave_pairs(row(k), row(k + 1), dst + k * NR);
          continue;
        }
        // No 8 x 8 blocks: one pass in the order of dst, the panel's rows of w (a few hundred KB
        // at most) in L2 (DCGAN's transposed weights, runs of output channels: 5.0 ms forward,
        // against 5.5 through the panel).
        const T zero(0);
        for (int64_t k = 0; k < K; k += 2) {
          // A zero channel (ic == Cg), or the zero after a flat patch, reads zero, with no step.
          const T* src[2];
          int64_t step[2];
          for (int e = 0; e < 2; ++e) {
            const int64_t tap = (k + e) / Cp, ic = (k + e) % Cp;
            const bool real = ic < Cg && tap < KHW;
            src[e] = real ? wp + ic * w.sC + (tap / g.KW) * w.sH + (tap % g.KW) * w.sW : &zero;
            step[e] = real ? w.sN : 0;
          }
          D* out = dst + k * NR;
          for (int64_t r = 0; r < cols; ++r) out[2 * r] = src[0][r * step[0]], out[2 * r + 1] = src[1][r * step[1]];
          fill_zero(out + 2 * cols, 2 * (NR - cols));
        }
      } else {
        pack_panel(dst, false);
      }
    }
  });
  Scratch<A> bpack(bias ? g.groups * Mp : 0);
  if (bias) {
    for (int64_t i = 0; i < g.groups * Mp; ++i) {
      const int64_t m = i % Mp;
      bpack.get()[i] = m < Mg ? static_cast<A>(bias[i / Mp * Mg + m]) : A(0);
    }
  }

  // Work items are (group, tile of positions, range of output-channel panels); positions run
  // across images. While all packed weights fit L2, tiles are short (many items, any thread
  // count). Otherwise every tile streams its item's weights again, so tiles are as long as their
  // partial sums allow, and output channels are split across threads when tiles alone are too
  // few, and into items of at most kItemPanels panels: with P positions x N channels of partial
  // sums a tile, the K x N weights stream once per P positions, and about 8-16 panels an item
  // balance that against each item reading its tile's rows of x again (ASPP's input grad, 2048
  // channels, took tiles of all 64 panels and 64 positions: 99-109 -> 94-95 ms with 16, 99-109
  // with 8; less than the streamed bytes predicted, as the weights mostly came from L3).
  const int64_t M = g.N * P;
  int64_t item_panels = oc_panels, PT;
  if (K * Mp * static_cast<int64_t>(sizeof(A)) <= kWeightBlockBytes) {
    // Tiles of half the usual partial sums: measured faster at 2 threads (3x3 s2 128
    // channels_last 7.0-7.8 -> 6.0-6.7 ms, 1x1 64->256 3.7-4.5 -> 2.8-3.5 ms; ResNet stem even).
    PT = tile_length(2 * Mp * sizeof(A), M, kMR, g.groups);
  } else {
    const int64_t acc_bytes = M * static_cast<int64_t>(sizeof(A)) * NR;
    const int64_t oc_items =
        min64(oc_panels, ceil_div(at::get_num_threads(), g.groups * ceil_div(acc_bytes * oc_panels, kAccBytes)));
    item_panels = min64(kItemPanels, ceil_div(oc_panels, oc_items));
    PT = round_up(ceil_div(M, ceil_div(acc_bytes * item_panels, kAccBytes)), kMR);
    // (ASPP's 4 x 33 x 33 positions made 9 tiles for 2 threads.)
    PT = even_tile_length(PT, M, kMR, g.groups * ceil_div(oc_panels, item_panels));
  }
  const int64_t tiles = ceil_div(M, PT), oc_items = ceil_div(oc_panels, item_panels);

  // Reduction steps: `step_taps` taps of `chunk` channels each (chunk < tap_ch: one tap a step).
  // Where the x rows a tile reads fit L2, one panel's packed weights, up to half of L2, meet every
  // block of the tile's positions in a step (panels outer); otherwise (rows thousands of channels
  // long, thrashing L2's sets) a block's x rows stay in L1 while the step's weights, L2-sized, go
  // past them (positions outer). Panel steps sized for L1 (24 KB) were slower on Zen 4: the
  // microkernel's weight loads are one sequential stream, which L2 keeps up with, while every
  // step's partial sums go out to y and back (3x3 s2 128 channels_last forward, 9 steps: 9.7 ->
  // 9.0 ms; ASPP's input grad, 18 steps: 143 -> 116 ms).
  const bool panels_outer = PT * tap_ch * static_cast<int64_t>(sizeof(D)) <= kTileRowsBytes;
  const int64_t kc = max64(64, (panels_outer ? kPanelBytes : kWeightBlockBytes / item_panels) /
                                 (NR * static_cast<int64_t>(sizeof(D))));
  // (Even, with pairs: every step's channels then start and end on a pair.)
  const int64_t chunk = tap_ch <= kc ? tap_ch : round_up(ceil_div(tap_ch, ceil_div(tap_ch, kc)), pairs ? 2 : 1);
  const int64_t step_taps = chunk == tap_ch ? max64(1, kc / tap_ch) : 1;
  const int64_t chunks_per_tap = ceil_div(tap_ch, chunk);
  const int64_t steps = chunk == tap_ch ? ceil_div(taps, step_taps) : taps * chunks_per_tap;
  // Whole MR x NR blocks then sum in y itself; the others (and all of them on other layouts or
  // types) in a per-tile buffer.
  const bool dense_y = dense_channels_last(y, g.C_out) && y.sH == g.OW * g.C_out && y.sN == g.OH * y.sH;
  const bool direct_store = std::is_same_v<T, A> && dense_y;
  // Where y is summed in one step and large, its blocks are stored around the caches (with
  // pairs, whole blocks' rows as lines: bf16 1x1 64->256 @56 channels_last forward 2.85 -> 2.65 ms).
  // Blocks start at oc0 = group * Mg + panel * NR, so Mg's bytes too must be whole vectors (with
  // groups of 40 float channels, misaligned non-temporal stores faulted).
  const bool stream = (direct_store || (pairs && dense_y)) && steps == 1 && stream_aligned(y.data) &&
                      Mg * sizeof(T) % CONVEXT_VEC_BYTES == 0 && NR * sizeof(T) % 64 == 0 &&
                      M * g.C_out * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
  // Positions are regrouped by the taps they read (regroup_tile) where a quarter or more of the
  // windows reach padding (elsewhere, as at the ResNet stem's 5%, checking each tile cost more
  // than it could save). Blocks then store through per-row pointers, or on NCHW y channel by
  // channel (bf16 3x3 512 @7 channels_last forward 4.5 -> 4.0 ms, ASPP's 68 -> 56-61 ms; float
  // ASPP NCHW 144 -> 125 ms).
  const bool regroup = padded_windows && !flat && taps > 1 && taps <= 64;
  // Where whole blocks are summed in one step straight into channels_last y and an item's packed
  // weights are few, each block of positions meets all of the item's panels in one call, its rows
  // loaded once: a call per block and panel spent a fifth of the time setting up at 64 channels
  // (bf16 1x1 64->256 @56: 32 pair steps a call). Not with 2 or 3 panels of over 4 KB each: bf16
  // 1x1 256->64 @56 took 1.0-1.1 ms against 0.91 (1 thread: 3.2 against 1.8), 128->64 0.51
  // against 0.49, for reasons not found.
  const int64_t panel_bytes = K * NR * static_cast<int64_t>(sizeof(D));
  const bool panels_inner = steps == 1 && (pairs ? y.sC == 1 : direct_store) &&
                            (item_panels >= 4 || panel_bytes <= 4096) && item_panels * panel_bytes <= kPanelsInnerBytes;

  at::parallel_for(0, g.groups * tiles * oc_items, 1, [&](int64_t begin, int64_t end) {
    Scratch<const D*> rows(PT * row_taps);  // [block of MR positions][tap][MR]
    Scratch<bool> padding(PT * taps);       // [block of MR positions][tap]: all MR rows read zeros
    Scratch<bool> row_inside(row_taps);     // of the current output row, per tap
    // With flat patches: each slot's patch, and the table of them ([block][MR]).
    Scratch<D> patches(flat ? round_up(PT, kMR) * tap_ch : 0);
    Scratch<const D*> patch_rows(flat ? round_up(PT, kMR) : 0);
    // For regroup_tile: each slot's position in the tile, each position's taps, the new table.
    Scratch<int64_t> order(regroup ? PT : 0);
    Scratch<uint64_t> inside_taps(regroup ? PT : 0);
    Scratch<const D*> regrouped_rows(regroup ? PT * taps : 0);
    const int64_t ld = item_panels * NR;
    Scratch<A> acc(steps > 1 || !direct_store ? PT * ld : 0);
    alignas(64) A tile[kMR * NR];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t jb0 = (item % oc_items) * item_panels, jb1 = min64(oc_panels, jb0 + item_panels);
      const int64_t q0 = (item / oc_items % tiles) * PT, grp = item / oc_items / tiles;
      const int64_t pt = min64(PT, M - q0), mblocks = ceil_div(pt, kMR);
      // Position q0 + t is (n, oh, ow), and its window's origin in x, stepped along; which taps
      // read rows inside x is worked out once per output row, and columns are checked only near
      // the edges. (Computed per position and tap, the table took a tenth of the ResNet stem's
      // forward, measured.)
      int64_t n = q0 / P, oh = q0 % P / g.OW, ow = q0 % g.OW;
      const D* origin = nullptr;
      const D* const zero_row = zeros.get();
      const int64_t* __restrict offset = tap_offset.get();
      const int64_t* __restrict col = tap_col.get();
      bool* __restrict row_ok = row_inside.get();
      auto start_row = [&] {
        const int64_t ih0 = oh * g.sH - g.pH;
        for (int64_t tap = 0; tap < row_taps; ++tap) row_ok[tap] = inside(ih0 + tap_row.get()[tap], g.H);
        origin = x.data + n * x.sN + ih0 * x.sH + (ow * g.sW - g.pW) * x.sW + grp * Cg;
      };
      start_row();
      for (int64_t t = 0; t < pt; ++t) {
        const D** __restrict dst = rows.get() + (t / kMR) * row_taps * kMR + t % kMR;
        const int64_t iw0 = ow * g.sW - g.pW;
        if (merge_rows || (iw0 >= 0 && iw0 + last_tap_col < g.W)) {  // merged rows have zero columns
          for (int64_t tap = 0; tap < row_taps; ++tap) dst[tap * kMR] = row_ok[tap] ? origin + offset[tap] : zero_row;
        } else {
          for (int64_t tap = 0; tap < row_taps; ++tap) {
            dst[tap * kMR] = row_ok[tap] && inside(iw0 + col[tap], g.W) ? origin + offset[tap] : zero_row;
          }
        }
        origin += g.sW * x.sW;
        if (++ow == g.OW) {
          ow = 0;
          if (++oh == g.OH) oh = 0, ++n;
          start_row();
        }
      }
      for (int64_t t = pt; t < mblocks * kMR; ++t) {
        for (int64_t tap = 0; tap < row_taps; ++tap) rows.get()[(t / kMR) * row_taps * kMR + tap * kMR + t % kMR] = zeros.get();
      }
      if constexpr (pairs) {
        if (flat) gather_flat_patches(rows.get(), mblocks * kMR, row_taps, row_ch, tap_ch, patches.get(), patch_rows.get());
      }
      const bool regrouped = regroup && regroup_tile<D>(rows.get(), pt, taps, zero_row, order.get(),
                                                        inside_taps.get(), regrouped_rows.get());
      const D* const* table = flat ? patch_rows.get() : regrouped ? regrouped_rows.get() : rows.get();
      // The tile position of slot t (its place in the table).
      const auto slot_position = [&](int64_t t) { return regrouped ? order.get()[t] : t; };
      for (int64_t i = 0; i < mblocks * taps; ++i) {
        bool all = true;
        for (int m = 0; m < kMR; ++m) all &= table[i * kMR + m] == zeros.get();
        padding.get()[i] = all;
      }
      for (int64_t step = 0; step < steps; ++step) {
        const int64_t t0 = chunk == tap_ch ? step * step_taps : step / chunks_per_tap;
        const int64_t step_len = chunk == tap_ch ? min64(step_taps, taps - t0) : 1;
        const int64_t c0 = chunk == tap_ch ? 0 : (step % chunks_per_tap) * chunk;
        const int64_t channels = min64(chunk, tap_ch - c0);
        const bool first = step == 0, last = step == steps - 1;
        // The step for MR positions from block mb and the NR output channels of panel jb.
        // With count > 1 (panels_inner, whole blocks and panels only), panels jb .. jb + count - 1.
        auto block = [&](int64_t mb, int64_t jb, int64_t count) {
          const D* b = wpack.get() + ((grp * oc_panels + jb) * K + t0 * tap_ch + c0) * NR;
          const A* bias_here = last && bias ? bpack.get() + grp * Mp + jb * NR : nullptr;
          const int64_t oc0 = grp * Mg + jb * NR, cols = min64(NR, Mg - jb * NR);
          const D* const* step_rows = table + (mb * taps + t0) * kMR;
          const bool* step_padding = padding.get() + mb * taps + t0;
          const int64_t q = q0 + mb * kMR, rows_here = min64(kMR, pt - mb * kMR);
          // The next block's partial sums (panels outermost: block mb + 1 of this panel), ahead
          // of the loads that start it: from L2, they stalled the microkernel's first FMAs (ASPP
          // input grad, 18 steps of partial sums: 108-113 -> 99-102 ms).
          const bool fetch_next = !first && panels_outer && (mb + 1) * kMR < pt;
          // Sums the step into c_out (rows ld_out apart) from c_in or zero, plus bias_at when given.
          const auto sum_step = [&](const A* c_in, int64_t ld_in, const A* bias_at, A* c_out, int64_t ld_out) {
            if constexpr (pairs) {
              indirect_microkernel_bf16(step_len, channels, step_rows, step_padding, c0, b, c_in, ld_in, bias_at, c_out, ld_out);
            } else {
              indirect_microkernel<A>(step_len, channels, step_rows, step_padding, c0, b, c_in, ld_in, bias_at, c_out, ld_out);
            }
          };
          if constexpr (pairs) {  // whole blocks' last step stores bf16 straight into channels_last y
            if (last && y.sC == 1 && rows_here == kMR && cols == NR) {
              T* out_rows[kMR];
              for (int m = 0; m < kMR; ++m) {
                const int64_t qm = q0 + slot_position(mb * kMR + m);  // dense y: no divisions (3 a row took a sixth of 1x1 64->256)
                out_rows[m] = dense_y ? y.data + qm * g.C_out + oc0
                                      : y.data + qm / P * y.sN + qm % P / g.OW * y.sH + qm % g.OW * y.sW + oc0;
              }
              A* partial = acc.get() + mb * kMR * ld + (jb - jb0) * NR;
              indirect_microkernel_bf16(step_len, channels, step_rows, step_padding, c0, b, first ? nullptr : partial, ld,
                                        bias_here, nullptr, 0, out_rows, stream, count, K * NR);
              return;
            }
          }
          if (!pairs && direct_store && rows_here == kMR && cols == NR) {
            A* out = reinterpret_cast<A*>(y.data) + q * g.C_out + oc0;
            A* out_rows[kMR];
            for (int m = 0; m < kMR; ++m) {
              out_rows[m] = reinterpret_cast<A*>(y.data) + (q0 + slot_position(mb * kMR + m)) * g.C_out + oc0;
            }
            if (fetch_next) {
              for (int64_t m = 0; m < min64(kMR, pt - (mb + 1) * kMR); ++m) {
                const A* next = reinterpret_cast<A*>(y.data) + (q0 + slot_position((mb + 1) * kMR + m)) * g.C_out + oc0;
                __builtin_prefetch(next);
                __builtin_prefetch(next + NR / 2);
              }
            }
            if constexpr (!pairs) {
              for (int64_t p = 0; p < count; ++p) {
                if (p > 0) {
                  for (int m = 0; m < kMR; ++m) out_rows[m] += NR;
                }
                indirect_microkernel<A>(step_len, channels, step_rows, step_padding, c0, b + p * K * NR,
                                        first ? nullptr : out + p * NR, g.C_out, bias_here ? bias_here + p * NR : nullptr,
                                        out + p * NR, g.C_out, regrouped ? out_rows : nullptr, stream);
              }
            }
            return;
          }
          A* partial = acc.get() + mb * kMR * ld + (jb - jb0) * NR;
          const A* c_in = first ? nullptr : partial;
          if (fetch_next) {
            for (int m = 0; m < kMR; ++m) {
              __builtin_prefetch(partial + (kMR + m) * ld);
              __builtin_prefetch(partial + (kMR + m) * ld + NR / 2);
            }
          }
          if (!last) {
            sum_step(c_in, ld, nullptr, partial, ld);
            return;
          }
          sum_step(c_in, ld, bias_here, tile, NR);
          const int64_t n = q / P, p0 = q % P;
          if (kWidenedVectors<T> && kMR == 8 && !regrouped && rows_here == kMR && cols == NR &&
              y.sW == 1 && y.sH == g.OW && p0 + kMR <= P) {
            // MR positions in a row of each NCHW plane: the block goes out through 8 x 8
            // transposes as runs of 8 per channel (scalar stores took a quarter of the stem).
            using V8 = typename Vec8<A>::type;
            T* out = y.data + n * y.sN + p0 + oc0 * y.sC;
            for (int64_t c8 = 0; c8 < NR; c8 += 8) {
              V8 r[8];
              for (int m = 0; m < 8; ++m) r[m] = loadu<V8>(tile + m * NR + c8);
              transpose8(r);
              for (int l = 0; l < 8; ++l) store_narrowed(out + (c8 + l) * y.sC, r[l]);
            }
            return;
          }
          // On NCHW y channel by channel, so that each channel's positions are written as a run.
          T* out[kMR];
          for (int64_t m = 0; m < rows_here; ++m) {
            const int64_t qm = q0 + slot_position(mb * kMR + m);
            const int64_t n = qm / P, oh = qm % P / g.OW, ow = qm % g.OW;
            out[m] = y.data + n * y.sN + oh * y.sH + ow * y.sW + oc0 * y.sC;
          }
          if (y.sC == 1) {
            for (int64_t m = 0; m < rows_here; ++m) {
              for (int64_t r = 0; r < cols; ++r) out[m][r] = static_cast<T>(tile[m * NR + r]);
            }
          } else {
            for (int64_t r = 0; r < cols; ++r) {
              for (int64_t m = 0; m < rows_here; ++m) out[m][r * y.sC] = static_cast<T>(tile[m * NR + r]);
            }
          }
        };
        if (panels_inner) {
          const int64_t whole_end = max64(jb0, min64(jb1, Mg / NR));  // panels [jb0, whole_end) are whole
          for (int64_t mb = 0; mb < mblocks; ++mb) {
            int64_t jb = jb0;
            if (whole_end - jb0 > 1 && pt - mb * kMR >= kMR) {
              block(mb, jb0, whole_end - jb0);
              jb = whole_end;
            }
            for (; jb < jb1; ++jb) block(mb, jb, 1);
          }
        } else if (panels_outer) {
          for (int64_t jb = jb0; jb < jb1; ++jb) {
            for (int64_t mb = 0; mb < mblocks; ++mb) block(mb, jb, 1);
          }
        } else {
          for (int64_t mb = 0; mb < mblocks; ++mb) {
            for (int64_t jb = jb0; jb < jb1; ++jb) block(mb, jb, 1);
          }
        }
      }
    }
    if (stream) stream_fence();
  });
}

// Winograd F(M x M, R x R) (Lavin and Gray 2016) for R x R stride-1 convolutions, R = 3 or 2
// (the phases of 4 x 4 stride-2 transposed convs, DCGAN's), M = 4 (or 3, below). A tile of
// M x M outputs reads T x T inputs d, T = R + M - 1, and for each output and input channel
//   y_tile = A^T [(G w G^T) (.) (B^T d B)] A,
// so, with U = G w G^T (weights, once a call) and V = B^T d B (inputs, once a tile), the T^2
// points xi of the transforms make T^2 GEMMs M_xi[tile][oc] = sum_c V_xi[tile][c] U_xi[c][oc]:
// 36 multiply-adds per tile and channel pair where the direct convolution does 144 (R = 3), 25
// where it does 64 (R = 2), 25 where it does 81 (F(3 x 3, 3 x 3)). With dilation,
// a tile's outputs (and inputs) are as far apart as the taps: a conv of dilation d is d^2
// undilated ones on interleaved grids. Transforms run on vectors of channels (channels_last), the GEMMs on the indirect
// microkernel with V's tile rows as its rows. In float the transforms' rounding stays inside the
// tests' tolerances (measured: errors up to 1.4e-5 of the largest output at 256-512 channels,
// against 1e-4; F(4, 2), on the points 0, 1, -1, 1/2 and infinity, about half that).

// Tile origins along one axis of `out` outputs, d apart within a tile: for each phase a < d, the
// outputs a, a + d, ... in runs of m. Returns the number of tiles (origins written when given).
int64_t winograd_tiles(int64_t out, int64_t d, int64_t m, int64_t* origins) {
  int64_t count = 0;
  for (int64_t a = 0; a < d && a < out; ++a) {
    const int64_t along = ceil_div(out - a, d);
    for (int64_t k = 0; k < along; k += m) {
      if (origins) origins[count] = a + k * d;
      ++count;
    }
  }
  return count;
}

// Where the tiles past the output's edges waste at most a third of the work (tiles of 4 x 4 on
// ASPP's dilation 12 and 33 x 33 outputs would waste over half) and the transformed weights
// (T^2 C_in C_out floats, 2.8 to 6 times the weights) take at most kWinogradMaxWeightBytes, unless
// CONVEXT_WINOGRAD=0 (for results within float32 rounding of the direct sums).
constexpr int64_t kWinogradMaxWeightBytes = 64 * 1024 * 1024;

// Stride-2 convs (undilated) run as the sum of their 2 x 2 phases' stride-1 convs: phase (a, b)
// reads x's rows 2 i + a and columns 2 j + b with taps (u, v) = w's (2 u + a, 2 v + b), zero
// past the kernel; all phases' transformed inputs make one reduction of 4 C channels. A 4x4
// stride-2 conv (DCGAN's input grad) then does 4 x 25 multiply-adds per 4 x 4 outputs and channel
// pair where the direct one does 256 (DCGAN forward+backward 31.2 -> 27.3 ms NCHW, 28.7 -> 23.8
// ms channels_last). Odd kernels are not taken: a 3x3 one's phases padded to 2 x 2 do 100 where
// the direct one does 144, and the transformed inputs, 100 C values per tile, 1.6 times x, go
// through memory twice (ResNet-50's 3x3 s2 128 @56 forward 9.0 -> 11 ms).
int64_t winograd_r(const ConvGeometry& g) { return ceil_div(g.KH, g.sH); }

// F(m x m, R x R) on g: tiles of m x m outputs.
bool winograd_fits(const ConvGeometry& g, int64_t m) {
  static const bool enabled = [] {
    const char* v = std::getenv("CONVEXT_WINOGRAD");
    return v == nullptr || v[0] != '0';
  }();
  const int64_t R = winograd_r(g), points = (R + m - 1) * (R + m - 1), phases = g.sH * g.sW;
  const bool strides = g.sH == 1 || (g.sH == 2 && g.dH == 1 && g.dW == 1 && g.KH % 2 == 0);
  if (!enabled || kVL<float> < 8 || g.groups != 1 || (R != 3 && R != 2) || g.KW != g.KH || g.sW != g.sH ||
      !strides || g.C_in < 16 || g.C_out < 16 || phases * points * g.C_in * g.C_out * 4 > kWinogradMaxWeightBytes) {
    return false;
  }
  const int64_t computed = m * m * winograd_tiles(g.OH, g.dH, m, nullptr) * winograd_tiles(g.OW, g.dW, m, nullptr);
  return 2 * computed <= 3 * g.OH * g.OW;
}

// A tile's side in outputs: 4, or 3 for 3x3 kernels at stride 1 where its 25-point tiles take
// fewer multiply-adds than 36-point tiles of 4 x 4 (sides of 3, 5, 6, 9 outputs; ASPP's
// dilation 12 on 33 x 33 outputs: grids of 3 x 3, where tiles of 4 x 4 would waste over half);
// 0 where neither fits.
int64_t winograd_m(const ConvGeometry& g) {
  const bool four = winograd_fits(g, 4);
  if (winograd_r(g) != 3 || g.sH != 1 || !winograd_fits(g, 3)) return four ? 4 : 0;
  auto cost = [&](int64_t m) {
    return (m + 2) * (m + 2) * winograd_tiles(g.OH, g.dH, m, nullptr) * winograd_tiles(g.OW, g.dW, m, nullptr);
  };
  return four && cost(4) <= cost(3) ? 4 : 3;
}

bool winograd_applies(const ConvGeometry& g) { return winograd_m(g) != 0; }

// The forward writes y as channels_last, or dense NCHW through a channels_last copy.
bool use_forward_winograd(const ConvGeometry& g, const View4<float>& y) {
  return winograd_applies(g) && (y.sC == 1 || dense_nchw(y, g.C_out, g.OH, g.OW));
}

// The tiles of g's outputs, in order (image, tile row, tile column).
struct WinogradGrid {
  WinogradGrid(const ConvGeometry& g, int64_t m)
      : TH(winograd_tiles(g.OH, g.dH, m, nullptr)), TW(winograd_tiles(g.OW, g.dW, m, nullptr)),
        tiles(g.N * TH * TW), origins(TH + TW) {
    winograd_tiles(g.OH, g.dH, m, origins.get());
    winograd_tiles(g.OW, g.dW, m, origins.get() + TH);
  }
  // Image, first output row and first output column of tile t.
  void at(int64_t t, int64_t& n, int64_t& oh0, int64_t& ow0) const {
    n = t / (TH * TW);
    oh0 = origins.get()[t / TW % TH];
    ow0 = origins.get()[TH + t % TW];
  }
  const int64_t TH, TW, tiles;
  Scratch<int64_t> origins;
};

// A float view with channels innermost, as the transforms read vectors of channels: t itself,
// or a channels_last copy.
inline View4<const float> channels_inner(const View4<const float>& t, int64_t N, int64_t C, int64_t H, int64_t W,
                                         Scratch<float>& copy) {
  return t.sC == 1 ? t : channels_last_view(t, N, C, H, W, copy);
}

// src[r * T + c]: the T x T inputs of phase (a, b) of the tile at output (oh0, ow0) of image n
// (zeros outside x).
template <int T, typename A>
void winograd_sources(const ConvGeometry& g, const View4<const A>& x, int64_t n, int64_t oh0, int64_t ow0,
                      int64_t a, int64_t b, const A* zeros, const A* src[T * T]) {
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t j = 0; j < T; ++j) {
      const int64_t ih = oh0 * g.sH - g.pH + (a + r * g.sH) * g.dH, iw = ow0 * g.sW - g.pW + (b + j * g.sW) * g.dW;
      src[r * T + j] = inside(ih, g.H) && inside(iw, g.W) ? x.data + n * x.sN + ih * x.sH + iw * x.sW : zeros;
    }
  }
}

// The 1-D transforms of F(M, R): bt (B^T d) and g (G w) give the T = R + M - 1 values of a
// point row from T inputs and R weights, at (A^T m) the M outputs from T values; for the weight
// grad (F(4, 3) only), gt (G^T v) the 3 weights and a (A u) the T values from 4 outputs. Each
// reads its values p[j ps] and writes r[i rs].
template <int R, int M>
struct Winograd;

template <>
struct Winograd<3, 4> {  // points 0, 1, -1, 2, -2 and infinity
  template <typename V>
  static void bt(const V* d, int ds, V* r, int rs) {
    const V d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds];
    const V a = d4 - 4.0f * d2, b = d3 - 4.0f * d1, c = d4 - d2, e = 2.0f * (d3 - d1);
    r[0] = 4.0f * d[0] - 5.0f * d2 + d4;
    r[rs] = a + b;
    r[2 * rs] = a - b;
    r[3 * rs] = c + e;
    r[4 * rs] = c - e;
    r[5 * rs] = 4.0f * d1 - 5.0f * d3 + d[5 * ds];
  }
  template <typename V>
  static void g(const V* w, int ws, V* r, int rs) {
    const V g0 = w[0], g1 = w[ws], g2 = w[2 * ws];
    const V a = g0 + g2, b = g0 * (1.0f / 24) + g2 * (1.0f / 6), c = g1 * (1.0f / 12);
    r[0] = g0 * 0.25f;
    r[rs] = (a + g1) * (-1.0f / 6);
    r[2 * rs] = (a - g1) * (-1.0f / 6);
    r[3 * rs] = b + c;
    r[4 * rs] = b - c;
    r[5 * rs] = g2;
  }
  template <typename V>
  static void at(const V* m, int ms, V* r, int rs) {
    const V m1 = m[ms], m2 = m[2 * ms], m3 = m[3 * ms], m4 = m[4 * ms];
    const V p = m1 + m2, q = m1 - m2, s = m3 + m4, t = m3 - m4;
    r[0] = m[0] + p + s;
    r[rs] = q + 2.0f * t;
    r[2 * rs] = p + 4.0f * s;
    r[3 * rs] = q + 8.0f * t + m[5 * ms];
  }
  template <typename V>
  static void gt(const V* v, int vs, V* r, int rs) {
    const V p = v[vs] + v[2 * vs], q = v[vs] - v[2 * vs], s = v[3 * vs] + v[4 * vs], t = v[3 * vs] - v[4 * vs];
    r[0] = v[0] * 0.25f - p * (1.0f / 6) + s * (1.0f / 24);
    r[rs] = t * (1.0f / 12) - q * (1.0f / 6);
    r[2 * rs] = (s - p) * (1.0f / 6) + v[5 * vs];
  }
  template <typename V>
  static void a(const V* u, int us, V* r, int rs) {
    const V u0 = u[0], u1 = u[us], u2 = u[2 * us], u3 = u[3 * us];
    const V a = u0 + u2, b = u1 + u3, c = u0 + 4.0f * u2, e = 2.0f * u1 + 8.0f * u3;
    r[0] = u0;
    r[rs] = a + b;
    r[2 * rs] = a - b;
    r[3 * rs] = c + e;
    r[4 * rs] = c - e;
    r[5 * rs] = u3;
  }
};

// F(4, 2) and F(3, 3) both take 5 points, 0, 1, -1, 1/2 and infinity (1/2 rather than 2: a
// fifth less error), so the same B^T; G's rows are the kernel polynomial at the points (scaled
// to match B^T's), A^T's the points' powers, infinity's in the last output.
template <int R, int M>
struct WinogradFivePoints {
  static_assert(R + M - 1 == 5);
  template <typename V>
  static void bt(const V* d, int ds, V* r, int rs) {
    const V d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds];
    const V e = d1 - d3, f = d2 - d1;
    r[0] = d[0] - d2 - 2.0f * e;
    r[rs] = f + 2.0f * d3;
    r[2 * rs] = f + 2.0f * (d2 - d3);
    r[3 * rs] = e;
    r[4 * rs] = e - 2.0f * (d2 - d[4 * ds]);
  }
  template <typename V>
  static void g(const V* w, int ws, V* r, int rs) {
    V at_one = w[0], at_minus_one = w[0], at_half = w[0];
    for (int k = 1; k < R; ++k) {
      at_one += w[k * ws];
      at_minus_one += k % 2 ? -w[k * ws] : w[k * ws];
      at_half += w[k * ws] * (1.0f / (1 << k));
    }
    r[0] = w[0];
    r[rs] = at_one * 0.5f;
    r[2 * rs] = at_minus_one * (1.0f / 6);
    r[3 * rs] = at_half * (8.0f / 3);
    r[4 * rs] = w[(R - 1) * ws] * 0.5f;
  }
  template <typename V>
  static void at(const V* m, int ms, V* r, int rs) {
    const V m3 = m[3 * ms], p = m[ms] + m[2 * ms], q = m[ms] - m[2 * ms];
    r[0] = m[0] + p + m3;
    r[rs] = q + 0.5f * m3;
    r[2 * rs] = p + 0.25f * m3;
    if constexpr (M == 4) r[3 * rs] = q + 0.125f * m3;
    r[(M - 1) * rs] += m[4 * ms];
  }
};

template <>
struct Winograd<2, 4> : WinogradFivePoints<2, 4> {};

template <>
struct Winograd<3, 3> : WinogradFivePoints<3, 3> {};

// The first n (<= a vector's) values at p, zeros after them.
template <typename V, typename A>
inline V load_first(const A* p, int64_t n) {
  if (n == kVL<A>) return loadu<V>(p);
  V v{};
  __builtin_memcpy(&v, p, n * sizeof(A));
  return v;
}

// out = B^T d B for the T x T inputs d at src[k] + c (n values each, zeros after them).
template <int R, int M, typename V, typename A>
inline void winograd_input_transform(const A* const src[(R + M - 1) * (R + M - 1)], int64_t c, int64_t n,
                                     V out[(R + M - 1) * (R + M - 1)]) {
  constexpr int T = R + M - 1;
  V d[T * T], bt[T * T];
  for (int k = 0; k < T * T; ++k) d[k] = load_first<V>(src[k] + c, n);
  for (int j = 0; j < T; ++j) Winograd<R, M>::bt(d + j, T, bt + j, T);
  for (int i = 0; i < T; ++i) Winograd<R, M>::bt(bt + i * T, 1, out + i * T, 1);
}

// V = B^T d B for tiles [t0, t0 + count) of grid, each phase and every vector of x's C
// channels: store(s, k, out) takes tile t0 + s's transforms of reduction channels [k, k + a
// vector), k = phase * Cp + c (Cp: C in whole vectors).
template <int R, int M, typename V, typename A, typename Store>
void winograd_input_tiles(const ConvGeometry& g, const View4<const A>& x, int64_t C, const WinogradGrid& grid,
                          int64_t t0, int64_t count, const A* zeros, Store store) {
  constexpr int T = R + M - 1;
  const A* src[T * T];
  const int64_t Cp = round_up(C, kVL<A>);
  for (int64_t s = 0; s < count; ++s) {
    int64_t n, oh0, ow0;
    grid.at(t0 + s, n, oh0, ow0);
    for (int64_t phase = 0; phase < g.sH * g.sW; ++phase) {
      winograd_sources<T>(g, x, n, oh0, ow0, phase / g.sW, phase % g.sW, zeros, src);
      for (int64_t c = 0; c < C; c += kVL<A>) {
        V out[T * T];
        winograd_input_transform<R, M>(src, c, min64(kVL<A>, C - c), out);
        store(s, phase * Cp + c, out);
      }
    }
  }
}

// Bytes of a tile block's transformed inputs and GEMM results (per thread) where all the
// transformed weights fit L2, and where they do not (each block then streams them again, so
// blocks are as long as this allows).
constexpr int64_t kWinogradBlockBytes = 1024 * 1024;
constexpr int64_t kWinogradLongBlockBytes = 8 * 1024 * 1024;
constexpr int64_t kWinogradL3Bytes = 16 * 1024 * 1024;
constexpr int64_t kWinogradStreamedBlockBytes = 64 * 1024 * 1024;

// U = G w G^T for output-channel panel jb (NR channels, zero past M) and input channels
// [c0, c0 + nc), nc <= kWinogradCChunk: dst[xi * xi_stride + c * NR + lane]. The weights are
// first gathered as [c][row][lane] in the order of w's strides (gathered across output channels,
// 18 KB apart in a dense 512-channel w, they took as long as the GEMMs), through 8 x 8
// transposes where each output channel's (c, tap) run is contiguous, or where its taps lie in
// a short run (the input grad's view of NCHW w: reversed, and at stride 2 every other value):
// then that whole run is gathered, and the taps' rows read back from it. Taps past valid_rows
// and valid_cols (a stride-2 phase's past the kernel) are zeros.
constexpr int64_t kWinogradCChunk = 128;
constexpr int64_t kWinogradMaxTapSpan = 16;
// Floats between the blocks of consecutive points, past their own size: blocks a multiple of
// 4 KB apart fall in one L1 set, whose 8 lines cannot hold a vector of each of 25 or 36 points
// (DCGAN's transformed weights 16 KB apart: the stores took a third of its forward's time).
constexpr int64_t kWinogradPointPad = 16;

template <int R, int MT, typename T>
void winograd_weights(const View4<const T>& w, int64_t M, int64_t jb, int64_t c0, int64_t nc,
                      float* gathered, float* dst, int64_t xi_stride, int64_t valid_rows = R,
                      int64_t valid_cols = R, bool stream = false) {
  using A = float;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>, NR = kNR<A>, Tn = R + MT - 1, kTaps = R * R;
  const int64_t cols = min64(NR, M - jb * NR);
  const T* base = w.data + jb * NR * w.sN + c0 * w.sC;
  int64_t tap_offset[kTaps], lo = 0, hi = 0;
  bool valid[kTaps];
  for (int tap = 0; tap < kTaps; ++tap) {
    tap_offset[tap] = (tap / R) * w.sH + (tap % R) * w.sW;
    valid[tap] = tap / R < valid_rows && tap % R < valid_cols;
    if (!valid[tap]) continue;
    lo = min64(lo, tap_offset[tap]);
    hi = max64(hi, tap_offset[tap]);
  }
  const bool nchw = w.sW == 1 && w.sH == R && w.sC == kTaps && valid_rows == R && valid_cols == R;
  const bool run = !nchw && w.sC != 1 && w.sN != 1 && hi - lo < kWinogradMaxTapSpan;
  // gathered[(c * rows + tap_row[tap]) * NR + lane]
  const int64_t rows = run ? hi - lo + 1 : kTaps;
  int64_t tap_row[kTaps];
  for (int tap = 0; tap < kTaps; ++tap) tap_row[tap] = run ? tap_offset[tap] - lo : tap;
  const T* lanes[8];
  if (nchw || w.sC == 1) {  // (c, tap) or (tap, c) runs per output channel
    for (int64_t l0 = 0; l0 < NR; l0 += 8) {
      for (int64_t tap = 0; tap < (nchw ? 1 : kTaps); ++tap) {
        if (!valid[tap]) continue;
        for (int64_t l = 0; l < 8; ++l) lanes[l] = base + tap_offset[tap] + min64(l0 + l, cols - 1) * w.sN;
        if (nchw) {
          interleave8(lanes, kTaps * nc, gathered + l0, NR);
        } else {
          interleave8(lanes, nc, gathered + tap * NR + l0, kTaps * NR);
        }
      }
    }
  } else if (run) {
    // Runs of 9 to 16 as two overlapping 8 x 8 transposes (one and a tail of single values took
    // twice as long: DCGAN's NCHW w, runs of 11).
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t l0 = 0; l0 < NR; l0 += 8) {
        for (int64_t l = 0; l < 8; ++l) lanes[l] = base + c * w.sC + min64(l0 + l, cols - 1) * w.sN + lo;
        A* out = gathered + c * rows * NR + l0;
        if (rows <= 8) {
          interleave8(lanes, rows, out, NR);
          continue;
        }
        interleave8(lanes, 8, out, NR);
        for (int64_t l = 0; l < 8; ++l) lanes[l] += rows - 8;
        interleave8(lanes, 8, out + (rows - 8) * NR, NR);
      }
    }
  } else {  // runs of output channels, or one value at a time
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t tap = 0; tap < kTaps; ++tap) {
        if (!valid[tap]) continue;
        const T* src = base + c * w.sC + tap_offset[tap];
        A* out = gathered + (c * kTaps + tap) * NR;
        if (w.sN == 1 && cols == NR) {
          __builtin_memcpy(out, src, NR * sizeof(A));  // a fixed size: inlined
        } else if (w.sN == 1) {
          __builtin_memcpy(out, src, cols * sizeof(A));
        } else {
          for (int64_t lane = 0; lane < cols; ++lane) out[lane] = src[lane * w.sN];
        }
      }
    }
  }
  for (int64_t i = 0; cols < NR && i < rows * nc; ++i) fill_zero(gathered + i * NR + cols, NR - cols);
  for (int64_t c = 0; c < nc; ++c) {
    for (int half = 0; half < NR / VL; ++half) {
      V t[kTaps], gw[Tn * R], out[Tn * Tn];
      for (int i = 0; i < kTaps; ++i) t[i] = valid[i] ? loadu<V>(gathered + (c * rows + tap_row[i]) * NR + half * VL) : V{};
      for (int kw = 0; kw < R; ++kw) Winograd<R, MT>::g(t + kw, R, gw + kw, R);
      for (int i = 0; i < Tn; ++i) Winograd<R, MT>::g(gw + i * R, 1, out + i * Tn, 1);
      A* to = dst + c * NR + half * VL;
      if (stream) {
        for (int64_t xi = 0; xi < Tn * Tn; ++xi) store_stream(to + xi * xi_stride, out[xi]);
      } else {
        for (int64_t xi = 0; xi < Tn * Tn; ++xi) __builtin_memcpy(to + xi * xi_stride, &out[xi], sizeof(V));
      }
    }
  }
}

template <int R, int MT, typename T>
void conv_forward_winograd(const ConvGeometry& g, View4<const T> x_any, View4<const T> w,
                           const T* bias, View4<T> y_any) {
  using A = float;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>, NR = kNR<A>, Tn = R + MT - 1;
  constexpr int64_t kPoints = Tn * Tn, kGathered = kWinogradMaxTapSpan;  // rows of gathered weights per c
  static_assert(R * R <= kGathered);
  const int64_t C = g.C_in, M = g.C_out;
  const int64_t Cp = round_up(C, VL), oc_panels = ceil_div(M, NR), Mp = oc_panels * NR;
  const int64_t threads = at::get_num_threads();
  // The reduction runs over every phase's channels: Ck values a row of V, Cw rows of U.
  const int64_t S = g.sH, phases = S * S, Ck = phases * Cp, Cw = phases * C;

  // The transforms read and write vectors of channels: x and y as channels_last (copied there
  // when they are not).
  Scratch<A> x_copy(x_any.sC == 1 ? 0 : g.N * C * g.H * g.W);
  const View4<const A> x = channels_inner(x_any, g.N, C, g.H, g.W, x_copy);
  // Dense NCHW y with undilated columns takes each tile row's 4 outputs per channel as one run,
  // transposed in registers (through a channels_last copy of y, another pass over it: 3x3 64 @56
  // NCHW forward 3.6-3.9 -> 3.45-3.6 ms); other y goes through the copy.
  const bool nchw_rows = y_any.sC != 1 && g.dW == 1 && MT == 4, copied = y_any.sC != 1 && !nchw_rows;
  Scratch<A> y_copy(copied ? g.N * M * g.OH * g.OW : 0);
  const View4<A> y = copied ? View4<A>{y_copy.get(), g.OH * g.OW * M, 1, g.OW * M, M} : y_any;
  typedef int32_t I __attribute__((vector_size(CONVEXT_VEC_BYTES)));  // V's lane indices
  I pair_lo, pair_hi, quad_lo, quad_hi;  // interleaves of two vectors' halves, by 1 and by 2 lanes
  for (int l = 0; l < VL; ++l) {
    pair_lo[l] = l / 2 + (l % 2) * VL;
    pair_hi[l] = VL / 2 + l / 2 + (l % 2) * VL;
    quad_lo[l] = (l / 4) * 2 + l % 2 + (l % 4 / 2) * VL;
    quad_hi[l] = VL / 2 + (l / 4) * 2 + l % 2 + (l % 4 / 2) * VL;
  }
  Scratch<A> bpack(Mp);
  for (int64_t m = 0; m < Mp; ++m) bpack.get()[m] = bias && m < M ? static_cast<A>(bias[m]) : A(0);

  const WinogradGrid grid(g, MT);
  const int64_t tiles = grid.tiles;

  // Work items are (block of tiles, range of output-channel panels); a block holds its tiles' V
  // and M for every point. Fused: one block per item holds all tiles, output channels are split
  // across threads and each item transforms its weights chunk by chunk just before the GEMMs use
  // them (transformed all at once, the 36 x 512 x 512 U of 3x3 512 @7 went through memory twice,
  // which cost more than the GEMMs). Otherwise U is transformed once into memory and blocks of
  // tiles share it: blocks fit L2 where U does too, else they are long, so that U (from L3)
  // serves many tiles. Fused, every item transforms all tiles and streams their V once per
  // panel; unfused, U is written once and streamed once per block: the way that streams fewer
  // bytes is taken (3x3 256 @14, N = 8, 2 threads, fused 3.2-3.4 -> 2.5-2.6 ms unfused; N = 1
  // 128 @28 0.37 fused, 0.43 unfused).
  const int64_t item_oc_items = min64(oc_panels, threads);
  const int64_t fused_bytes = kPoints * (Ck + ceil_div(oc_panels, item_oc_items) * NR) * static_cast<int64_t>(sizeof(A));
  const int64_t v_bytes = kPoints * tiles * Ck * static_cast<int64_t>(sizeof(A));
  const int64_t u_bytes = kPoints * Cw * Mp * static_cast<int64_t>(sizeof(A));
  const bool u_fits = u_bytes <= kWinogradBlockBytes;
  const int64_t tile_bytes = kPoints * (Ck + Mp) * static_cast<int64_t>(sizeof(A));
  const int64_t longest = max64(kMR, (u_fits ? kWinogradBlockBytes : kWinogradLongBlockBytes) / tile_bytes / kMR * kMR);
  // U larger than L3 holds would come from memory for each block (ASPP's 25 x 2048 x 256
  // floats, 52 MB, for 17 blocks of 34 tiles): blocks then hold a thread's share of the tiles
  // (up to kWinogradStreamedBlockBytes of V, in memory), and each point's GEMMs run channels
  // outer, so that the block's V and U pass once (and, in ASPP's forward, its M stays in L2).
  const bool u_streams = u_bytes > kWinogradL3Bytes;
  int64_t blocks = u_streams ? round_up(ceil_div(v_bytes, kWinogradStreamedBlockBytes), threads) : ceil_div(tiles, longest);
  if (blocks < 4 * threads) blocks = round_up(blocks, threads);
  const bool fused = tiles * fused_bytes <= kWinogradLongBlockBytes &&
                     oc_panels * v_bytes < (u_fits ? 0 : (1 + blocks) * u_bytes) + v_bytes;
  int64_t oc_items = 1;
  if (fused) blocks = 1, oc_items = item_oc_items;
  const int64_t TB = round_up(ceil_div(tiles, blocks), kMR);
  blocks = ceil_div(tiles, TB);
  const int64_t item_panels = ceil_div(oc_panels, oc_items);
  oc_items = ceil_div(oc_panels, item_panels);
  const int64_t Mi = item_panels * NR;

  const int64_t chunk = ceil_div(C, ceil_div(C, kWinogradCChunk));
  const int64_t u_point = oc_panels * Cw * NR + kWinogradPointPad, uc_point = chunk * NR + kWinogradPointPad;
  const int64_t v_point = TB * Ck + kWinogradPointPad, m_point = TB * Mi + kWinogradPointPad;
  // Where U streams, it and the blocks' V go around the caches, if each vector is a whole line
  // (the points' stores at once would make partial lines of smaller vectors). ASPP: its input
  // transforms 8.4 -> 3.1 ms, U 2.9 -> 1.6 ms, forward 46.5 -> 38.8 ms.
  const bool stream_vu = u_streams && !fused && sizeof(V) == 64;
  // A point's V rows of a streamed block pass once: channels outer and panels inner where they
  // are past L2 (ASPP's forward: 2.4 MB a point), else panels outer, so that a panel's sums stay
  // in L1 across the channels (ASPP's input grad, 2048 output channels: its sums, 2.4 MB a
  // point, went through memory for each chunk of 128 channels, 46.5-48.4 -> 41-42.5 ms).
  const bool channels_outer = u_streams && !fused && TB * Ck * static_cast<int64_t>(sizeof(A)) > kWinogradBlockBytes;
  // U of panel jb, phase and channels [c0, c0 + nc) into dst, points xi_stride apart.
  auto phase_weights = [&](int64_t jb, int64_t phase, int64_t c0, int64_t nc, A* gathered, A* dst, int64_t xi_stride) {
    const int64_t a = phase / S, b = phase % S;
    const View4<const T> wp{w.data + a * w.sH + b * w.sW, w.sN, w.sC, w.sH * S, w.sW * S};
    winograd_weights<R, MT>(wp, M, jb, c0, nc, gathered, dst, xi_stride, ceil_div(g.KH - a, S), ceil_div(g.KW - b, S),
                            stream_vu);
  };
  Scratch<A> u(fused ? 0 : kPoints * u_point);  // [xi][oc panel][phase][c][NR]
  const int64_t c_chunks = ceil_div(C, chunk);
  if (!fused) {
    at::parallel_for(0, oc_panels * phases * c_chunks, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> gathered(chunk * kGathered * NR);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t jb = item / c_chunks / phases, phase = item / c_chunks % phases, c0 = item % c_chunks * chunk;
        phase_weights(jb, phase, c0, min64(chunk, C - c0), gathered.get(), u.get() + (jb * Cw + phase * C + c0) * NR,
                      u_point);
      }
      if (stream_vu) stream_fence();
    });
  }

  at::parallel_for(0, blocks * oc_items, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> v(kPoints * v_point), m(kPoints * m_point), zeros(Ck);
    Scratch<A> gathered(fused ? chunk * kGathered * NR : 0), u_chunk(fused ? kPoints * uc_point : 0);
    fill_zero(zeros.get(), Ck);
    const A* rows[kMR];
    const bool no_padding = false;
    int64_t have_block = -1;  // the block whose V is in v
    for (int64_t item = begin; item < end; ++item) {
      const int64_t blk = item / oc_items, jb0 = item % oc_items * item_panels;
      const int64_t jb1 = min64(oc_panels, jb0 + item_panels);
      const int64_t t0 = blk * TB, tb = min64(TB, tiles - t0);

      if (blk != have_block) {
        winograd_input_tiles<R, MT, V>(g, x, C, grid, t0, tb, zeros.get(), [&](int64_t s, int64_t k, const V* out) {
          A* dst = v.get() + s * Ck + k;
          if (stream_vu) {
            for (int64_t xi = 0; xi < kPoints; ++xi) store_stream(dst + xi * v_point, out[xi]);
          } else {
            for (int64_t xi = 0; xi < kPoints; ++xi) __builtin_memcpy(dst + xi * v_point, &out[xi], sizeof(V));
          }
        });
        if (stream_vu) stream_fence();
        have_block = blk;
      }

      // M_xi for the block's tiles, panel jb, V's channels [k0, k0 + channels), from U_xi's rows b.
      const int64_t mblocks = ceil_div(tb, kMR);
      auto gemm = [&](int64_t xi, int64_t jb, int64_t k0, int64_t channels, const A* b) {
        for (int64_t mb = 0; mb < mblocks; ++mb) {
          for (int64_t r = 0; r < kMR; ++r) {
            const int64_t s = mb * kMR + r;
            rows[r] = s < tb ? v.get() + xi * v_point + s * Ck : zeros.get();
          }
          A* out = m.get() + xi * m_point + mb * kMR * Mi + (jb - jb0) * NR;
          indirect_microkernel<A>(1, channels, rows, &no_padding, k0, b, k0 == 0 ? nullptr : out, Mi, nullptr,
                                  out, Mi);
        }
      };
      if (channels_outer) {
        for (int64_t xi = 0; xi < kPoints; ++xi) {
          for (int64_t pc = 0; pc < phases * c_chunks; ++pc) {
            const int64_t phase = pc / c_chunks, c0 = pc % c_chunks * chunk;
            for (int64_t jb = jb0; jb < jb1; ++jb) {
              gemm(xi, jb, phase * Cp + c0, min64(chunk, C - c0), u.get() + xi * u_point + (jb * Cw + phase * C + c0) * NR);
            }
          }
        }
      }
      // Points outer where U is in memory (the point's V rows stay in L2 for every panel);
      // chunks of U outer where it is transformed here.
      for (int64_t outer = 0; outer < (fused ? 1 : channels_outer ? 0 : kPoints); ++outer) {
        for (int64_t jb = jb0; jb < jb1; ++jb) {
          for (int64_t pc = 0; pc < phases * c_chunks; ++pc) {
            const int64_t phase = pc / c_chunks, c0 = pc % c_chunks * chunk, k0 = phase * Cp + c0;
            const int64_t channels = min64(chunk, C - c0);
            if (!fused) {
              gemm(outer, jb, k0, channels, u.get() + outer * u_point + (jb * Cw + phase * C + c0) * NR);
              continue;
            }
            phase_weights(jb, phase, c0, channels, gathered.get(), u_chunk.get(), uc_point);
            for (int64_t xi = 0; xi < kPoints; ++xi) gemm(xi, jb, k0, channels, u_chunk.get() + xi * uc_point);
          }
        }
      }

      for (int64_t s = 0; s < tb; ++s) {
        int64_t n, oh0, ow0;
        grid.at(t0 + s, n, oh0, ow0);
        for (int64_t oc = jb0 * NR; oc < min64(M, jb1 * NR); oc += VL) {
          const int64_t n_oc = min64(VL, M - oc);
          V mv[kPoints], at[MT * Tn], out[MT * MT];
          for (int64_t xi = 0; xi < kPoints; ++xi) mv[xi] = loadu<V>(m.get() + xi * m_point + s * Mi + oc - jb0 * NR);
          for (int k = 0; k < Tn; ++k) Winograd<R, MT>::at(mv + k, Tn, at + k, Tn);
          for (int i = 0; i < MT; ++i) Winograd<R, MT>::at(at + i * Tn, 1, out + i * MT, 1);
          const V bv = loadu<V>(bpack.get() + oc);
          for (int i = 0; i < MT * MT; ++i) out[i] += bv;
          for (int64_t i = 0; i < MT && oh0 + i * g.dH < g.OH; ++i) {
            A* row = y.data + n * y.sN + (oh0 + i * g.dH) * y.sH + ow0 * y.sW + oc * y.sC;
            if constexpr (MT == 4) {  // nchw_rows takes runs of 4 outputs
              if (nchw_rows) {
                // runs[k] lanes 4q..4q+3: the row's 4 outputs of channel oc + k VL / 4 + q.
                const V* r = out + i * MT;
                const V p0 = __builtin_shuffle(r[0], r[1], pair_lo), p1 = __builtin_shuffle(r[0], r[1], pair_hi);
                const V q0 = __builtin_shuffle(r[2], r[3], pair_lo), q1 = __builtin_shuffle(r[2], r[3], pair_hi);
                const V runs[4] = {__builtin_shuffle(p0, q0, quad_lo), __builtin_shuffle(p0, q0, quad_hi),
                                   __builtin_shuffle(p1, q1, quad_lo), __builtin_shuffle(p1, q1, quad_hi)};
                const int64_t cols = min64(4, g.OW - ow0);
                for (int64_t l = 0; l < n_oc; ++l) {
                  const A* run = reinterpret_cast<const A*>(&runs[l / (VL / 4)]) + l % (VL / 4) * 4;
                  A* dst = row + l * y.sC;
                  if (cols == 4) {
                    __builtin_memcpy(dst, run, 4 * sizeof(A));
                  } else {
                    for (int64_t j = 0; j < cols; ++j) dst[j] = run[j];
                  }
                }
                continue;
              }
            }
            for (int64_t j = 0; j < MT && ow0 + j * g.dW < g.OW; ++j) {
              A* dst = row + j * g.dW * y.sW;
              if (n_oc == VL) {
                __builtin_memcpy(dst, &out[i * MT + j], sizeof(V));
              } else {
                for (int64_t l = 0; l < n_oc; ++l) dst[l] = out[i * MT + j][l];
              }
            }
          }
        }
      }
    }
  });
  if (copied) from_channels_last(y.data, g.N, M, g.OH, g.OW, y_any);
}

// The weight gradient through the same transforms, reversed: with Gy = A gy_tile A^T for each
// tile of gy (zeros past its edges), dU_xi[c][oc] = sum over tiles of V_xi[tile][c] Gy_xi[tile][oc]
// (36 GEMMs reducing over tiles) and gw = G^T dU G, a quarter of the direct multiply-adds.
// Work items are (chunk of tiles, range of output-channel panels); each chunk has its own dU,
// its blocks of tiles summed in order, and the chunks' dU are added in chunk order at the end.
// Chunks and blocks depend on the sizes only, so the result is the same for any thread count.
constexpr int64_t kWinogradMaxChunks = 8;
constexpr int64_t kWinogradSumsBytes = 32 * 1024 * 1024;
constexpr int64_t kWinogradChunkTiles = 512;

// Blocks of TB tiles: their V (as the GEMMs' a operand, [xi][c block][tile][MR]) and Gy
// ([xi][panel][tile][NR]) are computed together, then each GEMM reduces over the block's tiles
// at once. Where a chunk's dU fits L2, blocks are L2-sized too and add into dU; where it does
// not, each pass over dU is a trip to L3, so a chunk is one long block and chunks are few.
struct WinogradWeightGradPlan {
  WinogradWeightGradPlan(const ConvGeometry& g, int64_t tiles) {
    const int64_t Cr = round_up(g.C_in, kMR), Mp = round_up(g.C_out, kNR<float>);
    sums_size = 36 * Cr * Mp;
    const int64_t sums_bytes = sums_size * static_cast<int64_t>(sizeof(float));
    sums_fit = sums_bytes <= kWinogradBlockBytes;
    if (sums_fit) {
      TB = max64(kMR, kWinogradBlockBytes / (36 * (Cr + Mp) * static_cast<int64_t>(sizeof(float))));
      chunk_blocks = ceil_div(ceil_div(tiles, TB), kWinogradMaxChunks);
    } else {
      TB = ceil_div(tiles, min64(max64(1, kWinogradSumsBytes / sums_bytes), ceil_div(tiles, kWinogradChunkTiles)));
      chunk_blocks = 1;
    }
    blocks = ceil_div(tiles, TB);
    chunks = ceil_div(blocks, chunk_blocks);
  }
  int64_t sums_size, TB, chunk_blocks, blocks, chunks;
  bool sums_fit;
};

// dU from L3 pays where each of its values sums 128 or more tiles: 3x3 512 @7 (N = 8, 32 tiles)
// lost to the direct weight grad (9.5-10 -> 10.5-13 ms, 2 threads), 3x3 256 @14 (128) won (8 -> 6 ms).
bool use_weight_grad_winograd(const ConvGeometry& g) {
  if (g.KH != 3 || g.sH != 1 || !winograd_fits(g, 4)) return false;
  const WinogradWeightGradPlan plan(g, g.N * winograd_tiles(g.OH, g.dH, 4, nullptr) * winograd_tiles(g.OW, g.dW, 4, nullptr));
  return plan.sums_fit || plan.TB >= 128;
}

template <typename T>
void conv_weight_grad_winograd(const ConvGeometry& g, View4<const T> x_any, View4<const T> gy_any,
                               View4<T> gw) {
  using A = float;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>, NR = kNR<A>;
  constexpr int64_t kPoints = 36;
  const int64_t C = g.C_in, M = g.C_out, threads = at::get_num_threads();
  const int64_t c_blocks = ceil_div(C, kMR), Cr = c_blocks * kMR;
  const int64_t oc_panels = ceil_div(M, NR);
  Scratch<A> x_copy(x_any.sC == 1 ? 0 : g.N * C * g.H * g.W);
  Scratch<A> gy_copy(gy_any.sC == 1 ? 0 : g.N * M * g.OH * g.OW);
  const View4<const A> x = channels_inner(x_any, g.N, C, g.H, g.W, x_copy);
  const View4<const A> gy = channels_inner(gy_any, g.N, M, g.OH, g.OW, gy_copy);
  const WinogradGrid grid(g, 4);

  const WinogradWeightGradPlan plan(g, grid.tiles);
  const int64_t TB = plan.TB, chunk_blocks = plan.chunk_blocks, blocks = plan.blocks, chunks = plan.chunks;
  const int64_t sums_size = plan.sums_size;
  // dU per chunk as [chunk][c][panel][xi][NR]: the last transform reads a (c, panel)'s 36 points
  // as one run (as [xi][c][oc], its reads 1 MB apart at 512 channels waited on memory).
  Scratch<A> sums(chunks * sums_size);
  const int64_t ld_sums = oc_panels * kPoints * NR;
  Scratch<A> zeros(round_up(max64(C, M), VL));
  fill_zero(zeros.get(), round_up(max64(C, M), VL));

  // V and Gy of tiles t0 + [s0, s1) of a block into vp and gp (panels [jb0, jb0 + panels)),
  // points' blocks padded as in the forward.
  const int64_t vp_point = c_blocks * TB * kMR + kWinogradPointPad;
  auto gp_point = [&](int64_t panels) { return panels * TB * NR + kWinogradPointPad; };
  auto transform = [&](int64_t t0, int64_t s0, int64_t s1, int64_t jb0, int64_t panels, A* vp, A* gp) {
    // Each vector of channels into its c blocks: whole blocks of MR where MR divides the
    // vector (fixed-size copies, inlined), else lane by lane.
    winograd_input_tiles<3, 4, V>(g, x, C, grid, t0 + s0, s1 - s0, zeros.get(), [&](int64_t s, int64_t c, const V* out) {
      for (int64_t xi = 0; xi < kPoints; ++xi) {
        const A* lanes = reinterpret_cast<const A*>(&out[xi]);
        A* dst = vp + xi * vp_point + (s0 + s) * kMR;
        if constexpr (VL % kMR == 0) {
          for (int64_t l = 0; l < VL && c + l < Cr; l += kMR) {
            __builtin_memcpy(dst + (c + l) / kMR * TB * kMR, lanes + l, kMR * sizeof(A));
          }
        } else {
          for (int64_t l = 0; l < VL && c + l < Cr; ++l) dst[(c + l) / kMR * TB * kMR + (c + l) % kMR] = lanes[l];
        }
      }
    });
    const A* src[16];
    for (int64_t s = s0; s < s1; ++s) {
      int64_t n, oh0, ow0;
      grid.at(t0 + s, n, oh0, ow0);
      // Gy from gy's 4 x 4 outputs of the tile (zeros past gy's edges).
      for (int64_t i = 0; i < 4; ++i) {
        for (int64_t j = 0; j < 4; ++j) {
          const int64_t oh = oh0 + i * g.dH, ow = ow0 + j * g.dW;
          src[i * 4 + j] = oh < g.OH && ow < g.OW ? gy.data + n * gy.sN + oh * gy.sH + ow * gy.sW : zeros.get();
        }
      }
      for (int64_t oc = jb0 * NR; oc < (jb0 + panels) * NR; oc += VL) {
        V u[16], au[24], out[kPoints];
        for (int k = 0; k < 16; ++k) u[k] = load_first<V>(src[k] + oc, max64(0, min64(VL, M - oc)));
        for (int j = 0; j < 4; ++j) Winograd<3, 4>::a(u + j, 4, au + j, 4);
        for (int i = 0; i < 6; ++i) Winograd<3, 4>::a(au + i * 4, 1, out + i * 6, 1);
        for (int64_t xi = 0; xi < kPoints; ++xi) {
          __builtin_memcpy(gp + xi * gp_point(panels) + ((oc / NR - jb0) * TB + s) * NR + oc % NR, &out[xi], sizeof(V));
        }
      }
    }
  };
  // dU_xi of panels [jb0, jb1) += (or, first, =) the sums over the tb tiles of vp and gp. Panels
  // outer: a panel's Gy stays in L1 while every block of channels meets it.
  auto gemm = [&](int64_t xi, int64_t jb0, int64_t jb1, int64_t tb, const A* vp, const A* gp, A* dU, bool first) {
    for (int64_t jb = jb0; jb < jb1; ++jb) {
      const A* b = gp + xi * gp_point(jb1 - jb0) + (jb - jb0) * TB * NR;
      for (int64_t cb = 0; cb < c_blocks; ++cb) {
        const A* a = vp + xi * vp_point + cb * TB * kMR;
        A* c = dU + (cb * kMR * oc_panels + jb) * kPoints * NR + xi * NR;
        if (first) {
          microkernel<A>(tb, a, b, c, ld_sums);
        } else {
          microkernel<A, true>(tb, a, b, c, ld_sums);
        }
      }
    }
  };

  if (plan.sums_fit) {
    // Items (chunk, range of panels), each transforming and summing its blocks on its own.
    const int64_t item_panels =
        ceil_div(oc_panels, chunks >= 2 * threads ? 1 : min64(oc_panels, ceil_div(2 * threads, chunks)));
    const int64_t oc_items = ceil_div(oc_panels, item_panels);
    at::parallel_for(0, chunks * oc_items, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> vp(kPoints * vp_point), gp(kPoints * gp_point(item_panels));
      fill_zero(vp.get(), kPoints * vp_point);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t chunk = item / oc_items, jb0 = item % oc_items * item_panels;
        const int64_t jb1 = min64(oc_panels, jb0 + item_panels);
        for (int64_t blk = chunk * chunk_blocks; blk < min64(blocks, (chunk + 1) * chunk_blocks); ++blk) {
          const int64_t t0 = blk * TB, tb = min64(TB, grid.tiles - t0);
          transform(t0, 0, tb, jb0, jb1 - jb0, vp.get(), gp.get());
          for (int64_t xi = 0; xi < kPoints; ++xi) {
            gemm(xi, jb0, jb1, tb, vp.get(), gp.get(), sums.get() + chunk * sums_size, blk == chunk * chunk_blocks);
          }
        }
      }
    });
  } else {
    // A chunk is one long block: its V and Gy are transformed once, shared by the threads, and
    // the GEMMs split by point (each point's V and Gy stay in L2). Split by panels instead, each
    // thread transformed V again (3x3 256 @14: 4 x 4.7 MB of it through L3).
    Scratch<A> vp(kPoints * vp_point), gp(kPoints * gp_point(oc_panels));
    fill_zero(vp.get(), kPoints * vp_point);
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t t0 = chunk * TB, tb = min64(TB, grid.tiles - t0);
      at::parallel_for(0, tb, 1, [&](int64_t begin, int64_t end) {
        transform(t0, begin, end, 0, oc_panels, vp.get(), gp.get());
      });
      at::parallel_for(0, kPoints, 1, [&](int64_t begin, int64_t end) {
        for (int64_t xi = begin; xi < end; ++xi) gemm(xi, 0, oc_panels, tb, vp.get(), gp.get(), sums.get() + chunk * sums_size, true);
      });
    }
  }

  // gw = G^T dU G, a vector of output channels at a time, the chunks' dU added in order. Items
  // are (panel, run of input channels), so that each output channel's stores into gw are close.
  constexpr int64_t kCRun = 32;
  const int64_t c_runs = ceil_div(C, kCRun);
  at::parallel_for(0, oc_panels * c_runs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t jb = item / c_runs, c0 = item % c_runs * kCRun;
      for (int64_t c = c0; c < min64(C, c0 + kCRun); ++c) {
        for (int64_t oc = jb * NR; oc < min64(M, jb * NR + NR); oc += VL) {
          const A* sum = sums.get() + (c * oc_panels + jb) * kPoints * NR + oc % NR;
          V du[kPoints], gt[18], out[9];
          for (int64_t xi = 0; xi < kPoints; ++xi) {
            du[xi] = loadu<V>(sum + xi * NR);
            for (int64_t chunk = 1; chunk < chunks; ++chunk) du[xi] += loadu<V>(sum + chunk * sums_size + xi * NR);
          }
          for (int k = 0; k < 6; ++k) Winograd<3, 4>::gt(du + k, 6, gt + k, 6);
          for (int i = 0; i < 3; ++i) Winograd<3, 4>::gt(gt + i * 6, 1, out + i * 3, 1);
          for (int64_t l = 0; l < min64(VL, M - oc); ++l) {
            T* dst = gw.data + (oc + l) * gw.sN + c * gw.sC;
            for (int64_t tap = 0; tap < 9; ++tap) dst[(tap / 3) * gw.sH + (tap % 3) * gw.sW] = static_cast<T>(out[tap][l]);
          }
        }
      }
    }
  });
}

// Grouped convolution with 8 or 16 output channels per group (ResNeXt), direct: a GEMM per
// group would be at most 16 rows deep and spend its time packing. At stride 1 the flat kernels
// above take them (ResNeXt 3x3 g32 forward, 1 thread: 8.2 -> 2.5 ms NCHW). At other strides
// output channels of a group sit in the lanes of 8-wide vectors and each input value is broadcast. The forward reads a padded
// channels_last copy of x (no bounds checks along rows); the weight grad reads channels_last x
// (copied there when it is not), taps outside the input reading a row of zeros.
bool use_grouped_direct(const ConvGeometry& g) {
  return g.groups > 1 && (g.C_out_g() == 8 || g.C_out_g() == 16) && g.C_in_g() <= 64;
}

// Positions per register block: 8 accumulators for 8 channels a group, 12 for 16.
template <int MV> constexpr int kGroupedBlock = MV == 1 ? 8 : 6;

template <typename T, int MV>
void grouped_forward_direct(const ConvGeometry& g, View4<const T> x_any, View4<const T> w,
                            const T* bias, View4<T> y) {
  using A = typename AccOf<T>::type;
  using V = typename Vec8<A>::type;
  constexpr int PB = kGroupedBlock<MV>;
  const int64_t Cg = g.C_in_g(), Mg = g.C_out_g(), KHW = g.KH * g.KW, K = Cg * KHW;
  // x in channels_last, in A, with zero columns on both sides wide enough for every tap of every
  // block (blocks past the row's end included): no bounds checks along a row.
  const int64_t reach = (round_up(g.OW, PB) - 1) * g.sW - g.pW + (g.KW - 1) * g.dW - (g.W - 1);
  const int64_t pad = max64(0, max64(g.pW, reach));
  Scratch<A> x_copy(g.N * g.C_in * g.H * (g.W + 2 * pad));
  const View4<const A> x = channels_last_view(x_any, g.N, g.C_in, g.H, g.W, x_copy, pad);

  // Weights as [group][k = (tap, ic)][Mg].
  Scratch<A> wt(g.groups * K * Mg);
  for (int64_t oc = 0; oc < g.C_out; ++oc) {
    const int64_t grp = oc / Mg, m = oc % Mg;
    for (int64_t tap = 0; tap < KHW; ++tap) {
      for (int64_t ic = 0; ic < Cg; ++ic) {
        wt.get()[(grp * K + tap * Cg + ic) * Mg + m] =
            static_cast<A>(w.data[oc * w.sN + ic * w.sC + (tap / g.KW) * w.sH + (tap % g.KW) * w.sW]);
      }
    }
  }

  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.OH, oh = item % g.OH;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        V b[MV];
        for (int mv = 0; mv < MV; ++mv) {
          b[mv] = V{};
          for (int l = 0; l < 8; ++l) b[mv][l] = bias ? static_cast<A>(bias[grp * Mg + mv * 8 + l]) : A(0);
        }
        for (int64_t ow0 = 0; ow0 < g.OW; ow0 += PB) {
          V acc[PB][MV];
          for (int q = 0; q < PB; ++q) {
            for (int mv = 0; mv < MV; ++mv) acc[q][mv] = b[mv];
          }
          for (int64_t ki = 0; ki < g.KH; ++ki) {
            const int64_t ih = oh * g.sH - g.pH + ki * g.dH;
            if (!inside(ih, g.H)) continue;
            for (int64_t kj = 0; kj < g.KW; ++kj) {
              const A* src[PB];
              const A* first = x.data + n * x.sN + ih * x.sH + (ow0 * g.sW - g.pW + kj * g.dW) * x.sW + grp * Cg;
              for (int q = 0; q < PB; ++q) src[q] = first + q * g.sW * x.sW;
              const A* wk = wt.get() + (grp * K + (ki * g.KW + kj) * Cg) * Mg;
              for (int64_t ic = 0; ic < Cg; ++ic) {
                V wv[MV];
                for (int mv = 0; mv < MV; ++mv) wv[mv] = *reinterpret_cast<const V*>(wk + ic * Mg + mv * 8);
#pragma GCC unroll 8
                for (int q = 0; q < PB; ++q) {
                  const V xv = src[q][ic] - V{};  // broadcast, as splat()
                  for (int mv = 0; mv < MV; ++mv) acc[q][mv] += xv * wv[mv];
                }
              }
            }
          }
          const int qs = static_cast<int>(min64(PB, g.OW - ow0));
          T* out = y.data + n * y.sN + oh * y.sH + ow0 * y.sW + grp * Mg * y.sC;
          if (sizeof(T) == sizeof(A) && y.sC == 1) {
            for (int q = 0; q < qs; ++q) {
              for (int mv = 0; mv < MV; ++mv) __builtin_memcpy(out + q * y.sW + mv * 8, &acc[q][mv], sizeof(V));
            }
          } else {  // a channel at a time: on NCHW y, runs of positions
            for (int mv = 0; mv < MV; ++mv) {
              for (int l = 0; l < 8; ++l) {
                for (int q = 0; q < qs; ++q) out[(mv * 8 + l) * y.sC + q * y.sW] = static_cast<T>(acc[q][mv][l]);
              }
            }
          }
        }
      }
    }
  });
}

// Its weight gradient. Input channels sit in the lanes, loaded straight from channels_last x, and
// each gy value is broadcast: one accumulator per output channel of the group, for each (group,
// tap, block of 8 input channels). Work items are chunks of output rows, each going through every
// group and tap of its rows, so each cache line of x and gy is fetched once per chunk; each chunk
// has its own partial sums, added in chunk order at the end. The chunks depend on the sizes only,
// so the result is the same for any thread count.
template <typename T, int MV>
void grouped_weight_grad_direct(const ConvGeometry& g, View4<const T> x_any,
                                View4<const T> gy_any, View4<T> gw) {
  using A = typename AccOf<T>::type;
  using V = typename Vec8<A>::type;
  constexpr int MG = 8 * MV;
  const int64_t Cg = g.C_in_g(), KHW = g.KH * g.KW, ic_blocks = ceil_div(Cg, 8);
  Scratch<T> x_copy(channels_last_copy_size<T>(x_any, g.N, g.C_in, g.H, g.W));
  Scratch<T> gy_copy(channels_last_copy_size<T>(gy_any, g.N, g.C_out, g.OH, g.OW));
  const View4<const T> x = channels_last_view(x_any, g.N, g.C_in, g.H, g.W, x_copy);
  const View4<const T> gy = channels_last_view(gy_any, g.N, g.C_out, g.OH, g.OW, gy_copy);
  const int64_t rows = g.N * g.OH, rows_per_chunk = ceil_div(rows, min64(rows, 16));
  const int64_t chunks = ceil_div(rows, rows_per_chunk);
  const int64_t slab = g.groups * KHW * ic_blocks * MG * 8;  // one chunk's partial sums
  Scratch<A> partial(chunks * slab);

  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      A* sums = partial.get() + chunk * slab;
      fill_zero(sums, slab);
      for (int64_t row = chunk * rows_per_chunk; row < min64(rows, (chunk + 1) * rows_per_chunk); ++row) {
        const int64_t n = row / g.OH, oh = row % g.OH;
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          for (int64_t tap = 0; tap < KHW; ++tap) {
            const int64_t ki = tap / g.KW, kj = tap % g.KW;
            const int64_t ih = oh * g.sH - g.pH + ki * g.dH;
            if (!inside(ih, g.H)) continue;
            // Output columns whose tap column lies inside the input: none where even the first
            // output's lies past x's last column (C++ rounds -1 / 2 to 0, and that output's tap
            // read x's next row: wrong weight grads).
            const int64_t reach = g.W - 1 + g.pW - kj * g.dW;
            const int64_t ow_lo = min64(g.OW, max64(0, ceil_div(g.pW - kj * g.dW, g.sW)));
            const int64_t ow_hi = reach < 0 ? ow_lo : max64(ow_lo, min64(g.OW, reach / g.sW + 1));
            for (int64_t ib = 0; ib < ic_blocks; ++ib) {
              const int64_t ic0 = ib * 8, nic = min64(8, Cg - ic0);
              V* acc_mem = reinterpret_cast<V*>(sums + ((grp * KHW + tap) * ic_blocks + ib) * MG * 8);
              V acc[MG];
              for (int m = 0; m < MG; ++m) acc[m] = acc_mem[m];
              for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
                const T* in = x.data + n * x.sN + ih * x.sH +
                              (ow * g.sW - g.pW + kj * g.dW) * x.sW + grp * Cg + ic0;
                const T* go = gy.data + n * gy.sN + oh * gy.sH + ow * gy.sW + grp * MG;
                V xv;
                if (sizeof(T) == sizeof(A) && nic == 8) {
                  __builtin_memcpy(&xv, in, sizeof(V));
                } else {
                  for (int l = 0; l < 8; ++l) xv[l] = l < nic ? static_cast<A>(in[l]) : A(0);
                }
#pragma GCC unroll 16
                for (int m = 0; m < MG; ++m) acc[m] += (static_cast<A>(go[m]) - V{}) * xv;
              }
              for (int m = 0; m < MG; ++m) acc_mem[m] = acc[m];
            }
          }
        }
      }
    }
  });

  at::parallel_for(0, g.groups * KHW * ic_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ib = item % ic_blocks, tap = (item / ic_blocks) % KHW, grp = item / ic_blocks / KHW;
      const int64_t ic0 = ib * 8, nic = min64(8, Cg - ic0);
      for (int m = 0; m < MG; ++m) {
        T* dst = gw.data + (grp * MG + m) * gw.sN + (tap / g.KW) * gw.sH + (tap % g.KW) * gw.sW;
        for (int64_t i = 0; i < nic; ++i) {
          const A* first = partial.get() + (item * MG + m) * 8 + i;
          A sum = first[0];
          for (int64_t c = 1; c < chunks; ++c) sum += first[c * slab];
          dst[(ic0 + i) * gw.sC] = static_cast<T>(sum);
        }
      }
    }
  });
}

// Grouped convs with 8 input and 8 output channels a group (ResNeXt's), float or bf16,
// channels_last x and y, kernel rows of 3 taps, column stride 1 or 2: the 8 output channels of
// GP groups at a position fill one register, lane oc * GP + j for group j. Each input value (with
// GP = 2, a pair: one of each group) is broadcast once into a register and multiplied with the
// weight vectors of the taps that read it: at stride 1, 16 broadcasts feed 42 FMAs of 14
// positions, and one permute per output puts each group's lanes together. GP = 2 where vectors
// hold 16 floats: on full-width 512-bit FMA units that halves the FMAs (ResNeXt 3x3 g32 256 @28
// forward, 2 threads: float 1.03 -> 0.6 ms, bf16 0.63 -> 0.43 ms); on Zen 4 (256-bit units) a
// 16-lane kernel that spread each group's values by a permute per 3 FMAs ran 1.2x slower than 8
// lanes. Input rows are first copied group-major, [group / GP][column][8][GP] with zero columns
// for the padding, once per row in a thread's run of output rows: a group's columns then lie
// 32 x GP bytes apart at constant offsets, where in x they are a pixel (1 KB) apart and share a
// few L1 sets. bf16 is widened to float on that copy, or with vdpbf16ps stays bf16.
constexpr int kGrouped8Pairs = kVL<float> == 16 ? 2 : 1;  // GP

template <typename T>
bool use_grouped8_cl(const ConvGeometry& g, bool channels_last) {
  return (std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>) && kVL<float> >= 8 && g.C_in_g() == 8 && g.C_out_g() == 8 &&
         g.groups % kGrouped8Pairs == 0 && g.KW == 3 && g.dW == 1 && (g.sW == 1 || g.sW == 2) && channels_last;
}

constexpr int kGrouped8Block = kVL<float> == 16 ? 14 : 12;  // accumulators: of 32 or 16 registers

#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
// A block of grouped8_forward_cl's output columns from bf16 rows and weights that hold pairs of
// input channels: each broadcast word (with GP = 2, two words, one of each group) and weight
// vector sum two channels (vdpbf16ps), half the instructions of the float kernel. rows: the KH
// packed rows (nullptr: padding), at the row's start and offset the block's first value in them;
// w: the groups' packed weights; bias: 8 x GP floats, in lanes as the sums.
template <int S, int GP>
void grouped8_block_dot(const c10::BFloat16* const* rows, int64_t KH, int64_t offset, const c10::BFloat16* w,
                        const float* bias, float* out, int cols) {
  constexpr int PB = kGrouped8Block, kCols = (PB - 1) * S + 3, L = 8 * GP;
  using F = std::conditional_t<GP == 2, __m512, __m256>;
  using B = std::conditional_t<GP == 2, __m512bh, __m256bh>;
  using Bits = std::conditional_t<GP == 2, __m512i, __m256i>;
  F acc[PB];
  for (int q = 0; q < PB; ++q) __builtin_memcpy(&acc[q], bias, sizeof(F));
  for (int64_t kh = 0; kh < KH; ++kh) {
    if (rows[kh] == nullptr) continue;
    const c10::BFloat16* r = rows[kh] + offset;
    const c10::BFloat16* wk = w + kh * 3 * 8 * L;
#pragma GCC unroll 1
    for (int p = 0; p < 4; ++p) {
      B wv[3];
      for (int kw = 0; kw < 3; ++kw) __builtin_memcpy(&wv[kw], wk + (kw * 4 + p) * 2 * L, sizeof(B));
#pragma GCC unroll 32
      for (int c = 0; c < kCols; ++c) {
        Bits xb;
        if constexpr (GP == 2) {
          int64_t pairs;
          __builtin_memcpy(&pairs, r + (c * 4 + p) * 4, sizeof(pairs));
          xb = _mm512_set1_epi64(pairs);
        } else {
          int32_t pair;
          __builtin_memcpy(&pair, r + c * 8 + 2 * p, sizeof(pair));
          xb = _mm256_set1_epi32(pair);
        }
#pragma GCC unroll 3
        for (int kw = 0; kw < 3; ++kw) {  // column c feeds output (c - kw) / S
          if (c >= kw && (c - kw) % S == 0 && (c - kw) / S < PB) {
            if constexpr (GP == 2) {
              acc[(c - kw) / S] = _mm512_dpbf16_ps(acc[(c - kw) / S], (__m512bh)xb, wv[kw]);
            } else {
              acc[(c - kw) / S] = _mm256_dpbf16_ps(acc[(c - kw) / S], (__m256bh)xb, wv[kw]);
            }
          }
        }
      }
    }
  }
  for (int q = 0; q < cols; ++q) __builtin_memcpy(out + q * L, &acc[q], sizeof(F));
}
#endif

// P: the packed rows' and weights' type, float or (with vdpbf16ps) bf16 in pairs of channels.
template <typename T, int S, typename P>
void grouped8_forward_cl(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                         View4<T> y) {
  if constexpr ((std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>) && kVL<float> >= 8) {
    constexpr bool kDot = std::is_same_v<P, c10::BFloat16>;
    constexpr int GP = kGrouped8Pairs;  // groups a vector (their count a multiple)
    constexpr int L = 8 * GP;                      // lanes
    // float, bf16 widened on the way in (load_widened)
    using V = std::conditional_t<GP == 2, typename Vec<float>::type, typename Vec8<float>::type>;
    typedef int32_t Index16 __attribute__((vector_size(64)));
    using I = std::conditional_t<GP == 2, Index16, typename IndexVec<typename Vec8<float>::type>::type>;
    I interleave, separate;  // lane oc * GP + j from lane j * 8 + oc, and back
    for (int k = 0; k < L; ++k) {
      interleave[k] = k % GP * 8 + k / GP;
      separate[k] = k % 8 * GP + k / 8;
    }
    constexpr int PB = kGrouped8Block;
    constexpr int kCols = (PB - 1) * S + 3;  // input columns of a block
    constexpr int Z = kDot ? 2 : 1;          // input channels a weight lane sums
    const int64_t G = g.groups, KH = g.KH, VG = G / GP;
    // [group / GP][kernel row][col][input channel / Z][output channel][Z or GP]
    Scratch<P> wp(G * KH * 3 * 64);
    for (int64_t oc = 0; oc < g.C_out; ++oc) {
      const int64_t grp = oc / 8;
      for (int64_t i = 0; i < 8; ++i) {
        for (int64_t t = 0; t < KH * 3; ++t) {
          wp.get()[(((((grp / GP) * KH * 3 + t) * (8 / Z) + i / Z) * 8 + oc % 8) * GP + grp % GP) * Z + i % Z] =
              static_cast<P>(w.data[oc * w.sN + i * w.sC + (t / 3) * w.sH + (t % 3) * w.sW]);
        }
      }
    }
    // Locals, not g's fields: stores through the may_alias vectors would make every use reload them.
    const int64_t H = g.H, W = g.W, OH = g.OH, OW = g.OW, pH = g.pH, pW = g.pW, dH = g.dH, sH = g.sH;
    const int64_t blocks = ceil_div(OW, PB);
    // Packed columns: those of every block, the tail's included; column c is iw = c - pW.
    const int64_t PW = (blocks - 1) * PB * S + kCols, row_elems = G * PW * 8;
    at::parallel_for(0, g.N * OH, 1, [&](int64_t begin, int64_t end) {
      // The last KH packed rows, tagged by n * H + ih.
      Scratch<P> ring(KH * row_elems);
      Scratch<int64_t> tags(KH);
      Scratch<const P*> rows(KH);
      for (int64_t s = 0; s < KH; ++s) tags.get()[s] = -1;
      // The next item's new rows come in behind this item's work (into L2: in L1 they would
      // evict this item's packed rows).
      NextRowsPrefetch next_rows(W * x.sW * static_cast<int64_t>(sizeof(T)), g.N * x.sN * static_cast<int64_t>(sizeof(T)), true);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / OH, oh = item % OH;
        next_rows.start();
        if (item + 1 < end) {
          const int64_t next_n = (item + 1) / OH, next_oh = (item + 1) % OH;
          for (int64_t kh = 0; kh < KH; ++kh) {
            const int64_t ih = next_oh * sH - pH + kh * dH;
            bool read_now = false;
            for (int64_t k = 0; k < KH; ++k) read_now = read_now || (next_n == n && ih == oh * sH - pH + k * dH);
            if (inside(ih, H) && !read_now) next_rows.add(x.data + next_n * x.sN + ih * x.sH);
          }
        }
        for (int64_t kh = 0; kh < KH; ++kh) {
          const int64_t ih = oh * sH - pH + kh * dH;
          rows.get()[kh] = nullptr;
          if (!inside(ih, H)) continue;
          int64_t slot = -1;
          for (int64_t s = 0; s < KH; ++s) slot = tags.get()[s] == n * H + ih ? s : slot;
          if (slot < 0) {  // a slot holding no row this item reads
            for (int64_t s = 0; s < KH && slot < 0; ++s) {
              bool needed = false;
              for (int64_t k = 0; k < KH; ++k) {
                const int64_t ik = oh * sH - pH + k * dH;
                needed = needed || (inside(ik, H) && tags.get()[s] == n * H + ik);
              }
              if (!needed) slot = s;
            }
            tags.get()[slot] = n * H + ih;
            P* dst = ring.get() + slot * row_elems;
            const T* src = x.data + n * x.sN + ih * x.sH;
            for (int64_t c = 0; c < PW; ++c) {
              const int64_t iw = c - pW;
              for (int64_t vg = 0; vg < VG; ++vg) {
                P* to = dst + (vg * PW + c) * L;
                if constexpr (kDot) {  // words (pairs of channels) interleaved as the float lanes
                  using Words = typename Vec8<uint32_t>::type;
                  typedef int32_t WordIndex __attribute__((vector_size(32)));
                  Words v{};
                  if (inside(iw, W)) __builtin_memcpy(&v, src + iw * x.sW + vg * L, L * sizeof(P));
                  if constexpr (GP == 2) v = __builtin_shuffle(v, WordIndex{0, 4, 1, 5, 2, 6, 3, 7});
                  __builtin_memcpy(to, &v, L * sizeof(P));
                } else {
                  V v = inside(iw, W) ? load_widened<V>(src + iw * x.sW + vg * L) : V{};
                  if constexpr (GP == 2) v = __builtin_shuffle(v, interleave);
                  __builtin_memcpy(to, &v, sizeof(V));
                }
              }
            }
          }
          rows.get()[kh] = ring.get() + slot * row_elems;
        }
        for (int64_t vg = 0; vg < VG; ++vg) {
          next_rows.upto(vg + 1, VG);
          V b = bias ? load_widened<V>(bias + vg * L) : V{};
          if constexpr (GP == 2) b = __builtin_shuffle(b, interleave);
          for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t offset = (vg * PW + blk * PB * S) * L;
            const P* wg = wp.get() + vg * KH * 3 * 8 * L;
            T* out = y.data + n * y.sN + oh * y.sH + blk * PB * y.sW + vg * L;
            const int qs = static_cast<int>(min64(PB, OW - blk * PB));
            if constexpr (kDot) {
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
              float b_lanes[L];
              alignas(64) float sums[PB * L];
              __builtin_memcpy(b_lanes, &b, sizeof(b_lanes));
              grouped8_block_dot<S, GP>(rows.get(), KH, offset, wg, b_lanes, sums, qs);
              for (int q = 0; q < qs; ++q) {
                V acc = loadu<V>(sums + q * L);
                if constexpr (GP == 2) acc = __builtin_shuffle(acc, separate);
                store_narrowed(out + q * y.sW, acc);
              }
#endif
            } else {
              V acc[PB];
              for (int q = 0; q < PB; ++q) acc[q] = b;
              for (int64_t kh = 0; kh < KH; ++kh) {
                if (rows.get()[kh] == nullptr) continue;
                const P* r = rows.get()[kh] + offset;
                const P* wk = wg + kh * 3 * 8 * L;
#pragma GCC unroll 1
                for (int i = 0; i < 8; ++i) {
                  V wv[3];
                  for (int kw = 0; kw < 3; ++kw) wv[kw] = loadu<V>(wk + (kw * 8 + i) * L);
#pragma GCC unroll 32
                  for (int c = 0; c < kCols; ++c) {
                    V xb;
                    if constexpr (GP == 2) {  // the pair as one 64-bit broadcast
                      double pair;
                      __builtin_memcpy(&pair, r + (c * 8 + i) * 2, sizeof(pair));
                      xb = reinterpret_cast<V>(splat<typename Vec<double>::type>(pair));
                    } else {
                      xb = splat<V>(r[c * 8 + i]);
                    }
#pragma GCC unroll 3
                    for (int kw = 0; kw < 3; ++kw) {  // column c feeds output (c - kw) / S
                      if (c >= kw && (c - kw) % S == 0 && (c - kw) / S < PB) acc[(c - kw) / S] += xb * wv[kw];
                    }
                  }
                }
              }
              for (int q = 0; q < qs; ++q) {
                if constexpr (GP == 2) acc[q] = __builtin_shuffle(acc[q], separate);
                store_narrowed(out + q * y.sW, acc[q]);
              }
            }
          }
        }
      }
    });
  }
}

// The weight grad of grouped convs with 8 channels a group on 16-lane vectors (float, or bf16
// widened to float; AVX-512), stride 1 and kernel rows of 3 taps, channels_last x and gy: a
// vector holds the output channels of two groups. Input channel i of both groups is spread over
// their 8 lanes each by one permute of the 16 channels at a position, and that one permute feeds
// the 3 taps of a kernel row.
template <typename T>
bool use_grouped_pairs(const ConvGeometry& g, bool channels_last) {
  return (std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>) && kVL<float> == 16 && g.C_in_g() == 8 && g.C_out_g() == 8 &&
         g.groups % 2 == 0 && g.sH == 1 && g.sW == 1 && g.KW == 3 && g.dW == 1 && channels_last;
}

// The permute's index vectors: lanes of group j (0 or 1) take input channel i of group j.
template <typename I>
void pair_spread_indices(I spread[8]) {
  for (int i = 0; i < 8; ++i) {
    for (int l = 0; l < 16; ++l) spread[i][l] = (l / 8) * 8 + i;
  }
}

// gw[oc][i][kh][kw] sums gy[oh][ow][oc] * x[ih][iw][i of oc's group] over positions, 16 output
// channels in the lanes. Along each row, input column iw meets the gy columns iw + pW - kw, so
// one permute of x feeds the 3 taps of a kernel row: per kernel row and half of the input
// channels, 12 accumulators. Work items are (chunk of images,
// pair of groups), with chunks fixed by the sizes and their sums added in order: the same result
// for any thread count.
template <typename T>
void grouped_weight_grad_pairs(const ConvGeometry& g, View4<const T> x, View4<const T> gy,
                               View4<T> gw) {
  if constexpr ((std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>) && kVL<float> == 16) {
    using A = typename AccOf<T>::type;
    using V = typename Vec<A>::type;  // dependent: other ISAs never instantiate this
    typedef int32_t I __attribute__((vector_size(64)));
    const int64_t pairs = g.groups / 2, KH = g.KH, KHW = KH * 3;
    const int64_t chunks = min64(g.N, 16), per_chunk = ceil_div(g.N, chunks);
    const int64_t slab = g.C_out * 8 * KHW;  // one chunk's partial sums, as gw's values
    Scratch<A> partial(chunks * slab);
    const T zeros[16] = {};
    I spread[8];
    pair_spread_indices(spread);
    // Locals, not g's fields: stores through the may_alias vectors would make every use reload them.
    const int64_t H = g.H, W = g.W, OH = g.OH, OW = g.OW, pH = g.pH, pW = g.pW, dH = g.dH;
    at::parallel_for(0, chunks * pairs, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t chunk = item / pairs, pair = item % pairs;
        A* sums = partial.get() + chunk * slab + pair * 16 * 8 * KHW;  // [oc][i][tap]
        for (int64_t kh = 0; kh < KH; ++kh) {
          for (int half = 0; half < 2; ++half) {
            V acc[4][3] = {};
            for (int64_t n = chunk * per_chunk; n < min64(g.N, (chunk + 1) * per_chunk); ++n) {
              for (int64_t oh = 0; oh < OH; ++oh) {
                const int64_t ih = oh - pH + kh * dH;
                if (!inside(ih, H)) continue;
                const T* xrow = x.data + n * x.sN + ih * x.sH + pair * 16;
                const T* grow = gy.data + n * gy.sN + oh * gy.sH + pair * 16;
                const auto column = [&](int64_t iw, const T* g0, const T* g1, const T* g2) {
                  const V gv[3] = {load_widened<V>(g0), load_widened<V>(g1), load_widened<V>(g2)};
                  const V xv = load_widened<V>(xrow + iw * x.sW);
#pragma GCC unroll 4
                  for (int i = 0; i < 4; ++i) {
                    const V xe = __builtin_shuffle(xv, spread[half * 4 + i]);
#pragma GCC unroll 3
                    for (int kw = 0; kw < 3; ++kw) acc[i][kw] += gv[kw] * xe;
                  }
                };
                // gy column of tap kw for input column iw, or zeros outside gy.
                const auto gy_at = [&](int64_t iw, int64_t kw) {
                  const int64_t ow = iw + pW - kw;
                  return inside(ow, OW) ? grow + ow * gy.sW : zeros;
                };
                // Columns whose 3 gy columns all lie inside gy, unchecked; the others checked.
                const int64_t lo = min64(W, max64(0, 2 - pW)), hi = max64(lo, min64(W, OW - pW));
                for (int64_t iw = 0; iw < lo; ++iw) column(iw, gy_at(iw, 0), gy_at(iw, 1), gy_at(iw, 2));
                for (int64_t iw = lo; iw < hi; ++iw) {
                  const T* at = grow + (iw + pW) * gy.sW;
                  column(iw, at, at - gy.sW, at - 2 * gy.sW);
                }
                for (int64_t iw = hi; iw < W; ++iw) column(iw, gy_at(iw, 0), gy_at(iw, 1), gy_at(iw, 2));
              }
            }
            for (int i = 0; i < 4; ++i) {
              for (int kw = 0; kw < 3; ++kw) {
                for (int l = 0; l < 16; ++l) sums[(l * 8 + half * 4 + i) * KHW + kh * 3 + kw] = acc[i][kw][l];
              }
            }
          }
        }
      }
    });
    at::parallel_for(0, g.C_out, 1, [&](int64_t begin, int64_t end) {
      for (int64_t oc = begin; oc < end; ++oc) {
        for (int64_t k = 0; k < 8 * KHW; ++k) {
          const A* first = partial.get() + oc * 8 * KHW + k;
          A sum = first[0];
          for (int64_t c = 1; c < chunks; ++c) sum += first[c * slab];
          gw.data[oc * gw.sN + (k / KHW) * gw.sC + (k % KHW / 3) * gw.sH + (k % 3) * gw.sW] = static_cast<T>(sum);
        }
      }
    });
  }
}

#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
// bf16 1x1 convs (stride 1, no padding, one group) on dense NCHW planes, the stride-1 input grads
// of such convs too: per image, y_n = w x_n, a GEMM whose rows are output channels and whose
// columns are positions, so its blocks are runs of y's planes. MR rows of w (packed dense, pairs
// of input channels adjacent) are the microkernel's broadcasts, and each item packs NR positions
// of x_n as [channel pair][NR][2] (two rows interleaved) in L1. Through channels_last copies of x
// and y (conv_forward_indirect), 1x1 64->256 @56's forward took 3.1 ms and its input grad 4.7 ms
// (now 2.2 and 2.9, torch 3.4-3.6 and 3.5-3.9). Planes of a few hundred positions keep the copies:
// there a last, partial run of positions costs more (1x1 1024->256 @14, 196 positions, 7 runs
// for 6.1, forward 2.2 -> 2.4-2.6 ms, its input grad no faster).
bool use_forward_1x1_planes(const ConvGeometry& g, const View4<const c10::BFloat16>& x,
                            const View4<c10::BFloat16>& y) {
  return g.KH == 1 && g.KW == 1 && g.sH == 1 && g.sW == 1 && g.pH == 0 && g.pW == 0 && g.groups == 1 &&
         g.OH == g.H && g.OW == g.W && g.H * g.W >= 16 * kNR<float> && dense_nchw(x, g.C_in, g.H, g.W) &&
         dense_nchw(y, g.C_out, g.OH, g.OW);
}

void forward_1x1_planes(const ConvGeometry& g, View4<const c10::BFloat16> x, View4<const c10::BFloat16> w,
                        const c10::BFloat16* bias, View4<c10::BFloat16> y) {
  using B = c10::BFloat16;
  constexpr int64_t NR = kNR<float>;
  const int64_t P = g.H * g.W, K = round_up(g.C_in, 2), blocks = ceil_div(g.C_out, kMR);
  const int64_t col_blocks = ceil_div(P, NR);
  Scratch<B> wpack(blocks * kMR * K);  // [oc][ic], zeros past C_out and C_in
  at::parallel_for(0, blocks * kMR, 16, [&](int64_t begin, int64_t end) {
    for (int64_t oc = begin; oc < end; ++oc) {
      for (int64_t ic = 0; ic < K; ++ic) {
        wpack.get()[oc * K + ic] = oc < g.C_out && ic < g.C_in ? w.data[oc * w.sN + ic * w.sC] : B(0);
      }
    }
  });
  const bool no_padding = false;
  at::parallel_for(0, g.N * col_blocks, 1, [&](int64_t begin, int64_t end) {
    Scratch<B> panel(K * NR);
    alignas(64) float start[kMR * NR], tile[kMR * NR];
    alignas(64) B edge[2][NR];  // a last, partial run of positions, zeros past P
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / col_blocks, p0 = item % col_blocks * NR, cols = min64(NR, P - p0);
      const B* xn = x.data + n * x.sN + p0;
      for (int64_t ic = 0; ic < K; ic += 2) {
        const B* pair[2];
        for (int e = 0; e < 2; ++e) {
          pair[e] = ic + e < g.C_in ? xn + (ic + e) * x.sC : nullptr;
          if (pair[e] && cols < NR) {
            for (int64_t q = 0; q < NR; ++q) edge[e][q] = q < cols ? pair[e][q] : B(0);
            pair[e] = edge[e];
          }
        }
        interleave_pairs(pair[0], pair[1], panel.get() + ic * NR);
      }
      for (int64_t mb = 0; mb < blocks; ++mb) {
        const B* rows[kMR];
        B* out[kMR];
        for (int m = 0; m < kMR; ++m) {
          const int64_t oc = mb * kMR + m;
          rows[m] = wpack.get() + oc * K;
          out[m] = y.data + n * y.sN + min64(oc, g.C_out - 1) * y.sC + p0;
          if (bias) {
            const float b = oc < g.C_out ? static_cast<float>(bias[oc]) : 0.0f;
            for (int64_t q = 0; q < NR; ++q) start[m * NR + q] = b;
          }
        }
        const float* c_in = bias ? start : nullptr;
        if (cols == NR && (mb + 1) * kMR <= g.C_out) {
          indirect_microkernel_bf16(1, K, rows, &no_padding, 0, panel.get(), c_in, NR, nullptr, nullptr, 0, out);
          continue;
        }
        indirect_microkernel_bf16(1, K, rows, &no_padding, 0, panel.get(), c_in, NR, nullptr, tile, NR);
        for (int m = 0; m < kMR && mb * kMR + m < g.C_out; ++m) {
          for (int64_t q = 0; q < cols; ++q) out[m][q] = static_cast<B>(tile[m * NR + q]);
        }
      }
    }
  });
}
#endif

template <typename T>
void conv_forward(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                  View4<T> y) {
  if (use_depthwise(g)) return depthwise_forward(g, x, w, bias, y);
  if constexpr (kBf16DotBuilt && std::is_same_v<T, c10::BFloat16>) {
    // With vdpbf16ps the grouped-8 kernel also pays for channels_last copies of NCHW x and y.
    if (use_grouped8_cl<T>(g, true)) {
      const auto grouped8 = [&](View4<const T> xs, View4<T> ys) {
        return g.sW == 1 ? grouped8_forward_cl<T, 1, T>(g, xs, w, bias, ys) : grouped8_forward_cl<T, 2, T>(g, xs, w, bias, ys);
      };
      if (x.sC == 1 && y.sC == 1) return grouped8(x, y);
      if (dense_nchw(x, g.C_in, g.H, g.W) && dense_nchw(y, g.C_out, g.OH, g.OW)) {
        return via_channels_last(x, g.N, g.C_in, g.H, g.W, y, g.C_out, g.OH, g.OW, grouped8);
      }
    }
  }
  if (use_grouped8_cl<T>(g, x.sC == 1 && y.sC == 1)) {
    return g.sW == 1 ? grouped8_forward_cl<T, 1, float>(g, x, w, bias, y) : grouped8_forward_cl<T, 2, float>(g, x, w, bias, y);
  }
  if (use_grouped_direct(g)) {
    if (g.sH == 1 && g.sW == 1) return forward_flat<T, 8, 2>(g, x, w, bias, y);
    return g.C_out_g() == 8 ? grouped_forward_direct<T, 1>(g, x, w, bias, y)
                            : grouped_forward_direct<T, 2>(g, x, w, bias, y);
  }
  if constexpr (std::is_same_v<T, float>) {
    if (use_forward_winograd(g, y)) {
      if (winograd_r(g) == 2) return conv_forward_winograd<2, 4>(g, x, w, bias, y);
      return winograd_m(g) == 4 ? conv_forward_winograd<3, 4>(g, x, w, bias, y) : conv_forward_winograd<3, 3>(g, x, w, bias, y);
    }
  }
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (use_forward_1x1_planes(g, x, y)) return forward_1x1_planes(g, x, w, bias, y);
  }
#endif
  if constexpr (kBf16DotBuilt && std::is_same_v<T, c10::BFloat16>) {
    // Every bf16 conv left, other NCHW 1x1 ones too: there the dot products' twice the rate pays
    // for the channels_last copy (1x1 1024->256 @14 NCHW: 5.4 -> 2.3 ms).
    return conv_forward_indirect<T, T>(g, x, w, bias, y);
  }
  if (use_forward_indirect(g, x, y)) return conv_forward_indirect(g, x, w, bias, y);
  using A = typename AccOf<T>::type;
  constexpr int NR = kNR<A>;
  const int64_t Mg = g.C_out_g(), K = g.patch(), P = g.OH * g.OW;
  const int64_t m_blocks = ceil_div(Mg, kMR);

  // Weights packed once as [group][row block][k][MR], rows past Mg zero.
  Scratch<A> wpack(g.groups * m_blocks * K * kMR);
  Scratch<int64_t> w_offset(K);
  patch_offsets(g, w, w_offset.get());
  at::parallel_for(0, g.groups * m_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t grp = idx / m_blocks, mb = idx % m_blocks;
      A* dst = wpack.get() + idx * K * kMR;
      for (int m = 0; m < kMR; ++m) {
        const int64_t oc = mb * kMR + m;
        const T* wo = w.data + (grp * Mg + oc) * w.sN;
        for (int64_t k = 0; k < K; ++k) dst[k * kMR + m] = oc < Mg ? static_cast<A>(wo[w_offset.get()[k]]) : A(0);
      }
    }
  });

  // The patch rows are taken KC at a time (GEMM blocking): a KC x NR panel stays in L1 while
  // every MR x KC weight block meets it, and the tile's weight blocks (Mg x KC) stay in L2 while
  // every panel meets them; partial sums wait in `acc` (Mg x PT) between blocks. Where each
  // channel's positions are one run of y (NCHW), whole MR x NR blocks are summed in y itself:
  // stores then overlap the arithmetic instead of following it as a pass of their own.
  const bool direct = std::is_same_v<T, A> && y.sW == 1 && y.sH == g.OW;
  const int64_t mfull = direct ? Mg / kMR * kMR : 0;
  // 1 x 1 stride-1 convs over planes of contiguous rows: a channel's positions are a run of x,
  // so the microkernel reads whole panels of NR positions in place, rows P apart; only a last,
  // partial panel is packed. Such a panel's rows straddle more cache lines than packed ones, so
  // it is half as deep to stay in L1 (1x1 1024->256 NCHW forward, 2 threads: 3.8 ms packed, 3.4
  // in place with KC 256, 3.2 with 128).
  const bool in_place = std::is_same_v<T, A> && g.KH == 1 && g.KW == 1 && g.sH == 1 && g.sW == 1 &&
                        g.pH == 0 && g.pW == 0 && x.sW == 1 && x.sH == g.W;
  const int64_t KC = min64(K, in_place ? kKC / 2 : kKC);
  const int64_t PT = tile_length((KC + m_blocks * kMR) * sizeof(A), P, NR, g.N * g.groups);
  const int64_t tiles = ceil_div(P, PT);
  // Blocks summed in y go around the caches in their last step where y is large and its
  // channels' runs whole aligned vectors: stored in place, each line of y was read in first.
  const bool stream = mfull > 0 && stream_aligned(y.data) && y.sC * sizeof(A) % CONVEXT_VEC_BYTES == 0 &&
                      y.sN * sizeof(A) % CONVEXT_VEC_BYTES == 0 && PT % NR == 0 &&
                      g.N * g.C_out * P * static_cast<int64_t>(sizeof(A)) >= kStreamBytes;
  const A* bias_a = std::is_same_v<T, A> ? reinterpret_cast<const A*>(bias) : nullptr;  // y's blocks only
  at::parallel_for(0, g.N * g.groups * tiles, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> panel(KC * PT);
    Scratch<A> acc(m_blocks * kMR * PT);
    Scratch<int64_t> pos_mem(3 * PT);
    TilePositions pos{pos_mem.get(), pos_mem.get() + PT, pos_mem.get() + 2 * PT};
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p0 = (item % tiles) * PT, grp = (item / tiles) % g.groups;
      const int64_t n = item / tiles / g.groups;
      const int64_t pt = min64(PT, P - p0), panels = ceil_div(pt, NR), ld = panels * NR;
      pos.fill(g, y, p0, pt);
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = min64(KC, K - k0);
        const int64_t packed_from = in_place ? pt / NR * NR : 0;  // panels read in place end here
        const T* x_rows = in_place ? x.data + n * x.sN + (grp * g.C_in_g() + k0) * x.sC + p0 : nullptr;
        if (!in_place) {
          pack_patches(g, x, n, grp, pos, pt, ld, k0, kc, NR,
                       [&](int64_t k, int64_t t) { return (t / NR) * kc * NR + k * NR + t % NR; },
                       panel.get());
        } else if (packed_from < pt) {
          A* dst = panel.get() + packed_from / NR * kc * NR;
          for (int64_t k = 0; k < kc; ++k) {  // zeros past pt: stale floats may be denormals (slow)
            copy_run(dst + k * NR, x_rows + k * x.sC + packed_from, pt - packed_from);
            fill_zero(dst + k * NR + pt - packed_from, NR - (pt - packed_from));
          }
        }
        const bool last = k0 + kc == K;
        // A last panel of at most a vector of positions (1x1 @14: 196 = 6 x 32 + 4) goes
        // through half the microkernel.
        const bool half = pt % NR != 0 && pt % NR <= kVL<A>;
        for (int64_t j = 0; j < panels; ++j) {
          const bool b_in_place = j * NR < packed_from;
          const A* b = b_in_place ? reinterpret_cast<const A*>(x_rows) + j * NR : panel.get() + j * kc * NR;
          const int64_t ldb = b_in_place ? x.sC : NR;
          for (int64_t mb = 0; mb < m_blocks; ++mb) {
            const A* a = wpack.get() + (grp * m_blocks + mb) * K * kMR + k0 * kMR;
            const bool in_y = (mb + 1) * kMR <= mfull && (j + 1) * NR <= pt;
            A* c = in_y ? reinterpret_cast<A*>(y.data + n * y.sN + (grp * Mg + mb * kMR) * y.sC +
                                               pos.out_offset[j * NR])
                        : acc.get() + mb * kMR * ld + j * NR;
            const int64_t ldc = in_y ? y.sC : ld;
            const A* row_bias = in_y && last && bias_a ? bias_a + grp * Mg + mb * kMR : nullptr;
            if (half && j + 1 == panels) {  // in acc: its columns past pt are never read
              k0 == 0 ? microkernel<A, false, true>(kc, a, b, c, ldc, ldb) : microkernel<A, true, true>(kc, a, b, c, ldc, ldb);
            } else if (in_y && last && stream) {
              k0 == 0 ? microkernel<A, false, false, true>(kc, a, b, c, ldc, ldb, row_bias)
                      : microkernel<A, true, false, true>(kc, a, b, c, ldc, ldb, row_bias);
            } else if (k0 == 0) {
              microkernel<A>(kc, a, b, c, ldc, ldb, row_bias);
            } else {
              microkernel<A, true>(kc, a, b, c, ldc, ldb, row_bias);
            }
          }
        }
      }
      // What is not in y yet: rows past the last whole MR block, and positions past the last
      // whole panel.
      const int64_t t_in_y = pt / NR * NR;
      for (int64_t m = 0; m < Mg; ++m) {
        const int64_t oc = grp * Mg + m;
        const A b = bias ? static_cast<A>(bias[oc]) : A(0);
        T* out = y.data + n * y.sN + oc * y.sC;
        const A* src = acc.get() + m * ld;
        // Row runs of positions: contiguous on NCHW y, so stored as vectors rather than scattered.
        for_each_row_run(g, pos, m < mfull ? t_in_y : 0, pt, [&](int64_t t0, int64_t t1) {
          T* o = out + pos.out_offset[t0];
          if (y.sW == 1) {
            for (int64_t t = t0; t < t1; ++t) o[t - t0] = static_cast<T>(src[t] + b);
          } else {
            for (int64_t t = t0; t < t1; ++t) o[(t - t0) * y.sW] = static_cast<T>(src[t] + b);
          }
        });
      }
    }
    if (stream) stream_fence();
  });
}

// The input gradient as forward convolutions of gy, one per phase (a, b) of the stride: the rows
// ih = a (mod sH) of gx meet only the kernel rows ki with sH dividing a + pH - ki * dH, which read
// gy row (ih + pH - ki * dH) / sH. In gy's terms that is a stride-1 convolution over those taps,
// flipped (the last tap reads the lowest row), with dilation dH / gcd(sH, dH) and padding minus
// the last tap's offset (negative where the taps start inside gy); with each group's weights
// transposed (input and output channels swapped), into the phase's rows and columns of gx. At
// stride 1 there is one phase: padding d (k - 1) - p, all taps, the same dilation.
struct PhaseAxis {
  int64_t last, step, count, dilation, padding, size;  // taps last, last - step, ...; gx rows
};

PhaseAxis phase_axis(int64_t a, int64_t s, int64_t p, int64_t d, int64_t K, int64_t in) {
  int64_t gcd = s;
  for (int64_t r = d; r != 0;) {
    const int64_t t = gcd % r;
    gcd = r;
    r = t;
  }
  PhaseAxis ax{0, s / gcd, 0, d / gcd, 0, max64(0, ceil_div(in - a, s))};
  int64_t first = 0;
  while (first < K && (a + p - first * d) % s != 0) ++first;
  if (first == K) return ax;
  ax.count = (K - 1 - first) / ax.step + 1;
  ax.last = first + (ax.count - 1) * ax.step;
  ax.padding = -((a + p - ax.last * d) / s);
  return ax;
}

// Measured faster than the scatter below wherever groups have 16 or more output channels (up
// to 3.5x on 1x1 convs); with fewer, the forward GEMMs waste most of their columns. At stride > 1
// with 16 or more channels per group in gx (the ResNet stem's 3 fill a tenth of the forward's
// columns, and its backward lost 2x): U-Net's 2x2 s2 transposed conv 46 -> 28 ms into
// channels_last, and, since the forward stores NCHW blocks transposed, into NCHW too (2 threads:
// 3x3 s2 128 input grad 11.4-11.9 -> 7.7-8.3 ms, U-Net 33 -> 29 ms).
bool use_input_grad_by_phases(const ConvGeometry& g) {
  const bool stride1 = g.sH == 1 && g.sW == 1;
  return (stride1 || g.C_in_g() >= 16) &&
         (g.C_out_g() >= 16 || use_grouped_direct(ConvGeometry{0, g.C_out, g.C_in, g.groups}));
}

template <typename T>
void conv_input_grad_by_phases(const ConvGeometry& g, View4<const T> gy_any, View4<const T> w,
                               const T* bias, View4<T> gx_any) {
  const int64_t Cg = g.C_in_g(), Mg = g.C_out_g();
  // Several phases read gy: copied to channels_last once, not by each phase's forward.
  const bool copy = g.sH * g.sW > 1 && channels_last_copy_size<T>(gy_any, g.N, g.C_out, g.OH, g.OW) > 0;
  Scratch<T> gy_copy(copy ? g.N * g.C_out * g.OH * g.OW : 0);
  const View4<const T> gy = copy ? channels_last_view(gy_any, g.N, g.C_out, g.OH, g.OW, gy_copy) : gy_any;
  // A phase whose taps start inside gy (negative padding: its first rows' taps all read past
  // gy's top, or the conv's padding is more than d (k - 1)) reads gy from row -padding on, as
  // padding 0: the forward kernels' padded planes have no room for negative padding.
  auto phase_geometry = [&](const PhaseAxis& rows, const PhaseAxis& cols) {
    return ConvGeometry{g.N, g.C_out, g.C_in, g.groups, g.OH - max64(0, -rows.padding), g.OW - max64(0, -cols.padding),
                        rows.size, cols.size, rows.count, cols.count, 1, 1, max64(0, rows.padding),
                        max64(0, cols.padding), rows.dilation, cols.dilation};
  };
  // Winograd writes channels_last, or dense NCHW: where the first phase takes it (4 x 4 stride 2,
  // DCGAN's), the phases of NCHW gx go to a channels_last copy (DCGAN forward 10.7 -> 7.4 ms).
  const bool gx_copied = std::is_same_v<T, float> && g.sH * g.sW > 1 && gx_any.sC != 1 &&
                         dense_nchw(gx_any, g.C_in, g.H, g.W) &&
                         winograd_applies(phase_geometry(phase_axis(0, g.sH, g.pH, g.dH, g.KH, g.H),
                                                         phase_axis(0, g.sW, g.pW, g.dW, g.KW, g.W)));
  Scratch<T> gx_copy(gx_copied ? g.N * g.C_in * g.H * g.W : 0);
  const View4<T> gx = gx_copied ? View4<T>{gx_copy.get(), g.H * g.W * g.C_in, 1, g.W * g.C_in, g.C_in} : gx_any;
  for (int64_t a = 0; a < g.sH; ++a) {
    const PhaseAxis rows = phase_axis(a, g.sH, g.pH, g.dH, g.KH, g.H);
    for (int64_t b = 0; b < g.sW; ++b) {
      const PhaseAxis cols = phase_axis(b, g.sW, g.pW, g.dW, g.KW, g.W);
      const View4<T> out{gx.data + a * gx.sH + b * gx.sW, gx.sN, gx.sC, gx.sH * g.sH, gx.sW * g.sW};
      if (rows.size == 0 || cols.size == 0) continue;
      const ConvGeometry t = phase_geometry(rows, cols);
      if (rows.count == 0 || cols.count == 0 || t.H <= 0 || t.W <= 0) {  // no tap reaches gy from these rows or columns
        at::parallel_for(0, g.N * g.C_in, 1, [&](int64_t begin, int64_t end) {
          for (int64_t item = begin; item < end; ++item) {
            T* dst = out.data + (item / g.C_in) * out.sN + (item % g.C_in) * out.sC;
            const T value = bias ? bias[item % g.C_in] : T(0);
            for (int64_t i = 0; i < rows.size * cols.size; ++i) dst[(i / cols.size) * out.sH + (i % cols.size) * out.sW] = value;
          }
        });
        continue;
      }
      const View4<const T> gy_phase{gy.data + max64(0, -rows.padding) * gy.sH + max64(0, -cols.padding) * gy.sW,
                                    gy.sN, gy.sC, gy.sH, gy.sW};
      const int64_t KH = rows.count, KW = cols.count;
      if (g.groups == 1) {
        // The phase's weights as a view of w (output channel ic, input channel oc, taps
        // reversed), packed once by the forward: a transformed copy of a large w first cost
        // another pass through memory (3x3 512 @7 input grad, 1 thread: 17.1 -> 13.5 ms).
        const View4<const T> wt{w.data + rows.last * w.sH + cols.last * w.sW, w.sC, w.sN,
                                -rows.step * w.sH, -cols.step * w.sW};
        conv_forward(t, gy_phase, wt, bias, out);
        continue;
      }
      Scratch<T> wt(g.C_in * Mg * KH * KW);  // [group][ic][oc][phase tap row][col], dense
      // 16 input channels at a time: reads stay within a few lines of each of w's rows.
      constexpr int64_t kIcBlock = 16;
      const int64_t ic_blocks = ceil_div(Cg, kIcBlock);
      at::parallel_for(0, g.groups * ic_blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t grp = item / ic_blocks, ic0 = (item % ic_blocks) * kIcBlock;
          for (int64_t oc = 0; oc < Mg; ++oc) {
            for (int64_t ic = ic0; ic < min64(Cg, ic0 + kIcBlock); ++ic) {
              const T* src = w.data + (grp * Mg + oc) * w.sN + ic * w.sC;
              T* dst = wt.get() + ((grp * Cg + ic) * Mg + oc) * KH * KW;
              for (int64_t i = 0; i < KH; ++i) {
                for (int64_t j = 0; j < KW; ++j) {
                  dst[i * KW + j] =
                      src[(rows.last - i * rows.step) * w.sH + (cols.last - j * cols.step) * w.sW];
                }
              }
            }
          }
        }
      });
      conv_forward(t, gy_phase, View4<const T>{wt.get(), Mg * KH * KW, KH * KW, KW, 1}, bias, out);
    }
  }
  if (gx_copied) from_channels_last(gx.data, g.N, g.C_in, g.H, g.W, gx_any);
}

// Input grads into few channels (gx's, at most 4, one group: the ResNet stem's RGB). Each phase of
// the stride is a stride-1 convolution of gy into those channels (see phase_axis), which the
// forward GEMMs would run with 3 of their 32 columns busy, and the scatter below as 147 patch
// rows added into gx per position (the stem's input grad took 14 ms, its forward 4.3). Here
// chunks of gy's rows are staged as zero-padded planes of A, shared by all phases, and each phase
// is summed flat (as forward_flat): blocks of the OB channels x VB vectors of positions in
// registers, each vector of gy loaded meeting OB weights.
bool use_input_grad_few_channels(const ConvGeometry& g) { return g.groups == 1 && g.C_in <= 4; }

// Vectors of positions a block: as many as the registers hold beside the OB weights and a load.
template <int OB>
constexpr int few_channel_vectors() {
  constexpr int registers = CONVEXT_VEC_BYTES == 64 ? 32 : 16;
  return (registers - OB - 1) / OB < 8 ? (registers - OB - 1) / OB : 8;
}

// Bytes of staged gy rows a work item aims for (a chunk of rows, all channels): half of L2.
constexpr int64_t kStagedRowsBytes = 512 * 1024;

template <typename T, int OB>
void input_grad_few_channels(const ConvGeometry& g, View4<const T> gy, View4<const T> w, const T* bias,
                             View4<T> gx) {
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>, VB = few_channel_vectors<OB>(), BLOCK = VB * VL;
  const int64_t M = g.C_out;
  struct Phase {
    int64_t a, b;
    PhaseAxis rows, cols;
  };
  std::vector<Phase> phases;
  // Staged planes: gy row r at row r + top, column c at column c + left, zeros around; `extra`
  // rows past a chunk's own serve its last taps.
  int64_t top = 0, left = 0, extra = 0, cols = 0, rows_out = 0, taps_max = 0;
  for (int64_t a = 0; a < g.sH; ++a) {
    for (int64_t b = 0; b < g.sW; ++b) {
      const Phase ph{a, b, phase_axis(a, g.sH, g.pH, g.dH, g.KH, g.H), phase_axis(b, g.sW, g.pW, g.dW, g.KW, g.W)};
      if (ph.rows.size == 0 || ph.cols.size == 0) continue;
      phases.push_back(ph);  // also where no tap reaches: its sums are zero, its gx the bias
      top = max64(top, ph.rows.padding);
      left = max64(left, ph.cols.padding);
      rows_out = max64(rows_out, ph.rows.size);
      taps_max = max64(taps_max, ph.rows.count * ph.cols.count);
    }
  }
  for (const Phase& ph : phases) {
    extra = max64(extra, top - ph.rows.padding + max64(0, ph.rows.count - 1) * ph.rows.dilation);
    cols = max64(cols, ph.cols.size + left - ph.cols.padding + max64(0, ph.cols.count - 1) * ph.cols.dilation);
  }
  cols = max64(cols, left + g.OW);
  // Each phase's weights as [oc][tap][OB] (taps reversed, as in conv_input_grad_by_phases), and
  // each tap's offset in the staged planes.
  const int64_t P = static_cast<int64_t>(phases.size());
  Scratch<A> wph(P * M * taps_max * OB);
  Scratch<int64_t> offset(P * taps_max);
  for (int64_t i = 0; i < P; ++i) {
    const Phase& ph = phases[i];
    for (int64_t tr = 0; tr < ph.rows.count; ++tr) {
      for (int64_t tc = 0; tc < ph.cols.count; ++tc) {
        const int64_t tap = tr * ph.cols.count + tc;
        const int64_t kh = ph.rows.last - tr * ph.rows.step, kw = ph.cols.last - tc * ph.cols.step;
        offset.get()[i * taps_max + tap] = (top - ph.rows.padding + tr * ph.rows.dilation) * cols +
                                           left - ph.cols.padding + tc * ph.cols.dilation;
        for (int64_t oc = 0; oc < M; ++oc) {
          for (int o = 0; o < OB; ++o) {
            wph.get()[((i * M + oc) * taps_max + tap) * OB + o] =
                o < g.C_in ? static_cast<A>(w.data[oc * w.sN + o * w.sC + kh * w.sH + kw * w.sW]) : A(0);
          }
        }
      }
    }
  }
  const int64_t chunk = max64(1, kStagedRowsBytes / (M * cols * static_cast<int64_t>(sizeof(A))) - extra);
  const int64_t chunks = ceil_div(rows_out, chunk);
  // A plane holds a chunk's rows and what the last block reads past them (read, never kept).
  const int64_t span = round_up(chunk * cols, BLOCK);
  const int64_t plane = span + extra * cols + cols + BLOCK;
  at::parallel_for(0, g.N * chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> staged(M * plane), out(OB * span);
    fill_zero(staged.get(), M * plane);  // padding columns stay zero; stale rows feed only dropped outputs
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / chunks, i0 = (item % chunks) * chunk, i1 = min64(rows_out, i0 + chunk);
      // Staged row k is gy row i0 + k - top.
      const int64_t k_end = i1 - i0 + extra, r_lo = max64(0, i0 - top), r_hi = min64(g.OH, i0 - top + k_end);
      for (int64_t oc = 0; oc < M; ++oc) {
        A* pl = staged.get() + oc * plane;
        for (int64_t k = 0; k < k_end; ++k) {
          const int64_t r = i0 + k - top;
          if (r < r_lo || r >= r_hi) fill_zero(pl + k * cols + left, g.OW);
        }
      }
      if (r_lo < r_hi) {
        const View4<const T> src{gy.data + r_lo * gy.sH, gy.sN, gy.sC, gy.sH, gy.sW};
        gather_planes(src, n, 0, M, r_hi - r_lo, g.OW, staged.get() + (r_lo - i0 + top) * cols + left, plane, cols);
      }
      for (int64_t i = 0; i < P; ++i) {
        const Phase& ph = phases[i];
        const int64_t rows_here = min64(i1, ph.rows.size) - i0;
        if (rows_here <= 0) continue;
        const int64_t taps = ph.rows.count * ph.cols.count, len = rows_here * cols;
        const int64_t* off = offset.get() + i * taps_max;
        for (int64_t q0 = 0; q0 < len; q0 += BLOCK) {
          V acc[OB][VB] = {};
          flat_block<A, OB, VB>(acc, M, taps, staged.get() + q0, plane, off, wph.get() + i * M * taps_max * OB,
                                taps_max * OB);
          for (int o = 0; o < OB; ++o) {
            for (int v = 0; v < VB; ++v) __builtin_memcpy(out.get() + o * span + q0 + v * VL, &acc[o][v], sizeof(V));
          }
        }
        for (int64_t c = 0; c < g.C_in; ++c) {
          const A bc = bias ? static_cast<A>(bias[c]) : A(0);
          for (int64_t r = 0; r < rows_here; ++r) {
            const A* src = out.get() + c * span + r * cols;
            T* dst = gx.data + n * gx.sN + c * gx.sC + (ph.a + (i0 + r) * g.sH) * gx.sH + ph.b * gx.sW;
            const int64_t step = g.sW * gx.sW;
            for (int64_t j = 0; j < ph.cols.size; ++j) dst[j * step] = static_cast<T>(src[j] + bc);
          }
        }
      }
    }
  });
}

template <typename T>
void conv_input_grad(const ConvGeometry& g, View4<const T> gy, View4<const T> w, const T* bias,
                     View4<T> gx) {
  if (use_depthwise(g)) return depthwise_input_grad(g, gy, w, bias, gx);
  if (use_input_grad_few_channels(g)) {
    switch (g.C_in) {
      case 1: return input_grad_few_channels<T, 1>(g, gy, w, bias, gx);
      case 2: return input_grad_few_channels<T, 2>(g, gy, w, bias, gx);
      case 3: return input_grad_few_channels<T, 3>(g, gy, w, bias, gx);
      default: return input_grad_few_channels<T, 4>(g, gy, w, bias, gx);
    }
  }
  if (use_input_grad_by_phases(g)) return conv_input_grad_by_phases(g, gy, w, bias, gx);
  using A = typename AccOf<T>::type;
  constexpr int NR = kNR<A>;
  const int64_t Cg = g.C_in_g(), Mg = g.C_out_g(), KHW = g.KH * g.KW;
  const int64_t P = g.OH * g.OW, HW = g.H * g.W, R = Cg * KHW;
  const int64_t threads = at::get_num_threads();

  // w^T packed once per group: [row block][oc][MR], row = (channel, kernel row, col), rows past
  // R zero. A transposition: work items take a few output channels each and stream their rows
  // of w while writing contiguous runs, rather than striding through the whole weight per row.
  const int64_t row_blocks = ceil_div(R, kMR);
  constexpr int64_t kOcBlock = 16;
  const int64_t oc_blocks = ceil_div(Mg, kOcBlock);
  Scratch<A> wpack(g.groups * row_blocks * Mg * kMR);
  Scratch<int64_t> w_offset(R);
  patch_offsets(g, w, w_offset.get());
  at::parallel_for(0, g.groups * oc_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t grp = idx / oc_blocks, oc0 = (idx % oc_blocks) * kOcBlock;
      const int64_t oc1 = min64(Mg, oc0 + kOcBlock);
      A* packed = wpack.get() + grp * row_blocks * Mg * kMR;
      for (int64_t rb = 0; rb < row_blocks; ++rb) {
        for (int64_t oc = oc0; oc < oc1; ++oc) {
          const T* wo = w.data + (grp * Mg + oc) * w.sN;
          A* dst = packed + (rb * Mg + oc) * kMR;
          for (int m = 0; m < kMR; ++m) {
            const int64_t r = rb * kMR + m;
            dst[m] = r < R ? static_cast<A>(wo[w_offset.get()[r]]) : A(0);
          }
        }
      }
    }
  });

  // Work item: (image, group, block of input channels); blocks own disjoint parts of gx, so the
  // scatter needs no atomics, and are split finer when there are few images and groups. A block's
  // rows need not start on a row block: the rows outside it are computed and dropped.
  int64_t block = ceil_div(Cg, min64(Cg, ceil_div(4 * threads, g.N * g.groups)));
  while (block > 1 && block * HW > (int64_t(1) << 22)) block = ceil_div(block, 2);
  const int64_t blocks = ceil_div(Cg, block);
  const int64_t PT = tile_length(Mg * sizeof(A), P, NR, blocks * g.N * g.groups);

  at::parallel_for(0, g.N * g.groups * blocks, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> panel(Mg * PT);
    Scratch<A> acc(block * HW);
    Scratch<int64_t> pos_mem(3 * PT);
    TilePositions pos{pos_mem.get(), pos_mem.get() + PT, pos_mem.get() + 2 * PT};
    alignas(64) A tile[kMR * NR];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ic0 = (item % blocks) * block, grp = (item / blocks) % g.groups;
      const int64_t n = item / blocks / g.groups;
      const int64_t nic = min64(block, Cg - ic0), r0 = ic0 * KHW, r1 = r0 + nic * KHW;
      fill_zero(acc.get(), nic * HW);

      for (int64_t p0 = 0; p0 < P; p0 += PT) {
        const int64_t pt = min64(PT, P - p0), panels = ceil_div(pt, NR);
        pos.fill(g, gy, p0, pt);
        for (int64_t oc = 0; oc < Mg; ++oc) {
          const T* src = gy.data + n * gy.sN + (grp * Mg + oc) * gy.sC;
          for (int64_t t = 0; t < panels * NR; ++t) {
            panel.get()[(t / NR) * Mg * NR + oc * NR + t % NR] =
                t < pt ? static_cast<A>(src[pos.out_offset[t]]) : A(0);
          }
        }
        // Row blocks outer: each block of w^T (MR x Mg) is used by every panel while in cache.
        for (int64_t rb = r0 / kMR; rb < ceil_div(r1, kMR); ++rb) {
          for (int64_t j = 0; j < panels; ++j) {
            const int64_t cols = min64(NR, pt - j * NR);
            microkernel<A>(Mg, wpack.get() + (grp * row_blocks + rb) * Mg * kMR,
                           panel.get() + j * Mg * NR, tile, NR);
            for (int64_t r = max64(rb * kMR, r0); r < min64(rb * kMR + kMR, r1); ++r) {
              const int64_t m = r - rb * kMR;
              A* plane = acc.get() + ((r - r0) / KHW) * HW;
              const int64_t dy = ((r % KHW) / g.KW) * g.dH, dx = (r % g.KW) * g.dW;
              for_each_row_run(g, pos, j * NR, j * NR + cols, [&](int64_t t0, int64_t t1) {
                const int64_t ih = pos.ih0[t0] + dy, iw = pos.iw0[t0] + dx;
                int64_t lo, hi;
                run_inside(g, ih, iw, t1 - t0, lo, hi);
                A* dst = plane + ih * g.W + iw;
                const A* src = tile + m * NR + (t0 - j * NR);
                for (int64_t q = lo; q < hi; ++q) dst[q * g.sW] += src[q];
              });
            }
          }
        }
      }

      for (int64_t icl = 0; icl < nic; ++icl) {
        const int64_t c = grp * Cg + ic0 + icl;
        const A b = bias ? static_cast<A>(bias[c]) : A(0);
        T* dst = gx.data + n * gx.sN + c * gx.sC;
        const A* src = acc.get() + icl * HW;
        for (int64_t h = 0; h < g.H; ++h) {
          for (int64_t x = 0; x < g.W; ++x) dst[h * gx.sH + x * gx.sW] = static_cast<T>(src[h * g.W + x] + b);
        }
      }
    }
  });
}

// The weight gradient as a GEMM over positions: gw[oc][k] = sum over images and positions p of
// gy[oc][p] * patch[k][p], in a patch-row order k whose offsets in gw are gw_offset[k].
// pack_a(n, grp, pos, pt, out) packs gy's [m block][position][MR] for the tile's pt positions,
// pack_b(n, grp, pos, pt, k0, cols, out) patch rows [k0, k0 + cols) as [panel][position][NR]
// (zero past K). Work items are (group, block of patch rows, chunk of positions): each sums its
// chunk in a fixed order into its own partial sums, which are then added chunk by chunk. The
// chunks depend on the sizes only, so the result is the same for any thread count; splitting
// positions (not only patch rows) packs gy once per chunk rather than once per row block.
template <typename T, typename PackA, typename PackB>
void weight_grad_gemm(const ConvGeometry& g, const View4<const T>& gy, const int64_t* gw_offset,
                      View4<T> gw, PackA pack_a, PackB pack_b) {
  using A = typename AccOf<T>::type;
  constexpr int NR = kNR<A>;
  const int64_t Mg = g.C_out_g(), K = g.patch(), P = g.OH * g.OW, NP = g.N * P;
  const int64_t m_blocks = ceil_div(Mg, kMR), Mp = m_blocks * kMR;
  const int64_t PT = min64(256, max64(P, 1));
  const int64_t KB = min64(round_up(K, NR), kKC), k_blocks = ceil_div(K, KB);
  constexpr int64_t kChunk = 1024;  // positions per chunk, at least
  constexpr int64_t kPartialValues = int64_t(1) << 22;  // bound on all partial sums: 16 MB of float
  const int64_t slab = g.groups * Mp * k_blocks * KB;  // one chunk's partial sums
  const int64_t chunks = max64(1, min64(NP / kChunk, kPartialValues / slab));
  const int64_t chunk_len = ceil_div(NP, chunks);
  Scratch<A> partial(chunks * slab);

  at::parallel_for(0, g.groups * k_blocks * chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> apack(m_blocks * PT * kMR);
    Scratch<A> bpack(KB * PT);
    Scratch<int64_t> pos_mem(3 * PT);
    TilePositions pos{pos_mem.get(), pos_mem.get() + PT, pos_mem.get() + 2 * PT};
    for (int64_t item = begin; item < end; ++item) {
      const int64_t chunk = item % chunks, kb = (item / chunks) % k_blocks;
      const int64_t grp = item / chunks / k_blocks;
      const int64_t k0 = kb * KB, kn = min64(KB, K - k0), col_panels = ceil_div(kn, NR);
      A* acc = partial.get() + chunk * slab + (grp * k_blocks + kb) * Mp * KB;
      fill_zero(acc, Mp * KB);
      const int64_t f1 = min64(NP, (chunk + 1) * chunk_len);
      for (int64_t f = chunk * chunk_len; f < f1;) {
        const int64_t n = f / P, p0 = f % P, pt = min64(min64(PT, P - p0), f1 - f);
        pos.fill(g, gy, p0, pt);
        pack_a(n, grp, pos, pt, apack.get());
        pack_b(n, grp, pos, pt, k0, col_panels * NR, bpack.get());
        for (int64_t j = 0; j < col_panels; ++j) {
          for (int64_t mb = 0; mb < m_blocks; ++mb) {
            microkernel<A, true>(pt, apack.get() + mb * pt * kMR, bpack.get() + j * pt * NR,
                                 acc + mb * kMR * KB + j * NR, KB);
          }
        }
        f += pt;
      }
    }
  });

  at::parallel_for(0, g.groups * k_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t grp = item / k_blocks, k0 = (item % k_blocks) * KB, kn = min64(KB, K - k0);
      const A* first = partial.get() + item * Mp * KB;
      for (int64_t oc = 0; oc < Mg; ++oc) {
        T* dst = gw.data + (grp * Mg + oc) * gw.sN;
        for (int64_t kr = 0; kr < kn; ++kr) {
          A sum = first[oc * KB + kr];
          for (int64_t c = 1; c < chunks; ++c) sum += first[c * slab + oc * KB + kr];
          dst[gw_offset[k0 + kr]] = static_cast<T>(sum);
        }
      }
    }
  });
}

// Patch rows ordered (channel, kernel row, kernel col): gy and the patches gathered along rows of
// the input, which suits NCHW tensors.
template <typename T>
void conv_weight_grad_nchw_order(const ConvGeometry& g, View4<const T> x, View4<const T> gy,
                                 View4<T> gw) {
  using A = typename AccOf<T>::type;
  constexpr int NR = kNR<A>;
  const int64_t Mg = g.C_out_g(), K = g.patch(), m_blocks = ceil_div(Mg, kMR);
  Scratch<int64_t> gw_offset(K);
  patch_offsets(g, gw, gw_offset.get());
  auto pack_a = [&](int64_t n, int64_t grp, const TilePositions& pos, int64_t pt, A* out) {
    for (int64_t mb = 0; mb < m_blocks; ++mb) {
      if constexpr (kMR == 8) {
        if (gy.sW == 1 && (mb + 1) * kMR <= Mg) {  // 8 channels' runs of positions, interleaved
          for_each_row_run(g, pos, 0, pt, [&](int64_t t0, int64_t t1) {
            const T* rows[8];
            for (int m = 0; m < 8; ++m) {
              rows[m] = gy.data + n * gy.sN + (grp * Mg + mb * kMR + m) * gy.sC + pos.out_offset[t0];
            }
            interleave8(rows, t1 - t0, out + mb * pt * kMR + t0 * kMR, kMR);
          });
          continue;
        }
      }
      for (int m = 0; m < kMR; ++m) {
        const int64_t oc = mb * kMR + m;
        A* dst = out + mb * pt * kMR + m;
        if (oc >= Mg) {
          for (int64_t t = 0; t < pt; ++t) dst[t * kMR] = A(0);
          continue;
        }
        const T* src = gy.data + n * gy.sN + (grp * Mg + oc) * gy.sC;
        for (int64_t t = 0; t < pt; ++t) dst[t * kMR] = static_cast<A>(src[pos.out_offset[t]]);
      }
    }
  };
  // Unpadded 1x1 convs at stride 1 read rows of x as they are: 8 channels' runs interleaved at
  // a time, where 8 channels lie in one panel of NR (not double's 4 in 16-byte vectors: there the
  // 8 overran into the next position's); the rest (and every other conv) value by value.
  const bool interleave_x = NR % 8 == 0 && K == g.C_in_g() && g.sW == 1 && x.sW == 1 && g.pH == 0 && g.pW == 0;
  auto pack_b = [&](int64_t n, int64_t grp, const TilePositions& pos, int64_t pt, int64_t k0,
                    int64_t cols, A* out) {
    const auto at = [&](int64_t k, int64_t t) { return (k / NR) * pt * NR + t * NR + k % NR; };
    int64_t k8 = 0;
    for (; interleave_x && k8 + 8 <= cols && k0 + k8 + 8 <= K; k8 += 8) {
      for_each_row_run(g, pos, 0, pt, [&](int64_t t0, int64_t t1) {
        const T* rows[8];
        for (int m = 0; m < 8; ++m) {
          rows[m] = x.data + n * x.sN + (grp * K + k0 + k8 + m) * x.sC + pos.ih0[t0] * x.sH + pos.iw0[t0];
        }
        interleave8(rows, t1 - t0, out + at(k8, t0), NR);
      });
    }
    pack_patches(g, x, n, grp, pos, pt, pt, k0 + k8, cols - k8, NR,
                 [&](int64_t k, int64_t t) { return at(k + k8, t); }, out);
  };
  weight_grad_gemm(g, gy, gw_offset.get(), gw, pack_a, pack_b);
}

// Patch rows ordered (kernel row, kernel col, channel) on channels_last x and gy: both are
// gathered as contiguous runs of channels. Measured 1.3-2x faster there with 16 or more channels
// per group; on NCHW tensors, copying them to channels_last first loses to the NCHW order.
template <typename T>
bool use_weight_grad_nhwc_order(const ConvGeometry& g, const View4<const T>& x, const View4<const T>& gy) {
  return g.C_in_g() >= 16 && dense_channels_last(x, g.C_in) && dense_channels_last(gy, g.C_out);
}

template <typename T>
void conv_weight_grad_nhwc_order(const ConvGeometry& g, View4<const T> x, View4<const T> gy,
                                 View4<T> gw) {
  using A = typename AccOf<T>::type;
  constexpr int NR = kNR<A>;
  const int64_t Cg = g.C_in_g(), Mg = g.C_out_g(), K = g.patch();
  const int64_t m_blocks = ceil_div(Mg, kMR);
  Scratch<int64_t> gw_offset(K);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t tap = k / Cg;
    gw_offset.get()[k] = (k % Cg) * gw.sC + (tap / g.KW) * gw.sH + (tap % g.KW) * gw.sW;
  }
  auto pack_a = [&](int64_t n, int64_t grp, const TilePositions& pos, int64_t pt, A* out) {
    for (int64_t t = 0; t < pt; ++t) {
      const T* src = gy.data + n * gy.sN + pos.out_offset[t] + grp * Mg;
      for (int64_t oc = 0; oc < m_blocks * kMR; ++oc) {
        out[(oc / kMR) * pt * kMR + t * kMR + oc % kMR] = oc < Mg ? static_cast<A>(src[oc]) : A(0);
      }
    }
  };
  auto pack_b = [&](int64_t n, int64_t grp, const TilePositions& pos, int64_t pt, int64_t k0,
                    int64_t cols, A* out) {
    for (int64_t t = 0; t < pt; ++t) {
      const T* pixel = x.data + n * x.sN + grp * Cg;
      // Runs of columns that stay inside one kernel tap and one NR panel.
      for (int64_t c = 0; c < cols;) {
        const int64_t k = k0 + c, tap = k / Cg, ic = k % Cg;
        const int64_t run = k >= K ? NR - c % NR : min64(Cg - ic, NR - c % NR);
        A* dst = out + (c / NR) * pt * NR + t * NR + c % NR;
        const int64_t ih = pos.ih0[t] + (tap / g.KW) * g.dH, iw = pos.iw0[t] + (tap % g.KW) * g.dW;
        if (k < K && inside(ih, g.H) && inside(iw, g.W)) {
          const T* src = pixel + ih * x.sH + iw * x.sW + ic;
          for (int64_t r = 0; r < run; ++r) dst[r] = static_cast<A>(src[r]);
        } else {
          for (int64_t r = 0; r < run; ++r) dst[r] = A(0);
        }
        c += run;
      }
    }
  };
  weight_grad_gemm(g, gy, gw_offset.get(), gw, pack_a, pack_b);
}

// The weight gradient as indirect GEMMs over positions, one per tap, on channels_last x and gy:
//   gw[tap][ic][oc] = sum over positions q of x[q's input position for the tap][ic] * gy[q][oc]
// MR input channels come from x's row (zeros past the border), NR output channels from gy's row,
// and positions are the GEMM's reduction: no patch is gathered. Positions (across images) go in
// size-fixed chunks, each work item one (chunk, group, part of the input channels) with its own
// partial sums for every tap, added in chunk order at the end: the same result for any thread
// count. Needs whole tiles of output channels (a multiple of NR per group) and input channels
// per group a multiple of MR, or else (row taps) one group, dilation 1 along W and KW x C_in of
// at least MR: then each kernel row is one tap whose "channels" are the KW x C_in consecutive
// values of x's row that its taps read, padded to whole MR blocks (the ResNet stem's 3 channels:
// 7 x 3 = 21 values in 24, against 3 in 8; by value through a gathered patch, its weight grad took
// 2-2.5x torch's time).
// Other tensors are copied to channels_last first where kernels have several taps (3x3 64 @56
// NCHW: 22 -> 15 ms with the copies); 1x1 convs do too little work per copied value (1x1
// 64->256: 8.4 -> 11.9 ms).
inline bool use_weight_grad_row_taps(const ConvGeometry& g) {
  return g.C_in_g() % kMR != 0 && g.groups == 1 && g.dW == 1 && g.KW * g.C_in >= kMR;
}

template <typename T>
bool use_weight_grad_indirect(const ConvGeometry& g, const View4<const T>& x, const View4<const T>& gy) {
  using A = typename AccOf<T>::type;
  constexpr bool pairs = std::is_same_v<T, c10::BFloat16> && kBf16DotBuilt;
  if (!(std::is_same_v<T, A> || pairs) || g.C_out_g() % kNR<A> != 0) return false;
  if (g.C_in_g() % kMR != 0) return use_weight_grad_row_taps(g);
  return (dense_channels_last(x, g.C_in) && dense_channels_last(gy, g.C_out)) || g.KH * g.KW > 1 || pairs;
}

constexpr int64_t kWeightGradBlock = 128;

// Output positions q, q + 1, ... (across images) as image, row and column: divided once, then
// stepped (per position, the divisions took a tenth of bf16 3x3 64 @56's weight grad packing).
struct OutputPosition {
  OutputPosition(const ConvGeometry& g, int64_t q)
      : OH(g.OH), OW(g.OW), n(q / (g.OH * g.OW)), oh(q / g.OW % g.OH), ow(q % g.OW) {}
  void next() {
    ++i;
    if (++ow < OW) return;
    ow = 0;
    if (++oh < OH) return;
    oh = 0;
    ++n;
  }
  const int64_t OH, OW;
  int64_t n, oh, ow, i = 0;  // i: positions stepped
};
constexpr int64_t kStage = 64;  // values of a position the weight grads stage at once

template <typename T>
void conv_weight_grad_indirect(const ConvGeometry& g, View4<const T> x_any, View4<const T> gy_any,
                               View4<T> gw) {
  using A = typename AccOf<T>::type;  // T itself, or float for bf16 with vdpbf16ps (use_weight_grad_indirect)
  // The sums are GEMMs of MR rows by NR columns a call: row channels come from an operand
  // broadcast a value (float) or a pair of positions (bf16) at a time, column channels from
  // panels of NR. Float: x's channels are the rows, gy's the columns, both packed per position.
  // bf16 (pairs, indirect_microkernel_bf16): the row side is packed as rows of positions
  // ([channel][position]) and the panels hold pairs of positions ([pair][NR][2], two positions'
  // rows interleaved: a quarter of a transpose's cost). x's values change with the tap and gy's
  // do not: x goes in panels where that packs less (x_panels; see below).
  constexpr bool pairs = !std::is_same_v<T, A>;
  constexpr int NR = kNR<A>;
  const int64_t Cg = g.C_in_g(), Mg = g.C_out_g();
  const bool row_taps = Cg % kMR != 0;
  // A tap reads `run` consecutive values of x per position, summed as Cr channels.
  const int64_t taps = row_taps ? g.KH : g.KH * g.KW, run = row_taps ? g.KW * Cg : Cg;
  const int64_t Cr = round_up(run, kMR);
  const int64_t M = g.N * g.OH * g.OW, Mp = round_up(M, 2);
  // Chunks of at least 1024 positions, at most 16 (an even share for 2, 4, 8 or 16 threads; the
  // chunks' sums are added at the end: bf16 3x3 64 @56 in 25 chunks spent 0.4 ms there), and
  // fewer where the partial sums would pass 16 MB; with pairs, of an even number of positions.
  const int64_t max_chunks = max64(1, (16 << 20) / (g.groups * taps * Cr * Mg * static_cast<int64_t>(sizeof(A))));
  const int64_t chunks = min64(min64(ceil_div(M, 1024), 16), max_chunks);
  const int64_t len = round_up(ceil_div(M, chunks), pairs ? 2 : 1);
  // The sums' rows (x's channels, or with x_panels gy's) are split into parts only where chunks
  // and groups give threads too few items (3x3 512 @7: one chunk); an item's sums do not depend
  // on the split. It splits until the items share evenly among the threads (or are 4 a
  // thread): each part packs gy again (or with x_panels all of x), and more parts than threads
  // cost more packing than they balanced (float 3x3 512 @7 in 8 parts 3.85 ms, in 2 parts 3.43;
  // DCGAN 4.9 -> 4.5 ms; bf16 DCGAN 4.3-4.5 -> 4.0 ms, 3x3 256 @14 NCHW 2.8-3.0 -> 2.7-2.8).
  const int64_t threads = at::get_num_threads();
  const auto parts_of = [&](int64_t rows) {
    int64_t parts = 1;
    for (; parts * 2 <= rows / kMR; parts *= 2) {
      const int64_t items = chunks * g.groups * parts;
      if (items >= 4 * threads || (items >= threads && items % threads == 0)) break;
    }
    return parts;
  };
  // Packing work a position for an item, in interleaved values (a transposed one: 4). x_panels:
  // all of x at each tap, and a share of gy's one transpose; else the item's part of x transposed
  // at each tap, and all of gy interleaved. 3x3 64 @56 (one part): 9 x 64 + 4 x 64 against
  // 4 x 9 x 64 + 64, and its weight grad 6.5-7.4 -> 5.3-5.8 ms; ASPP (8 parts): x_panels 72 ->
  // 84-101 ms; 3x3 512 @7 (8 parts) 6.7-7.1 -> 7.2-7.4 ms.
  const int64_t x_parts = parts_of(Mg), gy_parts = parts_of(Cr);
  // Float sums go straight into gw where there is one chunk of positions (few: x is small, and
  // each item packs all of it) and gw's input channels are contiguous (channels_last): with gy's
  // channels as the rows (x_panels, gy packed as the broadcast side, whole blocks of MR), a
  // call's columns are a run of gw. No partial sums, no pass to gather them (3x3 512 @7 channels_last,
  // 8 parts: 4.8-4.9 -> 3.85 ms; its 9.4 MB of sums had been read back and scattered into gw
  // value by value).
  const bool direct = !pairs && !row_taps && run % NR == 0 && Mg % kMR == 0 && M <= 1024 && gw.sC == 1;
  const bool x_panels = direct || (pairs && run % NR == 0 && taps * Cr + 4 * Mg / x_parts < 4 * taps * Cr / gy_parts + Mg);
  const bool gy_by_positions = pairs && x_panels;  // gy_t below
  Scratch<T> x_copy(channels_last_copy_size<T>(x_any, g.N, g.C_in, g.H, g.W));
  const View4<const T> x = channels_last_view(x_any, g.N, g.C_in, g.H, g.W, x_copy);
  const int64_t x_extent = (g.N - 1) * x.sN + (g.C_in - 1) * x.sC + (g.H - 1) * x.sH + (g.W - 1) * x.sW + 1;
  // gy as channels_last rows, or with x_panels as rows of positions, once for all items (packed
  // per item, 3x3 512 @7's 8 items each transposed all of gy): gy_t[oc][q] over all images'
  // positions, an even number of them (a zero after an odd last); from NCHW gy, plain copies.
  Scratch<T> gy_copy(gy_by_positions ? 0 : channels_last_copy_size<T>(gy_any, g.N, g.C_out, g.OH, g.OW));
  const View4<const T> gy = gy_by_positions ? gy_any : channels_last_view(gy_any, g.N, g.C_out, g.OH, g.OW, gy_copy);
  Scratch<T> gy_t(gy_by_positions ? g.C_out * Mp : 0);
  if (gy_by_positions) {
    constexpr int64_t kChannels = 64;
    const int64_t blocks = ceil_div(g.C_out, kChannels), P = g.OH * g.OW;
    at::parallel_for(0, g.N * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, c0 = item % blocks * kChannels;
        gather_planes(gy, n, c0, min64(kChannels, g.C_out - c0), g.OH, g.OW, gy_t.get() + c0 * Mp + n * P, Mp, g.OW);
      }
    });
    if (Mp > M) {
      for (int64_t c = 0; c < g.C_out; ++c) gy_t.get()[c * Mp + M] = T(0);
    }
  }
  // x's channels packed at once: float fetches a position's values once per stage of kStage, not
  // once per block of MR (the stem's 24 values a tap: float weight grad 7.3-7.6 -> 6.5-6.6 ms;
  // 3x3 s2 128 @56, where each block's 128 positions missed L1 again: 5.4 -> 4.7 ms, channels_last,
  // 2 threads).
  const int64_t strip = x_panels ? 256 : kStage / kMR * kMR;  // whole blocks of MR (AVX2's 6)
  // The sums: rows x's channels and columns gy's, or with x_panels rows gy's and columns x's; in
  // parts of pw rows. An item's partial sums are together, a tap's [row][column] after another:
  // [chunk][group][part][tap][row][column] (with a tap's whole rows, 3x3 512 @7's items had 256
  // bytes of each 2 KB row).
  const int64_t rows = x_panels ? Mg : Cr, cols = x_panels ? Cr : Mg, parts = x_panels ? x_parts : gy_parts;
  const int64_t pw = ceil_div(rows / kMR, parts) * kMR;
  const int64_t item_sums = taps * pw * cols;
  const int64_t per_chunk = g.groups * parts * item_sums;
  Scratch<A> partial(direct ? 0 : chunks * per_chunk);
  const bool fetch_sums = item_sums * static_cast<int64_t>(sizeof(A)) > (1 << 20);
  at::parallel_for(0, chunks * g.groups * parts, 1, [&](int64_t begin, int64_t end) {
    const T* gy_rows[kWeightGradBlock];
    // A position's values for the tap: x.data[first + v] for v in [lo, hi), zeros elsewhere.
    int64_t first[kWeightGradBlock], lo[kWeightGradBlock], hi[kWeightGradBlock];
    // Per block: a position's window origin (its offset in x, row, column), and the values
    // [lo, hi0) its taps read where their rows (and columns) are inside x.
    int64_t origin[kWeightGradBlock], ih0[kWeightGradBlock], iw0[kWeightGradBlock], hi0[kWeightGradBlock];
    Scratch<T> gy_packed(kWeightGradBlock * Mg);  // gy, once per block for all taps
    Scratch<T> reading_packed(kWeightGradBlock * Mg);  // gy of one tap's reading positions
    int64_t reading_at[kWeightGradBlock], run_at[kWeightGradBlock + 1];
    Scratch<T> x_packed_buffer(kWeightGradBlock * strip);
    T* const x_packed = x_packed_buffer.get();
    alignas(64) T staged[8][kStage];  // positions' values where they read padding
    alignas(64) T zero_values[kStage];
    fill_zero(zero_values, kStage);
    // Operands packed from rows of values, one a position: value(j, from, count, stage) gives
    // position j's values [from, from + count), count <= kStage, in place or staged.
    // As panels: dst[(c / width) * kWeightGradBlock * width + j * width + c % width], pairs of
    // positions interleaved with pairs (width NR). A position's values are fetched once where they
    // fit a stage; longer ones, bf16 pairs a stage at a time and float a panel at a time.
    const auto pack_panels = [&](const auto& value, int64_t k_len, int64_t from, int64_t count, int64_t width, T* dst) {
      const int64_t step = count <= kStage ? count : pairs ? kStage / width * width : width;
      for (int64_t c0 = 0; c0 < count; c0 += step) {
        for (int64_t j = 0; j < k_len; j += pairs ? 2 : 1) {
          if constexpr (pairs) {
            // A stage of the two positions' values at once, then its panels: per panel, the
            // checks of where the values are took longer than the interleaving (bf16 3x3 64
            // @56's weight grad: a quarter of its time packing x).
            const int64_t n = min64(step, count - c0);
            const T* a = value(j, from + c0, n, staged[0]);
            const T* b = j + 1 < k_len ? value(j + 1, from + c0, n, staged[1]) : nullptr;
            for (int64_t c = 0; c < n; c += width) {
              interleave_pairs(a + c, b ? b + c : nullptr, dst + (c0 + c) * kWeightGradBlock + j * width);
            }
          } else {
            const T* values = value(j, from + c0, step, staged[0]);
            for (int64_t c = c0; c < c0 + step; c += width) {
              // Fixed sizes, inlined (a copy of `width` bytes went through rep movs: the stem's
              // weight grad 7 -> 12 ms).
              T* to = dst + c * kWeightGradBlock + j * width;
              if (width == kMR) {
                __builtin_memcpy(to, values + c - c0, kMR * sizeof(T));
              } else {
                __builtin_memcpy(to, values + c - c0, NR * sizeof(T));
              }
            }
          }
        }
      }
    };
    // As rows of positions (pairs): dst[c * kWeightGradBlock + j], zeros past k_len up to a
    // multiple of 8. count a multiple of 8.
    const auto pack_rows = [&](const auto& value, int64_t k_len, int64_t from, int64_t count, T* dst) {
      if constexpr (!pairs) return;
      using V = typename Vec8<uint16_t>::type;
      for (int64_t s0 = 0; s0 < count; s0 += kStage) {
        const int64_t s = min64(kStage, count - s0);
        for (int64_t j0 = 0; j0 < k_len; j0 += 8) {
          const T* src[8];
          for (int l = 0; l < 8; ++l) src[l] = j0 + l < k_len ? value(j0 + l, from + s0, s, staged[l]) : zero_values;
          for (int64_t c8 = 0; c8 < s; c8 += 8) {
            V r[8];
            for (int l = 0; l < 8; ++l) r[l] = loadu<V>(reinterpret_cast<const uint16_t*>(src[l] + c8));
            transpose8(r);
            for (int m = 0; m < 8; ++m) __builtin_memcpy(dst + (s0 + c8 + m) * kWeightGradBlock + j0, &r[m], sizeof(V));
          }
        }
      }
    };
    const auto prefetch_l2 = [](const T* from, int64_t values) {
      const char* p = reinterpret_cast<const char*>(from);
      for (int64_t at = 0; at < values * static_cast<int64_t>(sizeof(T)); at += 64) __builtin_prefetch(p + at, 0, 2);
    };
    for (int64_t item = begin; item < end; ++item) {
      const int64_t part = item % parts, grp = item / parts % g.groups, chunk = item / parts / g.groups;
      // The part's rows, and x's channels it packs: those rows, or with x_panels all.
      const int64_t r_begin = part * pw, r_end = min64(rows, r_begin + pw);
      const int64_t x_begin = x_panels ? 0 : r_begin, x_end = x_panels ? Cr : r_end;
      const int64_t q0 = chunk * len, count = min64(len, M - q0);
      A* out = partial.get() + item * item_sums;
      // gy's channels as panels of NR columns, or with direct the part's as the rows.
      const auto pack_gy = [&](const auto& value, int64_t k_len, T* dst) {
        if (direct) {
          pack_panels(value, k_len, r_begin, r_end - r_begin, kMR, dst + r_begin * kWeightGradBlock);
        } else {
          pack_panels(value, k_len, 0, Mg, NR, dst);
        }
      };
      const T* group_gy_t = gy_t.get() + grp * Mg * Mp;
      // Blocks of positions, both operands copied out contiguous (in place, their rows are far
      // apart: at 256 channels a block's lines share a few cache sets and every load missed L1):
      // gy once per block for all taps, x once per (block, tap, strip of channels).
      for (int64_t b0 = 0; b0 < count; b0 += kWeightGradBlock) {
        const int64_t b = min64(kWeightGradBlock, count - b0);
        for (OutputPosition at(g, q0 + b0); at.i < b; at.next()) {
          if (!gy_by_positions) gy_rows[at.i] = gy.data + at.n * gy.sN + at.oh * gy.sH + at.ow * gy.sW + grp * Mg;
          ih0[at.i] = at.oh * g.sH - g.pH;
          iw0[at.i] = at.ow * g.sW - g.pW;
          origin[at.i] = at.n * x.sN + grp * Cg + ih0[at.i] * x.sH + iw0[at.i] * x.sW;
          // Row taps: the kernel row's columns from iw0 on, clipped to the row (x.sW == Cg).
          lo[at.i] = row_taps ? max64(0, -iw0[at.i]) * Cg : 0;
          hi0[at.i] = row_taps ? min64(run, (g.W - iw0[at.i]) * Cg) : Cg;
        }
        if (gy_by_positions) {
          // The part's rows of gy_t for the block, together: read in place, Mp apart, each call's
          // broadcasts came from 8 far rows (bf16 3x3 64 @56: 5.6 -> 6.4 ms).
          for (int64_t oc = r_begin; oc < r_end; ++oc) {
            copy_run(gy_packed.get() + oc * kWeightGradBlock, group_gy_t + oc * Mp + q0 + b0, round_up(b, 2));
          }
        } else {
          pack_gy([&](int64_t j, int64_t from, int64_t, T*) { return gy_rows[j] + from; }, b, gy_packed.get());
        }
        // The next block's gy comes into L2 behind this block's taps, a share per tap: read when
        // its panels are copied, it came from memory a line at a time (the ResNet stem's 26 MB of
        // gy, 10% of its weight grad). So do its positions' values of x at the last kernel row,
        // at stride 1 the lines of x that block reads first (bf16 3x3 64 @56: its packing waited
        // on those loads).
        const int64_t next_b = min64(kWeightGradBlock, count - b0 - b);
        for (int64_t tap = 0; tap < taps; ++tap) {
          for (int64_t oc = r_begin + (r_end - r_begin) * tap / taps; gy_by_positions && oc < r_begin + (r_end - r_begin) * (tap + 1) / taps; ++oc) {
            prefetch_l2(group_gy_t + oc * Mp + q0 + b0 + b, next_b);
          }
          const int64_t share = next_b * (tap + 1) / taps - next_b * tap / taps;
          for (OutputPosition at(g, q0 + b0 + b + next_b * tap / taps); at.i < share; at.next()) {
            if (!gy_by_positions) prefetch_l2(gy.data + at.n * gy.sN + at.oh * gy.sH + at.ow * gy.sW + grp * Mg, Mg);
            const int64_t ih = at.oh * g.sH - g.pH + (g.KH - 1) * g.dH;
            const int64_t iw = row_taps ? max64(0, at.ow * g.sW - g.pW) : at.ow * g.sW - g.pW + (g.KW - 1) * g.dW;
            if (inside(ih, g.H) && inside(iw, g.W)) prefetch_l2(x.data + at.n * x.sN + grp * Cg + ih * x.sH + iw * x.sW, run);
          }
          const int64_t di = (row_taps ? tap : tap / g.KW) * g.dH, dj = row_taps ? 0 : (tap % g.KW) * g.dW;
          // Positions whose tap reads x: counted here, in a loop without multiplies or stores
          // that depend on the count (so that it vectorises), and listed in reading_at only
          // where they are gathered.
          const int64_t delta = di * x.sH + dj * x.sW;
          int64_t reading = 0;
          for (int64_t i = 0; i < b; ++i) {
            first[i] = origin[i] + delta;
            hi[i] = inside(ih0[i] + di, g.H) && (row_taps || inside(iw0[i] + dj, g.W)) ? hi0[i] : 0;
            reading += hi[i] > lo[i];
          }
          // The whole block reads padding at this tap (ASPP's dilation 12: a fifth of the GEMMs):
          // nothing to add, or for the first block, sums of no positions (zeros) to store.
          if (reading == 0 && b0 > 0) continue;
          // The tap's sums (from the item's first row), ld apart.
          const int64_t ld = direct ? gw.sN : cols;
          A* sums = direct ? reinterpret_cast<A*>(gw.data) + (grp * Mg + r_begin) * gw.sN + tap / g.KW * gw.sH + tap % g.KW * gw.sW
                           : out + tap * pw * cols;
          // Where many of the block's positions read padding, the others' gy is packed again by
          // itself, and only they are summed: ASPP's dilation 12 reaches padding from 36% of the
          // positions at each tap off the centre column.
          // With x_panels, gy's rows are gathered a run of consecutive positions at a time, and
          // only where a third of the positions read padding (value by value, from an eighth up,
          // 3x3 256 @14 spent longer gathering than the sums it saved).
          const bool gather = gy_by_positions ? 3 * reading <= 2 * b : 8 * reading <= 7 * b;
          if (gather) {
            for (int64_t i = 0, r = 0; i < b; ++i) {
              if (hi[i] > lo[i]) reading_at[r++] = i;
            }
          }
          T* const gathered = reading_packed.get();
          if (gather && gy_by_positions) {  // rows of the reading positions (and a zero after an odd last)
            int64_t runs = 0;  // runs of reading positions: run_at[r] of them from the reading_at[r]th
            for (int64_t j = 0; j < reading; ++j) {
              if (j == 0 || reading_at[j] != reading_at[j - 1] + 1) run_at[runs++] = j;
            }
            run_at[runs] = reading;
            for (int64_t oc = r_begin; oc < r_end; ++oc) {
              const T* row = group_gy_t + oc * Mp + q0 + b0;
              T* dst = gathered + oc * kWeightGradBlock;
              for (int64_t r = 0; r < runs; ++r) copy_run(dst + run_at[r], row + reading_at[run_at[r]], run_at[r + 1] - run_at[r]);
              if (reading % 2) dst[reading] = T(0);
            }
          } else if (gather) {
            pack_gy([&](int64_t j, int64_t from, int64_t, T*) { return gy_rows[reading_at[j]] + from; }, reading, gathered);
          }
          const T* tap_gy = gather ? gathered : gy_packed.get();
          const int64_t k_len = gather ? reading : b;
          // Position j's `count` values of x from channel `from`, zeros outside [lo, hi). Values
          // from `run` on (Cr's padding) go to sums that are never read: x's next values where
          // its memory has them (the stem's 21 values a tap, staged each time for their 3 zeros,
          // took a fifth of its weight grad's packing).
          const auto x_values = [&](int64_t j, int64_t from, int64_t count, T* stage) -> const T* {
            const int64_t i = gather ? reading_at[j] : j;
            if (lo[i] <= from && hi[i] >= min64(from + count, run) && first[i] + from + count <= x_extent) {
              return x.data + first[i] + from;
            }
            fill_zero(stage, count);
            for (int64_t v = max64(lo[i], from); v < min64(hi[i], from + count); ++v) stage[v - from] = x.data[first[i] + v];
            return stage;
          };
          for (int64_t s0 = x_begin; s0 < x_end; s0 += strip) {
            const int64_t s1 = min64(x_end, s0 + strip);
            if (pairs && !x_panels) {
              pack_rows(x_values, k_len, s0, s1 - s0, x_packed);
            } else {
              pack_panels(x_values, k_len, s0, s1 - s0, x_panels ? NR : kMR, x_packed);
            }
            // The strip's calls, along the rows of sums: MR rows at a time, then the columns. Rows
            // and columns as channels, and from the item's first (in sums).
            const int64_t row0 = x_panels ? r_begin : s0, col0 = x_panels ? s0 : 0;
            const int64_t sum_row0 = row0 - r_begin, sum_col0 = col0;
            const int64_t n_rows = ((x_panels ? r_end : s1) - row0) / kMR, n_cols = ((x_panels ? s1 : Mg) - col0) / NR;
            const auto sums_of = [&](int64_t call) {
              return sums + (sum_row0 + call / n_cols * kMR) * ld + sum_col0 + call % n_cols * NR;
            };
            for (int64_t call = 0; call < n_rows * n_cols; ++call) {
              const int64_t r0 = row0 + call / n_cols * kMR, c0 = col0 + call % n_cols * NR;
              A* c = sums_of(call);
              if (fetch_sums && call + 1 < n_rows * n_cols) {
                // The next call's sums, ahead of its loads: where an item's partial sums leave L2
                // (ASPP: 9 taps x 256 x 256 channels), each call otherwise started with misses to
                // L3 (ASPP weight grad 155-163 -> 146-149 ms; where they fit L2 the prefetches
                // cost a little).
                const A* next = sums_of(call + 1);
                for (int m = 0; m < kMR; ++m) {
                  __builtin_prefetch(next + m * ld);
                  __builtin_prefetch(next + m * ld + NR / 2);
                }
              }
              const T* row_side = x_panels ? tap_gy + r0 * kWeightGradBlock : x_packed + (r0 - s0) * kWeightGradBlock;
              const T* panel = x_panels ? x_packed + (c0 - s0) * kWeightGradBlock : tap_gy + c0 * kWeightGradBlock;
              if constexpr (pairs) {
                const T* row_ptrs[kMR];
                for (int m = 0; m < kMR; ++m) row_ptrs[m] = row_side + m * kWeightGradBlock;
                const bool no_padding = false;
                indirect_microkernel_bf16(1, round_up(k_len, 2), row_ptrs, &no_padding, 0, panel, b0 == 0 ? nullptr : c,
                                          cols, nullptr, c, cols);
              } else if (b0 == 0) {
                microkernel<A>(k_len, row_side, panel, c, ld);
              } else {
                microkernel<A, true>(k_len, row_side, panel, c, ld);
              }
            }
          }
        }
      }
    }
  });
  if (direct) return;
  // The chunks' sums into gw, in tiles of 16 x 16 channels: the partial sums run along one kind
  // of channel, gw along input channels or taps, and either order alone strides through one of
  // them (3x3 512: a quarter of the weight grad's time went there). A tile's taps are
  // consecutive items, so the lines of gw they share (NCHW: taps innermost) are filled while in
  // cache (3x3 512 NCHW: the sum took as long as the GEMMs with taps outermost).
  constexpr int64_t kTile = 16;
  // The rows and columns that hold sums (not Cr's padding).
  const int64_t sum_rows = x_panels ? Mg : run, sum_cols = x_panels ? run : Mg;
  const int64_t row_tiles = ceil_div(sum_rows, kTile), col_tiles = ceil_div(sum_cols, kTile);
  // Where channel ic of a tap goes in a group's gw (row taps: its kernel column and channel).
  const auto gw_at = [&](int64_t tap, int64_t ic) {
    return row_taps ? tap * gw.sH + ic / Cg * gw.sW + ic % Cg * gw.sC
                    : tap / g.KW * gw.sH + tap % g.KW * gw.sW + ic * gw.sC;
  };
  // The first chunk's sums of row r from column c.
  const auto sums_at = [&](int64_t grp, int64_t tap, int64_t r, int64_t c) {
    return partial.get() + (grp * parts + r / pw) * item_sums + (tap * pw + r % pw) * cols + c;
  };
  // An item's tap, group and first row and column.
  const auto tile_of = [&](int64_t item, int64_t& tap, int64_t& grp, int64_t& r0, int64_t& c0) {
    tap = item % taps;
    grp = item / taps / col_tiles / row_tiles;
    c0 = item / taps % col_tiles * kTile;
    r0 = item / taps / col_tiles % row_tiles * kTile;
  };
  at::parallel_for(0, g.groups * taps * row_tiles * col_tiles, 1, [&](int64_t begin, int64_t end) {
    A tile[kTile][kTile];
    const A* first[kTile];
    for (int64_t item = begin; item < end; ++item) {
      int64_t tap, grp, r0, c0;
      tile_of(item, tap, grp, r0, c0);
      const int64_t nr = min64(kTile, sum_rows - r0), nc = min64(kTile, sum_cols - c0);
      for (int64_t r = 0; r < nr; ++r) first[r] = sums_at(grp, tap, r0 + r, c0);
      if (item + 1 < end) {
        // The next item's rows (the next tap's: far apart, so the prefetchers miss them) are
        // fetched while this one sums: DCGAN's 4x4 weight grad, 8 MB of sums read once, spent
        // a seventh of its time waiting for them here.
        int64_t next_tap, next_grp, next_r0, next_c0;
        tile_of(item + 1, next_tap, next_grp, next_r0, next_c0);
        for (int64_t r = 0; r < min64(kTile, sum_rows - next_r0); ++r) {
          const A* next = sums_at(next_grp, next_tap, next_r0 + r, next_c0);
          for (int64_t k = 0; k < chunks; ++k) __builtin_prefetch(next + k * per_chunk);
        }
      }
      // Chunk by chunk, a whole tile at a time: summed one value at a time over the chunks, each
      // add waited on a load from the next chunk (bf16 3x3 64 @56: a seventh of the weight grad).
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t c = 0; c < nc; ++c) tile[r][c] = first[r][c];
      }
      for (int64_t k = 1; k < chunks; ++k) {
        for (int64_t r = 0; r < nr; ++r) {
          for (int64_t c = 0; c < nc; ++c) tile[r][c] += first[r][k * per_chunk + c];
        }
      }
      if (x_panels) {
        for (int64_t r = 0; r < nr; ++r) {
          T* dst = gw.data + (grp * Mg + r0 + r) * gw.sN;
          for (int64_t c = 0; c < nc; ++c) dst[gw_at(tap, c0 + c)] = static_cast<T>(tile[r][c]);
        }
      } else {
        for (int64_t c = 0; c < nc; ++c) {
          T* dst = gw.data + (grp * Mg + c0 + c) * gw.sN;
          for (int64_t r = 0; r < nr; ++r) dst[gw_at(tap, r0 + r)] = static_cast<T>(tile[r][c]);
        }
      }
    }
  });
}

#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
// bf16 1x1 weight grads on dense NCHW planes (stride 1, no padding): per image, gw += gy_n x_n^T,
// a GEMM whose reduction runs along positions, contiguous in both planes. MR rows of gy go to
// indirect_microkernel_bf16 as they are (a pair of positions is one 32-bit broadcast), and x_n is
// packed per image into panels of NR channels, [position pair][NR][2] (a transpose of 32-bit
// words). Through channels_last copies of both (conv_weight_grad_indirect), 1x1 64->256 @56's
// took 5.6 ms, torch 3.4 ms. Each thread owns MR-row blocks of gw and adds the images in order.
bool use_weight_grad_1x1_planes(const ConvGeometry& g, const View4<const c10::BFloat16>& x,
                                const View4<const c10::BFloat16>& gy) {
  return g.KH == 1 && g.KW == 1 && g.sH == 1 && g.sW == 1 && g.pH == 0 && g.pW == 0 && g.groups == 1 &&
         g.OH == g.H && g.OW == g.W && g.H * g.W % 2 == 0 && dense_nchw(x, g.C_in, g.H, g.W) &&
         dense_nchw(gy, g.C_out, g.OH, g.OW);
}

void weight_grad_1x1_planes(const ConvGeometry& g, View4<const c10::BFloat16> x, View4<const c10::BFloat16> gy,
                            View4<c10::BFloat16> gw) {
  using B = c10::BFloat16;
  constexpr int64_t NR = kNR<float>;
  const int64_t P = g.H * g.W, pairs = P / 2, panels = ceil_div(g.C_in, NR), blocks = ceil_div(g.C_out, kMR);
  const int64_t ld = panels * NR;
  Scratch<B> zero_row(P), packed(panels * pairs * NR * 2);
  fill_zero(zero_row.get(), P);
  Scratch<float> acc(blocks * kMR * ld);  // [oc][ic], both rounded up
  const bool no_padding = false;
  for (int64_t n = 0; n < g.N; ++n) {
    at::parallel_for(0, pairs, 256, [&](int64_t j0, int64_t j1) {
      for (int64_t ic = 0; ic < ld; ++ic) {
        B* out = packed.get() + (ic / NR * pairs * NR + ic % NR) * 2;
        const B* row = ic < g.C_in ? x.data + n * x.sN + ic * x.sC : zero_row.get();
        for (int64_t j = j0; j < j1; ++j) __builtin_memcpy(out + j * NR * 2, row + 2 * j, 2 * sizeof(B));
      }
    });
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t mb = b0; mb < b1; ++mb) {
        const B* rows[kMR];
        for (int m = 0; m < kMR; ++m) {
          const int64_t oc = mb * kMR + m;
          rows[m] = oc < g.C_out ? gy.data + n * gy.sN + oc * gy.sC : zero_row.get();
        }
        for (int64_t p = 0; p < panels; ++p) {
          float* c = acc.get() + mb * kMR * ld + p * NR;
          indirect_microkernel_bf16(1, P, rows, &no_padding, 0, packed.get() + p * pairs * NR * 2,
                                    n == 0 ? nullptr : c, ld, nullptr, c, ld);
        }
      }
    });
  }
  for (int64_t oc = 0; oc < g.C_out; ++oc) {
    for (int64_t ic = 0; ic < g.C_in; ++ic) gw.data[oc * gw.sN + ic * gw.sC] = static_cast<B>(acc.get()[oc * ld + ic]);
  }
}
#endif

template <typename T>
void conv_weight_grad(const ConvGeometry& g, View4<const T> x, View4<const T> gy, View4<T> gw) {
  if (use_depthwise(g)) return depthwise_weight_grad(g, x, gy, gw);
  if (use_grouped_pairs<T>(g, x.sC == 1 && gy.sC == 1)) return grouped_weight_grad_pairs(g, x, gy, gw);
  if (use_grouped_direct(g)) {
    if (g.sH == 1 && g.sW == 1) return grouped_weight_grad_flat<T, 8>(g, x, gy, gw);
    return g.C_out_g() == 8 ? grouped_weight_grad_direct<T, 1>(g, x, gy, gw)
                            : grouped_weight_grad_direct<T, 2>(g, x, gy, gw);
  }
  if constexpr (std::is_same_v<T, float>) {
    if (use_weight_grad_winograd(g)) return conv_weight_grad_winograd(g, x, gy, gw);
  }
#if defined(CONVEXT_X86_DISPATCH) && defined(CONVEXT_BF16)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (use_weight_grad_1x1_planes(g, x, gy)) return weight_grad_1x1_planes(g, x, gy, gw);
  }
#endif
  if constexpr (std::is_same_v<T, typename AccOf<T>::type> || (kBf16DotBuilt && std::is_same_v<T, c10::BFloat16>)) {
    if (use_weight_grad_indirect(g, x, gy)) return conv_weight_grad_indirect(g, x, gy, gw);
  }
  if (use_weight_grad_nhwc_order(g, x, gy)) return conv_weight_grad_nhwc_order(g, x, gy, gw);
  conv_weight_grad_nchw_order(g, x, gy, gw);
}

template <typename T>
ConvKernels<T> kernels_for() {
  return {&conv_forward<T>, &conv_input_grad<T>, &conv_weight_grad<T>};
}

}  // namespace

ConvKernelSet conv_kernel_set() {
  return {kernels_for<float>(), kernels_for<double>(), kernels_for<c10::Half>(),
          kernels_for<c10::BFloat16>()};
}

}  // namespace convext::cpu::CONVEXT_ISA_NS
