"""Which mixed precision `mixed_precision="auto"` means on the machine at hand."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast makes
    SANE's matmuls about 3.5x faster than fp32 (BENCHMARKS.md); False elsewhere, where bf16 on a CPU
    is emulated and slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def auto_mixed_precision(device: torch.device | str) -> str:
    """"bf16" on a GPU that has it ("fp16" on older GPUs) and on a CPU with native bf16, else "no"."""
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "no"
