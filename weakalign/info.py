"""``weakalign info``: versions, device and thread settings (for bug reports and benchmarks)."""

from __future__ import annotations

import os
import platform


def collect() -> dict:
    import torch

    from weakalign import __version__
    from weakalign.devices import resolve_device

    return {
        "weakalign": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device_auto": str(resolve_device("auto")),  # what `device: auto` uses here (weakalign.devices)
        "threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def environment(device: str = "cpu") -> dict:
    """Facts about the machine a run used, recorded beside its numbers (``evaluate predict``
    stores them per benchmark; reports quote them instead of assuming a machine):
    ``cpu_cores`` (``os.cpu_count()``), ``torch_threads``, ``device`` (the device the run was
    given; with the GPU name when it is a CUDA device), ``torch``, ``python``, ``machine``."""
    import torch

    dev = str(device)
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
    return {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": dev,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}


def describe(env: dict | None) -> str:
    """``"2 CPU cores, device cpu, torch 2.x"`` from a recorded :func:`environment` (or a note
    that none was recorded)."""
    if not env:
        return "machine not recorded (re-run `dvc repro evaluate_predict` to record it)"
    cores = env.get("cpu_cores")
    return f"{cores} CPU core{'s' if cores != 1 else ''}, device {env.get('device', '?')}, torch {env.get('torch', '?')}"


def _run(args) -> int:
    for key, value in collect().items():
        print(f"{key:15s} {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="print versions, device and thread settings")
    p.set_defaults(func=_run)
