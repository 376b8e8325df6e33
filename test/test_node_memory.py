"""The node's allocator setting (fixed glibc mmap threshold) and its memory-profile debug option.

Both act on the whole process, so each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Is a block of n bytes served by mmap? (glibc's mallinfo2 counts mmapped blocks in hblks.)
PROBE = textwrap.dedent("""
    import ctypes, json, sys
    from ssm_perception import memory as pn
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = pn._MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    note = pn.fix_malloc_mmap_threshold()
    def mmapped(n):
        before = libc.mallinfo2().hblks
        p = libc.malloc(n)
        after = libc.mallinfo2().hblks
        libc.free(p)
        return after > before
    big = pn.MMAP_THRESHOLD_BYTES
    # below first: freeing a mmapped block would raise the threshold if it were still dynamic
    print(json.dumps({"note": note, "below": mmapped(big // 2), "above": mmapped(big + 4096),
                      "below_after": mmapped(big // 2)}))
""")


def _run(code: str, **env: str) -> str:
    e = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | env
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def test_mmap_threshold_is_fixed():
    r = json.loads(_run(PROBE))
    assert r["note"] == "malloc mmap threshold 16777216 bytes"
    # Above the threshold: mmapped (returned to the OS on free); below: heap. And it stays put after a
    # large block was freed, where glibc's default would have raised it (the growth in the DDS soak).
    assert r["above"] and not r["below"] and not r["below_after"], r


def test_environment_wins():
    r = json.loads(_run(PROBE, MALLOC_MMAP_THRESHOLD_="65536"))
    assert r["note"].startswith("malloc mmap threshold from the environment (MALLOC_MMAP_THRESHOLD_=65536)")
    assert r["below"] and r["above"], r  # 8 MiB > 64 KiB: mmapped as the environment asked


def test_memory_profile_records(tmp_path):
    path = tmp_path / "profile.jsonl"
    code = textwrap.dedent("""
        import time
        from ssm_perception.memory import MemoryProfile
        prof = MemoryProfile.from_env()
        prof.start()
        kept = [bytearray(1000) for _ in range(20000)]  # ~20 MB of Python objects that stay alive
        time.sleep(0.5)
        prof.stop()
        print(len(kept))
    """)
    _run(code, SSM_PERCEPTION_MEMPROFILE=str(path), SSM_PERCEPTION_MEMPROFILE_S="0.2")
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(recs) >= 2
    last = recs[-1]
    for key in ("smaps.Rss", "smaps.Anonymous", "mallinfo.arena", "mallinfo.uordblks", "mallinfo.fordblks",
                "malloc_arenas", "threads", "tracemalloc.current"):
        assert key in last, key
    assert last["malloc_arenas"] >= 1 and last["smaps.Rss"] > 0
    # the growth is attributed to the line that allocated it, in the record that follows the
    # allocation (which one that is depends on timing: a loaded machine allocates more slowly)
    grown = [t for r in recs for t in r.get("tracemalloc.top_growth", [])[:1]
             if t["where"].startswith("<string>") and t["size"] > 15_000_000 and t["size_diff"] > 0]
    assert grown, [r.get("tracemalloc.top_growth", [])[:1] for r in recs]


def test_glibc_defaults_on_request():
    """The opt-out for A/B runs, and what the fix is about: glibc's default threshold moves up."""
    r = json.loads(_run(PROBE, SSM_PERCEPTION_MALLOC_DEFAULTS="1"))
    assert r["note"] == "glibc malloc defaults kept (SSM_PERCEPTION_MALLOC_DEFAULTS=1)"
    # 8 MiB is mmapped at first; once a 16 MiB mmapped block was freed, glibc serves 8 MiB from the heap.
    assert r["below"] and r["above"] and not r["below_after"], r
