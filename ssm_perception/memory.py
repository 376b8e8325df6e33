"""Process-wide glibc malloc settings (ROS-free: the node applies them at start, and the
benchmark can measure under the same setting as the node)."""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 16 << 20  # blocks this large are mmapped and handed back to the OS when freed
MALLOC_DEFAULTS_ENV = "SSM_PERCEPTION_MALLOC_DEFAULTS"  # "1": leave glibc's thresholds alone


def fix_malloc_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> str:
    """Fix glibc's malloc thresholds so that memory freed after a peak goes back to the OS.

    By default glibc raises its mmap threshold to the size of each mmapped block it frees (up to
    32 MiB) and its trim threshold to twice that, so after start-up the top of the heap is only
    handed back once that much (up to 64 MiB) of it is free. Each new peak of per-frame temporaries
    (their sizes and overlap vary with timing: queued messages, dropped frames) then extends the heap
    for good: over DDS, RSS +2.6-2.9 % in 10-12 minutes while memory in use and Python objects stayed
    flat (README, long runs). Setting the mmap threshold turns that adjustment off: the trim threshold stays where
    the imports left it (twice the mmap threshold reached by then, under 1 MiB here), so the heap top
    is returned after a peak, and blocks of 16 MiB and more are mmapped (none in the CPU pipeline at
    64x64). The price is page faults when the heap grows again (+14 ms CPU per frame with the 64x64
    CPU reference, offline). MALLOC_MMAP_THRESHOLD_ in the environment wins.
    Returns what was done, for the log.
    """
    if os.environ.get(MALLOC_DEFAULTS_ENV) == "1":  # A/B runs against glibc's dynamic thresholds
        return f"glibc malloc defaults kept ({MALLOC_DEFAULTS_ENV}=1)"
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return f"malloc mmap threshold from the environment (MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']})"
    try:
        ok = ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(threshold))
    except (OSError, AttributeError):  # not glibc (musl, macOS): another allocator, left as it is
        return "malloc mmap threshold not set (not glibc)"
    return f"malloc mmap threshold {threshold} bytes" if ok == 1 else "mallopt(M_MMAP_THRESHOLD) failed"
