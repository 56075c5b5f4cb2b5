"""What every benchmark script reports beside its figures: the machine they came from."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def gpu_name() -> str | None:
    """The first CUDA GPU's name, if torch is installed and sees one."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no torch, or a broken CUDA set-up: no GPU to name
        return None


def machine() -> str:
    """CPU model, cores, memory, the matrix units that decide impsamp's CPU paths, GPU, Python, OS."""
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((li.split(":", 1)[1].strip() for li in out.splitlines() if li.startswith("Model name:")), model)
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = cpu_flags()
    isa = "AMX" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "?"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = gpu_name()
    return (f"{model} ({isa}, no AMX)" if isa != "AMX" else f"{model} (AMX)") + \
        f", {os.cpu_count()} cores, {mem:.0f} GiB RAM" + (f", GPU {gpu}" if gpu else "") + \
        f", Python {platform.python_version()}, {platform.system()}"
