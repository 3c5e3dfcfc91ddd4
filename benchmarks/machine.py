"""What every benchmark reports about the machine it ran on (imported by the bench scripts)."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict:
    """CPU, Python, torch threads and CUDA device, plus the load (timings on a busy box lie)."""
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda_available": torch.cuda.is_available(),
        "load_average_1min": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info
