// SM90 bulk copies into shared memory, completed on mbarriers: the helpers gemv_bulk.cu and gemv_mma8.cu share.
// Include after gemv.cu (its integer types).
namespace {

__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 a;
  asm("{.reg .u64 t;\n cvta.to.shared.u64 t, %1;\n cvt.u32.u64 %0, t;}" : "=r"(a) : "l"(p));
  return a;
}

// One thread: barriers bars[0 .. count - 1] for one arrival each, visible to the copy engine.
__device__ __forceinline__ void bars_init(u64* bars, int count) {
  for (int s = 0; s < count; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bars + s)) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

__device__ __forceinline__ void bar_wait(u32 bar, u32 parity) {
  u32 done;
  do {
    asm volatile(
        "{.reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// The issuing thread's arrival on bar, which then completes once `bytes` have landed.
__device__ __forceinline__ void expect_bytes(u32 bar, u32 bytes) {
  asm volatile("{.reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;}" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void bulk(u32 dst, const u8* src, u32 bytes, u32 bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

}  // namespace
