"""Machine, library versions and settings recorded beside every measurement."""

from __future__ import annotations

import os
import platform
import sys
import time

import torch
import transformers

from trimformer import __version__


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_label(device: str | torch.device) -> str:
    """A device for result records: 'cpu', or e.g. 'cuda (NVIDIA H100 80GB HBM3)' with the GPU's name."""
    device = torch.device(device)
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def machine_info() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trimformer": __version__,
    }


def run_record(root: str | os.PathLike[str], argv: list[str] | None = None) -> dict[str, object]:
    """How a script was run: its command line (relative to ``root``), the machine and the local date."""
    command = " ".join([os.path.relpath(sys.argv[0], root), *(argv or sys.argv[1:])])
    return {"command": f"python {command}", "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
