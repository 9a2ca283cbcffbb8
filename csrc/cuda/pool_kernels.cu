// The CUDA pooling kernels and their launchers (interface and conventions in pool_kernels.h).
//
// One thread per result element everywhere except the global average (a group of lanes, or a
// column of threads, per sum; fixed reduction order) and the indexed scatter (one warp per
// plane). Backward passes gather: each input element sums, in output order, the grads of the
// windows that hold it, so every sum has one owner and a fixed order, and results repeat bit for
// bit. Channels_last kernels put consecutive channels in consecutive threads, several channels
// per thread (16-byte accesses) when the channel count and alignment allow.
//
// Index arithmetic runs in 32 bits (division by multiply-shift) when every element count and
// offset fits, in 64 bits otherwise.
#include "cuda/pool_kernels.h"
#include "cuda/strided.cuh"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace convext::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr uint64_t kMaxBlocks = uint64_t(1) << 22;  // grid-stride loops cover the rest
constexpr int kSlices = 8;                           // pixel slices per channel column (global avg)

// --- element types ------------------------------------------------------------------------------

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T to_acc(T v) { return v; }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The value every max starts from: -inf, or the type's lowest integer.
template <typename A> __device__ __forceinline__ A lowest();
template <> __device__ __forceinline__ float lowest<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double lowest<double>() {
  return -__longlong_as_double(0x7ff0000000000000ll);
}
template <> __device__ __forceinline__ int8_t lowest<int8_t>() { return INT8_MIN; }
template <> __device__ __forceinline__ uint8_t lowest<uint8_t>() { return 0; }
template <> __device__ __forceinline__ int16_t lowest<int16_t>() { return INT16_MIN; }
template <> __device__ __forceinline__ int32_t lowest<int32_t>() { return INT32_MIN; }
template <> __device__ __forceinline__ int64_t lowest<int64_t>() { return INT64_MIN; }

// torch's rule: a NaN wins (among NaNs the last), ties keep the first.
template <typename A>
__device__ __forceinline__ bool takes_max(A v, A best) {
  if constexpr (std::is_floating_point<A>::value) return v > best || v != v;
  return v > best;
}

// V consecutive elements, loaded and stored as one access (16 bytes at most per instruction).
template <typename T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Vec<T, V> load(const T* p) {
  return *reinterpret_cast<const Vec<T, V>*>(p);
}
template <typename T, int V>
__device__ __forceinline__ void store(T* p, const Vec<T, V>& v) {
  *reinterpret_cast<Vec<T, V>*>(p) = v;
}

// Channels per thread in the channels_last kernels: 16 bytes, at most 8 (the kernels keep an
// int64 index per channel).
template <typename T>
constexpr int kVec = 16 / sizeof(T) < 8 ? 16 / sizeof(T) : 8;

// Runs f with V = kVec<T> channels per thread when `vec`, else with V = 1.
template <typename T, typename F>
void with_width(bool vec, F&& f) {
  if (vec) {
    f(std::integral_constant<int, kVec<T>>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// --- index arithmetic ---------------------------------------------------------------------------

// n / d as a multiply-high and a shift, the usual trick for division by a run-time constant:
// no division instruction or call on the device (the host, checking for global windows,
// divides). I = uint32_t: n, d < 2^31; uint64_t: n, d < 2^63.
template <typename I> struct Divider;

template <>
struct Divider<uint32_t> {
  uint32_t d, magic, shift;
  explicit Divider(uint32_t divisor) : d(divisor), magic(0), shift(0) {
    while ((uint64_t(1) << shift) < d) ++shift;
    if (d != 0) magic = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    return (__umulhi(n, magic) + n) >> shift;
#else
    return n / d;
#endif
  }
  __device__ __forceinline__ uint32_t divmod(uint32_t n, uint32_t& r) const {
    const uint32_t q = div(n);
    r = n - q * d;
    return q;
  }
};

template <>
struct Divider<uint64_t> {
  uint64_t d, magic;
  uint32_t shift;
  explicit Divider(uint64_t divisor) : d(divisor), magic(0), shift(0) {
    while ((uint64_t(1) << shift) < d) ++shift;
    using u128 = unsigned __int128;
    if (d != 0) magic = uint64_t((u128(1) << 64) * ((uint64_t(1) << shift) - d) / d + 1);
  }
  __host__ __device__ __forceinline__ uint64_t div(uint64_t n) const {
#ifdef __CUDA_ARCH__
    return (__umul64hi(n, magic) + n) >> shift;
#else
    return n / d;
#endif
  }
  __device__ __forceinline__ uint64_t divmod(uint64_t n, uint64_t& r) const {
    const uint64_t q = div(n);
    r = n - q * d;
    return q;
  }
};

// --- windows ------------------------------------------------------------------------------------

// One output's window along an axis: input positions lo, lo + step, ... below hi, and the size
// an average divides by.
template <typename S>
struct AxisWindow {
  S lo, hi, count;
};

// PoolAxisParams in the kernel's signed index type S, its divisions precomputed (every numerator
// below is non-negative). Intermediates stay below out*s + in + 2p + s + k*d, or for adaptive
// bins in*out + in + out: the launchers take 32 bits only when that fits.
template <typename I>
struct AxisRule {
  using S = std::make_signed_t<I>;
  PoolAxisParams::Kind kind;
  S in, out, k, s, p, d;
  bool count_include_pad;
  Divider<I> by_s, by_d, by_in, by_out;

  explicit AxisRule(const PoolAxisParams& a)
      : kind(a.kind), in(S(a.in)), out(S(a.out)), k(S(a.k)), s(S(a.s)), p(S(a.p)), d(S(a.d)),
        count_include_pad(a.count_include_pad), by_s(I(a.s)), by_d(I(a.d)), by_in(I(a.in)),
        by_out(I(a.out)) {}

  __device__ __forceinline__ S step() const { return d; }

  // Max: the dilated window clipped to the input (its first tap at or after 0). Average: the
  // window clipped to the input; its count includes the padding (count_include_pad) but not the
  // ceil-mode overhang past it. Adaptive: bin o spans [floor(o*in/out), ceil((o+1)*in/out)).
  __host__ __device__ __forceinline__ AxisWindow<S> window(S o) const {
    if (kind == PoolAxisParams::kAdaptive) {
      const S lo = S(by_out.div(I(o * in))), hi = S(by_out.div(I((o + 1) * in + out - 1)));
      return {lo, hi, hi - lo};
    }
    const S start = o * s - p;
    if (kind == PoolAxisParams::kMax) {
      const S lo = start < 0 ? start + S(by_d.div(I(d - 1 - start))) * d : start;
      return {lo, min_(start + (k - 1) * d + 1, in), 0};
    }
    const S end = min_(start + k, in + p);
    const S lo = start < 0 ? 0 : start, hi = min_(end, in);
    return {lo, hi, count_include_pad ? end - start : (hi > lo ? hi - lo : 0)};
  }

  // The outputs [first, last) whose window spans input position i: exactly those holding i for
  // average and adaptive windows; for max windows those whose dilated extent spans it (a superset
  // when d > 1, which the max backward narrows by comparing indices).
  __device__ __forceinline__ void covering(S i, S& first, S& last) const {
    if (kind == PoolAxisParams::kAdaptive) {
      first = S(by_in.div(I(i * out)));
      last = min_(out, S(by_in.div(I((i + 1) * out + in - 1))));
      return;
    }
    const S t = i + p - (k - 1) * d;  // the first output's window must start at t or later
    first = t <= 0 ? 0 : S(by_s.div(I(t + s - 1)));
    last = min_(out, S(by_s.div(I(i + p))) + 1);
  }

 private:
  __host__ __device__ __forceinline__ static S min_(S a, S b) { return a < b ? a : b; }
};

template <typename I>
struct PoolRules {
  AxisRule<I> h, w;
  int64_t divisor;
  explicit PoolRules(const PoolParams& p) : h(p.h), w(p.w), divisor(p.divisor) {}
};

// One window over each whole plane, divided by its size: global average pooling.
bool is_global(const PoolParams& p) {
  if (p.divisor != 0 || p.h.out != 1 || p.w.out != 1) return false;
  const PoolRules<uint64_t> r(p);
  const AxisWindow<int64_t> a = r.h.window(0), b = r.w.window(0);
  return a.lo == 0 && a.hi == p.h.in && a.count == p.h.in && b.lo == 0 && b.hi == p.w.in &&
         b.count == p.w.in;
}

// Whether an axis's window arithmetic fits 32 bits (see AxisRule).
bool fits32(const PoolAxisParams& a) {
  const int64_t bound = a.kind == PoolAxisParams::kAdaptive
                            ? a.in * a.out + a.in + a.out
                            : a.out * a.s + a.in + 2 * a.p + a.s + a.k * a.d;
  return bound < (int64_t(1) << 31);
}

// Elements from a view's first to its last, plus one (all sizes at least 1).
template <typename T>
int64_t span(View4<T> v, int64_t n, int64_t c, int64_t h, int64_t w) {
  return 1 + (n - 1) * v.sN + (c - 1) * v.sC + (h - 1) * v.sH + (w - 1) * v.sW;
}

bool fits32(std::initializer_list<int64_t> spans) {
  return std::all_of(spans.begin(), spans.end(), [](int64_t s) { return s < (int64_t(1) << 31); });
}

bool aligned16(std::initializer_list<const void*> ptrs) {
  return std::all_of(ptrs.begin(), ptrs.end(),
                     [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; });
}

unsigned blocks_for(uint64_t work_items, int per_block) {
  return unsigned(std::min<uint64_t>((work_items + per_block - 1) / per_block, kMaxBlocks));
}

// Runs f(I{}) with I = uint32_t when `small`, else uint64_t, and returns the launch status.
template <typename F>
cudaError_t with_index(bool small, F&& f) {
  if (small) {
    f(uint32_t{});
  } else {
    f(uint64_t{});
  }
  return cudaGetLastError();
}

#define CONVEXT_GRID_STRIDE_LOOP(i, total)                                        \
  for (I i = I(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); i += I(gridDim.x) * blockDim.x)

template <typename I>
using signed_t = std::make_signed_t<I>;

// --- max pooling --------------------------------------------------------------------------------

// Any input strides; y and indices dense NCHW. Windows are walked row-major, as torch does.
template <typename T, typename I>
__global__ void max_pool_planar(PoolRules<I> r, Strided<const T, I> x, T* __restrict__ y,
                                int64_t* __restrict__ ind, I total, Divider<I> OW, Divider<I> OH,
                                Divider<I> C) {
  using A = acc_t<T>;
  using S = signed_t<I>;
  const S W = r.w.in;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I ow, oh, c;
    const I n = C.divmod(OH.divmod(OW.divmod(i, ow), oh), c);
    const AxisWindow<S> wh = r.h.window(S(oh)), ww = r.w.window(S(ow));
    A best = lowest<A>();
    S best_index = wh.lo * W + ww.lo;
    for (S ih = wh.lo; ih < wh.hi; ih += r.h.step()) {
      for (S iw = ww.lo; iw < ww.hi; iw += r.w.step()) {
        const A v = to_acc(x.at(n, c, I(ih), I(iw)));
        if (takes_max(v, best)) best = v, best_index = ih * W + iw;
      }
    }
    y[i] = from_acc<T>(best);
    ind[i] = best_index;
  }
}

// Dense channels_last x, y and indices; V channels per thread.
template <typename T, int V, typename I>
__global__ void max_pool_cl(PoolRules<I> r, const T* __restrict__ x, T* __restrict__ y,
                            int64_t* __restrict__ ind, I total, Divider<I> CV, Divider<I> OW,
                            Divider<I> OH, I C) {
  using A = acc_t<T>;
  using S = signed_t<I>;
  const S W = r.w.in;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I cv, ow, oh;
    const I n = OH.divmod(OW.divmod(CV.divmod(i, cv), ow), oh);
    const AxisWindow<S> wh = r.h.window(S(oh)), ww = r.w.window(S(ow));
    const T* image = x + n * I(r.h.in * W) * C + cv * V;
    A best[V];
    Vec<int64_t, V> best_index;
#pragma unroll
    for (int j = 0; j < V; ++j) best[j] = lowest<A>(), best_index.v[j] = wh.lo * W + ww.lo;
    for (S ih = wh.lo; ih < wh.hi; ih += r.h.step()) {
      for (S iw = ww.lo; iw < ww.hi; iw += r.w.step()) {
        const S index = ih * W + iw;
        const Vec<T, V> v = load<T, V>(image + I(index) * C);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const A a = to_acc(v.v[j]);
          if (takes_max(a, best[j])) best[j] = a, best_index.v[j] = index;
        }
      }
    }
    Vec<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) out.v[j] = from_acc<T>(best[j]);
    store(y + i * V, out);
    store(ind + i * V, best_index);
  }
}

// --- average pooling ----------------------------------------------------------------------------

template <typename A, typename I>
__device__ __forceinline__ A window_divisor(const PoolRules<I>& r, signed_t<I> count_h,
                                            signed_t<I> count_w) {
  return static_cast<A>(r.divisor ? r.divisor : int64_t(count_h) * count_w);
}

template <typename T, typename I>
__global__ void avg_pool_planar(PoolRules<I> r, Strided<const T, I> x, T* __restrict__ y, I total,
                                Divider<I> OW, Divider<I> OH, Divider<I> C) {
  using A = acc_t<T>;
  using S = signed_t<I>;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I ow, oh, c;
    const I n = C.divmod(OH.divmod(OW.divmod(i, ow), oh), c);
    const AxisWindow<S> wh = r.h.window(S(oh)), ww = r.w.window(S(ow));
    A sum = A(0);
    for (S ih = wh.lo; ih < wh.hi; ++ih) {
      for (S iw = ww.lo; iw < ww.hi; ++iw) sum += to_acc(x.at(n, c, I(ih), I(iw)));
    }
    const A div = window_divisor<A>(r, wh.count, ww.count);
    y[i] = from_acc<T>(div != A(0) ? sum / div : A(0));
  }
}

template <typename T, int V, typename I>
__global__ void avg_pool_cl(PoolRules<I> r, const T* __restrict__ x, T* __restrict__ y, I total,
                            Divider<I> CV, Divider<I> OW, Divider<I> OH, I C) {
  using A = acc_t<T>;
  using S = signed_t<I>;
  const S W = r.w.in;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I cv, ow, oh;
    const I n = OH.divmod(OW.divmod(CV.divmod(i, cv), ow), oh);
    const AxisWindow<S> wh = r.h.window(S(oh)), ww = r.w.window(S(ow));
    const T* image = x + n * I(r.h.in * W) * C + cv * V;
    A sum[V];
#pragma unroll
    for (int j = 0; j < V; ++j) sum[j] = A(0);
    for (S ih = wh.lo; ih < wh.hi; ++ih) {
      for (S iw = ww.lo; iw < ww.hi; ++iw) {
        const Vec<T, V> v = load<T, V>(image + I(ih * W + iw) * C);
#pragma unroll
        for (int j = 0; j < V; ++j) sum[j] += to_acc(v.v[j]);
      }
    }
    const A div = window_divisor<A>(r, wh.count, ww.count);
    Vec<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) out.v[j] = from_acc<T>(div != A(0) ? sum[j] / div : A(0));
    store(y + i * V, out);
  }
}

// Global average over dense planes (any N and C strides): `group` lanes (a power of two, at most
// 32) sum a plane, V elements per load, then add up their sums in a fixed shuffle tree. y is the
// dense (N, C) output.
template <typename T, int V, typename I>
__global__ void global_avg_planar(Strided<const T, I> x, T* __restrict__ y, I planes, Divider<I> C,
                                  I HW, int group) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % group;
  const I groups_per_block = kThreads / group, stride = I(gridDim.x) * groups_per_block;
  // Every lane of a warp runs the same iterations (bounded by the warp's first plane), so the
  // shuffles always see the whole warp.
  const I warp_first = I(blockIdx.x) * groups_per_block + (threadIdx.x / 32) * (32 / group);
  I plane = I(blockIdx.x) * groups_per_block + threadIdx.x / group;
  for (I base = warp_first; base < planes; base += stride, plane += stride) {
    A sum = A(0);
    if (plane < planes) {
      I c;
      const I n = C.divmod(plane, c);
      const T* p = &x.at(n, c, 0, 0);
      for (I k = I(lane) * V; k < HW; k += I(group) * V) {
        const Vec<T, V> v = load<T, V>(p + k);
#pragma unroll
        for (int j = 0; j < V; ++j) sum += to_acc(v.v[j]);
      }
    }
    for (int offset = group / 2; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, offset, group);
    }
    if (lane == 0 && plane < planes) y[plane] = from_acc<T>(sum / static_cast<A>(HW));
  }
}

// Global average over dense channels_last images: a block is 32 channel columns (V channels
// each) x kSlices pixel slices; each thread sums its slice's pixels in order, then the first
// slice adds the slices' sums in order.
template <typename T, int V, typename I>
__global__ void __launch_bounds__(32 * kSlices)
global_avg_cl(const T* __restrict__ x, T* __restrict__ y, I C, I HW, I channel_blocks) {
  using A = acc_t<T>;
  __shared__ A partial[kSlices][32][V];
  const I n = I(blockIdx.x) / channel_blocks, block = I(blockIdx.x) % channel_blocks;
  const I c0 = (block * 32 + threadIdx.x) * V;
  A sum[V];
#pragma unroll
  for (int j = 0; j < V; ++j) sum[j] = A(0);
  if (c0 < C) {
    const T* image = x + n * HW * C + c0;
    for (I p = threadIdx.y; p < HW; p += kSlices) {
      const Vec<T, V> v = load<T, V>(image + p * C);
#pragma unroll
      for (int j = 0; j < V; ++j) sum[j] += to_acc(v.v[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) partial[threadIdx.y][threadIdx.x][j] = sum[j];
  __syncthreads();
  if (threadIdx.y != 0 || c0 >= C) return;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    A total = partial[0][threadIdx.x][j];
    for (int s = 1; s < kSlices; ++s) total += partial[s][threadIdx.x][j];
    y[n * C + c0 + j] = from_acc<T>(total / static_cast<A>(HW));
  }
}

// --- average pooling backward -------------------------------------------------------------------

// gy any strides, gx dense NCHW.
template <typename T, typename I>
__global__ void avg_backward_planar(PoolRules<I> r, Strided<const T, I> gy, T* __restrict__ gx,
                                    I total, Divider<I> W, Divider<I> H, Divider<I> C) {
  using A = acc_t<T>;
  using S = signed_t<I>;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I iw, ih, c;
    const I n = C.divmod(H.divmod(W.divmod(i, iw), ih), c);
    S oh0, oh1, ow0, ow1;
    r.h.covering(S(ih), oh0, oh1);
    r.w.covering(S(iw), ow0, ow1);
    A sum = A(0);
    for (S oh = oh0; oh < oh1; ++oh) {
      const S count_h = r.h.window(oh).count;
      for (S ow = ow0; ow < ow1; ++ow) {
        const A div = window_divisor<A>(r, count_h, r.w.window(ow).count);
        if (div == A(0)) continue;
        sum += to_acc(gy.at(n, c, I(oh), I(ow))) / div;
      }
    }
    gx[i] = from_acc<T>(sum);
  }
}

// Dense channels_last gy and gx, V channels per thread.
template <typename T, int V, typename I>
__global__ void avg_backward_cl(PoolRules<I> r, const T* __restrict__ gy, T* __restrict__ gx,
                                I total, Divider<I> CV, Divider<I> W, Divider<I> H, I C) {
  using A = acc_t<T>;
  using S = signed_t<I>;
  const S OW = r.w.out;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I cv, iw, ih;
    const I n = H.divmod(W.divmod(CV.divmod(i, cv), iw), ih);
    S oh0, oh1, ow0, ow1;
    r.h.covering(S(ih), oh0, oh1);
    r.w.covering(S(iw), ow0, ow1);
    const T* image = gy + n * I(r.h.out * OW) * C + cv * V;
    A sum[V];
#pragma unroll
    for (int j = 0; j < V; ++j) sum[j] = A(0);
    for (S oh = oh0; oh < oh1; ++oh) {
      const S count_h = r.h.window(oh).count;
      for (S ow = ow0; ow < ow1; ++ow) {
        const A div = window_divisor<A>(r, count_h, r.w.window(ow).count);
        if (div == A(0)) continue;
        const Vec<T, V> g = load<T, V>(image + I(oh * OW + ow) * C);
#pragma unroll
        for (int j = 0; j < V; ++j) sum[j] += to_acc(g.v[j]) / div;
      }
    }
    Vec<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) out.v[j] = from_acc<T>(sum[j]);
    store(gx + i * V, out);
  }
}

// Global average's backward: every element of a plane gets the plane's grad / (H*W). gx dense,
// NCHW (inner = HW, outer = C) or channels_last (inner = C, outer = HW); gy any strides.
template <typename T, typename I>
__global__ void global_avg_backward(Strided<const T, I> gy, T* __restrict__ gx, I total,
                                    Divider<I> inner, Divider<I> outer, bool channels_last, I HW) {
  using A = acc_t<T>;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I r_inner, r_outer;
    const I n = outer.divmod(inner.divmod(i, r_inner), r_outer);
    const I c = channels_last ? r_inner : r_outer;
    gx[i] = from_acc<T>(to_acc(gy.at(n, c, 0, 0)) / static_cast<A>(HW));
  }
}

// --- max pooling backward -----------------------------------------------------------------------

// gy and indices any strides, gx dense NCHW.
template <typename T, typename I>
__global__ void max_backward_planar(PoolRules<I> r, Strided<const T, I> gy,
                                    Strided<const int64_t, I> ind, T* __restrict__ gx, I total,
                                    Divider<I> W, Divider<I> H, Divider<I> C) {
  using A = acc_t<T>;
  using S = signed_t<I>;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I iw, ih, c;
    const I n = C.divmod(H.divmod(W.divmod(i, iw), ih), c);
    S oh0, oh1, ow0, ow1;
    r.h.covering(S(ih), oh0, oh1);
    r.w.covering(S(iw), ow0, ow1);
    const int64_t self = S(ih) * r.w.in + S(iw);
    A sum = A(0);
    for (S oh = oh0; oh < oh1; ++oh) {
      for (S ow = ow0; ow < ow1; ++ow) {
        if (ind.at(n, c, I(oh), I(ow)) == self) sum += to_acc(gy.at(n, c, I(oh), I(ow)));
      }
    }
    gx[i] = from_acc<T>(sum);
  }
}

// Dense channels_last gy, indices and gx, V channels per thread.
template <typename T, int V, typename I>
__global__ void max_backward_cl(PoolRules<I> r, const T* __restrict__ gy,
                                const int64_t* __restrict__ ind, T* __restrict__ gx, I total,
                                Divider<I> CV, Divider<I> W, Divider<I> H, I C) {
  using A = acc_t<T>;
  using S = signed_t<I>;
  const S OW = r.w.out;
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I cv, iw, ih;
    const I n = H.divmod(W.divmod(CV.divmod(i, cv), iw), ih);
    S oh0, oh1, ow0, ow1;
    r.h.covering(S(ih), oh0, oh1);
    r.w.covering(S(iw), ow0, ow1);
    const int64_t self = S(ih) * r.w.in + S(iw);
    const I base = n * I(r.h.out * OW) * C + cv * V;
    A sum[V];
#pragma unroll
    for (int j = 0; j < V; ++j) sum[j] = A(0);
    for (S oh = oh0; oh < oh1; ++oh) {
      for (S ow = ow0; ow < ow1; ++ow) {
        const I at = base + I(oh * OW + ow) * C;
        const Vec<int64_t, V> index = load<int64_t, V>(ind + at);
        const Vec<T, V> g = load<T, V>(gy + at);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          if (index.v[j] == self) sum[j] += to_acc(g.v[j]);
        }
      }
    }
    Vec<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) out.v[j] = from_acc<T>(sum[j]);
    store(gx + i * V, out);
  }
}

// --- indexed scatter and gather -----------------------------------------------------------------

__device__ __forceinline__ void report_invalid(int64_t* error, uint64_t position) {
  atomicMax(reinterpret_cast<long long*>(error), static_cast<long long>(position));
}

// One warp per (n, c) plane walks the small plane in order, 32 positions at a time. Lanes whose
// indices are equal (__match_any_sync) form a group; for kAdd the group's lowest lane adds the
// members' values, in lane order, to the accumulator, and otherwise its highest lane's value is
// written: the same result as a sequential loop. __syncwarp orders one chunk's writes before the
// next chunk's reads. `acc` is the zeroed accumulator (`out` itself when Acc is T); when Acc is
// not T the warp finally converts its plane into out.
template <typename T, typename Acc, bool kAdd, typename I>
__global__ void scatter_planes(Strided<const T, I> src, Strided<const int64_t, I> ind,
                               Strided<Acc, I> acc, Strided<T, I> out, I planes, Divider<I> C,
                               Divider<I> OW, I OHOW, Divider<I> W, I HW, int64_t* error) {
  __shared__ Acc peers[kWarpsPerBlock][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (I plane = I(blockIdx.x) * kWarpsPerBlock + warp; plane < planes;
       plane += I(gridDim.x) * kWarpsPerBlock) {
    I c;
    const I n = C.divmod(plane, c);
    for (I base = 0; base < OHOW; base += 32) {
      const I p = base + lane;
      int64_t index = -1;
      Acc value{};
      if (p < OHOW) {
        I ow;
        const I oh = OW.divmod(p, ow);
        index = ind.at(n, c, oh, ow);
        if (index < 0 || index >= int64_t(HW)) {
          report_invalid(error, uint64_t(plane) * OHOW + p);
          index = -1;
        } else if constexpr (kAdd) {
          value = to_acc(src.at(n, c, oh, ow));
        } else {
          value = src.at(n, c, oh, ow);
        }
      }
      const unsigned group = __match_any_sync(0xffffffffu, index);
      if constexpr (kAdd) peers[warp][lane] = value;
      __syncwarp();
      const int leader = kAdd ? __ffs(group) - 1 : 31 - __clz(group);
      if (index >= 0 && lane == leader) {
        I w;
        const I h = W.divmod(I(index), w);
        Acc& dst = acc.at(n, c, h, w);
        if constexpr (kAdd) {
          Acc sum = dst;
          for (unsigned members = group; members != 0; members &= members - 1) {
            sum += peers[warp][__ffs(members) - 1];
          }
          dst = sum;
        } else {
          dst = value;
        }
      }
      __syncwarp();
    }
    if constexpr (!std::is_same<T, Acc>::value) {
      for (I k = lane; k < HW; k += 32) {
        I w;
        const I h = W.divmod(k, w);
        out.at(n, c, h, w) = from_acc<T>(acc.at(n, c, h, w));
      }
    }
  }
}

// out dense NCHW (small planes).
template <typename T, typename I>
__global__ void gather_planes(Strided<const T, I> large, Strided<const int64_t, I> ind,
                              T* __restrict__ out, I total, Divider<I> OW, Divider<I> OH,
                              Divider<I> C, Divider<I> W, I HW, int64_t* error) {
  CONVEXT_GRID_STRIDE_LOOP(i, total) {
    I ow, oh, c;
    const I n = C.divmod(OH.divmod(OW.divmod(i, ow), oh), c);
    const int64_t index = ind.at(n, c, oh, ow);
    if (index >= 0 && index < int64_t(HW)) {
      I w;
      const I h = W.divmod(I(index), w);
      out[i] = large.at(n, c, h, w);
    } else {
      out[i] = from_acc<T>(acc_t<T>(0));
      report_invalid(error, i);
    }
  }
}

#undef CONVEXT_GRID_STRIDE_LOOP

// Channels per thread for a channels_last launch over C channels and these pointers.
template <typename T>
bool vectorise(int64_t C, std::initializer_list<const void*> ptrs) {
  return kVec<T> > 1 && C % kVec<T> == 0 && aligned16(ptrs);
}

}  // namespace

// --- launchers ----------------------------------------------------------------------------------

template <typename T>
cudaError_t max_pool2d(const PoolGeometry& g, const PoolParams& params, View4<const T> x,
                       View4<T> y, View4<int64_t> ind, bool channels_last, cudaStream_t stream) {
  const bool small = fits32({span(x, g.N, g.C, g.H, g.W), g.N * g.C * g.OH * g.OW, g.H * g.W}) &&
                     fits32(params.h) && fits32(params.w);
  const bool vec = channels_last && vectorise<T>(g.C, {x.data, y.data, ind.data});
  return with_index(small, [&](auto zero) {
    using I = decltype(zero);
    const PoolRules<I> r(params);
    if (!channels_last) {
      const I total = I(g.N * g.C * g.OH * g.OW);
      max_pool_planar<T, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          r, strided<I>(x), y.data, ind.data, total, Divider<I>(I(g.OW)), Divider<I>(I(g.OH)),
          Divider<I>(I(g.C)));
      return;
    }
    const auto launch = [&](auto v) {
      constexpr int V = decltype(v)::value;
      const I total = I(g.N * g.OH * g.OW * (g.C / V));
      max_pool_cl<T, V, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          r, x.data, y.data, ind.data, total, Divider<I>(I(g.C / V)), Divider<I>(I(g.OW)),
          Divider<I>(I(g.OH)), I(g.C));
    };
    with_width<T>(vec, launch);
  });
}

template <typename T>
cudaError_t avg_pool2d(const PoolGeometry& g, const PoolParams& params, View4<const T> x,
                       View4<T> y, bool channels_last, cudaStream_t stream) {
  const int64_t HW = g.H * g.W;
  const bool small = fits32({span(x, g.N, g.C, g.H, g.W), g.N * g.C * g.OH * g.OW, HW}) &&
                     fits32(params.h) && fits32(params.w);
  const bool global = is_global(params);
  if (channels_last) {
    const bool vec = vectorise<T>(g.C, {x.data, y.data});
    return with_index(small, [&](auto zero) {
      using I = decltype(zero);
      const auto launch = [&](auto v) {
        constexpr int V = decltype(v)::value;
        if (global) {
          const I channel_blocks = I((g.C / V + 31) / 32);
          global_avg_cl<T, V, I><<<unsigned(g.N * channel_blocks), dim3(32, kSlices), 0, stream>>>(
              x.data, y.data, I(g.C), I(HW), channel_blocks);
          return;
        }
        const I total = I(g.N * g.OH * g.OW * (g.C / V));
        avg_pool_cl<T, V, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
            PoolRules<I>(params), x.data, y.data, total, Divider<I>(I(g.C / V)),
            Divider<I>(I(g.OW)), Divider<I>(I(g.OH)), I(g.C));
      };
      with_width<T>(vec, launch);
    });
  }
  if (global && x.sW == 1 && x.sH == g.W) {
    // Lanes per plane: enough for about 4 loads each, between 4 and 32.
    int group = 4;
    while (group < 32 && group * 4 < HW) group *= 2;
    const bool vec = HW % kVec<T> == 0 && x.sN % kVec<T> == 0 && x.sC % kVec<T> == 0 &&
                     aligned16({x.data});
    return with_index(small, [&](auto zero) {
      using I = decltype(zero);
      const I planes = I(g.N * g.C);
      const unsigned blocks = blocks_for(planes, kThreads / group);
      if (vec) {
        global_avg_planar<T, kVec<T>, I><<<blocks, kThreads, 0, stream>>>(
            strided<I>(x), y.data, planes, Divider<I>(I(g.C)), I(HW), group);
      } else {
        global_avg_planar<T, 1, I><<<blocks, kThreads, 0, stream>>>(
            strided<I>(x), y.data, planes, Divider<I>(I(g.C)), I(HW), group);
      }
    });
  }
  return with_index(small, [&](auto zero) {
    using I = decltype(zero);
    const I total = I(g.N * g.C * g.OH * g.OW);
    avg_pool_planar<T, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        PoolRules<I>(params), strided<I>(x), y.data, total, Divider<I>(I(g.OW)),
        Divider<I>(I(g.OH)), Divider<I>(I(g.C)));
  });
}

template <typename T>
cudaError_t avg_pool2d_backward(const PoolGeometry& g, const PoolParams& params, View4<const T> gy,
                                View4<T> gx, bool channels_last, cudaStream_t stream) {
  const bool small = fits32({span(gy, g.N, g.C, g.OH, g.OW), g.N * g.C * g.H * g.W}) &&
                     fits32(params.h) && fits32(params.w);
  if (is_global(params)) {
    return with_index(small, [&](auto zero) {
      using I = decltype(zero);
      const I total = I(g.N * g.C * g.H * g.W), HW = I(g.H * g.W);
      global_avg_backward<T, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          strided<I>(gy), gx.data, total, Divider<I>(channels_last ? I(g.C) : HW),
          Divider<I>(channels_last ? HW : I(g.C)), channels_last, HW);
    });
  }
  const bool vec = channels_last && vectorise<T>(g.C, {gy.data, gx.data});
  return with_index(small, [&](auto zero) {
    using I = decltype(zero);
    const PoolRules<I> r(params);
    if (!channels_last) {
      const I total = I(g.N * g.C * g.H * g.W);
      avg_backward_planar<T, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          r, strided<I>(gy), gx.data, total, Divider<I>(I(g.W)), Divider<I>(I(g.H)),
          Divider<I>(I(g.C)));
      return;
    }
    const auto launch = [&](auto v) {
      constexpr int V = decltype(v)::value;
      const I total = I(g.N * g.H * g.W * (g.C / V));
      avg_backward_cl<T, V, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          r, gy.data, gx.data, total, Divider<I>(I(g.C / V)), Divider<I>(I(g.W)),
          Divider<I>(I(g.H)), I(g.C));
    };
    with_width<T>(vec, launch);
  });
}

template <typename T>
cudaError_t max_pool2d_backward(const PoolGeometry& g, const PoolParams& params, View4<const T> gy,
                                View4<const int64_t> ind, View4<T> gx, bool channels_last,
                                cudaStream_t stream) {
  const bool small = fits32({span(gy, g.N, g.C, g.OH, g.OW), span(ind, g.N, g.C, g.OH, g.OW),
                             g.N * g.C * g.H * g.W}) &&
                     fits32(params.h) && fits32(params.w);
  const bool vec = channels_last && vectorise<T>(g.C, {gy.data, ind.data, gx.data});
  return with_index(small, [&](auto zero) {
    using I = decltype(zero);
    const PoolRules<I> r(params);
    if (!channels_last) {
      const I total = I(g.N * g.C * g.H * g.W);
      max_backward_planar<T, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          r, strided<I>(gy), strided<I>(ind), gx.data, total, Divider<I>(I(g.W)),
          Divider<I>(I(g.H)), Divider<I>(I(g.C)));
      return;
    }
    const auto launch = [&](auto v) {
      constexpr int V = decltype(v)::value;
      const I total = I(g.N * g.H * g.W * (g.C / V));
      max_backward_cl<T, V, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          r, gy.data, ind.data, gx.data, total, Divider<I>(I(g.C / V)), Divider<I>(I(g.W)),
          Divider<I>(I(g.H)), I(g.C));
    };
    with_width<T>(vec, launch);
  });
}

template <typename T>
cudaError_t pool_scatter(const PoolGeometry& g, View4<const T> values, View4<const int64_t> ind,
                         View4<T> out, acc_t<T>* scratch, bool add, int64_t* error,
                         cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t large = g.N * g.C * g.H * g.W;
  const bool small = fits32({span(values, g.N, g.C, g.OH, g.OW), span(ind, g.N, g.C, g.OH, g.OW),
                             span(out, g.N, g.C, g.H, g.W), large});
  const bool separate_acc = add && !std::is_same<T, A>::value;
  // Every plane starts at zero: the accumulator, or out itself.
  const cudaError_t zeroed = separate_acc
                                 ? cudaMemsetAsync(scratch, 0, large * sizeof(A), stream)
                                 : cudaMemsetAsync(out.data, 0, large * sizeof(T), stream);
  if (zeroed != cudaSuccess) return zeroed;
  return with_index(small, [&](auto zero) {
    using I = decltype(zero);
    const I planes = I(g.N * g.C);
    const unsigned blocks = blocks_for(planes, kWarpsPerBlock);
    const auto launch = [&](auto kernel, auto acc) {
      kernel<<<blocks, kThreads, 0, stream>>>(strided<I>(values), strided<I>(ind), acc,
                                              strided<I>(out), planes, Divider<I>(I(g.C)),
                                              Divider<I>(I(g.OW)), I(g.OH * g.OW),
                                              Divider<I>(I(g.W)), I(g.H * g.W), error);
    };
    if (!add) {
      launch(scatter_planes<T, T, false, I>, strided<I>(out));
    } else if constexpr (std::is_same<T, A>::value) {
      launch(scatter_planes<T, T, true, I>, strided<I>(out));
    } else {
      const View4<A> acc{scratch, g.C * g.H * g.W, g.H * g.W, g.W, 1};
      launch(scatter_planes<T, A, true, I>, strided<I>(acc));
    }
  });
}

template <typename T>
cudaError_t pool_gather(const PoolGeometry& g, View4<const T> input, View4<const int64_t> ind,
                        View4<T> out, int64_t* error, cudaStream_t stream) {
  const bool small = fits32({span(input, g.N, g.C, g.H, g.W), span(ind, g.N, g.C, g.OH, g.OW),
                             g.N * g.C * g.OH * g.OW, g.H * g.W});
  return with_index(small, [&](auto zero) {
    using I = decltype(zero);
    const I total = I(g.N * g.C * g.OH * g.OW);
    gather_planes<T, I><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        strided<I>(input), strided<I>(ind), out.data, total, Divider<I>(I(g.OW)),
        Divider<I>(I(g.OH)), Divider<I>(I(g.C)), Divider<I>(I(g.W)), I(g.H * g.W), error);
  });
}

// --- instantiations -----------------------------------------------------------------------------

#define CONVEXT_MAX_POOL(T)                                                                  \
  template cudaError_t max_pool2d<T>(const PoolGeometry&, const PoolParams&, View4<const T>, \
                                     View4<T>, View4<int64_t>, bool, cudaStream_t);
#define CONVEXT_AVG_POOL(T)                                                                  \
  template cudaError_t avg_pool2d<T>(const PoolGeometry&, const PoolParams&, View4<const T>, \
                                     View4<T>, bool, cudaStream_t);
#define CONVEXT_FLOATING(T)                                                                      \
  template cudaError_t avg_pool2d_backward<T>(const PoolGeometry&, const PoolParams&,            \
                                              View4<const T>, View4<T>, bool, cudaStream_t);    \
  template cudaError_t max_pool2d_backward<T>(const PoolGeometry&, const PoolParams&,            \
                                              View4<const T>, View4<const int64_t>, View4<T>,   \
                                              bool, cudaStream_t);                              \
  template cudaError_t pool_scatter<T>(const PoolGeometry&, View4<const T>,                     \
                                       View4<const int64_t>, View4<T>, acc_t<T>*, bool,         \
                                       int64_t*, cudaStream_t);                                 \
  template cudaError_t pool_gather<T>(const PoolGeometry&, View4<const T>,                      \
                                      View4<const int64_t>, View4<T>, int64_t*, cudaStream_t);

CONVEXT_MAX_POOL(float)
CONVEXT_MAX_POOL(double)
CONVEXT_MAX_POOL(__half)
CONVEXT_MAX_POOL(__nv_bfloat16)
CONVEXT_MAX_POOL(int8_t)
CONVEXT_MAX_POOL(uint8_t)
CONVEXT_MAX_POOL(int16_t)
CONVEXT_MAX_POOL(int32_t)
CONVEXT_MAX_POOL(int64_t)
CONVEXT_AVG_POOL(float)
CONVEXT_AVG_POOL(double)
CONVEXT_AVG_POOL(__half)
CONVEXT_AVG_POOL(__nv_bfloat16)
CONVEXT_AVG_POOL(int64_t)
CONVEXT_FLOATING(float)
CONVEXT_FLOATING(double)
CONVEXT_FLOATING(__half)
CONVEXT_FLOATING(__nv_bfloat16)

#undef CONVEXT_MAX_POOL
#undef CONVEXT_AVG_POOL
#undef CONVEXT_FLOATING

}  // namespace convext::cuda
