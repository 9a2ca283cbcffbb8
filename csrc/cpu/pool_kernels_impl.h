// The CPU pooling kernels (forwards, the average's backward and the channels_last max pool's),
// compiled once per SIMD instruction set. Included only by kernels_<isa>.cpp (see there), after
// kernel_support_impl.h.
//
// Two loop orders: one (n, c) plane at a time for NCHW and other strides (vectors of adjacent
// outputs where windows are fixed and rows contiguous), and channels innermost for
// channels_last, where the channel loop is branch-free so that it vectorises.

namespace convext::cpu::CONVEXT_ISA_NS {
namespace {

template <typename A>
constexpr A lowest_value() {
  if constexpr (std::is_floating_point_v<A>) return -std::numeric_limits<A>::infinity();
  return std::numeric_limits<A>::lowest();
}

// torch's rule: a NaN wins (and among NaNs the last), ties keep the first.
template <typename A>
inline bool takes_max(A v, A best) {
  if constexpr (std::is_floating_point_v<A>) return (v > best) | (v != v);
  return v > best;
}

// A window's divisors (see PoolDivisor): `once`, or its height `h` and then its width `w`. A
// window that `once` is zero for (none of its taps in the input, padding not counted) averages
// to zero.
template <typename A>
struct WindowDivisor {
  A once, h, w;
  A mean(A sum, bool twice) const { return once == A(0) ? A(0) : twice ? sum / h / w : sum / once; }
};

template <typename A>
inline WindowDivisor<A> window_divisor(const PoolWindows& win, int64_t oh, int64_t ow, const PoolDivisor& d) {
  const int64_t h = win.h.count[oh], w = win.w.count[ow];
  return {static_cast<A>(d.divisor ? d.divisor : h * w), static_cast<A>(h), static_cast<A>(w)};
}

// The means of a vector of channels c, c + 1, ... of one window (lanes of channels from
// twice_from on divide twice).
template <typename V, typename A>
inline V channel_means(const V& sum, const WindowDivisor<A>& div, int64_t c, int64_t twice_from) {
  if (div.once == A(0)) return V{};
  if (c + kVL<A> <= twice_from) return sum / div.once;
  const V twice = sum / div.h / div.w;
  if (c >= twice_from) return twice;
  LaneIndex<V> lane;
  for (int j = 0; j < kVL<A>; ++j) lane[j] = j;
  return lane < static_cast<typename std::remove_reference_t<decltype(lane[0])>>(twice_from - c) ? sum / div.once : twice;
}

// --- Fixed windows on planes with contiguous rows, column stride 1 or 2 ----------------------
// avg_pool2d and max_pool2d on NCHW-style planes: an output row goes a vector of adjacent outputs
// at a time, summed (or compared) in registers across the window. The window's input rows are
// first copied into rows padded with `fill` (zero for sums, the lowest value for maxima) out to
// where the last vector's taps reach, so lane l of tap kj reads padded[(ow0 + l) * S + kj * dW]
// with no bounds checks. Each output still meets its taps in torch's order (rows outer; a padded
// tap adds zero or never wins), so results are the scalar loops' bit for bit. A scalar loop per
// output left these passes at a sixth of the copy bandwidth. bf16 planes are copied as float
// rows, summed or compared in float, and stored as bf16 (maxima exact, means rounded).

template <typename A> struct Index64 {  // int64 lanes, as many as a vector of A has
  typedef int64_t type __attribute__((vector_size(kVL<A> * sizeof(int64_t))));
};

// p[l * S] += v[l] for each lane l (at S = 2, the odd elements between get zeros added).
template <typename V, int S, typename A>
inline void add_every(A* p, const V& v) {
  constexpr int VL = kVL<A>;
  if constexpr (S == 1) {
    const V sum = loadu<V>(p) + v;
    __builtin_memcpy(p, &sum, sizeof(V));
  } else {
    LaneIndex<V> low, high;  // lane j takes v[j / 2] (of the low or high half) when j is even, else 0
    for (int j = 0; j < VL; ++j) low[j] = j % 2 ? VL : j / 2, high[j] = j % 2 ? VL : VL / 2 + j / 2;
    const V lo = loadu<V>(p) + __builtin_shuffle(v, V{}, low);
    const V hi = loadu<V>(p + VL) + __builtin_shuffle(v, V{}, high);
    __builtin_memcpy(p, &lo, sizeof(V));
    __builtin_memcpy(p + VL, &hi, sizeof(V));
    // The next call reads back half of what this one wrote, one element further on: GCC 12 at
    // -O2 and above, with 2-lane vectors (the generic build's double), lost some of these
    // stores to those loads (reproduced alone: grads of stride-2 3x3 average pooling missing
    // a window's share in every fourth column). The barrier keeps each call's stores first.
    // Wider vectors were not seen to lose any (bit-for-bit tests per ISA), and there the barrier
    // cost (2x2 256 @56 NCHW with backward, float: 4.1-4.6 -> 4.8-5.4 ms).
    if constexpr (VL == 2) asm("" ::: "memory");
  }
}

template <typename A>
bool fixed_window_rows(const PoolGeometry& g, const View4<const A>& x) {
  return g.kW > 0 && (g.sW == 1 || g.sW == 2) && x.sW == 1;
}

// Calls f(S, KW) with the column stride S (1 or 2) and the kernel width KW as compile-time
// constants (std::integral_constant): KW 2 or 3, the common widths, or 0 for any (g.kW). With a
// known width, a row's taps unroll across a vector group's accumulators; with a run-time loop
// around them, bf16 2x2 s2 256 @56 NCHW average pooling took 1.16 ms, 0.93 unrolled.
template <typename F>
void with_row_shape(const PoolGeometry& g, const F& f) {
  const auto with_stride = [&](auto kw) {
    if (g.sW == 1) return f(std::integral_constant<int, 1>{}, kw);
    return f(std::integral_constant<int, 2>{}, kw);
  };
  if (g.kW == 2) return with_stride(std::integral_constant<int, 2>{});
  if (g.kW == 3) return with_stride(std::integral_constant<int, 3>{});
  return with_stride(std::integral_constant<int, 0>{});
}

// Calls out_row(n, c, oh, rows, ihs, count) for each output row of plane (n, c), with rows[r] the
// padded copy of the window's input row ihs[r], r < count, in window order; each padded row starts
// at input column -pW and is `len` long. A copy is kept while later output rows' windows still
// read it. (Divisions per row, for slots and planes, and the padding filled at each copy took
// a fifth of 3x3 s2 max pooling's time.)
template <typename A, typename T, typename OutRow>
void for_each_window_rows(const PoolGeometry& g, const PoolAxis& wh, const View4<const T>& x,
                          int64_t len, A fill, const OutRow& out_row) {
  const int64_t slots = g.kH * g.dH;  // the rows of a window are distinct modulo this
  std::vector<int64_t> slot_of(g.H);
  for (int64_t ih = 0; ih < g.H; ++ih) slot_of[ih] = ih % slots;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> copies(slots * len);
    std::fill(copies.get(), copies.get() + slots * len, fill);  // the padding, once: copies fill the rest
    std::vector<int64_t> held(slots);
    std::vector<const A*> rows(g.kH);
    std::vector<int64_t> ihs(g.kH);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      const T* in = x.data + n * x.sN + c * x.sC;
      std::fill(held.begin(), held.end(), -1);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        int64_t count = 0;
        for (int64_t ih = wh.lo[oh]; ih < wh.hi[oh]; ih += wh.step, ++count) {
          const int64_t slot = slot_of[ih];
          A* copy = copies.get() + slot * len;
          if (held[slot] != ih) {
            held[slot] = ih;
            copy_run(copy + g.pW, in + ih * x.sH, g.W);
          }
          rows[count] = copy, ihs[count] = ih;
        }
        out_row(n, c, oh, rows.data(), ihs.data(), count);
      }
    }
  });
}

// Padded row length for S-strided vectors of outputs covering OW.
template <typename A>
int64_t padded_row_length(const PoolGeometry& g) {
  const int64_t reach = round_up(g.OW, kVL<A>) * g.sW + (g.kW - 1) * g.dW;
  return max64(reach, g.pW + g.W);
}

// takes_max's choice between v and best, lane by lane, for values alone: a max instruction (ties
// and a NaN best keep best), then a NaN check, one mask in all. Merged into one select, they made
// three (two compares and an or): 3x3 s2 64 @112 NCHW 0.87 -> 0.83 ms apart.
template <typename V>
inline V larger_or_nan(const V& v, const V& best) {
  V larger = v > best ? v : best;
  keep_in_register(larger);
  return v != v ? v : larger;
}

// Calls group(NV, ow0) for an output row's vectors of outputs, NV (a std::integral_constant, at
// most kRowVectors) of them at a time starting at ow0[0..NV), so that each tap updates NV
// independent accumulators. A vector at a time, every tap waited on the one before (max pooling's
// compare and blend: 3x3 s2 64 @112 NCHW float ran at 15 GB/s a core, in cache as from memory;
// 1.13 -> 0.87 ms in groups).
constexpr int kRowVectors = 4;

template <typename A, typename Group>
void for_each_vector_group(int64_t OW, const Group& group) {
  constexpr int64_t VL = kVL<A>;
  const int64_t vectors = ceil_div(OW, VL);
  for (int64_t v0 = 0; v0 < vectors; v0 += kRowVectors) {
    int64_t ow0[kRowVectors];
    for (int v = 0; v < kRowVectors; ++v) ow0[v] = whole_vector_start<A>(min64(v0 + v, vectors - 1) * VL, OW);
    switch (min64(kRowVectors, vectors - v0)) {
      case 1: group(std::integral_constant<int, 1>{}, ow0); break;
      case 2: group(std::integral_constant<int, 2>{}, ow0); break;
      case 3: group(std::integral_constant<int, 3>{}, ow0); break;
      default: group(std::integral_constant<int, kRowVectors>{}, ow0); break;
    }
  }
}

// Indices: whether to find and store each maximum's index (inference needs none).
template <typename T, int S, int KW, bool Indices>
void max_pool_fixed_rows(const PoolGeometry& g, const PoolWindows& win, View4<const T> x,
                         View4<T> y, View4<int64_t> ind) {
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  using I = LaneIndex<V>;
  using IE = std::conditional_t<sizeof(A) == 4, int32_t, int64_t>;
  using I64 = typename Index64<A>::type;
  constexpr int VL = kVL<A>;
  const int64_t OWv = round_up(g.OW, VL);
  std::vector<int64_t> first_w(OWv, 0);  // each window's first column, torch's initial index
  for (int64_t ow = 0; ow < g.OW; ++ow) first_w[ow] = win.w.lo[ow];
  I lane{};
  for (int l = 0; l < VL; ++l) lane[l] = l * S;
  for_each_window_rows(g, win.h, x, padded_row_length<A>(g), lowest_value<A>(),
                       [&](int64_t n, int64_t c, int64_t oh, const A* const* rows, const int64_t* ihs,
                           int64_t count) {
    T* out = y.data + n * y.sN + c * y.sC + oh * y.sH;
    for_each_vector_group<A>(g.OW, [&](auto nv, const int64_t* ow0) {
      constexpr int NV = decltype(nv)::value;
      V best[NV];
      I index[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        best[v] = splat<V>(lowest_value<A>());
        if constexpr (Indices) {
          for (int l = 0; l < VL; ++l) index[v][l] = win.h.lo[oh] * g.W + first_w[ow0[v] + l];
        }
      }
      for (int64_t r = 0; r < count; ++r) {
#pragma GCC unroll 3
        for (int64_t kj = 0; kj < (KW > 0 ? KW : g.kW); ++kj) {
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) {
            const V x_v = load_every<V, S>(rows[r] + ow0[v] * S + kj * g.dW);
            if constexpr (Indices) {
              const I take = (x_v > best[v]) | (x_v != x_v);
              best[v] = take ? x_v : best[v];
              index[v] = take ? lane + static_cast<IE>(ihs[r] * g.W + ow0[v] * S - g.pW + kj * g.dW) : index[v];
            } else {
              best[v] = larger_or_nan(x_v, best[v]);
            }
          }
        }
      }
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        store_exact_lanes(out + ow0[v], best[v], g.OW - ow0[v]);
        if constexpr (Indices) {
          int64_t* out_index = ind.data + n * ind.sN + c * ind.sC + oh * ind.sH;
          store_lanes(out_index + ow0[v], __builtin_convertvector(index[v], I64), g.OW - ow0[v]);
        }
      }
    });
  });
}

// Each output's divisor, as the scalar loops convert it, in rows of `OWv` (ones past OW). Fixed
// windows are avg_pool2d's, which divides each sum once (adaptive bins have no kernel size).
template <typename A>
std::vector<A> window_divisors(const PoolGeometry& g, const PoolWindows& win, const PoolDivisor& divisor,
                               int64_t OWv) {
  std::vector<A> divisors(g.OH * OWv, A(1));
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    for (int64_t ow = 0; ow < g.OW; ++ow) divisors[oh * OWv + ow] = window_divisor<A>(win, oh, ow, divisor).once;
  }
  return divisors;
}

template <typename T, int S, int KW>
void avg_pool_fixed_rows(const PoolGeometry& g, const PoolWindows& win, View4<const T> x,
                         View4<T> y, const PoolDivisor& divisor) {
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  const int64_t OWv = round_up(g.OW, VL);
  const std::vector<A> divisors = window_divisors<A>(g, win, divisor, OWv);
  for_each_window_rows(g, win.h, x, padded_row_length<A>(g), A(0),
                       [&](int64_t n, int64_t c, int64_t oh, const A* const* rows, const int64_t*,
                           int64_t count) {
    T* out = y.data + n * y.sN + c * y.sC + oh * y.sH;
    for_each_vector_group<A>(g.OW, [&](auto nv, const int64_t* ow0) {
      constexpr int NV = decltype(nv)::value;
      V sum[NV] = {};
      for (int64_t r = 0; r < count; ++r) {
#pragma GCC unroll 3
        for (int64_t kj = 0; kj < (KW > 0 ? KW : g.kW); ++kj) {
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) sum[v] += load_every<V, S>(rows[r] + ow0[v] * S + kj);
        }
      }
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const V div = loadu<V>(divisors.data() + oh * OWv + ow0[v]);
        const V mean = sum[v] / div;
        store_lanes(out + ow0[v], div != V{} ? mean : V{}, g.OW - ow0[v]);
      }
    });
  });
}

// Max pooling (fixed windows, kernel kW along W) of planes with contiguous rows: a whole
// output row at a time, window column by window column, so the inner loop runs along the row and
// vectorises. Each output still visits its window in row-major order, as torch does.
template <typename T>
void max_pool_rows(const PoolGeometry& g, const PoolWindows& win, View4<const T> x, View4<T> y,
                   View4<int64_t> ind) {
  using A = at::opmath_type<T>;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> best_mem(g.OW);
    Scratch<int64_t> index_mem(g.OW);
    A* __restrict best = best_mem.get();
    int64_t* __restrict best_index = index_mem.get();
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      const T* in = x.data + n * x.sN + c * x.sC;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          best[ow] = lowest_value<A>(), best_index[ow] = win.h.lo[oh] * g.W + win.w.lo[ow];
        }
        for (int64_t ih = win.h.lo[oh]; ih < win.h.hi[oh]; ih += win.h.step) {
          const T* __restrict row = in + ih * x.sH;
          for (int64_t kj = 0; kj < g.kW; ++kj) {
            // Outputs whose column iw = ow*sW - pW + kj*dW lies inside the row.
            const int64_t shift = kj * g.dW - g.pW;
            const int64_t ow_lo = shift >= 0 ? 0 : (-shift + g.sW - 1) / g.sW;
            const int64_t ow_hi = min64(g.OW, g.W - shift > 0 ? (g.W - shift - 1) / g.sW + 1 : 0);
            for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
              const int64_t iw = ow * g.sW + shift;
              const A v = static_cast<A>(row[iw]);
              const bool take = takes_max(v, best[ow]);
              best[ow] = take ? v : best[ow];
              best_index[ow] = take ? ih * g.W + iw : best_index[ow];
            }
          }
        }
        T* out = y.data + n * y.sN + c * y.sC + oh * y.sH;
        int64_t* out_index = ind.data + n * ind.sN + c * ind.sC + oh * ind.sH;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          out[ow * y.sW] = static_cast<T>(best[ow]), out_index[ow * ind.sW] = best_index[ow];
        }
      }
    }
  });
}

// Max pooling on channels_last tensors, channels in the lanes: at each output position a vector
// of channels keeps its maxima and their indices in registers across the window (a tap's index
// is the same for every channel). With them in memory per position, each tap was a round of
// loads and stores: max pool 3x3 s2 64 @112 forward at 1.7 ms, over 40% above the copy time.
template <typename T, bool Indices>
void max_pool_channels_last(const PoolGeometry& g, const PoolWindows& win, View4<const T> x,
                            View4<T> y, View4<int64_t> ind) {
  using A = typename AccOf<T>::type;  // T, or float for bf16 (load_lanes)
  using V = typename Vec<A>::type;
  using I = LaneIndex<V>;
  using IE = std::conditional_t<sizeof(A) == 4, int32_t, int64_t>;
  using I64 = typename Index64<A>::type;
  constexpr int VL = kVL<A>;
  const PoolAxis &wh = win.h, &ww = win.w;
  // Large outputs of whole vectors go around the caches.
  const bool stream = std::is_same_v<T, A> && g.C % VL == 0 && dense_channels_last(y, g.C) && stream_aligned(y.data) &&
                      (!Indices || (dense_channels_last(ind, g.C) && stream_aligned(ind.data))) &&
                      g.N * g.OH * g.OW * g.C * static_cast<int64_t>(sizeof(A) + (Indices ? 8 : 0)) >= kStreamBytes;
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
    NextRowsPrefetch next_rows(x.sH * static_cast<int64_t>(sizeof(T)), g.N * x.sN * static_cast<int64_t>(sizeof(T)));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.OH, oh = row % g.OH;
      next_rows.start();
      if (row + 1 < end) {
        const int64_t next_n = (row + 1) / g.OH, next_oh = (row + 1) % g.OH;
        for (int64_t ih = wh.lo[next_oh]; ih < wh.hi[next_oh]; ih += wh.step) {
          const bool read_now = next_n == n && ih >= wh.lo[oh] && ih < wh.hi[oh] && (ih - wh.lo[oh]) % wh.step == 0;
          if (!read_now) next_rows.add(x.data + next_n * x.sN + ih * x.sH);
        }
      }
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        next_rows.upto(ow + 1, g.OW);
        T* out = y.data + n * y.sN + oh * y.sH + ow * y.sW;
        for (int64_t c = 0; c < g.C; c += VL) {
          const int64_t lanes = min64(VL, g.C - c);
          V best = splat<V>(lowest_value<A>());
          I index = I{} + static_cast<IE>(wh.lo[oh] * g.W + ww.lo[ow]);
          for (int64_t ih = wh.lo[oh]; ih < wh.hi[oh]; ih += wh.step) {
            for (int64_t iw = ww.lo[ow]; iw < ww.hi[ow]; iw += ww.step) {
              const V v = load_lanes<V>(x.data + n * x.sN + ih * x.sH + iw * x.sW + c, lanes);
              if constexpr (Indices) {
                const I take = (v > best) | (v != v);
                best = take ? v : best;
                index = take ? I{} + static_cast<IE>(ih * g.W + iw) : index;
              } else {
                best = larger_or_nan(v, best);
              }
            }
          }
          int64_t* out_index = Indices ? ind.data + n * ind.sN + oh * ind.sH + ow * ind.sW + c : nullptr;
          if (std::is_same_v<T, A> && stream) {
            store_stream(out + c, best);
            if constexpr (Indices) store_stream(out_index, __builtin_convertvector(index, I64));
            continue;
          }
          store_exact_lanes(out + c, best, lanes);
          if constexpr (Indices) store_lanes(out_index, __builtin_convertvector(index, I64), lanes);
        }
      }
    }
    if (stream) stream_fence();
  });
}

// ind.data == nullptr: no indices wanted. The vectorised float paths then skip them; the others
// write them to a scratch buffer laid out as y (which is dense).
template <typename T>
void max_pool(const PoolGeometry& g, const PoolWindows& win, View4<const T> x, View4<T> y,
              View4<int64_t> ind, bool channels_last) {
  using A = at::opmath_type<T>;
  const PoolAxis &wh = win.h, &ww = win.w;
  const bool indices = ind.data != nullptr;
  if constexpr (kWidenedVectors<T>) {
    if (channels_last && g.H * g.W <= INT32_MAX) {
      return indices ? max_pool_channels_last<T, true>(g, win, x, y, ind)
                     : max_pool_channels_last<T, false>(g, win, x, y, ind);
    }
  }
  if constexpr (kWidenedVectors<T>) {
    if (!channels_last && fixed_window_rows(g, x) && y.sW == 1 && (!indices || ind.sW == 1) &&
        g.H * g.W <= INT32_MAX) {
      return with_row_shape(g, [&](auto s, auto kw) {
        return indices ? max_pool_fixed_rows<T, s, kw, true>(g, win, x, y, ind)
                       : max_pool_fixed_rows<T, s, kw, false>(g, win, x, y, ind);
      });
    }
  }
  Scratch<int64_t> scratch(indices ? 0 : g.N * g.C * g.OH * g.OW);
  if (!indices) ind = {scratch.get(), y.sN, y.sC, y.sH, y.sW};
  if (channels_last) {
    at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> best_mem(g.C);
      Scratch<int64_t> index_mem(g.C);
      A* __restrict best = best_mem.get();
      int64_t* __restrict best_index = index_mem.get();
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / g.OH, oh = row % g.OH;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const int64_t first = wh.lo[oh] * g.W + ww.lo[ow];
          for (int64_t c = 0; c < g.C; ++c) best[c] = lowest_value<A>(), best_index[c] = first;
          for (int64_t ih = wh.lo[oh]; ih < wh.hi[oh]; ih += wh.step) {
            for (int64_t iw = ww.lo[ow]; iw < ww.hi[ow]; iw += ww.step) {
              const T* __restrict in = x.data + n * x.sN + ih * x.sH + iw * x.sW;
              const int64_t index = ih * g.W + iw;
              for (int64_t c = 0; c < g.C; ++c) {
                const A v = static_cast<A>(in[c]);
                const bool take = takes_max(v, best[c]);
                best[c] = take ? v : best[c];
                best_index[c] = take ? index : best_index[c];
              }
            }
          }
          T* out = y.data + n * y.sN + oh * y.sH + ow * y.sW;
          int64_t* out_index = ind.data + n * ind.sN + oh * ind.sH + ow * ind.sW;
          for (int64_t c = 0; c < g.C; ++c) out[c] = static_cast<T>(best[c]), out_index[c] = best_index[c];
        }
      }
    });
    return;
  }
  if (g.kW > 0 && x.sW == 1) return max_pool_rows(g, win, x, y, ind);
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      const T* in = x.data + n * x.sN + c * x.sC;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          A best = lowest_value<A>();
          int64_t best_index = wh.lo[oh] * g.W + ww.lo[ow];
          for (int64_t ih = wh.lo[oh]; ih < wh.hi[oh]; ih += wh.step) {
            for (int64_t iw = ww.lo[ow]; iw < ww.hi[ow]; iw += ww.step) {
              const A v = static_cast<A>(in[ih * x.sH + iw * x.sW]);
              if (takes_max(v, best)) best = v, best_index = ih * g.W + iw;
            }
          }
          y.data[n * y.sN + c * y.sC + oh * y.sH + ow * y.sW] = static_cast<T>(best);
          ind.data[n * ind.sN + c * ind.sC + oh * ind.sH + ow * ind.sW] = best_index;
        }
      }
    }
  });
}

// Average pooling on channels_last tensors, channels in the lanes: a vector of channels sums its
// window in a register, from zero in window order as torch does. Sums kept in memory per
// position (a load and a store per tap) reached 60% of torch's rate on 2x2 s2 256 @56.
template <typename A>
void avg_pool_channels_last(const PoolGeometry& g, const PoolWindows& win, View4<const A> x,
                            View4<A> y, const PoolDivisor& divisor) {
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  constexpr int kBlock = 16;
  const PoolAxis &wh = win.h, &ww = win.w;
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.OH, oh = row % g.OH;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const WindowDivisor<A> div = window_divisor<A>(win, oh, ow, divisor);
        A* out = y.data + n * y.sN + oh * y.sH + ow * y.sW;
        int64_t c = 0;
        for (; c + kBlock * VL <= g.C; c += kBlock * VL) {
          V sum[kBlock] = {};
          for (int64_t ih = wh.lo[oh]; ih < wh.hi[oh]; ++ih) {
            for (int64_t iw = ww.lo[ow]; iw < ww.hi[ow]; ++iw) {
              const A* in = x.data + n * x.sN + ih * x.sH + iw * x.sW + c;
              for (int b = 0; b < kBlock; ++b) sum[b] += loadu<V>(in + b * VL);
            }
          }
          for (int b = 0; b < kBlock; ++b) {
            store_lanes(out + c + b * VL, channel_means(sum[b], div, c + b * VL, divisor.twice_from), VL);
          }
        }
        for (; c < g.C; c += VL) {
          const int64_t lanes = min64(VL, g.C - c);
          V sum{};
          for (int64_t ih = wh.lo[oh]; ih < wh.hi[oh]; ++ih) {
            for (int64_t iw = ww.lo[ow]; iw < ww.hi[ow]; ++iw) {
              sum += load_lanes<V>(x.data + n * x.sN + ih * x.sH + iw * x.sW + c, lanes);
            }
          }
          store_lanes(out + c, channel_means(sum, div, c, divisor.twice_from), lanes);
        }
      }
    }
  });
}

template <typename T>
void avg_pool(const PoolGeometry& g, const PoolWindows& win, View4<const T> x, View4<T> y,
              PoolDivisor divisor, bool channels_last) {
  using A = at::opmath_type<T>;
  const PoolAxis &wh = win.h, &ww = win.w;
  if constexpr (std::is_floating_point_v<T>) {
    if (channels_last) return avg_pool_channels_last<T>(g, win, x, y, divisor);
  }
  if (channels_last) {
    at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> sum_mem(g.C);
      A* __restrict sum = sum_mem.get();
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / g.OH, oh = row % g.OH;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          fill_zero(sum, g.C);
          for (int64_t ih = wh.lo[oh]; ih < wh.hi[oh]; ++ih) {
            for (int64_t iw = ww.lo[ow]; iw < ww.hi[ow]; ++iw) {
              const T* __restrict in = x.data + n * x.sN + ih * x.sH + iw * x.sW;
              for (int64_t c = 0; c < g.C; ++c) sum[c] += static_cast<A>(in[c]);
            }
          }
          const WindowDivisor<A> div = window_divisor<A>(win, oh, ow, divisor);
          T* out = y.data + n * y.sN + oh * y.sH + ow * y.sW;
          const int64_t once = min64(g.C, divisor.twice_from);  // two loops, so that each vectorises
          for (int64_t c = 0; c < once; ++c) out[c] = static_cast<T>(div.mean(sum[c], false));
          for (int64_t c = once; c < g.C; ++c) out[c] = static_cast<T>(div.mean(sum[c], true));
        }
      }
    });
    return;
  }
  if constexpr (kWidenedVectors<T>) {
    if (fixed_window_rows(g, x) && y.sW == 1) {
      return with_row_shape(g, [&](auto s, auto kw) { return avg_pool_fixed_rows<T, s, kw>(g, win, x, y, divisor); });
    }
  }
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      const T* in = x.data + n * x.sN + c * x.sC;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          A sum = A(0);
          for (int64_t ih = wh.lo[oh]; ih < wh.hi[oh]; ++ih) {
            for (int64_t iw = ww.lo[ow]; iw < ww.hi[ow]; ++iw) sum += static_cast<A>(in[ih * x.sH + iw * x.sW]);
          }
          y.data[n * y.sN + c * y.sC + oh * y.sH + ow * y.sW] =
              static_cast<T>(window_divisor<A>(win, oh, ow, divisor).mean(sum, c >= divisor.twice_from));
        }
      }
    }
  });
}

// --- Global average pooling, summed in torch's order -------------------------------------------
// torch's adaptive_avg_pool2d to 1 x 1 is x.mean((-1, -2)): a sum in the order of its SumKernel.cpp
// (built for 256-bit vectors, whichever the CPU: its dispatch skips the AVX-512 build there), then
// divided by H * W; bf16 and fp16 sum as a float copy. The order decides the last bit, so these
// sums keep it. Its two shapes, over terms t(0..n):
// - a cascade: a running sum that every 2^k terms (k = max(4, ceil(log2 n) / 4)) is carried into a
//   second, that one every 2^k carries into a third, and so on four levels deep, the levels added
//   together at the end (vectors: each lane its own cascade);
// - an interleaved sum: four cascades side by side, of the terms 4i, 4i + 1, 4i + 2 and 4i + 3, the
//   terms past the last whole four added to the first, then the four added in order.
// (Summed in other orders, 1 x 1 pools differed from torch's in the last bit in a fuzz.)

inline int64_t cascade_power(int64_t n) {
  const int64_t ceil_log2 = n <= 2 ? 1 : 64 - __builtin_clzll(static_cast<uint64_t>(n - 1));
  return max64(4, ceil_log2 / 4);
}

template <typename S, typename F>
[[gnu::always_inline]] inline S cascade_sum(int64_t n, const F& term) {
  if (n < 16) {  // no carries: a sum from zero (the empty levels then add nothing, as +0)
    S sum{};
    for (int64_t i = 0; i < n; ++i) sum += term(i);
    return sum;
  }
  const int64_t power = cascade_power(n), step = int64_t(1) << power, mask = step - 1;
  S level1{}, level2{}, level3{};  // (torch's levels 1 to 3; level 0 is each chunk's own sum)
  int64_t i = 0;
  for (; i + step <= n;) {
    S level0{};
    for (const int64_t end = i + step; i < end; ++i) level0 += term(i);
    level1 += level0;
    if ((i & (mask << power)) != 0) continue;
    level2 += level1;
    level1 = S{};
    if ((i & (mask << (2 * power))) != 0) continue;
    level3 += level2;
    level2 = S{};
  }
  S level0{};
  for (; i < n; ++i) level0 += term(i);
  level0 += level1;
  level0 += level2;
  level0 += level3;
  return level0;
}

// Four sums side by side (members, not an array: GCC kept an array's vectors on the stack).
template <typename S>
struct Four {
  S k0, k1, k2, k3;
  Four& operator+=(const Four& o) {
    k0 += o.k0, k1 += o.k1, k2 += o.k2, k3 += o.k3;
    return *this;
  }
};

template <typename S, typename F>
[[gnu::always_inline]] inline S interleaved_sum(int64_t n, const F& term) {
  const Four<S> four = cascade_sum<Four<S>>(n / 4, [&](int64_t i) {
    return Four<S>{term(4 * i), term(4 * i + 1), term(4 * i + 2), term(4 * i + 3)};
  });
  S first = four.k0;
  for (int64_t i = n / 4 * 4; i < n; ++i) first += term(i);
  return first + four.k1 + four.k2 + four.k3;
}

// count (at most a vector's) values from p as a vector of A, zeros past them: any T.
template <typename V, typename T>
inline V load_converted(const T* p, int64_t count) {
  if constexpr (kWidenedVectors<T>) {
    return load_lanes<V>(p, count);
  } else {
    V v{};
    for (int64_t l = 0; l < min64(count, kLanes<V>); ++l) v[l] = static_cast<std::remove_reference_t<decltype(v[0])>>(p[l]);
    return v;
  }
}

// torch's vector: 8 floats, 4 doubles.
template <typename A> struct TorchVec { typedef A type __attribute__((vector_size(32))); };
template <typename A> constexpr int kTorchLanes = 32 / sizeof(A);

// torch's sum of a run of n >= kTorchLanes<A> contiguous values is, in order, the sum from zero of
// the values past its last whole vector (run_tail) plus each lane of its vectors' interleaved sum
// (run_lanes).
template <typename A, typename T>
[[gnu::always_inline]] inline typename TorchVec<A>::type run_lanes(const T* p, int64_t n) {
  using V32 = typename TorchVec<A>::type;
  return interleaved_sum<V32>(n / kTorchLanes<A>, [&](int64_t i) { return load_converted<V32>(p + i * kTorchLanes<A>, kTorchLanes<A>); });
}

template <typename A, typename T>
inline A run_tail(const T* p, int64_t n) {
  A tail = A(0);
  for (int64_t i = n / kTorchLanes<A> * kTorchLanes<A>; i < n; ++i) tail += static_cast<A>(p[i]);
  return tail;
}

// torch's sum of a run of n contiguous values (under a vector's worth, interleaved).
template <typename A, typename T>
A torch_run_sum(const T* p, int64_t n) {
  if (n < kTorchLanes<A>) return interleaved_sum<A>(n, [&](int64_t i) { return static_cast<A>(p[i]); });
  const auto lanes = run_lanes<A>(p, n);
  A total = run_tail<A>(p, n);
  for (int l = 0; l < kTorchLanes<A>; ++l) total += lanes[l];
  return total;
}

// One mean per plane, summed as torch sums it (above). NCHW: by runs (below). channels_last:
// each channel over the positions, as a cascade for the channels of whole blocks of four of
// torch's vectors (under a vector's worth of channels, of whole fours), interleaved for the others.
template <typename T>
void global_avg_pool(const PoolGeometry& g, View4<const T> x, View4<T> y, bool channels_last) {
  using A = at::opmath_type<T>;
  const int64_t HW = g.H * g.W;
  const auto mean = [&](A sum) { return static_cast<T>((A(0) + sum) / A(HW)); };  // torch adds its sum to 0
  if (channels_last && g.C > 1) {  // (one channel: dense planes, summed as such)
    using V = typename Vec<A>::type;
    constexpr int64_t VL = kVL<A>, L = 32 / sizeof(A);
    // The means of `lanes` channels' sums at out, in vectors (dividing value by value took a
    // third of the float 2048 @7 pass).
    const auto store_means = [&](T* out, const V& sum, int64_t lanes) {
      const V means = (V{} + sum) / A(HW);
      if constexpr (kWidenedVectors<T>) {
        if (y.sC == 1) return store_lanes(out, means, lanes);
      }
      for (int64_t l = 0; l < lanes; ++l) out[l * y.sC] = static_cast<T>(means[l]);
    };
    const int64_t cascaded = g.C >= L ? g.C / (4 * L) * (4 * L) : g.C / 4 * 4;
    // Work items: a run of cascaded channels of an image (all of them, unless the images are
    // fewer than the threads), or a vector of the others. A run's four levels of sums are arrays
    // and x is read position by position, front to back: four vectors of channels at a time
    // through all positions, in registers, read 256 bytes from each position, and runs of 512
    // channels 2 KB, where the prefetchers had to start again at each (float 2048 @7, N = 8, one
    // thread: 0.077 ms in short runs, 0.058 in whole rows).
    const int64_t run_length = round_up(max64(1, ceil_div(cascaded, ceil_div(at::get_num_threads(), g.N))), VL);
    const int64_t runs = ceil_div(cascaded, run_length), blocks = runs + ceil_div(g.C - cascaded, VL);
    const int64_t power = cascade_power(HW), step = int64_t(1) << power, mask = step - 1;
    at::parallel_for(0, g.N * blocks, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> level_mem(4 * run_length);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, b = item % blocks;
        const int64_t c = b < runs ? b * run_length : cascaded + (b - runs) * VL;
        const T* in = x.data + n * x.sN + c;
        T* out = y.data + n * y.sN + c * y.sC;
        if (b >= runs) {
          const int64_t lanes = min64(VL, g.C - c);
          store_means(out, interleaved_sum<V>(HW, [&](int64_t p) { return load_converted<V>(in + p * x.sW, lanes); }), lanes);
          continue;
        }
        // cascade_sum with arrays for levels: level[j] += level[j - 1], level[j - 1] = 0.
        const int64_t len = min64(run_length, cascaded - c), padded = round_up(len, VL);
        A* level[4] = {level_mem.get(), level_mem.get() + padded, level_mem.get() + 2 * padded, level_mem.get() + 3 * padded};
        fill_zero(level_mem.get(), 4 * padded);
        const auto add_position = [&](int64_t p) {
          const T* __restrict row = in + p * x.sW;
          A* __restrict sums = level[0];
          int64_t k = 0;
          for (; k + VL <= len; k += VL) {
            const V sum = loadu<V>(sums + k) + load_converted<V>(row + k, VL);
            __builtin_memcpy(sums + k, &sum, sizeof(V));
          }
          if (k < len) {
            const V sum = loadu<V>(sums + k) + load_converted<V>(row + k, len - k);
            __builtin_memcpy(sums + k, &sum, sizeof(V));
          }
        };
        const auto carry = [&](int j) {
          for (int64_t k = 0; k < padded; k += VL) {
            const V sum = loadu<V>(level[j] + k) + loadu<V>(level[j - 1] + k);
            __builtin_memcpy(level[j] + k, &sum, sizeof(V));
          }
          fill_zero(level[j - 1], padded);
        };
        int64_t p = 0;
        while (p + step <= HW) {
          for (const int64_t chunk_end = p + step; p < chunk_end; ++p) add_position(p);
          carry(1);
          if ((p & (mask << power)) != 0) continue;
          carry(2);
          if ((p & (mask << (2 * power))) != 0) continue;
          carry(3);
        }
        for (; p < HW; ++p) add_position(p);
        for (int64_t k = 0; k < len; k += VL) {
          const V sum = loadu<V>(level[0] + k) + loadu<V>(level[1] + k) + loadu<V>(level[2] + k) + loadu<V>(level[3] + k);
          store_means(out + k * y.sC, sum, len - k);
        }
      }
    });
    return;
  }
  // torch walks a plane's axes by their strides, the smaller inner (one axis where the other is 1
  // long or where they coalesce), summing each inner run (in vectors where its stride is 1) and
  // adding the runs in order from zero. plane_sum: the values [b, e) in that order.
  const bool w_inner = g.H == 1 || (g.W > 1 && x.sW <= x.sH);
  const int64_t s_in = w_inner ? x.sW : x.sH, s_out = w_inner ? x.sH : x.sW;
  const int64_t inner = g.H == 1 || g.W == 1 || s_out == (w_inner ? g.W : g.H) * s_in ? HW : (w_inner ? g.W : g.H);
  const auto run_sum = [&](const T* p, int64_t n) {
    return s_in == 1 ? torch_run_sum<A>(p, n) : interleaved_sum<A>(n, [&](int64_t i) { return static_cast<A>(p[i * s_in]); });
  };
  const auto plane_sum = [&](const T* in, int64_t b, int64_t e) {
    if (inner == HW) return run_sum(in + b * s_in, e - b);
    A sum = A(0);
    for (int64_t i = b; i < e;) {
      const int64_t len = min64(inner - i % inner, e - i);
      sum += run_sum(in + i / inner * s_out + i % inner * s_in, len);
      i += len;
    }
    return sum;
  };
  // A single plane of torch's grain (32768 values) or more on several threads: torch sums a chunk
  // per thread from zero, then the threads' sums (a run, one per thread, zero where it had none).
  const int64_t threads = at::get_num_threads();
  if (g.N * g.C == 1 && HW >= 32768 && threads > 1 && !at::in_parallel_region()) {
    const int64_t chunks = min64(threads, ceil_div(HW, int64_t(32768))), chunk = ceil_div(HW, chunks);
    Scratch<A> parts(threads);
    fill_zero(parts.get(), threads);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) parts.get()[t] = A(0) + plane_sum(x.data, t * chunk, min64(HW, (t + 1) * chunk));
    });
    y.data[0] = mean(torch_run_sum<A>(parts.get(), threads));
    return;
  }
  const auto plane_at = [&](int64_t plane) { return x.data + plane / g.C * x.sN + plane % g.C * x.sC; };
  const auto out_at = [&](int64_t plane) { return y.data + plane / g.C * y.sN + plane % g.C * y.sC; };
  constexpr int L = kTorchLanes<A>;
  // Dense planes of a vector's worth or more go L at a time, so that the sequential adds of each
  // plane's lanes overlap the other planes' and the means divide as a vector. Plane by plane,
  // those adds took 2.5 times as long as reading the planes (float 2048 @7, N = 8); with the
  // planes' lanes transposed to add across planes as vectors, 1.3 times (the shuffles).
  const bool grouped = inner == HW && s_in == 1 && HW >= L;
  const int64_t groups = grouped ? g.N * g.C / L : 0;
  at::parallel_for(0, groups + (g.N * g.C - groups * L), 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      if (item >= groups) {
        const int64_t plane = groups * L + (item - groups);
        *out_at(plane) = mean(plane_sum(plane_at(plane), 0, HW));
        continue;
      }
      using V32 = typename TorchVec<A>::type;
      const T* plane[L];
      int64_t n = item * L / g.C, c = item * L % g.C;
      for (int p = 0; p < L; ++p, c = c + 1 < g.C ? c + 1 : (++n, 0)) plane[p] = x.data + n * x.sN + c * x.sC;
      V32 lanes[L], total;
#pragma GCC unroll 8
      for (int p = 0; p < L; ++p) lanes[p] = run_lanes<A>(plane[p], HW);
      for (int p = 0; p < L; ++p) total[p] = run_tail<A>(plane[p], HW);
#pragma GCC unroll 8
      for (int p = 0; p < L; ++p) {
        for (int l = 0; l < L; ++l) total[p] += lanes[p][l];
      }
      total = (V32{} + total) / A(HW);  // (torch adds its sum to 0)
      n = item * L / g.C, c = item * L % g.C;
      for (int p = 0; p < L; ++p, c = c + 1 < g.C ? c + 1 : (++n, 0)) y.data[n * y.sN + c * y.sC] = static_cast<T>(total[p]);
    }
  });
}

// The windows along an axis of n inputs share no input (stride >= kernel): each input's window,
// or -1 for inputs no window reads.
inline bool disjoint_windows(const PoolAxis& axis, int64_t outputs, int64_t n, std::vector<int64_t>& window_of) {
  window_of.assign(n, -1);
  for (int64_t o = 0; o < outputs; ++o) {
    for (int64_t i = axis.lo[o]; i < axis.hi[o]; i += axis.step) {
      if (window_of[i] >= 0) return false;
      window_of[i] = o;
    }
  }
  return true;
}

// avg_pool_fixed_rows' backward: each output's grad over its divisor added to its window's
// taps in a zero-padded copy of the plane, a vector of adjacent outputs at a time; the plane's
// columns are then copied out. Every tap gets its outputs' grads in the scalar loop's order (by
// output row, then column: taps in descending kj meet a vector's outputs in ascending columns),
// so the sums are the same bit for bit.
// Where no two windows share an input (2x2 s2), each row of gx is written once instead: its
// window row's grads, each twice, in a padded row (or zeros where no window reads it). Through
// the zeroed plane, 2x2 s2 256 @56 took 2.7 ms (float), 2.1 (bf16).
template <typename T, int S>
void avg_pool_backward_fixed_rows(const PoolGeometry& g, const PoolWindows& win,
                                  View4<const T> gy, View4<T> gx, const PoolDivisor& divisor) {
  using A = typename AccOf<T>::type;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  const int64_t OWv = round_up(g.OW, VL), len = padded_row_length<A>(g);
  const std::vector<A> divisors = window_divisors<A>(g, win, divisor, OWv);
  // The grads of a vector of outputs starting at ow0 of row oh over their divisors, zero where
  // the divisor is (lanes past OW too).
  const auto grads = [&](const T* src, int64_t oh, int64_t ow0) {
    const V div = loadu<V>(divisors.data() + oh * OWv + ow0);
    const V grad = load_lanes<V>(src + ow0, g.OW - ow0) / div;
    return div != V{} ? grad : V{};
  };
  std::vector<int64_t> row_window;
  if (S == 2 && g.kW == 2 && disjoint_windows(win.h, g.OH, g.H, row_window)) {
    LaneIndex<V> low, high;  // each lane twice, of the low and the high half
    for (int j = 0; j < VL; ++j) low[j] = j / 2, high[j] = VL / 2 + j / 2;
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> padded(len);
      fill_zero(padded.get(), len);
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t n = plane / g.C, c = plane % g.C;
        int64_t have = -1;  // the window row in `padded`
        for (int64_t ih = 0; ih < g.H; ++ih) {
          T* dst = gx.data + n * gx.sN + c * gx.sC + ih * gx.sH;
          const int64_t oh = row_window[ih];
          if (oh < 0) {
            fill_zero(dst, g.W);
            continue;
          }
          if (oh != have) {
            have = oh;
            const T* src = gy.data + n * gy.sN + c * gy.sC + oh * gy.sH;
            for (int64_t ow0 = 0; ow0 < g.OW; ow0 += VL) {
              const V v = V{} + grads(src, oh, ow0);  // as added to zero: -0 becomes +0
              const V lo = __builtin_shuffle(v, low), hi = __builtin_shuffle(v, high);
              __builtin_memcpy(padded.get() + 2 * ow0, &lo, sizeof(V));
              __builtin_memcpy(padded.get() + 2 * ow0 + VL, &hi, sizeof(V));
            }
          }
          copy_run(dst, padded.get() + g.pW, g.W);
        }
      }
    });
    return;
  }
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> padded(g.H * len);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      fill_zero(padded.get(), g.H * len);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        const T* src = gy.data + n * gy.sN + c * gy.sC + oh * gy.sH;
        for (int64_t ow0 = 0; ow0 < g.OW; ow0 += VL) {
          const V v = grads(src, oh, ow0);
          for (int64_t ih = win.h.lo[oh]; ih < win.h.hi[oh]; ++ih) {
            A* p = padded.get() + ih * len + ow0 * S;
            for (int64_t kj = g.kW - 1; kj >= 0; --kj) add_every<V, S>(p + kj, v);
          }
        }
      }
      for (int64_t h = 0; h < g.H; ++h) {
        copy_run(gx.data + n * gx.sN + c * gx.sC + h * gx.sH, padded.get() + h * len + g.pW, g.W);
      }
    }
  });
}

// Backward of an average on dense channels_last gy and gx, channels innermost. Where no two
// windows share an input (2x2 s2), each row of gx is written once, in memory order: an input
// gets its window's grad (gy over the divisor, computed once per output row, plus a zero as the
// accumulating loop adds it to, which turns -0 into +0), the others zeros. (Zeroing each gx image
// and then adding the windows into it went over images larger than L2 three times: 2x2 s2 256 @56
// took longer than torch.) Overlapping windows add into the zeroed image, in torch's order.
template <typename T>
void avg_pool_backward_channels_last(const PoolGeometry& g, const PoolWindows& win, View4<const T> gy,
                                     View4<T> gx, const PoolDivisor& divisor) {
  using A = at::opmath_type<T>;
  const int64_t once = min64(g.C, divisor.twice_from);  // channels below divide once
  std::vector<int64_t> row_window, col_window;
  if (disjoint_windows(win.h, g.OH, g.H, row_window) && disjoint_windows(win.w, g.OW, g.W, col_window)) {
    // A large gx goes around the caches, a vector at a time.
    using V = typename Vec<A>::type;
    constexpr int VL = kVL<A>;
    const bool stream = std::is_same_v<T, A> && g.C % VL == 0 && dense_channels_last(gx, g.C) &&
                        stream_aligned(gx.data) && g.N * g.H * g.W * g.C * static_cast<int64_t>(sizeof(A)) >= kStreamBytes;
    // A row of gx: its windows' grads (an output row's, or none: zeros), zeros where no window reads.
    const auto write_row = [&](T* __restrict dst, const A* grads) {
      for (int64_t iw = 0; iw < g.W; ++iw, dst += g.C) {
        const A* __restrict v = grads && col_window[iw] >= 0 ? grads + col_window[iw] * g.C : nullptr;
        if (stream) {
          for (int64_t c = 0; c < g.C; c += VL) store_stream(dst + c, v ? loadu<V>(v + c) : V{});
        } else if (!v) {
          fill_zero(dst, g.C);
        } else {
          for (int64_t c = 0; c < g.C; ++c) dst[c] = static_cast<T>(v[c]);
        }
      }
    };
    at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> grads(g.OW * g.C);  // output row `have`'s grads over their divisors
      int64_t have = -1;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / g.H, ih = row % g.H, oh = row_window[ih];
        T* dst = gx.data + n * gx.sN + ih * gx.sH;
        if (oh < 0) {
          write_row(dst, nullptr);
          continue;
        }
        if (have != n * g.OH + oh) {
          have = n * g.OH + oh;
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const T* __restrict src = gy.data + n * gy.sN + oh * gy.sH + ow * gy.sW;
            const WindowDivisor<A> div = window_divisor<A>(win, oh, ow, divisor);
            A* __restrict v = grads.get() + ow * g.C;
            for (int64_t c = 0; c < once; ++c) v[c] = A(0) + div.mean(static_cast<A>(src[c]), false);
            for (int64_t c = once; c < g.C; ++c) v[c] = A(0) + div.mean(static_cast<A>(src[c]), true);
          }
        }
        write_row(dst, grads.get());
      }
      if (stream) stream_fence();
    });
    return;
  }
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    Scratch<A> image(std::is_same_v<T, A> ? 0 : g.H * g.W * g.C);
    Scratch<A> v_mem(g.C);
    A* __restrict v = v_mem.get();
    for (int64_t n = begin; n < end; ++n) {
      A* acc = std::is_same_v<T, A> ? reinterpret_cast<A*>(gx.data + n * gx.sN) : image.get();
      fill_zero(acc, g.H * g.W * g.C);
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const WindowDivisor<A> div = window_divisor<A>(win, oh, ow, divisor);
          if (div.once == A(0)) continue;
          const T* __restrict src = gy.data + n * gy.sN + oh * gy.sH + ow * gy.sW;
          for (int64_t c = 0; c < once; ++c) v[c] = div.mean(static_cast<A>(src[c]), false);
          for (int64_t c = once; c < g.C; ++c) v[c] = div.mean(static_cast<A>(src[c]), true);
          for (int64_t ih = win.h.lo[oh]; ih < win.h.hi[oh]; ++ih) {
            for (int64_t iw = win.w.lo[ow]; iw < win.w.hi[ow]; ++iw) {
              A* __restrict dst = acc + (ih * g.W + iw) * g.C;
              for (int64_t c = 0; c < g.C; ++c) dst[c] += v[c];
            }
          }
        }
      }
      if constexpr (!std::is_same_v<T, A>) {
        T* out = gx.data + n * gx.sN;
        for (int64_t i = 0; i < g.H * g.W * g.C; ++i) out[i] = static_cast<T>(acc[i]);
      }
    }
  });
}

// Backward of an average on planes of any strides: each output's grad, divided as in the
// forward, spread over its window.
template <typename T>
void avg_pool_backward(const PoolGeometry& g, const PoolWindows& win, View4<const T> gy, View4<T> gx,
                       PoolDivisor divisor, bool channels_last) {
  using A = at::opmath_type<T>;
  if (channels_last) return avg_pool_backward_channels_last(g, win, gy, gx, divisor);
  if constexpr (kWidenedVectors<T>) {
    if (g.kW > 0 && (g.sW == 1 || g.sW == 2) && gy.sW == 1 && gx.sW == 1) {
      return g.sW == 1 ? avg_pool_backward_fixed_rows<T, 1>(g, win, gy, gx, divisor)
                       : avg_pool_backward_fixed_rows<T, 2>(g, win, gy, gx, divisor);
    }
  }
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(g.H * g.W);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      std::fill(acc.begin(), acc.end(), A(0));
      const T* src = gy.data + n * gy.sN + c * gy.sC;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const WindowDivisor<A> div = window_divisor<A>(win, oh, ow, divisor);
          if (div.once == A(0)) continue;
          const A v = div.mean(static_cast<A>(src[oh * gy.sH + ow * gy.sW]), c >= divisor.twice_from);
          for (int64_t ih = win.h.lo[oh]; ih < win.h.hi[oh]; ++ih) {
            for (int64_t iw = win.w.lo[ow]; iw < win.w.hi[ow]; ++iw) acc[ih * g.W + iw] += v;
          }
        }
      }
      T* dst = gx.data + n * gx.sN + c * gx.sC;
      for (int64_t h = 0; h < g.H; ++h) {
        for (int64_t w = 0; w < g.W; ++w) dst[h * gx.sH + w * gx.sW] = static_cast<T>(acc[h * g.W + w]);
      }
    }
  });
}

// A vector of int64 indices as a vector of lanes as wide as A: for float, the low halves of two
// registers of them (one permute; the caller keeps indices under 2^31).
template <typename A>
inline LaneIndex<typename Vec<A>::type> load_indices(const int64_t* p) {
  using I = LaneIndex<typename Vec<A>::type>;
  if constexpr (sizeof(A) == sizeof(int64_t)) {
    return loadu<I>(p);
  } else {
    static_assert(sizeof(A) == 4);
    I low_halves;
    for (int l = 0; l < kVL<A>; ++l) low_halves[l] = 2 * l;
    return __builtin_shuffle(loadu<I>(p), loadu<I>(p + kVL<A> / 2), low_halves);
  }
}

// Along an axis of n inputs: the outputs [range[2i], range[2i + 1]) whose windows (before
// clipping, ignoring their dilation gaps) hold input i, a superset of those that can choose it.
inline void covering_outputs(int64_t n, int64_t outputs, int64_t k, int64_t s, int64_t p, int64_t d,
                             int64_t* range) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t reach = i + p - (k - 1) * d;
    range[2 * i] = reach <= 0 ? 0 : ceil_div(reach, s);
    range[2 * i + 1] = min64(outputs, (i + p) / s + 1);
  }
}

// max_pool2d's input grad on dense channels_last gy, indices and gx, gathered: each input sums
// the grads of the windows around it whose index is its own, in window order from zero (the
// scatter's sums, bit for bit), and gx is written once (around the caches when large). The
// scatter zeroed and then added into gx, an element at a time with a branch on each index.
// A row's columns go in phases of the column stride, so that the number of windows around a
// column (1 or 2 at 3x3 s2) stays the same for a whole phase: alternating, the loops' exits were
// mispredicted at every column. Indices are only compared, so an index that is not its
// window's own adds nowhere (as on CUDA).
template <typename T>
void max_pool_backward_channels_last(const PoolGeometry& g, View4<const T> gy, View4<const int64_t> ind,
                                     View4<T> gx) {
  using A = at::opmath_type<T>;
  using V = typename Vec<A>::type;
  constexpr int VL = kVL<A>;
  constexpr bool vectors = kWidenedVectors<T>;
  const int64_t C = g.C, C_vec = vectors ? C / VL * VL : 0;  // channels summed a vector at a time
  const bool stream = std::is_same_v<T, A> && C_vec == C && stream_aligned(gx.data) &&
                      g.N * g.H * g.W * C * static_cast<int64_t>(sizeof(A)) >= kStreamBytes;
  Scratch<int64_t> rows(2 * g.H), cols(2 * g.W);
  covering_outputs(g.H, g.OH, g.kH, g.sH, g.pH, g.dH, rows.get());
  covering_outputs(g.W, g.OW, g.kW, g.sW, g.pW, g.dW, cols.get());
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
    const int64_t W = g.W, row_step = gy.sH;  // gy and the indices share their strides
    const bool streamed = stream;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.H, ih = row % g.H, oh0 = rows.get()[2 * ih], oh1 = rows.get()[2 * ih + 1];
      const T* __restrict gy_n = gy.data + n * gy.sN;
      const int64_t* __restrict ind_n = ind.data + n * ind.sN;
      T* __restrict dst_row = gx.data + n * gx.sN + ih * gx.sH;
      for (int64_t phase = 0; phase < min64(g.sW, W); ++phase) {
        for (int64_t iw = phase; iw < W; iw += g.sW) {
          const int64_t ow0 = cols.get()[2 * iw], ow1 = cols.get()[2 * iw + 1], self = ih * W + iw;
          T* __restrict dst = dst_row + iw * C;
          if constexpr (vectors) {
            using IE = std::conditional_t<sizeof(A) == 4, int32_t, int64_t>;
            const LaneIndex<V> self_v = LaneIndex<V>{} + static_cast<IE>(self);
            for (int64_t c = 0; c < C_vec; c += VL) {
              V sum{};
              for (int64_t oh = oh0; oh < oh1; ++oh) {
                for (int64_t ow = ow0; ow < ow1; ++ow) {
                  const int64_t at = oh * row_step + ow * C + c;
                  sum += load_indices<A>(ind_n + at) == self_v ? load_widened<V>(gy_n + at) : V{};
                }
              }
              if (std::is_same_v<T, A> && streamed) {
                store_stream(dst + c, sum);
              } else {
                store_narrowed(dst + c, sum);
              }
            }
          }
          for (int64_t c = C_vec; c < C; ++c) {
            A sum = A(0);
            for (int64_t oh = oh0; oh < oh1; ++oh) {
              for (int64_t ow = ow0; ow < ow1; ++ow) {
                const int64_t at = oh * row_step + ow * C + c;
                if (ind_n[at] == self) sum += static_cast<A>(gy_n[at]);
              }
            }
            dst[c] = static_cast<T>(sum);
          }
        }
      }
    }
    if (stream) stream_fence();
  });
}

// Outputs of kStreamBytes or more get their whole lines stored around the caches, so that each
// line is written once, not read in first (float max pool 3x3 s2 64 @112 NCHW grads: 2.0-2.2 ->
// 1.8 ms). bf16 is converted in vectors: value by value it took a third of that pass (2.55 ms).
template <typename T>
void store_accumulated(T* dst, const at::opmath_type<T>* acc, int64_t n, int64_t output_bytes) {
  if (output_bytes < kStreamBytes) return copy_run(dst, acc, n);
  constexpr int64_t kLine = 64 / sizeof(T);
  const int64_t head = min64(n, (64 - reinterpret_cast<uintptr_t>(dst) % 64) % 64 / sizeof(T));
  const int64_t lines = (n - head) / kLine, tail = head + lines * kLine;
  copy_run(dst, acc, head);
  for (int64_t at = head; at < tail; at += kLine) {
    alignas(64) T line[kLine];
    copy_run(line, acc + at, kLine);
    stream_lines(dst + at, line, 64);
  }
  copy_run(dst + tail, acc + tail, n - tail);
  stream_fence();
}

template <typename T>
PoolKernels<T> pool_kernels_for_type() {
  return {&max_pool<T>, &avg_pool<T>, &global_avg_pool<T>, &avg_pool_backward<T>,
          &max_pool_backward_channels_last<T>, &store_accumulated<T>};
}

}  // namespace

PoolKernelSet pool_kernel_set() {
  return {pool_kernels_for_type<float>(),   pool_kernels_for_type<double>(),
          pool_kernels_for_type<c10::Half>(), pool_kernels_for_type<c10::BFloat16>(),
          pool_kernels_for_type<int8_t>(),  pool_kernels_for_type<uint8_t>(),
          pool_kernels_for_type<int16_t>(), pool_kernels_for_type<int32_t>(),
          pool_kernels_for_type<int64_t>()};
}

}  // namespace convext::cpu::CONVEXT_ISA_NS
