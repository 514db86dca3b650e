// Probe (benchmarks/gemv_bulk_probe.py): the library's K-split GEMV (mxfp8_xla/backends/gemv.cu) with the weight
// streamed by the copy engine instead of the threads' loads. SM90 (cp.async.bulk, mbarrier expect_tx).
//
// The library's kernel keeps one unit (R weight rows) in flight per thread, in registers, so each SM has at most one
// unit per CTA outstanding, and it streams the fp8 bytes at 2.9-3.6 TB/s where XLA's bf16 GEMV streams bf16 at
// 4.0-4.3 TB/s (docs/benchmark_log.md). Here a unit's R rows are contiguous in w [N, K] (and its scale bytes in
// sw [N, K/32]), so one thread issues one 1-D bulk copy of R * K bytes (and one of R * K/32) into a ring of S
// shared-memory stages, S units ahead; the threads read their 16-byte chunks from shared memory after the stage's
// mbarrier completes. The CTA's barrier after each unit's reduction (the library's, unchanged) is what frees a stage
// for its refill. Everything else, arithmetic and summation order included, is the library's kernel: the products
// must be bit for bit the library's.
//
// Kernels mxfp8_gemv_bulk_r{R}_s{S}_{bf16,f32}(w, sw, x, dims, out): one raw bf16 row, launched with K / 16 threads
// and S * R * (K + K / 32) bytes of dynamic shared memory.
//
// Three more kernels place the library's kernel between its floors (gemv_bulk_probe.py --stream), all with its
// launch (K / 16 threads, a grid of units):
// - mxfp8_gemv_deep2_r{R}_{bf16,f32}: the library's kernel with its registers holding two units ahead instead of one
//   (three buffers; K <= 8192), the products bit for bit the library's;
// - mxfp8_stream_r4(w, sw, x, dims, out): the same loads of the weight and its scales, one unit ahead, and nothing
//   else (each thread folds its words into one it never writes unless they hash to a constant): the weight stream's
//   floor for this launch;
// - mxfp8_empty(...): returns at once: the launch's own cost between the timing loop's calls.
// Measured on an H200 (fourteenth session, docs/benchmark_log.md "The one-row kernel's floor"): every bulk kernel bit for
// bit the library's and slower (best 23.6 against 20.9 us at (14336, 4096)); the library's kernel as fast as
// mxfp8_stream_r4 (19.7 against 20.7 us), deep2 slower at every shape.
#include "../mxfp8_xla/backends/gemv.cu"

#include "bulk_ring.cuh"

namespace {

template <int R, int S, typename OUT>
__device__ __forceinline__ void gemv_bulk(const u8* __restrict__ w, const u8* __restrict__ sw,
                                          const u16* __restrict__ x, OUT* __restrict__ out,
                                          const int* __restrict__ dims) {
  extern __shared__ __align__(128) u8 ring[];  // S stages: R * k weight bytes, then R * kb scale bytes
  __shared__ __align__(8) u64 full[S];
  __shared__ float partial[2][kMaxWarps][R];
  const int n = dims[1], k = dims[2], kb = k / 32, units = n / R;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const u32 wbytes = R * k, sbytes = R * kb, stage_bytes = wbytes + sbytes;

  auto issue = [&](int unit, int s) {  // the unit's weight rows, then its scale rows
    const u32 bar = smem_addr(&full[s]), dst = smem_addr(ring + s * stage_bytes);
    expect_bytes(bar, stage_bytes);
    bulk(dst, w + static_cast<u64>(unit) * wbytes, wbytes, bar);
    bulk(dst + wbytes, sw + static_cast<u64>(unit) * sbytes, sbytes, bar);
  };
  if (threadIdx.x == 0) {
    bars_init(full, S);
#pragma unroll
    for (int s = 0; s < S; ++s)
      if (blockIdx.x + s * gridDim.x < units) issue(blockIdx.x + s * gridDim.x, s);
  }
  __syncthreads();  // the barriers are initialized before anyone waits on them

  float4 xv[1][1][4];
  quantize_chunks<1, 1>(x, k, xv);

  int s = 0;
  u32 parity = 0;
  for (int i = 0, unit = blockIdx.x; unit < units; unit += gridDim.x, ++i) {
    bar_wait(smem_addr(&full[s]), parity);
    const u8* stage = ring + s * stage_bytes;
    float acc[R][1];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint4 q = *reinterpret_cast<const uint4*>(stage + r * k + 16 * threadIdx.x);
      const u32 sc = stage[wbytes + r * kb + (threadIdx.x >> 1)];
      acc[r][0] = 0.f;
      chunk_dots(q, xv[0], scale_factor(sc), acc[r]);
    }
    int row;
    const float v = warp_sum_rows<R>(reinterpret_cast<float(&)[R]>(acc), lane, row);
    if ((lane & (32 / R - 1)) == 0) partial[i & 1][warp][row] = v;
    __syncthreads();  // every thread has read stage s, and partial[i & 1] is complete
    if (threadIdx.x == 0 && unit + S * gridDim.x < units) issue(unit + S * gridDim.x, s);
    if (threadIdx.x < R) {
      float sum = 0.f;
      for (int q = 0; q < warps; ++q) sum += partial[i & 1][q][threadIdx.x];
      store(out + static_cast<u64>(unit) * R + threadIdx.x, sum);
    }
    if (++s == S) s = 0, parity ^= 1;
  }
}

// The library's kernel (one row, one chunk a thread) with the loads two units ahead: buffers a, b and c rotate.
template <int R, typename OUT>
__device__ __forceinline__ void gemv_deep2(const u8* __restrict__ w, const u8* __restrict__ sw,
                                           const u16* __restrict__ x, OUT* __restrict__ out,
                                           const int* __restrict__ dims) {
  __shared__ float partial[2][kMaxWarps][R];
  const int n = dims[1], k = dims[2], kb = k / 32, units = n / R;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  uint4 a[R], b[R], c[R];
  u32 sa[R], sb[R], sc[R];
  auto load = [&](int unit, uint4(&d)[R], u32(&s)[R]) {
    if (unit >= units) return;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const u64 row = static_cast<u64>(unit) * R + r;
      d[r] = load16(w + row * k + 16 * threadIdx.x);
      s[r] = load8(sw + row * kb + (threadIdx.x >> 1));
    }
  };
  int unit = blockIdx.x, i = 0;
  load(unit, a, sa);
  load(unit + gridDim.x, b, sb);
  float4 xv[1][1][4];
  quantize_chunks<1, 1>(x, k, xv);
  auto step = [&](const uint4(&cur)[R], const u32(&cs)[R], uint4(&fill)[R], u32(&fs)[R]) {
    if (unit >= units) return false;
    load(unit + 2 * gridDim.x, fill, fs);
    float acc[R][1];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      acc[r][0] = 0.f;
      chunk_dots(cur[r], xv[0], scale_factor(cs[r]), acc[r]);
    }
    int row;
    const float v = warp_sum_rows<R>(reinterpret_cast<float(&)[R]>(acc), lane, row);
    if ((lane & (32 / R - 1)) == 0) partial[i & 1][warp][row] = v;
    __syncthreads();
    if (threadIdx.x < R) {
      float sum = 0.f;
      for (int q = 0; q < warps; ++q) sum += partial[i & 1][q][threadIdx.x];
      store(out + static_cast<u64>(unit) * R + threadIdx.x, sum);
    }
    unit += gridDim.x, ++i;
    return true;
  };
  while (step(a, sa, c, sc) && step(b, sb, a, sa) && step(c, sc, b, sb)) {
  }
}

}  // namespace

#define DEEP2(R)                                                                                               \
  extern "C" __global__ void __launch_bounds__(512)                                                            \
      mxfp8_gemv_deep2_r##R##_bf16(const u8* w, const u8* sw, const u16* x, const int* dims, u16* out) {        \
    gemv_deep2<R, u16>(w, sw, x, out, dims);                                                                   \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(512)                                                            \
      mxfp8_gemv_deep2_r##R##_f32(const u8* w, const u8* sw, const u16* x, const int* dims, float* out) {      \
    gemv_deep2<R, float>(w, sw, x, out, dims);                                                                 \
  }
DEEP2(2)
DEEP2(4)

extern "C" __global__ void __launch_bounds__(1024)
    mxfp8_stream_r4(const u8* w, const u8* sw, const u16* x, const int* dims, u32* out) {
  const int n = dims[1], k = dims[2], kb = k / 32, units = n / 4;
  uint4 cur[4], nxt[4];
  u32 cs[4], ns[4], fold = 0;
  auto load = [&](int unit, uint4(&d)[4], u32(&s)[4]) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const u64 row = static_cast<u64>(unit) * 4 + r;
      d[r] = load16(w + row * k + 16 * threadIdx.x);
      s[r] = load8(sw + row * kb + (threadIdx.x >> 1));
    }
  };
  int unit = blockIdx.x;
  if (unit < units) load(unit, cur, cs);
  for (; unit < units; unit += gridDim.x) {
    if (unit + gridDim.x < units) load(unit + gridDim.x, nxt, ns);
#pragma unroll
    for (int r = 0; r < 4; ++r) fold ^= cur[r].x ^ cur[r].y ^ cur[r].z ^ cur[r].w ^ cs[r], cur[r] = nxt[r], cs[r] = ns[r];
  }
  if (fold == 0x9e3779b9u) out[threadIdx.x] = fold;
}

extern "C" __global__ void mxfp8_empty(const u8*, const u8*, const u16*, const int*, u32*) {}

// The weight stream alone in other load patterns (gemv_bulk_probe.py --patterns): units of 8 rows, the CTA's warps
// splitting K as the library's kernel does (warp w: bytes 512 w .. 512 w + 511 of every row), each unit's loads a
// unit ahead in registers; a warp load reads RPL rows, 32 / RPL lanes a row, LB bytes a lane (RPL = 1, LB = 16: the
// library's pattern, 512 contiguous bytes of one row; RPL = 8, LB = 8: the MMA kernels' B fragments).
template <int RPL, int LB>
__device__ __forceinline__ void stream_pattern(const u8* __restrict__ w, const int* __restrict__ dims, u32* out) {
  constexpr int kLoads = 4096 / (32 * LB), kLanesPerRow = 32 / RPL, kRowBytes = kLanesPerRow * LB;
  const int n = dims[1], k = dims[2], units = n / 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint4 cur[kLoads], nxt[kLoads];
  auto load = [&](int unit, uint4(&d)[kLoads]) {
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int per_row = 512 / kRowBytes, row = (j / per_row) * RPL + lane / kLanesPerRow, part = j % per_row;
      const u8* p = w + (static_cast<u64>(unit) * 8 + row) * k + 512 * warp + part * kRowBytes + (lane % kLanesPerRow) * LB;
      if (LB == 16) {
        d[j] = load16(p);
      } else {
        uint2 v;
        asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
        d[j] = make_uint4(v.x, v.y, 0u, 0u);
      }
    }
  };
  u32 fold = 0;
  int unit = blockIdx.x;
  if (unit < units) load(unit, cur);
  for (; unit < units; unit += gridDim.x) {
    if (unit + gridDim.x < units) load(unit + gridDim.x, nxt);
#pragma unroll
    for (int j = 0; j < kLoads; ++j) fold ^= cur[j].x ^ cur[j].y ^ cur[j].z ^ cur[j].w, cur[j] = nxt[j];
  }
  if (fold == 0x9e3779b9u) out[threadIdx.x] = fold;
}

#define PATTERN(RPL, LB)                                                                                        \
  extern "C" __global__ void __launch_bounds__(512)                                                            \
      mxfp8_stream_p##RPL##x##LB(const u8* w, const u8*, const u16*, const int* dims, u32* out) {              \
    stream_pattern<RPL, LB>(w, dims, out);                                                                     \
  }
PATTERN(1, 16)
PATTERN(2, 16)
PATTERN(4, 16)
PATTERN(8, 16)
PATTERN(8, 8)

#define BULK(R, S)                                                                                            \
  extern "C" __global__ void __launch_bounds__(1024)                                                          \
      mxfp8_gemv_bulk_r##R##_s##S##_bf16(const u8* w, const u8* sw, const u16* x, const int* dims, u16* out) { \
    gemv_bulk<R, S, u16>(w, sw, x, out, dims);                                                                \
  }                                                                                                           \
  extern "C" __global__ void __launch_bounds__(1024)                                                          \
      mxfp8_gemv_bulk_r##R##_s##S##_f32(const u8* w, const u8* sw, const u16* x, const int* dims, float* out) { \
    gemv_bulk<R, S, float>(w, sw, x, out, dims);                                                              \
  }

BULK(4, 2)
BULK(4, 3)
BULK(4, 4)
BULK(4, 6)
BULK(8, 2)
BULK(8, 3)
BULK(8, 4)
BULK(2, 4)
BULK(2, 8)
