"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import os
import platform

import torch


def machine_info() -> str:
    """CPU model, cores, torch version and threads, Python version."""
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    return (
        f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
        f"Python {platform.python_version()}"
    )


def load_average() -> str:
    """1/5/15-minute load averages: other work on the machine slows every timing."""
    return "/".join(f"{load:.1f}" for load in os.getloadavg())
