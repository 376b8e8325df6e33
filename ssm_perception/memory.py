"""Process-wide glibc malloc settings (ROS-free: the node applies them at start, and the
benchmark can measure under the same setting as the node), and the memory-profile debug option
(``MemoryProfile``: RSS, malloc and tracemalloc records over a long run)."""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from pathlib import Path

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


# ---------------------------------------------------------------------------------------- memory profile
MEMPROFILE_ENV = "SSM_PERCEPTION_MEMPROFILE"  # path of a JSON-lines file; unset = off
MEMPROFILE_PERIOD_ENV = "SSM_PERCEPTION_MEMPROFILE_S"  # seconds between records (default 10)


class _MallInfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (2.33+): byte counts summed over every malloc arena.
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


class MemoryProfile:
    """Debug option: where does the node's memory go over a long run?

    Every ``period_s`` a thread appends one JSON line to ``path`` with /proc/self/smaps_rollup (RSS
    split into anonymous and file-backed), glibc's mallinfo2 (bytes in use vs freed but kept by the
    allocator, over all arenas) and the number of malloc arenas (from malloc_info), the thread count,
    and tracemalloc's traced Python memory with the 10 source lines that grew most since the first
    record. Python-object growth shows in tracemalloc, C allocations kept free in mallinfo2's
    ``fordblks``; together with RSS they tell a leak from allocator retention. tracemalloc slows
    allocation, so this is for diagnosis runs only (scripts/soak.py --memory-profile).
    """

    def __init__(self, path: str | Path, period_s: float = 10.0, frames: int = 4):
        self.path, self.period_s, self.frames = Path(path), float(period_s), frames
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first = None
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.mallinfo2.restype = _MallInfo2
            self._libc.fopen.restype = ctypes.c_void_p  # a FILE*: the default int would truncate it
            self._libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            self._libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            self._libc.fclose.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError):  # not glibc (musl, macOS): the rest still works
            self._libc = None

    @classmethod
    def from_env(cls) -> MemoryProfile | None:
        path = os.environ.get(MEMPROFILE_ENV)
        return cls(path, float(os.environ.get(MEMPROFILE_PERIOD_ENV, "10"))) if path else None

    def start(self) -> None:
        import tracemalloc

        tracemalloc.start(self.frames)
        # The baseline is taken here, not by the thread: what the caller allocates after start()
        # must show up as growth, however late the thread gets to run.
        self._first = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="memory_profile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)

    def _run(self) -> None:
        # one record at the start, one every period, and one at the stop
        while True:
            self._write()
            if self._stop.wait(self.period_s):
                self._write()
                return

    def _write(self) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(self.record()) + "\n")

    def malloc_arenas(self) -> int | None:
        """Number of malloc arenas (<heap> elements of malloc_info's XML)."""
        if self._libc is None:
            return None
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
            fp = self._libc.fopen(tmp.name.encode(), b"w")
            if not fp:
                return None
            self._libc.malloc_info(0, fp)
            self._libc.fclose(fp)
            return Path(tmp.name).read_text().count("<heap nr=")

    def record(self) -> dict:
        import tracemalloc

        rec: dict = {"t_s": round(time.monotonic() - self._t0, 2)}
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                rec[f"smaps.{key}"] = int(value.split()[0]) * 1024
        rec["threads"] = next(int(ln.split()[1]) for ln in Path("/proc/self/status").read_text().splitlines()
                              if ln.startswith("Threads:"))
        if self._libc is not None:
            mi = self._libc.mallinfo2()
            rec.update({f"mallinfo.{name}": getattr(mi, name) for name, _ in _MallInfo2._fields_})
            rec["malloc_arenas"] = self.malloc_arenas()
        if tracemalloc.is_tracing():
            rec["tracemalloc.current"], rec["tracemalloc.peak"] = tracemalloc.get_traced_memory()
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            if self._first is None:
                self._first = snap
            rec["tracemalloc.top_growth"] = [
                {"where": str(d.traceback[0]), "size_diff": d.size_diff, "count_diff": d.count_diff, "size": d.size}
                for d in snap.compare_to(self._first, "lineno")[:10]]
        return rec
