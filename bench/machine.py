"""What every benchmark prints about where it ran, and the sync that makes GPU timings honest."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model with its core and torch thread counts."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "CPU"
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
