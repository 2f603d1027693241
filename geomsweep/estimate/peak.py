"""What a job adds to its process's memory at the peak, and what the device offers: the measured side of the memory
plan (``memory.peak_gib`` beside the plan's ``memory.total_gib``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import torch

GIB = 1024**3


class PeakMeter:
    """What a job adds to its process at the peak, from ``start``: allocated memory on a GPU (CUDA's own peak
    counter); on a CPU the peak resident set, reset at ``start``, less the pages of shared libraries' code faulted
    in since (libtorch's backward and optimizer kernels: code, not the job's data)."""

    def __init__(self, device: str):
        self.device = device
        self.baseline = self.libraries = 0

    def start(self) -> PeakMeter:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
            self.baseline = torch.cuda.memory_allocated(torch.device(self.device))
            return self
        # psutil reads the resident set but has no peak that can be reset: Linux's VmHWM, reset through clear_refs
        Path("/proc/self/clear_refs").write_text("5")
        self.baseline, self.libraries = psutil.Process().memory_info().rss, library_bytes()
        return self

    def added(self) -> int:
        """Bytes above the start at the peak so far."""
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated(torch.device(self.device)) - self.baseline
        return peak_resident_bytes() - self.baseline - (library_bytes() - self.libraries)


def peak_resident_bytes() -> int:
    """The process's peak resident set since the last reset (``VmHWM``)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def library_bytes() -> int:
    """Resident bytes of the process's shared libraries and interpreter (file-backed code)."""
    interpreter = os.path.realpath(sys.executable)
    return sum(m.rss for m in psutil.Process().memory_maps() if ".so" in Path(m.path).name or m.path == interpreter)


def device_memory(device: str) -> int | None:
    """Bytes the device offers: a GPU's total memory, or the RAM available now on a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return psutil.virtual_memory().available
