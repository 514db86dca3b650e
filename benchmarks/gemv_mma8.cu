// Probe (benchmarks/gemv_bulk_probe.py --mma8): up to 8 raw bf16 activation rows on the tensor cores, on the one-row
// kernel's skeleton (mxfp8_xla/backends/gemv.cu): one CTA of K / 128 warps an SM, the CTA's warps splitting K, units
// of 8 weight rows (units blockIdx.x, + gridDim.x, ...), the next units' loads in flight in registers, one barrier a
// unit. gemv_bulk_probe.py --stream found the one-row kernel as fast as its weight stream alone.
//
//   out[m, n] = sum_b 2^(sw[n,b]-127) 2^(sa[m,b]-127) * sum_{k in block b} w[n,k] * qa[m,k]
//
// Warp w owns blocks BPW w .. BPW w + BPW - 1 of every unit (K = 32 BPW warps; BPW 4 or 8). Lane (g, t) loads bytes 8t .. 8t + 7 of those
// blocks of weight row g (one 8-byte load a block: a warp load reads 32 contiguous bytes of each of 8 rows) and the
// four scale bytes of weight rows 2t and 2t + 1 (one 4-byte load each). Before its loop the lane quantizes the same
// bytes of activation row g (raw bf16, quantize_blocks' rule; the block's amax over the quad by two shuffles) into
// registers, with the blocks' factors. A block is one mma.sync.m16n8k32 E4M3 MMA, activation rows as A (rows 8..15
// zero), the unit's 8 weight rows as B, into a fresh float32 accumulator (the K order inside a block is the loads'
// order, the same for both operands), its two sums in the lane (activation row g, weight rows 2t and 2t + 1) then
// scaled by both factors and added to the lane's float32 sums. No warp sums: the lanes' sums meet over the warps in
// shared memory. Not handled (the probe measures speed): scales where a decoded weight or a product could overflow,
// which the tenth session's kernel (cuda_gemv_mma.cu) sends to the CUDA cores after a vote.
//
// Kernels mxfp8_gemv_mma8[_b8]_d{DEPTH}{,_loads}_{bf16,f32}(w, sw, x, dims, out): dims = {m <= 8, n, k}; n % 8 == 0,
// k % (32 BPW) == 0, k / (32 BPW) warps (at most 32, or 16 with _b8: BPW 8); DEPTH units ahead in registers; _loads:
// the weight stream alone.
//
// Kernels mxfp8_gemv_ring8_s{S}_{bf16,f32}(w, sw, x, dims, out): the same MMAs fed from shared memory. One thread
// fetches each unit's 8 weight rows (one cp.async.bulk a row, rows k + 16 bytes apart so that the lanes' 8-byte reads
// of 8 rows hit distinct banks) and their scale rows into a ring of S stages, S units ahead (gemv_bulk.cu's ring);
// warp w of the CTA's W owns blocks w * kb / W .. of every unit (kb / W a multiple of 4, at most 16). Launched with
// W warps and S * (8 (k + 16) + 8 kb) + 2 W 64 4 bytes of dynamic shared memory.
// Measured on an H200 (fourteenth session, docs/benchmark_log.md "The one-row kernel's floor"): 1.6e-7 to 1.2e-6 from
// emulation; mma8 0.60-0.87x of bf16 at 8 rows (its _loads 24.6-35.4 us at (14336, 4096)), ring8 1.10x and 1.20x at
// (14336, 4096) and (28672, 4096), 0.58-0.88x at the smaller K = 4096 shapes.
//
// Kernels mxfp8_gemv_wide{ROWS}..._b{BPW}[_loads]_{bf16,f32} (gemv_bulk_probe.py --wide; gemv_wide below): the
// weight as the MMA's A operand, 16-byte lane loads and one 8-byte swap between lanes t and t ^ 2. Measured on an H200
// (fifteenth session, docs/benchmark_log.md "Eight rows on the tensor cores"): wide8_b4 1.07-1.32x and 1.25-1.41x of bf16
// at 8 rows of (14336, 4096) and (28672, 4096), five runs, where the Pallas path ran 1.00-1.11x; the other variants
// slower. The library's kernel (gemv.cu's gemv_mma) is wide8h_b4 with the activation's bytes converted at each use
// and exact scales.
#include "../mxfp8_xla/backends/gemv.cu"
#include "bulk_ring.cuh"

namespace {

__device__ __forceinline__ uint2 load_v2(const u8* p) {
  uint2 v;
  asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

// c += A B: A [16, 32] E4M3 (this lane's row g: a0, a2; rows 8..15 zero), B [32, 8] E4M3 (column g: b0, b1).
__device__ __forceinline__ void mma_rows8(float (&c)[4], u32 a0, u32 a2, u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// The A fragment of block b: activation row g's bytes 8t .. 8t + 7 of it (gemv.cu's quantize_fragment) and the
// block's factor (NaN for a block holding an Inf or a NaN, whose bytes are E4M3 NaNs; 0 for a zero row).
__device__ __forceinline__ void quantize_fragment_factor(const u16* __restrict__ x, int m, int k, int b, int g, int t,
                                                         uint2& xa, float& fx) {
  u32 biased;
  xa = quantize_fragment(x, m, k, b, g, 8 * t, biased);
  fx = biased == 255 ? __uint_as_float(0x7fc00000u) : g < m ? pow2(static_cast<int>(biased) - 127) : 0.f;
}

// The units' loop with DEPTH units ahead in registers: step(cur, fill) takes unit cur and starts loading into fill.
template <int DEPTH, typename Step, typename U>
__device__ __forceinline__ void run_units(Step& step, U& a, U& b, U& c) {
  if (DEPTH == 1) {
    while (step(a, b) && step(b, a)) {
    }
  } else {
    while (step(a, c) && step(b, a) && step(c, b)) {
    }
  }
}

template <int BPW>
struct Unit {
  uint2 q[BPW];             // weight row g, bytes 8t .. 8t + 7 of each of the warp's blocks
  u32 s0[BPW / 4], s1[BPW / 4];  // scale bytes of weight rows 2t and 2t + 1, the warp's blocks
};

template <int BPW, int DEPTH, int MODE, typename OUT>
__device__ __forceinline__ void gemv_mma8(const u8* __restrict__ w, const u8* __restrict__ sw,
                                          const u16* __restrict__ x, OUT* __restrict__ out,
                                          const int* __restrict__ dims) {
  __shared__ float partial[2][kMaxWarps][64];
  const int m = dims[0], n = dims[1], k = dims[2], kb = k / 32, units = n / 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, g = lane >> 2, t = lane & 3;
  const int b0 = warp * BPW;

  auto load = [&](int unit, Unit<BPW>& d) {
    if (unit >= units) return;
    const u64 row = static_cast<u64>(unit) * 8 + g;
#pragma unroll
    for (int j = 0; j < BPW; ++j) d.q[j] = load_v2(w + row * k + 32 * (b0 + j) + 8 * t);
#pragma unroll
    for (int j = 0; j < BPW / 4; ++j) {
      d.s0[j] = load32(sw + (static_cast<u64>(unit) * 8 + 2 * t) * kb + b0 + 4 * j);
      d.s1[j] = load32(sw + (static_cast<u64>(unit) * 8 + 2 * t + 1) * kb + b0 + 4 * j);
    }
  };
  Unit<BPW> a, b, c;
  int unit = blockIdx.x, i = 0;
  load(unit, a);
  if (DEPTH == 2) load(unit + gridDim.x, b);

  uint2 xa[BPW];
  float fx[BPW];
#pragma unroll
  for (int j = 0; j < BPW; ++j) quantize_fragment_factor(x, m, k, b0 + j, g, t, xa[j], fx[j]);

  auto step = [&](const Unit<BPW>& cur, Unit<BPW>& fill) {
    if (unit >= units) return false;
    load(unit + DEPTH * gridDim.x, fill);
    float acc0 = 0.f, acc1 = 0.f;
    if (MODE == 1) {
      u32 fold = cur.s0[0] ^ cur.s1[0];
#pragma unroll
      for (int j = 0; j < BPW; ++j) fold ^= cur.q[j].x ^ cur.q[j].y;
      acc0 = static_cast<float>(fold & 1);
    } else {
#pragma unroll
      for (int j = 0; j < BPW; ++j) {
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_rows8(d, xa[j].x, xa[j].y, cur.q[j].x, cur.q[j].y);
        const u32 s0 = cur.s0[j / 4] >> (8 * (j % 4)), s1 = cur.s1[j / 4] >> (8 * (j % 4));
        const float fw0 = scale_factor(s0 & 0xff), fw1 = scale_factor(s1 & 0xff);
        acc0 = fmaf(d[0] * fw0, fx[j], acc0), acc1 = fmaf(d[1] * fw1, fx[j], acc1);
      }
    }
    partial[i & 1][warp][g * 8 + 2 * t] = acc0, partial[i & 1][warp][g * 8 + 2 * t + 1] = acc1;
    __syncthreads();  // partial[i & 1] is written again two units on, after the next barrier
    if (threadIdx.x < 8 * m) {
      float sum = 0.f;
      for (int q = 0; q < warps; ++q) sum += partial[i & 1][q][threadIdx.x];
      store(out + static_cast<u64>(threadIdx.x >> 3) * n + static_cast<u64>(unit) * 8 + (threadIdx.x & 7), sum);
    }
    unit += gridDim.x, ++i;
    return true;
  };
  run_units<DEPTH>(step, a, b, c);
}

// c = A B: A [16, 32] E4M3 = a unit's 16 weight rows (this lane: row g's bytes wg, row g + 8's bytes wg8), B [32, 8]
// E4M3 = the activation rows (column g: xb), into a fresh float32 accumulator.
__device__ __forceinline__ void mma_weight16(float (&c)[4], uint2 wg, uint2 wg8, uint2 xb) {
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
      : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
      : "r"(wg.x), "r"(wg8.x), "r"(wg.y), "r"(wg8.y), "r"(xb.x), "r"(xb.y), "f"(0.f));
}

// c += A B in f16 MMAs: A [16, 16] (this lane: row g's f16 pairs a0, a2, row g + 8's a1, a3), B [16, 8] (column g: b0,
// b1), float32 accumulation.
__device__ __forceinline__ void mma_f16(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <int BPW, int ROWS>
struct Wide {
  uint4 q[BPW / 2 * ROWS / 8];  // q[(ROWS / 8) p + r]: weight row g + 8r, bytes 64p + 16t .. + 15 of blocks 2p, 2p + 1
  u32 s[ROWS / 8][(BPW + 3) / 4];  // scale bytes of weight rows g (and g + 8), the warp's blocks
};

constexpr int kSlots = 4;  // FREE: units a warp may run ahead of the CTA's slowest

// Units of ROWS (8 or 16) weight rows as the MMA's A operand (rows 8..15 zero at 8), each lane loading 16 bytes: a
// quad reads 64 contiguous bytes (two blocks) of its row, a warp load 8 rows x 64 bytes. Lanes t and t ^ 2 then swap
// 8 bytes so that each lane holds bytes off(t) .. off(t) + 7 of both blocks, off = 0, 16, 8, 24 for t = 0..3 (any
// order of K inside a block is the same sum, so the activation's B fragment is quantized in the same order).
// F16 = 0: one E4M3 m16n8k32 MMA a block (which ptxas turns, on sm_90, into conversions of both operands and two f16
// MMAs); F16 = 1: the same two f16 MMAs written out, the activation's B fragments converted to f16 once. DEPTH units
// ahead in registers (1 or 2).
// PER_SM CTAs an SM (launch bound); with more than one, the activation's fragments wait in shared memory.
// The warps' sums of a unit meet in shared memory: FREE = 0 after a CTA barrier a unit (double-buffered); FREE = 1
// by shared-memory float atomics into a ring of kSlots slots, the unit's last warp writing it out, so that no warp
// waits for the others unless it is kSlots units ahead.
template <int BPW, int ROWS, int MODE, int FREE, int F16, int DEPTH, int PER_SM, typename OUT>
__device__ __forceinline__ void gemv_wide(const u8* __restrict__ w, const u8* __restrict__ sw,
                                          const u16* __restrict__ x, OUT* __restrict__ out,
                                          const int* __restrict__ dims) {
  constexpr int R8 = ROWS / 8, E = ROWS * 8, MAXW = kMaxWarps / PER_SM, XS = PER_SM > 1;
  __shared__ float partial[FREE ? kSlots : 2][FREE ? 1 : MAXW][E];
  __shared__ uint2 xs[XS ? MAXW * BPW * 32 : 1];  // XS: the activation's B fragments, [block][lane]
  __shared__ int arrived[kSlots], drained[kSlots];
  const int m = dims[0], n = dims[1], k = dims[2], kb = k / 32, units = n / ROWS;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, g = lane >> 2, t = lane & 3;
  const int b0 = warp * BPW, off = (t & 1) * 16 + (t >> 1) * 8;
  const bool low = t < 2;

  auto load = [&](int unit, Wide<BPW, ROWS>& d) {
    if (unit >= units) return;
    const u64 row = static_cast<u64>(unit) * ROWS + g;
    const u8* p = w + row * k + 32 * b0 + 16 * t;
#pragma unroll
    for (int j = 0; j < BPW / 2; ++j) {
#pragma unroll
      for (int r = 0; r < R8; ++r) d.q[R8 * j + r] = load16(p + 8 * r * k + 64 * j);
    }
#pragma unroll
    for (int j = 0; j < (BPW + 3) / 4; ++j) {
#pragma unroll
      for (int r = 0; r < R8; ++r) d.s[r][j] = load32(sw + (row + 8 * r) * kb + b0 + 4 * j);
    }
  };
  Wide<BPW, ROWS> a, b, c;
  int unit = blockIdx.x, i = 0;
  load(unit, a);
  if (DEPTH == 2) load(unit + gridDim.x, b);
  if (FREE) {
    for (int e = threadIdx.x; e < kSlots * E; e += blockDim.x) partial[e / E][0][e % E] = 0.f;
    if (threadIdx.x < kSlots) arrived[threadIdx.x] = 0, drained[threadIdx.x] = 0;
    __syncthreads();
  }

  uint2 xb[BPW];
  u32 ex0[(BPW + 3) / 4] = {}, ex1[(BPW + 3) / 4] = {};  // the blocks' biased exponents of activation rows 2t, 2t + 1
#pragma unroll
  for (int j = 0; j < BPW; ++j) {
    u32 e;
    xb[j] = quantize_fragment(x, m, k, b0 + j, g, off, e);
    ex0[j / 4] |= __shfl_sync(0xffffffffu, e, 8 * t) << (8 * (j % 4));
    ex1[j / 4] |= __shfl_sync(0xffffffffu, e, 8 * t + 4) << (8 * (j % 4));
    if (XS) xs[(b0 + j) * 32 + lane] = xb[j];
  }
  uint4 xh[F16 ? BPW : 1];  // F16: xb as f16 pairs
  if (F16) {
#pragma unroll
    for (int j = 0; j < BPW; ++j)
      xh[j] = make_uint4(cvt_pair(xb[j].x), cvt_pair(xb[j].x >> 16), cvt_pair(xb[j].y), cvt_pair(xb[j].y >> 16));
  }
  // gemv.cu's block_factor: exact for the probe's data (byte 255, subnormal and overflowing products not handled).
  auto factor = [](u32 sw, u32 ex, int j) { return block_factor(sw, ex, j % 4); };

  auto step = [&](const Wide<BPW, ROWS>& cur, Wide<BPW, ROWS>& fill) {
    if (unit >= units) return false;
    load(unit + DEPTH * gridDim.x, fill);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (MODE == 1) {
      u32 fold = cur.s[0][0];
#pragma unroll
      for (int j = 0; j < BPW / 2 * R8; ++j) fold ^= cur.q[j].x ^ cur.q[j].y ^ cur.q[j].z ^ cur.q[j].w;
      acc[0] = static_cast<float>(fold & 1);
    } else {
#pragma unroll
      for (int p = 0; p < BPW / 2; ++p) {
        uint2 blk[2][2] = {};  // [block 2p + h][row g + 8r]
#pragma unroll
        for (int r = 0; r < R8; ++r) {
          const uint4 v = cur.q[R8 * p + r];
          const u32 r0 = __shfl_xor_sync(0xffffffffu, low ? v.z : v.x, 2);
          const u32 r1 = __shfl_xor_sync(0xffffffffu, low ? v.w : v.y, 2);
          blk[0][r] = low ? make_uint2(v.x, v.y) : make_uint2(r0, r1);
          blk[1][r] = low ? make_uint2(r0, r1) : make_uint2(v.z, v.w);
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int j = 2 * p + h;
          float d[4] = {0.f, 0.f, 0.f, 0.f};
          if (F16) {
            const uint2 wg = blk[h][0], w8 = blk[h][R8 - 1];
            const bool two = R8 == 2;
            mma_f16(d, cvt_pair(wg.x), two ? cvt_pair(w8.x) : 0u, cvt_pair(wg.x >> 16), two ? cvt_pair(w8.x >> 16) : 0u,
                    xh[j].x, xh[j].y);
            mma_f16(d, cvt_pair(wg.y), two ? cvt_pair(w8.y) : 0u, cvt_pair(wg.y >> 16), two ? cvt_pair(w8.y >> 16) : 0u,
                    xh[j].z, xh[j].w);
          } else {
            mma_weight16(d, blk[h][0], blk[h][1], XS ? xs[(b0 + j) * 32 + lane] : xb[j]);
          }
          acc[0] = fmaf(d[0], factor(cur.s[0][j / 4], ex0[j / 4], j), acc[0]);
          acc[1] = fmaf(d[1], factor(cur.s[0][j / 4], ex1[j / 4], j), acc[1]);
          if (R8 == 2) {
            acc[2] = fmaf(d[2], factor(cur.s[1][j / 4], ex0[j / 4], j), acc[2]);
            acc[3] = fmaf(d[3], factor(cur.s[1][j / 4], ex1[j / 4], j), acc[3]);
          }
        }
      }
    }
    if (FREE) {
      const int slot = i % kSlots;
      if (lane == 0) {
        while (*static_cast<volatile int*>(&drained[slot]) != i / kSlots) {
        }
        __threadfence_block();
      }
      __syncwarp();
      float* part = partial[slot][0];  // [weight row][activation row]
      atomicAdd(part + g * 8 + 2 * t, acc[0]), atomicAdd(part + g * 8 + 2 * t + 1, acc[1]);
      if (R8 == 2) atomicAdd(part + (g + 8) * 8 + 2 * t, acc[2]), atomicAdd(part + (g + 8) * 8 + 2 * t + 1, acc[3]);
      __syncwarp();
      int last = 0;
      if (lane == 0) {
        __threadfence_block();
        last = atomicAdd(&arrived[slot], 1) == warps - 1;
        __threadfence_block();
      }
      if (__shfl_sync(0xffffffffu, last, 0)) {
#pragma unroll
        for (int e = lane; e < E; e += 32) {
          const int col = e >> 3, row = e & 7;
          const float sum = *static_cast<volatile float*>(part + e);
          if (row < m && col < ROWS) store(out + static_cast<u64>(row) * n + static_cast<u64>(unit) * ROWS + col, sum);
          part[e] = 0.f;
        }
        __syncwarp();
        if (lane == 0) {
          arrived[slot] = 0;
          __threadfence_block();
          *static_cast<volatile int*>(&drained[slot]) = i / kSlots + 1;
        }
      }
    } else {
      float* part = partial[i & 1][warp];  // [weight row][activation row]
      part[g * 8 + 2 * t] = acc[0], part[g * 8 + 2 * t + 1] = acc[1];
      if (R8 == 2) part[(g + 8) * 8 + 2 * t] = acc[2], part[(g + 8) * 8 + 2 * t + 1] = acc[3];
      __syncthreads();  // partial[i & 1] is written again two units on, after the next barrier
      if (threadIdx.x < ROWS * m) {
        const int row = threadIdx.x / ROWS, col = threadIdx.x % ROWS;
        float sum = 0.f;
        for (int q = 0; q < warps; ++q) sum += partial[i & 1][q][col * 8 + row];
        store(out + static_cast<u64>(row) * n + static_cast<u64>(unit) * ROWS + col, sum);
      }
    }
    unit += gridDim.x, ++i;
    return true;
  };
  run_units<DEPTH>(step, a, b, c);
}

constexpr int kRingBlocks = 16;  // the most blocks a warp owns in a unit (its activation bytes stay in registers)

template <int S, typename OUT>
__device__ __forceinline__ void gemv_ring8(const u8* __restrict__ w, const u8* __restrict__ sw,
                                           const u16* __restrict__ x, OUT* __restrict__ out,
                                           const int* __restrict__ dims) {
  extern __shared__ __align__(128) u8 ring[];
  __shared__ __align__(8) u64 full[S];
  const int m = dims[0], n = dims[1], k = dims[2], kb = k / 32, units = n / 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, g = lane >> 2, t = lane & 3;
  const int bpw = kb / warps, b0 = warp * bpw;
  const u32 stride = k + 16, wbytes = 8 * stride, stage_bytes = wbytes + 8 * kb;
  float* partial = reinterpret_cast<float*>(ring + S * stage_bytes);  // [2][warps][64]

  auto issue = [&](int unit, int s) {
    const u32 bar = smem_addr(&full[s]), dst = smem_addr(ring + s * stage_bytes);
    expect_bytes(bar, 8 * k + 8 * kb);
#pragma unroll
    for (int r = 0; r < 8; ++r) bulk(dst + r * stride, w + (static_cast<u64>(unit) * 8 + r) * k, k, bar);
    bulk(dst + wbytes, sw + static_cast<u64>(unit) * 8 * kb, 8 * kb, bar);
  };
  if (threadIdx.x == 0) {
    bars_init(full, S);
#pragma unroll
    for (int s = 0; s < S; ++s)
      if (blockIdx.x + s * gridDim.x < units) issue(blockIdx.x + s * gridDim.x, s);
  }
  __syncthreads();

  uint2 xa[kRingBlocks];
  float fx[kRingBlocks];
#pragma unroll
  for (int j = 0; j < kRingBlocks; ++j) {
    if (j >= bpw) break;
    quantize_fragment_factor(x, m, k, b0 + j, g, t, xa[j], fx[j]);
  }

  int s = 0;
  u32 parity = 0;
  for (int i = 0, unit = blockIdx.x; unit < units; unit += gridDim.x, ++i) {
    bar_wait(smem_addr(&full[s]), parity);
    const u8* stage = ring + s * stage_bytes;
    const u8* q = stage + g * stride + 32 * b0 + 8 * t;
    const u8* sc = stage + wbytes + b0;
    float acc0 = 0.f, acc1 = 0.f;
#pragma unroll
    for (int j4 = 0; j4 < kRingBlocks; j4 += 4) {
      if (j4 >= bpw) break;
      const u32 s0 = *reinterpret_cast<const u32*>(sc + 2 * t * kb + j4);
      const u32 s1 = *reinterpret_cast<const u32*>(sc + (2 * t + 1) * kb + j4);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int j = j4 + jj;
        const uint2 wq = *reinterpret_cast<const uint2*>(q + 32 * j);
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_rows8(d, xa[j].x, xa[j].y, wq.x, wq.y);
        const float fw0 = scale_factor((s0 >> (8 * jj)) & 0xff), fw1 = scale_factor((s1 >> (8 * jj)) & 0xff);
        acc0 = fmaf(d[0] * fw0, fx[j], acc0), acc1 = fmaf(d[1] * fw1, fx[j], acc1);
      }
    }
    float* part = partial + ((i & 1) * warps + warp) * 64;
    part[g * 8 + 2 * t] = acc0, part[g * 8 + 2 * t + 1] = acc1;
    __syncthreads();  // stage s is read, partial[i & 1] complete (written again two units on, after the next barrier)
    if (threadIdx.x == 0 && unit + S * gridDim.x < units) issue(unit + S * gridDim.x, s);
    if (threadIdx.x < 8 * m) {
      float sum = 0.f;
      for (int qw = 0; qw < warps; ++qw) sum += partial[((i & 1) * warps + qw) * 64 + threadIdx.x];
      store(out + static_cast<u64>(threadIdx.x >> 3) * n + static_cast<u64>(unit) * 8 + (threadIdx.x & 7), sum);
    }
    if (++s == S) s = 0, parity ^= 1;
  }
}

}  // namespace

#define RING8_KERNEL(S, OUT, SUFFIX)                                                                          \
  extern "C" __global__ void __launch_bounds__(512)                                                          \
      mxfp8_gemv_ring8_s##S##_##SUFFIX(const u8* w, const u8* sw, const u16* x, const int* dims, OUT* out) {    \
    gemv_ring8<S, OUT>(w, sw, x, out, dims);                                                                 \
  }
RING8_KERNEL(2, u16, bf16)
RING8_KERNEL(2, float, f32)
RING8_KERNEL(3, u16, bf16)
RING8_KERNEL(3, float, f32)
RING8_KERNEL(4, u16, bf16)
RING8_KERNEL(4, float, f32)

// BPW 4: 32 warps at K = 4096, one CTA an SM; BPW 8: 16 warps, two CTAs an SM (twice the registers a thread).
#define MMA8_KERNEL(BPW, BOUND, PREFIX, DEPTH, MODE, NAME, OUT, SUFFIX)                                       \
  extern "C" __global__ void __launch_bounds__(BOUND)                                                         \
      mxfp8_gemv_mma8##PREFIX##_d##DEPTH##NAME##_##SUFFIX(const u8* w, const u8* sw, const u16* x, const int* dims, \
                                                          OUT* out) {                                          \
    gemv_mma8<BPW, DEPTH, MODE, OUT>(w, sw, x, out, dims);                                                    \
  }
#define MMA8_KERNELS(BPW, BOUND, PREFIX, DEPTH, MODE, NAME)            \
  MMA8_KERNEL(BPW, BOUND, PREFIX, DEPTH, MODE, NAME, u16, bf16) \
  MMA8_KERNEL(BPW, BOUND, PREFIX, DEPTH, MODE, NAME, float, f32)

MMA8_KERNELS(4, 1024, , 1, 0, )
MMA8_KERNELS(4, 1024, , 2, 0, )
MMA8_KERNELS(4, 1024, , 1, 1, _loads)
MMA8_KERNELS(4, 1024, , 2, 1, _loads)
MMA8_KERNELS(8, 512, _b8, 1, 0, )
MMA8_KERNELS(8, 512, _b8, 1, 1, _loads)


// gemv_wide: mxfp8_gemv_wide{ROWS}[_free|h|_d2|h_d2|_x2]_b{BPW}[_loads] (_free: FREE; h: F16; _d2: DEPTH 2; _x2:
// PER_SM 2). BPW 4 is 32 warps at K = 4096 (64 registers), BPW 8 is 16 (128 registers, or 64 at two CTAs an SM).
#define WIDE_KERNEL(BPW, ROWS, BOUND, PER_SM, FREE, F16, DEPTH, F, MODE, NAME, OUT, SUFFIX)                       \
  extern "C" __global__ void __launch_bounds__(BOUND, PER_SM)                                                      \
      mxfp8_gemv_wide##ROWS##F##_b##BPW##NAME##_##SUFFIX(const u8* w, const u8* sw, const u16* x, const int* dims, \
                                                         OUT* out) {                                              \
    gemv_wide<BPW, ROWS, MODE, FREE, F16, DEPTH, PER_SM, OUT>(w, sw, x, out, dims);                               \
  }
#define WIDE_KERNELS(BPW, ROWS, BOUND, PER_SM, FREE, F16, DEPTH, F)                           \
  WIDE_KERNEL(BPW, ROWS, BOUND, PER_SM, FREE, F16, DEPTH, F, 0, , u16, bf16)                 \
  WIDE_KERNEL(BPW, ROWS, BOUND, PER_SM, FREE, F16, DEPTH, F, 0, , float, f32)                \
  WIDE_KERNEL(BPW, ROWS, BOUND, PER_SM, FREE, F16, DEPTH, F, 1, _loads, u16, bf16)           \
  WIDE_KERNEL(BPW, ROWS, BOUND, PER_SM, FREE, F16, DEPTH, F, 1, _loads, float, f32)

WIDE_KERNELS(4, 16, 1024, 1, 0, 0, 1, )
WIDE_KERNELS(8, 16, 512, 1, 0, 0, 1, )
WIDE_KERNELS(8, 16, 512, 1, 1, 0, 1, _free)
WIDE_KERNELS(4, 8, 1024, 1, 0, 0, 1, )
WIDE_KERNELS(4, 8, 1024, 1, 1, 0, 1, _free)
WIDE_KERNELS(8, 16, 512, 1, 0, 1, 1, h)
WIDE_KERNELS(4, 8, 1024, 1, 0, 1, 1, h)
WIDE_KERNELS(4, 16, 1024, 1, 0, 1, 1, h)
WIDE_KERNELS(8, 8, 512, 1, 0, 1, 1, h)
WIDE_KERNELS(8, 8, 512, 1, 0, 1, 2, h_d2)
WIDE_KERNELS(4, 8, 1024, 1, 0, 1, 2, h_d2)
WIDE_KERNELS(4, 8, 1024, 1, 0, 0, 2, _d2)
WIDE_KERNELS(8, 8, 512, 2, 0, 0, 1, _x2)
