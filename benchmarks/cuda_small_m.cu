// Probe kernel (benchmarks/cuda_small_m_probe.py): MXFP8 x MXFP8 for few activation rows (M <= 16),
// Marlin-style, for SM89+ (mma.sync, cvt.f16x2.e4m3x2).
//
//   out[s, m, n] = sum over the blocks b of K-split s of
//                  2^(sw[n,b]-127) * 2^(sx[m,b]-127) * sum_{k in block b} w[n,k] * x[m,k]
//
// No shared-memory pipeline and no producer warps: every warp loads its own fp8 weight bytes
// straight from global memory into the registers of mma.sync's A operand, 16 weight rows at a
// time (the product is computed transposed, out.T = W @ x.T, so the weight fills the MMA's M=16
// and the activation rows its N=8 columns). Inside an MMA the order of K is free as long as A and
// B agree, so lane (g, t) (g = lane / 4, t = lane % 4) takes bytes 8t..8t+7 of each 32-element
// block of rows g and g+8: one 8-byte load per row and block. Each block's two m16n8k16 f16 MMAs
// go into a fresh accumulator that is scaled by the two E8M0 factors and added to the running sum
// in float32. E4M3 values (the activation's too, unscaled) are exact in f16 and their products in
// float32, so only the float32 sums round.
//
// Template parameters:
//   NT   activation column tiles of 8 (M <= 8 * NT)
//   KW   warps per CTA, splitting the CTA's K range; added up in shared memory
//   U    blocks loaded per warp before any is used (a multiple of 4: scale bytes come 4 at a time)
//   DEC  the weight's E4M3 -> f16: kCvt (cvt.rn.f16x2.e4m3x2, exact, NaN kept), kBits (Marlin's
//        bit moves, value * 2^-8, NaN bytes flagged and the row's outputs set to NaN at the end),
//        kNone (the bytes used as f16 bits: wrong, the ceiling of any decode)
//   TILED the weight arrives repacked (cuda_small_m_probe.tile_weight): each 16-row x 64-k tile is
//        1 KB, lane l's 16 bytes of rows g and g + 8 at l * 16 and 512 + l * 16, so a warp reads
//        512 contiguous bytes per 16-byte load (row-major, a warp instruction reads 32 bytes from
//        each of 8 rows)
//   XF16 the activation arrives as its E4M3 values in f16 ([M, K] f16, 16 bytes per lane and
//        block; for kBits each group of 4 in the order 0, 2, 1, 3) instead of fp8 bytes
//   PF   (TILED) the next round's weight tiles are loaded before this round's MMAs
//   HINT (TILED) weight loads carry the L2::256B prefetch-size hint
//   INTERLEAVE rounds of U blocks dealt out to the CTA's warps in turn (at any moment the CTA reads one
//        contiguous stretch of its rows) instead of one contiguous K range per warp
//   STAGES (TILED) > 0: the weight tiles go through a per-lane shared-memory ring by cp.async, STAGES - 1
//        rounds ahead (Marlin's pipeline without its ldmatrix), so loads in flight cost no registers
//   LUT  scale bytes become factors through a 256-entry shared-memory table instead of a compare and select
//   MASKX lanes skip the activation loads of padding rows (rows >= m; 7 of 8 at M = 1)
//   ROWWARPS (TILED) each warp takes its own 16 rows over the CTA's whole K range, so the CTA's KW
//        warps read the same activation stretch (served once from L2, then from L1); no reduction
//   LOADONLY (TILED) only the weight loads: no scales, activation, decode or MMA, nothing written (the
//        ceiling of this access pattern)
// CTAs along gridDim.y split K further. dims = {m, n, k} in device memory.
//
// On an H200 (results/cuda_small_m_probe_*_h200.*): 1e-7 to 6e-7 from emulation; the tiled weight
// stream alone as fast as XLA reads the bytes, the whole kernel 6-12 us slower than that stream
// (neither PF, HINT, INTERLEAVE, LUT, STAGES, MASKX nor ROWWARPS closed it). Nsight Compute
// (results/ncu_small_m_h200.log) finds it latency-bound: 0.75 waves, ~25 warps per SM, 64% of the
// cycles between a warp's instructions spent waiting on L1TEX loads, DRAM at 57% of peak (74% for
// the loads alone).
#include <stdint.h>

#include <type_traits>

#pragma nv_diag_suppress 128  // LOADONLY leaves the rest of a round unreachable, on purpose

namespace {

constexpr int kBlock = 32;
constexpr int kCvt = 0, kBits = 1, kNone = 2;

__device__ __forceinline__ float scale_factor(uint32_t byte) {
  // 2^(byte - 127): byte 0 is the subnormal 2^-127, byte 255 is NaN.
  uint32_t bits = byte == 0 ? 0x00400000u : (byte == 255 ? 0x7fc00000u : byte << 23);
  return __uint_as_float(bits);
}

__device__ __forceinline__ uint32_t cvt_pair(uint32_t pair) {
  // Bytes 0 and 1 of pair (E4M3) -> f16x2, byte 0 in the low half.
  uint32_t out;
  asm("{.reg .b16 lo;\n cvt.u16.u32 lo, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;}" : "=r"(out) : "r"(pair));
  return out;
}

__device__ __forceinline__ uint32_t bits_pair(uint32_t q) {
  // Bytes 1 and 3 of q (E4M3) -> f16x2 of their values * 2^-8 (exact, subnormals too; NaN is not kept).
  return (q & 0x80008000u) | ((q & 0x7f007f00u) >> 1);
}

__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragments of one block's two MMAs from rows g (lo) and g+8 (hi): a[0..3] for bytes 0..3, a[4..7] for 4..7.
template <int DEC>
__device__ __forceinline__ void decode(uint32_t a[8], uint2 lo, uint2 hi) {
  const uint32_t l[2] = {lo.x, lo.y}, h[2] = {hi.x, hi.y};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    uint32_t* f = a + 4 * i;
    if constexpr (DEC == kCvt) {
      f[0] = cvt_pair(l[i]), f[1] = cvt_pair(h[i]), f[2] = cvt_pair(l[i] >> 16), f[3] = cvt_pair(h[i] >> 16);
    } else if constexpr (DEC == kBits) {  // k order 0, 2 | 1, 3
      f[0] = bits_pair(l[i] << 8), f[1] = bits_pair(h[i] << 8), f[2] = bits_pair(l[i]), f[3] = bits_pair(h[i]);
    } else {
      f[0] = l[i], f[1] = h[i], f[2] = l[i] ^ h[i], f[3] = l[i] + h[i];
    }
  }
}

__device__ __forceinline__ uint4 load16(const uint8_t* p, bool hint) {
  // 16 bytes through the non-coherent path; hint: ask L2 to fetch 256 bytes around them.
  uint4 v;
  if (hint) {
    asm volatile("ld.global.nc.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
  } else {
    v = __ldg(reinterpret_cast<const uint4*>(p));
  }
  return v;
}

// Tiled weight: the 16 bytes of rows g (a) and g + 8 (b) of the U / 2 64-k tiles from block b0 on.
template <int U, bool HINT>
__device__ __forceinline__ void load_tiles(uint4 a[U / 2], uint4 b[U / 2], const uint8_t* w_tile, int b0) {
#pragma unroll
  for (int i = 0; i < U / 2; ++i) {
    const uint8_t* tile = w_tile + (size_t)(b0 + 2 * i) * 16 * kBlock;
    a[i] = load16(tile, HINT), b[i] = load16(tile + 512, HINT);
  }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t to = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ uint32_t nan_bytes(uint2 v) {
  // Nonzero iff one of the 8 E4M3 bytes is NaN (0x7f or 0xff): 0x7f + 1 is the only byte sum reaching 0x80.
  return (((v.x & 0x7f7f7f7fu) + 0x01010101u) | ((v.y & 0x7f7f7f7fu) + 0x01010101u)) & 0x80808080u;
}

template <int NT, int KW, int U, int DEC, bool XF16, bool TILED, bool PF = false, bool HINT = false,
          bool INTERLEAVE = false, bool LOADONLY = false, int STAGES = 0, bool LUT = false, bool MASKX = false,
          bool ROWWARPS = false>
__device__ __forceinline__ void small_m(const uint8_t* __restrict__ w, const uint8_t* __restrict__ sw,
                                        const void* __restrict__ x, const uint8_t* __restrict__ sx,
                                        float* __restrict__ out, const int* __restrict__ dims) {
  using XV = typename std::conditional<XF16, uint4, uint2>::type;
  const int m = dims[0], n = dims[1], k = dims[2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int kb = k / kBlock;  // scale columns
  const int cta_blocks = kb / gridDim.y, warp_blocks = ROWWARPS ? cta_blocks : cta_blocks / KW;
  const int cta_first = blockIdx.y * cta_blocks, rounds = warp_blocks / U;
  // The first block of round r: the warp's own contiguous K range, the CTA's whole range (ROWWARPS), or rounds
  // dealt out to the warps in turn.
  auto start = [&](int r) {
    if (ROWWARPS) return cta_first + r * U;
    return INTERLEAVE ? cta_first + (r * KW + warp) * U : cta_first + warp * warp_blocks + r * U;
  };
  const int row_tile = ROWWARPS ? blockIdx.x * KW + warp : blockIdx.x;
  const int row = row_tile * 16 + g;

  const uint8_t* w_lo = w + (size_t)row * k + 8 * t;
  const uint8_t* w_hi = w_lo + (size_t)8 * k;
  const uint8_t* w_tile = w + (size_t)row_tile * 16 * k + 16 * lane;
  const uint8_t* s_lo = sw + (size_t)row * kb;
  const uint8_t* s_hi = s_lo + (size_t)8 * kb;
  const char* x_lane = static_cast<const char*>(x) + sizeof(XV) * t;
  constexpr int x_elem = XF16 ? 2 : 1;

  float acc[NT][4] = {};
  uint32_t nan = 0;
  uint4 next_a[U / 2], next_b[U / 2];  // PF: the next round's tiles, loaded while this round computes
  uint32_t sink = 0;  // LOADONLY: every weight word, folded so that no load is dead
  __shared__ float factor_lut[LUT ? 256 : 1];  // LUT: scale byte -> float factor, one shared-memory load
  if constexpr (LUT) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) factor_lut[i] = scale_factor(i);
    __syncthreads();
  }
  auto factor = [&](uint32_t byte) { return LUT ? factor_lut[byte] : scale_factor(byte); };
  // STAGES: each lane's tile bytes go through its own slots of a shared-memory ring by cp.async,
  // STAGES - 1 rounds ahead (a lane reads back only what it copied, so no barrier is needed).
  __shared__ uint4 ring[STAGES > 0 ? KW : 1][STAGES > 0 ? STAGES : 1][U / 2][2][32];
  auto issue = [&](int round) {
    const int slot = STAGES > 0 ? round % STAGES : 0;
    const uint8_t* base = w_tile + (size_t)start(round) * 16 * kBlock;
#pragma unroll
    for (int i = 0; i < U / 2; ++i) {
      cp_async16(&ring[warp][slot][i][0][lane], base + i * 1024);
      cp_async16(&ring[warp][slot][i][1][lane], base + i * 1024 + 512);
    }
  };
  if constexpr (STAGES > 0) {
#pragma unroll
    for (int round = 0; round < STAGES - 1; ++round) {
      if (round < rounds) issue(round);
      cp_async_commit();
    }
  }
  if constexpr (PF) load_tiles<U, HINT>(next_a, next_b, w_tile, start(0));
  for (int r = 0; r < rounds; ++r) {
    const int b0 = start(r);
    uint2 lo[U], hi[U];
    XV xv[U][NT];
    uint32_t slo[U / 4], shi[U / 4], sxa[NT][U / 4], sxb[NT][U / 4];
    if constexpr (TILED) {
      uint4 a[U / 2], b[U / 2];
      if constexpr (STAGES > 0) {
        if (r + STAGES - 1 < rounds) issue(r + STAGES - 1);
        cp_async_commit();
        cp_async_wait<STAGES - 1>();  // round r's copies have landed
#pragma unroll
        for (int i = 0; i < U / 2; ++i) {
          a[i] = ring[warp][r % STAGES][i][0][lane], b[i] = ring[warp][r % STAGES][i][1][lane];
        }
      } else if constexpr (PF) {
#pragma unroll
        for (int i = 0; i < U / 2; ++i) a[i] = next_a[i], b[i] = next_b[i];
        if (r + 1 < rounds) load_tiles<U, HINT>(next_a, next_b, w_tile, start(r + 1));
      } else {
        load_tiles<U, HINT>(a, b, w_tile, b0);
      }
#pragma unroll
      for (int i = 0; i < U / 2; ++i) {
        lo[2 * i] = make_uint2(a[i].x, a[i].y), lo[2 * i + 1] = make_uint2(a[i].z, a[i].w);
        hi[2 * i] = make_uint2(b[i].x, b[i].y), hi[2 * i + 1] = make_uint2(b[i].z, b[i].w);
      }
    } else {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        lo[u] = __ldg(reinterpret_cast<const uint2*>(w_lo + (size_t)(b0 + u) * kBlock));
        hi[u] = __ldg(reinterpret_cast<const uint2*>(w_hi + (size_t)(b0 + u) * kBlock));
      }
    }
    if constexpr (LOADONLY) {
#pragma unroll
      for (int u = 0; u < U; ++u) sink ^= lo[u].x ^ lo[u].y ^ hi[u].x ^ hi[u].y;
      continue;
    }
#pragma unroll
    for (int q = 0; q < U / 4; ++q) {
      slo[q] = __ldg(reinterpret_cast<const uint32_t*>(s_lo + b0 + 4 * q));
      shi[q] = __ldg(reinterpret_cast<const uint32_t*>(s_hi + b0 + 4 * q));
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const char* xr = x_lane + (size_t)(8 * j + g) * k * x_elem;
      const bool x_row = !MASKX || 8 * j + g < m, a_col = !MASKX || 8 * j + 2 * t < m;
      const bool b_col = !MASKX || 8 * j + 2 * t + 1 < m;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        xv[u][j] = x_row ? __ldg(reinterpret_cast<const XV*>(xr + (size_t)(b0 + u) * kBlock * x_elem)) : XV{};
      }
#pragma unroll
      for (int q = 0; q < U / 4; ++q) {  // padding columns: byte 127, factor 1, times a zero sum
        const uint8_t* sa = sx + (size_t)(8 * j + 2 * t) * kb + b0 + 4 * q;
        sxa[j][q] = a_col ? __ldg(reinterpret_cast<const uint32_t*>(sa)) : 0x7f7f7f7fu;
        sxb[j][q] = b_col ? __ldg(reinterpret_cast<const uint32_t*>(sa + kb)) : 0x7f7f7f7fu;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int q = u / 4, sh = 8 * (u % 4);
      float f_lo = factor((slo[q] >> sh) & 0xff), f_hi = factor((shi[q] >> sh) & 0xff);
      if constexpr (DEC == kBits) {
        nan |= nan_bytes(lo[u]) | (nan_bytes(hi[u]) >> 7);  // row g in bits 7, 15, ..; row g + 8 in bits 0, 8, ..
      }
      uint32_t a[8];
      decode<DEC>(a, lo[u], hi[u]);
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        float p[4] = {0.f, 0.f, 0.f, 0.f};
        if constexpr (XF16) {
          mma(p, a, xv[u][j].x, xv[u][j].y);
          mma(p, a + 4, xv[u][j].z, xv[u][j].w);
        } else {
          mma(p, a, cvt_pair(xv[u][j].x), cvt_pair(xv[u][j].x >> 16));
          mma(p, a + 4, cvt_pair(xv[u][j].y), cvt_pair(xv[u][j].y >> 16));
        }
        if constexpr (DEC == kBits) {
#pragma unroll
          for (int e = 0; e < 4; ++e) p[e] *= 256.f;
        }
        const float fa = factor((sxa[j][q] >> sh) & 0xff), fb = factor((sxb[j][q] >> sh) & 0xff);
        acc[j][0] = fmaf(p[0] * f_lo, fa, acc[j][0]);
        acc[j][1] = fmaf(p[1] * f_lo, fb, acc[j][1]);
        acc[j][2] = fmaf(p[2] * f_hi, fa, acc[j][2]);
        acc[j][3] = fmaf(p[3] * f_hi, fb, acc[j][3]);
      }
    }
  }
  if constexpr (LOADONLY) {
    if (sink == 0x9e3779b9u) out[threadIdx.x] = 1.f;  // (almost) never: the output is not computed
    return;
  }
  if constexpr (DEC == kBits) {  // a NaN weight byte makes its row's outputs NaN, as in emulation
    nan |= __shfl_xor_sync(0xffffffffu, nan, 1);
    nan |= __shfl_xor_sync(0xffffffffu, nan, 2);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      if (nan & 0x80808080u) acc[j][0] = acc[j][1] = __int_as_float(0x7fc00000);
      if (nan & 0x01010101u) acc[j][2] = acc[j][3] = __int_as_float(0x7fc00000);
    }
  }

  __shared__ float red[KW > 1 ? KW - 1 : 1][NT * 4][32];
  if constexpr (KW > 1 && !ROWWARPS) {
    if (warp > 0) {
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp - 1][4 * j + e][lane] = acc[j][e];
    }
    __syncthreads();
    if (warp > 0) return;
#pragma unroll
    for (int v = 0; v < KW - 1; ++v)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] += red[v][4 * j + e][lane];
  }
  float* o = out + (size_t)blockIdx.y * m * n;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int c = 8 * j + 2 * t;
    if (c < m) {
      o[(size_t)c * n + row] = acc[j][0];
      o[(size_t)c * n + row + 8] = acc[j][2];
    }
    if (c + 1 < m) {
      o[(size_t)(c + 1) * n + row] = acc[j][1];
      o[(size_t)(c + 1) * n + row + 8] = acc[j][3];
    }
  }
}

}  // namespace

// Instantiations, named
// mxfp8_small_m_<cvt8|cvt|bits|none|tcvt|tnone|tload>[p][h][i][l][a<STAGES>][m][r]_nt<NT>_kw<KW>_u<U>
// (cvt8: fp8 activation bytes; t: the weight tiled; p: PF; h: HINT; i: INTERLEAVE; tload: LOADONLY; l: LUT;
// a<S>: STAGES = S, with the LUT; m: MASKX; r: ROWWARPS and MASKX).
#define SMALL_M(NAME, DEC, XF16, TILED, NT, KW, U, ...)                                                     \
  extern "C" __global__ void __launch_bounds__(32 * KW) mxfp8_small_m_##NAME##_nt##NT##_kw##KW##_u##U(      \
      const uint8_t* w, const uint8_t* sw, const void* x, const uint8_t* sx, const int* dims, float* out) { \
    small_m<NT, KW, U, DEC, XF16, TILED, ##__VA_ARGS__>(w, sw, x, sx, out, dims);                           \
  }

#define SMALL_M_DECODES(NT, KW, U)       \
  SMALL_M(cvt8, kCvt, false, false, NT, KW, U) \
  SMALL_M(cvt, kCvt, true, false, NT, KW, U)   \
  SMALL_M(bits, kBits, true, false, NT, KW, U) \
  SMALL_M(none, kNone, true, false, NT, KW, U) \
  SMALL_M(tcvt, kCvt, true, true, NT, KW, U)   \
  SMALL_M(tnone, kNone, true, true, NT, KW, U)

#define SMALL_M_CONFIGS(NT)  \
  SMALL_M_DECODES(NT, 4, 4) \
  SMALL_M_DECODES(NT, 4, 8) \
  SMALL_M_DECODES(NT, 8, 4) \
  SMALL_M_DECODES(NT, 8, 8) \
  SMALL_M(tcvt, kCvt, true, true, NT, 4, 16) \
  SMALL_M(tcvt, kCvt, true, true, NT, 8, 16) \
  SMALL_M(tnone, kNone, true, true, NT, 4, 16) \
  SMALL_M(tnone, kNone, true, true, NT, 8, 16) \
  SMALL_M_PREFETCH(NT, 4, 4)                 \
  SMALL_M_PREFETCH(NT, 4, 8)                 \
  SMALL_M_PREFETCH(NT, 8, 4)                 \
  SMALL_M(tnonep, kNone, true, true, NT, 4, 4, true, true) \
  SMALL_M_ORDER(NT, 4, 4)                                   \
  SMALL_M_ORDER(NT, 8, 4)                                   \
  SMALL_M_ORDER(NT, 16, 4)                                  \
  SMALL_M(tcvt, kCvt, true, true, NT, 16, 4)                \
  SMALL_M(tcvtl, kCvt, true, true, NT, 4, 4, false, false, false, false, 0, true) \
  SMALL_M(tcvtl, kCvt, true, true, NT, 8, 4, false, false, false, false, 0, true) \
  SMALL_M(tcvta3, kCvt, true, true, NT, 4, 4, false, false, false, false, 3, true) \
  SMALL_M(tcvta4, kCvt, true, true, NT, 4, 4, false, false, false, false, 4, true) \
  SMALL_M(tcvta8, kCvt, true, true, NT, 2, 4, false, false, false, false, 8, true) \
  SMALL_M(tcvta4, kCvt, true, true, NT, 2, 4, false, false, false, false, 4, true) \
  SMALL_M_XTRAFFIC(NT, 4, 4)                                                          \
  SMALL_M_XTRAFFIC(NT, 8, 4)                                                          \
  SMALL_M(tcvtr, kCvt, true, true, NT, 16, 4, false, false, false, false, 0, false, true, true)

#define SMALL_M_XTRAFFIC(NT, KW, U)                                                                \
  SMALL_M(tcvtm, kCvt, true, true, NT, KW, U, false, false, false, false, 0, false, true, false) \
  SMALL_M(tcvtr, kCvt, true, true, NT, KW, U, false, false, false, false, 0, false, true, true)

#define SMALL_M_ORDER(NT, KW, U)                                                \
  SMALL_M(tcvti, kCvt, true, true, NT, KW, U, false, false, true)              \
  SMALL_M(tload, kCvt, true, true, NT, KW, U, false, false, false, true)       \
  SMALL_M(tloadi, kCvt, true, true, NT, KW, U, false, false, true, true)

#define SMALL_M_PREFETCH(NT, KW, U)                         \
  SMALL_M(tcvth, kCvt, true, true, NT, KW, U, false, true) \
  SMALL_M(tcvtp, kCvt, true, true, NT, KW, U, true, false) \
  SMALL_M(tcvtph, kCvt, true, true, NT, KW, U, true, true)

SMALL_M_CONFIGS(1)
SMALL_M_CONFIGS(2)
