// CUDA convolution kernels (interface and conventions: conv_kernels.h).
//
// Three families:
// - Implicit-GEMM kernels for dense and grouped convolutions (conv_igemm.cu: tensor cores for
//   the half types, and for float where TF32 is allowed): the forward, the stride-1 input
//   gradient and the weight gradient, wherever their tiles pay and the device has sm_80.
// - General direct kernels, correct for every form (groups, stride, padding, dilation, kernel
//   size, 1x1, transposed): everything the other two do not take. The forward and the input
//   gradient compute one output per thread; the input gradient gathers (each gx element sums
//   the gy elements that reach it), so nothing is scattered and nothing needs atomics. The
//   weight and bias gradients sum each result over N x OH x OW in two stages: per-block partial
//   sums into a workspace, then a fixed-order sum.
// - Depthwise kernels (groups == C_in, any channel multiplier m = C_out / C_in; forward, input
//   gradient and weight gradient), which are memory-bound. NCHW: a block stages the input tile of
//   its output tile, halo and zero padding included, in shared memory, and each thread computes a
//   strip of U output rows so that neighbouring rows share their loads. NHWC: consecutive threads
//   take consecutive channels, with vector loads. 3x3, 5x5 and 7x7 at stride 1 or 2 are compiled
//   with unrolled loops; every other size runs runtime-loop versions of the same kernels.
//
// Index types: general kernels use int32 offsets when every offset fits, int64 otherwise; the
// depthwise kernels use int32 only (tensors whose offsets do not fit take the general kernels).
#include "cuda/conv_kernels.h"
#include "cuda/conv_igemm.h"
#include "cuda/strided.cuh"

#include <algorithm>
#include <type_traits>

namespace convext::cuda {
namespace {

constexpr int kThreads = 256;
// Blocks of kThreads per SM asked of ptxas: 4 (at most 64 registers) keeps the memory-bound
// kernels' loads in flight; kernels that hold 5x5 or 7x7 taps in registers, and those on double
// values or int64 indices (two registers each), get 2 (128). Naming the target also stops ptxas
// from spilling a few registers on its own to raise occupancy.
template <typename T, int K = 0, typename I = int>
constexpr int kMinBlocks = K >= 5 || sizeof(T) == 8 || sizeof(I) == 8 ? 2 : 4;
// Blocks a two-stage reduction aims for (enough to fill current GPUs). A constant rather than
// the device's SM count, so that the summation order, and with it the result, is the same on
// every device.
constexpr int64_t kReductionBlocks = 2048;
constexpr int64_t kMaxGridY = 65535;
// Dynamic shared memory of a tile: within the 48 KiB a block gets without opting in, leaving room
// for the kernels' static arrays.
constexpr size_t kMaxSmem = 40 * 1024;
// Offsets below this fit int32 with room for the arithmetic just past the last element.
constexpr int64_t kI32Limit = (int64_t(1) << 31) - (int64_t(1) << 20);

// ---------------------------------------------------------------------------------------------
// Element types: the accumulator, and conversions to and from it.

template <typename T> struct Num;
template <> struct Num<float> {
  using Acc = float;
  static __device__ __forceinline__ float in(float v) { return v; }
  static __device__ __forceinline__ float out(float v) { return v; }
};
template <> struct Num<double> {
  using Acc = double;
  static __device__ __forceinline__ double in(double v) { return v; }
  static __device__ __forceinline__ double out(double v) { return v; }
};
template <> struct Num<__half> {
  using Acc = float;
  static __device__ __forceinline__ float in(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half out(float v) { return __float2half_rn(v); }
};
template <> struct Num<__nv_bfloat16> {
  using Acc = float;
  static __device__ __forceinline__ float in(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 out(float v) { return __float2bfloat16_rn(v); }
};
template <typename T> using Acc = typename Num<T>::Acc;

// V consecutive elements, moved as one access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Channels per vector access in the NHWC kernels: 16 bytes of float or double, 8 of halves
// (whose float accumulators would otherwise crowd the registers).
template <typename T> constexpr int kVec = sizeof(T) == 8 ? 2 : 4;

template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, Acc<T> (&a)[V]) {
  const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(p);
#pragma unroll
  for (int i = 0; i < V; ++i) a[i] = Num<T>::in(v.v[i]);
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const Acc<T> (&a)[V]) {
  Vec<T, V> v;
#pragma unroll
  for (int i = 0; i < V; ++i) v.v[i] = Num<T>::out(a[i]);
  *reinterpret_cast<Vec<T, V>*>(p) = v;
}

// Sum over a warp in a fixed tree order; lane 0 holds it.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of whole warps, in a fixed order; thread 0 holds it.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A warps[kThreads / 32];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = v;
  __syncthreads();
  A s = 0;
  if (threadIdx.x == 0) {
    for (int i = 0; i < int(blockDim.x >> 5); ++i) s += warps[i];
  }
  return s;
}

__device__ __forceinline__ int floor_div(int a, int b) {
  const int q = a / b;
  return q * b > a ? q - 1 : q;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// General kernels.

// ConvGeometry in a kernel's index type.
template <typename I>
struct Geo {
  I N, C_in, C_out, Cig, Cog, H, W, OH, OW, KH, KW, sH, sW, pH, pW, dH, dW;
};

template <typename I>
Geo<I> geo(const ConvGeometry& g) {
  return {I(g.N),  I(g.C_in), I(g.C_out), I(g.C_in_g()), I(g.C_out_g()), I(g.H),
          I(g.W),  I(g.OH),   I(g.OW),    I(g.KH),       I(g.KW),         I(g.sH),
          I(g.sW), I(g.pH),   I(g.pW),    I(g.dH),       I(g.dW)};
}

// Splits a flat index over (N, C, H, W) whose fastest dimension is W, or C when
// channels_fastest (then neighbouring threads touch neighbouring channels_last addresses).
template <typename I>
__device__ __forceinline__ void unflatten(I i, bool channels_fastest, I C, I H, I W, I& n, I& c,
                                          I& h, I& w) {
  if (channels_fastest) {
    c = i % C, i /= C;
    w = i % W, i /= W;
  } else {
    w = i % W, i /= W;
    h = i % H, i /= H;
    c = i % C, n = i / C;
    return;
  }
  h = i % H, n = i / H;
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, 0, I>)
conv_forward_general(Geo<I> g, Strided<const T, I> x, Strided<const T, I> w,
                     const T* __restrict__ bias, Strided<T, I> y, bool channels_fastest) {
  using A = Acc<T>;
  const I i = I(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= g.N * g.C_out * g.OH * g.OW) return;
  I n, co, oh, ow;
  unflatten(i, channels_fastest, g.C_out, g.OH, g.OW, n, co, oh, ow);
  const I ci0 = co / g.Cog * g.Cig;
  A acc = 0;
  for (I kh = 0; kh < g.KH; ++kh) {
    const I ih = oh * g.sH - g.pH + kh * g.dH;
    if (ih < 0 || ih >= g.H) continue;
    for (I kw = 0; kw < g.KW; ++kw) {
      const I iw = ow * g.sW - g.pW + kw * g.dW;
      if (iw < 0 || iw >= g.W) continue;
      const T* xp = &x.at(n, ci0, ih, iw);
      const T* wp = &w.at(co, 0, kh, kw);
      for (I ci = 0; ci < g.Cig; ++ci) acc += Num<T>::in(xp[ci * x.sC]) * Num<T>::in(wp[ci * w.sC]);
    }
  }
  if (bias) acc += Num<T>::in(bias[co]);
  y.at(n, co, oh, ow) = Num<T>::out(acc);
}

// gx(n, ci, h, w) sums gy(n, co, oh, ow) * w(co, ci, kh, kw) over the co of ci's group and the
// taps with oh * sH = h + pH - kh * dH (and likewise for w): a gather, one gx element per thread.
template <typename T, typename I>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, 0, I>)
conv_input_grad_general(Geo<I> g, Strided<const T, I> gy, Strided<const T, I> w,
                        const T* __restrict__ bias, Strided<T, I> gx, bool channels_fastest) {
  using A = Acc<T>;
  const I i = I(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= g.N * g.C_in * g.H * g.W) return;
  I n, ci, h, wc;
  unflatten(i, channels_fastest, g.C_in, g.H, g.W, n, ci, h, wc);
  const I group = ci / g.Cig, cl = ci - group * g.Cig, co0 = group * g.Cog;
  A acc = 0;
  for (I kh = 0; kh < g.KH; ++kh) {
    const I th = h + g.pH - kh * g.dH;
    if (th < 0) break;  // th only falls as kh grows
    const I oh = th / g.sH;
    if (oh * g.sH != th || oh >= g.OH) continue;
    for (I kw = 0; kw < g.KW; ++kw) {
      const I tw = wc + g.pW - kw * g.dW;
      if (tw < 0) break;
      const I ow = tw / g.sW;
      if (ow * g.sW != tw || ow >= g.OW) continue;
      const T* gp = &gy.at(n, co0, oh, ow);
      const T* wp = &w.at(co0, cl, kh, kw);
      for (I co = 0; co < g.Cog; ++co) acc += Num<T>::in(gp[co * gy.sC]) * Num<T>::in(wp[co * w.sN]);
    }
  }
  if (bias) acc += Num<T>::in(bias[ci]);
  gx.at(n, ci, h, wc) = Num<T>::out(acc);
}

// The reduction index r = (n * H + h) * W + w of the weight and bias gradients, walked in steps
// of `step` with carries instead of divisions.
template <typename I>
struct Walk {
  I n, h, w, dn, dh, dw;

  __device__ __forceinline__ Walk(I r, I step, I H, I W) {
    w = r % W, r /= W;
    h = r % H, n = r / H;
    dn = step / (H * W), step -= dn * H * W;
    dh = step / W, dw = step - dh * W;
  }

  __device__ __forceinline__ void next(I H, I W) {
    n += dn, h += dh, w += dw;
    if (w >= W) w -= W, ++h;
    if (h >= H) h -= H, ++n;
  }
};

// gy * x for weight element (co, cin, kh, kw) at reduction position (n, oh, ow); 1 * gy for
// the bias gradient.
template <bool kBias, typename T, typename I>
__device__ __forceinline__ Acc<T> weight_grad_term(const Geo<I>& g, const Strided<const T, I>& x,
                                                   const Strided<const T, I>& gy, I co, I cin,
                                                   I kh, I kw, const Walk<I>& r) {
  const Acc<T> gv = Num<T>::in(gy.at(r.n, co, r.h, r.w));
  if (kBias) return gv;
  const I ih = r.h * g.sH - g.pH + kh * g.dH, iw = r.w * g.sW - g.pW + kw * g.dW;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0;
  return gv * Num<T>::in(x.at(r.n, cin, ih, iw));
}

// Stage one of the weight gradient: partial[chunk][e] for weight element e = (co, ci, kh, kw),
// the sum over the chunk's reduction indices r = (n, oh, ow) of gy * x. One block per (e, chunk)
// with threads striding over r (coalesced along ow). kBias: the bias gradient, x taken as 1 and
// e = co (the geometry is then a 1x1 conv of one channel per group).
template <typename T, typename I, bool kBias>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, 0, I>)
weight_grad_rows(Geo<I> g, Strided<const T, I> x, Strided<const T, I> gy, I len,
                 Acc<T>* __restrict__ partial) {
  using A = Acc<T>;
  const I e = blockIdx.x;
  const I kw = e % g.KW, kh = e / g.KW % g.KH, ci = e / (g.KW * g.KH) % g.Cig;
  const I co = e / (g.KW * g.KH * g.Cig), cin = co / g.Cog * g.Cig + ci;
  const I r0 = I(blockIdx.y) * len + I(threadIdx.x), r1 = min(g.N * g.OH * g.OW, r0 - I(threadIdx.x) + len);
  A acc = 0;
  Walk<I> r(r0, kThreads, g.OH, g.OW);
  for (I i = r0; i < r1; i += kThreads, r.next(g.OH, g.OW)) {
    acc += weight_grad_term<kBias>(g, x, gy, co, cin, kh, kw, r);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[I(blockIdx.y) * g.C_out * g.Cig * g.KH * g.KW + e] = acc;
}

// The same for channels_last gy: a block takes 32 consecutive co (threadIdx.x, coalesced) of one
// (ci, kh, kw), and its 8 rows of threads stride over r.
template <typename T, typename I, bool kBias>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, 0, I>)
weight_grad_channels(Geo<I> g, Strided<const T, I> x, Strided<const T, I> gy, I len,
                     Acc<T>* __restrict__ partial) {
  using A = Acc<T>;
  const I taps = g.Cig * g.KH * g.KW;
  const I tap = I(blockIdx.x) % taps, co = I(blockIdx.x) / taps * 32 + I(threadIdx.x);
  const I kw = tap % g.KW, kh = tap / g.KW % g.KH, ci = tap / (g.KW * g.KH);
  const I r0 = I(blockIdx.y) * len + I(threadIdx.y), r1 = min(g.N * g.OH * g.OW, r0 - I(threadIdx.y) + len);
  A acc = 0;
  if (co < g.C_out) {
    const I cin = co / g.Cog * g.Cig + ci;
    Walk<I> r(r0, 8, g.OH, g.OW);
    for (I i = r0; i < r1; i += 8, r.next(g.OH, g.OW)) {
      acc += weight_grad_term<kBias>(g, x, gy, co, cin, kh, kw, r);
    }
  }
  __shared__ A rows[8][32];
  rows[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && co < g.C_out) {
    A s = rows[0][threadIdx.x];
    for (int y = 1; y < 8; ++y) s += rows[y][threadIdx.x];
    partial[I(blockIdx.y) * g.C_out * taps + co * taps + tap] = s;
  }
}

// Stage two of every weight and bias gradient: result e = (co, ci, kh, kw) is the sum of its
// chunks' partials in chunk order.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
sum_partials(const Acc<T>* __restrict__ partial, int64_t chunks, int64_t E, int64_t Cig,
             int64_t KH, int64_t KW, View4<T> out) {
  const int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= E) return;
  Acc<T> s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * E + e];
  const int64_t kw = e % KW, kh = e / KW % KH, ci = e / (KW * KH) % Cig, co = e / (KW * KH * Cig);
  out.data[co * out.sN + ci * out.sC + kh * out.sH + kw * out.sW] = Num<T>::out(s);
}

// ---------------------------------------------------------------------------------------------
// Depthwise kernels: shared pieces.

// A depthwise conv in forward terms: C input channels, C * m output channels.
struct Dw {
  int N, C, m, H, W, OH, OW, KH, KW, sH, sW, pH, pW, dH, dW;
};

// A 4-D view whose offsets fit 32 bits.
template <typename T>
struct View32 {
  T* data;
  int sN, sC, sH, sW;
  __device__ __forceinline__ T* plane(int n, int c) const { return data + n * sN + c * sC; }
};

// Template parameters of the depthwise kernels: K > 0 compiles a KxK kernel in (K == 0: KH, KW
// at run time); S > 0 compiles stride S and dilation 1 in (S == 0: both at run time).
template <int K>
__device__ __forceinline__ int kdim(int runtime) { return K ? K : runtime; }
template <int S>
__device__ __forceinline__ int sdim(int runtime) { return S ? S : runtime; }
template <int S>
__device__ __forceinline__ int ddim(int runtime) { return S ? 1 : runtime; }

// The NCHW tile plan (chosen on the host): a block computes `strips` strips of U output rows x TW
// output columns of P planes. Thread t takes column t % 2^col_shift (a power of two >= TW) of
// strip t >> col_shift, so a warp reads consecutive columns. Each plane's input tile, halo and
// padding included, is IHt x IWt in shared memory.
struct Tile {
  int P, strips, TW, col_shift, tiles_h, tiles_w, IHt, IWt, threads;
};

struct Item {
  int p, st, col;
  bool active;
};

__device__ __forceinline__ Item tile_item(const Tile& t) {
  Item it;
  it.col = threadIdx.x & ((1 << t.col_shift) - 1);
  const int ps = threadIdx.x >> t.col_shift;
  it.p = ps / t.strips;
  it.st = ps - it.p * t.strips;
  it.active = it.p < t.P && it.col < t.TW;
  return it;
}

// Copies rows [row0, row0 + IHt) x columns [col0, col0 + IWt) of the block's P planes into
// `tile`, zeros outside the H x W plane (the padding) and for absent planes (plane_of(p) null).
// Each row goes to a group of 2^k threads (2^k >= IWt where the block allows), so no element
// costs a division.
template <typename T, typename PlaneOf>
__device__ __forceinline__ void load_tile(Acc<T>* tile, const Tile& t, const View32<const T>& v,
                                          int row0, int col0, int H, int W, PlaneOf plane_of) {
  int shift = 0;
  while ((1 << shift) < t.IWt && (2 << shift) <= int(blockDim.x)) ++shift;
  const int slots = blockDim.x >> shift, slot = threadIdx.x >> shift;
  if (slot >= slots) return;
  const int lane = threadIdx.x & ((1 << shift) - 1);
  for (int pr = slot; pr < t.P * t.IHt; pr += slots) {
    const int p = pr / t.IHt, ih = row0 + pr - p * t.IHt;
    const T* src = plane_of(p);
    const bool row_ok = src != nullptr && ih >= 0 && ih < H;
    Acc<T>* dst = tile + pr * t.IWt;
    for (int c = lane; c < t.IWt; c += 1 << shift) {
      const int iw = col0 + c;
      dst[c] = row_ok && iw >= 0 && iw < W ? Num<T>::in(src[ih * v.sH + iw * v.sW]) : Acc<T>(0);
    }
  }
}

// Weights of output channel co_of(p) for each of the block's planes: wts[p][kh * KW + kw].
template <typename T, typename ChannelOf>
__device__ __forceinline__ void load_weights(Acc<T>* wts, int P, int KH, int KW,
                                             const View32<const T>& w, ChannelOf co_of) {
  const int KK = KH * KW;
  for (int i = threadIdx.x; i < P * KK; i += blockDim.x) {
    const int p = i / KK, k = i - p * KK, co = co_of(p);
    wts[i] = co >= 0 ? Num<T>::in(w.data[co * w.sN + k / KW * w.sH + k % KW * w.sW]) : Acc<T>(0);
  }
}

// Forward correlation of one strip: acc[u] += sum over (kh, kw) of src[(u*S + kh*D) * ld + kw*D]
// * wt[kh][kw], src pointing at the strip's first input row and the thread's column. With S > 0
// (dilation 1) the rows of neighbouring outputs overlap and each input row is loaded once.
template <typename A, int K, int S, int U>
__device__ __forceinline__ void strip_forward(const A* src, int ld, const A* wt, const Dw& s,
                                              A (&acc)[U]) {
  if constexpr (K > 0 && S > 0) {
    A wr[K * K];
#pragma unroll
    for (int k = 0; k < K * K; ++k) wr[k] = wt[k];
#pragma unroll
    for (int r = 0; r < (U - 1) * S + K; ++r) {
      A v[K];
#pragma unroll
      for (int kw = 0; kw < K; ++kw) v[kw] = src[r * ld + kw];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int kh = r - u * S;
        if (kh >= 0 && kh < K) {
#pragma unroll
          for (int kw = 0; kw < K; ++kw) acc[u] += v[kw] * wr[kh * K + kw];
        }
      }
    }
  } else {
    const int KH = kdim<K>(s.KH), KW = kdim<K>(s.KW);
    for (int kh = 0; kh < KH; ++kh) {
      for (int kw = 0; kw < KW; ++kw) {
        const A wv = wt[kh * KW + kw];
        const A* p = src + kh * s.dH * ld + kw * s.dW;
#pragma unroll
        for (int u = 0; u < U; ++u) acc[u] += p[u * s.sH * ld] * wv;
      }
    }
  }
}

// Input gradient of U gx rows h, h+1, ... at column wc, gathered from a gy tile whose element
// (0, 0) is gy(orow, ocol): tap (kh, kw) reads gy((h + pH - kh*dH) / sH, ...) when the division
// is exact. With S compiled in (dilation 1) those are the taps kh = (h + pH) % S, + S, ...; at
// runtime strides each tap is tested (C's % is 0 for negative multiples too, and / then exact).
template <typename A, int K, int S, int U>
__device__ __forceinline__ void strip_gather(const A* tile, int ld, int h, int wc, int orow,
                                             int ocol, const A* wt, const Dw& s, A (&acc)[U]) {
  if constexpr (S > 0) {
    const int kw0 = (wc + s.pW) % S;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      for (int kh = (h + u + s.pH) % S; kh < K; kh += S) {
        const A* row = tile + ((h + u + s.pH - kh) / S - orow) * ld;
        for (int kw = kw0; kw < K; kw += S) {
          acc[u] += row[(wc + s.pW - kw) / S - ocol] * wt[kh * K + kw];
        }
      }
    }
  } else {
    const int KH = kdim<K>(s.KH), KW = kdim<K>(s.KW);
    for (int kh = 0; kh < KH; ++kh) {
      for (int kw = 0; kw < KW; ++kw) {
        const int tw = wc + s.pW - kw * s.dW;
        if (tw % s.sW != 0) continue;
        const A wv = wt[kh * KW + kw];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int th = h + u + s.pH - kh * s.dH;
          if (th % s.sH == 0) acc[u] += tile[(th / s.sH - orow) * ld + tw / s.sW - ocol] * wv;
        }
      }
    }
  }
}

// Weight-gradient terms of one strip: acc[kh][kw] += sum over u of g[u] * src[(u*S + kh*D) * ld +
// kw*D] (src as for strip_forward).
template <typename A, int K, int S, int U>
__device__ __forceinline__ void strip_weight_grad(const A* src, int ld, const A (&g)[U],
                                                  const Dw& s, A (&acc)[K * K]) {
  if constexpr (S > 0) {
#pragma unroll
    for (int r = 0; r < (U - 1) * S + K; ++r) {
      A v[K];
#pragma unroll
      for (int kw = 0; kw < K; ++kw) v[kw] = src[r * ld + kw];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int kh = r - u * S;
        if (kh >= 0 && kh < K) {
#pragma unroll
          for (int kw = 0; kw < K; ++kw) acc[kh * K + kw] += g[u] * v[kw];
        }
      }
    }
  } else {
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        const A* row = src + (u * s.sH + kh * s.dH) * ld;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) acc[kh * K + kw] += g[u] * row[kw * s.dW];
      }
    }
  }
}

// Splits blockIdx.x into (plane group, tile row, tile column).
struct TilePos {
  int group, th, tw;
};

__device__ __forceinline__ TilePos tile_pos(int b, const Tile& t) {
  TilePos pos;
  pos.tw = b % t.tiles_w, b /= t.tiles_w;
  pos.th = b % t.tiles_h, pos.group = b / t.tiles_h;
  return pos;
}

// ---------------------------------------------------------------------------------------------
// Depthwise NCHW.

// Forward: a block's planes are input planes (n, c); the tile is loaded once and serves the m
// output channels c*m + j in turn.
template <typename T, int K, int S, int U>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, K>)
dw_nchw_forward(Dw s, Tile t, View32<const T> x, View32<const T> w, const T* __restrict__ bias,
                View32<T> y) {
  using A = Acc<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* tile = reinterpret_cast<A*>(smem);
  A* wts = tile + t.P * t.IHt * t.IWt;
  const int KH = kdim<K>(s.KH), KW = kdim<K>(s.KW), sh = sdim<S>(s.sH), sw = sdim<S>(s.sW);
  const TilePos pos = tile_pos(blockIdx.x, t);
  const int q0 = pos.group * t.P, Q = s.N * s.C;
  const int oh0 = pos.th * t.strips * U, ow0 = pos.tw * t.TW;
  load_tile(tile, t, x, oh0 * sh - s.pH, ow0 * sw - s.pW, s.H, s.W, [&](int p) -> const T* {
    const int q = q0 + p;
    return q < Q ? x.plane(q / s.C, q % s.C) : nullptr;
  });
  const Item it = tile_item(t);
  const int q = q0 + it.p;
  const bool active = it.active && q < Q;
  const int n = q / s.C, c = q % s.C, oh = oh0 + it.st * U, ow = ow0 + it.col;
  const A* src = tile + (it.p * t.IHt + it.st * U * sh) * t.IWt + it.col * sw;
  for (int j = 0; j < s.m; ++j) {
    __syncthreads();  // the tile is in; the previous channel's weights are used up
    load_weights(wts, t.P, KH, KW, w, [&](int p) {
      const int qp = q0 + p;
      return qp < Q ? qp % s.C * s.m + j : -1;
    });
    __syncthreads();
    if (active) {
      A acc[U] = {};
      strip_forward<A, K, S, U>(src, t.IWt, wts + it.p * KH * KW, s, acc);
      const int co = c * s.m + j;
      const A b = bias ? Num<T>::in(bias[co]) : A(0);
      T* out = y.plane(n, co);
      if (ow < s.OW) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (oh + u < s.OH) out[(oh + u) * y.sH + ow * y.sW] = Num<T>::out(acc[u] + b);
        }
      }
    }
  }
}

// Input gradient: a block's planes are gx planes (n, c), each the sum over j of gy plane
// (n, c*m + j) gathered through channel c*m + j's taps. At stride 1 that gather is a forward
// correlation with the flipped kernel, which strip_forward runs with shared row loads.
template <typename T, int K, int S, int U>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, K>)
dw_nchw_input_grad(Dw s, Tile t, View32<const T> gy, View32<const T> w,
                   const T* __restrict__ bias, View32<T> gx) {
  using A = Acc<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* tile = reinterpret_cast<A*>(smem);
  A* wts = tile + t.P * t.IHt * t.IWt;
  const int KH = kdim<K>(s.KH), KW = kdim<K>(s.KW), KK = KH * KW;
  const int sh = sdim<S>(s.sH), sw = sdim<S>(s.sW), dh = ddim<S>(s.dH), dw = ddim<S>(s.dW);
  const TilePos pos = tile_pos(blockIdx.x, t);
  const int q0 = pos.group * t.P, Q = s.N * s.C;
  const int h0 = pos.th * t.strips * U, w0 = pos.tw * t.TW;
  const int orow = floor_div(h0 + s.pH - (KH - 1) * dh, sh);
  const int ocol = floor_div(w0 + s.pW - (KW - 1) * dw, sw);
  const Item it = tile_item(t);
  const int q = q0 + it.p;
  const bool active = it.active && q < Q;
  const int n = q / s.C, c = q % s.C, h = h0 + it.st * U, wc = w0 + it.col;
  A acc[U] = {};
  for (int j = 0; j < s.m; ++j) {
    __syncthreads();  // the previous channel's tile and weights are used up
    load_tile(tile, t, gy, orow, ocol, s.OH, s.OW, [&](int p) -> const T* {
      const int qp = q0 + p;
      return qp < Q ? gy.plane(qp / s.C, qp % s.C * s.m + j) : nullptr;
    });
    load_weights(wts, t.P, KH, KW, w, [&](int p) {
      const int qp = q0 + p;
      return qp < Q ? qp % s.C * s.m + j : -1;
    });
    __syncthreads();
    if (active) {
      const A* wp = wts + it.p * KK;
      if constexpr (K > 0 && S == 1) {
        A flipped[K * K];
#pragma unroll
        for (int k = 0; k < K * K; ++k) flipped[k] = wp[K * K - 1 - k];
        strip_forward<A, K, 1, U>(tile + (it.p * t.IHt + it.st * U) * t.IWt + it.col, t.IWt,
                                  flipped, s, acc);
      } else {
        strip_gather<A, K, S, U>(tile + it.p * t.IHt * t.IWt, t.IWt, h, wc, orow, ocol, wp, s, acc);
      }
    }
  }
  if (active && wc < s.W) {
    const A b = bias ? Num<T>::in(bias[c]) : A(0);
    T* out = gx.plane(n, c);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (h + u < s.H) out[(h + u) * gx.sH + wc * gx.sW] = Num<T>::out(acc[u] + b);
    }
  }
}

// Weight gradient, stage one: block (co, chunk) sums gy(n, co) * x(n, co / m)-patches over the
// chunk's units (P images x a tile of rows and columns), each thread over its strips, then
// over the block in a fixed order, into partial[chunk][co][kh][kw].
template <typename T, int K, int S, int U>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, K>)
dw_nchw_weight_grad(Dw s, Tile t, int units_per_block, View32<const T> x, View32<const T> gy,
                    Acc<T>* __restrict__ partial) {
  using A = Acc<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* tile = reinterpret_cast<A*>(smem);
  const int sh = sdim<S>(s.sH), sw = sdim<S>(s.sW);
  const int co = blockIdx.x, c = co / s.m;
  const int units = (s.N + t.P - 1) / t.P * t.tiles_h * t.tiles_w;
  const int u0 = blockIdx.y * units_per_block, u1 = min(units, u0 + units_per_block);
  const Item it = tile_item(t);
  A acc[K * K] = {};
  for (int unit = u0; unit < u1; ++unit) {
    const TilePos pos = tile_pos(unit, t);
    const int n0 = pos.group * t.P, oh0 = pos.th * t.strips * U, ow0 = pos.tw * t.TW;
    __syncthreads();  // the previous unit's tile is used up
    load_tile(tile, t, x, oh0 * sh - s.pH, ow0 * sw - s.pW, s.H, s.W, [&](int p) -> const T* {
      return n0 + p < s.N ? x.plane(n0 + p, c) : nullptr;
    });
    __syncthreads();
    const int n = n0 + it.p;
    if (it.active && n < s.N) {
      const T* gp = gy.plane(n, co);
      const int oh = oh0 + it.st * U, ow = ow0 + it.col;
      A g[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        g[u] = ow < s.OW && oh + u < s.OH ? Num<T>::in(gp[(oh + u) * gy.sH + ow * gy.sW]) : A(0);
      }
      strip_weight_grad<A, K, S, U>(tile + (it.p * t.IHt + it.st * U * sh) * t.IWt + it.col * sw,
                                    t.IWt, g, s, acc);
    }
  }
  __shared__ A warps[kThreads / 32][K * K];
#pragma unroll
  for (int k = 0; k < K * K; ++k) {
    const A v = warp_sum(acc[k]);
    if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5][k] = v;
  }
  __syncthreads();
  for (int k = threadIdx.x; k < K * K; k += blockDim.x) {
    A sum = 0;
    for (int i = 0; i < int(blockDim.x >> 5); ++i) sum += warps[i][k];
    partial[(int64_t(blockIdx.y) * s.C * s.m + co) * (K * K) + k] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Depthwise NHWC. Blocks are (cvb x by) threads: threadIdx.x walks channel vectors, threadIdx.y
// output positions; blockIdx.y picks the block's channels.

// Forward with m == 1, and the stride-1 input gradient as the forward correlation of gy with the
// flipped kernel and padding K - 1 - p: each thread computes U consecutive output columns of V
// consecutive channels, loading each input vector of a row once. The block's taps sit in shared
// memory as [tap][channel].
template <typename T, int K, int S, int U, bool kInputGrad>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, K>)
dw_nhwc_direct(Dw s, View32<const T> src, View32<const T> w, const T* __restrict__ bias,
               View32<T> dst) {
  using A = Acc<T>;
  constexpr int V = kVec<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* wts = reinterpret_cast<A*>(smem);
  const int cw = blockDim.x * V, cbase = blockIdx.y * cw;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int i = tid; i < K * K * cw; i += blockDim.x * blockDim.y) {
    const int k = i / cw, c = cbase + i - k * cw, kk = kInputGrad ? K * K - 1 - k : k;
    wts[i] = c < s.C ? Num<T>::in(w.data[c * w.sN + kk / K * w.sH + kk % K * w.sW]) : A(0);
  }
  __syncthreads();
  const int Ho = kInputGrad ? s.H : s.OH, Wo = kInputGrad ? s.W : s.OW;  // written
  const int Hs = kInputGrad ? s.OH : s.H, Ws = kInputGrad ? s.OW : s.W;  // read
  const int ph = kInputGrad ? K - 1 - s.pH : s.pH, pw = kInputGrad ? K - 1 - s.pW : s.pW;
  const int wg = (Wo + U - 1) / U;
  const int gi = blockIdx.x * blockDim.y + threadIdx.y;
  const int c0 = cbase + threadIdx.x * V;
  if (c0 >= s.C || gi >= s.N * Ho * wg) return;
  const int cg = gi % wg, row = gi / wg % Ho, n = gi / wg / Ho;
  A acc[U][V] = {};
  const T* base = src.plane(n, c0);
  const int iw0 = cg * U * S - pw;
#pragma unroll
  for (int kh = 0; kh < K; ++kh) {
    const int ih = row * S - ph + kh;
    if (ih < 0 || ih >= Hs) continue;
    A xv[(U - 1) * S + K][V];
#pragma unroll
    for (int i = 0; i < (U - 1) * S + K; ++i) {
      const int iw = iw0 + i;
      if (iw >= 0 && iw < Ws) {
        load_vec<T, V>(base + ih * src.sH + iw * src.sW, xv[i]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) xv[i][v] = 0;
      }
    }
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const Vec<A, V> wv =
          *reinterpret_cast<const Vec<A, V>*>(wts + (kh * K + kw) * cw + threadIdx.x * V);
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int v = 0; v < V; ++v) acc[u][v] += xv[u * S + kw][v] * wv.v[v];
      }
    }
  }
  A b[V];
#pragma unroll
  for (int v = 0; v < V; ++v) b[v] = bias ? Num<T>::in(bias[c0 + v]) : A(0);
  T* out = dst.plane(n, c0) + row * dst.sH;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int ow = cg * U + u;
    if (ow >= Wo) break;
    A r[V];
#pragma unroll
    for (int v = 0; v < V; ++v) r[v] = acc[u][v] + b[v];
    store_vec<T, V>(out + ow * dst.sW, r);
  }
}

// One output position and V channels per thread, weights read from global memory: the forward
// conv for every size and multiplier, and the input gradient as a gather (taps whose stride
// division is exact), for stride 2 and every other size. V > 1 needs m == 1.
template <typename T, int K, int S, int V, bool kInputGrad>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, K>)
dw_nhwc_any(Dw s, View32<const T> src, View32<const T> w, const T* __restrict__ bias,
            View32<T> dst) {
  using A = Acc<T>;
  const int KH = kdim<K>(s.KH), KW = kdim<K>(s.KW);
  const int sh = sdim<S>(s.sH), sw = sdim<S>(s.sW), dh = ddim<S>(s.dH), dw = ddim<S>(s.dW);
  const int Cd = kInputGrad ? s.C : s.C * s.m, Ho = kInputGrad ? s.H : s.OH;
  const int Wo = kInputGrad ? s.W : s.OW;
  const int gi = blockIdx.x * blockDim.y + threadIdx.y;
  const int c0 = (blockIdx.y * blockDim.x + threadIdx.x) * V;
  if (c0 >= Cd || gi >= s.N * Ho * Wo) return;
  const int oc = gi % Wo, orow = gi / Wo % Ho, n = gi / Wo / Ho;
  A acc[V] = {};
  A xv[V];
  for (int kh = 0; kh < KH; ++kh) {
    int ih;
    if (kInputGrad) {
      const int th = orow + s.pH - kh * dh;
      if (th < 0) break;  // th only falls as kh grows
      if (th % sh != 0 || th / sh >= s.OH) continue;
      ih = th / sh;
    } else {
      ih = orow * sh - s.pH + kh * dh;
      if (ih < 0 || ih >= s.H) continue;
    }
    for (int kw = 0; kw < KW; ++kw) {
      int iw;
      if (kInputGrad) {
        const int tw = oc + s.pW - kw * dw;
        if (tw < 0) break;
        if (tw % sw != 0 || tw / sw >= s.OW) continue;
        iw = tw / sw;
      } else {
        iw = oc * sw - s.pW + kw * dw;
        if (iw < 0 || iw >= s.W) continue;
      }
      const T* at = src.plane(n, 0) + ih * src.sH + iw * src.sW;
      // Forward: input channel c0 / m feeds output c0. Input grad: gy channels c0*m + j feed c0.
      const int terms = kInputGrad ? s.m : 1;
      for (int j = 0; j < terms; ++j) {
        const int cs = kInputGrad ? c0 * s.m + j : c0 / s.m;
        const int cw = kInputGrad ? cs : c0;
        if constexpr (V > 1) {
          load_vec<T, V>(at + cs, xv);
        } else {
          xv[0] = Num<T>::in(at[cs * src.sC]);
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
          acc[v] += xv[v] * Num<T>::in(w.data[(cw + v) * w.sN + kh * w.sH + kw * w.sW]);
        }
      }
    }
  }
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] += bias ? Num<T>::in(bias[c0 + v]) : A(0);
  T* out = dst.plane(n, 0) + orow * dst.sH + oc * dst.sW;
  if constexpr (V > 1) {
    store_vec<T, V>(out + c0, acc);
  } else {
    out[c0 * dst.sC] = Num<T>::out(acc[0]);
  }
}

// Weight gradient, stage one: thread (co, row of threads) sums over its positions (U consecutive
// columns at a time, each input row loaded once) the KxK products of gy(co) and x(co / m); the
// block's rows are then added in order into partial[chunk][co][kh][kw].
template <typename T, int K, int S, int U>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, K>)
dw_nhwc_weight_grad(Dw s, int groups_per_block, View32<const T> x, View32<const T> gy,
                    Acc<T>* __restrict__ partial) {
  using A = Acc<T>;
  const int C_out = s.C * s.m, co = blockIdx.x * blockDim.x + threadIdx.x;
  const int wg = (s.OW + U - 1) / U;
  const int G = s.N * s.OH * wg, g0 = blockIdx.y * groups_per_block;
  const int g1 = min(G, g0 + groups_per_block);
  A acc[K * K] = {};
  if (co < C_out) {
    const int c = co / s.m;
    for (int gi = g0 + threadIdx.y; gi < g1; gi += blockDim.y) {
      const int cg = gi % wg, oh = gi / wg % s.OH, n = gi / wg / s.OH;
      const T* gp = gy.plane(n, co) + oh * gy.sH;
      const T* xp = x.plane(n, c);
      A g[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int ow = cg * U + u;
        g[u] = ow < s.OW ? Num<T>::in(gp[ow * gy.sW]) : A(0);
      }
      if constexpr (S > 0) {
#pragma unroll
        for (int kh = 0; kh < K; ++kh) {
          const int ih = oh * S - s.pH + kh;
          if (ih < 0 || ih >= s.H) continue;
          A xv[(U - 1) * S + K];
#pragma unroll
          for (int i = 0; i < (U - 1) * S + K; ++i) {
            const int iw = cg * U * S - s.pW + i;
            xv[i] = iw >= 0 && iw < s.W ? Num<T>::in(xp[ih * x.sH + iw * x.sW]) : A(0);
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
#pragma unroll
            for (int kw = 0; kw < K; ++kw) acc[kh * K + kw] += g[u] * xv[u * S + kw];
          }
        }
      } else {
        static_assert(S > 0 || U == 1, "runtime strides take one column at a time");
#pragma unroll
        for (int kh = 0; kh < K; ++kh) {
          const int ih = oh * s.sH - s.pH + kh * s.dH;
          if (ih < 0 || ih >= s.H) continue;
#pragma unroll
          for (int kw = 0; kw < K; ++kw) {
            const int iw = cg * s.sW - s.pW + kw * s.dW;
            if (iw >= 0 && iw < s.W) acc[kh * K + kw] += g[0] * Num<T>::in(xp[ih * x.sH + iw * x.sW]);
          }
        }
      }
    }
  }
  __shared__ A rows[kThreads];
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
  for (int k = 0; k < K * K; ++k) {
    rows[tid] = acc[k];
    __syncthreads();
    if (threadIdx.y == 0 && co < C_out) {
      A sum = rows[threadIdx.x];
      for (int y = 1; y < int(blockDim.y); ++y) sum += rows[y * blockDim.x + threadIdx.x];
      partial[(int64_t(blockIdx.y) * C_out + co) * (K * K) + k] = sum;
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: plans and launches.

template <int N> using Int = std::integral_constant<int, N>;

int next_pow2(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Strides are non-negative (torch's), so this is the view's largest element offset.
template <typename T>
int64_t max_offset(View4<T> v, int64_t N, int64_t C, int64_t H, int64_t W) {
  return (N - 1) * v.sN + (C - 1) * v.sC + (H - 1) * v.sH + (W - 1) * v.sW;
}

template <typename T>
View32<T> view32(View4<T> v) {
  return {v.data, int(v.sN), int(v.sC), int(v.sH), int(v.sW)};
}

// The depthwise kernels take groups == C_in (one input channel per group) with every offset and
// index in 32 bits; x is the (C_in, H, W) side, y the (C_out, OH, OW) side.
template <typename X, typename Y>
bool depthwise(const ConvGeometry& g, View4<X> x, View4<Y> y) {
  return g.groups == g.C_in && g.N * g.C_in * g.H * g.W < kI32Limit &&
         g.N * g.C_out * g.OH * g.OW < kI32Limit &&
         max_offset(x, g.N, g.C_in, g.H, g.W) < kI32Limit &&
         max_offset(y, g.N, g.C_out, g.OH, g.OW) < kI32Limit;
}

Dw dw_shape(const ConvGeometry& g) {
  return {int(g.N),  int(g.C_in), int(g.C_out / g.C_in), int(g.H),  int(g.W),
          int(g.OH), int(g.OW),   int(g.KH),             int(g.KW), int(g.sH),
          int(g.sW), int(g.pH),   int(g.pW),             int(g.dH), int(g.dW)};
}

// Channels innermost on both sides (and more than one channel): the NHWC kernels.
template <typename A, typename B>
bool channels_last(View4<A> a, View4<B> b, int64_t C) {
  return C > 1 && a.sC == 1 && b.sC == 1;
}

// Vector accesses of V channels need V-aligned data and strides, and C a multiple of V.
template <typename T>
bool vector_ok(View4<T> v, int V, int64_t C) {
  return reinterpret_cast<uintptr_t>(v.data) % (V * sizeof(*v.data)) == 0 && v.sN % V == 0 &&
         v.sH % V == 0 && v.sW % V == 0 && C % V == 0;
}

// Runs f(Int<K>, Int<S>) for a 3x3, 5x5 or 7x7 kernel at stride 1 or 2 and dilation 1, which are
// compiled in, and f(Int<0>, Int<0>) (runtime sizes) for the rest. Double takes the runtime
// kernels only: speed matters less there than compile time.
template <typename T, typename F>
void with_fixed_size(const ConvGeometry& g, F&& f) {
  if constexpr (!std::is_same_v<T, double>) {
    const bool fixed = g.KH == g.KW && g.sH == g.sW && g.dH == 1 && g.dW == 1;
    if (fixed && g.sH == 1) {
      switch (g.KH) {
        case 3: return f(Int<3>{}, Int<1>{});
        case 5: return f(Int<5>{}, Int<1>{});
        case 7: return f(Int<7>{}, Int<1>{});
      }
    }
    if (fixed && g.sH == 2) {
      switch (g.KH) {
        case 3: return f(Int<3>{}, Int<2>{});
        case 5: return f(Int<5>{}, Int<2>{});
        case 7: return f(Int<7>{}, Int<2>{});
      }
    }
  }
  f(Int<0>{}, Int<0>{});
}

// The depthwise weight gradient keeps K*K sums per thread, so K is always compiled in: square
// 3x3, 5x5 or 7x7, at stride 1 or 2 with dilation 1 (S), or at any stride and dilation (S = 0).
// Returns false, calling nothing, for other kernels and for double (the general kernels take
// those).
template <typename T, typename F>
bool with_weight_grad_size(const ConvGeometry& g, F&& f) {
  if constexpr (std::is_same_v<T, double>) {
    return false;
  } else {
    if (g.KH != g.KW || (g.KH != 3 && g.KH != 5 && g.KH != 7)) return false;
    const bool unit = g.sH == g.sW && g.dH == 1 && g.dW == 1;
    const int S = unit && (g.sH == 1 || g.sH == 2) ? int(g.sH) : 0;
    auto with_s = [&](auto k) {
      if (S == 1) return f(k, Int<1>{});
      if (S == 2) return f(k, Int<2>{});
      f(k, Int<0>{});
    };
    if (g.KH == 3) with_s(Int<3>{});
    if (g.KH == 5) with_s(Int<5>{});
    if (g.KH == 7) with_s(Int<7>{});
    return true;
  }
}

// Rows per thread of the depthwise kernels.
template <int K> constexpr int kForwardRows = K == 7 ? 8 : 4;  // NCHW forward
constexpr int kInputGradRows = 4;                               // NCHW input gradient
// NCHW weight gradient: rows share loads only at a compiled-in stride.
template <int S> constexpr int kWeightGradRows = S > 0 ? 4 : 1;
template <int S> constexpr int kNhwcCols = S == 1 ? 4 : S == 2 ? 2 : 1;  // NHWC: columns

// The NCHW tile for planes of out_h x out_w outputs: a block's threads (at most kThreads) each
// take one strip of U rows of one column; small planes share a block. Halved until its shared
// memory fits. input_grad: the tile is of gy, gathered into a gx tile; otherwise of x, for an
// output tile. Returns false when nothing fits.
bool plan_tile(Tile& t, int64_t planes, int64_t out_h, int64_t out_w, int U,
               const ConvGeometry& g, bool input_grad, int64_t weights_per_plane,
               size_t acc_size) {
  int twp = std::min(next_pow2(out_w), 64);
  int64_t strip_cap = INT32_MAX, plane_cap = INT32_MAX;
  const int64_t nst = ceil_div(out_h, U);
  for (;;) {
    const int64_t slots = kThreads / twp;
    int64_t strips = std::min({nst, slots, strip_cap});
    const int64_t tiles_h = ceil_div(nst, strips);
    strips = ceil_div(nst, tiles_h);
    const int64_t P =
        strips == nst ? std::max<int64_t>(1, std::min({slots / nst, plane_cap, planes})) : 1;
    const int64_t TW = std::min<int64_t>(out_w, twp), rows = strips * U;
    const int64_t ih = input_grad ? (rows - 1 + (g.KH - 1) * g.dH) / g.sH + 2
                                  : (rows - 1) * g.sH + (g.KH - 1) * g.dH + 1;
    const int64_t iw = input_grad ? (TW - 1 + (g.KW - 1) * g.dW) / g.sW + 2
                                  : (TW - 1) * g.sW + (g.KW - 1) * g.dW + 1;
    if (P * (ih * iw + weights_per_plane) * int64_t(acc_size) <= int64_t(kMaxSmem)) {
      t.P = int(P), t.strips = int(strips), t.TW = int(TW), t.IHt = int(ih), t.IWt = int(iw);
      t.tiles_h = int(tiles_h), t.tiles_w = int(ceil_div(out_w, TW));
      t.col_shift = 0;
      while ((1 << t.col_shift) < twp) ++t.col_shift;
      t.threads = int(ceil_div(P * strips * twp, 32) * 32);
      return true;
    }
    if (P > 1) {
      plane_cap = P / 2;
    } else if (strips > 1) {
      strip_cap = strips / 2;
    } else if (twp > 1) {
      twp /= 2;
    } else {
      return false;
    }
  }
}

size_t tile_smem(const Tile& t, int64_t weights_per_plane, size_t acc_size) {
  return size_t(t.P) * (size_t(t.IHt) * t.IWt + weights_per_plane) * acc_size;
}

// An NHWC block: at most 32 channel vectors (split evenly over the channel tiles) by as many
// positions as fill kThreads.
dim3 nhwc_block(int64_t vectors) {
  const int64_t cvb = ceil_div(vectors, ceil_div(vectors, 32));
  return dim3(unsigned(cvb), unsigned(kThreads / cvb));
}

// A two-stage reduction's split of R terms: chunks (blocks along the reduction) of len terms, so
// that row_blocks x chunks reaches kReductionBlocks while each block keeps min_len terms.
struct Split {
  int64_t chunks, len;
};

Split split_reduction(int64_t R, int64_t row_blocks, int64_t min_len) {
  int64_t chunks = ceil_div(kReductionBlocks, std::max<int64_t>(1, row_blocks));
  chunks = std::min({chunks, std::max<int64_t>(1, ceil_div(R, min_len)), kMaxGridY});
  const int64_t len = std::max<int64_t>(1, ceil_div(R, chunks));
  return {ceil_div(R, len), len};
}

// --- forward and input gradient ---------------------------------------------------------------

template <typename T>
bool general_fits_i32(const ConvGeometry& g, View4<const T> x, View4<const T> w,
                      View4<const T> y) {
  return g.N * g.C_in * g.H * g.W < kI32Limit && g.N * g.C_out * g.OH * g.OW < kI32Limit &&
         g.C_out * g.C_in_g() * g.KH * g.KW < kI32Limit &&
         max_offset(x, g.N, g.C_in, g.H, g.W) < kI32Limit &&
         max_offset(y, g.N, g.C_out, g.OH, g.OW) < kI32Limit &&
         max_offset(w, g.C_out, g.C_in_g(), g.KH, g.KW) < kI32Limit;
}

template <typename T, typename I>
void general_forward(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                     View4<T> y, cudaStream_t stream) {
  const int64_t total = g.N * g.C_out * g.OH * g.OW;
  conv_forward_general<T, I><<<unsigned(ceil_div(total, kThreads)), kThreads, 0, stream>>>(
      geo<I>(g), strided<I>(x), strided<I>(w), bias, strided<I>(y), y.sC == 1 && g.C_out > 1);
}

template <typename T, typename I>
void general_input_grad(const ConvGeometry& g, View4<const T> gy, View4<const T> w,
                        const T* bias, View4<T> gx, cudaStream_t stream) {
  const int64_t total = g.N * g.C_in * g.H * g.W;
  conv_input_grad_general<T, I><<<unsigned(ceil_div(total, kThreads)), kThreads, 0, stream>>>(
      geo<I>(g), strided<I>(gy), strided<I>(w), bias, strided<I>(gx), gx.sC == 1 && g.C_in > 1);
}

// NHWC depthwise forward or input gradient (out: y or gx, with Cd channels and Ho x Wo
// positions; src: x or gy).
template <typename T, bool kInputGrad>
void dw_nhwc(const ConvGeometry& g, View4<const T> src, View4<const T> w, const T* bias,
             View4<T> out, int64_t Cd, int64_t Ho, int64_t Wo, cudaStream_t stream) {
  constexpr int V = kVec<T>;
  const Dw s = dw_shape(g);
  const bool vec = s.m == 1 && vector_ok(src, V, Cd) && vector_ok(out, V, Cd);
  with_fixed_size<T>(g, [&](auto k, auto st) {
    constexpr int K = decltype(k)::value, S = decltype(st)::value;
    constexpr bool direct = K > 0 && (S == 1 || !kInputGrad);
    if constexpr (direct) {
      if (vec) {
        constexpr int U = kNhwcCols<S>;
        const dim3 block = nhwc_block(Cd / V);
        const dim3 grid(unsigned(ceil_div(g.N * Ho * ceil_div(Wo, U), block.y)),
                        unsigned(ceil_div(Cd / V, block.x)));
        const size_t smem = size_t(K) * K * block.x * V * sizeof(Acc<T>);
        dw_nhwc_direct<T, K, S, U, kInputGrad><<<grid, block, smem, stream>>>(
            s, view32(src), view32(w), bias, view32(out));
        return;
      }
    }
    // One position per thread: input gradients keep K and S compiled in (strided gathers, and
    // stride 1 with a channel multiplier or unaligned channels); the forward's rarer fallbacks
    // loop at run time.
    constexpr int KA = kInputGrad ? K : 0, SA = kInputGrad ? S : 0;
    auto run = [&](auto v) {
      constexpr int VV = decltype(v)::value;
      const dim3 block = nhwc_block(Cd / VV);
      const dim3 grid(unsigned(ceil_div(g.N * Ho * Wo, block.y)),
                      unsigned(ceil_div(Cd / VV, block.x)));
      dw_nhwc_any<T, KA, SA, VV, kInputGrad><<<grid, block, 0, stream>>>(
          s, view32(src), view32(w), bias, view32(out));
    };
    if constexpr (!direct) {
      if (vec) return run(Int<V>{});
    }
    run(Int<1>{});
  });
}

template <typename T>
bool dw_forward(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                View4<T> y, cudaStream_t stream) {
  if (channels_last(x, y, g.C_in)) {
    dw_nhwc<T, false>(g, x, w, bias, y, g.C_out, g.OH, g.OW, stream);
    return true;
  }
  bool planned = false;
  with_fixed_size<T>(g, [&](auto k, auto st) {
    constexpr int K = decltype(k)::value, S = decltype(st)::value, U = kForwardRows<K>;
    const int64_t taps = g.KH * g.KW;
    Tile t;
    planned = plan_tile(t, g.N * g.C_in, g.OH, g.OW, U, g, false, taps, sizeof(Acc<T>));
    if (!planned) return;
    const int64_t blocks = ceil_div(g.N * g.C_in, t.P) * t.tiles_h * t.tiles_w;
    dw_nchw_forward<T, K, S, U><<<unsigned(blocks), t.threads, tile_smem(t, taps, sizeof(Acc<T>)),
                                  stream>>>(dw_shape(g), t, view32(x), view32(w), bias, view32(y));
  });
  return planned;
}

template <typename T>
bool dw_input_grad(const ConvGeometry& g, View4<const T> gy, View4<const T> w, const T* bias,
                   View4<T> gx, cudaStream_t stream) {
  if (channels_last(gy, gx, g.C_in)) {
    dw_nhwc<T, true>(g, gy, w, bias, gx, g.C_in, g.H, g.W, stream);
    return true;
  }
  bool planned = false;
  with_fixed_size<T>(g, [&](auto k, auto st) {
    constexpr int K = decltype(k)::value, S = decltype(st)::value;
    const int64_t taps = g.KH * g.KW;
    Tile t;
    planned = plan_tile(t, g.N * g.C_in, g.H, g.W, kInputGradRows, g, true, taps, sizeof(Acc<T>));
    if (!planned) return;
    const int64_t blocks = ceil_div(g.N * g.C_in, t.P) * t.tiles_h * t.tiles_w;
    dw_nchw_input_grad<T, K, S, kInputGradRows><<<unsigned(blocks), t.threads,
                                         tile_smem(t, taps, sizeof(Acc<T>)), stream>>>(
        dw_shape(g), t, view32(gy), view32(w), bias, view32(gx));
  });
  return planned;
}

// --- weight and bias gradients ----------------------------------------------------------------

// How a weight (or bias) gradient runs: which stage-one kernel, its split, and the partial sums
// it leaves (chunks x E in the accumulator type) for sum_partials.
struct WeightGradPlan {
  enum Path { kEmpty, kRows, kChannels, kDwNchw, kDwNhwc, kIgemm } path = kEmpty;
  bool i32 = false;  // general kernels: int32 offsets
  Split split{0, 1};
  Tile tile{};
  dim3 block;
  int64_t E = 0;  // results

  size_t bytes(size_t acc_size) const { return size_t(split.chunks) * size_t(E) * acc_size; }
};

// The bias gradient as the weight gradient of a 1x1 conv with one channel per group.
ConvGeometry bias_geometry(int64_t N, int64_t C, int64_t H, int64_t W) {
  return {N, C, C, C, H, W, H, W, 1, 1, 1, 1, 0, 0, 1, 1};
}

template <typename T>
WeightGradPlan plan_general_weight_grad(const ConvGeometry& g, View4<const T> x,
                                        View4<const T> gy) {
  WeightGradPlan plan;
  plan.E = g.C_out * g.C_in_g() * g.KH * g.KW;
  const int64_t R = g.N * g.OH * g.OW;
  if (R == 0) return plan;
  const int64_t taps = g.C_in_g() * g.KH * g.KW;
  const bool channels = gy.sC == 1 && g.C_out > 1;
  plan.path = channels ? WeightGradPlan::kChannels : WeightGradPlan::kRows;
  plan.split = channels ? split_reduction(R, ceil_div(g.C_out, 32) * taps, 8 * 16)
                        : split_reduction(R, plan.E, kThreads * 8);
  plan.i32 = R < kI32Limit && plan.split.chunks * plan.E < kI32Limit &&
             g.N * g.C_in * g.H * g.W < kI32Limit &&
             max_offset(x, g.N, g.C_in, g.H, g.W) < kI32Limit &&
             max_offset(gy, g.N, g.C_out, g.OH, g.OW) < kI32Limit;
  return plan;
}

template <typename T>
WeightGradPlan plan_weight_grad(const ConvGeometry& g, View4<const T> x, View4<const T> gy) {
  WeightGradPlan plan = plan_general_weight_grad(g, x, gy);
  if (plan.path == WeightGradPlan::kEmpty) return plan;
  if (!depthwise(g, x, gy)) {
    if (const int64_t chunks = igemm_weight_grad_chunks(g, x, gy)) {
      plan.path = WeightGradPlan::kIgemm;
      plan.split = {chunks, 0};
    }
    return plan;
  }
  const bool nhwc = channels_last(x, gy, g.C_in);
  with_weight_grad_size<T>(g, [&](auto, auto st) {
    constexpr int S = decltype(st)::value;
    if (nhwc) {
      constexpr int U = kNhwcCols<S>;
      const dim3 block = nhwc_block(g.C_out);
      plan.path = WeightGradPlan::kDwNhwc;
      plan.block = block;
      plan.split = split_reduction(g.N * g.OH * ceil_div(g.OW, U), ceil_div(g.C_out, block.x),
                                   int64_t(block.y) * 4);
      return;
    }
    Tile t;
    if (!plan_tile(t, g.N, g.OH, g.OW, kWeightGradRows<S>, g, false, 0, sizeof(Acc<T>))) return;
    plan.path = WeightGradPlan::kDwNchw;
    plan.tile = t;
    plan.split = split_reduction(ceil_div(g.N, t.P) * t.tiles_h * t.tiles_w, g.C_out, 1);
  });
  return plan;
}

template <typename T, bool kBias>
void general_weight_grad(const WeightGradPlan& plan, const ConvGeometry& g, View4<const T> x,
                         View4<const T> gy, Acc<T>* partial, cudaStream_t stream) {
  auto run = [&](auto index) {
    using I = decltype(index);
    const unsigned chunks = unsigned(plan.split.chunks);
    if (plan.path == WeightGradPlan::kChannels) {
      const int64_t taps = g.C_in_g() * g.KH * g.KW;
      weight_grad_channels<T, I, kBias>
          <<<dim3(unsigned(ceil_div(g.C_out, 32) * taps), chunks), dim3(32, 8), 0, stream>>>(
              geo<I>(g), strided<I>(x), strided<I>(gy), I(plan.split.len), partial);
    } else {
      weight_grad_rows<T, I, kBias><<<dim3(unsigned(plan.E), chunks), kThreads, 0, stream>>>(
          geo<I>(g), strided<I>(x), strided<I>(gy), I(plan.split.len), partial);
    }
  };
  if (plan.i32) {
    run(int32_t{});
  } else {
    run(int64_t{});
  }
}

template <typename T>
void dw_weight_grad(const WeightGradPlan& plan, const ConvGeometry& g, View4<const T> x,
                    View4<const T> gy, Acc<T>* partial, cudaStream_t stream) {
  const Dw s = dw_shape(g);
  const unsigned chunks = unsigned(plan.split.chunks);
  with_weight_grad_size<T>(g, [&](auto k, auto st) {
    constexpr int K = decltype(k)::value, S = decltype(st)::value;
    if (plan.path == WeightGradPlan::kDwNhwc) {
      const dim3 grid(unsigned(ceil_div(g.C_out, plan.block.x)), chunks);
      dw_nhwc_weight_grad<T, K, S, kNhwcCols<S>><<<grid, plan.block, 0, stream>>>(
          s, int(plan.split.len), view32(x), view32(gy), partial);
    } else {
      const Tile& t = plan.tile;
      dw_nchw_weight_grad<T, K, S, kWeightGradRows<S>>
          <<<dim3(unsigned(g.C_out), chunks), t.threads, tile_smem(t, 0, sizeof(Acc<T>)),
             stream>>>(
          s, t, int(plan.split.len), view32(x), view32(gy), partial);
    }
  });
}

}  // namespace

// --- entry points -------------------------------------------------------------------------------

template <typename T>
cudaError_t conv_forward(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                         View4<T> y, bool tf32, cudaStream_t stream) {
  if (depthwise(g, x, y) ? dw_forward(g, x, w, bias, y, stream)
                         : igemm_forward(g, x, w, bias, y, tf32, stream)) {
    return cudaGetLastError();
  }
  if (general_fits_i32(g, x, w, View4<const T>{y.data, y.sN, y.sC, y.sH, y.sW})) {
    general_forward<T, int32_t>(g, x, w, bias, y, stream);
  } else {
    general_forward<T, int64_t>(g, x, w, bias, y, stream);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t conv_input_grad(const ConvGeometry& g, View4<const T> gy, View4<const T> w,
                            const T* bias, View4<T> gx, bool tf32, cudaStream_t stream) {
  if (depthwise(g, gx, gy) ? dw_input_grad(g, gy, w, bias, gx, stream)
                           : igemm_input_grad(g, gy, w, bias, gx, tf32, stream)) {
    return cudaGetLastError();
  }
  if (general_fits_i32(g, View4<const T>{gx.data, gx.sN, gx.sC, gx.sH, gx.sW}, w, gy)) {
    general_input_grad<T, int32_t>(g, gy, w, bias, gx, stream);
  } else {
    general_input_grad<T, int64_t>(g, gy, w, bias, gx, stream);
  }
  return cudaGetLastError();
}

template <typename T>
size_t conv_weight_grad_workspace(const ConvGeometry& g, View4<const T> x, View4<const T> gy) {
  return plan_weight_grad(g, x, gy).bytes(sizeof(Acc<T>));
}

template <typename T>
cudaError_t conv_weight_grad(const ConvGeometry& g, View4<const T> x, View4<const T> gy,
                             View4<T> gw, void* workspace, bool tf32, cudaStream_t stream) {
  const WeightGradPlan plan = plan_weight_grad(g, x, gy);
  auto* partial = static_cast<Acc<T>*>(workspace);
  if (plan.path == WeightGradPlan::kIgemm) {
    igemm_weight_grad(g, x, gy, plan.split.chunks, partial, tf32, stream);
  } else if (plan.path == WeightGradPlan::kDwNchw || plan.path == WeightGradPlan::kDwNhwc) {
    dw_weight_grad(plan, g, x, gy, partial, stream);
  } else if (plan.path != WeightGradPlan::kEmpty) {
    general_weight_grad<T, false>(plan, g, x, gy, partial, stream);
  }
  sum_partials<T><<<unsigned(ceil_div(plan.E, kThreads)), kThreads, 0, stream>>>(
      partial, plan.split.chunks, plan.E, g.C_in_g(), g.KH, g.KW, gw);
  return cudaGetLastError();
}

template <typename T>
size_t conv_bias_grad_workspace(View4<const T> gy, int64_t N, int64_t C, int64_t H, int64_t W) {
  return plan_general_weight_grad(bias_geometry(N, C, H, W), gy, gy).bytes(sizeof(Acc<T>));
}

template <typename T>
cudaError_t conv_bias_grad(View4<const T> gy, int64_t N, int64_t C, int64_t H, int64_t W, T* gb,
                           void* workspace, cudaStream_t stream) {
  const ConvGeometry g = bias_geometry(N, C, H, W);
  const WeightGradPlan plan = plan_general_weight_grad(g, gy, gy);
  auto* partial = static_cast<Acc<T>*>(workspace);
  if (plan.path != WeightGradPlan::kEmpty) {
    general_weight_grad<T, true>(plan, g, gy, gy, partial, stream);
  }
  sum_partials<T><<<unsigned(ceil_div(C, kThreads)), kThreads, 0, stream>>>(
      partial, plan.split.chunks, C, 1, 1, 1, View4<T>{gb, 1, 0, 0, 0});
  return cudaGetLastError();
}

#define CONVEXT_CONV_KERNELS(T)                                                                  \
  template cudaError_t conv_forward<T>(const ConvGeometry&, View4<const T>, View4<const T>,     \
                                       const T*, View4<T>, bool, cudaStream_t);                  \
  template cudaError_t conv_input_grad<T>(const ConvGeometry&, View4<const T>, View4<const T>,  \
                                          const T*, View4<T>, bool, cudaStream_t);               \
  template size_t conv_weight_grad_workspace<T>(const ConvGeometry&, View4<const T>,             \
                                                View4<const T>);                                 \
  template cudaError_t conv_weight_grad<T>(const ConvGeometry&, View4<const T>, View4<const T>, \
                                           View4<T>, void*, bool, cudaStream_t);                 \
  template size_t conv_bias_grad_workspace<T>(View4<const T>, int64_t, int64_t, int64_t,         \
                                              int64_t);                                          \
  template cudaError_t conv_bias_grad<T>(View4<const T>, int64_t, int64_t, int64_t, int64_t, T*, \
                                         void*, cudaStream_t);

CONVEXT_CONV_KERNELS(float)
CONVEXT_CONV_KERNELS(double)
CONVEXT_CONV_KERNELS(__half)
CONVEXT_CONV_KERNELS(__nv_bfloat16)

}  // namespace convext::cuda
