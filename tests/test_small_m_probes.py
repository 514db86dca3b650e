"""The probes of the sixth session on CPU: the XLA-reduction GEMV's numerics (benchmarks/xla_gemv_probe.py),
the Nsight Compute drivers' lists of ops (benchmarks/ncu_small_m.py; the seventeenth session's ncu_gemv.py), the
fused-decode probe's weight decodes and HLO reading (benchmarks/xla_fused_dequant_probe.py), and jax.lax.scaled_dot's
numerics (benchmarks/xla_scaled_dot_probe.py), with the XLA options each probe variant compiles with."""

import functools
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import H100

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ncu_gemv  # noqa: E402
import ncu_small_m  # noqa: E402
import xla_fused_dequant_probe as fused_probe  # noqa: E402
import xla_gemv_probe as gemv_probe  # noqa: E402
import xla_scaled_dot_probe as scaled_dot_probe  # noqa: E402
from mosaic_sweep import edge_operands, operands, rel_err  # noqa: E402

from mxfp8_xla import dequantize, quantize  # noqa: E402
from mxfp8_xla.backends import emulation, hopper, ptx_launch  # noqa: E402
from mxfp8_xla.backends.select import override_capability  # noqa: E402


def _gemv(variant):
    return jax.jit(functools.partial(gemv_probe.gemv, variant=variant, out_dtype=jnp.float32, quantize=quantize))


@pytest.mark.parametrize("variant", gemv_probe.VARIANTS)
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_matches_emulation_up_to_the_order_of_float32_sums(variant, m):
    x, w = operands(96, 512, m, copies=1)[0]
    want = np.asarray(emulation.matmul(quantize(x), w, jnp.float32))
    got = np.asarray(_gemv(variant)(x, w))
    assert got.shape == (m, 96) and rel_err(got, want) < 1e-6


@pytest.mark.parametrize("variant", gemv_probe.VARIANTS)
def test_gemv_keeps_emulations_non_finite_outputs(variant):
    x, w = edge_operands()  # weight scale bytes 0, 1, 254 and 255 (NaN)
    want = np.asarray(emulation.matmul(quantize(x), w, jnp.float32))
    got = np.asarray(_gemv(variant)(x, w))
    assert np.isnan(want).any() and np.isinf(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


def test_gemv_rejects_an_unknown_variant():
    x, w = operands(32, 128, 1, copies=1)[0]
    with pytest.raises(ValueError, match="unknown variant 'dot'"):
        gemv_probe.gemv(x, w, "dot", quantize=quantize)


def test_ncu_driver_lists_each_case_in_the_order_it_profiles(monkeypatch):
    monkeypatch.setattr(ncu_small_m, "CASES", (((64, 256), 1), ((64, 256), 16)))
    ops = ncu_small_m.ops(cases=1)
    labels = [label for label, _, _ in ops]
    assert labels == [
        "(64, 256) M=1 bf16 jnp.dot",
        "(64, 256) M=1 hopper",
        "(64, 256) M=1 probe tload",
        "(64, 256) M=1 probe tnone",
        "(64, 256) M=1 probe tcvt",
    ]
    x_op, _, w_tiled = ops[-1][2]
    assert x_op.shape == (8, 256) and x_op.dtype == jnp.float16 and w_tiled.shape == (64, 256)
    assert [label for label, _, _ in ncu_small_m.ops(cases=1, start=1)][0] == "(64, 256) M=16 bf16 jnp.dot"
    ring = ncu_small_m.ops(cases=1, decodes=("tcvtp", "tcvta4"))
    assert [label for label, _, _ in ring][2:] == ["(64, 256) M=1 probe tcvtp", "(64, 256) M=1 probe tcvta4"]


def test_ncu_gemv_driver_profiles_each_gemv_kernel_after_its_bf16_baseline(monkeypatch):
    monkeypatch.delenv(hopper.SMALL_M_KERNEL_ENV, raising=False)
    ops = ncu_gemv.ops(wide=(1024, 4096), deep=(1024, 8192))
    two_row = [ncu_gemv.probe.label_of(cfg) for cfg in ncu_gemv.probe.ROW_CONFIGS[2]]
    assert [label for label, _, _ in ops] == [
        "(1024, 4096) M=1 bf16 jnp.dot",
        "(1024, 4096) M=1 library",
        "(1024, 4096) M=2 bf16 jnp.dot",
        "(1024, 4096) M=2 library",
        *(f"(1024, 4096) M=2 probe {label}" for label in two_row),
        "(1024, 4096) M=8 bf16 jnp.dot",
        "(1024, 4096) M=8 library",
        "(1024, 8192) M=1 bf16 jnp.dot",
        "(1024, 8192) M=1 library",
    ]
    with override_capability(H100):
        launches = [ptx_launch.traced_launches(fn, *args) for label, fn, args in ops if "bf16" not in label]
    assert launches == [
        ["mxfp8_gemv_split_c1_r4_bf16"],
        ["mxfp8_gemv_split_c1_r4_m2_bf16"],
        ["mxfp8_gemv_split_c1_r4_m2_bf16"],
        ["mxfp8_gemv_split_c1_r8_m2_bf16"],
        ["mxfp8_gemv_mma_r8_bf16"],
        ["mxfp8_gemv_split_c1_r4_bf16"],
    ]


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("form", fused_probe.FORMS)
def test_each_weight_decode_form_is_exact(form):
    _, w = operands(64, 256, 1, copies=1)[0]  # scale bytes 112..123
    got = np.asarray(jax.jit(functools.partial(fused_probe.weight_bf16, form=form))(w).astype(jnp.float32))
    np.testing.assert_array_equal(got, np.asarray(dequantize(w, jnp.float32)))


@pytest.mark.parametrize("form", fused_probe.FORMS)
def test_fusion_report_reads_the_recorded_h200_hlo(form):
    # XLA (jax 0.11.2, H200) wrote the decoded weight as bf16[14336, 128, 32] and fed cuBLAS/Triton that copy
    hlo = (RESULTS / f"xla_fused_dequant_{form}_hlo_h200.txt").read_text()
    assert fused_probe.fusion_report(hlo, 14336, 4096) == {"fused": False, "decoded_weight_in_hbm": True}


def test_fusion_report_sees_a_dot_that_reads_fp8_itself():
    hlo = "\n".join(
        [
            "%gemm (p0: bf16[16,256], p1: f8e4m3fn[64,256]) -> bf16[16,64] {",
            "  %c = bf16[64,256]{1,0} convert(%p1)",
            "  ROOT %d = bf16[16,64]{1,0} dot(%p0, %c)",
            "}",
            "ENTRY %main (x: bf16[16,256], w: f8e4m3fn[64,256]) -> bf16[16,64] {",
            "  ROOT %f = bf16[16,64]{1,0} fusion(%x, %w), kind=kCustom, calls=%gemm",
            "}",
        ]
    )
    assert fused_probe.fusion_report(hlo, 64, 256) == {"fused": True, "decoded_weight_in_hbm": False}


def _fake_quantize_bf16(x):
    return dequantize(quantize(x), jnp.bfloat16)


@pytest.mark.parametrize("form", scaled_dot_probe.FORMS)
@pytest.mark.parametrize("m", [1, 5])
def test_xla_scaled_dot_matches_emulation(form, m):
    # jax.lax.scaled_dot is MXFP8 as is (E4M3 values, E8M0 scales per 32 along K); on CPU XLA expands it
    x, w = operands(96, 512, m, copies=1)[0]
    want = np.asarray(emulation.matmul(quantize(x), w, jnp.float32))
    fn = functools.partial(
        scaled_dot_probe.product, form=form, out_dtype=jnp.float32, quantize=quantize, decode=_fake_quantize_bf16
    )
    got = np.asarray(jax.jit(fn)(x, w))
    assert got.shape == (m, 96) and rel_err(got, want) < 1e-6


@pytest.mark.parametrize("form", scaled_dot_probe.FORMS)
def test_xla_scaled_dot_keeps_emulations_non_finite_outputs_on_cpu(form):
    x, w = edge_operands()
    want = np.asarray(emulation.matmul(quantize(x), w, jnp.float32))
    fn = functools.partial(
        scaled_dot_probe.product, form=form, out_dtype=jnp.float32, quantize=quantize, decode=_fake_quantize_bf16
    )
    got = np.asarray(jax.jit(fn)(x, w))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


def test_fusion_report_counts_a_scaled_dot_that_reads_fp8():
    hlo = "\n".join(
        [
            "%gemm (p0: f8e4m3fn[16,256], p1: f8e4m3fn[64,256], p2: f8e8m0fnu[16,8], p3: f8e8m0fnu[64,8])"
            " -> bf16[16,64] {",
            "  ROOT %d = bf16[16,64]{1,0} scaled-dot(%p0, %p1, %p2, %p3)",
            "}",
            "ENTRY %main (x: f8e4m3fn[16,256], w: f8e4m3fn[64,256], s: f8e8m0fnu[16,8], t: f8e8m0fnu[64,8])"
            " -> bf16[16,64] {",
            "  ROOT %f = bf16[16,64]{1,0} fusion(%x, %w, %s, %t), kind=kCustom, calls=%gemm",
            "}",
        ]
    )
    assert fused_probe.fusion_report(hlo, 64, 256) == {"fused": True, "decoded_weight_in_hbm": False}


@pytest.mark.parametrize(
    "form, report",
    [
        ("mx_mx", {"fused": True, "decoded_weight_in_hbm": False}),  # XLA's Triton scaled-dot fusion reads fp8
        ("bf16_mx", {"fused": False, "decoded_weight_in_hbm": True}),  # no lhs scale: jax decodes rhs before a dot
    ],
)
def test_fusion_report_reads_the_recorded_h200_scaled_dot_hlo(form, report):
    # jax 0.11.2 on an H200, (14336, 4096), M = 16
    hlo = (RESULTS / f"xla_scaled_dot_{form}_hlo_h200.txt").read_text()
    assert fused_probe.fusion_report(hlo, 14336, 4096) == report


@pytest.mark.parametrize(
    "variants", [fused_probe.VARIANTS, scaled_dot_probe.variants()], ids=["fused_dequant", "scaled_dot"]
)
def test_every_probe_variant_compiles_with_its_xla_options_and_keeps_emulations_outputs(variants):
    # each variant's own compiler options (the subchannel fusion, no cuBLAS fallback, the tiling file) are valid
    # XLA options; on CPU the GPU-only ones change nothing, so each must be the emulation's function there
    with hopper.interpret_mode():
        report = fused_probe.edge_check(variants)
    assert set(report) == set(variants)
    for label, entry in report.items():
        assert "error" not in entry, (label, entry)
        assert entry["nonfinite_differ_at"] == [] and entry["finite_rel_err"] < 1e-6, (label, entry)


def test_pick_keeps_the_named_variants_in_order_and_refuses_unknown_names():
    picked = fused_probe.pick(fused_probe.VARIANTS, ["probe.py", "--variants", "bf16_mul_sub,library"])
    assert list(picked) == ["bf16_mul_sub", "library"]
    assert fused_probe.pick(fused_probe.VARIANTS, ["probe.py"]) is fused_probe.VARIANTS
    with pytest.raises(SystemExit, match="unknown variants \\['nope'\\]"):
        fused_probe.pick(fused_probe.VARIANTS, ["probe.py", "--variants", "nope"])


def test_the_tiling_file_names_only_triton_gemm_key_fields():
    fields = {"block_m", "block_n", "block_k", "num_stages", "num_warps", "num_ctas"}  # AutotuneResult.TritonGemmKey
    lines = [ln for ln in Path(scaled_dot_probe.CONFIGS).read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines
    for line in lines:
        body = re.fullmatch(r"config \{ (.*) \}", line).group(1)
        pairs = dict(re.findall(r"(\w+): (\d+)", body))
        assert set(pairs) == fields and " ".join(f"{k}: {v}" for k, v in pairs.items()) == body


# An excerpt of a real report (results/ncu_gemv_h200.txt, eighteenth session): the driver's numbered list first, one
# kernel's sections cut to the lines the table reads, then a second kernel that lacks most metrics. The stall metrics
# (made-up values) are in the format of ncu's other metric lines; that run did not ask for them. "selected" is not a
# stall and not read. The two pipe lines are from results/ncu_gemv_mma_pipes_h200.txt (nineteenth session).
NCU_REPORT = """\
  0: (14336, 4096) M=1 bf16 jnp.dot
  1: (14336, 4096) M=1 library
  mxfp8_gemv_mma_r8_bf16 (132, 1, 1)x(1024, 1, 1), Context 1, Stream 14, Device 0, CC 9.0
    Section: GPU Speed Of Light Throughput
    Memory Throughput                 %        48.06
    DRAM Throughput                   %        48.06
    Duration                         us        27.30
    Section: Memory Workload Analysis
    Memory Throughput                          Tbyte/s         2.31
    L1/TEX Hit Rate                                  %        15.98
    Issued Warp Per Scheduler                        0.59
    Eligible Warps Per Scheduler        warp         2.48
    Warp Cycles Per Issued Instruction             cycle        13.60
    Registers Per Thread             register/thread              64
    Shared Memory Configuration Size           Kbyte           32.77
    Achieved Active Warps Per SM           warp        33.13
    Section: Command line profiler metrics
    smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio                           2.61
    smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio                   1.05
    smsp__average_warps_issue_stalled_wait_per_issue_active.ratio                              3.40
    smsp__average_warps_issue_stalled_selected_per_issue_active.ratio                          1.00
    sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active                          %        61.52
    sm__inst_executed_pipe_tensor.avg.pct_of_peak_sustained_active                       %         3.91
  loop_reduce_fusion (32, 1, 1)x(128, 1, 1), Context 1, Stream 14, Device 0, CC 9.0
    Duration                         us         2.82
    Memory Throughput                          Gbyte/s        47.91
    Elapsed Cycles                cycle       49,758
"""


def test_ncu_gemv_table_reads_each_kernels_metrics_in_the_order_they_ran():
    rows = ncu_gemv.table(NCU_REPORT)
    assert [(r["kernel"], r["launch"]) for r in rows] == [
        ("mxfp8_gemv_mma_r8_bf16", "(132, 1, 1)x(1024, 1, 1)"),
        ("loop_reduce_fusion", "(32, 1, 1)x(128, 1, 1)"),
    ]
    assert rows[0] == {
        "kernel": "mxfp8_gemv_mma_r8_bf16",
        "launch": "(132, 1, 1)x(1024, 1, 1)",
        "us": "27.30",
        "DRAM %": "48.06",
        "memory": "2.31 TB/s",  # the bytes/s line, not the % one above it
        "issued/sched": "0.59",
        "eligible/sched": "2.48",
        "cycles/issue": "13.60",
        "warps/SM": "33.13",
        "L1 hit %": "15.98",
        "smem KB": "32.77",
        "regs": "64",
        "alu %": "61.52",
        "fma %": "",
        "fmaheavy %": "",
        "lsu %": "",
        "tensor %": "3.91",
        "stalls": "wait 3.40, barrier 2.61, long_scoreboard 1.05",  # the top three, largest first
    }
    assert rows[1]["us"] == "2.82" and rows[1]["memory"] == "47.91 GB/s" and rows[1]["regs"] == rows[1]["stalls"] == ""
    assert rows[1]["alu %"] == ""


def test_ncu_gemv_asks_for_each_stall_and_pipe_metric_the_table_reads():
    metrics = [ncu_gemv.stall_metric(reason) for reason in ncu_gemv.STALLS]
    assert len(set(metrics)) == len(ncu_gemv.STALLS) == 11 and "selected" not in ncu_gemv.STALLS
    assert all(
        m.startswith("smsp__average_warps_issue_stalled_") and m.endswith("_per_issue_active.ratio") for m in metrics
    )
    pipes = [ncu_gemv.pipe_metric(pipe) for pipe in ncu_gemv.PIPES]
    assert ncu_gemv.ncu_metrics().split(",") == metrics + pipes
    assert "--ncu-metrics" in (Path(ncu_gemv.__file__).parent / "ncu_gemv.sh").read_text()
