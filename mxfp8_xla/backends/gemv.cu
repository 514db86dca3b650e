// The hopper backend's kernels for one to eight activation rows (mxfp8_xla/backends/cuda_gemv.py): one MXFP8 GEMV
// launch, SM89+ (measured on SM90 only). gemv.ptx is this file compiled by cuda_gemv.build_ptx.
//
//   out[m, n] = sum_b 2^(sw[n,b]-127) * sum_{k in block b} w[n,k] * xd[m,k],   xd = dequantize(quantize(x))
//
// The raw activation rows (bf16, or float32 in the _xf32 kernels) come in and the output rows go out in their own
// dtype: no separate quantization launch, no sum of partials across launches, no weight preparation (w is [N, K] as
// stored).
// The CTA's T threads split K: thread t owns the 16-element chunks t, t + T, ..., t + (CPT - 1) T of every
// row (k == 16 * T * CPT exactly), so a warp's load reads 512 contiguous bytes of a row. Each thread
// quantizes its own chunks of each activation row once, with the exact rule of mxfp8_xla.numerics.quantize_blocks,
// into registers as their decoded float32 values (qx * 2^e is exact in float32; the two halves of a
// 32-block are lanes l and l ^ 1), while its first weight loads are in flight; the main loop reads no
// shared memory. The CTA then takes units of R weight rows (units blockIdx.x, + gridDim.x, ...; any grid size):
// each weight element is decoded exactly (cvt.rn.f16x2.e4m3x2, then f16 -> f32) and multiplied by its
// block factor before the product (emulation's decoded weight: inf where it overflows), the products
// are accumulated in float32 on the CUDA cores (no MMA: at one row the tensor cores would idle 7/8 of
// their columns), each thread's R * M partial sums are summed over its warp, then over the warps through
// shared memory, while the loads of the CTA's next unit are in flight (registers double-buffered).
//
// Kernels mxfp8_gemv_split_c{CPT}_r{R}[_m{M}][_xf32]_{bf16,f32}(w, sw, x, dims, out): x is [M, k] (M = 1 without
// _m; bf16, or float32 with _xf32), out [M, n]; dims = {M, n, k} in device memory; n % R == 0; launched with
// T = k / (16 * CPT) threads (a multiple of 32, at most the kernel's launch bound), no dynamic shared memory. OUT is
// float or bf16 (u16 bits, rounded to nearest even).
// Kernels mxfp8_gemv_split_c1_r4_addnorm[_xf32][_n{bf16,f32}]_{bf16,f32}(w, sw, x, delta, nw, eps, dims, out, h_out)
// put a residual add and an RMSNorm in front of the one-row kernel (add_norm_chunk below): out = RMSNorm(x + delta) @
// w^T, and CTA 0 writes h_out = x + delta ([1, k]); x, delta and h_out bf16 (float32 with _xf32), nw [k] of x's type
// (the other with _n), eps float32 [1]; launched as the one-row kernel.
// Kernels mxfp8_gemv_mma_r8[_xf32]_{bf16,f32}(w, sw, x, dims, out): 3 <= M <= 8 raw rows on the tensor cores (gemv_mma
// below); n % 8 == 0, k % 128 == 0, k <= 4096, launched with k / 4 threads, at least 8 M (a unit's 8 M outputs are
// summed one a thread).
// With -DMXFP8_GEMV_PROBE, more (CPT, R, M) for benchmarks/cuda_gemv_probe.py, which also includes this
// file from benchmarks/cuda_gemv_rows.cu (the eighth session's row-streaming kernel).

// No headers, so that NVRTC compiles it as well as nvcc.
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

namespace {

constexpr u32 kInfBits = 0x7f800000u;
constexpr int kMaxWarps = 32;
constexpr int kMaxMarkedUnits = 2048;  // the tensor-core kernel's units a CTA: N <= 2048 * 8 * CTAs

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
  asm("{.reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;}" : "=r"(out) : "r"(pair));
  return out;
}

__device__ __forceinline__ u32 cvt_pair_hi(u32 word) {
  // Bytes 2 and 3 of word, as cvt_pair converts bytes 0 and 1: ptxas reads the register's high half in the
  // conversion itself (F2FP ... R.H1), where cvt_pair(word >> 16) costs a shift on the ALU pipe, the pipe that bounds
  // the tensor-core kernel (docs/benchmark_log.md, "The tensor-core GEMV's ALU pipe").
  u32 out;
  asm("{.reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, hi;}" : "=r"(out) : "r"(word));
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

__device__ __forceinline__ u32 load32(const u8* p) {
  u32 v;
  asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ u32 load8(const u8* p) {
  u16 v;
  asm volatile("ld.global.nc.u8 %0, [%1];" : "=h"(v) : "l"(p));
  return v;
}

// The scale exponent e of a finite block whose largest absolute value has the bits amax: ceil(log2(amax / 448))
// from the float bits, clamped to [-127, 127] (finite bf16 blocks have e <= 120, so 2^-e is normal).
__device__ __forceinline__ int scale_exponent(u32 amax) {
  const int e = static_cast<int>(amax >> 23) - 127 - 8 + ((amax & 0x7fffffu) > 0x600000u);
  return min(max(e, -127), 127);
}

// The exact quantization of one 32-block (numerics.quantize_blocks' rule): N of its elements f, whose largest
// absolute value has the bits amax (the whole block's), quantized and decoded into d. A block holding an Inf
// or a NaN decodes to NaN everywhere, as scale byte 255 does.
template <int N>
__device__ __forceinline__ void quantize_part(const float (&f)[N], u32 amax, float (&d)[N]) {
  if (amax >= kInfBits) {
#pragma unroll
    for (int i = 0; i < N; ++i) d[i] = __uint_as_float(0x7fc00000u);
    return;
  }
  const int e = scale_exponent(amax);
  const float down = pow2(-e), up = pow2(e);
#pragma unroll
  for (int i = 0; i < N; i += 2) {
    const float2 q = f16x2_to_float2(cvt_pair(e4m3x2(f[i] * down, f[i + 1] * down)));
    d[i] = q.x * up, d[i + 1] = q.y * up;
  }
}

// N consecutive bf16 elements (N / 8 16-byte loads) as float32 values; returns their largest absolute value's bits.
template <int N>
__device__ __forceinline__ u32 load_elements(const u16* x, float (&f)[N]) {
  u32 amax = 0;
#pragma unroll
  for (int v = 0; v < N / 8; ++v) {
    const uint4 q = *reinterpret_cast<const uint4*>(x + 8 * v);
    const u32 h[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const u32 lo = h[i] << 16, hi = h[i] & 0xffff0000u;
      f[8 * v + 2 * i] = __uint_as_float(lo), f[8 * v + 2 * i + 1] = __uint_as_float(hi);
      amax = max(amax, max(lo & 0x7fffffffu, hi & 0x7fffffffu));
    }
  }
  return amax;
}

// N consecutive float32 elements (N / 4 16-byte loads); returns their largest absolute value's bits.
template <int N>
__device__ __forceinline__ u32 load_elements(const float* x, float (&f)[N]) {
  u32 amax = 0;
#pragma unroll
  for (int v = 0; v < N / 4; ++v) {
    const float4 q = *reinterpret_cast<const float4*>(x + 4 * v);
    f[4 * v] = q.x, f[4 * v + 1] = q.y, f[4 * v + 2] = q.z, f[4 * v + 3] = q.w;
    amax = max(max(amax, max(__float_as_uint(q.x) & 0x7fffffffu, __float_as_uint(q.y) & 0x7fffffffu)),
               max(__float_as_uint(q.z) & 0x7fffffffu, __float_as_uint(q.w) & 0x7fffffffu));
  }
  return amax;
}

// Elements 2i and 2i + 1 of a row of bf16 or float32 activations, as float32 values.
__device__ __forceinline__ float2 element_pair(const u16* x, int i) {
  const u32 v = reinterpret_cast<const u32*>(x)[i];
  return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
}

__device__ __forceinline__ float2 element_pair(const float* x, int i) { return reinterpret_cast<const float2*>(x)[i]; }

// A 16-element weight chunk q (E4M3 bytes) dotted with M activation rows' decoded chunks xv, added into acc in
// float32. Each weight element is multiplied by its block factor before its products (emulation's decoded weight,
// inf where it overflows), once for the M rows.
template <int M>
__device__ __forceinline__ void chunk_dots(uint4 q, const float4 (&xv)[M][4], float factor, float (&acc)[M]) {
  const u32 words[4] = {q.x, q.y, q.z, q.w};
  float p0[M], p1[M];
#pragma unroll
  for (int m = 0; m < M; ++m) p0[m] = 0.f, p1[m] = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 a = f16x2_to_float2(cvt_pair(words[i])), b = f16x2_to_float2(cvt_pair_hi(words[i]));
    a.x *= factor, a.y *= factor, b.x *= factor, b.y *= factor;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      p0[m] = fmaf(a.x, xv[m][i].x, p0[m]), p1[m] = fmaf(a.y, xv[m][i].y, p1[m]);
      p0[m] = fmaf(b.x, xv[m][i].z, p0[m]), p1[m] = fmaf(b.y, xv[m][i].w, p1[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] += p0[m] + p1[m];
}

__device__ __forceinline__ void store(float* out, float v) { *out = v; }

__device__ __forceinline__ void store(u16* out, float v) {
  u16 b;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(v));
  *out = b;
}

// R per-lane partial sums (R a power of two <= 32) summed over the warp's lanes with R - 1 + 5 - log2(R)
// shuffles: each step halves the rows a lane holds. Returns the sum of row `row`, held by every lane; the lanes
// whose low 5 - log2(R) bits are zero hold each row once.
template <int R>
__device__ __forceinline__ float warp_sum_rows(float (&a)[R], int lane, int& row) {
  constexpr int kSteps = R >= 32 ? 5 : R >= 16 ? 4 : R >= 8 ? 3 : R >= 4 ? 2 : R >= 2 ? 1 : 0;
  row = 0;
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    const int h = R >> (step + 1), o = 16 >> step;
    const bool up = lane & o;
#pragma unroll
    for (int i = 0; i < h; ++i) {
      const float send = up ? a[i] : a[i + h], keep = up ? a[i + h] : a[i];
      a[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
    row += up ? h : 0;
  }
#pragma unroll
  for (int o = 16 >> kSteps; o > 0; o >>= 1) a[0] += __shfl_xor_sync(0xffffffffu, a[0], o);
  return a[0];
}

// Each thread's CPT chunks of M raw rows x [M, k] (X: u16 for bf16, or float), quantized exactly and decoded into xv
// (float32).
template <int CPT, int M, typename X>
__device__ __forceinline__ void quantize_chunks(const X* __restrict__ x, int k, float4 (&xv)[CPT][M][4]) {
#pragma unroll
  for (int j = 0; j < CPT; ++j) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float f[16], d[16];
      u32 amax = load_elements(x + static_cast<u64>(m) * k + 16 * (j * blockDim.x + threadIdx.x), f);
      amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      quantize_part(f, amax, d);
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[j][m][i] = make_float4(d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]);
    }
  }
}

// The product of M activation rows with w, their decoded chunks written into xv by activation(xv, k) (every
// thread calls it once, while its first weight loads are in flight): quantize_chunks for the library's kernels.
// Each thread keeps all M rows' chunks in registers, and each decoded weight element serves the M rows (the
// library's kernels have M = 1 and 2; the probe's M = 4 runs out of registers). One unit's loads are in flight, in
// registers (ptxas issues them after the current unit's products); two units ahead, in three register buffers, was
// slower for every kernel (eighteenth session; the code is in dae2a31's gemv.cu).
template <int CPT, int R, int M, typename OUT, typename Activation>
__device__ __forceinline__ void gemv_split(const u8* __restrict__ w, const u8* __restrict__ sw,
                                           Activation activation, OUT* __restrict__ out,
                                           const int* __restrict__ dims) {
  __shared__ float partial[2][kMaxWarps][R * M];
  const int n = dims[1], k = dims[2], kb = k / 32, units = n / R;
  const int threads = blockDim.x, warps = threads >> 5, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  uint4 cur[R][CPT], nxt[R][CPT];
  u32 cs[R][CPT], ns[R][CPT];
  auto load = [&](int unit, uint4 (&d)[R][CPT], u32 (&sc)[R][CPT]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const u64 row = static_cast<u64>(unit) * R + r;
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
        const int c = j * threads + threadIdx.x;
        d[r][j] = load16(w + row * k + 16 * c);
        sc[r][j] = load8(sw + row * kb + (c >> 1));
      }
    }
  };
  int unit = blockIdx.x;
  if (unit < units) load(unit, cur, cs);

  float4 xv[CPT][M][4];
  activation(xv, k);

  for (int i = 0; unit < units; unit += gridDim.x, ++i) {
    if (unit + gridDim.x < units) load(unit + gridDim.x, nxt, ns);
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
#pragma unroll
      for (int j = 0; j < CPT; ++j) chunk_dots(cur[r][j], xv[j], scale_factor(cs[r][j]), acc[r]);
    }
    int row;  // of the R * M sums: weight row row / M, activation row row % M
    const float v = warp_sum_rows<R * M>(reinterpret_cast<float(&)[R * M]>(acc), lane, row);
    if ((lane & (32 / (R * M) - 1)) == 0) partial[i & 1][warp][row] = v;
    __syncthreads();  // partial[i & 1] is written again two units on, after the next barrier
    if (threadIdx.x < R * M) {
      float sum = 0.f;
      for (int q = 0; q < warps; ++q) sum += partial[i & 1][q][threadIdx.x];
      const int r = threadIdx.x / M, m = threadIdx.x % M;
      store(out + static_cast<u64>(m) * n + static_cast<u64>(unit) * R + r, sum);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int j = 0; j < CPT; ++j) cur[r][j] = nxt[r][j], cs[r][j] = ns[r][j];
    }
  }
}

__device__ __forceinline__ float round_bf16(float v) {
  u16 b;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(v));
  return __uint_as_float(static_cast<u32>(b) << 16);
}

__device__ __forceinline__ float rsqrt_approx(float v) {
  float r;
  asm("rsqrt.approx.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}

// v rounded to nearest even in the element type whose pointer comes first: bf16 (u16), or float32 (as it is).
__device__ __forceinline__ float round_as(const u16*, float v) { return round_bf16(v); }
__device__ __forceinline__ float round_as(const float*, float v) { return v; }

// A thread's 16 elements h written to dst in its element type (bf16 bits in u16, or float32).
__device__ __forceinline__ void store_chunk(u16* dst, const float (&h)[16]) {
  u32 packed[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    packed[i] = (__float_as_uint(h[2 * i]) >> 16) | (__float_as_uint(h[2 * i + 1]) & 0xffff0000u);
  uint4* out = reinterpret_cast<uint4*>(dst);
  out[0] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  out[1] = make_uint4(packed[4], packed[5], packed[6], packed[7]);
}

__device__ __forceinline__ void store_chunk(float* dst, const float (&h)[16]) {
  float4* out = reinterpret_cast<float4*>(dst);
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = make_float4(h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]);
}

// The add-and-norm kernels' activation stage (one row, one chunk a thread): thread t's chunk of
//   h = X(x + delta),  y = X(h * rsqrt(mean(h * h) + eps)),  out = T(nw * y)
// with X the row's element type (bf16 as u16, or float) and T the result type of X and NW (bf16 only when both are),
// as mxfp8_xla.norm writes the Hugging Face Llama RMSNorm; the sum of squares summed over the warp by shuffles and
// over the warps through shared memory in the same order in every thread, so all get the same rsqrt, which is
// rsqrt.approx.f32, as XLA's without flush-to-zero; out quantized exactly and decoded into xv; CTA 0 writes h.
template <typename X, typename NW>
__device__ __forceinline__ void add_norm_chunk(const X* __restrict__ x, const X* __restrict__ delta,
                                               const NW* __restrict__ nw, float eps, int k, X* __restrict__ h_out,
                                               float4 (&xv)[1][1][4]) {
  __shared__ float warp_squares[kMaxWarps];
  const int c = threadIdx.x, lane = c & 31, warps = blockDim.x >> 5;
  float h[16], d[16], g[16];
  load_elements(x + 16 * c, h);
  load_elements(delta + 16 * c, d);
  // A bf16 norm weight is loaded with x and delta, a float32 one after the barrier (loaded before it, its 16 registers
  // make ptxas spill).
  if constexpr (sizeof(NW) == 2) load_elements(nw + 16 * c, g);
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < 16; ++i) h[i] = round_as(x, h[i] + d[i]), squares += h[i] * h[i];
  if (blockIdx.x == 0) store_chunk(h_out + 16 * c, h);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, o);
  if (lane == 0) warp_squares[c >> 5] = squares;
  __syncthreads();
  float total = 0.f;
  for (int q = 0; q < warps; ++q) total += warp_squares[q];
  const float r = rsqrt_approx(total / static_cast<float>(k) + eps);
  if constexpr (sizeof(NW) == 4) load_elements(nw + 16 * c, g);
  constexpr bool kBf16Out = sizeof(X) == 2 && sizeof(NW) == 2;
  u32 amax = 0;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const float y = g[i] * round_as(x, h[i] * r);
    g[i] = kBf16Out ? round_bf16(y) : y;
    amax = max(amax, __float_as_uint(g[i]) & 0x7fffffffu);
  }
  amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
  float q[16];
  quantize_part(g, amax, q);
#pragma unroll
  for (int i = 0; i < 4; ++i) xv[0][0][i] = make_float4(q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]);
}

// ---- Three to eight rows on the tensor cores ----

// c += A B, one m16n8k16 f16 MMA with float32 accumulation: A [16, 16] (this lane: row g's f16 pairs a0, a2; rows
// 8..15 zero), B [16, 8] (column g: b0, b1).
__device__ __forceinline__ void mma_f16_rows8(float (&c)[4], u32 a0, u32 a2, u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// Bytes off .. off + 7 of 32-block b of activation row g (raw x [m, k], bf16 or float32; rows m.. are zero) quantized
// with quantize_blocks' rule (the quad's four lanes hold the block's 32 elements and share its amax), as (bytes 0-3,
// bytes 4-7); biased: the block's scale exponent + 127, 255 for a block holding an Inf or a NaN (its bytes E4M3 NaNs),
// 127 for a zero block or row (its bytes zero).
template <typename X>
__device__ __forceinline__ uint2 quantize_fragment(const X* __restrict__ x, int m, int k, int b, int g, int off,
                                                   u32& biased) {
  float f[8];
  u32 amax = 0;
  if (g < m) {
    amax = load_elements(x + static_cast<u64>(g) * k + 32 * b + off, f);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = 0.f;
  }
  amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
  amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
  if (amax >= kInfBits) {
    biased = 255;
    return make_uint2(0x7f7f7f7fu, 0x7f7f7f7fu);
  }
  const int e = scale_exponent(amax);
  biased = amax == 0 ? 127u : static_cast<u32>(e + 127);
  const float down = pow2(-e);
  u32 words[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    words[h] = static_cast<u32>(e4m3x2(f[4 * h] * down, f[4 * h + 1] * down)) |
               static_cast<u32>(e4m3x2(f[4 * h + 2] * down, f[4 * h + 3] * down)) << 16;
  }
  return make_uint2(words[0], words[1]);
}

// base + a * b (a * b < 2^32) in one wide integer multiply-add, on the FMA pipe.
__device__ __forceinline__ const u8* at(const u8* base, u32 a, u32 b) {
  const u8* p;
  asm("mad.wide.u32 %0, %1, %2, %3;" : "=l"(p) : "r"(a), "r"(b), "l"(base));
  return p;
}

// 2^(s - 127) 2^(e - 127) for byte j of the weight's scale word sw, with base = (e - 127) << 23 (mod 2^32) from the
// activation's biased exponent e, as float bits: exact where 128 <= s + e <= 381. One integer multiply-add, which
// runs on the FMA pipe, not on the ALU pipe that bounds the tensor-core kernel.
__device__ __forceinline__ float block_factor(u32 sw, u32 base, int j) {
  u32 bits;
  asm("mad.lo.u32 %0, %1, 8388608, %2;" : "=r"(bits) : "r"((sw >> (8 * j)) & 0xff), "r"(base));
  return __uint_as_float(bits);
}

// Emulation's products over 32-block b of one weight row and one raw activation row: each weight element decoded
// and multiplied by its block factor, the activation block quantized and decoded, their products accumulated in
// float32 (the one-row kernel's arithmetic): the tensor-core kernel's path for the scales it cannot take exactly.
template <typename X>
__device__ __forceinline__ float exact_block(const u8* __restrict__ wrow, u32 scale, const X* __restrict__ xrow,
                                             int b) {
  const X* xs = xrow + 32 * b;
  const u16* ws = reinterpret_cast<const u16*>(wrow + 32 * b);
  u32 amax = 0;
  for (int i = 0; i < 16; ++i) {
    const float2 p = element_pair(xs, i);
    amax = max(amax, max(__float_as_uint(p.x) & 0x7fffffffu, __float_as_uint(p.y) & 0x7fffffffu));
  }
  const float factor = scale_factor(scale);
  float acc = 0.f;
  for (int i = 0; i < 16; ++i) {
    const float2 p = element_pair(xs, i);
    const float f[2] = {p.x, p.y};
    float d[2];
    quantize_part(f, amax, d);
    const float2 wd = f16x2_to_float2(cvt_pair(ws[i]));
    acc = fmaf(wd.x * factor, d[0], acc), acc = fmaf(wd.y * factor, d[1], acc);
  }
  return acc;
}

// 3 <= m <= 8 raw rows x [m, k] (bf16 or float32) times w [n, k] (n % 8 == 0, k % 128 == 0, k <= 4096), the CTA's
// k / 128 warps splitting K: warp w owns blocks 4w .. 4w + 3 of every unit of 8 weight rows (units blockIdx.x, +
// gridDim.x, ...; the next unit's loads in flight in registers, one barrier a unit). The unit's 8 rows are the A
// operand of f16 MMAs (rows 8..15 zero), the activation rows the B operand. Lane (g, t) loads 16 bytes of weight row g
// (a quad reads 64 contiguous bytes, two blocks; a warp load 8 rows x 64 bytes); lanes t and t ^ 2 swap 8 of them, so
// that each lane holds bytes off(t) .. off(t) + 7 of both blocks, off = 0, 16, 8, 24 for t = 0..3: any order of K
// inside a block is the same sum, and the activation's B fragments are quantized in that order, once, into registers. A
// block is two MMAs into a fresh float32 accumulator (E4M3 -> f16 is exact), whose two sums in the lane (weight row g,
// activation rows 2t and 2t + 1) are scaled by both blocks' factors and accumulated; the warps' sums meet in shared
// memory. Where a factor, a decoded weight or a product could leave float32's normal range, or a scale byte is 255 or
// an activation block is non-finite (a per-lane test of the unit's four scale bytes against a range set by the
// activation), the unit is marked, and once the CTA's units are done its marked units' outputs are computed again with
// emulation's element-by-element arithmetic (a warp an output, its lanes splitting K) and written over the first ones.
template <typename OUT, typename X>
__device__ __forceinline__ void gemv_mma(const u8* __restrict__ w, const u8* __restrict__ sw,
                                         const X* __restrict__ x, OUT* __restrict__ out,
                                         const int* __restrict__ dims) {
  constexpr int kBlocks = 4;  // a warp's blocks of each row
  __shared__ float partial[2][kMaxWarps][64];  // [weight row][activation row]
  __shared__ u32 marked[kMaxMarkedUnits / 32];   // bit i: the CTA's unit i needs the exact path
  const int m = dims[0], n = dims[1], k = dims[2], kb = k / 32, units = n / 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, g = lane >> 2, t = lane & 3;
  const int b0 = warp * kBlocks, off = (t & 1) * 16 + (t >> 1) * 8;
  const bool low = t < 2;

  struct Unit {
    uint4 q[2];  // weight row g, bytes 64p + 16t .. + 15 of the warp's blocks 2p, 2p + 1
    u32 s;       // weight row g's scale bytes of the warp's blocks
  };
  const u8* const wl = w + 32 * b0 + 16 * t;  // the lane's first weight bytes in row 0
  const u8* const sl = sw + b0;               // and its scale bytes
  auto load = [&](int unit, Unit& d) {
    if (unit >= units) return;
    const u32 row = static_cast<u32>(unit) * 8 + g;  // row * k < 2^32: n <= cuda_gemv.MMA_MAX_N, k <= 4096
    const u8* p = at(wl, row, k);
    d.q[0] = load16(p), d.q[1] = load16(p + 64), d.s = load32(at(sl, row, kb));
  };
  Unit a, b;
  int unit = blockIdx.x, i = 0;
  load(unit, a);
  for (int q = threadIdx.x; q < kMaxMarkedUnits / 32; q += blockDim.x) marked[q] = 0;
  __syncthreads();

  // The activation's B fragments (E4M3 bytes; ptxas keeps their f16 pairs in registers, out of the loop), each block's
  // base (e - 127) << 23 for the biased exponents e of activation rows 2t and 2t + 1 (j: block b0 + j), and the weight
  // scale bytes s for which all of the lane's factors are exact: lo <= s < lo + width.
  uint2 xb[kBlocks];
  u32 base0[kBlocks], base1[kBlocks];
  int lo = 0, hi = 246;
#pragma unroll
  for (int j = 0; j < kBlocks; ++j) {
    u32 biased;
    xb[j] = quantize_fragment(x, m, k, b0 + j, g, off, biased);
    const int e0 = __shfl_sync(0xffffffffu, biased, 8 * t), e1 = __shfl_sync(0xffffffffu, biased, 8 * t + 4);
    base0[j] = static_cast<u32>(e0 - 127) << 23, base1[j] = static_cast<u32>(e1 - 127) << 23;
    lo = max(lo, 128 - min(e0, e1)), hi = min(hi, 359 - max(e0, e1));
    if (max(e0, e1) == 255) hi = -1;
  }
  const u32 width = hi >= lo ? static_cast<u32>(hi - lo + 1) : 0u;

  auto step = [&](const Unit& cur, Unit& fill) {
    if (unit >= units) return false;
    load(unit + gridDim.x, fill);
    float acc0 = 0.f, acc1 = 0.f;
    bool exact = true;
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const uint4 v = cur.q[p];
      const u32 r0 = __shfl_xor_sync(0xffffffffu, low ? v.z : v.x, 2);
      const u32 r1 = __shfl_xor_sync(0xffffffffu, low ? v.w : v.y, 2);
      const uint2 blk[2] = {low ? make_uint2(v.x, v.y) : make_uint2(r0, r1),
                            low ? make_uint2(r0, r1) : make_uint2(v.z, v.w)};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int j = 2 * p + h;
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_f16_rows8(d, cvt_pair(blk[h].x), cvt_pair_hi(blk[h].x), cvt_pair(xb[j].x), cvt_pair_hi(xb[j].x));
        mma_f16_rows8(d, cvt_pair(blk[h].y), cvt_pair_hi(blk[h].y), cvt_pair(xb[j].y), cvt_pair_hi(xb[j].y));
        exact = exact && ((cur.s >> (8 * j)) & 0xff) - lo < width;
        acc0 = fmaf(d[0], block_factor(cur.s, base0[j], j), acc0);
        acc1 = fmaf(d[1], block_factor(cur.s, base1[j], j), acc1);
      }
    }
    if (!exact) {
      if (i >= kMaxMarkedUnits) __trap();  // cuda_gemv.config keeps N small enough
      atomicOr(&marked[i >> 5], 1u << (i & 31));
    }
    partial[i & 1][warp][g * 8 + 2 * t] = acc0, partial[i & 1][warp][g * 8 + 2 * t + 1] = acc1;
    __syncthreads();  // partial[i & 1] is written again two units on, after the next barrier
    if (threadIdx.x < 8 * m) {
      const int row = threadIdx.x >> 3, col = threadIdx.x & 7;
      float sum = 0.f;
      for (int q = 0; q < warps; ++q) sum += partial[i & 1][q][col * 8 + row];
      store(out + static_cast<u64>(row) * n + static_cast<u64>(unit) * 8 + col, sum);
    }
    unit += gridDim.x, ++i;
    return true;
  };
  while (step(a, b) && step(b, a)) {
  }
  __syncthreads();
  i = 0;
  for (unit = blockIdx.x; unit < units; unit += gridDim.x, ++i) {
    if (!(marked[i >> 5] >> (i & 31) & 1)) continue;
    for (int o = warp; o < 8 * m; o += warps) {  // output o: weight row o % 8 of the unit, activation row o / 8
      const u64 row = static_cast<u64>(unit) * 8 + (o & 7);
      float sum = 0.f;
      for (int blk = lane; blk < kb; blk += 32)
        sum += exact_block(w + row * k, sw[row * kb + blk], x + static_cast<u64>(o >> 3) * k, blk);
#pragma unroll
      for (int q = 16; q > 0; q >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, q);
      if (lane == 0) store(out + static_cast<u64>(o >> 3) * n + row, sum);
    }
  }
}

}  // namespace

// At most MAX_THREADS threads a CTA (ptxas keeps the registers under 65536 / MAX_THREADS). X: the activation's element
// type (u16 for bf16 rows, float for float32 rows, whose kernels are named ..._xf32_{bf16,f32}), OUT the output's.
#define SPLIT_KERNEL(NAME, CPT, R, M, MAX_THREADS, X, OUT)                                        \
  extern "C" __global__ void __launch_bounds__(MAX_THREADS)                                       \
      NAME(const u8* w, const u8* sw, const X* x, const int* dims, OUT* out) {                    \
    gemv_split<CPT, R, M, OUT>(                                                                   \
        w, sw, [&](float4(&xv)[CPT][M][4], int k) { quantize_chunks<CPT, M>(x, k, xv); }, out, dims); \
  }
#define SPLIT_BOTH(NAME, CPT, R, M, MAX_THREADS, X)                              \
  SPLIT_KERNEL(NAME##_bf16, CPT, R, M, MAX_THREADS, X, u16)                      \
  SPLIT_KERNEL(NAME##_f32, CPT, R, M, MAX_THREADS, X, float)
#define SPLIT(CPT, R, MAX_THREADS) SPLIT_BOTH(mxfp8_gemv_split_c##CPT##_r##R, CPT, R, 1, MAX_THREADS, u16)
#define SPLIT_ROWS(CPT, R, M, MAX_THREADS) \
  SPLIT_BOTH(mxfp8_gemv_split_c##CPT##_r##R##_m##M, CPT, R, M, MAX_THREADS, u16)

// The add-and-norm kernels: one row, (w, sw, x, delta, nw, eps, dims, out, h_out), x, delta and h_out [1, k] of type X
// (bf16 as u16, or float), nw [k] of type NW, eps float32 [1].
#define ADDNORM_KERNEL(NAME, X, NW, OUT)                                                                 \
  extern "C" __global__ void __launch_bounds__(1024)                                                     \
      NAME(const u8* w, const u8* sw, const X* x, const X* delta, const NW* nw, const float* eps,        \
           const int* dims, OUT* out, X* h_out) {                                                        \
    gemv_split<1, 4, 1, OUT>(                                                                            \
        w, sw, [&](float4(&xv)[1][1][4], int k) { add_norm_chunk(x, delta, nw, *eps, k, h_out, xv); }, out, \
        dims);                                                                                           \
  }
#define ADDNORM_BOTH(NAME, X, NW)            \
  ADDNORM_KERNEL(NAME##_bf16, X, NW, u16)    \
  ADDNORM_KERNEL(NAME##_f32, X, NW, float)

SPLIT(1, 4, 1024)          // the library's, one row: k = 512 ... 16384
ADDNORM_BOTH(mxfp8_gemv_split_c1_r4_addnorm, u16, u16)                 // bf16 row and norm weight
ADDNORM_BOTH(mxfp8_gemv_split_c1_r4_addnorm_nf32, u16, float)          // bf16 row, float32 norm weight
ADDNORM_BOTH(mxfp8_gemv_split_c1_r4_addnorm_xf32, float, float)        // float32 row and norm weight
ADDNORM_BOTH(mxfp8_gemv_split_c1_r4_addnorm_xf32_nbf16, float, u16)    // float32 row, bf16 norm weight
SPLIT_ROWS(1, 4, 2, 512)   // the library's, two rows: k = 512 ... 8192
SPLIT_BOTH(mxfp8_gemv_split_c1_r4_xf32, 1, 4, 1, 1024, float)    // one float32 row
SPLIT_BOTH(mxfp8_gemv_split_c1_r4_m2_xf32, 1, 4, 2, 512, float)  // two float32 rows

// Three to eight rows on the tensor cores: k = 128 ... 4096, launched with k / 4 >= 8 m threads.
#define MMA_ROWS_KERNEL(NAME, X, OUT)                                                                \
  extern "C" __global__ void __launch_bounds__(1024)                                                 \
      NAME(const u8* w, const u8* sw, const X* x, const int* dims, OUT* out) {                       \
    gemv_mma<OUT>(w, sw, x, out, dims);                                                              \
  }
MMA_ROWS_KERNEL(mxfp8_gemv_mma_r8_bf16, u16, u16)
MMA_ROWS_KERNEL(mxfp8_gemv_mma_r8_f32, u16, float)
MMA_ROWS_KERNEL(mxfp8_gemv_mma_r8_xf32_bf16, float, u16)
MMA_ROWS_KERNEL(mxfp8_gemv_mma_r8_xf32_f32, float, float)
#ifdef MXFP8_GEMV_PROBE
SPLIT(1, 2, 1024)
SPLIT(1, 8, 512)
SPLIT(2, 4, 512)
SPLIT_ROWS(1, 4, 4, 512)
SPLIT_ROWS(1, 2, 4, 512)
SPLIT_ROWS(1, 8, 2, 512)   // two rows, 128 registers: twice the library's bytes in flight an SM
#endif
