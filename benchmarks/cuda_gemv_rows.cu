// The eighth session's one-row kernel, kept for benchmarks/cuda_gemv_probe.py to measure against the library's
// K-split kernel (mxfp8_xla/backends/gemv.cu, whose helpers it shares): every CTA quantizes the whole row into
// shared memory (decoded float32), then each warp streams groups of G weight rows over the whole of K (group i,
// i + (warps in the grid), ...): lane l takes the 16-byte chunks l, l + 32, ... of each row, CH chunks a round,
// and the G rows share each shared-memory read of the activation. On an H200 it streamed the weight at
// 1.7-3.0 TB/s, the K-split kernel at 2.1-3.4 (docs/benchmark_log.md).
//
// Template parameters:
//   WPC   warps per CTA
//   G     weight rows per warp, streamed together
//   CH    16-byte chunks per lane, row and round
//   PF    the next round's chunks are loaded before this round's arithmetic (registers double-buffered)
//   EXACT each weight element multiplied by its block factor (1), or each 16-element partial sum (0)
// dims = {m (must be 1), n, k}; n % G == 0, k % (512 * CH) == 0; any grid size. Dynamic shared memory 4 * k bytes.

#include "../mxfp8_xla/backends/gemv.cu"

namespace {

// A chunk's dot product with one row's decoded chunk xv: EXACT as the library's chunk_dots, else the 16-element partial
// sum is multiplied by the factor instead (faster, but finite where emulation's decoded weight overflows).
template <bool EXACT>
__device__ __forceinline__ float chunk_dot(uint4 q, const float4 (&xv)[4], float factor) {
  if (EXACT) {
    float acc[1] = {0.f};
    chunk_dots<1>(q, reinterpret_cast<const float4(&)[1][4]>(xv), factor, acc);
    return acc[0];
  }
  const u32 words[4] = {q.x, q.y, q.z, q.w};
  float p0 = 0.f, p1 = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = f16x2_to_float2(cvt_pair(words[i])), b = f16x2_to_float2(cvt_pair(words[i] >> 16));
    p0 = fmaf(a.x, xv[i].x, p0), p1 = fmaf(a.y, xv[i].y, p1);
    p0 = fmaf(b.x, xv[i].z, p0), p1 = fmaf(b.y, xv[i].w, p1);
  }
  return (p0 + p1) * factor;
}

// Shared-memory index (in float4) of float4 i of 16-element chunk c, swizzled so that the 8 lanes of
// a quarter-warp reading float4 i of chunks c..c+7 hit 8 different 16-byte bank groups.
__device__ __forceinline__ int xs_index(int c, int i) { return c * 4 + (i ^ ((c >> 1) & 3)); }

// The activation row x [k] (bf16 bits) quantized and decoded into xs. Each thread takes 8 elements a pass; the
// 4 threads of a 32-block find its amax with two shuffles.
__device__ void quantize_row(const u16* __restrict__ x, float4* xs, int k) {
  const int step = 8 * blockDim.x;
  for (int base = 0; base < k; base += step) {
    const int e0 = base + 8 * threadIdx.x;
    const bool active = e0 < k;  // k % 32 == 0: a block's 4 threads are all active or none
    float f[8] = {};
    u32 amax = active ? load_elements(x + e0, f) : 0u;
    amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    if (!active) continue;
    float d[8];
    quantize_part(f, amax, d);
    const int c = e0 >> 4, i0 = (e0 & 15) >> 2;
    xs[xs_index(c, i0)] = make_float4(d[0], d[1], d[2], d[3]);
    xs[xs_index(c, i0 + 1)] = make_float4(d[4], d[5], d[6], d[7]);
  }
  __syncthreads();
}

template <int WPC, int G, int CH, bool PF, bool EXACT, typename OUT>
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
  if (steps > 0) load(0, cur, cs);
  quantize_row(x, xs, k);

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
        acc[g] += chunk_dot<EXACT>(cur[g][u], xv, scale_factor(cs[g][u]));
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

GEMV_PF(4, 1)
GEMV_PF(8, 1)
GEMV_PF(16, 1)
GEMV_PF(4, 0)
GEMV_PF(8, 0)
GEMV_PF(16, 0)
GEMV_MINB(8, 2, 4, 0, 1, 3, u16, bf16)  // 80 registers instead of 108 (ptxas 12.9), no spills
GEMV_MINB(8, 2, 4, 0, 1, 3, float, f32)
GEMV_MINB(8, 2, 4, 0, 0, 3, u16, bf16)
GEMV_MINB(8, 2, 4, 0, 0, 3, float, f32)
