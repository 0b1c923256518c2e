"""What the machine can do fast, so speed advice follows the hardware it runs on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from imdb_transformer.errors import InputError


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


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, a CPU
    with AMX tiles or AVX512-BF16 (see :func:`native_bf16_cpu`). Elsewhere fp32 is the faster choice."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and native_bf16_cpu()


def default_precision(accelerator: object = "auto") -> str:
    """The Trainer precision to use when none is asked for: ``bf16-mixed`` where the hardware multiplies
    bf16 natively (a GPU that supports it; a CPU with AMX tiles or AVX512-BF16), ``32-true`` elsewhere,
    where bf16 is emulated and trains more slowly than fp32."""
    name = str(accelerator).lower()
    if name in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if fast_bf16(torch.device("cuda")) else "32-true"
    if name in ("auto", "cpu"):
        return "bf16-mixed" if fast_bf16(torch.device("cpu")) else "32-true"
    return "32-true"  # other accelerators (mps, tpu...): Lightning's own default


def require_cpu_compiler() -> None:
    """Refuse ``torch.compile`` on a CPU without the C++ compiler its kernels are built with (Inductor
    looks for ``$CXX`` or ``g++``), before training starts rather than at its first step."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # a torch without this lookup: Inductor reports a missing compiler itself
        return
    try:
        get_cpp_compiler()
    except Exception as err:  # Inductor's own error names the compilers it tried
        raise InputError(
            f"--model.compile true on a CPU needs a C++ compiler, and none was found ({err}): install one "
            "(apt-get install g++, or set CXX) or pass --model.compile false"
        ) from None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (which ``taskset`` and cpusets narrow; a
    cgroup CPU quota such as ``docker --cpus`` is not counted), else every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """PyTorch threads for each of ``workers`` processes sharing the cores: the cores split evenly, at
    least one each. A process whose OpenMP threads share cores with other busy processes waits on its
    slowest thread at every parallel region, which costs far more than the threads would gain."""
    return max(1, (cores or usable_cores()) // max(1, workers))
