"""Which shipped parameter file a node starts with when none is given: the CPU or the GPU default.

    config/ssm_perception_gpu.yaml   200 x 200 cells (100 m), CUDA, fused Mamba kernel, CUDA graph
    config/ssm_perception_cpu.yaml   80 x 80 cells (40 m), CPU: what keeps up with a 10 Hz LiDAR on
                                     2 cores (scripts/cpu_default_check.py, README "Benchmarks")
    config/ssm_perception.yaml       the schema's defaults written out (reference; the drift test keeps
                                     it equal to config.py)

The GPU file is picked when torch sees a CUDA device and triton is importable (the fused backend
needs it), else the CPU file. ROS-free: the node, the launcher and the ROS launch file all call it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

CPU_CONFIG = "ssm_perception_cpu.yaml"
GPU_CONFIG = "ssm_perception_gpu.yaml"
SCHEMA_CONFIG = "ssm_perception.yaml"


def gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available()) and importlib.util.find_spec("triton") is not None
    except Exception:  # noqa: BLE001 - a broken CUDA setup means: use the CPU default
        return False


def default_config_name(gpu: bool | None = None) -> str:
    """The file name of the default parameter file for this machine (``gpu`` None: detect)."""
    return GPU_CONFIG if (gpu_available() if gpu is None else gpu) else CPU_CONFIG


def default_config_path(gpu: bool | None = None) -> Path | None:
    """The default parameter file for this machine: the source tree first, then the installed share
    directory; config/ssm_perception.yaml (the schema defaults) if that file is missing."""
    names = (default_config_name(gpu), SCHEMA_CONFIG)
    source = Path(__file__).resolve().parents[1] / "config"
    share = Path(sys.prefix) / "share" / "ssm_perception"  # a pip install: the venv's share/
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        get_package_share_directory = None
    if get_package_share_directory is not None:
        with contextlib.suppress(Exception):  # PackageNotFoundError or no ament index: keep the venv's share/
            share = Path(get_package_share_directory("ssm_perception"))
    for name in names:
        for folder in (source, share / "config"):
            if (folder / name).is_file():
                return folder / name
    return None
