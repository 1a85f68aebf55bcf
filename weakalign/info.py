"""``weakalign info``: versions, device and thread settings (for bug reports and benchmarks)."""

from __future__ import annotations

import platform


def collect() -> dict:
    import torch

    from weakalign import __version__

    return {
        "weakalign": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def _run(args) -> int:
    for key, value in collect().items():
        print(f"{key:15s} {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="print versions, device and thread settings")
    p.set_defaults(func=_run)
