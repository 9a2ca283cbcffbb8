// Implicit-GEMM convolutions (interface: conv_igemm.h).
//
// The forward GEMM y[m][n] = sum over k of A[m][k] * B[n][k]: m = (n, oh, ow) output positions,
// n = output channels of a group (blockIdx.z), k = (kh, kw, c) taps x input channels, channels
// fastest. A block computes a kBM x kBN tile of y. Its operands go through shared memory in
// stages of 64 bytes of k per row (32 halves, 16 floats, 8 doubles), three buffers: while one
// stage is multiplied, cp.async fills the next two. A row of a stage is four 16-byte chunks; a chunk is
// copied with one cp.async (zero-filled outside the input: padding, tails) when its elements are
// contiguous and aligned in global memory (channels innermost, a multiple of 16 bytes of them
// per group: NHWC), else gathered element by element (NCHW, odd channel counts: slower, and the
// same tile). Rows are padded by 16 bytes, so the fragment loads below hit 32 distinct banks.
//
// The multiply: half and bfloat16 on tensor cores (mma.sync m16n8k16, float accumulators), float
// on TF32 tensor cores (m16n8k8) where torch allows TF32 for convolutions, otherwise (and double)
// register-tiled FMA, exact in the type. 8 warps; with mma.sync each warp owns a 32 x 32 tile of
// 2 x 4 m16n8 accumulators. Fragments come from shared memory in the layouts of the PTX ISA's
// mma.sync fragment tables, through ldmatrix (transposing, from the weight gradient's k-major
// tiles of halves), or 32-bit loads (the weight gradient in TF32).
//
// The weight gradient is the GEMM gw[co][(kh, kw, ci)] = sum over positions p of gy[p][co] *
// x-patch[p][(kh, kw, ci)], split along p into a fixed number of chunks (sizes only): each
// chunk's partial sums go to a workspace that the caller adds up in chunk order, so the result
// is the same bits on every run. Its stages are stored k-major (one row per position),
// the layout in which NHWC tensors are contiguous along m and n.
//
// Every sum runs in a fixed order (k ascending within a tile, mma.sync's own fixed order): no
// atomics. Offsets are int32: the host takes these kernels only where every offset fits.
#include "cuda/conv_igemm.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <initializer_list>
#include <type_traits>

namespace convext::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowBytes = 64;                    // k bytes per stage row
constexpr int kLdBytes = kRowBytes + 16;         // padded row
constexpr int kLdWords = kLdBytes / 4;           // 20: rows g = 0..7 start in banks 0, 20, 8, ...
constexpr int kBM = 128, kBN = 64;               // forward tile
constexpr int kStageBytes = (kBM + kBN) * kLdBytes;
// Stages in flight: three of the forward's fit the 48 KiB of static shared memory.
constexpr int kStages = 3;
// Weight gradient tile: kWM output channels x kWN (tap, channel) columns, kBK positions a stage.
constexpr int kWM = 64, kWN = 128;
constexpr int64_t kI32Limit = (int64_t(1) << 31) - (int64_t(1) << 20);
// An offset that reads zero (padding, tails). Not -1: the input gradient reads the weights
// through negative strides.
constexpr int kZero = INT32_MIN;

template <typename T> constexpr int kBK = kRowBytes / int(sizeof(T));  // k per stage
template <typename T> constexpr int kV = 16 / int(sizeof(T));           // elements per chunk

// Raw element bits: the loaders move values without converting them (zero bits are +0.0).
template <int B> struct BitsOf;
template <> struct BitsOf<2> { using type = uint16_t; };
template <> struct BitsOf<4> { using type = uint32_t; };
template <> struct BitsOf<8> { using type = uint64_t; };
template <typename T> using Bits = typename BitsOf<sizeof(T)>::type;

struct alignas(16) Chunk {
  uint32_t w[4];
};

// The forward GEMM of a convolution, in int32. Rows m = (n, oh, ow) of Ho x Wo output planes;
// k = (kh * KW + kw) * Ck + c over the Ck source channels of a group; Cn output channels a group.
struct Igemm {
  int M, K, Cn, Ck, HWo, Wo, Hs, Ws, KH, KW, sH, sW, pH, pW, dH, dW;
};

// An index k = (kh * KW + kw) * C + c over taps and C channels (the forward's reduction, the
// weight gradient's columns) as its parts, which a thread advances from stage to stage (and
// element to element) without dividing; kh >= KH past the end.
struct KPos {
  int c, kh, kw;
};

__host__ __device__ inline KPos kpos(int k, int C, int KW) {
  const int tap = k / C;
  return {k - tap * C, tap / KW, tap % KW};
}

__host__ __device__ inline void advance(KPos& p, int by, int C, int KW) {
  p.c += by;
  while (p.c >= C) {
    p.c -= C;
    if (++p.kw == KW) p.kw = 0, ++p.kh;
  }
}

// The operands as element strides: x gathered (N, C, H, W); w read at (group, column o, channel
// c, kh, kw), which lets the input gradient read the forward weight transposed and flipped; y
// written (N, C, H, W). x_vec, w_vec: 16-byte chunks along c are contiguous and aligned.
template <typename T>
struct Operands {
  const T* x;
  int xN, xC, xH, xW;
  const T* w;
  int wG, wO, wC, wH, wW;
  T* y;
  int yN, yC, yH, yW;
  const T* bias;
  bool x_vec, w_vec;
};

// A row of A: where its patch starts. valid false for rows past M (read as zeros).
struct RowPos {
  int base, ih0, iw0;
  bool valid;
};

template <typename T>
__host__ __device__ inline RowPos row_pos(const Igemm& s, const Operands<T>& op, int group, int m) {
  RowPos r{0, 0, 0, m < s.M};
  if (!r.valid) return r;
  const int n = m / s.HWo, hw = m - n * s.HWo, oh = hw / s.Wo, ow = hw - oh * s.Wo;
  r.base = n * op.xN + group * s.Ck * op.xC;
  r.ih0 = oh * s.sH - s.pH;
  r.iw0 = ow * s.sW - s.pW;
  return r;
}

// Offset of A[m][k] in x, or kZero (padding, k past K, row past M).
template <typename T>
__host__ __device__ inline int a_offset(const Igemm& s, const Operands<T>& op, const RowPos& r,
                                        const KPos& k) {
  if (!r.valid || k.kh >= s.KH) return kZero;
  const int ih = r.ih0 + k.kh * s.dH, iw = r.iw0 + k.kw * s.dW;
  if (ih < 0 || ih >= s.Hs || iw < 0 || iw >= s.Ws) return kZero;
  return r.base + k.c * op.xC + ih * op.xH + iw * op.xW;
}

// Offset of B[o][k] (column o of the group's Cn) in w, or kZero past the edges.
template <typename T>
__host__ __device__ inline int b_offset(const Igemm& s, const Operands<T>& op, int group, int o,
                                        const KPos& k) {
  if (o >= s.Cn || k.kh >= s.KH) return kZero;
  return group * op.wG + o * op.wO + k.c * op.wC + k.kh * op.wH + k.kw * op.wW;
}

// Offset of y's row m (without the channel), or kZero past M.
template <typename T>
__host__ __device__ inline int y_row(const Igemm& s, const Operands<T>& op, int m) {
  if (m >= s.M) return kZero;
  const int n = m / s.HWo, hw = m - n * s.HWo, oh = hw / s.Wo, ow = hw - oh * s.Wo;
  return n * op.yN + oh * op.yH + ow * op.yW;
}

// --- mma.sync fragments ------------------------------------------------------------------------
// Tiles in shared memory are row-major with kLdWords words a row, k along the row, 32-bit words
// of k (two halves, or one float). For the k-step ks (16 halves or 8 floats = 8 words), lane
// (g = lane / 4, t = lane % 4) holds:
//   A (16 x k-step, rows row0..): a[i] = word (row0 + g + 8 * (i & 1), ks * 8 + t + 4 * (i >> 1))
//   B (8 columns x k-step):       b[i] = word (col0 + g, ks * 8 + t + 4 * i)
//   C (16 x 8):                   c[r] at (row g + 8 * (r >> 1), column 2 * t + (r & 1))
// which are the PTX ISA's layouts for m16n8k16 (f16/bf16 pairs along k) and m16n8k8 (tf32).
// ldmatrix.x4 loads them: it reads four matrices of 8 rows x 16 bytes (4 words), lane l giving
// the address of row l % 8 of matrix l / 8, and hands lane l word (l / 4, l % 4) of matrix j in
// its register j, which is the fragment's word (g, t) for any element size.

// A's four matrices are a[0..3]: rows row0 + 8 * (j & 1) + 0..7, words ks * 8 + 4 * (j >> 1).
__host__ __device__ inline int ldm_a(int lane, int row0, int ks) {
  const int j = lane >> 3;
  return (row0 + 8 * (j & 1) + (lane & 7)) * kLdWords + ks * 8 + 4 * (j >> 1);
}
// B's for two 8-column tiles col0 and col0 + 8: b[0], b[1] of the first, then of the second.
__host__ __device__ inline int ldm_b(int lane, int col0, int ks) {
  const int j = lane >> 3;
  return (col0 + 8 * (j >> 1) + (lane & 7)) * kLdWords + ks * 8 + 4 * (j & 1);
}
__host__ __device__ inline int c_row(int lane, int r) { return (lane >> 2) + 8 * (r >> 1); }
__host__ __device__ inline int c_col(int lane, int r) { return 2 * (lane & 3) + (r & 1); }

// The SIMT tile: thread t owns rows t / 16 + 16 * i (i < 8) and columns t % 16 + 16 * j (j < 4).
constexpr int kSimtRows = kBM / 16, kSimtCols = kBN / 16;
__host__ __device__ inline int simt_row(int tid, int i) { return tid / 16 + 16 * i; }
__host__ __device__ inline int simt_col(int tid, int j) { return tid % 16 + 16 * j; }

// --- device primitives -------------------------------------------------------------------------

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define CONVEXT_IGEMM_ARCH 1
#endif

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool fill) {
#ifdef CONVEXT_IGEMM_ARCH
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(fill ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef CONVEXT_IGEMM_ARCH
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef CONVEXT_IGEMM_ARCH
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// kTrans: each matrix transposed on the way (lane l gets elements (2 * (l % 4), l / 4) and
// (2 * (l % 4) + 1, l / 4) of matrix j: pairs down a column).
template <bool kTrans = false>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
#ifdef CONVEXT_IGEMM_ARCH
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  }
#endif
}

// d += a * b on tensor cores, in the type T's mma (float: TF32).
template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef CONVEXT_IGEMM_ARCH
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// A shared-memory word as an mma operand: floats are rounded to TF32 (to nearest, ties away, as
// cuDNN's TF32 convolutions); pairs of halves go as they are.
template <typename T>
__device__ __forceinline__ uint32_t operand(uint32_t word) {
  if constexpr (std::is_same_v<T, float>) {
    uint32_t r = word;
#ifdef CONVEXT_IGEMM_ARCH
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(word)));
#endif
    return r;
  } else {
    return word;
  }
}

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(v);
  } else {
    return v;
  }
}

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return v;
  }
}

// One 16-byte chunk of a stage: its V elements are at offsets off(p) of src (or zeros), for the
// element positions p, next(p), next(next(p)), ... vec: the V elements are contiguous and
// aligned from the first, one cp.async; else they are loaded one by one.
template <typename T, typename P, typename Off, typename Next>
__device__ __forceinline__ void load_chunk(unsigned char* dst, const T* src, bool vec, P p,
                                           Off off, Next next) {
  constexpr int V = kV<T>;
  if (vec) {
    const int o = off(p);
    cp_async16(dst, o != kZero ? src + o : src, o != kZero);
    return;
  }
  union {
    Chunk c;
    Bits<T> e[V];
  } u;
  const Bits<T>* bits = reinterpret_cast<const Bits<T>*>(src);
#pragma unroll
  for (int e = 0; e < V; ++e) {
    const int o = off(p);
    u.e[e] = o != kZero ? bits[o] : Bits<T>(0);
    if (e + 1 < V) next(p);
  }
  *reinterpret_cast<Chunk*>(dst) = u.c;
}

// --- forward kernels ---------------------------------------------------------------------------

// Thread t loads chunk t % 4 of A rows t / 4 and t / 4 + 64, and of B row t / 4: all at the
// reduction index k of its chunk.
template <typename T>
__device__ __forceinline__ void load_stage(unsigned char* stage, const Igemm& s,
                                           const Operands<T>& op, const RowPos (&rows)[2],
                                           int group, int o, const KPos& k) {
  const int q = threadIdx.x & 3, r = threadIdx.x >> 2;
  auto next = [&](KPos& p) { advance(p, 1, s.Ck, s.KW); };
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    load_chunk(stage + (r + 64 * i) * kLdBytes + q * 16, op.x, op.x_vec, k,
               [&](const KPos& p) { return a_offset(s, op, rows[i], p); }, next);
  }
  load_chunk(stage + (kBM + r) * kLdBytes + q * 16, op.w, op.w_vec, k,
             [&](const KPos& p) { return b_offset(s, op, group, o, p); }, next);
}

// The pipeline over `tiles` stages through kStages buffers: load(buffer) fills a buffer with the
// next stage (cp.async, or plain stores for gathered chunks), compute(buffer) multiplies one,
// and while stage kt is multiplied the next kStages - 1 are on their way. One cp.async group is
// committed per stage (empty past the end), so waiting for all but the newest kStages - 2
// groups waits for stage kt; the barrier after it also means that every thread is done with
// stage kt - 1, whose buffer the next load reuses.
template <typename Load, typename Compute>
__device__ __forceinline__ void run_stages(int tiles, Load load, Compute compute) {
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < tiles) load(st);
    cp_async_commit();
  }
  for (int kt = 0; kt < tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = kt + kStages - 1;
    if (next < tiles) load(next % kStages);
    cp_async_commit();
    compute(kt % kStages);
  }
}

// The forward's stages: each thread's reduction index starts at its chunk's and moves on a stage
// per load.
template <typename T, typename Compute>
__device__ __forceinline__ void pipeline(unsigned char (*smem)[kStageBytes], const Igemm& s,
                                         const Operands<T>& op, int group, int m0, int n0,
                                         Compute compute) {
  const RowPos rows[2] = {row_pos(s, op, group, m0 + (threadIdx.x >> 2)),
                          row_pos(s, op, group, m0 + (threadIdx.x >> 2) + 64)};
  const int o = n0 + (threadIdx.x >> 2);
  KPos k = kpos((threadIdx.x & 3) * kV<T>, s.Ck, s.KW);
  run_stages(
      (s.K + kBK<T> - 1) / kBK<T>,
      [&](int b) {
        load_stage(smem[b], s, op, rows, group, o, k);
        advance(k, kBK<T>, s.Ck, s.KW);
      },
      [&](int b) { compute(smem[b]); });
}

// Tensor-core forward: T = __half or __nv_bfloat16, or float in TF32.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2) igemm_forward_mma(Igemm s, Operands<T> op) {
  __shared__ __align__(16) unsigned char smem[kStages][kStageBytes];
  const int group = blockIdx.z, m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = (warp & 3) * 32, wn = (warp >> 2) * 32;
  float acc[2][4][4] = {};
  pipeline(smem, s, op, group, m0, n0, [&](const unsigned char* stage) {
    const uint32_t* As = reinterpret_cast<const uint32_t*>(stage);
    const uint32_t* Bs = As + kBM * kLdWords;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        ldmatrix_x4(a[i], As + ldm_a(lane, wm + 16 * i, ks));
#pragma unroll
        for (int r = 0; r < 4; ++r) a[i][r] = operand<T>(a[i][r]);
      }
#pragma unroll
      for (int j = 0; j < 4; j += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, Bs + ldm_b(lane, wn + 8 * j, ks));
        b[j][0] = operand<T>(r[0]), b[j][1] = operand<T>(r[1]);
        b[j + 1][0] = operand<T>(r[2]), b[j + 1][1] = operand<T>(r[3]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) mma<T>(acc[i][j], a[i], b[j]);
      }
    }
  });
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = y_row(s, op, m0 + wm + 16 * i + c_row(lane, 2 * h));
      if (row == kZero) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + wn + 8 * j + c_col(lane, 2 * h + e);
          if (n >= s.Cn) continue;
          const int co = group * s.Cn + n;
          const float b = op.bias ? to_float(op.bias[co]) : 0.f;
          op.y[row + co * op.yC] = from_acc<T>(acc[i][j][2 * h + e] + b);
        }
      }
    }
  }
}

// Exact forward with FMA in T (float or double): each thread an 8 x 4 register tile.
template <typename T>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 8 ? 1 : 2)
igemm_forward_simt(Igemm s, Operands<T> op) {
  __shared__ __align__(16) unsigned char smem[kStages][kStageBytes];
  const int group = blockIdx.z, m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  const int tid = threadIdx.x;
  constexpr int P = 8 / int(sizeof(T));  // k per shared load: float2 or double
  using Pack = std::conditional_t<P == 2, float2, double>;
  T acc[kSimtRows][kSimtCols] = {};
  pipeline(smem, s, op, group, m0, n0, [&](const unsigned char* stage) {
    const T* As = reinterpret_cast<const T*>(stage);
    const T* Bs = As + kBM * (kLdBytes / int(sizeof(T)));
    constexpr int ld = kLdBytes / int(sizeof(T));
#pragma unroll
    for (int kk = 0; kk < kBK<T>; kk += P) {
      T a[kSimtRows][P], b[kSimtCols][P];
#pragma unroll
      for (int i = 0; i < kSimtRows; ++i) {
        const Pack v = *reinterpret_cast<const Pack*>(As + simt_row(tid, i) * ld + kk);
        memcpy(a[i], &v, sizeof(v));
      }
#pragma unroll
      for (int j = 0; j < kSimtCols; ++j) {
        const Pack v = *reinterpret_cast<const Pack*>(Bs + simt_col(tid, j) * ld + kk);
        memcpy(b[j], &v, sizeof(v));
      }
#pragma unroll
      for (int p = 0; p < P; ++p) {
#pragma unroll
        for (int i = 0; i < kSimtRows; ++i) {
#pragma unroll
          for (int j = 0; j < kSimtCols; ++j) acc[i][j] = fma(a[i][p], b[j][p], acc[i][j]);
        }
      }
    }
  });
#pragma unroll
  for (int i = 0; i < kSimtRows; ++i) {
    const int row = y_row(s, op, m0 + simt_row(tid, i));
    if (row == kZero) continue;
#pragma unroll
    for (int j = 0; j < kSimtCols; ++j) {
      const int n = n0 + simt_col(tid, j);
      if (n >= s.Cn) continue;
      const int co = group * s.Cn + n;
      op.y[row + co * op.yC] = acc[i][j] + (op.bias ? op.bias[co] : T(0));
    }
  }
}


// --- weight gradient kernels -------------------------------------------------------------------

// The weight gradient's GEMM of one group: D[m][n] = sum over positions p of A[p][m] * B[p][n],
// m = output channel co of the group (Cm of them), n = (kh * KW + kw) * Cig + ci (Nn columns),
// p = (n, oh, ow) in [p0, p1) for the block's chunk of len positions.
struct Wgrad {
  int R, len, Cm, Nn, Cig, Ho, Wo, H, W, KH, KW, sH, sW, pH, pW, dH, dW;
};

// gy read at (n, group * Cm + m, oh, ow), x at (n, group * Cig + ci, ih, iw); partial sums
// written as partial[chunk][co][ci][kh][kw]. gy_vec, x_vec: 16-byte chunks along the channels.
template <typename T>
struct WgradOperands {
  const T* gy;
  int gN, gC, gH, gW;
  const T* x;
  int xN, xC, xH, xW;
  bool gy_vec, x_vec;
};

// A position p = (n * Ho + oh) * Wo + ow as its parts, advanced by a thread from stage to stage
// without dividing.
struct PIdx {
  int p, n, oh, ow;
};

__host__ __device__ inline PIdx pidx(const Wgrad& s, int p) {
  const int hw = s.Ho * s.Wo, n = p / hw, oh = (p - n * hw) / s.Wo;
  return {p, n, oh, p - n * hw - oh * s.Wo};
}

__host__ __device__ inline void advance(const Wgrad& s, PIdx& q, int by) {
  q.p += by, q.ow += by;
  while (q.ow >= s.Wo) {
    q.ow -= s.Wo;
    if (++q.oh == s.Ho) q.oh = 0, ++q.n;
  }
}

// A position of the chunk (valid: before its end p1): its offset in gy, and where its patch
// starts in x.
struct Pos {
  int gy, x, ih0, iw0;
  bool valid;
};

template <typename T>
__host__ __device__ inline Pos pos_of(const Wgrad& s, const WgradOperands<T>& op, int group,
                                      const PIdx& q, int p1) {
  return {q.n * op.gN + group * s.Cm * op.gC + q.oh * op.gH + q.ow * op.gW,
          q.n * op.xN + group * s.Cig * op.xC, q.oh * s.sH - s.pH, q.ow * s.sW - s.pW, q.p < p1};
}

// Offsets of A[p][m] in gy and B[p][n] in x (n as its tap and channel), or kZero.
template <typename T>
__host__ __device__ inline int ga_offset(const Wgrad& s, const WgradOperands<T>& op, const Pos& p,
                                         int m) {
  return p.valid && m < s.Cm ? p.gy + m * op.gC : kZero;
}

template <typename T>
__host__ __device__ inline int xb_offset(const Wgrad& s, const WgradOperands<T>& op, const Pos& p,
                                         const KPos& n) {
  if (!p.valid || n.kh >= s.KH) return kZero;
  const int ih = p.ih0 + n.kh * s.dH, iw = p.iw0 + n.kw * s.dW;
  if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return kZero;
  return p.x + n.c * op.xC + ih * op.xH + iw * op.xW;
}

// Index of D[m][n] (m, n within the group) in partial's chunk.
__host__ __device__ inline int64_t partial_index(const Wgrad& s, int group, int m, int n) {
  const int tap = n / s.Cig, ci = n - tap * s.Cig;
  return (int64_t(group * s.Cm + m) * s.Cig + ci) * (s.KH * s.KW) + tap;
}

// Stages are k-major: element (p, m) of A at p * kLdA + m, (p, n) of B at p * kLdB + n, rows
// padded so that the fragment loads below hit distinct banks (or one word twice).
template <typename T> constexpr int kPad = sizeof(T) == 8 ? 2 : 8;
template <typename T> constexpr int kLdA = kWM + kPad<T>;
template <typename T> constexpr int kLdB = kWN + kPad<T>;
template <typename T> constexpr int kWStage = kBK<T> * (kLdA<T> + kLdB<T>);  // elements

// The mma fragments of k-major tiles (those of the forward's mma, above). TF32: register i of A
// is element k = ks * 8 + t + 4 * (i >> 1) of row m = row0 + g + 8 * (i & 1), register i of B
// element k = ks * 8 + t + 4 * i of column col0 + g, one 32-bit load each.
__host__ __device__ inline int kmajor_a(int lane, int i, int row0, int ks, int ld) {
  return (ks * 8 + (lane & 3) + 4 * (i >> 1)) * ld + row0 + (lane >> 2) + 8 * (i & 1);
}
__host__ __device__ inline int kmajor_b(int lane, int i, int col0, int ks, int ld) {
  return (ks * 8 + (lane & 3) + 4 * i) * ld + col0 + (lane >> 2);
}

// Halves load them with ldmatrix.trans: each 8 x 8 matrix is 8 rows of k (16 bytes: 8 values of
// m or n), transposed into pairs along k. A's matrices a[0..3]: k = ks * 16 + 8 * (j >> 1) + 0..7,
// m from row0 + 8 * (j & 1); B's, for two 8-column tiles: k = ks * 16 + 8 * (j & 1) + 0..7, n from
// col0 + 8 * (j >> 1). Element offsets in the tile.
__host__ __device__ inline int ldmt_a(int lane, int row0, int ks, int ld) {
  const int j = lane >> 3;
  return (ks * 16 + 8 * (j >> 1) + (lane & 7)) * ld + row0 + 8 * (j & 1);
}
__host__ __device__ inline int ldmt_b(int lane, int col0, int ks, int ld) {
  const int j = lane >> 3;
  return (ks * 16 + 8 * (j & 1) + (lane & 7)) * ld + col0 + 8 * (j >> 1);
}

// The SIMT tile of the weight gradient: thread t owns rows t / 32 + 8 * i (i < 8) and columns
// t % 32 + 32 * j (j < 4).
constexpr int kWSimtRows = kWM / 8, kWSimtCols = kWN / 32;
__host__ __device__ inline int wsimt_row(int tid, int i) { return tid / 32 + 8 * i; }
__host__ __device__ inline int wsimt_col(int tid, int j) { return tid % 32 + 32 * j; }

// Chunks of a stage: A has kBK rows of kWM / V chunks (one per thread), B kBK rows of kWN / V
// (two per thread); thread t takes chunk t of A and chunks t and t + 256 of B.
template <typename T> constexpr int kAChunks = kWM / kV<T>;
template <typename T> constexpr int kBChunks = kWN / kV<T>;

// The rows a thread loads (of A: its chunk's; of B: its two chunks') as positions, and the
// columns of its B chunks (the same for both: 256 is a multiple of a row's chunks).
struct WRows {
  PIdx a, b[2];
  KPos col;
};

template <typename T>
__host__ __device__ inline WRows wrows(const Wgrad& s, int tid, int p0, int n0) {
  WRows r;
  r.a = pidx(s, p0 + tid / kAChunks<T>);
  for (int i = 0; i < 2; ++i) r.b[i] = pidx(s, p0 + (tid + kThreads * i) / kBChunks<T>);
  r.col = kpos(n0 + tid % kBChunks<T> * kV<T>, s.Cig, s.KW);
  return r;
}

template <typename T>
__host__ __device__ inline void advance(const Wgrad& s, WRows& r, int by) {
  advance(s, r.a, by);
  for (int i = 0; i < 2; ++i) advance(s, r.b[i], by);
}

template <typename T>
__device__ __forceinline__ void load_wstage(T* stage, const Wgrad& s, const WgradOperands<T>& op,
                                            int group, int m0, const WRows& rows, int p1) {
  constexpr int V = kV<T>;
  {
    const int row = threadIdx.x / kAChunks<T>, q = threadIdx.x % kAChunks<T>;
    const Pos pos = pos_of(s, op, group, rows.a, p1);
    load_chunk(reinterpret_cast<unsigned char*>(stage + row * kLdA<T> + q * V), op.gy, op.gy_vec,
               m0 + q * V, [&](int m) { return ga_offset(s, op, pos, m); }, [](int& m) { ++m; });
  }
  T* bs = stage + kBK<T> * kLdA<T>;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = threadIdx.x + kThreads * i, row = c / kBChunks<T>, q = c % kBChunks<T>;
    const Pos pos = pos_of(s, op, group, rows.b[i], p1);
    load_chunk(reinterpret_cast<unsigned char*>(bs + row * kLdB<T> + q * V), op.x, op.x_vec,
               rows.col, [&](const KPos& n) { return xb_offset(s, op, pos, n); },
               [&](KPos& n) { advance(n, 1, s.Cig, s.KW); });
  }
}

// Block (n tile, m tile, group + groups * chunk): the pipeline over the chunk's positions.
template <typename T, typename Compute>
__device__ __forceinline__ void wpipeline(T (*smem)[kWStage<T>], const Wgrad& s,
                                          const WgradOperands<T>& op, int group, int m0, int n0,
                                          int chunk, Compute compute) {
  const int p0 = chunk * s.len, p1 = min(s.R, p0 + s.len);
  WRows rows = wrows<T>(s, threadIdx.x, p0, n0);
  run_stages(
      (p1 - p0 + kBK<T> - 1) / kBK<T>,
      [&](int b) {
        load_wstage(smem[b], s, op, group, m0, rows, p1);
        advance<T>(s, rows, kBK<T>);
      },
      [&](int b) { compute(smem[b]); });
}

// Tensor-core weight gradient: 8 warps as 2 (m) x 4 (n), each a 32 x 32 tile.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
igemm_weight_grad_mma(Wgrad s, WgradOperands<T> op, int groups, float* __restrict__ partial) {
  __shared__ __align__(16) T smem[kStages][kWStage<T>];
  const int group = blockIdx.z % groups, chunk = blockIdx.z / groups;
  const int m0 = blockIdx.y * kWM, n0 = blockIdx.x * kWN;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
  float acc[2][4][4] = {};
  wpipeline(smem, s, op, group, m0, n0, chunk, [&](const T* stage) {
    const T* As = stage;
    const T* Bs = stage + kBK<T> * kLdA<T>;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t a[2][4], b[4][2];
      if constexpr (sizeof(T) == 2) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          ldmatrix_x4<true>(a[i], As + ldmt_a(lane, wm + 16 * i, ks, kLdA<T>));
        }
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
          uint32_t r[4];
          ldmatrix_x4<true>(r, Bs + ldmt_b(lane, wn + 8 * j, ks, kLdB<T>));
          b[j][0] = r[0], b[j][1] = r[1], b[j + 1][0] = r[2], b[j + 1][1] = r[3];
        }
      } else {
        const uint32_t* As_words = reinterpret_cast<const uint32_t*>(As);
        const uint32_t* Bs_words = reinterpret_cast<const uint32_t*>(Bs);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            a[i][r] = operand<T>(As_words[kmajor_a(lane, r, wm + 16 * i, ks, kLdA<T>)]);
          }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            b[j][r] = operand<T>(Bs_words[kmajor_b(lane, r, wn + 8 * j, ks, kLdB<T>)]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) mma<T>(acc[i][j], a[i], b[j]);
      }
    }
  });
  float* out = partial + int64_t(chunk) * groups * s.Cm * s.Nn;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = m0 + wm + 16 * i + c_row(lane, r), n = n0 + wn + 8 * j + c_col(lane, r);
        if (m < s.Cm && n < s.Nn) out[partial_index(s, group, m, n)] = acc[i][j][r];
      }
    }
  }
}

// Exact weight gradient with FMA in T (float or double): each thread an 8 x 4 register tile.
template <typename T>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 8 ? 1 : 2)
igemm_weight_grad_simt(Wgrad s, WgradOperands<T> op, int groups, T* __restrict__ partial) {
  __shared__ __align__(16) T smem[kStages][kWStage<T>];
  const int group = blockIdx.z % groups, chunk = blockIdx.z / groups;
  const int m0 = blockIdx.y * kWM, n0 = blockIdx.x * kWN, tid = threadIdx.x;
  T acc[kWSimtRows][kWSimtCols] = {};
  wpipeline(smem, s, op, group, m0, n0, chunk, [&](const T* stage) {
    const T* As = stage;
    const T* Bs = stage + kBK<T> * kLdA<T>;
#pragma unroll 4
    for (int k = 0; k < kBK<T>; ++k) {
      T a[kWSimtRows], b[kWSimtCols];
#pragma unroll
      for (int i = 0; i < kWSimtRows; ++i) a[i] = As[k * kLdA<T> + wsimt_row(tid, i)];
#pragma unroll
      for (int j = 0; j < kWSimtCols; ++j) b[j] = Bs[k * kLdB<T> + wsimt_col(tid, j)];
#pragma unroll
      for (int i = 0; i < kWSimtRows; ++i) {
#pragma unroll
        for (int j = 0; j < kWSimtCols; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
    }
  });
  T* out = partial + int64_t(chunk) * groups * s.Cm * s.Nn;
#pragma unroll
  for (int i = 0; i < kWSimtRows; ++i) {
#pragma unroll
    for (int j = 0; j < kWSimtCols; ++j) {
      const int m = m0 + wsimt_row(tid, i), n = n0 + wsimt_col(tid, j);
      if (m < s.Cm && n < s.Nn) out[partial_index(s, group, m, n)] = acc[i][j];
    }
  }
}

// --- host side -----------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Strides are non-negative (torch's), so this is the view's largest element offset.
template <typename T>
int64_t max_offset(View4<T> v, int64_t N, int64_t C, int64_t H, int64_t W) {
  return (N - 1) * v.sN + (C - 1) * v.sC + (H - 1) * v.sH + (W - 1) * v.sW;
}

bool fits_i32(std::initializer_list<int64_t> sizes) {
  for (const int64_t v : sizes) {
    if (v >= kI32Limit) return false;
  }
  return true;
}

// 16-byte chunks of a (N, C, H, W) view along C, Cg channels a group: C innermost, every other
// stride and the data 16-byte aligned, whole chunks a group.
template <typename T>
bool chunks_ok(View4<T> v, int64_t Cg) {
  constexpr int V = kV<T>;
  return v.sC == 1 && Cg % V == 0 && reinterpret_cast<uintptr_t>(v.data) % 16 == 0 &&
         v.sN % V == 0 && v.sH % V == 0 && v.sW % V == 0;
}

// cp.async and mma.sync need sm_80; the caller's device is the current one.
bool device_ok() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();  // the general kernels will report a broken device
    return false;
  }
  return major >= 8;
}

// Whether a group's GEMM pays with these tiles: at least 16 output columns (a quarter of the
// forward's N tile) and 16 of reduction (half a stage); smaller groups run the direct kernels.
bool pays(int64_t columns, int64_t K, int64_t groups) {
  return columns >= 16 && K >= 16 && groups <= 65535;
}

template <typename T>
View4<const T> as_const(View4<T> v) {
  return {v.data, v.sN, v.sC, v.sH, v.sW};
}

// The forward GEMM of conv(x, w) + bias into y, or false where it does not take the form.
template <typename T>
bool forward_gemm(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                  View4<T> y, Igemm& s, Operands<T>& op) {
  const int64_t Ck = g.C_in_g(), Cn = g.C_out_g(), K = Ck * g.KH * g.KW;
  if (!pays(Cn, K, g.groups) || g.N * g.OH * g.OW == 0 ||
      !fits_i32({g.N * g.OH * g.OW + kBM, K + kBK<T>, max_offset(x, g.N, g.C_in, g.H, g.W),
                 max_offset(w, g.C_out, Ck, g.KH, g.KW),
                 max_offset(as_const(y), g.N, g.C_out, g.OH, g.OW)})) {
    return false;
  }
  s = {int(g.N * g.OH * g.OW), int(K), int(Cn), int(Ck), int(g.OH * g.OW), int(g.OW), int(g.H),
       int(g.W), int(g.KH), int(g.KW), int(g.sH), int(g.sW), int(g.pH), int(g.pW), int(g.dH),
       int(g.dW)};
  op = {x.data, int(x.sN), int(x.sC), int(x.sH), int(x.sW),
        w.data, int(Cn * w.sN), int(w.sN), int(w.sC), int(w.sH), int(w.sW),
        y.data, int(y.sN), int(y.sC), int(y.sH), int(y.sW),
        bias, chunks_ok(x, Ck), chunks_ok(w, Ck)};
  return true;
}

// gx(n, ci, h, w) = sum over co, kh, kw of gy(n, co, h + pH - kh*dH, ...) * w(co, ci, kh, kw):
// at stride 1, with kh' = KH-1-kh, the forward convolution of gy with padding (KH-1)*dH - pH
// (negative where the padding passes the kernel's reach: the bounds checks take it) and weights
// w'(ci, co, kh', kw') = w(co, ci, KH-1-kh', KW-1-kw'), each group's own: w read from its last
// tap through negative strides.
template <typename T>
bool input_grad_gemm(const ConvGeometry& g, View4<const T> gy, View4<const T> w, const T* bias,
                     View4<T> gx, Igemm& s, Operands<T>& op) {
  const int64_t Ck = g.C_out_g(), Cn = g.C_in_g(), K = Ck * g.KH * g.KW;
  if (g.sH != 1 || g.sW != 1 || !pays(Cn, K, g.groups) || g.N * g.H * g.W == 0 ||
      !fits_i32({g.N * g.H * g.W + kBM, K + kBK<T>, max_offset(gy, g.N, g.C_out, g.OH, g.OW),
                 max_offset(w, g.C_out, Cn, g.KH, g.KW),
                 max_offset(as_const(gx), g.N, g.C_in, g.H, g.W), (g.KH - 1) * g.dH + g.pH,
                 (g.KW - 1) * g.dW + g.pW})) {
    return false;
  }
  s = {int(g.N * g.H * g.W), int(K), int(Cn), int(Ck), int(g.H * g.W), int(g.W), int(g.OH),
       int(g.OW), int(g.KH), int(g.KW), 1, 1, int((g.KH - 1) * g.dH - g.pH),
       int((g.KW - 1) * g.dW - g.pW), int(g.dH), int(g.dW)};
  op = {gy.data, int(gy.sN), int(gy.sC), int(gy.sH), int(gy.sW),
        w.data + (g.KH - 1) * w.sH + (g.KW - 1) * w.sW, int(Ck * w.sN), int(w.sC), int(w.sN),
        -int(w.sH), -int(w.sW),
        gx.data, int(gx.sN), int(gx.sC), int(gx.sH), int(gx.sW),
        bias, chunks_ok(gy, Ck), false};
  return true;
}

template <typename T>
void launch_forward(const Igemm& s, const Operands<T>& op, int64_t groups, bool tf32,
                    cudaStream_t stream) {
  const dim3 grid(unsigned(ceil_div(s.M, kBM)), unsigned(ceil_div(s.Cn, kBN)), unsigned(groups));
  if constexpr (std::is_same_v<T, double>) {
    igemm_forward_simt<T><<<grid, kThreads, 0, stream>>>(s, op);
  } else if constexpr (std::is_same_v<T, float>) {
    if (tf32) {
      igemm_forward_mma<T><<<grid, kThreads, 0, stream>>>(s, op);
    } else {
      igemm_forward_simt<T><<<grid, kThreads, 0, stream>>>(s, op);
    }
  } else {
    igemm_forward_mma<T><<<grid, kThreads, 0, stream>>>(s, op);
  }
}

// The weight gradient's split: a constant number of blocks to aim for (not the device's SM
// count, so that the sums, and with them the bits, are the same on every device), chunks of at
// least kMinChunk positions, whole stages each.
constexpr int64_t kSplitBlocks = 1024;
constexpr int64_t kMinChunk = 512;

template <typename T>
bool weight_grad_gemm(const ConvGeometry& g, View4<const T> x, View4<const T> gy, Wgrad& s,
                      WgradOperands<T>& op, int64_t& chunks) {
  const int64_t Cm = g.C_out_g(), Cig = g.C_in_g(), Nn = Cig * g.KH * g.KW;
  const int64_t R = g.N * g.OH * g.OW, E = g.C_out * Nn;
  if (!pays(Cm, Nn, g.groups) || R == 0 ||
      !fits_i32({R + kBK<T>, E, max_offset(x, g.N, g.C_in, g.H, g.W),
                 max_offset(gy, g.N, g.C_out, g.OH, g.OW),
                 // positions past the last image (a stage's tail, masked) still get offsets
                 (g.N + kBK<T> + 1) * std::max(x.sN, gy.sN)})) {
    return false;
  }
  const int64_t tiles = ceil_div(Cm, kWM) * ceil_div(Nn, kWN) * g.groups;
  chunks = std::min({ceil_div(kSplitBlocks, tiles), ceil_div(R, kMinChunk), 65535 / g.groups});
  chunks = std::max<int64_t>(chunks, 1);
  const int64_t len = ceil_div(ceil_div(R, chunks), kBK<T>) * kBK<T>;
  chunks = ceil_div(R, len);
  s = {int(R), int(len), int(Cm), int(Nn), int(Cig), int(g.OH), int(g.OW), int(g.H),
       int(g.W), int(g.KH), int(g.KW), int(g.sH), int(g.sW), int(g.pH), int(g.pW), int(g.dH),
       int(g.dW)};
  op = {gy.data, int(gy.sN), int(gy.sC), int(gy.sH), int(gy.sW),
        x.data, int(x.sN), int(x.sC), int(x.sH), int(x.sW),
        chunks_ok(gy, Cm), chunks_ok(x, Cig)};
  return true;
}

}  // namespace

template <typename T>
bool igemm_forward(const ConvGeometry& g, View4<const T> x, View4<const T> w, const T* bias,
                   View4<T> y, bool tf32, cudaStream_t stream) {
  Igemm s;
  Operands<T> op;
  if (!forward_gemm(g, x, w, bias, y, s, op) || !device_ok()) return false;
  launch_forward(s, op, g.groups, tf32, stream);
  return true;
}

template <typename T>
bool igemm_input_grad(const ConvGeometry& g, View4<const T> gy, View4<const T> w, const T* bias,
                      View4<T> gx, bool tf32, cudaStream_t stream) {
  Igemm s;
  Operands<T> op;
  if (!input_grad_gemm(g, gy, w, bias, gx, s, op) || !device_ok()) return false;
  launch_forward(s, op, g.groups, tf32, stream);
  return true;
}

template <typename T>
int64_t igemm_weight_grad_chunks(const ConvGeometry& g, View4<const T> x, View4<const T> gy) {
  Wgrad s;
  WgradOperands<T> op;
  int64_t chunks = 0;
  return weight_grad_gemm(g, x, gy, s, op, chunks) && device_ok() ? chunks : 0;
}

template <typename T>
void igemm_weight_grad(const ConvGeometry& g, View4<const T> x, View4<const T> gy, int64_t chunks,
                       void* partial, bool tf32, cudaStream_t stream) {
  Wgrad s;
  WgradOperands<T> op;
  int64_t planned = 0;
  weight_grad_gemm(g, x, gy, s, op, planned);
  const dim3 grid(unsigned(ceil_div(s.Nn, kWN)), unsigned(ceil_div(s.Cm, kWM)),
                  unsigned(g.groups * chunks));
  const int groups = int(g.groups);
  if constexpr (std::is_same_v<T, double>) {
    igemm_weight_grad_simt<T><<<grid, kThreads, 0, stream>>>(s, op, groups,
                                                             static_cast<T*>(partial));
  } else if constexpr (std::is_same_v<T, float>) {
    if (tf32) {
      igemm_weight_grad_mma<T><<<grid, kThreads, 0, stream>>>(s, op, groups,
                                                              static_cast<float*>(partial));
    } else {
      igemm_weight_grad_simt<T><<<grid, kThreads, 0, stream>>>(s, op, groups,
                                                               static_cast<float*>(partial));
    }
  } else {
    igemm_weight_grad_mma<T><<<grid, kThreads, 0, stream>>>(s, op, groups,
                                                            static_cast<float*>(partial));
  }
}

#define CONVEXT_IGEMM(T)                                                                        \
  template bool igemm_forward<T>(const ConvGeometry&, View4<const T>, View4<const T>, const T*, \
                                 View4<T>, bool, cudaStream_t);                                 \
  template bool igemm_input_grad<T>(const ConvGeometry&, View4<const T>, View4<const T>,        \
                                    const T*, View4<T>, bool, cudaStream_t);                    \
  template int64_t igemm_weight_grad_chunks<T>(const ConvGeometry&, View4<const T>,             \
                                               View4<const T>);                                 \
  template void igemm_weight_grad<T>(const ConvGeometry&, View4<const T>, View4<const T>,       \
                                     int64_t, void*, bool, cudaStream_t);

CONVEXT_IGEMM(float)
CONVEXT_IGEMM(double)
CONVEXT_IGEMM(__half)
CONVEXT_IGEMM(__nv_bfloat16)

}  // namespace convext::cuda
