"""What the machine can do fast, so speed advice follows the hardware it runs on."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX tiles or AVX512-BF16). Without
    either, bf16 is emulated and slower than fp32."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_cpu() -> str:
    """One line: the CPU, its SIMD level as torch sees it, and its bf16 features."""
    amx, avx512_bf16 = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    return (
        f"{cpu_name()}, {torch.get_num_threads()} threads, SIMD {torch.backends.cpu.get_cpu_capability()}, "
        f"AMX {'yes' if amx else 'no'}, AVX512-BF16 {'yes' if avx512_bf16 else 'no'}"
    )
