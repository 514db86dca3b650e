// Probe (benchmarks/gemv_norm_probe.py): the library's one-row kernel (mxfp8_xla/backends/gemv.cu) with a residual
// add and examples/llama's RMSNorm (Hugging Face Llama's) in front, so that a decode step's norm launches go away:
//
//   h = bf16(x + delta)                                    the residual stream; CTA 0 writes it to h_out
//   y = bf16(nw * bf16(h * rsqrt(mean(h * h) + eps)))      mean and rsqrt in float32, as XLA computes the model's
//   out = y @ w^T                                          the library's kernel from here on (y quantized exactly)
//
// Each thread takes its 16-element chunk of the three rows; the sum of squares is summed over the warp by shuffles
// and over the warps through shared memory, in the same order in every thread (all of the CTA's threads get the
// same rsqrt). It differs from XLA's only in the order of that float32 sum. rsqrt is rsqrt.approx.f32 (what XLA's
// libdevice call compiles to without flush-to-zero).
//
// Kernels mxfp8_gemv_addnorm_{bf16,f32}(w, sw, x, delta, nw, eps, dims, out, h_out): x, delta [1, k] bf16, nw [k]
// bf16, eps float32 [1], dims = {1, n, k}, out [1, n], h_out [1, k] bf16; k = 16 * threads (at most 1024 threads),
// n % 4 == 0, any grid.

#include "../mxfp8_xla/backends/gemv.cu"

namespace {

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

// Thread t's chunk of y (above) quantized exactly and decoded into xv; CTA 0 writes the chunk of h.
__device__ __forceinline__ void add_norm_chunk(const u16* __restrict__ x, const u16* __restrict__ delta,
                                               const u16* __restrict__ nw, float eps, int k,
                                               u16* __restrict__ h_out, float4 (&xv)[1][1][4]) {
  __shared__ float warp_squares[kMaxWarps];
  const int c = threadIdx.x, lane = c & 31, warps = blockDim.x >> 5;
  float h[16], d[16], g[16];
  load_bf16(x + 16 * c, h);
  load_bf16(delta + 16 * c, d);
  load_bf16(nw + 16 * c, g);
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < 16; ++i) h[i] = round_bf16(h[i] + d[i]), squares += h[i] * h[i];
  if (blockIdx.x == 0) {
    u32 packed[8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
      packed[i] = (__float_as_uint(h[2 * i]) >> 16) | (__float_as_uint(h[2 * i + 1]) & 0xffff0000u);
    uint4* dst = reinterpret_cast<uint4*>(h_out + 16 * c);
    dst[0] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
    dst[1] = make_uint4(packed[4], packed[5], packed[6], packed[7]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, o);
  if (lane == 0) warp_squares[c >> 5] = squares;
  __syncthreads();
  float total = 0.f;
  for (int q = 0; q < warps; ++q) total += warp_squares[q];
  const float r = rsqrt_approx(total / static_cast<float>(k) + eps);
  u32 amax = 0;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    g[i] = round_bf16(g[i] * round_bf16(h[i] * r));
    amax = max(amax, __float_as_uint(g[i]) & 0x7fffffffu);
  }
  amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
  float q[16];
  quantize_part(g, amax, q);
#pragma unroll
  for (int i = 0; i < 4; ++i) xv[0][0][i] = make_float4(q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]);
}

}  // namespace

#define ADDNORM_KERNEL(NAME, OUT)                                                                        \
  extern "C" __global__ void __launch_bounds__(1024)                                                     \
      NAME(const u8* w, const u8* sw, const u16* x, const u16* delta, const u16* nw, const float* eps,   \
           const int* dims, OUT* out, u16* h_out) {                                                      \
    gemv_split<1, 4, 1, OUT>(                                                                            \
        w, sw, [&](float4(&xv)[1][1][4], int k) { add_norm_chunk(x, delta, nw, *eps, k, h_out, xv); }, out, \
        dims);                                                                                           \
  }
ADDNORM_KERNEL(mxfp8_gemv_addnorm_bf16, u16)
ADDNORM_KERNEL(mxfp8_gemv_addnorm_f32, float)
