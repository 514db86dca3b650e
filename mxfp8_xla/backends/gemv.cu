// The hopper backend's kernel for one activation row (mxfp8_xla/backends/cuda_gemv.py): one MXFP8 GEMV
// launch, SM89+ (measured on SM90 only). gemv.ptx is this file compiled by cuda_gemv.build_ptx.
//
//   out[0, n] = sum_b 2^(sw[n,b]-127) * sum_{k in block b} w[n,k] * xd[k],   xd = dequantize(quantize(x))
//
// The raw bf16 activation row comes in and the output row goes out in its own dtype: no separate
// quantization launch, no K split, no sum of partials, no weight preparation (w is [N, K] as stored).
// Every CTA quantizes the row itself, with the exact rule of mxfp8_xla.numerics.quantize_blocks, into
// shared memory as its decoded float32 values (qx * 2^e is exact in float32), while its first weight
// loads are in flight. Then each warp streams groups of G weight rows over the whole of K (group i,
// i + (warps in the grid), ...: a grid of fewer CTAs quantizes the row fewer times) on the CUDA cores (no
// MMA: at one row the tensor cores would idle 7/8 of their columns): lane l takes the 16-byte chunks
// l, l + 32, ... of each row (a warp's load reads 512 contiguous bytes), CH chunks a round, converts
// them exactly (cvt.rn.f16x2.e4m3x2, then f16 -> f32), multiplies each with the decoded activation
// and accumulates in float32. The G rows share each shared-memory read of the activation.
//
// Template parameters (the library instantiates WPC 8, G 1 or 2, CH 2 or 4, PF 0, EXACT 1; built with
// -DMXFP8_GEMV_PROBE, every variant benchmarks/cuda_gemv_probe.py measured):
//   WPC   warps per CTA
//   G     weight rows per warp, streamed together
//   CH    16-byte chunks per lane, row and round
//   PF    the next round's chunks are loaded before this round's arithmetic (registers double-buffered)
//   EXACT 1: each weight element is multiplied by its block factor before the product (the decoded weight
//         of emulation, inf where it overflows); 0: each 16-element partial sum is instead; 2 (guarded):
//         the partial sum where that is provably the same float32 arithmetic (below), else as 1
//   OUT   float or bf16 (u16 bits, rounded to nearest even)
// dims = {m (must be 1), n, k} in device memory; n % G == 0, k % (512 * CH) == 0; any grid size.
// Dynamic shared memory: 4 * k bytes (EXACT == 2: 4 * k + k / 32).

// No headers, so that NVRTC compiles it as well as nvcc.
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

namespace {

constexpr u32 kInfBits = 0x7f800000u;

__device__ __forceinline__ float pow2(int e) {
  // Exactly 2^e for e in [-127, 127] (2^-127 is a float32 subnormal).
  return __uint_as_float(e == -127 ? 0x00400000u : static_cast<u32>(e + 127) << 23);
}

__device__ __forceinline__ float scale_factor(u32 byte) {
  // E8M0 byte -> 2^(byte - 127); byte 255 is NaN.
  return byte == 255 ? __uint_as_float(0x7fc00000u) : pow2(static_cast<int>(byte) - 127);
}

__device__ __forceinline__ u32 cvt_pair(u32 pair) {
  // Bytes 0 and 1 of pair (E4M3) -> f16x2, byte 0 in the low half. Exact; NaN stays NaN.
  u32 out;
  asm("{.reg .b16 lo;\n cvt.u16.u32 lo, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;}" : "=r"(out) : "r"(pair));
  return out;
}

__device__ __forceinline__ float2 f16x2_to_float2(u32 h) {
  float2 f;
  asm("{.reg .b16 lo, hi;\n mov.b32 {lo, hi}, %2;\n cvt.f32.f16 %0, lo;\n cvt.f32.f16 %1, hi;}"
      : "=f"(f.x), "=f"(f.y)
      : "r"(h));
  return f;
}

__device__ __forceinline__ u32 e4m3x2(float lo, float hi) {
  // Round to nearest even, saturating to +-448 (NaN stays NaN); lo into byte 0.
  u16 out;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(out) : "f"(hi), "f"(lo));
  return out;
}

__device__ __forceinline__ uint4 load16(const u8* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ u32 load8(const u8* p) {
  u16 v;
  asm volatile("ld.global.nc.u8 %0, [%1];" : "=h"(v) : "l"(p));
  return v;
}

// Shared-memory index (in float4) of float4 i of 16-element chunk c, swizzled so that the 8 lanes of
// a quarter-warp reading float4 i of chunks c..c+7 hit 8 different 16-byte bank groups.
__device__ __forceinline__ int xs_index(int c, int i) { return c * 4 + (i ^ ((c >> 1) & 3)); }

// EXACT == 2 scales a chunk's partial sum only where the block's activation exponent e and weight
// exponent s - 127 satisfy |e| <= 100 and |s - 127 + e| <= 100. Then every product and partial sum,
// with or without the weight factor, is zero or a normal float32 (a multiple of 2^(e - 18) at least
// 2^-118 in magnitude, at most 2^122), so multiplying by the power of two commutes with every rounding:
// the result is bit for bit that of EXACT == 1.
constexpr int kGuardLimit = 100;
constexpr signed char kUnguarded = 127;  // xe of a block outside |e| <= 100, or a NaN block

// The activation row x [k] (bf16 bits) quantized and decoded into xs (and, with EXPONENTS, each block's
// scale exponent into xe). Each thread takes 8 elements a pass; the 4 threads of a 32-block find its
// amax with two shuffles.
template <bool EXPONENTS>
__device__ void quantize_row(const u16* __restrict__ x, float4* xs, signed char* xe, int k) {
  const int step = 8 * blockDim.x;
  for (int base = 0; base < k; base += step) {
    const int e0 = base + 8 * threadIdx.x;
    const bool active = e0 < k;  // k % 32 == 0: a block's 4 threads are all active or none
    uint4 v = active ? *reinterpret_cast<const uint4*>(x + e0) : make_uint4(0, 0, 0, 0);
    const u32 h[4] = {v.x, v.y, v.z, v.w};
    float f[8];
    u32 amax = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const u32 lo = h[i] << 16, hi = h[i] & 0xffff0000u;
      f[2 * i] = __uint_as_float(lo), f[2 * i + 1] = __uint_as_float(hi);
      amax = max(amax, max(lo & 0x7fffffffu, hi & 0x7fffffffu));
    }
    amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    if (!active) continue;
    float d[8];
    if (amax >= kInfBits) {  // a NaN or an Inf: scale byte 255, the whole block decodes to NaN
#pragma unroll
      for (int i = 0; i < 8; ++i) d[i] = __uint_as_float(0x7fc00000u);
      if (EXPONENTS && (e0 & 31) == 0) xe[e0 >> 5] = kUnguarded;
    } else {
      int e = static_cast<int>(amax >> 23) - 127 - 8 + ((amax & 0x7fffffu) > 0x600000u);
      e = min(max(e, -127), 127);  // finite bf16 blocks have e <= 120, so 2^-e is normal
      if (EXPONENTS && (e0 & 31) == 0) xe[e0 >> 5] = abs(e) <= kGuardLimit ? e : kUnguarded;
      const float down = pow2(-e), up = pow2(e);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 q = f16x2_to_float2(cvt_pair(e4m3x2(f[2 * i] * down, f[2 * i + 1] * down)));
        d[2 * i] = q.x * up, d[2 * i + 1] = q.y * up;
      }
    }
    const int c = e0 >> 4, i0 = (e0 & 15) >> 2;
    xs[xs_index(c, i0)] = make_float4(d[0], d[1], d[2], d[3]);
    xs[xs_index(c, i0 + 1)] = make_float4(d[4], d[5], d[6], d[7]);
  }
  __syncthreads();
}

template <bool EXACT>  // 0 or 1; EXACT == 2 picks one of them per chunk
__device__ __forceinline__ float chunk_dot(uint4 q, const float4 xv[4], float factor) {
  const u32 words[4] = {q.x, q.y, q.z, q.w};
  float p0 = 0.f, p1 = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 a = f16x2_to_float2(cvt_pair(words[i])), b = f16x2_to_float2(cvt_pair(words[i] >> 16));
    if (EXACT) a.x *= factor, a.y *= factor, b.x *= factor, b.y *= factor;
    p0 = fmaf(a.x, xv[i].x, p0), p1 = fmaf(a.y, xv[i].y, p1);
    p0 = fmaf(b.x, xv[i].z, p0), p1 = fmaf(b.y, xv[i].w, p1);
  }
  return EXACT ? p0 + p1 : (p0 + p1) * factor;
}

__device__ __forceinline__ void store(float* out, float v) { *out = v; }

__device__ __forceinline__ void store(u16* out, float v) {
  u16 b;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(v));
  *out = b;
}

template <int WPC, int G, int CH, bool PF, int EXACT, typename OUT>
__device__ __forceinline__ void gemv(const u8* __restrict__ w, const u8* __restrict__ sw,
                                     const u16* __restrict__ x, OUT* __restrict__ out,
                                     const int* __restrict__ dims) {
  extern __shared__ float4 xs[];
  const int n = dims[1], k = dims[2], kb = k / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rounds = k / (512 * CH);
  // Warp-persistent: warp i of the grid takes row groups i, i + warps, ... (a grid smaller than the
  // N / (WPC * G) CTAs quantizes the activation fewer times). Step s of a warp is round s % rounds of
  // its (s / rounds)-th group; the loads of step s + 1 may run into the next group.
  const int groups = n / G, warps = gridDim.x * WPC, first = blockIdx.x * WPC + warp;
  const int steps = first < groups ? ((groups - 1 - first) / warps + 1) * rounds : 0;
  auto row_of = [&](int s) { return (first + (s / rounds) * warps) * G; };

  uint4 cur[G][CH], nxt[G][CH];
  u32 cs[G][CH], ns[G][CH];
  auto load = [&](int s, uint4 (&d)[G][CH], u32 (&sc)[G][CH]) {
    const u8* wr = w + static_cast<u64>(row_of(s)) * k + 16 * lane;
    const u8* sr = sw + static_cast<u64>(row_of(s)) * kb + (lane >> 1);
    const int r = s % rounds;
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int u = 0; u < CH; ++u) {
        const int j = r * CH + u;  // chunk lane + 32 j: bytes 512 j + 16 lane, block 16 j + lane / 2
        d[g][u] = load16(wr + static_cast<u64>(g) * k + 512 * j);
        sc[g][u] = load8(sr + g * kb + 16 * j);
      }
    }
  };
  signed char* xe = reinterpret_cast<signed char*>(xs + k / 4);  // EXACT == 2: k / 32 more bytes
  if (steps > 0) load(0, cur, cs);
  quantize_row<EXACT == 2>(x, xs, xe, k);

  float acc[G] = {};
  for (int s = 0; s < steps; ++s) {
    if (PF && s + 1 < steps) load(s + 1, nxt, ns);
    const int r = s % rounds;
#pragma unroll
    for (int u = 0; u < CH; ++u) {
      const int c = lane + 32 * (r * CH + u);
      float4 xv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[i] = xs[xs_index(c, i)];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (EXACT == 2) {
          const int ex = xe[c >> 1];
          const bool fast = ex != kUnguarded && static_cast<unsigned>(static_cast<int>(cs[g][u]) - 127 + ex +
                                                                      kGuardLimit) <= 2u * kGuardLimit;
          acc[g] += fast ? chunk_dot<false>(cur[g][u], xv, scale_factor(cs[g][u]))
                         : chunk_dot<true>(cur[g][u], xv, scale_factor(cs[g][u]));
        } else {
          acc[g] += chunk_dot<EXACT == 1>(cur[g][u], xv, scale_factor(cs[g][u]));
        }
      }
    }
    if (r == rounds - 1) {
      const int row0 = row_of(s);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float v = acc[g];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) store(out + row0 + g, v);
        acc[g] = 0.f;
      }
    }
    if (s + 1 < steps) {
      if (PF) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
          for (int u = 0; u < CH; ++u) cur[g][u] = nxt[g][u], cs[g][u] = ns[g][u];
        }
      } else {
        load(s + 1, cur, cs);
      }
    }
  }
}

}  // namespace

#define GEMV_KERNEL(WPC, G, CH, PF, EXACT, OUT, NAME, ...)                     \
  extern "C" __global__ void __launch_bounds__(__VA_ARGS__)                    \
      NAME(const u8* w, const u8* sw, const u16* x, const int* dims, OUT* out) { \
    gemv<WPC, G, CH, PF, EXACT, OUT>(w, sw, x, out, dims);                     \
  }

#define GEMV(WPC, G, CH, PF, EXACT, OUT, SUFFIX) \
  GEMV_KERNEL(WPC, G, CH, PF, EXACT, OUT, mxfp8_gemv_w##WPC##_g##G##_c##CH##_p##PF##_e##EXACT##_##SUFFIX, WPC * 32)

// With at least MINB CTAs per SM, so ptxas keeps the registers under 65536 / (MINB * WPC * 32).
#define GEMV_MINB(WPC, G, CH, PF, EXACT, MINB, OUT, SUFFIX)                                                  \
  GEMV_KERNEL(WPC, G, CH, PF, EXACT, OUT, mxfp8_gemv_w##WPC##_g##G##_c##CH##_p##PF##_e##EXACT##_b##MINB##_##SUFFIX, \
              WPC * 32, MINB)

#define GEMV_OUTS(WPC, G, CH, PF, EXACT) \
  GEMV(WPC, G, CH, PF, EXACT, u16, bf16) GEMV(WPC, G, CH, PF, EXACT, float, f32)

#define GEMV_CH(WPC, G, PF, EXACT) GEMV_OUTS(WPC, G, 2, PF, EXACT) GEMV_OUTS(WPC, G, 4, PF, EXACT)
#define GEMV_G(WPC, PF, EXACT) GEMV_CH(WPC, 1, PF, EXACT) GEMV_CH(WPC, 2, PF, EXACT) GEMV_CH(WPC, 4, PF, EXACT)
#define GEMV_PF(WPC, EXACT) GEMV_G(WPC, 0, EXACT) GEMV_G(WPC, 1, EXACT)

#ifdef MXFP8_GEMV_PROBE
GEMV_PF(4, 1)
GEMV_PF(8, 1)
GEMV_PF(16, 1)
GEMV_PF(4, 0)
GEMV_PF(8, 0)
GEMV_PF(16, 0)
GEMV_PF(4, 2)
GEMV_PF(8, 2)
GEMV_PF(16, 2)
GEMV_MINB(8, 2, 4, 0, 1, 3, u16, bf16)  // 80 registers instead of 108 (ptxas 12.9), no spills
GEMV_MINB(8, 2, 4, 0, 1, 3, float, f32)
GEMV_MINB(8, 2, 4, 0, 2, 3, u16, bf16)
GEMV_MINB(8, 2, 4, 0, 2, 3, float, f32)
#else
GEMV_OUTS(8, 1, 2, 0, 1)
GEMV_OUTS(8, 1, 4, 0, 1)
GEMV_OUTS(8, 2, 2, 0, 1)
GEMV_OUTS(8, 2, 4, 0, 1)
#endif
