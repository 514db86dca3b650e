"""The machine code the device's driver makes of a GEMV kernel: its PTX entry JIT-compiled by the driver, as a cubin.

The library ships PTX (``gemv.ptx``); on the device the driver's own compiler turns each launched entry into SASS, and
that SASS is what runs. The ptxas read on the CPU (``sass_order.py``, 12.9) is another compiler: in the nineteenth
session a change outside the tensor-core kernel's loop left ptxas 12.9's loop as it was (147 against 148 instructions)
and still cost the kernel 5 us on the device (docs/benchmark_log.md, "The tensor-core GEMV's ALU pipe"). This links each
named entry alone (``cuda_gemv.entry_ptx``, the module the library launches) through the CUDA driver API
(``cuLinkCreate``/``cuLinkAddData``/``cuLinkComplete``, default JIT options, as a module load uses them) and writes
``$OUT/{ptx stem}_{kernel}.cubin`` and the JIT's log (registers, spills) to ``$OUT/driver_cubin.log``; read them on the
CPU with ``sass_order.py`` (a ``.cubin`` is disassembled as it is; ``--step`` counts the tensor-core kernel's step).

    PYTHONPATH=. python3 benchmarks/driver_cubin.py mxfp8_xla/backends/gemv.ptx mxfp8_gemv_mma_r8_bf16
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import out_dir  # noqa: E402

from mxfp8_xla.backends import cuda_gemv  # noqa: E402

CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES, CU_JIT_LOG_VERBOSE = 3, 4, 12  # CUjit_option
CU_JIT_INPUT_PTX = 1  # CUjitInputType
LOG_BYTES = 1 << 16


def driver() -> ctypes.CDLL:
    """libcuda with a current context on device 0."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise RuntimeError(f"driver_cubin needs the CUDA driver (libcuda.so.1), on the device machine: {e}") from e
    device, context = ctypes.c_int(), ctypes.c_void_p()
    check(cuda, cuda.cuInit(0), "cuInit")
    check(cuda, cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    check(cuda, cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    check(cuda, cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    return cuda


def check(cuda: ctypes.CDLL, status: int, call: str) -> None:
    if status:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(status, ctypes.byref(name))
        raise RuntimeError(f"{call} failed: {name.value.decode() if name.value else status}")


def cubin(cuda: ctypes.CDLL, ptx: str, name: str) -> tuple[bytes, str]:
    """``(cubin, JIT log)`` of the driver's compile of ``ptx`` (one module, entry ``name``)."""
    log = ctypes.create_string_buffer(LOG_BYTES)
    options = (ctypes.c_int * 3)(CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES, CU_JIT_LOG_VERBOSE)
    values = (ctypes.c_void_p * 3)(ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(LOG_BYTES), ctypes.c_void_p(1))
    link, image, size = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_size_t()
    check(cuda, cuda.cuLinkCreate_v2(3, options, values, ctypes.byref(link)), "cuLinkCreate")
    try:
        data = ptx.encode() + b"\0"
        status = cuda.cuLinkAddData_v2(link, CU_JIT_INPUT_PTX, data, len(data), name.encode(), 0, None, None)
        check(cuda, status, f"cuLinkAddData ({name})")
        check(cuda, cuda.cuLinkComplete(link, ctypes.byref(image), ctypes.byref(size)), f"cuLinkComplete ({name})")
        return ctypes.string_at(image, size.value), log.value.decode(errors="replace")
    finally:
        cuda.cuLinkDestroy(link)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ptx", type=Path, help="a PTX build of gemv.cu (the shipped gemv.ptx or a variant)")
    parser.add_argument("kernels", nargs="+", help="entries to compile, each alone, as the library launches them")
    args = parser.parse_args()
    text = args.ptx.read_text()
    cuda = driver()
    logs = []
    for name in args.kernels:
        image, log = cubin(cuda, cuda_gemv.entry_ptx(text, name), name)
        (out_dir() / f"{args.ptx.stem}_{name}.cubin").write_bytes(image)
        logs.append(f"## {args.ptx} {name}: {len(image)} bytes\n{log.strip()}\n")
        print(logs[-1], flush=True)
    (out_dir() / "driver_cubin.log").write_text("\n".join(logs))


if __name__ == "__main__":
    main()
