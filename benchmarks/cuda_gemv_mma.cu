// Probe (benchmarks/cuda_gemv_probe.py --mma): one MXFP8 GEMV launch for 1 to 16 activation rows on the tensor cores,
// the design that docs/benchmark_log.md proposed for 2-16 rows. Helpers from the library's one-row kernel
// (mxfp8_xla/backends/gemv.cu). Exact and measured slower than the shipped path at all but one shape (tenth session,
// "Tensor cores for 1-16 rows"); not routed by the library.
//
//   out[m, n] = sum_b 2^(sw[n,b]-127) 2^(sa[m,b]-127) * sum_{k in block b} w[n,k] * qa[m,k]
//
// The CTA quantizes the raw bf16 rows once into shared memory (E4M3 bytes, the factors 2^e and each block's largest
// factor over the rows; the exact rule of numerics.quantize_blocks; rows m .. 8 NT - 1 are zeros), then takes tiles of
// 16 weight rows (tiles blockIdx.x, + gridDim.x, ...). Its W warps split each tile's K: warp w takes the steps of 8
// blocks w, w + W, ... (kb % (8 W) == 0), the next step's loads in flight (registers double-buffered). A block is two
// mma.sync.m16n8k16 f16 MMAs per 8 activation rows (NT tiles of 8) into a fresh float32 accumulator (or, _f8, one
// m16n8k32 E4M3 MMA): lane (g, t) holds bytes 8t .. 8t + 7 of the block for weight rows g and g + 8 (the A fragments,
// one 8-byte load each) and for activation row g (the B fragment, one 8-byte shared-memory read); any order of K inside
// a block gives the same sum, so the MMA's K order is the one the loads make. E4M3 -> f16 is exact, so are the
// products; the block's sum is float32, then multiplied by the block's two factors and added to the lane's float32
// sums. Where that could differ from emulation's decoded operands (a weight factor >= 2^120, where a decoded weight can
// overflow, or factors whose product exceeds 2^105, where products can), one warp vote a step sends the step to the
// CUDA cores, element by element as gemv.cu's chunk_dots: decoded weight times decoded activation. Each tile's partial
// sums meet in shared memory (two buffers, one barrier a tile).
//
// Kernels mxfp8_gemv_mma_t{NT}{,_f8,_loads,_rowloads}_{bf16,f32}(w, sw, x, dims, out): dims = {m <= 8 NT, n, k} in
// device memory; n % 16 == 0, k % 512 == 0, kb % (8 W) == 0 for W warps; dynamic shared memory
// (cuda_gemv_probe.mma_smem) 8 NT (k + 32) + NT k + k / 8 + 2 W 16 8 NT 4 bytes. _loads and _rowloads (NT = 1) are
// the weight stream alone, with the kernel's 8-byte loads or with a half-warp reading 256 contiguous bytes of one row a
// load, and no result. Measured no faster and removed (results/cuda_gemv_probe_mma_{balanced,staged}_h200.log, code
// at dfaf00a): 16-byte loads, the first weight loads after the activation pass, whole-row loads staged through shared
// memory into the fragments.

#include "../mxfp8_xla/backends/gemv.cu"

namespace {

constexpr int kSteps = 8;               // blocks a warp takes per step (one 8-byte scale load per weight row)
constexpr u32 kLargestSafeByte = 246;   // weight factor <= 2^119: every decoded weight element finite
constexpr u32 kLargestSafeSum = 359;    // weight and activation factors' product <= 2^105: products, block sums finite

__device__ __forceinline__ void mma_f16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_e4m3(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint2 load_u64(const u8* p) {
  uint2 v;
  asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

__device__ __forceinline__ u32 biased_exponent(float f) { return (__float_as_uint(f) >> 23) & 0xff; }

__device__ __forceinline__ u32 largest_byte(u32 x) {
  x = max(x & 0x00ff00ffu, (x >> 8) & 0x00ff00ffu);
  return max(x & 0xffffu, x >> 16);
}

// Eight E4M3 bytes as float32 values times factor (emulation's decoded operand; inf where it overflows).
__device__ __forceinline__ void decode8(uint2 q, float factor, float (&d)[8]) {
  const u32 words[2] = {q.x, q.y};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float2 a = f16x2_to_float2(cvt_pair(words[i])), b = f16x2_to_float2(cvt_pair(words[i] >> 16));
    d[4 * i] = a.x * factor, d[4 * i + 1] = a.y * factor, d[4 * i + 2] = b.x * factor, d[4 * i + 3] = b.y * factor;
  }
}

template <int NT>
struct Shared {
  u8* q;             // [8 NT][k + 32] E4M3 bytes (row stride k + 32: the 8-byte B reads are free of bank conflicts)
  float* factor;     // [kb][8 NT] 2^e, NaN for a block holding an Inf or a NaN
  u32* largest;      // [kb] the largest biased exponent of a block's factors over the rows (NaN: 255)
  float* partial;    // [2][W][16][8 NT]
  int stride;
};

// Rows [0, m) of x quantized into s (rows m .. 8 NT - 1 zero): thread pairs (l, l ^ 1) hold the two halves of a block.
// Each thread takes two chunks a round, both loaded before either is quantized (8 NT k / 16 is a multiple of
// 2 blockDim.x: kb % (8 W) == 0).
template <int NT>
__device__ __forceinline__ void quantize_rows(const u16* __restrict__ x, int m, int k, const Shared<NT>& s) {
  const int chunks = k / 16;
  for (int c0 = threadIdx.x; c0 < 8 * NT * chunks; c0 += 2 * blockDim.x) {
    float f[2][16];
    u32 amax[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int c = c0 + u * blockDim.x, row = c / chunks, cc = c - row * chunks;
      amax[u] = 0;
      if (row < m) {
        amax[u] = load_elements(x + static_cast<u64>(row) * k + 16 * cc, f[u]);
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) f[u][i] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int c = c0 + u * blockDim.x, row = c / chunks, cc = c - row * chunks;
      const u32 block_amax = max(amax[u], __shfl_xor_sync(0xffffffffu, amax[u], 1));
      u32 bytes[4];
      float factor;
      if (block_amax >= kInfBits) {
#pragma unroll
        for (int i = 0; i < 4; ++i) bytes[i] = 0x7f7f7f7fu;  // E4M3 NaN
        factor = __uint_as_float(0x7fc00000u);
      } else {
        const int e = scale_exponent(block_amax);
        const float down = pow2(-e);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const u32 lo = e4m3x2(f[u][4 * i] * down, f[u][4 * i + 1] * down);
          const u32 hi = e4m3x2(f[u][4 * i + 2] * down, f[u][4 * i + 3] * down);
          bytes[i] = lo | hi << 16;
        }
        factor = pow2(e);
      }
      *reinterpret_cast<uint4*>(s.q + row * s.stride + 16 * cc) = make_uint4(bytes[0], bytes[1], bytes[2], bytes[3]);
      if (!(cc & 1)) {
        s.factor[(cc >> 1) * 8 * NT + row] = factor;
        atomicMax(s.largest + (cc >> 1), biased_exponent(factor));
      }
    }
  }
}

// One block (weight bytes wg, wg8 of rows g and g + 8, factors f0, f1) into acc on the tensor cores: the block's sum of
// products, then its two factors. F8: one E4M3 MMA (k = 32), else two f16 MMAs (k = 16) of the exactly decoded bytes.
template <int NT, bool F8>
__device__ __forceinline__ void block_mma(uint2 wg, uint2 wg8, float f0, float f1, int b, int lane,
                                          const Shared<NT>& s, float (&acc)[NT][4]) {
  const int g = lane >> 2, t = lane & 3;
  u32 a0[4], a1[4];
  if (F8) {
    a0[0] = wg.x, a0[1] = wg8.x, a0[2] = wg.y, a0[3] = wg8.y;
  } else {
    a0[0] = cvt_pair(wg.x), a0[1] = cvt_pair(wg8.x), a0[2] = cvt_pair(wg.x >> 16), a0[3] = cvt_pair(wg8.x >> 16);
    a1[0] = cvt_pair(wg.y), a1[1] = cvt_pair(wg8.y), a1[2] = cvt_pair(wg.y >> 16), a1[3] = cvt_pair(wg8.y >> 16);
  }
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const uint2 qa = *reinterpret_cast<const uint2*>(s.q + (8 * j + g) * s.stride + 32 * b + 8 * t);
    const float2 fa = *reinterpret_cast<const float2*>(s.factor + b * 8 * NT + 8 * j + 2 * t);
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    if (F8) {
      mma_e4m3(c, a0, qa.x, qa.y);
    } else {
      mma_f16(c, a0, cvt_pair(qa.x), cvt_pair(qa.x >> 16));
      mma_f16(c, a1, cvt_pair(qa.y), cvt_pair(qa.y >> 16));
    }
    acc[j][0] += c[0] * (f0 * fa.x), acc[j][1] += c[1] * (f0 * fa.y);
    acc[j][2] += c[2] * (f1 * fa.x), acc[j][3] += c[3] * (f1 * fa.y);
  }
}

// The same block on the CUDA cores, element by element as gemv.cu's chunk_dots: decoded weight times decoded activation
// (where a scaled block sum could differ from emulation's: a decoded weight or a product that overflows).
template <int NT>
__device__ __forceinline__ void block_exact(uint2 wg, uint2 wg8, float f0, float f1, int b, int lane,
                                            const Shared<NT>& s, float (&acc)[NT][4]) {
  const int t = lane & 3;
  float w0[8], w1[8];
  decode8(wg, f0, w0), decode8(wg8, f1, w1);
#pragma unroll
  for (int a = 0; a < 8 * NT; ++a) {
    float xa[8];
    decode8(*reinterpret_cast<const uint2*>(s.q + a * s.stride + 32 * b + 8 * t), s.factor[b * 8 * NT + a], xa);
    float p0 = 0.f, p1 = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) p0 = fmaf(w0[i], xa[i], p0), p1 = fmaf(w1[i], xa[i], p1);
    p0 += __shfl_xor_sync(0xffffffffu, p0, 1), p1 += __shfl_xor_sync(0xffffffffu, p1, 1);
    p0 += __shfl_xor_sync(0xffffffffu, p0, 2), p1 += __shfl_xor_sync(0xffffffffu, p1, 2);
    const int j = a / 8, col = a % 8;  // the C fragment's column 2t or 2t + 1 of tile j
    if (col == 2 * t) acc[j][0] += p0, acc[j][2] += p1;
    if (col == 2 * t + 1) acc[j][1] += p0, acc[j][3] += p1;
  }
}

template <int NT, bool F8, int MODE, typename OUT>
__device__ __forceinline__ void gemv_mma(const u8* __restrict__ w, const u8* __restrict__ sw,
                                         const u16* __restrict__ x, OUT* __restrict__ out,
                                         const int* __restrict__ dims) {
  extern __shared__ __align__(16) u8 smem[];
  const int m = dims[0], n = dims[1], k = dims[2], kb = k / 32, tiles = n / 16;
  const int warps = blockDim.x >> 5, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int steps = kb / (kSteps * warps);
  Shared<NT> s;
  s.stride = k + 32;
  s.q = smem;
  s.factor = reinterpret_cast<float*>(smem + 8 * NT * s.stride);
  s.largest = reinterpret_cast<u32*>(s.factor + kb * 8 * NT);
  s.partial = reinterpret_cast<float*>(s.largest + kb);

  uint2 cur[kSteps][2], nxt[kSteps][2], cs[2], ns[2];
  auto load = [&](int tile, int step, uint2 (&d)[kSteps][2], uint2 (&sc)[2]) {
    const int b0 = (step * warps + warp) * kSteps;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const u64 row = static_cast<u64>(tile) * 16 + g + 8 * r;
      if (MODE == 2) {  // a half-warp reads 256 contiguous bytes of one row a load (a step: 16 rows, 2 a load)
        if (r == 0) {
#pragma unroll
          for (int i = 0; i < kSteps; ++i) {
            const u64 whole = static_cast<u64>(tile) * 16 + 2 * i + (lane >> 4);
            const uint4 v = load16(w + whole * k + 32 * b0 + 16 * (lane & 15));
            d[i][0] = make_uint2(v.x, v.y), d[i][1] = make_uint2(v.z, v.w);
          }
        }
      } else {
#pragma unroll
        for (int i = 0; i < kSteps; ++i) d[i][r] = load_u64(w + row * k + 32 * (b0 + i) + 8 * t);
      }
      sc[r] = load_u64(sw + row * kb + b0);
    }
  };
  int tile = blockIdx.x, step = 0;
  if (tile < tiles) load(tile, 0, cur, cs);
  for (int b = threadIdx.x; b < kb; b += blockDim.x) s.largest[b] = 0;
  __syncthreads();
  quantize_rows(x, m, k, s);
  __syncthreads();

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  for (int parity = 0; tile < tiles;) {
    const bool last = step + 1 == steps;
    const int next_tile = last ? tile + gridDim.x : tile, next_step = last ? 0 : step + 1;
    if (next_tile < tiles) load(next_tile, next_step, nxt, ns);
    const int b0 = (step * warps + warp) * kSteps;
    if (MODE) {  // the weight stream alone: fold the loaded words into the sums
      u32 fold = cs[0].x ^ cs[1].y;
#pragma unroll
      for (int i = 0; i < kSteps; ++i) fold ^= cur[i][0].x ^ cur[i][0].y ^ cur[i][1].x ^ cur[i][1].y;
      acc[0][0] += static_cast<float>(fold & 1);
    } else {
      // One vote a step: the scaled block sums equal emulation's sums where no weight factor exceeds 2^119 and no
      // product of the two factors exceeds 2^105.
      const uint4 a_lo = *reinterpret_cast<const uint4*>(s.largest + b0);
      const uint4 a_hi = *reinterpret_cast<const uint4*>(s.largest + b0 + 4);
      const u32 a_max = max(max(max(a_lo.x, a_lo.y), max(a_lo.z, a_lo.w)),
                            max(max(a_hi.x, a_hi.y), max(a_hi.z, a_hi.w)));
      const u32 w_max = max(max(largest_byte(cs[0].x), largest_byte(cs[0].y)),
                            max(largest_byte(cs[1].x), largest_byte(cs[1].y)));
      const bool safe = w_max <= kLargestSafeByte && w_max + a_max <= kLargestSafeSum;
      // weight row g (r = 0) or g + 8 (r = 1): the factor of the step's block i
      auto factor = [&](int r, int i) { return scale_factor(((i < 4 ? cs[r].x : cs[r].y) >> (8 * (i & 3))) & 0xff); };
      if (__all_sync(0xffffffffu, safe)) {
#pragma unroll
        for (int i = 0; i < kSteps; ++i) {
          block_mma<NT, F8>(cur[i][0], cur[i][1], factor(0, i), factor(1, i), b0 + i, lane, s, acc);
        }
      } else {
#pragma unroll
        for (int i = 0; i < kSteps; ++i) {
          block_exact<NT>(cur[i][0], cur[i][1], factor(0, i), factor(1, i), b0 + i, lane, s, acc);
        }
      }
    }
    if (last) {
      float* part = s.partial + (parity * warps + warp) * 16 * 8 * NT;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        part[g * 8 * NT + 8 * j + 2 * t] = acc[j][0], part[g * 8 * NT + 8 * j + 2 * t + 1] = acc[j][1];
        part[(g + 8) * 8 * NT + 8 * j + 2 * t] = acc[j][2], part[(g + 8) * 8 * NT + 8 * j + 2 * t + 1] = acc[j][3];
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
      }
      __syncthreads();  // partial[parity] is written again two tiles on, after the next tile's barrier
      for (int i = threadIdx.x; i < 16 * m; i += blockDim.x) {
        const int a = i / 16, r = i % 16;
        float sum = 0.f;
        for (int q = 0; q < warps; ++q) sum += s.partial[(parity * warps + q) * 16 * 8 * NT + r * 8 * NT + a];
        store(out + static_cast<u64>(a) * n + static_cast<u64>(tile) * 16 + r, sum);
      }
      parity ^= 1;
    }
    tile = next_tile, step = next_step;
#pragma unroll
    for (int i = 0; i < kSteps; ++i) cur[i][0] = nxt[i][0], cur[i][1] = nxt[i][1];
    cs[0] = ns[0], cs[1] = ns[1];
  }
}

}  // namespace

#define MMA_KERNEL(NT, F8, MODE, NAME, OUT, SUFFIX)                                            \
  extern "C" __global__ void __launch_bounds__(512)                                               \
      mxfp8_gemv_mma_t##NT##NAME##_##SUFFIX(const u8* w, const u8* sw, const u16* x, const int* dims, OUT* out) { \
    gemv_mma<NT, F8, MODE, OUT>(w, sw, x, out, dims);                                             \
  }
#define MMA_KERNELS(NT, F8, MODE, NAME) \
  MMA_KERNEL(NT, F8, MODE, NAME, u16, bf16) MMA_KERNEL(NT, F8, MODE, NAME, float, f32)

MMA_KERNELS(1, false, 0, )
MMA_KERNELS(2, false, 0, )
MMA_KERNELS(1, true, 0, _f8)
MMA_KERNELS(2, true, 0, _f8)
MMA_KERNELS(1, false, 1, _loads)       // the weight stream alone, the kernel's 8-byte loads
MMA_KERNELS(1, false, 2, _rowloads)    // the weight stream alone, 256 contiguous bytes of a row a half-warp load
