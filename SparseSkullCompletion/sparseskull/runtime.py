"""The machine a run is on: devices, threads and memory, the same on Linux, macOS and Windows.

No ``resource`` at import time (Windows has none). Peak memory comes from /proc on Linux (VmHWM starts
afresh at exec, so a child reports its own peak), else from ``getrusage``, whose ``ru_maxrss`` is in
KiB on Linux and in bytes on macOS, else from psutil where installed; None when nothing tells.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def available_devices() -> list[tuple[str, str]]:
    """(device, label) for each accelerator this PyTorch sees: ``cuda:N`` with the GPU's name, ``mps``."""
    import torch

    found = [(f"cuda:{i}", f"GPU {i}: {torch.cuda.get_device_name(i)}") for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append(("mps", "GPU: Apple MPS"))
    return found


def pick_device(name: str = "auto"):
    """A torch.device: ``auto`` picks CUDA, then MPS, then the CPU; a named one is checked to exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this PyTorch has no CUDA device (see the README on installing a CUDA build)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: MPS is not available on this machine")
    return device


def set_threads(threads: int | None) -> None:
    """CPU threads for torch (None: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def maxrss_mib(maxrss: float, platform: str | None = None) -> float:
    """``getrusage``'s ``ru_maxrss`` in MiB: bytes on macOS, KiB on Linux and the BSDs."""
    platform = platform or sys.platform
    return round(maxrss / (2**20 if platform == "darwin" else 1024.0), 1)


def peak_mib() -> float | None:
    """This process's peak resident memory in MiB (None where the platform does not tell)."""
    peak = status_mib("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        resource = None
    if resource is not None:
        return maxrss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    try:
        import psutil

        info = psutil.Process().memory_info()
        return round(getattr(info, "peak_wset", info.rss) / 2**20, 1)
    except Exception:  # psutil missing, or no such counter
        return None


def available_memory_bytes() -> int | None:
    """Memory that can be had without swapping (Linux's MemAvailable, else free pages); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def limit_address_space(gib: float) -> bool:
    """Cap this process's address space (benchmarks' memory limit); False where the platform cannot."""
    try:
        import resource
    except ImportError:
        return False
    resource.setrlimit(resource.RLIMIT_AS, (int(float(gib) * 2**30),) * 2)
    return True
