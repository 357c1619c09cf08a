"""Which mixed precision `mixed_precision="auto"` means on the machine at hand."""

from __future__ import annotations

import os

import torch

# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) under which its bf16 kernels still run in hardware
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                     "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL")


def cpu_has_native_bf16() -> bool:
    """True when this process multiplies bf16 in hardware: the CPU has AVX512-BF16 or AMX and torch
    may use it (ATEN_CPU_CAPABILITY not below avx512, ONEDNN_MAX_CPU_ISA not below AVX512_CORE_BF16).
    There bf16 autocast makes SANE's matmuls about 3.5x faster than fp32 (BENCHMARKS.md); elsewhere
    bf16 on a CPU is emulated and slower than fp32. The two variables let a benchmark run as on a
    machine without AVX-512 (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if not any(getattr(torch.cpu, name, lambda: False)() for name in checks):
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return isa in _ONEDNN_BF16_ISAS


def auto_mixed_precision(device: torch.device | str) -> str:
    """"bf16" on a GPU that has it ("fp16" on older GPUs) and on a CPU with native bf16, else "no"."""
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"
