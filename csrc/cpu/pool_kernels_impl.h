// The CPU pooling kernels (forward), compiled once per SIMD instruction set. Included only by
// kernels_<isa>.cpp (see there), after kernel_support_impl.h.
//
// Two loop orders: one (n, c) plane at a time for NCHW and other strides, and channels
// innermost for channels_last, where the channel loop is branch-free so that it vectorises.

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

template <typename T>
void max_pool(const PoolGeometry& g, const PoolWindows& win, View4<const T> x, View4<T> y,
              View4<int64_t> ind, bool channels_last) {
  using A = at::opmath_type<T>;
  const PoolAxis &wh = win.h, &ww = win.w;
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

template <typename A>
inline A window_divisor(const PoolWindows& win, int64_t oh, int64_t ow, int64_t divisor) {
  return static_cast<A>(divisor ? divisor : win.h.count[oh] * win.w.count[ow]);
}

template <typename T>
void avg_pool(const PoolGeometry& g, const PoolWindows& win, View4<const T> x, View4<T> y,
              int64_t divisor, bool channels_last) {
  using A = at::opmath_type<T>;
  const PoolAxis &wh = win.h, &ww = win.w;
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
          const A div = window_divisor<A>(win, oh, ow, divisor);
          T* out = y.data + n * y.sN + oh * y.sH + ow * y.sW;
          for (int64_t c = 0; c < g.C; ++c) out[c] = static_cast<T>(div != A(0) ? sum[c] / div : A(0));
        }
      }
    });
    return;
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
          const A div = window_divisor<A>(win, oh, ow, divisor);
          y.data[n * y.sN + c * y.sC + oh * y.sH + ow * y.sW] = static_cast<T>(div != A(0) ? sum / div : A(0));
        }
      }
    }
  });
}

// One mean per plane, reading each plane (or, channels_last, each image) front to back.
template <typename T>
void global_avg_pool(const PoolGeometry& g, View4<const T> x, View4<T> y, bool channels_last) {
  using A = at::opmath_type<T>;
  const int64_t HW = g.H * g.W;
  if (channels_last) {
    at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
      Scratch<A> sum_mem(g.C);
      A* __restrict sum = sum_mem.get();
      for (int64_t n = begin; n < end; ++n) {
        fill_zero(sum, g.C);
        const T* __restrict in = x.data + n * x.sN;
        for (int64_t p = 0; p < HW; ++p) {
          for (int64_t c = 0; c < g.C; ++c) sum[c] += static_cast<A>(in[p * g.C + c]);
        }
        for (int64_t c = 0; c < g.C; ++c) y.data[n * y.sN + c * y.sC] = static_cast<T>(sum[c] / A(HW));
      }
    });
    return;
  }
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      const T* in = x.data + n * x.sN + c * x.sC;
      A sum = A(0);
      if (x.sW == 1 && x.sH == g.W) {
        // Independent partial sums: a single running sum is a dependency chain that cannot be
        // vectorised without reassociation.
        constexpr int kLanes = 8;
        A part[kLanes] = {};
        int64_t p = 0;
        for (; p + kLanes <= HW; p += kLanes) {
          for (int j = 0; j < kLanes; ++j) part[j] += static_cast<A>(in[p + j]);
        }
        for (; p < HW; ++p) sum += static_cast<A>(in[p]);
        for (int j = 0; j < kLanes; ++j) sum += part[j];
      } else {
        for (int64_t h = 0; h < g.H; ++h) {
          for (int64_t w = 0; w < g.W; ++w) sum += static_cast<A>(in[h * x.sH + w * x.sW]);
        }
      }
      y.data[n * y.sN + c * y.sC] = static_cast<T>(sum / A(HW));
    }
  });
}

template <typename T>
PoolKernels<T> pool_kernels_for_type() {
  return {&max_pool<T>, &avg_pool<T>, &global_avg_pool<T>};
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
