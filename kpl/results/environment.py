"""The software and hardware a result was computed on, for ``metrics.json``.

Floating-point results move with library versions, BLAS and the processor's vector units, so a
reviewer who reruns a table needs them: Python, numpy, torch, open_clip (and faiss when installed),
the CPU model, its core count and the SIMD flags that matter to BLAS, and the GPU when one is used.
Nothing here imports a library that is not already loaded or installed; versions come from the
installed distributions' metadata, so recording them costs no model or CUDA start-up.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

PACKAGES = {"numpy": "numpy", "torch": "torch", "open_clip": "open_clip_torch", "faiss": "faiss-cpu",
            "chromadb": "chromadb", "kpl-toolkit": "kpl-toolkit"}
# vector extensions BLAS and torch pick kernels by; the full /proc/cpuinfo list is ~100 names
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "neon", "asimd")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read().split("\n\n")[0]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def cpu() -> dict[str, Any]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {"model": info.get("model name") or platform.processor() or platform.machine(),
            "machine": platform.machine(), "cores": os.cpu_count(),
            "simd": [flag for flag in SIMD_FLAGS if flag in flags]}


def gpu(device: str | None) -> dict[str, Any] | None:
    """Name, memory and CUDA version of the GPU the math ran on; None on the CPU.

    Asks torch only when it is already imported and the run used CUDA: recording never starts CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not (device or "").startswith("cuda") or not torch.cuda.is_available():
        return None
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}


def environment(device: str | None = None) -> dict[str, Any]:
    """``{"python", "platform", "packages": {name: version or None}, "cpu", "gpu", "threads"}``."""
    torch = sys.modules.get("torch")
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "packages": {name: _version(dist) for name, dist in PACKAGES.items()},
            "cpu": cpu(), "gpu": gpu(device),
            "torch_threads": torch.get_num_threads() if torch is not None else None}


__all__ = ["environment", "cpu", "gpu"]
